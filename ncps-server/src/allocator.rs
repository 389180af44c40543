//! Bounds glibc's malloc arenas. By default glibc gives threads up to eight
//! arenas per core, and memory freed in one is not reused by the others:
//! under steady load (tokio workers plus blocking threads for file reads)
//! the server's RSS then creeps up for many minutes (the soak test,
//! `benches/soak.sh`, measured +30% in 10 minutes) although nothing leaks.
//! One arena per core keeps it flat. `MALLOC_ARENA_MAX`, when set, wins.

/// Limits malloc to one arena per core (at least two), unless
/// `MALLOC_ARENA_MAX` says otherwise. Call it first thing in `main`, before
/// any other thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a malloc tunable; it is called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
