#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, in a fresh directory under /tmp: the one
# definition of it, used by scripts/test.sh (one cluster for the whole run) and by the
# test harness (tests/src/postgres.rs, a private cluster when DYNSERV_TEST_DATABASE_URL
# is unset).
#
#   scripts/test-postgres.sh start [--watch PID]  # prints DYNSERV_TEST_DATABASE_URL=… and DYNSERV_TEST_PG_DIR=…
#   scripts/test-postgres.sh stop DIR             # stops the cluster in DIR and removes DIR
#   scripts/test-postgres.sh watch PID DIR        # waits until process PID is gone, then stops DIR
#
# `start --watch PID` also starts `watch PID DIR` in a session of its own (so a kill of
# PID's process group does not reach it) as soon as DIR exists: the cluster is stopped
# and DIR removed once PID is gone, however it ended, even in the middle of `start`.
#
# Needs Debian's postgresql package (the server binaries in /usr/lib/postgresql/VERSION/bin;
# the newest version there is used). Run as root, the cluster runs as the unprivileged
# `postgres` user; run as anyone else, as that user. It listens on 127.0.0.1 only, on a
# free port, trusts every connection from there (superuser `postgres`, no password), keeps
# its socket in DIR, and does not fsync: test data, thrown away by `stop`.
set -euo pipefail

# Marks a directory made by `start`, so `stop` never removes anything else.
marker=.dynserv-test-postgres

fail() {
    printf 'test-postgres: %s\n' "$*" >&2
    exit 1
}

pg_bin_dir() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
        sort -V | tail -n 1)"
    if [ -z "$dir" ]; then
        printf 'test-postgres: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install Debian'"'"'s postgresql package (apt-get install postgresql; scripts/test.sh does)\n' >&2
        exit 3
    fi
    dirname "$dir"
}

# Runs a command as the cluster's owner: `postgres` when we are root (PostgreSQL refuses
# to run as root), ourselves otherwise.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local watch_pid="" bin dir port attempt
    if [ $# -gt 0 ]; then
        [ $# -eq 2 ] && [ "$1" = --watch ] && [ -n "$2" ] || fail "usage: $0 start [--watch PID]"
        watch_pid="$2"
    fi
    bin="$(pg_bin_dir)"
    dir="$(mktemp -d /tmp/dynserv-pg.XXXXXX)"
    : >"$dir/$marker"
    if [ -n "$watch_pid" ]; then
        # Its output goes nowhere: a caller reading our stdout to its end must not wait
        # for the watcher.
        setsid "${BASH_SOURCE[0]}" watch "$watch_pid" "$dir" </dev/null >/dev/null 2>&1 &
    fi
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || fail "no user postgres to run the cluster as (Debian's postgresql package creates it)"
        chown -R postgres: "$dir"
    fi
    if ! as_owner "$bin/initdb" --pgdata="$dir/data" --username=postgres --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 --no-sync --no-instructions >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        fail "initdb failed (output above)"
    fi
    # Appending and truncating keep the files' owner.
    printf 'host all all 127.0.0.1/32 trust\n' >"$dir/data/pg_hba.conf"
    cat >>"$dir/data/postgresql.conf" <<EOF

# scripts/test-postgres.sh: a throwaway cluster for the tests.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    # A port below Linux's ephemeral range (32768-60999), so the ports the tests ask the
    # kernel for never collide with it; another taken in between is retried.
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 12000))
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        if as_owner "$bin/pg_ctl" --pgdata="$dir/data" --log="$dir/postgres.log" \
            --options="-p $port" --wait --timeout=60 start >/dev/null 2>&1; then
            printf 'DYNSERV_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:%s/postgres\n' "$port"
            printf 'DYNSERV_TEST_PG_DIR=%s\n' "$dir"
            return 0
        fi
        grep -q 'could not bind\|already in use' "$dir/postgres.log" 2>/dev/null || break
    done
    tail -n 20 "$dir/postgres.log" >&2 2>/dev/null || true
    rm -rf "$dir"
    fail "pg_ctl start failed after $attempt tries (log above)"
}

stop() {
    local dir="$1"
    [ -d "$dir" ] || return 0
    [ -f "$dir/$marker" ] || fail "$dir was not made by scripts/test-postgres.sh start; not touching it"
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$(pg_bin_dir)/pg_ctl" --pgdata="$dir/data" --mode=immediate --wait stop \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

watch() {
    local pid="$1" dir="$2"
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
    done
    stop "$dir"
}

case "${1:-}" in
start)
    shift
    start "$@"
    ;;
stop)
    [ $# -eq 2 ] || fail "usage: $0 stop DIR"
    stop "$2"
    ;;
watch)
    [ $# -eq 3 ] || fail "usage: $0 watch PID DIR"
    watch "$2" "$3"
    ;;
*) fail "usage: $0 start [--watch PID] | stop DIR | watch PID DIR" ;;
esac
