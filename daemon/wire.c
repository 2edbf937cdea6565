/*
 * wire.c: keys, socket options and message framing of the site protocol.
 */
#include "wire.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include "file-util.h"
#include "spore-error.h"
#include "zmq-zap.h"

bool
wire_key_valid(const char *text)
{
    guint8 raw[32];

    if (!text || strlen(text) != WIRE_KEY_CHARS)
        return false;
    return zmq_z85_decode(raw, text) != NULL;
}

bool
wire_host_name_valid(const char *name)
{
    gsize n = name ? strlen(name) : 0;

    if (n == 0 || n > WIRE_HOST_NAME_MAX || name[0] == '-' || name[0] == '.')
        return false;
    for (gsize i = 0; i < n; i++) {
        if (!g_ascii_isalnum(name[i]) && !strchr("-_.", name[i]))
            return false;
    }
    return true;
}

char *
wire_key_read_file(const char *path, GError **error)
{
    g_autofree char *text = NULL;
    gsize len = 0;

    if (!spore_file_read_bounded(path, 4096, &text, &len, error))
        return NULL;
    g_strstrip(text);
    if (!wire_key_valid(text)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "%s: not a Z85 CURVE public key (40 characters)", path);
        return NULL;
    }
    return g_steal_pointer(&text);
}

bool
wire_keys_load_or_create(const char *dir, WireKeys *keys, GError **error)
{
    g_autofree char *path = g_build_filename(dir, "curve.key", NULL);
    g_autofree char *pub_path = g_build_filename(dir, "curve.pub", NULL);
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autofree char *pub = NULL;
    g_autofree char *sec = NULL;
    g_autofree char *pub_line = NULL;

    if (g_mkdir_with_parents(dir, 0700) < 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot create %s: %s",
                    dir, g_strerror(errno));
        return false;
    }
    if (g_file_test(path, G_FILE_TEST_EXISTS)) {
        if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, error)) {
            g_prefix_error(error, "%s: ", path);
            return false;
        }
        pub = g_key_file_get_string(kf, "curve", "public", NULL);
        sec = g_key_file_get_string(kf, "curve", "secret", NULL);
        if (!wire_key_valid(pub) || !wire_key_valid(sec)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "%s: [curve] public and secret must be Z85 CURVE "
                        "keys; remove the file to make a new pair",
                        path);
            return false;
        }
    } else {
        g_autofree char *text = NULL;

        pub = g_malloc0(WIRE_KEY_CHARS + 1);
        sec = g_malloc0(WIRE_KEY_CHARS + 1);
        if (zmq_curve_keypair(pub, sec) != 0) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                        "cannot make a CURVE key pair: %s (is libzmq built "
                        "with CURVE?)",
                        zmq_strerror(zmq_errno()));
            return false;
        }
        g_key_file_set_comment(kf, NULL, NULL,
                               " spore CURVE key pair: keep it secret", NULL);
        g_key_file_set_string(kf, "curve", "public", pub);
        g_key_file_set_string(kf, "curve", "secret", sec);
        text = g_key_file_to_data(kf, NULL, NULL);
        if (!spore_file_write_atomic(path, text, strlen(text), 0600, error))
            return false;
    }
    pub_line = g_strconcat(pub, "\n", NULL);
    if (!spore_file_write_atomic(pub_path, pub_line, strlen(pub_line), 0644,
                                 error))
        return false;
    g_strlcpy(keys->public_key, pub, sizeof(keys->public_key));
    g_strlcpy(keys->secret_key, sec, sizeof(keys->secret_key));
    return true;
}

char *
wire_register_endpoint(const char *listen)
{
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    guint64 port;

    if (!listen || !g_str_has_prefix(listen, "tcp://") || !colon ||
        colon < listen + 6 ||
        !g_ascii_string_to_unsigned(colon + 1, 10, 1, 65534, &port, NULL))
        return NULL;
    return g_strdup_printf("%.*s:%" G_GUINT64_FORMAT, (int)(colon - listen),
                           listen, port + 1);
}

void
wire_socket_defaults(void *socket)
{
    int zero = 0;

    spore_zmq_socket_defaults(socket, WIRE_MAX_MESSAGE);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_TTL, &zero, sizeof(zero));
}

void
wire_server_defaults(void *socket)
{
    int zero = 0, one = 1, idle = 10, intvl = 2, cnt = 5;

    wire_socket_defaults(socket);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_IVL, &zero, sizeof(zero));
    zmq_setsockopt(socket, ZMQ_TCP_KEEPALIVE, &one, sizeof(one));
    zmq_setsockopt(socket, ZMQ_TCP_KEEPALIVE_IDLE, &idle, sizeof(idle));
    zmq_setsockopt(socket, ZMQ_TCP_KEEPALIVE_INTVL, &intvl, sizeof(intvl));
    zmq_setsockopt(socket, ZMQ_TCP_KEEPALIVE_CNT, &cnt, sizeof(cnt));
}

JsonObject *
wire_parse(const void *data, gsize len, GError **error)
{
    g_autoptr(JsonObject) obj = NULL;

    if (len > WIRE_MAX_MESSAGE) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "message of %zu bytes exceeds %d", len, WIRE_MAX_MESSAGE);
        return NULL;
    }
    obj = json_util_parse_object(data, (gssize)len, error);
    if (!obj)
        return NULL;
    if (json_util_get_int(obj, "v", -1) != WIRE_VERSION) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "protocol version %" G_GINT64_FORMAT " is not %d",
                    json_util_get_int(obj, "v", -1), WIRE_VERSION);
        return NULL;
    }
    if (!json_util_get_string(obj, "type", NULL)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, "no message type");
        return NULL;
    }
    return g_steal_pointer(&obj);
}

JsonObject *
wire_new(const char *type)
{
    JsonObject *obj = json_object_new();

    json_object_set_int_member(obj, "v", WIRE_VERSION);
    json_object_set_string_member(obj, "type", type);
    return obj;
}

GBytes *
wire_text(JsonObject *obj)
{
    char *text = json_util_to_text(obj, false);
    gsize len = strlen(text);

    if (len > WIRE_MAX_MESSAGE) {
        g_free(text);
        return NULL;
    }
    return g_bytes_new_take(text, len);
}

/* ZeroMQ's free function of a wire_send_text message: the reference the
 * message held (g_bytes_unref is thread-safe) */
static void
text_release(void *data, void *hint)
{
    g_bytes_unref(hint);
}

bool
wire_send_text(void *socket, const char *identity, GBytes *text)
{
    zmq_msg_t msg;
    gsize len = 0;
    const void *data = g_bytes_get_data(text, &len);

    if (identity && zmq_send(socket, identity, strlen(identity),
                             ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return false;
    if (zmq_msg_init_data(&msg, (void *)data, len, text_release,
                          g_bytes_ref(text)) != 0) {
        g_bytes_unref(text);
        return false;
    }
    if (zmq_msg_send(&msg, socket, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg); /* releases the reference */
        return false;
    }
    return true;
}

bool
wire_send(void *socket, const char *identity, JsonObject *obj)
{
    g_autofree char *text = json_util_to_text(obj, false);
    gsize len = strlen(text);

    if (len > WIRE_MAX_MESSAGE)
        return false;
    if (identity && zmq_send(socket, identity, strlen(identity),
                             ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return false;
    return zmq_send(socket, text, len, ZMQ_DONTWAIT) >= 0;
}
