# scripts/site-lib.sh: a spore site on one machine — spored and several
# spore-agents, each "host" with its own directories, storage pool and
# console logs, all on loopback and one libvirtd.  Sourced by scripts/demo
# and tests/integration/test-site.sh.
#
# Set before sourcing: SITE (a directory of the caller's), BUILD (the meson
# build directory).  Optional: SITE_PORT (default: a free one), SITE_TAG (a
# short name for pools, default "site"), SITE_VIRT (kvm or qemu),
# SITE_LOST_AFTER (seconds, default 10), SITE_SPORED_ARGS and
# SITE_AGENT_ARGS (more flags for spored and for each spore-agent).
#
# Everything started is recorded under $SITE (PID files) and stopped by
# site_stop, by PID; domains and pools are found by the names this file
# gives them.

SITE_TAG=${SITE_TAG:-site}
SITE_LOST_AFTER=${SITE_LOST_AFTER:-10}
SITE_HOSTS=()

# site_port: a port P with P + 1 and P + 2 free too (spored's agents,
# registrations and metrics), tried at most 100 times (a run just before
# may hold some in TIME_WAIT)
site_port() {
    python3 -c '
import socket
for _ in range(100):
    socks = []
    try:
        socks = [socket.socket() for _ in range(3)]
        socks[0].bind(("127.0.0.1", 0))
        p = socks[0].getsockname()[1]
        for i in (1, 2):
            socks[i].bind(("127.0.0.1", p + i))
        print(p)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
else:
    raise SystemExit("site_port: no three free ports in a row in 100 tries")'
}

sporectl_site() { "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" "$@"; }

# site_manager_start: spored on 127.0.0.1:SITE_PORT (agents) and the next
# port (registrations)
site_manager_start() {
    mkdir -p "$SITE/manager" "$SITE/m" "$SITE/hosts.d"
    SITE_PORT=${SITE_PORT:-$(site_port)}
    rm -f "$SITE/m/control.sock" # a killed spored leaves it behind
    "$BUILD/daemon/spored" --state-dir "$SITE/manager" --run-dir "$SITE/m" \
        --listen "tcp://127.0.0.1:$SITE_PORT" --hosts-dir "$SITE/hosts.d" \
        --lost-after "$SITE_LOST_AFTER" --resend 5 \
        --metrics "127.0.0.1:$((SITE_PORT + 2))" ${SITE_SPORED_ARGS:-} \
        >>"$SITE/spored.log" 2>&1 &
    echo $! >"$SITE/spored.pid"
    for _ in $(seq 100); do
        [ -S "$SITE/m/control.sock" ] && return 0
        sleep 0.1
    done
    echo "site: spored did not start; see $SITE/spored.log" >&2
    return 1
}

site_manager_kill() { # site_manager_kill [SIGNAL]
    local pid
    pid=$(cat "$SITE/spored.pid" 2>/dev/null) || return 0
    kill "-${1:-TERM}" "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$SITE/spored.pid"
}

# site_host_key NAME: make host NAME's key pair now (as its agent would)
# and print the public key
site_host_key() {
    mkdir -p "$SITE/$1/state"
    "$BUILD/daemon/spored" --print-key --state-dir "$SITE/$1/state"
}

# site_agent_start NAME: a spore-agent calling itself NAME, with a peer
# server on a port of its own (kept in $SITE/NAME/peer-port across restarts);
# the manager hands each agent the others' peer servers
site_agent_start() {
    local h=$1
    mkdir -p "$SITE/$h/state" "$SITE/$h/run" "$SITE/$h/console"
    chmod 0755 "$SITE" "$SITE/$h" "$SITE/$h/run"
    [ -s "$SITE/$h/peer-port" ] ||
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' \
            >"$SITE/$h/peer-port"
    "$BUILD/daemon/spore-agent" --state-dir "$SITE/$h/state" \
        --run-dir "$SITE/$h/run" \
        --plugin "$BUILD/p2p/shim/nbdkit-spore-plugin.so" \
        --manager "tcp://127.0.0.1:$SITE_PORT" \
        --manager-key-file "$SITE/manager/curve.pub" --host-name "$h" \
        --pool "spore-$SITE_TAG-$h" --pool-dir "$SITE/$h/pool" \
        --console-dir "$SITE/$h/console" ${SITE_VIRT:+--virt-type "$SITE_VIRT"} \
        ${SPORE_INSPECT_CACHE:+--inspect-cache "$SPORE_INSPECT_CACHE"} \
        --metrics 127.0.0.1:0 \
        --peer-listen "tcp://127.0.0.1:$(cat "$SITE/$h/peer-port")" \
        ${SITE_AGENT_ARGS:-} >>"$SITE/$h.log" 2>&1 &
    echo $! >"$SITE/$h.pid"
    case " ${SITE_HOSTS[*]} " in *" $h "*) ;; *) SITE_HOSTS+=("$h") ;; esac
}

site_agent_kill() { # site_agent_kill NAME [SIGNAL]
    local pid
    pid=$(cat "$SITE/$1.pid" 2>/dev/null) || return 0
    kill "-${2:-TERM}" "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$SITE/$1.pid"
}

# site_domains: the domains the site's agents own (their metadata's host)
site_domains() {
    local d h
    for d in $(virsh -q -c qemu:///system list --all --name 2>/dev/null); do
        h=$(virsh -q -c qemu:///system dumpxml "$d" 2>/dev/null |
            sed -n 's/.*<spore:clone .*host="\([^"]*\)".*/\1/p')
        [ -n "$h" ] || continue
        case " ${SITE_HOSTS[*]} " in *" $h "*) echo "$d" ;; esac
    done
}

# site_stop: agents, manager, shims, the site's domains and pools (safe
# under set -e: it carries on past what is already gone)
site_stop() {
    local errexit=${-//[^e]/}
    set +e
    local h d p
    for h in "${SITE_HOSTS[@]}"; do site_agent_kill "$h"; done
    site_manager_kill
    for d in $(site_domains); do
        virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
        virsh -q -c qemu:///system undefine "$d" >/dev/null 2>&1
    done
    for h in "${SITE_HOSTS[@]}"; do
        for p in $(cat "$SITE/$h"/run/shims/*.pid 2>/dev/null); do
            kill "$p" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null || true
        done
        virsh -q -c qemu:///system pool-destroy "spore-$SITE_TAG-$h" >/dev/null 2>&1
        virsh -q -c qemu:///system pool-undefine "spore-$SITE_TAG-$h" >/dev/null 2>&1
    done
    [ -n "$errexit" ] && set -e
    return 0
}
