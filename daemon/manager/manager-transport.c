/*
 * manager-transport.c: spored's two ZeroMQ ROUTER sockets (CURVE; see
 * manager-zap.c for who may connect) and the messages that arrive on
 * them (docs/site-protocol.md).
 *
 * The path of a message:
 *
 *   agents' socket --[router_read]--> inbox --[manager_inbox_apply]-->
 *   applied (one savepoint per message, one transaction per batch)
 *
 * router_read reads whatever waits, up to the inbox's bounds, and stamps
 * the sender's last_seen then (the host is alive when its message
 * arrives, not when it is applied); an index-get or profile-get whose
 * answer was made already is answered then too (answer_at_once: the
 * slices of a thousand hosts' fetches would otherwise wait for the inbox,
 * one batch per round trip); manager_inbox_apply applies at most
 * INBOX_BATCH_MESSAGES or INBOX_BATCH_US of them per call, so that a
 * pass or a control command waits one batch at most.  A full inbox stops
 * the reading: ZeroMQ's queue per host (its high-water mark) fills, and
 * the agents' sends wait or are dropped there (reports are sent again
 * anyway); spored says so in its log (once a minute) and in
 * spore_backpressure_total.
 *
 * Invariants:
 *   1. Each message is applied whole or not at all: it runs in a
 *      savepoint of its batch's transaction, released when it succeeded
 *      and rolled back (and logged, naming the host) when the database
 *      failed; either way the next message is applied.
 *   2. One transaction (one fdatasync) per batch, not per message.  When
 *      the batch's commit fails, every message of it is lost: the runtime
 *      records of its hosts forget their hello and report (boot, reported)
 *      so that nothing is decided on them until they said hello (a "who"
 *      asks) and reported again.
 *   3. The inbox holds at most INBOX_MAX_MESSAGES and INBOX_MAX_BYTES.
 *   4. Only the main thread touches the sockets.
 */
#include "manager-private.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

#include "log-batch.h"
#include "profile.h"
#include "spore-error.h"
#include "zmq-zap.h"

/* the inbox's bounds (invariant 3) */
#define INBOX_MAX_MESSAGES 20000
#define INBOX_MAX_BYTES    (128u * 1024 * 1024)
/* one batch: so many messages or so long, whichever comes first */
#define INBOX_BATCH_MESSAGES 5000
#define INBOX_BATCH_US       (50 * 1000)
#define BACKPRESSURE_LOG_US  (60 * G_USEC_PER_SEC)
/* messages ZeroMQ queues unread per host before its connection waits */
#define ROUTER_RCVHWM_MESSAGES   64
#define REGISTER_BUDGET_MESSAGES 100
#define BACKOFF_BASE_S           5u
#define BACKOFF_MAX_S            300u
/* the registration socket's frames: a register message is small */
#define REGISTER_MAX_MSG_BYTES 4096
/* An index answer carries at most this much of the index (base64: 4/3 of
 * it), a profile answer this many chunk numbers (~56 KB of JSON).  A host
 * asks for the next slice once it has the last, so a host has one answer
 * in flight: these bound what the answers to a thousand hosts asking at
 * once hold in spored's queues, each with its encrypted copy (with 4 MiB
 * slices of a 1 MiB index, bench/site-scale's RSS peaked at 955 MiB). */
#define INDEX_SLICE_BYTES    (64u * 1024)
#define PROFILE_SLICE_CHUNKS 8192u

/* should_log_backpressure: once a minute */
static bool
should_log_backpressure(Manager *m)
{
    gint64 now = g_get_monotonic_time();

    if (m->backpressure_logged &&
        now - m->backpressure_logged < BACKPRESSURE_LOG_US)
        return false;
    m->backpressure_logged = now;
    return true;
}

/* send_refused: count and say why a message to @host did not go */
static bool
send_refused(Manager *m, const char *host)
{
    m->stats.send_refused++;
    if (zmq_errno() == EAGAIN && should_log_backpressure(m))
        g_warning("backpressure: host %s's queue is full, a message to it is "
                  "dropped (%" G_GUINT64_FORMAT " so far; it is sent again "
                  "later)",
                  host, m->stats.send_refused);
    else
        g_debug("could not send to %s: %s", host, zmq_strerror(zmq_errno()));
    return false;
}

bool
manager_send(Manager *m, const char *host, JsonObject *msg)
{
    /* agents drop what a manager of an older epoch sends (a stale one
     * that has not noticed yet: manager-leader.c) */
    if (m->epoch > 0)
        json_object_set_int_member(msg, "epoch", m->epoch);
    return wire_send(m->router, host, msg) || send_refused(m, host);
}

/* manager_text: @msg as manager_send would send it, made once for many
 * hosts (send_text); NULL when it is over the wire's limit */
static GBytes *
manager_text(Manager *m, JsonObject *msg)
{
    if (m->epoch > 0)
        json_object_set_int_member(msg, "epoch", m->epoch);
    return wire_text(msg);
}

/* send_text: manager_send of a text from manager_text, shared, not copied */
static bool
send_text(Manager *m, const char *host, GBytes *text)
{
    return wire_send_text(m->router, host, text) || send_refused(m, host);
}

/* answers_clear: forget the answers made */
static void
answers_clear(Answers *a)
{
    g_clear_pointer(&a->by_offset, g_hash_table_unref);
    a->bytes = 0;
}

/* answers_get: the answer made for @offset under this epoch, or NULL */
static GBytes *
answers_get(Manager *m, Answers *a, gint64 offset)
{
    return a->by_offset && a->epoch == m->epoch
               ? g_hash_table_lookup(a->by_offset, &offset)
               : NULL;
}

/* answers_add: make @reply's text (manager_text) and keep it as the answer
 * for @offset (those of another epoch forgotten); the text, borrowed, or
 * NULL when it is over the wire's limit */
static GBytes *
answers_add(Manager *m, Answers *a, gint64 offset, JsonObject *reply)
{
    GBytes *text = manager_text(m, reply);

    if (!text)
        return NULL;
    if (!a->by_offset || a->epoch != m->epoch) {
        answers_clear(a);
        a->by_offset = g_hash_table_new_full(
            g_int64_hash, g_int64_equal, g_free, (GDestroyNotify)g_bytes_unref);
        a->epoch = m->epoch;
    }
    /* callers add what answers_get did not find: nothing is replaced */
    g_hash_table_insert(a->by_offset, g_memdup2(&offset, sizeof(offset)), text);
    a->bytes += g_bytes_get_size(text);
    return text;
}

static void
site_profile_free(SiteProfile *p)
{
    if (!p)
        return;
    g_free(p->text);
    g_free(p->digest);
    if (p->chunks)
        g_array_unref(p->chunks);
    answers_clear(&p->answers);
    g_free(p);
}

void
manager_served_free(ServedImage *k)
{
    if (!k)
        return;
    g_free(k->id);
    g_clear_pointer(&k->index, g_bytes_unref);
    answers_clear(&k->index_answers);
    site_profile_free(k->profile);
    g_free(k);
}

/* served_bytes: what @k holds, roughly: its index, its profile's numbers
 * and text, and the answers made of them */
static gsize
served_bytes(const ServedImage *k)
{
    gsize n =
        (k->index ? g_bytes_get_size(k->index) : 0) + k->index_answers.bytes;

    if (k->profile)
        n += strlen(k->profile->text) +
             k->profile->chunks->len * sizeof(guint64) +
             k->profile->answers.bytes;
    return n;
}

/* served_find: what is kept of image @id, or NULL; marked as asked for
 * now when @use */
static ServedImage *
served_find(Manager *m, const char *id, bool use)
{
    ServedImage *k = g_hash_table_lookup(m->served, id);

    if (k && use)
        k->used = ++m->served_clock;
    return k;
}

/* served_add: what is kept of image @id, made empty when nothing is;
 * marked as asked for now */
static ServedImage *
served_add(Manager *m, const char *id)
{
    ServedImage *k = served_find(m, id, true);

    if (!k) {
        k = g_new0(ServedImage, 1);
        k->id = g_strdup(id);
        k->used = ++m->served_clock;
        g_hash_table_insert(m->served, k->id, k);
    }
    return k;
}

/* served_trim: forget the images asked for least recently until at most
 * SERVED_IMAGES_MAX are kept and, besides @spare (the one being
 * answered), at most SERVED_BYTES_MAX bytes */
static void
served_trim(Manager *m, ServedImage *spare)
{
    for (;;) {
        GHashTableIter it;
        gpointer value;
        ServedImage *oldest = NULL;
        gsize bytes = 0;

        g_hash_table_iter_init(&it, m->served);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
            ServedImage *k = value;

            if (k == spare)
                continue;
            bytes += served_bytes(k);
            if (!oldest || k->used < oldest->used)
                oldest = k;
        }
        if (!oldest || (g_hash_table_size(m->served) <= SERVED_IMAGES_MAX &&
                        bytes <= SERVED_BYTES_MAX))
            return;
        g_debug("image %.19s: its index and profile no longer kept (asked "
                "for least recently)",
                oldest->id);
        g_hash_table_remove(m->served, oldest->id);
    }
}

static JsonObject *
get_object(JsonObject *o, const char *member)
{
    JsonNode *n = o ? json_object_get_member(o, member) : NULL;

    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static bool
handle_hello(Manager *m, const char *host, const char *address, JsonObject *msg,
             GError **error)
{
    HostRuntime *h = manager_runtime_get(m, host);
    const char *boot = json_util_get_string(msg, "boot", NULL);
    const char *peer = json_util_get_string(msg, "peer_endpoint", NULL);
    JsonObject *cap = get_object(msg, "capacity");
    g_autoptr(JsonObject) welcome = wire_new("welcome");
    bool restarted = h->boot && boot && !g_str_equal(h->boot, boot);

    if (!state_host_hello(m->db, host, address,
                          json_util_get_int(cap, "cpus", 0),
                          json_util_get_int(cap, "memory_kib", 0),
                          json_util_get_string(msg, "virt", NULL), error))
        return false;
    if ((!h->boot || restarted) &&
        !manager_event(m, error,
                       restarted ? "host-restarted" : "host-connected", NULL,
                       host,
                       "host %s %s from %s (%" G_GINT64_FORMAT
                       " CPUs, %" G_GINT64_FORMAT " MiB)",
                       host, restarted ? "restarted" : "connected", address,
                       json_util_get_int(cap, "cpus", 0),
                       json_util_get_int(cap, "memory_kib", 0) / 1024))
        return false;
    /* whatever it was sent before may be lost: send it again now */
    if (!state_command_resend(m->db, host, error))
        return false;
    g_free(h->boot);
    h->boot = g_strdup(boot);
    g_clear_pointer(&h->peer_endpoint, g_free);
    if (peer && g_str_has_prefix(peer, "tcp://") &&
        strlen(peer) <= WIRE_ENDPOINT_MAX)
        h->peer_endpoint = g_strdup(peer);
    m->peers_changed = true; /* everyone's peer list may change */
    json_object_set_int_member(welcome, "report_ms", MANAGER_REPORT_MS);
    manager_send(m, host, welcome);
    return true;
}

/* host_back: @host is heard from: no longer lost (an event if it was) */
static bool
host_back(Manager *m, const char *host, GError **error)
{
    bool was_lost = false;

    if (!state_host_seen(m->db, host, &was_lost, error))
        return false;
    return !was_lost || manager_event(m, error, "host-back", NULL, host,
                                      "host %s is back", host);
}

static bool
record_images(Manager *m, const char *host, JsonArray *images, GError **error)
{
    for (guint i = 0; i < json_array_get_length(images); i++) {
        JsonNode *n = json_array_get_element(images, i);
        JsonObject *im, *bytes;
        HostImageRow row = {0};

        if (!JSON_NODE_HOLDS_OBJECT(n))
            continue;
        im = json_node_get_object(n);
        bytes = get_object(im, "fetched_bytes");
        row.host = (char *)host;
        row.image = (char *)json_util_get_string(im, "image", NULL);
        if (!row.image)
            continue;
        row.cached = json_util_get_double(im, "cached_fraction", 0);
        row.origin_bytes = json_util_get_int(bytes, "origin", 0);
        row.peer_bytes = json_util_get_int(bytes, "peer", 0);
        row.local_bytes = json_util_get_int(bytes, "local", 0);
        if (!state_host_image_put(m->db, &row, error))
            return false;
    }
    return true;
}

/* paused_by_io: @c (a reported clone) is paused by an I/O error of its
 * disk, or was and its agent's resumes have not yet held ("io_paused":
 * resumed, its retried read may still fail) */
static bool
paused_by_io(JsonObject *c)
{
    return c &&
           ((g_strcmp0(json_util_get_string(c, "state", NULL), "paused") == 0 &&
             g_strcmp0(json_util_get_string(c, "reason", NULL), "ioerror") ==
                 0) ||
            json_util_get_bool(c, "io_paused", false));
}

/*
 * note_io_pauses: an event when a clone of @host is paused by an I/O error
 * of its disk (a read its shim could not answer in time), and when it runs
 * again (its agent resumes it: agent-link.c)
 */
static bool
note_io_pauses(Manager *m, const char *host, HostRuntime *h, JsonArray *arr,
               GError **error)
{
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonNode *n = json_array_get_element(arr, i);
        JsonObject *c =
            JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
        const char *name = json_util_get_string(c, "name", NULL);
        const ReportedClone *before;
        bool was, is;

        if (!name)
            continue;
        /* the previous report's */
        before =
            h->view_by_name ? g_hash_table_lookup(h->view_by_name, name) : NULL;
        was = paused_by_io(before ? before->obj : NULL);
        is = paused_by_io(c);
        if (is && !was &&
            !manager_event(m, error, "clone-paused",
                           json_util_get_string(c, "service", NULL), host,
                           "%s paused by an I/O error of its disk; its "
                           "agent resumes it",
                           name))
            return false;
        if (was && !is &&
            g_strcmp0(json_util_get_string(c, "state", NULL), "running") == 0 &&
            !manager_event(m, error, "clone-resumed",
                           json_util_get_string(c, "service", NULL), host,
                           "%s runs again after an I/O error", name))
            return false;
    }
    return true;
}

static bool
handle_report(Manager *m, const char *host, JsonObject *msg, GError **error)
{
    HostRuntime *h = manager_runtime_get(m, host);
    JsonNode *clones = json_object_get_member(msg, "clones");
    JsonNode *images = json_object_get_member(msg, "images");
    JsonArray *arr;

    if (!clones || !JSON_NODE_HOLDS_ARRAY(clones) || !images ||
        !JSON_NODE_HOLDS_ARRAY(images)) {
        g_warning("host %s: a report without clones and images arrays: "
                  "dropped",
                  host);
        return true;
    }
    if (!host_back(m, host, error) ||
        !record_images(m, host, json_node_get_array(images), error))
        return false;
    if (!h->boot) {
        /* a report before any hello (the manager restarted): ask who */
        g_autoptr(JsonObject) who = wire_new("who");

        manager_send(m, host, who);
    }
    arr = json_node_get_array(clones);
    if (!note_io_pauses(m, host, h, arr, error))
        return false;
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonNode *n = json_array_get_element(arr, i);

        if (JSON_NODE_HOLDS_OBJECT(n)) {
            JsonObject *c = json_node_get_object(n);

            /* the report's time, for CPU deltas */
            json_object_set_int_member(c, "time_ms",
                                       json_util_get_int(msg, "time_ms", 0));
            mscale_report_clone(m, host, c);
        }
    }
    manager_runtime_set_report(h, arr, json_node_get_array(images));
    h->reported = true;
    if (h->acked) /* this report shows what the acks created */
        g_hash_table_remove_all(h->acked);
    return true;
}

/* note_created: the clones of create @cmd, acknowledged by @host, count
 * as there until its next report (no second create meanwhile) */
static void
note_created(Manager *m, const char *host, const CommandRow *cmd)
{
    HostRuntime *h = manager_runtime_get(m, host);
    g_autoptr(JsonObject) body =
        cmd->body ? wire_parse(cmd->body, strlen(cmd->body), NULL) : NULL;
    JsonNode *idx = body ? json_object_get_member(body, "indexes") : NULL;
    JsonArray *arr;

    if (!idx || !JSON_NODE_HOLDS_ARRAY(idx) || !cmd->service)
        return;
    arr = json_node_get_array(idx);
    if (!h->acked)
        h->acked = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    for (guint i = 0; i < json_array_get_length(arr); i++)
        g_hash_table_add(h->acked,
                         g_strdup_printf("create:%s:%" G_GINT64_FORMAT,
                                         cmd->service,
                                         json_array_get_int_element(arr, i)));
}

/* ack_succeeded: something changed for the service (a clone went away,
 * say one of a lost host that came back): its creates may work now */
static bool
ack_succeeded(Manager *m, const char *host, const CommandRow *cmd,
              JsonObject *msg, GError **error)
{
    const char *summary = json_util_get_string(msg, "summary", NULL);
    g_autofree char *suffix =
        g_strdup_printf("/%s", cmd->service ? cmd->service : "");
    g_autofree char *key = g_strdup_printf("%s%s", host, suffix);
    GHashTableIter it;
    gpointer k;

    if (!state_command_finish(m->db, cmd->id, COMMAND_DONE, NULL, error) ||
        !manager_event(
            m, error,
            g_str_equal(cmd->op, "clone-create")  ? "clones-created"
            : g_str_equal(cmd->op, "clone-start") ? "clones-started"
                                                  : "clones-destroyed",
            cmd->service, host,
            "command %" G_GINT64_FORMAT " (%s) done on %s%s%s", cmd->id,
            cmd->op, host, summary ? ": " : "", summary ? summary : ""))
        return false;
    g_hash_table_iter_init(&it, m->backoff);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        if (g_str_has_suffix(k, suffix))
            g_hash_table_iter_remove(&it);
    }
    g_hash_table_remove(m->failures, key);
    if (g_str_equal(cmd->op, "clone-create"))
        note_created(m, host, cmd);
    return true;
}

/* ack_failed: no creates of the service on the host for a while, longer
 * after each failure in a row */
static bool
ack_failed(Manager *m, const char *host, const CommandRow *cmd, JsonObject *msg,
           GError **error)
{
    const char *err = json_util_get_string(msg, "error", NULL);
    g_autofree char *key =
        g_strdup_printf("%s/%s", host, cmd->service ? cmd->service : "");
    guint fails = GPOINTER_TO_UINT(g_hash_table_lookup(m->failures, key)) + 1;
    guint delay = MIN(BACKOFF_BASE_S << MIN(fails - 1, 6u), BACKOFF_MAX_S);
    gint64 *until;

    if (!state_command_finish(m->db, cmd->id, COMMAND_FAILED, err, error) ||
        !manager_event(m, error, "command-failed", cmd->service, host,
                       "command %" G_GINT64_FORMAT " (%s) failed on %s: %s; "
                       "trying again in %u s",
                       cmd->id, cmd->op, host, err ? err : "no reason given",
                       delay))
        return false;
    until = g_new(gint64, 1);
    *until = g_get_monotonic_time() + (gint64)delay * G_USEC_PER_SEC;
    g_hash_table_insert(m->failures, g_strdup(key), GUINT_TO_POINTER(fails));
    g_hash_table_insert(m->backoff, g_steal_pointer(&key), until);
    return true;
}

static bool
handle_ack(Manager *m, const char *host, JsonObject *msg, GError **error)
{
    gint64 id = json_util_get_int(msg, "id", -1);
    g_autoptr(CommandRow) cmd = NULL;

    if (!state_command_get_pending(m->db, id, host, &cmd, error))
        return false;
    if (!cmd) {
        g_debug("host %s: ack of command %" G_GINT64_FORMAT
                " that is not pending: ignored",
                host, id);
        return true;
    }
    if (json_util_get_bool(msg, "ok", false))
        return ack_succeeded(m, host, cmd, msg, error);
    return ack_failed(m, host, cmd, msg, error);
}

static bool
handle_profiles(Manager *m, const char *host, JsonObject *msg, GError **error)
{
    JsonNode *arr = json_object_get_member(msg, "profiles");

    if (!arr || !JSON_NODE_HOLDS_ARRAY(arr))
        return true;
    for (guint i = 0; i < json_array_get_length(json_node_get_array(arr));
         i++) {
        JsonNode *n = json_array_get_element(json_node_get_array(arr), i);
        JsonObject *p;
        JsonNode *chunks;
        g_autoptr(JsonGenerator) gen = json_generator_new();
        g_autofree char *text = NULL;
        ServedImage *k;

        if (!JSON_NODE_HOLDS_OBJECT(n))
            continue;
        p = json_node_get_object(n);
        chunks = json_object_get_member(p, "chunks");
        if (!json_util_get_string(p, "image", NULL) || !chunks ||
            !JSON_NODE_HOLDS_ARRAY(chunks))
            continue;
        if (json_array_get_length(json_node_get_array(chunks)) >
            WIRE_PROFILE_CHUNKS_MAX) {
            g_warning("host %s: dropped a profile of image %.19s of %u chunk "
                      "numbers (at most %u)",
                      host, json_util_get_string(p, "image", ""),
                      json_array_get_length(json_node_get_array(chunks)),
                      WIRE_PROFILE_CHUNKS_MAX);
            continue;
        }
        json_generator_set_root(gen, chunks);
        text = json_generator_to_data(gen, NULL);
        if (!state_profile_put(m->db, host,
                               json_util_get_string(p, "image", NULL),
                               json_util_get_int(p, "boots", 0), text, error))
            return false;
        /* the site profile may change: read it again (answer_at_once
         * serves the kept one without reading) */
        if ((k = served_find(m, json_util_get_string(p, "image", ""), false)))
            g_clear_pointer(&k->profile, site_profile_free);
    }
    return true;
}

static bool
handle_requests(Manager *m, const char *host, JsonObject *msg, GError **error)
{
    const char *service = json_util_get_string(msg, "service", NULL);
    gint64 count = json_util_get_int(msg, "count", -1);

    /* a load balancer's reporter sends these only: they keep it up */
    if (!host_back(m, host, error))
        return false;
    if (service && count >= 0 && count <= G_MAXINT32)
        return mscale_requests(m, service, count, error);
    g_warning("host %s: dropped a requests message without a service and a "
              "count",
              host);
    return true;
}

/* image_index_by_id: the index of the registered image whose id is @id,
 * kept (an id is its index's digest, so what is kept never goes wrong),
 * as *ret (borrowed), and what is kept of the image as *ret_served; both
 * NULL when no image has that id */
static bool
image_index_by_id(Manager *m, const char *id, GBytes **ret,
                  ServedImage **ret_served, GError **error)
{
    ServedImage *k = served_find(m, id, true);
    g_autoptr(GPtrArray) rows = NULL;

    *ret = NULL;
    *ret_served = NULL;
    if (k && k->index) {
        *ret = k->index;
        *ret_served = k;
        return true;
    }
    if (!(rows = state_image_list(m->db, error)))
        return false;
    for (guint i = 0; i < rows->len; i++) {
        ImageRow *r = rows->pdata[i];
        g_autoptr(ImageRow) full = NULL;

        if (!g_str_equal(r->id, id))
            continue;
        if (!state_image_get(m->db, r->name, &full, error))
            return false;
        if (!full || !full->index || !g_str_equal(full->id, id))
            return true;
        k = served_add(m, id);
        k->index = g_bytes_ref(full->index);
        served_trim(m, k);
        *ret = k->index;
        *ret_served = k;
        return true;
    }
    return true;
}

/* index-get: a slice of an image's index, which clone-create no longer
 * carries (docs/site-protocol.md) */
static bool
handle_index_get(Manager *m, const char *host, JsonObject *msg, GError **error)
{
    const char *id = json_util_get_string(msg, "image", NULL);
    gint64 offset = json_util_get_int(msg, "offset", -1);
    g_autoptr(JsonObject) reply = wire_new("index");
    ServedImage *k = NULL;
    GBytes *index = NULL;
    GBytes *text;
    gsize size;

    if (!id || offset < 0) {
        g_warning("host %s: dropped an index-get without an image and an "
                  "offset",
                  host);
        return true;
    }
    if (!image_index_by_id(m, id, &index, &k, error))
        return false;
    /* an image's answers are made once, for every host that asks: a
     * thousand after a submit */
    if (index && (text = answers_get(m, &k->index_answers, offset))) {
        send_text(m, host, text);
        return true;
    }
    json_object_set_string_member(reply, "image", id);
    json_object_set_int_member(reply, "offset", offset);
    size = index ? g_bytes_get_size(index) : 0;
    if (!index) {
        g_warning("host %s: asked for the index of image %s, which is not "
                  "registered",
                  host, id);
        json_object_set_string_member(reply, "error",
                                      "no image of this id is registered");
    } else if ((guint64)offset > size) {
        json_object_set_string_member(reply, "error",
                                      "the offset is past the index's end");
    } else {
        gsize len = MIN(INDEX_SLICE_BYTES, size - (gsize)offset);
        g_autofree char *b64 = g_base64_encode(
            (const guint8 *)g_bytes_get_data(index, NULL) + offset, len);

        json_object_set_int_member(reply, "size", (gint64)size);
        json_object_set_string_member(reply, "data", b64);
        g_debug("host %s: index of %.19s, %" G_GSIZE_FORMAT
                " bytes at %" G_GINT64_FORMAT " of %" G_GSIZE_FORMAT,
                host, id, len, offset, size);
        if ((text = answers_add(m, &k->index_answers, offset, reply))) {
            served_trim(m, k);
            send_text(m, host, text);
            return true;
        }
    }
    manager_send(m, host, reply);
    return true;
}

bool
manager_site_profile(Manager *m, const char *id, SiteProfile **ret,
                     GError **error)
{
    g_autofree char *text = NULL;
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GArray) chunks = NULL;
    ServedImage *k;
    SiteProfile *p;

    *ret = NULL;
    if (!state_profile_best(m->db, id, &text, error))
        return false;
    if (!text)
        return true;
    k = served_find(m, id, true);
    if (k && k->profile && g_str_equal(k->profile->text, text)) {
        *ret = k->profile; /* read and parsed already */
        return true;
    }
    if (!json_parser_load_from_data(parser, text, -1, NULL) ||
        !(chunks = json_util_chunk_numbers(json_parser_get_root(parser)))) {
        g_warning("image %.19s: its stored access profile is not an array of "
                  "chunk numbers: left out",
                  id);
        return true;
    }
    if (chunks->len > WIRE_PROFILE_CHUNKS_MAX) /* stored before the bound */
        g_array_set_size(chunks, WIRE_PROFILE_CHUNKS_MAX);
    p = g_new0(SiteProfile, 1);
    p->text = g_steal_pointer(&text);
    p->digest = profile_digest(chunks);
    p->chunks = g_steal_pointer(&chunks);
    k = served_add(m, id);
    site_profile_free(k->profile);
    k->profile = p;
    served_trim(m, k);
    *ret = p;
    return true;
}

/* profile-get: a slice of the site's access profile of an image, which
 * clone-create names by its digest only (docs/site-protocol.md) */
static bool
handle_profile_get(Manager *m, const char *host, JsonObject *msg,
                   GError **error)
{
    const char *id = json_util_get_string(msg, "image", NULL);
    gint64 offset = json_util_get_int(msg, "offset", 0);
    g_autoptr(JsonObject) reply = wire_new("profile");
    SiteProfile *p = NULL;
    GBytes *text;

    if (!id || offset < 0) {
        g_warning("host %s: dropped a profile-get without an image or with "
                  "a negative offset",
                  host);
        return true;
    }
    if (!manager_site_profile(m, id, &p, error))
        return false;
    if (p && (text = answers_get(m, &p->answers, offset))) {
        send_text(m, host, text); /* made once for every host */
        return true;
    }
    json_object_set_string_member(reply, "image", id);
    json_object_set_int_member(reply, "offset", offset);
    if (!p || (guint64)offset > p->chunks->len) {
        json_object_set_string_member(reply, "error",
                                      !p ? "no host has sent a profile of "
                                           "this image"
                                         : "the offset is past the profile's "
                                           "end");
        manager_send(m, host, reply);
        return true;
    }
    {
        guint n = MIN(PROFILE_SLICE_CHUNKS, p->chunks->len - (guint)offset);
        JsonArray *arr = json_array_sized_new(n);

        for (guint i = 0; i < n; i++)
            json_array_add_int_element(
                arr,
                (gint64)g_array_index(p->chunks, guint64, (guint)offset + i));
        json_object_set_string_member(reply, "profile_id", p->digest);
        json_object_set_int_member(reply, "total", p->chunks->len);
        json_object_set_array_member(reply, "chunks", arr);
        g_debug("host %s: the profile of %.19s, %u chunk numbers at "
                "%" G_GINT64_FORMAT " of %u",
                host, id, n, offset, p->chunks->len);
    }
    if (!(text = answers_add(m, &p->answers, offset, reply)))
        return true; /* cannot be: a slice is small */
    served_trim(m, served_find(m, id, false));
    send_text(m, host, text);
    return true;
}

static bool
dispatch(Manager *m, const char *host, const char *address, JsonObject *msg,
         GError **error)
{
    const char *type = json_util_get_string(msg, "type", NULL);

    if (g_str_equal(type, "hello"))
        return handle_hello(m, host, address, msg, error);
    if (g_str_equal(type, "report"))
        return handle_report(m, host, msg, error);
    if (g_str_equal(type, "ack"))
        return handle_ack(m, host, msg, error);
    if (g_str_equal(type, "profiles"))
        return handle_profiles(m, host, msg, error);
    if (g_str_equal(type, "requests"))
        return handle_requests(m, host, msg, error);
    if (g_str_equal(type, "index-get"))
        return handle_index_get(m, host, msg, error);
    if (g_str_equal(type, "profile-get"))
        return handle_profile_get(m, host, msg, error);
    g_warning("host %s: dropped a message of unknown type '%s'", host, type);
    return true;
}

static void
inbox_message_free(InboxMessage *im)
{
    g_free(im->host);
    g_free(im->address);
    g_bytes_unref(im->body);
    g_free(im);
}

void
manager_inbox_clear(Manager *m)
{
    InboxMessage *im;

    while ((im = g_queue_pop_head(&m->inbox)))
        inbox_message_free(im);
    m->inbox_bytes = 0;
}

/* apply_one: one message from the inbox, in a savepoint (invariant 1) */
static void
apply_one(Manager *m, InboxMessage *im, GHashTable *touched)
{
    g_autoptr(GError) err = NULL;
    gsize len = 0;
    const void *data = g_bytes_get_data(im->body, &len);
    /* an empty frame's GBytes has no data pointer: json-glib wants one */
    g_autoptr(JsonObject) msg = wire_parse(data ? data : "", len, &err);

    if (!msg) {
        g_warning("host %s: dropped a malformed message: %s", im->host,
                  err->message);
        return;
    }
    manager_runtime_get(m, im->host)->heard = true;
    g_hash_table_add(touched, im->host);
    if (!state_savepoint(m->db, &err) ||
        !dispatch(m, im->host, im->address, msg, &err) ||
        !state_release(m->db, &err)) {
        state_rollback_to(m->db);
        g_warning("host %s: a '%s' message not applied: %s", im->host,
                  json_util_get_string(msg, "type", "?"), err->message);
    }
}

/* forget_batch: the batch's commit failed: its hosts are asked again
 * (invariant 2) */
static void
forget_batch(Manager *m, GHashTable *touched)
{
    GHashTableIter it;
    gpointer k;

    g_hash_table_iter_init(&it, touched);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        HostRuntime *h = manager_runtime_get(m, k);

        g_clear_pointer(&h->boot, g_free);
        h->reported = false;
    }
}

bool
manager_inbox_apply(Manager *m)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) batch =
        g_ptr_array_new_with_free_func((GDestroyNotify)inbox_message_free);
    g_autoptr(GHashTable) touched = g_hash_table_new(g_str_hash, g_str_equal);
    gint64 end = g_get_monotonic_time() + INBOX_BATCH_US;
    bool held;

    if (g_queue_is_empty(&m->inbox))
        return false;
    if (!state_begin(m->db, &err)) {
        g_warning("messages not applied: %s", err->message);
        return true; /* they stay: the next call tries again */
    }
    held = log_batch_hold(); /* the batch's events: one write */
    while (batch->len < INBOX_BATCH_MESSAGES && g_get_monotonic_time() < end) {
        InboxMessage *im = g_queue_pop_head(&m->inbox);

        if (!im)
            break;
        m->inbox_bytes -= g_bytes_get_size(im->body);
        g_ptr_array_add(batch, im);
        apply_one(m, im, touched);
    }
    m->stats.handled += batch->len;
    m->stats.batches++;
    if (!state_commit(m->db, &err)) {
        state_rollback(m->db);
        forget_batch(m, touched);
        g_warning("%u messages not applied: %s", batch->len, err->message);
    }
    log_batch_flush(held);
    return !g_queue_is_empty(&m->inbox);
}

/*
 * answer_at_once: answer @body from @host now, without the inbox, when it
 * is an index-get or profile-get whose answer was made already (invariant
 * 4 holds: the main thread).  An index's answers never go stale (an id is
 * its index's digest); the kept site profile is dropped whenever a profile
 * of its image is stored (handle_profiles), and answers are made per
 * leader epoch.  False when the message is anything else: it goes to the
 * inbox.
 */
static bool
answer_at_once(Manager *m, const char *host, zmq_msg_t *body)
{
    gsize len = zmq_msg_size(body);
    g_autoptr(JsonObject) msg = NULL;
    const char *type, *id;
    gint64 offset;
    GBytes *text = NULL;
    ServedImage *k;

    /* a request is small; most messages (reports) are not looked at */
    if (len > 512 || !memmem(zmq_msg_data(body), len, "-get\"", 5) ||
        !(msg = wire_parse(zmq_msg_data(body), len, NULL)))
        return false;
    type = json_util_get_string(msg, "type", "");
    id = json_util_get_string(msg, "image", NULL);
    offset = json_util_get_int(msg, "offset",
                               g_str_equal(type, "index-get") ? -1 : 0);
    if (!id || offset < 0)
        return false;
    if (!(k = served_find(m, id, true)))
        return false;
    if (g_str_equal(type, "index-get") && k->index)
        text = answers_get(m, &k->index_answers, offset);
    else if (g_str_equal(type, "profile-get") && k->profile)
        text = answers_get(m, &k->profile->answers, offset);
    if (!text)
        return false;
    send_text(m, host, text);
    m->stats.received++;
    m->stats.handled++;
    m->stats.answered_at_once++;
    return true;
}

/* inbox_add: a message read from @host, stamped (alive now) and queued */
static void
inbox_add(Manager *m, const char *host, const char *address, zmq_msg_t *body)
{
    InboxMessage *im = g_new0(InboxMessage, 1);
    HostRuntime *h = manager_runtime_get(m, host);

    h->last_seen = g_get_monotonic_time();
    im->host = g_strdup(host);
    im->address = g_strdup(address);
    im->body = g_bytes_new(zmq_msg_data(body), zmq_msg_size(body));
    m->inbox_bytes += zmq_msg_size(body);
    g_queue_push_tail(&m->inbox, im);
    m->stats.received++;
    m->stats.inbox_peak = MAX(m->stats.inbox_peak, m->inbox.length);
}

/* recv_frame: the next frame of @sock into @msg (initialized); false when
 * none is waiting */
static bool
recv_frame(void *sock, zmq_msg_t *msg)
{
    zmq_msg_init(msg);
    if (zmq_msg_recv(msg, sock, ZMQ_DONTWAIT) >= 0)
        return true;
    zmq_msg_close(msg);
    return false;
}

/* drop_extra: read the frames after @body of a multi-frame message into
 * @body (the last one); whether there were any */
static bool
drop_extra(void *sock, zmq_msg_t *body)
{
    bool extra = false;

    while (zmq_msg_more(body)) { /* one frame per message: drop more */
        zmq_msg_t junk;

        extra = true;
        if (!recv_frame(sock, &junk))
            break;
        zmq_msg_close(body);
        *body = junk;
    }
    return extra;
}

/* inbox_full: invariant 3; the first time in a while, said */
static bool
inbox_full(Manager *m)
{
    if (m->inbox.length < INBOX_MAX_MESSAGES &&
        m->inbox_bytes < INBOX_MAX_BYTES)
        return false;
    m->stats.backpressure++;
    if (should_log_backpressure(m))
        g_warning("backpressure: %u messages (%zu bytes) wait to be applied; "
                  "not reading from the agents until they are",
                  m->inbox.length, m->inbox_bytes);
    return true;
}

void
manager_router_drain(Manager *m)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);

    while (!inbox_full(m)) {
        zmq_msg_t id, body;
        const char *user, *addr;
        bool extra;

        if (!recv_frame(m->router, &id))
            return;
        if (!zmq_msg_more(&id) || !recv_frame(m->router, &body)) {
            zmq_msg_close(&id);
            continue;
        }
        extra = drop_extra(m->router, &body);
        user = zmq_msg_gets(&body, "User-Id");
        addr = zmq_msg_gets(&body, "Peer-Address");
        if (!user || !*user)
            g_warning("dropped a message without an authenticated host");
        else if (extra)
            g_warning("host %s: dropped a message of several frames", user);
        else if (!answer_at_once(m, user, &body))
            inbox_add(m, user, addr ? addr : "?", &body);
        else /* alive, as inbox_add stamps it */
            manager_runtime_get(m, user)->last_seen = g_get_monotonic_time();
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
}

/* ---- registration: hosts not yet accepted say who they are ---------- */

static void
refuse(JsonObject *reply, const char *reason)
{
    json_object_set_string_member(reply, "state", "refused");
    json_object_set_string_member(reply, "reason", reason);
}

/* handle_register: answer a registration in @reply; false (nothing
 * written: the caller rolls back) when the database fails */
static bool
handle_register(Manager *m, const char *key, const char *address,
                JsonObject *msg, JsonObject *reply, GError **error)
{
    const char *name = json_util_get_string(msg, "host", NULL);
    g_autoptr(HostRow) known = NULL;
    g_autoptr(HostRow) other = NULL;

    if (!name || !wire_host_name_valid(name)) {
        refuse(reply, "invalid host name");
        return true;
    }
    if (!state_host_get_by_key(m->db, key, &known, error))
        return false;
    if (!known || !known->accepted) {
        /* its key may have reached hosts_dir since the ZAP handler last
         * looked (a file written after the directory was read: the agent
         * is not admitted again until this answer says "accepted") */
        g_autofree char *dir_name = manager_accept_from_dir(m, key, error);

        if (!dir_name && error && *error)
            return false;
        if (dir_name) {
            g_clear_pointer(&known, host_row_free);
            if (!state_host_get_by_key(m->db, key, &known, error))
                return false;
        }
    }
    if (!known) {
        if (!state_host_get(m->db, name, &other, error))
            return false;
        if (other) {
            refuse(reply, "another host has that name");
            return !manager_should_log_refusal(m, key) ||
                   manager_event(m, error, "host-refused", NULL, name,
                                 "a host from %s calls itself %s but has "
                                 "another key (%s)",
                                 address, name, key);
        }
        if (!state_host_insert_pending(m->db, name, key, address, error) ||
            !manager_event(m, error, "host-pending", NULL, name,
                           "host %s from %s asks to join (key %s): sporectl "
                           "host-accept %s",
                           name, address, key, name) ||
            !state_host_get_by_key(m->db, key, &known, error))
            return false;
    }
    json_object_set_string_member(reply, "host", known->name);
    json_object_set_string_member(reply, "state",
                                  known->accepted ? "accepted" : "pending");
    return true;
}

/* register_one: a registration message, answered */
static void
register_one(Manager *m, zmq_msg_t *id, const char *key, const char *addr,
             JsonObject *msg)
{
    g_autoptr(JsonObject) reply = wire_new("registration");
    g_autoptr(GError) err = NULL;
    g_autofree char *text = NULL;

    {
        g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);

        if (!state_begin(m->db, &err) ||
            !handle_register(m, key, addr, msg, reply, &err) ||
            !state_commit(m->db, &err)) {
            state_rollback(m->db);
            g_warning("registration from %s not recorded: %s", addr,
                      err->message);
            return; /* no answer: the host asks again */
        }
    }
    text = json_util_to_text(reply, false);
    zmq_send(m->reg, zmq_msg_data(id), zmq_msg_size(id),
             ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(m->reg, text, strlen(text), ZMQ_DONTWAIT);
}

void
manager_register_drain(Manager *m)
{
    for (int budget = 0; budget < REGISTER_BUDGET_MESSAGES; budget++) {
        zmq_msg_t id, body;
        const char *key, *addr;
        g_autoptr(JsonObject) msg = NULL;

        if (!recv_frame(m->reg, &id))
            return;
        if (!zmq_msg_more(&id) || !recv_frame(m->reg, &body)) {
            zmq_msg_close(&id);
            continue;
        }
        if (drop_extra(m->reg, &body)) {
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            continue;
        }
        key = zmq_msg_gets(&body, "User-Id");
        addr = zmq_msg_gets(&body, "Peer-Address");
        msg = wire_parse(zmq_msg_data(&body), zmq_msg_size(&body), NULL);
        if (key && msg &&
            g_str_equal(json_util_get_string(msg, "type", ""), "register"))
            register_one(m, &id, key, addr ? addr : "?", msg);
        else
            g_warning("registration socket: dropped a message that is not "
                      "a registration");
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
}

/* ---- binding ------------------------------------------------------------ */

/* bind_agents: the agents' ROUTER, CURVE server, accepted keys only */
static bool
bind_agents(Manager *m, GError **error)
{
    int one = 1, rcvhwm = ROUTER_RCVHWM_MESSAGES;

    m->router = zmq_socket(m->zctx, ZMQ_ROUTER);
    wire_server_defaults(m->router);
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
        return false;
    }
    /* what ZeroMQ itself holds unread per host: beyond it the host's
     * connection waits (backpressure reaches the agent), rather than
     * spored's memory growing while its inbox is full */
    zmq_setsockopt(m->router, ZMQ_RCVHWM, &rcvhwm, sizeof(rcvhwm));
    zmq_setsockopt(m->router, ZMQ_ROUTER_HANDOVER, &one, sizeof(one));
    zmq_setsockopt(m->router, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    if (zmq_bind(m->router, m->config.listen) != 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot listen on %s: %s", m->config.listen,
                    zmq_strerror(zmq_errno()));
        return false;
    }
    return true;
}

/* bind_registrations: the registration ROUTER, the port after listen's,
 * any CURVE key, small frames only */
static bool
bind_registrations(Manager *m, GError **error)
{
    int one = 1;
    int64_t small = REGISTER_MAX_MSG_BYTES;

    m->reg = zmq_socket(m->zctx, ZMQ_ROUTER);
    wire_server_defaults(m->reg);
    zmq_setsockopt(m->reg, ZMQ_MAXMSGSIZE, &small, sizeof(small));
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
        return false;
    }
    return true;
}

bool
manager_transport_bind(Manager *m, GError **error)
{
    m->zctx = zmq_ctx_new();
    if (!zmq_has("curve")) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "this libzmq has no CURVE support");
        return false;
    }
    /* the ZAP handler must be bound before any CURVE socket */
    m->zap = spore_zap_bind(m->zctx, error);
    if (!m->zap)
        return false;
    return bind_agents(m, error) && bind_registrations(m, error);
}
