#!/bin/bash
# test-agent-shims.sh SPORECTL SPORE_AGENT PLUGIN: the host agent's image
# table and shim supervisor under concurrency, and its smaller contracts.
# TAP output.
#
#  - one image's shim start never stalls another image's reads: image A's
#    nbdkit (through a wrapper given as --nbdkit) holds its start until the
#    test releases it (at most 8 s); meanwhile a read miss of image B through
#    B's running shim completes, and A's serve is still starting when it
#    does (ordering, not timing); a second serve of A waits for the first
#    and gets the same URI from the one nbdkit started;
#  - a relative --run-dir and --state-dir are made absolute: the URI names
#    an absolute socket and reads through it work;
#  - with no shim group the shim socket is mode 0660;
#  - SIGHUP logs the shim timeout in effect (the command line's);
#  - image-verify checks the cached chunks, drops a corrupted one, and a
#    read fetches it again.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3
work=$(mktemp -d /tmp/spore-shims.XXXXXX)
pids=()

cleanup() {
    for p in "${pids[@]}" $(cat "$work"/run/shims/*.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    touch "$work/release" # a held wrapper goes on, and its nbdkit is killed
    sleep 0.2
    for p in $(cat "$work"/run/shims/*.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

[ -x /usr/sbin/lighttpd ] || skip_all "lighttpd not installed"
command -v nbdkit >/dev/null || skip_all "nbdkit not installed"
command -v qemu-io >/dev/null || skip_all "qemu-io not installed"

# --- two images of random data, served by an HTTP origin
mkdir -p "$work/www" "$work/state" "$work/run"
for x in a b; do
    head -c $((4 * 1024 * 1024)) /dev/urandom >"$work/www/$x.raw"
    "$sporectl" image-index -o "$work/$x.idx" "$work/www/$x.raw" >"$work/$x.id" 2>/dev/null
done
hex_a=$(cut -d: -f2 "$work/a.id")
hex_b=$(cut -d: -f2 "$work/b.id")
port=$(free_port)
check "the origin (lighttpd) starts on 127.0.0.1:$port" start_origin "$work/www" "$port" "$work"

# --- the nbdkit wrapper: for image A's shim (its socket is named by the
# first 16 hex digits of the id) while $work/slow exists, it records its
# start and waits for $work/release (at most 8 s, below the agent's 10 s
# start limit), then runs nbdkit; every other start runs nbdkit at once
cat >"$work/nbdkit-wrapper" <<EOF
#!/bin/bash
case "\$*" in
*${hex_a:0:16}.sock*)
    echo "\$\$" >>"$work/a-starts"
    if [ -e "$work/slow" ]; then
        for _ in \$(seq 80); do [ -e "$work/release" ] && break; sleep 0.1; done
    fi ;;
esac
exec nbdkit "\$@"
EOF
chmod +x "$work/nbdkit-wrapper"

start_agent() { # start_agent DIR ARGS...: run from DIR, the agent's log in $work
    local dir=$1
    shift
    (cd "$dir" && exec "$agent_bin" --plugin "$plugin" --metrics none \
        --shim-group "" "$@") >>"$work/agent.log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
    for _ in $(seq 200); do
        kill -0 "$agent_pid" 2>/dev/null || return 1
        ctl agent-image-list >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    return 1
}
stop_agent() { kill "$agent_pid"; wait "$agent_pid" 2>/dev/null; }
ctl() { "$sporectl" --agent "$work/run/control.sock" "$@"; }
image_field() { # image_field HEX PYTHON-EXPR: evaluated on the image as 'im'
    ctl --json agent-image-show "$1" |
        python3 -c "import json,sys; im=json.load(sys.stdin)['image']; print($2)"
}
cached() { image_field "$1" "im['cached_chunks']"; }

# The agent runs from $work with relative directories (issue: a relative
# --run-dir broke every shim read)
check "spore-agent starts with --state-dir state --run-dir run (relative)" \
    start_agent "$work" --state-dir state --run-dir run \
    --nbdkit "$work/nbdkit-wrapper" --shim-timeout 7
for x in a b; do
    quiet ctl agent-image-add "$work/$x.idx" "http://127.0.0.1:$port/$x.raw"
done
uri_b=$(ctl agent-image-serve "$hex_b")
check "image B is served at an absolute socket path ($uri_b)" \
    grep -q "socket=$work/run/shims/${hex_b:0:16}.sock\$" <<<"$uri_b"
check "with no shim group the shim socket is mode 0660" \
    test "$(stat -c %a "$work/run/shims/${hex_b:0:16}.sock")" = 660
check "image B's cache starts cold" test "$(cached "$hex_b")" = 0

# --- A's start is held; B's read miss goes through meanwhile
touch "$work/slow"
ctl agent-image-serve "$hex_a" >"$work/serve-a1.out" 2>"$work/serve-a1.err" &
serve_a1=$!
pids+=("$serve_a1")
check "image A's serve is starting (its nbdkit wrapper runs, held)" \
    wait_until 40 test -s "$work/a-starts"
ctl agent-image-serve "$hex_a" >"$work/serve-a2.out" 2>"$work/serve-a2.err" &
serve_a2=$!
pids+=("$serve_a2")
qemu-io -r -f raw -c 'read 0 64k' "$uri_b" >"$work/read-b.out" 2>&1
read_b=$?
kill -0 "$serve_a1" 2>/dev/null
a_still_starting=$?
check "a 64 KiB read miss of B through B's shim succeeds" test "$read_b" -eq 0
check "... and finishes while A's serve is still starting" \
    test "$a_still_starting" -eq 0
check "... having fetched B's chunk (a miss, not a cached read)" \
    test "$(cached "$hex_b")" -ge 1
touch "$work/release"
wait "$serve_a1"
check "A's serve then succeeds" test $? -eq 0
wait "$serve_a2"
check "a concurrent second serve of A succeeds too" test $? -eq 0
uri_a=$(cat "$work/serve-a1.out")
check "both serves of A give one URI ($uri_a)" \
    test -n "$uri_a" -a "$uri_a" = "$(cat "$work/serve-a2.out")"
check "... from the one nbdkit started for A" \
    test "$(wc -l <"$work/a-starts")" -eq 1
check "A's export equals its image" \
    qemu-img compare -q -f raw -F raw "$work/www/a.raw" "$uri_a"
rm -f "$work/slow"

# --- SIGHUP: the command line's shim timeout (7 s) wins over the file's
printf '[agent]\nshim_timeout=30\n' >"$work/agent.conf"
stop_agent
check "the agent restarts with --config (shim_timeout=30) and --shim-timeout 7" \
    start_agent "$work" --state-dir state --run-dir run --config agent.conf \
    --nbdkit "$work/nbdkit-wrapper" --shim-timeout 7
kill -HUP "$agent_pid"
check "after SIGHUP it logs the shim timeout in effect: 7 s, the command line's" \
    wait_until 20 grep -q "configuration reloaded: .*shim_timeout=7 s" "$work/agent.log"
grep "configuration reloaded" "$work/agent.log" | sed 's/^/# /'

# --- image-verify: a corrupted cached chunk is found, dropped, fetched again
verify() { # verify HEX: "verified bad dropped" from image-verify
    python3 - "$work/run/control.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall((json.dumps({"command": "image-verify", "image": sys.argv[2]}) + "\n").encode())
b = b""
while not b.endswith(b"\n"):
    b += s.recv(1 << 20)
r = json.loads(b)
print(f'{r["verified"]} {r["bad"]} {r["dropped"]}' if r["ok"] else r["error"])
PY
}
n_a=$(cached "$hex_a")
check "image-verify of A: $n_a chunks verified, none bad" \
    test "$(verify "$hex_a")" = "$n_a 0 0"
# chunk 0's bytes lie at offset 0 of the cache's data file
printf 'garbage' | dd of="$work/state/cache/$hex_a/data" bs=1 seek=100 conv=notrunc status=none
check "after a cached chunk of A is corrupted, image-verify finds and drops it" \
    test "$(verify "$hex_a")" = "$((n_a - 1)) 1 1"
check "... and the export still equals the image (the chunk fetched again)" \
    qemu-img compare -q -f raw -F raw "$work/www/a.raw" "$uri_a"
check "image-verify of an unknown image is an error" \
    grep -q "no image" <<<"$(verify 0123456789ab)"
out=$("$sporectl" --agent "$work/run/control.sock" agent-image-verify "$hex_a" 2>&1)
check "sporectl agent-image-verify prints the counts ($out)" \
    grep -q "^sha256:$hex_a: $n_a cached chunks verified, 0 bad (0 dropped" <<<"$out"
"$sporectl" --agent "$work/run/control.sock" agent-image-verify 0123456789ab >/dev/null 2>"$work/verify.err"
check "... and exits 1 for an unknown image, saying so" \
    test $? -eq 1 -a -n "$(grep 'no image' "$work/verify.err")"

stop_agent
finish
