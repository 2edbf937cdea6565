#!/bin/bash
# pg-lib.sh: a throwaway PostgreSQL server for the tests of spored's
# PostgreSQL state backend (docs/state.md).
#
#   pg-lib.sh run CMD [ARG...]   start a server, run CMD with the variables
#                                below set, stop the server and remove its
#                                directory (also when CMD fails or the
#                                script is killed); exit with CMD's status
#   pg-lib.sh stop               stop the server of $SPORE_TEST_PG_DIR at
#                                once (pg_ctl -m immediate): a lost database
#   pg-lib.sh start              start it again
#
# Bash tests may also source it and call pg_start / pg_stop themselves.
#
# The server comes from Debian's postgresql package (initdb, pg_ctl of
# /usr/lib/postgresql/*/bin); without it, `run` exits 77 (skip) saying so.
# It runs as an unprivileged user (PostgreSQL refuses root: under root,
# "nobody" unless SPORE_TEST_PG_USER says otherwise; else the user running
# the tests), in a new temporary directory
# owned by that user, and listens on a unix socket in that directory only
# (listen_addresses=''), with trust authentication for its user "spore".
# fsync is off: the tests do not crash the machine.
#
# Set for CMD:
#   SPORE_TEST_PG_DIR   the server's directory (data/, the socket, log)
#   SPORE_TEST_PG_DSN   a libpq conninfo of its database "postgres", as
#                       "spore": tests create their own databases from it
#   SPORE_TEST_PG_LIB   this script, for `stop` and `start`

pg_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# pg_as_user CMD...: CMD as the server's user (root only switches; a
# normal user runs the server as itself)
pg_as_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "${SPORE_TEST_PG_USER:-nobody}" -- "$@"
    else
        "$@"
    fi
}

# pg_ctl_do ARG...: pg_ctl of $SPORE_TEST_PG_DIR as the server's user
pg_ctl_do() {
    local bin
    bin=$(pg_bindir) || return 1
    pg_as_user "$bin/pg_ctl" -D "$SPORE_TEST_PG_DIR/data" "$@"
}

pg_server_start() {
    pg_ctl_do -w -t 60 -l "$SPORE_TEST_PG_DIR/log" \
        -o "-c listen_addresses='' -k $SPORE_TEST_PG_DIR -c fsync=off" \
        start >/dev/null
}

# pg_start: a new server; sets and exports the variables above
pg_start() {
    local bin user
    bin=$(pg_bindir) || return 1
    user=${SPORE_TEST_PG_USER:-nobody}
    SPORE_TEST_PG_DIR=$(mktemp -d /tmp/spore-pg-XXXXXX) || return 1
    export SPORE_TEST_PG_DIR
    if [ "$(id -u)" -eq 0 ]; then
        chown "$user:" "$SPORE_TEST_PG_DIR" || return 1
    fi
    if ! pg_as_user "$bin/initdb" -D "$SPORE_TEST_PG_DIR/data" -U spore \
        --auth=trust -E UTF8 --no-sync >"$SPORE_TEST_PG_DIR/initdb.log" 2>&1; then
        echo "pg-lib: initdb failed:" >&2
        cat "$SPORE_TEST_PG_DIR/initdb.log" >&2
        return 1
    fi
    if ! pg_server_start; then
        echo "pg-lib: the server did not start:" >&2
        cat "$SPORE_TEST_PG_DIR/log" >&2
        return 1
    fi
    export SPORE_TEST_PG_DSN="host=$SPORE_TEST_PG_DIR user=spore dbname=postgres"
}

# pg_stop: stop the server of pg_start and remove its directory
pg_stop() {
    [ -n "${SPORE_TEST_PG_DIR:-}" ] && [ -d "$SPORE_TEST_PG_DIR" ] || return 0
    if [ -f "$SPORE_TEST_PG_DIR/data/postmaster.pid" ]; then
        pg_ctl_do -m immediate -w stop >/dev/null 2>&1
    fi
    rm -rf "$SPORE_TEST_PG_DIR"
    SPORE_TEST_PG_DIR=
}

pg_main() {
    local cmd=${1:-}
    shift || true
    case "$cmd" in
    run)
        if ! pg_bindir >/dev/null; then
            echo "1..0 # SKIP PostgreSQL's server (Debian package postgresql, /usr/lib/postgresql/*/bin/initdb) is not installed"
            exit 77
        fi
        trap pg_stop EXIT
        trap 'exit 130' INT TERM
        pg_start || exit 1
        export SPORE_TEST_PG_LIB
        SPORE_TEST_PG_LIB=$(readlink -f "${BASH_SOURCE[0]}")
        "$@"
        exit $?
        ;;
    stop)
        pg_ctl_do -m immediate -w stop >/dev/null
        ;;
    start)
        pg_server_start
        ;;
    *)
        echo "usage: pg-lib.sh run CMD [ARG...] | stop | start" >&2
        exit 2
        ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    pg_main "$@"
fi
