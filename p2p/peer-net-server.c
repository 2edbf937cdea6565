/*
 * peer-net-server.c: the peer server, a ROUTER with CURVE and a ZAP
 * handler (peer-net.c's zap_decide) admitting only the peer list's keys.
 * It answers HAVE_REQ with the cache's bitmap (and subscribes the asker
 * to HAVE_UPDATEs, server_announce), and GET with the chunk read from the
 * cache and verified just before sending (invariant 4); a GET with FETCH
 * for a chunk it lacks runs on the thread pool (fetch_task_run), which
 * waits for this host's fetch engine and hands the answer back to the
 * loop (CMD_FETCHED).  Malformed requests are dropped, never answered.
 *
 * Threads: the loop owns the ROUTER and its monitor; fetch_task_run runs
 * on the pool and touches nothing but its task, the engine and the inbox.
 */
#include "peer-net-private.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <zmq.h>

#include "le-bytes.h"
#include "spore-error.h"

typedef struct {
    PeerNet *net;
    GBytes *rid;
    char *who;
    PeerMsg msg;
    NetImage *im;
} FetchTask;

static void
server_err(PeerNet *net, GBytes *rid, const PeerMsg *req, PeerErrCode code)
{
    PeerMsg m = *req;

    m.type = PEER_MSG_ERR;
    m.flags = code;
    if (req->type == PEER_MSG_HAVE_REQ)
        m.chunk = 0;
    net_send_msg(net->server, rid, &m, NULL, -1);
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
    if (!net_send_msg(net->server, rid, &m, buf, (gssize)len))
        return;
    g_mutex_lock(&net->lock);
    if ((p = peer_by_name(net, who))) {
        p->chunks_out++;
        p->bytes_out += len;
    }
    g_mutex_unlock(&net->lock);
}

/* On the pool: fetch a chunk a peer asked us to fetch, tell the loop. */
void
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
    net_wake(net);
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
    net_send_msg(net->server, rid, &m, bits, (gssize)im->bitmap_bytes);
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

void
server_fetched(PeerNet *net, Cmd *cmd)
{
    if (cmd->ok)
        server_send_chunk(net, cmd->rid, &cmd->msg, cmd->im, cmd->who);
    else
        server_err(net, cmd->rid, &cmd->msg, PEER_ERR_FETCH_FAILED);
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
void
server_answer_askers(PeerNet *net)
{
    GHashTableIter it;
    gpointer key, value;

    g_hash_table_iter_init(&it, net->askers);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        GPtrArray *list = value;
        NetImage *im = net_image_lookup(net, key);
        PeerMsg m = {.type = PEER_MSG_HAVE_REQ};

        if (!im)
            continue;
        memcpy(m.image, im->digest, SPORE_SHA256_BYTES);
        for (guint k = 0; k < list->len; k++)
            server_have(net, list->pdata[k], &m, im);
        g_hash_table_iter_remove(&it);
    }
}

void
server_drain(PeerNet *net)
{
    for (int burst = 0; burst < RECV_BURST_MAX; burst++) {
        zmq_msg_t f[3];
        int total = 0;
        int n = net_recv_frames(net->server, f, 3, &total);
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
            if (net_complain_allowed(last))
                net_log(net, PEER_LOG_WARNING,
                        "peer %s: dropped a malformed request: %s", who,
                        err->message);
            g_mutex_unlock(&net->lock);
        } else if (!(im = net_image_lookup(net, req.image))) {
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
void
server_announce(PeerNet *net, NetImage *im)
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
        if (!net_send_msg(net->server, key, &m, list, (gssize)n * 8) &&
            zmq_errno() == EHOSTUNREACH)
            g_hash_table_iter_remove(&it); /* gone */
    }
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
void
server_monitor_drain(PeerNet *net)
{
    for (;;) {
        zmq_msg_t f[2];
        int total = 0;
        int n = net_recv_frames(net->server_mon, f, 2, &total);
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

                if (net_complain_allowed(&net->last_close_log))
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
