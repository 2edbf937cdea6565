/*
 * local-source.h: chunks copied from other images cached on this host.
 *
 * Redundancy detection by digest: two images (two versions of one OS, or
 * one image indexed at two chunk sizes) often share chunks.  A CacheSet
 * holds every chunk cache of the host and a table from chunk digest to the
 * caches and chunks that have it; a LocalSource for one image asks that
 * table first, so a shared chunk is copied from disk instead of fetched.
 * The engine verifies what it copies like anything else.
 *
 * Thread-safe.
 */
#pragma once

#include "chunk-cache.h"
#include "fetch-source.h"

typedef struct CacheSet CacheSet;

/* cache_set_new: an empty set. */
CacheSet *cache_set_new(void);

/* cache_set_free: free the set (not the caches).  Accepts NULL. */
void cache_set_free(CacheSet *set);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(CacheSet, cache_set_free)

/*
 * cache_set_add: register @cache (borrowed: it must stay open until the set
 * is freed) and its non-zero chunks' digests.
 */
void cache_set_add(CacheSet *set, ChunkCache *cache);

/*
 * local_source_new: a FetchSource for the image of @cache that copies
 * chunks from the other caches of @set.  The set must outlive it.
 */
FetchSource *local_source_new(CacheSet *set, ChunkCache *cache);
