/*
 * agent-control.c: the control socket's commands (docs/agent-control.md):
 * each JSON request is checked and mapped to the typed API of agent.h,
 * whose result is mapped back to a JSON reply.  Nothing here holds a lock
 * of the agent: the table and image locks are taken inside the API.
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <string.h>

#include "json-util.h"
#include "profile.h"
#include "spore-error.h"

#define AGENT_CONTROL_LINE_MAX_BYTES (1024u * 1024)
/* the control socket: the agent's user only */
#define AGENT_CONTROL_SOCKET_MODE 0600
#define AGENT_CONTROL_THREADS_MAX 512

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

JsonObject *
agent_image_info_to_json(const AgentImageInfo *info)
{
    JsonObject *o = json_object_new();
    JsonArray *origins = json_array_new();
    JsonObject *fetched = json_object_new();
    guint64 nonzero = info->chunks - info->zero_chunks;

    json_object_set_string_member(o, "image", info->id);
    json_object_set_int_member(o, "size", (gint64)info->size);
    json_object_set_int_member(o, "chunk_size", (gint64)info->chunk_size);
    json_object_set_int_member(o, "chunks", (gint64)info->chunks);
    json_object_set_int_member(o, "zero_chunks", (gint64)info->zero_chunks);
    json_object_set_int_member(o, "cached_chunks", (gint64)info->cached_chunks);
    json_object_set_double_member(
        o, "cached_fraction",
        nonzero ? (double)info->cached_chunks / (double)nonzero : 1.0);
    for (guint i = 0; info->origins && info->origins[i]; i++)
        json_array_add_string_element(origins, info->origins[i]);
    json_object_set_array_member(o, "origins", origins);
    json_object_set_boolean_member(o, "serving", info->serving);
    if (info->serving) {
        json_object_set_string_member(o, "socket", info->socket);
        json_object_set_string_member(o, "uri", info->uri);
        json_object_set_int_member(o, "shim_pid", info->shim_pid);
    }
    for (int k = 0; k < FETCH_SOURCE_KINDS; k++)
        json_object_set_int_member(fetched, fetch_source_kind_name(k),
                                   (gint64)info->fetched_bytes[k]);
    json_object_set_object_member(o, "fetched_bytes", fetched);
    json_object_set_int_member(o, "rejected_chunks",
                               (gint64)info->rejected_chunks);
    json_object_set_int_member(o, "failed_fetches",
                               (gint64)info->failed_fetches);
    json_object_set_int_member(o, "queued_chunks", (gint64)info->queued_chunks);
    return o;
}

/* reply_image: {"ok": true, "image": IMAGE-OBJECT} for @name */
static JsonObject *
reply_image(Agent *a, const char *name)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(AgentImageInfo) info = agent_image_info(a, name, &err);
    JsonObject *reply;

    if (!info)
        return control_reply_error("%s", err->message);
    reply = control_reply_ok();
    json_object_set_object_member(reply, "image",
                                  agent_image_info_to_json(info));
    return reply;
}

static JsonObject *
cmd_image_add(Agent *a, JsonObject *req)
{
    const char *index_path = json_util_get_string(req, "index", NULL);
    const char *pin = json_util_get_string(req, "id", NULL);
    JsonArray *arr = json_util_get_array(req, "origins");
    JsonNode *pnode = json_object_get_member(req, "profile");
    g_autoptr(GPtrArray) origins = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) profile = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = NULL;
    g_autofree char *id = NULL;

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
    if (pnode && !(profile = json_util_chunk_numbers(pnode)))
        return control_reply_error("profile: not an array of chunk numbers");

    idx = image_index_load(index_path, pin, &err);
    if (!idx)
        return control_reply_error("%s", err->message);
    if (!agent_image_add(a, idx, (const char *const *)origins->pdata, profile,
                         &id, &err))
        return control_reply_error("%s", err->message);
    return reply_image(a, id);
}

static JsonObject *
cmd_image_list(Agent *a, JsonObject *req)
{
    g_autoptr(GPtrArray) list = agent_image_list(a);
    JsonObject *reply = control_reply_ok();
    JsonArray *images = json_array_new();

    for (guint i = 0; i < list->len; i++)
        json_array_add_object_element(images,
                                      agent_image_info_to_json(list->pdata[i]));
    json_object_set_array_member(reply, "images", images);
    return reply;
}

/* Commands that name one image: serve, unserve, fill, show, profile. */
static JsonObject *
cmd_on_image(Agent *a, const char *command, JsonObject *req)
{
    const char *name = json_util_get_string(req, "image", NULL);
    g_autoptr(GError) err = NULL;
    JsonObject *reply;
    bool ok = true;

    if (!name)
        return control_reply_error("%s needs \"image\"", command);
    if (g_str_equal(command, "image-serve"))
        ok = agent_image_serve(a, name, NULL, &err);
    else if (g_str_equal(command, "image-unserve"))
        ok = agent_image_unserve(a, name, &err);
    else if (g_str_equal(command, "image-fill"))
        ok = agent_image_fill(a, name, &err);
    if (!ok)
        return control_reply_error("%s", err->message);
    reply = reply_image(a, name);
    if (g_str_equal(command, "image-profile") &&
        json_object_get_boolean_member_with_default(reply, "ok", FALSE)) {
        guint boots = 0;
        g_autoptr(GArray) order = agent_image_profile(a, name, &boots, NULL);
        JsonObject *p = json_object_new();
        JsonArray *chunks = json_array_new();

        for (guint i = 0; order && i < order->len; i++)
            json_array_add_int_element(
                chunks, (gint64)g_array_index(order, guint64, i));
        json_object_set_int_member(p, "boots", boots);
        json_object_set_array_member(p, "chunks", chunks);
        json_object_set_object_member(reply, "profile", p);
    }
    return reply;
}

/* image-plan: where each missing byte would come from now */
static JsonObject *
cmd_image_plan(Agent *a, JsonObject *req)
{
    const char *name = json_util_get_string(req, "image", NULL);
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

/* image-verify: agent_image_verify's counts */
static JsonObject *
cmd_image_verify(Agent *a, JsonObject *req)
{
    const char *name = json_util_get_string(req, "image", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(AgentImageInfo) info = NULL;
    AgentVerifyCounts counts;
    JsonObject *reply;

    if (!name)
        return control_reply_error("image-verify needs \"image\"");
    if (!agent_image_verify(a, name, &counts, &err) ||
        !(info = agent_image_info(a, name, &err)))
        return control_reply_error("%s", err->message);
    reply = control_reply_ok();
    json_object_set_string_member(reply, "image", info->id);
    json_object_set_int_member(reply, "verified", (gint64)counts.verified);
    json_object_set_int_member(reply, "bad", (gint64)counts.bad);
    json_object_set_int_member(reply, "dropped", (gint64)counts.dropped);
    return reply;
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
        add_int(b, "missed", (gint64)p->missed);
        add_int(b, "images_dead", p->images_dead);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    return reply_from(b);
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

/* the control socket's handler (ControlHandler) */
static JsonObject *
on_control_request(JsonObject *request, gpointer data)
{
    return agent_handle_command(data, request);
}

bool
agent_control_start(Agent *a, GError **error)
{
    a->control = control_server_start(
        a->control_path, AGENT_CONTROL_SOCKET_MODE, NULL,
        AGENT_CONTROL_THREADS_MAX, AGENT_CONTROL_LINE_MAX_BYTES,
        on_control_request, a, error);
    return a->control != NULL;
}
