/*
 * site-probe.c: a hostile or ordinary agent for spored's tests.
 *
 *   site-probe ENDPOINT MANAGER-KEY KEY-DIR HOST SCENARIO [ARGS]
 *
 * Connects a DEALER with CURVE (its key pair in KEY-DIR, made if needed)
 * as HOST and plays SCENARIO, then says hello and prints "welcome" if the
 * manager answers within 5 s, "nothing" otherwise.  Scenarios:
 *   hello     just the hello
 *   garbage   several frames, invalid JSON, a wrong version, an unknown
 *             type, a report without arrays, an ack of no command, then
 *             the hello: the manager must drop them all and keep serving
 *   oversized a frame over the manager's ZMQ_MAXMSGSIZE (the connection is
 *             dropped), then the hello on a new connection
 *   requests SERVICE COUNT
 *             what a load balancer's reporter does: one requests message
 *             (docs/site-protocol.md) and no hello; prints "sent" once
 *             it has left (or after 5 s: the manager's effect is what a
 *             test checks)
 */
#include <stdio.h>
#include <string.h>
#include <glib.h>
#include <zmq.h>

#include "wire.h"

static void *
connect_probe(void *ctx, const char *endpoint, const char *server_key,
              const WireKeys *keys, const char *host)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;

    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_key, WIRE_KEY_CHARS);
    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, keys->public_key, WIRE_KEY_CHARS);
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, keys->secret_key, WIRE_KEY_CHARS);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, host, strlen(host));
    zmq_connect(s, endpoint);
    return s;
}

static void
send_text(void *s, const char *text, int flags)
{
    zmq_send(s, text, strlen(text), flags);
}

static bool
hello_answered(void *s, const char *host)
{
    g_autofree char *hello = g_strdup_printf(
        "{\"v\":1,\"type\":\"hello\",\"host\":\"%s\",\"boot\":\"probe\","
        "\"capacity\":{\"cpus\":1,\"memory_kib\":1024}}",
        host);
    zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;

    while (g_get_monotonic_time() < end) {
        send_text(s, hello, ZMQ_DONTWAIT);
        if (zmq_poll(&item, 1, 500) > 0) {
            char buf[4096];
            int n = zmq_recv(s, buf, sizeof(buf) - 1, 0);

            if (n > 0) {
                buf[MIN(n, (int)sizeof(buf) - 1)] = '\0';
                if (strstr(buf, "\"welcome\""))
                    return true;
            }
        }
    }
    return false;
}

int
main(int argc, char **argv)
{
    void *ctx, *s;
    WireKeys keys;
    const char *scenario;
    g_autoptr(GError) err = NULL;

    if (argc < 6 || argc != (g_str_equal(argv[5], "requests") ? 8 : 6)) {
        fprintf(stderr, "usage: site-probe ENDPOINT MANAGER-KEY KEY-DIR HOST "
                        "SCENARIO [SERVICE COUNT]\n");
        return 2;
    }
    scenario = argv[5];
    if (!wire_keys_load_or_create(argv[3], &keys, &err)) {
        fprintf(stderr, "site-probe: %s\n", err->message);
        return 1;
    }
    ctx = zmq_ctx_new();
    s = connect_probe(ctx, argv[1], argv[2], &keys, argv[4]);
    if (g_str_equal(scenario, "garbage")) {
        send_text(s, "{\"v\":1,", ZMQ_SNDMORE);
        send_text(s, "\"type\":\"hello\"}", 0);
        send_text(s, "this is not JSON", 0);
        send_text(s, "{\"v\":99,\"type\":\"hello\"}", 0);
        send_text(s, "{\"v\":1,\"type\":\"launch-missiles\"}", 0);
        send_text(s, "{\"v\":1,\"type\":\"report\",\"clones\":7}", 0);
        send_text(s, "{\"v\":1,\"type\":\"ack\",\"id\":123456,\"ok\":true}", 0);
        send_text(s, "[\"v\",1]", 0);
        zmq_send(s, "", 0, 0);
    } else if (g_str_equal(scenario, "oversized")) {
        gsize big = WIRE_MAX_MESSAGE + 4096;
        char *junk = g_malloc0(big);

        memset(junk, '{', big);
        zmq_send(s, junk, big, 0);
        g_free(junk);
        g_usleep(1000 * 1000);
        zmq_close(s);
        s = connect_probe(ctx, argv[1], argv[2], &keys, argv[4]);
    } else if (g_str_equal(scenario, "requests")) {
        g_autoptr(JsonObject) msg = wire_new("requests");
        g_autofree char *text = NULL;
        int linger = 5000;

        json_object_set_string_member(msg, "service", argv[6]);
        json_object_set_int_member(msg, "count",
                                   g_ascii_strtoll(argv[7], NULL, 10));
        text = json_util_to_text(msg, false);
        send_text(s, text, 0);
        /* closing waits until it is sent, at most the linger */
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
        zmq_close(s);
        zmq_ctx_term(ctx);
        printf("sent\n");
        return 0;
    } else if (!g_str_equal(scenario, "hello")) {
        fprintf(stderr, "site-probe: unknown scenario '%s'\n", scenario);
        return 2;
    }
    printf("%s\n", hello_answered(s, argv[4]) ? "welcome" : "nothing");
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}
