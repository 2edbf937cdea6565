#!/bin/bash
# test-status-page.sh BUILD-DIR: spored's status page in a real browser —
# a site of spored, one spore-agent (host "stp1": a name no other test
# uses, since domains are told apart by their owner on the shared
# libvirtd), libvirtd + QEMU, libguestfs, nbdkit and a lighttpd origin,
# with the busybox test guest.
#
#   A service of one clone (named after the test's PID: domain names are
#   global on the shared libvirtd) is scaled up to two; once the new clone
#   runs, headless Chromium (Debian's chromium) loads /status: its
#   rendered DOM has the service with 2 desired and 2 running, the
#   just-scaled-up clone running on stp1, the host up with its cached
#   fraction of the image, and the scaling event; its screenshot is a PNG
#   of the window's size that is not blank.  The endpoint: GET / leads to
#   /status, the page carries a Content-Security-Policy, and it takes no
#   writes (POST: 405).  The screenshot is kept as
#   BUILD-DIR/meson-logs/status-page.png.
#
# Chromium is kept off every network but loopback: a proxy that does not
# exist for all else, no DNS, no background requests.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
checker="$(dirname "$0")/check-status-page.py"
command -v chromium >/dev/null ||
    skip_all "chromium is not installed (Debian package chromium; scripts/install-deps)"
command -v curl >/dev/null || skip_all "curl is not installed"
# PIL of Debian's python3-pil: the first python3 that has it
py=""
for p in python3 /usr/bin/python3; do
    if "$p" -c 'import PIL' 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || skip_all "python3-pil is not installed (scripts/install-deps)"
# the page in headless Chromium, kept off every network but loopback
chromium_run() {
    timeout 180 chromium --headless --no-sandbox --disable-gpu \
        --disable-dev-shm-usage --user-data-dir="$chromium_dir" \
        --no-first-run --hide-scrollbars \
        --disable-background-networking --disable-component-update \
        --disable-sync --disable-default-apps --disable-extensions \
        --disable-domain-reliability --no-pings \
        --proxy-server=http://127.0.0.1:9 \
        --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
        "$@" 2>>"$chromium_dir.log"
}
# does it run here at all? (a page of its own, before any site)
chromium_dir=$(mktemp -d /tmp/spore-chromium.XXXXXX)
probe=$(chromium_run --dump-dom 'data:text/html,<p>spore-probe</p>')
why=$(tail -n 1 "$chromium_dir.log" 2>/dev/null)
rm -rf "$chromium_dir" "$chromium_dir.log"
case $probe in
*spore-probe*) ;;
*) skip_all "chromium does not run here: ${why:-no output}" ;;
esac
site_test_prepare status-page
chromium_dir=$SITE/chromium
SITE_TAG=sp$$
SITE_LOST_AFTER=300 # an agent stalled by a loaded, shared libvirtd is not lost
svc=stpage$$
site_test_start

site_test_origin

ctl() { sporectl_site "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
clone_state() { ctl --json clone-list "$svc" 2>/dev/null | jget "([c['state'] for c in r['clones'] if c['name']=='$1'] or ['none'])[0]"; }

cat >"$SITE/svc.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="$svc">
  <image name="test-guest"><origin url="http://127.0.0.1:$port/disk.raw"/></image>
  <vm hypervisor="$SITE_VIRT">
    <vcpus>1</vcpus>
    <memory unit="MiB">160</memory>
    <boot kernel="$SITE/vmlinuz" initrd="$SITE/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet noapic"/>
  </vm>
  <customize><hostname>{service}-{index}</hostname></customize>
  <scaling min="1" max="3" initial="1"/>
</service>
EOF

check "spored starts" site_manager_start
status_url="http://127.0.0.1:$((SITE_PORT + 2))/status"
site_host_key stp1 >"$SITE/hosts.d/stp1.pub"
site_agent_start stp1
up() { [ "$(ctl --json host-list | jget "sum(h['state']=='up' for h in r['hosts'])")" = 1 ]; }
check "stp1 is up" wait_until 60 up
check "image-add" quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"
check "submit --wait: $svc-0 runs" \
    quiet timeout 900 "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" \
    submit --wait --timeout 880 "$SITE/svc.xml"
check "scale $svc 2" quiet ctl scale "$svc" 2
check "the new clone $svc-1 runs" \
    wait_until 1200 eval '[ "$(clone_state "$svc-1")" = running ]'
# the cached fraction comes with the host's next report
cached() { ctl --json image-list | jget "any(h['host']=='stp1' and h['cached_fraction'] > 0 for i in r['images'] for h in i['hosts'])" | grep -q True; }
check "stp1 reports a cached fraction of the image" wait_until 60 cached

# --- the endpoint
headers() { curl -s -o /dev/null -D - "$@"; }
check "GET / leads to /status (302, Location: /status)" \
    eval 'headers "${status_url%/status}/" | tr -d "\r" | grep -qx "Location: /status"'
check "/status is HTML with a Content-Security-Policy that forbids scripts" \
    eval 'h=$(headers "$status_url" | tr -d "\r");
        grep -qx "Content-Type: text/html; charset=utf-8" <<<"$h" &&
        grep -q "^Content-Security-Policy: default-src .none." <<<"$h"'
check "it takes no writes: POST /status answers 405" \
    test "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$status_url")" = 405

# --- the page in headless Chromium
check "chromium renders the page (--dump-dom)" \
    eval 'chromium_run --dump-dom "$status_url" >"$SITE/dom.html" && [ -s "$SITE/dom.html" ]'
"$py" "$checker" rows "$SITE/dom.html" >"$SITE/rows.json" 2>>"$SITE/chromium.log"
has() { # has PYTHON-CONDITION-ON-r: some row of the rendered page has it
    python3 -c "import json,sys; rows=json.load(open(sys.argv[1]))
sys.exit(0 if any($1 for r in rows) else 1)" "$SITE/rows.json"
}
check "the rendered DOM has $svc: 2 desired, 2 placed, 2 running, ready" \
    has "r.get('service')=='$svc' and r['class']=='service' and r.get('desired')=='2' and r.get('placed')=='2' and r.get('running')=='2' and r.get('state')=='ready'"
check "and the just-scaled-up clone $svc-1, running on stp1" \
    has "r.get('clone')=='$svc-1' and r.get('state')=='running' and r.get('host')=='stp1' and '| running |' in r['text']"
check "and $svc-0, running on stp1" \
    has "r.get('clone')=='$svc-0' and r.get('state')=='running' and r.get('host')=='stp1'"
check "and host stp1 up, with its cached fraction of test-guest" \
    has "r['class']=='host' and r.get('host')=='stp1' and r.get('state')=='up' and __import__('re').search(r'test-guest \d+\.\d%', r['text'])"
check "and the scaling event" \
    has "r['class']=='event' and 'service $svc scaled by hand from 1 to 2' in r['text']"
check "chromium takes a screenshot (1280x900)" \
    eval 'chromium_run --screenshot="$SITE/status.png" --window-size=1280,900 "$status_url" >/dev/null &&
        [ -s "$SITE/status.png" ]'
if out=$("$py" "$checker" png "$SITE/status.png" 1280 900); then
    ok "the screenshot is a 1280x900 PNG that is not blank"
else
    not_ok "the screenshot is a 1280x900 PNG that is not blank"
fi
printf '%s\n' "$out" | sed 's/^/# /'
# kept for a look after the run, with meson's logs
[ -s "$SITE/status.png" ] && [ -d "$BUILD/meson-logs" ] &&
    cp "$SITE/status.png" "$BUILD/meson-logs/status-page.png" &&
    echo "# screenshot: $BUILD/meson-logs/status-page.png"

if [ "$failed" -ne 0 ]; then
    for f in spored.log stp1.log chromium.log rows.json; do
        echo "# --- $f"
        tail -40 "$SITE/$f" 2>/dev/null | sed 's/^/# /'
    done
fi
finish
