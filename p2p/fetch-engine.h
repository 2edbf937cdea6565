/*
 * fetch-engine.h: gets missing chunks of one image into its chunk cache.
 *
 * Requests have a priority: demand (a guest is waiting: the shim) before
 * profile prefetch before background fill.  Concurrent requests for one
 * chunk are coalesced into one fetch.  Each fetch asks the sources in order
 * of cost (local copies, then peers, then the origin), verifies what it gets
 * against the index (a source that sends a wrong chunk is told and the next
 * source is asked), and stores it in the cache, which makes it visible to
 * the shim.  One worker is always kept free of low-priority work, so demand
 * never waits behind prefetching.
 *
 * Thread-safe: any thread may request chunks.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "chunk-cache.h"
#include "fetch-source.h"

typedef enum {
    FETCH_PRIORITY_DEMAND,
    FETCH_PRIORITY_PROFILE,
    FETCH_PRIORITY_BACKGROUND,
} FetchPriority;

#define FETCH_PRIORITIES 3

/* How long one fetch of one chunk may take across all sources. */
#define FETCH_ATTEMPT_MAX_SECONDS 60
/* Retry delays for a waiter whose fetch failed: doubling up to this. */
#define FETCH_RETRY_MIN_MS 100u
#define FETCH_RETRY_MAX_MS 2000u

/* The upper bounds (seconds) of the fetch latency histogram's buckets
 * (fetch_latency_bounds; a last bucket, +Inf, is the count). */
#define FETCH_LATENCY_BUCKETS 10
extern const double fetch_latency_bounds[FETCH_LATENCY_BUCKETS];

typedef struct {
    guint64 chunks[FETCH_SOURCE_KINDS]; /* chunks stored, by source kind */
    guint64 bytes[FETCH_SOURCE_KINDS];  /* their bytes */
    guint64 rejected; /* chunks that did not verify (never stored) */
    guint64 failed;   /* fetches for which every source failed */
    /* how long each stored chunk's fetch from its source took (the
     * source's fetch call, verification excluded), by source kind:
     * cumulative bucket counts (<= fetch_latency_bounds[b]) and the sum;
     * the count is chunks[] */
    guint64 latency_buckets[FETCH_SOURCE_KINDS][FETCH_LATENCY_BUCKETS];
    double latency_sum[FETCH_SOURCE_KINDS];
} FetchStats;

typedef struct FetchEngine FetchEngine;

/*
 * fetch_engine_new: an engine filling @cache (a reference is not taken: the
 * cache must outlive the engine) with @n_workers threads (at least 2).
 */
FetchEngine *fetch_engine_new(ChunkCache *cache, guint n_workers);

/* fetch_engine_free: stop the workers, drop queued work, free.  NULL-safe. */
void fetch_engine_free(FetchEngine *engine);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(FetchEngine, fetch_engine_free)

/*
 * fetch_engine_add_source: add @src (owned by the engine from now on).
 * Sources are asked by kind (local, peer, origin), then in the order added.
 */
void fetch_engine_add_source(FetchEngine *engine, FetchSource *src);

/*
 * fetch_engine_get: make chunk @i present, blocking until it is or until
 * @deadline (monotonic time).  A failed fetch is retried with backoff while
 * time remains.  Fails with the last fetch's error, or SPORE_ERROR_FAILED
 * "not fetched within ..." on timeout.
 */
bool fetch_engine_get(FetchEngine *engine, guint64 i, FetchPriority prio,
                      gint64 deadline, GError **error);

/* fetch_engine_want: queue chunk @i at @prio without waiting. */
void fetch_engine_want(FetchEngine *engine, guint64 i, FetchPriority prio);

/* fetch_engine_stats: a snapshot of the counters. */
void fetch_engine_stats(FetchEngine *engine, FetchStats *ret);

/* fetch_engine_queued: chunks waiting or being fetched, all priorities. */
guint fetch_engine_queued(FetchEngine *engine);
