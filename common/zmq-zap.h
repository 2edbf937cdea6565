/*
 * zmq-zap.h: a ZeroMQ ZAP handler (RFC 27) for CURVE servers, shared by
 * the site manager and the peer server.
 *
 * libzmq asks the REP socket bound at ZMQ_ZAP_ENDPOINT of the server's
 * context whether a client that completed the CURVE handshake may in.  The
 * caller decides (its allow-list); this file reads the request frames,
 * bounded, and writes the reply.  A server socket must set ZMQ_ZAP_DOMAIN
 * and ZMQ_ZAP_ENFORCE_DOMAIN, so that no connection gets in unasked.
 *
 * A handler socket is used by one thread, like every zmq socket.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#define ZMQ_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93 /* libzmq 4.3 has it as a draft option */
#endif

/*
 * SporeZapDecide: the user id (a new string) for an admitted client, or
 * NULL with *why set to a static reason.  @key is the client's Z85 public
 * key, NULL unless the mechanism is CURVE.
 */
typedef char *(*SporeZapDecide)(const char *domain, const char *address,
                                const char *mechanism, const char *key,
                                const char **why, gpointer data);

/* spore_zap_bind: a REP socket bound at ZMQ_ZAP_ENDPOINT of @zctx; must
 * exist before any CURVE server socket of @zctx binds */
void *spore_zap_bind(void *zctx, GError **error);

/*
 * spore_zap_drain: answer every ZAP request waiting on @sock (non-blocking)
 * by asking @decide.  Malformed requests are refused.
 */
void spore_zap_drain(void *sock, SporeZapDecide decide, gpointer data);

/*
 * spore_zmq_socket_defaults: frame size limit (@max_frame_bytes),
 * heartbeats, a handshake timeout and no linger, for every spore socket
 */
void spore_zmq_socket_defaults(void *socket, gint64 max_frame_bytes);
