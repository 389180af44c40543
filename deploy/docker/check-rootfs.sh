#!/usr/bin/env bash
# Stand-in for `docker build -f deploy/docker/Dockerfile` on machines without
# a Docker engine (or without a registry to pull base images from). Run as
# root from anywhere; needs debootstrap and a reachable Debian mirror.
#
# It rebuilds the Dockerfile's runtime stage in a chroot and checks the result:
#   1. debootstrap --variant=minbase $DEBIAN_RELEASE into $ROOTFS (skipped if
#      already done), with the mirror this machine's apt uses;
#   2. runs the runtime stage's RUN command, read from the Dockerfile (once:
#      skipped if the rootfs already has it), copies release builds of
#      ncps-server and ncps-cli to /usr/local/bin, and applies the ENV, USER and
#      WORKDIR values (SERVER_ADDR on $PORT instead of 8501);
#   3. starts `ncps-server serve` as uid/gid 10001 in the chroot and checks that
#      it runs as non-root, writes its SQLite database and data under
#      /var/lib/ncps, passes the Dockerfile's HEALTHCHECK command (read from
#      the Dockerfile, run in the chroot as the same user), and exits 0 on
#      SIGTERM;
#   4. prints the rootfs size (apt cache and lists removed) and the binaries'
#      sizes, as built and stripped.
#
# Not the real image: debootstrap's minbase keeps the docs, man pages and
# locales that debian:*-slim leaves out, so the image is somewhat smaller than
# the rootfs. Mounts /proc in the chroot while the server runs; a trap unmounts
# it and stops the server on any exit.
#
# Environment: ROOTFS (default /tmp/ncps-rootfs), DEBIAN_RELEASE (bookworm),
# MIRROR (from /etc/apt/sources.list*), PORT (18900), SKIP_BUILD=1 to use the
# binaries already in target/release.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
dockerfile=$repo/deploy/docker/Dockerfile
ROOTFS=${ROOTFS:-/tmp/ncps-rootfs}
DEBIAN_RELEASE=${DEBIAN_RELEASE:-bookworm}
PORT=${PORT:-18900}
uid=10001

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# The first apt source (deb822 or one-line) serving $DEBIAN_RELEASE.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v rel="$DEBIAN_RELEASE" '
            /^deb / { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++;
                      if ($(i + 1) == rel) { print $i; exit } }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == rel && uri != "") { print uri; exit } }
            /^$/ { uri = "" }
        ' "$f"
    done | head -n1
}

pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if mountpoint -q "$ROOTFS/proc"; then
        umount "$ROOTFS/proc"
    fi
}
trap cleanup EXIT

# In the chroot, as root (the Dockerfile's RUN runs before USER).
in_root() {
    chroot "$ROOTFS" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# In the chroot as the image's user, with its ENV and WORKDIR.
in_image() {
    chroot --userspec="$uid:$uid" "$ROOTFS" /usr/bin/env -i -C /var/lib/ncps \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        XDG_DATA_HOME=/var/lib HOME=/var/lib/ncps SERVER_ADDR=":$PORT" "$@"
}

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, chroot)"
command -v debootstrap >/dev/null || fail "debootstrap missing: apt-get install -y debootstrap"

# 1. Base system.
if [ -x "$ROOTFS/bin/bash" ] && [ ! -d "$ROOTFS/debootstrap" ]; then
    echo "== debootstrap: $ROOTFS already present"
else
    MIRROR=${MIRROR:-$(apt_mirror)}
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    echo "== debootstrap --variant=minbase $DEBIAN_RELEASE $ROOTFS $MIRROR"
    debootstrap --variant=minbase "$DEBIAN_RELEASE" "$ROOTFS" "$MIRROR"
    # The suites debian:*-slim's apt lists: the release, its updates and security.
    security=$(DEBIAN_RELEASE=$DEBIAN_RELEASE-security apt_mirror)
    security=${security:-http://deb.debian.org/debian-security}
    printf 'deb %s %s main\n' "$MIRROR" "$DEBIAN_RELEASE" "$MIRROR" "$DEBIAN_RELEASE-updates" \
        "$security" "$DEBIAN_RELEASE-security" >"$ROOTFS/etc/apt/sources.list"
fi

# 2. The runtime stage: its RUN (continuation lines joined), COPY, ENV.
run=$(awk '
    /^FROM / { runtime = ($0 !~ / AS /) }
    runtime && /^RUN / { cmd = 1 }
    cmd { line = $0; sub(/^RUN /, "", line); more = sub(/\\$/, "", line);
          printf "%s", line; if (!more) { print ""; exit } }
' "$dockerfile")
[ -n "$run" ] || fail "no RUN in the Dockerfile's runtime stage"
marker=$ROOTFS/.ncps-check-rootfs-run
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$run" ]; then
    echo "== RUN: already applied"
elif [ -f "$marker" ] || in_root getent passwd ncps >/dev/null; then
    fail "$ROOTFS was set up by another RUN command: remove it and start again"
else
    echo "== RUN $run"
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    in_root /bin/sh -ec "$run"
    in_root apt-get clean
    printf '%s\n' "$run" >"$marker"
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$repo" && cargo build --release -p ncps-server -p ncps-cli)
fi
install -m 0755 "$repo/target/release/ncps-server" "$repo/target/release/ncps-cli" "$ROOTFS/usr/local/bin/"

echo "== user: $(in_root getent passwd ncps)"
echo "== data dir: $(stat -c '%A %u:%g %n' "$ROOTFS/var/lib/ncps")"

# 3. Run it. Fresh data directory each time, so the checks see this run's files.
if bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then fail "port $PORT already in use"; fi
find "$ROOTFS/var/lib/ncps" -mindepth 1 -delete
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
log=$(mktemp)
# A plain command, not in_image: `function &` would fork a bash in between and
# $! would not be the server's pid (chroot and env exec, so it is here).
chroot --userspec="$uid:$uid" "$ROOTFS" /usr/bin/env -i -C /var/lib/ncps \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XDG_DATA_HOME=/var/lib HOME=/var/lib/ncps SERVER_ADDR=":$PORT" \
    /usr/local/bin/ncps-server serve \
    --cache-hostname test \
    --cache-upstream-url http://127.0.0.1:9 \
    --cache-upstream-public-key 'up-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=' \
    >"$log" 2>&1 &
pid=$!

# The HEALTHCHECK's `bash -c` script, JSON-unescaped, on $PORT.
healthcheck=$(sed -n 's/.*CMD \["bash", "-c", "\(.*\)"\]$/\1/p' "$dockerfile" | sed 's/\\\\/\\/g; s/8501/'"$PORT"'/g')
[ -n "$healthcheck" ] || fail "no bash HEALTHCHECK in the Dockerfile"
echo "== HEALTHCHECK bash -c $healthcheck"

# Wait for the listener (as the HEALTHCHECK's start period would).
for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || { cat "$log"; fail "server exited early"; }
    if in_image bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then break; fi
    sleep 0.1
done

ids=$(ps -o uid=,gid=,user=,comm= -p "$pid")
echo "== process: $ids"
read -r puid pgid _ <<<"$ids"
[ "$puid" = "$uid" ] && [ "$pgid" = "$uid" ] || fail "server runs as $puid:$pgid, not $uid:$uid"

if in_image bash -c "$healthcheck"; then hc=0; else hc=$?; fi
echo "== HEALTHCHECK exit status: $hc"
[ "$hc" = 0 ] || { cat "$log"; fail "HEALTHCHECK failed"; }

echo "== files under /var/lib/ncps:"
(cd "$ROOTFS" && find var/lib/ncps -printf '%M %U:%G %10s %p\n' | sort -k4)
db=$(cd "$ROOTFS" && find var/lib/ncps -name '*.db' -o -name '*.sqlite*' | head -n1)
[ -n "$db" ] || fail "no SQLite database under /var/lib/ncps"
others=$(cd "$ROOTFS" && find var/lib/ncps ! -uid "$uid" -printf '%p ')
[ -z "$others" ] || fail "not owned by $uid: $others"

kill -TERM "$pid"
if wait "$pid"; then status=0; else status=$?; fi
pid=
echo "== exit status after SIGTERM: $status"
[ "$status" = 0 ] || { cat "$log"; fail "SIGTERM exit status $status"; }
echo "== server log:"
cat "$log"
rm -f "$log"
umount "$ROOTFS/proc"

# 4. Sizes.
rm -rf "$ROOTFS"/var/lib/apt/lists/*
in_root apt-get clean
echo "== rootfs: $(du -sh "$ROOTFS" | cut -f1) (docs, man, locales: $(du -shc "$ROOTFS"/usr/share/{doc,man,locale} | tail -n1 | cut -f1))"
stripped=$(mktemp -d)
for bin in ncps-server ncps-cli; do
    cp "$ROOTFS/usr/local/bin/$bin" "$stripped/$bin"
    strip "$stripped/$bin"
    echo "== $bin: $(stat -c %s "$ROOTFS/usr/local/bin/$bin") bytes, stripped $(stat -c %s "$stripped/$bin") bytes"
done
rm -rf "$stripped"
echo "== all checks passed"
