# Starts a throwaway Redis on loopback for the Redis lock tests and exports
# NCPS_TEST_REDIS_URL; also a three-node Redis Cluster on the next three
# ports, exporting NCPS_TEST_REDIS_CLUSTER_ADDRS (comma-separated host:port,
# as --cache-redis-addrs takes them); and a Redis that speaks only TLS on the
# port after those, with a certificate for 127.0.0.1 and localhost signed by a
# throwaway CA, exporting NCPS_TEST_REDIS_TLS_ADDR (host:port) and
# NCPS_TEST_REDIS_TLS_CA (the CA's PEM file, for SSL_CERT_FILE). Source it (`source .ci/redis.sh`) so the
# exports reach the caller; running it as a script only checks that they start.
#
# Every run starts empty: servers an earlier run left (found by their pid
# files and checked by their command line, so an unrelated process is never
# hit) are stopped first, and nothing is saved to disk.
#
# `ncps_redis_stop` stops them (for an EXIT trap).
#
# Knobs: NCPS_CI_SERVICES_DIR (default /tmp/ncps-ci-services), NCPS_TEST_REDIS_PORT
# (default 16379; the cluster takes the three ports after it, TLS the fifth).

ncps_redis_dir() {
    echo "${NCPS_CI_SERVICES_DIR:-/tmp/ncps-ci-services}/redis"
}

# The single server's port, then the cluster's three, then the TLS one's.
ncps_redis_ports() {
    local port="${NCPS_TEST_REDIS_PORT:-16379}"
    echo "$port $((port + 1)) $((port + 2)) $((port + 3)) $((port + 4))"
}

# Whether something accepts TCP connections on 127.0.0.1:port.
ncps_redis_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Stops the servers this script started on its ports, by pid file.
ncps_redis_stop() {
    local dir port pidfile pid
    dir="$(ncps_redis_dir)"
    for port in $(ncps_redis_ports); do
        pidfile="$dir/$port.pid"
        [ -s "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q redis-server; then
            kill "$pid" || true
            for _ in $(seq 1 50); do
                [ -e "/proc/$pid" ] || break
                sleep 0.1
            done
        fi
        rm -f "$pidfile"
    done
}

# Starts one redis-server on `port`, with `extra` options; waits until it answers.
ncps_redis_start_one() {
    local dir="$1" port="$2"
    shift 2
    mkdir -p "$dir/$port"
    redis-server --bind 127.0.0.1 --daemonize yes \
        --pidfile "$dir/$port.pid" --logfile "$dir/$port.log" --dir "$dir/$port" \
        --save '' --appendonly no "$@" ||
        { cat "$dir/$port.log" >&2; return 1; }
    for _ in $(seq 1 100); do
        if [ "$(redis-cli "${NCPS_REDIS_CLI_ARGS[@]}" -p "$port" ping 2>/dev/null)" = PONG ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "redis.sh: redis-server did not answer on port $port within 10 s; its log:" >&2
    cat "$dir/$port.log" >&2
    return 1
}

# shellcheck source=.ci/certs.sh
source "$(dirname "${BASH_SOURCE[0]}")/certs.sh"

ncps_redis_start() {
    local dir sudo="" port single tls_port cluster_ports=() addrs=()
    dir="$(ncps_redis_dir)"
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi

    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        # An old package list may no longer name what the mirror has: update once and retry.
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y redis-server || {
            $sudo apt-get update
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y redis-server
        }
    fi

    # Servers an earlier run left would keep that run's keys.
    ncps_redis_stop
    for port in $(ncps_redis_ports); do
        if ncps_redis_port_open "$port"; then
            echo "redis.sh: port $port is taken by another program; set NCPS_TEST_REDIS_PORT" >&2
            return 1
        fi
    done
    mkdir -p "$dir"
    for port in $(ncps_redis_ports); do
        rm -rf "${dir:?}/$port" "$dir/$port.log"
    done

    read -r single cluster_ports[0] cluster_ports[1] cluster_ports[2] tls_port <<<"$(ncps_redis_ports)"
    NCPS_REDIS_CLI_ARGS=()
    ncps_redis_start_one "$dir" "$single" --port "$single" || return 1
    for port in "${cluster_ports[@]}"; do
        ncps_redis_start_one "$dir" "$port" --port "$port" --cluster-enabled yes \
            --cluster-config-file "$dir/$port/nodes.conf" || return 1
        addrs+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
        >"$dir/cluster-create-${cluster_ports[0]}.log" 2>&1 ||
        { cat "$dir/cluster-create-${cluster_ports[0]}.log" >&2; return 1; }
    local ready=""
    for _ in $(seq 1 100); do
        if redis-cli -p "${cluster_ports[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        echo "redis.sh: the Redis Cluster did not reach state ok within 10 s" >&2
        redis-cli -p "${cluster_ports[0]}" cluster info >&2
        return 1
    fi

    ncps_test_certs "$dir/tls" redis || return 1
    NCPS_REDIS_CLI_ARGS=(--tls --cacert "$dir/tls/ca.crt")
    ncps_redis_start_one "$dir" "$tls_port" --port 0 --tls-port "$tls_port" \
        --tls-cert-file "$dir/tls/server.crt" --tls-key-file "$dir/tls/server.key" \
        --tls-ca-cert-file "$dir/tls/ca.crt" --tls-auth-clients no || return 1
    NCPS_REDIS_CLI_ARGS=()

    export NCPS_TEST_REDIS_URL="redis://127.0.0.1:$single"
    export NCPS_TEST_REDIS_TLS_ADDR="127.0.0.1:$tls_port"
    export NCPS_TEST_REDIS_TLS_CA="$dir/tls/ca.crt"
    export NCPS_TEST_REDIS_CLUSTER_ADDRS
    NCPS_TEST_REDIS_CLUSTER_ADDRS="$(IFS=,; echo "${addrs[*]}")"
    echo "redis.sh: Redis on $NCPS_TEST_REDIS_URL, Redis Cluster on $NCPS_TEST_REDIS_CLUSTER_ADDRS," \
        "TLS Redis on $NCPS_TEST_REDIS_TLS_ADDR (CA $NCPS_TEST_REDIS_TLS_CA)"
}

ncps_redis_start
