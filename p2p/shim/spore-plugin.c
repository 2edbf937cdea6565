/*
 * spore-plugin.c: nbdkit-spore-plugin, the block-fetch shim.
 *
 * Serves one image, read-only, from its chunk cache (see chunk-cache.h):
 *
 *   nbdkit --unix SOCK spore cache=CACHE_DIR agent=FETCH_SOCK [timeout=S]
 *          [readahead=BYTES]
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
 * Read-ahead (readahead.c says why and how much): a read that continues a
 * sequential stream of its connection, once the stream has read 256 KiB,
 * asks the agent, besides its own missing chunks, for the missing chunks
 * of a window past its end, at profile priority (behind every demand
 * request in the agent's engine, which keeps a worker for demand) and
 * without waiting for them: the window doubles while the stream
 * continues, from 256 KiB up to readahead= bytes (default 1 MiB; 0 turns
 * it off), never past the image.
 * Those chunks take the same way as any other (local copies, peers, the
 * origin; verified against the index before their bit is set); a later
 * read of one still in flight waits for that fetch at demand priority.
 * Chunks fetched ahead are not accesses: the access profile records reads.
 *
 * Statistics: CACHE_DIR/shim.stats, one "name value" line per counter since
 * the shim started (reads, reads that waited for the agent, chunks asked on
 * demand and ahead, ahead chunks answered, failed, dropped, and read by the
 * guest afterwards, early or late), rewritten (atomically) at most once a
 * second while they change, when a connection closes and at exit.
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
 * never interleave on a socket.  One thread of our own, the ahead fetcher
 * (`ahead_main`), started by the first read that asks ahead, so after
 * nbdkit's fork: it alone owns its sockets to the agent (one per batch of
 * at most AHEAD_BATCH requests, at most AHEAD_CONNS at once, each closed
 * once every reply came); the readers hand it chunks through `ahead_q`
 * (under `ahead_lock`, a pipe to wake it) and never wait for it.  Each
 * connection's streams have their own lock (readahead.h).  The files are
 * opened in config_complete and survive nbdkit's fork.
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

#include <poll.h>

#include "chunk-cache.h"
#include "fetch-client.h"
#include "fetch-protocol.h"
#include "image-index.h"
#include "readahead.h"

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

static uint64_t readahead_bytes = READAHEAD_DEFAULT_BYTES;

/* the ahead fetcher: requests per connection, connections at once, chunks
 * waiting to be sent (more are dropped, and counted) */
#define AHEAD_BATCH    16u
#define AHEAD_CONNS    4u
#define AHEAD_QUEUE    1024u
#define STATS_EVERY_US 1000000

static pthread_mutex_t ahead_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t ahead_q[AHEAD_QUEUE]; /* a ring, under ahead_lock */
static size_t ahead_head, ahead_len;  /* under ahead_lock */
static uint8_t *ahead_asked;          /* chunks asked ahead, atomic bits */
static pthread_once_t ahead_once = PTHREAD_ONCE_INIT;
static pthread_t ahead_thread;
static bool ahead_running; /* set once by ahead_start */
static int ahead_wake[2] = {-1, -1};
static int ahead_stop; /* atomic */

/* the counters of CACHE_DIR/shim.stats, atomic */
enum {
    ST_READS,
    ST_READ_BYTES,
    ST_DEMAND_READS,
    ST_DEMAND_CHUNKS,
    ST_STREAMS,
    ST_AHEAD_CHUNKS,
    ST_AHEAD_DONE,
    ST_AHEAD_FAILED,
    ST_AHEAD_DROPPED,
    ST_AHEAD_USED,
    ST_AHEAD_LATE,
    ST_COUNT
};
static const char *const stat_names[ST_COUNT] = {
    "reads",         /* guest reads */
    "read_bytes",    /* their bytes */
    "demand_reads",  /* reads that asked the agent and waited */
    "demand_chunks", /* chunks they asked for */
    "streams",       /* sequential streams (a read continued another) */
    "ahead_chunks",  /* chunks asked ahead of streams */
    "ahead_done",    /* ... the agent answered present */
    "ahead_failed",  /* ... the agent answered failed, or the answer was lost */
    "ahead_dropped", /* chunks not asked: queue full, agent unreachable */
    "ahead_used",    /* chunks asked ahead that a read then read */
    "ahead_late",    /* ... and that read still had to wait for */
};
static uint64_t stats[ST_COUNT];
static uint64_t stats_version; /* atomic: bumped with every change */
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t stats_written = UINT64_MAX; /* under stats_lock */
static char *stats_path;

static void
stat_add(int which, uint64_t n)
{
    if (n == 0)
        return;
    __atomic_fetch_add(&stats[which], n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stats_version, 1, __ATOMIC_RELEASE);
}

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

static void stats_flush(void);

static void
spore_unload(void)
{
    if (ahead_running) {
        char b = 's';

        __atomic_store_n(&ahead_stop, 1, __ATOMIC_RELEASE);
        if (write(ahead_wake[1], &b, 1) < 0)
            nbdkit_debug("cannot wake the ahead fetcher: %m");
        pthread_join(ahead_thread, NULL);
    }
    if (stats_path)
        stats_flush();
    for (int i = 0; i < 2; i++)
        if (ahead_wake[i] >= 0)
            close(ahead_wake[i]);
    free(ahead_asked);
    g_free(stats_path);
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
    if (strcmp(key, "readahead") == 0) {
        int64_t v = nbdkit_parse_size(value);
        if (v == -1)
            return -1;
        if (v > READAHEAD_MAX_BYTES) {
            nbdkit_error("readahead must be 0 to %u bytes",
                         READAHEAD_MAX_BYTES);
            return -1;
        }
        readahead_bytes = (uint64_t)v;
        return 0;
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
    ahead_asked = calloc(1, present_len);
    if (!seen || !ahead_asked) {
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
    stats_path = g_strdup_printf("%s/shim.stats", cache_dir);
    return 0;
}

#define spore_config_help                                                   \
    "cache=<DIR>      (required) the image's chunk cache directory\n"       \
    "agent=<SOCKET>   (required) the host agent's fetch socket\n"           \
    "timeout=<S>      seconds to wait for a missing chunk (default 60)\n"   \
    "readahead=<SIZE> ahead of a sequential stream, at most (default 1M)\n" \
    "log=<FILE>       also append errors to FILE"

/* the connection's handle: its sequential streams (readahead.h) */
static void *
spore_open(int readonly)
{
    ShimStreams *st = calloc(1, sizeof(*st));

    if (!st) {
        nbdkit_error("calloc: %m");
        return NULL;
    }
    pthread_mutex_init(&st->lock, NULL);
    return st;
}

static void
spore_close(void *handle)
{
    ShimStreams *st = handle;

    pthread_mutex_destroy(&st->lock);
    free(st);
    stats_flush();
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
    uint64_t used = 0, late = 0, asked = 0;
    int rc = 0;

    while (c <= last) {
        size_t n = 0;
        uint64_t failed;

        for (; c <= last && n < FETCH_CLIENT_BATCH_MAX; c++) {
            uint8_t mask = (uint8_t)(1u << (c % 8));
            bool present = is_present(c);

            note_access(c);
            if (__atomic_fetch_and(&ahead_asked[c / 8], (uint8_t)~mask,
                                   __ATOMIC_RELAXED) &
                mask) {
                used++;
                late += !present;
            }
            if (!present)
                missing[n++] = c;
        }
        if (n == 0)
            continue;
        asked += n;
        if (!agent_fetch(missing, n, deadline_us, &failed, why, sizeof(why))) {
            rc = chunk_unavailable(failed, why);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (!is_present(missing[i])) {
                shim_error("spore: image %s: the agent reported chunk %" PRIu64
                           " present but its bit is clear",
                           short_id, missing[i]);
                nbdkit_set_error(EIO);
                rc = -1;
                break;
            }
        }
        if (rc < 0)
            break;
    }
    stat_add(ST_AHEAD_USED, used);
    stat_add(ST_AHEAD_LATE, late);
    stat_add(ST_DEMAND_CHUNKS, asked);
    stat_add(ST_DEMAND_READS, asked > 0);
    return rc;
}

/* ---- the ahead fetcher ------------------------------------------------ */

/* one connection of the ahead fetcher: a batch of requests, their replies */
typedef struct {
    int fd; /* -1: free */
    size_t n, got, rlen;
    uint64_t chunks[AHEAD_BATCH];
    uint8_t rbuf[FETCH_REPLY_BYTES];
} AheadConn;

/*
 * stats_flush: CACHE_DIR/shim.stats from the counters, when they changed
 * since it was last written; a temporary file renamed over it, so a reader
 * sees a whole one.
 */
static void
stats_flush(void)
{
    uint64_t v = __atomic_load_n(&stats_version, __ATOMIC_ACQUIRE);
    char buf[1024], tmp[4200];
    int len, fd;

    if (!stats_path)
        return;
    pthread_mutex_lock(&stats_lock);
    if (v == stats_written) {
        pthread_mutex_unlock(&stats_lock);
        return;
    }
    len = snprintf(buf, sizeof(buf), "pid %d\nreadahead_bytes %" PRIu64 "\n",
                   (int)getpid(), readahead_bytes);
    for (int i = 0; i < ST_COUNT && len < (int)sizeof(buf); i++)
        len += snprintf(buf + len, sizeof(buf) - (size_t)len,
                        "%s %" PRIu64 "\n", stat_names[i],
                        __atomic_load_n(&stats[i], __ATOMIC_RELAXED));
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", stats_path, (int)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0 || write(fd, buf, (size_t)MIN(len, (int)sizeof(buf) - 1)) < 0 ||
        rename(tmp, stats_path) < 0)
        nbdkit_debug("cannot write the statistics '%s': %m", stats_path);
    if (fd >= 0)
        close(fd);
    stats_written = v;
    pthread_mutex_unlock(&stats_lock);
}

/* ahead_take: up to @max queued chunks still missing, into @out */
static size_t
ahead_take(uint64_t *out, size_t max)
{
    size_t n = 0;

    pthread_mutex_lock(&ahead_lock);
    while (ahead_len > 0 && n < max) {
        uint64_t c = ahead_q[ahead_head];

        ahead_head = (ahead_head + 1) % AHEAD_QUEUE;
        ahead_len--;
        if (!is_present(c))
            out[n++] = c;
    }
    pthread_mutex_unlock(&ahead_lock);
    return n;
}

/* ahead_unask: chunks that were not asked after all */
static void
ahead_unask(const uint64_t *chunks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        __atomic_fetch_and(&ahead_asked[chunks[i] / 8],
                           (uint8_t) ~(1u << (chunks[i] % 8)),
                           __ATOMIC_RELAXED);
    stat_add(ST_AHEAD_DROPPED, n);
}

/* ahead_send: a connection of its own for @k's batch, every request sent
 * (a fresh socket's buffer takes AHEAD_BATCH requests at once) */
static bool
ahead_send(AheadConn *k)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    uint8_t out[AHEAD_BATCH * FETCH_REQUEST_BYTES];
    size_t len = k->n * FETCH_REQUEST_BYTES;

    memcpy(addr.sun_path, agent_path, strlen(agent_path) + 1);
    k->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (k->fd < 0)
        return false;
    if (connect(k->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return false;
    for (size_t i = 0; i < k->n; i++) {
        FetchRequest req = {
            .priority = 1, /* behind demand, with profile prefetch */
            .chunk = k->chunks[i],
            .wait_ms = (uint64_t)timeout_s * 1000,
            .tag = i + 1,
        };
        memcpy(req.image, image_digest, sizeof(req.image));
        fetch_request_encode(&req, out + i * FETCH_REQUEST_BYTES);
    }
    return send(k->fd, out, len, MSG_NOSIGNAL) == (ssize_t)len;
}

static void
ahead_close(AheadConn *k)
{
    stat_add(ST_AHEAD_FAILED, k->n - k->got); /* their answers are lost */
    close(k->fd);
    k->fd = -1;
    k->n = k->got = k->rlen = 0;
}

/* ahead_receive: the replies that came on @k; false when @k is done
 * (every reply in, or the connection lost or broken) */
static bool
ahead_receive(AheadConn *k)
{
    for (;;) {
        ssize_t r = read(k->fd, k->rbuf + k->rlen, FETCH_REPLY_BYTES - k->rlen);
        FetchReply rep;

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (r <= 0)
            return false;
        k->rlen += (size_t)r;
        if (k->rlen < FETCH_REPLY_BYTES)
            continue;
        k->rlen = 0;
        if (!fetch_reply_decode(k->rbuf, &rep) || rep.tag == 0 ||
            rep.tag > k->n || k->chunks[rep.tag - 1] != rep.chunk) {
            nbdkit_debug("ahead: a reply that matches no request");
            return false;
        }
        k->got++;
        stat_add(rep.status == 0 ? ST_AHEAD_DONE : ST_AHEAD_FAILED, 1);
        if (k->got == k->n)
            return false;
    }
}

static void *
ahead_main(void *arg)
{
    AheadConn conns[AHEAD_CONNS];
    int64_t flushed = now_us();

    for (unsigned i = 0; i < AHEAD_CONNS; i++)
        conns[i] = (AheadConn){.fd = -1};
    while (!__atomic_load_n(&ahead_stop, __ATOMIC_ACQUIRE)) {
        struct pollfd pfd[1 + AHEAD_CONNS];
        AheadConn *of[1 + AHEAD_CONNS];
        nfds_t np = 1;
        char drain[64];

        /* every free connection takes a batch */
        for (unsigned i = 0; i < AHEAD_CONNS; i++) {
            AheadConn *k = &conns[i];

            if (k->fd >= 0)
                continue;
            k->n = ahead_take(k->chunks, AHEAD_BATCH);
            if (k->n == 0)
                break;
            k->got = k->rlen = 0;
            if (!ahead_send(k)) {
                ahead_unask(k->chunks, k->n);
                if (k->fd >= 0)
                    close(k->fd);
                *k = (AheadConn){.fd = -1};
                continue;
            }
            stat_add(ST_AHEAD_CHUNKS, k->n);
        }
        pfd[0] = (struct pollfd){.fd = ahead_wake[0], .events = POLLIN};
        for (unsigned i = 0; i < AHEAD_CONNS; i++) {
            if (conns[i].fd < 0)
                continue;
            pfd[np] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
            of[np++] = &conns[i];
        }
        if (poll(pfd, np, STATS_EVERY_US / 1000) < 0 && errno != EINTR) {
            nbdkit_debug("ahead: poll: %m");
            break;
        }
        if (pfd[0].revents)
            while (read(ahead_wake[0], drain, sizeof(drain)) > 0)
                ;
        for (nfds_t i = 1; i < np; i++)
            if (pfd[i].revents && !ahead_receive(of[i]))
                ahead_close(of[i]);
        if (now_us() - flushed >= STATS_EVERY_US) {
            stats_flush();
            flushed = now_us();
        }
    }
    for (unsigned i = 0; i < AHEAD_CONNS; i++)
        if (conns[i].fd >= 0)
            ahead_close(&conns[i]);
    return NULL;
}

static void
ahead_start(void)
{
    if (pipe2(ahead_wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        nbdkit_debug("ahead: pipe: %m");
        return;
    }
    if (pthread_create(&ahead_thread, NULL, ahead_main, NULL) != 0) {
        nbdkit_debug("ahead: cannot start the thread");
        return;
    }
    ahead_running = true;
}

/*
 * ahead_enqueue: hand chunks @from to @to, those missing and not asked
 * ahead before, to the ahead fetcher (started on first use); never waits
 * for it.
 */
static void
ahead_enqueue(uint64_t from, uint64_t to)
{
    uint64_t dropped = 0;
    bool wake;
    size_t before;

    pthread_once(&ahead_once, ahead_start);
    pthread_mutex_lock(&ahead_lock);
    before = ahead_len;
    for (uint64_t c = from; c <= to; c++) {
        uint8_t mask = (uint8_t)(1u << (c % 8));

        if (is_present(c))
            continue;
        if (!ahead_running || ahead_len == AHEAD_QUEUE) {
            dropped++;
            continue;
        }
        if (__atomic_fetch_or(&ahead_asked[c / 8], mask, __ATOMIC_RELAXED) &
            mask)
            continue; /* asked already */
        ahead_q[(ahead_head + ahead_len++) % AHEAD_QUEUE] = c;
    }
    wake = before == 0 && ahead_len > 0;
    pthread_mutex_unlock(&ahead_lock);
    stat_add(ST_AHEAD_DROPPED, dropped);
    if (wake) {
        char b = 'w';
        if (write(ahead_wake[1], &b, 1) < 0 && errno != EAGAIN)
            nbdkit_debug("cannot wake the ahead fetcher: %m");
    }
}

static int
spore_pread(void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
    unsigned shift = image_index_chunk_shift(idx);
    int64_t deadline_us = g_get_monotonic_time() + (int64_t)timeout_s * 1000000;
    uint8_t *out = buf;
    uint64_t from, to;
    bool continued, new_stream;

    stat_add(ST_READS, 1);
    stat_add(ST_READ_BYTES, count);
    /* ahead of a sequential stream first: those requests go out while
     * this read waits for its own */
    if (readahead_note(handle, offset, count, shift,
                       image_index_chunk_count(idx), readahead_bytes, &from,
                       &to, &continued, &new_stream))
        ahead_enqueue(from, to);
    stat_add(ST_STREAMS, new_stream);

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
    .close = spore_close,
    .get_size = spore_get_size,
    .can_write = spore_can_write,
    .can_multi_conn = spore_can_multi_conn,
    .can_extents = spore_can_extents,
    .pread = spore_pread,
    .extents = spore_extents,
};

NBDKIT_REGISTER_PLUGIN(plugin)
