/*
 * peer-net-private.h: what the parts of the PeerNet share (peer-net.h is
 * the public API; docs/peer-protocol.md the wire).  Not for use outside
 * p2p/peer-net*.c.
 *
 * The PeerNet is one object in five files, one per role:
 *   peer-net.c         the loop thread, the API, shared helpers, and the
 *                      design note (invariants, state diagrams);
 *   peer-net-plan.c    what is known of each peer (PeerImage: strikes,
 *                      bans, misses) and the planning of fetches (Job,
 *                      Outstanding: who is asked, hedges, deadlines);
 *   peer-net-server.c  the ROUTER: answering HAVE_REQ and GET, FETCH
 *                      tasks, HAVE_UPDATE pushes, the server's monitor;
 *   peer-net-client.c  the DEALER per peer: its answers, its connection
 *                      (monitor, drops, reconnects), the peer list;
 *   peer-net-source.c  the FetchSource the fetch engine asks.
 *
 * Every function here states its context: "Loop" (only the PeerNet's
 * thread calls it), "Locked" (net->lock held), or both.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <zmq.h>

#include "hash.h"
#include "peer-net.h"
#include "peer-protocol.h"

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
    double delegate_us;      /* a delegated fetch's time, measured, smoothed */
    bool delegate_proven;    /* it answered a FETCH since its last missed one */
    guint fetch_outstanding; /* of outstanding, the FETCH requests */
    gint64 last_answer;      /* loop: its last answer to a request */
    bool lagging;            /* a request past its hedge time, nothing since */
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

/* ---- peer-net.c: the loop, the API, helpers ----------------------------- */

/* Report through the configured PeerNetLogFunc (the library never logs
 * itself).  Any thread. */
void net_log(PeerNet *net, PeerLogLevel level, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/* A 64-bit mixer (splitmix64's finalizer), for rendezvous hashing. */
guint64 mix64(guint64 z);

/* The first 8 bytes of the SHA-256 of @data: a host's or image's seed. */
guint64 seed_of(const void *data, gsize len);

/* net_cache_digest: the 32 bytes of the id of @cache's image, the key of the
 * image table and of the protocol's image field */
void net_cache_digest(ChunkCache *cache, guint8 out[SPORE_SHA256_BYTES]);

/* The hash and equality of 32-byte digests, keys of the image tables. */
guint net_digest_hash(gconstpointer key);
gboolean net_digest_equal(gconstpointer a, gconstpointer b);

/* Wake the loop (its eventfd).  Any thread. */
void net_wake(PeerNet *net);

/* Drop a reference to @job; the last frees it.  Any thread. */
void job_unref(Job *job);

/* Send @msg (and @payload unless @payload_len is -1) on @sock, to @rid on
 * the ROUTER; never blocks: false when it cannot be queued.  Loop. */
bool net_send_msg(void *sock, GBytes *rid, const PeerMsg *msg,
                  const void *payload, gssize payload_len);

/* Read one whole message (up to @max frames kept) from @sock. */
int net_recv_frames(void *sock, zmq_msg_t *frames, int max, int *ret_total);

/* Whether a rate-limited log line may go out now (one per
 * COMPLAINT_EVERY_US per *@last, which it updates).  Under the lock that
 * guards *@last. */
bool net_complain_allowed(gint64 *last);

/* The peer named @name (NULL-safe), or NULL.  Locked, or loop. */
Peer *peer_by_name(PeerNet *net, const char *name);

/* The image of @digest, or NULL.  Takes the lock: call unlocked. */
NetImage *net_image_lookup(PeerNet *net, const guint8 *digest);

/* ---- peer-net-plan.c: peers' standing, planning ------------------------ */

/* A peer for @info (copied), nothing known of it yet, no socket. */
Peer *peer_new(const PeerInfo *info);

/* Close @p's sockets and free it.  Loop (it owns the sockets). */
void peer_free(Peer *p);

/* Locked.  The peer's state for @im, created empty (banned if the bans
 * kept say so). */
PeerImage *peer_image(PeerNet *net, Peer *p, NetImage *im);

/* Read the bans kept in net->bans_path into net->bans: lines of "IMAGEHEX
 * PEERKEY".  A missing file is no bans; a bad line is skipped. */
void net_bans_load(PeerNet *net);

/* Locked.  A strike against @p for @im (invariant 5): @what went wrong
 * with chunk @i (G_MAXUINT64: not known).  The chunk is no longer
 * expected of it; at strikes_max it is banned for the image, and the ban
 * is kept. */
void peer_strike(PeerNet *net, Peer *p, NetImage *im, guint64 i,
                 const char *what);

/* Locked.  @p answered a request for @im in time and as asked. */
void peer_answered(PeerNet *net, Peer *p, NetImage *im);

/* Loop, locked.  Request @req_id of @p ended unanswered: its answer may
 * still come, late, and is then no strike. */
void peer_retire(Peer *p, guint32 req_id);

/* Locked.  Whether @p is usable for @im and its bitmap has chunk @i. */
bool peer_holds(Peer *p, NetImage *im, guint64 i);

/*
 * Locked.  The host that fetches chunk @i of @im from the origin for the
 * site: the highest rendezvous score among this host and the usable peers
 * that have the image.  NULL when it is this host.
 */
Peer *peer_origin_fetcher(PeerNet *net, NetImage *im, guint64 i);

/*
 * Locked.  Whether a connected peer's bitmap of @im is still to come: not
 * asked yet (the image was just added) or asked less than HAVE_WAIT_US ago.
 * A fetch then waits for it rather than going to the origin at once.
 */
bool peer_have_pending(PeerNet *net, NetImage *im);

/* Locked.  Whether a peer asked this host to fetch @i lately. */
bool image_delegated_here(NetImage *im, guint64 i);

/* Locked.  The best peer holding @i not tried by @job (NULL: none); sets
 * *ret_full when holders exist whose window is full. */
Peer *peer_best_holder(PeerNet *net, NetImage *im, guint64 i, Job *job,
                       bool *ret_full);

void job_finish(PeerNet *net, Job *job, bool ok, const char *why);

/* Plan @job: send it, park it, or finish it failed.  Locked. */
void job_plan(PeerNet *net, Job *job);

/* Outstanding @o is over (answered, timed out, or its peer died). */
void outstanding_end(PeerNet *net, Outstanding *o, bool replan);

/* Jobs parked for a window: plan those that can go now.  Locked. */
void job_plan_waiting(PeerNet *net);

/* Loop, locked.  Requests past their deadline end (invariant 6): a miss
 * for the peer, and the chunk is planned again at once. */
void outstanding_end_missed(PeerNet *net, gint64 now);

/* Loop, locked.  A peer is lagging while a request to it is past its
 * hedge time and it has answered nothing since that request was sent: it
 * gets no new work (peer_usable) until it answers or the deadline ends
 * the request. */
void peers_mark_lagging(PeerNet *net, gint64 now);

/* Loop, locked.  Requests past their hedge time: a plain one is asked of
 * the next holder too; a delegated one goes to the next holder or, when
 * there is none, back to the engine, which asks the origin. */
void outstanding_hedge_due(PeerNet *net, gint64 now);

/* Loop, locked.  Forget retired request ids past their keep time. */
void peers_expire_retired(PeerNet *net, gint64 now);

/* ---- peer-net-server.c -------------------------------------------------- */

/* On the pool: fetch a chunk a peer asked us to fetch, tell the loop. */
void fetch_task_run(gpointer data, gpointer user);

/* Answer the FETCH request that @cmd (CMD_FETCHED) reports done: DATA,
 * or ERR fetch-failed.  Loop. */
void server_fetched(PeerNet *net, Cmd *cmd);

/* Images added since peers asked for them: send those peers their HAVE. */
void server_answer_askers(PeerNet *net);

/* Read and answer the requests waiting on the server (a bounded burst);
 * malformed ones are dropped with a rate-limited log line.  Loop. */
void server_drain(PeerNet *net);

/* Push the chunks that became present to the subscribers of @im. */
void server_announce(PeerNet *net, NetImage *im);

/*
 * The server's connections: remember the address of each accepted one,
 * and log each that closes (at most one line per COMPLAINT_EVERY_US).
 * libzmq gives no reason: a frame over SERVER_FRAME_MAX_BYTES ends the
 * connection just as the peer leaving does.  Loop.
 */
void server_monitor_drain(PeerNet *net);

/* ---- peer-net-client.c -------------------------------------------------- */

/* Ask @p for its bitmap of @im (and subscribe).  Loop, locked. */
void send_have_req(PeerNet *net, Peer *p, NetImage *im);

/* Read what @p sent (a bounded burst): bitmaps, answers; drops the
 * connection on a DATA larger than asked or unasked.  Loop. */
void peer_drain(PeerNet *net, Peer *p);

/* Locked.  @p is dead: plan its outstanding requests again, elsewhere;
 * their late answers are no strikes (retired). */
void peer_dies(PeerNet *net, Peer *p, const char *why);

/*
 * Loop, locked.  libzmq ends a session without a reconnect attempt (no
 * ZMQ_EVENT_CONNECT_RETRIED) only on a protocol error: here, a frame over
 * the clients' ZMQ_MAXMSGSIZE (net->frame_limit) or a corrupt stream.
 * That is junk: a strike for each image the peer had requests for, a log
 * line, and a new socket after a backoff.
 */
void peers_check_protocol_drops(PeerNet *net, gint64 now);

/* Read @p's socket monitor: handshake succeeded or failed, disconnected,
 * reconnect attempts.  Loop. */
void peer_monitor_drain(PeerNet *net, Peer *p);

/* Apply a new peer list.  Loop. */
void peers_apply(PeerNet *net, GArray *infos);

/* Peers whose handshake was refused or whose connection was dropped: a
 * new socket, once it is time; peers whose socket's frame limit is below
 * net->frame_limit (an image with larger chunks was added): one now.
 * Loop, unlocked. */
void peers_reconnect_due(PeerNet *net, gint64 now);
