/*
 * peer-protocol.c: encoding and strict decoding of peer messages (the
 * layout is in peer-protocol.h).  Pure functions, no I/O.
 */
#include "peer-protocol.h"

#include <string.h>

#include "image-index.h"
#include "le-bytes.h"
#include "spore-error.h"

void
peer_msg_encode(const PeerMsg *msg, guint8 *out)
{
    memset(out, 0, PEER_HEADER_BYTES);
    out[0] = PEER_PROTOCOL_VERSION;
    out[1] = msg->type;
    out[2] = msg->flags;
    le_put32(out + 4, msg->req_id);
    memcpy(out + 8, msg->image, SPORE_SHA256_BYTES);
    le_put64(out + 40, msg->chunk);
}

const char *
peer_msg_type_name(guint type)
{
    static const char *const names[] = {
        [PEER_MSG_HAVE_REQ] = "HAVE_REQ",
        [PEER_MSG_HAVE] = "HAVE",
        [PEER_MSG_HAVE_UPDATE] = "HAVE_UPDATE",
        [PEER_MSG_GET] = "GET",
        [PEER_MSG_DATA] = "DATA",
        [PEER_MSG_ERR] = "ERR",
    };

    if (type < G_N_ELEMENTS(names) && names[type])
        return names[type];
    return "unknown";
}

const char *
peer_err_name(guint code)
{
    static const char *const names[PEER_ERR_CODES] = {
        [PEER_ERR_NONE] = "no error",
        [PEER_ERR_UNKNOWN_IMAGE] = "unknown image",
        [PEER_ERR_NOT_PRESENT] = "chunk not present",
        [PEER_ERR_BAD_REQUEST] = "bad request",
        [PEER_ERR_BUSY] = "busy",
        [PEER_ERR_FETCH_FAILED] = "fetch failed",
    };

    return code < PEER_ERR_CODES ? names[code] : "unknown error";
}

static bool bad(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static bool
bad(GError **error, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *text = NULL;

    va_start(ap, fmt);
    text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, "%s", text);
    return false;
}

bool
peer_msg_decode(const guint8 *data, gsize len, gssize payload_len, PeerMsg *ret,
                GError **error)
{
    PeerMsg m = {0};
    const char *name;

    if (len != PEER_HEADER_BYTES)
        return bad(error, "control frame of %zu bytes, expected %u", len,
                   PEER_HEADER_BYTES);
    if (data[0] != PEER_PROTOCOL_VERSION)
        return bad(error, "protocol version %u, expected %u", data[0],
                   PEER_PROTOCOL_VERSION);
    if (data[3] != 0)
        return bad(error, "reserved byte is %u, expected 0", data[3]);
    m.type = data[1];
    m.flags = data[2];
    m.req_id = le_get32(data + 4);
    memcpy(m.image, data + 8, SPORE_SHA256_BYTES);
    m.chunk = le_get64(data + 40);
    name = peer_msg_type_name(m.type);

    if (payload_len > (gssize)PEER_FRAME_MAX_BYTES)
        return bad(error, "%s payload of %zd bytes exceeds %u", name,
                   payload_len, PEER_FRAME_MAX_BYTES);
    switch (m.type) {
    case PEER_MSG_HAVE_REQ:
    case PEER_MSG_GET:
    case PEER_MSG_ERR:
        if (payload_len >= 0)
            return bad(error, "%s carries a payload", name);
        if (m.type == PEER_MSG_GET && (m.flags & ~PEER_GET_FETCH))
            return bad(error, "GET with unknown flags 0x%02x", m.flags);
        if (m.type == PEER_MSG_ERR &&
            (m.flags == PEER_ERR_NONE || m.flags >= PEER_ERR_CODES))
            return bad(error, "ERR with unknown code %u", m.flags);
        if (m.type == PEER_MSG_HAVE_REQ && m.flags)
            return bad(error, "HAVE_REQ with flags 0x%02x", m.flags);
        break;
    case PEER_MSG_HAVE:
        if (m.flags)
            return bad(error, "HAVE with flags 0x%02x", m.flags);
        if (m.chunk == 0 || m.chunk > IMAGE_INDEX_CHUNKS_MAX)
            return bad(error, "HAVE for %" G_GUINT64_FORMAT " chunks", m.chunk);
        if (payload_len != (gssize)((m.chunk + 7) / 8))
            return bad(error,
                       "HAVE bitmap of %zd bytes for %" G_GUINT64_FORMAT
                       " chunks",
                       payload_len, m.chunk);
        break;
    case PEER_MSG_HAVE_UPDATE:
        if (m.flags)
            return bad(error, "HAVE_UPDATE with flags 0x%02x", m.flags);
        if (m.chunk == 0 || m.chunk > PEER_UPDATE_CHUNKS_MAX)
            return bad(error, "HAVE_UPDATE of %" G_GUINT64_FORMAT " chunks",
                       m.chunk);
        if (payload_len != (gssize)(m.chunk * 8))
            return bad(error,
                       "HAVE_UPDATE payload of %zd bytes for %" G_GUINT64_FORMAT
                       " chunks",
                       payload_len, m.chunk);
        break;
    case PEER_MSG_DATA:
        if (m.flags)
            return bad(error, "DATA with flags 0x%02x", m.flags);
        if (payload_len <= 0)
            return bad(error, "DATA without chunk bytes");
        break;
    default:
        return bad(error, "unknown message type %u", m.type);
    }
    *ret = m;
    return true;
}
