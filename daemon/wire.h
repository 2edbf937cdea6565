/*
 * wire.h: the site protocol between spored (ZeroMQ ROUTER) and the host
 * agents (DEALER) — docs/site-protocol.md.
 *
 * Every connection is CURVE-encrypted and authenticated: the manager's ZAP
 * handler admits only accepted host keys.  A message is one frame holding
 * one JSON object with "v" (the protocol version, WIRE_VERSION) and "type";
 * at most WIRE_MAX_MESSAGE bytes (ZMQ_MAXMSGSIZE drops larger ones before
 * they are read).
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "json-util.h"

#define WIRE_VERSION             1
#define WIRE_MAX_MESSAGE         (16 * 1024 * 1024)
#define WIRE_ZAP_DOMAIN          "spore"
#define WIRE_ZAP_REGISTER_DOMAIN "spore-register"
#define WIRE_KEY_CHARS           40 /* a Z85-encoded CURVE key */
#define WIRE_HOST_NAME_MAX       63
#define WIRE_ENDPOINT_MAX        255 /* a tcp://ADDRESS:PORT in a message */
#define WIRE_PEERS_MAX           256 /* entries of a "peers" message */
/* chunk numbers of one access profile ("profiles", "profile") */
#define WIRE_PROFILE_CHUNKS_MAX 65536u

typedef struct {
    char public_key[WIRE_KEY_CHARS + 1];
    char secret_key[WIRE_KEY_CHARS + 1];
} WireKeys;

/*
 * wire_keys_load_or_create: the daemon's CURVE key pair from DIR/curve.key
 * (GKeyFile, mode 0600), made on first use; DIR/curve.pub holds the public
 * key alone (0644), for operators to hand out.
 */
bool wire_keys_load_or_create(const char *dir, WireKeys *keys, GError **error);

/* wire_key_valid: @text is a Z85 CURVE key (40 characters that decode) */
bool wire_key_valid(const char *text);

/* wire_key_read_file: the Z85 key on the first line of @path */
char *wire_key_read_file(const char *path, GError **error);

/* wire_host_name_valid: 1-63 of [a-zA-Z0-9-_.], not starting with '-' or '.' */
bool wire_host_name_valid(const char *name);

/*
 * wire_register_endpoint: the registration endpoint that goes with the
 * agents' endpoint @listen: the same address, the next port
 * (tcp://127.0.0.1:7400 -> tcp://127.0.0.1:7401); NULL if @listen is not
 * tcp://ADDRESS:PORT
 */
char *wire_register_endpoint(const char *listen);

/* wire_socket_defaults: an agent's socket to the manager: MAXMSGSIZE,
 * heartbeats (a PING every 2 s, the connection given up after 10 s
 * without an answer), handshake timeout, linger; no heartbeat TTL asked
 * of the manager (see wire_server_defaults) */
void wire_socket_defaults(void *socket);

/* wire_server_defaults: the manager's ROUTERs: as wire_socket_defaults,
 * but a dead connection is found by TCP keepalive (probes after 10 s
 * idle, every 2 s, given up after 5) instead of ZeroMQ heartbeats: libzmq
 * (4.3) cancels a connection's heartbeat timers on each message it
 * receives, at a cost linear in the timers of the I/O thread (with
 * 1,000 hosts, ~40 % of that thread's time was spent walking them) */
void wire_server_defaults(void *socket);

/*
 * wire_parse: one message; fails (SPORE_ERROR_INVALID) unless it is a JSON
 * object with "v" == WIRE_VERSION and a string "type".  The result is a new
 * reference.
 */
JsonObject *wire_parse(const void *data, gsize len, GError **error);

/* wire_new: a message object {"v": WIRE_VERSION, "type": @type} */
JsonObject *wire_new(const char *type);

/*
 * wire_send: send @obj on @socket, preceded by the routing frame @identity
 * when not NULL (ROUTER side).  Non-blocking; false when it could not be
 * queued (the peer is gone or its queue is full).
 */
bool wire_send(void *socket, const char *identity, JsonObject *obj);

/*
 * wire_text: @obj as the text wire_send would send, for wire_send_text;
 * NULL when it is over WIRE_MAX_MESSAGE.
 */
GBytes *wire_text(JsonObject *obj);

/*
 * wire_send_text: wire_send of a message made once by wire_text and sent
 * to many peers: each send holds a reference of @text, not a copy (ZeroMQ
 * drops it, from its I/O thread, once the message left).
 */
bool wire_send_text(void *socket, const char *identity, GBytes *text);
