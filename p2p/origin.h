/*
 * origin.h: fetching chunks from the image's origin URLs with libcurl.
 *
 * http(s):// origins are read with Range requests and must answer 206 with
 * exactly the bytes asked for; file:// origins are read with ranges too.
 * Several origins are tried in the manifest's order; each request is retried
 * with exponential backoff before the next origin is tried.  Idle curl
 * handles are pooled per origin, so connections are reused (keep-alive)
 * and a handle is used by one thread at a time.
 *
 * A source only moves bytes: the fetch engine verifies them after the
 * source returns.  So the engine gets one source per URL
 * (origin_source_new_each), added in order: a chunk that one origin sends
 * corrupt is then rejected naming that origin alone, and asked of the next.
 * A source of several URLs falls through only on transport errors; it is
 * for reads that are not verified per chunk (building an index).
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
 * origin_source_new_each: one FetchSource per URL of @urls (NULL-terminated,
 * at least one), in order, as a GPtrArray that owns them (free function
 * fetch_source_free).  Fails, making none, when a URL's scheme is not http,
 * https or file.
 */
GPtrArray *origin_source_new_each(const char *const *urls,
                                  const OriginOptions *options, GError **error);

/*
 * origin_source_read_range: read [@offset, @offset + @len) of the image
 * from the origins into @buf, with the retries above; used to build an
 * index from an origin.  Errors name the URL.
 */
bool origin_source_read_range(FetchSource *src, guint64 offset, guint8 *buf,
                              gsize len, gint64 deadline, GError **error);

/* a stalled whole-image read (origin_read_all) ends: under this many bytes
 * a second for this long */
#define ORIGIN_LOW_SPEED_BYTES 1024L
#define ORIGIN_LOW_SPEED_S     60L

/* OriginDataFunc: the next @len bytes of the image; false (with @error set)
 * stops the read */
typedef bool (*OriginDataFunc)(const guint8 *bytes, gsize len, gpointer data,
                               GError **error);

/*
 * origin_read_all: read all of @url once (one GET, no Range), in order,
 * passing the bytes to @fn; the same schemes, redirects and connect
 * timeout as the chunk reads (@options, NULL: the defaults), no overall
 * timeout but ORIGIN_LOW_SPEED_*.  Used to index an image from its origin.
 * Errors name @url: SPORE_ERROR_INVALID (scheme), SPORE_ERROR_IO, or
 * @fn's.  Blocking; thread-safe.
 */
bool origin_read_all(const char *url, const OriginOptions *options,
                     OriginDataFunc fn, gpointer data, GError **error);
