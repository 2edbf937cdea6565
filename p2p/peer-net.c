/*
 * peer-net.c: the PeerNet's loop thread, its API, and the helpers its
 * parts share (see peer-net.h for the behaviour, docs/peer-protocol.md for
 * the wire, peer-net-private.h for the five files and what each holds).
 *
 * This is spore's adapter for libzmq on the peer side: zmq errors become
 * GError messages or log lines naming the peer.
 *
 * One thread (loop_main) owns the zmq context and every socket:
 *   - zap:    the ZAP handler (REP), admits the keys of the peer list;
 *   - server: ROUTER, CURVE server, answers HAVE_REQ and GET, pushes
 *             HAVE_UPDATE to subscribers (peer-net-server.c), and a PAIR
 *             reading its socket monitor;
 *   - per peer a DEALER (CURVE client) and a PAIR reading its socket
 *     monitor (peer-net-client.c).
 *
 * A fetch (a fetch-engine worker in peer_fetch) is a Job:
 *
 *   NEW --[inbox, job_plan: a peer holds it]--> SENT (GET to the best peer)
 *   NEW --[job_plan: nobody holds it, another host is its origin fetcher]-->
 *         SENT (GET with PEER_GET_FETCH to that host)
 *   NEW --[job_plan: every holder's window is full, or the chunk's origin
 *         fetcher has its one FETCH out before it proved it does them]-->
 *         WAITING
 *   WAITING --[a slot, a HAVE: job_plan_waiting]--> job_plan
 *   SENT --[DATA of the right length: client_answer]--> DONE (ok)
 *   SENT --[ERR, a bad DATA, the peer dies, the deadline passes:
 *          client_answer, peer_dies, outstanding_end_missed]-->
 *         job_plan again, without the peers tried already
 *   SENT --[hedge_at passes: outstanding_hedge_due]--> SENT twice (the
 *         next holder asked too), or, for a FETCH with no other holder,
 *         DONE (error: the engine asks the origin)
 *   job_plan with no candidate left --> DONE (error: the engine asks the
 *         origin)
 *   any --[the caller's deadline: peer_fetch]--> cancelled (the loop drops
 *         it)
 *
 * A peer's connection (Peer, loop-owned):
 *
 *   CONNECTING --[HANDSHAKE_SUCCEEDED: peer_monitor_drain]--> CONNECTED
 *   CONNECTING --[HANDSHAKE_FAILED_*: peer_monitor_drain]--> REFUSED
 *   CONNECTED --[DISCONNECTED, then CONNECT_RETRIED: peer_monitor_drain,
 *         peer_dies]--> CONNECTING (libzmq reconnects)
 *   CONNECTED --[DISCONNECTED and no CONNECT_RETRIED within 1 s: a frame
 *         over the limit, peers_check_protocol_drops -> peer_drop]-->
 *         DROPPED
 *   CONNECTED --[a DATA larger than asked, or unasked: peer_drain ->
 *         peer_drop]--> DROPPED
 *   REFUSED, DROPPED --[reconnect_at passes: peers_reconnect_due ->
 *         peer_connect]--> CONNECTING (a new socket)
 *   CONNECTED --[silent dead_ms with plain GETs out: tick -> peer_dies]-->
 *         CONNECTED and dead (not asked until dead_until)
 *   dead --[a message after dead_until: peer_drain]--> CONNECTED
 *
 * What is known of a peer for one image (PeerImage, locked):
 *
 *   UNKNOWN --[HAVE: client_have]--> USABLE
 *   USABLE --[ERR unknown image: client_answer, client_unmatched]-->
 *         UNKNOWN (HAVE_REQ again every 2 s)
 *   USABLE --[a request past its hedge time, nothing heard since:
 *         peers_mark_lagging]--> LAGGING (no new work)
 *   LAGGING --[an answer: peer_answered]--> USABLE
 *   USABLE, LAGGING --[a deadline missed: outstanding_end_missed ->
 *         peer_missed]--> DEAD FOR THE IMAGE (2 s, doubling per miss in a
 *         row, to 60 s)
 *   DEAD FOR THE IMAGE --[dead_until passes]--> PROBATION (window 1)
 *   any but BANNED --[a bad DATA: peer_strike]--> PROBATION, strikes + 1
 *   PROBATION --[an answer of the right length: client_answer,
 *         peer_answered]--> USABLE
 *   any --[the strikes_max-th strike: peer_strike]--> BANNED (final; kept
 *         in ban_dir/bans, and a new PeerImage starts BANNED: peer_image)
 *
 * Invariants:
 *   1. job->sent counts the Outstanding entries of the job; a job is
 *      planned again only when it reaches 0 and the job is not done;
 *   2. peer->outstanding counts the Outstanding entries of the peer, and
 *      the loop never sends it a plain GET beyond its window (window_full:
 *      cfg.window, or 1 on probation), nor a FETCH while it is on
 *      probation with a request out, nor a second FETCH before it has
 *      answered one since its last missed one (delegate_full: a host
 *      that takes delegated fetches and never does them holds one chunk
 *      at a time, until that FETCH's hedge, while the other chunks
 *      it would fetch wait for that answer in WAITING — delegate_waits —
 *      so that an honest one is not bypassed; fetch_outstanding counts
 *      its FETCH requests among the outstanding);
 *   3. the bitmaps of peers only ever hold bits of chunks inside the image
 *      (HAVE and HAVE_UPDATE are checked against our own index; a HAVE
 *      with a bit set past the last chunk is refused);
 *   4. the server sends only chunks read from the cache and verified
 *      against the index just before sending;
 *   5. every DATA read from a peer answers an Outstanding of that peer for
 *      that image and chunk with exactly the chunk's length, or is late (its
 *      request id retired by a deadline or a death), or is a strike for
 *      the peer; a DATA longer than asked or unasked also drops the
 *      connection, so the bytes taken from a peer are bounded by what was
 *      asked of it, plus at most one window;
 *   6. every Outstanding has a deadline (deadline_at, from the peer's
 *      measured latency, throughput or delegated-fetch time, at least
 *      DEADLINE_FLOOR_US); none outlives it: outstanding_end_missed ends
 *      it, re-plans its job and counts a miss;
 *   7. a client socket accepts no frame over its frame_limit, the largest
 *      frame the images need plus CLIENT_FRAME_SLACK_BYTES; net->frame_limit
 *      only grows, and a peer whose socket's limit is lower gets a new
 *      socket at the next tick (peers_reconnect_due);
 *   8. a ban is in net->bans, and in the bans file when there is a ban_dir,
 *      from the moment it is made (peer_strike -> bans_save); a PeerImage
 *      is created banned when net->bans holds its (image, key) pair.
 *
 * Locking: net->lock guards the peer table (everything in Peer but its
 * sockets and the loop-only fields), the image table, delegated_here, the
 * bans, the jobs' done/ok/cancelled state and the counters; the job
 * condition variable waits on it.  The loop holds it while it plans and
 * while it updates peers, never while it blocks in zmq_poll.  Caches are
 * read without it.
 */
#include "peer-net-private.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include "le-bytes.h"
#include "spore-error.h"
#include "zmq-zap.h"

void
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

guint64
mix64(guint64 z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

guint64
seed_of(const void *data, gsize len)
{
    guint8 d[SPORE_SHA256_BYTES];

    spore_sha256(data, len, d);
    return le_get64(d);
}

/* net_cache_digest: the 32 bytes of the id of @cache's image, the key of the
 * image table and of the protocol's image field */
void
net_cache_digest(ChunkCache *cache, guint8 out[SPORE_SHA256_BYTES])
{
    spore_unhex(image_index_id(chunk_cache_index(cache)) + strlen("sha256:"),
                out, SPORE_SHA256_BYTES);
}

guint
net_digest_hash(gconstpointer key)
{
    guint h;

    memcpy(&h, key, sizeof(h));
    return h;
}

gboolean
net_digest_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, SPORE_SHA256_BYTES) == 0;
}

void
net_wake(PeerNet *net)
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

void
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

bool
net_send_msg(void *sock, GBytes *rid, const PeerMsg *msg, const void *payload,
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

/* Read one whole message (up to @max frames kept) from @sock. */
int
net_recv_frames(void *sock, zmq_msg_t *frames, int max, int *ret_total)
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

bool
net_complain_allowed(gint64 *last)
{
    gint64 now = g_get_monotonic_time();

    if (*last && now - *last < COMPLAINT_EVERY_US)
        return false;
    *last = now;
    return true;
}

Peer *
peer_by_name(PeerNet *net, const char *name)
{
    for (guint k = 0; name && k < net->peers->len; k++) {
        Peer *p = net->peers->pdata[k];
        if (g_str_equal(p->info.name, name))
            return p;
    }
    return NULL;
}

NetImage *
net_image_lookup(PeerNet *net, const guint8 *digest)
{
    NetImage *im;

    g_mutex_lock(&net->lock);
    im = g_hash_table_lookup(net->images, digest);
    g_mutex_unlock(&net->lock);
    return im;
}

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
    if (!user && net_complain_allowed(&net->last_complaint))
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
            job_plan(net, cmd->job);
            job_unref(cmd->job);
        }
        g_mutex_unlock(&net->lock);
        if (!cmd)
            return;
        if (cmd->kind == CMD_SET_PEERS) {
            peers_apply(net, cmd->peers);
            g_array_unref(cmd->peers);
        } else if (cmd->kind == CMD_FETCHED) {
            server_fetched(net, cmd);
            g_bytes_unref(cmd->rid);
            g_free(cmd->who);
        }
        g_free(cmd);
    }
}

/* Hedges, deadlines, dead peers, HAVE retries, announcements.  Loop. */
static void
tick(PeerNet *net)
{
    gint64 now = g_get_monotonic_time();
    GHashTableIter it;
    gpointer value;

    peers_reconnect_due(net, now);

    g_mutex_lock(&net->lock);
    peers_check_protocol_drops(net, now);
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
    outstanding_end_missed(net, now);
    peers_mark_lagging(net, now);
    outstanding_hedge_due(net, now);
    peers_expire_retired(net, now);
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
    job_plan_waiting(net);
    g_mutex_unlock(&net->lock);

    if (net->server)
        server_answer_askers(net);
    g_mutex_lock(&net->lock);
    g_hash_table_iter_init(&it, net->images);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        g_mutex_unlock(&net->lock);
        server_announce(net, value); /* images are never removed */
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

static void
net_fail_everything(PeerNet *net)
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
                continue; /* dropped: a new one comes (peers_reconnect_due) */
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
                peer_monitor_drain(net, p);
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
    net_fail_everything(net);
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
    net->images = g_hash_table_new(net_digest_hash, net_digest_equal);
    net->peers = g_ptr_array_new();
    net->outstanding = g_hash_table_new(g_direct_hash, g_direct_equal);
    net->conn_addrs =
        g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    net->askers =
        g_hash_table_new_full(net_digest_hash, net_digest_equal, g_free,
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
    net_bans_load(net);
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
    net_wake(net);
    g_thread_join(net->thread);
    g_thread_pool_free(net->pool, TRUE, TRUE);
    net_fail_everything(net); /* what the pool pushed after the loop ended */
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
    net_wake(net);
    return true;
}

void
peer_net_add_image(PeerNet *net, ChunkCache *cache, FetchEngine *engine)
{
    ImageIndex *idx = chunk_cache_index(cache);
    NetImage *im = g_new0(NetImage, 1);

    net_cache_digest(cache, im->digest);
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
    net_wake(net);
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
