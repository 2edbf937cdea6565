/*
 * chunk-cache.c: per-image chunk cache with crash-safe presence bits.
 *
 * Durability protocol (the invariant of chunk-cache.h):
 *   1. verify the chunk against the index (nothing unverified is written);
 *   2. pwrite it into the sparse data file;
 *   3. group commit: one fdatasync of the data file covers every chunk
 *      written since the last one;
 *   4. only then set the chunks' bits, in memory and in the bitmap file.
 * A crash between 2 and 4 leaves written data without its bit: the chunk is
 * fetched again.  The bitmap file itself need not be synced for safety
 * (a lost bit costs a refetch); it is synced on close.
 *
 * Group commit: storers append their chunk to the open batch; the first one
 * to find no commit running becomes the committer for everything pending,
 * the others wait on the condition until their batch is done.  One commit
 * runs at a time, so bitmap bytes are written by one thread at a time.
 *
 * Threads: the bitmap bytes are read and written with atomics (readers need
 * no lock); the mutex guards the batch state.
 */
#include "chunk-cache.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "file-util.h"
#include "spore-error.h"

typedef struct {
    gint refs;
    bool done;
    bool ok;
    int saved_errno;
} Batch;

struct ChunkCache {
    ImageIndex *idx;
    char *dir;
    char *hex; /* the image id without "sha256:", for messages */
    int data_fd;
    int present_fd;
    guint8 *bits; /* atomic byte access */
    gsize bits_len;
    guint64 stored; /* atomic */

    GMutex lock;
    GCond committed;
    bool committing;
    Batch *open_batch;
    GArray *pending; /* of guint64 */
};

static Batch *
batch_new(void)
{
    Batch *b = g_new0(Batch, 1);

    b->refs = 1;
    return b;
}

static void
batch_unref(Batch *b)
{
    if (--b->refs == 0)
        g_free(b);
}

static bool
bit_get(ChunkCache *c, guint64 i)
{
    return (__atomic_load_n(&c->bits[i / 8], __ATOMIC_ACQUIRE) >> (i % 8)) & 1;
}

static void
bit_set(ChunkCache *c, guint64 i, bool on)
{
    guint8 mask = (guint8)(1u << (i % 8));

    if (on)
        __atomic_fetch_or(&c->bits[i / 8], mask, __ATOMIC_RELEASE);
    else
        __atomic_fetch_and(&c->bits[i / 8], (guint8)~mask, __ATOMIC_RELEASE);
}

/* Write bitmap byte @byte to the bitmap file. */
static bool
bits_flush_byte(ChunkCache *c, gsize byte)
{
    guint8 v = __atomic_load_n(&c->bits[byte], __ATOMIC_ACQUIRE);

    for (;;) {
        ssize_t n = pwrite(c->present_fd, &v, 1, (off_t)byte);
        if (n == 1)
            return true;
        if (n < 0 && errno == EINTR)
            continue;
        return false;
    }
}

static bool
pwrite_all(int fd, const guint8 *data, gsize len, off_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, data, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return false;
        }
        data += n;
        len -= (gsize)n;
        off += n;
    }
    return true;
}

static bool
pread_all(int fd, guint8 *data, gsize len, off_t off)
{
    while (len > 0) {
        ssize_t n = pread(fd, data, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO; /* the data file is never shorter */
            return false;
        }
        data += n;
        len -= (gsize)n;
        off += n;
    }
    return true;
}

/* ---- open / close ------------------------------------------------------ */

static int
open_sized(const char *path, guint64 size, bool preallocate, GError **error)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    struct stat st;
    int saved;

    if (fd < 0) {
        saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot open '%s': %s",
                    path, g_strerror(saved));
        return -1;
    }
    if (fstat(fd, &st) < 0)
        goto io_error;
    if (st.st_size == 0) {
        if (preallocate) {
            saved = posix_fallocate(fd, 0, (off_t)size);
            if (saved != 0) {
                errno = saved;
                goto io_error;
            }
        } else if (ftruncate(fd, (off_t)size) < 0) {
            goto io_error;
        }
    } else if ((guint64)st.st_size != size) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "'%s' is %lld bytes; the image needs %" G_GUINT64_FORMAT,
                    path, (long long)st.st_size, size);
        close(fd);
        return -1;
    }
    return fd;

io_error:
    saved = errno;
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot size '%s': %s",
                path, g_strerror(saved));
    close(fd);
    return -1;
}

ChunkCache *
chunk_cache_open(const char *root, ImageIndex *idx, GError **error)
{
    g_autoptr(ChunkCache) c = g_new0(ChunkCache, 1);
    g_autofree char *index_path = NULL;
    g_autofree char *data_path = NULL;
    g_autofree char *present_path = NULL;
    guint64 count = image_index_chunk_count(idx);

    c->data_fd = c->present_fd = -1;
    c->idx = image_index_ref(idx);
    c->hex = g_strdup(image_index_id(idx) + strlen("sha256:"));
    c->dir = g_build_filename(root, c->hex, NULL);
    g_mutex_init(&c->lock);
    g_cond_init(&c->committed);
    c->open_batch = batch_new();
    c->pending = g_array_new(FALSE, FALSE, sizeof(guint64));

    if (g_mkdir_with_parents(c->dir, 0750) < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create cache directory '%s': %s", c->dir,
                    g_strerror(saved));
        return NULL;
    }

    index_path = g_build_filename(c->dir, CHUNK_CACHE_INDEX_FILE, NULL);
    if (g_file_test(index_path, G_FILE_TEST_EXISTS)) {
        g_autoptr(ImageIndex) on_disk =
            image_index_load(index_path, image_index_id(idx), error);
        if (!on_disk)
            return NULL;
    } else if (!image_index_write(idx, index_path, error)) {
        return NULL;
    }

    data_path = g_build_filename(c->dir, CHUNK_CACHE_DATA_FILE, NULL);
    c->data_fd =
        open_sized(data_path, image_index_image_size(idx), false, error);
    if (c->data_fd < 0)
        return NULL;

    c->bits_len = (gsize)((count + 7) / 8);
    present_path = g_build_filename(c->dir, CHUNK_CACHE_PRESENT_FILE, NULL);
    c->present_fd = open_sized(present_path, c->bits_len, true, error);
    if (c->present_fd < 0)
        return NULL;
    c->bits = g_malloc0(c->bits_len);
    if (!pread_all(c->present_fd, c->bits, c->bits_len, 0)) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot read '%s': %s",
                    present_path, g_strerror(saved));
        return NULL;
    }
    /* bits past the last chunk, or on zero chunks, mean nothing: drop them */
    for (guint64 i = 0; i < (guint64)c->bits_len * 8; i++) {
        if (!bit_get(c, i))
            continue;
        if (i >= count || image_index_chunk_is_zero(idx, i))
            bit_set(c, i, false);
        else
            c->stored++;
    }
    return g_steal_pointer(&c);
}

void
chunk_cache_close(ChunkCache *c)
{
    if (!c)
        return;
    if (c->present_fd >= 0) {
        fsync(c->present_fd);
        close(c->present_fd);
    }
    if (c->data_fd >= 0)
        close(c->data_fd);
    if (c->open_batch)
        batch_unref(c->open_batch);
    if (c->pending)
        g_array_unref(c->pending);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->committed);
    image_index_free(c->idx);
    g_free(c->bits);
    g_free(c->dir);
    g_free(c->hex);
    g_free(c);
}

ImageIndex *
chunk_cache_index(const ChunkCache *c)
{
    return c->idx;
}

const char *
chunk_cache_dir(const ChunkCache *c)
{
    return c->dir;
}

bool
chunk_cache_has(ChunkCache *c, guint64 i)
{
    if (i >= image_index_chunk_count(c->idx))
        return false;
    return image_index_chunk_is_zero(c->idx, i) || bit_get(c, i);
}

guint64
chunk_cache_stored_count(ChunkCache *c)
{
    return __atomic_load_n(&c->stored, __ATOMIC_RELAXED);
}

void
chunk_cache_present_copy(ChunkCache *c, guint8 *out)
{
    for (gsize b = 0; b < c->bits_len; b++)
        out[b] = __atomic_load_n(&c->bits[b], __ATOMIC_ACQUIRE);
}

/* ---- store ------------------------------------------------------------- */

/* Commit everything pending.  Called with the lock held; returns with it. */
static void
commit_pending(ChunkCache *c)
{
    Batch *batch = c->open_batch;
    GArray *chunks = c->pending;
    int saved = 0;
    bool ok;

    c->committing = true;
    c->open_batch = batch_new();
    c->pending = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_mutex_unlock(&c->lock);

    ok = fdatasync(c->data_fd) == 0;
    if (!ok)
        saved = errno;
    for (guint k = 0; ok && k < chunks->len; k++) {
        guint64 i = g_array_index(chunks, guint64, k);

        if (bit_get(c, i))
            continue;
        bit_set(c, i, true);
        if (!bits_flush_byte(c, (gsize)(i / 8))) {
            saved = errno;
            ok = false;
            /* roll this batch back: none of it counts as present */
            for (guint j = 0; j <= k; j++) {
                guint64 u = g_array_index(chunks, guint64, j);
                bit_set(c, u, false);
            }
            break;
        }
        __atomic_fetch_add(&c->stored, 1, __ATOMIC_RELAXED);
    }
    if (!ok) {
        /* undo the counts of chunks set before the failure */
        guint64 counted = 0;
        for (guint64 b = 0; b < (guint64)c->bits_len * 8; b++)
            counted += bit_get(c, b);
        __atomic_store_n(&c->stored, counted, __ATOMIC_RELAXED);
    }
    g_array_unref(chunks);

    g_mutex_lock(&c->lock);
    batch->done = true;
    batch->ok = ok;
    batch->saved_errno = saved;
    batch_unref(batch);
    c->committing = false;
    g_cond_broadcast(&c->committed);
}

bool
chunk_cache_store(ChunkCache *c, guint64 i, const void *data, gsize len,
                  GError **error)
{
    guint64 count = image_index_chunk_count(c->idx);
    Batch *batch;
    bool ok;
    int saved;

    if (i >= count) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "chunk %" G_GUINT64_FORMAT
                    " is past the end of image %.12s (%" G_GUINT64_FORMAT
                    " chunks)",
                    i, c->hex, count);
        return false;
    }
    if (chunk_cache_has(c, i))
        return true;
    if (!image_index_verify_chunk(c->idx, i, data, len)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "chunk %" G_GUINT64_FORMAT
                    " of image %.12s does not match its digest; not stored",
                    i, c->hex);
        return false;
    }
    if (!pwrite_all(c->data_fd, data, len,
                    (off_t)(i << image_index_chunk_shift(c->idx)))) {
        saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot store chunk %" G_GUINT64_FORMAT
                    " of image %.12s in '%s': %s",
                    i, c->hex, c->dir, g_strerror(saved));
        return false;
    }

    g_mutex_lock(&c->lock);
    batch = c->open_batch;
    batch->refs++;
    g_array_append_val(c->pending, i);
    while (!batch->done) {
        if (!c->committing)
            commit_pending(c);
        else
            g_cond_wait(&c->committed, &c->lock);
    }
    ok = batch->ok;
    saved = batch->saved_errno;
    batch_unref(batch);
    g_mutex_unlock(&c->lock);

    if (!ok) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot make chunk %" G_GUINT64_FORMAT
                    " of image %.12s durable in '%s': %s",
                    i, c->hex, c->dir, g_strerror(saved));
        return false;
    }
    return true;
}

/* ---- read / verify ----------------------------------------------------- */

bool
chunk_cache_read(ChunkCache *c, guint64 i, void *buf, bool verify,
                 GError **error)
{
    gsize len;

    if (!chunk_cache_has(c, i)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "chunk %" G_GUINT64_FORMAT " of image %.12s is not cached",
                    i, c->hex);
        return false;
    }
    len = image_index_chunk_len(c->idx, i);
    if (image_index_chunk_is_zero(c->idx, i)) {
        memset(buf, 0, len);
        return true;
    }
    if (!pread_all(c->data_fd, buf, len,
                   (off_t)(i << image_index_chunk_shift(c->idx)))) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot read chunk %" G_GUINT64_FORMAT
                    " of image %.12s: %s",
                    i, c->hex, g_strerror(saved));
        return false;
    }
    if (verify && !image_index_verify_chunk(c->idx, i, buf, len)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "cached chunk %" G_GUINT64_FORMAT
                    " of image %.12s does not verify",
                    i, c->hex);
        return false;
    }
    return true;
}

bool
chunk_cache_verify_all(ChunkCache *c, guint64 *ret_bad, GError **error)
{
    guint64 count = image_index_chunk_count(c->idx);
    g_autofree guint8 *buf = g_malloc((gsize)image_index_chunk_size(c->idx));
    guint64 bad = 0;

    for (guint64 i = 0; i < count; i++) {
        g_autoptr(GError) err = NULL;

        if (!bit_get(c, i))
            continue;
        if (chunk_cache_read(c, i, buf, true, &err))
            continue;
        if (err->code == SPORE_ERROR_IO) {
            g_propagate_error(error, g_steal_pointer(&err));
            return false;
        }
        bad++;
        g_mutex_lock(&c->lock);
        bit_set(c, i, false);
        __atomic_fetch_sub(&c->stored, 1, __ATOMIC_RELAXED);
        bits_flush_byte(c, (gsize)(i / 8));
        g_mutex_unlock(&c->lock);
    }
    if (ret_bad)
        *ret_bad = bad;
    return true;
}
