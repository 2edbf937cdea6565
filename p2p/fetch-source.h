/*
 * fetch-source.h: one interface for every place a chunk can come from.
 *
 * The fetch engine asks its sources in order of cost: a local copy (the same
 * digest in another cached image), then peers, then the origin.  A source
 * only moves bytes; the engine verifies every chunk against the index before
 * anything else sees it, and tells the source when it served a bad one.
 *
 * Sources are called from the engine's worker threads, several at once, so
 * every operation must be thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "image-index.h"

typedef struct FetchSource FetchSource;

typedef struct {
    /*
     * fetch: read chunk @i of the image of @idx, exactly @len bytes, into
     * @buf.  Return false with @error set (naming the source and the chunk)
     * when the source cannot provide it.  Must give up by @deadline (a
     * g_get_monotonic_time() value).
     */
    bool (*fetch)(FetchSource *src, const ImageIndex *idx, guint64 i,
                  guint8 *buf, gsize len, gint64 deadline, GError **error);
    /* has: whether the source can be expected to hold chunk @i (cheap). */
    bool (*has)(FetchSource *src, const ImageIndex *idx, guint64 i);
    /* rejected: the chunk it last served for @i did not verify. */
    void (*rejected)(FetchSource *src, guint64 i);
    void (*free)(FetchSource *src);
} FetchSourceOps;

typedef enum {
    FETCH_SOURCE_LOCAL,
    FETCH_SOURCE_PEER,
    FETCH_SOURCE_ORIGIN,
} FetchSourceKind;

#define FETCH_SOURCE_KINDS 3

struct FetchSource {
    const FetchSourceOps *ops;
    FetchSourceKind kind;
    char *name; /* for messages: the URL, the peer's name, ... */
};

/* fetch_source_free: release @src through its ops.  Accepts NULL. */
void fetch_source_free(FetchSource *src);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(FetchSource, fetch_source_free)

/* fetch_source_kind_name: "local", "peer" or "origin". */
const char *fetch_source_kind_name(FetchSourceKind kind);
