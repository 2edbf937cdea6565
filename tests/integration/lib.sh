# lib.sh: what the integration tests share.  Source it; it keeps the TAP
# counters n (checks) and failed.
n=0
failed=0

ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }

# check DESCRIPTION COMMAND...: one TAP line, passing when COMMAND succeeds
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

# quiet COMMAND...: run it with its output discarded
quiet() { "$@" >/dev/null 2>&1; }

# skip_all REASON: the whole test is skipped
# (TAP: a "1..0 # SKIP" plan and exit 0; meson counts exit 77 of a TAP
# test as an error)
skip_all() { echo "1..0 # SKIP $1"; exit 0; }

# free_port: a free TCP port on 127.0.0.1
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# nonzero_bytes FILE: bytes in the 64 KiB blocks of FILE that are not all zero
nonzero_bytes() {
    python3 -c '
import sys
total = 0
with open(sys.argv[1], "rb") as f:
    while True:
        c = f.read(65536)
        if not c:
            break
        if c.count(0) != len(c):
            total += len(c)
print(total)' "$1"
}

# start_origin DOCROOT PORT DIR [EXTRA-CONFIG]: lighttpd on 127.0.0.1:PORT
# serving DOCROOT, its config and logs (access.log) in DIR; sets origin_pid
# and adds it to the pids array for cleanup
start_origin() {
    cat >"$3/lighttpd.conf" <<EOF
server.document-root = "$1"
server.bind = "127.0.0.1"
server.port = $2
server.modules = ("mod_accesslog")
accesslog.filename = "$3/access.log"
server.errorlog = "$3/lighttpd-error.log"
${4:-}
EOF
    /usr/sbin/lighttpd -D -f "$3/lighttpd.conf" &
    origin_pid=$!
    pids+=("$origin_pid")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# wait_until HALF_SECONDS COMMAND...: run COMMAND every 0.5 s until it
# succeeds (return 0) or HALF_SECONDS tries have passed (return 1)
wait_until() {
    local tries=$1
    shift
    for _ in $(seq "$tries"); do
        "$@" && return 0
        sleep 0.5
    done
    return 1
}

# booted CONSOLE-LOG: the test guest's init has finished booting
booted() { grep -qa 'spore-guest: boot complete' "$1" 2>/dev/null; }

# domains_of SERVICE: the names of the domains of SERVICE's clones, sorted,
# each followed by a space (libvirtd is shared: other tests' domains may be
# defined too, and are not ours to count)
domains_of() {
    virsh -q -c qemu:///system list --all --name |
        grep -E "^$1-[0-9]+\$" | sort | tr '\n' ' '
}

# remove_pool NAME: stop and undefine a libvirt storage pool a test made
# (its directory is the test's to remove)
remove_pool() {
    virsh -q -c qemu:///system pool-destroy "$1" >/dev/null 2>&1
    virsh -q -c qemu:///system pool-undefine "$1" >/dev/null 2>&1
}

# remove_leftovers SERVICE POOL: destroy and undefine SERVICE's clones and
# remove POOL, as a clone test's cleanup does; also at its start, for what
# a run whose libvirtd went away before its cleanup left behind (a pool
# naming that run's removed directory)
remove_leftovers() {
    local d
    for d in $(domains_of "$1"); do
        virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
        virsh -q -c qemu:///system undefine "$d" >/dev/null 2>&1
    done
    remove_pool "$2"
}

# The origin's access-log format that records each request's Range (an
# EXTRA-CONFIG of start_origin), for range_chunks
RANGE_LOG_FORMAT='accesslog.format = "%s %b %{Range}i"'

# restart_origin DOCROOT PORT DIR: lighttpd writes its access log every few
# seconds, and all of it when it stops: restart it (with RANGE_LOG_FORMAT)
# to read the whole log; log_count is then the log's lines
restart_origin() {
    kill "$origin_pid"
    wait "$origin_pid" 2>/dev/null
    start_origin "$1" "$2" "$3" "$RANGE_LOG_FORMAT" ||
        echo "# the origin does not restart"
    log_count=$(wc -l <"$3/access.log")
}

# range_chunks LOG FROM-LINE: the 64 KiB chunk numbers of the Range requests
# in LOG (RANGE_LOG_FORMAT) from line FROM-LINE on, sorted
range_chunks() {
    tail -n +"$2" "$1" | python3 -c '
import re, sys
for line in sys.stdin:
    m = re.search(r"bytes=(\d+)-(\d+)", line)
    if m:
        print(int(m.group(1)) // 65536)' | sort -n
}

# The tests of a whole site (spored, agents, libvirtd): site_test_prepare
# NAME checks what they need (else skip_all), sets the cleanup at exit
# (site_test_cleanup), builds the test guest (guest) and makes SITE
# (/tmp/spore-NAME.XXXXXX); the caller then sets SITE_* and calls
# site_test_start, which sources site-lib.sh, starts libvirtd and sets
# SITE_VIRT and libguestfs's environment.  Both need src; the caller adds
# what else it starts to pids.
SITE=""
libvirt_state=""
pids=()
site_test_cleanup() {
    [ -n "$SITE" ] && site_stop
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    [ "$libvirt_state" = started ] && "$src/scripts/libvirt-down"
    [ -n "$SITE" ] && rm -rf "$SITE"
}
site_test_prepare() {
    trap site_test_cleanup EXIT
    [ "$(id -u)" -eq 0 ] || skip_all "needs root to run libvirtd"
    [ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
    [ -x /usr/sbin/lighttpd ] || skip_all "lighttpd is not installed"
    command -v sqlite3 >/dev/null || skip_all "sqlite3 (the CLI) is not installed"
    ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel in /boot (linux-image-amd64)"
    guest=$("$src/scripts/build-test-guest") && [ -f "$guest/disk.raw" ] ||
        { echo "Bail out! cannot build the test guest"; exit 1; }
    SITE=$(mktemp -d "/tmp/spore-$1.XXXXXX")
    chmod 0755 "$SITE"
}
site_test_start() {
    . "$src/scripts/site-lib.sh"
    libvirt_state=$("$src/scripts/libvirt-up") ||
        { echo "Bail out! libvirtd does not start"; exit 1; }
    SITE_VIRT=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
    export LIBGUESTFS_BACKEND=direct SPORE_INSPECT_CACHE=$SITE/inspect
    [ "$SITE_VIRT" = kvm ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
    echo "# domain type: $SITE_VIRT; site in $SITE"
}

# site_test_origin [EXTRA-CONFIG]: the test guest's kernel and initrd in
# SITE, its disk in SITE/www served by lighttpd on a free port (sets port;
# EXTRA-CONFIG as for start_origin), or bail out
site_test_origin() {
    mkdir -p "$SITE/www"
    cp "$guest/vmlinuz" "$guest/initrd.img" "$SITE/"
    ln "$guest/disk.raw" "$SITE/www/disk.raw" 2>/dev/null ||
        cp "$guest/disk.raw" "$SITE/www/disk.raw"
    port=$(free_port)
    start_origin "$SITE/www" "$port" "$SITE" "${1:-}" ||
        { echo "Bail out! lighttpd does not start"; exit 1; }
}

# finish: the TAP plan, and the exit status
finish() {
    echo "1..$n"
    [ "$failed" -eq 0 ]
}
