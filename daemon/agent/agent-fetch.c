/*
 * agent-fetch.c: the fetch socket (RUN_DIR/fetch.sock) the shims ask for
 * missing chunks (fetch-protocol.h): each connection, one per shim thread,
 * is served on a thread of its own; each request is answered once its
 * chunk is in the cache (fetched by the image's engine) or its wait is up.
 *
 * Invariant: a request takes the agent's table lock for the image's lookup
 * only (agent-images.c, invariant 1); the fetch itself holds no lock of
 * the agent, so one image's shim start or slow origin never delays another
 * image's guests.
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <string.h>
#include <glib/gstdio.h>

#include "fetch-protocol.h"
#include "hash.h"

/* the fetch socket: the agent's user only (the shims run as it) */
#define FETCH_SOCKET_MODE        0600
#define FETCH_SOCKET_THREADS_MAX 512

/* requests of one connection taken together (pipelined by the shim) */
#define FETCH_BATCH_MAX 64

/* answer_one: @req's reply once its chunk is cached or its wait is up;
 * @im is its image, NULL when this agent does not know it */
static void
answer_one(AgentImage *im, const FetchRequest *req, FetchReply *rep)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *hex = spore_hex(req->image, SPORE_SHA256_BYTES);

    memset(rep, 0, sizeof(*rep));
    rep->tag = req->tag;
    rep->chunk = req->chunk;
    if (!im) {
        rep->status = 1;
        g_snprintf(rep->message, sizeof(rep->message),
                   "image %.12s is not known to this agent", hex);
    } else if (!fetch_engine_get(im->engine, req->chunk,
                                 req->priority ? FETCH_PRIORITY_PROFILE
                                               : FETCH_PRIORITY_DEMAND,
                                 g_get_monotonic_time() +
                                     (gint64)req->wait_ms * 1000,
                                 &err)) {
        rep->status = 1;
        g_strlcpy(rep->message, err->message, sizeof(rep->message));
        g_warning("image %.12s: %s", hex, err->message);
    }
}

/*
 * read_batch: the next request, waiting for it, and those already sent
 * behind it (at most FETCH_BATCH_MAX), into @reqs; how many, 0 at the end
 * of the connection or after a malformed request.
 */
static guint
read_batch(GInputStream *in, FetchRequest *reqs)
{
    guint n = 0;

    do {
        guint8 buf[FETCH_REQUEST_BYTES];
        gsize got = 0;

        if (!g_input_stream_read_all(in, buf, sizeof(buf), &got, NULL, NULL) ||
            got != sizeof(buf))
            return 0; /* EOF: the shim thread went away */
        if (!fetch_request_decode(buf, &reqs[n])) {
            g_warning("malformed request on the fetch socket; closing the "
                      "connection");
            return 0;
        }
        n++;
    } while (n < FETCH_BATCH_MAX && G_IS_POLLABLE_INPUT_STREAM(in) &&
             g_pollable_input_stream_is_readable(G_POLLABLE_INPUT_STREAM(in)));
    return n;
}

/*
 * One connection.  The shim may send several requests before it reads a
 * reply (a guest read over several missing chunks): they are all queued
 * with the image's engine first, so that their chunks are fetched together,
 * then answered in the order they came.
 */
static gboolean
on_fetch_run(GThreadedSocketService *svc, GSocketConnection *conn,
             GObject *source, gpointer data)
{
    Agent *a = data;
    GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(conn));
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(conn));

    for (;;) {
        FetchRequest reqs[FETCH_BATCH_MAX];
        AgentImage *ims[FETCH_BATCH_MAX];
        guint n = read_batch(in, reqs);

        if (n == 0)
            break;
        for (guint k = 0; k < n; k++) {
            ims[k] = agent_find_image_by_digest(a, reqs[k].image);
            if (ims[k] && n > 1)
                fetch_engine_want(ims[k]->engine, reqs[k].chunk,
                                  reqs[k].priority ? FETCH_PRIORITY_PROFILE
                                                   : FETCH_PRIORITY_DEMAND);
        }
        for (guint k = 0; k < n; k++) {
            guint8 rbuf[FETCH_REPLY_BYTES];
            FetchReply rep;

            answer_one(ims[k], &reqs[k], &rep);
            fetch_reply_encode(&rep, rbuf);
            if (!g_output_stream_write_all(out, rbuf, sizeof(rbuf), NULL, NULL,
                                           NULL))
                return TRUE;
        }
    }
    return TRUE;
}

bool
agent_fetch_start(Agent *a, GError **error)
{
    a->fetch = control_socket_listen(a->fetch_path, FETCH_SOCKET_MODE, NULL,
                                     FETCH_SOCKET_THREADS_MAX, error);
    if (!a->fetch)
        return false;
    g_signal_connect(a->fetch, "run", G_CALLBACK(on_fetch_run), a);
    g_socket_service_start(a->fetch);
    return true;
}

void
agent_fetch_stop(Agent *a)
{
    if (!a->fetch)
        return;
    g_socket_service_stop(a->fetch);
    g_socket_listener_close(G_SOCKET_LISTENER(a->fetch));
    g_clear_object(&a->fetch);
    g_unlink(a->fetch_path);
}
