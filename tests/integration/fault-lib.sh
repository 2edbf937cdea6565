# fault-lib.sh: the fault matrix's rounds, shared by
# tests/integration/test-fault-matrix.sh (which asserts) and
# bench/fault-matrix (which times).  Source it after lib.sh with these set:
#   sporectl agent_bin plugin bad_peer   the programs
#   work                                 a directory of its own
# and the array pids (for cleanup).
#
# fm_setup MIB: an image of MIB MiB (random data, then a zero run of a
# quarter of it) served by lighttpd; host A (a spore-agent) reads all of it
# once, so A holds every chunk and serves them to its peers.
#
# fm_round MODE [SHIM-TIMEOUT]: a fresh reader host R, with a cold cache,
# lists A and, unless MODE is "none", a bad peer B playing MODE
# (tests/integration/bad-peer.c) — for "nofetch" B alone, so that B is
# given delegated origin fetches, and for "alone" no peer at all (R
# fetches every chunk from the origin itself: nofetch's baseline); R
# serves the image and qemu-img compares
# R's export with the image.  Sets:
#   fm_rc        qemu-img compare's exit status (0: identical, no I/O error)
#   fm_ms        how long the compare took
#   fm_b_in      bytes R received from B (its bytes_in), fm_b_bad its bad
#                chunks, fm_b_banned the images R banned B for, fm_b_missed
#                its missed deadlines, fm_b_sent what B says it sent
#   fm_from_b    useful bytes R took from peers other than A (from B)
#   fm_useful    non-zero bytes of the image
#   fm_recv      bytes R received in all: DATA from every peer (junk
#                included) and what it fetched from the origin itself
#   fm_unavail   lines of R's shim log saying a chunk was unavailable
#   fm_verified  "yes" when every chunk R cached verifies
# and leaves R's and B's logs in $work/R-MODE/.

fm_ctl() { "$sporectl" --agent "$1/run/control.sock" "${@:2}"; }

fm_start_agent() { # fm_start_agent DIR NAME [ARGS...]: sets fm_agent_pid
    local dir=$1 name=$2
    shift 2
    mkdir -p "$dir/state" "$dir/run"
    [ -f "$dir/agent.conf" ] || printf '[agent]\n' >"$dir/agent.conf"
    "$agent_bin" --config "$dir/agent.conf" --state-dir "$dir/state" \
        --run-dir "$dir/run" --plugin "$plugin" --shim-group "" \
        --metrics none --host-name "$name" "$@" >>"$dir/agent.log" 2>&1 &
    fm_agent_pid=$!
    pids+=("$fm_agent_pid")
    for _ in $(seq 400); do
        kill -0 "$fm_agent_pid" 2>/dev/null || return 1
        fm_ctl "$dir" agent-image-list >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    return 1
}

fm_stop() { # fm_stop PID: stop it (SIGTERM), and wait
    kill "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    return 0
}

fm_setup() {
    local mib=$1
    mkdir -p "$work/www"
    head -c $((mib * 1024 * 1024)) /dev/urandom >"$work/www/image.raw"
    truncate -s $((mib * 1024 * 1024 * 5 / 4)) "$work/www/image.raw"
    "$sporectl" image-index -o "$work/image.idx" "$work/www/image.raw" >"$work/id" 2>/dev/null ||
        return 1
    fm_hex=$(sed 's/^sha256://' "$work/id")
    fm_useful=$((mib * 1024 * 1024))
    fm_port=$(free_port)
    start_origin "$work/www" "$fm_port" "$work" || return 1
    fm_url="http://127.0.0.1:$fm_port/image.raw"
    fm_a_port=$(free_port)
    fm_start_agent "$work/A" A --shim-timeout 60 \
        --peer-listen "tcp://127.0.0.1:$fm_a_port" || return 1
    fm_a_pid=$fm_agent_pid
    fm_ctl "$work/A" agent-image-add "$work/image.idx" "$fm_url" >/dev/null 2>&1 || return 1
    qemu-img compare -q -f raw -F raw "$work/www/image.raw" \
        "$(fm_ctl "$work/A" agent-image-serve "$fm_hex")"
}

fm_peer_field() { # fm_peer_field DIR PEER FIELD
    fm_ctl "$1" --json agent-peer-list | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(sum(p[sys.argv[2]] for p in r["peers"] if p["name"] == sys.argv[1]))' "$2" "$3"
}

fm_connected() { # fm_connected DIR PEER
    fm_ctl "$1" --json agent-peer-list | python3 -c '
import json, sys
r = json.load(sys.stdin)
sys.exit(0 if any(p["name"] == sys.argv[1] and p["connected"] for p in r["peers"]) else 1)' "$2"
}

fm_round() {
    local rc
    fm_r_pid="" fm_b_pid="" fm_b_sent=0
    fm_round_run "$@"
    rc=$?
    for p in $(cat "$work/R-$1"/run/shims/*.pid 2>/dev/null); do kill "$p" 2>/dev/null; done
    [ -z "$fm_r_pid" ] || fm_stop "$fm_r_pid"
    if [ -n "$fm_b_pid" ]; then
        fm_stop "$fm_b_pid"
        fm_b_sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' \
            "$work/R-$1/B.stats" 2>/dev/null || echo 0)
    fi
    return $rc
}

fm_round_run() {
    local mode=$1 timeout=${2:-60} r=$work/R-$1 uri t0 t1
    rm -rf "$r"
    mkdir -p "$r"
    # nofetch holds nothing: R lists it alone, so that it is asked to
    # fetch from the origin for R (delegated work) and never does
    printf '[agent]\n' >"$r/agent.conf"
    [ "$mode" = nofetch ] || [ "$mode" = alone ] ||
        printf '[peer A]\nendpoint = tcp://127.0.0.1:%s\nkey_file = %s\n' \
            "$fm_a_port" "$work/A/state/curve.pub" >>"$r/agent.conf"
    if [ "$mode" != none ] && [ "$mode" != alone ]; then
        local delay=(); [ "$mode" = slow ] && delay=(200 "$work/www/image.raw")
        "$bad_peer" "$mode" "$work/image.idx" "$r/B.pub" "$r/B.stats" "${delay[@]}" \
            >"$r/B.endpoint" 2>"$r/B.log" &
        fm_b_pid=$!
        pids+=("$fm_b_pid")
        wait_until 40 test -s "$r/B.endpoint" || return 1
        printf '[peer B]\nendpoint = %s\nkey_file = %s\n' \
            "$(cat "$r/B.endpoint")" "$r/B.pub" >>"$r/agent.conf"
    fi
    local r_port
    r_port=$(free_port)
    fm_start_agent "$r" R --shim-timeout "$timeout" \
        --peer-listen "tcp://127.0.0.1:$r_port" || return 1
    fm_r_pid=$fm_agent_pid
    # A serves only the hosts it lists: this round's R
    printf '[agent]\n[peer R]\nendpoint = tcp://127.0.0.1:%s\nkey_file = %s\n' \
        "$r_port" "$r/state/curve.pub" >"$work/A/agent.conf"
    kill -HUP "$fm_a_pid"
    fm_ctl "$r" agent-image-add "$work/image.idx" "$fm_url" >/dev/null 2>&1 || return 1
    [ "$mode" = nofetch ] || [ "$mode" = alone ] || wait_until 40 fm_connected "$r" A || return 1
    # B is connected, or has already been dropped for what it sent
    [ -z "$fm_b_pid" ] ||
        wait_until 40 eval 'fm_connected "$r" B || grep -q "peer B: " "$r/agent.log"' ||
        return 1
    sleep 1 # the peers' HAVE answers
    uri=$(fm_ctl "$r" agent-image-serve "$fm_hex") || return 1
    t0=$(date +%s%N)
    qemu-img compare -q -f raw -F raw "$work/www/image.raw" "$uri" >"$r/compare.log" 2>&1
    fm_rc=$?
    t1=$(date +%s%N)
    fm_ms=$(((t1 - t0) / 1000000))
    fm_b_in=0 fm_b_bad=0 fm_b_banned=0 fm_b_missed=0 fm_b_sent=0
    # what R does about B may come after the read: a strike for a frame
    # libzmq refused is applied once the drop is known not to be a
    # reconnection, a deadline ends 1.5 s or more after its request; wait
    # (bounded) for what the mode must lead to before reading the counts
    case $mode in
    liar | half) wait_until 60 eval '[ "$(fm_peer_field "$r" B images_banned)" -ge 1 ]' ;;
    plus4k | 4mib | unasked) wait_until 60 eval '[ "$(fm_peer_field "$r" B bad_chunks)" -ge 1 ]' ;;
    silent | nofetch) wait_until 60 eval '[ "$(fm_peer_field "$r" B missed)" -ge 1 ]' ;;
    esac
    if [ -n "$fm_b_pid" ]; then
        fm_b_in=$(fm_peer_field "$r" B bytes_in)
        fm_b_bad=$(fm_peer_field "$r" B bad_chunks)
        fm_b_banned=$(fm_peer_field "$r" B images_banned)
        fm_b_missed=$(fm_peer_field "$r" B missed)
    fi
    fm_from_b=$(fm_ctl "$r" --json agent-image-show "$fm_hex" | python3 -c '
import json, sys
im = json.load(sys.stdin)["image"]
print(im["fetched_bytes"]["peer"])')
    fm_recv=$(fm_ctl "$r" --json agent-peer-list | python3 -c '
import json, sys
print(sum(p["bytes_in"] for p in json.load(sys.stdin)["peers"]))')
    fm_recv=$((fm_recv + $(fm_ctl "$r" --json agent-image-show "$fm_hex" | python3 -c '
import json, sys
print(json.load(sys.stdin)["image"]["fetched_bytes"]["origin"])')))
    [ "$mode" = nofetch ] || [ "$mode" = alone ] ||
        fm_from_b=$((fm_from_b - $(fm_peer_field "$r" A bytes_in)))
    [ "$fm_from_b" -ge 0 ] || fm_from_b=0
    fm_unavail=$(cat "$r"/run/shims/*.log 2>/dev/null | grep -c "unavailable")
    fm_verified=no
    fm_ctl "$r" agent-image-verify "$fm_hex" >"$r/verify.txt" 2>&1 &&
        grep -q " 0 bad" "$r/verify.txt" && fm_verified=yes
    return 0
}
