#!/usr/bin/env bash
# Soak test (not part of `cargo test`): a release ncps-server in front of a
# real signed binary cache, under mixed load from many clients for a while:
# narinfo and NAR hits, misses that download (at a steady rate, so they last
# the whole run), and narinfos no upstream has. Every NAR body is checked
# against the FileHash of the narinfo the proxy served.
#
# Hits go to the most recently fetched paths (NCPS_SOAK_HOT_SET of them), a
# popular set that moves on as new paths arrive, as when a team's machines
# fetch the closures of their latest builds. Its size stays the same after
# the warm-up, so memory that still grows is a leak, not a cache filling
# up. NCPS_SOAK_HOT_SET=0 spreads hits over every path fetched so far: then
# the hot-narinfo cache and the access records grow with the run (about
# 1.1 KB per path, up to their bounds) and RSS grows with them.
#
# Passes when no request failed and the server's RSS stayed flat: after the
# warm-up, no sample is more than 10% above the median of the first minute
# after it (the first sample's when the run is shorter).
#
# The warm-up lasts as long as the server's caches take to reach their
# steady size: the negative cache keeps an absent narinfo for 5 minutes
# (--cache-negative-narinfo-ttl), so until then it only grows. The load
# runs through the warm-up and then NCPS_SOAK_SECONDS more.
#
# Needs: cargo, nix (nix-bin), python3, curl. Loopback only.
#
#   benches/soak.sh                         # 5 minutes' warm-up, 10 measured
#   NCPS_SOAK_WARMUP=10 NCPS_SOAK_SECONDS=60 benches/soak.sh    # a quick look
#
# Environment:
#   NCPS_SOAK_SECONDS   how long the load runs after the warm-up (default 600)
#   NCPS_SOAK_WARMUP    how long the warm-up lasts (default 300)
#   NCPS_SOAK_CLIENTS   concurrent clients (default 32)
#   NCPS_SOAK_PATHS     store paths in the upstream (default 3 per second, at least 200)
#   NCPS_SOAK_ABSENT    share of requests for narinfos no upstream has (default 0.05)
#   NCPS_SOAK_HOT_SET   hits go to this many most recently fetched paths (default
#                       300, filled within the warm-up; 0 = every path fetched)
#   NCPS_SOAK_NO_BUILD=1  skip `cargo build --release -p ncps-server`
#   NCPS_SOAK_BIN       the server binary (default target/release/ncps-server)
#
# Exit status: 0 when the run passed, 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WARMUP=${NCPS_SOAK_WARMUP:-300}
SECONDS_RUN=$((WARMUP + ${NCPS_SOAK_SECONDS:-600}))
CLIENTS=${NCPS_SOAK_CLIENTS:-32}
PATHS=${NCPS_SOAK_PATHS:-$((SECONDS_RUN * 3 > 200 ? SECONDS_RUN * 3 : 200))}

for tool in cargo nix nix-store python3 curl; do
    command -v "$tool" >/dev/null || {
        echo "soak.sh: $tool is not installed" >&2
        exit 1
    }
done

WORK=$(mktemp -d /tmp/ncps-soak.XXXXXX)
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command'
export XDG_CACHE_HOME="$WORK/xdg-cache"
mkdir -p "$XDG_CACHE_HOME"
SERVER_PID=""
HTTP_PID=""

cleanup() {
    set +e
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null && wait "$HTTP_PID" 2>/dev/null
    if [ -s "$WORK/paths" ]; then
        xargs nix-store --delete <"$WORK/paths" >/dev/null 2>&1
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '== %s\n' "$*"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {
    local url=$1 pid=$2 i
    for i in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# 1. The release server.
if [ "${NCPS_SOAK_NO_BUILD:-0}" != 1 ] && [ -z "${NCPS_SOAK_BIN:-}" ]; then
    log "cargo build --release -p ncps-server"
    (cd "$ROOT" && cargo build --release -p ncps-server)
fi
BIN=${NCPS_SOAK_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ncps-server}
[ -x "$BIN" ] || {
    echo "soak.sh: $BIN not found" >&2
    exit 1
}

# 2. $PATHS random store paths (1-128 KiB), signed, in a file:// binary cache.
log "adding $PATHS store paths"
mkdir -p "$WORK/files"
python3 - "$WORK/files" "$PATHS" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
for i in range(n):
    size = rng.randint(1024, 128 * 1024)
    with open(os.path.join(d, f"soak-{os.getpid()}-{i}"), "wb") as f:
        f.write(os.urandom(size))
PY
find "$WORK/files" -type f -print0 | xargs -0 nix-store --add >"$WORK/paths"
nix-store --generate-binary-cache-key ncps-soak-up-1 "$WORK/up.sec" "$WORK/up.pub"
nix-store --generate-binary-cache-key ncps-soak-proxy-1 "$WORK/proxy.sec" "$WORK/proxy.pub"
xargs nix store sign -k "$WORK/up.sec" <"$WORK/paths"
xargs nix copy --to "file://$WORK/up?compression=zstd" <"$WORK/paths" 2>"$WORK/copy.log" || {
    cat "$WORK/copy.log" >&2
    exit 1
}
log "$(wc -l <"$WORK/paths") paths in the upstream cache ($(du -sh "$WORK/up" | cut -f1))"

# 3. Upstream and proxy on loopback.
UP_PORT=$(free_port)
python3 -m http.server "$UP_PORT" --bind 127.0.0.1 --directory "$WORK/up" \
    >"$WORK/upstream.log" 2>&1 &
HTTP_PID=$!
wait_http "http://127.0.0.1:$UP_PORT/nix-cache-info" "$HTTP_PID" || {
    echo "soak.sh: the upstream did not start" >&2
    exit 1
}
PROXY_PORT=$(free_port)
"$BIN" serve \
    --server-addr "127.0.0.1:$PROXY_PORT" \
    --cache-hostname ncps-soak \
    --cache-storage-local "$WORK/storage" \
    --cache-database-url "sqlite:$WORK/db.sqlite" \
    --cache-upstream-url "http://127.0.0.1:$UP_PORT" \
    --cache-upstream-public-key "$(cat "$WORK/up.pub")" \
    --cache-secret-key-path "$WORK/proxy.sec" \
    --log-level warn \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
wait_http "http://127.0.0.1:$PROXY_PORT/healthz" "$SERVER_PID" || {
    echo "soak.sh: ncps-server did not become ready" >&2
    cat "$WORK/server.log" >&2
    exit 1
}
log "ncps-server pid $SERVER_PID; $CLIENTS clients for ${SECONDS_RUN}s (${WARMUP}s warm-up); hits over the ${NCPS_SOAK_HOT_SET:-300} latest paths (0 = all)"

# 4. The load, with RSS samples every 5 s.
set +e
python3 - "http://127.0.0.1:$PROXY_PORT" "$WORK/paths" "$SERVER_PID" "$SECONDS_RUN" "$CLIENTS" "${NCPS_SOAK_ABSENT:-0.05}" "${NCPS_SOAK_HOT_SET:-300}" "$WARMUP" <<'PY'
import hashlib, http.client, random, statistics, sys, threading, time
from urllib.parse import urlsplit

base, paths_file, pid, duration, clients = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
absent_share = float(sys.argv[6])
hot_set = int(sys.argv[7])
warmup = float(sys.argv[8])
hashes = [p.strip().split("/")[-1][:32] for p in open(paths_file) if p.strip()]
ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"

def nix32(digest):
    out = []
    nbits = len(digest) * 8
    n = (nbits + 4) // 5
    for i in range(n - 1, -1, -1):
        b = i * 5
        j, k = divmod(b, 8)
        c = digest[j] >> k
        if j + 1 < len(digest):
            c |= digest[j + 1] << (8 - k)
        out.append(ALPHABET[c & 0x1F])
    return "".join(out)

def rss_parts():
    """(VmRSS, RssAnon, RssFile) in KiB: RssFile counts the page-cache pages
    of memory-mapped NARs being sent, RssAnon the heap and stacks."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                parts[key] = int(line.split()[1])
    return parts.get("VmRSS", 0), parts.get("RssAnon", 0), parts.get("RssFile", 0)

lock = threading.Lock()
started = time.monotonic()
next_miss = 0          # hashes[:next_miss] have been asked for
stats = {"narinfo_hit": 0, "narinfo_miss": 0, "absent": 0, "nar": 0, "bytes": 0, "errors": 0}
errors = []

def pick(rng):
    """('miss'|'hit'|'absent', hash) keeping misses at a steady rate."""
    global next_miss
    with lock:
        due = int(len(hashes) * min(1.0, (time.monotonic() - started) / duration)) + 1
        if next_miss < min(due, len(hashes)):
            h = hashes[next_miss]
            next_miss += 1
            return "miss", h
        asked = next_miss
    if rng.random() < absent_share or asked == 0:
        return "absent", "".join(rng.choice(ALPHABET) for _ in range(32))
    oldest = max(0, asked - hot_set) if hot_set > 0 else 0
    return "hit", hashes[rng.randrange(oldest, asked)]

def fail(msg):
    with lock:
        stats["errors"] += 1
        if len(errors) < 20:
            errors.append(msg)

def client(seed):
    rng = random.Random(seed)
    host = urlsplit(base).netloc
    conn = http.client.HTTPConnection(host, timeout=60)
    while time.monotonic() - started < duration:
        kind, h = pick(rng)
        try:
            conn.request("GET", f"/{h}.narinfo")
            r = conn.getresponse()
            body = r.read()
            if kind == "absent":
                if r.status != 404:
                    fail(f"absent {h}: HTTP {r.status}")
                with lock:
                    stats["absent"] += 1
                continue
            if r.status != 200:
                fail(f"{kind} narinfo {h}: HTTP {r.status} {body[:200]!r}")
                continue
            info = dict(l.split(": ", 1) for l in body.decode().splitlines() if ": " in l)
            conn.request("GET", "/" + info["URL"])
            r = conn.getresponse()
            nar = r.read()
            if r.status != 200:
                fail(f"{kind} NAR {info['URL']}: HTTP {r.status}")
                continue
            want = info.get("FileHash", info["NarHash"]).split(":", 1)[1]
            got = nix32(hashlib.sha256(nar).digest())
            if got != want:
                fail(f"{kind} NAR {info['URL']}: hash {got}, narinfo says {want}")
            with lock:
                stats["narinfo_" + kind] += 1
                stats["nar"] += 1
                stats["bytes"] += len(nar)
        except Exception as e:  # a broken connection, a timeout
            fail(f"{kind} {h}: {e!r}")
            conn.close()
            conn = http.client.HTTPConnection(host, timeout=60)

threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
for t in threads:
    t.start()
samples = []
while any(t.is_alive() for t in threads):
    time.sleep(5)
    t = time.monotonic() - started
    rss, anon, file = rss_parts()
    samples.append((t, rss))
    with lock:
        s = dict(stats)
    print(f"  t={t:5.0f}s rss={rss / 1024:6.1f} MiB (anon {anon / 1024:5.1f}, file {file / 1024:5.1f}) narinfo hits={s['narinfo_hit']} "
          f"misses={s['narinfo_miss']} absent={s['absent']} nars={s['nar']} "
          f"({s['bytes'] / 2**20:.0f} MiB) errors={s['errors']}", flush=True)
for t in threads:
    t.join()

after = [(t, r) for t, r in samples if t > warmup]
first_minute = [r for t, r in after if t <= warmup + 60] or [r for _, r in after[:1]]
ok = True
if not after:
    print("soak: no RSS sample after the warm-up; run longer")
    ok = False
else:
    reference = statistics.median(first_minute)
    peak = max(r for _, r in after)
    growth = (peak - reference) / reference * 100
    print(f"soak: RSS after warm-up ({warmup:.0f}s): reference {reference / 1024:.1f} MiB, "
          f"peak {peak / 1024:.1f} MiB ({growth:+.1f}%), last {after[-1][1] / 1024:.1f} MiB")
    if peak > reference * 1.10:
        print("soak: FAIL: RSS grew more than 10% after the warm-up")
        ok = False
requests = stats["narinfo_hit"] + stats["narinfo_miss"] + stats["absent"] + stats["nar"]
print(f"soak: {requests} requests in {duration}s from {clients} clients: "
      f"{stats['narinfo_miss']} misses downloaded, {stats['narinfo_hit']} hits, "
      f"{stats['absent']} absent, {stats['bytes'] / 2**20:.0f} MiB of NARs, {stats['errors']} errors")
for e in errors:
    print(f"  error: {e}")
if stats["errors"] or stats["narinfo_miss"] == 0 or stats["narinfo_hit"] == 0:
    ok = False
with open(f"/proc/{pid}/status") as f:
    threads = [l.split()[1] for l in f if l.startswith("Threads:")]
print(f"soak: the server runs {threads[0] if threads else '?'} threads at the end")
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
STATUS=$?
set -e
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "soak.sh: ncps-server died" >&2
    STATUS=1
fi
if grep -E "panicked|ERROR" "$WORK/server.log" >/dev/null; then
    echo "soak.sh: the server logged errors:" >&2
    grep -E "panicked|ERROR" "$WORK/server.log" | head -20 >&2
    STATUS=1
fi
exit "$STATUS"
