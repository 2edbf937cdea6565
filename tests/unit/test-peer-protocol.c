/*
 * test-peer-protocol.c: the peer messages' encoding and strict decoding.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "image-index.h"
#include "peer-protocol.h"
#include "spore-error.h"

static void
encode(guint type, guint flags, guint64 chunk, guint8 *out)
{
    PeerMsg m = {.type = (guint8)type,
                 .flags = (guint8)flags,
                 .req_id = 77,
                 .chunk = chunk};

    memset(m.image, 0xab, sizeof(m.image));
    peer_msg_encode(&m, out);
}

/* The error message of decoding @hdr with a payload of @payload bytes. */
static char *
refusal(const guint8 *hdr, gsize len, gssize payload)
{
    PeerMsg m;
    GError *err = NULL;
    char *text;

    cr_assert_not(peer_msg_decode(hdr, len, payload, &m, &err));
    cr_assert(err);
    cr_expect_eq(err->code, SPORE_ERROR_INVALID);
    text = g_strdup(err->message);
    g_error_free(err);
    return text;
}

Test(peer_protocol, round_trips_every_field_little_endian)
{
    guint8 hdr[PEER_HEADER_BYTES];
    PeerMsg m;

    encode(PEER_MSG_GET, PEER_GET_FETCH, 0x0102030405060708ull, hdr);
    cr_expect_eq(hdr[0], PEER_PROTOCOL_VERSION);
    cr_expect_eq(hdr[4], 77);
    cr_expect_eq(hdr[40], 0x08);
    cr_expect_eq(hdr[47], 0x01);
    cr_assert(peer_msg_decode(hdr, sizeof(hdr), -1, &m, NULL));
    cr_expect_eq(m.type, PEER_MSG_GET);
    cr_expect_eq(m.flags, PEER_GET_FETCH);
    cr_expect_eq(m.req_id, 77u);
    cr_expect_eq(m.chunk, 0x0102030405060708ull);
    cr_expect_eq(m.image[31], 0xab);
}

Test(peer_protocol, refuses_wrong_sizes_versions_types_and_reserved_bytes)
{
    guint8 hdr[PEER_HEADER_BYTES];
    g_autofree char *a = NULL, *b = NULL, *c = NULL, *d = NULL;

    encode(PEER_MSG_GET, 0, 1, hdr);
    a = refusal(hdr, sizeof(hdr) - 1, -1);
    cr_expect(strstr(a, "47 bytes"), "%s", a);
    hdr[0] = 2;
    b = refusal(hdr, sizeof(hdr), -1);
    cr_expect(strstr(b, "version 2"), "%s", b);
    encode(99, 0, 1, hdr);
    c = refusal(hdr, sizeof(hdr), -1);
    cr_expect(strstr(c, "unknown message type 99"), "%s", c);
    encode(PEER_MSG_GET, 0, 1, hdr);
    hdr[3] = 1;
    d = refusal(hdr, sizeof(hdr), -1);
    cr_expect(strstr(d, "reserved"), "%s", d);
}

Test(peer_protocol, checks_each_type_s_payload_and_flags)
{
    guint8 hdr[PEER_HEADER_BYTES];
    PeerMsg m;
    g_autofree char *a = NULL, *b = NULL, *c = NULL, *d = NULL, *e = NULL,
                    *f = NULL, *g = NULL;

    encode(PEER_MSG_GET, 0, 1, hdr);
    a = refusal(hdr, sizeof(hdr), 10);
    cr_expect(strstr(a, "GET carries a payload"), "%s", a);
    encode(PEER_MSG_GET, 0x80, 1, hdr);
    b = refusal(hdr, sizeof(hdr), -1);
    cr_expect(strstr(b, "unknown flags"), "%s", b);
    /* a bitmap must have exactly ceil(count / 8) bytes */
    encode(PEER_MSG_HAVE, 0, 17, hdr);
    cr_expect(peer_msg_decode(hdr, sizeof(hdr), 3, &m, NULL));
    c = refusal(hdr, sizeof(hdr), 2);
    cr_expect(strstr(c, "bitmap of 2 bytes for 17 chunks"), "%s", c);
    encode(PEER_MSG_HAVE, 0, IMAGE_INDEX_CHUNKS_MAX + 1, hdr);
    d = refusal(hdr, sizeof(hdr), 1);
    cr_expect(strstr(d, "HAVE for"), "%s", d);
    /* updates: 8 bytes a chunk, at most PEER_UPDATE_CHUNKS_MAX */
    encode(PEER_MSG_HAVE_UPDATE, 0, 3, hdr);
    cr_expect(peer_msg_decode(hdr, sizeof(hdr), 24, &m, NULL));
    encode(PEER_MSG_HAVE_UPDATE, 0, PEER_UPDATE_CHUNKS_MAX + 1, hdr);
    e = refusal(hdr, sizeof(hdr), (gssize)(PEER_UPDATE_CHUNKS_MAX + 1) * 8);
    cr_expect(strstr(e, "HAVE_UPDATE of"), "%s", e);
    /* DATA needs bytes, at most the largest chunk */
    encode(PEER_MSG_DATA, 0, 1, hdr);
    f = refusal(hdr, sizeof(hdr), -1);
    cr_expect(strstr(f, "without chunk bytes"), "%s", f);
    g = refusal(hdr, sizeof(hdr), (gssize)PEER_FRAME_MAX_BYTES + 1);
    cr_expect(strstr(g, "exceeds"), "%s", g);
    /* ERR needs a known code */
    encode(PEER_MSG_ERR, 0, 1, hdr);
    cr_expect_not(peer_msg_decode(hdr, sizeof(hdr), -1, &m, NULL));
    encode(PEER_MSG_ERR, PEER_ERR_BUSY, 1, hdr);
    cr_expect(peer_msg_decode(hdr, sizeof(hdr), -1, &m, NULL));
    cr_expect_str_eq(peer_err_name(m.flags), "busy");
}
