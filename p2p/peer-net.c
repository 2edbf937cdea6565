/*
 * peer-net.c: the peer server, the peer clients and the peer FetchSource
 * (see peer-net.h for the behaviour, docs/peer-protocol.md for the wire).
 *
 * This file is spore's adapter for libzmq on the peer side: zmq errors
 * become GError messages or log lines naming the peer.
 *
 * One thread (loop_main) owns the zmq context and every socket:
 *   - zap:    the ZAP handler (REP), admits the keys of the peer list;
 *   - server: ROUTER, CURVE server, answers HAVE_REQ and GET, pushes
 *             HAVE_UPDATE to subscribers;
 *   - per peer a DEALER (CURVE client) and a PAIR reading its socket
 *     monitor (handshake succeeded / disconnected).
 *
 * A fetch (a fetch-engine worker in peer_fetch) is a Job:
 *
 *   NEW --[inbox, plan: a peer holds it]--> SENT (GET to the best peer)
 *   NEW --[plan: nobody holds it, another host is its origin fetcher]-->
 *         SENT (GET with PEER_GET_FETCH to that host)
 *   NEW --[plan: every holder's window is full]--> WAITING --[a slot]--> plan
 *   SENT --[DATA of the right length]--> DONE (ok)
 *   SENT --[ERR, the peer dies, a PEER_GET_FETCH times out]--> plan again,
 *         without the peers tried already
 *   SENT --[hedge_at passes]--> SENT twice (a second peer asked too)
 *   plan with no candidate left --> DONE (error: the engine asks the origin)
 *   any --[the caller's deadline]--> cancelled (dropped by the loop)
 *
 * Invariants:
 *   1. job->sent counts the Outstanding entries of the job; a job is
 *      planned again only when it reaches 0 and the job is not done;
 *   2. peer->outstanding counts the Outstanding entries of the peer, and
 *      the loop never sends it a GET beyond the window;
 *   3. the bitmaps of peers only ever hold bits of chunks inside the image
 *      (HAVE and HAVE_UPDATE are checked against our own index);
 *   4. the server sends only chunks read from the cache and verified
 *      against the index just before sending.
 *
 * Locking: net->lock guards the peer table (everything in Peer but its two
 * sockets), the image table, delegated_here, the jobs' done/ok/cancelled
 * state and the counters; the job condition variable waits on it.  The
 * loop holds it while it plans and while it updates peers, never while it
 * blocks in zmq_poll.  Caches are read without it.
 */
#include "peer-net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include "file-util.h"
#include "hash.h"
#include "le-bytes.h"
#include "peer-protocol.h"
#include "spore-error.h"
#include "zmq-zap.h"

#define LOOP_TICK_MS  50
#define HAVE_RETRY_MS 2000
/* how long a fetch waits for the bitmaps of connected peers that were not
 * asked yet or have not answered (an image just added) */
#define HAVE_WAIT_US (1 * G_USEC_PER_SEC)
/* libzmq does not reconnect after a refused handshake (its session ends):
 * the loop makes a new socket after this, doubling up to the max, so that
 * a peer that lists this host's key later is reached */
#define REFUSED_RETRY_MIN_US  (1 * G_USEC_PER_SEC)
#define REFUSED_RETRY_MAX_US  (30 * G_USEC_PER_SEC)
#define DEAD_BACKOFF_MIN_US   (2 * G_USEC_PER_SEC)
#define DEAD_BACKOFF_MAX_US   (60 * G_USEC_PER_SEC)
#define DELEGATED_HOLD_US     (30 * G_USEC_PER_SEC)
#define COMPLAINT_EVERY_US    (10 * G_USEC_PER_SEC)
#define RECV_BURST_MAX        256
#define SUBSCRIBERS_MAX       PEER_PEERS_MAX
#define FETCH_POOL_THREADS    8
#define FETCH_POOL_QUEUED_MAX 256
/* what the server reads: 48-byte requests, and the CURVE handshake's
 * commands with their metadata, which ZMQ_MAXMSGSIZE bounds as well */
#define SERVER_FRAME_MAX_BYTES 8192
#define EWMA_WEIGHT            0.2
#define LATENCY_INITIAL_US     1000.0
#define THROUGHPUT_INITIAL     (100.0 * 1000 * 1000 / 8) /* bytes/s */
/* a request's deadline: DEADLINE_FACTOR x its expected time, at least
 * DEADLINE_FLOOR_US (and a delegated one at most delegate_ms) */
#define DEADLINE_FACTOR   4
#define DEADLINE_FLOOR_US (1500 * 1000)
/* what a delegated fetch is expected to take before one was measured */
#define DELEGATE_INITIAL_US (100.0 * 1000)
/* a peer that missed a deadline for an image: not asked for it for this
 * long, doubling with each miss in a row */
#define IMAGE_DEAD_MIN_US (2 * G_USEC_PER_SEC)
#define IMAGE_DEAD_MAX_US (60 * G_USEC_PER_SEC)
/* request ids ended without an answer (deadline, death): their late
 * answers are not strikes.  Kept this long, at most this many per peer */
#define RETIRED_KEEP_US (60 * G_USEC_PER_SEC)
#define RETIRED_MAX     4096
/* what the clients accept in one frame beyond the largest frame an image
 * needs (a chunk, a bitmap): the slack lets the loop see a frame somewhat
 * too large and say so; libzmq drops a connection sending more */
#define CLIENT_FRAME_MIN_BYTES   (64 * 1024) /* the default chunk size */
#define CLIENT_FRAME_SLACK_BYTES (8 * 1024)
/* a disconnect libzmq does not follow by a reconnect attempt within this
 * long ended the session: the peer broke the protocol (a frame over the
 * limit, a corrupt stream) */
#define PROTOCOL_DROP_GRACE_US (1 * G_USEC_PER_SEC)
#define BANS_FILE              "bans"
#define BANS_FILE_MAX_BYTES    (1024 * 1024)

typedef struct {
    guint8 digest[SPORE_SHA256_BYTES];
    guint64 seed; /* rendezvous hashing */
    ChunkCache *cache;
    FetchEngine *engine;
    ImageIndex *idx;
    guint64 chunks;
    gint64 added; /* monotonic µs */
    gsize bitmap_bytes;
    guint8 *advertised;         /* loop: the bitmap subscribers know */
    GHashTable *subscribers;    /* loop: routing id (GBytes) -> itself */
    GHashTable *delegated_here; /* locked: chunk -> expiry (gint64) */
} NetImage;

typedef struct {
    guint8 *bits;        /* NULL until the peer sent its HAVE */
    bool unknown;        /* it said it has no such image */
    gint64 asked_at;     /* loop: last HAVE_REQ */
    guint32 have_req_id; /* loop: its id (an ERR may answer it) */
    guint strikes;       /* bad DATA (invariant 5) */
    bool banned;         /* after strikes_max strikes; kept in the bans */
    bool probation;      /* struck: a window of 1 until a good answer */
    guint misses;        /* deadlines missed in a row (invariant 6) */
    gint64 dead_until;   /* not asked for this image before */
    gint64 dead_backoff_us;
} PeerImage;

typedef struct {
    PeerInfo info;
    guint64 seed;
    void *sock; /* loop */
    void *mon;  /* loop */
    bool connected;
    bool dead;
    gint64 dead_until; /* not asked again before (backoff) */
    gint64 dead_backoff_us;
    gint64 last_heard;
    gint64 last_complaint;
    gint64 reconnect_at;      /* loop: a new socket then (0: none due) */
    gint64 reconnect_backoff; /* µs, doubles per refused handshake */
    gint64 dropped_at;  /* loop: disconnected, no reconnect attempt seen */
    gsize frame_limit;  /* loop: the ZMQ_MAXMSGSIZE of its socket */
    GHashTable *struck; /* loop: images (NetImage *) of the requests that
                         * were outstanding when it disconnected */
    double latency_us;
    double bps;
    double delegate_us; /* a delegated fetch's time, measured, smoothed */
    gint64 last_answer; /* loop: its last answer to a request */
    bool lagging;       /* a request past its hedge time, nothing since */
    guint outstanding;
    GHashTable *images;  /* digest -> PeerImage */
    GHashTable *retired; /* loop: req_id -> expiry (gint64 *) */
    guint64 chunks_in, bytes_in, bad_chunks, chunks_out, bytes_out, hedged;
    guint64 missed;
} Peer;

typedef struct {
    gint refs;
    NetImage *im;
    guint64 chunk;
    gsize len;
    guint8 *buf;
    gint64 deadline;
    bool done, ok, cancelled;
    GError *error;
    char *served_by;
    GPtrArray *tried; /* of char *: peer names asked already */
    guint sent;
    GString *why; /* what the peers said, for the final error */
} Job;

typedef struct {
    guint32 req_id;
    Job *job;
    Peer *peer;
    gint64 sent_at;
    gint64 hedge_at;
    gint64 deadline_at; /* invariant 6 */
    bool fetch_flag;
    bool hedged;
} Outstanding;

typedef enum {
    CMD_JOB,
    CMD_SET_PEERS,
    CMD_FETCHED, /* a PEER_GET_FETCH task finished */
} CmdKind;

typedef struct {
    CmdKind kind;
    Job *job;      /* CMD_JOB */
    GArray *peers; /* CMD_SET_PEERS: of PeerInfo */
    GBytes *rid;   /* CMD_FETCHED: who asked */
    char *who;     /* CMD_FETCHED: its ZAP user id (the peer's name) */
    PeerMsg msg;   /* CMD_FETCHED: the GET */
    NetImage *im;  /* CMD_FETCHED */
    bool ok;       /* CMD_FETCHED */
} Cmd;

struct PeerNet {
    PeerNetConfig cfg;
    guint64 self_seed;
    char *endpoint;

    GThread *thread;
    GThreadPool *pool;
    int wake_fd;
    void *zctx; /* loop */
    void *zap;
    void *server;
    void *server_mon;       /* loop: the server's socket monitor (PAIR) */
    GHashTable *conn_addrs; /* loop: fd -> "ADDRESS:PORT" of accepted peers */
    gint64 last_close_log;  /* loop */

    GMutex lock;
    GCond job_done;
    GCond started;
    bool ready;
    GError *start_error;
    bool stop;
    GQueue inbox;       /* of Cmd * */
    GHashTable *images; /* digest -> NetImage * */
    GPtrArray *peers;   /* of Peer * */
    guint64 bad_chunks;
    guint pool_queued;
    char *bans_path;   /* NULL: bans are not kept */
    GHashTable *bans;  /* "IMAGEHEX PEERKEY" -> itself: the bans kept */
    gsize frame_limit; /* ZMQ_MAXMSGSIZE of the clients (invariant 7) */

    /* loop only */
    GHashTable *outstanding; /* req_id -> Outstanding * */
    GHashTable *askers;      /* digest -> GPtrArray of routing ids (GBytes) that
                              * asked for an image this host did not have yet:
                              * they get its HAVE once it is added */
    GQueue waiting;          /* of Job * */
    guint32 next_req;
    guint mon_serial;
    gint64 last_complaint;
};

static GPrivate last_peer = G_PRIVATE_INIT(g_free);

/* ---- small helpers ---------------------------------------------------- */

static void net_log(PeerNet *net, PeerLogLevel level, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void
net_log(PeerNet *net, PeerLogLevel level, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *text = NULL;

    if (!net->cfg.log)
        return;
    va_start(ap, fmt);
    text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    net->cfg.log(level, text, net->cfg.log_data);
}

static guint64
mix64(guint64 z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static guint64
seed_of(const void *data, gsize len)
{
    guint8 d[SPORE_SHA256_BYTES];

    spore_sha256(data, len, d);
    return le_get64(d);
}

/* cache_digest: the 32 bytes of the id of @cache's image, the key of the
 * image table and of the protocol's image field */
static void
cache_digest(ChunkCache *cache, guint8 out[SPORE_SHA256_BYTES])
{
    spore_unhex(image_index_id(chunk_cache_index(cache)) + strlen("sha256:"),
                out, SPORE_SHA256_BYTES);
}

static guint
digest_hash(gconstpointer key)
{
    guint h;

    memcpy(&h, key, sizeof(h));
    return h;
}

static gboolean
digest_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, SPORE_SHA256_BYTES) == 0;
}

static void
wake(PeerNet *net)
{
    guint64 one = 1;

    if (write(net->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the loop is awake anyway */
    }
}

void
peer_info_clear(PeerInfo *info)
{
    g_clear_pointer(&info->name, g_free);
    g_clear_pointer(&info->endpoint, g_free);
    g_clear_pointer(&info->public_key, g_free);
}

void
peer_status_clear(PeerStatus *st)
{
    g_clear_pointer(&st->name, g_free);
    g_clear_pointer(&st->endpoint, g_free);
}

static void
job_unref(Job *job)
{
    if (!g_atomic_int_dec_and_test(&job->refs))
        return;
    g_clear_error(&job->error);
    g_free(job->buf);
    g_free(job->served_by);
    g_ptr_array_unref(job->tried);
    g_string_free(job->why, TRUE);
    g_free(job);
}

static void
peer_image_free(gpointer p)
{
    PeerImage *pi = p;

    g_free(pi->bits);
    g_free(pi);
}

static Peer *
peer_new(const PeerInfo *info)
{
    Peer *p = g_new0(Peer, 1);

    p->info.name = g_strdup(info->name);
    p->info.endpoint = g_strdup(info->endpoint);
    p->info.public_key = g_strdup(info->public_key);
    p->seed = seed_of(info->public_key, strlen(info->public_key));
    p->latency_us = LATENCY_INITIAL_US;
    p->bps = THROUGHPUT_INITIAL;
    p->delegate_us = DELEGATE_INITIAL_US;
    p->images = g_hash_table_new_full(digest_hash, digest_equal, g_free,
                                      peer_image_free);
    p->retired =
        g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    p->struck = g_hash_table_new(g_direct_hash, g_direct_equal);
    return p;
}

static void
peer_free(Peer *p)
{
    if (p->sock)
        zmq_close(p->sock);
    if (p->mon)
        zmq_close(p->mon);
    g_hash_table_unref(p->images);
    g_hash_table_unref(p->retired);
    g_hash_table_unref(p->struck);
    peer_info_clear(&p->info);
    g_free(p);
}

/* The key of a ban in net->bans and in the bans file. */
static char *
ban_key(Peer *p, NetImage *im)
{
    return g_strdup_printf("%s %s", image_index_id(im->idx) + strlen("sha256:"),
                           p->info.public_key);
}

/* Locked.  The peer's state for @im, created empty (banned if the bans
 * kept say so). */
static PeerImage *
peer_image(PeerNet *net, Peer *p, NetImage *im)
{
    PeerImage *pi = g_hash_table_lookup(p->images, im->digest);

    if (!pi) {
        g_autofree char *key = ban_key(p, im);

        pi = g_new0(PeerImage, 1);
        pi->banned = g_hash_table_contains(net->bans, key);
        g_hash_table_insert(p->images,
                            g_memdup2(im->digest, SPORE_SHA256_BYTES), pi);
    }
    return pi;
}

/* Read the bans kept in net->bans_path into net->bans: lines of "IMAGEHEX
 * PEERKEY".  A missing file is no bans; a bad line is skipped. */
static void
bans_load(PeerNet *net)
{
    g_autofree char *text = NULL;
    g_autoptr(GError) err = NULL;
    g_auto(GStrv) lines = NULL;
    gsize len;

    if (!net->bans_path || !g_file_test(net->bans_path, G_FILE_TEST_EXISTS))
        return;
    if (!spore_file_read_bounded(net->bans_path, BANS_FILE_MAX_BYTES, &text,
                                 &len, &err)) {
        net_log(net, PEER_LOG_WARNING, "cannot read the peer bans: %s",
                err->message);
        return;
    }
    lines = g_strsplit(text, "\n", -1);
    for (guint k = 0; lines[k]; k++) {
        const char *l = lines[k];

        if (strlen(l) == 2 * SPORE_SHA256_BYTES + 1 + PEER_KEY_CHARS &&
            l[2 * SPORE_SHA256_BYTES] == ' ')
            g_hash_table_add(net->bans, g_strdup(l));
    }
}

/* Locked.  Write net->bans to net->bans_path (atomically). */
static void
bans_save(PeerNet *net)
{
    g_autoptr(GString) text = g_string_new(NULL);
    g_autofree gpointer *keys = NULL;
    g_autoptr(GError) err = NULL;
    guint n;

    if (!net->bans_path)
        return;
    keys = g_hash_table_get_keys_as_array(net->bans, &n);
    for (guint k = 0; k < n; k++)
        g_string_append_printf(text, "%s\n", (char *)keys[k]);
    if (!spore_file_write_atomic(net->bans_path, text->str, text->len, 0600,
                                 &err))
        net_log(net, PEER_LOG_WARNING,
                "cannot keep the peer bans: %s; they last until a restart",
                err->message);
}

/* Locked.  A strike against @p for @im (invariant 5): @what went wrong
 * with chunk @i (G_MAXUINT64: not known).  The chunk is no longer
 * expected of it; at strikes_max it is banned for the image, and the ban
 * is kept. */
static void
peer_strike(PeerNet *net, Peer *p, NetImage *im, guint64 i, const char *what)
{
    PeerImage *pi = peer_image(net, p, im);
    g_autofree char *chunk = NULL;

    p->bad_chunks++;
    net->bad_chunks++;
    pi->probation = true;
    if (pi->bits && i < im->chunks)
        pi->bits[i / 8] &= (guint8) ~(1u << (i % 8));
    if (pi->banned)
        return;
    if (i != G_MAXUINT64)
        chunk = g_strdup_printf("chunk %" G_GUINT64_FORMAT " of ", i);
    if (++pi->strikes < net->cfg.strikes_max) {
        net_log(net, PEER_LOG_WARNING,
                "peer %s: %simage %.12s: %s (strike %u of %u)", p->info.name,
                chunk ? chunk : "", image_index_id(im->idx) + 7, what,
                pi->strikes, net->cfg.strikes_max);
        return;
    }
    pi->banned = true;
    net_log(net, PEER_LOG_WARNING,
            "peer %s: banned for image %.12s after %u strikes (the last: "
            "%s%s)",
            p->info.name, image_index_id(im->idx) + 7, pi->strikes,
            chunk ? chunk : "", what);
    g_hash_table_add(net->bans, ban_key(p, im));
    bans_save(net);
}

/* Locked.  @p missed the deadline of a request for @im (invariant 6):
 * it is dead for the image for a while, longer with each miss in a row;
 * back, it is on probation (a window of 1) until it answers. */
static void
peer_missed(PeerNet *net, Peer *p, NetImage *im)
{
    PeerImage *pi = peer_image(net, p, im);
    gint64 now = g_get_monotonic_time();

    p->missed++;
    if (pi->dead_until > now)
        return; /* one death for the requests that were out together */
    pi->misses++;
    pi->dead_backoff_us =
        CLAMP(pi->dead_backoff_us * 2, IMAGE_DEAD_MIN_US, IMAGE_DEAD_MAX_US);
    pi->dead_until = now + pi->dead_backoff_us;
    net_log(net, PEER_LOG_WARNING,
            "peer %s: missed a deadline for image %.12s (%u in a row): not "
            "asked for it for %" G_GINT64_FORMAT " s",
            p->info.name, image_index_id(im->idx) + 7, pi->misses,
            pi->dead_backoff_us / G_USEC_PER_SEC);
}

/* Locked.  @p answered a request for @im in time and as asked. */
static void
peer_answered(PeerNet *net, Peer *p, NetImage *im)
{
    PeerImage *pi = peer_image(net, p, im);

    p->last_answer = g_get_monotonic_time();
    p->lagging = false;
    pi->misses = 0;
    pi->dead_backoff_us = 0;
}

/* Loop, locked.  Request @req_id of @p ended unanswered: its answer may
 * still come, late, and is then no strike. */
static void
retire(Peer *p, guint32 req_id)
{
    gint64 *until;

    if (g_hash_table_size(p->retired) >= RETIRED_MAX)
        return;
    until = g_new(gint64, 1);
    *until = g_get_monotonic_time() + RETIRED_KEEP_US;
    g_hash_table_replace(p->retired, GUINT_TO_POINTER(req_id), until);
}

static bool
bit_get(const guint8 *bits, guint64 i)
{
    return (bits[i / 8] >> (i % 8)) & 1;
}

/* Locked.  Whether @p may be asked anything about @im: connected, not
 * dead, not lagging, its bitmap known, neither banned nor dead for @im. */
static bool
peer_usable(Peer *p, NetImage *im)
{
    PeerImage *pi;

    if (!p->connected || p->dead || p->lagging)
        return false;
    pi = g_hash_table_lookup(p->images, im->digest);
    return pi && pi->bits && !pi->banned &&
           pi->dead_until <= g_get_monotonic_time();
}

/* Locked.  Whether @p's window is full for @im: cfg.window requests
 * outstanding, or one while it is on probation after a strike or a missed
 * deadline. */
static bool
window_full(PeerNet *net, Peer *p, NetImage *im)
{
    PeerImage *pi = g_hash_table_lookup(p->images, im->digest);

    if (pi && (pi->probation || pi->misses))
        return p->outstanding >= 1;
    return p->outstanding >= net->cfg.window;
}

static bool
peer_holds(Peer *p, NetImage *im, guint64 i)
{
    PeerImage *pi;

    if (!peer_usable(p, im))
        return false;
    pi = g_hash_table_lookup(p->images, im->digest);
    return bit_get(pi->bits, i);
}

/* Locked.  The expected time for @p to deliver @len more bytes. */
static double
peer_score(Peer *p, gsize len)
{
    return p->latency_us +
           (double)(p->outstanding + 1) * (double)len / p->bps * G_USEC_PER_SEC;
}

static bool
tried(Job *job, Peer *p)
{
    for (guint k = 0; k < job->tried->len; k++) {
        if (g_str_equal(job->tried->pdata[k], p->info.name))
            return true;
    }
    return false;
}

/*
 * Locked.  The host that fetches chunk @i of @im from the origin for the
 * site: the highest rendezvous score among this host and the usable peers
 * that have the image.  NULL when it is this host.
 */
static Peer *
origin_fetcher(PeerNet *net, NetImage *im, guint64 i)
{
    guint64 key = mix64(im->seed ^ i);
    guint64 best_score = mix64(net->self_seed ^ key);
    Peer *best = NULL;

    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        guint64 s;

        if (!peer_usable(p, im))
            continue;
        s = mix64(p->seed ^ key);
        if (s > best_score) {
            best_score = s;
            best = p;
        }
    }
    return best;
}

/*
 * Locked.  Whether a connected peer's bitmap of @im is still to come: not
 * asked yet (the image was just added) or asked less than HAVE_WAIT_US ago.
 * A fetch then waits for it rather than going to the origin at once.
 */
static bool
have_pending(PeerNet *net, NetImage *im)
{
    gint64 now = g_get_monotonic_time();

    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        PeerImage *pi;

        if (!p->connected || p->dead)
            continue;
        pi = g_hash_table_lookup(p->images, im->digest);
        if (!pi)
            return now - im->added < HAVE_WAIT_US;
        if (!pi->bits && !pi->unknown &&
            (pi->asked_at == 0 || now - pi->asked_at < HAVE_WAIT_US))
            return true;
    }
    return false;
}

/* Locked.  Whether a peer asked this host to fetch @i lately. */
static bool
delegated_here(NetImage *im, guint64 i)
{
    gint64 *until = g_hash_table_lookup(im->delegated_here, &i);

    return until && *until > g_get_monotonic_time();
}

/* Locked.  The best peer holding @i not tried by @job (NULL: none); sets
 * *ret_full when holders exist whose window is full. */
static Peer *
best_holder(PeerNet *net, NetImage *im, guint64 i, Job *job, bool *ret_full)
{
    Peer *best = NULL;
    double best_score = 0;

    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        double s;

        if (!peer_holds(p, im, i) || (job && tried(job, p)))
            continue;
        if (window_full(net, p, im)) {
            if (ret_full)
                *ret_full = true;
            continue;
        }
        s = peer_score(p, image_index_chunk_len(im->idx, i));
        if (!best || s < best_score) {
            best = p;
            best_score = s;
        }
    }
    return best;
}

/* ---- sending ----------------------------------------------------------- */

static bool
send_msg(void *sock, GBytes *rid, const PeerMsg *msg, const void *payload,
         gssize payload_len)
{
    guint8 hdr[PEER_HEADER_BYTES];
    int more = payload_len >= 0 ? ZMQ_SNDMORE : 0;

    peer_msg_encode(msg, hdr);
    if (rid && zmq_send(sock, g_bytes_get_data(rid, NULL),
                        g_bytes_get_size(rid), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return false;
    if (zmq_send(sock, hdr, sizeof(hdr), more | ZMQ_DONTWAIT) < 0)
        return false;
    if (payload_len >= 0 &&
        zmq_send(sock, payload, (size_t)payload_len, ZMQ_DONTWAIT) < 0)
        return false;
    return true;
}

static void
send_have_req(PeerNet *net, Peer *p, NetImage *im)
{
    PeerMsg m = {.type = PEER_MSG_HAVE_REQ};
    PeerImage *pi = peer_image(net, p, im);

    memcpy(m.image, im->digest, SPORE_SHA256_BYTES);
    m.req_id = ++net->next_req;
    if (pi->have_req_id)
        retire(p, pi->have_req_id); /* its answer may still come */
    pi->asked_at = g_get_monotonic_time();
    pi->have_req_id = m.req_id;
    send_msg(p->sock, NULL, &m, NULL, -1);
}

/* ---- jobs: planning (loop, locked) -------------------------------------- */

static void
job_finish(PeerNet *net, Job *job, bool ok, const char *why)
{
    if (job->done)
        return;
    job->done = true;
    job->ok = ok;
    if (!ok)
        job->error = g_error_new(
            SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
            "peers: chunk %" G_GUINT64_FORMAT " not available: %s%s%s",
            job->chunk, why, job->why->len ? "; " : "", job->why->str);
    g_cond_broadcast(&net->job_done);
}

static void
send_get(PeerNet *net, Job *job, Peer *p, bool fetch_flag)
{
    Outstanding *o = g_new0(Outstanding, 1);
    PeerMsg m = {.type = PEER_MSG_GET};
    gint64 now = g_get_monotonic_time();

    o->req_id = ++net->next_req;
    if (o->req_id == 0)
        o->req_id = ++net->next_req;
    o->job = job;
    g_atomic_int_inc(&job->refs);
    o->peer = p;
    o->sent_at = now;
    o->fetch_flag = fetch_flag;
    if (fetch_flag) {
        /* its time is the peer's fetch from the origin, as measured */
        double expect = p->latency_us + p->delegate_us;

        o->hedge_at =
            now + MAX((gint64)net->cfg.hedge_ms * 1000, (gint64)(2 * expect));
        o->deadline_at = now + MIN(MAX(DEADLINE_FLOOR_US,
                                       (gint64)(DEADLINE_FACTOR * expect)),
                                   (gint64)net->cfg.delegate_ms * 1000);
    } else {
        double expect = peer_score(p, job->len);

        o->hedge_at = now + MAX((gint64)net->cfg.hedge_ms * 1000,
                                (gint64)(4 * p->latency_us));
        o->deadline_at =
            now + MAX(DEADLINE_FLOOR_US, (gint64)(DEADLINE_FACTOR * expect));
    }
    m.flags = fetch_flag ? PEER_GET_FETCH : 0;
    m.req_id = o->req_id;
    memcpy(m.image, job->im->digest, SPORE_SHA256_BYTES);
    m.chunk = job->chunk;
    g_ptr_array_add(job->tried, g_strdup(p->info.name));
    job->sent++;
    p->outstanding++;
    g_hash_table_insert(net->outstanding, GUINT_TO_POINTER(o->req_id), o);
    if (!send_msg(p->sock, NULL, &m, NULL, -1))
        o->hedge_at = now; /* could not even queue it: hedge at once */
}

/* Plan @job: send it, park it, or finish it failed.  Locked. */
static void
plan(PeerNet *net, Job *job)
{
    bool full = false;
    Peer *p;

    if (job->done || job->cancelled)
        return;
    p = best_holder(net, job->im, job->chunk, job, &full);
    if (p) {
        send_get(net, job, p, false);
        return;
    }
    if (full || have_pending(net, job->im)) {
        g_atomic_int_inc(&job->refs);
        g_queue_push_tail(&net->waiting, job);
        return;
    }
    if (!delegated_here(job->im, job->chunk)) {
        p = origin_fetcher(net, job->im, job->chunk);
        if (p && !tried(job, p)) {
            send_get(net, job, p, true);
            return;
        }
    }
    job_finish(net, job, false,
               job->tried->len ? "every peer asked failed"
                               : "no peer holds it");
}

/* Outstanding @o is over (answered, timed out, or its peer died). */
static void
outstanding_end(PeerNet *net, Outstanding *o, bool replan)
{
    Job *job = o->job;

    g_hash_table_steal(net->outstanding, GUINT_TO_POINTER(o->req_id));
    o->peer->outstanding--;
    job->sent--;
    if (replan && job->sent == 0)
        plan(net, job);
    job_unref(job);
    g_free(o);
}

/* Jobs parked for a window: plan those that can go now.  Locked. */
static void
plan_waiting(PeerNet *net)
{
    guint n = g_queue_get_length(&net->waiting);

    for (guint k = 0; k < n; k++) {
        Job *job = g_queue_pop_head(&net->waiting);

        plan(net, job); /* may park it again */
        job_unref(job);
    }
}

/* ---- the server side (loop) --------------------------------------------- */

static Peer *
peer_by_name(PeerNet *net, const char *name)
{
    for (guint k = 0; name && k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        if (g_str_equal(p->info.name, name))
            return p;
    }
    return NULL;
}

static bool
complain_allowed(gint64 *last)
{
    gint64 now = g_get_monotonic_time();

    if (*last && now - *last < COMPLAINT_EVERY_US)
        return false;
    *last = now;
    return true;
}

static void
server_err(PeerNet *net, GBytes *rid, const PeerMsg *req, PeerErrCode code)
{
    PeerMsg m = *req;

    m.type = PEER_MSG_ERR;
    m.flags = code;
    if (req->type == PEER_MSG_HAVE_REQ)
        m.chunk = 0;
    send_msg(net->server, rid, &m, NULL, -1);
}

/* Send chunk @req->chunk of @im, read and verified now; ERR if it cannot */
static void
server_send_chunk(PeerNet *net, GBytes *rid, const PeerMsg *req, NetImage *im,
                  const char *who)
{
    gsize len = image_index_chunk_len(im->idx, req->chunk);
    g_autofree guint8 *buf = g_malloc(len);
    g_autoptr(GError) err = NULL;
    PeerMsg m = *req;
    Peer *p;

    if (!chunk_cache_read(im->cache, req->chunk, buf, true, &err)) {
        server_err(net, rid, req, PEER_ERR_NOT_PRESENT);
        return;
    }
    m.type = PEER_MSG_DATA;
    m.flags = 0;
    if (!send_msg(net->server, rid, &m, buf, (gssize)len))
        return;
    g_mutex_lock(&net->lock);
    if ((p = peer_by_name(net, who))) {
        p->chunks_out++;
        p->bytes_out += len;
    }
    g_mutex_unlock(&net->lock);
}

typedef struct {
    PeerNet *net;
    GBytes *rid;
    char *who;
    PeerMsg msg;
    NetImage *im;
} FetchTask;

/* On the pool: fetch a chunk a peer asked us to fetch, tell the loop. */
static void
fetch_task_run(gpointer data, gpointer user)
{
    FetchTask *t = data;
    PeerNet *net = t->net;
    gint64 deadline =
        g_get_monotonic_time() + (gint64)net->cfg.delegate_ms * 1000;
    Cmd *cmd = g_new0(Cmd, 1);

    cmd->kind = CMD_FETCHED;
    cmd->rid = t->rid;
    cmd->who = t->who;
    cmd->msg = t->msg;
    cmd->im = t->im;
    cmd->ok = fetch_engine_get(t->im->engine, t->msg.chunk,
                               FETCH_PRIORITY_DEMAND, deadline, NULL);
    g_mutex_lock(&net->lock);
    net->pool_queued--;
    g_queue_push_tail(&net->inbox, cmd);
    g_mutex_unlock(&net->lock);
    wake(net);
    g_free(t);
}

static void
server_have(PeerNet *net, GBytes *rid, const PeerMsg *req, NetImage *im)
{
    g_autofree guint8 *bits = g_malloc(im->bitmap_bytes);
    PeerMsg m = *req;

    if (g_hash_table_size(im->subscribers) < SUBSCRIBERS_MAX)
        g_hash_table_add(im->subscribers, g_bytes_ref(rid));
    chunk_cache_present_copy(im->cache, bits);
    m.type = PEER_MSG_HAVE;
    m.chunk = im->chunks;
    send_msg(net->server, rid, &m, bits, (gssize)im->bitmap_bytes);
}

static void
server_get(PeerNet *net, GBytes *rid, const PeerMsg *req, NetImage *im,
           const char *who)
{
    FetchTask *t;

    if (req->chunk >= im->chunks) {
        server_err(net, rid, req, PEER_ERR_BAD_REQUEST);
        return;
    }
    if (chunk_cache_has(im->cache, req->chunk)) {
        server_send_chunk(net, rid, req, im, who);
        return;
    }
    if (!(req->flags & PEER_GET_FETCH)) {
        server_err(net, rid, req, PEER_ERR_NOT_PRESENT);
        return;
    }
    g_mutex_lock(&net->lock);
    if (net->pool_queued >= FETCH_POOL_QUEUED_MAX) {
        g_mutex_unlock(&net->lock);
        server_err(net, rid, req, PEER_ERR_BUSY);
        return;
    }
    net->pool_queued++;
    {
        guint64 *key = g_new(guint64, 1);
        gint64 *until = g_new(gint64, 1);

        *key = req->chunk;
        *until = g_get_monotonic_time() + DELEGATED_HOLD_US;
        g_hash_table_replace(im->delegated_here, key, until);
    }
    g_mutex_unlock(&net->lock);
    t = g_new0(FetchTask, 1);
    t->net = net;
    t->rid = g_bytes_ref(rid);
    t->who = g_strdup(who);
    t->msg = *req;
    t->im = im;
    g_thread_pool_push(net->pool, t, NULL);
}

static void
server_fetched(PeerNet *net, Cmd *cmd)
{
    if (cmd->ok)
        server_send_chunk(net, cmd->rid, &cmd->msg, cmd->im, cmd->who);
    else
        server_err(net, cmd->rid, &cmd->msg, PEER_ERR_FETCH_FAILED);
}

static NetImage *
image_lookup(PeerNet *net, const guint8 *digest)
{
    NetImage *im;

    g_mutex_lock(&net->lock);
    im = g_hash_table_lookup(net->images, digest);
    g_mutex_unlock(&net->lock);
    return im;
}

/* Read one whole message (up to @max frames kept) from @sock. */
static int
recv_frames(void *sock, zmq_msg_t *frames, int max, int *ret_total)
{
    int n = 0, total = 0, more = 1;

    while (more) {
        zmq_msg_t extra, *f = n < max ? &frames[n] : &extra;

        zmq_msg_init(f);
        if (zmq_msg_recv(f, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(f);
            break;
        }
        total++;
        more = zmq_msg_more(f);
        if (n < max)
            n++;
        else
            zmq_msg_close(f);
    }
    *ret_total = total;
    return n;
}

/* A peer asked for an image this host lacks: answer it when it is added.
 * Bounded: SUBSCRIBERS_MAX askers per image, PEER_PEERS_MAX images. */
static void
remember_asker(PeerNet *net, const PeerMsg *req, GBytes *rid)
{
    GPtrArray *list = g_hash_table_lookup(net->askers, req->image);

    if (!list) {
        if (g_hash_table_size(net->askers) >= PEER_PEERS_MAX)
            return;
        list = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
        g_hash_table_insert(net->askers,
                            g_memdup2(req->image, SPORE_SHA256_BYTES), list);
    }
    for (guint k = 0; k < list->len; k++) {
        if (g_bytes_equal(list->pdata[k], rid))
            return;
    }
    if (list->len < SUBSCRIBERS_MAX)
        g_ptr_array_add(list, g_bytes_ref(rid));
}

/* Images added since peers asked for them: send those peers their HAVE. */
static void
answer_askers(PeerNet *net)
{
    GHashTableIter it;
    gpointer key, value;

    g_hash_table_iter_init(&it, net->askers);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        GPtrArray *list = value;
        NetImage *im = image_lookup(net, key);
        PeerMsg m = {.type = PEER_MSG_HAVE_REQ};

        if (!im)
            continue;
        memcpy(m.image, im->digest, SPORE_SHA256_BYTES);
        for (guint k = 0; k < list->len; k++)
            server_have(net, list->pdata[k], &m, im);
        g_hash_table_iter_remove(&it);
    }
}

static void
server_drain(PeerNet *net)
{
    for (int burst = 0; burst < RECV_BURST_MAX; burst++) {
        zmq_msg_t f[3];
        int total = 0;
        int n = recv_frames(net->server, f, 3, &total);
        g_autoptr(GError) err = NULL;
        g_autoptr(GBytes) rid = NULL;
        g_autofree char *who = NULL;
        PeerMsg req;
        NetImage *im;

        if (n == 0)
            return;
        rid = g_bytes_new(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]));
        if (n >= 2) {
            const char *user = zmq_msg_gets(&f[1], "User-Id");
            who = g_strdup(user ? user : "?");
        } else {
            who = g_strdup("?");
        }
        if (total > 3 || n < 2)
            g_set_error(&err, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "message of %d frames", total - 1);
        else
            peer_msg_decode(zmq_msg_data(&f[1]), zmq_msg_size(&f[1]),
                            n == 3 ? (gssize)zmq_msg_size(&f[2]) : -1, &req,
                            &err);
        if (!err && req.type != PEER_MSG_HAVE_REQ && req.type != PEER_MSG_GET)
            g_set_error(&err, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "%s is not a request", peer_msg_type_name(req.type));
        if (err) {
            Peer *p;
            gint64 *last;

            g_mutex_lock(&net->lock);
            p = peer_by_name(net, who);
            last = p ? &p->last_complaint : &net->last_complaint;
            if (complain_allowed(last))
                net_log(net, PEER_LOG_WARNING,
                        "peer %s: dropped a malformed request: %s", who,
                        err->message);
            g_mutex_unlock(&net->lock);
        } else if (!(im = image_lookup(net, req.image))) {
            server_err(net, rid, &req, PEER_ERR_UNKNOWN_IMAGE);
            if (req.type == PEER_MSG_HAVE_REQ)
                remember_asker(net, &req, rid);
        } else if (req.type == PEER_MSG_HAVE_REQ) {
            server_have(net, rid, &req, im);
        } else {
            server_get(net, rid, &req, im, who);
        }
        for (int k = 0; k < n; k++)
            zmq_msg_close(&f[k]);
    }
}

/* Push the chunks that became present to the subscribers of @im. */
static void
announce(PeerNet *net, NetImage *im)
{
    g_autofree guint8 *now = g_malloc(im->bitmap_bytes);
    g_autofree guint8 *list = g_malloc(PEER_UPDATE_CHUNKS_MAX * 8);
    guint n = 0;
    GHashTableIter it;
    gpointer key;

    chunk_cache_present_copy(im->cache, now);
    if (g_hash_table_size(im->subscribers) == 0) {
        /* a subscriber's HAVE will carry all of it */
        memcpy(im->advertised, now, im->bitmap_bytes);
        return;
    }
    for (gsize b = 0; b < im->bitmap_bytes; b++) {
        guint8 fresh = now[b] & (guint8)~im->advertised[b];

        for (int bit = 0; fresh && bit < 8; bit++) {
            if (!((fresh >> bit) & 1))
                continue;
            le_put64(list + 8 * n, (guint64)b * 8 + (guint)bit);
            if (++n == PEER_UPDATE_CHUNKS_MAX)
                break;
        }
        if (n == PEER_UPDATE_CHUNKS_MAX)
            break; /* the rest goes in the next tick */
        im->advertised[b] |= fresh;
    }
    if (n == 0)
        return;
    if (n == PEER_UPDATE_CHUNKS_MAX) {
        /* mark exactly what the list holds as announced */
        for (guint k = 0; k < n; k++) {
            guint64 c = le_get64(list + 8 * k);
            im->advertised[c / 8] |= (guint8)(1u << (c % 8));
        }
    }
    g_hash_table_iter_init(&it, im->subscribers);
    while (g_hash_table_iter_next(&it, &key, NULL)) {
        PeerMsg m = {.type = PEER_MSG_HAVE_UPDATE, .chunk = n};

        memcpy(m.image, im->digest, SPORE_SHA256_BYTES);
        if (!send_msg(net->server, key, &m, list, (gssize)n * 8) &&
            zmq_errno() == EHOSTUNREACH)
            g_hash_table_iter_remove(&it); /* gone */
    }
}

/* ---- the client side (loop) --------------------------------------------- */

static void
peer_complain(PeerNet *net, Peer *p, const char *what, GError *err)
{
    if (complain_allowed(&p->last_complaint))
        net_log(net, PEER_LOG_WARNING, "peer %s: dropped %s: %s", p->info.name,
                what, err->message);
}

static void
ewma(double *v, double sample)
{
    *v = (1 - EWMA_WEIGHT) * *v + EWMA_WEIGHT * sample;
}

/* Locked. */
static void
client_have(PeerNet *net, Peer *p, const PeerMsg *m, zmq_msg_t *payload)
{
    NetImage *im = g_hash_table_lookup(net->images, m->image);
    g_autoptr(GError) err = NULL;
    PeerImage *pi;

    if (!im)
        return; /* not ours (any more) */
    pi = peer_image(net, p, im);
    if (m->type == PEER_MSG_HAVE) {
        if (m->chunk != im->chunks) {
            g_set_error(&err, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "HAVE for %" G_GUINT64_FORMAT
                        " chunks, the image has %" G_GUINT64_FORMAT,
                        m->chunk, im->chunks);
            peer_complain(net, p, "a bitmap", err);
            return;
        }
        /* bits past the last chunk are not chunks: they must be 0
         * (invariant 3) */
        if (im->chunks % 8 &&
            (((const guint8 *)zmq_msg_data(payload))[im->bitmap_bytes - 1] &
             (guint8) ~((1u << (im->chunks % 8)) - 1))) {
            g_set_error(&err, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "HAVE sets bits past chunk %" G_GUINT64_FORMAT,
                        im->chunks - 1);
            peer_complain(net, p, "a bitmap", err);
            return;
        }
        g_free(pi->bits);
        pi->bits = g_memdup2(zmq_msg_data(payload), im->bitmap_bytes);
        pi->unknown = false;
        ewma(&p->latency_us, (double)(g_get_monotonic_time() - pi->asked_at));
        return;
    }
    /* HAVE_UPDATE */
    {
        const guint8 *list = zmq_msg_data(payload);

        for (guint64 k = 0; k < m->chunk; k++) {
            if (le_get64(list + 8 * k) >= im->chunks) {
                g_set_error(&err, SPORE_ERROR, SPORE_ERROR_INVALID,
                            "HAVE_UPDATE names chunk %" G_GUINT64_FORMAT
                            " past the image's end",
                            le_get64(list + 8 * k));
                peer_complain(net, p, "an update", err);
                return;
            }
        }
        if (!pi->bits)
            return; /* its HAVE comes first */
        for (guint64 k = 0; k < m->chunk; k++) {
            guint64 c = le_get64(list + 8 * k);
            pi->bits[c / 8] |= (guint8)(1u << (c % 8));
        }
    }
}

/*
 * Locked.  A DATA or ERR answering no outstanding request of @p.  A late
 * answer (its request retired) and an ERR answering a HAVE_REQ are no
 * fault; anything else is unasked: a strike for its image (invariant 5).
 * Returns whether the connection must be dropped: an unasked DATA.
 */
static bool
client_unmatched(PeerNet *net, Peer *p, const PeerMsg *m)
{
    NetImage *im = g_hash_table_lookup(net->images, m->image);
    PeerImage *pi = im ? g_hash_table_lookup(p->images, im->digest) : NULL;
    bool data = m->type == PEER_MSG_DATA;

    if (g_hash_table_remove(p->retired, GUINT_TO_POINTER(m->req_id)))
        return false; /* late: its request ended already */
    if (!data && pi && m->req_id == pi->have_req_id) {
        if (m->flags == PEER_ERR_UNKNOWN_IMAGE) {
            g_clear_pointer(&pi->bits, g_free);
            pi->unknown = true;
        }
        return false;
    }
    if (im) {
        peer_strike(net, p, im, m->chunk,
                    data ? "DATA nobody asked for" : "ERR nobody asked for");
    } else {
        g_autoptr(GError) err =
            g_error_new(SPORE_ERROR, SPORE_ERROR_INVALID,
                        "%s for an image this host does not have",
                        peer_msg_type_name(m->type));
        peer_complain(net, p, "an answer", err);
    }
    return data;
}

/* Locked.  A DATA or ERR from @p; returns whether the connection must be
 * dropped (a DATA larger than asked, or unasked). */
static bool
client_answer(PeerNet *net, Peer *p, const PeerMsg *m, zmq_msg_t *payload)
{
    Outstanding *o =
        g_hash_table_lookup(net->outstanding, GUINT_TO_POINTER(m->req_id));
    gint64 now = g_get_monotonic_time();
    gsize got = payload ? zmq_msg_size(payload) : 0;
    Job *job;

    if (m->type == PEER_MSG_DATA) {
        p->chunks_in++;
        p->bytes_in += got;
    }
    if (!o || o->peer != p)
        return client_unmatched(net, p, m);
    job = o->job;
    if (o->job->chunk != m->chunk ||
        memcmp(o->job->im->digest, m->image, SPORE_SHA256_BYTES) != 0) {
        peer_strike(net, p, job->im, job->chunk,
                    "the answer names another chunk or image");
        outstanding_end(net, o, true);
        return m->type == PEER_MSG_DATA;
    }
    if (m->type == PEER_MSG_ERR) {
        PeerImage *pi = peer_image(net, p, job->im);

        if (!o->fetch_flag)
            ewma(&p->latency_us, (double)(now - o->sent_at));
        peer_answered(net, p, job->im);
        if ((m->flags == PEER_ERR_NOT_PRESENT ||
             m->flags == PEER_ERR_FETCH_FAILED) &&
            pi->bits)
            pi->bits[job->chunk / 8] &= (guint8) ~(1u << (job->chunk % 8));
        if (m->flags == PEER_ERR_UNKNOWN_IMAGE) {
            g_clear_pointer(&pi->bits, g_free);
            pi->unknown = true;
        }
        g_string_append_printf(job->why, "%s%s: %s", job->why->len ? ", " : "",
                               p->info.name, peer_err_name(m->flags));
        outstanding_end(net, o, true);
        return false;
    }
    /* DATA */
    if (got != job->len) {
        g_autofree char *what = g_strdup_printf(
            "%zu bytes, %zu asked%s", got, job->len,
            got > job->len ? ": the connection is dropped" : "");

        peer_strike(net, p, job->im, job->chunk, what);
        g_string_append_printf(job->why, "%s%s: %s", job->why->len ? ", " : "",
                               p->info.name, what);
        outstanding_end(net, o, true);
        return got > job->len;
    }
    p->dead_backoff_us = 0;
    peer_answered(net, p, job->im);
    peer_image(net, p, job->im)->probation = false;
    {
        double elapsed = (double)MAX(now - o->sent_at, 1);

        if (o->fetch_flag) {
            ewma(&p->delegate_us, elapsed);
        } else {
            ewma(&p->latency_us, elapsed);
            ewma(&p->bps, (double)job->len / (elapsed / G_USEC_PER_SEC));
        }
    }
    if (!job->done && !job->cancelled) {
        memcpy(job->buf, zmq_msg_data(payload), job->len);
        g_free(job->served_by);
        job->served_by = g_strdup(p->info.name);
        job_finish(net, job, true, NULL);
    }
    outstanding_end(net, o, false);
    return false;
}

static void peer_drop(PeerNet *net, Peer *p, const char *why);

static void
peer_drain(PeerNet *net, Peer *p)
{
    for (int burst = 0; burst < RECV_BURST_MAX; burst++) {
        bool drop = false;
        zmq_msg_t f[2];
        int total = 0;
        int n = recv_frames(p->sock, f, 2, &total);
        g_autoptr(GError) err = NULL;
        PeerMsg m;

        if (n == 0)
            return;
        if (total > 2)
            g_set_error(&err, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "message of %d frames", total);
        else
            peer_msg_decode(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]),
                            n == 2 ? (gssize)zmq_msg_size(&f[1]) : -1, &m,
                            &err);
        g_mutex_lock(&net->lock);
        p->last_heard = g_get_monotonic_time();
        if (p->dead && p->connected && p->last_heard >= p->dead_until) {
            p->dead = false;
            net_log(net, PEER_LOG_INFO, "peer %s: answering again",
                    p->info.name);
        }
        if (err)
            peer_complain(net, p, "a message", err);
        else if (m.type == PEER_MSG_HAVE || m.type == PEER_MSG_HAVE_UPDATE) {
            client_have(net, p, &m, &f[1]);
            if (m.type == PEER_MSG_HAVE)
                plan_waiting(net); /* fetches that waited for it */
        } else if (m.type == PEER_MSG_DATA || m.type == PEER_MSG_ERR)
            drop = client_answer(net, p, &m, n == 2 ? &f[1] : NULL);
        else if (complain_allowed(&p->last_complaint))
            net_log(net, PEER_LOG_WARNING, "peer %s: dropped an unasked %s",
                    p->info.name, peer_msg_type_name(m.type));
        if (drop)
            peer_drop(net, p,
                      "it sent DATA larger than asked or that nobody asked "
                      "for");
        g_mutex_unlock(&net->lock);
        for (int k = 0; k < n; k++)
            zmq_msg_close(&f[k]);
        if (drop)
            return;
    }
}

/* Locked.  @p is dead: plan its outstanding requests again, elsewhere;
 * their late answers are no strikes (retired). */
static void
peer_dies(PeerNet *net, Peer *p, const char *why)
{
    GHashTableIter it;
    gpointer value;
    g_autoptr(GPtrArray) ended = g_ptr_array_new();

    if (!p->dead) {
        net_log(net, PEER_LOG_WARNING,
                "peer %s: %s; its %u outstanding requests go elsewhere",
                p->info.name, why, p->outstanding);
        /* not asked again for a while, longer each time it dies */
        p->dead_backoff_us = CLAMP(p->dead_backoff_us * 2, DEAD_BACKOFF_MIN_US,
                                   DEAD_BACKOFF_MAX_US);
        p->dead_until = g_get_monotonic_time() + p->dead_backoff_us;
    }
    p->dead = true;
    g_hash_table_iter_init(&it, net->outstanding);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Outstanding *o = value;
        if (o->peer == p)
            g_ptr_array_add(ended, o);
    }
    for (guint k = 0; k < ended->len; k++) {
        Outstanding *o = ended->pdata[k];

        g_string_append_printf(o->job->why, "%s%s: %s",
                               o->job->why->len ? ", " : "", p->info.name, why);
        retire(p, o->req_id);
        outstanding_end(net, o, true);
    }
}

/*
 * Loop, locked.  Close @p's connection because of what it sent (@why, a
 * strike is counted already): nothing more is read from it, its requests
 * go elsewhere, and a new socket is made after a backoff (1 s, doubling to
 * 30 s; reconnect_due).
 */
static void
peer_drop(PeerNet *net, Peer *p, const char *why)
{
    net_log(net, PEER_LOG_WARNING, "peer %s: dropped the connection: %s",
            p->info.name, why);
    p->connected = false;
    peer_dies(net, p, why);
    if (p->sock)
        zmq_close(g_steal_pointer(&p->sock));
    if (p->mon)
        zmq_close(g_steal_pointer(&p->mon));
    p->dropped_at = 0;
    g_hash_table_remove_all(p->struck);
    p->reconnect_backoff = CLAMP(p->reconnect_backoff * 2, REFUSED_RETRY_MIN_US,
                                 REFUSED_RETRY_MAX_US);
    p->reconnect_at = g_get_monotonic_time() + p->reconnect_backoff;
}

/* Locked.  @p's connection closed after its handshake: remember the
 * images it had requests for, in case libzmq ended the session for a
 * broken rule (check_protocol_drops). */
static void
note_disconnect(PeerNet *net, Peer *p)
{
    GHashTableIter it;
    gpointer value;

    p->dropped_at = g_get_monotonic_time();
    g_hash_table_iter_init(&it, net->outstanding);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Outstanding *o = value;

        if (o->peer == p)
            g_hash_table_add(p->struck, o->job->im);
    }
}

/*
 * Loop, locked.  libzmq ends a session without a reconnect attempt (no
 * ZMQ_EVENT_CONNECT_RETRIED) only on a protocol error: here, a frame over
 * the clients' ZMQ_MAXMSGSIZE (net->frame_limit) or a corrupt stream.
 * That is junk: a strike for each image the peer had requests for, a log
 * line, and a new socket after a backoff.
 */
static void
check_protocol_drops(PeerNet *net, gint64 now)
{
    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        g_autofree char *why = NULL;
        GHashTableIter it;
        gpointer key;

        if (!p->dropped_at || now - p->dropped_at < PROTOCOL_DROP_GRACE_US)
            continue;
        why = g_strdup_printf("a frame over %zu bytes or a corrupt stream "
                              "(libzmq closed the connection)",
                              net->frame_limit);
        g_hash_table_iter_init(&it, p->struck);
        while (g_hash_table_iter_next(&it, &key, NULL))
            peer_strike(net, p, key, G_MAXUINT64, why);
        peer_drop(net, p, why);
    }
}

static void
monitor_drain(PeerNet *net, Peer *p)
{
    for (;;) {
        zmq_msg_t f[2];
        int total = 0;
        int n = recv_frames(p->mon, f, 2, &total);
        guint16 event;

        if (n == 0)
            return;
        if (n >= 1 && zmq_msg_size(&f[0]) >= 2) {
            memcpy(&event, zmq_msg_data(&f[0]), sizeof(event));
            g_mutex_lock(&net->lock);
            if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
                GHashTableIter it;
                gpointer value;

                p->connected = true;
                p->dead = false;
                p->reconnect_backoff = 0;
                p->last_heard = g_get_monotonic_time();
                net_log(net, PEER_LOG_INFO, "peer %s: connected (%s)",
                        p->info.name, p->info.endpoint);
                g_hash_table_iter_init(&it, net->images);
                while (g_hash_table_iter_next(&it, NULL, &value))
                    send_have_req(net, p, value);
            } else if (event == ZMQ_EVENT_DISCONNECTED) {
                if (p->connected)
                    note_disconnect(net, p);
                p->connected = false;
                peer_dies(net, p, "disconnected");
            } else if (event == ZMQ_EVENT_CONNECT_RETRIED) {
                /* libzmq reconnects: the connection failed, the peer
                 * broke no rule */
                p->dropped_at = 0;
                g_hash_table_remove_all(p->struck);
            } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
                       event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
                p->reconnect_backoff =
                    CLAMP(p->reconnect_backoff * 2, REFUSED_RETRY_MIN_US,
                          REFUSED_RETRY_MAX_US);
                p->reconnect_at = g_get_monotonic_time() + p->reconnect_backoff;
                if (complain_allowed(&p->last_complaint))
                    net_log(net, PEER_LOG_WARNING,
                            "peer %s: handshake refused at %s (does it list "
                            "this host's key, and is its key right?)",
                            p->info.name, p->info.endpoint);
            }
            g_mutex_unlock(&net->lock);
        }
        for (int k = 0; k < n; k++)
            zmq_msg_close(&f[k]);
    }
}

/* Create @p's DEALER and monitor, connect.  Loop. */
static void
peer_connect(PeerNet *net, Peer *p)
{
    g_autofree char *mon_ep =
        g_strdup_printf("inproc://peer-monitor-%u", ++net->mon_serial);
    int one = 1;

    g_mutex_lock(&net->lock);
    p->frame_limit = net->frame_limit;
    g_mutex_unlock(&net->lock);
    p->sock = zmq_socket(net->zctx, ZMQ_DEALER);
    spore_zmq_socket_defaults(p->sock, (gint64)net->frame_limit);
    zmq_setsockopt(p->sock, ZMQ_CURVE_SERVERKEY, p->info.public_key,
                   PEER_KEY_CHARS);
    zmq_setsockopt(p->sock, ZMQ_CURVE_PUBLICKEY, net->cfg.public_key,
                   PEER_KEY_CHARS);
    zmq_setsockopt(p->sock, ZMQ_CURVE_SECRETKEY, net->cfg.secret_key,
                   PEER_KEY_CHARS);
    zmq_setsockopt(p->sock, ZMQ_IMMEDIATE, &one, sizeof(one));
    zmq_socket_monitor(p->sock, mon_ep,
                       ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
                           ZMQ_EVENT_CONNECT_RETRIED |
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                           ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL);
    p->mon = zmq_socket(net->zctx, ZMQ_PAIR);
    zmq_connect(p->mon, mon_ep);
    if (zmq_connect(p->sock, p->info.endpoint) != 0)
        net_log(net, PEER_LOG_WARNING, "peer %s: cannot connect to '%s': %s",
                p->info.name, p->info.endpoint, zmq_strerror(zmq_errno()));
}

static bool
same_peer(const Peer *p, const PeerInfo *info)
{
    return g_str_equal(p->info.name, info->name) &&
           g_str_equal(p->info.endpoint, info->endpoint) &&
           g_str_equal(p->info.public_key, info->public_key);
}

/* Apply a new peer list.  Loop. */
static void
apply_peers(PeerNet *net, GArray *infos)
{
    g_autoptr(GPtrArray) next = g_ptr_array_new();
    g_autoptr(GPtrArray) fresh = g_ptr_array_new();

    g_mutex_lock(&net->lock);
    for (guint k = 0; k < infos->len; k++) {
        PeerInfo *info = &g_array_index(infos, PeerInfo, k);
        Peer *keep = NULL;

        for (guint j = 0; j < net->peers->len && !keep; j++) {
            Peer *p = net->peers->pdata[j];
            if (p && same_peer(p, info)) {
                keep = p;
                net->peers->pdata[j] = NULL;
            }
        }
        if (!keep) {
            keep = peer_new(info);
            g_ptr_array_add(fresh, keep);
        }
        g_ptr_array_add(next, keep);
    }
    /* peers no longer listed: their requests go elsewhere, then they go */
    for (guint j = 0; j < net->peers->len; j++) {
        Peer *p = net->peers->pdata[j];
        if (!p)
            continue;
        peer_dies(net, p, "removed from the peer list");
    }
    {
        GPtrArray *old = net->peers;
        net->peers = g_ptr_array_ref(next);
        for (guint j = 0; j < old->len; j++) {
            if (old->pdata[j]) {
                net_log(net, PEER_LOG_INFO, "peer %s: removed",
                        ((Peer *)old->pdata[j])->info.name);
                peer_free(old->pdata[j]);
            }
        }
        g_ptr_array_unref(old);
    }
    g_mutex_unlock(&net->lock);
    for (guint k = 0; k < fresh->len; k++)
        peer_connect(net, fresh->pdata[k]);
}

/* ---- the loop ----------------------------------------------------------- */

static char *
zap_decide(const char *domain, const char *address, const char *mechanism,
           const char *key, const char **why, gpointer data)
{
    PeerNet *net = data;
    char *user = NULL;

    if (!g_str_equal(domain, PEER_ZAP_DOMAIN)) {
        *why = "unknown ZAP domain";
        return NULL;
    }
    g_mutex_lock(&net->lock);
    for (guint k = 0; k < net->peers->len && !user; k++) {
        Peer *p = net->peers->pdata[k];
        if (g_str_equal(p->info.public_key, key))
            user = g_strdup(p->info.name);
    }
    if (!user && complain_allowed(&net->last_complaint))
        net_log(net, PEER_LOG_WARNING,
                "refused a peer from %s: key %s is not in the peer list",
                address, key);
    g_mutex_unlock(&net->lock);
    if (!user)
        *why = "key not in the peer list";
    return user;
}

static void
handle_inbox(PeerNet *net)
{
    for (;;) {
        Cmd *cmd;

        g_mutex_lock(&net->lock);
        cmd = g_queue_pop_head(&net->inbox);
        if (cmd && cmd->kind == CMD_JOB) {
            plan(net, cmd->job);
            job_unref(cmd->job);
        }
        g_mutex_unlock(&net->lock);
        if (!cmd)
            return;
        if (cmd->kind == CMD_SET_PEERS) {
            apply_peers(net, cmd->peers);
            g_array_unref(cmd->peers);
        } else if (cmd->kind == CMD_FETCHED) {
            server_fetched(net, cmd);
            g_bytes_unref(cmd->rid);
            g_free(cmd->who);
        }
        g_free(cmd);
    }
}

/* Peers whose handshake was refused or whose connection was dropped: a
 * new socket, once it is time; peers whose socket's frame limit is below
 * net->frame_limit (an image with larger chunks was added): one now.
 * Loop, unlocked. */
static void
reconnect_due(PeerNet *net, gint64 now)
{
    gsize limit;

    g_mutex_lock(&net->lock);
    limit = net->frame_limit;
    g_mutex_unlock(&net->lock);
    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];

        if (p->sock && p->frame_limit < limit) {
            g_mutex_lock(&net->lock);
            p->connected = false;
            peer_dies(net, p, "reconnecting with a larger frame limit");
            g_mutex_unlock(&net->lock);
            p->reconnect_at = now;
        }
        if (!p->reconnect_at || now < p->reconnect_at)
            continue;
        p->reconnect_at = 0;
        if (p->sock)
            zmq_close(g_steal_pointer(&p->sock));
        if (p->mon)
            zmq_close(g_steal_pointer(&p->mon));
        peer_connect(net, p);
    }
}

/* Loop, locked.  Requests past their deadline end (invariant 6): a miss
 * for the peer, and the chunk is planned again at once. */
static void
end_missed(PeerNet *net, gint64 now)
{
    g_autoptr(GPtrArray) due = g_ptr_array_new();
    GHashTableIter it;
    gpointer value;

    g_hash_table_iter_init(&it, net->outstanding);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Outstanding *o = value;

        if (now >= o->deadline_at)
            g_ptr_array_add(due, o);
    }
    for (guint k = 0; k < due->len; k++) {
        Outstanding *o = due->pdata[k];
        Job *job = o->job;

        g_string_append_printf(job->why,
                               "%s%s: no answer in %" G_GINT64_FORMAT " ms",
                               job->why->len ? ", " : "", o->peer->info.name,
                               (o->deadline_at - o->sent_at) / 1000);
        peer_missed(net, o->peer, job->im);
        retire(o->peer, o->req_id);
        outstanding_end(net, o, true);
    }
}

/* Loop, locked.  A peer is lagging while a request to it is past its
 * hedge time and it has answered nothing since that request was sent: it
 * gets no new work (peer_usable) until it answers or the deadline ends
 * the request. */
static void
mark_lagging(PeerNet *net, gint64 now)
{
    GHashTableIter it;
    gpointer value;

    for (guint k = 0; k < net->peers->len; k++)
        ((Peer *)net->peers->pdata[k])->lagging = false;
    g_hash_table_iter_init(&it, net->outstanding);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Outstanding *o = value;

        if (now >= o->hedge_at && o->peer->last_answer < o->sent_at)
            o->peer->lagging = true;
    }
}

/* Loop, locked.  Requests past their hedge time: a plain one is asked of
 * the next holder too; a delegated one goes to the next holder or, when
 * there is none, back to the engine, which asks the origin. */
static void
hedge_due(PeerNet *net, gint64 now)
{
    g_autoptr(GPtrArray) due = g_ptr_array_new();
    GHashTableIter it;
    gpointer value;

    g_hash_table_iter_init(&it, net->outstanding);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Outstanding *o = value;
        if (!o->hedged && now >= o->hedge_at)
            g_ptr_array_add(due, o);
    }
    for (guint k = 0; k < due->len; k++) {
        Outstanding *o = due->pdata[k];
        Job *job = o->job;
        Peer *alt;

        o->hedged = true;
        if (job->done || job->cancelled)
            continue; /* its answer will just be dropped */
        alt = best_holder(net, job->im, job->chunk, job, NULL);
        if (alt) {
            o->peer->hedged++;
            send_get(net, job, alt, false);
        } else if (o->fetch_flag) {
            o->peer->hedged++;
            g_string_append_printf(job->why, "%s%s: slow to fetch it",
                                   job->why->len ? ", " : "",
                                   o->peer->info.name);
            job_finish(net, job, false, "the host asked to fetch it is slow");
        }
    }
}

/* Loop, locked.  Forget retired request ids past their keep time. */
static void
expire_retired(PeerNet *net, gint64 now)
{
    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        GHashTableIter it;
        gpointer value;

        g_hash_table_iter_init(&it, p->retired);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
            if (*(gint64 *)value < now)
                g_hash_table_iter_remove(&it);
        }
    }
}

/* Hedges, deadlines, dead peers, HAVE retries, announcements.  Loop. */
static void
tick(PeerNet *net)
{
    gint64 now = g_get_monotonic_time();
    GHashTableIter it;
    gpointer value;

    reconnect_due(net, now);

    g_mutex_lock(&net->lock);
    check_protocol_drops(net, now);
    /* dead peers: silent with plain requests outstanding */
    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        bool plain = false;

        g_hash_table_iter_init(&it, net->outstanding);
        while (!plain && g_hash_table_iter_next(&it, NULL, &value)) {
            Outstanding *o = value;
            plain = o->peer == p && !o->fetch_flag &&
                    now - MAX(o->sent_at, p->last_heard) >
                        (gint64)net->cfg.dead_ms * 1000;
        }
        if (plain)
            peer_dies(net, p, "no answer");
    }
    end_missed(net, now);
    mark_lagging(net, now);
    hedge_due(net, now);
    expire_retired(net, now);
    /* HAVE_REQ again where a peer lacked the image or never answered */
    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];

        g_hash_table_iter_init(&it, net->images);
        while (p->connected && g_hash_table_iter_next(&it, NULL, &value)) {
            PeerImage *pi = peer_image(net, p, value);
            bool revive = p->dead && now >= p->dead_until;
            if ((!pi->bits || revive) &&
                now - pi->asked_at > HAVE_RETRY_MS * 1000)
                send_have_req(net, p, value);
        }
    }
    plan_waiting(net);
    g_mutex_unlock(&net->lock);

    if (net->server)
        answer_askers(net);
    g_mutex_lock(&net->lock);
    g_hash_table_iter_init(&it, net->images);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        g_mutex_unlock(&net->lock);
        announce(net, value); /* images are never removed */
        g_mutex_lock(&net->lock);
    }
    g_mutex_unlock(&net->lock);
}

static bool
loop_setup(PeerNet *net, GError **error)
{
    int one = 1;
    char last[256];
    size_t last_len = sizeof(last);

    net->zctx = zmq_ctx_new();
    if (!net->cfg.listen)
        return true;
    net->zap = spore_zap_bind(net->zctx, error);
    if (!net->zap)
        return false;
    net->server = zmq_socket(net->zctx, ZMQ_ROUTER);
    spore_zmq_socket_defaults(net->server, SERVER_FRAME_MAX_BYTES);
    zmq_setsockopt(net->server, ZMQ_CURVE_SERVER, &one, sizeof(one));
    zmq_setsockopt(net->server, ZMQ_CURVE_SECRETKEY, net->cfg.secret_key,
                   PEER_KEY_CHARS);
    zmq_setsockopt(net->server, ZMQ_ZAP_DOMAIN, PEER_ZAP_DOMAIN,
                   strlen(PEER_ZAP_DOMAIN));
    zmq_setsockopt(net->server, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    if (zmq_setsockopt(net->server, ZMQ_ZAP_ENFORCE_DOMAIN, &one,
                       sizeof(one)) != 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "this libzmq does not enforce ZAP domains: %s",
                    zmq_strerror(zmq_errno()));
        return false;
    }
    if (zmq_bind(net->server, net->cfg.listen) != 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "cannot listen for peers on '%s': %s", net->cfg.listen,
                    zmq_strerror(zmq_errno()));
        return false;
    }
    if (zmq_getsockopt(net->server, ZMQ_LAST_ENDPOINT, last, &last_len) == 0)
        net->endpoint = g_strndup(last, last_len);
    /* libzmq closes a connection sending a frame over the limit without a
     * word: its monitor lets the server say so (server_monitor_drain) */
    zmq_socket_monitor(net->server, "inproc://peer-server-monitor",
                       ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED);
    net->server_mon = zmq_socket(net->zctx, ZMQ_PAIR);
    zmq_connect(net->server_mon, "inproc://peer-server-monitor");
    return true;
}

/* The text of the remote address of socket @fd, or NULL. */
static char *
fd_address(int fd)
{
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    char host[INET6_ADDRSTRLEN] = "";
    guint16 port;

    if (getpeername(fd, (struct sockaddr *)&sa, &len) != 0)
        return NULL;
    if (sa.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    } else if (sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    } else {
        return NULL;
    }
    return g_strdup_printf("%s:%u", host, port);
}

/*
 * The server's connections: remember the address of each accepted one,
 * and log each that closes (at most one line per COMPLAINT_EVERY_US).
 * libzmq gives no reason: a frame over SERVER_FRAME_MAX_BYTES ends the
 * connection just as the peer leaving does.  Loop.
 */
static void
server_monitor_drain(PeerNet *net)
{
    for (;;) {
        zmq_msg_t f[2];
        int total = 0;
        int n = recv_frames(net->server_mon, f, 2, &total);
        guint16 event;
        guint32 value;

        if (n == 0)
            return;
        if (zmq_msg_size(&f[0]) >= 6) {
            memcpy(&event, zmq_msg_data(&f[0]), sizeof(event));
            memcpy(&value, (guint8 *)zmq_msg_data(&f[0]) + 2, sizeof(value));
            if (event == ZMQ_EVENT_ACCEPTED) {
                char *addr = fd_address((int)value);

                if (addr &&
                    g_hash_table_size(net->conn_addrs) < 4 * PEER_PEERS_MAX)
                    g_hash_table_replace(net->conn_addrs,
                                         GUINT_TO_POINTER(value), addr);
                else
                    g_free(addr);
            } else if (event == ZMQ_EVENT_DISCONNECTED) {
                const char *addr = g_hash_table_lookup(net->conn_addrs,
                                                       GUINT_TO_POINTER(value));

                if (complain_allowed(&net->last_close_log))
                    net_log(net, PEER_LOG_INFO,
                            "peer connection from %s closed (it left, timed "
                            "out, or sent a frame over %u bytes)",
                            addr ? addr : "an unknown address",
                            SERVER_FRAME_MAX_BYTES);
                g_hash_table_remove(net->conn_addrs, GUINT_TO_POINTER(value));
            }
        }
        for (int k = 0; k < n; k++)
            zmq_msg_close(&f[k]);
    }
}

static void
fail_everything(PeerNet *net)
{
    Job *job;
    Cmd *cmd;
    GHashTableIter it;
    gpointer value;

    g_mutex_lock(&net->lock);
    while ((job = g_queue_pop_head(&net->waiting))) {
        job_finish(net, job, false, "the peer network stopped");
        job_unref(job);
    }
    g_hash_table_iter_init(&it, net->outstanding);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Outstanding *o = value;

        job_finish(net, o->job, false, "the peer network stopped");
        job_unref(o->job);
        g_free(o);
        g_hash_table_iter_steal(&it);
    }
    while ((cmd = g_queue_pop_head(&net->inbox))) {
        if (cmd->kind == CMD_JOB) {
            job_finish(net, cmd->job, false, "the peer network stopped");
            job_unref(cmd->job);
        } else if (cmd->kind == CMD_SET_PEERS) {
            g_array_unref(cmd->peers);
        } else {
            g_bytes_unref(cmd->rid);
            g_free(cmd->who);
        }
        g_free(cmd);
    }
    g_mutex_unlock(&net->lock);
}

static gpointer
loop_main(gpointer data)
{
    PeerNet *net = data;
    GError *err = NULL;
    bool ok = loop_setup(net, &err);
    gint64 next_tick = 0;

    g_mutex_lock(&net->lock);
    net->ready = true;
    net->start_error = err;
    g_cond_broadcast(&net->started);
    g_mutex_unlock(&net->lock);
    if (!ok)
        goto out;

    for (;;) {
        g_autofree zmq_pollitem_t *items = NULL;
        guint n = 0, n_peers;
        bool stop;
        gint64 now;

        g_mutex_lock(&net->lock);
        stop = net->stop;
        n_peers = net->peers->len;
        items = g_new0(zmq_pollitem_t, 4 + 2 * n_peers);
        items[n++] = (zmq_pollitem_t){.fd = net->wake_fd, .events = ZMQ_POLLIN};
        if (net->zap)
            items[n++] =
                (zmq_pollitem_t){.socket = net->zap, .events = ZMQ_POLLIN};
        if (net->server)
            items[n++] =
                (zmq_pollitem_t){.socket = net->server, .events = ZMQ_POLLIN};
        if (net->server_mon)
            items[n++] = (zmq_pollitem_t){.socket = net->server_mon,
                                          .events = ZMQ_POLLIN};
        for (guint k = 0; k < n_peers; k++) {
            Peer *p = net->peers->pdata[k];

            if (!p->sock)
                continue; /* dropped: a new one comes (reconnect_due) */
            items[n++] =
                (zmq_pollitem_t){.socket = p->sock, .events = ZMQ_POLLIN};
            items[n++] =
                (zmq_pollitem_t){.socket = p->mon, .events = ZMQ_POLLIN};
        }
        g_mutex_unlock(&net->lock);
        if (stop)
            break;

        zmq_poll(items, (int)n, LOOP_TICK_MS);
        {
            guint64 v;
            if (read(net->wake_fd, &v, sizeof(v)) < 0) {
                /* nothing to read: not woken */
            }
        }
        handle_inbox(net);
        if (net->zap)
            spore_zap_drain(net->zap, zap_decide, net);
        if (net->server)
            server_drain(net);
        if (net->server_mon)
            server_monitor_drain(net);
        /* the peer table only changes on this thread: no lock to walk it */
        for (guint k = 0; k < net->peers->len; k++) {
            Peer *p = net->peers->pdata[k];

            if (p->mon)
                monitor_drain(net, p);
            if (p->sock)
                peer_drain(net, p);
        }
        now = g_get_monotonic_time();
        if (now >= next_tick) {
            tick(net);
            next_tick = now + LOOP_TICK_MS * 1000;
        }
    }

out:
    fail_everything(net);
    g_mutex_lock(&net->lock);
    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        if (p->sock)
            zmq_close(g_steal_pointer(&p->sock));
        if (p->mon)
            zmq_close(g_steal_pointer(&p->mon));
    }
    g_mutex_unlock(&net->lock);
    if (net->server_mon)
        zmq_close(net->server_mon);
    if (net->server)
        zmq_close(net->server);
    if (net->zap)
        zmq_close(net->zap);
    zmq_ctx_term(net->zctx);
    return NULL;
}

/* ---- the API ------------------------------------------------------------ */

static bool
endpoint_valid(const char *ep)
{
    return ep && g_str_has_prefix(ep, "tcp://") && strlen(ep) < 256 &&
           strchr(ep + 6, ':');
}

static bool
key_valid(const char *key)
{
    guint8 raw[32];

    return key && strlen(key) == PEER_KEY_CHARS &&
           zmq_z85_decode(raw, key) != NULL;
}

PeerNet *
peer_net_new(const PeerNetConfig *config, GError **error)
{
    PeerNet *net;

    if (!key_valid(config->public_key) || !key_valid(config->secret_key)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the host's CURVE key pair is not valid");
        return NULL;
    }
    if (config->listen && !endpoint_valid(config->listen)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "peer listen address '%s' is not tcp://ADDRESS:PORT",
                    config->listen);
        return NULL;
    }
    net = g_new0(PeerNet, 1);
    net->cfg = *config;
    net->cfg.listen = g_strdup(config->listen);
    net->cfg.host_name =
        g_strdup(config->host_name ? config->host_name : "this host");
    net->cfg.window = config->window ? config->window : 16;
    net->cfg.hedge_ms = config->hedge_ms ? config->hedge_ms : 300;
    net->cfg.dead_ms = config->dead_ms ? config->dead_ms : 3000;
    net->cfg.strikes_max = config->strikes_max ? config->strikes_max : 3;
    net->cfg.delegate_ms = config->delegate_ms ? config->delegate_ms : 20000;
    net->cfg.ban_dir = NULL;
    net->frame_limit = CLIENT_FRAME_MIN_BYTES + CLIENT_FRAME_SLACK_BYTES;
    net->self_seed = seed_of(net->cfg.public_key, strlen(net->cfg.public_key));
    g_mutex_init(&net->lock);
    g_cond_init(&net->job_done);
    g_cond_init(&net->started);
    g_queue_init(&net->inbox);
    g_queue_init(&net->waiting);
    net->images = g_hash_table_new(digest_hash, digest_equal);
    net->peers = g_ptr_array_new();
    net->outstanding = g_hash_table_new(g_direct_hash, g_direct_equal);
    net->conn_addrs =
        g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    net->askers = g_hash_table_new_full(digest_hash, digest_equal, g_free,
                                        (GDestroyNotify)g_ptr_array_unref);
    net->bans = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    if (config->ban_dir) {
        if (g_mkdir_with_parents(config->ban_dir, 0700) != 0)
            net_log(net, PEER_LOG_WARNING,
                    "cannot create '%s': %s; peer bans last until a restart",
                    config->ban_dir, g_strerror(errno));
        else
            net->bans_path = g_build_filename(config->ban_dir, BANS_FILE, NULL);
    }
    bans_load(net);
    net->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    net->pool =
        g_thread_pool_new(fetch_task_run, net, FETCH_POOL_THREADS, FALSE, NULL);
    net->thread = g_thread_new("spore-peers", loop_main, net);

    g_mutex_lock(&net->lock);
    while (!net->ready)
        g_cond_wait(&net->started, &net->lock);
    g_mutex_unlock(&net->lock);
    if (net->start_error) {
        g_propagate_error(error, g_steal_pointer(&net->start_error));
        peer_net_free(net);
        return NULL;
    }
    return net;
}

static void
net_image_free(gpointer p)
{
    NetImage *im = p;

    g_free(im->advertised);
    g_hash_table_unref(im->subscribers);
    g_hash_table_unref(im->delegated_here);
    g_free(im);
}

void
peer_net_free(PeerNet *net)
{
    if (!net)
        return;
    g_mutex_lock(&net->lock);
    net->stop = true;
    g_mutex_unlock(&net->lock);
    wake(net);
    g_thread_join(net->thread);
    g_thread_pool_free(net->pool, TRUE, TRUE);
    fail_everything(net); /* what the pool pushed after the loop ended */
    for (guint k = 0; k < net->peers->len; k++)
        peer_free(net->peers->pdata[k]);
    g_ptr_array_unref(net->peers);
    {
        GHashTableIter it;
        gpointer value;
        g_hash_table_iter_init(&it, net->images);
        while (g_hash_table_iter_next(&it, NULL, &value))
            net_image_free(value);
    }
    g_hash_table_unref(net->images);
    g_hash_table_unref(net->outstanding);
    g_hash_table_unref(net->askers);
    g_hash_table_unref(net->bans);
    g_hash_table_unref(net->conn_addrs);
    g_free(net->bans_path);
    close(net->wake_fd);
    g_mutex_clear(&net->lock);
    g_cond_clear(&net->job_done);
    g_cond_clear(&net->started);
    g_free(net->endpoint);
    g_free(net->cfg.listen);
    g_free(net->cfg.host_name);
    g_free(net);
}

const char *
peer_net_endpoint(PeerNet *net)
{
    return net->endpoint;
}

bool
peer_net_set_peers(PeerNet *net, const PeerInfo *peers, guint n, GError **error)
{
    g_autoptr(GArray) copy = NULL;
    Cmd *cmd;

    if (n > PEER_PEERS_MAX) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "%u peers: at most %u", n, PEER_PEERS_MAX);
        return false;
    }
    for (guint k = 0; k < n; k++) {
        const PeerInfo *p = &peers[k];

        if (!p->name || !*p->name || strlen(p->name) > PEER_NAME_MAX_CHARS) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "peer %u: a name of 1 to %u characters is needed",
                        k + 1, PEER_NAME_MAX_CHARS);
            return false;
        }
        if (!endpoint_valid(p->endpoint)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "peer '%s': endpoint '%s' is not tcp://ADDRESS:PORT",
                        p->name, p->endpoint ? p->endpoint : "");
            return false;
        }
        if (!key_valid(p->public_key)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "peer '%s': '%s' is not a Z85 CURVE public key",
                        p->name, p->public_key ? p->public_key : "");
            return false;
        }
        for (guint j = 0; j < k; j++) {
            if (g_str_equal(peers[j].name, p->name) ||
                g_str_equal(peers[j].public_key, p->public_key)) {
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                            "peers '%s' and '%s' share a name or a key",
                            peers[j].name, p->name);
                return false;
            }
        }
    }
    copy = g_array_sized_new(FALSE, TRUE, sizeof(PeerInfo), n);
    g_array_set_clear_func(copy, (GDestroyNotify)peer_info_clear);
    for (guint k = 0; k < n; k++) {
        PeerInfo c = {
            .name = g_strdup(peers[k].name),
            .endpoint = g_strdup(peers[k].endpoint),
            .public_key = g_strdup(peers[k].public_key),
        };
        g_array_append_val(copy, c);
    }
    cmd = g_new0(Cmd, 1);
    cmd->kind = CMD_SET_PEERS;
    cmd->peers = g_steal_pointer(&copy);
    g_mutex_lock(&net->lock);
    g_queue_push_tail(&net->inbox, cmd);
    g_mutex_unlock(&net->lock);
    wake(net);
    return true;
}

void
peer_net_add_image(PeerNet *net, ChunkCache *cache, FetchEngine *engine)
{
    ImageIndex *idx = chunk_cache_index(cache);
    NetImage *im = g_new0(NetImage, 1);

    cache_digest(cache, im->digest);
    im->seed = le_get64(im->digest);
    im->cache = cache;
    im->engine = engine;
    im->idx = idx;
    im->chunks = image_index_chunk_count(idx);
    im->added = g_get_monotonic_time();
    im->bitmap_bytes = (gsize)((im->chunks + 7) / 8);
    /* subscribers learn the present chunks from their HAVE; updates carry
     * what comes after */
    im->advertised = g_malloc0(im->bitmap_bytes);
    chunk_cache_present_copy(cache, im->advertised);
    im->subscribers = g_hash_table_new_full(
        g_bytes_hash, g_bytes_equal, (GDestroyNotify)g_bytes_unref, NULL);
    im->delegated_here =
        g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
    g_mutex_lock(&net->lock);
    if (g_hash_table_contains(net->images, im->digest)) {
        g_mutex_unlock(&net->lock);
        net_image_free(im);
        return;
    }
    g_hash_table_insert(net->images, im->digest, im);
    /* the clients accept this image's largest frame (invariant 7); the
     * loop gives peers connected with a lower limit a new socket */
    net->frame_limit = MAX(
        net->frame_limit, MAX(image_index_chunk_len(idx, 0), im->bitmap_bytes) +
                              CLIENT_FRAME_SLACK_BYTES);
    /* connected peers are asked for their bitmap at the next tick (their
     * PeerImage is new, so its asked_at is 0) */
    g_mutex_unlock(&net->lock);
    wake(net);
}

GArray *
peer_net_status(PeerNet *net)
{
    GArray *out = g_array_new(FALSE, TRUE, sizeof(PeerStatus));

    g_array_set_clear_func(out, (GDestroyNotify)peer_status_clear);
    g_mutex_lock(&net->lock);
    for (guint k = 0; k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        GHashTableIter it;
        gpointer value;
        PeerStatus st = {
            .name = g_strdup(p->info.name),
            .endpoint = g_strdup(p->info.endpoint),
            .connected = p->connected,
            .dead = p->dead,
            .latency_ms = p->latency_us / 1000,
            .mbit_s = p->chunks_in ? p->bps * 8 / 1e6 : 0,
            .outstanding = p->outstanding,
            .chunks_in = p->chunks_in,
            .bytes_in = p->bytes_in,
            .bad_chunks = p->bad_chunks,
            .chunks_out = p->chunks_out,
            .bytes_out = p->bytes_out,
            .hedged = p->hedged,
            .missed = p->missed,
        };
        gint64 now = g_get_monotonic_time();

        g_hash_table_iter_init(&it, p->images);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
            PeerImage *pi = value;

            st.images_banned += pi->banned;
            st.images_dead += !pi->banned && pi->dead_until > now;
        }
        g_array_append_val(out, st);
    }
    g_mutex_unlock(&net->lock);
    return out;
}

guint64
peer_net_bad_chunks(PeerNet *net)
{
    guint64 n;

    g_mutex_lock(&net->lock);
    n = net->bad_chunks;
    g_mutex_unlock(&net->lock);
    return n;
}

/* ---- the FetchSource ---------------------------------------------------- */

typedef struct {
    FetchSource base;
    PeerNet *net;
    guint8 digest[SPORE_SHA256_BYTES];
} PeerSource;

static NetImage *
source_image(PeerSource *src)
{
    return g_hash_table_lookup(src->net->images, src->digest);
}

char *
peer_net_chunk_source(PeerNet *net, ChunkCache *cache, guint64 i,
                      bool *ret_delegated)
{
    guint8 digest[SPORE_SHA256_BYTES];
    NetImage *im;
    Peer *p = NULL;
    char *name = NULL;

    cache_digest(cache, digest);
    *ret_delegated = false;
    g_mutex_lock(&net->lock);
    im = g_hash_table_lookup(net->images, digest);
    if (im && i < im->chunks) {
        p = best_holder(net, im, i, NULL, NULL);
        if (!p) {
            /* all windows full is no matter for a plan: any holder */
            for (guint k = 0; k < net->peers->len && !p; k++) {
                if (peer_holds(net->peers->pdata[k], im, i))
                    p = net->peers->pdata[k];
            }
        }
        if (!p && !delegated_here(im, i)) {
            p = origin_fetcher(net, im, i);
            *ret_delegated = p != NULL;
        }
        if (p)
            name = g_strdup(p->info.name);
    }
    g_mutex_unlock(&net->lock);
    return name;
}

guint
peer_net_holders(PeerNet *net, ChunkCache *cache, guint64 i)
{
    guint8 digest[SPORE_SHA256_BYTES];
    NetImage *im;
    guint n = 0;

    cache_digest(cache, digest);
    g_mutex_lock(&net->lock);
    im = g_hash_table_lookup(net->images, digest);
    for (guint k = 0; im && i < im->chunks && k < net->peers->len; k++)
        n += peer_holds(net->peers->pdata[k], im, i);
    g_mutex_unlock(&net->lock);
    return n;
}

static bool
peer_has(FetchSource *base, const ImageIndex *idx, guint64 i)
{
    PeerSource *src = (PeerSource *)base;
    PeerNet *net = src->net;
    NetImage *im;
    bool yes = false;

    g_mutex_lock(&net->lock);
    im = source_image(src);
    if (im && i < im->chunks) {
        for (guint k = 0; k < net->peers->len && !yes; k++)
            yes = peer_holds(net->peers->pdata[k], im, i);
        if (!yes && !delegated_here(im, i))
            yes = origin_fetcher(net, im, i) != NULL;
        if (!yes)
            yes = have_pending(net, im);
    }
    g_mutex_unlock(&net->lock);
    return yes;
}

static bool
peer_fetch(FetchSource *base, const ImageIndex *idx, guint64 i, guint8 *buf,
           gsize len, gint64 deadline, GError **error)
{
    PeerSource *src = (PeerSource *)base;
    PeerNet *net = src->net;
    Job *job = g_new0(Job, 1);
    Cmd *cmd = g_new0(Cmd, 1);
    bool ok;

    g_private_replace(&last_peer, NULL);
    job->refs = 2; /* ours and the inbox's */
    job->chunk = i;
    job->len = len;
    job->buf = g_malloc(len);
    job->deadline = deadline;
    job->tried = g_ptr_array_new_with_free_func(g_free);
    job->why = g_string_new(NULL);
    cmd->kind = CMD_JOB;
    cmd->job = job;

    g_mutex_lock(&net->lock);
    job->im = source_image(src);
    if (!job->im || net->stop) {
        g_mutex_unlock(&net->lock);
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "peers: the image is not shared with peers");
        g_free(cmd);
        job_unref(job);
        job_unref(job);
        return false;
    }
    g_queue_push_tail(&net->inbox, cmd);
    g_mutex_unlock(&net->lock);
    wake(net);

    g_mutex_lock(&net->lock);
    while (!job->done) {
        if (!g_cond_wait_until(&net->job_done, &net->lock, deadline) &&
            !job->done) {
            job->cancelled = true;
            break;
        }
    }
    ok = job->done && job->ok;
    if (ok) {
        memcpy(buf, job->buf, len);
        g_private_replace(&last_peer, g_strdup(job->served_by));
    } else if (job->done) {
        g_propagate_error(error, g_steal_pointer(&job->error));
    } else {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "peers: chunk %" G_GUINT64_FORMAT " not received in time",
                    i);
    }
    g_mutex_unlock(&net->lock);
    job_unref(job);
    return ok;
}

static void
peer_rejected(FetchSource *base, guint64 i)
{
    PeerSource *src = (PeerSource *)base;
    PeerNet *net = src->net;
    const char *name = g_private_get(&last_peer);
    NetImage *im;
    Peer *p;

    g_mutex_lock(&net->lock);
    im = source_image(src);
    p = peer_by_name(net, name);
    if (im && p)
        peer_strike(net, p, im, i, "its digest does not match the index");
    else
        net->bad_chunks++;
    g_mutex_unlock(&net->lock);
    g_private_replace(&last_peer, NULL);
}

static void
peer_source_free(FetchSource *base)
{
    g_free(base->name);
    g_free(base);
}

static const FetchSourceOps peer_ops = {
    .fetch = peer_fetch,
    .has = peer_has,
    .rejected = peer_rejected,
    .free = peer_source_free,
};

FetchSource *
peer_source_new(PeerNet *net, ChunkCache *cache)
{
    PeerSource *src = g_new0(PeerSource, 1);

    src->base.ops = &peer_ops;
    src->base.kind = FETCH_SOURCE_PEER;
    src->base.name = g_strdup("peers");
    src->net = net;
    cache_digest(cache, src->digest);
    return &src->base;
}
