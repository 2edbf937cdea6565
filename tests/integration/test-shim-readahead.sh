#!/bin/bash
# test-shim-readahead.sh SPORECTL SPORE_AGENT PLUGIN: the shim's read-ahead
# of sequential streams (p2p/shim/readahead.c), on the real stack: a
# spore-agent, its nbdkit shims, qemu-io readers, and an HTTP origin that
# answers every request after 50 ms (tests/integration/delay-origin.py,
# which logs when each request came and was answered).  Counted at the
# origin, not timed: its requests, their bytes, and the round trips the
# reader waited for (the longest chain of requests each of which came after
# the one before it was answered, rounds.py).  TAP output.
#
#  - a sequential reader of whole chunks, through the agent's shim (the
#    default window), waits for at most half the round trips of the same
#    reader through a shim with readahead=0, and fetches no chunk more
#    (it reads the whole image: nothing past its end is asked for);
#  - a sequential reader with 16 KiB reads of the first half of an image:
#    fewer round trips than chunks, at most one window fetched beyond what
#    it read, and the access profile records the chunks read only;
#  - a random reader (whole chunks, no two in a row adjacent) fetches
#    exactly the chunks it reads and asks nothing ahead;
#  - the shim's statistics (CACHE_DIR/shim.stats) count all of it.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/spore-readahead.XXXXXX)
pids=()

cleanup() {
    for p in "${pids[@]}" $(cat "$work"/run/shims/*.pid "$work"/*.nbdkit.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    sleep 0.2
    rm -rf "$work"
}
trap cleanup EXIT

command -v nbdkit >/dev/null || skip_all "nbdkit not installed"
command -v qemu-io >/dev/null || skip_all "qemu-io not installed"

delay_ms=50
chunk=65536
mkdir -p "$work/www" "$work/state" "$work/run"
port=$(free_port)
python3 "$here/delay-origin.py" "$work/www" "$port" "$delay_ms" "$work/origin.log" &
pids+=($!)
"$agent_bin" --state-dir "$work/state" --run-dir "$work/run" --plugin "$plugin" \
    --shim-group "" --metrics none --peer-listen none >>"$work/agent.log" 2>&1 &
pids+=($!)
ctl() { "$sporectl" --agent "$work/run/control.sock" "$@"; }
check "spore-agent starts" wait_until 40 quiet ctl agent-image-list
check "the origin answers" wait_until 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null

# image NAME BYTES: random data of BYTES served as NAME.raw; sets hex
image() {
    head -c "$2" /dev/urandom >"$work/www/$1.raw"
    "$sporectl" image-index -o "$work/$1.idx" "$work/www/$1.raw" >"$work/$1.id" 2>/dev/null
    hex=$(sed 's/^sha256://' "$work/$1.id")
    quiet ctl agent-image-add "$work/$1.idx" "http://127.0.0.1:$port/$1.raw"
}
# stat_of HEX NAME: a counter of that image's shim
stat_of() { awk -v k="$2" '$1 == k { print $2 }' "$work/state/cache/$1/shim.stats"; }
# rounds FILE: "REQUESTS BYTES ROUNDS" at the origin for FILE
rounds() { python3 "$here/rounds.py" "$work/origin.log" "$1"; }
# reads_of OFFSETS...: qemu-io arguments reading CHUNK bytes at each offset
# (the last chunk of the image may be short: qemu-io reads what is there)
qio_chunks() { # qio_chunks SIZE CHUNK-INDEXES...
    local size=$1 c len
    shift
    for c in "$@"; do
        len=$((size - c * chunk))
        [ "$len" -gt "$chunk" ] && len=$chunk
        printf -- '-c\nread -q %d %d\n' $((c * chunk)) "$len"
    done
}
read_with() { # read_with URI ARGS-FILE
    local args=()
    mapfile -t args <"$2"
    qemu-io -r -f raw "${args[@]}" "$1" >/dev/null
}

# --- sequential, whole chunks: readahead on (the agent's shim) and off
size=$((4 * 1024 * 1024 + 12345)) # 65 chunks, the last one short
nchunks=65
image seq-on "$size"
hex_on=$hex
uri_on=$(ctl agent-image-serve "$hex_on")
image seq-off "$size"
hex_off=$hex
nbdkit -U "$work/off.sock" -P "$work/off.nbdkit.pid" "$plugin" \
    cache="$work/state/cache/$hex_off" agent="$work/run/fetch.sock" readahead=0 \
    2>>"$work/off.log"
for _ in $(seq 100); do [ -S "$work/off.sock" ] && break; sleep 0.05; done
uri_off="nbd+unix:///?socket=$work/off.sock"
qio_chunks "$size" $(seq 0 $((nchunks - 1))) >"$work/seq.args"
check "a sequential reader reads the image through the agent's shim" read_with "$uri_on" "$work/seq.args"
check "... and through a shim with readahead=0" read_with "$uri_off" "$work/seq.args"
read -r req_on bytes_on rt_on <<<"$(rounds seq-on.raw)"
read -r req_off bytes_off rt_off <<<"$(rounds seq-off.raw)"
echo "# sequential, $nchunks chunks, $delay_ms ms per origin request: readahead off: $req_off requests, $bytes_off bytes, $rt_off round trips; on: $req_on requests, $bytes_on bytes, $rt_on round trips"
check "without read-ahead the reader waits a round trip per chunk ($rt_off of $nchunks)" \
    test "$rt_off" -ge $((nchunks - 2))
check "with it, at most half as many ($rt_on)" test "$((2 * rt_on))" -le "$rt_off"
check "... fetching the same bytes, the image's ($bytes_on)" \
    test "$bytes_on" = "$size" -a "$bytes_off" = "$size" -a "$req_on" = "$nchunks"
sleep 1.2 # the stats are rewritten at most once a second while they change
kill "$(cat "$work/off.nbdkit.pid")" 2>/dev/null
quiet ctl agent-image-unserve "$hex_on" # the shim writes its stats as it exits
sed 's/^/# on:  /' "$work/state/cache/$hex_on/shim.stats"
sed 's/^/# off: /' "$work/state/cache/$hex_off/shim.stats"
check "the shim's statistics count the chunks asked ahead ($(stat_of "$hex_on" ahead_chunks)) and read afterwards ($(stat_of "$hex_on" ahead_used))" \
    test "$(stat_of "$hex_on" ahead_chunks)" -ge $((nchunks / 2)) -a \
    "$(stat_of "$hex_on" ahead_used)" = "$(stat_of "$hex_on" ahead_chunks)" -a \
    "$(stat_of "$hex_on" ahead_failed)" = 0
check "... and the reads that waited: fewer with it ($(stat_of "$hex_on" demand_reads)) than without ($(stat_of "$hex_off" demand_reads))" \
    test "$(stat_of "$hex_on" demand_reads)" -lt "$(stat_of "$hex_off" demand_reads)"
check "readahead=0 asks nothing ahead" test "$(stat_of "$hex_off" ahead_chunks)" = 0

# --- sequential, 16 KiB reads of the first half of an image
image small $((4 * 1024 * 1024))
hex_small=$hex
uri_small=$(ctl agent-image-serve "$hex_small")
half=32
for ((o = 0; o < half * chunk; o += 16384)); do printf -- '-c\nread -q %d 16384\n' "$o"; done >"$work/small.args"
check "a reader of 16 KiB reads, sequential" read_with "$uri_small" "$work/small.args"
read -r req_s bytes_s rt_s <<<"$(rounds small.raw)"
echo "# 16 KiB reads of $half chunks: $req_s requests, $bytes_s bytes, $rt_s round trips"
check "... waits fewer round trips ($rt_s) than it read chunks ($half)" test "$((2 * rt_s))" -le "$half"
check "... and fetches at most one window (16 chunks) past what it read ($req_s chunks)" \
    test "$req_s" -le $((half + 16)) -a "$req_s" -ge "$half"
quiet ctl agent-image-unserve "$hex_small"
profiled=$(python3 -c '
import glob, struct, sys
seen = set()
for p in glob.glob(sys.argv[1] + "/profiles/*.prof"):
    d = open(p, "rb").read()
    seen.update(struct.unpack_from("<Q", d, o)[0] for o in range(0, len(d) - 15, 16))
print(len(seen), max(seen))' "$work/state/cache/$hex_small")
check "the access profile records the chunks read, not those fetched ahead ($profiled)" \
    test "$profiled" = "$half $((half - 1))"

# --- random: whole chunks, never two adjacent ones in a row
image random $((4 * 1024 * 1024))
hex_r=$hex
uri_r=$(ctl agent-image-serve "$hex_r")
qio_chunks $((4 * 1024 * 1024)) $(for k in $(seq 0 63); do echo $(((k * 37) % 64)); done) >"$work/random.args"
check "a random reader reads every chunk once" read_with "$uri_r" "$work/random.args"
read -r req_r bytes_r rt_r <<<"$(rounds random.raw)"
echo "# random, 64 chunks: $req_r requests, $bytes_r bytes, $rt_r round trips"
check "... and fetches exactly those ($req_r requests, $bytes_r bytes)" \
    test "$req_r" = 64 -a "$bytes_r" = $((4 * 1024 * 1024))
quiet ctl agent-image-unserve "$hex_r"
check "... asking nothing ahead" test "$(stat_of "$hex_r" ahead_chunks)" = 0 -a "$(stat_of "$hex_r" streams)" = 0

finish
