#!/bin/bash
# test-agent-restart.sh SPORECTL SPORE_AGENT PLUGIN: the host agent is
# killed (-9) while its shims have reads in flight and restarted 2 s later;
# the shims connect again and ask again (p2p/fetch-client.c), so nobody
# reading through them sees it:
#   1. a cold whole-image read (qemu-img convert) through a rate-limited
#      origin completes and equals the image;
#   2. a real guest booting under libvirt from a cold cache finishes its
#      boot, with no I/O error on its console, and is never paused
#      (error_policy='stop' pauses it on a failed read).
# TAP output.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3
src=$(cd "$(dirname "$0")/../.." && pwd)
domain=spore-test-agentrestart-0
pids=()
work=""
libvirt_state=""
agent_pid=""

cleanup() {
    virsh -q -c qemu:///system destroy "$domain" >/dev/null 2>&1
    virsh -q -c qemu:///system undefine "$domain" >/dev/null 2>&1
    for p in "${pids[@]}" $(cat "$work"/run/shims/*.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    [ "$libvirt_state" = started ] && "$src/scripts/libvirt-down"
    sleep 0.2
    [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT
trap "exit 1" INT TERM # meson's timeout: clean up as well

[ "$(id -u)" -eq 0 ] || skip_all "needs root to run libvirtd"
[ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
command -v qemu-system-x86_64 >/dev/null || skip_all "qemu-system-x86_64 is not installed"
[ -x /usr/sbin/lighttpd ] || skip_all "lighttpd is not installed"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel in /boot (linux-image-amd64)"

guest=$("$src/scripts/build-test-guest") && [ -f "$guest/disk.raw" ] ||
    { echo "Bail out! cannot build the test guest"; exit 1; }
# QEMU runs as libvirt-qemu: everything it opens must be reachable
work=$(mktemp -d /var/tmp/spore-agentrestart.XXXXXX)
chmod 0755 "$work"
mkdir -p "$work/www" "$work/state" "$work/run"
cp "$guest/vmlinuz" "$guest/initrd.img" "$work/"
ln -s "$guest/disk.raw" "$work/www/disk.raw"

ctl() { "$sporectl" --agent "$work/run/control.sock" "$@"; }
# the shims wait up to 30 s for a chunk: far longer than the 2 s outage
start_agent() {
    "$agent_bin" --state-dir "$work/state" --run-dir "$work/run" \
        --plugin "$plugin" --shim-timeout 30 \
        >>"$work/agent.log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
    # a socket left by a killed agent may still be there: ask the new one
    for _ in $(seq 200); do
        kill -0 "$agent_pid" 2>/dev/null || return 1
        quiet ctl agent-image-list && return 0
        sleep 0.05
    done
    return 1
}
kill_agent() {
    kill -9 "$agent_pid"
    wait "$agent_pid" 2>/dev/null
}
image_field() { # image_field HEX PYTHON-EXPR: evaluated on the image as 'im'
    ctl --json agent-image-show "$1" |
        python3 -c "import json,sys; im=json.load(sys.stdin)['image']; print($2)"
}
# present_count HEX: chunks whose bit is set in the cache's bitmap on disk
present_count() {
    python3 -c 'import sys; print(sum(bin(b).count("1") for b in open(sys.argv[1], "rb").read()))' \
        "$work/state/cache/$1/present" 2>/dev/null
}
# in_flight HEX MIN: at least MIN chunks cached and some queued or fetching
in_flight() {
    [ "$(present_count "$1")" -ge "$2" ] &&
        [ "$(image_field "$1" "int(im['cached_chunks'] >= $2 and im['queued_chunks'] > 0)")" = 1 ]
}
no_shim_errors() { ! grep -q "unavailable" "$work"/run/shims/*.log 2>/dev/null; }

rate_kib=1024
port=$(free_port)
check "a rate-limited origin ($rate_kib KiB/s) starts on 127.0.0.1:$port" \
    start_origin "$work/www" "$port" "$work" "server.kbytes-per-second = $rate_kib"
check "spore-agent starts" start_agent

# --- 1. a cold whole-image read across a restart
head -c $((16 * 1024 * 1024)) /dev/urandom >"$work/www/image.raw"
"$sporectl" image-index -o "$work/image.idx" "$work/www/image.raw" >"$work/id" 2>/dev/null
hex=$(sed 's/^sha256://' "$work/id")
total=$((16 * 1024 * 1024 / 65536))
quiet ctl agent-image-add "$work/image.idx" "http://127.0.0.1:$port/image.raw"
uri=$(ctl agent-image-serve "$hex")
check "the agent serves a 16 MiB image" test -n "$uri"
qemu-img convert -O raw -f raw "$uri" "$work/copy.raw" 2>"$work/convert.err" &
reader=$!
pids+=("$reader")
check "a cold read of the whole image is fetching" \
    wait_until 120 in_flight "$hex" $((total / 5))
kill_agent
cached_at_kill=$(present_count "$hex")
echo "# agent killed with $cached_at_kill of $total chunks cached"
check "the agent is killed mid-read ($cached_at_kill of $total chunks cached)" \
    test "$cached_at_kill" -lt "$total"
sleep 2 # the outage
check "the reader is still waiting, 2 s after the kill" kill -0 "$reader"
check "the agent restarts" start_agent
wait "$reader"
rc=$?
check "the read completes" test "$rc" -eq 0
[ "$rc" -eq 0 ] || sed 's/^/#   /' "$work/convert.err"
check "... and the copy equals the image" \
    qemu-img compare -q -f raw -F raw "$work/www/image.raw" "$work/copy.raw"
check "... having fetched after the restart" \
    test "$(image_field "$hex" "im['cached_chunks']")" -gt "$cached_at_kill"
check "the shim logged no unavailable chunk" no_shim_errors

# --- 2. a guest boots across a restart, from a cold cache
libvirt_state=$("$src/scripts/libvirt-up") || { echo "Bail out! libvirtd does not start"; exit 1; }
virt_type=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
echo "# domain type: $virt_type (detected)"
# the boot reads ~3 MB (~45 chunks): over 20 s of fetching at this rate, so
# that the guest still needs most of its chunks when the agent is killed
# (a new image has no boot profile: what is queued is the guest's demand)
boot_kib=128
kill "$origin_pid"
wait "$origin_pid" 2>/dev/null
check "the origin restarts limited to $boot_kib KiB/s" \
    start_origin "$work/www" "$port" "$work" "server.kbytes-per-second = $boot_kib"
"$sporectl" image-index -o "$work/disk.idx" "$guest/disk.raw" >"$work/id2" 2>/dev/null
hex2=$(sed 's/^sha256://' "$work/id2")
quiet ctl agent-image-add "$work/disk.idx" "http://127.0.0.1:$port/disk.raw"
uri2=$(ctl agent-image-serve "$hex2")
check "the agent serves the guest image" test -n "$uri2"
cat >"$work/agentrestart.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="spore-test-agentrestart">
  <image name="test-guest">
    <origin url="http://127.0.0.1:$port/disk.raw"/>
  </image>
  <vm hypervisor="$virt_type">
    <vcpus>1</vcpus>
    <memory unit="MiB">256</memory>
    <boot kernel="$work/vmlinuz" initrd="$work/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet"/>
  </vm>
</service>
EOF
quiet qemu-img create -f qcow2 -F raw -b "$uri2" "$work/clone.qcow2"
"$sporectl" domain-xml --image "sha256:$hex2" --overlay "$work/clone.qcow2" \
    --console-log "$work/console.log" "$work/agentrestart.xml" 0 >"$work/$domain.xml"
check "the domain pauses on a disk error (error_policy='stop')" \
    grep -Eq "error_policy=.stop." "$work/$domain.xml"
quiet virsh -c qemu:///system define "$work/$domain.xml"
# every lifecycle event of the domain, to prove it was never suspended
virsh -c qemu:///system event --domain "$domain" --event lifecycle --loop \
    >"$work/events.log" 2>&1 &
pids+=($!)
events_seen() { grep -q "Started" "$work/events.log"; }
check "the guest starts on a cold cache" quiet virsh -c qemu:///system start "$domain"
check "its lifecycle events are recorded" wait_until 20 events_seen
# early in the boot: most of its reads are still to come, so the guest
# reads through the outage (and maybe has a read in flight at the kill)
booting() {
    ! booted "$work/console.log" && [ "$(present_count "$hex2")" -ge 3 ]
}
check "its boot is fetching through the slowed origin" wait_until 120 booting
queued=$(image_field "$hex2" "im['queued_chunks']")
kill_agent
cached_at_kill=$(present_count "$hex2")
echo "# agent killed mid-boot with $cached_at_kill chunks cached, $queued queued"
check "the agent is killed mid-boot (the boot not complete)" \
    eval '! booted "$work/console.log"'
sleep 2 # the outage
check "the agent restarts" start_agent
check "the guest finishes booting" wait_until 240 booted "$work/console.log"
if ! booted "$work/console.log"; then
    echo "# console:"; tr -d '\r' <"$work/console.log" 2>/dev/null | tail -20 | sed 's/^/#   /'
fi
cached_at_end=$(image_field "$hex2" "im['cached_chunks']")
echo "# the boot ended with $cached_at_end chunks cached"
check "... having fetched after the restart" \
    test "$cached_at_end" -gt "$cached_at_kill"
check "no I/O error on the guest's console" \
    eval '! grep -qai "I/O error" "$work/console.log"'
check "the domain runs" \
    test "$(virsh -c qemu:///system domstate "$domain" 2>/dev/null | head -n 1)" = running
check "the domain was never paused (no Suspended event)" \
    eval '! grep -q "Suspended" "$work/events.log"'
check "the shim logged no unavailable chunk" no_shim_errors
sed 's/^/# event: /' "$work/events.log"

finish
