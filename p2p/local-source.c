/*
 * local-source.c: the digest table of a host's caches, and the FetchSource
 * that copies shared chunks between them.
 *
 * The table maps a digest (32 bytes, the key points into an index, which
 * the caches keep alive) to a GArray of (cache, chunk) holders.  Holders
 * are added when a cache joins and never removed; whether a holder really
 * has the chunk is asked of its cache at fetch time.  One mutex guards the
 * table; copies run outside it.
 */
#include "local-source.h"

#include <string.h>

#include "spore-error.h"

typedef struct {
    ChunkCache *cache;
    guint64 chunk;
} Holder;

struct CacheSet {
    GMutex lock;
    GHashTable *by_digest; /* const guint8[32] -> GArray of Holder */
};

typedef struct {
    FetchSource base;
    CacheSet *set;
    ChunkCache *cache; /* the image this source fetches for */
} LocalSource;

static guint
digest_hash(gconstpointer key)
{
    guint h;

    memcpy(&h, key, sizeof(h)); /* a digest is already uniform */
    return h;
}

static gboolean
digest_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, SPORE_SHA256_BYTES) == 0;
}

CacheSet *
cache_set_new(void)
{
    CacheSet *set = g_new0(CacheSet, 1);

    g_mutex_init(&set->lock);
    set->by_digest = g_hash_table_new_full(digest_hash, digest_equal, NULL,
                                           (GDestroyNotify)g_array_unref);
    return set;
}

void
cache_set_free(CacheSet *set)
{
    if (!set)
        return;
    g_hash_table_unref(set->by_digest);
    g_mutex_clear(&set->lock);
    g_free(set);
}

void
cache_set_add(CacheSet *set, ChunkCache *cache)
{
    ImageIndex *idx = chunk_cache_index(cache);
    guint64 count = image_index_chunk_count(idx);

    g_mutex_lock(&set->lock);
    for (guint64 i = 0; i < count; i++) {
        const guint8 *d;
        GArray *holders;
        Holder h = {cache, i};

        if (image_index_chunk_is_zero(idx, i))
            continue;
        d = image_index_chunk_digest(idx, i);
        holders = g_hash_table_lookup(set->by_digest, d);
        if (!holders) {
            holders = g_array_new(FALSE, FALSE, sizeof(Holder));
            g_hash_table_insert(set->by_digest, (gpointer)d, holders);
        }
        g_array_append_val(holders, h);
    }
    g_mutex_unlock(&set->lock);
}

/* A holder of @i's digest other than our own cache that has it, if any. */
static bool
find_holder(LocalSource *src, const ImageIndex *idx, guint64 i, Holder *ret)
{
    GArray *holders;
    bool found = false;

    g_mutex_lock(&src->set->lock);
    holders = g_hash_table_lookup(src->set->by_digest,
                                  image_index_chunk_digest(idx, i));
    for (guint k = 0; holders && k < holders->len && !found; k++) {
        Holder *h = &g_array_index(holders, Holder, k);

        if (h->cache != src->cache && chunk_cache_has(h->cache, h->chunk)) {
            *ret = *h;
            found = true;
        }
    }
    g_mutex_unlock(&src->set->lock);
    return found;
}

static bool
local_has(FetchSource *base, const ImageIndex *idx, guint64 i)
{
    Holder h;

    return find_holder((LocalSource *)base, idx, i, &h);
}

static bool
local_fetch(FetchSource *base, const ImageIndex *idx, guint64 i, guint8 *buf,
            gsize len, gint64 deadline, GError **error)
{
    LocalSource *src = (LocalSource *)base;
    Holder h;

    if (!find_holder(src, idx, i, &h)) {
        g_set_error(
            error, SPORE_ERROR, SPORE_ERROR_FAILED,
            "local: no other cached image holds chunk %" G_GUINT64_FORMAT, i);
        return false;
    }
    if (image_index_chunk_len(chunk_cache_index(h.cache), h.chunk) != len) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "local: chunk %" G_GUINT64_FORMAT " differs in length", i);
        return false;
    }
    if (!chunk_cache_read(h.cache, h.chunk, buf, false, error)) {
        g_prefix_error(error, "local: ");
        return false;
    }
    return true;
}

static void
local_rejected(FetchSource *base, guint64 i)
{
    /* the engine reports it; a bad local copy is found by verify_all */
}

static void
local_free(FetchSource *base)
{
    g_free(base->name);
    g_free(base);
}

static const FetchSourceOps local_ops = {
    .fetch = local_fetch,
    .has = local_has,
    .rejected = local_rejected,
    .free = local_free,
};

FetchSource *
local_source_new(CacheSet *set, ChunkCache *cache)
{
    LocalSource *src = g_new0(LocalSource, 1);

    src->base.ops = &local_ops;
    src->base.kind = FETCH_SOURCE_LOCAL;
    src->base.name = g_strdup("local caches");
    src->set = set;
    src->cache = cache;
    return &src->base;
}
