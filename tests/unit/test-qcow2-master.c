/*
 * test-qcow2-master.c: the header checks of a qcow2 master (which masters
 * may back a clone, which name host files and are refused), on headers
 * built here and on files made by qemu-img.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "qcow2-master.h"
#include "spore-error.h"

static void
put32(guint8 *p, guint32 v)
{
    p[0] = (guint8)(v >> 24);
    p[1] = (guint8)(v >> 16);
    p[2] = (guint8)(v >> 8);
    p[3] = (guint8)v;
}

static void
put64(guint8 *p, guint64 v)
{
    put32(p, (guint32)(v >> 32));
    put32(p + 4, (guint32)v);
}

/* a version 3 header as qemu-img writes it: 64 KiB clusters, 1 GiB,
 * zlib, header length 112 */
static void
v3_header(guint8 *h)
{
    memset(h, 0, QCOW2_MASTER_HEAD_BYTES);
    put32(h, 0x514649fbu);
    put32(h + 4, 3);
    put32(h + 20, 16);
    put64(h + 24, 1ull << 30);
    put32(h + 96, 4);    /* refcount_order */
    put32(h + 100, 112); /* header_length */
}

static void
expect_refused(const guint8 *h, gsize len, const char *says)
{
    g_autoptr(GError) err = NULL;
    Qcow2Header out;

    cr_assert_not(qcow2_header_parse(h, len, &out, &err));
    cr_assert(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
    cr_expect(strstr(err->message, says), "'%s' lacks '%s'", err->message,
              says);
}

Test(qcow2_master, accepts_a_version_3_header_and_reads_its_geometry)
{
    guint8 h[QCOW2_MASTER_HEAD_BYTES];
    g_autoptr(GError) err = NULL;
    Qcow2Header out;

    v3_header(h);
    cr_assert(qcow2_header_parse(h, sizeof(h), &out, &err), "%s",
              err ? err->message : "");
    cr_expect_eq(out.version, 3);
    cr_expect_eq(out.cluster_bits, 16);
    cr_expect_eq(out.virtual_size, 1ull << 30);
    cr_expect_not(out.compressed_zstd);
}

Test(qcow2_master, accepts_zstd_compression_and_extended_l2)
{
    guint8 h[QCOW2_MASTER_HEAD_BYTES];
    g_autoptr(GError) err = NULL;
    Qcow2Header out;

    v3_header(h);
    put64(h + 72, (1u << 3) | (1u << 4));
    h[104] = 1;
    cr_assert(qcow2_header_parse(h, sizeof(h), &out, &err), "%s",
              err ? err->message : "");
    cr_expect(out.compressed_zstd);
}

Test(qcow2_master, refuses_what_is_not_qcow2)
{
    guint8 h[QCOW2_MASTER_HEAD_BYTES] = {0};

    expect_refused(h, sizeof(h), "not a qcow2 image");
    v3_header(h);
    expect_refused(h, QCOW2_HEADER_V2_BYTES - 1, "not a qcow2 image");
    put32(h + 4, 4);
    expect_refused(h, sizeof(h), "version 4");
}

Test(qcow2_master, refuses_a_master_that_names_a_backing_file)
{
    guint8 h[QCOW2_MASTER_HEAD_BYTES];

    v3_header(h);
    put64(h + 8, 112);
    put32(h + 16, 11);
    memcpy(h + 112, "/etc/shadow", 11);
    expect_refused(h, sizeof(h), "names a backing file");
    put64(h + 8, 0); /* a size without an offset is refused too */
    expect_refused(h, sizeof(h), "names a backing file");
}

Test(qcow2_master, refuses_an_external_data_file)
{
    guint8 h[QCOW2_MASTER_HEAD_BYTES];

    v3_header(h);
    put64(h + 72, 1u << 2);
    expect_refused(h, sizeof(h), "external data file");
}

Test(qcow2_master, refuses_encrypted_corrupt_and_unknown_features)
{
    guint8 h[QCOW2_MASTER_HEAD_BYTES];

    v3_header(h);
    put32(h + 32, 2); /* LUKS */
    expect_refused(h, sizeof(h), "encrypted");
    v3_header(h);
    put64(h + 72, 1u << 1);
    expect_refused(h, sizeof(h), "marked corrupt");
    v3_header(h);
    put64(h + 72, 1u << 9);
    expect_refused(h, sizeof(h), "unknown incompatible features (0x200)");
    v3_header(h);
    put64(h + 72, 1u << 3);
    h[104] = 7;
    expect_refused(h, sizeof(h), "unknown qcow2 compression type");
}

Test(qcow2_master, refuses_geometry_qemu_refuses)
{
    guint8 h[QCOW2_MASTER_HEAD_BYTES];

    v3_header(h);
    put32(h + 20, 8);
    expect_refused(h, sizeof(h), "cluster_bits 8");
    v3_header(h);
    put64(h + 24, 0);
    expect_refused(h, sizeof(h), "virtual size");
    v3_header(h);
    expect_refused(h, QCOW2_HEADER_V3_BYTES - 1, "truncated");
    put32(h + 100, 4096); /* longer than what was read */
    expect_refused(h, sizeof(h), "header length");
}

/* qemu_img ARGS...: run qemu-img quietly; false when it is missing */
static bool
qemu_img(const char *const *argv)
{
    int status = 0;

    return g_spawn_sync(NULL, (char **)argv, NULL,
                        G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL |
                            G_SPAWN_STDERR_TO_DEV_NULL,
                        NULL, NULL, NULL, NULL, &status, NULL) &&
           g_spawn_check_wait_status(status, NULL);
}

Test(qcow2_master, checks_files_that_qemu_img_made)
{
    g_autofree char *dir = g_dir_make_tmp("spore-qcow2-XXXXXX", NULL);
    g_autofree char *plain = g_build_filename(dir, "plain.qcow2", NULL);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *child = g_build_filename(dir, "child.qcow2", NULL);
    g_autofree char *raw = g_build_filename(dir, "raw.img", NULL);
    g_autoptr(GError) err = NULL;
    Qcow2Header out;
    const char *mk_plain[] = {"qemu-img", "create", "-f", "qcow2",
                              plain,      "64M",    NULL};
    const char *mk_base[] = {"qemu-img", "create", "-f", "raw",
                             base,       "1M",     NULL};
    const char *mk_child[] = {"qemu-img", "create", "-f", "qcow2", "-F",
                              "raw",      "-b",     base, child,   NULL};

    g_autofree char *qemu_img_path = g_find_program_in_path("qemu-img");

    cr_assert(dir);
    if (!qemu_img_path) {
        g_rmdir(dir);
        cr_skip_test("qemu-img (qemu-utils) is not installed");
    }
    cr_assert(qemu_img(mk_plain) && qemu_img(mk_base) && qemu_img(mk_child));
    cr_assert(qcow2_master_check(plain, &out, &err), "%s",
              err ? err->message : "");
    cr_expect_eq(out.virtual_size, 64ull << 20);
    cr_expect_not(qcow2_master_check(child, NULL, &err));
    cr_expect(err && strstr(err->message, "names a backing file") &&
                  strstr(err->message, child),
              "%s", err ? err->message : "");
    g_clear_error(&err);
    /* a raw file and one that is not there, each named */
    cr_assert(qemu_img(mk_base));
    cr_expect_not(qcow2_master_check(base, NULL, &err));
    cr_expect(err && strstr(err->message, "not a qcow2 image") &&
              strstr(err->message, base));
    g_clear_error(&err);
    cr_expect_not(qcow2_master_check(raw, NULL, &err));
    cr_expect(err && g_error_matches(err, SPORE_ERROR, SPORE_ERROR_IO));
    g_unlink(plain);
    g_unlink(base);
    g_unlink(child);
    g_rmdir(dir);
}
