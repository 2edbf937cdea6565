/*
 * agent-images.c: the agent's image table: each image's cache, fetch
 * engine and record on disk, found by id; and the typed image API of
 * agent.h (but serving, in agent-shim.c).
 *
 * Image lifecycle:
 *
 *   (none) --[agent_image_add: index verified, cache opened]--> PREPARED
 *   PREPARED --[agent_image_serve: nbdkit started]--> SERVING
 *   SERVING --[agent_image_unserve: nbdkit stopped]--> PREPARED
 *   any --[agent restart: agent_images_load]--> PREPARED, or SERVING if
 *                                               its nbdkit still runs
 *
 * Invariants:
 *   1. Agent.lock guards the images table only: it is held for a lookup, an
 *      insert or a listing, never across a spawn, a poll, a fetch or any
 *      I/O, and no other lock is taken under it.  So a guest's read miss
 *      (agent-fetch.c) never waits for another image's shim or cache.
 *   2. An image, once in the table, stays there and in memory until
 *      agent_free; its identity, index, cache, engine, origins and paths
 *      never change, so they are read without a lock.
 *   3. Agent.add_lock serializes agent_image_add (opening a cache,
 *      persisting the record: I/O), so that one image is opened once;
 *      nothing on the data path takes it.
 *
 * Library code never logs; the agent's files are its top level and log
 * once per event, with g_message / g_warning (domain spore-agent).
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <errno.h>
#include <string.h>
#include <glib/gstdio.h>

#include "file-util.h"
#include "le-bytes.h"
#include "origin.h"
#include "profile.h"
#include "spore-error.h"

void
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

/* Open (or create) the cache and engine of @idx; takes a ref of @idx. */
static AgentImage *
agent_image_open(Agent *a, ImageIndex *idx, const char *const *origins,
                 GError **error)
{
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

    agent_shim_adopt(im); /* a shim left by an earlier agent */
    return im;

fail:
    g_prefix_error(error, "image %.12s: ", im->hex);
    agent_image_free(im);
    return NULL;
}

/* STATE_DIR/images/HEX.image: the record that makes a restarted agent
 * load the image */
static char *
agent_image_record_path(Agent *a, const char *id)
{
    return g_strdup_printf("%s/%s.image", a->images_dir,
                           id + strlen("sha256:"));
}

static bool
agent_image_persist(Agent *a, const char *id, const char *const *origins,
                    GError **error)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autofree char *path = agent_image_record_path(a, id);
    g_autofree char *text = NULL;
    gsize len = 0;

    g_key_file_set_string(kf, "image", "id", id);
    g_key_file_set_string_list(kf, "image", "origins", origins,
                               g_strv_length((char **)origins));
    text = g_key_file_to_data(kf, &len, NULL);
    return spore_file_write_atomic(path, text, len, 0640, error);
}

void
agent_images_load(Agent *a)
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

AgentImage *
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

AgentImage *
agent_find_image_by_digest(Agent *a, const guint8 *digest)
{
    g_autofree char *hex = spore_hex(digest, SPORE_SHA256_BYTES);
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&a->lock);

    return g_hash_table_lookup(a->images, hex);
}

GPtrArray *
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

/* Keep @profile (chunk numbers) as the site's profile of the image, named
 * @profile_id (NULL: an inline profile, unnamed). */
static bool
site_profile_store(AgentImage *im, const GArray *profile,
                   const char *profile_id, GError **error)
{
    const char *dir = chunk_cache_dir(im->cache);
    g_autofree char *path = g_build_filename(dir, SITE_PROFILE_FILE, NULL);
    g_autofree char *id_path =
        g_build_filename(dir, SITE_PROFILE_ID_FILE, NULL);
    guint n = MIN(profile->len, AGENT_PROFILE_CHUNKS_MAX);
    g_autofree guint8 *data = g_malloc((gsize)n * 8 + 1);
    guint kept = 0;

    for (guint i = 0; i < n; i++) {
        guint64 c = g_array_index(profile, guint64, i);

        if (c >= image_index_chunk_count(im->idx))
            continue; /* not a chunk of this image */
        le_put64(data + 8 * kept++, c);
    }
    /* the name goes first, so that a profile never carries another's */
    if (g_unlink(id_path) != 0 && errno != ENOENT) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "%s: %s", id_path,
                    g_strerror(errno));
        return false;
    }
    if (!spore_file_write_atomic(path, data, (gsize)kept * 8, 0640, error))
        return false;
    return !profile_id ||
           spore_file_write_atomic(id_path, profile_id, strlen(profile_id),
                                   0640, error);
}

/* site_profile_id: the name of the site profile kept (NULL: none, or an
 * unnamed one), owned by the caller */
static char *
site_profile_id(AgentImage *im)
{
    g_autofree char *path = g_build_filename(chunk_cache_dir(im->cache),
                                             SITE_PROFILE_ID_FILE, NULL);
    g_autofree char *data = NULL;
    gsize len = 0;

    if (!g_file_test(path, G_FILE_TEST_EXISTS) ||
        !spore_file_read_bounded(path, 128, &data, &len, NULL))
        return NULL;
    return g_strndup(data, len);
}

/* own_boots: whether this host recorded a boot of the image (a .prof file
 * in CACHE_DIR/profiles) */
static bool
own_boots(AgentImage *im)
{
    g_autofree char *dir =
        g_build_filename(chunk_cache_dir(im->cache), "profiles", NULL);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;

    while (d && (name = g_dir_read_name(d)))
        if (g_str_has_suffix(name, ".prof"))
            return true;
    return false;
}

/*
 * Queue the chunks earlier boots read first, in that order, right behind
 * demand misses: this host's own boots' merged access profile, or, when it
 * never booted the image, the site's.
 */
void
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

/* images_lookup: the image of id @hex in the table, or NULL; the table's
 * lock is held for the lookup only (invariant 1) */
static AgentImage *
images_lookup(Agent *a, const char *hex)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&a->lock);

    return g_hash_table_lookup(a->images, hex);
}

/* image_by_id: the image whose id is exactly @id (sha256:HEX, as the site
 * manager names it), or NULL */
static AgentImage *
image_by_id(Agent *a, const char *id)
{
    return g_str_has_prefix(id, "sha256:")
               ? images_lookup(a, id + strlen("sha256:"))
               : NULL;
}

/* images_insert: @im into the table, which owns it from here (invariant
 * 2); the table's lock is held for the insert only */
static void
images_insert(Agent *a, AgentImage *im)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&a->lock);

    g_hash_table_insert(a->images, im->hex, im);
}

/*
 * image_open_once: the image of @idx, opened, recorded and put in the table
 * when it is not there yet.  The whole function runs under Agent.add_lock
 * (invariant 3), so one image is opened once; the table's lock is taken
 * for the lookup and the insert only, never across the I/O (invariant 1).
 * Returns the image (the table's), or NULL with @error.
 */
static AgentImage *
image_open_once(Agent *a, ImageIndex *idx, const char *const *origins,
                GError **error)
{
    g_autoptr(GMutexLocker) adding = g_mutex_locker_new(&a->add_lock);
    const char *hex = image_index_id(idx) + strlen("sha256:");
    AgentImage *im = images_lookup(a, hex);

    if (im)
        return im;
    /* the record first: an open image is known to the cache set and the
     * peers, so it cannot be freed again (invariant 2) */
    if (!agent_image_persist(a, image_index_id(idx), origins, error) ||
        !(im = agent_image_open(a, idx, origins, error))) {
        g_autofree char *path = agent_image_record_path(a, image_index_id(idx));

        g_unlink(path);
        return NULL;
    }
    images_insert(a, im);
    g_message("image %.12s: added (%" G_GUINT64_FORMAT
              " chunks of %" G_GUINT64_FORMAT " bytes, origins: %s)",
              im->hex, image_index_chunk_count(idx),
              image_index_chunk_size(idx), im->origins[0]);
    return im;
}

/* ---- the typed API (agent.h) -------------------------------------------- */

bool
agent_image_add(Agent *a, ImageIndex *idx, const char *const *origins,
                const GArray *profile, char **ret_id, GError **error)
{
    const char *hex = image_index_id(idx) + strlen("sha256:");
    AgentImage *im;

    if (!origins || !origins[0]) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "image %.12s: no origin", hex);
        return false;
    }
    /* opening a cache is I/O: under add_lock, not the table's (inv. 1, 3) */
    im = image_open_once(a, idx, origins, error);
    if (!im)
        return false;
    if (profile && !site_profile_store(im, profile, NULL, error)) {
        g_prefix_error(error, "image %.12s: profile: ", im->hex);
        return false;
    }
    if (ret_id)
        *ret_id = g_strdup(im->id);
    return true;
}

bool
agent_image_add_known(Agent *a, const char *id, const GArray *profile,
                      bool *ret_known, GError **error)
{
    AgentImage *im = image_by_id(a, id);

    *ret_known = im != NULL;
    if (im && profile && !site_profile_store(im, profile, NULL, error)) {
        g_prefix_error(error, "image %.12s: profile: ", im->hex);
        return false;
    }
    return true;
}

bool
agent_image_wants_site_profile(Agent *a, const char *id, const char *profile_id)
{
    AgentImage *im = image_by_id(a, id);
    g_autofree char *kept = NULL;

    if (!im || own_boots(im))
        return false;
    kept = site_profile_id(im);
    return !kept || !g_str_equal(kept, profile_id);
}

bool
agent_image_set_site_profile(Agent *a, const char *id, const GArray *profile,
                             const char *profile_id, GError **error)
{
    AgentImage *im = image_by_id(a, id);

    if (!im) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "image %.19s is not known", id);
        return false;
    }
    if (!site_profile_store(im, profile, profile_id, error)) {
        g_prefix_error(error, "image %.12s: profile: ", im->hex);
        return false;
    }
    return true;
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

/* Rarest first: the chunks fewest peers hold come first, so that the
 * site's copies spread (and the origin-only ones are fetched early). */
bool
agent_image_fill(Agent *a, const char *name, GError **error)
{
    AgentImage *im = agent_find_image(a, name, error);
    g_autoptr(GArray) order = g_array_new(FALSE, FALSE, sizeof(FillOrder));
    guint64 nobody = 0;

    if (!im)
        return false;
    for (guint64 i = 0; i < image_index_chunk_count(im->idx); i++) {
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
    return true;
}

void
agent_image_info_free(AgentImageInfo *info)
{
    if (!info)
        return;
    g_free(info->id);
    g_strfreev(info->origins);
    g_free(info->socket);
    g_free(info->uri);
    g_free(info);
}

static AgentImageInfo *
image_snapshot(AgentImage *im)
{
    AgentImageInfo *info = g_new0(AgentImageInfo, 1);
    FetchStats st;

    fetch_engine_stats(im->engine, &st);
    info->id = g_strdup(im->id);
    info->size = image_index_image_size(im->idx);
    info->chunk_size = image_index_chunk_size(im->idx);
    info->chunks = image_index_chunk_count(im->idx);
    info->zero_chunks = image_index_zero_count(im->idx);
    info->cached_chunks = chunk_cache_stored_count(im->cache);
    info->origins = g_strdupv(im->origins);
    info->shim_pid = agent_shim_pid(im);
    info->serving = info->shim_pid != 0;
    if (info->serving) {
        info->socket = g_strdup(im->shim_socket);
        info->uri = agent_shim_uri(im);
    }
    for (int k = 0; k < FETCH_SOURCE_KINDS; k++) {
        info->fetched_bytes[k] = st.bytes[k];
        info->fetched_chunks[k] = st.chunks[k];
        info->latency_sum[k] = st.latency_sum[k];
        memcpy(info->latency_buckets[k], st.latency_buckets[k],
               sizeof(info->latency_buckets[k]));
    }
    info->rejected_chunks = st.rejected;
    info->failed_fetches = st.failed;
    info->queued_chunks = fetch_engine_queued(im->engine);
    return info;
}

AgentImageInfo *
agent_image_info(Agent *a, const char *name, GError **error)
{
    AgentImage *im = agent_find_image(a, name, error);

    return im ? image_snapshot(im) : NULL;
}

GPtrArray *
agent_image_list(Agent *a)
{
    g_autoptr(GPtrArray) images = agent_images_sorted(a);
    GPtrArray *out =
        g_ptr_array_new_with_free_func((GDestroyNotify)agent_image_info_free);

    for (guint i = 0; i < images->len; i++)
        g_ptr_array_add(out, image_snapshot(images->pdata[i]));
    return out;
}

GArray *
agent_image_profile(Agent *a, const char *name, guint *ret_boots,
                    GError **error)
{
    AgentImage *im = agent_find_image(a, name, error);
    g_autofree char *dir = NULL;
    GArray *order;

    if (!im)
        return NULL;
    dir = g_build_filename(chunk_cache_dir(im->cache), "profiles", NULL);
    order = profile_load_dir(dir, image_index_chunk_count(im->idx), ret_boots);
    if (order->len > AGENT_PROFILE_CHUNKS_MAX)
        g_array_set_size(order, AGENT_PROFILE_CHUNKS_MAX);
    return order;
}

bool
agent_image_verify(Agent *a, const char *name, AgentVerifyCounts *ret_counts,
                   GError **error)
{
    AgentImage *im = agent_find_image(a, name, error);
    guint64 bad = 0;

    if (!im)
        return false;
    if (!chunk_cache_verify_all(im->cache, &bad, error)) {
        g_prefix_error(error, "image %.12s: ", im->hex);
        return false;
    }
    g_log(G_LOG_DOMAIN, bad ? G_LOG_LEVEL_WARNING : G_LOG_LEVEL_MESSAGE,
          "image %.12s: verified the cache on request: %" G_GUINT64_FORMAT
          " chunks good, %" G_GUINT64_FORMAT " bad (dropped)",
          im->hex, chunk_cache_stored_count(im->cache), bad);
    if (ret_counts) {
        ret_counts->verified = chunk_cache_stored_count(im->cache);
        ret_counts->bad = bad;
        ret_counts->dropped = bad; /* verify_all drops every bad chunk */
    }
    return true;
}
