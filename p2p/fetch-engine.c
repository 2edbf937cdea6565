/*
 * fetch-engine.c: prioritized, coalescing chunk fetching with verification.
 *
 * State of one request (a chunk being wanted):
 *
 *   (absent) --[fetch_engine_get/want]--> QUEUED --[worker pops]--> ACTIVE
 *   ACTIVE --[fetch_one: verified and stored]--> DONE (ok)
 *   ACTIVE --[fetch_one: every source failed]--> DONE (error)
 *   QUEUED --[a more urgent request for the same chunk]--> QUEUED (moved)
 *
 * A DONE request leaves the table at once, so the next request for a chunk
 * that failed starts a new fetch.  Requests are reference-counted: one for
 * the table, one per waiter.
 *
 * Locking: one mutex guards the table, the queues, the counters and the
 * stop flag; `work` wakes workers, `done` wakes waiters.  Sources and the
 * cache are called without the lock.
 *
 * Invariants:
 *   1. a chunk has at most one request in the table;
 *   2. a QUEUED request is in exactly the queue of its priority;
 *   3. at most n_workers - 1 workers run non-demand requests;
 *   4. `sources` is ordered by kind (local, peer, origin) and, within a
 *      kind, by the order the sources were added: fetch_engine_add_source
 *      inserts each one after the last of its kind or cheaper, so no sort
 *      (g_ptr_array_sort does not promise a stable one) is ever needed.
 */
#include "fetch-engine.h"

#include <string.h>

#include "spore-error.h"

const double fetch_latency_bounds[FETCH_LATENCY_BUCKETS] = {
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30};

typedef enum {
    REQUEST_QUEUED,
    REQUEST_ACTIVE,
    REQUEST_DONE,
} RequestState;

typedef struct {
    guint64 chunk;
    FetchPriority prio;
    RequestState state;
    bool ok;
    GError *error;
    guint refs;
} Request;

struct FetchEngine {
    ChunkCache *cache;
    ImageIndex *idx;
    GPtrArray *sources; /* of FetchSource *, in asking order (invariant 4) */
    GPtrArray *workers; /* of GThread * */
    guint n_workers;

    GMutex lock;
    GCond work;
    GCond done;
    bool stop;
    GHashTable *table; /* chunk (guint64 *) -> Request * */
    GQueue queues[FETCH_PRIORITIES];
    guint active_low; /* workers on non-demand requests */
    FetchStats stats;
};

static void
request_unref(Request *r)
{
    if (--r->refs == 0) {
        g_clear_error(&r->error);
        g_free(r);
    }
}

/* Locked.  Returns the request for @i, creating and queueing it. */
static Request *
request_for(FetchEngine *e, guint64 i, FetchPriority prio)
{
    Request *r = g_hash_table_lookup(e->table, &i);

    if (!r) {
        r = g_new0(Request, 1);
        r->chunk = i;
        r->prio = prio;
        r->state = REQUEST_QUEUED;
        r->refs = 1;
        g_hash_table_insert(e->table, &r->chunk, r);
        g_queue_push_tail(&e->queues[prio], r);
        g_cond_signal(&e->work);
    } else if (r->state == REQUEST_QUEUED && prio < r->prio) {
        g_queue_remove(&e->queues[r->prio], r);
        r->prio = prio;
        g_queue_push_tail(&e->queues[prio], r);
        g_cond_signal(&e->work);
    }
    return r;
}

/*
 * Fetch chunk @i from the first source, in asking order, that has it right:
 * a source whose bytes do not verify is told, named in the error, and the
 * next one is asked.  Unlocked.
 */
static bool
fetch_one(FetchEngine *e, guint64 i, guint8 *buf, GError **error)
{
    gsize len = image_index_chunk_len(e->idx, i);
    gint64 deadline =
        g_get_monotonic_time() + FETCH_ATTEMPT_MAX_SECONDS * G_USEC_PER_SEC;
    g_autoptr(GString) errors = g_string_new(NULL);
    g_autoptr(GPtrArray) sources = NULL;

    g_mutex_lock(&e->lock);
    sources = g_ptr_array_copy(e->sources, NULL, NULL);
    g_mutex_unlock(&e->lock);
    /* a borrowed view, in order: the engine owns the sources until freed */
    g_ptr_array_set_free_func(sources, NULL);

    for (guint k = 0; k < sources->len; k++) {
        FetchSource *src = sources->pdata[k];
        g_autoptr(GError) err = NULL;

        if (!src->ops->has(src, e->idx, i))
            continue;
        gint64 started = g_get_monotonic_time();
        double took;

        if (!src->ops->fetch(src, e->idx, i, buf, len, deadline, &err)) {
            g_string_append_printf(errors, "%s%s", errors->len ? "; " : "",
                                   err->message);
            continue;
        }
        took = (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC;
        if (!image_index_verify_chunk(e->idx, i, buf, len)) {
            src->ops->rejected(src, i);
            g_mutex_lock(&e->lock);
            e->stats.rejected++;
            g_mutex_unlock(&e->lock);
            g_string_append_printf(errors,
                                   "%s%s '%s' sent chunk %" G_GUINT64_FORMAT
                                   " with a wrong digest; rejected",
                                   errors->len ? "; " : "",
                                   fetch_source_kind_name(src->kind), src->name,
                                   i);
            continue;
        }
        if (!chunk_cache_store(e->cache, i, buf, len, error))
            return false;
        g_mutex_lock(&e->lock);
        e->stats.chunks[src->kind]++;
        e->stats.bytes[src->kind] += len;
        e->stats.latency_sum[src->kind] += took;
        for (guint b = 0; b < FETCH_LATENCY_BUCKETS; b++) {
            if (took <= fetch_latency_bounds[b])
                e->stats.latency_buckets[src->kind][b]++;
        }
        g_mutex_unlock(&e->lock);
        return true;
    }
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                "chunk %" G_GUINT64_FORMAT ": %s", i,
                errors->len ? errors->str : "no source holds it");
    return false;
}

/* Locked.  The next request a worker may take, or NULL. */
static Request *
next_request(FetchEngine *e)
{
    if (!g_queue_is_empty(&e->queues[FETCH_PRIORITY_DEMAND]))
        return g_queue_pop_head(&e->queues[FETCH_PRIORITY_DEMAND]);
    if (e->active_low + 1 >= e->n_workers)
        return NULL; /* invariant 3: keep one worker for demand */
    for (int p = FETCH_PRIORITY_DEMAND + 1; p < FETCH_PRIORITIES; p++) {
        if (!g_queue_is_empty(&e->queues[p]))
            return g_queue_pop_head(&e->queues[p]);
    }
    return NULL;
}

static gpointer
worker_main(gpointer data)
{
    FetchEngine *e = data;
    g_autofree guint8 *buf = g_malloc((gsize)image_index_chunk_size(e->idx));

    g_mutex_lock(&e->lock);
    while (!e->stop) {
        Request *r = next_request(e);
        GError *err = NULL;
        bool low, ok;

        if (!r) {
            g_cond_wait(&e->work, &e->lock);
            continue;
        }
        r->state = REQUEST_ACTIVE;
        low = r->prio != FETCH_PRIORITY_DEMAND;
        e->active_low += low;
        g_mutex_unlock(&e->lock);

        ok = chunk_cache_has(e->cache, r->chunk) ||
             fetch_one(e, r->chunk, buf, &err);

        g_mutex_lock(&e->lock);
        e->active_low -= low;
        r->state = REQUEST_DONE;
        r->ok = ok;
        r->error = err;
        if (!ok)
            e->stats.failed++;
        g_hash_table_remove(e->table, &r->chunk);
        request_unref(r);
        g_cond_broadcast(&e->done);
        g_cond_signal(&e->work); /* a low-priority slot may be free */
    }
    g_mutex_unlock(&e->lock);
    return NULL;
}

FetchEngine *
fetch_engine_new(ChunkCache *cache, guint n_workers)
{
    FetchEngine *e = g_new0(FetchEngine, 1);

    e->cache = cache;
    e->idx = chunk_cache_index(cache);
    e->n_workers = MAX(n_workers, 2u);
    e->sources =
        g_ptr_array_new_with_free_func((GDestroyNotify)fetch_source_free);
    e->workers = g_ptr_array_new();
    e->table = g_hash_table_new(g_int64_hash, g_int64_equal);
    g_mutex_init(&e->lock);
    g_cond_init(&e->work);
    g_cond_init(&e->done);
    for (int p = 0; p < FETCH_PRIORITIES; p++)
        g_queue_init(&e->queues[p]);
    for (guint t = 0; t < e->n_workers; t++)
        g_ptr_array_add(e->workers,
                        g_thread_new("spore-fetch", worker_main, e));
    return e;
}

void
fetch_engine_free(FetchEngine *e)
{
    if (!e)
        return;
    g_mutex_lock(&e->lock);
    e->stop = true;
    g_cond_broadcast(&e->work);
    g_mutex_unlock(&e->lock);
    for (guint t = 0; t < e->workers->len; t++)
        g_thread_join(e->workers->pdata[t]);
    g_ptr_array_unref(e->workers);

    /* no worker is left: fail what is still queued, for any waiter */
    g_mutex_lock(&e->lock);
    for (int p = 0; p < FETCH_PRIORITIES; p++) {
        Request *r;
        while ((r = g_queue_pop_head(&e->queues[p]))) {
            r->state = REQUEST_DONE;
            r->ok = false;
            r->error = g_error_new(SPORE_ERROR, SPORE_ERROR_FAILED,
                                   "the fetch engine stopped");
            g_hash_table_remove(e->table, &r->chunk);
            request_unref(r);
        }
    }
    g_cond_broadcast(&e->done);
    g_mutex_unlock(&e->lock);

    g_hash_table_unref(e->table);
    g_ptr_array_unref(e->sources);
    g_mutex_clear(&e->lock);
    g_cond_clear(&e->work);
    g_cond_clear(&e->done);
    g_free(e);
}

void
fetch_engine_add_source(FetchEngine *e, FetchSource *src)
{
    guint at;

    g_mutex_lock(&e->lock);
    /* invariant 4: after every source of the same kind or a cheaper one */
    for (at = e->sources->len; at > 0; at--) {
        const FetchSource *before = e->sources->pdata[at - 1];

        if (before->kind <= src->kind)
            break;
    }
    g_ptr_array_insert(e->sources, (gint)at, src);
    g_mutex_unlock(&e->lock);
}

bool
fetch_engine_get(FetchEngine *e, guint64 i, FetchPriority prio, gint64 deadline,
                 GError **error)
{
    guint backoff_ms = FETCH_RETRY_MIN_MS;
    g_autoptr(GError) last = NULL;

    if (i >= image_index_chunk_count(e->idx)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "chunk %" G_GUINT64_FORMAT " is past the end of the image",
                    i);
        return false;
    }
    for (;;) {
        Request *r;
        bool ok;

        if (chunk_cache_has(e->cache, i))
            return true;

        g_mutex_lock(&e->lock);
        if (e->stop) {
            g_mutex_unlock(&e->lock);
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                        "the fetch engine stopped");
            return false;
        }
        r = request_for(e, i, prio);
        r->refs++;
        while (r->state != REQUEST_DONE) {
            if (!g_cond_wait_until(&e->done, &e->lock, deadline) &&
                r->state != REQUEST_DONE) {
                request_unref(r);
                g_mutex_unlock(&e->lock);
                g_set_error(
                    error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "chunk %" G_GUINT64_FORMAT " not fetched in time%s%s", i,
                    last ? "; last error: " : "", last ? last->message : "");
                return false;
            }
        }
        ok = r->ok;
        if (!ok) {
            g_clear_error(&last);
            last = r->error ? g_error_copy(r->error) : NULL;
        }
        request_unref(r);
        g_mutex_unlock(&e->lock);

        if (ok)
            return true;
        if (g_get_monotonic_time() + (gint64)backoff_ms * 1000 >= deadline) {
            if (last)
                g_propagate_error(error, g_steal_pointer(&last));
            else
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                            "chunk %" G_GUINT64_FORMAT " could not be fetched",
                            i);
            return false;
        }
        g_usleep((gulong)backoff_ms * 1000);
        backoff_ms = MIN(backoff_ms * 2, FETCH_RETRY_MAX_MS);
    }
}

void
fetch_engine_want(FetchEngine *e, guint64 i, FetchPriority prio)
{
    if (i >= image_index_chunk_count(e->idx) || chunk_cache_has(e->cache, i))
        return;
    g_mutex_lock(&e->lock);
    if (!e->stop)
        request_for(e, i, prio);
    g_mutex_unlock(&e->lock);
}

void
fetch_engine_stats(FetchEngine *e, FetchStats *ret)
{
    g_mutex_lock(&e->lock);
    *ret = e->stats;
    g_mutex_unlock(&e->lock);
}

guint
fetch_engine_queued(FetchEngine *e)
{
    guint n;

    g_mutex_lock(&e->lock);
    n = g_hash_table_size(e->table);
    g_mutex_unlock(&e->lock);
    return n;
}
