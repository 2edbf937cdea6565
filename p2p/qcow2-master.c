/*
 * qcow2-master.c: the checks of a qcow2 master's header (see
 * qcow2-master.h).
 *
 * The header is big-endian (QEMU's docs/interop/qcow2.txt):
 *
 *   0 magic "QFI\xfb"         20 cluster_bits        36 l1_size
 *   4 version (2, 3)          24 size (virtual)      ...
 *   8 backing_file_offset     32 crypt_method        72 incompatible_features
 *  16 backing_file_size                              (version 3 only)
 *  100 header_length (v3)    104 compression_type (v3, if header_length > 104)
 *
 * Only the fields that decide whether the master may back a clone are
 * read.  Nothing here keeps state; both functions are thread-safe.
 */
#include "qcow2-master.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "spore-error.h"

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

/* version 3 incompatible feature bits (docs/interop/qcow2.txt) */
#define QCOW2_INCOMPAT_DIRTY       ((guint64)1 << 0)
#define QCOW2_INCOMPAT_CORRUPT     ((guint64)1 << 1)
#define QCOW2_INCOMPAT_DATA_FILE   ((guint64)1 << 2)
#define QCOW2_INCOMPAT_COMPRESSION ((guint64)1 << 3)
#define QCOW2_INCOMPAT_EXTL2       ((guint64)1 << 4)
#define QCOW2_INCOMPAT_KNOWN                                 \
    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT |         \
     QCOW2_INCOMPAT_DATA_FILE | QCOW2_INCOMPAT_COMPRESSION | \
     QCOW2_INCOMPAT_EXTL2)

/* The largest virtual size accepted: 64 PiB (QEMU's own limit is higher;
 * nothing real comes near this one) */
#define QCOW2_VIRTUAL_SIZE_MAX_BYTES (1ull << 56)

static guint32
be32(const guint8 *p)
{
    return (guint32)p[0] << 24 | (guint32)p[1] << 16 | (guint32)p[2] << 8 |
           (guint32)p[3];
}

static guint64
be64(const guint8 *p)
{
    return (guint64)be32(p) << 32 | be32(p + 4);
}

static bool
invalid(GError **error, const char *what)
{
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, "%s", what);
    return false;
}

/* the version 3 fields: features and compression type */
static bool
parse_v3(const guint8 *data, gsize len, Qcow2Header *h, GError **error)
{
    guint32 header_length;

    if (len < QCOW2_HEADER_V3_BYTES)
        return invalid(error, "truncated qcow2 version 3 header");
    h->incompatible = be64(data + 72);
    header_length = be32(data + 100);
    if (header_length < QCOW2_HEADER_V3_BYTES || header_length > len)
        return invalid(error, "qcow2 header length out of range");
    if (h->incompatible & QCOW2_INCOMPAT_DATA_FILE)
        return invalid(error,
                       "the qcow2 image keeps its data in an external data "
                       "file (a file on the host QEMU would open): refused");
    if (h->incompatible & QCOW2_INCOMPAT_CORRUPT)
        return invalid(error, "the qcow2 image is marked corrupt");
    if (h->incompatible & ~QCOW2_INCOMPAT_KNOWN) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the qcow2 image needs unknown incompatible features "
                    "(0x%" G_GINT64_MODIFIER "x)",
                    (guint64)(h->incompatible & ~QCOW2_INCOMPAT_KNOWN));
        return false;
    }
    if (h->incompatible & QCOW2_INCOMPAT_COMPRESSION) {
        if (header_length <= QCOW2_HEADER_V3_BYTES)
            return invalid(error, "qcow2 compression type bit without the "
                                  "compression type field");
        if (data[104] > 1)
            return invalid(error, "unknown qcow2 compression type");
        h->compressed_zstd = data[104] == 1;
    }
    return true;
}

bool
qcow2_header_parse(const guint8 *data, gsize len, Qcow2Header *ret_header,
                   GError **error)
{
    Qcow2Header h = {0};

    if (len < QCOW2_HEADER_V2_BYTES || be32(data) != QCOW2_MAGIC)
        return invalid(error, "not a qcow2 image (no qcow2 magic)");
    h.version = be32(data + 4);
    if (h.version != 2 && h.version != 3) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "qcow2 version %u is not 2 or 3", h.version);
        return false;
    }
    if (be64(data + 8) != 0 || be32(data + 16) != 0)
        return invalid(error,
                       "the qcow2 image names a backing file (a file on the "
                       "host QEMU would open): refused; flatten it with "
                       "qemu-img convert");
    h.cluster_bits = be32(data + 20);
    if (h.cluster_bits < QCOW2_CLUSTER_BITS_MIN ||
        h.cluster_bits > QCOW2_CLUSTER_BITS_MAX) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "qcow2 cluster_bits %u is not in [%u, %u]", h.cluster_bits,
                    QCOW2_CLUSTER_BITS_MIN, QCOW2_CLUSTER_BITS_MAX);
        return false;
    }
    h.virtual_size = be64(data + 24);
    if (h.virtual_size == 0 || h.virtual_size > QCOW2_VIRTUAL_SIZE_MAX_BYTES)
        return invalid(error, "qcow2 virtual size out of range");
    if (be32(data + 32) != 0)
        return invalid(error,
                       "the qcow2 image is encrypted: spore cannot boot it");
    if (h.version == 3 && !parse_v3(data, len, &h, error))
        return false;
    *ret_header = h;
    return true;
}

/* read_file: the first @len bytes of the file @path, all of them */
static bool
read_file(const char *path, guint8 *buf, gsize len, GError **error)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    gsize got = 0;

    if (fd < 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "%s",
                    g_strerror(errno));
        return false;
    }
    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "%s",
                        n < 0 ? g_strerror(errno) : "shorter than a header");
            close(fd);
            return false;
        }
        got += (gsize)n;
    }
    close(fd);
    return true;
}

/* read_uri: the first @len bytes of @uri, through qemu-img dd with the
 * format given as raw (never probed) into a temporary file */
static bool
read_uri(const char *uri, guint8 *buf, gsize len, GError **error)
{
    g_autofree char *tmp = NULL;
    g_autofree char *in = g_strdup_printf("if=%s", uri);
    g_autofree char *out = NULL;
    g_autofree char *bs = g_strdup_printf("bs=%zu", len);
    g_autofree char *err_text = NULL;
    int status = 0;
    int fd = g_file_open_tmp("spore-qcow2-XXXXXX", &tmp, error);
    bool ok;

    if (fd < 0)
        return false;
    close(fd);
    g_unlink(tmp); /* qemu-img dd creates it */
    out = g_strdup_printf("of=%s", tmp);
    {
        const char *argv[] = {"qemu-img", "dd",      "-f", "raw", "-O", "raw",
                              bs,         "count=1", in,   out,   NULL};

        ok = g_spawn_sync(NULL, (char **)argv, NULL,
                          G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL,
                          NULL, NULL, NULL, &err_text, &status, error);
    }
    if (ok && !g_spawn_check_wait_status(status, NULL)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "qemu-img dd: %s",
                    err_text ? g_strstrip(err_text) : "failed");
        ok = false;
    }
    ok = ok && read_file(tmp, buf, len, error);
    g_unlink(tmp);
    return ok;
}

bool
qcow2_master_check(const char *backing, Qcow2Header *ret_header, GError **error)
{
    guint8 head[QCOW2_MASTER_HEAD_BYTES];
    Qcow2Header h;
    bool ok;

    ok = strstr(backing, "://") ? read_uri(backing, head, sizeof(head), error)
                                : read_file(backing, head, sizeof(head), error);
    if (!ok || !qcow2_header_parse(head, sizeof(head), &h, error)) {
        g_prefix_error(error, "qcow2 master '%s': ", backing);
        return false;
    }
    if (ret_header)
        *ret_header = h;
    return true;
}
