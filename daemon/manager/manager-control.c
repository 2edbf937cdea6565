/*
 * manager-control.c: spored's control socket (docs/site-control.md).
 *
 * Each connection runs in a thread of its own; every command takes the
 * manager's lock around its database work, and wakes the reconciliation
 * loop when it changed the desired state.  image-add downloads and indexes
 * the image without holding the lock.
 */
#include "manager-private.h"

#include <errno.h>
#include <grp.h>
#include <string.h>
#include <sys/stat.h>
#include <curl/curl.h>
#include <gio/gunixsocketaddress.h>

#include "image-index.h"
#include "spore-error.h"

/* connections served at once */
#define CONTROL_THREADS_MAX 16
#define EVENTS_LIMIT_MAX    1000

/* the control socket's mode: its owner and group administer the site */
#define CONTROL_SOCKET_MODE 0660

/* ---- objects ---------------------------------------------------------- */

static JsonArray *
host_clones(Manager *m, const char *host)
{
    HostRuntime *h = host ? g_hash_table_lookup(m->runtime, host) : NULL;

    return h && h->reported ? h->clones : NULL;
}

/* the reported clone @name on @host, or NULL */
static JsonObject *
reported_clone(Manager *m, const char *host, const char *name)
{
    JsonArray *arr = host_clones(m, host);

    for (guint i = 0; arr && i < json_array_get_length(arr); i++) {
        JsonNode *n = json_array_get_element(arr, i);

        if (JSON_NODE_HOLDS_OBJECT(n) &&
            g_strcmp0(
                json_util_get_string(json_node_get_object(n), "name", NULL),
                name) == 0)
            return json_node_get_object(n);
    }
    return NULL;
}

static JsonObject *
clone_object(Manager *m, const char *service, guint index, const char *host,
             gint64 generation)
{
    JsonObject *o = json_object_new();
    g_autofree char *name = g_strdup_printf("%s-%u", service, index);
    JsonObject *rep = reported_clone(m, host, name);
    g_autofree char *pending = NULL;
    const char *state;

    json_object_set_string_member(o, "name", name);
    json_object_set_string_member(o, "service", service);
    json_object_set_int_member(o, "index", index);
    if (host)
        json_object_set_string_member(o, "host", host);
    else
        json_object_set_null_member(o, "host");
    if (rep && json_util_get_int(rep, "generation", -1) == generation) {
        state = json_util_get_string(rep, "state", NULL);
        json_object_set_int_member(o, "generation", generation);
    } else if (rep) {
        state = "updating";
        json_object_set_int_member(o, "generation",
                                   json_util_get_int(rep, "generation", 0));
    } else {
        state = host ? "creating" : "pending";
        json_object_set_int_member(o, "generation", generation);
    }
    json_object_set_string_member(o, "state", state ? state : "unknown");
    if (rep && json_util_get_string(rep, "reason", NULL) &&
        *json_util_get_string(rep, "reason", NULL))
        json_object_set_string_member(
            o, "reason", json_util_get_string(rep, "reason", NULL));
    return o;
}

static JsonObject *
service_summary(Manager *m, sqlite3_stmt *st, guint *ret_running)
{
    /* st: name, generation, image, desired, deleting, cooldown_until */
    JsonObject *o = json_object_new();
    const char *name = mdb_col_text(st, 0);
    gint64 generation = sqlite3_column_int64(st, 1);
    Manifest *mf = manager_manifest(m, name);
    sqlite3_stmt *cs;
    guint running = 0;

    json_object_set_string_member(o, "name", name);
    json_object_set_int_member(o, "generation", generation);
    json_object_set_string_member(o, "image", mdb_col_text(st, 2));
    json_object_set_int_member(o, "min", mf ? mf->scaling.min : 0);
    json_object_set_int_member(o, "max", mf ? mf->scaling.max : 0);
    json_object_set_int_member(o, "desired", sqlite3_column_int64(st, 3));
    json_object_set_boolean_member(o, "deleting",
                                   sqlite3_column_int64(st, 4) != 0);
    json_object_set_double_member(o, "cooldown_until",
                                  sqlite3_column_double(st, 5));
    cs = mdb_prepare(m, "SELECT idx, host FROM clones WHERE service = ?",
                     G_TYPE_STRING, name, G_TYPE_INVALID);
    while (cs && sqlite3_step(cs) == SQLITE_ROW) {
        g_autofree char *cname =
            g_strdup_printf("%s-%u", name, (guint)sqlite3_column_int64(cs, 0));
        JsonObject *rep = reported_clone(
            m,
            sqlite3_column_type(cs, 1) == SQLITE_NULL ? NULL
                                                      : mdb_col_text(cs, 1),
            cname);

        if (rep && json_util_get_int(rep, "generation", -1) == generation &&
            g_strcmp0(json_util_get_string(rep, "state", NULL), "running") == 0)
            running++;
    }
    sqlite3_finalize(cs);
    json_object_set_int_member(o, "running", running);
    if (ret_running)
        *ret_running = running;
    return o;
}

#define SERVICE_COLUMNS \
    "name, generation, image, desired, deleting, cooldown_until"

/* ---- commands --------------------------------------------------------- */

static JsonObject *
cmd_submit(Manager *m, JsonObject *req)
{
    const char *text = json_util_get_string(req, "manifest", NULL);
    const char *file = json_util_get_string(req, "file", NULL);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) mf = NULL;
    g_autofree char *canonical = NULL;
    g_autofree char *old = NULL;
    JsonObject *r;
    gint64 generation, desired;
    const char *outcome;

    if (!text)
        return control_reply_error("submit needs the manifest's text");
    mf = manifest_parse_data(text, strlen(text), problems, &err);
    if (!mf) {
        JsonObject *e = json_object_new();
        JsonArray *arr = json_array_new();

        for (guint i = 0; i < problems->len; i++) {
            ManifestProblem *p = problems->pdata[i];
            JsonObject *po = json_object_new();

            json_object_set_int_member(po, "line", p->line);
            json_object_set_string_member(po, "message", p->message);
            json_array_add_object_element(arr, po);
        }
        json_object_set_boolean_member(e, "ok", FALSE);
        json_object_set_string_member(
            e, "error", err ? err->message : "the manifest is not valid");
        json_object_set_array_member(e, "problems", arr);
        return e;
    }
    canonical = manifest_format(mf);
    g_mutex_lock(&m->lock);
    if (!mdb_int(m, 0, "SELECT COUNT(*) FROM images WHERE name = ?",
                 G_TYPE_STRING, mf->image.name, G_TYPE_INVALID)) {
        g_mutex_unlock(&m->lock);
        return control_reply_error(
            "%s: image '%s' is not registered with the site "
            "manager: sporectl image-add %s URL",
            file ? file : "manifest", mf->image.name, mf->image.name);
    }
    if (mdb_int(m, 0, "SELECT deleting FROM services WHERE name = ?",
                G_TYPE_STRING, mf->name, G_TYPE_INVALID)) {
        g_mutex_unlock(&m->lock);
        return control_reply_error(
            "service '%s' is being deleted; submit it again "
            "once it is gone",
            mf->name);
    }
    old = mdb_text(m, "SELECT manifest FROM services WHERE name = ?",
                   G_TYPE_STRING, mf->name, G_TYPE_INVALID);
    if (old && g_str_equal(old, canonical)) {
        outcome = "unchanged";
        generation =
            mdb_int(m, 0, "SELECT generation FROM services WHERE name = ?",
                    G_TYPE_STRING, mf->name, G_TYPE_INVALID);
    } else if (old) {
        outcome = "updated";
        generation =
            mdb_int(m, 0, "SELECT generation FROM services WHERE name = ?",
                    G_TYPE_STRING, mf->name, G_TYPE_INVALID) +
            1;
        desired = mdb_int(m, mf->scaling.initial,
                          "SELECT desired FROM services WHERE name = ?",
                          G_TYPE_STRING, mf->name, G_TYPE_INVALID);
        desired =
            CLAMP(desired, (gint64)mf->scaling.min, (gint64)mf->scaling.max);
        mdb_exec(m,
                 "UPDATE services SET manifest = ?, generation = ?, image = "
                 "?, desired = ?, updated = ? WHERE name = ?",
                 G_TYPE_STRING, canonical, G_TYPE_INT64, generation,
                 G_TYPE_STRING, mf->image.name, G_TYPE_INT64, desired,
                 G_TYPE_DOUBLE, mdb_now(), G_TYPE_STRING, mf->name,
                 G_TYPE_INVALID);
        mdb_event(m, "service-updated", mf->name, NULL,
                  "service %s updated to generation %" G_GINT64_FORMAT
                  " (%" G_GINT64_FORMAT " clones)",
                  mf->name, generation, desired);
    } else {
        outcome = "created";
        generation = 1;
        mdb_exec(m,
                 "INSERT INTO services (name, manifest, generation, image, "
                 "desired, updated) VALUES (?, ?, 1, ?, ?, ?)",
                 G_TYPE_STRING, mf->name, G_TYPE_STRING, canonical,
                 G_TYPE_STRING, mf->image.name, G_TYPE_INT64,
                 (gint64)mf->scaling.initial, G_TYPE_DOUBLE, mdb_now(),
                 G_TYPE_INVALID);
        mdb_event(m, "service-created", mf->name, NULL,
                  "service %s created: %u clones of image %s", mf->name,
                  mf->scaling.initial, mf->image.name);
    }
    g_mutex_unlock(&m->lock);
    manager_wake(m);
    r = control_reply_ok();
    json_object_set_string_member(r, "service", mf->name);
    json_object_set_int_member(r, "generation", generation);
    json_object_set_string_member(r, "outcome", outcome);
    return r;
}

static JsonObject *
cmd_service_list(Manager *m)
{
    JsonObject *r = control_reply_ok();
    JsonArray *arr = json_array_new();
    sqlite3_stmt *st;

    g_mutex_lock(&m->lock);
    st = mdb_prepare(m,
                     "SELECT " SERVICE_COLUMNS " FROM services ORDER BY "
                     "name",
                     G_TYPE_INVALID);
    while (st && sqlite3_step(st) == SQLITE_ROW)
        json_array_add_object_element(arr, service_summary(m, st, NULL));
    sqlite3_finalize(st);
    g_mutex_unlock(&m->lock);
    json_object_set_array_member(r, "services", arr);
    return r;
}

static JsonArray *
clones_of(Manager *m, const char *service)
{
    JsonArray *arr = json_array_new();
    sqlite3_stmt *st = mdb_prepare(
        m,
        "SELECT c.service, c.idx, c.host, s.generation FROM clones c JOIN "
        "services s ON s.name = c.service WHERE ?1 IS NULL OR c.service = ?1 "
        "ORDER BY c.service, c.idx",
        G_TYPE_STRING, service, G_TYPE_INVALID);

    while (st && sqlite3_step(st) == SQLITE_ROW)
        json_array_add_object_element(
            arr, clone_object(m, mdb_col_text(st, 0),
                              (guint)sqlite3_column_int64(st, 1),
                              sqlite3_column_type(st, 2) == SQLITE_NULL
                                  ? NULL
                                  : mdb_col_text(st, 2),
                              sqlite3_column_int64(st, 3)));
    sqlite3_finalize(st);
    return arr;
}

static JsonObject *
cmd_service_show(Manager *m, JsonObject *req)
{
    const char *name = json_util_get_string(req, "name", NULL);
    JsonObject *r, *svc;
    sqlite3_stmt *st;

    if (!name)
        return control_reply_error("service-show needs a service name");
    g_mutex_lock(&m->lock);
    st = mdb_prepare(m,
                     "SELECT " SERVICE_COLUMNS ", manifest FROM services "
                     "WHERE name = ?",
                     G_TYPE_STRING, name, G_TYPE_INVALID);
    if (!st || sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        g_mutex_unlock(&m->lock);
        return control_reply_error("no service '%s'", name);
    }
    svc = service_summary(m, st, NULL);
    json_object_set_string_member(svc, "manifest", mdb_col_text(st, 6));
    {
        Manifest *mf = manager_manifest(m, name);

        if (mf)
            json_object_set_array_member(svc, "rules",
                                         mscale_rules_status(m, name, mf));
    }
    sqlite3_finalize(st);
    json_object_set_array_member(svc, "clones", clones_of(m, name));
    g_mutex_unlock(&m->lock);
    r = control_reply_ok();
    json_object_set_object_member(r, "service", svc);
    return r;
}

static JsonObject *
cmd_service_delete(Manager *m, JsonObject *req)
{
    const char *name = json_util_get_string(req, "name", NULL);
    JsonObject *r;

    if (!name)
        return control_reply_error("service-delete needs a service name");
    g_mutex_lock(&m->lock);
    if (!mdb_int(m, 0, "SELECT COUNT(*) FROM services WHERE name = ?",
                 G_TYPE_STRING, name, G_TYPE_INVALID)) {
        g_mutex_unlock(&m->lock);
        return control_reply_error("no service '%s'", name);
    }
    mdb_exec(m, "UPDATE services SET deleting = 1 WHERE name = ?",
             G_TYPE_STRING, name, G_TYPE_INVALID);
    mdb_event(m, "service-deleting", name, NULL,
              "service %s is being deleted: its clones are shut down and "
              "removed",
              name);
    g_mutex_unlock(&m->lock);
    manager_wake(m);
    r = control_reply_ok();
    json_object_set_string_member(r, "service", name);
    return r;
}

static JsonObject *
cmd_scale(Manager *m, JsonObject *req)
{
    const char *name = json_util_get_string(req, "name", NULL);
    gint64 count = json_util_get_int(req, "count", -1);
    Manifest *mf;
    gint64 before;
    JsonObject *r;

    if (!name || count < 0)
        return control_reply_error(
            "scale needs a service name and a count >= 0");
    g_mutex_lock(&m->lock);
    mf = manager_manifest(m, name);
    if (!mf || mdb_int(m, 0, "SELECT deleting FROM services WHERE name = ?",
                       G_TYPE_STRING, name, G_TYPE_INVALID)) {
        g_mutex_unlock(&m->lock);
        return control_reply_error("no service '%s'", name);
    }
    if (count < mf->scaling.min || count > mf->scaling.max) {
        guint min = mf->scaling.min, max = mf->scaling.max;

        g_mutex_unlock(&m->lock);
        return control_reply_error(
            "service '%s' runs between %u and %u clones (its "
            "manifest's <scaling>); %" G_GINT64_FORMAT " is outside",
            name, min, max, count);
    }
    before = mdb_int(m, 0, "SELECT desired FROM services WHERE name = ?",
                     G_TYPE_STRING, name, G_TYPE_INVALID);
    mdb_exec(m,
             "UPDATE services SET desired = ?, cooldown_until = ? WHERE "
             "name = ?",
             G_TYPE_INT64, count, G_TYPE_DOUBLE,
             mdb_now() + mf->scaling.cooldown_seconds, G_TYPE_STRING, name,
             G_TYPE_INVALID);
    mdb_event(m, "scaled", name, NULL,
              "service %s scaled by hand from %" G_GINT64_FORMAT
              " to %" G_GINT64_FORMAT " clones (cooldown %u s)",
              name, before, count, mf->scaling.cooldown_seconds);
    g_mutex_unlock(&m->lock);
    manager_wake(m);
    r = control_reply_ok();
    json_object_set_string_member(r, "service", name);
    json_object_set_int_member(r, "desired", count);
    return r;
}

static JsonObject *
cmd_request(Manager *m, JsonObject *req)
{
    const char *name = json_util_get_string(req, "name", NULL);
    gint64 count = json_util_get_int(req, "count", 1);
    JsonObject *r;

    if (!name || count < 0 || count > G_MAXINT32)
        return control_reply_error(
            "request needs a service name and a count >= 0");
    g_mutex_lock(&m->lock);
    if (!mdb_int(m, 0, "SELECT COUNT(*) FROM services WHERE name = ?",
                 G_TYPE_STRING, name, G_TYPE_INVALID)) {
        g_mutex_unlock(&m->lock);
        return control_reply_error("no service '%s'", name);
    }
    mscale_requests(m, name, count);
    g_mutex_unlock(&m->lock);
    r = control_reply_ok();
    json_object_set_string_member(r, "service", name);
    json_object_set_int_member(r, "count", count);
    return r;
}

static JsonObject *
cmd_clone_list(Manager *m, JsonObject *req)
{
    JsonObject *r = control_reply_ok();

    g_mutex_lock(&m->lock);
    json_object_set_array_member(
        r, "clones", clones_of(m, json_util_get_string(req, "service", NULL)));
    g_mutex_unlock(&m->lock);
    return r;
}

static JsonObject *
cmd_host_list(Manager *m)
{
    JsonObject *r = control_reply_ok();
    JsonArray *arr = json_array_new();
    sqlite3_stmt *st;

    g_mutex_lock(&m->lock);
    st = mdb_prepare(m,
                     "SELECT name, key, address, accepted, cpus, memory_kib, "
                     "lost, (SELECT COUNT(*) FROM clones c WHERE c.host = "
                     "h.name) FROM hosts h ORDER BY name",
                     G_TYPE_INVALID);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        JsonObject *o = json_object_new();
        const char *name = mdb_col_text(st, 0);
        HostRuntime *h = g_hash_table_lookup(m->runtime, name);
        bool accepted = sqlite3_column_int64(st, 3) != 0;
        const char *state;

        if (!accepted)
            state = "pending";
        else if (sqlite3_column_int64(st, 6))
            state = "lost";
        else if (h && h->heard &&
                 g_get_monotonic_time() - h->last_seen <
                     (gint64)m->config.lost_after_s * G_USEC_PER_SEC)
            state = "up";
        else
            state = "down";
        json_object_set_string_member(o, "name", name);
        json_object_set_string_member(o, "state", state);
        json_object_set_boolean_member(o, "accepted", accepted);
        json_object_set_string_member(o, "key", mdb_col_text(st, 1));
        json_object_set_string_member(o, "address", mdb_col_text(st, 2));
        json_object_set_int_member(o, "cpus", sqlite3_column_int64(st, 4));
        json_object_set_int_member(o, "memory_kib",
                                   sqlite3_column_int64(st, 5));
        json_object_set_int_member(o, "clones", sqlite3_column_int64(st, 7));
        if (h && h->heard)
            json_object_set_double_member(
                o, "last_seen",
                (double)(g_get_monotonic_time() - h->last_seen) /
                    G_USEC_PER_SEC);
        else
            json_object_set_null_member(o, "last_seen");
        json_array_add_object_element(arr, o);
    }
    sqlite3_finalize(st);
    g_mutex_unlock(&m->lock);
    json_object_set_array_member(r, "hosts", arr);
    return r;
}

static JsonObject *
cmd_host_accept(Manager *m, JsonObject *req)
{
    const char *name = json_util_get_string(req, "name", NULL);
    JsonObject *r;

    if (!name)
        return control_reply_error("host-accept needs a host name");
    g_mutex_lock(&m->lock);
    if (!mdb_int(m, 0, "SELECT COUNT(*) FROM hosts WHERE name = ?",
                 G_TYPE_STRING, name, G_TYPE_INVALID)) {
        g_mutex_unlock(&m->lock);
        return control_reply_error(
            "no host '%s' has tried to connect (see sporectl "
            "host-list; or place its key in the hosts "
            "directory)",
            name);
    }
    mdb_exec(m, "UPDATE hosts SET accepted = 1 WHERE name = ?", G_TYPE_STRING,
             name, G_TYPE_INVALID);
    mdb_event(m, "host-accepted", NULL, name, "host %s accepted", name);
    g_mutex_unlock(&m->lock);
    r = control_reply_ok();
    json_object_set_string_member(r, "host", name);
    return r;
}

/* ---- images ----------------------------------------------------------- */

static size_t
on_image_data(char *data, size_t size, size_t n, void *user)
{
    return image_index_builder_feed(user, data, size * n) ? size * n : 0;
}

/* index_from_origin: download @url once and index it on the way */
static ImageIndex *
index_from_origin(const char *url, GError **error)
{
    g_autoptr(ImageIndexBuilder) b =
        image_index_builder_new(IMAGE_INDEX_CHUNK_SHIFT_DEFAULT);
    CURL *curl = curl_easy_init();
    char errbuf[CURL_ERROR_SIZE] = "";
    CURLcode rc;

    if (!curl) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot download %s: libcurl cannot make a handle", url);
        return NULL;
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https,file");
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_image_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    rc = curl_easy_perform(curl);
    curl_easy_cleanup(curl);
    if (rc != CURLE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot download %s: %s", url,
                    *errbuf ? errbuf : curl_easy_strerror(rc));
        return NULL;
    }
    return image_index_builder_finish(b, error);
}

static JsonObject *
cmd_image_add(Manager *m, JsonObject *req)
{
    const char *name = json_util_get_string(req, "name", NULL);
    const char *url = json_util_get_string(req, "url", NULL);
    const char *index_b64 = json_util_get_string(req, "index", NULL);
    const char *format = json_util_get_string(req, "format", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = NULL;
    g_autoptr(JsonArray) origins = json_array_new();
    g_autofree char *origins_text = NULL;
    g_autofree char *old_id = NULL;
    JsonObject *r, *im;
    GBytes *enc;

    if (!name || !url)
        return control_reply_error("image-add needs a name and a URL");
    if (!g_str_has_prefix(url, "http://") &&
        !g_str_has_prefix(url, "https://") && !g_str_has_prefix(url, "file://"))
        return control_reply_error("image URL '%s' is not http, https or file",
                                   url);
    if (format && !g_str_equal(format, "raw") && !g_str_equal(format, "qcow2"))
        return control_reply_error("image format '%s' is not raw or qcow2",
                                   format);
    if (index_b64) {
        gsize len = 0;
        g_autofree guint8 *data = g_base64_decode(index_b64, &len);

        idx = image_index_parse(data, len, NULL, &err);
        if (!idx)
            return control_reply_error("the index given for image '%s': %s",
                                       name, err->message);
    } else {
        g_message("indexing image %s from %s", name, url);
        idx = index_from_origin(url, &err);
        if (!idx)
            return control_reply_error("image '%s': %s", name, err->message);
    }
    json_array_add_string_element(origins, url);
    {
        g_autoptr(JsonNode) node = json_node_new(JSON_NODE_ARRAY);
        g_autoptr(JsonGenerator) gen = json_generator_new();

        json_node_set_array(node, origins);
        json_generator_set_root(gen, node);
        origins_text = json_generator_to_data(gen, NULL);
    }
    enc = image_index_encoding(idx);
    g_mutex_lock(&m->lock);
    old_id = mdb_text(m, "SELECT id FROM images WHERE name = ?", G_TYPE_STRING,
                      name, G_TYPE_INVALID);
    if (old_id && !g_str_equal(old_id, image_index_id(idx))) {
        g_mutex_unlock(&m->lock);
        return control_reply_error(
            "image '%s' is registered with id %s; this one is "
            "%s (an image's content never changes: give the "
            "new one another name)",
            name, old_id, image_index_id(idx));
    }
    mdb_exec(m,
             "INSERT OR REPLACE INTO images (name, id, format, origins, idx, "
             "size, chunk_size, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
             G_TYPE_STRING, name, G_TYPE_STRING, image_index_id(idx),
             G_TYPE_STRING, format ? format : "raw", G_TYPE_STRING,
             origins_text, G_TYPE_BYTES, enc, G_TYPE_INT64,
             (gint64)image_index_image_size(idx), G_TYPE_INT64,
             (gint64)image_index_chunk_size(idx), G_TYPE_DOUBLE, mdb_now(),
             G_TYPE_INVALID);
    mdb_event(m, "image-added", NULL, NULL, "image %s registered: %s, %s", name,
              image_index_id(idx), url);
    g_mutex_unlock(&m->lock);
    r = control_reply_ok();
    im = json_object_new();
    json_object_set_string_member(im, "name", name);
    json_object_set_string_member(im, "id", image_index_id(idx));
    json_object_set_int_member(im, "size", (gint64)image_index_image_size(idx));
    json_object_set_int_member(im, "chunk_size",
                               (gint64)image_index_chunk_size(idx));
    json_object_set_array_member(im, "origins", json_array_ref(origins));
    json_object_set_object_member(r, "image", im);
    return r;
}

static JsonObject *
cmd_image_list(Manager *m)
{
    JsonObject *r = control_reply_ok();
    JsonArray *arr = json_array_new();
    sqlite3_stmt *st;

    g_mutex_lock(&m->lock);
    st = mdb_prepare(m,
                     "SELECT name, id, size, chunk_size, origins FROM images "
                     "ORDER BY name",
                     G_TYPE_INVALID);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        JsonObject *o = json_object_new();
        JsonArray *hosts = json_array_new();
        g_autoptr(JsonParser) p = json_parser_new();
        sqlite3_stmt *hs;

        json_object_set_string_member(o, "name", mdb_col_text(st, 0));
        json_object_set_string_member(o, "id", mdb_col_text(st, 1));
        json_object_set_int_member(o, "size", sqlite3_column_int64(st, 2));
        json_object_set_int_member(o, "chunk_size",
                                   sqlite3_column_int64(st, 3));
        if (json_parser_load_from_data(p, mdb_col_text(st, 4), -1, NULL))
            json_object_set_member(o, "origins",
                                   json_node_copy(json_parser_get_root(p)));
        hs = mdb_prepare(m,
                         "SELECT h.host, h.cached, h.origin_bytes, "
                         "h.peer_bytes, h.local_bytes, p.boots, "
                         "json_array_length(p.chunks) FROM host_images h "
                         "LEFT JOIN profiles p ON p.host = h.host AND "
                         "p.image = h.image WHERE h.image = ? ORDER BY "
                         "h.host",
                         G_TYPE_STRING, mdb_col_text(st, 1), G_TYPE_INVALID);
        while (hs && sqlite3_step(hs) == SQLITE_ROW) {
            JsonObject *h = json_object_new();
            JsonObject *f = json_object_new();

            json_object_set_string_member(h, "host", mdb_col_text(hs, 0));
            json_object_set_double_member(h, "cached_fraction",
                                          sqlite3_column_double(hs, 1));
            json_object_set_int_member(f, "origin",
                                       sqlite3_column_int64(hs, 2));
            json_object_set_int_member(f, "peer", sqlite3_column_int64(hs, 3));
            json_object_set_int_member(f, "local", sqlite3_column_int64(hs, 4));
            json_object_set_object_member(h, "fetched", f);
            if (sqlite3_column_type(hs, 5) != SQLITE_NULL) {
                JsonObject *pr = json_object_new();

                json_object_set_int_member(pr, "boots",
                                           sqlite3_column_int64(hs, 5));
                json_object_set_int_member(pr, "chunks",
                                           sqlite3_column_int64(hs, 6));
                json_object_set_object_member(h, "profile", pr);
            }
            json_array_add_object_element(hosts, h);
        }
        sqlite3_finalize(hs);
        json_object_set_array_member(o, "hosts", hosts);
        json_array_add_object_element(arr, o);
    }
    sqlite3_finalize(st);
    g_mutex_unlock(&m->lock);
    json_object_set_array_member(r, "images", arr);
    return r;
}

static JsonObject *
cmd_events(Manager *m, JsonObject *req)
{
    gint64 since = json_util_get_int(req, "since", 0);
    gint64 limit =
        CLAMP(json_util_get_int(req, "limit", 100), 1, EVENTS_LIMIT_MAX);
    const char *service = json_util_get_string(req, "service", NULL);
    JsonObject *r = control_reply_ok();
    JsonArray *arr = json_array_new();
    sqlite3_stmt *st;

    g_mutex_lock(&m->lock);
    /* the newest LIMIT after SINCE, oldest first */
    st = mdb_prepare(m,
                     "SELECT * FROM (SELECT id, time, kind, service, host, "
                     "message FROM events WHERE id > ? AND (? IS NULL OR "
                     "service = ?) ORDER BY id DESC LIMIT ?) ORDER BY id",
                     G_TYPE_INT64, since, G_TYPE_STRING, service, G_TYPE_STRING,
                     service, G_TYPE_INT64, limit, G_TYPE_INVALID);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        JsonObject *o = json_object_new();

        json_object_set_int_member(o, "id", sqlite3_column_int64(st, 0));
        json_object_set_double_member(o, "time", sqlite3_column_double(st, 1));
        json_object_set_string_member(o, "kind", mdb_col_text(st, 2));
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            json_object_set_string_member(o, "service", mdb_col_text(st, 3));
        else
            json_object_set_null_member(o, "service");
        if (sqlite3_column_type(st, 4) != SQLITE_NULL)
            json_object_set_string_member(o, "host", mdb_col_text(st, 4));
        else
            json_object_set_null_member(o, "host");
        json_object_set_string_member(o, "message", mdb_col_text(st, 5));
        json_array_add_object_element(arr, o);
    }
    sqlite3_finalize(st);
    g_mutex_unlock(&m->lock);
    json_object_set_array_member(r, "events", arr);
    return r;
}

/* the control socket's handler (ControlHandler), on the connection's
 * thread */
static JsonObject *
manager_handle_control(JsonObject *req, gpointer data)
{
    Manager *m = data;
    const char *cmd = json_util_get_string(req, "cmd", NULL);

    if (!cmd)
        return control_reply_error("the request has no \"cmd\"");
    if (g_str_equal(cmd, "submit"))
        return cmd_submit(m, req);
    if (g_str_equal(cmd, "service-list"))
        return cmd_service_list(m);
    if (g_str_equal(cmd, "service-show"))
        return cmd_service_show(m, req);
    if (g_str_equal(cmd, "service-delete"))
        return cmd_service_delete(m, req);
    if (g_str_equal(cmd, "scale"))
        return cmd_scale(m, req);
    if (g_str_equal(cmd, "clone-list"))
        return cmd_clone_list(m, req);
    if (g_str_equal(cmd, "request"))
        return cmd_request(m, req);
    if (g_str_equal(cmd, "host-list"))
        return cmd_host_list(m);
    if (g_str_equal(cmd, "host-accept"))
        return cmd_host_accept(m, req);
    if (g_str_equal(cmd, "image-add"))
        return cmd_image_add(m, req);
    if (g_str_equal(cmd, "image-list"))
        return cmd_image_list(m);
    if (g_str_equal(cmd, "events"))
        return cmd_events(m, req);
    return control_reply_error("unknown command '%s'", cmd);
}

/* ---- the socket ------------------------------------------------------- */

bool
manager_control_start(Manager *m, GError **error)
{
    m->control_path = g_build_filename(m->config.run_dir, "control.sock", NULL);
    /* who may administer the site: the socket's owner and group */
    m->control = control_server_start(
        m->control_path, CONTROL_SOCKET_MODE, m->config.control_group,
        CONTROL_THREADS_MAX, CONTROL_LINE_MAX_BYTES, manager_handle_control, m,
        error);
    return m->control != NULL;
}

void
manager_control_stop(Manager *m)
{
    g_clear_pointer(&m->control, control_server_stop);
}
