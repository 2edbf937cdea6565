/*
 * readahead.c: sequential streams per NBD connection, and which chunks to
 * ask for ahead of them.
 *
 * Why: the shim asks for the missing chunks of one guest read together, but
 * a guest reading a file with small sequential reads (its page cache reads
 * 128 KiB at a time, QEMU splits along qcow2 clusters) pays one round trip
 * to the source per chunk; with 20 ms to the origin that round trip, not the
 * link's rate, bounds the read.
 *
 * A stream is a run of reads on one connection each of which starts exactly
 * where an earlier one ended (READAHEAD_STREAMS are kept per connection,
 * least recently used replaced, so a guest reading a few files at once keeps
 * each).  Once a stream has read READAHEAD_START_BYTES (256 KiB) back to
 * back, a read that continues it asks ahead of its end for as many bytes
 * as the stream had read before it: the window doubles while the stream
 * continues (256 KiB, then 512 KiB, ...), capped at the plugin's readahead=
 * (READAHEAD_DEFAULT_BYTES, 1 MiB: 16 chunks of 64 KiB, four times the
 * bandwidth-delay product of a 100 Mbit/s link with 20 ms round trips, so
 * a stream is not slowed by the round trip up to 80 ms, or 400 Mbit/s at
 * 20 ms), and at least one chunk.  It never reaches past the image.  What
 * it costs: a stream that ends leaves at most one window fetched for
 * nothing, and no more than the stream itself had read (a random reader
 * continues no stream, so it fetches nothing ahead).  Why the start: a
 * distribution's boot reads hundreds of small files, and files written one
 * after the other lie next to each other on the disk, so that reading two
 * of them looks like a stream; asking ahead from the first continuation
 * (the window one chunk, then two) fetched 74 chunks the boot of the
 * Debian guest never read, fetched / read 1.34 against 1.22 without any
 * read-ahead; from 256 KiB on, 21 chunks and 1.25 (bench/lazy-boot with
 * SPORE_BENCH_GUEST=distro, 64 KiB chunks).  A file of more than 256 KiB
 * is read ahead from then on.  And the link: the
 * agent's engine keeps one worker for demand, so no demand chunk waits for
 * a worker behind ahead chunks, but it can share the origin's link with
 * as many ahead chunks as the engine's other workers fetch (7 by default:
 * ~150 ms of a 25 Mbit/s link at 64 KiB chunks).
 *
 * Pure bookkeeping under the connection's lock: no I/O here.
 */
#include "readahead.h"

bool
readahead_note(ShimStreams *st, uint64_t offset, uint32_t count,
               unsigned chunk_shift, uint64_t chunk_count, uint64_t cap,
               uint64_t *from, uint64_t *to, bool *continued, bool *new_stream)
{
    uint64_t end = offset + count;
    uint64_t chunk_size = (uint64_t)1 << chunk_shift;
    ShimStream *s = NULL, *victim = &st->s[0];
    uint64_t window, last, first;
    bool ask = false;

    *continued = false;
    *new_stream = false;
    if (count == 0)
        return false;
    pthread_mutex_lock(&st->lock);
    st->tick++;
    for (unsigned i = 0; i < READAHEAD_STREAMS; i++) {
        if (st->s[i].run > 0 && st->s[i].next == offset) {
            s = &st->s[i];
            break;
        }
        /* a free slot, else the least recently used */
        if (victim->run > 0 &&
            (st->s[i].run == 0 || st->s[i].used < victim->used))
            victim = &st->s[i];
    }
    if (!s) {
        /* a new stream, maybe: its first read asks nothing ahead */
        *victim = (ShimStream){
            .next = end, .run = count, .reads = 1, .used = st->tick};
        pthread_mutex_unlock(&st->lock);
        return false;
    }
    *continued = true;
    *new_stream = s->reads == 1;
    s->reads++;
    if (s->run < READAHEAD_START_BYTES) {
        s->run += count;
        s->next = end;
        s->used = st->tick;
        pthread_mutex_unlock(&st->lock);
        return false;
    }
    window = s->run < cap ? s->run : cap;
    if (window < chunk_size)
        window = chunk_size;
    s->run += count;
    s->next = end;
    s->used = st->tick;
    last = (end - 1) >> chunk_shift; /* the read's last chunk */
    first = last + 1;
    if (s->ahead > first)
        first = s->ahead;
    {
        uint64_t want_last = (end + window - 1) >> chunk_shift;
        if (want_last >= chunk_count)
            want_last = chunk_count - 1;
        if (cap > 0 && chunk_count > 0 && first <= want_last &&
            first < chunk_count) {
            *from = first;
            *to = want_last;
            s->ahead = want_last + 1;
            ask = true;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return ask;
}
