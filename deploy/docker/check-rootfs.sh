#!/usr/bin/env bash
# Stand-in for `docker build -f deploy/docker/Dockerfile` and `docker run` on
# machines without a Docker engine. Run as root from anywhere.
#
# It builds the image's root file system from the Dockerfile itself and runs
# the server in it:
#   1. the build stage: `cargo build --release` (unless SKIP_BUILD=1), then
#      the build stage's RUN after its cargo build, read from the Dockerfile
#      and run here with /out moved to a work directory: strip and install
#      the binaries, rustc the healthcheck, deploy/docker/rootfs.sh. This
#      machine is Debian bookworm, as the build image is, so ldd finds the
#      same libraries;
#   2. the final stage: it must be `FROM scratch`; each `COPY --from=build
#      [--chown=U:G] SRC DEST` is applied to an empty directory, and any
#      instruction that would change files in another way fails the check;
#      ENV, USER, WORKDIR, ENTRYPOINT, CMD and HEALTHCHECK are read;
#   3. checks the file system: no shell, /bin/ncps runs ncps-server, every
#      binary's libraries resolve inside it (the loader's --list in a
#      chroot), the data directory belongs to the image's user;
#   4. runs ENTRYPOINT + CMD in a chroot as USER, with ENV and WORKDIR, with
#      NARs in S3 over TLS and an upstream found by host name:
#        - a throwaway CA signs a certificate for s3.ncps.test; nginx
#          terminates TLS for it in front of the S3 server at S3_ENDPOINT
#          (plain HTTP, which must accept anonymous bucket creation and
#          listing, as .ci/s3.sh's moto does); the CA is added
#          to a copy of the rootfs's CA bundle, for this run only;
#        - the upstream is a binary cache Nix wrote (nix copy --to file://)
#          of a file added to a scratch store, served over HTTP and named
#          upstream.ncps.test in the rootfs's /etc/hosts (getaddrinfo in the
#          chroot: nsswitch.conf, files);
#      then: /readyz (database, the bucket over TLS, locks), the narinfo and
#      NAR through the server equal the upstream's NAR, the NAR is in the
#      bucket, the HEALTHCHECK command passes in the chroot, the process runs
#      as the image's user, SIGTERM exits 0;
#   5. prints the root file system's size, the number the image will have
#      (uncompressed; and as a gzip layer), and fails above MAX_MB (30).
#
# Environment: S3_ENDPOINT (required), WORK (default /tmp/ncps-rootfs),
# SKIP_BUILD=1, MAX_MB.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
dockerfile=$repo/deploy/docker/Dockerfile
WORK=${WORK:-/tmp/ncps-rootfs}
MAX_MB=${MAX_MB:-30}
root=$WORK/rootfs
start=$SECONDS

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (chroot, --userspec)"
for tool in nginx openssl nix-store nix python3 curl ldd; do
    command -v "$tool" >/dev/null || fail "$tool missing"
done

# The Dockerfile's instructions, continuation lines joined, comments dropped:
# "STAGE<TAB>INSTRUCTION<TAB>ARGUMENTS", STAGE counting FROMs from 1.
instructions() {
    awk '
        /^[[:space:]]*#/ && cont == "" { next }
        /^[[:space:]]*$/ && cont == "" { next }
        {
            line = $0
            if (sub(/\\[[:space:]]*$/, "", line)) { cont = cont line " "; next }
            line = cont line; cont = ""
            sub(/^[[:space:]]+/, "", line)
            split(line, w, /[[:space:]]+/)
            ins = toupper(w[1]); rest = substr(line, length(w[1]) + 2)
            if (ins == "FROM") stage++
            printf "%d\t%s\t%s\n", stage, ins, rest
        }' "$dockerfile"
}
last=$(instructions | tail -n1 | cut -f1)
final() { instructions | awk -F'\t' -v s="$last" '$1 == s { print $2 "\t" $3 }'; }
build_run=$(instructions | awk -F'\t' -v s="$last" '$1 == s - 1 && $2 == "RUN" { print $3 }')
[ -n "$build_run" ] || fail "no RUN in the build stage"
[ "$(final | head -n1)" = "$(printf 'FROM\tscratch')" ] || fail "the final stage is not FROM scratch: $(final | head -n1)"

# 1. The build stage.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    step "cargo build --release -p ncps-server -p ncps-cli"
    (cd "$repo" && cargo build --release --locked -p ncps-server -p ncps-cli)
fi
# The RUN without its --mount flags and its cargo build; /out moved.
after_build=$(printf '%s\n' "$build_run" | sed -E 's/--mount=[^ ]+ +//g; s/^ *cargo build [^&]*&& *//')
case "$after_build" in
    cargo*) fail "could not split the build stage's RUN: $build_run" ;;
esac
rm -rf "$WORK"
mkdir -p "$WORK"
after_build=${after_build//\/out/$WORK/out}
step "build stage RUN (after cargo build): $after_build"
(cd "$repo" && sh -ec "$after_build")

# 2. The final stage.
user=
workdir=/
entrypoint='[]'
cmd='[]'
healthcheck=
envs=()
mkdir -p "$root"
while IFS=$'\t' read -r ins rest; do
    case "$ins" in
        FROM) ;;
        COPY)
            chown_to=
            args=()
            for w in $rest; do
                case "$w" in
                    --from=build) ;;
                    --chown=*) chown_to=${w#--chown=} ;;
                    --*) fail "COPY option $w is not mirrored here" ;;
                    *) args+=("$w") ;;
                esac
            done
            [ "${#args[@]}" = 2 ] || fail "COPY $rest: one source and one destination expected"
            case "$rest" in *--from=build*) ;; *) fail "COPY $rest: only from the build stage" ;; esac
            src=$WORK${args[0]} dest=$root${args[1]}
            step "COPY ${args[0]} -> ${args[1]}${chown_to:+ (owner $chown_to)}"
            mkdir -p "$dest"
            cp -a "$src/." "$dest/"
            if [ -n "$chown_to" ]; then chown -R "$chown_to" "$dest"; fi
            ;;
        ENV)
            for kv in $rest; do envs+=("$kv"); done
            ;;
        USER) user=$rest ;;
        WORKDIR) workdir=$rest ;;
        ENTRYPOINT) entrypoint=$rest ;;
        CMD) cmd=$rest ;;
        HEALTHCHECK) healthcheck=${rest#*CMD } ;;
        VOLUME | EXPOSE | STOPSIGNAL | LABEL | ARG) ;;
        *) fail "final stage instruction $ins is not mirrored here" ;;
    esac
done < <(final)
[ -n "$user" ] || fail "no USER"
case "$user" in 0 | 0:* | root | root:*) fail "USER $user is root" ;; esac
uid=${user%%:*}
gid=${user#*:}
json_words() { python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$1"; }
mapfile -t entry < <(json_words "$entrypoint")
mapfile -t cmdv < <(json_words "$cmd")
mapfile -t hc < <(json_words "$healthcheck")
[ "${#hc[@]}" -gt 0 ] || fail "no HEALTHCHECK CMD [...]"

# 3. What is in it.
step "contents"
for sh in bin/sh bin/bash usr/bin/sh usr/bin/bash bin/busybox; do
    [ ! -e "$root/$sh" ] || fail "$sh in the image"
done
[ "$(readlink "$root/bin/ncps")" = /usr/local/bin/ncps-server ] || fail "/bin/ncps is not a link to ncps-server"
[ "$(stat -c %u:%g "$root/var/lib/ncps")" = "$uid:$gid" ] || fail "/var/lib/ncps is not owned by $uid:$gid"
loader=$(cd "$root" && ls lib64/ld-linux-*.so.* | head -n1)
for b in usr/local/bin/ncps-server usr/local/bin/ncps-cli usr/local/bin/ncps-healthcheck; do
    # The loader inside the rootfs resolving the binary's libraries inside it.
    libs=$(chroot "$root" "/$loader" --list "/$b") || fail "$b: its libraries do not resolve in the rootfs"
    ! grep -q 'not found' <<<"$libs" || fail "$b: $libs"
done
(cd "$root" && find . -printf '%M %u:%g %9s %p\n' | sort -k4 | sed 's/^/   /')

# 4. Run it: TLS S3 and an upstream by name.
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if mountpoint -q "$root/proc"; then umount "$root/proc"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

[ -n "${S3_ENDPOINT:-}" ] || fail "S3_ENDPOINT (a plain-HTTP S3 server, such as .ci/s3.sh's moto) is not set"
s3_plain=$S3_ENDPOINT
bucket=ncps-rootfs-$$-$RANDOM
curl -fsS -X PUT "$s3_plain/$bucket" >/dev/null || fail "could not create bucket $bucket at $s3_plain"

tls=$WORK/tls
mkdir -p "$tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=ncps rootfs test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=s3.ncps.test" \
    -keyout "$tls/s3.key" -out "$tls/s3.csr" 2>/dev/null
printf 'subjectAltName=DNS:s3.ncps.test\nextendedKeyUsage=serverAuth\n' >"$tls/ext.cnf"
openssl x509 -req -in "$tls/s3.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 1 -extfile "$tls/ext.cnf" -out "$tls/s3.crt" 2>/dev/null
s3_port=$(free_port)
cat >"$tls/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $tls/nginx.pid;
error_log $tls/nginx-error.log;
events {}
http {
    access_log $tls/nginx-access.log;
    client_body_temp_path $tls;
    proxy_temp_path $tls;
    client_max_body_size 0;
    server {
        listen 127.0.0.1:$s3_port ssl;
        server_name s3.ncps.test;
        ssl_certificate $tls/s3.crt;
        ssl_certificate_key $tls/s3.key;
        location / {
            proxy_pass $s3_plain;
            proxy_request_buffering off;
        }
    }
}
NGINX
nginx -c "$tls/nginx.conf" &
pids+=($!)

# The upstream: a Nix binary cache of one file.
up=$WORK/upstream
mkdir -p "$up"
nix-store --generate-binary-cache-key upstream.ncps.test-1 "$up/key.sec" "$up/key.pub"
head -c 300000 /dev/urandom >"$up/payload"
export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters ='
path=$(nix-store --store "$up/store" --add "$up/payload")
nix copy --store "$up/store" --to "file://$up/cache?secret-key=$up/key.sec&compression=xz" "$path"
up_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$up/cache" "$up_port" >"$up/http.log" 2>&1 &
pids+=($!)
hash=$(basename "$path" | cut -c1-32)

port=$(free_port)
mkdir -p "$root/proc"
mount -t proc proc "$root/proc"
# The server as the image runs it, with this run's options.
serve() {
    exec env -i "${envs[@]}" SERVER_ADDR="127.0.0.1:$port" \
        CACHE_HOSTNAME=rootfs.ncps.test \
        CACHE_UPSTREAM_URLS="http://upstream.ncps.test:$up_port" \
        CACHE_UPSTREAM_PUBLIC_KEYS="$(cat "$up/key.pub")" \
        CACHE_STORAGE_S3_BUCKET="$bucket" \
        CACHE_STORAGE_S3_ENDPOINT="https://s3.ncps.test:$s3_port" \
        CACHE_STORAGE_S3_REGION=us-east-1 \
        CACHE_STORAGE_S3_FORCE_PATH_STYLE=true \
        CACHE_STORAGE_S3_ACCESS_KEY_ID=test \
        CACHE_STORAGE_S3_SECRET_ACCESS_KEY=test \
        "$(command -v chroot)" --userspec="$user" "$root" "${entry[@]}" "${cmdv[@]}"
}

# This run's rootfs changes: names first. Without the throwaway CA in the
# bundle the bucket's certificate must be refused (the server checks the
# bucket at start and exits): the bundle is what TLS trusts.
printf '127.0.0.1\ts3.ncps.test upstream.ncps.test\n' >>"$root/etc/hosts"
step "without the test CA in the bundle: the S3 certificate is refused"
if timeout 60 bash -c "$(declare -f serve); $(declare -p envs entry cmdv root user port up_port up bucket s3_port); serve" >"$WORK/untrusted.log" 2>&1; then
    cat "$WORK/untrusted.log"
    fail "the server started with an S3 certificate its bundle does not trust"
fi
grep -i -E 'certificate|tls|UnknownIssuer|dispatch|connect' "$WORK/untrusted.log" | head -n 3 | sed 's/^/   /'
cat "$tls/ca.crt" >>"$root/etc/ssl/certs/ca-certificates.crt"
step "run as $user in $workdir: ${entry[*]} ${cmdv[*]}"
log=$WORK/server.log
chroot --userspec="$user" "$root" /usr/local/bin/ncps-healthcheck "http://127.0.0.1:1/" 2>/dev/null &&
    fail "the healthcheck passed with nothing listening"
# No env(1) inside the image: env runs here and chroot execs the entrypoint
# with its environment (in / rather than WORKDIR, which only relative paths
# would notice; the server uses none).
serve >"$log" 2>&1 &
server=$!
pids+=("$server")

ready=
for _ in $(seq 1 300); do
    kill -0 "$server" 2>/dev/null || { cat "$log"; fail "the server exited"; }
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
[ -n "$ready" ] || { cat "$log"; curl -sS "http://127.0.0.1:$port/readyz" || true; fail "/readyz never answered 200"; }
echo "   /readyz: $(curl -fsS "http://127.0.0.1:$port/readyz")"

read -r puid pgid <<<"$(ps -o uid=,gid= -p "$server")"
echo "   process: uid $puid gid $pgid"
[ "$puid:$pgid" = "$uid:$gid" ] || fail "the server runs as $puid:$pgid, not $uid:$gid"

narinfo=$(curl -fsS "http://127.0.0.1:$port/$hash.narinfo") || { cat "$log"; fail "narinfo through the server"; }
url=$(sed -n 's/^URL: //p' <<<"$narinfo")
curl -fsS -o "$WORK/nar.got" "http://127.0.0.1:$port/$url" || { cat "$log"; fail "NAR through the server"; }
cmp "$WORK/nar.got" "$up/cache/$url" || fail "the NAR served differs from the upstream's"
echo "   narinfo and NAR ($url, $(stat -c %s "$WORK/nar.got") bytes) served from upstream.ncps.test"
stored=$(curl -fsS "$s3_plain/$bucket?list-type=2" | grep -o '<Key>[^<]*</Key>' | grep -c nar || true)
[ "$stored" -ge 1 ] || { cat "$log"; fail "nothing stored in the bucket over TLS"; }
echo "   bucket $bucket over https://s3.ncps.test:$s3_port: $stored NAR object(s)"
grep -q "s3.ncps.test:$s3_port" "$tls/nginx-access.log" 2>/dev/null || [ -s "$tls/nginx-access.log" ] || fail "nothing reached S3 through TLS"

hc_cmd=("${hc[@]}")
hc_cmd[${#hc_cmd[@]}-1]=${hc_cmd[${#hc_cmd[@]}-1]//8501/$port}
chroot --userspec="$user" "$root" "${hc_cmd[@]}" || { cat "$log"; fail "HEALTHCHECK ${hc_cmd[*]} failed"; }
echo "   HEALTHCHECK ${hc[*]} (on port $port): passed"

kill -TERM "$server"
if wait "$server"; then status=0; else status=$?; fi
echo "   exit status after SIGTERM: $status"
[ "$status" = 0 ] || { cat "$log"; fail "SIGTERM exit status $status"; }
umount "$root/proc"

# 5. Size, without this run's changes (the CA, the names).
step "size"
cp "$WORK/out/rootfs/etc/hosts" "$root/etc/hosts"
cp "$WORK/out/rootfs/etc/ssl/certs/ca-certificates.crt" "$root/etc/ssl/certs/ca-certificates.crt"
bytes=$(du -sb --apparent-size "$root" | cut -f1)
(cd "$root" && du -ab --apparent-size . | sort -rn | head -n 8 | sed 's/^/   /')
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1000000 }')
gz=$(tar -C "$root" --numeric-owner -cf - . | gzip -6 | wc -c)
echo "== image root file system: $bytes bytes ($mb MB) uncompressed, $gz bytes as a gzip layer; limit $MAX_MB MB"
awk -v b="$bytes" -v m="$MAX_MB" 'BEGIN { exit !(b <= m * 1000000) }' || fail "over $MAX_MB MB"
echo "== check-rootfs.sh: all checks passed in $((SECONDS - start)) s"
