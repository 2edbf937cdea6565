/*
 * manager.c: spored's transport (ZeroMQ ROUTER with CURVE, the ZAP
 * handler) and its reconciliation loop (see manager.h).
 *
 * Reconciliation, once a second and after anything changes:
 *   1. hosts silent for lost_after_s are lost: their clones are unplaced
 *      (a host counts as heard from when the manager starts, so that one
 *      down across a restart is lost too: seed_runtime);
 *   2. each service gets exactly its desired clone rows (0..desired-1);
 *   3. unplaced clones are placed (placement.c);
 *   4. per host that has reported since the manager started: each of its
 *      desired clones missing from the report is created (one command per
 *      service: one appliance launch), each reported clone that is not
 *      desired there, or is of another version (UUID), is destroyed;
 *   5. commands not acknowledged within resend_s are sent again.
 * Agents apply a command id once; creating and destroying are idempotent
 * anyway (UUIDs), so re-sending is always safe.
 */
#include "manager-private.h"

#include <errno.h>
#include <string.h>
#include <glib-unix.h>
#include <zmq.h>

#include "clone-host.h"
#include "metrics.h"
#include "placement.h"
#include "spore-error.h"
#include "zmq-zap.h"

#define TICK_MS         1000
#define DRAIN_MS        100
#define REFUSAL_LOG_US  (60 * G_USEC_PER_SEC)
#define PEERS_RESEND_US (30 * G_USEC_PER_SEC)

static void
host_runtime_free(gpointer p)
{
    HostRuntime *h = p;

    g_free(h->name);
    g_free(h->boot);
    g_free(h->peer_endpoint);
    if (h->clones)
        json_array_unref(h->clones);
    if (h->images)
        json_array_unref(h->images);
    g_free(h);
}

static HostRuntime *
runtime_get(Manager *m, const char *name)
{
    HostRuntime *h = g_hash_table_lookup(m->runtime, name);

    if (!h) {
        h = g_new0(HostRuntime, 1);
        h->name = g_strdup(name);
        g_hash_table_insert(m->runtime, h->name, h);
    }
    return h;
}

static bool
host_is_up(Manager *m, const char *name)
{
    HostRuntime *h = g_hash_table_lookup(m->runtime, name);

    return h && h->last_seen > 0 &&
           g_get_monotonic_time() - h->last_seen <
               (gint64)m->config.lost_after_s * G_USEC_PER_SEC;
}

Manifest *
manager_manifest(Manager *m, const char *service)
{
    g_autofree char *key = NULL;
    g_autofree char *text = NULL;
    gint64 generation;
    Manifest *mf;

    generation =
        mdb_int(m, -1, "SELECT generation FROM services WHERE name = ?",
                G_TYPE_STRING, service, G_TYPE_INVALID);
    if (generation < 0)
        return NULL;
    key = g_strdup_printf("%s:%" G_GINT64_FORMAT, service, generation);
    mf = g_hash_table_lookup(m->manifests, key);
    if (mf)
        return mf;
    text = mdb_text(m, "SELECT manifest FROM services WHERE name = ?",
                    G_TYPE_STRING, service, G_TYPE_INVALID);
    mf = text ? manifest_parse_data(text, strlen(text), NULL, NULL) : NULL;
    if (!mf) {
        g_warning("service %s: its stored manifest does not parse", service);
        return NULL;
    }
    g_hash_table_insert(m->manifests, g_steal_pointer(&key), mf);
    return mf;
}

/* ---- ZAP: who may connect ------------------------------------------- */

/* accept_from_dir: a key placed as HOSTS_DIR/NAME.pub is accepted as
 * host NAME; the name, or NULL */
static char *
accept_from_dir(Manager *m, const char *key)
{
    g_autoptr(GDir) dir = NULL;
    const char *entry;

    if (!m->config.hosts_dir ||
        !(dir = g_dir_open(m->config.hosts_dir, 0, NULL)))
        return NULL;
    while ((entry = g_dir_read_name(dir))) {
        g_autofree char *path = NULL;
        g_autofree char *file_key = NULL;
        g_autofree char *name = NULL;

        if (!g_str_has_suffix(entry, ".pub"))
            continue;
        name = g_strndup(entry, strlen(entry) - 4);
        if (!wire_host_name_valid(name))
            continue;
        path = g_build_filename(m->config.hosts_dir, entry, NULL);
        file_key = wire_key_read_file(path, NULL);
        if (!file_key || !g_str_equal(file_key, key))
            continue;
        mdb_exec(m, "DELETE FROM hosts WHERE name = ? OR key = ?",
                 G_TYPE_STRING, name, G_TYPE_STRING, key, G_TYPE_INVALID);
        mdb_exec(m,
                 "INSERT INTO hosts (name, key, accepted, first_seen) "
                 "VALUES (?, ?, 1, ?)",
                 G_TYPE_STRING, name, G_TYPE_STRING, key, G_TYPE_DOUBLE,
                 mdb_now(), G_TYPE_INVALID);
        mdb_event(m, "host-accepted", NULL, name,
                  "host %s accepted: its key is in %s", name, path);
        return g_steal_pointer(&name);
    }
    return NULL;
}

/* should_log_refusal: once a minute per key, not at every reconnect */
static bool
should_log_refusal(Manager *m, const char *key)
{
    gint64 now = g_get_monotonic_time();
    gint64 *last = g_hash_table_lookup(m->refused, key);

    if (last && now - *last < REFUSAL_LOG_US)
        return false;
    last = g_new(gint64, 1);
    *last = now;
    g_hash_table_insert(m->refused, g_strdup(key), last);
    return true;
}

/*
 * zap_decide: the user id for an admitted client, or NULL.  The agents'
 * socket (domain "spore") admits accepted host keys only, with the host's
 * name as user id; the registration socket ("spore-register") admits any
 * CURVE key, with the key as user id, and only ever answers "register".
 */
static char *
zap_decide(Manager *m, const char *domain, const char *address,
           const char *mechanism, const char *key, const char **why)
{
    g_autofree char *name = NULL;

    if (!g_str_equal(mechanism, "CURVE") || !key) {
        *why = "CURVE only";
        return NULL;
    }
    if (g_str_equal(domain, WIRE_ZAP_REGISTER_DOMAIN))
        return g_strdup(key);
    if (!g_str_equal(domain, WIRE_ZAP_DOMAIN)) {
        *why = "unknown ZAP domain";
        return NULL;
    }
    name = mdb_text(m, "SELECT name FROM hosts WHERE key = ? AND accepted = 1",
                    G_TYPE_STRING, key, G_TYPE_INVALID);
    if (!name)
        name = accept_from_dir(m, key);
    if (name)
        return g_steal_pointer(&name);
    if (should_log_refusal(m, key)) {
        g_autofree char *pending =
            mdb_text(m, "SELECT name FROM hosts WHERE key = ?", G_TYPE_STRING,
                     key, G_TYPE_INVALID);

        if (pending)
            mdb_event(m, "host-refused", NULL, pending,
                      "refused host %s from %s: its key is not accepted "
                      "(sporectl host-accept %s)",
                      pending, address, pending);
        else
            mdb_event(m, "host-refused", NULL, NULL,
                      "refused an unknown key from %s (%s): not accepted",
                      address, key);
    }
    *why = "host key not accepted";
    return NULL;
}

/* decide_locked: zap_decide under the manager's lock (the ZAP handler's
 * callback) */
static char *
decide_locked(const char *domain, const char *address, const char *mechanism,
              const char *key, const char **why, gpointer data)
{
    Manager *m = data;
    char *user;

    g_mutex_lock(&m->lock);
    user = zap_decide(m, domain, address, mechanism, key, why);
    g_mutex_unlock(&m->lock);
    return user;
}

static void
zap_drain(Manager *m)
{
    spore_zap_drain(m->zap, decide_locked, m);
}

/* ---- messages from agents -------------------------------------------- */

static void
send_to(Manager *m, const char *host, JsonObject *msg)
{
    if (!wire_send(m->router, host, msg))
        g_debug("could not send to %s: %s", host, zmq_strerror(zmq_errno()));
}

static void
handle_hello(Manager *m, const char *host, const char *address, JsonObject *msg)
{
    HostRuntime *h = runtime_get(m, host);
    const char *boot = json_util_get_string(msg, "boot", NULL);
    JsonObject *cap =
        json_object_get_member(msg, "capacity") &&
                JSON_NODE_HOLDS_OBJECT(json_object_get_member(msg, "capacity"))
            ? json_object_get_object_member(msg, "capacity")
            : NULL;
    g_autoptr(JsonObject) welcome = wire_new("welcome");
    bool restarted = h->boot && boot && !g_str_equal(h->boot, boot);

    mdb_exec(m,
             "UPDATE hosts SET address = ?, cpus = ?, memory_kib = ?, "
             "virt = ?, last_seen = ? WHERE name = ?",
             G_TYPE_STRING, address, G_TYPE_INT64, json_util_get_int(cap, "cpus", 0),
             G_TYPE_INT64, json_util_get_int(cap, "memory_kib", 0), G_TYPE_STRING,
             json_util_get_string(msg, "virt", NULL), G_TYPE_DOUBLE, mdb_now(),
             G_TYPE_STRING, host, G_TYPE_INVALID);
    if (!h->boot || restarted)
        mdb_event(m, restarted ? "host-restarted" : "host-connected", NULL,
                  host,
                  "host %s %s from %s (%" G_GINT64_FORMAT
                  " CPUs, %" G_GINT64_FORMAT " MiB)",
                  host, restarted ? "restarted" : "connected", address,
                  json_util_get_int(cap, "cpus", 0),
                  json_util_get_int(cap, "memory_kib", 0) / 1024);
    g_free(h->boot);
    h->boot = g_strdup(boot);
    h->last_seen = g_get_monotonic_time();
    {
        const char *peer = json_util_get_string(msg, "peer_endpoint", NULL);

        g_clear_pointer(&h->peer_endpoint, g_free);
        if (peer && g_str_has_prefix(peer, "tcp://") &&
            strlen(peer) <= WIRE_ENDPOINT_MAX)
            h->peer_endpoint = g_strdup(peer);
        m->peers_sent = 0; /* everyone's peer list may change */
    }
    /* whatever it was sent before may be lost: send it again now */
    mdb_exec(m,
             "UPDATE commands SET sent = 0 WHERE host = ? AND state = "
             "'pending'",
             G_TYPE_STRING, host, G_TYPE_INVALID);
    json_object_set_int_member(welcome, "report_ms", 2000);
    send_to(m, host, welcome);
}

/* host_back: @host is heard from: no longer lost (an event if it was) */
static void
host_back(Manager *m, const char *host)
{
    if (mdb_int(m, 0, "SELECT lost FROM hosts WHERE name = ?", G_TYPE_STRING,
                host, G_TYPE_INVALID))
        mdb_event(m, "host-back", NULL, host, "host %s is back", host);
    mdb_exec(m, "UPDATE hosts SET last_seen = ?, lost = 0 WHERE name = ?",
             G_TYPE_DOUBLE, mdb_now(), G_TYPE_STRING, host, G_TYPE_INVALID);
}

static void
handle_report(Manager *m, const char *host, JsonObject *msg)
{
    HostRuntime *h = runtime_get(m, host);
    JsonNode *clones = json_object_get_member(msg, "clones");
    JsonNode *images = json_object_get_member(msg, "images");

    if (!clones || !JSON_NODE_HOLDS_ARRAY(clones) || !images ||
        !JSON_NODE_HOLDS_ARRAY(images)) {
        g_warning("host %s: a report without clones and images arrays: "
                  "dropped",
                  host);
        return;
    }
    if (h->clones)
        json_array_unref(h->clones);
    if (h->images)
        json_array_unref(h->images);
    if (!h->boot) {
        /* a report before any hello (the manager restarted): ask who */
        g_autoptr(JsonObject) who = wire_new("who");

        send_to(m, host, who);
    }
    h->clones = json_array_ref(json_node_get_array(clones));
    for (guint i = 0; i < json_array_get_length(h->clones); i++) {
        JsonNode *n = json_array_get_element(h->clones, i);

        if (JSON_NODE_HOLDS_OBJECT(n)) {
            JsonObject *c = json_node_get_object(n);

            /* the report's time, for CPU deltas */
            json_object_set_int_member(c, "time_ms",
                                       json_util_get_int(msg, "time_ms", 0));
            mscale_report_clone(m, host, c);
        }
    }
    h->images = json_array_ref(json_node_get_array(images));
    h->reported = true;
    h->last_seen = g_get_monotonic_time();
    host_back(m, host);
    for (guint i = 0; i < json_array_get_length(h->images); i++) {
        JsonNode *n = json_array_get_element(h->images, i);
        JsonObject *im, *bytes;

        if (!JSON_NODE_HOLDS_OBJECT(n))
            continue;
        im = json_node_get_object(n);
        bytes = json_object_get_member(im, "fetched_bytes") &&
                        JSON_NODE_HOLDS_OBJECT(
                            json_object_get_member(im, "fetched_bytes"))
                    ? json_object_get_object_member(im, "fetched_bytes")
                    : NULL;
        if (!json_util_get_string(im, "image", NULL))
            continue;
        mdb_exec(m,
                 "INSERT OR REPLACE INTO host_images VALUES (?, ?, ?, ?, ?, "
                 "?)",
                 G_TYPE_STRING, host, G_TYPE_STRING,
                 json_util_get_string(im, "image", NULL), G_TYPE_DOUBLE,
                 json_object_get_double_member_with_default(
                     im, "cached_fraction", 0),
                 G_TYPE_INT64, json_util_get_int(bytes, "origin", 0), G_TYPE_INT64,
                 json_util_get_int(bytes, "peer", 0), G_TYPE_INT64,
                 json_util_get_int(bytes, "local", 0), G_TYPE_INVALID);
    }
}

static void
handle_ack(Manager *m, const char *host, JsonObject *msg)
{
    gint64 id = json_util_get_int(msg, "id", -1);
    bool ok = json_object_get_boolean_member_with_default(msg, "ok", FALSE);
    const char *err = json_util_get_string(msg, "error", NULL);
    g_autofree char *op = NULL;
    g_autofree char *service = NULL;
    g_autofree char *key = NULL;

    op = mdb_text(m,
                  "SELECT op FROM commands WHERE id = ? AND host = ? AND "
                  "state = 'pending'",
                  G_TYPE_INT64, id, G_TYPE_STRING, host, G_TYPE_INVALID);
    if (!op) {
        g_debug("host %s: ack of command %" G_GINT64_FORMAT
                " that is not pending: ignored",
                host, id);
        return;
    }
    service = mdb_text(m, "SELECT service FROM commands WHERE id = ?",
                       G_TYPE_INT64, id, G_TYPE_INVALID);
    mdb_exec(m,
             "UPDATE commands SET state = ?, finished = ?, error = ? WHERE "
             "id = ?",
             G_TYPE_STRING, ok ? "done" : "failed", G_TYPE_DOUBLE, mdb_now(),
             G_TYPE_STRING, err, G_TYPE_INT64, id, G_TYPE_INVALID);
    key = g_strdup_printf("%s/%s", host, service ? service : "");
    if (ok) {
        /* something changed for the service (a clone went away, say one
         * of a lost host that came back): its creates may work now */
        GHashTableIter it;
        gpointer k;
        g_autofree char *suffix =
            g_strdup_printf("/%s", service ? service : "");

        g_hash_table_iter_init(&it, m->backoff);
        while (g_hash_table_iter_next(&it, &k, NULL)) {
            if (g_str_has_suffix(k, suffix))
                g_hash_table_iter_remove(&it);
        }
        g_hash_table_remove(m->failures, key);
        mdb_event(
            m,
            g_str_equal(op, "clone-create") ? "clones-created"
                                            : "clones-destroyed",
            service, host, "command %" G_GINT64_FORMAT " (%s) done on %s%s%s",
            id, op, host, json_util_get_string(msg, "summary", NULL) ? ": " : "",
            json_util_get_string(msg, "summary", NULL) ? json_util_get_string(msg, "summary", NULL)
                                            : "");
    } else {
        guint fails =
            GPOINTER_TO_UINT(g_hash_table_lookup(m->failures, key)) + 1;
        gint64 *until = g_new(gint64, 1);
        guint delay = MIN(5u << MIN(fails - 1, 6u), 300u);

        g_hash_table_insert(m->failures, g_strdup(key),
                            GUINT_TO_POINTER(fails));
        *until = g_get_monotonic_time() + (gint64)delay * G_USEC_PER_SEC;
        g_hash_table_insert(m->backoff, g_strdup(key), until);
        mdb_event(m, "command-failed", service, host,
                  "command %" G_GINT64_FORMAT " (%s) failed on %s: %s; "
                  "trying again in %u s",
                  id, op, host, err ? err : "no reason given", delay);
    }
}

static void
handle_message(Manager *m, const char *host, const char *address,
               const void *data, gsize len)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) msg = wire_parse(data, len, &err);
    const char *type;

    if (!msg) {
        g_warning("host %s: dropped a malformed message: %s", host,
                  err->message);
        return;
    }
    type = json_util_get_string(msg, "type", NULL);
    g_mutex_lock(&m->lock);
    runtime_get(m, host)->last_seen = g_get_monotonic_time();
    runtime_get(m, host)->heard = true;
    if (g_str_equal(type, "hello"))
        handle_hello(m, host, address, msg);
    else if (g_str_equal(type, "report"))
        handle_report(m, host, msg);
    else if (g_str_equal(type, "ack"))
        handle_ack(m, host, msg);
    else if (g_str_equal(type, "profiles")) {
        JsonNode *arr = json_object_get_member(msg, "profiles");

        for (guint i = 0; arr && JSON_NODE_HOLDS_ARRAY(arr) &&
                          i < json_array_get_length(json_node_get_array(arr));
             i++) {
            JsonNode *n = json_array_get_element(json_node_get_array(arr), i);
            JsonObject *p;
            JsonNode *chunks;
            g_autoptr(JsonGenerator) gen = json_generator_new();
            g_autofree char *text = NULL;

            if (!JSON_NODE_HOLDS_OBJECT(n))
                continue;
            p = json_node_get_object(n);
            chunks = json_object_get_member(p, "chunks");
            if (!json_util_get_string(p, "image", NULL) || !chunks ||
                !JSON_NODE_HOLDS_ARRAY(chunks))
                continue;
            json_generator_set_root(gen, chunks);
            text = json_generator_to_data(gen, NULL);
            mdb_exec(
                m, "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?)",
                G_TYPE_STRING, host, G_TYPE_STRING, json_util_get_string(p, "image", NULL),
                G_TYPE_INT64, json_util_get_int(p, "boots", 0), G_TYPE_STRING, text,
                G_TYPE_DOUBLE, mdb_now(), G_TYPE_INVALID);
        }
    } else if (g_str_equal(type, "requests")) {
        const char *service = json_util_get_string(msg, "service", NULL);
        gint64 count = json_util_get_int(msg, "count", -1);

        /* a load balancer's reporter sends these only: they keep it up */
        host_back(m, host);
        if (service && count >= 0 && count <= G_MAXINT32)
            mscale_requests(m, service, count);
        else
            g_warning("host %s: dropped a requests message without a "
                      "service and a count",
                      host);
    } else
        g_warning("host %s: dropped a message of unknown type '%s'", host,
                  type);
    g_mutex_unlock(&m->lock);
}

static void
router_drain(Manager *m)
{
    for (int budget = 0; budget < 1000; budget++) {
        zmq_msg_t id, body;
        const char *user, *addr;
        bool extra = false;

        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, m->router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            return;
        }
        zmq_msg_init(&body);
        if (!zmq_msg_more(&id) ||
            zmq_msg_recv(&body, m->router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            continue;
        }
        while (zmq_msg_more(&body)) { /* one frame per message: drop more */
            zmq_msg_t junk;

            extra = true;
            zmq_msg_init(&junk);
            if (zmq_msg_recv(&junk, m->router, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&junk);
                break;
            }
            zmq_msg_close(&body);
            body = junk;
        }
        user = zmq_msg_gets(&body, "User-Id");
        addr = zmq_msg_gets(&body, "Peer-Address");
        if (!user || !*user) {
            g_warning("dropped a message without an authenticated host");
        } else if (extra) {
            g_warning("host %s: dropped a message of several frames", user);
        } else {
            handle_message(m, user, addr ? addr : "?", zmq_msg_data(&body),
                           zmq_msg_size(&body));
        }
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
}

/* ---- registration: hosts not yet accepted say who they are ---------- */

static void
handle_register(Manager *m, const char *key, const char *address,
                JsonObject *msg, JsonObject *reply)
{
    const char *name = json_util_get_string(msg, "host", NULL);
    g_autofree char *known = NULL;
    gint64 accepted;

    if (!name || !wire_host_name_valid(name)) {
        json_object_set_string_member(reply, "state", "refused");
        json_object_set_string_member(reply, "reason", "invalid host name");
        return;
    }
    known = mdb_text(m, "SELECT name FROM hosts WHERE key = ?", G_TYPE_STRING,
                     key, G_TYPE_INVALID);
    if (!known) {
        g_autofree char *other =
            mdb_text(m, "SELECT key FROM hosts WHERE name = ?", G_TYPE_STRING,
                     name, G_TYPE_INVALID);

        if (other) {
            if (should_log_refusal(m, key))
                mdb_event(m, "host-refused", NULL, name,
                          "a host from %s calls itself %s but has another "
                          "key (%s)",
                          address, name, key);
            json_object_set_string_member(reply, "state", "refused");
            json_object_set_string_member(reply, "reason",
                                          "another host has that name");
            return;
        }
        mdb_exec(m,
                 "INSERT INTO hosts (name, key, address, first_seen) VALUES "
                 "(?, ?, ?, ?)",
                 G_TYPE_STRING, name, G_TYPE_STRING, key, G_TYPE_STRING,
                 address, G_TYPE_DOUBLE, mdb_now(), G_TYPE_INVALID);
        mdb_event(m, "host-pending", NULL, name,
                  "host %s from %s asks to join (key %s): sporectl "
                  "host-accept %s",
                  name, address, key, name);
        known = g_strdup(name);
    }
    accepted = mdb_int(m, 0, "SELECT accepted FROM hosts WHERE key = ?",
                       G_TYPE_STRING, key, G_TYPE_INVALID);
    json_object_set_string_member(reply, "host", known);
    json_object_set_string_member(reply, "state",
                                  accepted ? "accepted" : "pending");
}

static void
register_drain(Manager *m)
{
    for (int budget = 0; budget < 100; budget++) {
        zmq_msg_t id, body;
        const char *key, *addr;
        g_autoptr(JsonObject) msg = NULL;
        g_autoptr(JsonObject) reply = wire_new("registration");

        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, m->reg, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            return;
        }
        zmq_msg_init(&body);
        if (!zmq_msg_more(&id) ||
            zmq_msg_recv(&body, m->reg, ZMQ_DONTWAIT) < 0 ||
            zmq_msg_more(&body)) {
            while (zmq_msg_more(&body) &&
                   zmq_msg_recv(&body, m->reg, ZMQ_DONTWAIT) >= 0)
                ;
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            continue;
        }
        key = zmq_msg_gets(&body, "User-Id");
        addr = zmq_msg_gets(&body, "Peer-Address");
        msg = wire_parse(zmq_msg_data(&body), zmq_msg_size(&body), NULL);
        if (key && msg &&
            g_str_equal(json_util_get_string(msg, "type", NULL), "register")) {
            g_mutex_lock(&m->lock);
            handle_register(m, key, addr ? addr : "?", msg, reply);
            g_mutex_unlock(&m->lock);
            zmq_send(m->reg, zmq_msg_data(&id), zmq_msg_size(&id),
                     ZMQ_SNDMORE | ZMQ_DONTWAIT);
            {
                g_autofree char *text = json_util_to_text(reply, false);
                zmq_send(m->reg, text, strlen(text), ZMQ_DONTWAIT);
            }
        } else {
            g_warning("registration socket: dropped a message that is not "
                      "a registration");
        }
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
}

/* ---- reconciliation --------------------------------------------------- */

typedef struct {
    char *service;
    guint index;
    char *name;
    char *uuid;
} Wanted;

static void
wanted_free(gpointer p)
{
    Wanted *w = p;

    g_free(w->service);
    g_free(w->name);
    g_free(w->uuid);
    g_free(w);
}

static char *
service_image_id(Manager *m, const char *service)
{
    return mdb_text(m,
                    "SELECT i.id FROM services s JOIN images i ON i.name = "
                    "s.image WHERE s.name = ?",
                    G_TYPE_STRING, service, G_TYPE_INVALID);
}

static void command_destroy(Manager *m, const char *host, const char *service,
                            GPtrArray *names);

/*
 * mark_lost_hosts: a host silent for lost_after_s is lost: its clones are
 * unplaced (placed again elsewhere), its pending commands other than
 * destroys are cancelled, and a destroy of the clones it had waits for
 * it: should it come back, its copies go (a report would show those that
 * are still defined; the command also removes overlays whose domain went
 * while it was away).
 */
static void
mark_lost_hosts(Manager *m)
{
    GHashTableIter it;
    gpointer k, v;

    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        HostRuntime *h = v;
        g_autoptr(GHashTable) names = NULL; /* service -> GPtrArray */
        GHashTableIter nit;
        gpointer service, list;
        sqlite3_stmt *st;

        if (h->last_seen == 0 || host_is_up(m, h->name))
            continue;
        if (mdb_int(m, 1, "SELECT lost FROM hosts WHERE name = ?",
                    G_TYPE_STRING, h->name, G_TYPE_INVALID))
            continue;
        names = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                      (GDestroyNotify)g_ptr_array_unref);
        st = mdb_prepare(m, "SELECT service, idx FROM clones WHERE host = ?",
                         G_TYPE_STRING, h->name, G_TYPE_INVALID);
        while (st && sqlite3_step(st) == SQLITE_ROW) {
            Manifest *mf = manager_manifest(m, mdb_col_text(st, 0));
            GPtrArray *arr;

            if (!mf)
                continue;
            arr = g_hash_table_lookup(names, mdb_col_text(st, 0));
            if (!arr) {
                arr = g_ptr_array_new_with_free_func(g_free);
                g_hash_table_insert(names, g_strdup(mdb_col_text(st, 0)), arr);
            }
            g_ptr_array_add(arr, manifest_clone_name(
                                     mf, (guint)sqlite3_column_int64(st, 1)));
        }
        sqlite3_finalize(st);
        mdb_exec(m, "UPDATE hosts SET lost = 1 WHERE name = ?", G_TYPE_STRING,
                 h->name, G_TYPE_INVALID);
        mdb_exec(m, "UPDATE clones SET host = NULL WHERE host = ?",
                 G_TYPE_STRING, h->name, G_TYPE_INVALID);
        mdb_exec(m,
                 "UPDATE commands SET state = 'cancelled', finished = ? "
                 "WHERE host = ? AND state = 'pending' AND op <> "
                 "'clone-destroy'",
                 G_TYPE_DOUBLE, mdb_now(), G_TYPE_STRING, h->name,
                 G_TYPE_INVALID);
        h->reported = false;
        m->peers_sent = 0; /* the others' peer lists drop it */
        mdb_event(m, "host-lost", NULL, h->name,
                  "host %s lost: no report for %u s; its clones are placed "
                  "again",
                  h->name, m->config.lost_after_s);
        g_hash_table_iter_init(&nit, names);
        while (g_hash_table_iter_next(&nit, &service, &list))
            command_destroy(m, h->name, service, list);
    }
}

static void
sync_clone_rows(Manager *m)
{
    sqlite3_stmt *st = mdb_prepare(
        m, "SELECT name, desired, deleting FROM services", G_TYPE_INVALID);
    g_autoptr(GPtrArray) gone = g_ptr_array_new_with_free_func(g_free);

    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *name = mdb_col_text(st, 0);
        gint64 desired = sqlite3_column_int64(st, 1);

        if (sqlite3_column_int64(st, 2)) {
            mdb_exec(m, "DELETE FROM clones WHERE service = ?", G_TYPE_STRING,
                     name, G_TYPE_INVALID);
            g_ptr_array_add(gone, g_strdup(name));
            continue;
        }
        mdb_exec(m, "DELETE FROM clones WHERE service = ? AND idx >= ?",
                 G_TYPE_STRING, name, G_TYPE_INT64, desired, G_TYPE_INVALID);
        for (gint64 i = 0; i < desired; i++)
            mdb_exec(m,
                     "INSERT OR IGNORE INTO clones (service, idx) VALUES "
                     "(?, ?)",
                     G_TYPE_STRING, name, G_TYPE_INT64, i, G_TYPE_INVALID);
    }
    sqlite3_finalize(st);
    /* a deleted service goes once no host reports a clone of it */
    for (guint i = 0; i < gone->len; i++) {
        const char *service = gone->pdata[i];
        GHashTableIter it;
        gpointer k, v;
        bool left = false;

        g_hash_table_iter_init(&it, m->runtime);
        while (!left && g_hash_table_iter_next(&it, &k, &v)) {
            HostRuntime *h = v;

            for (guint c = 0; h->clones && c < json_array_get_length(h->clones);
                 c++) {
                JsonNode *n = json_array_get_element(h->clones, c);
                if (JSON_NODE_HOLDS_OBJECT(n) &&
                    g_strcmp0(
                        json_util_get_string(json_node_get_object(n), "service", NULL),
                        service) == 0)
                    left = true;
            }
        }
        /* (a destroy waiting for a lost host does not hold it up) */
        if (!left && mdb_int(m, 0,
                             "SELECT COUNT(*) FROM commands WHERE service = ? "
                             "AND state = 'pending' AND host NOT IN (SELECT "
                             "name FROM hosts WHERE lost = 1)",
                             G_TYPE_STRING, service, G_TYPE_INVALID) == 0) {
            mdb_exec(m, "DELETE FROM services WHERE name = ?", G_TYPE_STRING,
                     service, G_TYPE_INVALID);
            mdb_event(m, "service-deleted", service, NULL,
                      "service %s deleted: its clones are gone", service);
        }
    }
}

static void
place_clones(Manager *m)
{
    sqlite3_stmt *st = mdb_prepare(
        m,
        "SELECT c.service, c.idx FROM clones c JOIN services s ON s.name = "
        "c.service WHERE c.host IS NULL AND s.deleting = 0 ORDER BY "
        "c.service, c.idx",
        G_TYPE_INVALID);

    while (st && sqlite3_step(st) == SQLITE_ROW) {
        g_autofree char *service = g_strdup(mdb_col_text(st, 0));
        gint64 index = sqlite3_column_int64(st, 1);
        Manifest *mf = manager_manifest(m, service);
        g_autofree char *image_id = service_image_id(m, service);
        g_autoptr(GArray) hosts =
            g_array_new(FALSE, TRUE, sizeof(PlacementHost));
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        sqlite3_stmt *hs;
        g_autofree char *reason = NULL;
        int chosen;

        if (!mf)
            continue;
        hs = mdb_prepare(m,
                         "SELECT name, cpus, memory_kib FROM hosts WHERE "
                         "accepted = 1 AND lost = 0 ORDER BY name",
                         G_TYPE_INVALID);
        while (hs && sqlite3_step(hs) == SQLITE_ROW) {
            PlacementHost ph = {0};
            char *name = g_strdup(mdb_col_text(hs, 0));
            sqlite3_stmt *cs;
            HostRuntime *rt = g_hash_table_lookup(m->runtime, name);

            g_ptr_array_add(names, name);
            ph.name = name;
            ph.up = host_is_up(m, name) && rt && rt->reported;
            ph.cpus = (guint)sqlite3_column_int64(hs, 1);
            ph.memory_kib = (guint64)sqlite3_column_int64(hs, 2);
            cs = mdb_prepare(m, "SELECT service FROM clones WHERE host = ?",
                             G_TYPE_STRING, name, G_TYPE_INVALID);
            while (cs && sqlite3_step(cs) == SQLITE_ROW) {
                Manifest *other = manager_manifest(m, mdb_col_text(cs, 0));

                ph.total_clones++;
                if (g_str_equal(mdb_col_text(cs, 0), service))
                    ph.service_clones++;
                if (other) {
                    ph.used_vcpus += other->vm.vcpus;
                    ph.used_memory_kib += other->vm.memory_kib;
                }
            }
            sqlite3_finalize(cs);
            if (image_id) {
                g_autofree char *cached = mdb_text(
                    m,
                    "SELECT cached FROM host_images WHERE host = ? AND "
                    "image = ?",
                    G_TYPE_STRING, name, G_TYPE_STRING, image_id,
                    G_TYPE_INVALID);
                ph.cached_fraction = cached ? g_ascii_strtod(cached, NULL) : 0;
            }
            g_array_append_val(hosts, ph);
        }
        sqlite3_finalize(hs);
        chosen = placement_choose((PlacementHost *)hosts->data, hosts->len, mf,
                                  &reason);
        if (chosen < 0) {
            g_debug("cannot place %s-%" G_GINT64_FORMAT " yet: %s", service,
                    index, reason);
            continue;
        }
        mdb_exec(m, "UPDATE clones SET host = ? WHERE service = ? AND idx = ?",
                 G_TYPE_STRING,
                 g_array_index(hosts, PlacementHost, chosen).name,
                 G_TYPE_STRING, service, G_TYPE_INT64, index, G_TYPE_INVALID);
        mdb_event(m, "clone-placed", service,
                  g_array_index(hosts, PlacementHost, chosen).name,
                  "%s-%" G_GINT64_FORMAT " placed on %s (%s)", service, index,
                  g_array_index(hosts, PlacementHost, chosen).name,
                  mf->placement.strategy == MANIFEST_PLACEMENT_PACK ? "pack"
                                                                    : "spread");
    }
    sqlite3_finalize(st);
}

/* pending_keys: "create:SERVICE:INDEX" and "destroy:NAME" of the host's
 * pending commands */
static GHashTable *
pending_keys(Manager *m, const char *host)
{
    GHashTable *keys =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    sqlite3_stmt *st = mdb_prepare(
        m, "SELECT body FROM commands WHERE host = ? AND state = 'pending'",
        G_TYPE_STRING, host, G_TYPE_INVALID);

    while (st && sqlite3_step(st) == SQLITE_ROW) {
        g_autoptr(JsonObject) body =
            wire_parse(mdb_col_text(st, 0), strlen(mdb_col_text(st, 0)), NULL);
        const char *op = json_util_get_string(body, "op", NULL);
        JsonArray *arr;

        if (!body || !op)
            continue;
        if (g_str_equal(op, "clone-create") &&
            (arr = json_object_get_array_member(body, "indexes"))) {
            for (guint i = 0; i < json_array_get_length(arr); i++)
                g_hash_table_add(
                    keys, g_strdup_printf("create:%s:%" G_GINT64_FORMAT,
                                          json_util_get_string(body, "service", NULL),
                                          json_array_get_int_element(arr, i)));
        } else if (g_str_equal(op, "clone-destroy") &&
                   (arr = json_object_get_array_member(body, "names"))) {
            for (guint i = 0; i < json_array_get_length(arr); i++)
                g_hash_table_add(
                    keys,
                    g_strdup_printf("destroy:%s",
                                    json_array_get_string_element(arr, i)));
        }
    }
    sqlite3_finalize(st);
    return keys;
}

static gint64
command_add(Manager *m, const char *host, const char *service, JsonObject *body)
{
    g_autofree char *text = json_util_to_text(body, false);

    mdb_exec(m,
             "INSERT INTO commands (host, op, service, body, created) VALUES "
             "(?, ?, ?, ?, ?)",
             G_TYPE_STRING, host, G_TYPE_STRING, json_util_get_string(body, "op", NULL),
             G_TYPE_STRING, service, G_TYPE_STRING, text, G_TYPE_DOUBLE,
             mdb_now(), G_TYPE_INVALID);
    return sqlite3_last_insert_rowid(m->db);
}

static void
command_create(Manager *m, const char *host, const char *service,
               GArray *indexes)
{
    Manifest *mf = manager_manifest(m, service);
    g_autoptr(JsonObject) body = wire_new("cmd");
    g_autoptr(JsonObject) image = json_object_new();
    g_autoptr(JsonArray) idx = json_array_new();
    sqlite3_stmt *st;
    g_autofree char *manifest = NULL;
    g_autoptr(GString) list = g_string_new(NULL);
    gint64 id;

    st = mdb_prepare(m,
                     "SELECT i.name, i.id, i.format, i.origins, i.idx, "
                     "s.manifest, s.generation FROM services s JOIN images i "
                     "ON i.name = s.image WHERE s.name = ?",
                     G_TYPE_STRING, service, G_TYPE_INVALID);
    if (!mf || !st || sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return;
    }
    json_object_set_string_member(image, "name", mdb_col_text(st, 0));
    json_object_set_string_member(image, "id", mdb_col_text(st, 1));
    json_object_set_string_member(image, "format", mdb_col_text(st, 2));
    {
        g_autoptr(JsonParser) p = json_parser_new();
        if (json_parser_load_from_data(p, mdb_col_text(st, 3), -1, NULL))
            json_object_set_member(image, "origins",
                                   json_node_copy(json_parser_get_root(p)));
    }
    {
        g_autofree char *b64 = g_base64_encode(
            sqlite3_column_blob(st, 4), (gsize)sqlite3_column_bytes(st, 4));
        json_object_set_string_member(image, "index", b64);
    }
    /* the access profile of the host that booted the image most: a host
     * that never did prefetches it (docs/site-protocol.md) */
    {
        g_autofree char *chunks = mdb_text(
            m,
            "SELECT chunks FROM profiles WHERE image = ? ORDER BY boots DESC, "
            "updated DESC LIMIT 1",
            G_TYPE_STRING, json_object_get_string_member(image, "id"),
            G_TYPE_INVALID);
        g_autoptr(JsonParser) p = json_parser_new();

        if (chunks && json_parser_load_from_data(p, chunks, -1, NULL) &&
            JSON_NODE_HOLDS_ARRAY(json_parser_get_root(p)))
            json_object_set_member(image, "profile",
                                   json_node_copy(json_parser_get_root(p)));
    }
    json_object_set_string_member(body, "op", "clone-create");
    json_object_set_string_member(body, "service", service);
    json_object_set_int_member(body, "generation", sqlite3_column_int64(st, 6));
    json_object_set_string_member(body, "manifest", mdb_col_text(st, 5));
    sqlite3_finalize(st);
    for (guint i = 0; i < indexes->len; i++) {
        json_array_add_int_element(idx, g_array_index(indexes, guint, i));
        g_string_append_printf(list, "%s%s-%u", i ? ", " : "", service,
                               g_array_index(indexes, guint, i));
    }
    json_object_set_array_member(body, "indexes", json_array_ref(idx));
    json_object_set_object_member(body, "image", json_object_ref(image));
    id = command_add(m, host, service, body);
    mdb_event(m, "command", service, host,
              "command %" G_GINT64_FORMAT ": create %s on %s", id, list->str,
              host);
}

static void
command_destroy(Manager *m, const char *host, const char *service,
                GPtrArray *names)
{
    g_autoptr(JsonObject) body = wire_new("cmd");
    g_autoptr(JsonArray) arr = json_array_new();
    g_autofree char *list = NULL;
    gint64 id;

    g_ptr_array_add(names, NULL);
    list = g_strjoinv(", ", (char **)names->pdata);
    g_ptr_array_remove_index(names, names->len - 1);
    for (guint i = 0; i < names->len; i++)
        json_array_add_string_element(arr, names->pdata[i]);
    json_object_set_string_member(body, "op", "clone-destroy");
    json_object_set_array_member(body, "names", json_array_ref(arr));
    json_object_set_int_member(body, "timeout", m->config.shutdown_timeout_s);
    id = command_add(m, host, service, body);
    mdb_event(m, "command", service, host,
              "command %" G_GINT64_FORMAT ": destroy %s on %s", id, list, host);
}

static void
reconcile_host(Manager *m, HostRuntime *h)
{
    g_autoptr(GHashTable) pending = pending_keys(m, h->name);
    g_autoptr(GHashTable) wanted = g_hash_table_new_full(
        g_str_hash, g_str_equal, NULL, wanted_free); /* name -> Wanted */
    g_autoptr(GHashTable) observed =
        g_hash_table_new(g_str_hash, g_str_equal); /* name -> uuid */
    g_autoptr(GHashTable) creates = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_array_unref);
    g_autoptr(GHashTable) destroys = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
    sqlite3_stmt *st;
    GHashTableIter it;
    gpointer k, v;

    st = mdb_prepare(m,
                     "SELECT c.service, c.idx, s.generation FROM clones c "
                     "JOIN services s ON s.name = c.service WHERE c.host = ?",
                     G_TYPE_STRING, h->name, G_TYPE_INVALID);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *service = mdb_col_text(st, 0);
        Manifest *mf = manager_manifest(m, service);
        g_autofree char *image_id = service_image_id(m, service);
        Wanted *w;

        if (!mf || !image_id)
            continue;
        w = g_new0(Wanted, 1);
        w->service = g_strdup(service);
        w->index = (guint)sqlite3_column_int64(st, 1);
        w->name = manifest_clone_name(mf, w->index);
        w->uuid = clone_uuid(mf, w->index, image_id,
                             (guint64)sqlite3_column_int64(st, 2));
        g_hash_table_insert(wanted, w->name, w);
    }
    sqlite3_finalize(st);
    for (guint i = 0; h->clones && i < json_array_get_length(h->clones); i++) {
        JsonNode *n = json_array_get_element(h->clones, i);
        JsonObject *c;
        const char *name, *uuid, *service;
        Wanted *w;

        if (!JSON_NODE_HOLDS_OBJECT(n))
            continue;
        c = json_node_get_object(n);
        name = json_util_get_string(c, "name", NULL);
        uuid = json_util_get_string(c, "uuid", NULL);
        service = json_util_get_string(c, "service", NULL);
        if (!name || !uuid)
            continue;
        g_hash_table_insert(observed, (gpointer)name, (gpointer)uuid);
        w = g_hash_table_lookup(wanted, name);
        if (!w || g_ascii_strcasecmp(w->uuid, uuid) != 0) {
            g_autofree char *key = g_strdup_printf("destroy:%s", name);
            GPtrArray *list;

            if (g_hash_table_contains(pending, key))
                continue;
            list = g_hash_table_lookup(destroys, service ? service : "");
            if (!list) {
                list = g_ptr_array_new_with_free_func(g_free);
                g_hash_table_insert(destroys, g_strdup(service ? service : ""),
                                    list);
            }
            g_ptr_array_add(list, g_strdup(name));
        }
    }
    g_hash_table_iter_init(&it, wanted);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        Wanted *w = v;
        g_autofree char *key =
            g_strdup_printf("create:%s:%u", w->service, w->index);
        g_autofree char *bkey = g_strdup_printf("%s/%s", h->name, w->service);
        gint64 *until = g_hash_table_lookup(m->backoff, bkey);
        GArray *list;

        if (g_hash_table_contains(observed, w->name) ||
            g_hash_table_contains(pending, key))
            continue;
        if (until && g_get_monotonic_time() < *until)
            continue;
        /* the old version must go first (same name, another UUID) */
        g_free(key);
        key = g_strdup_printf("destroy:%s", w->name);
        if (g_hash_table_contains(pending, key))
            continue;
        list = g_hash_table_lookup(creates, w->service);
        if (!list) {
            list = g_array_new(FALSE, FALSE, sizeof(guint));
            g_hash_table_insert(creates, g_strdup(w->service), list);
        }
        g_array_append_val(list, w->index);
    }
    g_hash_table_iter_init(&it, destroys);
    while (g_hash_table_iter_next(&it, &k, &v))
        command_destroy(m, h->name, *(char *)k ? k : NULL, v);
    g_hash_table_iter_init(&it, creates);
    while (g_hash_table_iter_next(&it, &k, &v))
        command_create(m, h->name, k, v);
}

static void
send_pending(Manager *m)
{
    double now = mdb_now();
    sqlite3_stmt *st = mdb_prepare(
        m,
        "SELECT id, host, body FROM commands WHERE state = 'pending' AND "
        "sent < ? ORDER BY id",
        G_TYPE_DOUBLE, now - m->config.resend_s, G_TYPE_INVALID);

    while (st && sqlite3_step(st) == SQLITE_ROW) {
        gint64 id = sqlite3_column_int64(st, 0);
        const char *host = mdb_col_text(st, 1);
        const char *text = mdb_col_text(st, 2);
        g_autoptr(JsonObject) body = NULL;
        HostRuntime *rt = g_hash_table_lookup(m->runtime, host);

        if (!rt || !rt->heard || !host_is_up(m, host))
            continue;
        body = wire_parse(text, strlen(text), NULL);
        if (!body)
            continue;
        json_object_set_int_member(body, "id", id);
        if (wire_send(m->router, host, body))
            mdb_exec(m,
                     "UPDATE commands SET sent = ?, attempts = attempts + 1 "
                     "WHERE id = ?",
                     G_TYPE_DOUBLE, now, G_TYPE_INT64, id, G_TYPE_INVALID);
    }
    sqlite3_finalize(st);
}

/*
 * send_peer_lists: tell each connected host the peer servers of the other
 * hosts that are up, with their keys (docs/site-protocol.md "peers"), when
 * something changed and every PEERS_RESEND_US anyway.  Locked.
 */
static void
send_peer_lists(Manager *m)
{
    gint64 now = g_get_monotonic_time();
    g_autoptr(JsonArray) all = json_array_new();
    GHashTableIter it;
    gpointer v;

    if (m->peers_sent && now - m->peers_sent < PEERS_RESEND_US)
        return;
    m->peers_sent = now;
    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        HostRuntime *h = v;
        g_autofree char *key = NULL;
        JsonObject *p;

        if (!h->peer_endpoint || !host_is_up(m, h->name))
            continue;
        key =
            mdb_text(m, "SELECT key FROM hosts WHERE name = ? AND accepted = 1",
                     G_TYPE_STRING, h->name, G_TYPE_INVALID);
        if (!key)
            continue;
        p = json_object_new();
        json_object_set_string_member(p, "name", h->name);
        json_object_set_string_member(p, "endpoint", h->peer_endpoint);
        json_object_set_string_member(p, "key", key);
        json_array_add_object_element(all, p);
    }
    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        HostRuntime *h = v;
        g_autoptr(JsonObject) msg = NULL;
        JsonArray *list;

        if (!h->peer_endpoint || !host_is_up(m, h->name))
            continue;
        msg = wire_new("peers");
        list = json_array_new();
        for (guint i = 0; i < json_array_get_length(all); i++) {
            JsonObject *p = json_array_get_object_element(all, i);
            if (!g_str_equal(json_object_get_string_member(p, "name"), h->name))
                json_array_add_object_element(list, json_object_ref(p));
        }
        json_object_set_array_member(msg, "peers", list);
        send_to(m, h->name, msg);
    }
}

static void
reconcile(Manager *m)
{
    GHashTableIter it;
    gpointer k, v;

    g_mutex_lock(&m->lock);
    mdb_exec(m, "BEGIN IMMEDIATE", G_TYPE_INVALID);
    mark_lost_hosts(m);
    send_peer_lists(m);
    mscale_evaluate(m);
    sync_clone_rows(m);
    place_clones(m);
    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        HostRuntime *h = v;

        if (h->reported && host_is_up(m, h->name) &&
            mdb_int(m, 0, "SELECT accepted FROM hosts WHERE name = ?",
                    G_TYPE_STRING, h->name, G_TYPE_INVALID))
            reconcile_host(m, h);
    }
    mdb_exec(m, "COMMIT", G_TYPE_INVALID);
    send_pending(m);
    g_mutex_unlock(&m->lock);
}

static gboolean
on_tick(gpointer data)
{
    reconcile(data);
    return G_SOURCE_CONTINUE;
}

static gboolean
on_drain(gpointer data)
{
    Manager *m = data;

    zap_drain(m);
    router_drain(m);
    register_drain(m);
    return G_SOURCE_CONTINUE;
}

static gboolean
on_socket(gint fd, GIOCondition cond, gpointer data)
{
    on_drain(data);
    return G_SOURCE_CONTINUE;
}

static gboolean
on_wake(gpointer data)
{
    reconcile(data);
    return G_SOURCE_REMOVE;
}

void
manager_wake(Manager *m)
{
    g_idle_add_full(G_PRIORITY_DEFAULT, on_wake, m, NULL);
}

/* ---- metrics ------------------------------------------------------------ */

static void
metric_rows(Manager *m, GString *out, const char *name, const char *help,
            const char *type, const char *sql, const char *label)
{
    sqlite3_stmt *st = mdb_prepare(m, sql, G_TYPE_INVALID);

    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help,
                           name, type);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        if (label)
            g_string_append_printf(out, "%s{%s=\"%s\"} %lld\n", name, label,
                                   mdb_col_text(st, 0),
                                   (long long)sqlite3_column_int64(st, 1));
        else
            g_string_append_printf(out, "%s %lld\n", name,
                                   (long long)sqlite3_column_int64(st, 0));
    }
    sqlite3_finalize(st);
}

static void
manager_metrics(GString *out, gpointer data)
{
    Manager *m = data;
    g_autoptr(GHashTable) states =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    GHashTableIter it;
    gpointer k, v;
    sqlite3_stmt *st;

    g_mutex_lock(&m->lock);
    metric_rows(m, out, "spore_commands", "Commands to agents by state.",
                "gauge", "SELECT state, COUNT(*) FROM commands GROUP BY state",
                "state");
    metric_rows(m, out, "spore_command_sends_total",
                "Times commands were sent to agents (first sends and "
                "re-sends).",
                "counter", "SELECT COALESCE(SUM(attempts), 0) FROM commands",
                NULL);
    metric_rows(m, out, "spore_commands_retried_total",
                "Commands that had to be sent more than once.", "counter",
                "SELECT COUNT(*) FROM commands WHERE attempts > 1", NULL);
    metric_rows(m, out, "spore_commands_acknowledged_total",
                "Commands acknowledged by agents.", "counter",
                "SELECT COUNT(*) FROM commands WHERE state IN ('done', "
                "'failed')",
                NULL);
    metric_rows(m, out, "spore_clones_desired", "Clones the services want.",
                "gauge", "SELECT COUNT(*) FROM clones", NULL);
    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        HostRuntime *h = v;

        for (guint i = 0;
             h->reported && h->clones && i < json_array_get_length(h->clones);
             i++) {
            JsonNode *n = json_array_get_element(h->clones, i);
            const char *state =
                JSON_NODE_HOLDS_OBJECT(n)
                    ? json_util_get_string(json_node_get_object(n), "state", NULL)
                    : NULL;

            if (state) {
                guint c = GPOINTER_TO_UINT(g_hash_table_lookup(states, state));
                g_hash_table_insert(states, g_strdup(state),
                                    GUINT_TO_POINTER(c + 1));
            }
        }
    }
    g_string_append(out, "# HELP spore_clones Clones the hosts report, by "
                         "state.\n# TYPE spore_clones gauge\n");
    g_hash_table_iter_init(&it, states);
    while (g_hash_table_iter_next(&it, &k, &v))
        g_string_append_printf(out, "spore_clones{state=\"%s\"} %u\n",
                               (char *)k, GPOINTER_TO_UINT(v));
    metric_rows(m, out, "spore_hosts_accepted", "Accepted hosts.", "gauge",
                "SELECT COUNT(*) FROM hosts WHERE accepted = 1", NULL);
    metric_rows(m, out, "spore_hosts_lost", "Hosts lost (no report).", "gauge",
                "SELECT COUNT(*) FROM hosts WHERE lost = 1", NULL);
    g_string_append(out, "# HELP spore_fetched_bytes Verified image bytes the "
                         "hosts fetched, by source.\n"
                         "# TYPE spore_fetched_bytes counter\n");
    st = mdb_prepare(m,
                     "SELECT host, image, origin_bytes, peer_bytes, "
                     "local_bytes, cached FROM host_images",
                     G_TYPE_INVALID);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *src[] = {"origin", "peer", "local"};

        for (int i = 0; i < 3; i++)
            g_string_append_printf(
                out,
                "spore_fetched_bytes{host=\"%s\",image=\"%s\","
                "source=\"%s\"} %lld\n",
                mdb_col_text(st, 0), mdb_col_text(st, 1), src[i],
                (long long)sqlite3_column_int64(st, 2 + i));
        g_string_append_printf(
            out, "spore_cached_ratio{host=\"%s\",image=\"%s\"} %.4f\n",
            mdb_col_text(st, 0), mdb_col_text(st, 1),
            sqlite3_column_double(st, 5));
    }
    sqlite3_finalize(st);
    metric_rows(m, out, "spore_events_total", "Events logged.", "counter",
                "SELECT COALESCE(MAX(id), 0) FROM events", NULL);
    g_mutex_unlock(&m->lock);
}

/* ---- setup ------------------------------------------------------------ */

/* seed_runtime: every accepted host that is not lost counts as seen now,
 * so that mark_lost_hosts() loses it if it stays silent for lost_after_s
 * (the runtime is in memory only: without this, a host down when the
 * manager restarts would keep its clones forever) */
static void
seed_runtime(Manager *m)
{
    sqlite3_stmt *st =
        mdb_prepare(m, "SELECT name FROM hosts WHERE accepted = 1 AND lost = 0",
                    G_TYPE_INVALID);
    gint64 now = g_get_monotonic_time();

    while (st && sqlite3_step(st) == SQLITE_ROW)
        runtime_get(m, mdb_col_text(st, 0))->last_seen = now;
    sqlite3_finalize(st);
}

static guint
watch_socket(Manager *m, void *sock)
{
    int fd = -1;
    size_t len = sizeof(fd);

    zmq_getsockopt(sock, ZMQ_FD, &fd, &len);
    return g_unix_fd_add(fd, G_IO_IN, on_socket, m);
}

Manager *
manager_new(const ManagerConfig *config, GError **error)
{
    g_autoptr(Manager) m = g_new0(Manager, 1);
    int one = 1;

    m->config = *config;
    m->config.state_dir = g_strdup(config->state_dir);
    m->config.run_dir = g_strdup(config->run_dir);
    m->config.listen = g_strdup(config->listen);
    m->config.hosts_dir = g_strdup(config->hosts_dir);
    m->config.control_group = g_strdup(config->control_group);
    m->config.metrics_listen = g_strdup(config->metrics_listen);
    g_mutex_init(&m->lock);
    m->runtime =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, host_runtime_free);
    m->manifests = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                         (GDestroyNotify)manifest_free);
    m->backoff = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    m->failures = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    m->refused = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    mscale_init(m);
    if (g_mkdir_with_parents(m->config.state_dir, 0700) < 0 ||
        g_mkdir_with_parents(m->config.run_dir, 0755) < 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create %s or %s: %s", m->config.state_dir,
                    m->config.run_dir, g_strerror(errno));
        return NULL;
    }
    if (!wire_keys_load_or_create(m->config.state_dir, &m->keys, error) ||
        !mdb_open(m, error))
        return NULL;
    seed_runtime(m);

    m->zctx = zmq_ctx_new();
    if (!zmq_has("curve")) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "this libzmq has no CURVE support");
        return NULL;
    }
    /* the ZAP handler must be bound before any CURVE socket */
    m->zap = spore_zap_bind(m->zctx, error);
    if (!m->zap)
        return NULL;
    m->router = zmq_socket(m->zctx, ZMQ_ROUTER);
    wire_socket_defaults(m->router);
    zmq_setsockopt(m->router, ZMQ_CURVE_SERVER, &one, sizeof(one));
    zmq_setsockopt(m->router, ZMQ_CURVE_SECRETKEY, m->keys.secret_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(m->router, ZMQ_ZAP_DOMAIN, WIRE_ZAP_DOMAIN,
                   strlen(WIRE_ZAP_DOMAIN));
    if (zmq_setsockopt(m->router, ZMQ_ZAP_ENFORCE_DOMAIN, &one, sizeof(one)) !=
        0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "this libzmq does not enforce ZAP domains "
                    "(ZMQ_ZAP_ENFORCE_DOMAIN): %s",
                    zmq_strerror(zmq_errno()));
        return NULL;
    }
    zmq_setsockopt(m->router, ZMQ_ROUTER_HANDOVER, &one, sizeof(one));
    zmq_setsockopt(m->router, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    if (zmq_bind(m->router, m->config.listen) != 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot listen on %s: %s", m->config.listen,
                    zmq_strerror(zmq_errno()));
        return NULL;
    }
    m->reg = zmq_socket(m->zctx, ZMQ_ROUTER);
    wire_socket_defaults(m->reg);
    {
        int64_t small = 4096;
        zmq_setsockopt(m->reg, ZMQ_MAXMSGSIZE, &small, sizeof(small));
    }
    zmq_setsockopt(m->reg, ZMQ_CURVE_SERVER, &one, sizeof(one));
    zmq_setsockopt(m->reg, ZMQ_CURVE_SECRETKEY, m->keys.secret_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(m->reg, ZMQ_ZAP_DOMAIN, WIRE_ZAP_REGISTER_DOMAIN,
                   strlen(WIRE_ZAP_REGISTER_DOMAIN));
    zmq_setsockopt(m->reg, ZMQ_ZAP_ENFORCE_DOMAIN, &one, sizeof(one));
    if (!m->register_endpoint)
        m->register_endpoint = wire_register_endpoint(m->config.listen);
    if (!m->register_endpoint || zmq_bind(m->reg, m->register_endpoint) != 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot listen for registrations on %s: %s",
                    m->register_endpoint ? m->register_endpoint
                                         : "(the port after --listen's)",
                    zmq_strerror(zmq_errno()));
        return NULL;
    }
    if (!manager_control_start(m, error))
        return NULL;
    if (m->config.metrics_listen && *m->config.metrics_listen) {
        m->metrics = spore_metrics_start(m->config.metrics_listen,
                                         manager_metrics, m, error);
        if (!m->metrics)
            return NULL;
        g_message("metrics on http://%s/metrics", m->config.metrics_listen);
    }
    m->reg_watch = watch_socket(m, m->reg);
    m->zap_watch = watch_socket(m, m->zap);
    m->router_watch = watch_socket(m, m->router);
    m->drain = g_timeout_add(DRAIN_MS, on_drain, m);
    m->tick = g_timeout_add(TICK_MS, on_tick, m);
    g_message("listening for agents on %s and registrations on %s (CURVE, "
              "key %s); control socket %s",
              m->config.listen, m->register_endpoint, m->keys.public_key,
              m->control_path);
    return g_steal_pointer(&m);
}

void
manager_free(Manager *m)
{
    if (!m)
        return;
    spore_metrics_stop(m->metrics);
    manager_control_stop(m);
    if (m->tick)
        g_source_remove(m->tick);
    if (m->drain)
        g_source_remove(m->drain);
    if (m->zap_watch)
        g_source_remove(m->zap_watch);
    if (m->router_watch)
        g_source_remove(m->router_watch);
    if (m->reg_watch)
        g_source_remove(m->reg_watch);
    if (m->reg)
        zmq_close(m->reg);
    g_free(m->register_endpoint);
    if (m->router)
        zmq_close(m->router);
    if (m->zap)
        zmq_close(m->zap);
    if (m->zctx)
        zmq_ctx_term(m->zctx);
    mdb_close(m);
    g_hash_table_unref(m->runtime);
    g_hash_table_unref(m->manifests);
    g_hash_table_unref(m->backoff);
    g_hash_table_unref(m->failures);
    g_hash_table_unref(m->refused);
    mscale_free(m);
    g_mutex_clear(&m->lock);
    g_free(m->config.state_dir);
    g_free(m->config.run_dir);
    g_free(m->config.listen);
    g_free(m->config.hosts_dir);
    g_free(m->config.control_group);
    g_free(m->config.metrics_listen);
    g_free(m->control_path);
    g_free(m);
}

void
manager_reconfigure(Manager *m, const ManagerConfig *config)
{
    g_mutex_lock(&m->lock);
    m->config.lost_after_s = config->lost_after_s;
    m->config.resend_s = config->resend_s;
    m->config.shutdown_timeout_s = config->shutdown_timeout_s;
    g_free(m->config.hosts_dir);
    m->config.hosts_dir = g_strdup(config->hosts_dir);
    g_mutex_unlock(&m->lock);
    g_message("configuration reloaded: lost_after=%u s, resend=%u s, "
              "shutdown_timeout=%u s, hosts_dir=%s",
              config->lost_after_s, config->resend_s,
              config->shutdown_timeout_s,
              config->hosts_dir ? config->hosts_dir : "(none)");
}

const char *
manager_public_key(const Manager *m)
{
    return m->keys.public_key;
}
