/*
 * fetch-protocol.c: encoding and strict decoding of shim <-> agent messages.
 * Decoding checks the magic, the priority, the bounds of the wait and that
 * the message is NUL-terminated; anything else means the peer is broken and
 * the connection is dropped by the caller.
 */
#include "fetch-protocol.h"

#include <string.h>

#include "le-bytes.h"

void
fetch_request_encode(const FetchRequest *req, guint8 *out)
{
    memcpy(out, FETCH_REQUEST_MAGIC, 4);
    le_put32(out + 4, req->priority);
    memcpy(out + 8, req->image, SPORE_SHA256_BYTES);
    le_put64(out + 40, req->chunk);
    le_put64(out + 48, req->wait_ms);
    le_put64(out + 56, req->tag);
}

bool
fetch_request_decode(const guint8 *in, FetchRequest *ret)
{
    FetchRequest r;

    if (memcmp(in, FETCH_REQUEST_MAGIC, 4) != 0)
        return false;
    r.priority = le_get32(in + 4);
    memcpy(r.image, in + 8, SPORE_SHA256_BYTES);
    r.chunk = le_get64(in + 40);
    r.wait_ms = le_get64(in + 48);
    r.tag = le_get64(in + 56);
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
    le_put32(out + 4, rep->status);
    le_put64(out + 8, rep->tag);
    le_put64(out + 16, rep->chunk);
    g_strlcpy((char *)out + 24, rep->message, FETCH_REPLY_MESSAGE_BYTES);
}

bool
fetch_reply_decode(const guint8 *in, FetchReply *ret)
{
    FetchReply r;

    if (memcmp(in, FETCH_REPLY_MAGIC, 4) != 0)
        return false;
    r.status = le_get32(in + 4);
    r.tag = le_get64(in + 8);
    r.chunk = le_get64(in + 16);
    if (r.status > 1 || !memchr(in + 24, '\0', FETCH_REPLY_MESSAGE_BYTES))
        return false;
    memcpy(r.message, in + 24, FETCH_REPLY_MESSAGE_BYTES);
    *ret = r;
    return true;
}
