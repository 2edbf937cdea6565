/*
 * domain-xml.c: Manifest + clone facts -> libvirt domain XML.
 *
 * Shape, per domain type:
 *   kvm, qemu  hvm on the pc machine; the overlay as a virtio disk with
 *              error_policy/rerror_policy 'stop' (a fetch outage pauses the
 *              guest rather than handing it an I/O error); virtio NICs;
 *              a pty serial console with its output logged to a file, so
 *              both `virsh console` and the log work.  A cloud-init
 *              clone's seed: a read-only IDE cdrom (hdc).
 *   xen        libxl: PV (xenpv) with direct kernel boot, else HVM (xenfv)
 *              with hvmloader; the qcow2 overlay through the qdisk backend
 *              (driver name 'qemu'); xen console; a cloud-init seed as
 *              a read-only xvdb.
 * Values are placed with xmlNewProp / xmlNewTextChild, which escape them.
 */
#include "domain-xml.h"

#include <string.h>
#include <libxml/tree.h>

#include "spore-error.h"
#include "xml-autoptr.h"
#include "xml-safe.h"

#define CLONE_INDEX_MAX 999u
#define XEN_HVMLOADER   "/usr/lib/xen/boot/hvmloader"

static xmlNode *
child(xmlNode *parent, const char *name, const char *text)
{
    return xmlNewTextChild(parent, NULL, BAD_CAST name,
                           text ? BAD_CAST text : NULL);
}

static void
attr(xmlNode *el, const char *name, const char *value)
{
    xmlNewProp(el, BAD_CAST name, BAD_CAST value);
}

static bool
is_image_id(const char *id)
{
    if (!id || !g_str_has_prefix(id, "sha256:") || strlen(id) != 7 + 64)
        return false;
    for (const char *p = id + 7; *p; p++) {
        if (!g_ascii_isdigit(*p) && !(*p >= 'a' && *p <= 'f'))
            return false;
    }
    return true;
}

static void
add_metadata(xmlNode *domain, const CloneDomainSpec *spec)
{
    xmlNode *metadata = child(domain, "metadata", NULL);
    xmlNode *clone = xmlNewChild(metadata, NULL, BAD_CAST "clone", NULL);
    xmlNs *ns = xmlNewNs(clone, BAD_CAST CLONE_METADATA_NAMESPACE,
                         BAD_CAST CLONE_METADATA_PREFIX);
    char buf[32];

    xmlSetNs(clone, ns);
    attr(clone, "service", spec->manifest->name);
    g_snprintf(buf, sizeof(buf), "%u", spec->index);
    attr(clone, "index", buf);
    attr(clone, "image", spec->image_id);
    g_snprintf(buf, sizeof(buf), "%" G_GUINT64_FORMAT, spec->generation);
    attr(clone, "generation", buf);
    if (spec->owner)
        attr(clone, "host", spec->owner);
}

static void
add_os(xmlNode *domain, const CloneDomainSpec *spec)
{
    const Manifest *m = spec->manifest;
    xmlNode *os = child(domain, "os", NULL);
    xmlNode *type;
    bool xen = spec->virt == MANIFEST_HYPERVISOR_XEN;
    bool direct = m->vm.kernel != NULL;

    if (xen && direct) {
        type = child(os, "type", "linux");
        attr(type, "arch", "x86_64");
        attr(type, "machine", "xenpv");
    } else if (xen) {
        type = child(os, "type", "hvm");
        attr(type, "arch", "x86_64");
        attr(type, "machine", "xenfv");
        child(os, "loader", XEN_HVMLOADER);
    } else {
        type = child(os, "type", "hvm");
        attr(type, "arch", "x86_64");
        attr(type, "machine", "pc");
    }
    if (direct) {
        child(os, "kernel", m->vm.kernel);
        if (m->vm.initrd)
            child(os, "initrd", m->vm.initrd);
        if (m->vm.cmdline)
            child(os, "cmdline", m->vm.cmdline);
    } else {
        attr(child(os, "boot", NULL), "dev", "hd");
    }
}

/* the cloud-init seed: read-only, after the overlay (docs/clones.md) */
static void
add_seed(xmlNode *devices, const char *path, bool xen)
{
    xmlNode *disk = child(devices, "disk", NULL);
    xmlNode *driver, *target;

    attr(disk, "type", "file");
    /* libxl has cdroms for HVM only: a read-only disk works for both */
    attr(disk, "device", xen ? "disk" : "cdrom");
    driver = child(disk, "driver", NULL);
    attr(driver, "name", "qemu");
    attr(driver, "type", "raw");
    attr(child(disk, "source", NULL), "file", path);
    target = child(disk, "target", NULL);
    attr(target, "dev", xen ? "xvdb" : "hdc");
    attr(target, "bus", xen ? "xen" : "ide");
    child(disk, "readonly", NULL);
}

static void
add_devices(xmlNode *domain, const CloneDomainSpec *spec)
{
    const Manifest *m = spec->manifest;
    bool xen = spec->virt == MANIFEST_HYPERVISOR_XEN;
    xmlNode *devices = child(domain, "devices", NULL);
    xmlNode *disk, *driver, *el, *target;

    disk = child(devices, "disk", NULL);
    attr(disk, "type", "file");
    attr(disk, "device", "disk");
    driver = child(disk, "driver", NULL);
    attr(driver, "name", "qemu");
    attr(driver, "type", "qcow2");
    if (!xen) {
        attr(driver, "error_policy", "stop");
        attr(driver, "rerror_policy", "stop");
    }
    attr(child(disk, "source", NULL), "file", spec->overlay_path);
    target = child(disk, "target", NULL);
    attr(target, "dev", xen ? "xvda" : "vda");
    attr(target, "bus", xen ? "xen" : "virtio");

    if (spec->seed_path)
        add_seed(devices, spec->seed_path, xen);

    for (guint i = 0; i < m->vm.interfaces->len; i++) {
        const ManifestInterface *iface = m->vm.interfaces->pdata[i];
        xmlNode *nic = child(devices, "interface", NULL);

        attr(nic, "type", iface->network ? "network" : "bridge");
        attr(child(nic, "source", NULL), iface->network ? "network" : "bridge",
             iface->network ? iface->network : iface->bridge);
        if (!xen)
            attr(child(nic, "model", NULL), "type", "virtio");
    }

    if (xen) {
        el = child(devices, "console", NULL);
        attr(el, "type", "pty");
        el = child(el, "target", NULL);
        attr(el, "type", "xen");
        attr(el, "port", "0");
    } else {
        el = child(devices, "serial", NULL);
        attr(el, "type", "pty");
        target = child(el, "log", NULL);
        attr(target, "file", spec->console_log);
        attr(target, "append", "on");
        attr(child(el, "target", NULL), "port", "0");
        el = child(devices, "console", NULL);
        attr(el, "type", "pty");
        target = child(el, "target", NULL);
        attr(target, "type", "serial");
        attr(target, "port", "0");
    }
}

char *
clone_domain_xml(const CloneDomainSpec *spec, GError **error)
{
    const Manifest *m = spec->manifest;
    g_autoptr(xmlDoc) doc = NULL;
    xmlNode *domain, *el; /* owned by @doc */
    g_autofree char *name = NULL;
    char buf[32];

    if (spec->index >= m->scaling.max || spec->index > CLONE_INDEX_MAX) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "clone index %u is beyond service '%s''s maximum of %u",
                    spec->index, m->name, m->scaling.max);
        return NULL;
    }
    if (!is_image_id(spec->image_id)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "'%s' is not an image id (sha256:<64 hex digits>)",
                    spec->image_id ? spec->image_id : "(null)");
        return NULL;
    }
    if (!spec->overlay_path || spec->overlay_path[0] != '/' ||
        !spec->console_log || spec->console_log[0] != '/') {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the overlay and console log paths must be absolute");
        return NULL;
    }
    if ((spec->seed_path != NULL) !=
        (m->customize.method == MANIFEST_CUSTOMIZE_CLOUD_INIT)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    spec->seed_path ? "a seed for service '%s', whose clones "
                                      "are not customized by cloud-init"
                                    : "service '%s''s clones are customized "
                                      "by cloud-init: a seed is needed",
                    m->name);
        return NULL;
    }
    if (spec->seed_path && spec->seed_path[0] != '/') {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the seed path '%s' must be absolute", spec->seed_path);
        return NULL;
    }

    xml_adapter_silence();
    doc = xmlNewDoc(BAD_CAST "1.0");
    domain = xmlNewDocNode(doc, NULL, BAD_CAST "domain", NULL);
    xmlDocSetRootElement(doc, domain);
    attr(domain, "type", manifest_hypervisor_name(spec->virt));

    name = manifest_clone_name(m, spec->index);
    child(domain, "name", name);
    if (spec->uuid)
        child(domain, "uuid", spec->uuid);
    if (m->description)
        child(domain, "description", m->description);
    add_metadata(domain, spec);

    g_snprintf(buf, sizeof(buf), "%" G_GUINT64_FORMAT, m->vm.memory_kib);
    attr(child(domain, "memory", buf), "unit", "KiB");
    g_snprintf(buf, sizeof(buf), "%u", m->vm.vcpus);
    child(domain, "vcpu", buf);
    add_os(domain, spec);
    if (!(spec->virt == MANIFEST_HYPERVISOR_XEN && m->vm.kernel)) {
        el = child(domain, "features", NULL);
        child(el, "acpi", NULL);
        child(el, "apic", NULL);
    }
    child(domain, "on_poweroff", "destroy");
    child(domain, "on_reboot", "restart");
    child(domain, "on_crash", "destroy");
    add_devices(domain, spec);

    return xml_doc_to_string(doc);
}
