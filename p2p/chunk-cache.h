/*
 * chunk-cache.h: a host's verified cache of one image's chunks.
 *
 * On disk, a directory per image (named by the image id's hex digits):
 *
 *   index    the image index (its id is the directory's name)
 *   data     a sparse file of the image's size; chunk i at i * chunk size
 *   present  a bitmap, one bit per chunk (chunk i: byte i/8, bit i%8),
 *            preallocated so that writing it never needs space
 *
 * Invariant: a bit is set in `present` only after the chunk's data has been
 * verified against the index and made durable (fdatasync), so after a crash
 * of the writer at any moment every chunk the cache claims verifies.  All-
 * zero chunks are never stored: the sparse file reads them as zeros, and
 * chunk_cache_has() counts them as present.
 *
 * The block-fetch shim reads `data` and `present` directly (read-only, in
 * another process); only the host agent writes.  A ChunkCache is
 * thread-safe: any thread may store and read.
 *
 *   chunk state:  MISSING --[chunk_cache_store: verify, pwrite]--> WRITTEN
 *                 WRITTEN --[group commit: fdatasync, set bit]--> PRESENT
 *                 WRITTEN --[fdatasync fails]--> MISSING (error returned)
 *                 PRESENT --[chunk_cache_verify_all finds it bad]--> MISSING
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "image-index.h"

#define CHUNK_CACHE_INDEX_FILE   "index"
#define CHUNK_CACHE_DATA_FILE    "data"
#define CHUNK_CACHE_PRESENT_FILE "present"

typedef struct ChunkCache ChunkCache;

/*
 * chunk_cache_open: open the cache of the image of @idx under @root
 * (root/<hex of the id>), creating it when missing.  An existing cache's
 * index must have the same id and its files the right sizes.  Takes a
 * reference to @idx.  The result is owned by the caller.
 */
ChunkCache *chunk_cache_open(const char *root, ImageIndex *idx, GError **error);

/* chunk_cache_close: flush the bitmap and free @cache.  Accepts NULL. */
void chunk_cache_close(ChunkCache *cache);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(ChunkCache, chunk_cache_close)

/* chunk_cache_index: the image index; owned by @cache. */
ImageIndex *chunk_cache_index(const ChunkCache *cache);

/* chunk_cache_dir: the cache's directory; owned by @cache. */
const char *chunk_cache_dir(const ChunkCache *cache);

/* chunk_cache_has: whether chunk @i can be read: stored or all-zero. */
bool chunk_cache_has(ChunkCache *cache, guint64 i);

/* chunk_cache_stored_count: how many chunks are stored (zero chunks not). */
guint64 chunk_cache_stored_count(ChunkCache *cache);

/*
 * chunk_cache_present_copy: a snapshot of the present bitmap, (chunk count
 * + 7) / 8 bytes, into @out: chunk i in byte i/8, bit i%8; all-zero chunks
 * are not set.  Every bit set was durable when copied.  Thread-safe.
 */
void chunk_cache_present_copy(ChunkCache *cache, guint8 *out);

/*
 * chunk_cache_store: verify @data (@len bytes) as chunk @i and store it
 * durably; returns once the chunk is PRESENT.  Concurrent stores share one
 * fdatasync (group commit).  Storing a present or all-zero chunk is a no-op.
 * Fails, leaving the chunk MISSING, with SPORE_ERROR_INVALID when the data
 * does not verify and SPORE_ERROR_IO (e.g. disk full) when it cannot be
 * written; the error names the image and chunk.
 */
bool chunk_cache_store(ChunkCache *cache, guint64 i, const void *data,
                       gsize len, GError **error);

/*
 * chunk_cache_read: copy chunk @i into @buf (chunk_len bytes): from the data
 * file when stored, zeros when it is a zero chunk.  Fails when the chunk is
 * missing.  When @verify, the bytes are checked against the index first.
 */
bool chunk_cache_read(ChunkCache *cache, guint64 i, void *buf, bool verify,
                      GError **error);

/*
 * chunk_cache_verify_all: read back every stored chunk and check it; a chunk
 * that fails is marked missing again.  *ret_bad (optional) gets how many
 * failed.  Fails only on I/O errors.
 */
bool chunk_cache_verify_all(ChunkCache *cache, guint64 *ret_bad,
                            GError **error);
