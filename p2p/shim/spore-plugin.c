/*
 * spore-plugin.c: nbdkit-spore-plugin, the block-fetch shim.
 *
 * Serves one image, read-only, from its chunk cache (see chunk-cache.h):
 *
 *   nbdkit --unix SOCK spore cache=CACHE_DIR agent=FETCH_SOCK [timeout=S]
 *
 * A read of present chunks goes straight to the cache's data file.  The
 * missing chunks of a read are asked of the host agent together, with
 * demand priority (fetch-client.h: pipelined over a few connections), and
 * the read blocks until the agent answers that each is verified and
 * present, then reads them from the data file; if that takes longer than
 * `timeout` seconds (default 60) or fails, the read fails with EIO and an
 * nbdkit error naming the chunk and why.  An agent that is restarted (or
 * not yet there) within the timeout only delays the read: the client
 * connects again with backoff and asks again.  All-zero chunks are never
 * fetched: they read as zeros and `extents` reports them as holes.
 *
 * Presence comes from the cache's bitmap file, mapped read-only and shared:
 * the agent sets a bit (with pwrite) only after the chunk's data is durable,
 * so a bit seen here means the data file holds the verified chunk.
 *
 * Access profile: the first read of each chunk (present or not) is appended
 * to CACHE_DIR/profiles/shim-<start>-<pid>.prof as (chunk, microseconds since
 * the shim started), two little-endian u64 per record.  The agent merges
 * these per image to prefetch the next boot.
 *
 * Threads: NBDKIT_THREAD_MODEL_PARALLEL.  Each nbdkit thread has its own
 * FetchClient (thread-local, made on the thread's first miss), so requests
 * never interleave on a socket.  No threads of our own (FetchClient starts
 * none); the files are opened in config_complete and survive nbdkit's fork,
 * sockets to the agent are only opened by nbdkit's worker threads.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "chunk-cache.h"
#include "fetch-client.h"
#include "fetch-protocol.h"
#include "image-index.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
/* SHIM_TIMEOUT_DEFAULT_S, SHIM_TIMEOUT_MAX_S: fetch-protocol.h */

static char *cache_dir;
static char *agent_path;
static char *log_path;
static int log_fd = -1;
static unsigned timeout_s = SHIM_TIMEOUT_DEFAULT_S;

static ImageIndex *idx;
static char short_id[13]; /* for messages */
static int data_fd = -1;
static const uint8_t *present_map; /* read-only, shared with the agent */
static size_t present_len;
static uint8_t *seen; /* first-access bits, atomic */
static int profile_fd = -1;
static int64_t start_us;

static uint8_t image_digest[SPORE_SHA256_BYTES];
static pthread_key_t client_key; /* FetchClient *, per nbdkit thread */

static int64_t
now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
client_free(void *p)
{
    fetch_client_free(p);
}

static void
spore_load(void)
{
    pthread_key_create(&client_key, client_free);
}

static void
spore_unload(void)
{
    image_index_free(idx);
    if (present_map)
        munmap((void *)present_map, present_len);
    if (data_fd >= 0)
        close(data_fd);
    if (profile_fd >= 0)
        close(profile_fd);
    free(seen);
    if (log_fd >= 0)
        close(log_fd);
    free(cache_dir);
    free(agent_path);
    free(log_path);
}

/*
 * An error for the operator: to nbdkit's log (which is /dev/null once
 * nbdkit runs in the background) and, with log=PATH, to that file.
 */
static void shim_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void
shim_error(const char *fmt, ...)
{
    char msg[1024], line[1100], stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    va_list ap;
    int n;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    nbdkit_error("%s", msg);
    if (log_fd < 0)
        return;
    localtime_r(&t, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
    n = snprintf(line, sizeof(line), "%s nbdkit-spore[%d]: %s\n", stamp,
                 (int)getpid(), msg);
    if (write(log_fd, line, (size_t)MIN(n, (int)sizeof(line) - 1)) < 0)
        nbdkit_debug("cannot write the log: %m");
}

static int
spore_config(const char *key, const char *value)
{
    if (strcmp(key, "cache") == 0) {
        free(cache_dir);
        cache_dir = nbdkit_realpath(value);
        return cache_dir ? 0 : -1;
    }
    if (strcmp(key, "agent") == 0) {
        free(agent_path);
        agent_path = strdup(value);
        return agent_path ? 0 : -1;
    }
    if (strcmp(key, "log") == 0) {
        free(log_path);
        log_path = strdup(value);
        return log_path ? 0 : -1;
    }
    if (strcmp(key, "timeout") == 0) {
        if (nbdkit_parse_unsigned("timeout", value, &timeout_s) == -1)
            return -1;
        if (timeout_s == 0 || timeout_s > SHIM_TIMEOUT_MAX_S) {
            nbdkit_error("timeout must be 1 to %u seconds", SHIM_TIMEOUT_MAX_S);
            return -1;
        }
        return 0;
    }
    nbdkit_error("unknown parameter '%s'", key);
    return -1;
}

static int
spore_config_complete(void)
{
    char path[4096];
    GError *err = NULL;
    struct stat st;
    int fd;
    const char *base;

    if (log_path) {
        log_fd =
            open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (log_fd < 0) {
            nbdkit_error("cannot open the log '%s': %m", log_path);
            return -1;
        }
    }
    if (!cache_dir || !agent_path) {
        nbdkit_error("cache=DIR and agent=SOCKET are required");
        return -1;
    }
    if (strlen(agent_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        nbdkit_error("agent socket path '%s' is too long", agent_path);
        return -1;
    }

    /* the directory is named by the image id: the index must match it */
    base = strrchr(cache_dir, '/');
    base = base ? base + 1 : cache_dir;
    snprintf(path, sizeof(path), "%s/%s", cache_dir, CHUNK_CACHE_INDEX_FILE);
    {
        char expected[IMAGE_ID_CHARS + 1];
        snprintf(expected, sizeof(expected), "sha256:%s", base);
        idx = image_index_load(path, expected, &err);
    }
    if (!idx) {
        nbdkit_error("%s", err->message);
        g_error_free(err);
        return -1;
    }
    snprintf(short_id, sizeof(short_id), "%s", base);
    if (!spore_unhex(image_index_id(idx) + 7, image_digest,
                     SPORE_SHA256_BYTES)) {
        nbdkit_error("bad image id '%s'", image_index_id(idx));
        return -1;
    }

    snprintf(path, sizeof(path), "%s/%s", cache_dir, CHUNK_CACHE_DATA_FILE);
    data_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (data_fd < 0) {
        nbdkit_error("cannot open '%s': %m", path);
        return -1;
    }

    snprintf(path, sizeof(path), "%s/%s", cache_dir, CHUNK_CACHE_PRESENT_FILE);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        nbdkit_error("cannot open '%s': %m", path);
        return -1;
    }
    present_len = (size_t)((image_index_chunk_count(idx) + 7) / 8);
    if (fstat(fd, &st) < 0 || (size_t)st.st_size != present_len) {
        nbdkit_error("'%s' does not fit the image's %" PRIu64 " chunks", path,
                     image_index_chunk_count(idx));
        close(fd);
        return -1;
    }
    present_map = mmap(NULL, present_len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (present_map == MAP_FAILED) {
        present_map = NULL;
        nbdkit_error("cannot map '%s': %m", path);
        return -1;
    }

    seen = calloc(1, present_len);
    if (!seen) {
        nbdkit_error("calloc: %m");
        return -1;
    }
    start_us = now_us();
    snprintf(path, sizeof(path), "%s/profiles", cache_dir);
    if (mkdir(path, 0750) < 0 && errno != EEXIST) {
        nbdkit_error("cannot create '%s': %m", path);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/profiles/shim-%lld-%d.prof", cache_dir,
             (long long)time(NULL), (int)getpid());
    profile_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (profile_fd < 0) {
        nbdkit_error("cannot create the access profile '%s': %m", path);
        return -1;
    }
    return 0;
}

#define spore_config_help                                                 \
    "cache=<DIR>      (required) the image's chunk cache directory\n"     \
    "agent=<SOCKET>   (required) the host agent's fetch socket\n"         \
    "timeout=<S>      seconds to wait for a missing chunk (default 60)\n" \
    "log=<FILE>       also append errors to FILE"

static void *
spore_open(int readonly)
{
    static int handle;

    return &handle;
}

static int64_t
spore_get_size(void *handle)
{
    return (int64_t)image_index_image_size(idx);
}

static int
spore_can_write(void *handle)
{
    return 0;
}

static int
spore_can_multi_conn(void *handle)
{
    return 1; /* read-only: every connection sees the same bytes */
}

static int
spore_can_extents(void *handle)
{
    return 1;
}

static bool
is_present(uint64_t c)
{
    return image_index_chunk_is_zero(idx, c) ||
           ((__atomic_load_n(&present_map[c / 8], __ATOMIC_ACQUIRE) >>
             (c % 8)) &
            1);
}

static void
note_access(uint64_t c)
{
    uint8_t mask = (uint8_t)(1u << (c % 8));
    uint8_t old = __atomic_fetch_or(&seen[c / 8], mask, __ATOMIC_RELAXED);
    uint8_t rec[16];
    uint64_t t = (uint64_t)(now_us() - start_us);

    if (old & mask)
        return;
    for (int i = 0; i < 8; i++) {
        rec[i] = (uint8_t)(c >> (8 * i));
        rec[8 + i] = (uint8_t)(t >> (8 * i));
    }
    if (write(profile_fd, rec, sizeof(rec)) != (ssize_t)sizeof(rec))
        nbdkit_debug("cannot append to the access profile: %m");
}

/*
 * The calling thread's client of the agent (fetch-client.h), made on its
 * first miss and freed with the thread.  NULL with a message in @why when
 * it cannot be made.
 */
static FetchClient *
thread_client(char *why, size_t why_len)
{
    FetchClient *fc = pthread_getspecific(client_key);
    GError *err = NULL;

    if (fc)
        return fc;
    fc = fetch_client_new(agent_path, image_digest, &err);
    if (!fc) {
        snprintf(why, why_len, "%s", err->message);
        g_error_free(err);
        return NULL;
    }
    pthread_setspecific(client_key, fc);
    return fc;
}

/*
 * Ask the agent for every chunk of @missing at once (fetch_client_get
 * pipelines them) and wait.  On failure writes into @why the reason and
 * sets *@failed the chunk it is about.
 */
static bool
agent_fetch(const uint64_t *missing, size_t n, int64_t deadline_us,
            uint64_t *failed, char *why, size_t why_len)
{
    FetchClient *fc = thread_client(why, why_len);
    GError *err = NULL;

    *failed = missing[0];
    if (!fc)
        return false;
    if (!fetch_client_get(fc, missing, n, 0, deadline_us, failed, &err)) {
        snprintf(why, why_len, "%s", err->message);
        g_error_free(err);
        return false;
    }
    return true;
}

/* Fail the read: chunk @c of the image could not be fetched, for @why. */
static int
chunk_unavailable(uint64_t c, const char *why)
{
    unsigned shift = image_index_chunk_shift(idx);

    shim_error("spore: image %s: chunk %" PRIu64 " (bytes %" PRIu64 "-%" PRIu64
               ") unavailable: %s",
               short_id, c, c << shift,
               (c << shift) + image_index_chunk_len(idx, c) - 1, why);
    nbdkit_set_error(EIO);
    return -1;
}

/*
 * Make chunks @first to @last present: the missing ones are asked for
 * together, FETCH_CLIENT_BATCH_MAX at a time, so that one round trip
 * covers a read that spans several.
 */
static int
fetch_missing(uint64_t first, uint64_t last, int64_t deadline_us)
{
    uint64_t missing[FETCH_CLIENT_BATCH_MAX];
    char why[FETCH_REPLY_MESSAGE_BYTES + 128];
    uint64_t c = first;

    while (c <= last) {
        size_t n = 0;
        uint64_t failed;

        for (; c <= last && n < FETCH_CLIENT_BATCH_MAX; c++) {
            note_access(c);
            if (!is_present(c))
                missing[n++] = c;
        }
        if (n == 0)
            continue;
        if (!agent_fetch(missing, n, deadline_us, &failed, why, sizeof(why)))
            return chunk_unavailable(failed, why);
        for (size_t i = 0; i < n; i++) {
            if (!is_present(missing[i])) {
                shim_error("spore: image %s: the agent reported chunk %" PRIu64
                           " present but its bit is clear",
                           short_id, missing[i]);
                nbdkit_set_error(EIO);
                return -1;
            }
        }
    }
    return 0;
}

static int
spore_pread(void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
    unsigned shift = image_index_chunk_shift(idx);
    int64_t deadline_us = g_get_monotonic_time() + (int64_t)timeout_s * 1000000;
    uint8_t *out = buf;

    if (fetch_missing(offset >> shift, (offset + count - 1) >> shift,
                      deadline_us) < 0)
        return -1;

    /* every chunk is present now; zero chunks read as zeros from the
     * sparse file, whose holes were never written */
    while (count > 0) {
        ssize_t n = pread(data_fd, out, count, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            shim_error("spore: image %s: cannot read the cache at offset "
                       "%" PRIu64 ": %s",
                       short_id, offset,
                       n == 0 ? "short file" : strerror(errno));
            nbdkit_set_error(EIO);
            return -1;
        }
        out += n;
        count -= (uint32_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

static int
spore_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents)
{
    unsigned shift = image_index_chunk_shift(idx);
    uint64_t size = image_index_image_size(idx);
    uint64_t end = MIN(offset + count, size);
    uint64_t c = offset >> shift;
    uint64_t run_start = c << shift;
    bool run_zero = image_index_chunk_is_zero(idx, c);

    /* runs of equal chunks, from the chunk holding offset to past end */
    for (c = c + 1;; c++) {
        uint64_t pos = c << shift;
        bool at_end = pos >= end || c >= image_index_chunk_count(idx);
        bool zero = at_end ? !run_zero : image_index_chunk_is_zero(idx, c);

        if (zero != run_zero || at_end) {
            uint64_t run_end = MIN(pos, size);
            if (nbdkit_add_extent(extents, run_start, run_end - run_start,
                                  run_zero
                                      ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO
                                      : 0) == -1)
                return -1;
            if (at_end || (flags & NBDKIT_FLAG_REQ_ONE))
                return 0;
            run_start = pos;
            run_zero = zero;
        }
    }
}

static struct nbdkit_plugin plugin = {
    .name = "spore",
    .longname = "spore block-fetch shim",
    .version = "0.1.0",
    .description = "serves a spore image from its chunk cache, fetching "
                   "missing chunks through the host agent",
    .load = spore_load,
    .unload = spore_unload,
    .config = spore_config,
    .config_complete = spore_config_complete,
    .config_help = spore_config_help,
    .magic_config_key = "cache",
    .open = spore_open,
    .get_size = spore_get_size,
    .can_write = spore_can_write,
    .can_multi_conn = spore_can_multi_conn,
    .can_extents = spore_can_extents,
    .pread = spore_pread,
    .extents = spore_extents,
};

NBDKIT_REGISTER_PLUGIN(plugin)
