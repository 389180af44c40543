#!/bin/sh
# Assembles the image's root file system from release binaries: only what
# they need. Run by deploy/docker/Dockerfile's build stage, and by
# deploy/docker/check-rootfs.sh on a machine without Docker (same script,
# same Debian release), so the two cannot drift.
#
#   rootfs.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds ncps-server, ncps-cli and ncps-healthcheck. Writes
#   OUT_DIR/rootfs/  everything but the data directory, owned by root:
#     usr/local/bin/{ncps-server,ncps-cli,ncps-healthcheck}, bin/ncps (a
#     symlink to ncps-server, the path ncps's own image uses);
#     the dynamic loader and each shared library the binaries load (ldd),
#     at the paths ldd names;
#     etc/ssl/certs/ca-certificates.crt (the build system's CA bundle:
#     upstreams, S3, Redis and databases over TLS);
#     etc/passwd and etc/group with root and ncps (10001), etc/nsswitch.conf
#     and etc/hosts (getaddrinfo: files, then DNS; a container runtime
#     mounts its own hosts and resolv.conf over them);
#     tmp (1777), var/lib (the image's XDG_DATA_HOME).
#   OUT_DIR/data/    the empty data directory, copied to /var/lib/ncps
#     owned by 10001 (COPY --chown: a stage's owners are not kept).
# No shell, no package manager, no other program.
set -eu

bin=$1
out=$2
root=$out/rootfs
uid=10001

rm -rf "$root" "$out/data"
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib" "$out/data"
chmod 1777 "$root/tmp"
chmod 0750 "$out/data"

for b in ncps-server ncps-cli ncps-healthcheck; do
    install -m 0755 "$bin/$b" "$root/usr/local/bin/$b"
done
ln -s /usr/local/bin/ncps-server "$root/bin/ncps"

# Every library and the loader, from ldd's "name => /path (addr)" and
# "/path (addr)" lines; vdso has no file.
for b in ncps-server ncps-cli ncps-healthcheck; do
    ldd "$bin/$b"
done | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u |
    while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done

cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cat >"$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
ncps:x:$uid:$uid:ncps:/var/lib/ncps:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<GROUP
root:x:0:
ncps:x:$uid:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf" "$root/etc/hosts" \
    "$root/etc/ssl/certs/ca-certificates.crt"
