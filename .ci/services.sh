# Starts throwaway PostgreSQL and MariaDB servers on loopback for the database
# tests and exports NCPS_TEST_POSTGRES_URL and NCPS_TEST_MYSQL_URL. Source it
# (`source .ci/services.sh`) so the exports reach the caller; running it as a
# script only checks that both servers start. `ncps_db_services_stop` stops them.
# Also exported: NCPS_TEST_POSTGRES_SOCKET_DIR and NCPS_TEST_MYSQL_SOCKET, where
# the same servers listen on Unix sockets, and NCPS_TEST_DB_TLS_CA, the PEM file
# of the throwaway CA that signed both servers' certificate (for 127.0.0.1 and
# localhost): both also talk TLS on their port, plain connections still work.
#
# Every run starts from empty data directories: servers an earlier run left
# (found by their pid files) are stopped first. Works as root (the servers run
# as the postgres and mysql users) or as a user who can run them directly.
#
# Knobs: NCPS_CI_SERVICES_DIR (default /tmp/ncps-ci-services; the server users
# must be able to reach it, so not under /root), NCPS_TEST_POSTGRES_PORT
# (default 25432), NCPS_TEST_MYSQL_PORT (default 23306); both below the
# kernel's ephemeral port range, so no outgoing connection can hold them.

ncps_db_services_dir() {
    echo "${NCPS_CI_SERVICES_DIR:-/tmp/ncps-ci-services}"
}

# Runs a command as `user` when root, else as the current user.
ncps_db_as() {
    local user="$1"
    shift
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}

# Whether something accepts TCP connections on 127.0.0.1:port.
ncps_db_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The newest installed PostgreSQL's bin directory.
ncps_db_pg_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# Stops the servers an earlier run (or this one) started, by pid file.
ncps_db_services_stop() {
    local base pg_bin pid pidfile
    base="$(ncps_db_services_dir)"
    pg_bin="$(ncps_db_pg_bin)"
    if [ -s "$base/pg/postmaster.pid" ] && [ -n "$pg_bin" ]; then
        ncps_db_as postgres "$pg_bin/pg_ctl" -D "$base/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    # mariadbd's own pid file, else the one written at start.
    for pidfile in "$base/mysql/pid" "$base/mysql.pid"; do
        [ -s "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q mariadbd; then
            kill "$pid" || true
            for _ in $(seq 1 100); do
                [ -e "/proc/$pid" ] || break
                sleep 0.1
            done
        fi
    done
    rm -f "$base/mysql.pid"
}

# shellcheck source=.ci/certs.sh
source "$(dirname "${BASH_SOURCE[0]}")/certs.sh"

ncps_db_services_start() {
    local base pg_port my_port pg_bin pg_dir my_dir sudo=""
    base="$(ncps_db_services_dir)"
    pg_port="${NCPS_TEST_POSTGRES_PORT:-25432}"
    my_port="${NCPS_TEST_MYSQL_PORT:-23306}"
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi

    if [ -z "$(ncps_db_pg_bin)" ] || ! command -v mariadbd >/dev/null; then
        # An old package list may no longer name what the mirror has: update once and retry.
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y postgresql mariadb-server || {
            $sudo apt-get update
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y postgresql mariadb-server
        }
    fi
    pg_bin="$(ncps_db_pg_bin)"

    ncps_db_services_stop
    local port
    for port in "$pg_port" "$my_port"; do
        if ncps_db_port_open "$port"; then
            echo "services.sh: port $port is taken by another program; set NCPS_TEST_POSTGRES_PORT / NCPS_TEST_MYSQL_PORT" >&2
            return 1
        fi
    done

    pg_dir="$base/pg"
    my_dir="$base/mysql"
    rm -rf "$pg_dir" "$my_dir"
    mkdir -p "$base" "$pg_dir" "$my_dir"
    chmod 755 "$base"
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$pg_dir"
        chown mysql:mysql "$my_dir"
    fi
    ncps_test_certs "$base/tls" services || return 1

    # PostgreSQL: trust auth on loopback, no fsync; pg_ctl -w returns once it accepts connections.
    ncps_db_as postgres "$pg_bin/initdb" -D "$pg_dir" -U postgres --auth=trust -E UTF8 >"$base/pg-initdb.log" 2>&1 ||
        { cat "$base/pg-initdb.log" >&2; return 1; }
    # TLS: the key must belong to the server's user, readable by it alone.
    cp "$base/tls/server.crt" "$base/tls/server.key" "$pg_dir/"
    chmod 600 "$pg_dir/server.key"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$pg_dir/server.crt" "$pg_dir/server.key"; fi
    ncps_db_as postgres "$pg_bin/pg_ctl" -D "$pg_dir" -l "$pg_dir/log" -w -t 60 \
        -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 -c ssl=on -c ssl_cert_file=$pg_dir/server.crt -c ssl_key_file=$pg_dir/server.key" start >/dev/null ||
        { cat "$pg_dir/log" >&2; return 1; }

    # MariaDB: setsid so it outlives this shell; its output goes to a log, not the caller's pipes.
    local user_opt=()
    if [ "$(id -u)" = 0 ]; then user_opt=(--user=mysql); fi
    mariadb-install-db "${user_opt[@]}" --datadir="$my_dir" --skip-test-db >"$base/mysql-install.log" 2>&1 ||
        { cat "$base/mysql-install.log" >&2; return 1; }
    cp "$base/tls/server.crt" "$base/tls/server.key" "$base/tls/ca.crt" "$my_dir/"
    chmod 600 "$my_dir/server.key"
    if [ "$(id -u)" = 0 ]; then chown mysql:mysql "$my_dir/server.crt" "$my_dir/server.key" "$my_dir/ca.crt"; fi
    setsid mariadbd --no-defaults "${user_opt[@]}" --datadir="$my_dir" --socket="$my_dir/sock" \
        --port="$my_port" --bind-address=127.0.0.1 --pid-file="$my_dir/pid" \
        --max-connections=300 --innodb-flush-log-at-trx-commit=0 \
        --ssl-cert="$my_dir/server.crt" --ssl-key="$my_dir/server.key" --ssl-ca="$my_dir/ca.crt" \
        >"$base/mysql.log" 2>&1 </dev/null &
    echo $! >"$base/mysql.pid"
    local ready=""
    for _ in $(seq 1 150); do
        if mariadb-admin --socket="$my_dir/sock" -u "$(id -un)" ping >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.2
    done
    if [ -z "$ready" ]; then
        echo "services.sh: MariaDB did not answer within 30 s; its log:" >&2
        cat "$base/mysql.log" >&2
        return 1
    fi
    # The tests create a database of their own per run, so the user may create
    # any; and users of them (the TLS tests), so it may grant.
    mariadb --socket="$my_dir/sock" -u "$(id -un)" -e "
        CREATE USER 'ncps'@'127.0.0.1' IDENTIFIED BY 'ncps-test';
        GRANT ALL PRIVILEGES ON *.* TO 'ncps'@'127.0.0.1' WITH GRANT OPTION;
        CREATE USER 'ncps'@'localhost' IDENTIFIED BY 'ncps-test';
        GRANT ALL PRIVILEGES ON *.* TO 'ncps'@'localhost' WITH GRANT OPTION;
        CREATE DATABASE ncps CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"

    export NCPS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
    export NCPS_TEST_MYSQL_URL="mysql://ncps:ncps-test@127.0.0.1:$my_port/ncps"
    # Where the same servers listen on Unix sockets, for the socket URL forms.
    export NCPS_TEST_POSTGRES_SOCKET_DIR="$pg_dir"
    export NCPS_TEST_MYSQL_SOCKET="$my_dir/sock"
    export NCPS_TEST_DB_TLS_CA="$base/tls/ca.crt"
    echo "services.sh: PostgreSQL on $NCPS_TEST_POSTGRES_URL, MariaDB (pid $(cat "$base/mysql.pid")) on mysql://ncps:***@127.0.0.1:$my_port/ncps"
}

ncps_db_services_start
