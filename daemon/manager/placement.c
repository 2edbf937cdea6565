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

/* ---- many clones of one service: a heap of the candidates ------------- */

struct PlacementQueue {
    PlacementHost *hosts; /* borrowed */
    const Manifest *m;
    guint *heap; /* indexes into hosts, best first */
    guint len;
    guint up, listed;
};

static bool
heap_less(PlacementQueue *q, guint a, guint b)
{
    return compare(&q->hosts[q->heap[a]], &q->hosts[q->heap[b]], q->m) < 0;
}

static void
heap_swap(PlacementQueue *q, guint a, guint b)
{
    guint t = q->heap[a];

    q->heap[a] = q->heap[b];
    q->heap[b] = t;
}

static void
sift_down(PlacementQueue *q, guint i)
{
    for (;;) {
        guint l = 2 * i + 1, r = l + 1, best = i;

        if (l < q->len && heap_less(q, l, best))
            best = l;
        if (r < q->len && heap_less(q, r, best))
            best = r;
        if (best == i)
            return;
        heap_swap(q, i, best);
        i = best;
    }
}

PlacementQueue *
placement_queue_new(PlacementHost *hosts, gsize n_hosts, const Manifest *m)
{
    PlacementQueue *q = g_new0(PlacementQueue, 1);

    q->hosts = hosts;
    q->m = m;
    q->heap = g_new(guint, MAX(n_hosts, 1));
    for (gsize i = 0; i < n_hosts; i++) {
        if (!hosts[i].up)
            continue;
        q->up++;
        if (!allowed(m, hosts[i].name))
            continue;
        q->listed++;
        q->heap[q->len++] = (guint)i;
    }
    for (guint i = q->len / 2; i-- > 0;)
        sift_down(q, i);
    return q;
}

void
placement_queue_free(PlacementQueue *q)
{
    if (!q)
        return;
    g_free(q->heap);
    g_free(q);
}

int
placement_queue_take(PlacementQueue *q, char **reason)
{
    guint64 mem = manifest_memory_kib(q->m);

    while (q->len > 0) {
        PlacementHost *h = &q->hosts[q->heap[0]];
        guint at = q->heap[0];

        if (h->used_memory_kib + mem > h->memory_kib ||
            h->used_vcpus + q->m->vm.vcpus >
                (guint64)h->cpus * PLACEMENT_VCPU_OVERCOMMIT) {
            /* full, and only fuller while this queue lives: gone */
            q->heap[0] = q->heap[--q->len];
            sift_down(q, 0);
            continue;
        }
        h->service_clones++;
        h->total_clones++;
        h->used_vcpus += q->m->vm.vcpus;
        h->used_memory_kib += mem;
        /* its key only got worse (spread) or better (pack: it stays on
         * top, being the best before and fuller now) */
        sift_down(q, 0);
        return (int)at;
    }
    if (reason) {
        if (q->up == 0)
            *reason = g_strdup("no host is up");
        else if (q->listed == 0)
            *reason = g_strdup("no host that is up is in the manifest's "
                               "<placement> list");
        else
            *reason = g_strdup_printf(
                "no host has room for %u vCPUs and %" G_GUINT64_FORMAT
                " MiB more (memory is not overcommitted, vCPUs up to %ux)",
                q->m->vm.vcpus, mem / 1024, PLACEMENT_VCPU_OVERCOMMIT);
    }
    return -1;
}
