/*
 * test-wire.c: the site protocol's framing and keys (daemon/wire.c).
 */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/stat.h>
#include <glib/gstdio.h>
#include <zmq.h>

#include "spore-error.h"
#include "wire.h"

static void
expect_dropped(const char *text, const char *why)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) o = wire_parse(text, strlen(text), &err);

    cr_expect_null(o, "accepted a message that %s", why);
    cr_expect(err != NULL, "%s: no error", why);
}

Test(wire, parses_a_versioned_message_and_refuses_the_rest)
{
    const char *ok = "{\"v\":1,\"type\":\"hello\",\"host\":\"hv1\"}";
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) o = wire_parse(ok, strlen(ok), &err);

    cr_assert(o, "%s", err ? err->message : "");
    cr_expect_str_eq(json_util_get_string(o, "type", NULL), "hello");
    cr_expect_str_eq(json_util_get_string(o, "host", NULL), "hv1");
    cr_expect_null(json_util_get_string(o, "v", NULL),
                   "a number is not a string");
    cr_expect_eq(json_util_get_int(o, "host", -7), -7,
                 "a string is not a number");
    expect_dropped("{\"v\":2,\"type\":\"hello\"}", "has another version");
    expect_dropped("{\"type\":\"hello\"}", "has no version");
    expect_dropped("{\"v\":1}", "has no type");
    expect_dropped("{\"v\":1,\"type\":7}", "has a number for a type");
    expect_dropped("[1,2]", "is an array");
    expect_dropped("{\"v\":1,\"type\":\"x\"", "is cut off");
    expect_dropped("", "is empty");
    expect_dropped("\xff\xfe", "is not UTF-8 JSON");
}

Test(wire, round_trips_through_text)
{
    g_autoptr(JsonObject) o = wire_new("ack");
    g_autofree char *text = NULL;
    g_autoptr(JsonObject) back = NULL;

    json_object_set_int_member(o, "id", 42);
    text = json_util_to_text(o, false);
    back = wire_parse(text, strlen(text), NULL);
    cr_assert(back);
    cr_expect_eq(json_util_get_int(back, "id", 0), 42);
    cr_expect_str_eq(json_util_get_string(back, "type", NULL), "ack");
}

Test(wire, checks_host_names_and_keys)
{
    cr_expect(wire_host_name_valid("hv-1.site_a"));
    cr_expect_not(wire_host_name_valid(""));
    cr_expect_not(wire_host_name_valid("-hv"));
    cr_expect_not(wire_host_name_valid(".hv"));
    cr_expect_not(wire_host_name_valid("hv 1"));
    cr_expect_not(wire_host_name_valid("hv/1"));
    cr_expect_not(wire_host_name_valid(
        "a234567890123456789012345678901234567890123456789012345678901234"));
    cr_expect_not(wire_key_valid("short"));
    cr_expect_not(wire_key_valid(NULL));
}

Test(wire, makes_a_key_pair_once_and_keeps_it_private)
{
    g_autofree char *dir = g_dir_make_tmp("spore-wire-XXXXXX", NULL);
    g_autofree char *key_path = g_build_filename(dir, "curve.key", NULL);
    g_autofree char *pub_path = g_build_filename(dir, "curve.pub", NULL);
    g_autofree char *pub = NULL;
    WireKeys a, b;
    struct stat st;

    cr_assert(wire_keys_load_or_create(dir, &a, NULL));
    cr_expect(wire_key_valid(a.public_key));
    cr_expect(wire_key_valid(a.secret_key));
    cr_assert(wire_keys_load_or_create(dir, &b, NULL));
    cr_expect_str_eq(a.public_key, b.public_key, "made a new pair");
    cr_expect_str_eq(a.secret_key, b.secret_key);
    cr_assert_eq(stat(key_path, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600);
    pub = wire_key_read_file(pub_path, NULL);
    cr_expect_str_eq(pub, a.public_key);
    g_unlink(key_path);
    g_unlink(pub_path);
    g_rmdir(dir);
}

Test(wire, derives_the_registration_endpoint)
{
    g_autofree char *a = wire_register_endpoint("tcp://127.0.0.1:7400");
    g_autofree char *b = wire_register_endpoint("tcp://[::1]:9");

    cr_expect_str_eq(a, "tcp://127.0.0.1:7401");
    cr_expect_str_eq(b, "tcp://[::1]:10");
    cr_expect_null(wire_register_endpoint("ipc:///x"));
    cr_expect_null(wire_register_endpoint("tcp://host:65535"));
    cr_expect_null(wire_register_endpoint("tcp://host"));
}

/* getsockopt_int: an int option of @sock */
static int
getsockopt_int(void *sock, int option)
{
    int v = -1;
    size_t len = sizeof(v);

    cr_assert_eq(zmq_getsockopt(sock, option, &v, &len), 0, "option %d: %s",
                 option, zmq_strerror(zmq_errno()));
    return v;
}

/* The manager's ROUTERs find dead connections by TCP keepalive, not by
 * ZeroMQ heartbeats (libzmq 4.3 cancels a connection's heartbeat timers
 * on every message, walking all the timers of its I/O thread: with 1,000
 * hosts that was ~40 % of the thread), and agents ask no heartbeat TTL of
 * the manager, which would give the ROUTER such a timer per connection. */
Test(wire, server_sockets_use_tcp_keepalive_not_heartbeat_timers)
{
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);

    wire_server_defaults(router);
    cr_expect_eq(getsockopt_int(router, ZMQ_HEARTBEAT_IVL), 0);
    cr_expect_eq(getsockopt_int(router, ZMQ_HEARTBEAT_TTL), 0);
    cr_expect_eq(getsockopt_int(router, ZMQ_TCP_KEEPALIVE), 1);
    cr_expect_eq(getsockopt_int(router, ZMQ_TCP_KEEPALIVE_IDLE), 10);
    cr_expect_gt(getsockopt_int(router, ZMQ_HANDSHAKE_IVL), 0);

    wire_socket_defaults(dealer);
    cr_expect_gt(getsockopt_int(dealer, ZMQ_HEARTBEAT_IVL), 0,
                 "an agent still finds a dead manager by heartbeats");
    cr_expect_gt(getsockopt_int(dealer, ZMQ_HEARTBEAT_TIMEOUT), 0);
    cr_expect_eq(getsockopt_int(dealer, ZMQ_HEARTBEAT_TTL), 0);
    zmq_close(router);
    zmq_close(dealer);
    zmq_ctx_term(ctx);
}
