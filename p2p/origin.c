/*
 * origin.c: the origin as a FetchSource, over libcurl.
 *
 * This file is spore's adapter for libcurl's error model: CURLcode and HTTP
 * statuses become GError messages naming the URL and the range.
 *
 * Handles: each origin URL has a pool of idle curl easy handles.  A worker
 * takes one for a request and gives it back, so a handle is used by one
 * thread at a time and its connection is kept alive for the next request.
 *
 * Require 206: an http(s) answer other than 206 Partial Content is refused
 * at its first body byte (the write callback checks the status), so a server
 * that ignores Range and answers 200 with the whole image costs one buffer,
 * not the image, and never fills the chunk even when its length happens to
 * match.  Bounds: a response may not carry more bytes than were asked for
 * (the write callback refuses the excess).
 */
#include "origin.h"

#include <string.h>
#include <curl/curl.h>

#include "spore-error.h"

#define ORIGIN_MAX_REDIRECTS 3L

/* g_autoptr(CURL): an easy handle this scope owns.  origin.c is the only
 * user of libcurl (the one adapter), so the cleanup is defined here. */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CURL, curl_easy_cleanup)

typedef struct {
    char *url;
    bool is_http;
    GMutex lock;
    GPtrArray *idle; /* of CURL *, owned (curl_easy_cleanup) */
} Origin;

typedef struct {
    FetchSource base;
    OriginOptions options;
    GPtrArray *origins; /* of Origin * */
} OriginSource;

OriginOptions
origin_options_default(void)
{
    return (OriginOptions){
        .connect_timeout_ms = 5000,
        .request_timeout_ms = 30000,
        .attempts = 3,
        .backoff_ms = 200,
    };
}

/* origin_scheme: @url is http(s):// (*ret_is_http) or file://, the schemes
 * spore reads */
static bool
origin_scheme(const char *url, bool *ret_is_http)
{
    *ret_is_http =
        g_str_has_prefix(url, "http://") || g_str_has_prefix(url, "https://");
    return *ret_is_http || g_str_has_prefix(url, "file://");
}

static void
curl_global_once(void)
{
    static gsize once = 0;

    if (g_once_init_enter(&once)) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        g_once_init_leave(&once, 1);
    }
}

static void
origin_free(gpointer p)
{
    Origin *o = p;

    g_ptr_array_unref(o->idle);
    g_mutex_clear(&o->lock);
    g_free(o->url);
    g_free(o);
}

/* origin_idle_pop: an idle handle of @o, now the caller's, or NULL; under
 * Origin.lock, which guards the pool only */
static CURL *
origin_idle_pop(Origin *o)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&o->lock);

    if (o->idle->len == 0)
        return NULL;
    return g_ptr_array_steal_index_fast(o->idle, o->idle->len - 1);
}

/* origin_take_handle: a handle for one request, the caller's until
 * origin_give_handle; a new one (made outside the lock) when none idles */
static CURL *
origin_take_handle(Origin *o)
{
    CURL *h = origin_idle_pop(o);

    return h ? h : curl_easy_init();
}

static void
origin_give_handle(Origin *o, CURL *h)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&o->lock);

    g_ptr_array_add(o->idle, h);
}

/* origin_handle_setup: what every request to an origin has: @url, its
 * schemes (http, https, file; redirects to http(s) only), the connect
 * timeout, no signals, keep-alive, the error buffer @curl_error */
static void
origin_handle_setup(CURL *h, const char *url, const OriginOptions *options,
                    char *curl_error)
{
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_error);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)options->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, ORIGIN_MAX_REDIRECTS);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "spore/0.1");
}

typedef struct {
    CURL *h;
    bool is_http;
    guint8 *buf;
    gsize want;
    gsize got;
    bool overflow;
    bool not_partial; /* http, and the status is not 206 */
} Sink;

static size_t
sink_write(char *data, size_t size, size_t nmemb, void *user)
{
    Sink *s = user;
    gsize n = size * nmemb;

    if (s->is_http && s->got == 0) {
        long status = 0;

        curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &status);
        if (status != 206) {
            s->not_partial = true;
            return 0; /* aborts the transfer */
        }
    }
    if (n > s->want - s->got) {
        s->overflow = true;
        return 0; /* aborts the transfer */
    }
    memcpy(s->buf + s->got, data, n);
    s->got += n;
    return n;
}

typedef enum {
    ATTEMPT_OK,
    ATTEMPT_RETRY, /* transient: try this origin again */
    ATTEMPT_NEXT,  /* permanent for this origin: try the next one */
} AttemptResult;

/* One Range request.  On failure sets @error.  The handle goes back to
 * @o's pool after the request, whatever its outcome. */
static AttemptResult
origin_attempt(OriginSource *src, Origin *o, guint64 offset, guint8 *buf,
               gsize len, gint64 deadline, GError **error)
{
    g_autoptr(CURL) h = origin_take_handle(o);
    char range[64];
    char curl_error[CURL_ERROR_SIZE] = "";
    Sink sink = {.h = h, .is_http = o->is_http, .buf = buf, .want = len};
    gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
    long timeout_ms =
        (long)MIN((gint64)src->options.request_timeout_ms, MAX(left_ms, 1));
    long status = 0;
    CURLcode rc;
    AttemptResult result = ATTEMPT_OK;

    if (!h) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot create a curl handle");
        return ATTEMPT_NEXT;
    }
    g_snprintf(range, sizeof(range), "%" G_GUINT64_FORMAT "-%" G_GUINT64_FORMAT,
               offset, offset + len - 1);
    origin_handle_setup(h, o->url, &src->options, curl_error);
    curl_easy_setopt(h, CURLOPT_RANGE, range);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);

    rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);

    if (o->is_http && status != 206 && (sink.not_partial || rc == CURLE_OK)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "origin '%s': bytes %s: HTTP %ld, expected 206 Partial "
                    "Content%s",
                    o->url, range, status,
                    status == 200 ? " (the server ignores Range requests)"
                                  : "");
        result = status >= 500 || status == 408 || status == 429 ? ATTEMPT_RETRY
                                                                 : ATTEMPT_NEXT;
    } else if (sink.overflow) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "origin '%s': bytes %s: answered more than the "
                    "%" G_GSIZE_FORMAT " bytes asked for",
                    o->url, range, len);
        result = ATTEMPT_NEXT;
    } else if (rc != CURLE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "origin '%s': bytes %s: %s", o->url, range,
                    curl_error[0] ? curl_error : curl_easy_strerror(rc));
        result = rc == CURLE_UNSUPPORTED_PROTOCOL ||
                         rc == CURLE_URL_MALFORMAT ||
                         rc == CURLE_FILE_COULDNT_READ_FILE ||
                         rc == CURLE_REMOTE_FILE_NOT_FOUND
                     ? ATTEMPT_NEXT
                     : ATTEMPT_RETRY;
    } else if (sink.got != len) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "origin '%s': bytes %s: got %" G_GSIZE_FORMAT
                    " bytes of %" G_GSIZE_FORMAT
                    " (image shorter than its index?)",
                    o->url, range, sink.got, len);
        result = ATTEMPT_NEXT;
    }
    origin_give_handle(o, g_steal_pointer(&h));
    return result;
}

bool
origin_source_read_range(FetchSource *base, guint64 offset, guint8 *buf,
                         gsize len, gint64 deadline, GError **error)
{
    OriginSource *src = (OriginSource *)base;
    g_autoptr(GString) errors = g_string_new(NULL);

    for (guint k = 0; k < src->origins->len; k++) {
        Origin *o = src->origins->pdata[k];
        guint backoff_ms = src->options.backoff_ms;

        for (guint attempt = 1; attempt <= src->options.attempts; attempt++) {
            g_autoptr(GError) err = NULL;
            AttemptResult r =
                origin_attempt(src, o, offset, buf, len, deadline, &err);

            if (r == ATTEMPT_OK)
                return true;
            if (r == ATTEMPT_NEXT || attempt == src->options.attempts ||
                g_get_monotonic_time() + (gint64)backoff_ms * 1000 > deadline) {
                g_string_append_printf(errors, "%s%s", errors->len ? "; " : "",
                                       err->message);
                break;
            }
            g_usleep((gulong)backoff_ms * 1000);
            backoff_ms *= 2;
        }
        if (g_get_monotonic_time() >= deadline)
            break;
    }
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "%s",
                errors->len ? errors->str
                            : "no origin left before the deadline");
    return false;
}

static bool
origin_fetch(FetchSource *base, const ImageIndex *idx, guint64 i, guint8 *buf,
             gsize len, gint64 deadline, GError **error)
{
    if (!origin_source_read_range(base, i << image_index_chunk_shift(idx), buf,
                                  len, deadline, error)) {
        g_prefix_error(error, "chunk %" G_GUINT64_FORMAT ": ", i);
        return false;
    }
    return true;
}

static bool
origin_has(FetchSource *base, const ImageIndex *idx, guint64 i)
{
    return true; /* the origin holds the whole image */
}

static void
origin_rejected(FetchSource *base, guint64 i)
{
    /* nothing to learn: the engine reports it and tries the next origin */
}

static void
origin_source_free(FetchSource *base)
{
    OriginSource *src = (OriginSource *)base;

    g_ptr_array_unref(src->origins);
    g_free(src->base.name);
    g_free(src);
}

static const FetchSourceOps origin_ops = {
    .fetch = origin_fetch,
    .has = origin_has,
    .rejected = origin_rejected,
    .free = origin_source_free,
};

FetchSource *
origin_source_new(const char *const *urls, const OriginOptions *options,
                  GError **error)
{
    OriginSource *src;

    curl_global_once();
    if (!urls || !urls[0]) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "an image needs at least one origin URL");
        return NULL;
    }
    src = g_new0(OriginSource, 1);
    src->base.ops = &origin_ops;
    src->base.kind = FETCH_SOURCE_ORIGIN;
    src->base.name = g_strjoinv(" ", (char **)urls);
    src->options = options ? *options : origin_options_default();
    src->origins = g_ptr_array_new_with_free_func(origin_free);
    for (gsize k = 0; urls[k]; k++) {
        Origin *o = g_new0(Origin, 1);

        o->url = g_strdup(urls[k]);
        g_mutex_init(&o->lock);
        o->idle = g_ptr_array_new_with_free_func(curl_easy_cleanup);
        g_ptr_array_add(src->origins, o);
        if (!origin_scheme(urls[k], &o->is_http)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "origin '%s' is not an http, https or file URL",
                        urls[k]);
            origin_source_free(&src->base);
            return NULL;
        }
    }
    return &src->base;
}

GPtrArray *
origin_source_new_each(const char *const *urls, const OriginOptions *options,
                       GError **error)
{
    g_autoptr(GPtrArray) sources =
        g_ptr_array_new_with_free_func((GDestroyNotify)fetch_source_free);

    if (!urls || !urls[0]) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "an image needs at least one origin URL");
        return NULL;
    }
    for (gsize k = 0; urls[k]; k++) {
        const char *one[] = {urls[k], NULL};
        FetchSource *src = origin_source_new(one, options, error);

        if (!src)
            return NULL;
        g_ptr_array_add(sources, src);
    }
    return g_steal_pointer(&sources);
}

/* ---- a whole image, once ------------------------------------------------ */

typedef struct {
    OriginDataFunc fn;
    gpointer data;
    GError *error; /* set by fn */
} Stream;

static size_t
stream_write(char *data, size_t size, size_t nmemb, void *user)
{
    Stream *st = user;
    gsize n = size * nmemb;

    if (!st->fn((const guint8 *)data, n, st->data, &st->error))
        return 0; /* aborts the transfer */
    return n;
}

bool
origin_read_all(const char *url, const OriginOptions *options,
                OriginDataFunc fn, gpointer data, GError **error)
{
    OriginOptions opts = options ? *options : origin_options_default();
    char curl_error[CURL_ERROR_SIZE] = "";
    Stream st = {.fn = fn, .data = data};
    g_autoptr(CURL) h = NULL;
    CURLcode rc;
    bool is_http;

    if (!origin_scheme(url, &is_http)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "origin '%s': not an http, https or file URL", url);
        return false;
    }
    curl_global_once();
    h = curl_easy_init();
    if (!h) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "origin '%s': cannot create a curl handle", url);
        return false;
    }
    origin_handle_setup(h, url, &opts, curl_error);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, stream_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &st);
    /* no overall timeout (an image takes what it takes), but a stalled
     * transfer ends */
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, ORIGIN_LOW_SPEED_BYTES);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, ORIGIN_LOW_SPEED_S);
    rc = curl_easy_perform(h);
    if (st.error) {
        g_propagate_prefixed_error(error, g_steal_pointer(&st.error),
                                   "origin '%s': ", url);
        return false;
    }
    if (rc != CURLE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "origin '%s': %s", url,
                    curl_error[0] ? curl_error : curl_easy_strerror(rc));
        return false;
    }
    return true;
}
