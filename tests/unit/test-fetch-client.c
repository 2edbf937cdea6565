/*
 * test-fetch-client.c: the shim's fetch client against a fake agent: a
 * thread serving the fetch protocol on a temporary unix socket, one thread
 * per connection, that answers well or breaks in the ways a real agent can
 * (an error, a garbled or short reply, a connection closed mid-reply, an
 * agent that is not there yet, or goes away and comes back).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <glib-unix.h>
#include <glib/gstdio.h>

#include "fetch-client.h"
#include "fetch-protocol.h"
#include "spore-error.h"

#define DEADLINE_S 30 /* only reached when a test fails */

typedef enum {
    FAKE_OK,              /* status 0 for each request, in order */
    FAKE_FAIL,            /* status 1 "chunk N: origin is down" */
    FAKE_GARBLED,         /* a reply with a bad magic */
    FAKE_WRONG_TAG,       /* a reply to a tag never sent */
    FAKE_SHORT,           /* half a reply, then silence */
    FAKE_CLOSE_MID_REPLY, /* half a reply, then close; later ones FAKE_OK */
    FAKE_REVERSE,         /* read `batch` requests, answer in reverse */
    FAKE_BARRIER,         /* answer once `batch` requests are held at once */
} FakeMode;

typedef struct {
    char *dir;
    char *path;
    FakeMode mode;
    guint batch;
    int listen_fd;
    int wake[2]; /* the acceptor's stop pipe */
    GThread *acceptor;
    GMutex lock;
    GCond cond;
    GPtrArray *threads; /* connection threads */
    GArray *fds;        /* their sockets */
    bool stopping;
    /* counters, under lock */
    guint connections;
    guint requests;
    guint held;
    guint broken; /* FAKE_CLOSE_MID_REPLY done */
    FetchRequest last;
} Fake;

static Fake fake;
static guint8 image[SPORE_SHA256_BYTES];

static bool
read_all(int fd, guint8 *buf, gsize len)
{
    while (len > 0) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        buf += n;
        len -= (gsize)n;
    }
    return true;
}

static void
write_all(int fd, const guint8 *buf, gsize len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (gsize)n;
    }
}

static void
reply(int fd, const FetchRequest *req, guint32 status, gsize len)
{
    FetchReply rep = {.status = status, .tag = req->tag, .chunk = req->chunk};
    guint8 out[FETCH_REPLY_BYTES];

    if (status)
        g_snprintf(rep.message, sizeof(rep.message),
                   "chunk %" G_GUINT64_FORMAT ": origin is down", req->chunk);
    fetch_reply_encode(&rep, out);
    if (fake.mode == FAKE_GARBLED)
        memcpy(out, "XXXX", 4);
    if (fake.mode == FAKE_WRONG_TAG)
        out[8] ^= 0x55;
    write_all(fd, out, len);
}

/* Read one request; false at EOF or when stopping. */
static bool
take_request(int fd, FetchRequest *ret)
{
    guint8 in[FETCH_REQUEST_BYTES];

    if (!read_all(fd, in, sizeof(in)))
        return false;
    cr_assert(fetch_request_decode(in, ret), "a malformed request");
    g_mutex_lock(&fake.lock);
    fake.requests++;
    fake.last = *ret;
    g_cond_broadcast(&fake.cond);
    g_mutex_unlock(&fake.lock);
    return true;
}

static gpointer
serve_connection(gpointer data)
{
    int fd = GPOINTER_TO_INT(data);
    FetchRequest reqs[64];

    for (;;) {
        guint n = fake.mode == FAKE_REVERSE ? fake.batch : 1;

        for (guint i = 0; i < n; i++) {
            if (!take_request(fd, &reqs[i]))
                return NULL;
        }
        switch (fake.mode) {
        case FAKE_OK:
        case FAKE_GARBLED:
        case FAKE_WRONG_TAG:
            reply(fd, &reqs[0], 0, FETCH_REPLY_BYTES);
            break;
        case FAKE_FAIL:
            reply(fd, &reqs[0], 1, FETCH_REPLY_BYTES);
            break;
        case FAKE_SHORT:
            reply(fd, &reqs[0], 0, FETCH_REPLY_BYTES / 2);
            break;
        case FAKE_CLOSE_MID_REPLY:
            g_mutex_lock(&fake.lock);
            if (fake.broken++ == 0) {
                g_mutex_unlock(&fake.lock);
                reply(fd, &reqs[0], 0, FETCH_REPLY_BYTES / 2);
                shutdown(fd, SHUT_RDWR);
                return NULL;
            }
            g_mutex_unlock(&fake.lock);
            reply(fd, &reqs[0], 0, FETCH_REPLY_BYTES);
            break;
        case FAKE_REVERSE:
            for (guint i = n; i-- > 0;)
                reply(fd, &reqs[i], 0, FETCH_REPLY_BYTES);
            break;
        case FAKE_BARRIER:
            g_mutex_lock(&fake.lock);
            fake.held++;
            g_cond_broadcast(&fake.cond);
            while (fake.held < fake.batch && !fake.stopping)
                g_cond_wait(&fake.cond, &fake.lock);
            g_mutex_unlock(&fake.lock);
            reply(fd, &reqs[0], 0, FETCH_REPLY_BYTES);
            break;
        }
    }
}

static gpointer
accept_loop(gpointer data)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = fake.listen_fd, .events = POLLIN},
                              {.fd = fake.wake[0], .events = POLLIN}};
        int fd;

        if (poll(p, 2, -1) < 0 && errno == EINTR)
            continue;
        if (p[1].revents)
            return NULL;
        fd = accept4(fake.listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        g_mutex_lock(&fake.lock);
        fake.connections++;
        g_array_append_val(fake.fds, fd);
        g_ptr_array_add(
            fake.threads,
            g_thread_new("fake-conn", serve_connection, GINT_TO_POINTER(fd)));
        g_mutex_unlock(&fake.lock);
    }
}

/* The fake agent starts listening on fake.path in @mode. */
static void
fake_start(FakeMode mode)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    fake.mode = mode;
    fake.stopping = false;
    fake.threads = g_ptr_array_new();
    fake.fds = g_array_new(FALSE, FALSE, sizeof(int));
    fake.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_strlcpy(sa.sun_path, fake.path, sizeof(sa.sun_path));
    cr_assert(bind(fake.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
              "bind: %s", g_strerror(errno));
    cr_assert(listen(fake.listen_fd, 16) == 0);
    cr_assert(g_unix_open_pipe(fake.wake, FD_CLOEXEC, NULL));
    fake.acceptor = g_thread_new("fake-accept", accept_loop, NULL);
}

/* The fake agent goes away: its socket and every connection closed. */
static void
fake_stop(void)
{
    if (!fake.acceptor)
        return;
    cr_assert(write(fake.wake[1], "x", 1) == 1);
    g_thread_join(fake.acceptor);
    fake.acceptor = NULL;
    close(fake.listen_fd);
    close(fake.wake[0]);
    close(fake.wake[1]);
    g_unlink(fake.path);
    g_mutex_lock(&fake.lock);
    fake.stopping = true;
    g_cond_broadcast(&fake.cond);
    for (guint i = 0; i < fake.fds->len; i++)
        shutdown(g_array_index(fake.fds, int, i), SHUT_RDWR);
    g_mutex_unlock(&fake.lock);
    for (guint i = 0; i < fake.threads->len; i++)
        g_thread_join(fake.threads->pdata[i]);
    for (guint i = 0; i < fake.fds->len; i++)
        close(g_array_index(fake.fds, int, i));
    g_ptr_array_free(fake.threads, TRUE);
    g_array_free(fake.fds, TRUE);
}

static void
setup(void)
{
    for (guint i = 0; i < sizeof(image); i++)
        image[i] = (guint8)(i * 7 + 1);
    g_mutex_init(&fake.lock);
    g_cond_init(&fake.cond);
    fake.dir = g_dir_make_tmp("spore-fetch-client-XXXXXX", NULL);
    fake.path = g_build_filename(fake.dir, "fetch.sock", NULL);
}

static void
teardown(void)
{
    fake_stop();
    g_rmdir(fake.dir);
    g_free(fake.path);
    g_free(fake.dir);
}

static gint64
deadline_in_s(int s)
{
    return g_get_monotonic_time() + (gint64)s * G_USEC_PER_SEC;
}

static FetchClient *
client(void)
{
    g_autoptr(GError) err = NULL;
    FetchClient *c = fetch_client_new(fake.path, image, &err);

    cr_assert(c, "%s", err ? err->message : "");
    return c;
}

static guint
counter(guint *p)
{
    guint v;

    g_mutex_lock(&fake.lock);
    v = *p;
    g_mutex_unlock(&fake.lock);
    return v;
}

TestSuite(fetch_client, .init = setup, .fini = teardown);

Test(fetch_client, gets_a_chunk_the_agent_reports_present)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 42;

    fake_start(FAKE_OK);
    cr_assert(fetch_client_get(c, &chunk, 1, 1, deadline_in_s(DEADLINE_S), NULL,
                               &err),
              "%s", err ? err->message : "");
    cr_assert_eq(fake.last.chunk, 42);
    cr_assert_eq(fake.last.priority, 1);
    cr_assert_arr_eq(fake.last.image, image, sizeof(image));
    cr_assert(fake.last.wait_ms > 0 && fake.last.wait_ms <= DEADLINE_S * 1000,
              "asked to wait %" G_GUINT64_FORMAT " ms", fake.last.wait_ms);
}

Test(fetch_client, keeps_its_connection_between_calls)
{
    g_autoptr(FetchClient) c = client();
    guint64 chunk = 1;

    fake_start(FAKE_OK);
    for (int i = 0; i < 3; i++)
        cr_assert(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S),
                                   NULL, NULL));
    cr_assert_eq(counter(&fake.connections), 1);
    cr_assert_eq(counter(&fake.requests), 3);
}

Test(fetch_client, reports_the_agents_error_and_the_chunk_it_is_about)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 7, failed = 0;

    fake_start(FAKE_FAIL);
    cr_assert_not(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S),
                                   &failed, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_FAILED));
    cr_assert_str_eq(err->message, "chunk 7: origin is down");
    cr_assert_eq(failed, 7);
    /* an answer is not a broken connection: it is kept, not asked again */
    cr_assert_eq(counter(&fake.requests), 1);
    g_clear_error(&err);
    cr_assert_not(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S),
                                   NULL, &err));
    cr_assert_eq(counter(&fake.connections), 1);
}

Test(fetch_client, rejects_a_garbled_reply_without_asking_again)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 3;

    fake_start(FAKE_GARBLED);
    cr_assert_not(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S),
                                   NULL, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
    cr_assert(strstr(err->message, "malformed reply"), "%s", err->message);
    cr_assert_eq(counter(&fake.requests), 1);
}

Test(fetch_client, rejects_a_reply_to_a_request_never_sent)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 3;

    fake_start(FAKE_WRONG_TAG);
    cr_assert_not(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S),
                                   NULL, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
}

Test(fetch_client, gives_up_on_a_short_reply_at_its_deadline)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 5, failed = 0;

    fake_start(FAKE_SHORT);
    cr_assert_not(fetch_client_get(
        c, &chunk, 1, 0, g_get_monotonic_time() + 100000, &failed, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE));
    cr_assert_eq(failed, 5);
    cr_assert(strstr(err->message, "no answer from the host agent at"), "%s",
              err->message);
    /* the half-read connection is not kept: the next call starts clean */
    fake_stop();
    fake_start(FAKE_OK);
    g_clear_error(&err);
    cr_assert(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S), NULL,
                               &err),
              "%s", err ? err->message : "");
}

Test(fetch_client, asks_again_when_the_agent_closes_mid_reply)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 9;

    fake_start(FAKE_CLOSE_MID_REPLY);
    cr_assert(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S), NULL,
                               &err),
              "%s", err ? err->message : "");
    cr_assert_eq(counter(&fake.requests), 2);
    cr_assert_eq(counter(&fake.connections), 2);
}

Test(fetch_client, asks_again_for_every_unanswered_chunk_of_a_broken_connection)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunks[2 * FETCH_CLIENT_LANES_MAX - 1];

    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++)
        chunks[i] = 300 + i;
    fake_start(FAKE_CLOSE_MID_REPLY); /* one of the connections breaks */
    cr_assert(fetch_client_get(c, chunks, G_N_ELEMENTS(chunks), 0,
                               deadline_in_s(DEADLINE_S), NULL, &err),
              "%s", err ? err->message : "");
    /* the request it was answering came again, with the others */
    cr_assert_geq(counter(&fake.requests), G_N_ELEMENTS(chunks) + 1);
    cr_assert_eq(counter(&fake.connections), FETCH_CLIENT_LANES_MAX + 1);
}

static gpointer
start_later(gpointer data)
{
    g_usleep(300 * 1000); /* a few failed attempts: the fixture, not a bound */
    fake_start(FAKE_OK);
    return NULL;
}

Test(fetch_client, waits_for_an_agent_that_is_not_there_yet)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    GThread *t = g_thread_new("start-later", start_later, NULL);
    guint64 chunk = 11;

    cr_assert(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S), NULL,
                               &err),
              "%s", err ? err->message : "");
    g_thread_join(t);
    cr_assert_eq(counter(&fake.requests), 1);
}

Test(fetch_client, gives_up_on_an_absent_agent_at_its_deadline)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 2, failed = 0;

    cr_assert_not(fetch_client_get(
        c, &chunk, 1, 0, g_get_monotonic_time() + 200000, &failed, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE));
    cr_assert(strstr(err->message, "cannot reach the host agent at '"), "%s",
              err->message);
    cr_assert(strstr(err->message, g_strerror(ENOENT)), "%s", err->message);
    cr_assert_eq(failed, 2);
}

/* The agent dies with a request in flight and is restarted. */
static gpointer
restart_on_first_request(gpointer data)
{
    g_mutex_lock(&fake.lock);
    while (fake.requests == 0)
        g_cond_wait(&fake.cond, &fake.lock);
    g_mutex_unlock(&fake.lock);
    fake_stop();
    g_usleep(300 * 1000); /* down for a while: the fixture, not a bound */
    fake_start(FAKE_OK);
    return NULL;
}

Test(fetch_client, survives_an_agent_restart_with_a_request_in_flight)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    GThread *t;
    guint64 chunk = 13;

    fake_start(FAKE_BARRIER); /* holds the request: never answers it */
    fake.batch = G_MAXUINT;
    t = g_thread_new("restart", restart_on_first_request, NULL);
    cr_assert(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S), NULL,
                               &err),
              "%s", err ? err->message : "");
    g_thread_join(t);
    cr_assert_eq(fake.last.chunk, 13); /* asked again of the new agent */
    cr_assert_eq(counter(&fake.requests), 2);
}

Test(fetch_client, survives_an_agent_restart_between_calls)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunk = 4;

    fake_start(FAKE_OK);
    cr_assert(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S), NULL,
                               NULL));
    fake_stop(); /* its kept connection is now dead */
    fake_start(FAKE_OK);
    cr_assert(fetch_client_get(c, &chunk, 1, 0, deadline_in_s(DEADLINE_S), NULL,
                               &err),
              "%s", err ? err->message : "");
}

Test(fetch_client, sends_every_request_before_awaiting_replies)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunks[2 * FETCH_CLIENT_LANES_MAX];

    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++)
        chunks[i] = 100 + i;
    /* each connection answers only after two requests, last first: a
     * client that waited for a reply before sending on would hang */
    fake.batch = 2;
    fake_start(FAKE_REVERSE);
    cr_assert(fetch_client_get(c, chunks, G_N_ELEMENTS(chunks), 0,
                               deadline_in_s(DEADLINE_S), NULL, &err),
              "%s", err ? err->message : "");
    cr_assert_eq(counter(&fake.requests), G_N_ELEMENTS(chunks));
}

Test(fetch_client, asks_for_several_chunks_over_several_connections_at_once)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    guint64 chunks[FETCH_CLIENT_LANES_MAX];

    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++)
        chunks[i] = 200 + i;
    /* the fake answers, like the real agent, the requests of a connection
     * one after another, and only once it holds all of them: a client
     * using one connection would hang */
    fake.batch = FETCH_CLIENT_LANES_MAX;
    fake_start(FAKE_BARRIER);
    cr_assert(fetch_client_get(c, chunks, G_N_ELEMENTS(chunks), 0,
                               deadline_in_s(DEADLINE_S), NULL, &err),
              "%s", err ? err->message : "");
    cr_assert_eq(counter(&fake.connections), FETCH_CLIENT_LANES_MAX);
    /* only one connection is kept for the next call */
    fake.batch = 0;
    cr_assert(fetch_client_get(c, chunks, 1, 0, deadline_in_s(DEADLINE_S), NULL,
                               &err));
    cr_assert_eq(counter(&fake.connections), FETCH_CLIENT_LANES_MAX);
}

Test(fetch_client, refuses_a_batch_over_its_limit)
{
    g_autoptr(FetchClient) c = client();
    g_autoptr(GError) err = NULL;
    g_autofree guint64 *chunks = g_new0(guint64, FETCH_CLIENT_BATCH_MAX + 1);

    cr_assert_not(fetch_client_get(c, chunks, FETCH_CLIENT_BATCH_MAX + 1, 0,
                                   deadline_in_s(DEADLINE_S), NULL, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT));
}

Test(fetch_client, refuses_a_socket_path_too_long_for_a_unix_address)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = g_strnfill(200, 'x');

    cr_assert_null(fetch_client_new(path, image, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
}
