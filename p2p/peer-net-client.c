/*
 * peer-net-client.c: this host as a client of each peer: a DEALER (CURVE
 * client, naming the peer's key) and a PAIR reading its socket monitor.
 * It reads the peer's bitmaps and answers, matches each answer to the
 * request it answers (invariant 5), and keeps the connection's state:
 * connected, dead, dropped for junk, refused, reconnected (the Peer
 * diagram in peer-net.c).
 *
 * Threads: the loop owns every socket here; the functions that change
 * peers' state take net->lock or say "Locked".
 */
#include "peer-net-private.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

#include "le-bytes.h"
#include "spore-error.h"
#include "zmq-zap.h"

static void peer_drop(PeerNet *net, Peer *p, const char *why);

void
send_have_req(PeerNet *net, Peer *p, NetImage *im)
{
    PeerMsg m = {.type = PEER_MSG_HAVE_REQ};
    PeerImage *pi = peer_image(net, p, im);

    memcpy(m.image, im->digest, SPORE_SHA256_BYTES);
    m.req_id = ++net->next_req;
    if (pi->have_req_id)
        peer_retire(p, pi->have_req_id); /* its answer may still come */
    pi->asked_at = g_get_monotonic_time();
    pi->have_req_id = m.req_id;
    net_send_msg(p->sock, NULL, &m, NULL, -1);
}

static void
peer_complain(PeerNet *net, Peer *p, const char *what, GError *err)
{
    if (net_complain_allowed(&p->last_complaint))
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
        bool oversized = got > job->len;
        g_autofree char *what =
            g_strdup_printf("%zu bytes, %zu asked%s", got, job->len,
                            oversized ? ": the connection is dropped" : "");

        peer_strike(net, p, job->im, job->chunk, what);
        g_string_append_printf(job->why, "%s%s: %s", job->why->len ? ", " : "",
                               p->info.name, what);
        outstanding_end(net, o, true); /* may free the job */
        return oversized;
    }
    p->dead_backoff_us = 0;
    peer_answered(net, p, job->im);
    peer_image(net, p, job->im)->probation = false;
    {
        double elapsed = (double)MAX(now - o->sent_at, 1);

        if (o->fetch_flag) {
            ewma(&p->delegate_us, elapsed);
            p->delegate_proven = true;
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

void
peer_drain(PeerNet *net, Peer *p)
{
    for (int burst = 0; burst < RECV_BURST_MAX; burst++) {
        bool drop = false;
        zmq_msg_t f[2];
        int total = 0;
        int n = net_recv_frames(p->sock, f, 2, &total);
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
                job_plan_waiting(net); /* fetches that waited for it */
        } else if (m.type == PEER_MSG_DATA || m.type == PEER_MSG_ERR)
            drop = client_answer(net, p, &m, n == 2 ? &f[1] : NULL);
        else if (net_complain_allowed(&p->last_complaint))
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
void
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
        peer_retire(p, o->req_id);
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
 * broken rule (peers_check_protocol_drops). */
static void
peer_note_disconnect(PeerNet *net, Peer *p)
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
void
peers_check_protocol_drops(PeerNet *net, gint64 now)
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

void
peer_monitor_drain(PeerNet *net, Peer *p)
{
    for (;;) {
        zmq_msg_t f[2];
        int total = 0;
        int n = net_recv_frames(p->mon, f, 2, &total);
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
                    peer_note_disconnect(net, p);
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
                if (net_complain_allowed(&p->last_complaint))
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
void
peers_apply(PeerNet *net, GArray *infos)
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

/* Peers whose handshake was refused or whose connection was dropped: a
 * new socket, once it is time; peers whose socket's frame limit is below
 * net->frame_limit (an image with larger chunks was added): one now.
 * Loop, unlocked. */
void
peers_reconnect_due(PeerNet *net, gint64 now)
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
