/*
 * agent.c: the host agent's core (see agent.h for the layout on disk and
 * the threads).
 *
 * Image lifecycle:
 *
 *   (none) --[image-add: index verified, cache opened]--> PREPARED
 *   PREPARED --[image-serve: nbdkit started]--> SERVING
 *   SERVING --[image-unserve: nbdkit stopped]--> PREPARED
 *   any --[agent restart]--> PREPARED, or SERVING if its nbdkit still runs
 *
 * Each image's shim, in detail (guarded by the image's own lock):
 *
 *            agent_image_serve (claims the start)
 *   IDLE ------------------------------------------> STARTING
 *     ^                                               |   |
 *     |  shim_start failed (broadcast cond)           |   | shim_start ok
 *     +-----------------------------------------------+   | (broadcast)
 *     |                                                   v
 *     +------------- agent_image_unserve ------------- SERVING
 *     agent_image_serve finding its nbdkit gone: SERVING -> STARTING
 *     agent_image_open finding a running nbdkit: (new) -> SERVING
 *
 *   A serve or unserve that finds STARTING waits on the image's cond until
 *   the starting thread leaves it, then decides again.
 *
 * Invariants:
 *   1. Agent.lock guards the images table only: it is held for a lookup, an
 *      insert or a listing, never across a spawn, a poll, a fetch or any
 *      I/O, and no other lock is taken under it.  So a guest's read miss
 *      (on_fetch_run) never waits for another image's shim or cache.
 *   2. An image, once in the table, stays there and in memory until
 *      agent_free; its identity, index, cache, engine, origins and paths
 *      never change, so they are read without a lock.
 *   3. AgentImage.lock guards shim_state and shim_pid; it is held between
 *      transitions only (checks of /proc, kill, unlinks of the shim's own
 *      files), never across shim_start's spawn and polls.  Exactly one
 *      thread at a time is in STARTING for an image: the one that left
 *      IDLE; the others wait on AgentImage.cond.
 *   4. Agent.add_lock serializes image-add (opening a cache, persisting the
 *      record: I/O); nothing on the data path takes it.
 *
 * Library code below never logs; this file is the top level of the agent
 * and logs once per event, with g_message / g_warning (domain spore-agent).
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "chunk-cache.h"
#include "control.h"
#include "fetch-engine.h"
#include "fetch-protocol.h"
#include "file-util.h"
#include "image-index.h"
#include "le-bytes.h"
#include "local-source.h"
#include "origin.h"
#include "peer-net.h"
#include "profile.h"
#include "spore-error.h"
#include "wire.h"

#define AGENT_CONTROL_LINE_MAX_BYTES (1024u * 1024)
/* the control and fetch sockets: the agent's user only */
#define AGENT_SOCKET_MODE     0600
#define SOCKET_THREADS_MAX    512
#define SHIM_START_TIMEOUT_MS 10000
/* the shim sockets: the agent's user and the shim group (QEMU) */
#define SHIM_SOCKET_MODE  0660
#define SHIM_THREADS      "16"
#define UNIX_PATH_BYTES   108 /* sizeof(sun_path) */
#define SITE_PROFILE_FILE "site-profile"

/* the shim of one image: see the diagram at the top of this file */
typedef enum {
    SHIM_IDLE,     /* no nbdkit of ours serves the image */
    SHIM_STARTING, /* one thread spawns and polls nbdkit, holding no lock */
    SHIM_SERVING,  /* shim_pid serves the image (checked on each serve) */
} ShimState;

typedef struct {
    /* immutable once the image is in the table (invariant 2) */
    char *id;  /* "sha256:<hex>" */
    char *hex; /* the id's hex digits: directory and file names */
    guint8 digest[SPORE_SHA256_BYTES];
    ImageIndex *idx;
    ChunkCache *cache;
    FetchEngine *engine;
    FetchSource *local; /* borrowed from the engine, for image-plan */
    GStrv origins;
    char *shim_socket;
    char *shim_pidfile;
    char *shim_log;
    /* guarded by lock (invariant 3) */
    GMutex lock;
    GCond cond; /* broadcast when shim_state leaves SHIM_STARTING */
    ShimState shim_state;
    GPid shim_pid; /* SHIM_SERVING: nbdkit's daemon; else 0 */
} AgentImage;

struct Agent {
    AgentConfig cfg;
    char *cache_root;
    char *images_dir;
    char *shims_dir;
    char *control_path;
    char *fetch_path;
    GMutex lock;        /* guards the images table only (invariant 1) */
    GMutex add_lock;    /* serializes image-add (invariant 4) */
    GHashTable *images; /* hex -> AgentImage *, never removed (invariant 2) */
    CacheSet *caches;   /* every image's cache, for local copies */
    PeerNet *peers;     /* NULL: no peer exchange */
    ControlServer *control;
    GSocketService *fetch;
    gint shim_timeout; /* atomic, seconds: SIGHUP may change it */
};

/* ---- images ------------------------------------------------------------ */

static void
agent_image_free(gpointer p)
{
    AgentImage *im = p;

    fetch_engine_free(im->engine);
    chunk_cache_close(im->cache);
    image_index_free(im->idx);
    g_strfreev(im->origins);
    g_free(im->shim_socket);
    g_free(im->shim_pidfile);
    g_free(im->shim_log);
    g_free(im->hex);
    g_free(im->id);
    g_mutex_clear(&im->lock);
    g_cond_clear(&im->cond);
    g_free(im);
}

static bool
pid_is_nbdkit(GPid pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", (int)pid);
    g_autofree char *cmdline = NULL;
    gsize len = 0;

    if (pid <= 0 || kill(pid, 0) != 0)
        return false;
    if (!g_file_get_contents(path, &cmdline, &len, NULL) || len == 0)
        return false;
    return strstr(cmdline, "nbdkit") != NULL;
}

static GPid
read_pidfile(const char *path)
{
    g_autofree char *text = NULL;
    guint64 pid = 0;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return 0;
    g_strstrip(text);
    if (!g_ascii_string_to_unsigned(text, 10, 1, G_MAXINT32, &pid, NULL))
        return 0;
    return (GPid)pid;
}

/* Open (or create) the cache and engine of @idx; takes a ref of @idx. */
static AgentImage *
agent_image_open(Agent *a, ImageIndex *idx, const char *const *origins,
                 GError **error)
{
    g_autoptr(GError) err = NULL;
    AgentImage *im = g_new0(AgentImage, 1);
    GPtrArray *origin; /* one FetchSource per URL, in order */

    g_mutex_init(&im->lock);
    g_cond_init(&im->cond);
    im->idx = image_index_ref(idx);
    im->id = g_strdup(image_index_id(idx));
    im->hex = g_strdup(im->id + strlen("sha256:"));
    spore_unhex(im->hex, im->digest, SPORE_SHA256_BYTES);
    im->origins = g_strdupv((char **)origins);
    /* unix socket paths are short (108 bytes): name shims by 16 digits */
    im->shim_socket = g_strdup_printf("%s/%.16s.sock", a->shims_dir, im->hex);
    im->shim_pidfile = g_strdup_printf("%s/%.16s.pid", a->shims_dir, im->hex);
    im->shim_log = g_strdup_printf("%s/%.16s.log", a->shims_dir, im->hex);

    origin = origin_source_new_each(origins, NULL, error);
    if (!origin)
        goto fail;
    im->cache = chunk_cache_open(a->cache_root, idx, error);
    if (!im->cache) {
        g_ptr_array_unref(origin);
        goto fail;
    }
    if (a->cfg.verify_cache) {
        guint64 bad = 0;
        if (!chunk_cache_verify_all(im->cache, &bad, error)) {
            g_ptr_array_unref(origin);
            goto fail;
        }
        g_log(G_LOG_DOMAIN, bad ? G_LOG_LEVEL_WARNING : G_LOG_LEVEL_MESSAGE,
              "image %.12s: verified %" G_GUINT64_FORMAT
              " cached chunks, %" G_GUINT64_FORMAT " bad (dropped)",
              im->hex, chunk_cache_stored_count(im->cache) + bad, bad);
    }
    im->engine = fetch_engine_new(im->cache, a->cfg.fetch_workers);
    for (guint k = 0; k < origin->len; k++) /* in order: see origin.h */
        fetch_engine_add_source(im->engine, origin->pdata[k]);
    g_ptr_array_set_free_func(origin, NULL); /* the engine owns them now */
    g_ptr_array_unref(origin);
    /* chunks another image here already holds are copied, not fetched */
    im->local = local_source_new(a->caches, im->cache);
    fetch_engine_add_source(im->engine, im->local);
    cache_set_add(a->caches, im->cache);
    /* then peers, before the origin */
    if (a->peers) {
        peer_net_add_image(a->peers, im->cache, im->engine);
        fetch_engine_add_source(im->engine,
                                peer_source_new(a->peers, im->cache));
    }

    /* a shim left running by an earlier agent serves on */
    {
        GPid pid = read_pidfile(im->shim_pidfile);
        if (pid_is_nbdkit(pid)) {
            im->shim_state = SHIM_SERVING;
            im->shim_pid = pid;
            g_log(G_LOG_DOMAIN, G_LOG_LEVEL_MESSAGE,
                  "image %.12s: shim (nbdkit pid %d) still serving on '%s'",
                  im->hex, (int)pid, im->shim_socket);
        }
    }
    return im;

fail:
    g_prefix_error(error, "image %.12s: ", im->hex);
    agent_image_free(im);
    return NULL;
}

static bool
agent_image_persist(Agent *a, AgentImage *im, GError **error)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autofree char *path =
        g_strdup_printf("%s/%s.image", a->images_dir, im->hex);
    g_autofree char *text = NULL;
    gsize len = 0;

    g_key_file_set_string(kf, "image", "id", im->id);
    g_key_file_set_string_list(kf, "image", "origins",
                               (const char *const *)im->origins,
                               g_strv_length(im->origins));
    text = g_key_file_to_data(kf, &len, NULL);
    return spore_file_write_atomic(path, text, len, 0640, error);
}

/* Load every images/<hex>.image at startup; a broken one is skipped. */
static void
agent_load_images(Agent *a)
{
    g_autoptr(GDir) dir = g_dir_open(a->images_dir, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autoptr(GKeyFile) kf = g_key_file_new();
        g_autoptr(GError) err = NULL;
        g_autofree char *path = NULL;
        g_autofree char *id = NULL;
        g_autofree char *index_path = NULL;
        g_auto(GStrv) origins = NULL;
        g_autoptr(ImageIndex) idx = NULL;
        AgentImage *im;

        if (!g_str_has_suffix(name, ".image"))
            continue;
        path = g_build_filename(a->images_dir, name, NULL);
        if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &err) ||
            !(id = g_key_file_get_string(kf, "image", "id", &err)) ||
            !(origins = g_key_file_get_string_list(kf, "image", "origins", NULL,
                                                   &err))) {
            g_warning("'%s': %s, ignoring", path, err->message);
            continue;
        }
        index_path = g_build_filename(a->cache_root, id + strlen("sha256:"),
                                      CHUNK_CACHE_INDEX_FILE, NULL);
        idx = image_index_load(index_path, id, &err);
        if (!idx) {
            g_warning("'%s': %s, ignoring", path, err->message);
            continue;
        }
        im = agent_image_open(a, idx, (const char *const *)origins, &err);
        if (!im) {
            g_warning("'%s': %s, ignoring", path, err->message);
            continue;
        }
        g_hash_table_insert(a->images, im->hex, im);
        g_message("image %.12s: loaded (%" G_GUINT64_FORMAT
                  " of %" G_GUINT64_FORMAT " chunks cached)",
                  im->hex, chunk_cache_stored_count(im->cache),
                  image_index_chunk_count(idx) - image_index_zero_count(idx));
    }
}

/*
 * Finds an image by id, hex, or a unique hex prefix (>= 6); takes the table
 * lock for the lookup only.  The image stays valid while the agent lives
 * (invariant 2).
 */
static AgentImage *
agent_find_image(Agent *a, const char *name, GError **error)
{
    const char *hex = g_str_has_prefix(name, "sha256:") ? name + 7 : name;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&a->lock);
    AgentImage *found = g_hash_table_lookup(a->images, hex);
    GHashTableIter it;
    gpointer key, value;
    guint matches = 0;

    if (found)
        return found;
    if (strlen(hex) >= 6) {
        g_hash_table_iter_init(&it, a->images);
        while (g_hash_table_iter_next(&it, &key, &value)) {
            if (g_str_has_prefix(key, hex)) {
                found = value;
                matches++;
            }
        }
        if (matches == 1)
            return found;
    }
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                matches > 1 ? "image '%s' is ambiguous"
                            : "no image '%s' on this host",
                name);
    return NULL;
}

/* The images sorted by hex (borrowed: invariant 2); the table lock is held
 * while they are listed only. */
static GPtrArray *
agent_images_sorted(Agent *a)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&a->lock);
    g_autoptr(GList) keys =
        g_list_sort(g_hash_table_get_keys(a->images), (GCompareFunc)strcmp);
    GPtrArray *out = g_ptr_array_new();

    for (GList *l = keys; l; l = l->next)
        g_ptr_array_add(out, g_hash_table_lookup(a->images, l->data));
    return out;
}

/* ---- shims ------------------------------------------------------------- */

/*
 * The site's profile of the image (from the site manager): chunk numbers in
 * the order to prefetch them, 8 bytes each, little-endian, in
 * CACHE_DIR/SITE_PROFILE_FILE.  NULL when there is none.
 */
static GArray *
site_profile_load(AgentImage *im)
{
    g_autofree char *path =
        g_build_filename(chunk_cache_dir(im->cache), SITE_PROFILE_FILE, NULL);
    g_autofree char *data = NULL;
    gsize len = 0;
    GArray *order;

    if (!g_file_test(path, G_FILE_TEST_EXISTS) ||
        !spore_file_read_bounded(path, AGENT_PROFILE_CHUNKS_MAX * 8, &data,
                                 &len, NULL))
        return NULL;
    order = g_array_new(FALSE, FALSE, sizeof(guint64));
    for (gsize off = 0; off + 8 <= len; off += 8) {
        guint64 c = le_get64((const guint8 *)data + off);
        if (c < image_index_chunk_count(im->idx))
            g_array_append_val(order, c);
    }
    return order;
}

/* Keep @profile (a JSON array of chunk numbers) as the site's profile. */
static bool
site_profile_store(AgentImage *im, JsonArray *profile, GError **error)
{
    g_autofree char *path =
        g_build_filename(chunk_cache_dir(im->cache), SITE_PROFILE_FILE, NULL);
    guint n = MIN(json_array_get_length(profile), AGENT_PROFILE_CHUNKS_MAX);
    g_autofree guint8 *data = g_malloc((gsize)n * 8 + 1);
    guint kept = 0;

    for (guint i = 0; i < n; i++) {
        JsonNode *e = json_array_get_element(profile, i);
        gint64 c = JSON_NODE_HOLDS_VALUE(e) ? json_node_get_int(e) : -1;

        if (c < 0 || (guint64)c >= image_index_chunk_count(im->idx))
            continue; /* not a chunk of this image */
        le_put64(data + 8 * kept++, (guint64)c);
    }
    return spore_file_write_atomic(path, data, (gsize)kept * 8, 0640, error);
}

/*
 * Queue the chunks earlier boots read first, in that order, right behind
 * demand misses: this host's own boots' merged access profile, or, when it
 * never booted the image, the site's.
 */
static void
agent_image_prefetch_profile(AgentImage *im)
{
    g_autofree char *dir =
        g_build_filename(chunk_cache_dir(im->cache), "profiles", NULL);
    guint boots = 0;
    g_autoptr(GArray) order =
        profile_load_dir(dir, image_index_chunk_count(im->idx), &boots);
    bool site = false;

    if (boots == 0) {
        GArray *s = site_profile_load(im);
        if (s) {
            g_array_unref(order);
            order = s;
            site = true;
        }
    }
    for (guint i = 0; i < order->len; i++)
        fetch_engine_want(im->engine, g_array_index(order, guint64, i),
                          FETCH_PRIORITY_PROFILE);
    if (boots)
        g_message("image %.12s: prefetching the %u chunks of %u recorded "
                  "boots' profile",
                  im->hex, order->len, boots);
    else if (site)
        g_message("image %.12s: prefetching the %u chunks of the site's "
                  "profile (this host never booted it)",
                  im->hex, order->len);
}

typedef struct {
    guint64 chunk;
    guint holders;
} FillOrder;

static gint
fill_order_cmp(gconstpointer pa, gconstpointer pb)
{
    const FillOrder *a = pa, *b = pb;

    if (a->holders != b->holders)
        return a->holders < b->holders ? -1 : 1;
    return a->chunk < b->chunk ? -1 : a->chunk > b->chunk;
}

/*
 * Queue every missing chunk at background priority, rarest first: the
 * chunks fewest peers hold come first, so that the site's copies spread
 * (and the origin-only ones are fetched early).  Takes no agent lock.
 */
static void
agent_image_fill(Agent *a, AgentImage *im)
{
    guint64 count = image_index_chunk_count(im->idx);
    g_autoptr(GArray) order = g_array_new(FALSE, FALSE, sizeof(FillOrder));
    guint64 nobody = 0;

    for (guint64 i = 0; i < count; i++) {
        FillOrder f = {i, 0};

        if (chunk_cache_has(im->cache, i))
            continue;
        if (a->peers)
            f.holders = peer_net_holders(a->peers, im->cache, i);
        nobody += f.holders == 0;
        g_array_append_val(order, f);
    }
    g_array_sort(order, fill_order_cmp);
    g_message("image %.12s: filling %u missing chunks in the background, "
              "rarest first (%" G_GUINT64_FORMAT " held by no peer)",
              im->hex, order->len, nobody);
    for (guint k = 0; k < order->len; k++)
        fetch_engine_want(im->engine, g_array_index(order, FillOrder, k).chunk,
                          FETCH_PRIORITY_BACKGROUND);
}

/*
 * Spawn the image's nbdkit and wait until its daemon serves; *ret_pid gets
 * the daemon's PID.  Runs in SHIM_STARTING, holding no lock (invariant 3):
 * it may take up to 2 x SHIM_START_TIMEOUT_MS.
 */
static bool
shim_start(Agent *a, AgentImage *im, GPid *ret_pid, GError **error)
{
    g_autofree char *cache_arg = NULL;
    g_autofree char *agent_arg = NULL;
    g_autofree char *timeout_arg = NULL;
    g_autofree char *log_arg = NULL;
    g_autofree char *log_text = NULL;
    const char *argv[20];
    int n = 0, log_fd;
    GPid pid = 0;

    g_unlink(im->shim_socket); /* nbdkit 1.32 leaves its socket behind */
    g_unlink(im->shim_pidfile);
    cache_arg = g_strdup_printf("cache=%s", chunk_cache_dir(im->cache));
    agent_arg = g_strdup_printf("agent=%s", a->fetch_path);
    timeout_arg = g_strdup_printf("timeout=%u",
                                  (guint)g_atomic_int_get(&a->shim_timeout));
    log_arg = g_strdup_printf("log=%s", im->shim_log);
    /*
     * nbdkit daemonizes itself: in --foreground mode it asks the kernel to
     * kill it when its parent (us) dies (PR_SET_PDEATHSIG), and shims must
     * outlive the agent.  Its messages still go to our log file.
     */
    argv[n++] = a->cfg.nbdkit;
    argv[n++] = "--log=stderr";
    argv[n++] = "--readonly";
    argv[n++] = "--unix";
    argv[n++] = im->shim_socket;
    argv[n++] = "--pidfile";
    argv[n++] = im->shim_pidfile;
    argv[n++] = "--threads";
    argv[n++] = SHIM_THREADS;
    argv[n++] = a->cfg.plugin;
    argv[n++] = cache_arg;
    argv[n++] = agent_arg;
    argv[n++] = timeout_arg;
    argv[n++] = log_arg;
    argv[n] = NULL;

    log_fd =
        open(im->shim_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (log_fd < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot open the shim log '%s': %s", im->shim_log,
                    g_strerror(saved));
        return false;
    }
    if (!g_spawn_async_with_fds(NULL, (char **)argv, NULL,
                                G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
                                NULL, NULL, &pid, -1, log_fd, log_fd, error)) {
        close(log_fd);
        g_prefix_error(error, "cannot start nbdkit '%s': ", a->cfg.nbdkit);
        return false;
    }
    close(log_fd);

    /* the first nbdkit process exits once the daemon is ready */
    {
        int status = 0;
        gint64 give_up =
            g_get_monotonic_time() + (gint64)SHIM_START_TIMEOUT_MS * 1000;
        bool exited = false;

        while (g_get_monotonic_time() < give_up) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = true;
                break;
            }
            g_usleep(10000);
        }
        if (!exited || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            if (!exited)
                kill(pid, SIGTERM);
            g_file_get_contents(im->shim_log, &log_text, NULL, NULL);
            g_set_error(
                error, SPORE_ERROR, SPORE_ERROR_FAILED,
                "the shim (nbdkit) failed to start; its log '%s' "
                "ends: %s",
                im->shim_log,
                log_text ? g_strchomp(log_text + (strlen(log_text) > 600
                                                      ? strlen(log_text) - 600
                                                      : 0))
                         : "(empty)");
            return false;
        }
    }
    /* nbdkit's daemon writes its PID file once it accepts connections,
     * which may be just after its parent exited: wait for it */
    {
        gint64 give_up =
            g_get_monotonic_time() + (gint64)SHIM_START_TIMEOUT_MS * 1000;

        while (!pid_is_nbdkit(pid = read_pidfile(im->shim_pidfile)) &&
               g_get_monotonic_time() < give_up)
            g_usleep(10000);
    }
    if (!pid_is_nbdkit(pid)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "the shim (nbdkit) did not start serving on '%s'; see "
                    "'%s'",
                    im->shim_socket, im->shim_log);
        return false;
    }

    /* QEMU runs as another user: the socket is SHIM_SOCKET_MODE, and
     * the shim group's when there is one */
    if (a->cfg.shim_group && *a->cfg.shim_group) {
        struct group *gr = getgrnam(a->cfg.shim_group);

        if (!gr || chown(im->shim_socket, (uid_t)-1, gr->gr_gid) < 0)
            g_warning("image %.12s: cannot give group '%s' the shim socket "
                      "'%s'%s, ignoring",
                      im->hex, a->cfg.shim_group, im->shim_socket,
                      gr ? "" : " (no such group)");
    }
    if (chmod(im->shim_socket, SHIM_SOCKET_MODE) < 0)
        g_warning("image %.12s: cannot make the shim socket '%s' mode %04o: "
                  "%s, ignoring",
                  im->hex, im->shim_socket, SHIM_SOCKET_MODE,
                  g_strerror(errno));
    *ret_pid = pid;
    return true;
}

/*
 * Start the image's nbdkit unless it runs: the SHIM_IDLE -> SHIM_STARTING
 * -> SHIM_SERVING | SHIM_IDLE transitions.  Concurrent calls for the same
 * image wait on im->cond for the one that starts it and share its outcome
 * (a failed start is retried by the next caller).  Holds no agent-wide lock
 * (invariant 1), and the image's lock only between transitions.
 */
static bool
agent_image_serve(Agent *a, AgentImage *im, GError **error)
{
    GPid pid = 0;
    bool ok;

    g_mutex_lock(&im->lock);
    while (im->shim_state == SHIM_STARTING)
        g_cond_wait(&im->cond, &im->lock);
    if (im->shim_state == SHIM_SERVING && pid_is_nbdkit(im->shim_pid)) {
        g_mutex_unlock(&im->lock);
        return true;
    }
    /* SHIM_IDLE, or SERVING with its nbdkit gone: this thread starts it */
    im->shim_state = SHIM_STARTING;
    im->shim_pid = 0;
    g_mutex_unlock(&im->lock);

    ok = shim_start(a, im, &pid, error);

    g_mutex_lock(&im->lock);
    im->shim_state = ok ? SHIM_SERVING : SHIM_IDLE;
    im->shim_pid = ok ? pid : 0;
    g_cond_broadcast(&im->cond);
    g_mutex_unlock(&im->lock);
    if (ok) {
        g_message("image %.12s: shim (nbdkit pid %d) serving on '%s'", im->hex,
                  (int)pid, im->shim_socket);
        agent_image_prefetch_profile(im);
    }
    return ok;
}

/* Stop the image's nbdkit (SHIM_SERVING -> SHIM_IDLE), after waiting out a
 * start in progress. */
static void
agent_image_unserve(AgentImage *im)
{
    GPid pid;

    g_mutex_lock(&im->lock);
    while (im->shim_state == SHIM_STARTING)
        g_cond_wait(&im->cond, &im->lock);
    pid = im->shim_state == SHIM_SERVING && pid_is_nbdkit(im->shim_pid)
              ? im->shim_pid
              : 0;
    im->shim_state = SHIM_IDLE;
    im->shim_pid = 0;
    if (pid)
        kill(pid, SIGTERM);
    g_unlink(im->shim_socket);
    g_unlink(im->shim_pidfile);
    g_mutex_unlock(&im->lock);
    if (pid)
        g_message("image %.12s: shim (nbdkit pid %d) stopped", im->hex,
                  (int)pid);
}

/* ---- control commands -------------------------------------------------- */

/* reply_from: the reply object @b built (it began with reply_ok) */
static JsonObject *
reply_from(JsonBuilder *b)
{
    g_autoptr(JsonNode) root = NULL;

    json_builder_end_object(b);
    root = json_builder_get_root(b);
    return json_object_ref(json_node_get_object(root));
}

static JsonBuilder *
reply_ok(void)
{
    JsonBuilder *b = json_builder_new();

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "ok");
    json_builder_add_boolean_value(b, TRUE);
    return b;
}

static void
add_int(JsonBuilder *b, const char *name, gint64 v)
{
    json_builder_set_member_name(b, name);
    json_builder_add_int_value(b, v);
}

static void
add_str(JsonBuilder *b, const char *name, const char *v)
{
    json_builder_set_member_name(b, name);
    json_builder_add_string_value(b, v);
}

static void
describe_image(JsonBuilder *b, AgentImage *im)
{
    FetchStats st;
    guint64 chunks = image_index_chunk_count(im->idx);
    guint64 zero = image_index_zero_count(im->idx);
    guint64 stored = chunk_cache_stored_count(im->cache);
    g_autofree char *uri = NULL;
    GPid pid;

    g_mutex_lock(&im->lock);
    pid = im->shim_state == SHIM_SERVING ? im->shim_pid : 0;
    g_mutex_unlock(&im->lock);
    fetch_engine_stats(im->engine, &st);
    json_builder_begin_object(b);
    add_str(b, "image", im->id);
    add_int(b, "size", (gint64)image_index_image_size(im->idx));
    add_int(b, "chunk_size", (gint64)image_index_chunk_size(im->idx));
    add_int(b, "chunks", (gint64)chunks);
    add_int(b, "zero_chunks", (gint64)zero);
    add_int(b, "cached_chunks", (gint64)stored);
    json_builder_set_member_name(b, "cached_fraction");
    json_builder_add_double_value(
        b, chunks > zero ? (double)stored / (double)(chunks - zero) : 1.0);
    json_builder_set_member_name(b, "origins");
    json_builder_begin_array(b);
    for (guint i = 0; im->origins[i]; i++)
        json_builder_add_string_value(b, im->origins[i]);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "serving");
    json_builder_add_boolean_value(b, pid != 0);
    if (pid) {
        uri = g_strdup_printf("nbd+unix:///%s?socket=%s", im->hex,
                              im->shim_socket);
        add_str(b, "socket", im->shim_socket);
        add_str(b, "uri", uri);
        add_int(b, "shim_pid", pid);
    }
    json_builder_set_member_name(b, "fetched_bytes");
    json_builder_begin_object(b);
    for (int k = 0; k < FETCH_SOURCE_KINDS; k++)
        add_int(b, fetch_source_kind_name(k), (gint64)st.bytes[k]);
    json_builder_end_object(b);
    add_int(b, "rejected_chunks", (gint64)st.rejected);
    add_int(b, "failed_fetches", (gint64)st.failed);
    add_int(b, "queued_chunks", fetch_engine_queued(im->engine));
    json_builder_end_object(b);
}

static JsonObject *
cmd_image_add(Agent *a, JsonObject *req)
{
    const char *index_path =
        json_object_get_string_member_with_default(req, "index", NULL);
    const char *pin =
        json_object_get_string_member_with_default(req, "id", NULL);
    JsonArray *arr = json_object_has_member(req, "origins")
                         ? json_object_get_array_member(req, "origins")
                         : NULL;
    g_autoptr(GPtrArray) origins = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = NULL;
    g_autoptr(JsonBuilder) b = NULL;
    AgentImage *im;
    const char *hex;

    if (!index_path || !arr || json_array_get_length(arr) == 0)
        return control_reply_error(
            "image-add needs \"index\" (a path on this host) "
            "and \"origins\" (a non-empty array of URLs)");
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        const char *u = json_array_get_string_element(arr, i);
        if (!u)
            return control_reply_error("origins must be strings");
        g_ptr_array_add(origins, g_strdup(u));
    }
    g_ptr_array_add(origins, NULL);

    idx = image_index_load(index_path, pin, &err);
    if (!idx)
        return control_reply_error("%s", err->message);
    hex = image_index_id(idx) + strlen("sha256:");

    /* opening a cache is I/O: under add_lock, not the table's (inv. 4) */
    g_mutex_lock(&a->add_lock);
    g_mutex_lock(&a->lock);
    im = g_hash_table_lookup(a->images, hex);
    g_mutex_unlock(&a->lock);
    if (!im) {
        im =
            agent_image_open(a, idx, (const char *const *)origins->pdata, &err);
        if (im && !agent_image_persist(a, im, &err)) {
            agent_image_free(im);
            im = NULL;
        }
        if (!im) {
            g_mutex_unlock(&a->add_lock);
            return control_reply_error("%s", err->message);
        }
        g_mutex_lock(&a->lock);
        g_hash_table_insert(a->images, im->hex, im);
        g_mutex_unlock(&a->lock);
        g_message("image %.12s: added (%" G_GUINT64_FORMAT
                  " chunks of %" G_GUINT64_FORMAT " bytes, origins: %s)",
                  im->hex, image_index_chunk_count(idx),
                  image_index_chunk_size(idx), im->origins[0]);
    }
    if (json_object_has_member(req, "profile")) {
        JsonNode *p = json_object_get_member(req, "profile");

        if (!JSON_NODE_HOLDS_ARRAY(p) ||
            !site_profile_store(im, json_node_get_array(p), &err)) {
            g_mutex_unlock(&a->add_lock);
            return control_reply_error("image %.12s: profile: %s", im->hex,
                                       err ? err->message
                                           : "not an array of chunk numbers");
        }
    }
    g_mutex_unlock(&a->add_lock);
    b = reply_ok();
    json_builder_set_member_name(b, "image");
    describe_image(b, im);
    return reply_from(b);
}

static JsonObject *
cmd_image_list(Agent *a, JsonObject *req)
{
    g_autoptr(JsonBuilder) b = reply_ok();
    g_autoptr(GPtrArray) images = agent_images_sorted(a);

    json_builder_set_member_name(b, "images");
    json_builder_begin_array(b);
    for (guint i = 0; i < images->len; i++)
        describe_image(b, images->pdata[i]);
    json_builder_end_array(b);
    return reply_from(b);
}

/* Commands that name one image: serve, unserve, fill, show, profile. */
static JsonObject *
cmd_on_image(Agent *a, const char *command, JsonObject *req)
{
    const char *name =
        json_object_get_string_member_with_default(req, "image", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonBuilder) b = NULL;
    AgentImage *im;

    if (!name)
        return control_reply_error("%s needs \"image\"", command);
    im = agent_find_image(a, name, &err);
    if (!im)
        return control_reply_error("%s", err->message);
    if (g_str_equal(command, "image-serve") && !agent_image_serve(a, im, &err))
        return control_reply_error("%s", err->message);
    if (g_str_equal(command, "image-unserve"))
        agent_image_unserve(im);
    if (g_str_equal(command, "image-fill"))
        agent_image_fill(a, im);
    b = reply_ok();
    json_builder_set_member_name(b, "image");
    describe_image(b, im);
    if (g_str_equal(command, "image-profile")) {
        g_autofree char *dir =
            g_build_filename(chunk_cache_dir(im->cache), "profiles", NULL);
        guint boots = 0;
        g_autoptr(GArray) order =
            profile_load_dir(dir, image_index_chunk_count(im->idx), &boots);

        json_builder_set_member_name(b, "profile");
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "boots");
        json_builder_add_int_value(b, boots);
        json_builder_set_member_name(b, "chunks");
        json_builder_begin_array(b);
        for (guint i = 0; i < MIN(order->len, AGENT_PROFILE_CHUNKS_MAX); i++)
            json_builder_add_int_value(
                b, (gint64)g_array_index(order, guint64, i));
        json_builder_end_array(b);
        json_builder_end_object(b);
    }
    return reply_from(b);
}

/* image-plan: where each missing byte would come from now */
static JsonObject *
cmd_image_plan(Agent *a, JsonObject *req)
{
    const char *name =
        json_object_get_string_member_with_default(req, "image", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonBuilder) b = NULL;
    g_autoptr(GHashTable) from_peer =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autoptr(GHashTable) via_peer =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    guint64 cached = 0, zero = 0, local = 0, origin = 0, peers = 0, via = 0;
    AgentImage *im;

    if (!name)
        return control_reply_error("image-plan needs \"image\"");
    im = agent_find_image(a, name, &err);
    if (!im)
        return control_reply_error("%s", err->message);
    for (guint64 i = 0; i < image_index_chunk_count(im->idx); i++) {
        guint64 len = image_index_chunk_len(im->idx, i);
        g_autofree char *peer = NULL;
        bool delegated = false;
        guint64 *sum;

        if (image_index_chunk_is_zero(im->idx, i)) {
            zero += len;
            continue;
        }
        if (chunk_cache_has(im->cache, i)) {
            cached += len;
            continue;
        }
        if (im->local->ops->has(im->local, im->idx, i)) {
            local += len;
            continue;
        }
        if (a->peers)
            peer = peer_net_chunk_source(a->peers, im->cache, i, &delegated);
        if (!peer) {
            origin += len;
            continue;
        }
        *(delegated ? &via : &peers) += len;
        sum = g_hash_table_lookup(delegated ? via_peer : from_peer, peer);
        if (!sum) {
            sum = g_new0(guint64, 1);
            g_hash_table_insert(delegated ? via_peer : from_peer,
                                g_steal_pointer(&peer), sum);
        }
        *sum += len;
    }
    b = reply_ok();
    add_str(b, "image", im->id);
    add_int(b, "cached_bytes", (gint64)cached);
    add_int(b, "zero_bytes", (gint64)zero);
    add_int(b, "local_bytes", (gint64)local);
    add_int(b, "peer_bytes", (gint64)peers);
    add_int(b, "origin_via_peer_bytes", (gint64)via);
    add_int(b, "origin_bytes", (gint64)origin);
    for (int k = 0; k < 2; k++) {
        GHashTable *t = k ? via_peer : from_peer;
        g_autoptr(GList) keys =
            g_list_sort(g_hash_table_get_keys(t), (GCompareFunc)strcmp);

        json_builder_set_member_name(b, k ? "origin_via" : "peers");
        json_builder_begin_object(b);
        for (GList *l = keys; l; l = l->next)
            add_int(b, l->data,
                    (gint64) * (guint64 *)g_hash_table_lookup(t, l->data));
        json_builder_end_object(b);
    }
    return reply_from(b);
}

/*
 * image-similarity: for each ordered pair of images on this host, the
 * fraction of the first one's non-zero chunks whose digest the second one
 * has too (redundancy by digest), and how many of those are cached there
 * now, so a local copy would serve them.
 */
static JsonObject *
cmd_image_similarity(Agent *a, JsonObject *req)
{
    g_autoptr(JsonBuilder) b = reply_ok();
    g_autoptr(GPtrArray) images = agent_images_sorted(a);

    json_builder_set_member_name(b, "pairs");
    json_builder_begin_array(b);
    for (guint x = 0; x < images->len; x++) {
        AgentImage *ia = images->pdata[x];
        guint64 na = image_index_chunk_count(ia->idx);

        for (guint y = 0; y < images->len; y++) {
            AgentImage *ib = images->pdata[y];
            guint64 nb = image_index_chunk_count(ib->idx);
            g_autoptr(GHashTable) held = NULL;
            guint64 nonzero = 0, shared = 0, shared_cached = 0;

            if (ia == ib)
                continue;
            /* digest -> whether ib has a cached chunk with it */
            held = g_hash_table_new_full(g_bytes_hash, g_bytes_equal,
                                         (GDestroyNotify)g_bytes_unref, NULL);
            for (guint64 i = 0; i < nb; i++) {
                GBytes *d;
                gpointer was = NULL;
                bool cached;

                if (image_index_chunk_is_zero(ib->idx, i))
                    continue;
                d = g_bytes_new_static(image_index_chunk_digest(ib->idx, i),
                                       SPORE_SHA256_BYTES);
                cached = chunk_cache_has(ib->cache, i);
                if (g_hash_table_lookup_extended(held, d, NULL, &was) &&
                    (was || !cached))
                    g_bytes_unref(d);
                else
                    g_hash_table_replace(held, d, GINT_TO_POINTER(cached));
            }
            for (guint64 i = 0; i < na; i++) {
                g_autoptr(GBytes) d = NULL;
                gpointer v;

                if (image_index_chunk_is_zero(ia->idx, i))
                    continue;
                nonzero++;
                d = g_bytes_new_static(image_index_chunk_digest(ia->idx, i),
                                       SPORE_SHA256_BYTES);
                if (g_hash_table_lookup_extended(held, d, NULL, &v)) {
                    shared++;
                    shared_cached += GPOINTER_TO_INT(v) != 0;
                }
            }
            json_builder_begin_object(b);
            add_str(b, "image", ia->id);
            add_str(b, "other", ib->id);
            add_int(b, "chunks", (gint64)nonzero);
            add_int(b, "shared_chunks", (gint64)shared);
            add_int(b, "shared_cached_chunks", (gint64)shared_cached);
            json_builder_set_member_name(b, "fraction");
            json_builder_add_double_value(
                b, nonzero ? (double)shared / (double)nonzero : 0.0);
            json_builder_end_object(b);
        }
    }
    json_builder_end_array(b);
    return reply_from(b);
}

/*
 * image-verify: read back every cached chunk of the image and check it
 * against its digest (what --verify-cache does at start); a bad chunk is
 * dropped, to be fetched again.  Guests may read meanwhile.
 */
static JsonObject *
cmd_image_verify(Agent *a, JsonObject *req)
{
    const char *name = json_util_get_string(req, "image", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonBuilder) b = NULL;
    guint64 bad = 0;
    AgentImage *im;

    if (!name)
        return control_reply_error("image-verify needs \"image\"");
    im = agent_find_image(a, name, &err);
    if (!im)
        return control_reply_error("%s", err->message);
    if (!chunk_cache_verify_all(im->cache, &bad, &err))
        return control_reply_error("image %.12s: %s", im->hex, err->message);
    g_log(G_LOG_DOMAIN, bad ? G_LOG_LEVEL_WARNING : G_LOG_LEVEL_MESSAGE,
          "image %.12s: verified the cache on request: %" G_GUINT64_FORMAT
          " chunks good, %" G_GUINT64_FORMAT " bad (dropped)",
          im->hex, chunk_cache_stored_count(im->cache), bad);
    b = reply_ok();
    add_str(b, "image", im->id);
    add_int(b, "verified", (gint64)chunk_cache_stored_count(im->cache));
    add_int(b, "bad", (gint64)bad);
    add_int(b, "dropped", (gint64)bad);
    return reply_from(b);
}

/* peer-list: the peers and what was measured of them */
static JsonObject *
cmd_peer_list(Agent *a, JsonObject *req)
{
    g_autoptr(JsonBuilder) b = reply_ok();
    g_autoptr(GArray) st = a->peers ? peer_net_status(a->peers) : NULL;

    json_builder_set_member_name(b, "enabled");
    json_builder_add_boolean_value(b, a->peers != NULL);
    if (a->peers && peer_net_endpoint(a->peers))
        add_str(b, "listen", peer_net_endpoint(a->peers));
    json_builder_set_member_name(b, "peers");
    json_builder_begin_array(b);
    for (guint k = 0; st && k < st->len; k++) {
        PeerStatus *p = &g_array_index(st, PeerStatus, k);

        json_builder_begin_object(b);
        add_str(b, "name", p->name);
        add_str(b, "endpoint", p->endpoint);
        json_builder_set_member_name(b, "connected");
        json_builder_add_boolean_value(b, p->connected);
        json_builder_set_member_name(b, "dead");
        json_builder_add_boolean_value(b, p->dead);
        json_builder_set_member_name(b, "latency_ms");
        json_builder_add_double_value(b, p->latency_ms);
        json_builder_set_member_name(b, "mbit_s");
        json_builder_add_double_value(b, p->mbit_s);
        add_int(b, "outstanding", p->outstanding);
        add_int(b, "chunks_in", (gint64)p->chunks_in);
        add_int(b, "bytes_in", (gint64)p->bytes_in);
        add_int(b, "bad_chunks", (gint64)p->bad_chunks);
        add_int(b, "chunks_out", (gint64)p->chunks_out);
        add_int(b, "bytes_out", (gint64)p->bytes_out);
        add_int(b, "hedged", (gint64)p->hedged);
        add_int(b, "images_banned", p->images_banned);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    return reply_from(b);
}

bool
agent_set_peers(Agent *a, const PeerInfo *peers, guint n, GError **error)
{
    if (!a->peers) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "peer exchange is off on this host (no [peers] listen)");
        return false;
    }
    return peer_net_set_peers(a->peers, peers, n, error);
}

const char *
agent_peer_endpoint(Agent *a)
{
    return a->peers ? peer_net_endpoint(a->peers) : NULL;
}

static bool
check_shim_timeout(guint seconds, GError **error)
{
    if (seconds == 0 || seconds > SHIM_TIMEOUT_MAX_S) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "shim timeout '%u' is out of range (1 to %u seconds)",
                    seconds, SHIM_TIMEOUT_MAX_S);
        return false;
    }
    return true;
}

bool
agent_set_shim_timeout(Agent *a, guint seconds, GError **error)
{
    if (!check_shim_timeout(seconds, error))
        return false;
    g_atomic_int_set(&a->shim_timeout, (gint)seconds);
    return true;
}

guint
agent_shim_timeout(Agent *a)
{
    return (guint)g_atomic_int_get(&a->shim_timeout);
}

JsonObject *
agent_handle_command(Agent *a, JsonObject *obj)
{
    const char *command = json_util_get_string(obj, "command", NULL);

    if (!command)
        return control_reply_error("missing \"command\"");
    if (g_str_equal(command, "image-add"))
        return cmd_image_add(a, obj);
    if (g_str_equal(command, "image-list"))
        return cmd_image_list(a, obj);
    if (g_str_equal(command, "image-serve") ||
        g_str_equal(command, "image-unserve") ||
        g_str_equal(command, "image-fill") ||
        g_str_equal(command, "image-show") ||
        g_str_equal(command, "image-profile"))
        return cmd_on_image(a, command, obj);
    if (g_str_equal(command, "image-verify"))
        return cmd_image_verify(a, obj);
    if (g_str_equal(command, "image-plan"))
        return cmd_image_plan(a, obj);
    if (g_str_equal(command, "image-similarity"))
        return cmd_image_similarity(a, obj);
    if (g_str_equal(command, "peer-list"))
        return cmd_peer_list(a, obj);
    return control_reply_error("unknown command '%s'", command);
}

/* ---- sockets ----------------------------------------------------------- */

/* the control socket's handler (ControlHandler) */
static JsonObject *
on_control_request(JsonObject *request, gpointer data)
{
    return agent_handle_command(data, request);
}

static gboolean
on_fetch_run(GThreadedSocketService *svc, GSocketConnection *conn,
             GObject *source, gpointer data)
{
    Agent *a = data;
    GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(conn));
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(conn));

    for (;;) {
        guint8 buf[FETCH_REQUEST_BYTES], rbuf[FETCH_REPLY_BYTES];
        g_autoptr(GError) err = NULL;
        g_autofree char *hex = NULL;
        FetchRequest req;
        FetchReply rep = {0};
        gsize got = 0;
        AgentImage *im;

        if (!g_input_stream_read_all(in, buf, sizeof(buf), &got, NULL, NULL) ||
            got != sizeof(buf))
            break; /* EOF: the shim thread went away */
        if (!fetch_request_decode(buf, &req)) {
            g_warning("malformed request on the fetch socket; closing the "
                      "connection");
            break;
        }
        rep.tag = req.tag;
        rep.chunk = req.chunk;
        hex = spore_hex(req.image, SPORE_SHA256_BYTES);
        g_mutex_lock(&a->lock);
        im = g_hash_table_lookup(a->images, hex);
        g_mutex_unlock(&a->lock);
        if (!im) {
            rep.status = 1;
            g_snprintf(rep.message, sizeof(rep.message),
                       "image %.12s is not known to this agent", hex);
        } else if (!fetch_engine_get(im->engine, req.chunk,
                                     req.priority ? FETCH_PRIORITY_PROFILE
                                                  : FETCH_PRIORITY_DEMAND,
                                     g_get_monotonic_time() +
                                         (gint64)req.wait_ms * 1000,
                                     &err)) {
            rep.status = 1;
            g_strlcpy(rep.message, err->message, sizeof(rep.message));
            g_warning("image %.12s: %s", hex, err->message);
        }
        fetch_reply_encode(&rep, rbuf);
        if (!g_output_stream_write_all(out, rbuf, sizeof(rbuf), NULL, NULL,
                                       NULL))
            break;
    }
    return TRUE;
}

static bool
make_dir(const char *path, int mode, GError **error)
{
    if (g_mkdir_with_parents(path, mode) < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create directory '%s': %s", path,
                    g_strerror(saved));
        return false;
    }
    return true;
}

static void
on_peer_log(PeerLogLevel level, const char *message, gpointer data)
{
    g_log(G_LOG_DOMAIN,
          level == PEER_LOG_WARNING ? G_LOG_LEVEL_WARNING
          : level == PEER_LOG_INFO  ? G_LOG_LEVEL_MESSAGE
                                    : G_LOG_LEVEL_DEBUG,
          "%s", message);
}

/* The peer server and the static peer list, with the host's key pair. */
static bool
agent_start_peers(Agent *a, const AgentConfig *cfg, GError **error)
{
    PeerNetConfig pc = cfg->peer_tuning;
    WireKeys keys;

    if (!wire_keys_load_or_create(a->cfg.state_dir, &keys, error))
        return false;
    pc.listen = cfg->peer_listen;
    pc.host_name = cfg->host_name;
    memcpy(pc.public_key, keys.public_key, sizeof(pc.public_key));
    memcpy(pc.secret_key, keys.secret_key, sizeof(pc.secret_key));
    pc.log = on_peer_log;
    a->peers = peer_net_new(&pc, error);
    memset(&keys, 0, sizeof(keys));
    memset(pc.secret_key, 0, sizeof(pc.secret_key));
    if (!a->peers)
        return false;
    if (!peer_net_set_peers(a->peers, cfg->peers, cfg->n_peers, error)) {
        g_prefix_error(error, "peer list: ");
        return false;
    }
    g_message("peer server on %s, %u static peers", peer_net_endpoint(a->peers),
              cfg->n_peers);
    return true;
}

Agent *
agent_new(const AgentConfig *cfg, GError **error)
{
    g_autoptr(Agent) a = g_new0(Agent, 1);

    a->cfg = *cfg;
    a->shim_timeout = (gint)cfg->shim_timeout_s;
    /* absolute: shims (nbdkit daemons) and QEMU use these paths too */
    a->cfg.state_dir = g_canonicalize_filename(cfg->state_dir, NULL);
    a->cfg.run_dir = g_canonicalize_filename(cfg->run_dir, NULL);
    a->cfg.nbdkit = g_strdup(cfg->nbdkit);
    a->cfg.plugin = strchr(cfg->plugin, '/')
                        ? g_canonicalize_filename(cfg->plugin, NULL)
                        : g_strdup(cfg->plugin);
    a->cfg.shim_group = g_strdup(cfg->shim_group);
    /* the peer settings are used in agent_new only */
    a->cfg.host_name = NULL;
    a->cfg.peer_listen = NULL;
    a->cfg.peers = NULL;
    a->cfg.n_peers = 0;
    a->cache_root = g_build_filename(a->cfg.state_dir, "cache", NULL);
    a->images_dir = g_build_filename(a->cfg.state_dir, "images", NULL);
    a->shims_dir = g_build_filename(a->cfg.run_dir, "shims", NULL);
    a->control_path = g_build_filename(a->cfg.run_dir, "control.sock", NULL);
    a->fetch_path = g_build_filename(a->cfg.run_dir, "fetch.sock", NULL);
    a->images =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, agent_image_free);
    a->caches = cache_set_new();
    g_mutex_init(&a->lock);
    g_mutex_init(&a->add_lock);

    if (strlen(a->shims_dir) + strlen("/0123456789abcdef.sock") >=
            UNIX_PATH_BYTES ||
        strlen(a->control_path) >= UNIX_PATH_BYTES) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "run directory '%s' is too long for unix socket paths "
                    "(at most %d bytes in all)",
                    a->cfg.run_dir, UNIX_PATH_BYTES - 1);
        return NULL;
    }
    if (!check_shim_timeout(cfg->shim_timeout_s, error))
        return NULL;
    if (!make_dir(a->cache_root, 0750, error) ||
        !make_dir(a->images_dir, 0750, error) ||
        !make_dir(a->cfg.run_dir, 0755, error) ||
        !make_dir(a->shims_dir, 0750, error))
        return NULL;
    if (cfg->shim_group && *cfg->shim_group) {
        struct group *gr = getgrnam(cfg->shim_group);
        if (!gr || chown(a->shims_dir, (uid_t)-1, gr->gr_gid) < 0)
            g_warning("cannot give group '%s' the shim directory '%s'%s, "
                      "ignoring",
                      cfg->shim_group, a->shims_dir,
                      gr ? "" : " (no such group)");
    }

    if (cfg->peer_listen && *cfg->peer_listen &&
        !agent_start_peers(a, cfg, error))
        return NULL;
    agent_load_images(a);

    a->fetch = control_socket_listen(a->fetch_path, AGENT_SOCKET_MODE, NULL,
                                     SOCKET_THREADS_MAX, error);
    if (!a->fetch)
        return NULL;
    g_signal_connect(a->fetch, "run", G_CALLBACK(on_fetch_run), a);
    g_socket_service_start(a->fetch);
    a->control = control_server_start(
        a->control_path, AGENT_SOCKET_MODE, NULL, SOCKET_THREADS_MAX,
        AGENT_CONTROL_LINE_MAX_BYTES, on_control_request, a, error);
    if (!a->control)
        return NULL;
    g_message("listening on '%s' (control) and '%s' (fetch); %u images",
              a->control_path, a->fetch_path, g_hash_table_size(a->images));
    return g_steal_pointer(&a);
}

void
agent_free(Agent *a)
{
    if (!a)
        return;
    control_server_stop(a->control);
    if (a->fetch) {
        g_socket_service_stop(a->fetch);
        g_socket_listener_close(G_SOCKET_LISTENER(a->fetch));
        g_object_unref(a->fetch);
        g_unlink(a->fetch_path);
    }
    peer_net_free(a->peers); /* before the images it serves */
    g_hash_table_unref(a->images);
    cache_set_free(a->caches); /* after the caches it borrowed */
    g_mutex_clear(&a->lock);
    g_mutex_clear(&a->add_lock);
    g_free(a->cfg.state_dir);
    g_free(a->cfg.run_dir);
    g_free(a->cfg.nbdkit);
    g_free(a->cfg.plugin);
    g_free(a->cfg.shim_group);
    g_free(a->cache_root);
    g_free(a->images_dir);
    g_free(a->shims_dir);
    g_free(a->control_path);
    g_free(a->fetch_path);
    g_free(a);
}
