//! Criterion benchmarks of ncps-rs live in this package's `[[bench]]` targets;
//! `memory.sh` beside them measures the server's peak memory on a 1 GiB NAR.
