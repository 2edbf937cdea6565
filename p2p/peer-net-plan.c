/*
 * peer-net-plan.c: what this host knows of each peer for each image, and
 * the planning of fetches: which peer is asked for a chunk, when a request
 * is hedged, when it has missed its deadline, and what a bad answer costs
 * the peer.  The Job and PeerImage state diagrams and the invariants cited
 * here (1-8) are in peer-net.c.
 *
 * Everything here runs with net->lock held, on the loop thread unless
 * said otherwise (peer_strike and the ranking helpers are also called by
 * fetch-engine workers through the FetchSource, under the lock).
 */
#include "peer-net-private.h"

#include <string.h>

#include "file-util.h"
#include "le-bytes.h"
#include "spore-error.h"

static void
peer_image_free(gpointer p)
{
    PeerImage *pi = p;

    g_free(pi->bits);
    g_free(pi);
}

Peer *
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
    p->images = g_hash_table_new_full(net_digest_hash, net_digest_equal, g_free,
                                      peer_image_free);
    p->retired =
        g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    p->struck = g_hash_table_new(g_direct_hash, g_direct_equal);
    return p;
}

void
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
PeerImage *
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
void
net_bans_load(PeerNet *net)
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
void
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
void
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
void
peer_retire(Peer *p, guint32 req_id)
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

/* Locked.  Whether @p has not answered a FETCH yet (since its last missed
 * one) and has one out: it takes no second before its answer. */
static bool
delegate_unproven_busy(Peer *p)
{
    return !p->delegate_proven && p->fetch_outstanding >= 1;
}

/* Locked.  Whether @p may take no more FETCH requests for @im: it is on
 * probation and has one out, or it has not answered a FETCH yet (since
 * its last missed one) and has a FETCH out (FETCH requests are not
 * windowed otherwise: they wait for the origin, not for the peer). */
static bool
delegate_full(PeerNet *net, Peer *p, NetImage *im)
{
    PeerImage *pi = g_hash_table_lookup(p->images, im->digest);

    if (delegate_unproven_busy(p))
        return true;
    return pi && (pi->probation || pi->misses) && p->outstanding >= 1;
}

/* Locked.  Whether a FETCH for @im that @p cannot take now waits for it:
 * @p is not yet proven and has one out, and is not on probation (a
 * delegate on probation is not waited for). */
static bool
delegate_waits(Peer *p, NetImage *im)
{
    PeerImage *pi = g_hash_table_lookup(p->images, im->digest);

    return delegate_unproven_busy(p) && !(pi && (pi->probation || pi->misses));
}

bool
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
Peer *
peer_origin_fetcher(PeerNet *net, NetImage *im, guint64 i)
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
bool
peer_have_pending(PeerNet *net, NetImage *im)
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
bool
image_delegated_here(NetImage *im, guint64 i)
{
    gint64 *until = g_hash_table_lookup(im->delegated_here, &i);

    return until && *until > g_get_monotonic_time();
}

/* Locked.  The best peer holding @i not tried by @job (NULL: none); sets
 * *ret_full when holders exist whose window is full. */
Peer *
peer_best_holder(PeerNet *net, NetImage *im, guint64 i, Job *job,
                 bool *ret_full)
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

void
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
        p->fetch_outstanding++;
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
    if (!net_send_msg(p->sock, NULL, &m, NULL, -1))
        o->hedge_at = now; /* could not even queue it: hedge at once */
}

/* Plan @job: send it, park it, or finish it failed.  Locked. */
void
job_plan(PeerNet *net, Job *job)
{
    bool full = false;
    Peer *p;

    if (job->done || job->cancelled)
        return;
    p = peer_best_holder(net, job->im, job->chunk, job, &full);
    if (p) {
        send_get(net, job, p, false);
        return;
    }
    if (full || peer_have_pending(net, job->im)) {
        g_atomic_int_inc(&job->refs);
        g_queue_push_tail(&net->waiting, job);
        return;
    }
    if (!image_delegated_here(job->im, job->chunk)) {
        p = peer_origin_fetcher(net, job->im, job->chunk);
        /* a delegate on probation takes one request at a time; the others
         * this host fetches itself rather than wait (invariant 2).  One
         * not yet proven to do delegated fetches takes one too, and the
         * others wait for its answer (a short hedge at most), so that an
         * honest one still fetches each of its chunks once for the site */
        if (p && !tried(job, p) && !delegate_full(net, p, job->im)) {
            send_get(net, job, p, true);
            return;
        }
        if (p && !tried(job, p) && delegate_waits(p, job->im)) {
            g_atomic_int_inc(&job->refs);
            g_queue_push_tail(&net->waiting, job);
            return;
        }
    }
    job_finish(net, job, false,
               job->tried->len ? "every peer asked failed"
                               : "no peer holds it");
}

/* Outstanding @o is over (answered, timed out, or its peer died). */
void
outstanding_end(PeerNet *net, Outstanding *o, bool replan)
{
    Job *job = o->job;

    g_hash_table_steal(net->outstanding, GUINT_TO_POINTER(o->req_id));
    o->peer->outstanding--;
    if (o->fetch_flag)
        o->peer->fetch_outstanding--;
    job->sent--;
    if (replan && job->sent == 0)
        job_plan(net, job);
    job_unref(job);
    g_free(o);
}

/* Jobs parked for a window: plan those that can go now.  Locked. */
void
job_plan_waiting(PeerNet *net)
{
    guint n = g_queue_get_length(&net->waiting);

    for (guint k = 0; k < n; k++) {
        Job *job = g_queue_pop_head(&net->waiting);

        job_plan(net, job); /* may park it again */
        job_unref(job);
    }
}

/* Loop, locked.  Requests past their deadline end (invariant 6): a miss
 * for the peer, and the chunk is planned again at once. */
void
outstanding_end_missed(PeerNet *net, gint64 now)
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
        if (o->fetch_flag)
            o->peer->delegate_proven = false; /* one at a time again */
        peer_retire(o->peer, o->req_id);
        outstanding_end(net, o, true);
    }
}

/* Loop, locked.  A peer is lagging while a request to it is past its
 * hedge time and it has answered nothing since that request was sent: it
 * gets no new work (peer_usable) until it answers or the deadline ends
 * the request. */
void
peers_mark_lagging(PeerNet *net, gint64 now)
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
void
outstanding_hedge_due(PeerNet *net, gint64 now)
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
        alt = peer_best_holder(net, job->im, job->chunk, job, NULL);
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
void
peers_expire_retired(PeerNet *net, gint64 now)
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
