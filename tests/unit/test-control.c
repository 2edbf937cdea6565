/*
 * test-control.c: the control sockets (daemon/control.c) and the JSON
 * accessors (daemon/json-util.c) — the line reader's limit and framing, a
 * server and a client over a real unix socket in a temporary directory,
 * the socket's mode, the error envelope, what a client is told.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib/gstdio.h>

#include "control.h"
#include "spore-error.h"
#include "test-util.h"

/* ---- a stream that hands out its bytes a few at a time ----------------- */

/* DripStream: reads of at most @drip bytes from a buffer, and a count of
 * the bytes handed out, to see what a reader took */
typedef struct {
    GInputStream parent;
    GBytes *data;
    gsize offset;
    gsize drip;
} DripStream;

typedef struct {
    GInputStreamClass parent_class;
} DripStreamClass;

GType drip_stream_get_type(void);
G_DEFINE_TYPE(DripStream, drip_stream, G_TYPE_INPUT_STREAM)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(DripStream, g_object_unref)

static gssize
drip_read(GInputStream *stream, void *buffer, gsize count,
          GCancellable *cancellable, GError **error)
{
    DripStream *d = (DripStream *)stream;
    gsize size = g_bytes_get_size(d->data);
    gsize n = MIN(MIN(count, d->drip), size - d->offset);

    memcpy(buffer, (const char *)g_bytes_get_data(d->data, NULL) + d->offset,
           n);
    d->offset += n;
    return (gssize)n;
}

static void
drip_finalize(GObject *object)
{
    g_bytes_unref(((DripStream *)object)->data);
    G_OBJECT_CLASS(drip_stream_parent_class)->finalize(object);
}

static void
drip_stream_class_init(DripStreamClass *klass)
{
    G_INPUT_STREAM_CLASS(klass)->read_fn = drip_read;
    G_OBJECT_CLASS(klass)->finalize = drip_finalize;
}

static void
drip_stream_init(DripStream *d)
{
}

static DripStream *
drip_new(const char *text, gsize len, gsize drip)
{
    DripStream *d = g_object_new(drip_stream_get_type(), NULL);

    d->data = g_bytes_new(text, len);
    d->drip = drip;
    return d;
}

/* ---- the line reader --------------------------------------------------- */

Test(control_line_reader,
     refuses_a_line_over_its_limit_holding_at_most_limit_plus_one)
{
    const gsize limit = 1000;
    g_autofree char *text = g_strnfill(limit * 5, 'a');
    g_autoptr(DripStream) d = drip_new(text, limit * 5, 4096);
    g_autoptr(ControlLineReader) r =
        control_line_reader_new(G_INPUT_STREAM(d), limit);
    g_autoptr(GError) err = NULL;
    g_autofree char *line = control_line_reader_next(r, &err);

    cr_expect_null(line);
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT), "%s",
              err->message);
    cr_expect_leq(d->offset, limit + 1, "read %zu bytes of a %zu-byte limit",
                  d->offset, limit);
}

Test(control_line_reader, accepts_a_line_of_exactly_its_limit)
{
    const gsize limit = 100;
    g_autofree char *text = g_strnfill(limit + 1, 'b');
    g_autoptr(DripStream) d = NULL;
    g_autoptr(ControlLineReader) r = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *line = NULL;

    text[limit] = '\n';
    d = drip_new(text, limit + 1, 7);
    r = control_line_reader_new(G_INPUT_STREAM(d), limit);
    line = control_line_reader_next(r, &err);
    cr_assert(line, "%s", err ? err->message : "");
    cr_expect_eq(strlen(line), limit);
}

Test(control_line_reader, returns_a_line_split_across_reads)
{
    const char *text = "{\"cmd\": \"service-list\"}\n";
    g_autoptr(DripStream) d = drip_new(text, strlen(text), 3);
    g_autoptr(ControlLineReader) r =
        control_line_reader_new(G_INPUT_STREAM(d), 1024);
    g_autoptr(GError) err = NULL;
    g_autofree char *line = control_line_reader_next(r, &err);
    g_autofree char *end = NULL;

    cr_assert(line, "%s", err ? err->message : "");
    cr_expect_str_eq(line, "{\"cmd\": \"service-list\"}");
    end = control_line_reader_next(r, &err);
    cr_expect_null(end);
    cr_expect_null(err, "a clean end is not an error");
}

Test(control_line_reader, returns_several_lines_of_one_read_one_by_one)
{
    const char *text = "one\ntwo\n\nfour\n";
    g_autoptr(DripStream) d = drip_new(text, strlen(text), 4096);
    g_autoptr(ControlLineReader) r =
        control_line_reader_new(G_INPUT_STREAM(d), 1024);
    const char *want[] = {"one", "two", "", "four"};

    for (guint i = 0; i < G_N_ELEMENTS(want); i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *line = control_line_reader_next(r, &err);

        cr_assert(line, "line %u: %s", i, err ? err->message : "none");
        cr_expect_str_eq(line, want[i]);
    }
    cr_expect_eq(d->offset, strlen(text), "all in one read");
}

Test(control_line_reader, says_when_the_stream_ends_inside_a_line)
{
    const char *text = "done\nhalf";
    g_autoptr(DripStream) d = drip_new(text, strlen(text), 2);
    g_autoptr(ControlLineReader) r =
        control_line_reader_new(G_INPUT_STREAM(d), 1024);
    g_autoptr(GError) err = NULL;
    g_autofree char *first = control_line_reader_next(r, NULL);
    g_autofree char *second = control_line_reader_next(r, &err);

    cr_expect_str_eq(first, "done");
    cr_expect_null(second);
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_IO));
}

/* ---- the server and the client ----------------------------------------- */

static char *dir;
static gint stopping;   /* asks the looper to return */
static GThread *looper; /* accepts the connections, as a daemon's loop does */

static gpointer
run_loop(gpointer data)
{
    while (!g_atomic_int_get(&stopping))
        g_main_context_iteration(NULL, TRUE);
    return NULL;
}

static void
loop_start(void)
{
    g_atomic_int_set(&stopping, 0);
    looper = g_thread_new("loop", run_loop, NULL);
}

/* the wakeup stays signalled until the looper polls: none is lost */
static void
loop_stop(void)
{
    g_atomic_int_set(&stopping, 1);
    g_main_context_wakeup(NULL);
    g_thread_join(looper);
}

static void
make_dir(void)
{
    signal(SIGPIPE, SIG_IGN); /* a closed connection is an error, as in the
                                 daemons */
    dir = g_dir_make_tmp("test-control-XXXXXX", NULL);
    cr_assert(dir);
    loop_start();
}

/* stop @s while no thread runs the main context (control.h), then go on
 * accepting for the next server */
static void
server_stop(ControlServer *s)
{
    loop_stop();
    control_server_stop(s);
    loop_start();
}

static void
remove_dir(void)
{
    loop_stop();
    test_rm_rf(dir);
    g_clear_pointer(&dir, g_free);
}

/* the handler: echo the request's "say" back, or an error for "fail" */
static JsonObject *
echo(JsonObject *request, gpointer data)
{
    JsonObject *r;

    g_atomic_int_inc((gint *)data);
    if (json_util_get_bool(request, "fail", false))
        return control_reply_error("asked to fail by '%s'",
                                   json_util_get_string(request, "say", "?"));
    r = control_reply_ok();
    json_object_set_string_member(r, "said",
                                  json_util_get_string(request, "say", ""));
    return r;
}

static JsonObject *
request_saying(const char *text)
{
    JsonObject *o = json_object_new();

    json_object_set_string_member(o, "say", text);
    return o;
}

TestSuite(control_socket, .init = make_dir, .fini = remove_dir);

Test(control_socket, round_trips_a_request_over_a_unix_socket)
{
    g_autofree char *path = g_build_filename(dir, "c.sock", NULL);
    g_autoptr(GError) err = NULL;
    gint calls = 0;
    ControlServer *s =
        control_server_start(path, 0600, NULL, 2, 4096, echo, &calls, &err);
    g_autoptr(JsonObject) req = request_saying("hello");
    g_autoptr(JsonObject) reply = NULL;
    g_autoptr(JsonObject) failing = request_saying("bye");
    g_autoptr(JsonObject) refused = NULL;

    cr_assert(s, "%s", err ? err->message : "");
    reply = control_call("the test server", path, req, &err);
    cr_assert(reply, "%s", err ? err->message : "");
    cr_expect(json_util_get_bool(reply, "ok", false));
    cr_expect_str_eq(json_util_get_string(reply, "said", ""), "hello");
    json_object_set_boolean_member(failing, "fail", TRUE);
    refused = control_call("the test server", path, failing, &err);
    cr_assert(refused, "an error envelope is a reply");
    cr_expect_not(json_util_get_bool(refused, "ok", true));
    cr_expect_str_eq(json_util_get_string(refused, "error", ""),
                     "asked to fail by 'bye'");
    cr_expect_eq(g_atomic_int_get(&calls), 2);
    server_stop(s);
    cr_expect_not(g_file_test(path, G_FILE_TEST_EXISTS),
                  "stop removes the socket file");
}

Test(control_socket, has_the_mode_it_was_asked_for)
{
    const mode_t modes[] = {0600, 0660, 0666};

    for (guint i = 0; i < G_N_ELEMENTS(modes); i++) {
        g_autofree char *path = g_strdup_printf("%s/m%u.sock", dir, i);
        g_autoptr(GError) err = NULL;
        gint calls = 0;
        ControlServer *s = control_server_start(path, modes[i], "", 4, 4096,
                                                echo, &calls, &err);
        struct stat st;

        cr_assert(s, "%s", err ? err->message : "");
        cr_assert_eq(stat(path, &st), 0);
        cr_expect(S_ISSOCK(st.st_mode));
        cr_expect_eq(st.st_mode & 07777, modes[i], "mode %04o, asked %04o",
                     (unsigned)(st.st_mode & 07777), (unsigned)modes[i]);
        server_stop(s);
    }
}

Test(control_socket, refuses_a_group_that_does_not_exist)
{
    g_autofree char *path = g_build_filename(dir, "g.sock", NULL);
    g_autoptr(GError) err = NULL;
    gint calls = 0;
    ControlServer *s = control_server_start(
        path, 0660, "no-such-group-spore-test", 1, 4096, echo, &calls, &err);

    cr_expect_null(s);
    cr_assert(err);
    cr_expect(strstr(err->message, "no such group"), "%s", err->message);
    cr_expect_not(g_file_test(path, G_FILE_TEST_EXISTS),
                  "no socket is left more open than asked");
}

Test(control_socket, does_not_remove_a_file_that_is_not_a_socket)
{
    g_autofree char *path = g_build_filename(dir, "precious", NULL);
    g_autoptr(GError) err = NULL;
    gint calls = 0;
    ControlServer *s = NULL;

    cr_assert(g_file_set_contents(path, "data", -1, NULL));
    s = control_server_start(path, 0600, NULL, 4, 4096, echo, &calls, &err);
    cr_expect_null(s);
    cr_assert(err);
    cr_expect(g_file_test(path, G_FILE_TEST_IS_REGULAR), "the file is kept");
    server_stop(s);
}

/* send @text raw on a new connection to @path and return the reply line */
static char *
raw_exchange(const char *path, const char *text)
{
    g_autoptr(GSocketClient) client = g_socket_client_new();
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
    g_autoptr(GSocketConnection) conn =
        g_socket_client_connect(client, G_SOCKET_CONNECTABLE(addr), NULL, NULL);
    g_autoptr(ControlLineReader) r = NULL;

    cr_assert(conn);
    cr_assert(g_output_stream_write_all(
        g_io_stream_get_output_stream(G_IO_STREAM(conn)), text, strlen(text),
        NULL, NULL, NULL));
    r = control_line_reader_new(g_io_stream_get_input_stream(G_IO_STREAM(conn)),
                                CONTROL_LINE_MAX_BYTES);
    return control_line_reader_next(r, NULL);
}

Test(control_socket, answers_a_line_that_is_not_json_with_an_error_envelope)
{
    g_autofree char *path = g_build_filename(dir, "j.sock", NULL);
    gint calls = 0;
    ControlServer *s =
        control_server_start(path, 0600, NULL, 4, 4096, echo, &calls, NULL);
    g_autofree char *line = NULL;
    g_autoptr(JsonObject) reply = NULL;

    cr_assert(s);
    line = raw_exchange(path, "this is not json\n");
    cr_assert(line, "no reply");
    reply = json_util_parse_object(line, -1, NULL);
    cr_assert(reply, "the reply '%s' is no JSON object", line);
    cr_expect_not(json_util_get_bool(reply, "ok", true));
    cr_expect(strstr(json_util_get_string(reply, "error", ""),
                     "one JSON object on one line"),
              "%s", line);
    cr_expect_eq(calls, 0, "the handler never saw it");
    g_free(line);
    line = raw_exchange(path, "[1, 2]\n");
    cr_assert(line);
    cr_expect(strstr(line, "\"ok\":false"), "an array: %s", line);
    server_stop(s);
}

Test(control_socket, closes_a_connection_whose_line_is_over_the_limit)
{
    g_autofree char *path = g_build_filename(dir, "l.sock", NULL);
    g_autofree char *big = g_strnfill(9000, 'x');
    gint calls = 0;
    ControlServer *s =
        control_server_start(path, 0600, NULL, 4, 4096, echo, &calls, NULL);
    g_autofree char *line = NULL;

    cr_assert(s);
    line = raw_exchange(path, big);
    cr_expect_null(line, "no answer to an oversized line");
    cr_expect_eq(calls, 0);
    server_stop(s);
}

Test(control_socket, call_on_a_regular_file_says_it_is_not_a_socket)
{
    g_autofree char *path = g_build_filename(dir, "file", NULL);
    g_autoptr(JsonObject) req = request_saying("x");
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) reply = NULL;

    cr_assert(g_file_set_contents(path, "", -1, NULL));
    reply = control_call("the site manager", path, req, &err);
    cr_expect_null(reply);
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE));
    cr_expect(strstr(err->message, "not a socket"), "%s", err->message);
    cr_expect(strstr(err->message, "the site manager"), "%s", err->message);
}

Test(control_socket, call_on_a_directory_says_it_is_not_a_socket)
{
    g_autoptr(JsonObject) req = request_saying("x");
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) reply = control_call("the agent", dir, req, &err);

    cr_expect_null(reply);
    cr_assert(err);
    cr_expect(strstr(err->message, "not a socket"), "%s", err->message);
}

Test(control_socket, call_without_a_server_names_the_path)
{
    g_autofree char *path = g_build_filename(dir, "none.sock", NULL);
    g_autoptr(JsonObject) req = request_saying("x");
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) reply =
        control_call("the site manager", path, req, &err);

    cr_expect_null(reply);
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE));
    cr_expect(strstr(err->message, path), "%s", err->message);
}

/* ---- the JSON accessors ------------------------------------------------ */

Test(json_util, returns_the_fallback_for_missing_or_mistyped_members)
{
    const char *text = "{\"s\": \"x\", \"i\": 7, \"d\": 1.5, \"b\": true, "
                       "\"o\": {}, \"a\": [], \"n\": null}";
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) o = json_util_parse_object(text, -1, &err);

    cr_assert(o, "%s", err ? err->message : "");
    cr_expect_str_eq(json_util_get_string(o, "s", NULL), "x");
    cr_expect_eq(json_util_get_int(o, "i", 0), 7);
    cr_expect_float_eq(json_util_get_double(o, "d", 0), 1.5, 1e-9);
    cr_expect_float_eq(json_util_get_double(o, "i", 0), 7.0, 1e-9,
                       "an integer is a double too");
    cr_expect(json_util_get_bool(o, "b", false));
    cr_expect_not_null(json_util_get_object(o, "o"));
    cr_expect_not_null(json_util_get_array(o, "a"));

    cr_expect_str_eq(json_util_get_string(o, "i", "fb"), "fb");
    cr_expect_str_eq(json_util_get_string(o, "n", "fb"), "fb");
    cr_expect_eq(json_util_get_int(o, "d", -1), -1, "no int from a double");
    cr_expect_eq(json_util_get_int(o, "s", -1), -1);
    cr_expect_eq(json_util_get_int(o, "missing", -1), -1);
    cr_expect_not(json_util_get_bool(o, "s", false));
    cr_expect_null(json_util_get_object(o, "a"));
    cr_expect_null(json_util_get_array(o, "o"));
    cr_expect_str_eq(json_util_get_string(NULL, "s", "fb"), "fb",
                     "a NULL object is no object");
}

Test(json_util, parses_only_objects)
{
    const char *bad[] = {"[1]", "7", "\"s\"", "{", "", "{\"a\":1} x"};

    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonObject) o = json_util_parse_object(bad[i], -1, &err);

        cr_expect_null(o, "accepted '%s'", bad[i]);
        cr_expect(err && g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID),
                  "'%s': no SPORE_ERROR_INVALID", bad[i]);
    }
}

Test(json_util, round_trips_through_text)
{
    g_autoptr(JsonObject) o = request_saying("a \"quoted\"\nline");
    g_autofree char *text = json_util_to_text(o, false);
    g_autoptr(JsonObject) back = json_util_parse_object(text, -1, NULL);

    cr_expect_null(strchr(text, '\n'), "compact text is one line");
    cr_assert(back);
    cr_expect_str_eq(json_util_get_string(back, "say", ""),
                     "a \"quoted\"\nline");
}
