/*
 * peer-lists.c: bounded, symmetric peer lists (see peer-lists.h).
 *
 * Invariants:
 *   1. edge(a, b) is added to both lists or to neither (add_edge);
 *   2. no list grows past max (add_edge refuses an edge to a full host);
 *   3. the result depends only on the inputs and the epoch.
 * O(n * (PEER_LISTS_RANDOM_SIDE + PEER_LISTS_IMAGE_SIDE * images per
 * host)) hash operations.
 */
#include "peer-lists.h"

#include <string.h>

typedef struct {
    guint n, max;
    GHashTable *edges; /* a * n + b, a < b */
    guint *degree;
    GPtrArray *lists; /* of GArray of guint */
} Graph;

static void
add_edge(Graph *g, guint a, guint b)
{
    guint64 key, *k;

    if (a == b || g->degree[a] >= g->max || g->degree[b] >= g->max)
        return; /* invariant 2 */
    key = a < b ? (guint64)a * g->n + b : (guint64)b * g->n + a;
    if (g_hash_table_contains(g->edges, &key))
        return;
    k = g_new(guint64, 1);
    *k = key;
    g_hash_table_add(g->edges, k);
    g->degree[a]++;
    g->degree[b]++;
    g_array_append_val(g_ptr_array_index(g->lists, a), b); /* invariant 1 */
    g_array_append_val(g_ptr_array_index(g->lists, b), a);
}

/* ring: each of @order's @len hosts linked to the ones @from .. @to places
 * after it (so also before it), wrapping */
static void
ring(Graph *g, const guint *order, guint len, guint from, guint to)
{
    for (guint off = from; off <= to && off < len; off++) {
        for (guint i = 0; i < len; i++)
            add_edge(g, order[i], order[(i + off) % len]);
    }
}

static int
cmp_name(gconstpointer a, gconstpointer b, gpointer data)
{
    const PeerCandidate *hosts = data;

    return strcmp(hosts[*(const guint *)a].name, hosts[*(const guint *)b].name);
}

static int
cmp_uint(gconstpointer a, gconstpointer b)
{
    guint x = *(const guint *)a, y = *(const guint *)b;

    return x < y ? -1 : x > y;
}

/* image_rings: step 2, the images in name order */
static void
image_rings(Graph *g, const PeerCandidate *hosts)
{
    g_autoptr(GHashTable) holders = g_hash_table_new_full(
        g_str_hash, g_str_equal, NULL, (GDestroyNotify)g_array_unref);
    g_autoptr(GList) images = NULL;

    for (guint i = 0; i < g->n; i++) {
        for (guint k = 0; hosts[i].images && k < hosts[i].images->len; k++) {
            const char *id = hosts[i].images->pdata[k];
            GArray *a = g_hash_table_lookup(holders, id);

            if (!a) {
                a = g_array_new(FALSE, FALSE, sizeof(guint));
                g_hash_table_insert(holders, (gpointer)id, a);
            }
            if (a->len == 0 || g_array_index(a, guint, a->len - 1) != i)
                g_array_append_val(a, i);
        }
    }
    images = g_hash_table_get_keys(holders);
    images = g_list_sort(images, (GCompareFunc)strcmp);
    for (GList *l = images; l; l = l->next) {
        GArray *a = g_hash_table_lookup(holders, l->data);

        g_array_sort_with_data(a, cmp_name, (gpointer)hosts);
        ring(g, (guint *)(void *)a->data, a->len, 1, PEER_LISTS_IMAGE_SIDE);
    }
}

GPtrArray *
peer_lists_choose(const PeerCandidate *hosts, guint n, guint max, guint64 epoch)
{
    Graph g = {.n = n, .max = MAX(max, 2)};
    g_autofree guint *order = g_new(guint, MAX(n, 1));
    g_autoptr(GRand) rand =
        g_rand_new_with_seed((guint32)(epoch ^ (epoch >> 32)));

    g.edges = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
    g.degree = g_new0(guint, MAX(n, 1));
    g.lists = g_ptr_array_new_with_free_func((GDestroyNotify)g_array_unref);
    for (guint i = 0; i < n; i++)
        g_ptr_array_add(g.lists, g_array_new(FALSE, FALSE, sizeof(guint)));
    if (n > 0 && n - 1 <= g.max) {
        for (guint a = 0; a < n; a++) {
            for (guint b = a + 1; b < n; b++)
                add_edge(&g, a, b);
        }
    } else {
        for (guint i = 0; i < n; i++)
            order[i] = i;
        for (guint i = n; i > 1; i--) { /* Fisher-Yates */
            guint j = (guint)g_rand_int_range(rand, 0, (gint32)i);
            guint t = order[i - 1];

            order[i - 1] = order[j];
            order[j] = t;
        }
        ring(&g, order, n, 1, 1);
        image_rings(&g, hosts);
        ring(&g, order, n, 2, PEER_LISTS_RANDOM_SIDE);
    }
    for (guint i = 0; i < n; i++)
        g_array_sort(g_ptr_array_index(g.lists, i), cmp_uint);
    g_hash_table_unref(g.edges);
    g_free(g.degree);
    return g.lists;
}
