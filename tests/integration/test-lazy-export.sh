#!/bin/bash
# test-lazy-export.sh SPORECTL SPORE_AGENT PLUGIN: an image served lazily by
# spore-agent and its nbdkit shim, from a real HTTP origin (lighttpd on
# loopback), with a cold cache.  TAP output.
#
#  - qemu-img compare: the export and a qcow2 overlay backed by it are
#    identical to the original; only non-zero chunks cross the network;
#  - the origin serves one corrupt chunk: reads of it fail (EIO) naming the
#    chunk, nothing of it is cached, other reads are fine;
#  - the origin stops: cached reads go on, misses fail after the shim's
#    timeout, and succeed once the origin is back;
#  - the agent is killed (-9) several times while parallel readers fetch a
#    64 MiB image through a rate-limited origin (0 < cached < total at each
#    kill) and restarted with --verify-cache: 0 bad chunks each time, then
#    qemu-img compare identical; the shims (which outlive the agent) serve
#    again.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3
work=$(mktemp -d /tmp/spore-lazy.XXXXXX)
pids=()

cleanup() {
    for p in "${pids[@]}" $(cat "$work"/run/shims/*.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    sleep 0.2
    rm -rf "$work"
}
trap cleanup EXIT


command -v lighttpd >/dev/null || [ -x /usr/sbin/lighttpd ] || skip_all "lighttpd not installed"
command -v nbdkit >/dev/null || skip_all "nbdkit not installed"
command -v qemu-img >/dev/null || skip_all "qemu-img not installed"


# --- an image: random data with zero runs, and a short last chunk
mkdir -p "$work/www" "$work/state" "$work/run"
head -c $((24 * 1024 * 1024)) /dev/urandom >"$work/image.raw"
truncate -s $((40 * 1024 * 1024 + 12345)) "$work/image.raw"
dd if=/dev/urandom of="$work/image.raw" bs=1M seek=32 count=4 conv=notrunc status=none
cp "$work/image.raw" "$work/www/image.raw"
"$sporectl" image-index -o "$work/image.idx" "$work/image.raw" >"$work/id" 2>/dev/null
id=$(cat "$work/id")
hex=${id#sha256:}

port=$(free_port)
stop_origin() { kill "$origin_pid"; wait "$origin_pid" 2>/dev/null; }

shim_timeout=4 # short, for the origin-down checks; the kill rounds raise it
start_agent() {
    "$agent_bin" --state-dir "$work/state" --run-dir "$work/run" \
        --plugin "$plugin" --shim-timeout "$shim_timeout" --shim-group "" "$@" \
        >>"$work/agent.log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
    # a socket left by a killed agent may still be there: ask the new one
    for _ in $(seq 200); do
        kill -0 "$agent_pid" 2>/dev/null || return 1
        ctl agent-image-list >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    return 1
}
ctl() { "$sporectl" --agent "$work/run/control.sock" "$@"; }
image_field() { # image_field HEX PYTHON-EXPR: evaluated on the image object as 'im'
    ctl --json agent-image-show "$1" |
        python3 -c "import json,sys; im=json.load(sys.stdin)['image']; print($2)"
}
json_field() { image_field "$hex" "$1"; }
# present_count HEX: chunks whose bit is set in the cache's present bitmap
# on disk (what a restarted agent will claim)
present_count() {
    python3 -c 'import sys; print(sum(bin(b).count("1") for b in open(sys.argv[1], "rb").read()))' \
        "$work/state/cache/$1/present"
}
# present_bit HEX CHUNK: 1 when the bitmap on disk claims CHUNK, else 0
present_bit() {
    python3 -c 'import sys; b = open(sys.argv[1], "rb").read(); i = int(sys.argv[2]); print(b[i // 8] >> (i % 8) & 1)' \
        "$work/state/cache/$1/present" "$2"
}

check "the origin (lighttpd) starts on 127.0.0.1:$port" start_origin "$work/www" "$port" "$work"

# --- the shim timeout has one limit (SHIM_TIMEOUT_MAX_S, 3600 s) on both
# sides: the agent refuses more, and at the limit its shim starts
refused_timeout() { # refused_timeout ARGS...: the agent exits at once, saying why
    local out rc
    out=$(timeout 10 "$agent_bin" --state-dir "$work/t-state" --run-dir "$work/t-run" \
        --plugin "$plugin" --shim-group "" --metrics none "$@" 2>&1)
    rc=$?
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] &&
        grep -q "shim timeout '[0-9]*' is out of range (1 to 3600 seconds)" <<<"$out"
}
check "the agent refuses --shim-timeout 3601" refused_timeout --shim-timeout 3601
check "... and 86400" refused_timeout --shim-timeout 86400
check "... and 0" refused_timeout --shim-timeout 0
printf '[agent]\nshim_timeout=86400\n' >"$work/t-agent.conf"
check "... and shim_timeout=86400 in its configuration file" refused_timeout --config "$work/t-agent.conf"
"$agent_bin" --state-dir "$work/t-state" --run-dir "$work/t-run" --plugin "$plugin" \
    --shim-group "" --metrics none --shim-timeout 3600 >>"$work/t-agent.log" 2>&1 &
t_agent=$!
pids+=("$t_agent")
t_ctl() { "$sporectl" --agent "$work/t-run/control.sock" "$@"; }
wait_until 20 quiet t_ctl agent-image-list
quiet t_ctl agent-image-add "$work/image.idx" "http://127.0.0.1:$port/image.raw"
check "at --shim-timeout 3600 the agent's shim starts (the plugin takes it)" \
    test -n "$(t_ctl agent-image-serve "$hex" 2>>"$work/t-agent.log")"
quiet t_ctl agent-image-unserve "$hex"
kill "$t_agent"; wait "$t_agent" 2>/dev/null
check "spore-agent starts" start_agent
check "the agent takes the image" \
    quiet ctl agent-image-add "$work/image.idx" "http://127.0.0.1:$port/image.raw"
uri=$(ctl agent-image-serve "$hex")
check "the agent serves it as $uri" test -n "$uri"
check "the cache starts cold" test "$(json_field "im['cached_chunks']")" = 0

# --- identical, lazily
check "qemu-img compare: the lazily served export equals the image" \
    qemu-img compare -q -f raw -F raw "$work/image.raw" "$uri"
nonzero=$(nonzero_bytes "$work/image.raw")
origin_bytes=$(json_field "im['fetched_bytes']['origin']")
check "only non-zero chunks came from the origin ($origin_bytes of $(stat -c %s "$work/image.raw") bytes)" \
    test "$origin_bytes" -eq "$nonzero"
qemu-img create -q -f qcow2 -F raw -b "$uri" "$work/clone.qcow2"
check "a qcow2 overlay backed by the export equals the image" \
    qemu-img compare -q -f qcow2 -F raw "$work/clone.qcow2" "$work/image.raw"
check "zero chunks show as holes in the export's map" \
    test -n "$(qemu-img map -f raw --output=json "$uri" | grep '"zero": true')"
quiet ctl agent-image-unserve "$hex"
uri=$(ctl agent-image-serve "$hex")
check "a re-served image loads the access profile its first reads recorded" \
    grep -q "image ${hex:0:12}: prefetching the [1-9][0-9]* chunks of 1 recorded boots' profile" "$work/agent.log"
grep -o "prefetching the [0-9]* chunks of [0-9]* recorded boots' profile" "$work/agent.log" | sed 's/^/# /'
profile_reply=$(python3 - "$work/run/control.sock" "$hex" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall((json.dumps({"command": "image-profile", "image": sys.argv[2]}) + "\n").encode())
b = b""
while not b.endswith(b"\n"):
    b += s.recv(1 << 20)
r = json.loads(b)
print(r["profile"]["boots"], len(r["profile"]["chunks"]), len(set(r["profile"]["chunks"])))
PY
)
n_prefetched=$(grep -o "prefetching the [0-9]* chunks" "$work/agent.log" | head -n 1 | grep -o "[0-9]*")
check "image-profile gives the merged profile (1 boot, $n_prefetched distinct chunks) for the manager" \
    test "$profile_reply" = "1 $n_prefetched $n_prefetched"

# --- a corrupt chunk at the origin; a fresh image id keeps the first cache
stop_origin
head -c $((8 * 1024 * 1024)) /dev/urandom >"$work/image2.raw"
cp "$work/image2.raw" "$work/www/image2.raw"
printf 'corrupt' | dd of="$work/www/image2.raw" bs=1 seek=$((3 * 65536 + 100)) conv=notrunc status=none
"$sporectl" image-index -o "$work/image2.idx" "$work/image2.raw" >"$work/id2" 2>/dev/null
hex2=$(sed 's/^sha256://' "$work/id2")
start_origin "$work/www" "$port" "$work"
ctl agent-image-add "$work/image2.idx" "http://127.0.0.1:$port/image2.raw" >/dev/null
uri2=$(ctl agent-image-serve "$hex2")
out=$(qemu-io -r -f raw -c "read $((3 * 65536)) 4096" "$uri2" 2>&1)
check "a read of the corrupt chunk fails" test $? -ne 0
check "... with an I/O error ($out)" grep -q 'Input/output error' <<<"$out"
check "the shim's error names the chunk and the wrong digest" \
    grep -q "chunk 3 .*wrong digest" "$work/run/shims/${hex2:0:16}.log"
check "nothing of it was cached" \
    test "$(ctl --json agent-image-show "$hex2" | python3 -c "import json,sys; print(json.load(sys.stdin)['image']['rejected_chunks'] > 0)")" = True
check "reads of the other chunks are fine" \
    quiet qemu-io -r -f raw -c "read 0 196608" -c "read 262144 65536" "$uri2"
qemu-img dd -f raw -O raw if="$uri2" of="$work/first3.raw" bs=65536 count=3 2>/dev/null
check "... and carry the right bytes" \
    cmp -s "$work/first3.raw" <(head -c $((3 * 65536)) "$work/image2.raw")
cached2=$(image_field "$hex2" "im['cached_chunks']")
check "the corrupt chunk is not counted in cached_chunks ($cached2: chunks 0-2 and 4 only)" \
    test "$cached2" = 4
check "... nor claimed by the cache's bitmap" test "$(present_bit "$hex2" 3)" = 0

# --- the origin goes away, and comes back
stop_origin
check "with the origin down, cached reads go on" \
    qemu-img compare -q -f raw -F raw "$work/image.raw" "$uri"
start=$(date +%s)
out=$(qemu-io -r -f raw -c "read $((6 * 65536)) 4096" "$uri2" 2>&1)
check "a miss fails cleanly while the origin is down" test $? -ne 0
took=$(($(date +%s) - start))
check "... after the shim's timeout (${took}s, timeout 4s)" test "$took" -ge 3
check "... and the shim says why, naming the chunk" \
    grep -q "chunk 6 .*unavailable" "$work/run/shims/${hex2:0:16}.log"
start_origin "$work/www" "$port" "$work"
check "once the origin is back the same read succeeds" \
    quiet qemu-io -r -f raw -c "read $((6 * 65536)) 4096" "$uri2"

# --- kill -9 of the agent during heavy fetching, several rounds.  image3
# comes through a rate-limited origin (lighttpd server.kbytes-per-second),
# read by parallel readers, so that at each kill fetches are in flight and
# the cache is neither empty nor complete; each restart verifies the cache.
# The readers must keep reading until the kill: with the 4 s timeout of the
# checks above, a machine busy with other work made misses wait longer, the
# shim answered EIO, the readers exited and nothing was in flight at the
# kill.  What is tested here is a kill with fetches in flight, so image3's
# shim gets the default timeout (60 s), and each kill waits until, in one
# sample of the agent, the readers all run with chunks in flight.
shim_timeout=60
kill "$agent_pid"
wait "$agent_pid" 2>/dev/null
check "the agent restarts with --shim-timeout $shim_timeout" start_agent
slow_kib=2048 # a 16 MiB region takes about 8 s to fetch at this rate
rounds=3
mkdir -p "$work/slow"
head -c $((64 * 1024 * 1024)) /dev/urandom >"$work/www/image3.raw"
"$sporectl" image-index -o "$work/image3.idx" "$work/www/image3.raw" >"$work/id3" 2>/dev/null
hex3=$(sed 's/^sha256://' "$work/id3")
total3=$((64 * 1024 * 1024 / 65536))
main_origin_pid=$origin_pid
slow_port=$(free_port)
check "a rate-limited origin ($slow_kib KiB/s) starts on 127.0.0.1:$slow_port" \
    start_origin "$work/www" "$slow_port" "$work/slow" "server.kbytes-per-second = $slow_kib"
origin_pid=$main_origin_pid
quiet ctl agent-image-add "$work/image3.idx" "http://127.0.0.1:$slow_port/image3.raw"
uri3=$(ctl agent-image-serve "$hex3")
check "the agent serves the 64 MiB image3 from it" test -n "$uri3"
readers=()
# Round R reads region R of image3 (16 MiB at 16 MiB * (R - 1)), cold
# when the round starts: what earlier rounds left cached (partly, at their
# kills) stays, and a round's target never depends on how far the rounds
# before it got.  The last 16 MiB are first read by the final compare.
region_bytes=$((16 * 1024 * 1024))
region_chunks=$((region_bytes / 65536))
start_readers() { # start_readers R: four readers, a quarter of region R each, 8 requests in flight
    local quarter=$((region_bytes / 4)) base=$(((${1} - 1) * region_bytes)) k
    readers=()
    for k in 0 1 2 3; do
        qemu-img convert -m 8 -O raw --image-opts \
            "driver=raw,offset=$((base + k * quarter)),size=$quarter,file.driver=nbd,file.server.type=unix,file.server.path=$work/run/shims/${hex3:0:16}.sock,file.export=$hex3" \
            "$work/part$k.raw" 2>/dev/null &
        readers+=($!)
        pids+=($!)
    done
}
# image3_state: "CACHED QUEUED" of image3, read in one answer of the agent
image3_state() { image_field "$hex3" "im['cached_chunks'], im['queued_chunks']"; }
nothing_queued() { [ "$(image_field "$hex3" "im['queued_chunks']")" = 0 ]; }
readers_alive() { # a reader is still running
    local p
    for p in "${readers[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done
    return 1
}
# fetching_past N: a reader is still reading and, in one sample of the
# agent, at least N chunks are cached while chunks are queued or in flight;
# sets kill_cached and kill_queued from that sample
fetching_past() {
    local state
    readers_alive || return 1
    state=$(image3_state) || return 1
    read -r kill_cached kill_queued <<<"$(tr -d '(),' <<<"$state")"
    [ "$kill_cached" -ge "$1" ] && [ "$kill_queued" -gt 0 ]
}
shim_pid=$(cat "$work/run/shims/${hex:0:16}.pid")
shim3_pid=$(cat "$work/run/shims/${hex3:0:16}.pid")
deadline=$(($(date +%s) + 400))
step=$((region_chunks * 3 / 8)) # each round kills this many chunks on, at least
for round in $(seq "$rounds"); do
    # the target is counted from what is cached before the readers start,
    # so that it cannot be passed before they fetch anything; the region
    # holds 5/8 of its chunks more, for the readers to be still fetching.
    # The shim sends the reads that were in flight at the last kill again
    # once the agent is back (they finish the last region): first let them
    # settle, so that nothing but this round's readers fetches
    wait_until 240 nothing_queued
    read -r before _ <<<"$(tr -d '(),' <<<"$(image3_state)")"
    target=$((before + step))
    start_readers "$round"
    kill_cached=0 kill_queued=0
    fetching=yes
    wait_until 120 fetching_past "$target" || fetching=no
    alive=$(for p in "${readers[@]}"; do kill -0 "$p" 2>/dev/null && echo -n "$p "; done)
    kill -9 "$agent_pid"
    wait "$agent_pid" 2>/dev/null
    kill "${readers[@]}" 2>/dev/null
    wait "${readers[@]}" 2>/dev/null
    if [ "$fetching" = no ]; then
        echo "# round $round: readers ${readers[*]}, alive: $alive"
        echo "# cached $kill_cached (target $target), queued $kill_queued; the agent's log ends:"
        tail -n 15 "$work/agent.log" | sed 's/^/#   /'
        echo "# image3's shim log ends:"
        tail -n 15 "$work/run/shims/${hex3:0:16}.log" 2>/dev/null | sed 's/^/#   /'
    fi
    check "round $round: the agent is killed past $target chunks cached, with $kill_queued queued or in flight" \
        test "$fetching" = yes
    on_disk=$(present_count "$hex3")
    check "round $round: ... and $on_disk of $total3 chunks cached (0 < cached < total)" \
        test "$on_disk" -gt 0 -a "$on_disk" -lt "$total3"
    check "round $round: the shims outlive the agent" kill -0 "$shim_pid" "$shim3_pid"
    log_lines=$(wc -l <"$work/agent.log")
    check "round $round: the agent restarts and verifies its caches" start_agent --verify-cache
    check "round $round: ... all $on_disk cached chunks of image3 verify, 0 bad" \
        grep -q "image ${hex3:0:12}: verified $on_disk cached chunks, 0 bad" \
        <(tail -n +$((log_lines + 1)) "$work/agent.log")
    check "round $round: ... and image2's cache too" \
        grep -q "image ${hex2:0:12}: verified .* 0 bad" <(tail -n +$((log_lines + 1)) "$work/agent.log")
    [ "$(date +%s)" -lt "$deadline" ] || { not_ok "the kill rounds took over 400 s"; break; }
done
check "after the kills the export of image3 equals the image (qemu-img compare)" \
    timeout 300 qemu-img compare -q -f raw -F raw "$work/www/image3.raw" "$uri3"
check "... and its cache holds every chunk" \
    test "$(image_field "$hex3" "im['cached_chunks']")" = "$total3"
check "the running shim of the first image serves again, through the new agent" \
    qemu-img compare -q -f raw -F raw "$work/image.raw" "$uri"
check "and image2's misses are fetched again (bytes outside chunk 3)" \
    quiet qemu-io -r -f raw -c "read 0 196608" -c "read 262144 $((8 * 1024 * 1024 - 262144))" "$uri2"

finish
