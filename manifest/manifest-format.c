/*
 * manifest-format.c: Manifest -> canonical XML.
 *
 * Canonical means: every default written out (<update> only when it is
 * not the default: format_update), elements in schema order,
 * attributes in a fixed order, sizes in the largest unit that divides them,
 * durations likewise, thresholds in their shortest exact decimal form, two
 * spaces of indentation.  Text is placed with the libxml2 tree API, which
 * escapes it; nothing is concatenated into markup.
 */
#include "manifest.h"

#include <libxml/tree.h>
#include <string.h>
#include <libxml/xmlsave.h>

#include "xml-autoptr.h"
#include "xml-safe.h"

static xmlNode *
add_el(xmlNode *parent, const char *name, const char *text)
{
    return xmlNewTextChild(parent, parent->ns, BAD_CAST name,
                           text ? BAD_CAST text : NULL);
}

static void
set_attr(xmlNode *el, const char *name, const char *value)
{
    xmlNewProp(el, BAD_CAST name, BAD_CAST value);
}

static void
set_attr_uint(xmlNode *el, const char *name, guint64 value)
{
    char buf[32];

    g_snprintf(buf, sizeof(buf), "%" G_GUINT64_FORMAT, value);
    set_attr(el, name, buf);
}

static char *
format_duration(guint seconds)
{
    if (seconds != 0 && seconds % 3600 == 0)
        return g_strdup_printf("%uh", seconds / 3600);
    if (seconds != 0 && seconds % 60 == 0)
        return g_strdup_printf("%um", seconds / 60);
    return g_strdup_printf("%us", seconds);
}

static void
set_attr_duration(xmlNode *el, const char *name, guint seconds)
{
    g_autofree char *s = format_duration(seconds);

    set_attr(el, name, s);
}

/*
 * The shortest decimal that parses back to @v, without exponent (the
 * manifest grammar has none).  %.17g is exact; try shorter first.
 */
static char *
format_threshold(double v)
{
    for (int precision = 1; precision <= 17; precision++) {
        g_autofree char *s = g_strdup_printf("%.*f", precision, v);
        char *end;

        if (g_ascii_strtod(s, NULL) == v) {
            /* drop trailing zeros and a bare point */
            end = s + strlen(s) - 1;
            while (end > s && *end == '0')
                *end-- = '\0';
            if (*end == '.')
                *end = '\0';
            return g_steal_pointer(&s);
        }
    }
    return g_strdup_printf("%.17f", v);
}

static void
format_image(xmlNode *root, const Manifest *m)
{
    xmlNode *image = add_el(root, "image", NULL);

    set_attr(image, "name", m->image.name);
    set_attr(image, "format", manifest_image_format_name(m->image.format));
    for (guint i = 0; i < m->image.origins->len; i++) {
        xmlNode *origin = add_el(image, "origin", NULL);
        set_attr(origin, "url", m->image.origins->pdata[i]);
    }
    if (m->image.digest)
        add_el(image, "digest", m->image.digest);
}

static void
format_vm(xmlNode *root, const Manifest *m)
{
    xmlNode *vm = add_el(root, "vm", NULL);
    xmlNode *memory;
    char buf[32];
    const char *unit = "KiB";
    guint64 amount = m->vm.memory_kib;

    set_attr(vm, "hypervisor", manifest_hypervisor_name(m->vm.hypervisor));
    g_snprintf(buf, sizeof(buf), "%u", m->vm.vcpus);
    add_el(vm, "vcpus", buf);
    if (amount % (1024 * 1024) == 0) {
        amount /= 1024 * 1024;
        unit = "GiB";
    } else if (amount % 1024 == 0) {
        amount /= 1024;
        unit = "MiB";
    }
    g_snprintf(buf, sizeof(buf), "%" G_GUINT64_FORMAT, amount);
    memory = add_el(vm, "memory", buf);
    set_attr(memory, "unit", unit);
    if (m->vm.kernel) {
        xmlNode *boot = add_el(vm, "boot", NULL);
        set_attr(boot, "kernel", m->vm.kernel);
        if (m->vm.initrd)
            set_attr(boot, "initrd", m->vm.initrd);
        if (m->vm.cmdline)
            set_attr(boot, "cmdline", m->vm.cmdline);
    }
    for (guint i = 0; i < m->vm.interfaces->len; i++) {
        const ManifestInterface *iface = m->vm.interfaces->pdata[i];
        xmlNode *el = add_el(vm, "interface", NULL);
        if (iface->network)
            set_attr(el, "network", iface->network);
        else
            set_attr(el, "bridge", iface->bridge);
    }
}

static void
format_customize(xmlNode *root, const Manifest *m)
{
    xmlNode *customize = add_el(root, "customize", NULL);

    /* the default is left out: the canonical forms of manifests written
     * before the attribute existed (and their clones' UUIDs) stay */
    if (m->customize.method != MANIFEST_CUSTOMIZE_LIBGUESTFS)
        set_attr(customize, "method",
                 manifest_customize_method_name(m->customize.method));

    add_el(customize, "hostname", m->customize.hostname);
    for (guint i = 0; i < m->customize.files->len; i++) {
        const ManifestFile *f = m->customize.files->pdata[i];
        xmlNode *el = add_el(customize, "file", f->content);
        char mode[8];

        g_snprintf(mode, sizeof(mode), "%04o", f->mode);
        set_attr(el, "path", f->path);
        set_attr(el, "mode", mode);
    }
    for (guint i = 0; i < m->customize.ssh_keys->len; i++) {
        const ManifestSshKey *k = m->customize.ssh_keys->pdata[i];
        xmlNode *el = add_el(customize, "ssh-key", k->key);
        set_attr(el, "user", k->user);
    }
    for (guint i = 0; i < m->customize.firstboot->len; i++)
        add_el(customize, "firstboot", m->customize.firstboot->pdata[i]);
}

static const char *
schedule_action_name(ManifestScheduleAction a)
{
    switch (a) {
    case MANIFEST_SCHEDULE_SET:
        return "set";
    case MANIFEST_SCHEDULE_ADD:
        return "add";
    case MANIFEST_SCHEDULE_REMOVE:
        return "remove";
    }
    g_return_val_if_reached("set");
}

/* the at attribute: UTC with Z when written with an offset, else the wall
 * time as written */
static char *
schedule_at(const ManifestSchedule *s)
{
    g_autofree char *t =
        cron_wall_format(s->at_has_offset ? s->at : s->at_wall);

    return s->at_has_offset ? g_strconcat(t, "Z", NULL) : g_steal_pointer(&t);
}

static char *
schedule_amount(const ManifestSchedule *s)
{
    return g_strdup_printf("%u%s", s->amount, s->percent ? "%" : "");
}

char *
manifest_schedule_text(const ManifestSchedule *s)
{
    g_autofree char *at = s->cron ? NULL : schedule_at(s);
    g_autofree char *when = s->cron ? g_strdup_printf("cron '%s'", s->cron)
                                    : g_strconcat("at ", at, NULL);
    g_autofree char *amount = schedule_amount(s);
    g_autofree char *grace = format_duration(s->grace_seconds);

    return g_strdup_printf("%s%s%s: %s %s, grace %s", when,
                           s->timezone ? " " : "",
                           s->timezone ? s->timezone : "",
                           schedule_action_name(s->action), amount, grace);
}

static void
format_schedule(xmlNode *scaling, const ManifestSchedule *s)
{
    xmlNode *el = add_el(scaling, "schedule", NULL);
    g_autofree char *amount = schedule_amount(s);

    if (s->cron) {
        set_attr(el, "cron", s->cron);
    } else {
        g_autofree char *at = schedule_at(s);

        set_attr(el, "at", at);
    }
    if (s->timezone)
        set_attr(el, "timezone", s->timezone);
    set_attr(el, schedule_action_name(s->action), amount);
    set_attr_duration(el, "grace", s->grace_seconds);
}

static void
format_scaling(xmlNode *root, const Manifest *m)
{
    xmlNode *scaling = add_el(root, "scaling", NULL);

    set_attr_uint(scaling, "min", m->scaling.min);
    set_attr_uint(scaling, "max", m->scaling.max);
    set_attr_uint(scaling, "initial", m->scaling.initial);
    set_attr_duration(scaling, "cooldown", m->scaling.cooldown_seconds);
    set_attr_duration(scaling, "stabilization",
                      m->scaling.stabilization_seconds);
    for (guint i = 0; i < m->scaling.rules->len; i++) {
        const ManifestRule *r = m->scaling.rules->pdata[i];
        xmlNode *el = add_el(scaling, "rule", NULL);
        g_autofree char *threshold = format_threshold(r->threshold);

        set_attr(el, "metric", manifest_metric_name(r->metric));
        set_attr(el, r->above ? "above" : "below", threshold);
        set_attr_uint(el, r->add ? "add" : "remove", r->step);
        set_attr_duration(el, "for", r->for_seconds);
    }
    for (guint i = 0; i < m->scaling.schedules->len; i++)
        format_schedule(scaling, m->scaling.schedules->pdata[i]);
}

static void
format_placement(xmlNode *root, const Manifest *m)
{
    xmlNode *placement = add_el(root, "placement", NULL);

    set_attr(placement, "strategy",
             manifest_placement_strategy_name(m->placement.strategy));
    for (guint i = 0; i < m->placement.hosts->len; i++)
        add_el(placement, "host", m->placement.hosts->pdata[i]);
}

/* format_update: written only when it differs from the defaults, so that
 * the canonical form (and so the clones' UUIDs) of every manifest written
 * before <update> existed stays what it was */
static void
format_update(xmlNode *root, const Manifest *m)
{
    xmlNode *update;

    if (m->update.max_unavailable == MANIFEST_DEFAULT_MAX_UNAVAILABLE &&
        m->update.max_surge == MANIFEST_DEFAULT_MAX_SURGE)
        return;
    update = add_el(root, "update", NULL);
    set_attr_uint(update, "max-unavailable", m->update.max_unavailable);
    set_attr_uint(update, "max-surge", m->update.max_surge);
}

char *
manifest_format(const Manifest *m)
{
    g_autoptr(xmlDoc) doc = xmlNewDoc(BAD_CAST "1.0");
    /* @root is linked into @doc below, which then frees it */
    xmlNode *root = xmlNewDocNode(doc, NULL, BAD_CAST "service", NULL);
    xmlNs *ns = xmlNewNs(root, BAD_CAST MANIFEST_NAMESPACE, NULL);

    xml_adapter_silence();
    xmlSetNs(root, ns);
    xmlDocSetRootElement(doc, root);
    set_attr(root, "name", m->name);
    if (m->description)
        add_el(root, "description", m->description);
    format_image(root, m);
    format_vm(root, m);
    format_customize(root, m);
    format_scaling(root, m);
    format_placement(root, m);
    format_update(root, m);

    return xml_doc_to_string(doc);
}
