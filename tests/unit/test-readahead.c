/*
 * test-readahead.c: the shim's sequential streams (p2p/shim/readahead.c):
 * which chunks a read asks ahead.  64 KiB chunks (shift 16) throughout.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <string.h>

#include "readahead.h"

#define SHIFT 16
#define CHUNK (1u << SHIFT)
#define CAP   (1024u * 1024u)

static ShimStreams st;

static void
fresh(void)
{
    memset(&st, 0, sizeof(st));
    pthread_mutex_init(&st.lock, NULL);
}

/* note a read; *n gets the chunks asked ahead (0: none), *from the first */
static uint64_t
note(uint64_t offset, uint32_t count, uint64_t chunks, uint64_t cap,
     uint64_t *from)
{
    uint64_t f = 0, t = 0;
    bool cont, fresh_stream;

    if (!readahead_note(&st, offset, count, SHIFT, chunks, cap, &f, &t, &cont,
                        &fresh_stream))
        return 0;
    *from = f;
    return t - f + 1;
}

Test(readahead, a_first_read_asks_nothing_and_the_window_grows_to_the_cap,
     .init = fresh)
{
    uint64_t from = 0;
    const uint64_t start = READAHEAD_START_BYTES / CHUNK; /* 4 */

    cr_assert_eq(note(0, CHUNK, 1000, CAP, &from), 0);
    /* after c whole-chunk reads back to back, the next read (chunk c)
     * reaches c chunks past its end, at most CAP, once c reads made the
     * start: 4 chunks asked at the first such read, then 2 a read while
     * the window grows, then 1 */
    for (uint64_t c = 1; c <= 40; c++) {
        uint64_t n = note(c * CHUNK, CHUNK, 1000, CAP, &from);
        uint64_t reach = c + (c < CAP / CHUNK ? c : CAP / CHUNK);

        if (c < start) {
            cr_assert_eq(n, 0, "read %" PRIu64, c);
            continue;
        }
        cr_assert_eq(n,
                     c == start         ? start
                     : c <= CAP / CHUNK ? 2
                                        : 1,
                     "read %" PRIu64, c);
        cr_assert_eq(from + n - 1, reach, "read %" PRIu64, c);
    }
}

Test(readahead, a_run_shorter_than_the_start_asks_nothing, .init = fresh)
{
    uint64_t from = 0;

    /* three small files side by side on the disk, read one after the
     * other (64 + 64 + 96 KiB): a stream of 224 KiB, nothing asked */
    cr_assert_eq(note(0, CHUNK, 1000, CAP, &from), 0);
    cr_assert_eq(note(CHUNK, CHUNK, 1000, CAP, &from), 0);
    cr_assert_eq(note(2 * CHUNK, 96 * 1024, 1000, CAP, &from), 0);
    /* the next 32 KiB makes 256 KiB: the read after it asks ahead */
    cr_assert_eq(note(2 * CHUNK + 96 * 1024, 32 * 1024, 1000, CAP, &from), 0);
    cr_assert_eq(note(4 * CHUNK, CHUNK, 1000, CAP, &from), 4);
    cr_assert_eq(from, 5);
}

Test(readahead, small_reads_grow_the_window_by_bytes, .init = fresh)
{
    uint64_t from = 0, last = 0;

    /* 16 KiB reads: nothing until 256 KiB were read back to back; the
     * read at 256 KiB reaches 256 KiB past its end (chunk 8) from the
     * chunk after its own (5) */
    for (uint64_t o = 0; o < READAHEAD_START_BYTES; o += 16384)
        cr_assert_eq(note(o, 16384, 1000, CAP, &from), 0, "at %" PRIu64, o);
    for (uint64_t o = READAHEAD_START_BYTES; o < 64 * CHUNK; o += 16384) {
        uint64_t n = note(o, 16384, 1000, CAP, &from);
        if (n) {
            cr_assert_eq(from, last ? last + 1 : 5); /* no chunk twice */
            last = from + n - 1;
        }
    }
    /* after 4 MiB read back to back, ahead of its end by the cap */
    cr_assert_eq(last, 63 + CAP / CHUNK);
}

Test(readahead, never_past_the_image, .init = fresh)
{
    uint64_t from = 0;

    for (uint64_t c = 0; c < 9; c++) {
        uint64_t n = note(c * CHUNK, CHUNK, 10, CAP, &from);
        if (n)
            cr_assert_leq(from + n - 1, 9);
    }
    /* at the last chunk nothing is left to ask */
    cr_assert_eq(note(9 * CHUNK, CHUNK, 10, CAP, &from), 0);
}

Test(readahead, random_reads_ask_nothing, .init = fresh)
{
    uint64_t from = 0;

    for (uint64_t k = 0; k < 64; k++)
        cr_assert_eq(note(((k * 37) % 64) * CHUNK, CHUNK, 64, CAP, &from), 0);
}

Test(readahead, a_cap_of_zero_asks_nothing, .init = fresh)
{
    uint64_t from = 0;

    for (uint64_t c = 0; c < 20; c++)
        cr_assert_eq(note(c * CHUNK, CHUNK, 100, 0, &from), 0);
}

Test(readahead, four_interleaved_streams_are_each_followed, .init = fresh)
{
    uint64_t from = 0, base[4] = {0, 1000, 2000, 3000};

    /* each stream reads its first four chunks, interleaved */
    for (uint64_t c = 0; c < 4; c++) {
        for (int s = 0; s < 4; s++)
            cr_assert_eq(note((base[s] + c) * CHUNK, CHUNK, 10000, CAP, &from),
                         0);
    }
    for (int s = 0; s < 4; s++) {
        cr_assert_eq(note((base[s] + 4) * CHUNK, CHUNK, 10000, CAP, &from), 4);
        cr_assert_eq(from, base[s] + 5);
    }
    /* a fifth stream replaces the least recently used (the first) ... */
    cr_assert_eq(note(5000 * CHUNK, CHUNK, 10000, CAP, &from), 0);
    cr_assert_eq(note(5 * CHUNK, CHUNK, 10000, CAP, &from), 0);
    /* ... the others go on, past what they asked already */
    cr_assert_eq(note(3005 * CHUNK, CHUNK, 10000, CAP, &from), 2);
    cr_assert_eq(from, 3009);
}
