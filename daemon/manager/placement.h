/*
 * placement.h: where a new clone runs — a pure function of the hosts'
 * state, so that it is tested without a site.
 *
 * Candidates are the hosts that are up, named by the manifest's allow-list
 * (when it has one), and have room: memory is never overcommitted (the
 * clones' memory plus the new one fits in the host's), vCPUs up to
 * PLACEMENT_VCPU_OVERCOMMIT times the host's CPUs.  Among them:
 *
 *   spread  the fewest clones of this service, then the most of the image
 *           cached, then the fewest clones in all, then the name;
 *   pack    the most memory already used (fill a host before the next),
 *           then the most of the image cached, then the name.
 */
#pragma once

#include <glib.h>

#include "manifest.h"

#define PLACEMENT_VCPU_OVERCOMMIT 4

typedef struct {
    const char *name;
    gboolean up;
    guint cpus;
    guint64 memory_kib;
    guint used_vcpus; /* by the clones placed on it */
    guint64 used_memory_kib;
    guint service_clones; /* clones of the service being placed */
    guint total_clones;
    double cached_fraction; /* of the service's image, 0..1 */
} PlacementHost;

/*
 * placement_choose: the index in @hosts of the host for one more clone of
 * @m, or -1 with *@reason (owned by the caller) saying why none fits.
 */
int placement_choose(const PlacementHost *hosts, gsize n_hosts,
                     const Manifest *m, char **reason);

/*
 * PlacementQueue: the same choice for many clones of one service in a
 * row, O(log hosts) each instead of O(hosts): a heap of the candidates
 * in the order above.  placement_queue_new() borrows @hosts (their
 * service_clones counting this service's clones) for the queue's life;
 * placement_queue_take() returns what placement_choose() would for one
 * more clone and accounts the clone on the chosen host (its
 * service_clones, total_clones, used_vcpus, used_memory_kib), or -1 with
 * *@reason (owned by the caller).  The caller changes @hosts only
 * through it while the queue lives.
 */
typedef struct PlacementQueue PlacementQueue;

PlacementQueue *placement_queue_new(PlacementHost *hosts, gsize n_hosts,
                                    const Manifest *m);
int placement_queue_take(PlacementQueue *q, char **reason);
void placement_queue_free(PlacementQueue *q);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PlacementQueue, placement_queue_free)
