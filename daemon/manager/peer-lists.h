/*
 * peer-lists.h: which peers each host is told of (the "peers" message,
 * docs/site-protocol.md) — a pure function of the hosts, so that it is
 * tested without a site.
 *
 * A host's peer list is also its peer server's allow-list, so the lists
 * are symmetric: A is in B's list exactly when B is in A's.  No list
 * holds more than @max entries (at most WIRE_PEERS_MAX, what an agent
 * accepts).  When every host fits in every list (n - 1 <= @max), each
 * host gets all the others.  Otherwise edges are added, each only when
 * neither end is full, in this order:
 *
 *   1. a ring through all hosts in a random order (the seed: @epoch):
 *      every host gets two peers and the site stays connected;
 *   2. per image, a ring through the hosts that hold it, by name, each
 *      linked to its PEER_LISTS_IMAGE_SIDE nearest on either side: the
 *      peers that have the chunks a host wants;
 *   3. more of the random ring (offsets 2 .. PEER_LISTS_RANDOM_SIDE).
 *
 * A new @epoch (one per broadcast) draws another random ring, so that
 * the random part rotates and the whole site is reached over time; the
 * image part stays.
 */
#pragma once

#include <glib.h>

#define PEER_LISTS_IMAGE_SIDE  12
#define PEER_LISTS_RANDOM_SIDE 8

typedef struct {
    const char *name;
    GPtrArray *images; /* of const char * image ids; may be NULL */
} PeerCandidate;

/*
 * peer_lists_choose: for each of @hosts (@n of them), a GArray of guint,
 * the indexes of its peers, ascending; the array of arrays is owned by
 * the caller (free with g_ptr_array_unref).  @max >= 2.
 */
GPtrArray *peer_lists_choose(const PeerCandidate *hosts, guint n, guint max,
                             guint64 epoch);
