/*
 * fetch-protocol.c: encoding and strict decoding of shim <-> agent messages.
 * Decoding checks the magic, the priority, the bounds of the wait and that
 * the message is NUL-terminated; anything else means the peer is broken and
 * the connection is dropped by the caller.
 */
#include "fetch-protocol.h"

#include <string.h>

static void
put_le32(guint8 *p, guint32 v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (guint8)(v >> (8 * i));
}

static void
put_le64(guint8 *p, guint64 v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (guint8)(v >> (8 * i));
}

static guint32
get_le32(const guint8 *p)
{
    guint32 v = 0;

    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static guint64
get_le64(const guint8 *p)
{
    guint64 v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void
fetch_request_encode(const FetchRequest *req, guint8 *out)
{
    memcpy(out, FETCH_REQUEST_MAGIC, 4);
    put_le32(out + 4, req->priority);
    memcpy(out + 8, req->image, SPORE_SHA256_BYTES);
    put_le64(out + 40, req->chunk);
    put_le64(out + 48, req->wait_ms);
    put_le64(out + 56, req->tag);
}

bool
fetch_request_decode(const guint8 *in, FetchRequest *ret)
{
    FetchRequest r;

    if (memcmp(in, FETCH_REQUEST_MAGIC, 4) != 0)
        return false;
    r.priority = get_le32(in + 4);
    memcpy(r.image, in + 8, SPORE_SHA256_BYTES);
    r.chunk = get_le64(in + 40);
    r.wait_ms = get_le64(in + 48);
    r.tag = get_le64(in + 56);
    if (r.priority > 1 || r.wait_ms > FETCH_WAIT_MAX_MS)
        return false;
    *ret = r;
    return true;
}

void
fetch_reply_encode(const FetchReply *rep, guint8 *out)
{
    memset(out, 0, FETCH_REPLY_BYTES);
    memcpy(out, FETCH_REPLY_MAGIC, 4);
    put_le32(out + 4, rep->status);
    put_le64(out + 8, rep->tag);
    put_le64(out + 16, rep->chunk);
    g_strlcpy((char *)out + 24, rep->message, FETCH_REPLY_MESSAGE_BYTES);
}

bool
fetch_reply_decode(const guint8 *in, FetchReply *ret)
{
    FetchReply r;

    if (memcmp(in, FETCH_REPLY_MAGIC, 4) != 0)
        return false;
    r.status = get_le32(in + 4);
    r.tag = get_le64(in + 8);
    r.chunk = get_le64(in + 16);
    if (r.status > 1 || !memchr(in + 24, '\0', FETCH_REPLY_MESSAGE_BYTES))
        return false;
    memcpy(r.message, in + 24, FETCH_REPLY_MESSAGE_BYTES);
    *ret = r;
    return true;
}
