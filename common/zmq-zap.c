/*
 * zmq-zap.c: the ZAP request/reply exchange (RFC 27) and spore's socket
 * defaults.  See zmq-zap.h.
 *
 * A request is at least six frames: version, request id, domain, address,
 * identity, mechanism, then the mechanism's credentials (for CURVE the
 * client's 32-byte public key).  Frames beyond the seventh are read and
 * dropped, so a request can never desynchronize the REP socket.
 */
#include "zmq-zap.h"

#include <string.h>
#include <zmq.h>

#include "spore-error.h"

#define ZAP_FRAMES_KEPT 7

void
spore_zmq_socket_defaults(void *socket, gint64 max_frame_bytes)
{
    int64_t max = max_frame_bytes;
    int ivl = 2000, timeout = 10000, ttl = 20000, handshake = 10000;
    int linger = 0;

    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max, sizeof(max));
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_IVL, &ivl, sizeof(ivl));
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof(timeout));
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_TTL, &ttl, sizeof(ttl));
    zmq_setsockopt(socket, ZMQ_HANDSHAKE_IVL, &handshake, sizeof(handshake));
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof(linger));
}

void *
spore_zap_bind(void *zctx, GError **error)
{
    void *sock = zmq_socket(zctx, ZMQ_REP);
    int zero = 0;

    if (!sock) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot create the ZAP handler: %s",
                    zmq_strerror(zmq_errno()));
        return NULL;
    }
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(sock, ZMQ_ZAP_ENDPOINT) != 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot bind the ZAP handler: %s",
                    zmq_strerror(zmq_errno()));
        zmq_close(sock);
        return NULL;
    }
    return sock;
}

static char *
frame_string(zmq_msg_t *f)
{
    return g_strndup(zmq_msg_data(f), zmq_msg_size(f));
}

static void
zap_reply(void *sock, const void *request_id, gsize request_id_len,
          const char *status, const char *text, const char *user)
{
    zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(sock, request_id, request_id_len, ZMQ_SNDMORE);
    zmq_send(sock, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(sock, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(sock, "", 0, 0);
}

void
spore_zap_drain(void *sock, SporeZapDecide decide, gpointer data)
{
    for (;;) {
        zmq_msg_t f[ZAP_FRAMES_KEPT];
        int n = 0, more = 1;
        const char *why = "malformed request";
        g_autofree char *user = NULL;

        while (more) {
            zmq_msg_t extra, *frame = n < ZAP_FRAMES_KEPT ? &f[n] : &extra;

            zmq_msg_init(frame);
            if (zmq_msg_recv(frame, sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(frame);
                if (n == 0)
                    return; /* nothing waiting */
                break;
            }
            more = zmq_msg_more(frame);
            if (n < ZAP_FRAMES_KEPT)
                n++;
            else
                zmq_msg_close(frame); /* extra frames are not ours */
        }
        if (n >= 6) {
            g_autofree char *domain = frame_string(&f[2]);
            g_autofree char *address = frame_string(&f[3]);
            g_autofree char *mechanism = frame_string(&f[5]);
            char key[41] = "";

            if (n == 7 && zmq_msg_size(&f[6]) == 32)
                zmq_z85_encode(key, zmq_msg_data(&f[6]), 32);
            if (g_str_equal(mechanism, "CURVE") && key[0])
                user = decide(domain, address, mechanism, key, &why, data);
            else
                why = "CURVE only";
        }
        if (n >= 2)
            zap_reply(sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]),
                      user ? "200" : "400", user ? "OK" : why,
                      user ? user : "");
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
}
