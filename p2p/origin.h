/*
 * origin.h: fetching chunks from the image's origin URLs with libcurl.
 *
 * http(s):// origins are read with Range requests and must answer 206 with
 * exactly the bytes asked for; file:// origins are read with ranges too.
 * Several origins are tried in the manifest's order; each request is retried
 * with exponential backoff before the next origin is tried.  Each worker
 * thread keeps its own curl handle per origin, so connections are reused
 * (keep-alive) and no handle is shared between threads.
 */
#pragma once

#include "fetch-source.h"

/* Timeouts and retries; defaults from origin_options_default(). */
typedef struct {
    guint connect_timeout_ms; /* default 5000 */
    guint request_timeout_ms; /* one Range request, default 30000 */
    guint attempts;           /* per origin and chunk, default 3 */
    guint backoff_ms; /* first retry delay, doubled after, default 200 */
} OriginOptions;

/* origin_options_default: the defaults above. */
OriginOptions origin_options_default(void);

/*
 * origin_source_new: a FetchSource reading from @urls (NULL-terminated,
 * tried in order).  Fails when a URL's scheme is not http, https or file.
 * Thread-safe once created.
 */
FetchSource *origin_source_new(const char *const *urls,
                               const OriginOptions *options, GError **error);

/*
 * origin_source_read_range: read [@offset, @offset + @len) of the image
 * from the origins into @buf, with the retries above; used to build an
 * index from an origin.  Errors name the URL.
 */
bool origin_source_read_range(FetchSource *src, guint64 offset, guint8 *buf,
                              gsize len, gint64 deadline, GError **error);
