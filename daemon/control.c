/*
 * control.c: the control sockets, both sides (control.h).
 *
 * Server: a GThreadedSocketService, one thread per connection; each
 * thread owns its ControlLineReader.  The handler is the daemon's and must
 * be thread-safe.  Client: one blocking connection per call.
 *
 * Invariants:
 *  1. The socket file is never more open than its mode: it is bound under
 *     a umask that leaves at most that mode (control_socket_listen).
 *  2. A line reader never holds more than its limit + 1 bytes: it reads
 *     no further than that, and a line of more than the limit is an
 *     error (control_line_reader_next).
 *  3. Binding removes an old socket file, never another kind of file
 *     (remove_old_socket).
 *  4. Every request line gets one reply line, an error envelope when it is
 *     not a JSON object or the handler has no answer (answer).
 *  5. After control_server_stop returns, no handler runs (server_enter),
 *     and no connection thread uses freed memory (the server is shared
 *     with the "run" closure).
 */
#include "control.h"

#include <errno.h>
#include <grp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <gio/gunixsocketaddress.h>

#include "spore-error.h"

/* remove an old socket file at @path, and nothing else: a regular file or
 * a directory there is an error, not a casualty */
static bool
remove_old_socket(const char *path, GError **error)
{
    struct stat st;

    if (lstat(path, &st) < 0)
        return true;
    if (!S_ISSOCK(st.st_mode)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot listen on '%s': it exists and is not a socket",
                    path);
        return false;
    }
    unlink(path);
    return true;
}

GSocketService *
control_socket_listen(const char *path, mode_t mode, const char *group,
                      guint max_threads, GError **error)
{
    g_autoptr(GSocketService) svc =
        g_threaded_socket_service_new((int)max_threads);
    g_autoptr(GSocketAddress) addr = NULL;
    g_autoptr(GError) err = NULL;
    gboolean bound;
    mode_t mask;

    if (!remove_old_socket(path, error))
        return NULL;
    addr = g_unix_socket_address_new(path);
    mask = umask(0777 & ~mode);
    bound = g_socket_listener_add_address(
        G_SOCKET_LISTENER(svc), addr, G_SOCKET_TYPE_STREAM,
        G_SOCKET_PROTOCOL_DEFAULT, NULL, NULL, &err);
    umask(mask);
    if (!bound) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot listen on '%s': %s", path, err->message);
        return NULL;
    }
    if (group && *group) {
        struct group *gr = getgrnam(group);

        if (!gr) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "cannot give '%s' to group '%s': no such group", path,
                        group);
            unlink(path);
            return NULL;
        }
        if (chown(path, (uid_t)-1, gr->gr_gid) < 0) {
            int e = errno;

            g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                        "cannot give '%s' to group '%s': %s", path, group,
                        g_strerror(e));
            unlink(path);
            return NULL;
        }
    }
    if (chmod(path, mode) < 0) {
        int e = errno;

        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot set the mode of '%s' to %04o: %s", path,
                    (unsigned)mode, g_strerror(e));
        unlink(path);
        return NULL;
    }
    return g_steal_pointer(&svc);
}

/* ---- lines ------------------------------------------------------------ */

struct ControlLineReader {
    GInputStream *in; /* borrowed */
    GByteArray *buf;  /* read, not yet returned */
    gsize scanned;    /* bytes of buf known to hold no '\n' */
    gsize max_bytes;
};

ControlLineReader *
control_line_reader_new(GInputStream *in, gsize max_bytes)
{
    ControlLineReader *r = g_new0(ControlLineReader, 1);

    r->in = in;
    r->buf = g_byte_array_new();
    r->max_bytes = max_bytes;
    return r;
}

void
control_line_reader_free(ControlLineReader *r)
{
    if (!r)
        return;
    g_byte_array_unref(r->buf);
    g_free(r);
}

char *
control_line_reader_next(ControlLineReader *r, GError **error)
{
    for (;;) {
        const guint8 *nl = r->buf->len > r->scanned
                               ? memchr(r->buf->data + r->scanned, '\n',
                                        r->buf->len - r->scanned)
                               : NULL;
        guint8 chunk[CONTROL_READ_CHUNK_BYTES];
        gsize want;
        gssize n;

        if (nl) {
            gsize len = (gsize)(nl - r->buf->data);
            char *line = g_strndup((const char *)r->buf->data, len);

            g_byte_array_remove_range(r->buf, 0, (guint)(len + 1));
            r->scanned = 0;
            return line;
        }
        r->scanned = r->buf->len;
        /* max_bytes + 1 bytes and no '\n': the line is over the limit (a
         * line of exactly max_bytes is read with its '\n') */
        if (r->buf->len > r->max_bytes) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                        "a request line is over %" G_GSIZE_FORMAT " bytes",
                        r->max_bytes);
            return NULL;
        }
        /* never hold more than max_bytes + 1 (the '\n') */
        want = MIN(sizeof(chunk), r->max_bytes + 1 - r->buf->len);
        n = g_input_stream_read(r->in, chunk, want, NULL, error);
        if (n < 0)
            return NULL;
        if (n == 0) {
            if (r->buf->len > 0)
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                            "the connection ended inside a line");
            return NULL;
        }
        g_byte_array_append(r->buf, chunk, (guint)n);
    }
}

/* ---- the server -------------------------------------------------------- */

/*
 * A server is shared by the caller and the "run" closure (a reference
 * each, g_atomic_rc_box): connection threads may outlive
 * control_server_stop while their clients stay connected, and must not
 * touch freed memory.  The handler, which uses the caller's data, is only
 * called between server_enter and server_leave; stop waits until none
 * runs and lets no other start.
 */
struct ControlServer {
    GSocketService *service;
    char *path;
    gsize max_line_bytes;
    ControlHandler handler;
    gpointer data;
    GMutex lock;
    GCond idle;   /* busy fell to 0 */
    guint busy;   /* handlers running (lock) */
    bool stopped; /* no handler may start (lock) */
};

static void
server_clear(gpointer data)
{
    ControlServer *s = data;

    g_free(s->path);
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->idle);
}

static void
server_release(gpointer data, GClosure *closure)
{
    g_atomic_rc_box_release_full(data, server_clear);
}

/* may a handler run? then it is counted until server_leave */
static bool
server_enter(ControlServer *s)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);

    if (s->stopped)
        return false;
    s->busy++;
    return true;
}

static void
server_leave(ControlServer *s)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);

    if (--s->busy == 0)
        g_cond_broadcast(&s->idle);
}

JsonObject *
control_reply_ok(void)
{
    JsonObject *r = json_object_new();

    json_object_set_boolean_member(r, "ok", TRUE);
    return r;
}

JsonObject *
control_reply_error(const char *format, ...)
{
    JsonObject *r = json_object_new();
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, format);
    msg = g_strdup_vprintf(format, ap);
    va_end(ap);
    json_object_set_boolean_member(r, "ok", FALSE);
    json_object_set_string_member(r, "error", msg);
    return r;
}

static JsonObject *
answer(ControlServer *s, const char *line)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) req = json_util_parse_object(line, -1, &err);
    JsonObject *reply;

    if (!req)
        return control_reply_error(
            "a request is one JSON object on one line: %s", err->message);
    reply = s->handler(req, s->data);
    return reply ? reply : control_reply_error("the request had no answer");
}

static gboolean
on_run(GThreadedSocketService *svc, GSocketConnection *conn, GObject *source,
       gpointer data)
{
    ControlServer *s = data;
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(conn));
    g_autoptr(ControlLineReader) reader = control_line_reader_new(
        g_io_stream_get_input_stream(G_IO_STREAM(conn)), s->max_line_bytes);

    for (;;) {
        g_autoptr(GError) err = NULL;
        g_autofree char *line = control_line_reader_next(reader, &err);
        g_autoptr(JsonObject) reply = NULL;
        g_autofree char *text = NULL;

        if (!line) {
            if (err && g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT))
                g_warning("control socket '%s': %s; closing the connection",
                          s->path, err->message);
            break;
        }
        if (!server_enter(s))
            break;
        reply = answer(s, line);
        server_leave(s);
        text = json_util_to_text(reply, false);
        if (!g_output_stream_write_all(out, text, strlen(text), NULL, NULL,
                                       NULL) ||
            !g_output_stream_write_all(out, "\n", 1, NULL, NULL, NULL))
            break;
    }
    return TRUE;
}

ControlServer *
control_server_start(const char *path, mode_t mode, const char *group,
                     guint max_threads, gsize max_line_bytes,
                     ControlHandler handler, gpointer data, GError **error)
{
    ControlServer *s;
    GSocketService *svc =
        control_socket_listen(path, mode, group, max_threads, error);

    if (!svc)
        return NULL;
    s = g_atomic_rc_box_new0(ControlServer);
    s->service = svc;
    s->path = g_strdup(path);
    s->max_line_bytes = max_line_bytes;
    s->handler = handler;
    s->data = data;
    g_mutex_init(&s->lock);
    g_cond_init(&s->idle);
    g_signal_connect_data(svc, "run", G_CALLBACK(on_run),
                          g_atomic_rc_box_acquire(s), server_release, 0);
    g_socket_service_start(svc);
    return s;
}

void
control_server_stop(ControlServer *s)
{
    if (!s)
        return;
    g_mutex_lock(&s->lock);
    s->stopped = true;
    while (s->busy > 0)
        g_cond_wait(&s->idle, &s->lock);
    g_mutex_unlock(&s->lock);
    g_socket_service_stop(s->service);
    g_socket_listener_close(G_SOCKET_LISTENER(s->service));
    unlink(s->path);
    g_clear_object(&s->service);
    g_atomic_rc_box_release_full(s, server_clear);
}

/* ---- the client -------------------------------------------------------- */

/* why a connect to @path failed, in an operator's words */
static char *
connect_failure(const char *what, const char *path, const GError *err)
{
    struct stat st;

    if (stat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
        return g_strdup_printf("cannot reach %s at '%s': not a socket", what,
                               path);
    if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED))
        return g_strdup_printf(
            "cannot reach %s at '%s': %s (access is for the socket's owner "
            "and group: see the daemon's control_group setting)",
            what, path, err->message);
    return g_strdup_printf("cannot reach %s at '%s': %s", what, path,
                           err->message);
}

JsonObject *
control_call(const char *what, const char *path, JsonObject *request,
             GError **error)
{
    g_autoptr(GSocketClient) client = g_socket_client_new();
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
    g_autoptr(GSocketConnection) conn = NULL;
    g_autoptr(ControlLineReader) reader = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *text = NULL;
    g_autofree char *line = NULL;
    GOutputStream *out;

    conn =
        g_socket_client_connect(client, G_SOCKET_CONNECTABLE(addr), NULL, &err);
    if (!conn) {
        g_autofree char *why = connect_failure(what, path, err);

        g_set_error_literal(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE, why);
        return NULL;
    }
    out = g_io_stream_get_output_stream(G_IO_STREAM(conn));
    text = json_util_to_text(request, false);
    if (!g_output_stream_write_all(out, text, strlen(text), NULL, NULL, &err) ||
        !g_output_stream_write_all(out, "\n", 1, NULL, NULL, &err)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot send to %s at '%s': %s", what, path, err->message);
        return NULL;
    }
    reader =
        control_line_reader_new(g_io_stream_get_input_stream(G_IO_STREAM(conn)),
                                CONTROL_LINE_MAX_BYTES);
    line = control_line_reader_next(reader, &err);
    if (!line) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "%s at '%s' closed the connection without a "
                    "reply%s%s",
                    what, path, err ? ": " : "", err ? err->message : "");
        return NULL;
    }
    {
        JsonObject *reply = json_util_parse_object(line, -1, &err);

        if (!reply) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "bad reply from %s at '%s': %s", what, path,
                        err->message);
            return NULL;
        }
        return reply;
    }
}
