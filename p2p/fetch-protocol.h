/*
 * fetch-protocol.h: the wire format between the block-fetch shim (an nbdkit
 * plugin, its own process) and the host agent that owns the fetch engine.
 *
 * A unix stream socket; the shim sends fixed-size requests and reads one
 * fixed-size reply for each, in order.  All integers little-endian.  See
 * docs/fetch-protocol.md.
 *
 *   request, FETCH_REQUEST_BYTES:
 *     0  4  magic "SPQ1"
 *     4  4  priority: 0 demand, 1 profile prefetch
 *     8 32  image id digest (the 32 bytes behind "sha256:")
 *    40  8  chunk index
 *    48  8  how long the shim will wait, in milliseconds
 *    56  8  tag, echoed in the reply
 *
 *   reply, FETCH_REPLY_BYTES:
 *     0  4  magic "SPR1"
 *     4  4  status: 0 the chunk is present and verified, 1 failed
 *     8  8  tag
 *    16  8  chunk index
 *    24 232 message, UTF-8, NUL-terminated and NUL-padded (empty on success)
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "hash.h"

#define FETCH_REQUEST_MAGIC       "SPQ1"
#define FETCH_REPLY_MAGIC         "SPR1"
#define FETCH_REQUEST_BYTES       64u
#define FETCH_REPLY_BYTES         256u
#define FETCH_REPLY_MESSAGE_BYTES (FETCH_REPLY_BYTES - 24u)
/*
 * The shim's read timeout (its timeout= parameter, which the agent passes
 * from its shim_timeout setting): how long a guest read waits for a missing
 * chunk.  One limit for both sides, so the agent never accepts a value its
 * shims would refuse to start with.
 */
#define SHIM_TIMEOUT_DEFAULT_S 60u
#define SHIM_TIMEOUT_MAX_S     3600u
/* a request may ask the agent to wait at most this */
#define FETCH_WAIT_MAX_MS (SHIM_TIMEOUT_MAX_S * 1000u)

typedef struct {
    guint32 priority;
    guint8 image[SPORE_SHA256_BYTES];
    guint64 chunk;
    guint64 wait_ms;
    guint64 tag;
} FetchRequest;

typedef struct {
    guint32 status;
    guint64 tag;
    guint64 chunk;
    char message[FETCH_REPLY_MESSAGE_BYTES];
} FetchReply;

/* fetch_request_encode: @req into @out (FETCH_REQUEST_BYTES). */
void fetch_request_encode(const FetchRequest *req, guint8 *out);

/* fetch_request_decode: false when @in is not a valid request. */
bool fetch_request_decode(const guint8 *in, FetchRequest *ret);

/* fetch_reply_encode: @rep into @out (FETCH_REPLY_BYTES). */
void fetch_reply_encode(const FetchReply *rep, guint8 *out);

/* fetch_reply_decode: false when @in is not a valid reply. */
bool fetch_reply_decode(const guint8 *in, FetchReply *ret);
