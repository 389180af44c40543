#!/usr/bin/env bash
# ncps-server against nginx on one synthetic binary cache, in one run (not a
# test): builds both in release, makes the cache (300 paths, ~500 MiB), and
# prints each measurement with its ratio and target. See vs_nginx/main.rs.
#
#   benches/vs-nginx.sh [--paths N] [--total-mib N] [--rounds N] [--warm-only]
#
# Needs: cargo, nginx (apt-get install nginx). Loopback only; about 1.5 GiB
# of scratch space in $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nginx >/dev/null || { echo "vs-nginx.sh: nginx is not installed" >&2; exit 1; }
cargo build --release -p ncps-server -p ncps-benches --bin ncps-server --bin vs-nginx
exec target/release/vs-nginx --server target/release/ncps-server "$@"
