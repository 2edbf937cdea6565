/*
 * image-index.c: build, encode, parse and query image indexes.
 *
 * Encoding (all integers little-endian; docs/image-index.md):
 *
 *   0   8  magic "SPOREIDX"
 *   8   4  version (1)
 *   12  4  chunk shift: chunk size = 1 << shift, 12..22
 *   16  8  image size in bytes, >= 1
 *   24  8  chunk count N = ceil(image size / chunk size), <= 4 Mi
 *   32  8  number of all-zero chunks
 *   40 24  reserved, zero
 *   64 32N SHA-256 of each chunk (of its own length; the last may be short)
 *   .. ceil(N/8) zero flags, chunk i at byte i/8, bit i%8 (LSB first);
 *            unused bits zero
 *   .. 32  SHA-256 of all the bytes before it
 *
 * Canonical form, enforced by the parser: reserved bytes and unused flag
 * bits are zero, the counts agree, a chunk is flagged zero exactly when its
 * digest is the digest of zeros of its length.  So one image and one chunk
 * size have exactly one index, and the id names the image's content.
 *
 * Building: worker threads claim segments (several chunks) in order from an
 * atomic counter, pread() them and hash each chunk; holes of sparse files
 * are found with SEEK_DATA and not read.  Each chunk's digest and zero flag
 * has its own slot, so workers never share a written byte.
 */
#include "image-index.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "le-bytes.h"
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>

#include "file-util.h"
#include "spore-error.h"

#define BUILD_SEGMENT_BYTES (8u * 1024 * 1024)

struct ImageIndex {
    gint refs; /* atomic */
    guint chunk_shift;
    guint64 image_size;
    guint64 chunk_count;
    guint64 zero_count;
    guint8 *digests;    /* 32 * chunk_count */
    guint8 *zero_flags; /* ceil(chunk_count / 8), as encoded */
    guint8 zero_digest_full[SPORE_SHA256_BYTES];
    guint8 zero_digest_last[SPORE_SHA256_BYTES];
    GBytes *encoding;
    char id[IMAGE_ID_CHARS + 1];
};

static gsize
flags_bytes(guint64 chunk_count)
{
    return (gsize)((chunk_count + 7) / 8);
}

static gsize
encoded_bytes(guint64 chunk_count)
{
    return IMAGE_INDEX_HEADER_BYTES + (gsize)chunk_count * SPORE_SHA256_BYTES +
           flags_bytes(chunk_count) + IMAGE_INDEX_TRAILER_BYTES;
}

gsize
image_index_chunk_len(const ImageIndex *idx, guint64 i)
{
    guint64 chunk_size = (guint64)1 << idx->chunk_shift;
    guint64 start = i << idx->chunk_shift;

    g_return_val_if_fail(i < idx->chunk_count, 0);
    return (gsize)MIN(chunk_size, idx->image_size - start);
}

/* An index with its geometry set and its arrays allocated, zero-filled. */
static ImageIndex *
index_alloc(guint chunk_shift, guint64 image_size)
{
    ImageIndex *idx = g_new0(ImageIndex, 1);
    guint64 chunk_size = (guint64)1 << chunk_shift;

    idx->refs = 1;
    g_autofree guint8 *zeros = NULL;
    gsize last_len;

    idx->chunk_shift = chunk_shift;
    idx->image_size = image_size;
    idx->chunk_count = (image_size + chunk_size - 1) >> chunk_shift;
    idx->digests = g_malloc0((gsize)idx->chunk_count * SPORE_SHA256_BYTES);
    idx->zero_flags = g_malloc0(flags_bytes(idx->chunk_count));

    zeros = g_malloc0((gsize)chunk_size);
    spore_sha256(zeros, (gsize)chunk_size, idx->zero_digest_full);
    last_len = image_index_chunk_len(idx, idx->chunk_count - 1);
    spore_sha256(zeros, last_len, idx->zero_digest_last);
    return idx;
}

static const guint8 *
zero_digest(const ImageIndex *idx, guint64 i)
{
    return i == idx->chunk_count - 1 ? idx->zero_digest_last
                                     : idx->zero_digest_full;
}

/* Build the canonical encoding and the id from the fields. */
static void
index_seal(ImageIndex *idx)
{
    gsize len = encoded_bytes(idx->chunk_count);
    guint8 *buf = g_malloc0(len);
    guint8 *p = buf;
    guint8 digest[SPORE_SHA256_BYTES];
    g_autofree char *hex = NULL;

    memcpy(p, IMAGE_INDEX_MAGIC, 8);
    le_put32(p + 8, IMAGE_INDEX_VERSION);
    le_put32(p + 12, idx->chunk_shift);
    le_put64(p + 16, idx->image_size);
    le_put64(p + 24, idx->chunk_count);
    le_put64(p + 32, idx->zero_count);
    p += IMAGE_INDEX_HEADER_BYTES;
    memcpy(p, idx->digests, (gsize)idx->chunk_count * SPORE_SHA256_BYTES);
    p += (gsize)idx->chunk_count * SPORE_SHA256_BYTES;
    memcpy(p, idx->zero_flags, flags_bytes(idx->chunk_count));
    p += flags_bytes(idx->chunk_count);
    spore_sha256(buf, (gsize)(p - buf), p);

    spore_sha256(buf, len, digest);
    hex = spore_hex(digest, sizeof(digest));
    g_snprintf(idx->id, sizeof(idx->id), "sha256:%s", hex);
    idx->encoding = g_bytes_new_take(buf, len);
}

ImageIndex *
image_index_ref(ImageIndex *idx)
{
    g_atomic_int_inc(&idx->refs);
    return idx;
}

void
image_index_free(ImageIndex *idx)
{
    if (!idx || !g_atomic_int_dec_and_test(&idx->refs))
        return;
    g_free(idx->digests);
    g_free(idx->zero_flags);
    if (idx->encoding)
        g_bytes_unref(idx->encoding);
    g_free(idx);
}

/* ---- building ---------------------------------------------------------- */

typedef struct {
    ImageIndex *idx;
    int fd;
    const char *path;
    guint64 segment_bytes;
    guint64 n_segments;
    guint64 next_segment; /* atomic */
    guint8 *chunk_zero;   /* one byte per chunk */
    GMutex lock;          /* guards error */
    GError *error;
    gint failed; /* atomic */
} Build;

static bool
all_zero(const guint8 *p, gsize len)
{
    /* word at a time; chunk buffers are malloc-aligned, lengths >= 1 */
    gsize i = 0;

    for (; i + sizeof(guint64) <= len; i += sizeof(guint64)) {
        guint64 w;
        memcpy(&w, p + i, sizeof(w));
        if (w)
            return false;
    }
    for (; i < len; i++) {
        if (p[i])
            return false;
    }
    return true;
}

static void
build_fail(Build *b, GError *err)
{
    g_mutex_lock(&b->lock);
    if (!b->error)
        b->error = err;
    else
        g_error_free(err);
    g_mutex_unlock(&b->lock);
    g_atomic_int_set(&b->failed, 1);
}

/* Whether [start, end) of the file is one hole (reads as zeros). */
static bool
segment_is_hole(Build *b, guint64 start, guint64 end)
{
    off_t data = lseek(b->fd, (off_t)start, SEEK_DATA);

    if (data < 0)
        return errno == ENXIO; /* no data from start to EOF */
    return (guint64)data >= end;
}

static gpointer
build_worker(gpointer data)
{
    Build *b = data;
    ImageIndex *idx = b->idx;
    g_autofree guint8 *buf = g_malloc((gsize)b->segment_bytes);

    while (!g_atomic_int_get(&b->failed)) {
        guint64 seg = __atomic_fetch_add(&b->next_segment, 1, __ATOMIC_RELAXED);
        guint64 start, end, first_chunk;
        gsize got = 0;

        if (seg >= b->n_segments)
            break;
        start = seg * b->segment_bytes;
        end = MIN(start + b->segment_bytes, idx->image_size);
        first_chunk = start >> idx->chunk_shift;

        if (segment_is_hole(b, start, end)) {
            for (guint64 c = first_chunk;
                 c < idx->chunk_count && (c << idx->chunk_shift) < end; c++) {
                memcpy(idx->digests + c * SPORE_SHA256_BYTES,
                       zero_digest(idx, c), SPORE_SHA256_BYTES);
                b->chunk_zero[c] = 1;
            }
            continue;
        }

        while (got < end - start) {
            ssize_t n = pread(b->fd, buf + got, (gsize)(end - start) - got,
                              (off_t)(start + got));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                int saved = errno;
                build_fail(
                    b,
                    g_error_new(SPORE_ERROR, SPORE_ERROR_IO,
                                "cannot read '%s' at offset %" G_GUINT64_FORMAT
                                ": %s",
                                b->path, start + got,
                                n == 0 ? "file shrank while being "
                                         "indexed"
                                       : g_strerror(saved)));
                return NULL;
            }
            got += (gsize)n;
        }

        for (guint64 c = first_chunk;
             c < idx->chunk_count && (c << idx->chunk_shift) < end; c++) {
            gsize off = (gsize)((c << idx->chunk_shift) - start);
            gsize len = image_index_chunk_len(idx, c);
            guint8 *out = idx->digests + c * SPORE_SHA256_BYTES;

            if (all_zero(buf + off, len)) {
                memcpy(out, zero_digest(idx, c), SPORE_SHA256_BYTES);
                b->chunk_zero[c] = 1;
            } else {
                spore_sha256(buf + off, len, out);
            }
        }
    }
    return NULL;
}

static bool
image_size_of(int fd, const char *path, guint64 *ret, GError **error)
{
    struct stat st;

    if (fstat(fd, &st) < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot stat '%s': %s",
                    path, g_strerror(saved));
        return false;
    }
    if (S_ISREG(st.st_mode)) {
        *ret = (guint64)st.st_size;
        return true;
    }
    if (S_ISBLK(st.st_mode)) {
        guint64 size = 0;
        if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
            int saved = errno;
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                        "cannot get the size of '%s': %s", path,
                        g_strerror(saved));
            return false;
        }
        *ret = size;
        return true;
    }
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                "'%s' is not a regular file or a block device", path);
    return false;
}

ImageIndex *
image_index_build_file(const char *path, guint chunk_shift, guint n_threads,
                       GError **error)
{
    g_autoptr(ImageIndex) idx = NULL;
    g_autofree guint8 *chunk_zero = NULL;
    g_autoptr(GPtrArray) threads = g_ptr_array_new();
    guint64 size = 0;
    Build b = {0};
    int fd;

    if (chunk_shift < IMAGE_INDEX_CHUNK_SHIFT_MIN ||
        chunk_shift > IMAGE_INDEX_CHUNK_SHIFT_MAX) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "chunk size 2^%u is outside 4 KiB .. 4 MiB", chunk_shift);
        return NULL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot open '%s': %s",
                    path, g_strerror(saved));
        return NULL;
    }
    if (!image_size_of(fd, path, &size, error)) {
        close(fd);
        return NULL;
    }
    if (size == 0 || ((size - 1) >> chunk_shift) + 1 > IMAGE_INDEX_CHUNKS_MAX) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "'%s' is %" G_GUINT64_FORMAT
                    " bytes: an image must hold 1 to %llu chunks of %u bytes",
                    path, size, IMAGE_INDEX_CHUNKS_MAX, 1u << chunk_shift);
        close(fd);
        return NULL;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

    idx = index_alloc(chunk_shift, size);
    chunk_zero = g_malloc0((gsize)idx->chunk_count);
    b.idx = idx;
    b.fd = fd;
    b.path = path;
    b.chunk_zero = chunk_zero;
    b.segment_bytes =
        MAX((guint64)BUILD_SEGMENT_BYTES, (guint64)1 << chunk_shift);
    b.n_segments = (size + b.segment_bytes - 1) / b.segment_bytes;
    g_mutex_init(&b.lock);

    if (n_threads == 0)
        n_threads = g_get_num_processors();
    n_threads = (guint)MIN((guint64)n_threads, b.n_segments);
    for (guint t = 1; t < n_threads; t++)
        g_ptr_array_add(threads, g_thread_new("spore-index", build_worker, &b));
    build_worker(&b);
    for (guint t = 0; t < threads->len; t++)
        g_thread_join(threads->pdata[t]);
    close(fd);
    g_mutex_clear(&b.lock);

    if (b.error) {
        g_propagate_error(error, b.error);
        return NULL;
    }
    for (guint64 c = 0; c < idx->chunk_count; c++) {
        if (chunk_zero[c]) {
            idx->zero_flags[c / 8] |= (guint8)(1u << (c % 8));
            idx->zero_count++;
        }
    }
    index_seal(idx);
    return g_steal_pointer(&idx);
}

/* ---- parsing ----------------------------------------------------------- */

ImageIndex *
image_index_parse(const guint8 *data, gsize len, const char *expected_id,
                  GError **error)
{
    g_autoptr(ImageIndex) idx = NULL;
    guint8 trailer[SPORE_SHA256_BYTES];
    guint32 version, shift;
    guint64 size, count, zeros, counted_zeros = 0;
    const guint8 *digests, *flags;

#define INVALID(...)                                                       \
    do {                                                                   \
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, __VA_ARGS__); \
        return NULL;                                                       \
    } while (0)

    if (len > IMAGE_INDEX_MAX_BYTES) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "index is %" G_GSIZE_FORMAT
                    " bytes, more than the limit of %llu",
                    len, (unsigned long long)IMAGE_INDEX_MAX_BYTES);
        return NULL;
    }
    if (len < IMAGE_INDEX_HEADER_BYTES + IMAGE_INDEX_TRAILER_BYTES)
        INVALID("index is truncated: %" G_GSIZE_FORMAT
                " bytes, shorter than its header",
                len);
    if (memcmp(data, IMAGE_INDEX_MAGIC, 8) != 0)
        INVALID("not a spore image index (bad magic)");
    version = le_get32(data + 8);
    if (version != IMAGE_INDEX_VERSION)
        INVALID("index version %u is not supported (this is version %u)",
                version, IMAGE_INDEX_VERSION);
    shift = le_get32(data + 12);
    if (shift < IMAGE_INDEX_CHUNK_SHIFT_MIN ||
        shift > IMAGE_INDEX_CHUNK_SHIFT_MAX)
        INVALID("index chunk size 2^%u is outside 4 KiB .. 4 MiB", shift);
    size = le_get64(data + 16);
    count = le_get64(data + 24);
    zeros = le_get64(data + 32);
    for (gsize i = 40; i < IMAGE_INDEX_HEADER_BYTES; i++) {
        if (data[i])
            INVALID("index reserved header bytes are not zero");
    }
    if (size == 0)
        INVALID("index describes an empty image");
    if (count != ((size - 1) >> shift) + 1)
        INVALID("index chunk count %" G_GUINT64_FORMAT
                " does not match image size %" G_GUINT64_FORMAT
                " and chunk size %u",
                count, size, 1u << shift);
    if (count > IMAGE_INDEX_CHUNKS_MAX) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "index has %" G_GUINT64_FORMAT
                    " chunks, more than the limit of %llu",
                    count, IMAGE_INDEX_CHUNKS_MAX);
        return NULL;
    }
    if (len != encoded_bytes(count))
        INVALID("index is %" G_GSIZE_FORMAT " bytes; %" G_GUINT64_FORMAT
                " chunks need exactly %" G_GSIZE_FORMAT " (%s)",
                len, count, encoded_bytes(count),
                len < encoded_bytes(count) ? "truncated" : "trailing bytes");
    spore_sha256(data, len - IMAGE_INDEX_TRAILER_BYTES, trailer);
    if (memcmp(trailer, data + len - IMAGE_INDEX_TRAILER_BYTES,
               SPORE_SHA256_BYTES) != 0)
        INVALID("index checksum does not match: the index is corrupt");

    idx = index_alloc(shift, size);
    digests = data + IMAGE_INDEX_HEADER_BYTES;
    flags = digests + (gsize)count * SPORE_SHA256_BYTES;
    memcpy(idx->digests, digests, (gsize)count * SPORE_SHA256_BYTES);
    memcpy(idx->zero_flags, flags, flags_bytes(count));
    if (count % 8 && (flags[count / 8] >> (count % 8)))
        INVALID("index zero flags have bits set past the last chunk");
    for (guint64 c = 0; c < count; c++) {
        bool flagged = image_index_chunk_is_zero(idx, c);
        bool zero_digest_matches =
            memcmp(idx->digests + c * SPORE_SHA256_BYTES, zero_digest(idx, c),
                   SPORE_SHA256_BYTES) == 0;

        if (flagged != zero_digest_matches)
            INVALID("index chunk %" G_GUINT64_FORMAT
                    " is %sflagged all-zero but its digest says %s",
                    c, flagged ? "" : "not ", flagged ? "otherwise" : "it is");
        counted_zeros += flagged;
    }
    if (counted_zeros != zeros)
        INVALID("index header counts %" G_GUINT64_FORMAT
                " zero chunks but %" G_GUINT64_FORMAT " are flagged",
                zeros, counted_zeros);
    idx->zero_count = zeros;
    index_seal(idx);
    if (expected_id && !g_str_equal(expected_id, idx->id))
        INVALID("index id %s does not match the expected %s", idx->id,
                expected_id);
#undef INVALID
    return g_steal_pointer(&idx);
}

ImageIndex *
image_index_load(const char *path, const char *expected_id, GError **error)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    ImageIndex *idx;

    if (!spore_file_read_bounded(path, IMAGE_INDEX_MAX_BYTES, &data, &len,
                                 error))
        return NULL;
    idx = image_index_parse((const guint8 *)data, len, expected_id, error);
    if (!idx)
        g_prefix_error(error, "index '%s': ", path);
    return idx;
}

bool
image_index_write(const ImageIndex *idx, const char *path, GError **error)
{
    gsize len = 0;
    const guint8 *data = g_bytes_get_data(idx->encoding, &len);

    if (g_str_equal(path, "-")) {
        gsize done = 0;
        while (done < len) {
            ssize_t n = write(STDOUT_FILENO, data + done, len - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                int saved = errno;
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                            "cannot write the index to standard output: %s",
                            g_strerror(saved));
                return false;
            }
            done += (gsize)n;
        }
        return true;
    }
    return spore_file_write_atomic(path, data, len, 0644, error);
}

/* ---- queries ----------------------------------------------------------- */

GBytes *
image_index_encoding(const ImageIndex *idx)
{
    return idx->encoding;
}

const char *
image_index_id(const ImageIndex *idx)
{
    return idx->id;
}

guint64
image_index_image_size(const ImageIndex *idx)
{
    return idx->image_size;
}

guint
image_index_chunk_shift(const ImageIndex *idx)
{
    return idx->chunk_shift;
}

guint64
image_index_chunk_size(const ImageIndex *idx)
{
    return (guint64)1 << idx->chunk_shift;
}

guint64
image_index_chunk_count(const ImageIndex *idx)
{
    return idx->chunk_count;
}

guint64
image_index_zero_count(const ImageIndex *idx)
{
    return idx->zero_count;
}

const guint8 *
image_index_chunk_digest(const ImageIndex *idx, guint64 i)
{
    g_return_val_if_fail(i < idx->chunk_count, NULL);
    return idx->digests + i * SPORE_SHA256_BYTES;
}

bool
image_index_chunk_is_zero(const ImageIndex *idx, guint64 i)
{
    g_return_val_if_fail(i < idx->chunk_count, false);
    return (idx->zero_flags[i / 8] >> (i % 8)) & 1;
}

bool
image_index_verify_chunk(const ImageIndex *idx, guint64 i, const void *data,
                         gsize len)
{
    guint8 digest[SPORE_SHA256_BYTES];

    if (i >= idx->chunk_count || len != image_index_chunk_len(idx, i))
        return false;
    spore_sha256(data, len, digest);
    return memcmp(digest, image_index_chunk_digest(idx, i),
                  SPORE_SHA256_BYTES) == 0;
}

bool
image_index_parse_chunk_size(const char *text, guint *ret_shift, GError **error)
{
    guint64 value = 0;
    const char *p = text;
    guint64 unit = 1;

    if (!g_ascii_isdigit(*p))
        goto bad;
    while (g_ascii_isdigit(*p)) {
        value = value * 10 + (guint64)(*p - '0');
        if (value > ((guint64)1 << 40))
            goto bad;
        p++;
    }
    if (g_ascii_strcasecmp(p, "k") == 0 || g_str_equal(p, "KiB"))
        unit = 1024;
    else if (g_ascii_strcasecmp(p, "m") == 0 || g_str_equal(p, "MiB"))
        unit = 1024 * 1024;
    else if (*p)
        goto bad;
    value *= unit;
    for (guint s = IMAGE_INDEX_CHUNK_SHIFT_MIN;
         s <= IMAGE_INDEX_CHUNK_SHIFT_MAX; s++) {
        if (value == (guint64)1 << s) {
            *ret_shift = s;
            return true;
        }
    }
bad:
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                "chunk size '%s' is not a power of two from 4K to 4M "
                "(e.g. 64K, 1M, 65536)",
                text);
    return false;
}

/* ---- streaming build ---------------------------------------------------- */

struct ImageIndexBuilder {
    guint chunk_shift;
    guint8 *chunk; /* the chunk being filled */
    gsize fill;
    guint64 size;
    GByteArray *digests;
    GByteArray *zero; /* one byte per chunk */
    bool too_big;
};

ImageIndexBuilder *
image_index_builder_new(guint chunk_shift)
{
    ImageIndexBuilder *b = g_new0(ImageIndexBuilder, 1);

    g_return_val_if_fail(chunk_shift >= IMAGE_INDEX_CHUNK_SHIFT_MIN &&
                             chunk_shift <= IMAGE_INDEX_CHUNK_SHIFT_MAX,
                         NULL);
    b->chunk_shift = chunk_shift;
    b->chunk = g_malloc((gsize)1 << chunk_shift);
    b->digests = g_byte_array_new();
    b->zero = g_byte_array_new();
    return b;
}

void
image_index_builder_free(ImageIndexBuilder *b)
{
    if (!b)
        return;
    g_free(b->chunk);
    g_byte_array_unref(b->digests);
    g_byte_array_unref(b->zero);
    g_free(b);
}

static void
builder_chunk_done(ImageIndexBuilder *b)
{
    guint8 d[SPORE_SHA256_BYTES];
    guint8 z = all_zero(b->chunk, b->fill) ? 1 : 0;

    if (b->zero->len >= IMAGE_INDEX_CHUNKS_MAX) {
        b->too_big = true;
    } else {
        spore_sha256(b->chunk, b->fill, d);
        g_byte_array_append(b->digests, d, sizeof(d));
        g_byte_array_append(b->zero, &z, 1);
    }
    b->fill = 0;
}

bool
image_index_builder_feed(ImageIndexBuilder *b, const void *data, gsize len)
{
    const guint8 *p = data;
    gsize chunk_size = (gsize)1 << b->chunk_shift;

    while (len > 0 && !b->too_big) {
        gsize n = MIN(len, chunk_size - b->fill);

        memcpy(b->chunk + b->fill, p, n);
        b->fill += n;
        b->size += n;
        p += n;
        len -= n;
        if (b->fill == chunk_size)
            builder_chunk_done(b);
    }
    return !b->too_big;
}

guint64
image_index_builder_size(const ImageIndexBuilder *b)
{
    return b->size;
}

ImageIndex *
image_index_builder_finish(ImageIndexBuilder *b, GError **error)
{
    ImageIndex *idx;

    if (b->fill > 0)
        builder_chunk_done(b);
    if (b->too_big || b->size == 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    b->size ? "the image needs more than %llu chunks"
                            : "the image is empty",
                    (unsigned long long)IMAGE_INDEX_CHUNKS_MAX);
        return NULL;
    }
    idx = index_alloc(b->chunk_shift, b->size);
    g_assert(idx->chunk_count == b->zero->len);
    memcpy(idx->digests, b->digests->data, b->digests->len);
    for (guint64 i = 0; i < idx->chunk_count; i++) {
        if (b->zero->data[i]) {
            idx->zero_flags[i / 8] |= (guint8)(1u << (i % 8));
            idx->zero_count++;
        }
    }
    index_seal(idx);
    return idx;
}
