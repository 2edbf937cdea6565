/*
 * test-image-index.c: building, encoding and (refusing to) parse image
 * indexes.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "image-index.h"
#include "spore-error.h"
#include "test-util.h"

#define KIB 1024u

static char *
make_image(gsize size, bool sparse, guint32 seed)
{
    return test_make_image(size, sparse, seed);
}

static ImageIndex *
build(const char *path, guint shift, guint threads)
{
    g_autoptr(GError) err = NULL;
    ImageIndex *idx = image_index_build_file(path, shift, threads, &err);

    cr_assert(idx, "%s", err ? err->message : "");
    return idx;
}

/* A copy of @idx's encoding, for tampering. */
static guint8 *
encoding_copy(const ImageIndex *idx, gsize *ret_len)
{
    return g_memdup2(g_bytes_get_data(image_index_encoding(idx), ret_len),
                     g_bytes_get_size(image_index_encoding(idx)));
}

static void
fix_trailer(guint8 *data, gsize len)
{
    spore_sha256(data, len - SPORE_SHA256_BYTES,
                 data + len - SPORE_SHA256_BYTES);
}

static void
expect_rejected(const guint8 *data, gsize len, const char *why)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = image_index_parse(data, len, NULL, &err);

    cr_expect_null(idx, "accepted an index that %s", why);
    cr_expect(err && (err->code == SPORE_ERROR_INVALID ||
                      err->code == SPORE_ERROR_LIMIT),
              "%s", why);
}

Test(image_index, hashes_each_chunk_and_flags_zero_chunks)
{
    gsize size = 1000 * KIB + 123; /* last chunk short */
    g_autofree char *path = make_image(size, false, 1);
    g_autoptr(ImageIndex) idx = build(path, 16, 2);
    g_autofree guint8 *data = NULL;
    gsize len = 0;

    cr_assert(g_file_get_contents(path, (char **)&data, &len, NULL));
    g_unlink(path);
    cr_expect_eq(image_index_image_size(idx), size);
    cr_expect_eq(image_index_chunk_size(idx), 64 * KIB);
    cr_assert_eq(image_index_chunk_count(idx), 16u);
    cr_expect_eq(image_index_chunk_len(idx, 15), size - 15 * 64 * KIB);
    cr_expect_eq(image_index_zero_count(idx), 5u); /* blocks 1,4,7,10,13 */
    for (guint64 c = 0; c < 16; c++) {
        gsize off = (gsize)c * 64 * KIB;
        gsize clen = image_index_chunk_len(idx, c);
        g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
        guint8 digest[32];
        gsize dlen = sizeof(digest);

        g_checksum_update(sum, data + off, clen);
        g_checksum_get_digest(sum, digest, &dlen);
        cr_expect_arr_eq(image_index_chunk_digest(idx, c), digest, 32,
                         "chunk %" G_GUINT64_FORMAT, c);
        cr_expect_eq(image_index_chunk_is_zero(idx, c), c % 3 == 1);
        cr_expect(image_index_verify_chunk(idx, c, data + off, clen));
    }
    /* a flipped bit or a wrong length does not verify */
    data[5] ^= 1;
    cr_expect_not(image_index_verify_chunk(idx, 0, data, 64 * KIB));
    cr_expect_not(image_index_verify_chunk(idx, 1, data + 64 * KIB, 100));
    cr_expect_not(image_index_verify_chunk(idx, 99, data, 64 * KIB));
}

Test(image_index, id_is_the_sha256_of_the_encoding)
{
    g_autofree char *path = make_image(300 * KIB, false, 2);
    g_autoptr(ImageIndex) idx = build(path, 12, 1);
    GBytes *enc = image_index_encoding(idx);
    guint8 digest[32];
    g_autofree char *hex = NULL;
    g_autofree char *expected = NULL;

    g_unlink(path);
    spore_sha256(g_bytes_get_data(enc, NULL), g_bytes_get_size(enc), digest);
    hex = spore_hex(digest, 32);
    expected = g_strconcat("sha256:", hex, NULL);
    cr_expect_str_eq(image_index_id(idx), expected);
}

Test(image_index, same_content_gives_the_same_id_sparse_or_dense_any_threads)
{
    g_autofree char *dense = make_image(5 * 1024 * KIB, false, 3);
    g_autofree char *sparse = make_image(5 * 1024 * KIB, true, 3);
    g_autoptr(ImageIndex) a = build(dense, 16, 1);
    g_autoptr(ImageIndex) b = build(sparse, 16, 2);
    g_autoptr(ImageIndex) c = build(sparse, 16, 7);
    g_autoptr(ImageIndex) d = build(dense, 20, 2);

    g_unlink(dense);
    g_unlink(sparse);
    cr_expect_str_eq(image_index_id(a), image_index_id(b));
    cr_expect_str_eq(image_index_id(a), image_index_id(c));
    cr_expect_str_neq(image_index_id(a), image_index_id(d),
                      "another chunk size is another index");
}

Test(image_index, round_trips_through_its_encoding_and_a_file)
{
    g_autofree char *path = make_image(777 * KIB, false, 4);
    g_autoptr(ImageIndex) idx = build(path, 13, 2);
    g_autofree char *index_path = g_strconcat(path, ".sporeidx", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) again = NULL;

    cr_assert(image_index_write(idx, index_path, &err), "%s",
              err ? err->message : "");
    again = image_index_load(index_path, image_index_id(idx), &err);
    g_unlink(path);
    g_unlink(index_path);
    cr_assert(again, "%s", err ? err->message : "");
    cr_expect_str_eq(image_index_id(again), image_index_id(idx));
    cr_expect_eq(image_index_chunk_count(again), image_index_chunk_count(idx));
    cr_expect_eq(image_index_zero_count(again), image_index_zero_count(idx));
    cr_expect(
        g_bytes_equal(image_index_encoding(again), image_index_encoding(idx)));
}

Test(image_index, rejects_truncated_oversized_and_tampered_indexes)
{
    g_autofree char *path = make_image(200 * KIB, false, 5);
    g_autoptr(ImageIndex) idx = build(path, 12, 2);
    gsize len = 0;
    g_autofree guint8 *good = encoding_copy(idx, &len);
    g_autofree guint8 *bad = g_malloc(len + 1);
    guint64 count = image_index_chunk_count(idx);
    gsize flags_at = 64 + (gsize)count * 32;
    guint64 first_zero = 0;

    g_unlink(path);
    while (!image_index_chunk_is_zero(idx, first_zero))
        first_zero++;

#define RESET() memcpy(bad, good, len)
    RESET();
    expect_rejected(bad, len - 1, "is truncated by one byte");
    expect_rejected(bad, 10, "is shorter than its header");
    bad[len] = 0;
    expect_rejected(bad, len + 1, "has a trailing byte");

    RESET();
    bad[0] = 'X';
    fix_trailer(bad, len);
    expect_rejected(bad, len, "has a bad magic");

    RESET();
    bad[8] = 2;
    fix_trailer(bad, len);
    expect_rejected(bad, len, "has version 2");

    RESET();
    bad[12] = 11;
    fix_trailer(bad, len);
    expect_rejected(bad, len, "has 2 KiB chunks");
    bad[12] = 23;
    fix_trailer(bad, len);
    expect_rejected(bad, len, "has 8 MiB chunks");

    RESET();
    bad[50] = 1;
    fix_trailer(bad, len);
    expect_rejected(bad, len, "has non-zero reserved bytes");

    RESET();
    bad[24]++; /* chunk count */
    fix_trailer(bad, len);
    expect_rejected(bad, len, "has a chunk count that does not fit the size");

    RESET();
    bad[16] ^= 0x01; /* image size changes, count stays: still valid shape */
    bad[17] ^= 0x80;
    fix_trailer(bad, len);
    expect_rejected(bad, len, "has a size needing another chunk count");

    RESET();
    bad[64 + 3] ^= 0xff; /* a digest, trailer left stale */
    expect_rejected(bad, len, "has a digest changed under its checksum");

    RESET();
    bad[32]++; /* zero count */
    fix_trailer(bad, len);
    expect_rejected(bad, len, "miscounts its zero chunks");

    RESET();
    bad[flags_at + first_zero / 8] &= (guint8) ~(1u << (first_zero % 8));
    bad[32]--;
    fix_trailer(bad, len);
    expect_rejected(bad, len, "does not flag a zero chunk");

    RESET();
    bad[flags_at] |= 1; /* chunk 0 is random data */
    bad[32]++;
    fix_trailer(bad, len);
    expect_rejected(bad, len, "flags a data chunk as zero");

    if (count % 8) {
        RESET();
        bad[flags_at + count / 8] |= 0x80;
        fix_trailer(bad, len);
        expect_rejected(bad, len, "sets a flag bit past the last chunk");
    }
#undef RESET
}

Test(image_index, rejects_a_consistent_index_with_another_id)
{
    g_autofree char *path = make_image(200 * KIB, false, 6);
    g_autoptr(ImageIndex) idx = build(path, 12, 2);
    gsize len = 0;
    g_autofree guint8 *bad = encoding_copy(idx, &len);
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) forged = NULL;
    g_autoptr(ImageIndex) unpinned = NULL;

    g_unlink(path);
    bad[64] ^= 0xff;       /* chunk 0 now claims other data ... */
    fix_trailer(bad, len); /* ... and the checksum agrees */
    unpinned = image_index_parse(bad, len, NULL, NULL);
    cr_assert(unpinned, "structurally fine");
    forged = image_index_parse(bad, len, image_index_id(idx), &err);
    cr_expect_null(forged, "the pinned id must catch a forged index");
    cr_expect(err && strstr(err->message, "does not match the expected"));
}

Test(image_index, refuses_an_index_over_the_size_limit_before_reading_it)
{
    g_autoptr(GError) err = NULL;
    static guint8 small[64];
    g_autoptr(ImageIndex) idx =
        image_index_parse(small, (gsize)IMAGE_INDEX_MAX_BYTES + 1, NULL, &err);

    cr_expect_null(idx);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT));
}

Test(image_index, refuses_empty_missing_and_non_regular_files)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *empty = NULL;
    int fd = g_file_open_tmp("spore-empty-XXXXXX", &empty, NULL);
    g_autoptr(ImageIndex) a = NULL;
    g_autoptr(ImageIndex) b = NULL;
    g_autoptr(ImageIndex) c = NULL;

    close(fd);
    a = image_index_build_file(empty, 16, 1, &err);
    cr_expect_null(a);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT));
    g_clear_error(&err);
    g_unlink(empty);

    b = image_index_build_file("/nonexistent/image.raw", 16, 1, &err);
    cr_expect_null(b);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_IO));
    cr_expect(strstr(err->message, "'/nonexistent/image.raw'"));
    g_clear_error(&err);

    c = image_index_build_file("/tmp", 16, 1, &err);
    cr_expect_null(c);
    cr_expect(err && strstr(err->message, "not a regular file"));
}

Test(image_index, parses_chunk_sizes_as_operators_write_them)
{
    static const struct {
        const char *text;
        guint shift;
    } good[] = {{"4K", 12},    {"4096", 12}, {"64K", 16},  {"64KiB", 16},
                {"65536", 16}, {"1M", 20},   {"1MiB", 20}, {"4m", 22}};
    static const char *const bad[] = {
        "3K", "8M", "0", "", "64KB", "1G", "-4K", "99999999999999999999K"};
    guint shift;

    for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
        cr_expect(image_index_parse_chunk_size(good[i].text, &shift, NULL),
                  "%s", good[i].text);
        cr_expect_eq(shift, good[i].shift, "%s", good[i].text);
    }
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) err = NULL;
        cr_expect_not(image_index_parse_chunk_size(bad[i], &shift, &err),
                      "'%s' accepted", bad[i]);
        cr_expect(err != NULL);
    }
}

Test(image_index, a_streamed_build_equals_the_file_build)
{
    /* an odd size (a short last chunk), zero runs, fed in uneven pieces */
    gsize size = 1024 * KIB + 12345;
    g_autofree char *path = make_image(size, true, 7);
    g_autoptr(ImageIndex) from_file = build(path, 16, 2);
    g_autofree char *data = NULL;
    gsize len = 0, off = 0, step = 1;
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndexBuilder) b = image_index_builder_new(16);
    ImageIndex *streamed;

    cr_assert(g_file_get_contents(path, &data, &len, NULL));
    cr_assert_eq(len, size);
    while (off < len) {
        gsize n = MIN(step, len - off);

        cr_assert(image_index_builder_feed(b, data + off, n));
        off += n;
        step = step * 3 + 1; /* 1, 4, 13, ... crosses chunk borders */
    }
    cr_assert_eq(image_index_builder_size(b), size);
    streamed = image_index_builder_finish(b, &err);
    cr_assert(streamed, "%s", err ? err->message : "");
    cr_expect_str_eq(image_index_id(streamed), image_index_id(from_file));
    cr_expect_eq(image_index_zero_count(streamed),
                 image_index_zero_count(from_file));
    image_index_free(streamed);
    unlink(path);
}

Test(image_index, a_streamed_build_of_nothing_fails)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndexBuilder) b = image_index_builder_new(16);

    cr_expect_null(image_index_builder_finish(b, &err));
    cr_expect(err && err->code == SPORE_ERROR_LIMIT);
}
