/*
 * test-manager-peers.c: the peer lists the site manager hands out
 * (daemon/manager/peer-lists.c): bounded, symmetric, connected, the hosts
 * of an image among each other's peers, the random part rotating.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "peer-lists.h"
#include "wire.h"

typedef struct {
    GPtrArray *names;
    GPtrArray *images; /* per host: GPtrArray of ids */
    PeerCandidate *c;
    guint n;
} Site;

/* site_new: @n hosts; host i holds image "img-(i % @groups)" when
 * @groups > 0 */
static Site *
site_new(guint n, guint groups)
{
    Site *s = g_new0(Site, 1);

    s->n = n;
    s->names = g_ptr_array_new_with_free_func(g_free);
    s->images =
        g_ptr_array_new_with_free_func((GDestroyNotify)g_ptr_array_unref);
    s->c = g_new0(PeerCandidate, n);
    for (guint i = 0; i < n; i++) {
        GPtrArray *ids = g_ptr_array_new_with_free_func(g_free);

        g_ptr_array_add(s->names, g_strdup_printf("hv%04u", i));
        if (groups)
            g_ptr_array_add(ids, g_strdup_printf("img-%u", i % groups));
        g_ptr_array_add(s->images, ids);
        s->c[i].name = s->names->pdata[i];
        s->c[i].images = ids;
    }
    return s;
}

static void
site_free(Site *s)
{
    g_ptr_array_unref(s->names);
    g_ptr_array_unref(s->images);
    g_free(s->c);
    g_free(s);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Site, site_free)

static bool
has(GPtrArray *lists, guint a, guint b)
{
    GArray *l = lists->pdata[a];

    for (guint i = 0; i < l->len; i++) {
        if (g_array_index(l, guint, i) == b)
            return true;
    }
    return false;
}

/* reached: how many hosts host 0 reaches through the lists */
static guint
reached(GPtrArray *lists, guint n)
{
    g_autofree bool *seen = g_new0(bool, n);
    g_autofree guint *stack = g_new(guint, n);
    guint top = 0, count = 1;

    seen[0] = true;
    stack[top++] = 0;
    while (top > 0) {
        GArray *l = lists->pdata[stack[--top]];

        for (guint i = 0; i < l->len; i++) {
            guint b = g_array_index(l, guint, i);

            if (!seen[b]) {
                seen[b] = true;
                count++;
                stack[top++] = b;
            }
        }
    }
    return count;
}

Test(peer_lists, a_small_site_gives_every_host_all_the_others)
{
    g_autoptr(Site) s = site_new(30, 0);
    g_autoptr(GPtrArray) lists = peer_lists_choose(s->c, s->n, 64, 1);

    for (guint a = 0; a < s->n; a++) {
        cr_assert_eq(((GArray *)lists->pdata[a])->len, s->n - 1);
        cr_assert(!has(lists, a, a));
    }
}

Test(peer_lists, a_large_site_gets_bounded_symmetric_connected_lists)
{
    g_autoptr(Site) s = site_new(1000, 7);

    for (guint64 epoch = 1; epoch <= 3; epoch++) {
        g_autoptr(GPtrArray) lists = peer_lists_choose(s->c, s->n, 64, epoch);

        for (guint a = 0; a < s->n; a++) {
            GArray *l = lists->pdata[a];

            cr_assert_leq(l->len, 64u, "host %u has %u peers", a, l->len);
            cr_assert_leq(l->len, (guint)WIRE_PEERS_MAX);
            cr_assert_geq(l->len, 2u, "host %u has %u peers", a, l->len);
            for (guint i = 0; i < l->len; i++) {
                guint b = g_array_index(l, guint, i);

                cr_assert_neq(b, a);
                cr_assert(has(lists, b, a), "%u lists %u, not back", a, b);
            }
        }
        cr_assert_eq(reached(lists, s->n), s->n);
    }
}

Test(peer_lists, hosts_of_an_image_are_each_others_peers)
{
    g_autoptr(Site) s = site_new(600, 50); /* 12 hosts per image */
    g_autoptr(GPtrArray) lists = peer_lists_choose(s->c, s->n, 64, 9);

    /* each of a group's 12 is within 12 places of the others on its
     * image's ring: all 11 others are peers */
    for (guint a = 0; a < s->n; a++) {
        for (guint b = a % 50; b < s->n; b += 50) {
            if (b != a)
                cr_assert(has(lists, a, b), "%u and %u share img-%u", a, b,
                          a % 50);
        }
    }
}

Test(peer_lists, the_random_part_rotates_with_the_epoch)
{
    g_autoptr(Site) s = site_new(500, 0);
    g_autoptr(GPtrArray) one = peer_lists_choose(s->c, s->n, 64, 1);
    g_autoptr(GPtrArray) again = peer_lists_choose(s->c, s->n, 64, 1);
    g_autoptr(GPtrArray) two = peer_lists_choose(s->c, s->n, 64, 2);
    guint differ = 0;

    for (guint a = 0; a < s->n; a++) {
        GArray *x = one->pdata[a], *y = again->pdata[a], *z = two->pdata[a];

        cr_assert_eq(x->len, y->len);
        cr_assert_eq(memcmp(x->data, y->data, x->len * sizeof(guint)), 0,
                     "the same epoch, the same lists");
        differ += x->len != z->len ||
                  memcmp(x->data, z->data, x->len * sizeof(guint)) != 0;
    }
    cr_assert_gt(differ, s->n / 2, "only %u lists changed", differ);
}
