/*
 * test-profile.c: access profiles: parsing the shim's records and merging
 * boots into a prefetch order.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <glib/gstdio.h>

#include "le-bytes.h"
#include "profile.h"
#include "test-util.h"

/* Records from pairs (chunk, time); @extra bytes of a cut-off record. */
static GByteArray *
records(const guint64 *pairs, gsize n_pairs, gsize extra)
{
    GByteArray *b = g_byte_array_new();

    for (gsize i = 0; i < n_pairs; i++) {
        guint8 rec[16];
        le_put64(rec, pairs[2 * i]);
        le_put64(rec + 8, pairs[2 * i + 1]);
        g_byte_array_append(b, rec, sizeof(rec));
    }
    for (gsize i = 0; i < extra; i++)
        g_byte_array_append(b, (const guint8 *)"\xff", 1);
    return b;
}

static ProfileBoot *
boot_of(const guint64 *pairs, gsize n_pairs)
{
    g_autoptr(GByteArray) b = records(pairs, n_pairs, 0);

    return profile_boot_parse(b->data, b->len, 1000);
}

Test(profile, parses_records_and_drops_repeats_strays_and_a_cut_record)
{
    static const guint64 pairs[] = {5, 10, 7, 20, 5, 30, 5000, 40, 1, 50};
    g_autoptr(GByteArray) b = records(pairs, 5, 9);
    g_autoptr(ProfileBoot) boot = profile_boot_parse(b->data, b->len, 1000);

    cr_assert_eq(boot->chunks->len, 3u);
    cr_expect_eq(g_array_index(boot->chunks, guint64, 0), 5u);
    cr_expect_eq(g_array_index(boot->chunks, guint64, 1), 7u);
    cr_expect_eq(g_array_index(boot->chunks, guint64, 2), 1u);
    cr_expect_eq(g_array_index(boot->times, guint64, 0), 10u,
                 "the first access counts");
}

Test(profile, orders_by_mean_first_access_and_drops_rare_chunks)
{
    /* chunk 3 is read early in every boot, chunk 9 late, chunk 4 in the
     * middle; chunk 77 only in one boot of five: below a quarter */
    static const guint64 b1[] = {3, 100, 4, 500, 9, 900, 77, 50};
    static const guint64 b2[] = {3, 110, 9, 950, 4, 520};
    static const guint64 b3[] = {4, 480, 3, 90, 9, 1000};
    static const guint64 b4[] = {3, 95, 9, 930};
    static const guint64 b5[] = {9, 910, 3, 105, 4, 505};
    ProfileBoot *boots[] = {boot_of(b1, 4), boot_of(b2, 3), boot_of(b3, 3),
                            boot_of(b4, 2), boot_of(b5, 3)};
    g_autoptr(GArray) order = profile_merge(boots, 5);

    cr_assert_eq(order->len, 3u, "chunk 77 (1 boot of 5) is dropped");
    cr_expect_eq(g_array_index(order, guint64, 0), 3u);
    cr_expect_eq(g_array_index(order, guint64, 1), 4u);
    cr_expect_eq(g_array_index(order, guint64, 2), 9u);
    for (gsize i = 0; i < G_N_ELEMENTS(boots); i++)
        profile_boot_free(boots[i]);
}

Test(profile, keeps_a_chunk_seen_in_exactly_a_quarter_of_the_boots)
{
    static const guint64 with[] = {1, 10, 2, 20};
    static const guint64 without[] = {1, 10};
    ProfileBoot *boots[] = {boot_of(with, 2), boot_of(without, 1),
                            boot_of(without, 1), boot_of(without, 1)};
    g_autoptr(GArray) order = profile_merge(boots, 4);

    cr_expect_eq(order->len, 2u);
    for (gsize i = 0; i < G_N_ELEMENTS(boots); i++)
        profile_boot_free(boots[i]);
}

Test(profile, loads_the_profiles_of_a_directory)
{
    g_autofree char *dir = g_dir_make_tmp("spore-prof-XXXXXX", NULL);
    static const guint64 a[] = {8, 1, 2, 5};
    static const guint64 b[] = {2, 1, 8, 7};
    g_autoptr(GByteArray) ra = records(a, 2, 0);
    g_autoptr(GByteArray) rb = records(b, 2, 0);
    g_autofree char *pa = g_build_filename(dir, "shim-1-1.prof", NULL);
    g_autofree char *pb = g_build_filename(dir, "shim-2-2.prof", NULL);
    g_autofree char *junk = g_build_filename(dir, "notes.txt", NULL);
    g_autoptr(GArray) order = NULL;
    g_autoptr(GArray) none = NULL;
    guint n = 0;

    cr_assert(g_file_set_contents(pa, (char *)ra->data, ra->len, NULL));
    cr_assert(g_file_set_contents(pb, (char *)rb->data, rb->len, NULL));
    cr_assert(g_file_set_contents(junk, "x", 1, NULL));
    order = profile_load_dir(dir, 100, &n);
    cr_expect_eq(n, 2u);
    cr_assert_eq(order->len, 2u);
    /* chunk 8: mean 4 us; chunk 2: mean 3 us */
    cr_expect_eq(g_array_index(order, guint64, 0), 2u);
    cr_expect_eq(g_array_index(order, guint64, 1), 8u);
    test_rm_rf(dir);
    none = profile_load_dir("/nonexistent/profiles", 100, &n);
    cr_expect_eq(none->len, 0u);
    cr_expect_eq(n, 0u);
}

/* The digest is SHA-256 over the chunk numbers as little-endian u64s, in
 * order (values from Python's hashlib over struct.pack('<Q...')). */
Test(profile, digests_the_chunk_numbers_in_order_as_little_endian)
{
    static const guint64 ab[] = {1, 2};
    static const guint64 ba[] = {2, 1};
    static const guint64 wide[] = {0x0102030405060708ull};
    g_autoptr(GArray) a = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autoptr(GArray) b = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autoptr(GArray) w = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autoptr(GArray) e = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autofree char *da = NULL;
    g_autofree char *db = NULL;
    g_autofree char *dw = NULL;
    g_autofree char *de = NULL;

    g_array_append_vals(a, ab, 2);
    g_array_append_vals(b, ba, 2);
    g_array_append_vals(w, wide, 1);
    da = profile_digest(a);
    db = profile_digest(b);
    dw = profile_digest(w);
    de = profile_digest(e);
    cr_expect_str_eq(da, "sha256:0c730b69905c5ef7a4ca5269f72365400bde2dd2c04e"
                         "af9bbb3d1c4a265a0131");
    cr_expect_str_eq(db, "sha256:66c313335fc249aefd7420b063da1bbd123fa61351b9"
                         "517955aa2623eba94038");
    cr_expect_str_eq(dw, "sha256:380b980886b7a3e726b5c2776160d7842b8f139eaea1"
                         "e6acf7442cdf890e6287");
    cr_expect_str_eq(de, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b"
                         "934ca495991b7852b855");
}
