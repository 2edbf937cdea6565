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

# finish: the TAP plan, and the exit status
finish() {
    echo "1..$n"
    [ "$failed" -eq 0 ]
}
