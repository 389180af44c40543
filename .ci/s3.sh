# Starts a throwaway S3 server (moto) on loopback for the S3 storage tests and
# exports NCPS_TEST_S3_ENDPOINT. Source it (`source .ci/s3.sh`) so the export
# reaches the caller; running it as a script only checks that moto starts.
#
# moto is installed once into a virtualenv under the cache directory and reused
# on later runs. A moto left running by an earlier run (found by its pid file)
# is stopped and a fresh one started, so every run sees an empty server.
#
# `ncps_s3_stop` stops it (for an EXIT trap).
#
# Knobs: NCPS_CI_CACHE_DIR (default ~/.cache/ncps-ci), NCPS_TEST_S3_PORT
# (default 19000).

ncps_s3_cache_dir() {
    echo "${NCPS_CI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ncps-ci}"
}

# Stops the moto this script started on the port, found by its pid file and
# checked by its command line so an unrelated process is never hit.
ncps_s3_stop() {
    local pidfile
    pidfile="$(ncps_s3_cache_dir)/moto-${NCPS_TEST_S3_PORT:-19000}.pid"
    [ -s "$pidfile" ] || return 0
    local pid
    pid="$(cat "$pidfile")"
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q moto_server; then
        kill "$pid" || true
        local i
        for i in $(seq 1 50); do
            [ -e "/proc/$pid" ] || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

ncps_s3_start() {
    local cache
    cache="$(ncps_s3_cache_dir)"
    local port="${NCPS_TEST_S3_PORT:-19000}"
    local venv="$cache/moto-venv"
    local pidfile="$cache/moto-$port.pid"
    local log="$cache/moto-$port.log"
    local url="http://127.0.0.1:$port"
    # Pinned so every machine runs the server the tests were written against.
    local moto_spec='moto[server]==5.2.5'

    mkdir -p "$cache"

    # The venv is complete only once the marker exists; a half-made one is redone.
    if [ ! -e "$venv/.ncps-installed" ] || [ "$(cat "$venv/.ncps-installed")" != "$moto_spec" ]; then
        rm -rf "$venv"
        if ! python3 -m venv "$venv"; then
            # Debian splits venv (and its ensurepip) out of python3.
            local sudo=""
            if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
            $sudo apt-get install -y python3-venv
            rm -rf "$venv"
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$moto_spec"
        echo "$moto_spec" >"$venv/.ncps-installed"
    fi

    # A moto an earlier run left behind would keep that run's buckets.
    ncps_s3_stop

    # Anything else on the port would make the tests talk to the wrong server.
    if "$venv/bin/python" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(('127.0.0.1', $port)) == 0 else 1)"; then
        echo "s3.sh: port $port is taken by another program; set NCPS_TEST_S3_PORT" >&2
        return 1
    fi

    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"

    local ready=""
    for _ in $(seq 1 100); do
        if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$url/', timeout=1)" 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.2
    done
    if [ -z "$ready" ]; then
        echo "s3.sh: moto did not answer on $url within 20 s; its log:" >&2
        cat "$log" >&2
        return 1
    fi

    export NCPS_TEST_S3_ENDPOINT="$url"
    echo "s3.sh: moto (pid $(cat "$pidfile")) serving S3 on $NCPS_TEST_S3_ENDPOINT"
}

ncps_s3_start
