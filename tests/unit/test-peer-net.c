/*
 * test-peer-net.c: hosts exchanging chunks over the peer protocol, in one
 * process: each "host" has its own cache, fetch engine, key pair and
 * PeerNet (its own zmq context and thread), on 127.0.0.1; the origin is a
 * real lighttpd.  Hostile peers (a liar, a silent one, clients sending
 * garbage) are raw zmq sockets driven by the test.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <zmq.h>
#include <glib/gstdio.h>

#include "fetch-engine.h"
#include "origin.h"
#include "peer-net.h"
#include "peer-protocol.h"
#include "spore-error.h"
#include "test-httpd.h"
#include "test-util.h"

#define KIB       1024u
#define HOSTS_MAX 8

typedef struct {
    char name[16];
    char pub[41], sec[41];
    char *root;
    ChunkCache *cache;
    FetchEngine *engine;
    PeerNet *net;
    GMutex log_lock;
    GPtrArray *log; /* of char *: what its PeerNet reported */
} Host;

static struct {
    char *docroot;
    char *url;
    guint8 *data;
    gsize len;
    ImageIndex *idx;
    guint64 nonzero_bytes;
    TestHttpd *httpd;
    Host hosts[HOSTS_MAX];
    guint n_hosts;
} fx;

static void
setup_sized(gsize size)
{
    g_autofree char *tmp = test_make_image(size, false, 7);
    g_autofree char *image = NULL;
    g_autoptr(GError) err = NULL;

    fx.docroot = g_dir_make_tmp("spore-peer-origin-XXXXXX", NULL);
    image = g_build_filename(fx.docroot, "image.raw", NULL);
    cr_assert(g_file_get_contents(tmp, (char **)&fx.data, &fx.len, NULL));
    cr_assert(
        g_file_set_contents(image, (char *)fx.data, (gssize)fx.len, NULL));
    g_unlink(tmp);
    fx.idx = image_index_build_file(image, 16, 2, &err);
    cr_assert(fx.idx, "%s", err ? err->message : "");
    for (guint64 i = 0; i < image_index_chunk_count(fx.idx); i++) {
        if (!image_index_chunk_is_zero(fx.idx, i))
            fx.nonzero_bytes += image_index_chunk_len(fx.idx, i);
    }
    fx.httpd = test_httpd_start(fx.docroot);
    fx.url = test_httpd_url(fx.httpd, "image.raw");
}

static void
setup(void)
{
    setup_sized(2 * 1024 * KIB + 777);
}

/* an image large enough for a read to take a while: for ratios */
static void
setup_big(void)
{
    setup_sized(64 * 1024 * KIB);
}

static void
teardown(void)
{
    for (guint h = 0; h < fx.n_hosts; h++) {
        Host *host = &fx.hosts[h];
        peer_net_free(host->net);
        g_ptr_array_unref(host->log);
        g_mutex_clear(&host->log_lock);
        fetch_engine_free(host->engine);
        chunk_cache_close(host->cache);
        test_rm_rf(host->root);
        g_free(host->root);
    }
    test_httpd_stop(fx.httpd);
    image_index_free(fx.idx);
    test_rm_rf(fx.docroot);
    g_free(fx.docroot);
    g_free(fx.url);
    g_free(fx.data);
    memset(&fx, 0, sizeof(fx));
}

static void
host_log(PeerLogLevel level, const char *message, gpointer data)
{
    Host *h = data;

    g_mutex_lock(&h->log_lock);
    g_ptr_array_add(h->log, g_strdup(message));
    g_mutex_unlock(&h->log_lock);
}

/* Wait (up to 10 s) until @h's PeerNet reported a line containing
 * @needle. */
static bool
host_logged(Host *h, const char *needle)
{
    for (int t = 0; t < 200; t++) {
        bool seen = false;

        g_mutex_lock(&h->log_lock);
        for (guint k = 0; k < h->log->len && !seen; k++)
            seen = strstr(h->log->pdata[k], needle) != NULL;
        g_mutex_unlock(&h->log_lock);
        if (seen)
            return true;
        g_usleep(50 * 1000);
    }
    return false;
}

static gint64
in_seconds(int s)
{
    return g_get_monotonic_time() + (gint64)s * G_USEC_PER_SEC;
}

/* A host with a cache, an engine with peer and (unless @no_origin)
 * origin sources, serving the image unless @later (then the test calls
 * peer_net_add_image). */
static Host *
host_new_full(const PeerNetConfig *tweaks, bool later, bool no_origin)
{
    Host *h = &fx.hosts[fx.n_hosts];
    g_autoptr(GError) err = NULL;
    const char *urls[] = {fx.url, NULL};
    OriginOptions opts = origin_options_default();
    PeerNetConfig cfg = {0};
    FetchSource *origin;

    cr_assert(fx.n_hosts < HOSTS_MAX);
    g_snprintf(h->name, sizeof(h->name), "hv%u", fx.n_hosts + 1);
    cr_assert_eq(zmq_curve_keypair(h->pub, h->sec), 0);
    h->root = g_dir_make_tmp("spore-peer-cache-XXXXXX", NULL);
    h->cache = chunk_cache_open(h->root, fx.idx, &err);
    cr_assert(h->cache, "%s", err ? err->message : "");
    h->engine = fetch_engine_new(h->cache, 4);
    if (tweaks)
        cfg = *tweaks;
    cfg.listen = "tcp://127.0.0.1:*";
    cfg.host_name = h->name;
    g_mutex_init(&h->log_lock);
    h->log = g_ptr_array_new_with_free_func(g_free);
    cfg.log = host_log;
    cfg.log_data = h;
    memcpy(cfg.public_key, h->pub, sizeof(h->pub));
    memcpy(cfg.secret_key, h->sec, sizeof(h->sec));
    h->net = peer_net_new(&cfg, &err);
    cr_assert(h->net, "%s", err ? err->message : "");
    opts.backoff_ms = 20;
    origin = origin_source_new(urls, &opts, &err);
    cr_assert(origin, "%s", err ? err->message : "");
    if (no_origin)
        fetch_source_free(origin);
    else
        fetch_engine_add_source(h->engine, origin);
    fetch_engine_add_source(h->engine, peer_source_new(h->net, h->cache));
    if (!later)
        peer_net_add_image(h->net, h->cache, h->engine);
    fx.n_hosts++;
    return h;
}

static Host *
host_new_with(const PeerNetConfig *tweaks, bool later)
{
    return host_new_full(tweaks, later, false);
}

static Host *
host_new(const PeerNetConfig *tweaks)
{
    return host_new_with(tweaks, false);
}

static PeerInfo
info_of(Host *h)
{
    return (PeerInfo){
        .name = h->name,
        .endpoint = (char *)peer_net_endpoint(h->net),
        .public_key = h->pub,
    };
}

/* Every host lists every other one. */
static void
mesh(void)
{
    for (guint a = 0; a < fx.n_hosts; a++) {
        PeerInfo infos[HOSTS_MAX];
        guint n = 0;
        g_autoptr(GError) err = NULL;

        for (guint b = 0; b < fx.n_hosts; b++) {
            if (b != a)
                infos[n++] = info_of(&fx.hosts[b]);
        }
        cr_assert(peer_net_set_peers(fx.hosts[a].net, infos, n, &err), "%s",
                  err ? err->message : "");
    }
}

/* Wait until @h sees @n peers connected with the image's bitmap. */
static void
wait_connected(Host *h, guint n)
{
    for (int tries = 0; tries < 200; tries++) {
        g_autoptr(GArray) st = peer_net_status(h->net);
        guint up = 0;

        for (guint k = 0; k < st->len; k++)
            up += g_array_index(st, PeerStatus, k).connected;
        if (up >= n) {
            g_usleep(300 * 1000); /* their HAVE answers */
            return;
        }
        g_usleep(50 * 1000);
    }
    cr_assert_fail("%s: fewer than %u peers connected", h->name, n);
}

static void
get_all(Host *h)
{
    for (guint64 i = 0; i < image_index_chunk_count(fx.idx); i++) {
        g_autoptr(GError) err = NULL;
        cr_assert(fetch_engine_get(h->engine, i, FETCH_PRIORITY_DEMAND,
                                   in_seconds(60), &err),
                  "%s: chunk %" G_GUINT64_FORMAT ": %s", h->name, i,
                  err ? err->message : "");
    }
}

static void
assert_cache_complete_and_verified(Host *h)
{
    guint64 bad = 1;

    cr_assert(chunk_cache_verify_all(h->cache, &bad, NULL));
    cr_expect_eq(bad, 0u, "%s: every cached chunk verifies", h->name);
    cr_expect_eq(chunk_cache_stored_count(h->cache),
                 image_index_chunk_count(fx.idx) -
                     image_index_zero_count(fx.idx),
                 "%s: the cache is complete", h->name);
}

/* lighttpd writes its access log every few seconds: wait for @at_least */
static guint64
origin_bytes(guint64 at_least)
{
    for (int i = 0; i < 150 && test_httpd_body_bytes(fx.httpd) < at_least; i++)
        g_usleep(100000);
    g_usleep(1500000); /* and a little more, in case it shows more */
    return test_httpd_body_bytes(fx.httpd);
}

TestSuite(peer_net, .init = setup, .fini = teardown, .timeout = 120);

Test(peer_net, a_host_takes_every_chunk_from_a_peer_that_holds_the_image)
{
    Host *a = host_new(NULL);
    Host *b = host_new(NULL);
    FetchStats st;
    guint64 from_origin;

    get_all(a);
    from_origin = origin_bytes(fx.nonzero_bytes);
    cr_assert_eq(from_origin, fx.nonzero_bytes);
    mesh();
    wait_connected(b, 1);
    get_all(b);
    fetch_engine_stats(b->engine, &st);
    cr_expect_eq(st.bytes[FETCH_SOURCE_PEER], fx.nonzero_bytes);
    cr_expect_eq(st.bytes[FETCH_SOURCE_ORIGIN], 0u);
    cr_expect_eq(origin_bytes(from_origin), from_origin,
                 "the origin served nothing more");
    assert_cache_complete_and_verified(b);
    {
        g_autoptr(GArray) sa = peer_net_status(a->net);
        cr_assert_eq(sa->len, 1u);
        cr_expect_eq(g_array_index(sa, PeerStatus, 0).bytes_out,
                     fx.nonzero_bytes, "A counts what it served B");
    }
}

Test(peer_net, only_what_no_peer_holds_comes_from_the_origin_once)
{
    Host *a = host_new(NULL);
    Host *b = host_new(NULL);
    guint64 count = image_index_chunk_count(fx.idx), held = 0;

    /* A holds the even chunks */
    for (guint64 i = 0; i < count; i += 2) {
        cr_assert(fetch_engine_get(a->engine, i, FETCH_PRIORITY_DEMAND,
                                   in_seconds(30), NULL));
        if (!image_index_chunk_is_zero(fx.idx, i))
            held += image_index_chunk_len(fx.idx, i);
    }
    cr_assert_eq(origin_bytes(held), held);
    mesh();
    wait_connected(b, 1);
    wait_connected(a, 1);
    get_all(b);
    assert_cache_complete_and_verified(b);
    /* B took the even chunks from A; each odd one came from the origin
     * once, fetched by B or, for B, by A */
    cr_expect_eq(origin_bytes(fx.nonzero_bytes), fx.nonzero_bytes);
    {
        /* and A counts all it served B, delegated fetches included */
        g_autoptr(GArray) sa = peer_net_status(a->net);
        FetchStats st;

        fetch_engine_stats(b->engine, &st);
        cr_assert_eq(sa->len, 1u);
        cr_expect_gt(st.bytes[FETCH_SOURCE_PEER], held, "some were delegated");
        cr_expect_eq(g_array_index(sa, PeerStatus, 0).bytes_out,
                     st.bytes[FETCH_SOURCE_PEER]);
    }
}

static gpointer
get_all_thread(gpointer data)
{
    get_all(data);
    return NULL;
}

Test(peer_net, hosts_booting_at_once_fetch_each_chunk_from_the_origin_once)
{
    const guint n = 4;
    GThread *threads[HOSTS_MAX];

    for (guint k = 0; k < n; k++)
        host_new(NULL);
    mesh();
    for (guint k = 0; k < n; k++)
        wait_connected(&fx.hosts[k], n - 1);
    for (guint k = 0; k < n; k++)
        threads[k] = g_thread_new("get-all", get_all_thread, &fx.hosts[k]);
    for (guint k = 0; k < n; k++)
        g_thread_join(threads[k]);
    for (guint k = 0; k < n; k++)
        assert_cache_complete_and_verified(&fx.hosts[k]);
    {
        guint64 served = origin_bytes(fx.nonzero_bytes);
        cr_expect_leq(served * 10, fx.nonzero_bytes * 11,
                      "origin bytes %" G_GUINT64_FORMAT " for %u hosts, "
                      "one copy is %" G_GUINT64_FORMAT,
                      served, n, fx.nonzero_bytes);
    }
}

/* ---- hostile peers -------------------------------------------------- */

typedef enum {
    FAKE_LIAR,     /* claims every chunk, sends garbage */
    FAKE_SILENT,   /* claims every chunk, never answers a GET */
    FAKE_HALF,     /* claims every chunk, sends half of each */
    FAKE_PLUS4K,   /* claims every chunk, sends each with 4 KiB more */
    FAKE_4MIB,     /* claims every chunk, sends 4 MiB for each */
    FAKE_UNASKED,  /* claims every chunk, answers a HAVE_REQ with DATA too,
                    * under request ids never used, and ignores GETs */
    FAKE_NO_FETCH, /* holds nothing, answers a GET "not present" and
                    * ignores every GET with FETCH (a host that accepts
                    * delegated work and never does it) */
} FakeMode;

typedef struct {
    FakeMode mode;
    char pub[41], sec[41];
    char endpoint[128];
    void *ctx;
    GThread *thread;
    gint stop;
    gint lies; /* chunks sent with wrong bytes */
    gint gets;
    gint fetch_gets;      /* GETs with FETCH */
    gint64 last_fetch_at; /* fake thread only */
    gint close_fetches;   /* FETCHes less than 0.5 s after the one before */
    gint have_reqs;
    gint64 bytes_sent; /* payload bytes of its DATA, atomically */
} FakePeer;

/* Send DATA for @m's chunk with @len bytes of junk. */
static void
fake_data(FakePeer *f, void *s, const guint8 *rid, int rlen, PeerMsg m,
          gsize len)
{
    guint8 hdr[PEER_HEADER_BYTES];
    g_autofree guint8 *junk = g_malloc(len);

    memset(junk, 0x5a, len);
    m.type = PEER_MSG_DATA;
    m.flags = 0;
    peer_msg_encode(&m, hdr);
    zmq_send(s, rid, (size_t)rlen, ZMQ_SNDMORE);
    zmq_send(s, hdr, sizeof(hdr), ZMQ_SNDMORE);
    if (zmq_send(s, junk, len, 0) >= 0)
        g_atomic_pointer_add(&f->bytes_sent, (gssize)len);
    g_atomic_int_inc(&f->lies);
}

static gpointer
fake_main(gpointer data)
{
    FakePeer *f = data;
    void *s = zmq_socket(f->ctx, ZMQ_ROUTER);
    int one = 1, linger = 0, timeout = 100;
    char last[128];
    size_t last_len = sizeof(last);

    zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof(one));
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, f->sec, 40);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
    g_assert(zmq_bind(s, "tcp://127.0.0.1:*") == 0);
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, last, &last_len);
    g_strlcpy(f->endpoint, last, sizeof(f->endpoint));
    g_atomic_int_set(&f->stop, 0);

    while (!g_atomic_int_get(&f->stop)) {
        guint8 rid[256], hdr[PEER_HEADER_BYTES];
        int rlen = zmq_recv(s, rid, sizeof(rid), 0);
        PeerMsg m;

        if (rlen < 0)
            continue;
        if (zmq_recv(s, hdr, sizeof(hdr), 0) != PEER_HEADER_BYTES ||
            !peer_msg_decode(hdr, PEER_HEADER_BYTES, -1, &m, NULL))
            continue;
        if (m.type == PEER_MSG_HAVE_REQ) {
            guint64 count = image_index_chunk_count(fx.idx);
            gsize bytes = (gsize)((count + 7) / 8);
            g_autofree guint8 *bits = g_malloc0(bytes);
            PeerMsg req = m;

            g_atomic_int_inc(&f->have_reqs);
            if (f->mode != FAKE_NO_FETCH) {
                memset(bits, 0xff, bytes);
                if (count % 8)
                    bits[bytes - 1] = (guint8)((1u << (count % 8)) - 1);
            }
            m.type = PEER_MSG_HAVE;
            m.chunk = count;
            peer_msg_encode(&m, hdr);
            zmq_send(s, rid, (size_t)rlen, ZMQ_SNDMORE);
            zmq_send(s, hdr, sizeof(hdr), ZMQ_SNDMORE);
            zmq_send(s, bits, bytes, 0);
            for (guint k = 0; f->mode == FAKE_UNASKED && k < 8; k++) {
                req.req_id = 0x7fff0000u + k;
                req.chunk = k;
                fake_data(f, s, rid, rlen, req,
                          image_index_chunk_len(fx.idx, k));
            }
        } else if (m.type == PEER_MSG_GET) {
            gsize len = image_index_chunk_len(fx.idx, m.chunk);

            g_atomic_int_inc(&f->gets);
            if (m.flags & PEER_GET_FETCH) {
                gint64 now = g_get_monotonic_time();

                g_atomic_int_inc(&f->fetch_gets);
                if (f->last_fetch_at && now - f->last_fetch_at < 500 * 1000)
                    g_atomic_int_inc(&f->close_fetches);
                f->last_fetch_at = now;
            }
            switch (f->mode) {
            case FAKE_SILENT:
            case FAKE_UNASKED:
                break;
            case FAKE_NO_FETCH:
                if (m.flags & PEER_GET_FETCH)
                    break;
                m.type = PEER_MSG_ERR;
                m.flags = PEER_ERR_NOT_PRESENT;
                peer_msg_encode(&m, hdr);
                zmq_send(s, rid, (size_t)rlen, ZMQ_SNDMORE);
                zmq_send(s, hdr, sizeof(hdr), 0);
                break;
            case FAKE_LIAR:
                fake_data(f, s, rid, rlen, m, len);
                break;
            case FAKE_HALF:
                fake_data(f, s, rid, rlen, m, len / 2);
                break;
            case FAKE_PLUS4K:
                fake_data(f, s, rid, rlen, m, len + 4 * KIB);
                break;
            case FAKE_4MIB:
                fake_data(f, s, rid, rlen, m, 4096 * KIB);
                break;
            }
        }
    }
    zmq_close(s);
    return NULL;
}

static FakePeer *
fake_start(FakeMode mode)
{
    FakePeer *f = g_new0(FakePeer, 1);

    f->mode = mode;
    cr_assert_eq(zmq_curve_keypair(f->pub, f->sec), 0);
    f->ctx = zmq_ctx_new();
    g_atomic_int_set(&f->stop, -1);
    f->thread = g_thread_new("fake-peer", fake_main, f);
    while (g_atomic_int_get(&f->stop) == -1)
        g_usleep(1000);
    return f;
}

static void
fake_stop(FakePeer *f)
{
    g_atomic_int_set(&f->stop, 1);
    g_thread_join(f->thread);
    zmq_ctx_term(f->ctx);
    g_free(f);
}

static void
peers_are(Host *h, const PeerInfo *infos, guint n)
{
    g_autoptr(GError) err = NULL;

    cr_assert(peer_net_set_peers(h->net, infos, n, &err), "%s",
              err ? err->message : "");
}

Test(peer_net, a_lying_peer_is_caught_banned_and_nothing_bad_is_stored)
{
    FakePeer *liar = fake_start(FAKE_LIAR);
    Host *b = host_new(NULL);
    Host *c = host_new(NULL);
    PeerInfo li = {
        .name = "liar", .endpoint = liar->endpoint, .public_key = liar->pub};
    PeerInfo bi = info_of(b), ci = info_of(c);
    PeerInfo b_peers[] = {li, ci};
    FetchStats st;
    guint64 b_from_origin;

    peers_are(b, b_peers, 2);
    peers_are(c, &bi, 1);
    wait_connected(b, 2);
    wait_connected(c, 1);
    get_all(b);
    assert_cache_complete_and_verified(b);
    fetch_engine_stats(b->engine, &st);
    cr_expect_gt(g_atomic_int_get(&liar->lies), 0);
    cr_expect_eq(st.rejected, (guint64)g_atomic_int_get(&liar->lies),
                 "every lie is detected: %" G_GUINT64_FORMAT " of %d",
                 st.rejected, g_atomic_int_get(&liar->lies));
    cr_expect_eq(peer_net_bad_chunks(b->net),
                 (guint64)g_atomic_int_get(&liar->lies));
    cr_expect_eq(g_atomic_int_get(&liar->lies), 3,
                 "the liar is banned after 3 strikes (sent %d)",
                 g_atomic_int_get(&liar->lies));
    {
        g_autoptr(GArray) s = peer_net_status(b->net);
        for (guint k = 0; k < s->len; k++) {
            PeerStatus *p = &g_array_index(s, PeerStatus, k);
            if (g_str_equal(p->name, "liar"))
                cr_expect_eq(p->images_banned, 1u);
        }
    }
    /* what the liar claimed came from the origin or from C instead */
    b_from_origin = st.bytes[FETCH_SOURCE_ORIGIN];
    cr_expect_eq(b_from_origin + st.bytes[FETCH_SOURCE_PEER], fx.nonzero_bytes);
    /* C takes the rest from B: none of the lies reaches it either */
    get_all(c);
    assert_cache_complete_and_verified(c);
    fetch_engine_stats(c->engine, &st);
    cr_expect_eq(st.rejected, 0u);
    fake_stop(liar);
}

Test(peer_net, a_peer_that_never_answers_is_dropped_and_its_chunks_replanned)
{
    FakePeer *mute = fake_start(FAKE_SILENT);
    PeerNetConfig quick = {.dead_ms = 400, .hedge_ms = 100};
    Host *b = host_new(&quick);
    PeerInfo mi = {
        .name = "mute", .endpoint = mute->endpoint, .public_key = mute->pub};
    FetchStats st;

    peers_are(b, &mi, 1);
    wait_connected(b, 1);
    get_all(b);
    assert_cache_complete_and_verified(b);
    fetch_engine_stats(b->engine, &st);
    cr_expect_eq(st.bytes[FETCH_SOURCE_ORIGIN], fx.nonzero_bytes);
    cr_expect_gt(g_atomic_int_get(&mute->gets), 0, "it was asked");
    {
        g_autoptr(GArray) s = peer_net_status(b->net);
        cr_expect(g_array_index(s, PeerStatus, 0).dead, "and found dead");
    }
    fake_stop(mute);
}

/* @h's status of the peer named @name */
static PeerStatus
status_of(Host *h, const char *name)
{
    g_autoptr(GArray) s = peer_net_status(h->net);
    PeerStatus copy = {0};

    for (guint k = 0; k < s->len; k++) {
        PeerStatus *p = &g_array_index(s, PeerStatus, k);
        if (g_str_equal(p->name, name)) {
            copy = *p;
            copy.name = NULL;
            copy.endpoint = NULL;
        }
    }
    return copy;
}

/*
 * A host with no origin and @liar as its only peer asks it for chunk
 * after chunk until it is banned for the image (or 60 s pass): every bad
 * answer must be a strike.  Then the bound: bytes received from a peer
 * <= 1.1 x its useful bytes (none here) + one window of chunks.
 */
static void
assert_struck_and_banned(FakeMode mode, const char *ban_dir)
{
    FakePeer *liar = fake_start(mode);
    PeerNetConfig cfg = {.ban_dir = (char *)ban_dir};
    Host *b = host_new_full(&cfg, false, true);
    PeerInfo li = {
        .name = "liar", .endpoint = liar->endpoint, .public_key = liar->pub};
    guint64 count = image_index_chunk_count(fx.idx);
    guint64 window_bytes = 16 * image_index_chunk_len(fx.idx, 0);
    PeerStatus st = {0};

    peers_are(b, &li, 1);
    for (int t = 0; t < 600; t++) {
        st = status_of(b, "liar");
        if (st.images_banned)
            break;
        if (mode != FAKE_UNASKED) {
            guint64 i = (guint64)t % count;

            if (!image_index_chunk_is_zero(fx.idx, i))
                cr_expect_not(fetch_engine_get(b->engine, i,
                                               FETCH_PRIORITY_DEMAND,
                                               in_seconds(5), NULL),
                              "no junk is accepted as a chunk");
        }
        g_usleep(100 * 1000);
    }
    cr_expect_eq(st.images_banned, 1u,
                 "the liar is banned (%" G_GUINT64_FORMAT " bad chunks)",
                 st.bad_chunks);
    cr_expect_geq(st.bad_chunks, 3u, "each bad answer is a strike");
    cr_expect_leq(st.bytes_in, window_bytes,
                  "bytes taken from the liar: %" G_GUINT64_FORMAT
                  ", one window is %" G_GUINT64_FORMAT,
                  st.bytes_in, window_bytes);
    cr_expect_eq(chunk_cache_stored_count(b->cache), 0u, "nothing stored");
    cr_expect(host_logged(b, "banned for image"), "the ban is logged");
    if (mode == FAKE_PLUS4K || mode == FAKE_4MIB || mode == FAKE_UNASKED)
        cr_expect(host_logged(b, "peer liar: dropped the connection"),
                  "the dropped connection is logged");
    fprintf(stderr,
            "liar mode %d: banned after %" G_GUINT64_FORMAT
            " strikes; it sent %" G_GINT64_FORMAT
            " payload bytes, this host took %" G_GUINT64_FORMAT "\n",
            mode, st.bad_chunks,
            (gint64)g_atomic_pointer_get(&liar->bytes_sent), st.bytes_in);
    {
        /* banned: it is asked nothing more */
        gint gets = g_atomic_int_get(&liar->gets);

        for (guint64 i = 0; i < 4; i++)
            fetch_engine_get(b->engine, i, FETCH_PRIORITY_DEMAND, in_seconds(1),
                             NULL);
        cr_expect_eq(g_atomic_int_get(&liar->gets), gets,
                     "a banned peer is not asked");
    }
    if (ban_dir) {
        /* and after a restart (a new PeerNet on the same ban_dir) it is
         * still banned before it sends anything */
        Host *c = host_new(&cfg);

        peers_are(c, &li, 1);
        wait_connected(c, 1);
        st = status_of(c, "liar");
        cr_expect_eq(st.images_banned, 1u, "the ban is kept");
        get_all(c);
        assert_cache_complete_and_verified(c);
        cr_expect_eq(status_of(c, "liar").chunks_in, 0u);
    }
    fake_stop(liar);
}

Test(peer_net, a_peer_sending_half_chunks_is_struck_and_banned)
{
    assert_struck_and_banned(FAKE_HALF, NULL);
}

Test(peer_net, a_peer_sending_4_kib_more_is_struck_dropped_and_banned)
{
    assert_struck_and_banned(FAKE_PLUS4K, NULL);
}

Test(peer_net, a_peer_sending_4_mib_per_chunk_is_struck_dropped_and_banned)
{
    assert_struck_and_banned(FAKE_4MIB, NULL);
}

Test(peer_net, a_peer_sending_data_nobody_asked_for_is_struck_and_banned)
{
    assert_struck_and_banned(FAKE_UNASKED, NULL);
}

Test(peer_net, a_ban_is_kept_across_a_restart)
{
    g_autofree char *dir = g_dir_make_tmp("spore-peer-bans-XXXXXX", NULL);
    g_autofree char *bans = g_build_filename(dir, "sub", NULL);

    assert_struck_and_banned(FAKE_HALF, bans);
    test_rm_rf(dir);
}

typedef struct {
    Host *h;
    guint64 first, step;
} Stride;

static gpointer
get_stride_thread(gpointer data)
{
    Stride *st = data;

    for (guint64 i = st->first; i < image_index_chunk_count(fx.idx);
         i += st->step) {
        g_autoptr(GError) err = NULL;
        cr_assert(fetch_engine_get(st->h->engine, i, FETCH_PRIORITY_DEMAND,
                                   in_seconds(60), &err),
                  "%s: chunk %" G_GUINT64_FORMAT ": %s", st->h->name, i,
                  err ? err->message : "");
    }
    return NULL;
}

/* Eight readers at once, each on its own chunks, as a guest's parallel
 * reads would come: up to eight fetches in flight. */
static double
read_all_timed(Host *h)
{
    GThread *threads[8];
    Stride strides[8];
    gint64 t0 = g_get_monotonic_time();

    for (guint k = 0; k < 8; k++) {
        strides[k] = (Stride){.h = h, .first = k, .step = 8};
        threads[k] = g_thread_new("get-stride", get_stride_thread, &strides[k]);
    }
    for (guint k = 0; k < 8; k++)
        g_thread_join(threads[k]);
    return (double)(g_get_monotonic_time() - t0) / G_USEC_PER_SEC;
}

/* The same run's baseline (a host with no peers) and a host whose only
 * peer takes delegated fetches and never answers them: the read
 * completes, identical, the peer, never proven to do a FETCH, holds one
 * chunk at a time, and that chunk went elsewhere after a short hedge.
 * The times are printed, not asserted. */
static void
read_with_a_peer_ignoring_fetches(void)
{
    FakePeer *mute = fake_start(FAKE_NO_FETCH);
    Host *a = host_new(NULL);
    Host *b = host_new(NULL);
    Host *c = host_new(NULL);
    PeerInfo mi = {
        .name = "mute", .endpoint = mute->endpoint, .public_key = mute->pub};
    guint64 count = image_index_chunk_count(fx.idx);
    double alone, with_mute;
    PeerStatus st;
    FetchStats fs;

    /* baselines before and after, against the noise of a shared machine */
    peers_are(b, &mi, 1);
    wait_connected(b, 1);
    alone = read_all_timed(a);
    with_mute = read_all_timed(b);
    alone = (alone + read_all_timed(c)) / 2;
    assert_cache_complete_and_verified(b);
    st = status_of(b, "mute");
    fetch_engine_stats(b->engine, &fs);
    fprintf(stderr,
            "whole read of %" G_GUINT64_FORMAT " chunks: %.3f s alone, %.3f "
            "s with a peer ignoring delegated fetches (%.2fx); it was asked "
            "%d, missed %" G_GUINT64_FORMAT ", hedged %" G_GUINT64_FORMAT "\n",
            count, alone, with_mute, with_mute / alone,
            g_atomic_int_get(&mute->fetch_gets), st.missed, st.hedged);
    cr_expect_gt(g_atomic_int_get(&mute->fetch_gets), 0, "it was delegated to");
    cr_expect_lt((guint64)g_atomic_int_get(&mute->fetch_gets), count / 4,
                 "and the chunks went elsewhere at once, not one by one "
                 "after each timed out");
    /* never answered one, it is never given a second before the first's
     * deadline (at least 1.5 s): one chunk held at a time, not a window */
    cr_expect_eq(g_atomic_int_get(&mute->close_fetches), 0,
                 "%d of its %d FETCH requests came less than 0.5 s after "
                 "the one before",
                 g_atomic_int_get(&mute->close_fetches),
                 g_atomic_int_get(&mute->fetch_gets));
    cr_expect_eq(fs.bytes[FETCH_SOURCE_ORIGIN], fx.nonzero_bytes);
    fake_stop(mute);
}

Test(peer_net,
     a_peer_that_takes_delegated_fetches_and_never_answers_costs_one_hedge)
{
    read_with_a_peer_ignoring_fetches();
}

TestSuite(peer_net_big, .init = setup_big, .fini = teardown, .timeout = 240);

Test(peer_net_big, a_whole_read_beside_a_peer_ignoring_delegated_fetches)
{
    read_with_a_peer_ignoring_fetches();
}

/* With no origin to fall back on, a host keeps handing such a peer its
 * chunks: it misses deadline after deadline and is dead for the image. */
Test(peer_net, a_peer_that_keeps_missing_deadlines_is_dead_for_the_image)
{
    FakePeer *mute = fake_start(FAKE_NO_FETCH);
    Host *b = host_new_full(NULL, false, true);
    PeerInfo mi = {
        .name = "mute", .endpoint = mute->endpoint, .public_key = mute->pub};
    guint64 count = image_index_chunk_count(fx.idx);
    PeerStatus st = {0};

    peers_are(b, &mi, 1);
    wait_connected(b, 1);
    for (int t = 0; t < 1000; t++) {
        st = status_of(b, "mute");
        if (st.missed >= 2)
            break;
        fetch_engine_get(b->engine, (guint64)t % count, FETCH_PRIORITY_DEMAND,
                         in_seconds(3), NULL);
        g_usleep(20 * 1000);
    }
    cr_expect_geq(st.missed, 2u, "it missed again after its first death");
    cr_expect_eq(st.images_dead, 1u,
                 "dead for the image after %" G_GUINT64_FORMAT " misses",
                 st.missed);
    cr_expect_leq((guint64)g_atomic_int_get(&mute->fetch_gets), st.missed + 1,
                  "one request per death, not a window of them: %d asked",
                  g_atomic_int_get(&mute->fetch_gets));
    cr_expect_not(st.dead, "yet not dead for what else it may serve");
    fake_stop(mute);
}

/* A host whose event loop hangs while libzmq still answers heartbeats:
 * GETs go unanswered with the default dead_ms; the deadlines re-plan. */
Test(peer_net, a_peer_whose_loop_hangs_costs_a_deadline_not_a_timeout)
{
    FakePeer *mute = fake_start(FAKE_SILENT);
    Host *b = host_new(NULL);
    PeerInfo mi = {
        .name = "hung", .endpoint = mute->endpoint, .public_key = mute->pub};
    PeerStatus st;

    peers_are(b, &mi, 1);
    wait_connected(b, 1);
    get_all(b);
    assert_cache_complete_and_verified(b);
    st = status_of(b, "hung");
    cr_expect_leq(g_atomic_int_get(&mute->gets), 16,
                  "asked at most one window (%d)",
                  g_atomic_int_get(&mute->gets));
    cr_expect(st.dead || st.images_dead || st.missed,
              "found dead or missing its deadlines");
    fake_stop(mute);
}

/* A raw DEALER to @server with key pair @pub/@sec. */
static void *
raw_client(void *ctx, Host *server, const char *pub, const char *sec)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, timeout = 1500;

    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server->pub, 40);
    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 40);
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 40);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
    cr_assert_eq(zmq_connect(s, peer_net_endpoint(server->net)), 0);
    return s;
}

static void
raw_have_req(void *s)
{
    PeerMsg m = {.type = PEER_MSG_HAVE_REQ, .req_id = 7};
    guint8 hdr[PEER_HEADER_BYTES];

    spore_unhex(image_index_id(fx.idx) + 7, m.image, SPORE_SHA256_BYTES);
    peer_msg_encode(&m, hdr);
    zmq_send(s, hdr, sizeof(hdr), 0);
}

/* The type of the answer on @s (unasked HAVE_UPDATEs skipped), 0 if none
 * came. */
static guint
raw_answer(void *s)
{
    guint8 hdr[PEER_HEADER_BYTES];
    g_autofree guint8 *payload = g_malloc(64 * KIB);

    for (;;) {
        int more = 0;
        size_t more_len = sizeof(more);

        if (zmq_recv(s, hdr, sizeof(hdr), 0) != PEER_HEADER_BYTES)
            return 0;
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &more_len);
        if (more)
            zmq_recv(s, payload, 64 * KIB, 0);
        if (hdr[1] != PEER_MSG_HAVE_UPDATE)
            return hdr[1];
    }
}

Test(peer_net, a_key_not_in_the_peer_list_gets_nothing)
{
    Host *a = host_new(NULL);
    Host *b = host_new(NULL);
    PeerInfo ai = info_of(a);
    void *ctx = zmq_ctx_new();
    char pub[41], sec[41];
    void *s;
    FetchStats st;

    get_all(a);
    /* B lists A, A does not list B */
    peers_are(b, &ai, 1);
    g_usleep(1000 * 1000);
    get_all(b);
    fetch_engine_stats(b->engine, &st);
    cr_expect_eq(st.bytes[FETCH_SOURCE_PEER], 0u);
    cr_expect_eq(st.bytes[FETCH_SOURCE_ORIGIN], fx.nonzero_bytes);
    {
        g_autoptr(GArray) s2 = peer_net_status(b->net);
        cr_expect_not(g_array_index(s2, PeerStatus, 0).connected);
    }
    /* and a raw client with an unknown key gets no answer at all */
    cr_assert_eq(zmq_curve_keypair(pub, sec), 0);
    s = raw_client(ctx, a, pub, sec);
    raw_have_req(s);
    cr_expect_eq(raw_answer(s), 0u);
    zmq_close(s);
    zmq_ctx_term(ctx);
}

Test(peer_net, malformed_and_oversized_messages_are_dropped_and_serving_goes_on)
{
    Host *a = host_new(NULL);
    void *ctx = zmq_ctx_new();
    char pub[41], sec[41];
    PeerInfo me = {
        .name = "prober", .endpoint = "tcp://127.0.0.1:9", .public_key = pub};
    g_autofree guint8 *big = g_malloc0(PEER_FRAME_MAX_BYTES + 1024);
    guint8 hdr[PEER_HEADER_BYTES];
    PeerMsg m = {.type = PEER_MSG_GET, .req_id = 9};
    void *s;

    get_all(a);
    cr_assert_eq(zmq_curve_keypair(pub, sec), 0);
    peers_are(a, &me, 1);
    s = raw_client(ctx, a, pub, sec);
    /* listed: it is answered */
    raw_have_req(s);
    cr_assert_eq(raw_answer(s), PEER_MSG_HAVE);
    /* garbage, a bad version, three frames, a GET past the end */
    zmq_send(s, "garbage", 7, 0);
    spore_unhex(image_index_id(fx.idx) + 7, m.image, SPORE_SHA256_BYTES);
    peer_msg_encode(&m, hdr);
    hdr[0] = 9;
    zmq_send(s, hdr, sizeof(hdr), 0);
    hdr[0] = PEER_PROTOCOL_VERSION;
    zmq_send(s, hdr, sizeof(hdr), ZMQ_SNDMORE);
    zmq_send(s, "x", 1, ZMQ_SNDMORE);
    zmq_send(s, "y", 1, 0);
    cr_expect_eq(raw_answer(s), 0u, "none of those is answered");
    m.chunk = image_index_chunk_count(fx.idx);
    peer_msg_encode(&m, hdr);
    zmq_send(s, hdr, sizeof(hdr), 0);
    cr_expect_eq(raw_answer(s), PEER_MSG_ERR, "past the end: an error");
    m.chunk = 1;
    peer_msg_encode(&m, hdr);
    zmq_send(s, hdr, sizeof(hdr), 0);
    cr_expect_eq(raw_answer(s), PEER_MSG_DATA, "still serving");
    /* an oversized frame drops the connection; the next one is served */
    zmq_send(s, big, PEER_FRAME_MAX_BYTES + 1024, 0);
    cr_expect_eq(raw_answer(s), 0u);
    cr_expect(host_logged(a, "peer connection from 127.0.0.1:"),
              "the server says it closed the connection");
    zmq_close(s);
    s = raw_client(ctx, a, pub, sec);
    raw_have_req(s);
    cr_expect_eq(raw_answer(s), PEER_MSG_HAVE, "a new connection is served");
    zmq_close(s);
    zmq_ctx_term(ctx);
}

Test(peer_net, a_peer_list_with_a_bad_entry_is_refused_whole)
{
    Host *a = host_new(NULL);
    PeerInfo bad[] = {
        {.name = "ok", .endpoint = "tcp://127.0.0.1:7", .public_key = a->pub},
        {.name = "bad", .endpoint = "tcp://127.0.0.1:8", .public_key = "short"},
    };
    PeerInfo noport = {
        .name = "x", .endpoint = "udp://h", .public_key = a->pub};
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) err2 = NULL;
    g_autoptr(GArray) st = NULL;

    cr_expect_not(peer_net_set_peers(a->net, bad, 2, &err));
    cr_expect(err && strstr(err->message, "peer 'bad'"), "%s",
              err ? err->message : "");
    cr_expect_not(peer_net_set_peers(a->net, &noport, 1, &err2));
    cr_expect(err2 && strstr(err2->message, "udp://h"), "%s",
              err2 ? err2->message : "");
    g_usleep(100 * 1000);
    st = peer_net_status(a->net);
    cr_expect_eq(st->len, 0u, "nothing changed");
}

Test(peer_net, a_background_fill_through_peers_completes)
{
    Host *a = host_new(NULL);
    Host *b = host_new(NULL);
    guint64 count = image_index_chunk_count(fx.idx);

    for (guint64 i = 0; i < count / 2; i++)
        cr_assert(fetch_engine_get(a->engine, i, FETCH_PRIORITY_DEMAND,
                                   in_seconds(30), NULL));
    mesh();
    wait_connected(b, 1);
    wait_connected(a, 1);
    for (guint64 i = 0; i < count; i++)
        fetch_engine_want(b->engine, i, FETCH_PRIORITY_BACKGROUND);
    for (int t = 0; t < 300 && fetch_engine_queued(b->engine) > 0; t++)
        g_usleep(100 * 1000);
    cr_expect_eq(fetch_engine_queued(b->engine), 0u, "the fill finishes");
    assert_cache_complete_and_verified(b);
}

/* Regression: a fetch for an image just added, before the connected peers'
 * bitmaps of it came, went to the origin (a host serving an image it had
 * just added prefetched its whole profile from the origin). */
Test(peer_net, a_fetch_waits_for_the_bitmaps_of_connected_peers)
{
    Host *a = host_new(NULL);
    Host *b = host_new_with(NULL, true);
    FetchStats st;
    bool up = false;

    get_all(a);
    mesh();
    for (int tries = 0; tries < 2000 && !up; tries++) {
        g_autoptr(GArray) s = peer_net_status(b->net);
        up = s->len == 1 && g_array_index(s, PeerStatus, 0).connected;
        if (!up)
            g_usleep(1000);
    }
    cr_assert(up, "B connects to A");
    g_usleep(200 * 1000);
    peer_net_add_image(b->net, b->cache, b->engine);
    cr_assert(fetch_engine_get(b->engine, 0, FETCH_PRIORITY_DEMAND,
                               in_seconds(30), NULL));
    fetch_engine_stats(b->engine, &st);
    cr_expect_eq(st.chunks[FETCH_SOURCE_PEER], 1u, "from A, not the origin");
    cr_expect_eq(st.chunks[FETCH_SOURCE_ORIGIN], 0u);
}

/* Regression: a peer that asked for an image before this host had it
 * learned of it only at its next retry, 2 s later, and fetched from the
 * origin meanwhile (hosts booting at once fetched up to 1.6x one copy). */
Test(peer_net, a_peer_that_asked_too_early_learns_of_an_added_image_at_once)
{
    Host *a = host_new_with(NULL, true);
    Host *b = host_new(NULL);
    FetchStats st;

    get_all(a);
    mesh();
    wait_connected(b, 1); /* and A said it has no such image */
    peer_net_add_image(a->net, a->cache, a->engine);
    g_usleep(300 * 1000);
    cr_assert(fetch_engine_get(b->engine, 0, FETCH_PRIORITY_DEMAND,
                               in_seconds(30), NULL));
    fetch_engine_stats(b->engine, &st);
    cr_expect_eq(st.chunks[FETCH_SOURCE_PEER], 1u, "from A, not the origin");
}

/* Regression: libzmq ends a session whose handshake was refused and never
 * reconnects, so a host that listed its peer before the peer listed it
 * never got connected. */
Test(peer_net, a_peer_refused_at_first_connects_once_it_is_listed)
{
    Host *a = host_new(NULL);
    Host *b = host_new(NULL);
    PeerInfo ai = info_of(a), bi = info_of(b);

    peers_are(b, &ai, 1); /* A does not list B yet: refused */
    g_usleep(1500 * 1000);
    {
        g_autoptr(GArray) s = peer_net_status(b->net);
        cr_assert_not(g_array_index(s, PeerStatus, 0).connected);
    }
    peers_are(a, &bi, 1);
    wait_connected(b, 1);
}
