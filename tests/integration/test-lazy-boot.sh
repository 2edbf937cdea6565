#!/bin/bash
# test-lazy-boot.sh SPORECTL SPORE_AGENT PLUGIN: a real Linux guest boots
# under libvirtd + QEMU from a qcow2 overlay backed by the shim's export,
# with a cold cache and a real HTTP origin.  Asserts the guest's console and
# that only a small fraction of the image was fetched.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3
src=$(cd "$(dirname "$0")/../.." && pwd)
domain=spore-test-lazyboot-0
domain2=spore-test-lazyboot-1
pool=spore-test-lazyboot
pids=()
work=""
libvirt_state=""
# spore's libvirt hook (data/spore-qemu-hook.in), installed for this test
# with this build's sporectl; an installed one is put back afterwards
hook=/etc/libvirt/hooks/qemu.d/spore
hook_installed=""

cleanup() {
    for d in "$domain" "$domain2"; do
        virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
        virsh -q -c qemu:///system undefine "$d" >/dev/null 2>&1
    done
    for p in "${pids[@]}" $(cat "$work"/run/shims/*.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    remove_pool "$pool"
    [ "$libvirt_state" = started ] && "$src/scripts/libvirt-down"
    if [ -n "$hook_installed" ]; then
        if [ -e "$work/hook.saved" ]; then mv -f "$work/hook.saved" "$hook"; else rm -f "$hook"; fi
    fi
    sleep 0.2
    [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT


[ "$(id -u)" -eq 0 ] || skip_all "needs root to run libvirtd"
[ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
command -v qemu-system-x86_64 >/dev/null || skip_all "qemu-system-x86_64 is not installed"
[ -x /usr/sbin/lighttpd ] || skip_all "lighttpd is not installed"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel in /boot (linux-image-amd64)"

guest=$("$src/scripts/build-test-guest") && [ -f "$guest/disk.raw" ] ||
    { echo "Bail out! cannot build the test guest"; exit 1; }
# QEMU runs as libvirt-qemu: everything it opens must be reachable
work=$(mktemp -d /var/tmp/spore-lazyboot.XXXXXX)
chmod 0755 "$work"
mkdir -p "$work/www" "$work/state" "$work/run"
cp "$guest/vmlinuz" "$guest/initrd.img" "$work/"
ln -s "$guest/disk.raw" "$work/www/disk.raw"
master_sum_before=$(sha256sum <"$guest/disk.raw" | cut -c1-64)
# before libvirtd starts: it looks for hooks only at its start
mkdir -p "${hook%/*}"
[ -e "$hook" ] && cp -p "$hook" "$work/hook.saved"
hook_installed=yes
sed "s#^SPORECTL=.*#SPORECTL='$sporectl'#" "$(dirname "$(dirname "$sporectl")")/data/spore-qemu-hook" >"$hook.new" &&
    chmod 0755 "$hook.new" && mv -f "$hook.new" "$hook"
libvirt_state=$("$src/scripts/libvirt-up") || { echo "Bail out! libvirtd does not start"; exit 1; }
virt_type=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
echo "# domain type: $virt_type (detected)"

port=$(free_port)
start_origin "$work/www" "$port" "$work"

ctl() { "$sporectl" --agent "$work/run/control.sock" "$@"; }
start_agent() {
    "$agent_bin" --state-dir "$work/state" --run-dir "$work/run" --plugin "$plugin" \
        --shim-timeout 5 \
        >>"$work/agent.log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
    for _ in $(seq 100); do quiet ctl agent-image-list && return 0; sleep 0.05; done
    return 1
}
start_agent

"$sporectl" image-index -o "$work/disk.idx" "$guest/disk.raw" >"$work/id" 2>/dev/null
hex=$(sed 's/^sha256://' "$work/id")
check "the agent takes the guest image" \
    quiet ctl agent-image-add "$work/disk.idx" "http://127.0.0.1:$port/disk.raw"
uri=$(ctl agent-image-serve "$hex")
check "its shim serves it" test -n "$uri"
check "the shim socket is QEMU's group's" \
    test "$(stat -c %G "$work/run/shims/${hex:0:16}.sock")" = libvirt-qemu
# the clone, made by spore from a manifest: an overlay volume backed by the
# export, customized through it (the appliance reads the lazy image too),
# defined and started (sporectl clone-create)
cat >"$work/lazyboot.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="spore-test-lazyboot">
  <image name="test-guest">
    <origin url="http://127.0.0.1:$port/disk.raw"/>
  </image>
  <vm hypervisor="$virt_type">
    <vcpus>1</vcpus>
    <memory unit="MiB">256</memory>
    <boot kernel="$work/vmlinuz" initrd="$work/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet"/>
  </vm>
  <customize><hostname>lazy-{index}</hostname></customize>
  <scaling min="1" max="2"/>
</service>
EOF
export SPORE_VIRT_TYPE=$virt_type LIBGUESTFS_BACKEND=direct
export SPORE_INSPECT_CACHE=$work/inspect
[ "$virt_type" = kvm ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
check "clone-create makes and starts a clone backed by the shim's export" \
    quiet "$sporectl" clone-create --image "$uri" --image-id "sha256:$hex" \
    --pool "$pool" --pool-dir "$work/pool" --console-dir "$work" \
    "$work/lazyboot.xml" 0
check "its overlay's backing file is the export, format raw" \
    test "$(qemu-img info -U --output=json "$work/pool/$domain.qcow2" |
        python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["backing-filename"], i["backing-filename-format"])')" = "$uri raw"

write_domain() { # write_domain NAME OVERLAY CONSOLE IMAGE-HEX: NAME ends in -INDEX
    "$sporectl" domain-xml --image "sha256:$4" --overlay "$2" \
        --console-log "$3" "$work/lazyboot.xml" "${1##*-}" >"$work/$1.xml"
}

booted=no
wait_until 180 booted "$work/$domain.log" && booted=yes
check "the guest boots to its init from the lazily fetched image" test "$booted" = yes
check "its console shows its customized hostname" \
    grep -qa 'spore-guest: hostname=lazy-0' "$work/$domain.log"
if [ "$booted" != yes ]; then
    echo "# console:"; tr -d '\r' <"$work/$domain.log" 2>/dev/null | tail -20 | sed 's/^/#   /'
fi

fetched=$(ctl --json agent-image-show "$hex" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"]["fetched_bytes"]["origin"])')
size=$(stat -L -c %s "$guest/disk.raw")
used=$(nonzero_bytes "$guest/disk.raw")
echo "# fetched $fetched bytes of a $size-byte image with $used non-zero bytes"
check "the boot fetched something" test "$fetched" -gt 0
check "the boot fetched under 20% of the image's non-zero data" \
    test $((fetched * 100)) -lt $((used * 20))
check "the master image was never written (its digest is unchanged)" \
    test -n "$master_sum_before" -a "$(sha256sum <"$guest/disk.raw" | cut -c1-64)" = "$master_sum_before"
check "the guest's writes landed in the clone's overlay" \
    test "$(qemu-img map -U -f qcow2 --output=json "$work/pool/$domain.qcow2" |
        python3 -c 'import json,sys; print(any(e["depth"] == 0 and e["data"] for e in json.load(sys.stdin)))')" = True

# --- the console shell exits (Ctrl-D in virsh console): the guest's init
# starts another, PID 1 never exits, the kernel does not panic
# console_ctrl_d DOMAIN: Ctrl-D in `virsh console DOMAIN`, as an operator
# types it (virsh wants a terminal: a pty of Python's), then Ctrl-] to leave
console_ctrl_d() {
    python3 - "$1" <<'PY'
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp("virsh", ["virsh", "-c", "qemu:///system", "console", "--force", sys.argv[1]])
def pump(seconds):
    end = time.time() + seconds
    while time.time() < end:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                os.read(fd, 4096)
            except OSError:
                return
pump(2)
for key in (b"\r", b"\x04", b"\x1d"):
    os.write(fd, key)
    pump(2)
os.waitpid(pid, 0)
PY
}
exited() { grep -qa 'spore-guest: the console shell exited' "$work/$domain.log"; }
ctrl_d_until_exited() { console_ctrl_d "$domain" >/dev/null 2>&1; exited; }
check "Ctrl-D in virsh console ends the guest's shell and its init starts another" \
    wait_until 6 ctrl_d_until_exited
check "... and the guest runs on (no panic)" \
    test "$(virsh -c qemu:///system domstate "$domain" 2>/dev/null | head -n 1)" = running
check "... its console shows no kernel panic" \
    eval '! grep -qa "Kernel panic" "$work/$domain.log"'

# --- spore's libvirt hook: `virsh start` of a clone whose shim does not run
# (after a reboot, an agent-image-unserve, a crash) has the agent serve the
# image first; a domain that is not spore's is left alone; with the agent
# down the start fails, saying so
boots() { grep -ac 'spore-guest: boot complete' "$work/$domain.log" 2>/dev/null; }
shim_pidfile=$work/run/shims/${hex:0:16}.pid
shim_runs() { [ -f "$shim_pidfile" ] && kill -0 "$(cat "$shim_pidfile")" 2>/dev/null; }
if [ "$libvirt_state" = started ]; then
    quiet virsh -c qemu:///system destroy "$domain"
    quiet ctl agent-image-unserve "$hex"
    check "agent-image-unserve stops the clone's shim" wait_until 20 eval '! shim_runs'
    boots_before=$(boots)
    check "virsh start of the clone succeeds: spore's hook has the agent serve its image" \
        quiet virsh -c qemu:///system start "$domain"
    check "... its shim runs again" shim_runs
    booted_again() { [ "$(boots)" -gt "$boots_before" ]; }
    check "... and the clone boots again, on its old overlay" wait_until 180 booted_again
    out=$(printf '<domain type="qemu"><name>plain</name><devices/></domain>' |
        "$hook" plain prepare begin - 2>&1)
    check "the hook leaves a domain without spore's metadata alone (exit 0, no output)" \
        test $? -eq 0 -a -z "$out"
    quiet virsh -c qemu:///system destroy "$domain"
    quiet ctl agent-image-unserve "$hex"
    kill "$agent_pid"; wait "$agent_pid" 2>/dev/null
    out=$(virsh -c qemu:///system start "$domain" 2>&1)
    rc=$?
    echo "# virsh start with the agent down: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
    check "with the agent down, virsh start fails and the hook says which agent to start" \
        test "$rc" -ne 0 -a -n "$(grep -o "spore-agent" <<<"$out")"
    check "the agent starts again" start_agent
else
    ok "spore's libvirt hook # SKIP libvirtd was running before this test installed the hook (libvirtd finds hooks only when it starts)"
fi

# --- the origin stops in the middle of a guest's boot (cold cache, another
# image id).  The origin is slowed (lighttpd server.kbytes-per-second) so
# that the boot is still fetching when a few chunks are cached; then it is
# stopped: cached reads go on, the guest's next miss fails after the shim's
# timeout and, with error_policy='stop', pauses it (I/O error) instead of
# corrupting it; once the origin is back it resumes and finishes booting.
boot_kib=512 # the boot reads ~3 MB: several seconds of fetching at this rate
chunk2=131072
kill "$origin_pid"; wait "$origin_pid" 2>/dev/null
check "the origin restarts limited to $boot_kib KiB/s" \
    start_origin "$work/www" "$port" "$work" "server.kbytes-per-second = $boot_kib"
"$sporectl" image-index --chunk-size 128K -o "$work/disk128.idx" "$guest/disk.raw" >"$work/id128" 2>/dev/null
hex2=$(sed 's/^sha256://' "$work/id128") # another id: a cold cache
quiet ctl agent-image-add "$work/disk128.idx" "http://127.0.0.1:$port/disk.raw"
uri2=$(ctl agent-image-serve "$hex2")
quiet qemu-img create -f qcow2 -F raw -b "$uri2" "$work/clone2.qcow2"
write_domain "$domain2" "$work/clone2.qcow2" "$work/console2.log" "$hex2"
quiet virsh -c qemu:///system define "$work/$domain2.xml"
check "a second guest starts on a cold cache" quiet virsh -c qemu:///system start "$domain2"
cached2() {
    ctl --json agent-image-show "$hex2" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["image"]["cached_chunks"])'
}
some_cached() { [ "$(cached2)" -ge 3 ]; }
# present_chunks HEX N: the first N chunks the cache's bitmap claims
present_chunks() {
    python3 -c '
import sys
b = open(sys.argv[1], "rb").read()
on = [i for i in range(len(b) * 8) if b[i // 8] >> (i % 8) & 1]
print(" ".join(map(str, on[:int(sys.argv[2])])))' "$work/state/cache/$1/present" "$2"
}
check "its boot fetches chunks through the slowed origin" wait_until 120 some_cached
booting=no
[ "$(virsh -c qemu:///system domstate "$domain2" 2>/dev/null | head -n 1)" = running ] &&
    ! booted "$work/console2.log" && booting=yes
kill "$origin_pid"; wait "$origin_pid" 2>/dev/null
cached_at_stop=$(cached2)
echo "# origin stopped with $cached_at_stop chunks of the second image cached"
check "the origin stops mid-boot (the guest running, its boot not complete)" \
    test "$booting" = yes
cached_reads_ok() {
    local c chunks
    chunks=$(present_chunks "$hex2" 4)
    [ -n "$chunks" ] || return 1
    for c in $chunks; do
        qemu-img convert -O raw --image-opts \
            "driver=raw,offset=$((c * chunk2)),size=$chunk2,file.driver=nbd,file.server.type=unix,file.server.path=$work/run/shims/${hex2:0:16}.sock,file.export=$hex2" \
            "$work/chunk.raw" 2>/dev/null &&
            cmp -s "$work/chunk.raw" <(dd if="$guest/disk.raw" bs=$chunk2 skip="$c" count=1 status=none) ||
            return 1
    done
}
start=$(date +%s)
check "with the origin down, reads of cached chunks go on, with the right bytes" cached_reads_ok
check "... at once (under the shim's timeout: $(($(date +%s) - start)) s)" test $(($(date +%s) - start)) -lt 5
paused_on_io_error() {
    virsh -c qemu:///system domstate --reason "$domain2" 2>/dev/null | grep -q 'paused (I/O error)'
}
check "the guest's next disk miss fails after the shim's timeout and pauses it (I/O error)" \
    wait_until 120 paused_on_io_error
check "the shim's log names the unavailable chunk" \
    grep -q "chunk [0-9]* .*unavailable" "$work/run/shims/${hex2:0:16}.log"
check "the origin comes back" start_origin "$work/www" "$port" "$work"
check "the guest resumes" quiet virsh -c qemu:///system resume "$domain2"
booted_or_resume() {
    booted "$work/console2.log" && return 0
    # a read that failed before the origin returned may pause it once more
    virsh -c qemu:///system domstate "$domain2" 2>/dev/null | grep -q paused &&
        quiet virsh -c qemu:///system resume "$domain2"
    return 1
}
check "and finishes booting from the origin" wait_until 180 booted_or_resume
check "... having fetched more after the outage" test "$(cached2)" -gt "$cached_at_stop"

finish
