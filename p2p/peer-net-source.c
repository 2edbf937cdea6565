/*
 * peer-net-source.c: the FetchSource (kind PEER) a fetch engine asks
 * after local copies and before the origin, and the plan queries of
 * image-plan (peer_net_chunk_source, peer_net_holders).
 *
 * Threads: called by fetch-engine workers, several at once.  A fetch is a
 * Job handed to the loop through the inbox; the worker waits on
 * net->job_done, under net->lock, until the loop finishes it or the
 * caller's deadline passes (then the job is cancelled and the loop drops
 * it).  The peer that served a worker's last chunk is kept per thread
 * (last_peer), so that a chunk the engine rejects strikes that peer.
 */
#include "peer-net-private.h"

#include <string.h>

#include "spore-error.h"

static GPrivate last_peer = G_PRIVATE_INIT(g_free);

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

    net_cache_digest(cache, digest);
    *ret_delegated = false;
    g_mutex_lock(&net->lock);
    im = g_hash_table_lookup(net->images, digest);
    if (im && i < im->chunks) {
        p = peer_best_holder(net, im, i, NULL, NULL);
        if (!p) {
            /* all windows full is no matter for a plan: any holder */
            for (guint k = 0; k < net->peers->len && !p; k++) {
                if (peer_holds(net->peers->pdata[k], im, i))
                    p = net->peers->pdata[k];
            }
        }
        if (!p && !image_delegated_here(im, i)) {
            p = peer_origin_fetcher(net, im, i);
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

    net_cache_digest(cache, digest);
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
        if (!yes && !image_delegated_here(im, i))
            yes = peer_origin_fetcher(net, im, i) != NULL;
        if (!yes)
            yes = peer_have_pending(net, im);
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
    net_wake(net);

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
    net_cache_digest(cache, src->digest);
    return &src->base;
}
