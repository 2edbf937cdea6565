/*
 * peer-protocol.h: the messages hosts exchange about chunks
 * (docs/peer-protocol.md).
 *
 * Transport: ZeroMQ, a DEALER (the asking host) to a ROUTER (the serving
 * host), CURVE on every connection.  A message is one control frame of
 * PEER_HEADER_BYTES, optionally followed by one payload frame (raw chunk
 * bytes, a bitmap, or a list of chunk numbers).  All integers little-endian.
 *
 *   control frame:
 *     0  1  version (PEER_PROTOCOL_VERSION)
 *     1  1  type (PeerMsgType)
 *     2  1  flags (GET) or error code (ERR); 0 otherwise
 *     3  1  reserved, 0
 *     4  4  request id, echoed in the answer (0 in HAVE_UPDATE)
 *     8 32  image id digest (the 32 bytes behind "sha256:")
 *    40  8  chunk number (GET, DATA, ERR), chunk count (HAVE), or the
 *           number of chunk numbers in the payload (HAVE_UPDATE)
 *
 *   payloads:
 *     HAVE         the holder's present bitmap: ceil(count / 8) bytes,
 *                  chunk i in byte i/8, bit i%8
 *     HAVE_UPDATE  8 bytes per newly present chunk number
 *     DATA         the chunk's bytes, exactly its length in the index
 *
 * Decoding checks everything a peer controls: the version, the type, the
 * reserved byte, the presence and exact size of the payload.  What it
 * cannot know (that a chunk number is inside the image, that the bytes
 * match the digest) the receiver checks against its index.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "hash.h"

#define PEER_PROTOCOL_VERSION 1u
#define PEER_HEADER_BYTES     48u
/* the most chunk numbers one HAVE_UPDATE carries */
#define PEER_UPDATE_CHUNKS_MAX 4096u
/* the largest frame: a 4 MiB chunk (the largest chunk size) */
#define PEER_FRAME_MAX_BYTES (4u * 1024 * 1024)

typedef enum {
    PEER_MSG_HAVE_REQ = 1,    /* which chunks of this image do you hold?
                               * also subscribes to HAVE_UPDATEs */
    PEER_MSG_HAVE = 2,        /* answer: chunk count and bitmap */
    PEER_MSG_HAVE_UPDATE = 3, /* unasked: chunks that became present */
    PEER_MSG_GET = 4,         /* send me chunk N */
    PEER_MSG_DATA = 5,        /* answer: chunk N's bytes */
    PEER_MSG_ERR = 6,         /* answer: why not */
} PeerMsgType;

/* GET flags */
#define PEER_GET_FETCH \
    0x01u /* fetch it if you lack it: you are the host \
           * the site chose to get it from the origin */

typedef enum {
    PEER_ERR_NONE = 0,
    PEER_ERR_UNKNOWN_IMAGE = 1, /* this host has no such image */
    PEER_ERR_NOT_PRESENT = 2,   /* the chunk is not in the cache */
    PEER_ERR_BAD_REQUEST = 3,   /* e.g. a chunk past the end of the image */
    PEER_ERR_BUSY = 4,          /* too many requests from you: retry */
    PEER_ERR_FETCH_FAILED = 5,  /* a PEER_GET_FETCH could not be fetched */
} PeerErrCode;

#define PEER_ERR_CODES 6

typedef struct {
    guint8 type;
    guint8 flags; /* or the error code */
    guint32 req_id;
    guint8 image[SPORE_SHA256_BYTES];
    guint64 chunk; /* or count, see above */
} PeerMsg;

/* peer_msg_encode: @msg into @out (PEER_HEADER_BYTES). */
void peer_msg_encode(const PeerMsg *msg, guint8 *out);

/*
 * peer_msg_decode: the control frame @data (@len bytes) and the size of the
 * payload frame that followed it (@payload_len, or -1 when there was
 * none).  Fails with SPORE_ERROR_INVALID naming what is wrong.
 */
bool peer_msg_decode(const guint8 *data, gsize len, gssize payload_len,
                     PeerMsg *ret, GError **error);

/* peer_msg_type_name: "GET", ...; "unknown" for anything else */
const char *peer_msg_type_name(guint type);

/* peer_err_name: "unknown image", ... */
const char *peer_err_name(guint code);
