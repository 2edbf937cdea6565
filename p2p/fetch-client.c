/*
 * fetch-client.c: the shim's client of the agent's fetch socket.
 *
 * One call (fetch_client_get) asks for a batch of chunks.  Each request of
 * the batch is in one of three states:
 *
 *   UNSENT --[send_unsent]--> SENT(lane) --[take_reply, status 0]--> DONE
 *      ^                          |
 *      +------[lane_break]--------+   (the connection broke: sent again)
 *
 * and each lane (a connection) is closed (fd -1) or open.  Invariants:
 *
 *   1. A request is SENT on lane L only while L is open; lane_break moves
 *      every request of L back to UNSENT, so a reply is never awaited on a
 *      closed connection and never lost with one.
 *   2. Tags are unique within a client (next_tag only grows), so a reply
 *      matches at most one SENT request of its lane; a reply matching none
 *      is a protocol error, never a stale success.
 *   3. A connection kept between calls (client->fd) has no request in
 *      flight and no partial reply: any call that leaves one closes it.
 *   4. Nothing sleeps or waits past the deadline: connecting again stops at
 *      @deadline, waiting for replies at @deadline + the grace.
 *
 * Connecting is retried with backoff (retry_at, delay_ms); a delay of 0
 * means "at once", used for the first attempt after a lane broke.
 */
#include "fetch-client.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fetch-protocol.h"
#include "spore-error.h"

struct FetchClient {
    char *path;
    guint8 image[SPORE_SHA256_BYTES];
    guint64 next_tag;
    int fd; /* kept between calls (invariant 3), -1 when none */
};

typedef struct {
    guint64 chunk;
    guint64 tag;
    int lane; /* -1 when UNSENT */
    bool done;
} Request;

typedef struct {
    int fd;
    guint n_sent; /* SENT requests not yet answered */
    guint8 reply[FETCH_REPLY_BYTES];
    gsize got; /* bytes of reply read so far */
} Lane;

/* Everything one fetch_client_get call works on. */
typedef struct {
    FetchClient *client;
    Request *reqs;
    gsize n_reqs;
    gsize n_left; /* not DONE */
    gsize n_unsent;
    Lane lanes[FETCH_CLIENT_LANES_MAX];
    guint n_lanes;
    guint32 priority;
    gint64 deadline;
    gint64 retry_at;
    guint delay_ms;
    char why[256]; /* what failed last, for the timeout's message */
} Batch;

FetchClient *
fetch_client_new(const char *socket_path,
                 const guint8 image[SPORE_SHA256_BYTES], GError **error)
{
    FetchClient *c;

    if (strlen(socket_path) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "agent socket path '%s' is too long", socket_path);
        return NULL;
    }
    c = g_new0(FetchClient, 1);
    c->path = g_strdup(socket_path);
    memcpy(c->image, image, SPORE_SHA256_BYTES);
    c->fd = -1;
    return c;
}

void
fetch_client_free(FetchClient *client)
{
    if (!client)
        return;
    if (client->fd >= 0)
        close(client->fd);
    g_free(client->path);
    g_free(client);
}

static int
agent_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path)); /* checked in _new */
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* Milliseconds from now until @t, rounded up, at least 0. */
static int
ms_until(gint64 t)
{
    gint64 left = t - g_get_monotonic_time();

    return left <= 0 ? 0 : (int)MIN((left + 999) / 1000, G_MAXINT);
}

/* Send all of @buf on @fd before @deadline; errno set on failure. */
static bool
send_all(int fd, const guint8 *buf, gsize len, gint64 deadline)
{
    while (len > 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        ssize_t n;

        if (g_get_monotonic_time() >= deadline) {
            errno = ETIMEDOUT;
            return false;
        }
        n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN) {
            if (poll(&p, 1, ms_until(deadline)) < 0 && errno != EINTR)
                return false;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return false;
        buf += n;
        len -= (gsize)n;
    }
    return true;
}

/* Close lane @l; its SENT requests become UNSENT (invariant 1). */
static void
lane_break(Batch *b, guint l, const char *what, int errnum)
{
    Lane *lane = &b->lanes[l];

    if (lane->fd >= 0)
        close(lane->fd);
    lane->fd = -1;
    lane->got = 0;
    lane->n_sent = 0;
    for (gsize i = 0; i < b->n_reqs; i++) {
        if (!b->reqs[i].done && b->reqs[i].lane == (int)l) {
            b->reqs[i].lane = -1;
            b->n_unsent++;
        }
    }
    g_snprintf(b->why, sizeof(b->why), "%s the host agent at '%s': %s", what,
               b->client->path, g_strerror(errnum));
}

/* The next delay after a failed attempt: 0, then MIN doubling to MAX. */
static void
backoff(Batch *b)
{
    b->retry_at = g_get_monotonic_time() + (gint64)b->delay_ms * 1000;
    b->delay_ms = b->delay_ms == 0
                      ? FETCH_CLIENT_RETRY_MIN_MS
                      : MIN(b->delay_ms * 2, FETCH_CLIENT_RETRY_MAX_MS);
}

/* The lane with the fewest requests in flight among the open ones. */
static int
lane_pick(Batch *b)
{
    int best = -1;

    for (guint l = 0; l < b->n_lanes; l++) {
        if (b->lanes[l].fd >= 0 &&
            (best < 0 || b->lanes[l].n_sent < b->lanes[best].n_sent))
            best = (int)l;
    }
    return best;
}

/*
 * Open the closed lanes and send every UNSENT request, each asking the
 * agent to wait until the deadline.  A failure to connect or to send
 * schedules another attempt (backoff); the requests left UNSENT wait for it.
 */
static void
send_unsent(Batch *b)
{
    for (guint l = 0; l < b->n_lanes; l++) {
        if (b->lanes[l].fd >= 0)
            continue;
        b->lanes[l].fd = agent_connect(b->client->path);
        if (b->lanes[l].fd < 0) {
            g_snprintf(b->why, sizeof(b->why),
                       "cannot reach the host agent at '%s': %s",
                       b->client->path, g_strerror(errno));
            break; /* the agent is not there: the open lanes will do */
        }
    }
    for (gsize i = 0; i < b->n_reqs && b->n_unsent > 0; i++) {
        Request *r = &b->reqs[i];
        FetchRequest req = {.priority = b->priority, .chunk = r->chunk};
        guint8 out[FETCH_REQUEST_BYTES];
        int l;

        if (r->done || r->lane >= 0)
            continue;
        l = lane_pick(b);
        if (l < 0)
            break;
        memcpy(req.image, b->client->image, SPORE_SHA256_BYTES);
        req.wait_ms = (guint64)MAX(ms_until(b->deadline), 1);
        req.tag = r->tag;
        fetch_request_encode(&req, out);
        if (!send_all(b->lanes[l].fd, out, sizeof(out), b->deadline)) {
            lane_break(b, (guint)l, "lost", errno);
            continue; /* another lane may take it; else the next attempt */
        }
        r->lane = l;
        b->lanes[l].n_sent++;
        b->n_unsent--;
    }
    if (b->n_unsent > 0) {
        backoff(b);
    } else {
        b->delay_ms = 0;
        b->why[0] = '\0'; /* past failures are not why a reply is late */
    }
}

/*
 * A whole reply arrived on lane @l: match it to its request (invariant 2).
 * False with @error when it is malformed or reports a failure.
 */
static bool
take_reply(Batch *b, guint l, guint64 *failed_chunk, GError **error)
{
    Lane *lane = &b->lanes[l];
    FetchReply rep;
    Request *r = NULL;

    lane->got = 0;
    if (fetch_reply_decode(lane->reply, &rep)) {
        for (gsize i = 0; i < b->n_reqs && !r; i++) {
            if (!b->reqs[i].done && b->reqs[i].lane == (int)l &&
                b->reqs[i].tag == rep.tag && b->reqs[i].chunk == rep.chunk)
                r = &b->reqs[i];
        }
    }
    if (!r) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "malformed reply from the host agent at '%s'",
                    b->client->path);
        return false;
    }
    r->done = true; /* answered: the connection may be kept */
    lane->n_sent--;
    if (rep.status != 0) {
        if (failed_chunk)
            *failed_chunk = r->chunk;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED, "%s",
                    rep.message[0] ? rep.message : "failed (no reason given)");
        return false;
    }
    b->n_left--;
    return true;
}

/* Read what lane @l has; false with @error on a reply that fails. */
static bool
lane_read(Batch *b, guint l, guint64 *failed_chunk, GError **error)
{
    Lane *lane = &b->lanes[l];
    ssize_t n = recv(lane->fd, lane->reply + lane->got,
                     sizeof(lane->reply) - lane->got, MSG_DONTWAIT);

    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return true;
    if (n <= 0) {
        lane_break(b, l, "lost", n == 0 ? ECONNRESET : errno);
        /* the agent went away since our last word: try again at once */
        b->retry_at = 0;
        return true;
    }
    lane->got += (gsize)n;
    if (lane->got < sizeof(lane->reply))
        return true;
    return take_reply(b, l, failed_chunk, error);
}

/* The first request not DONE: what a timeout is reported about. */
static guint64
first_left(const Batch *b)
{
    for (gsize i = 0; i < b->n_reqs; i++) {
        if (!b->reqs[i].done)
            return b->reqs[i].chunk;
    }
    return 0;
}

/* Wait for replies, or for the next attempt to connect; one round. */
static bool
batch_step(Batch *b, guint64 *failed_chunk, GError **error)
{
    struct pollfd pfd[FETCH_CLIENT_LANES_MAX];
    guint lane_of[FETCH_CLIENT_LANES_MAX];
    gint64 grace_end = b->deadline + (gint64)FETCH_CLIENT_REPLY_GRACE_MS * 1000;
    gint64 wake = grace_end;
    nfds_t n = 0;

    if (b->n_unsent > 0 && g_get_monotonic_time() >= b->retry_at &&
        g_get_monotonic_time() < b->deadline)
        send_unsent(b);
    for (guint l = 0; l < b->n_lanes; l++) {
        if (b->lanes[l].fd >= 0 && b->lanes[l].n_sent > 0) {
            pfd[n] = (struct pollfd){.fd = b->lanes[l].fd, .events = POLLIN};
            lane_of[n++] = l;
        }
    }
    if (b->n_unsent > 0)
        wake = MIN(wake, MAX(b->retry_at, g_get_monotonic_time()));
    if ((b->n_unsent > 0 && g_get_monotonic_time() >= b->deadline) ||
        (n == 0 && b->n_unsent == 0) || g_get_monotonic_time() >= grace_end) {
        if (failed_chunk)
            *failed_chunk = first_left(b);
        if (b->why[0])
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE, "%s",
                        b->why);
        else
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                        "no answer from the host agent at '%s' in time",
                        b->client->path);
        return false;
    }
    if (poll(pfd, n, ms_until(wake)) < 0) {
        if (errno == EINTR)
            return true;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED, "poll: %s",
                    g_strerror(errno));
        return false;
    }
    for (nfds_t i = 0; i < n; i++) {
        if (pfd[i].revents && !lane_read(b, lane_of[i], failed_chunk, error))
            return false;
    }
    return true;
}

bool
fetch_client_get(FetchClient *client, const guint64 *chunks, gsize n_chunks,
                 guint32 priority, gint64 deadline, guint64 *failed_chunk,
                 GError **error)
{
    g_autofree Request *reqs = NULL;
    Batch b = {
        .client = client,
        .n_reqs = n_chunks,
        .n_left = n_chunks,
        .n_unsent = n_chunks,
        .n_lanes = (guint)MIN(n_chunks, FETCH_CLIENT_LANES_MAX),
        .priority = priority,
        .deadline = deadline,
    };
    bool ok = true;

    if (n_chunks == 0)
        return true;
    if (n_chunks > FETCH_CLIENT_BATCH_MAX) {
        if (failed_chunk)
            *failed_chunk = chunks[0];
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "%" G_GSIZE_FORMAT " chunks asked at once (at most %u)",
                    n_chunks, FETCH_CLIENT_BATCH_MAX);
        return false;
    }
    reqs = g_new(Request, n_chunks);
    for (gsize i = 0; i < n_chunks; i++)
        reqs[i] = (Request){
            .chunk = chunks[i], .tag = ++client->next_tag, .lane = -1};
    b.reqs = reqs;
    for (guint l = 0; l < FETCH_CLIENT_LANES_MAX; l++)
        b.lanes[l].fd = -1;
    b.lanes[0].fd = client->fd;
    client->fd = -1;

    while (ok && b.n_left > 0)
        ok = batch_step(&b, failed_chunk, error);

    /* keep lane 0 only when nothing is in flight on it (invariant 3) */
    if (b.lanes[0].n_sent == 0 && b.lanes[0].got == 0) {
        client->fd = b.lanes[0].fd;
        b.lanes[0].fd = -1;
    }
    for (guint l = 0; l < FETCH_CLIENT_LANES_MAX; l++) {
        if (b.lanes[l].fd >= 0)
            close(b.lanes[l].fd);
    }
    return ok;
}
