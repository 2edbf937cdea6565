/*
 * bad-peer.c: a misbehaving peer host for the fault-matrix test and bench,
 * written from docs/peer-protocol.md: a ZeroMQ ROUTER with CURVE on
 * 127.0.0.1 that claims to hold every chunk of one image and then answers
 * GETs as its MODE says.
 *
 *   bad-peer MODE INDEX KEY-OUT STATS-OUT [DELAY-MS]
 *
 * INDEX is the image's index (sporectl image-index); the peer's public key
 * is written to KEY-OUT (the key_file of a [peer NAME] group of the
 * reader's agent.conf); it prints its endpoint on one line once it is
 * bound, serves until SIGTERM or SIGINT, then writes its counters to
 * STATS-OUT as one JSON object: have_reqs, gets, fetch_gets, answers,
 * lies (DATA it sent with wrong bytes or length), bytes_sent (payload bytes
 * of its DATA).  Modes:
 *   liar      DATA of the right length, wrong bytes (a digest mismatch)
 *   half      DATA of half the chunk's length
 *   plus4k    DATA 4 KiB longer than the chunk
 *   4mib      4 MiB of DATA for every chunk
 *   unasked   answers HAVE_REQ with DATA too, under request ids never
 *             used, and never answers a GET
 *   silent    never answers a GET (accepts work, does nothing)
 *   nofetch   holds nothing: answers a plain GET "not present" and never
 *             answers a GET with FETCH (delegated work it never does)
 *   slow      DATA with the right bytes (read from IMAGE, the 6th
 *             argument), each DELAY-MS after its GET: a slow, honest peer
 * The liar modes send junk bytes (0x5a), never the image's.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>
#include <zmq.h>

#include "image-index.h"
#include "peer-protocol.h"

#define KIB 1024u

typedef enum {
    MODE_LIAR,
    MODE_HALF,
    MODE_PLUS4K,
    MODE_4MIB,
    MODE_UNASKED,
    MODE_SILENT,
    MODE_NOFETCH,
    MODE_SLOW,
} Mode;

static const char *const mode_names[] = {
    "liar", "half", "plus4k", "4mib", "unasked", "silent", "nofetch", "slow",
};

static volatile sig_atomic_t stopping;

static struct {
    guint64 have_reqs, gets, fetch_gets, answers, lies, bytes_sent;
} st;

static void
on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void
send_msg(void *s, const guint8 *rid, int rlen, const PeerMsg *m,
         const void *payload, gsize len)
{
    guint8 hdr[PEER_HEADER_BYTES];

    peer_msg_encode(m, hdr);
    zmq_send(s, rid, (size_t)rlen, ZMQ_SNDMORE);
    if (!payload) {
        zmq_send(s, hdr, sizeof(hdr), 0);
        return;
    }
    zmq_send(s, hdr, sizeof(hdr), ZMQ_SNDMORE);
    if (zmq_send(s, payload, len, 0) >= 0 && m->type == PEER_MSG_DATA)
        st.bytes_sent += len;
}

/* DATA for @m's chunk: @len bytes of junk. */
static void
send_junk(void *s, const guint8 *rid, int rlen, PeerMsg m, gsize len)
{
    g_autofree guint8 *junk = g_malloc(len);

    memset(junk, 0x5a, len);
    m.type = PEER_MSG_DATA;
    m.flags = 0;
    send_msg(s, rid, rlen, &m, junk, len);
    st.lies++;
}

/* DATA for @m's chunk: its bytes, read from @fd. */
static void
send_true(void *s, const guint8 *rid, int rlen, PeerMsg m,
          const ImageIndex *idx, int fd)
{
    gsize len = image_index_chunk_len(idx, m.chunk);
    g_autofree guint8 *buf = g_malloc0(len);
    off_t at = (off_t)(m.chunk * image_index_chunk_size(idx));

    if (pread(fd, buf, len, at) != (ssize_t)len)
        return; /* then no answer: a miss for the reader */
    m.type = PEER_MSG_DATA;
    m.flags = 0;
    send_msg(s, rid, rlen, &m, buf, len);
    st.answers++;
}

typedef struct {
    gint64 due;
    guint8 rid[256];
    int rlen;
    PeerMsg m;
} Delayed;

static void
answer_have(void *s, const guint8 *rid, int rlen, PeerMsg m, Mode mode,
            const ImageIndex *idx)
{
    guint64 count = image_index_chunk_count(idx);
    gsize bytes = (gsize)((count + 7) / 8);
    g_autofree guint8 *bits = g_malloc0(bytes);
    PeerMsg req = m;

    st.have_reqs++;
    if (mode != MODE_NOFETCH) {
        memset(bits, 0xff, bytes);
        if (count % 8)
            bits[bytes - 1] = (guint8)((1u << (count % 8)) - 1);
    }
    m.type = PEER_MSG_HAVE;
    m.flags = 0;
    m.chunk = count;
    send_msg(s, rid, rlen, &m, bits, bytes);
    for (guint k = 0; mode == MODE_UNASKED && k < 8 && k < count; k++) {
        req.req_id = 0x7fff0000u + k;
        req.chunk = k;
        send_junk(s, rid, rlen, req, image_index_chunk_len(idx, k));
    }
}

static void
answer_get(void *s, const guint8 *rid, int rlen, PeerMsg m, Mode mode,
           const ImageIndex *idx, GQueue *delayed, guint delay_ms)
{
    gsize len;

    st.gets++;
    if (m.flags & PEER_GET_FETCH)
        st.fetch_gets++;
    if (m.chunk >= image_index_chunk_count(idx)) {
        m.type = PEER_MSG_ERR;
        m.flags = PEER_ERR_BAD_REQUEST;
        send_msg(s, rid, rlen, &m, NULL, 0);
        return;
    }
    len = image_index_chunk_len(idx, m.chunk);
    switch (mode) {
    case MODE_SILENT:
    case MODE_UNASKED:
        break;
    case MODE_NOFETCH:
        if (m.flags & PEER_GET_FETCH)
            break;
        m.type = PEER_MSG_ERR;
        m.flags = PEER_ERR_NOT_PRESENT;
        send_msg(s, rid, rlen, &m, NULL, 0);
        break;
    case MODE_LIAR:
        send_junk(s, rid, rlen, m, len);
        break;
    case MODE_HALF:
        send_junk(s, rid, rlen, m, len / 2);
        break;
    case MODE_PLUS4K:
        send_junk(s, rid, rlen, m, len + 4 * KIB);
        break;
    case MODE_4MIB:
        send_junk(s, rid, rlen, m, 4096 * KIB);
        break;
    case MODE_SLOW: {
        Delayed *d = g_new0(Delayed, 1);

        d->due = g_get_monotonic_time() + (gint64)delay_ms * 1000;
        memcpy(d->rid, rid, (size_t)rlen);
        d->rlen = rlen;
        d->m = m;
        g_queue_push_tail(delayed, d);
        break;
    }
    }
}

static bool
write_stats(const char *path)
{
    g_autofree char *text = g_strdup_printf(
        "{\"have_reqs\": %" G_GUINT64_FORMAT ", \"gets\": %" G_GUINT64_FORMAT
        ", \"fetch_gets\": %" G_GUINT64_FORMAT
        ", \"answers\": %" G_GUINT64_FORMAT ", \"lies\": %" G_GUINT64_FORMAT
        ", \"bytes_sent\": %" G_GUINT64_FORMAT "}\n",
        st.have_reqs, st.gets, st.fetch_gets, st.answers, st.lies,
        st.bytes_sent);
    g_autoptr(GError) err = NULL;

    if (!g_file_set_contents(path, text, -1, &err)) {
        fprintf(stderr, "bad-peer: %s\n", err->message);
        return false;
    }
    return true;
}

int
main(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = NULL;
    g_autofree char *key_text = NULL;
    char pub[41], sec[41], last[256];
    size_t last_len = sizeof(last);
    int mode = -1, fd = -1, one = 1, linger = 0, timeout = 20;
    guint delay_ms = 0;
    GQueue delayed = G_QUEUE_INIT;
    struct sigaction sa = {.sa_handler = on_signal};
    void *ctx, *s;

    if (argc < 5) {
        fprintf(stderr, "usage: bad-peer MODE INDEX KEY-OUT STATS-OUT "
                        "[DELAY-MS IMAGE]\n");
        return 2;
    }
    for (guint k = 0; k < G_N_ELEMENTS(mode_names); k++) {
        if (g_str_equal(argv[1], mode_names[k]))
            mode = (int)k;
    }
    if (mode < 0) {
        fprintf(stderr, "bad-peer: unknown mode '%s'\n", argv[1]);
        return 2;
    }
    idx = image_index_load(argv[2], NULL, &err);
    if (!idx) {
        fprintf(stderr, "bad-peer: %s\n", err->message);
        return 1;
    }
    if (mode == MODE_SLOW) {
        if (argc < 7) {
            fprintf(stderr, "bad-peer: slow needs DELAY-MS and IMAGE\n");
            return 2;
        }
        delay_ms = (guint)g_ascii_strtoull(argv[5], NULL, 10);
        fd = open(argv[6], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "bad-peer: %s: %s\n", argv[6], g_strerror(errno));
            return 1;
        }
    }
    if (zmq_curve_keypair(pub, sec) != 0) {
        fprintf(stderr, "bad-peer: no CURVE in this libzmq\n");
        return 1;
    }
    key_text = g_strdup_printf("%s\n", pub);
    if (!g_file_set_contents(argv[3], key_text, -1, &err)) {
        fprintf(stderr, "bad-peer: %s\n", err->message);
        return 1;
    }
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    ctx = zmq_ctx_new();
    s = zmq_socket(ctx, ZMQ_ROUTER);
    zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof(one));
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 40);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
    if (zmq_bind(s, "tcp://127.0.0.1:*") != 0) {
        fprintf(stderr, "bad-peer: bind: %s\n", zmq_strerror(errno));
        return 1;
    }
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, last, &last_len);
    printf("%s\n", last);
    fflush(stdout);

    while (!stopping) {
        guint8 rid[256], hdr[PEER_HEADER_BYTES], extra[64];
        int rlen = zmq_recv(s, rid, sizeof(rid), 0);
        int more = 0, hlen;
        size_t more_len = sizeof(more);
        PeerMsg m;

        while (!g_queue_is_empty(&delayed) &&
               ((Delayed *)g_queue_peek_head(&delayed))->due <=
                   g_get_monotonic_time()) {
            g_autofree Delayed *d = g_queue_pop_head(&delayed);
            send_true(s, d->rid, d->rlen, d->m, idx, fd);
        }
        if (rlen < 0)
            continue;
        hlen = zmq_recv(s, hdr, sizeof(hdr), 0);
        /* whatever else the message carried: read and ignore */
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &more_len);
        while (more) {
            zmq_recv(s, extra, sizeof(extra), 0);
            zmq_getsockopt(s, ZMQ_RCVMORE, &more, &more_len);
        }
        if (hlen != PEER_HEADER_BYTES ||
            !peer_msg_decode(hdr, PEER_HEADER_BYTES, -1, &m, NULL))
            continue;
        if (m.type == PEER_MSG_HAVE_REQ)
            answer_have(s, rid, rlen, m, (Mode)mode, idx);
        else if (m.type == PEER_MSG_GET)
            answer_get(s, rid, rlen, m, (Mode)mode, idx, &delayed, delay_ms);
    }
    g_queue_clear_full(&delayed, g_free);
    zmq_close(s);
    zmq_ctx_term(ctx);
    if (fd >= 0)
        close(fd);
    return write_stats(argv[4]) ? 0 : 1;
}
