/*
 * manifest.c: the Manifest value: construction, destruction, comparison and
 * the names and derived values that other modules ask of it.
 */
#include "manifest.h"
#include "manifest-priv.h"

#include <string.h>

#include "template.h"

static void
manifest_file_free(gpointer p)
{
    ManifestFile *f = p;

    g_free(f->path);
    g_free(f->content);
    g_free(f);
}

static void
manifest_ssh_key_free(gpointer p)
{
    ManifestSshKey *k = p;

    g_free(k->user);
    g_free(k->key);
    g_free(k);
}

static void
manifest_interface_free(gpointer p)
{
    ManifestInterface *i = p;

    g_free(i->network);
    g_free(i->bridge);
    g_free(i);
}

void
manifest_schedule_free(ManifestSchedule *s)
{
    if (!s)
        return;

    g_free(s->cron);
    g_free(s->timezone);
    if (s->tz)
        g_time_zone_unref(s->tz);
    g_free(s);
}

Manifest *
manifest_new(void)
{
    Manifest *m = g_new0(Manifest, 1);

    m->image.format = MANIFEST_IMAGE_FORMAT_RAW;
    m->image.origins = g_ptr_array_new_with_free_func(g_free);
    m->vm.hypervisor = MANIFEST_HYPERVISOR_KVM;
    m->vm.interfaces = g_ptr_array_new_with_free_func(manifest_interface_free);
    m->customize.hostname = g_strdup(MANIFEST_DEFAULT_HOSTNAME);
    m->customize.files = g_ptr_array_new_with_free_func(manifest_file_free);
    m->customize.ssh_keys =
        g_ptr_array_new_with_free_func(manifest_ssh_key_free);
    m->customize.firstboot = g_ptr_array_new_with_free_func(g_free);
    m->scaling.min = m->scaling.max = m->scaling.initial = 1;
    m->scaling.cooldown_seconds = MANIFEST_DEFAULT_COOLDOWN_SECONDS;
    m->scaling.stabilization_seconds = MANIFEST_DEFAULT_STABILIZATION_SECONDS;
    m->scaling.rules = g_ptr_array_new_with_free_func(g_free);
    m->scaling.schedules =
        g_ptr_array_new_with_free_func((GDestroyNotify)manifest_schedule_free);
    m->placement.strategy = MANIFEST_PLACEMENT_SPREAD;
    m->placement.hosts = g_ptr_array_new_with_free_func(g_free);
    m->update.max_unavailable = MANIFEST_DEFAULT_MAX_UNAVAILABLE;
    m->update.max_surge = MANIFEST_DEFAULT_MAX_SURGE;
    return m;
}

void
manifest_free(Manifest *m)
{
    if (!m)
        return;
    g_free(m->name);
    g_free(m->description);
    g_free(m->image.name);
    g_ptr_array_unref(m->image.origins);
    g_free(m->image.digest);
    g_free(m->vm.kernel);
    g_free(m->vm.initrd);
    g_free(m->vm.cmdline);
    g_ptr_array_unref(m->vm.interfaces);
    g_free(m->customize.hostname);
    g_ptr_array_unref(m->customize.files);
    g_ptr_array_unref(m->customize.ssh_keys);
    g_ptr_array_unref(m->customize.firstboot);
    g_ptr_array_unref(m->scaling.rules);
    g_ptr_array_unref(m->scaling.schedules);
    g_ptr_array_unref(m->placement.hosts);
    g_free(m);
}

static bool
str_eq(const char *a, const char *b)
{
    return g_strcmp0(a, b) == 0;
}

static bool
strv_eq(const GPtrArray *a, const GPtrArray *b)
{
    if (a->len != b->len)
        return false;
    for (guint i = 0; i < a->len; i++) {
        if (!str_eq(a->pdata[i], b->pdata[i]))
            return false;
    }
    return true;
}

/* schedules_equal: the same schedules in the same order */
static bool
schedules_equal(const GPtrArray *a, const GPtrArray *b)
{
    if (a->len != b->len)
        return false;
    for (guint i = 0; i < a->len; i++) {
        g_autofree char *x = manifest_schedule_text(a->pdata[i]);
        g_autofree char *y = manifest_schedule_text(b->pdata[i]);

        if (!str_eq(x, y))
            return false;
    }
    return true;
}

bool
manifest_equal(const Manifest *a, const Manifest *b)
{
    if (a == b)
        return true;
    if (!a || !b)
        return false;

    if (!str_eq(a->name, b->name) || !str_eq(a->description, b->description))
        return false;

    if (!str_eq(a->image.name, b->image.name) ||
        a->image.format != b->image.format ||
        !strv_eq(a->image.origins, b->image.origins) ||
        !str_eq(a->image.digest, b->image.digest))
        return false;

    if (a->vm.hypervisor != b->vm.hypervisor || a->vm.vcpus != b->vm.vcpus ||
        a->vm.memory_kib != b->vm.memory_kib ||
        !str_eq(a->vm.kernel, b->vm.kernel) ||
        !str_eq(a->vm.initrd, b->vm.initrd) ||
        !str_eq(a->vm.cmdline, b->vm.cmdline) ||
        a->vm.interfaces->len != b->vm.interfaces->len)
        return false;
    for (guint i = 0; i < a->vm.interfaces->len; i++) {
        const ManifestInterface *x = a->vm.interfaces->pdata[i];
        const ManifestInterface *y = b->vm.interfaces->pdata[i];
        if (!str_eq(x->network, y->network) || !str_eq(x->bridge, y->bridge))
            return false;
    }

    if (a->customize.method != b->customize.method ||
        !str_eq(a->customize.hostname, b->customize.hostname) ||
        a->customize.files->len != b->customize.files->len ||
        a->customize.ssh_keys->len != b->customize.ssh_keys->len ||
        !strv_eq(a->customize.firstboot, b->customize.firstboot))
        return false;
    for (guint i = 0; i < a->customize.files->len; i++) {
        const ManifestFile *x = a->customize.files->pdata[i];
        const ManifestFile *y = b->customize.files->pdata[i];
        if (!str_eq(x->path, y->path) || x->mode != y->mode ||
            !str_eq(x->content, y->content))
            return false;
    }
    for (guint i = 0; i < a->customize.ssh_keys->len; i++) {
        const ManifestSshKey *x = a->customize.ssh_keys->pdata[i];
        const ManifestSshKey *y = b->customize.ssh_keys->pdata[i];
        if (!str_eq(x->user, y->user) || !str_eq(x->key, y->key))
            return false;
    }

    if (a->scaling.min != b->scaling.min || a->scaling.max != b->scaling.max ||
        a->scaling.initial != b->scaling.initial ||
        a->scaling.cooldown_seconds != b->scaling.cooldown_seconds ||
        a->scaling.stabilization_seconds != b->scaling.stabilization_seconds ||
        a->scaling.rules->len != b->scaling.rules->len)
        return false;
    for (guint i = 0; i < a->scaling.rules->len; i++) {
        const ManifestRule *x = a->scaling.rules->pdata[i];
        const ManifestRule *y = b->scaling.rules->pdata[i];
        if (x->metric != y->metric || x->above != y->above ||
            x->threshold != y->threshold || x->add != y->add ||
            x->step != y->step || x->for_seconds != y->for_seconds)
            return false;
    }
    if (!schedules_equal(a->scaling.schedules, b->scaling.schedules))
        return false;

    if (a->update.max_unavailable != b->update.max_unavailable ||
        a->update.max_surge != b->update.max_surge)
        return false;

    return a->placement.strategy == b->placement.strategy &&
           strv_eq(a->placement.hosts, b->placement.hosts);
}

const char *
manifest_hypervisor_name(ManifestHypervisor h)
{
    switch (h) {
    case MANIFEST_HYPERVISOR_KVM:
        return "kvm";
    case MANIFEST_HYPERVISOR_QEMU:
        return "qemu";
    case MANIFEST_HYPERVISOR_XEN:
        return "xen";
    }
    g_return_val_if_reached("kvm");
}

const char *
manifest_image_format_name(ManifestImageFormat f)
{
    switch (f) {
    case MANIFEST_IMAGE_FORMAT_RAW:
        return "raw";
    case MANIFEST_IMAGE_FORMAT_QCOW2:
        return "qcow2";
    }
    g_return_val_if_reached("raw");
}

const char *
manifest_customize_method_name(ManifestCustomizeMethod m)
{
    switch (m) {
    case MANIFEST_CUSTOMIZE_LIBGUESTFS:
        return "libguestfs";
    case MANIFEST_CUSTOMIZE_CLOUD_INIT:
        return "cloud-init";
    }
    g_return_val_if_reached("libguestfs");
}

const char *
manifest_metric_name(ManifestMetric m)
{
    switch (m) {
    case MANIFEST_METRIC_REQUESTS:
        return "requests";
    case MANIFEST_METRIC_CPU:
        return "cpu";
    case MANIFEST_METRIC_MEMORY:
        return "memory";
    }
    g_return_val_if_reached("requests");
}

const char *
manifest_placement_strategy_name(ManifestPlacementStrategy s)
{
    switch (s) {
    case MANIFEST_PLACEMENT_SPREAD:
        return "spread";
    case MANIFEST_PLACEMENT_PACK:
        return "pack";
    }
    g_return_val_if_reached("spread");
}

char *
manifest_clone_hostname(const Manifest *m, guint index, GError **error)
{
    ManifestVars vars = {.service = m->name, .index = index};

    return manifest_template_expand(m->customize.hostname,
                                    MANIFEST_VAR_SERVICE | MANIFEST_VAR_INDEX,
                                    &vars, error);
}

char *
manifest_clone_name(const Manifest *m, guint index)
{
    return g_strdup_printf("%s-%u", m->name, index);
}
