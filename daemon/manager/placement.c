/*
 * placement.c: choosing a host for a clone (see placement.h).
 */
#include "placement.h"

#include <string.h>

static guint64
manifest_memory_kib(const Manifest *m)
{
    return m->vm.memory_kib;
}

static bool
allowed(const Manifest *m, const char *name)
{
    GPtrArray *allow = m->placement.hosts;

    if (!allow || allow->len == 0)
        return true;
    for (guint i = 0; i < allow->len; i++) {
        if (g_str_equal(allow->pdata[i], name))
            return true;
    }
    return false;
}

/* negative when @a is the better host for @m */
static int
compare(const PlacementHost *a, const PlacementHost *b, const Manifest *m)
{
    if (m->placement.strategy == MANIFEST_PLACEMENT_PACK) {
        if (a->used_memory_kib != b->used_memory_kib)
            return a->used_memory_kib > b->used_memory_kib ? -1 : 1;
    } else {
        if (a->service_clones != b->service_clones)
            return a->service_clones < b->service_clones ? -1 : 1;
    }
    if (a->cached_fraction != b->cached_fraction)
        return a->cached_fraction > b->cached_fraction ? -1 : 1;
    if (m->placement.strategy != MANIFEST_PLACEMENT_PACK &&
        a->total_clones != b->total_clones)
        return a->total_clones < b->total_clones ? -1 : 1;
    return strcmp(a->name, b->name);
}

int
placement_choose(const PlacementHost *hosts, gsize n_hosts, const Manifest *m,
                 char **reason)
{
    guint64 mem = manifest_memory_kib(m);
    int best = -1;
    guint up = 0, listed = 0;

    for (gsize i = 0; i < n_hosts; i++) {
        const PlacementHost *h = &hosts[i];

        if (!h->up)
            continue;
        up++;
        if (!allowed(m, h->name))
            continue;
        listed++;
        if (h->used_memory_kib + mem > h->memory_kib ||
            h->used_vcpus + m->vm.vcpus >
                (guint64)h->cpus * PLACEMENT_VCPU_OVERCOMMIT)
            continue;
        if (best < 0 || compare(h, &hosts[best], m) < 0)
            best = (int)i;
    }
    if (best < 0 && reason) {
        if (up == 0)
            *reason = g_strdup("no host is up");
        else if (listed == 0)
            *reason = g_strdup("no host that is up is in the manifest's "
                               "<placement> list");
        else
            *reason = g_strdup_printf(
                "no host has room for %u vCPUs and %" G_GUINT64_FORMAT
                " MiB more (memory is not overcommitted, vCPUs up to %ux)",
                m->vm.vcpus, mem / 1024, PLACEMENT_VCPU_OVERCOMMIT);
    }
    return best;
}
