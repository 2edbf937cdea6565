/*
 * test-fetch.c: the fetch engine with real origins: lighttpd over HTTP on
 * loopback, and file:// URLs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "fetch-engine.h"
#include "local-source.h"
#include "origin.h"
#include "spore-error.h"
#include "test-httpd.h"
#include "test-util.h"

#define KIB 1024u

static struct {
    char *docroot; /* served by lighttpd */
    char *image;   /* docroot/image.raw */
    guint8 *data;
    gsize len;
    char *cache_root;
    ImageIndex *idx;
    ChunkCache *cache;
    TestHttpd *httpd;
    char *tmpfs; /* mounted by a test, unmounted by teardown */
} fx;

/* An image of @size bytes indexed at 2^@shift, served over HTTP. */
static void
setup_with(gsize size, guint shift)
{
    g_autofree char *tmp = test_make_image(size, false, 99);
    g_autoptr(GError) err = NULL;

    fx.docroot = g_dir_make_tmp("spore-origin-XXXXXX", NULL);
    fx.image = g_build_filename(fx.docroot, "image.raw", NULL);
    cr_assert(g_file_get_contents(tmp, (char **)&fx.data, &fx.len, NULL));
    cr_assert(
        g_file_set_contents(fx.image, (char *)fx.data, (gssize)fx.len, NULL));
    g_unlink(tmp);
    fx.idx = image_index_build_file(fx.image, shift, 2, &err);
    cr_assert(fx.idx, "%s", err ? err->message : "");
    fx.cache_root = g_dir_make_tmp("spore-cache-XXXXXX", NULL);
    fx.cache = chunk_cache_open(fx.cache_root, fx.idx, &err);
    cr_assert(fx.cache, "%s", err ? err->message : "");
    fx.httpd = test_httpd_start(fx.docroot);
}

static void
setup(void)
{
    setup_with(2 * 1024 * KIB + 777, 16);
}

static void
teardown(void)
{
    test_httpd_stop(fx.httpd);
    chunk_cache_close(fx.cache);
    if (fx.tmpfs) {
        umount2(fx.tmpfs, MNT_DETACH);
        g_rmdir(fx.tmpfs);
        g_free(fx.tmpfs);
    }
    image_index_free(fx.idx);
    if (fx.cache_root)
        test_rm_rf(fx.cache_root);
    if (fx.docroot)
        test_rm_rf(fx.docroot);
    g_free(fx.cache_root);
    g_free(fx.docroot);
    g_free(fx.image);
    g_free(fx.data);
    memset(&fx, 0, sizeof(fx));
}

static FetchSource *
origin_for(const char *const *urls)
{
    g_autoptr(GError) err = NULL;
    OriginOptions opts = origin_options_default();
    FetchSource *src;

    opts.backoff_ms = 20;
    opts.connect_timeout_ms = 1000;
    src = origin_source_new(urls, &opts, &err);
    cr_assert(src, "%s", err ? err->message : "");
    return src;
}

static FetchEngine *
engine_with_http_origin(void)
{
    g_autofree char *url = test_httpd_url(fx.httpd, "image.raw");
    const char *urls[] = {url, NULL};
    FetchEngine *e = fetch_engine_new(fx.cache, 3);

    fetch_engine_add_source(e, origin_for(urls));
    return e;
}

static gint64
in_seconds(int s)
{
    return g_get_monotonic_time() + (gint64)s * G_USEC_PER_SEC;
}

/*
 * lighttpd buffers its access log and writes it every few seconds: wait (at
 * most 15 s) until it shows @at_least bytes, then a little more in case it
 * shows more.
 */
static guint64
served_bytes(guint64 at_least)
{
    guint64 n = 0;

    for (int i = 0; i < 150; i++) {
        n = test_httpd_body_bytes(fx.httpd);
        if (n >= at_least)
            break;
        g_usleep(100000);
    }
    g_usleep(200000);
    return test_httpd_body_bytes(fx.httpd);
}

TestSuite(fetch, .init = setup, .fini = teardown, .timeout = 120);

Test(fetch, gets_every_chunk_over_http_verified_and_counted)
{
    g_autoptr(FetchEngine) e = engine_with_http_origin();
    guint64 count = image_index_chunk_count(fx.idx);
    guint64 nonzero_bytes = 0;
    FetchStats st;
    guint64 bad = 1;

    for (guint64 i = 0; i < count; i++) {
        g_autoptr(GError) err = NULL;

        cr_assert(
            fetch_engine_get(e, i, FETCH_PRIORITY_DEMAND, in_seconds(30), &err),
            "%s", err ? err->message : "");
        if (!image_index_chunk_is_zero(fx.idx, i))
            nonzero_bytes += image_index_chunk_len(fx.idx, i);
    }
    fetch_engine_stats(e, &st);
    cr_expect_eq(st.bytes[FETCH_SOURCE_ORIGIN], nonzero_bytes,
                 "zero chunks are never transferred");
    cr_expect_eq(st.rejected, 0u);
    /* every stored chunk's fetch is in the origin's latency histogram:
     * cumulative buckets, the last (30 s) holding them all, a positive sum */
    for (guint b = 1; b < FETCH_LATENCY_BUCKETS; b++)
        cr_expect_geq(st.latency_buckets[FETCH_SOURCE_ORIGIN][b],
                      st.latency_buckets[FETCH_SOURCE_ORIGIN][b - 1],
                      "bucket %u is cumulative", b);
    cr_expect_eq(
        st.latency_buckets[FETCH_SOURCE_ORIGIN][FETCH_LATENCY_BUCKETS - 1],
        st.chunks[FETCH_SOURCE_ORIGIN]);
    cr_expect_gt(st.chunks[FETCH_SOURCE_ORIGIN], 0u);
    cr_expect_gt(st.latency_sum[FETCH_SOURCE_ORIGIN], 0.0);
    cr_expect_eq(
        st.latency_buckets[FETCH_SOURCE_PEER][FETCH_LATENCY_BUCKETS - 1], 0u,
        "no peer fetched anything");
    cr_expect_eq(served_bytes(nonzero_bytes), nonzero_bytes,
                 "the origin served exactly the non-zero chunks");
    cr_assert(chunk_cache_verify_all(fx.cache, &bad, NULL));
    cr_expect_eq(bad, 0u);
    cr_expect_eq(chunk_cache_stored_count(fx.cache),
                 count - image_index_zero_count(fx.idx));
}

Test(fetch, reads_file_urls_too)
{
    g_autofree char *url = g_strconcat("file://", fx.image, NULL);
    const char *urls[] = {url, NULL};
    g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);
    g_autoptr(GError) err = NULL;

    fetch_engine_add_source(e, origin_for(urls));
    cr_expect(
        fetch_engine_get(e, 0, FETCH_PRIORITY_DEMAND, in_seconds(10), &err),
        "%s", err ? err->message : "");
    cr_expect(fetch_engine_get(e, image_index_chunk_count(fx.idx) - 1,
                               FETCH_PRIORITY_DEMAND, in_seconds(10), &err),
              "the short last chunk: %s", err ? err->message : "");
}

Test(fetch, falls_back_to_the_next_origin_in_order)
{
    g_autofree char *good = test_httpd_url(fx.httpd, "image.raw");
    g_autofree char *missing = test_httpd_url(fx.httpd, "no-such-image.raw");
    const char *urls[] = {"http://127.0.0.1:1/image.raw", missing, good, NULL};
    g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);
    g_autoptr(GError) err = NULL;

    fetch_engine_add_source(e, origin_for(urls));
    cr_expect(
        fetch_engine_get(e, 0, FETCH_PRIORITY_DEMAND, in_seconds(20), &err),
        "%s", err ? err->message : "");
}

Test(fetch, names_the_origin_and_status_when_every_origin_fails)
{
    g_autofree char *missing = test_httpd_url(fx.httpd, "no-such-image.raw");
    const char *urls[] = {missing, NULL};
    g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);
    g_autoptr(GError) err = NULL;

    fetch_engine_add_source(e, origin_for(urls));
    cr_expect_not(
        fetch_engine_get(e, 2, FETCH_PRIORITY_DEMAND, in_seconds(1), &err));
    cr_assert(err);
    cr_expect(strstr(err->message, missing), "%s", err->message);
    cr_expect(strstr(err->message, "HTTP 404"), "%s", err->message);
    cr_expect(strstr(err->message, "chunk 2"), "%s", err->message);
    cr_expect_not(chunk_cache_has(fx.cache, 2));
}

Test(fetch, rejects_a_corrupt_chunk_from_the_origin_and_caches_nothing_of_it)
{
    g_autoptr(FetchEngine) e = engine_with_http_origin();
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) err2 = NULL;
    FetchStats st;
    int fd = open(fx.image, O_WRONLY);

    /* the origin's copy of chunk 3 differs from the indexed image */
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, "corrupt", 7, 3 * 64 * KIB + 1000), 7);
    close(fd);

    cr_expect_not(
        fetch_engine_get(e, 3, FETCH_PRIORITY_DEMAND, in_seconds(1), &err));
    cr_assert(err);
    cr_expect(strstr(err->message, "chunk 3"), "%s", err->message);
    cr_expect(strstr(err->message, "wrong digest"), "%s", err->message);
    cr_expect(strstr(err->message, "image.raw"), "names the origin: %s",
              err->message);
    cr_expect_not(chunk_cache_has(fx.cache, 3));
    fetch_engine_stats(e, &st);
    cr_expect_geq(st.rejected, 1u);
    cr_expect_eq(st.bytes[FETCH_SOURCE_ORIGIN], 0u);

    /* other chunks are fine */
    cr_expect(
        fetch_engine_get(e, 5, FETCH_PRIORITY_DEMAND, in_seconds(10), &err2),
        "%s", err2 ? err2->message : "");
}

/*
 * A FetchSource in memory: serves the test image (or, when @corrupt, the
 * image with one byte of each chunk flipped) and notes its name in `asked`
 * each time the engine asks it.
 */
typedef struct {
    FetchSource base;
    bool corrupt;
} MemSource;

static GMutex asked_lock;
static GString *asked;

static bool
mem_fetch(FetchSource *base, const ImageIndex *idx, guint64 i, guint8 *buf,
          gsize len, gint64 deadline, GError **error)
{
    g_mutex_lock(&asked_lock);
    g_string_append_printf(asked, "%s%s", asked->len ? " " : "", base->name);
    g_mutex_unlock(&asked_lock);
    memcpy(buf, fx.data + (i << image_index_chunk_shift(idx)), len);
    if (((MemSource *)base)->corrupt)
        buf[len / 2] ^= 0x5a;
    return true;
}

static bool
mem_has(FetchSource *base, const ImageIndex *idx, guint64 i)
{
    return true;
}

static void
mem_rejected(FetchSource *base, guint64 i)
{
}

static void
mem_free(FetchSource *base)
{
    g_free(base->name);
    g_free(base);
}

static const FetchSourceOps mem_ops = {
    .fetch = mem_fetch,
    .has = mem_has,
    .rejected = mem_rejected,
    .free = mem_free,
};

static FetchSource *
mem_source_new(FetchSourceKind kind, const char *name, bool corrupt)
{
    MemSource *m = g_new0(MemSource, 1);

    m->base.ops = &mem_ops;
    m->base.kind = kind;
    m->base.name = g_strdup(name);
    m->corrupt = corrupt;
    return &m->base;
}

/*
 * Sources added in a jumble of kinds are asked cheapest kind first and,
 * within a kind, in the order added; every one but the last serves a bad
 * chunk, so the engine walks them all.
 */
Test(fetch, asks_sources_by_kind_then_in_the_order_added)
{
    g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);
    g_autoptr(GError) err = NULL;
    static const struct {
        FetchSourceKind kind;
        const char *name;
    } added[] = {
        {FETCH_SOURCE_ORIGIN, "o1"}, {FETCH_SOURCE_LOCAL, "l1"},
        {FETCH_SOURCE_ORIGIN, "o2"}, {FETCH_SOURCE_PEER, "p1"},
        {FETCH_SOURCE_PEER, "p2"},   {FETCH_SOURCE_LOCAL, "l2"},
        {FETCH_SOURCE_ORIGIN, "o3"}, {FETCH_SOURCE_PEER, "p3"},
        {FETCH_SOURCE_ORIGIN, "o4"}, {FETCH_SOURCE_LOCAL, "l3"},
        {FETCH_SOURCE_PEER, "p4"},   {FETCH_SOURCE_ORIGIN, "o5"},
    };
    FetchStats st;

    asked = g_string_new(NULL);
    for (gsize k = 0; k < G_N_ELEMENTS(added); k++)
        fetch_engine_add_source(e, mem_source_new(added[k].kind, added[k].name,
                                                  k + 1 < G_N_ELEMENTS(added)));
    cr_expect(
        fetch_engine_get(e, 2, FETCH_PRIORITY_DEMAND, in_seconds(10), &err),
        "%s", err ? err->message : "");
    cr_expect_str_eq(asked->str, "l1 l2 l3 p1 p2 p3 p4 o1 o2 o3 o4 o5");
    fetch_engine_stats(e, &st);
    cr_expect_eq(st.rejected, G_N_ELEMENTS(added) - 1);
    cr_expect_eq(st.chunks[FETCH_SOURCE_ORIGIN], 1u);
    g_string_free(asked, TRUE);
    asked = NULL;
}

/*
 * A FetchSource that forwards to another and counts what the engine asks of
 * it and tells it: to see which origin a rejection was held against.
 */
typedef struct {
    FetchSource base;
    FetchSource *inner;
    guint fetches;  /* atomic */
    guint rejected; /* atomic */
} Watched;

static bool
watched_fetch(FetchSource *base, const ImageIndex *idx, guint64 i, guint8 *buf,
              gsize len, gint64 deadline, GError **error)
{
    Watched *w = (Watched *)base;

    g_atomic_int_inc(&w->fetches);
    return w->inner->ops->fetch(w->inner, idx, i, buf, len, deadline, error);
}

static bool
watched_has(FetchSource *base, const ImageIndex *idx, guint64 i)
{
    Watched *w = (Watched *)base;

    return w->inner->ops->has(w->inner, idx, i);
}

static void
watched_rejected(FetchSource *base, guint64 i)
{
    Watched *w = (Watched *)base;

    g_atomic_int_inc(&w->rejected);
    w->inner->ops->rejected(w->inner, i);
}

static void
watched_free(FetchSource *base)
{
    fetch_source_free(((Watched *)base)->inner);
    g_free(base);
}

static const FetchSourceOps watched_ops = {
    .fetch = watched_fetch,
    .has = watched_has,
    .rejected = watched_rejected,
    .free = watched_free,
};

/* Wrap @inner (owned from now on); the result is owned by the caller. */
static Watched *
watched_new(FetchSource *inner)
{
    Watched *w = g_new0(Watched, 1);

    w->base.ops = &watched_ops;
    w->base.kind = inner->kind;
    w->base.name = inner->name; /* borrowed */
    w->inner = inner;
    return w;
}

/*
 * The engine's origins as the agent makes them (origin_source_new_each,
 * added in order), each watched.  ret_watched gets borrowed pointers, valid
 * while @e lives.
 */
static void
add_watched_origins(FetchEngine *e, const char *const *urls,
                    Watched **ret_watched)
{
    g_autoptr(GError) err = NULL;
    OriginOptions opts = origin_options_default();
    g_autoptr(GPtrArray) sources = NULL;

    opts.backoff_ms = 20;
    opts.connect_timeout_ms = 1000;
    sources = origin_source_new_each(urls, &opts, &err);
    cr_assert(sources, "%s", err ? err->message : "");
    g_ptr_array_set_free_func(sources, NULL);
    for (guint k = 0; k < sources->len; k++) {
        ret_watched[k] = watched_new(sources->pdata[k]);
        fetch_engine_add_source(e, &ret_watched[k]->base);
    }
}

/* Make docroot/@name a copy of the image with chunk @i corrupt. */
static char *
serve_corrupt_copy(const char *name, guint64 i)
{
    g_autofree char *path = g_build_filename(fx.docroot, name, NULL);
    g_autofree guint8 *bad = g_memdup2(fx.data, fx.len);

    bad[(i << image_index_chunk_shift(fx.idx)) + 1000] ^= 0xff;
    cr_assert(g_file_set_contents(path, (char *)bad, (gssize)fx.len, NULL));
    return test_httpd_url(fx.httpd, name);
}

Test(fetch, asks_the_next_origin_for_a_chunk_one_origin_sent_corrupt)
{
    g_autofree char *a = serve_corrupt_copy("a.raw", 3);
    g_autofree char *b = test_httpd_url(fx.httpd, "image.raw");
    const char *urls[] = {a, b, NULL};
    g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);
    g_autoptr(GError) err = NULL;
    Watched *w[2];
    FetchStats st;
    guint64 bad = 1;

    add_watched_origins(e, urls, w);
    cr_assert(
        fetch_engine_get(e, 3, FETCH_PRIORITY_DEMAND, in_seconds(10), &err),
        "%s", err ? err->message : "");
    cr_expect(chunk_cache_has(fx.cache, 3));
    cr_assert(chunk_cache_verify_all(fx.cache, &bad, NULL));
    cr_expect_eq(bad, 0u);
    fetch_engine_stats(e, &st);
    cr_expect_eq(st.rejected, 1u);
    cr_expect_eq(st.chunks[FETCH_SOURCE_ORIGIN], 1u);
    cr_expect_eq(w[0]->fetches, 1u, "origin A was asked first, once");
    cr_expect_eq(w[0]->rejected, 1u, "the rejection is held against A");
    cr_expect_eq(w[1]->fetches, 1u, "origin B was asked next");
    cr_expect_eq(w[1]->rejected, 0u, "and B, which was right, is not blamed");
}

Test(fetch, names_only_the_origin_that_sent_a_corrupt_chunk)
{
    g_autofree char *a = serve_corrupt_copy("a.raw", 3);
    g_autofree char *b = test_httpd_url(fx.httpd, "no-such-image.raw");
    const char *urls[] = {a, b, NULL};
    g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);
    g_autoptr(GError) err = NULL;
    g_autofree char *blames_a = NULL;
    g_autofree char *blames_b = NULL;
    Watched *w[2];

    add_watched_origins(e, urls, w);
    cr_expect_not(
        fetch_engine_get(e, 3, FETCH_PRIORITY_DEMAND, in_seconds(1), &err));
    cr_assert(err);
    blames_a =
        g_strdup_printf("origin '%s' sent chunk 3 with a wrong digest", a);
    blames_b = g_strdup_printf("origin '%s' sent", b);
    cr_expect(strstr(err->message, blames_a), "%s", err->message);
    cr_expect_not(strstr(err->message, blames_b), "%s", err->message);
    cr_expect(strstr(err->message, "HTTP 404"), "B's own failure: %s",
              err->message);
    cr_expect_eq(w[1]->rejected, 0u);
    cr_expect_not(chunk_cache_has(fx.cache, 3));
}

/*
 * Require 206: an HTTP origin that ignores Range answers 200 with the whole
 * image.  Its bytes are refused before any reaches the buffer, with an
 * error naming the origin, the status and why; nothing is cached; the next
 * origin is asked.
 */
static void
expect_range_ignoring_origin_refused(guint64 chunk)
{
    TestHttpd *no_ranges = test_httpd_start_with(
        fx.docroot, 0, "server.range-requests = \"disable\"");
    g_autofree char *bad = test_httpd_url(no_ranges, "image.raw");
    g_autofree char *good = test_httpd_url(fx.httpd, "image.raw");
    g_autofree char *names_chunk =
        g_strdup_printf("chunk %" G_GUINT64_FORMAT ": origin '%s'", chunk, bad);
    const char *bad_only[] = {bad, NULL};
    const char *bad_then_good[] = {bad, good, NULL};
    g_autoptr(GError) err = NULL;
    FetchStats st;

    {
        g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);

        fetch_engine_add_source(e, origin_for(bad_only));
        cr_expect_not(fetch_engine_get(e, chunk, FETCH_PRIORITY_DEMAND,
                                       in_seconds(1), &err));
        cr_assert(err);
        cr_expect(strstr(err->message, names_chunk), "%s", err->message);
        cr_expect(
            strstr(err->message, "HTTP 200, expected 206 Partial Content"),
            "%s", err->message);
        cr_expect(strstr(err->message, "ignores Range"), "%s", err->message);
        cr_expect_not(chunk_cache_has(fx.cache, chunk));
        cr_expect_eq(chunk_cache_stored_count(fx.cache), 0u);
        fetch_engine_stats(e, &st);
        cr_expect_eq(st.bytes[FETCH_SOURCE_ORIGIN], 0u);
        cr_expect_eq(st.rejected, 0u, "refused before verification");
    }
    {
        g_autoptr(FetchEngine) e = fetch_engine_new(fx.cache, 2);
        Watched *w[2];
        g_autoptr(GError) err2 = NULL;

        add_watched_origins(e, bad_then_good, w);
        cr_expect(fetch_engine_get(e, chunk, FETCH_PRIORITY_DEMAND,
                                   in_seconds(10), &err2),
                  "%s", err2 ? err2->message : "");
        cr_expect_eq(w[1]->fetches, 1u, "the next origin was asked");
    }
    test_httpd_stop(no_ranges);
}

Test(fetch, refuses_an_http_origin_that_ignores_range_requests)
{
    expect_range_ignoring_origin_refused(2);
}

static void
setup_one_chunk(void)
{
    setup_with(40000, 16); /* the whole image is chunk 0 */
}

/* 200 with exactly the bytes asked for is refused too: it is luck, not a
 * range. */
Test(fetch_one_chunk, refuses_a_200_even_when_it_has_the_right_length,
     .init = setup_one_chunk, .fini = teardown, .timeout = 60)
{
    expect_range_ignoring_origin_refused(0);
}

typedef struct {
    FetchEngine *engine;
    guint64 chunk;
    bool ok;
} GetJob;

static gpointer
get_job(gpointer data)
{
    GetJob *job = data;

    job->ok = fetch_engine_get(job->engine, job->chunk, FETCH_PRIORITY_DEMAND,
                               in_seconds(30), NULL);
    return NULL;
}

Test(fetch, coalesces_concurrent_requests_for_one_chunk)
{
    g_autoptr(FetchEngine) e = engine_with_http_origin();
    GetJob jobs[8];
    GThread *threads[8];
    FetchStats st;

    for (int t = 0; t < 8; t++) {
        jobs[t] = (GetJob){e, 6, false};
        threads[t] = g_thread_new("get", get_job, &jobs[t]);
    }
    for (int t = 0; t < 8; t++) {
        g_thread_join(threads[t]);
        cr_expect(jobs[t].ok);
    }
    fetch_engine_stats(e, &st);
    cr_expect_eq(st.chunks[FETCH_SOURCE_ORIGIN], 1u);
    served_bytes(64 * KIB);
    cr_expect_eq(test_httpd_requests(fx.httpd), 1u,
                 "eight waiters, one request to the origin");
}

static void
setup_small_chunks(void)
{
    setup_with(32 * 1024 * KIB, 12); /* 8192 chunks of 4 KiB */
}

Test(fetch_priorities, serves_demand_ahead_of_queued_background_work,
     .init = setup_small_chunks, .fini = teardown, .timeout = 120)
{
    g_autoptr(FetchEngine) e = NULL;
    guint64 count;
    guint queued_when_done;
    g_autoptr(GError) err = NULL;

    e = engine_with_http_origin();
    count = image_index_chunk_count(fx.idx);
    for (guint64 i = 0; i < count; i++)
        fetch_engine_want(e, i, FETCH_PRIORITY_BACKGROUND);
    cr_assert(fetch_engine_get(e, count - 2, FETCH_PRIORITY_DEMAND,
                               in_seconds(30), &err),
              "%s", err ? err->message : "");
    queued_when_done = fetch_engine_queued(e);
    cr_expect_gt(queued_when_done, count / 2,
                 "the demand waited for the background queue: only %u left",
                 queued_when_done);
}

Test(fetch, waits_out_an_origin_outage_and_recovers)
{
    g_autoptr(FetchEngine) e = engine_with_http_origin();
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) err2 = NULL;
    guint port = test_httpd_port(fx.httpd);

    /* cached reads go on; misses fail after the deadline */
    cr_assert(
        fetch_engine_get(e, 0, FETCH_PRIORITY_DEMAND, in_seconds(10), NULL));
    test_httpd_stop(fx.httpd);
    fx.httpd = NULL;
    cr_expect(
        fetch_engine_get(e, 0, FETCH_PRIORITY_DEMAND, in_seconds(1), NULL),
        "a cached chunk needs no origin");
    cr_expect_not(
        fetch_engine_get(e, 2, FETCH_PRIORITY_DEMAND, in_seconds(1), &err));
    cr_assert(err);
    cr_expect(strstr(err->message, "chunk 2"), "%s", err->message);

    /* the origin returns: the same miss succeeds */
    fx.httpd = test_httpd_start_port(fx.docroot, port);
    cr_expect(
        fetch_engine_get(e, 2, FETCH_PRIORITY_DEMAND, in_seconds(20), &err2),
        "%s", err2 ? err2->message : "");
}

/*
 * Local copies first: image B is image A with two chunks changed.  With A
 * cached, fetching B takes every shared chunk from A's cache and only the
 * two changed ones from the origin.
 */
Test(fetch, copies_shared_chunks_from_another_cached_image)
{
    g_autofree char *b_path = g_build_filename(fx.docroot, "b.raw", NULL);
    g_autofree char *a_url = test_httpd_url(fx.httpd, "image.raw");
    g_autofree char *b_url = test_httpd_url(fx.httpd, "b.raw");
    const char *a_urls[] = {a_url, NULL};
    const char *b_urls[] = {b_url, NULL};
    g_autofree guint8 *b_data = g_memdup2(fx.data, fx.len);
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) b_idx = NULL;
    g_autoptr(ChunkCache) b_cache = NULL;
    g_autoptr(CacheSet) set = cache_set_new();
    guint64 count = image_index_chunk_count(fx.idx);
    guint64 shared_nonzero = 0, bad = 1, a_bytes = 0;
    FetchStats st;

    b_data[5 * 64 * KIB + 10] ^= 0xff; /* chunks 5 and 9 differ */
    b_data[9 * 64 * KIB + 20] ^= 0xff;
    cr_assert(
        g_file_set_contents(b_path, (char *)b_data, (gssize)fx.len, NULL));
    b_idx = image_index_build_file(b_path, 16, 2, &err);
    cr_assert(b_idx, "%s", err ? err->message : "");
    b_cache = chunk_cache_open(fx.cache_root, b_idx, &err);
    cr_assert(b_cache, "%s", err ? err->message : "");
    cache_set_add(set, fx.cache);
    cache_set_add(set, b_cache);

    {
        g_autoptr(FetchEngine) a = fetch_engine_new(fx.cache, 2);
        fetch_engine_add_source(a, origin_for(a_urls));
        for (guint64 i = 0; i < count; i++) {
            cr_assert(fetch_engine_get(a, i, FETCH_PRIORITY_DEMAND,
                                       in_seconds(30), NULL));
            if (!image_index_chunk_is_zero(fx.idx, i))
                a_bytes += image_index_chunk_len(fx.idx, i);
        }
    }
    cr_assert_eq(served_bytes(a_bytes), a_bytes);
    {
        g_autoptr(FetchEngine) b = fetch_engine_new(b_cache, 2);

        fetch_engine_add_source(b, origin_for(b_urls));
        fetch_engine_add_source(b, local_source_new(set, b_cache));
        for (guint64 i = 0; i < count; i++) {
            cr_assert(fetch_engine_get(b, i, FETCH_PRIORITY_DEMAND,
                                       in_seconds(30), &err),
                      "%s", err ? err->message : "");
            if (i != 5 && i != 9 && !image_index_chunk_is_zero(b_idx, i))
                shared_nonzero++;
        }
        fetch_engine_stats(b, &st);
        cr_expect_eq(st.chunks[FETCH_SOURCE_LOCAL], shared_nonzero);
        cr_expect_eq(st.chunks[FETCH_SOURCE_ORIGIN], 2u,
                     "only the two changed chunks cross the network");
        cr_expect_eq(served_bytes(a_bytes + 2 * 64 * KIB),
                     a_bytes + 2 * 64 * KIB,
                     "the origin served image B's two changed chunks only");
    }
    cr_assert(chunk_cache_verify_all(b_cache, &bad, NULL));
    cr_expect_eq(bad, 0u);
}

/* The small tmpfs for the disk-full test: 256 KiB holds three 64 KiB
 * chunks next to the cache's index and bitmap, not the image's 22. */
#define FULL_DISK_TMPFS_OPTIONS "size=256k,mode=0700"

/*
 * Disk full while fetching: the cache root on a small tmpfs, chunks fetched
 * through the engine from the HTTP origin until the disk is full.  The
 * failing get names the chunk and "No space left", that chunk stays
 * missing, and the cache verifies, also when opened again.
 */
Test(fetch, reports_a_full_disk_and_leaves_the_chunk_missing)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *names_chunk = NULL;
    guint64 count = image_index_chunk_count(fx.idx);
    guint64 stored = 0, failed_at = G_MAXUINT64, bad = 99;

    if (geteuid() != 0)
        cr_skip_test("needs root to mount a small tmpfs for the cache");
    fx.tmpfs = g_dir_make_tmp("spore-full-XXXXXX", NULL);
    cr_assert(fx.tmpfs);
    if (mount("tmpfs", fx.tmpfs, "tmpfs", MS_NOSUID | MS_NODEV,
              FULL_DISK_TMPFS_OPTIONS) != 0) {
        int saved = errno;
        g_rmdir(fx.tmpfs);
        g_clear_pointer(&fx.tmpfs, g_free);
        cr_skip_test("cannot mount a tmpfs: %s", g_strerror(saved));
    }

    {
        g_autoptr(ChunkCache) cache = chunk_cache_open(fx.tmpfs, fx.idx, &err);
        g_autofree char *url = test_httpd_url(fx.httpd, "image.raw");
        const char *urls[] = {url, NULL};
        g_autoptr(FetchEngine) e = NULL;

        cr_assert(cache, "%s", err ? err->message : "");
        e = fetch_engine_new(cache, 2);
        fetch_engine_add_source(e, origin_for(urls));
        for (guint64 i = 0; i < count; i++) {
            if (image_index_chunk_is_zero(fx.idx, i))
                continue;
            if (!fetch_engine_get(e, i, FETCH_PRIORITY_DEMAND, in_seconds(2),
                                  &err)) {
                failed_at = i;
                break;
            }
            stored++;
        }
        cr_assert_neq(failed_at, G_MAXUINT64, "a %s tmpfs held the whole image",
                      FULL_DISK_TMPFS_OPTIONS);
        cr_assert(err);
        cr_expect_gt(stored, 0u, "the first chunks fit");
        names_chunk =
            g_strdup_printf("chunk %" G_GUINT64_FORMAT " ", failed_at);
        cr_expect(strstr(err->message, "No space left"), "%s", err->message);
        cr_log_info("full at chunk %" G_GUINT64_FORMAT ": %s", failed_at,
                    err->message);
        cr_expect(strstr(err->message, names_chunk),
                  "names chunk %" G_GUINT64_FORMAT ": %s", failed_at,
                  err->message);
        cr_expect_not(chunk_cache_has(cache, failed_at));
        cr_expect_eq(chunk_cache_stored_count(cache), stored);
        cr_assert(chunk_cache_verify_all(cache, &bad, NULL));
        cr_expect_eq(bad, 0u);
    }
    {
        g_autoptr(ChunkCache) again = chunk_cache_open(fx.tmpfs, fx.idx, &err);

        cr_assert(again, "%s", err ? err->message : "");
        cr_expect_not(chunk_cache_has(again, failed_at));
        cr_expect_eq(chunk_cache_stored_count(again), stored);
        bad = 99;
        cr_assert(chunk_cache_verify_all(again, &bad, NULL));
        cr_expect_eq(bad, 0u, "after reopening too");
    }
}

/* collect: an OriginDataFunc appending to a GByteArray */
static bool
collect(const guint8 *bytes, gsize len, gpointer data, GError **error)
{
    g_byte_array_append(data, bytes, (guint)len);
    return true;
}

static bool
refuse(const guint8 *bytes, gsize len, gpointer data, GError **error)
{
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT, "enough, thanks");
    return false;
}

Test(fetch, reads_a_whole_image_once_for_its_index)
{
    g_autofree char *url = test_httpd_url(fx.httpd, "image.raw");
    g_autoptr(GByteArray) got = g_byte_array_new();
    g_autoptr(GError) err = NULL;

    cr_assert(origin_read_all(url, NULL, collect, got, &err), "%s",
              err ? err->message : "");
    cr_assert_eq(got->len, fx.len);
    cr_assert(memcmp(got->data, fx.data, fx.len) == 0);
    cr_expect_eq(test_httpd_body_bytes(fx.httpd), fx.len, "read once");
}

Test(fetch, a_whole_image_read_fails_naming_the_url)
{
    g_autofree char *missing = test_httpd_url(fx.httpd, "no-such-image.raw");
    g_autofree char *url = test_httpd_url(fx.httpd, "image.raw");
    g_autoptr(GByteArray) got = g_byte_array_new();
    g_autoptr(GError) err = NULL;

    cr_assert_not(origin_read_all(missing, NULL, collect, got, &err));
    cr_expect(strstr(err->message, missing), "%s", err->message);
    cr_expect(strstr(err->message, "404"), "%s", err->message);
    g_clear_error(&err);
    cr_assert_not(origin_read_all(url, NULL, refuse, got, &err));
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT));
    cr_expect(strstr(err->message, "enough, thanks"), "%s", err->message);
    g_clear_error(&err);
    cr_assert_not(
        origin_read_all("ftp://127.0.0.1/x", NULL, collect, got, &err));
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
}
