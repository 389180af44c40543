#!/usr/bin/env bash
# Memory benchmark (not a test): peak RSS of a release ncps-server while it
# proxies one 1 GiB NAR, first as a cold miss (streamed from the upstream while
# being verified and stored), then as a warm hit (served from local storage).
#
# Needs: cargo, nix (nix-bin), python3, curl. Runs offline on loopback only.
#
#   benches/memory.sh
#
# Environment:
#   NCPS_BENCH_SIZE_MIB   size of the random payload in MiB (default 1024)
#   NCPS_BENCH_LIMIT_MIB  peak RSS budget in MiB (default 100)
#   NCPS_BENCH_NO_BUILD=1 skip `cargo build --release -p ncps-server`
#
# Exit status: 0 when both transfers were complete and the peak RSS stayed
# within the budget, 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${NCPS_BENCH_SIZE_MIB:-1024}
LIMIT_MIB=${NCPS_BENCH_LIMIT_MIB:-100}

for tool in cargo nix nix-build nix-store python3 curl; do
    command -v "$tool" >/dev/null || {
        echo "memory.sh: $tool is not installed" >&2
        exit 1
    }
done

WORK=$(mktemp -d /tmp/ncps-bench-memory.XXXXXX)
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command'
export XDG_CACHE_HOME="$WORK/xdg-cache"
mkdir -p "$XDG_CACHE_HOME"

SERVER_PID=""
HTTP_PID=""
STORE_PATH=""
DRV_PATH=""

cleanup() {
    set +e
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [ -n "$HTTP_PID" ]; then
        kill "$HTTP_PID" 2>/dev/null
        wait "$HTTP_PID" 2>/dev/null
    fi
    if [ -n "$STORE_PATH" ]; then
        nix-store --delete "$STORE_PATH" >/dev/null 2>&1 ||
            echo "memory.sh: could not delete $STORE_PATH from the nix store" >&2
    fi
    if [ -n "$DRV_PATH" ]; then
        nix-store --delete "$DRV_PATH" >/dev/null 2>&1
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '== %s\n' "$*"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Wait until URL answers 200 (bounded: 200 x 50 ms).
wait_http() {
    local url=$1 pid=$2 i
    for i in $(seq 1 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# VmHWM (peak RSS) of PID in KiB.
peak_kib() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# ---------------------------------------------------------------------------
# 1. Build the release server.
# ---------------------------------------------------------------------------
if [ "${NCPS_BENCH_NO_BUILD:-0}" != 1 ]; then
    log "cargo build --release -p ncps-server"
    (cd "$ROOT" && cargo build --release -p ncps-server)
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release/ncps-server"
[ -x "$BIN" ] || {
    echo "memory.sh: $BIN not found" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# 2. A ${SIZE_MIB} MiB random store path, signed, in a file:// binary cache.
# ---------------------------------------------------------------------------
log "creating a ${SIZE_MIB} MiB random store path"
cat >"$WORK/big.nix" <<'NIX'
{ salt, mib }:
derivation {
  name = "ncps-bench-memory-blob";
  builder = "/bin/sh";
  args = [ "-c" "head -c $((${mib} * 1048576)) /dev/urandom > $out" ];
  PATH = "/usr/bin:/bin";
  system = builtins.currentSystem;
  inherit salt;
}
NIX
DRV_PATH=$(nix-instantiate "$WORK/big.nix" --argstr salt "$$-$(date +%s%N)" --argstr mib "$SIZE_MIB" 2>/dev/null)
STORE_PATH=$(nix-build "$DRV_PATH" --no-out-link)
log "store path: $STORE_PATH"

nix-store --generate-binary-cache-key ncps-bench-up-1 "$WORK/up.sec" "$WORK/up.pub"
nix-store --generate-binary-cache-key ncps-bench-proxy-1 "$WORK/proxy.sec" "$WORK/proxy.pub"
nix store sign -k "$WORK/up.sec" "$STORE_PATH"
nix copy --to "file://$WORK/up?compression=none" "$STORE_PATH"

HASH=$(basename "$STORE_PATH" | cut -c1-32)
FILE_SIZE=$(awk -F': ' '/^FileSize:/ { print $2 }' "$WORK/up/$HASH.narinfo")
log "upstream narinfo: $(tr '\n' ' ' <"$WORK/up/$HASH.narinfo")"

# ---------------------------------------------------------------------------
# 3. Upstream (python http.server) and the proxy, on loopback.
# ---------------------------------------------------------------------------
UP_PORT=$(free_port)
python3 -m http.server "$UP_PORT" --bind 127.0.0.1 --directory "$WORK/up" \
    >"$WORK/upstream.log" 2>&1 &
HTTP_PID=$!
wait_http "http://127.0.0.1:$UP_PORT/nix-cache-info" "$HTTP_PID" || {
    echo "memory.sh: upstream http.server did not start" >&2
    cat "$WORK/upstream.log" >&2
    exit 1
}

PROXY_PORT=$(free_port)
PROXY="http://127.0.0.1:$PROXY_PORT"
mkdir -p "$WORK/storage"
# benches/memory-s3.sh sets CACHE_STORAGE_S3_* instead of a local directory.
STORAGE_ARGS=(--cache-storage-local "$WORK/storage")
if [ -n "${CACHE_STORAGE_S3_BUCKET:-}" ]; then
    STORAGE_ARGS=()
fi
"$BIN" serve \
    --server-addr "127.0.0.1:$PROXY_PORT" \
    --cache-hostname ncps-bench \
    "${STORAGE_ARGS[@]}" \
    --cache-database-url "sqlite:$WORK/db.sqlite" \
    --cache-upstream-url "http://127.0.0.1:$UP_PORT" \
    --cache-upstream-public-key "$(cat "$WORK/up.pub")" \
    --cache-secret-key-path "$WORK/proxy.sec" \
    --cache-upstream-dialer-timeout 3s \
    --cache-upstream-response-header-timeout 3s \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
wait_http "$PROXY/healthz" "$SERVER_PID" || {
    echo "memory.sh: ncps-server did not become ready" >&2
    cat "$WORK/server.log" >&2
    exit 1
}
log "ncps-server pid $SERVER_PID on $PROXY; idle peak RSS $(peak_kib "$SERVER_PID") KiB"

NARINFO=$(curl -fsS --max-time 30 "$PROXY/$HASH.narinfo")
NAR_URL=$(printf '%s\n' "$NARINFO" | awk -F': ' '/^URL:/ { print $2 }')
PROXY_FILE_SIZE=$(printf '%s\n' "$NARINFO" | awk -F': ' '/^FileSize:/ { print $2 }')
PROXY_FILE_SIZE=${PROXY_FILE_SIZE:-$FILE_SIZE}
log "proxy narinfo URL: $NAR_URL (FileSize $PROXY_FILE_SIZE)"

# ---------------------------------------------------------------------------
# 4. Cold miss, then warm hit.
# ---------------------------------------------------------------------------
FAIL=0
LIMIT_KIB=$((LIMIT_MIB * 1024))
RESULTS=()

fetch_phase() {
    local phase=$1 out rc code size secs peak rss
    set +e
    out=$(curl -sS -o /dev/null --max-time 600 \
        -w '%{http_code} %{size_download} %{time_total}' "$PROXY/$NAR_URL")
    rc=$?
    set -e
    read -r code size secs <<<"$out"
    peak=$(peak_kib "$SERVER_PID")
    rss=$(rss_kib "$SERVER_PID")
    local verdict=ok
    if [ "$rc" != 0 ] || [ "$code" != 200 ] || [ "$size" != "$PROXY_FILE_SIZE" ]; then
        verdict="TRANSFER FAILED (curl exit $rc, HTTP $code, $size of $PROXY_FILE_SIZE bytes)"
        FAIL=1
    fi
    local mem=PASS
    if [ "$peak" -gt "$LIMIT_KIB" ]; then
        mem=FAIL
        FAIL=1
    fi
    log "$phase: curl exit $rc, HTTP $code, $size bytes in ${secs}s; transfer $verdict"
    log "$phase: server VmHWM $peak KiB ($((peak / 1024)) MiB), VmRSS $rss KiB; budget ${LIMIT_MIB} MiB: $mem"
    RESULTS+=("$phase: peak RSS $((peak / 1024)) MiB [$mem], transfer $verdict")
}

fetch_phase "cold miss"
fetch_phase "warm hit"

echo
echo "memory benchmark, ${SIZE_MIB} MiB NAR through ncps-server:"
for r in "${RESULTS[@]}"; do
    echo "  $r"
done
if [ "$FAIL" = 0 ]; then
    echo "RESULT: PASS (peak RSS within ${LIMIT_MIB} MiB, both transfers complete)"
else
    echo "RESULT: FAIL"
    echo "--- last lines of the server log ---"
    tail -n 30 "$WORK/server.log"
fi
exit "$FAIL"
