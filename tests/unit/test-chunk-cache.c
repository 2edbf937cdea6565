/*
 * test-chunk-cache.c: the verified chunk cache: storing, reading, refusing
 * bad data, surviving kill -9 of the writer, and a full disk.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "chunk-cache.h"
#include "spore-error.h"
#include "test-util.h"

#define KIB 1024u

typedef struct {
    char *image_path;
    char *root;
    guint8 *image;
    gsize image_len;
    ImageIndex *idx;
} Fixture;

static Fixture fx;

/* An image of @size bytes, its index at 64 KiB, an empty cache root. */
static void
setup_image(gsize size)
{
    g_autoptr(GError) err = NULL;

    fx.image_path = test_make_image(size, false, 42);
    cr_assert(g_file_get_contents(fx.image_path, (char **)&fx.image,
                                  &fx.image_len, NULL));
    fx.idx = image_index_build_file(fx.image_path, 16, 2, &err);
    cr_assert(fx.idx, "%s", err ? err->message : "");
    fx.root = g_dir_make_tmp("spore-cache-XXXXXX", NULL);
    cr_assert(fx.root);
}

static void
setup(void)
{
    setup_image(1024 * KIB + 5000);
}

static void
teardown(void)
{
    if (fx.root) {
        umount2(fx.root, MNT_DETACH); /* only mounted by the disk-full test */
        test_rm_rf(fx.root);
    }
    if (fx.image_path)
        g_unlink(fx.image_path);
    image_index_free(fx.idx);
    g_free(fx.image);
    g_free(fx.image_path);
    g_free(fx.root);
    memset(&fx, 0, sizeof(fx));
}

static const guint8 *
chunk_data(guint64 i)
{
    return fx.image + (i << 16);
}

static ChunkCache *
open_cache(void)
{
    g_autoptr(GError) err = NULL;
    ChunkCache *c = chunk_cache_open(fx.root, fx.idx, &err);

    cr_assert(c, "%s", err ? err->message : "");
    return c;
}

TestSuite(chunk_cache, .init = setup, .fini = teardown);

Test(chunk_cache, stores_verified_chunks_and_reads_them_back)
{
    g_autoptr(ChunkCache) c = open_cache();
    guint64 count = image_index_chunk_count(fx.idx);
    g_autofree guint8 *buf = g_malloc(64 * KIB);
    guint64 stored = 0;

    cr_assert_eq(count, 17u);
    for (guint64 i = 0; i < count; i++) {
        bool zero = image_index_chunk_is_zero(fx.idx, i);
        cr_expect_eq(chunk_cache_has(c, i), zero,
                     "an empty cache has only the zero chunks");
    }
    for (guint64 i = 0; i < count; i += 2) {
        g_autoptr(GError) err = NULL;
        gsize len = image_index_chunk_len(fx.idx, i);

        cr_assert(chunk_cache_store(c, i, chunk_data(i), len, &err), "%s",
                  err ? err->message : "");
        stored += !image_index_chunk_is_zero(fx.idx, i);
    }
    cr_expect_eq(chunk_cache_stored_count(c), stored);
    for (guint64 i = 0; i < count; i++) {
        bool expect = i % 2 == 0 || image_index_chunk_is_zero(fx.idx, i);
        gsize len = image_index_chunk_len(fx.idx, i);

        cr_expect_eq(chunk_cache_has(c, i), expect, "chunk %lu", (gulong)i);
        if (expect) {
            cr_assert(chunk_cache_read(c, i, buf, true, NULL));
            cr_expect_arr_eq(buf, chunk_data(i), len);
        } else {
            cr_expect_not(chunk_cache_read(c, i, buf, false, NULL));
        }
    }
}

Test(chunk_cache, keeps_its_chunks_across_a_reopen)
{
    guint64 stored;
    {
        g_autoptr(ChunkCache) c = open_cache();
        for (guint64 i = 0; i < 6; i++)
            cr_assert(chunk_cache_store(
                c, i, chunk_data(i), image_index_chunk_len(fx.idx, i), NULL));
        stored = chunk_cache_stored_count(c);
    }
    {
        g_autoptr(ChunkCache) c = open_cache();
        guint64 bad = 99;

        cr_expect_eq(chunk_cache_stored_count(c), stored);
        for (guint64 i = 0; i < 6; i++)
            cr_expect(chunk_cache_has(c, i));
        cr_expect_not(chunk_cache_has(c, 6));
        cr_assert(chunk_cache_verify_all(c, &bad, NULL));
        cr_expect_eq(bad, 0u);
    }
}

Test(chunk_cache, never_stores_a_chunk_that_does_not_verify)
{
    g_autoptr(ChunkCache) c = open_cache();
    g_autofree guint8 *bad = g_memdup2(chunk_data(0), 64 * KIB);
    g_autoptr(GError) err = NULL;
    g_autofree char *data_path =
        g_build_filename(chunk_cache_dir(c), CHUNK_CACHE_DATA_FILE, NULL);
    g_autofree char *on_disk = NULL;
    gsize on_disk_len = 0;

    bad[100] ^= 0x40;
    cr_expect_not(chunk_cache_store(c, 0, bad, 64 * KIB, &err));
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
    cr_expect(strstr(err->message, "chunk 0 of image"), "%s", err->message);
    cr_expect_not(chunk_cache_has(c, 0));
    cr_expect_eq(chunk_cache_stored_count(c), 0u);
    /* not a byte of it reached the data file */
    cr_assert(g_file_get_contents(data_path, &on_disk, &on_disk_len, NULL));
    for (gsize i = 0; i < 64 * KIB; i++)
        cr_assert_eq(on_disk[i], 0, "byte %zu written", i);

    g_clear_error(&err);
    cr_expect_not(chunk_cache_store(c, 2, chunk_data(0), 64 * KIB, &err),
                  "chunk 0's data is not chunk 2");
    g_clear_error(&err);
    cr_expect_not(chunk_cache_store(c, 0, chunk_data(0), 100, &err),
                  "a short chunk does not verify");
    g_clear_error(&err);
    cr_expect_not(chunk_cache_store(c, 17, chunk_data(0), 64 * KIB, &err));
    cr_expect(err && strstr(err->message, "past the end"));
}

Test(chunk_cache, verify_all_finds_and_drops_a_corrupted_chunk)
{
    g_autoptr(ChunkCache) c = open_cache();
    g_autofree char *data_path = NULL;
    guint64 bad = 0;
    int fd;

    for (guint64 i = 0; i < 4; i++)
        cr_assert(chunk_cache_store(c, i, chunk_data(i),
                                    image_index_chunk_len(fx.idx, i), NULL));
    data_path =
        g_build_filename(chunk_cache_dir(c), CHUNK_CACHE_DATA_FILE, NULL);
    fd = open(data_path, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, "X", 1, 3 * 64 * KIB + 17), 1);
    close(fd);

    cr_assert(chunk_cache_verify_all(c, &bad, NULL));
    cr_expect_eq(bad, 1u);
    cr_expect_not(chunk_cache_has(c, 3));
    cr_expect(chunk_cache_has(c, 2));
}

Test(chunk_cache, refuses_a_directory_whose_files_do_not_fit_the_index)
{
    g_autofree char *dir = NULL;
    g_autofree char *data_path = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(ChunkCache) again = NULL;

    {
        g_autoptr(ChunkCache) c = open_cache();
        dir = g_strdup(chunk_cache_dir(c));
    }
    data_path = g_build_filename(dir, CHUNK_CACHE_DATA_FILE, NULL);
    cr_assert_eq(truncate(data_path, 4096), 0);
    again = chunk_cache_open(fx.root, fx.idx, &err);
    cr_expect_null(again);
    cr_expect(err && strstr(err->message, "the image needs"), "%s",
              err ? err->message : "");
}

typedef struct {
    ChunkCache *cache;
    guint first;
    guint step;
    gint failures; /* atomic */
} StoreJob;

/* Store every step-th chunk; no assertion here, this may run in a child. */
static gpointer
store_every(gpointer data)
{
    StoreJob *job = data;
    guint64 count = image_index_chunk_count(fx.idx);

    for (guint64 i = job->first; i < count; i += job->step) {
        if (!chunk_cache_store(job->cache, i, chunk_data(i),
                               image_index_chunk_len(fx.idx, i), NULL))
            g_atomic_int_inc(&job->failures);
    }
    return NULL;
}

Test(chunk_cache, stores_from_many_threads_at_once)
{
    g_autoptr(ChunkCache) c = open_cache();
    StoreJob jobs[4];
    GThread *threads[4];
    guint64 bad = 1;
    guint64 nonzero =
        image_index_chunk_count(fx.idx) - image_index_zero_count(fx.idx);

    for (guint t = 0; t < 4; t++) {
        jobs[t] = (StoreJob){c, t, 4, 0};
        threads[t] = g_thread_new("store", store_every, &jobs[t]);
    }
    for (guint t = 0; t < 4; t++) {
        g_thread_join(threads[t]);
        cr_expect_eq(jobs[t].failures, 0);
    }
    cr_expect_eq(chunk_cache_stored_count(c), nonzero);
    cr_assert(chunk_cache_verify_all(c, &bad, NULL));
    cr_expect_eq(bad, 0u);
}

/*
 * kill -9 of a process storing chunks from 3 threads, at a different moment
 * each round: every chunk the reopened cache claims must verify.
 */
static void
setup_big(void)
{
    setup_image(16 * 1024 * KIB); /* 256 chunks */
}

Test(chunk_cache_crash, survives_kill_9_of_the_writer_at_any_moment,
     .init = setup_big, .fini = teardown)
{
    g_autoptr(GRand) rand = g_rand_new_with_seed(7);
    guint64 claimed_total = 0;
    guint killed_mid_way = 0;
    for (guint round = 0; round < 12; round++) {
        pid_t pid = fork();
        int status;

        cr_assert_geq(pid, 0);
        if (pid == 0) {
            ChunkCache *c = chunk_cache_open(fx.root, fx.idx, NULL);
            StoreJob jobs[3];
            GThread *threads[3];

            if (!c)
                _exit(3);
            for (guint t = 0; t < 3; t++) {
                jobs[t] = (StoreJob){c, (round + t) % 3, 3, 0};
                threads[t] = g_thread_new("store", store_every, &jobs[t]);
            }
            for (guint t = 0; t < 3; t++)
                g_thread_join(threads[t]);
            _exit(0);
        }
        g_usleep(g_rand_int_range(rand, 1000, 40000));
        kill(pid, SIGKILL);
        cr_assert_eq(waitpid(pid, &status, 0), pid);

        {
            g_autoptr(ChunkCache) c = open_cache();
            guint64 bad = 99;

            cr_assert(chunk_cache_verify_all(c, &bad, NULL));
            cr_expect_eq(bad, 0u, "round %u: %lu claimed chunks are bad", round,
                         (gulong)bad);
            claimed_total += chunk_cache_stored_count(c);
            if (chunk_cache_stored_count(c) <
                image_index_chunk_count(fx.idx) -
                    image_index_zero_count(fx.idx))
                killed_mid_way++;
            if (round % 4 == 3) {
                /* start over now and then, so that kills land early too */
                g_autofree char *dir = g_strdup(chunk_cache_dir(c));
                chunk_cache_close(g_steal_pointer(&c));
                test_rm_rf(dir);
            }
        }
    }
    cr_expect_gt(claimed_total, 0u, "the writer never got anything stored");
    cr_expect_gt(killed_mid_way, 0u,
                 "no kill landed while chunks were "
                 "being stored");
}

/* A full disk: a clear error, the chunk stays missing, the cache stays
 * consistent.  Needs root to mount a small tmpfs. */
Test(chunk_cache, reports_a_full_disk_and_stays_consistent)
{
    g_autoptr(GError) err = NULL;
    guint64 ok_count = 0, failed_at = G_MAXUINT64;
    guint64 count = image_index_chunk_count(fx.idx);

    if (geteuid() != 0)
        cr_skip_test("needs root to mount a 256 KiB tmpfs");
    if (mount("tmpfs", fx.root, "tmpfs", MS_NOSUID | MS_NODEV,
              "size=256k,mode=0700") != 0)
        cr_skip_test("cannot mount a tmpfs: %s", g_strerror(errno));

    {
        g_autoptr(ChunkCache) c = open_cache();

        for (guint64 i = 0; i < count; i++) {
            if (image_index_chunk_is_zero(fx.idx, i))
                continue;
            if (chunk_cache_store(c, i, chunk_data(i),
                                  image_index_chunk_len(fx.idx, i), &err)) {
                ok_count++;
                continue;
            }
            failed_at = i;
            break;
        }
        cr_assert_neq(failed_at, G_MAXUINT64, "256 KiB held a whole 1 MiB");
        cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_IO));
        cr_expect(strstr(err->message, "No space left on device"), "%s",
                  err->message);
        cr_expect(strstr(err->message, "chunk "), "%s", err->message);
        cr_expect_not(chunk_cache_has(c, failed_at));
        cr_expect_eq(chunk_cache_stored_count(c), ok_count);
    }
    {
        g_autoptr(ChunkCache) c = open_cache();
        guint64 bad = 99;

        cr_expect_eq(chunk_cache_stored_count(c), ok_count);
        cr_expect_not(chunk_cache_has(c, failed_at));
        cr_assert(chunk_cache_verify_all(c, &bad, NULL));
        cr_expect_eq(bad, 0u);
    }
}
