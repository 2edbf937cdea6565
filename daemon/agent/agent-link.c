/*
 * agent-link.c: the agent's connection to the site manager (agent.h, "the
 * site link"): registration, hello, reports and profiles, and the
 * manager's commands, each applied at most once (the journal) and run by
 * agent-commands.c.
 *
 * Two threads: the link thread owns the ZeroMQ sockets (hello, reports,
 * receiving commands, sending acknowledgements); the worker runs commands
 * one at a time and hands the acknowledgements back through a queue
 * (`acks`: every message the worker has to send: acks, index-get and
 * profile-get).  AgentLink.lock guards the journal, the commands in flight
 * and the answer the worker waits for (link_ask: link_fetch_index asks
 * the manager for an image's index, slice by slice, link_fetch_profile for
 * its site profile, and the link thread hands each answer over,
 * on_answer); the images are read through the typed API of agent.h, which
 * takes its own locks.
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#include "clone-host.h"
#include "file-util.h"
#include "image-index.h"
#include "manifest.h"
#include "profile.h"
#include "spore-error.h"
#include "virt-detect.h"
#include "wire.h"

#define HELLO_EVERY_US    (2 * G_USEC_PER_SEC)
#define REGISTER_EVERY_US (5 * G_USEC_PER_SEC)
#define LIBVIRT_RETRY_US  (5 * G_USEC_PER_SEC)
#define LINK_POLL_MS      100
#define JOURNAL_KEEP      4096

#define PROFILES_EVERY_US (15 * G_USEC_PER_SEC)
/* index-get: asked again this often while no answer comes (a manager
 * restarted or taken over), given up after INDEX_WAIT_US without one (the
 * index comes in slices of 64 KiB: the largest in 2,056) */
#define INDEX_ASK_EVERY_US (5 * G_USEC_PER_SEC)
#define INDEX_WAIT_US      (120 * G_USEC_PER_SEC)
/* profile-get: asked as often, given up sooner (a create goes on without
 * the profile: it only orders a prefetch) */
#define PROFILE_WAIT_US (20 * G_USEC_PER_SEC)

struct AgentLink {
    Agent *agent;
    AgentLinkConfig config;
    WireKeys keys;
    char *boot;
    GThread *thread;
    GThreadPool *worker;
    GAsyncQueue *acks; /* of JsonObject * */
    gint stop;         /* atomic */
    gint report_now;   /* atomic: a domain changed state */
    gint report_ms;    /* atomic: may change on SIGHUP */
    gint commands_out; /* atomic: commands pushed to the worker, not done */

    GMutex lock;           /* guards journal, in_flight, ask_* */
    GHashTable *journal;   /* "KEY:ID" -> ack text */
    GHashTable *in_flight; /* "KEY:ID" */
    GCond ask_cond;        /* ask_reply came, or stop */
    const char *ask_type;  /* the answer the worker waits for: "index", ... */
    char *ask_image;       /* ... about this image */
    gint64 ask_offset;     /* ... and slice */
    JsonObject *ask_reply; /* the answer, taken by the worker */
    char *journal_path;
    guint journal_lines;

    AgentCommands *commands; /* the worker's */
    char *peer_names;        /* the link thread's: the last peer list, logged */
    char **managers;         /* config.manager's endpoints: the active
                              * manager and its standbys (link_endpoints) */
};

/* ---- the journal -------------------------------------------------------- */

static char *
journal_key(AgentLink *l, gint64 id)
{
    return g_strdup_printf("%.8s:%" G_GINT64_FORMAT, l->config.manager_key, id);
}

static void
journal_load(AgentLink *l)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(l->journal_path, &text, NULL, NULL))
        return;
    lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        char *tab = strchr(lines[i], '\t');

        if (!tab)
            continue;
        *tab = '\0';
        g_hash_table_insert(l->journal, g_strdup(lines[i]), g_strdup(tab + 1));
        l->journal_lines++;
    }
}

/* journal_add: record the ack of @key; rewrite the file when it grows.
 * Holds AgentLink.lock throughout, file write included: the table and the
 * file change together, so command_claim answers a re-send from the
 * journal only once the ack is on disk.  Only the link's two threads take
 * this lock (never the data path). */
static void
journal_add(AgentLink *l, const char *key, const char *ack)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&l->lock);

    g_hash_table_insert(l->journal, g_strdup(key), g_strdup(ack));
    if (++l->journal_lines > 2 * JOURNAL_KEEP) {
        /* keep the newest: ids grow, so sort by the number after ':' */
        g_autoptr(GString) all = g_string_new(NULL);
        g_autoptr(GList) keys = g_hash_table_get_keys(l->journal);
        guint n = g_list_length(keys),
              skip = n > JOURNAL_KEEP ? n - JOURNAL_KEEP : 0;
        GList *it;

        keys = g_list_sort(keys, (GCompareFunc)g_strcmp0);
        for (it = keys; it; it = it->next) {
            if (skip) {
                skip--;
                g_hash_table_remove(l->journal, it->data);
                continue;
            }
            g_string_append_printf(
                all, "%s\t%s\n", (char *)it->data,
                (char *)g_hash_table_lookup(l->journal, it->data));
        }
        spore_file_write_atomic(l->journal_path, all->str, all->len, 0600,
                                NULL);
        l->journal_lines = g_hash_table_size(l->journal);
    } else {
        FILE *f = fopen(l->journal_path, "a");

        if (f) {
            fprintf(f, "%s\t%s\n", key, ack);
            fflush(f);
            fdatasync(fileno(f));
            fclose(f);
        }
    }
}

/* in_flight_done: @key's command no longer runs */
static void
in_flight_done(AgentLink *l, const char *key)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&l->lock);

    g_hash_table_remove(l->in_flight, key);
}

typedef enum {
    CLAIM_NEW,     /* not seen before: now in flight, the caller runs it */
    CLAIM_RUNNING, /* a re-send while it runs: its ack follows */
    CLAIM_DONE,    /* applied before: *ret_ack is its journalled ack */
} Claim;

/* command_claim: what to do with command @key, decided under
 * AgentLink.lock (the journal and the commands in flight) */
static Claim
command_claim(AgentLink *l, const char *key, char **ret_ack)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&l->lock);
    const char *done = g_hash_table_lookup(l->journal, key);

    if (done) {
        *ret_ack = g_strdup(done);
        return CLAIM_DONE;
    }
    if (g_hash_table_contains(l->in_flight, key))
        return CLAIM_RUNNING;
    g_hash_table_add(l->in_flight, g_strdup(key));
    return CLAIM_NEW;
}

/* ---- commands (run by agent-commands.c) ------------------------------- */

typedef struct {
    JsonObject *cmd;
    char *key;
} Job;

static void
worker(gpointer data, gpointer user)
{
    Job *job = data;
    AgentLink *l = user;
    const char *op = json_util_get_string(job->cmd, "op", NULL);
    g_autoptr(GString) summary = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    JsonObject *ack = wire_new("ack");
    g_autofree char *text = NULL;
    bool ok;

    g_message("command %" G_GINT64_FORMAT ": %s",
              json_util_get_int(job->cmd, "id", -1), op ? op : "?");
    ok = agent_commands_run(l->commands, job->cmd, summary, &err);
    json_object_set_int_member(ack, "id",
                               json_util_get_int(job->cmd, "id", -1));
    json_object_set_boolean_member(ack, "ok", ok);
    if (!ok) {
        json_object_set_string_member(ack, "error", err->message);
        g_warning("command %" G_GINT64_FORMAT " failed: %s",
                  json_util_get_int(job->cmd, "id", -1), err->message);
    } else {
        json_object_set_string_member(ack, "summary", summary->str);
        g_message("command %" G_GINT64_FORMAT " done: %s",
                  json_util_get_int(job->cmd, "id", -1), summary->str);
    }
    text = json_util_to_text(ack, false);
    journal_add(l, job->key, text);
    in_flight_done(l, job->key);
    g_async_queue_push(l->acks, ack);
    json_object_unref(job->cmd);
    g_free(job->key);
    g_free(job);
    (void)g_atomic_int_dec_and_test(&l->commands_out);
}

/* ---- an image's index and profile from the manager (index-get, ...) ---- */

/* Worker: ask the manager for @what ("index": send "index-get", wait for
 * "index") of image @id, slice @offset, until the answer comes, again
 * every INDEX_ASK_EVERY_US (a manager restarted or taken over); the
 * answer, or NULL with @error after @wait_us without one, at stop, or when
 * the answer is an error.  One request is ever out: the worker runs one
 * command at a time. */
static JsonObject *
link_ask(AgentLink *l, const char *what, const char *id, gint64 offset,
         gint64 wait_us, GError **error)
{
    g_autofree char *req_type = g_strconcat(what, "-get", NULL);
    gint64 deadline = g_get_monotonic_time() + wait_us;
    gint64 asked = 0;
    JsonObject *reply;

    g_mutex_lock(&l->lock);
    l->ask_type = what;
    g_free(l->ask_image);
    l->ask_image = g_strdup(id);
    l->ask_offset = offset;
    g_clear_pointer(&l->ask_reply, json_object_unref);
    while (!l->ask_reply && !g_atomic_int_get(&l->stop)) {
        gint64 now = g_get_monotonic_time();

        if (now >= deadline)
            break;
        if (now - asked >= INDEX_ASK_EVERY_US) {
            JsonObject *req = wire_new(req_type);

            json_object_set_string_member(req, "image", id);
            json_object_set_int_member(req, "offset", offset);
            g_async_queue_push(l->acks, req); /* the link thread sends it */
            asked = now;
        }
        g_cond_wait_until(&l->ask_cond, &l->lock,
                          MIN(deadline, asked + INDEX_ASK_EVERY_US));
    }
    reply = g_steal_pointer(&l->ask_reply);
    l->ask_type = NULL;
    g_clear_pointer(&l->ask_image, g_free);
    g_mutex_unlock(&l->lock);
    if (!reply) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "the site manager sent no %s of the image in %d s", what,
                    (int)(wait_us / G_USEC_PER_SEC));
    } else if (json_util_get_string(reply, "error", NULL)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "the site manager has no %s of the image: %s", what,
                    json_util_get_string(reply, "error", NULL));
        g_clear_pointer(&reply, json_object_unref);
    }
    return reply;
}

/* AgentIndexFetch of the commands: image @id's index from the manager, in
 * slices (each answer is bounded by the wire's message limit), at most
 * IMAGE_INDEX_MAX_BYTES; image_index_parse verifies it against @id. */
static GBytes *
link_fetch_index(const char *id, gpointer data, GError **error)
{
    AgentLink *l = data;
    g_autoptr(GByteArray) buf = g_byte_array_new();
    gint64 size = -1;

    g_message("image %.19s: asking the site manager for its index", id);
    while (size < 0 || (gint64)buf->len < size) {
        g_autoptr(JsonObject) r =
            link_ask(l, "index", id, (gint64)buf->len, INDEX_WAIT_US, error);
        const char *b64 = r ? json_util_get_string(r, "data", NULL) : NULL;
        gint64 total = r ? json_util_get_int(r, "size", -1) : -1;
        g_autofree guint8 *slice = NULL;
        gsize len = 0;

        if (!r)
            return NULL;
        if (b64)
            slice = g_base64_decode(b64, &len);
        if (!b64 || total < 0 || total > (gint64)IMAGE_INDEX_MAX_BYTES ||
            (size >= 0 && total != size) || (gint64)(buf->len + len) > total ||
            (len == 0 && (gint64)buf->len < total)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "the site manager's index of the image is malformed "
                        "(size %" G_GINT64_FORMAT
                        ", a slice of %" G_GSIZE_FORMAT " bytes at %u)",
                        total, len, buf->len);
            return NULL;
        }
        size = total;
        g_byte_array_append(buf, slice, (guint)len);
    }
    return g_byte_array_free_to_bytes(g_steal_pointer(&buf));
}

/* AgentProfileFetch of the commands: the site's access profile of image
 * @id (profile-get), slice by slice, all of one name (profile_id), at most
 * AGENT_PROFILE_CHUNKS_MAX chunk numbers, checked against the name (its
 * profile_digest). */
static GArray *
link_fetch_profile(const char *id, gpointer data, char **ret_profile_id,
                   GError **error)
{
    AgentLink *l = data;
    g_autoptr(GArray) chunks = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autofree char *pid = NULL;
    g_autofree char *digest = NULL;
    gint64 total = -1;

    g_message("image %.19s: asking the site manager for its access profile",
              id);
    while (total < 0 || (gint64)chunks->len < total) {
        g_autoptr(JsonObject) r = link_ask(
            l, "profile", id, (gint64)chunks->len, PROFILE_WAIT_US, error);
        const char *name =
            r ? json_util_get_string(r, "profile_id", NULL) : NULL;
        gint64 t = r ? json_util_get_int(r, "total", -1) : -1;
        g_autoptr(GArray) slice =
            r ? json_util_chunk_numbers(json_object_get_member(r, "chunks"))
              : NULL;
        JsonArray *arr = r ? json_util_get_array(r, "chunks") : NULL;

        if (!r)
            return NULL;
        if (!name || !slice || t < 0 || t > AGENT_PROFILE_CHUNKS_MAX ||
            (pid && (!g_str_equal(pid, name) || t != total)) ||
            slice->len != json_array_get_length(arr) ||
            (gint64)(chunks->len + slice->len) > t ||
            (slice->len == 0 && (gint64)chunks->len < t)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "the site manager's profile of the image is malformed "
                        "or changed while it came (%s, %" G_GINT64_FORMAT
                        " chunk numbers in all, at most %u; a slice of %u at "
                        "%u)",
                        name ? name : "no profile_id", t,
                        AGENT_PROFILE_CHUNKS_MAX,
                        arr ? json_array_get_length(arr) : 0, chunks->len);
            return NULL;
        }
        if (!pid)
            pid = g_strdup(name);
        total = t;
        g_array_append_vals(chunks, slice->data, slice->len);
    }
    digest = profile_digest(chunks);
    if (!g_str_equal(digest, pid)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the site manager's profile of the image does not match "
                    "its name (%.19s, the chunks' digest %.19s)",
                    pid, digest);
        return NULL;
    }
    *ret_profile_id = g_steal_pointer(&pid);
    return g_steal_pointer(&chunks);
}

/* Link thread: an answer (index, profile), handed to the worker if it is
 * the one it waits for (a late or unasked one is dropped). */
static void
on_answer(AgentLink *l, const char *type, JsonObject *msg)
{
    const char *id = json_util_get_string(msg, "image", NULL);
    gint64 offset = json_util_get_int(msg, "offset", -1);

    g_mutex_lock(&l->lock);
    if (id && l->ask_type && g_str_equal(type, l->ask_type) &&
        g_str_equal(id, l->ask_image) && offset == l->ask_offset &&
        !l->ask_reply) {
        l->ask_reply = json_object_ref(msg);
        g_cond_broadcast(&l->ask_cond);
    } else {
        g_debug("dropped an answer (%s) about %.19s at %" G_GINT64_FORMAT
                " nobody waits for",
                type, id ? id : "?", offset);
    }
    g_mutex_unlock(&l->lock);
}

/* ---- the link thread ---------------------------------------------------- */

static void
on_domain_event(const char *domain, const char *event, gpointer data)
{
    AgentLink *l = data;

    g_debug("domain %s: %s", domain, event);
    g_atomic_int_set(&l->report_now, 1);
}

/*
 * The manager's peer list: the other hosts' peer servers and keys.  It
 * replaces the static one; a malformed list changes nothing.
 */
static void
on_peers(AgentLink *l, JsonObject *msg)
{
    JsonNode *node = json_object_get_member(msg, "peers");
    JsonArray *arr;
    g_autoptr(GArray) peers = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *names = NULL;

    if (!node || !JSON_NODE_HOLDS_ARRAY(node)) {
        g_warning("dropped a peers message from the manager: no array of "
                  "peers; the peer list stays as it was");
        return;
    }
    if (json_array_get_length(json_node_get_array(node)) > WIRE_PEERS_MAX) {
        g_warning("dropped a peers message from the manager: %u peers, at "
                  "most %d are taken; the peer list stays as it was",
                  json_array_get_length(json_node_get_array(node)),
                  WIRE_PEERS_MAX);
        return;
    }
    if (!agent_peer_endpoint(l->agent))
        return; /* peer exchange is off here */
    arr = json_node_get_array(node);
    peers = g_array_new(FALSE, TRUE, sizeof(PeerInfo));
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonNode *e = json_array_get_element(arr, i);
        JsonObject *o =
            JSON_NODE_HOLDS_OBJECT(e) ? json_node_get_object(e) : NULL;
        PeerInfo p = {
            .name = (char *)(o ? json_util_get_string(o, "name", NULL) : NULL),
            .endpoint =
                (char *)(o ? json_util_get_string(o, "endpoint", NULL) : NULL),
            .public_key =
                (char *)(o ? json_util_get_string(o, "key", NULL) : NULL),
        };
        g_array_append_val(peers, p); /* borrowed from msg */
    }
    if (!agent_set_peers(l->agent, (PeerInfo *)(void *)peers->data, peers->len,
                         &err)) {
        g_warning("dropped a peers message from the manager: %s", err->message);
        return;
    }
    for (guint i = 0; i < peers->len; i++) {
        char *prev = names;
        names = g_strdup_printf("%s%s%s", prev ? prev : "", prev ? ", " : "",
                                g_array_index(peers, PeerInfo, i).name);
        g_free(prev);
    }
    if (!l->peer_names || !g_str_equal(l->peer_names, names ? names : "")) {
        g_message("peers from the site manager: %s", names ? names : "none");
        g_free(l->peer_names);
        l->peer_names = g_strdup(names ? names : "");
    }
}

static void
send_hello(AgentLink *l, void *sock, CloneHost *host)
{
    g_autoptr(JsonObject) hello = wire_new("hello");
    JsonObject *cap = json_object_new();
    guint cpus = 0;
    guint64 mem = 0;
    g_autoptr(GError) err = NULL;

    if (host && !clone_host_capacity(host, &cpus, &mem, &err))
        g_warning("cannot read the host's capacity: %s", err->message);
    json_object_set_string_member(hello, "host", l->config.host_name);
    json_object_set_string_member(hello, "boot", l->boot);
    json_object_set_int_member(cap, "cpus", cpus);
    json_object_set_int_member(cap, "memory_kib", (gint64)mem);
    json_object_set_object_member(hello, "capacity", cap);
    if (l->config.virt_type)
        json_object_set_string_member(hello, "virt", l->config.virt_type);
    if (agent_peer_endpoint(l->agent))
        json_object_set_string_member(hello, "peer_endpoint",
                                      agent_peer_endpoint(l->agent));
    wire_send(sock, NULL, hello);
}

/*
 * Domains paused by an I/O error of their disk (error_policy='stop': a
 * read the shim could not answer within its timeout, the origin or the
 * agent away) are resumed by the agent, which retries the failed request
 * — only this host's clones (their metadata's host), never a domain made
 * by hand with sporectl: at once, then after RESUME_FIRST_US doubling to
 * RESUME_MAX_US while the domain pauses again.  A resumed domain runs
 * while its retried read waits in the shim, up to the shim's timeout: it
 * runs again for good (and leaves @paused) only once it has run for
 * @settle_us since its last resume; until then the episode, its tries and
 * its backoff go on, and its reports say "io_paused".  @paused (owned by
 * the link thread) maps a domain's name to its ResumeTry.
 */
#define RESUME_FIRST_US (2 * G_USEC_PER_SEC)
#define RESUME_MAX_US   (60 * G_USEC_PER_SEC)

typedef struct {
    gint64 next;       /* monotonic time of the next try */
    gint64 delay;      /* until the try after it */
    gint64 resumed_at; /* the last try */
    guint tries;
} ResumeTry;

static void
resume_paused(CloneHost *host, const char *me, GHashTable *paused,
              GPtrArray *clones, gint64 settle_us)
{
    gint64 now = g_get_monotonic_time();

    for (guint i = 0; i < clones->len; i++) {
        CloneInfo *c = clones->pdata[i];
        ResumeTry *t = g_hash_table_lookup(paused, c->name);
        g_autoptr(GError) err = NULL;
        bool resumed = false;

        if (g_strcmp0(c->owner, me) != 0) /* only this host's clones */
            continue;
        if (g_strcmp0(c->state, "paused") != 0 ||
            g_strcmp0(c->reason, "ioerror") != 0) {
            if (t && g_strcmp0(c->state, "running") == 0 &&
                now - t->resumed_at >= settle_us) {
                g_message("domain %s runs again after %u resume%s", c->name,
                          t->tries, t->tries == 1 ? "" : "s");
                g_hash_table_remove(paused, c->name);
            } else if (t && g_strcmp0(c->state, "running") != 0 &&
                       g_strcmp0(c->state, "paused") != 0) {
                g_hash_table_remove(paused, c->name); /* shut off: over */
            }
            continue;
        }
        if (!t) {
            t = g_new0(ResumeTry, 1);
            t->delay = RESUME_FIRST_US;
            g_hash_table_insert(paused, g_strdup(c->name), t);
            g_message("domain %s was paused by an I/O error of its disk; "
                      "resuming it (the failed read is retried)",
                      c->name);
        }
        if (now < t->next)
            continue;
        if (!clone_host_resume(host, c->name, &resumed, &err))
            g_warning("domain %s: %s", c->name, err->message);
        t->tries++;
        t->resumed_at = now;
        t->next = now + t->delay;
        t->delay = MIN(t->delay * 2, RESUME_MAX_US);
        if (t->tries > 1)
            g_message("domain %s paused again by an I/O error: resume %u, "
                      "the next in %" G_GINT64_FORMAT " s at the latest",
                      c->name, t->tries, t->delay / G_USEC_PER_SEC);
    }
}

static bool
send_report(AgentLink *l, void *sock, CloneHost *host, GHashTable *paused)
{
    g_autoptr(JsonObject) report = wire_new("report");
    g_autoptr(GPtrArray) images = NULL;
    g_autoptr(GPtrArray) clones = NULL;
    g_autoptr(GError) err = NULL;
    JsonArray *arr = json_array_new();
    JsonArray *image_arr;

    clones = host ? clone_host_list(host, &err) : NULL;
    if (!clones) {
        static gint64 last;

        if (g_get_monotonic_time() - last > 60 * G_USEC_PER_SEC) {
            g_warning("no report: cannot list the clones: %s",
                      err ? err->message : "libvirt unavailable");
            last = g_get_monotonic_time();
        }
        json_array_unref(arr);
        return false;
    }
    resume_paused(host, l->config.host_name, paused, clones,
                  ((gint64)agent_shim_timeout(l->agent) + 2) * G_USEC_PER_SEC);
    for (guint i = 0; i < clones->len; i++) {
        CloneInfo *c = clones->pdata[i];
        JsonObject *o = json_object_new();

        json_object_set_string_member(o, "name", c->name);
        json_object_set_string_member(o, "uuid", c->uuid ? c->uuid : "");
        json_object_set_string_member(o, "service", c->service);
        json_object_set_int_member(o, "index", c->index);
        json_object_set_string_member(o, "image",
                                      c->image_id ? c->image_id : "");
        json_object_set_int_member(o, "generation", (gint64)c->generation);
        json_object_set_string_member(o, "state", c->state);
        json_object_set_string_member(o, "reason", c->reason);
        if (g_hash_table_contains(paused, c->name))
            json_object_set_boolean_member(o, "io_paused", true);
        json_object_set_int_member(o, "cpu_ns", (gint64)c->cpu_time_ns);
        json_object_set_int_member(o, "vcpus", c->vcpus);
        json_object_set_int_member(o, "memory_kib", (gint64)c->memory_kib);
        json_object_set_int_member(o, "memory_unused_kib",
                                   c->memory_unused_kib);
        json_object_set_int_member(o, "memory_usable_kib",
                                   c->memory_usable_kib);
        json_array_add_object_element(arr, o);
    }
    json_object_set_array_member(report, "clones", arr);
    json_object_set_int_member(report, "time_ms", g_get_real_time() / 1000);
    images = agent_image_list(l->agent);
    image_arr = json_array_new();
    for (guint i = 0; i < images->len; i++)
        json_array_add_object_element(
            image_arr, agent_image_info_to_json(images->pdata[i]));
    json_object_set_array_member(report, "images", image_arr);
    return wire_send(sock, NULL, report);
}

/* send_profiles: each image's merged access profile, for the manager
 * (every PROFILES_EVERY_US) */
static void
send_profiles(AgentLink *l, void *sock)
{
    g_autoptr(GPtrArray) images = agent_image_list(l->agent);
    g_autoptr(JsonObject) msg = wire_new("profiles");
    JsonArray *out = json_array_new();

    for (guint i = 0; i < images->len; i++) {
        const char *id = ((AgentImageInfo *)images->pdata[i])->id;
        guint boots = 0;
        g_autoptr(GArray) order =
            agent_image_profile(l->agent, id, &boots, NULL);
        JsonArray *chunks;
        JsonObject *o;

        if (!order || boots == 0)
            continue;
        chunks = json_array_sized_new(order->len);
        for (guint k = 0; k < order->len; k++)
            json_array_add_int_element(
                chunks, (gint64)g_array_index(order, guint64, k));
        o = json_object_new();
        json_object_set_string_member(o, "image", id);
        json_object_set_int_member(o, "boots", boots);
        json_object_set_array_member(o, "chunks", chunks);
        json_array_add_object_element(out, o);
    }
    json_object_set_array_member(msg, "profiles", out);
    wire_send(sock, NULL, msg);
}

static void
on_command(AgentLink *l, void *sock, JsonObject *cmd)
{
    gint64 id = json_util_get_int(cmd, "id", -1);
    g_autofree char *key = NULL;
    g_autofree char *done = NULL;
    Claim claim;

    if (id < 0) {
        g_warning("dropped a command without an id");
        return;
    }
    key = journal_key(l, id);
    claim = command_claim(l, key, &done);
    if (claim == CLAIM_RUNNING)
        return; /* a re-send while it runs: the ack follows */
    if (claim == CLAIM_DONE) {
        /* a replay: answer from the journal, apply nothing */
        g_autoptr(JsonObject) ack = wire_parse(done, strlen(done), NULL);

        g_message("command %" G_GINT64_FORMAT
                  " was applied before: acknowledged again",
                  id);
        if (ack)
            wire_send(sock, NULL, ack);
        return;
    }
    {
        Job *job = g_new0(Job, 1);

        job->cmd = json_object_ref(cmd);
        job->key = g_steal_pointer(&key);
        g_atomic_int_inc(&l->commands_out);
        g_thread_pool_push(l->worker, job, NULL);
    }
}

/* link_endpoints: the endpoints of a manager setting, separated by
 * spaces or commas ("tcp://a:7400, tcp://b:7400": an active manager and
 * its standby, in any order) */
static char **
link_endpoints(const char *text)
{
    g_auto(GStrv) words = g_strsplit_set(text ? text : "", " ,\t", -1);
    GPtrArray *out = g_ptr_array_new();

    for (guint i = 0; words[i]; i++) {
        if (*words[i])
            g_ptr_array_add(out, g_strdup(words[i]));
    }
    g_ptr_array_add(out, NULL);
    return (char **)g_ptr_array_free(out, FALSE);
}

/*
 * main_socket: the DEALER to the manager's agent endpoint.  libzmq does
 * not reconnect after the manager's ZAP handler refused the key, so a new
 * one is made once the registration says the host was accepted.
 */
static void *
main_socket(AgentLink *l, void *ctx)
{
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    /* with a standby, its endpoint is tried every 2 s, not up to every
     * 30 s, so that a takeover is seen within seconds */
    int ivl = 1000, ivl_max = l->managers[1] ? 2000 : 30000, one = 1;

    wire_socket_defaults(sock);
    zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, l->config.manager_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, l->keys.public_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, l->keys.secret_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(sock, ZMQ_ROUTING_ID, l->config.host_name,
                   strlen(l->config.host_name));
    zmq_setsockopt(sock, ZMQ_RECONNECT_IVL, &ivl, sizeof(ivl));
    zmq_setsockopt(sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof(ivl_max));
    zmq_setsockopt(sock, ZMQ_IMMEDIATE, &one, sizeof(one));
    /* one connection per endpoint: only the active manager listens (a
     * standby binds nothing), so everything goes to it (ZMQ_IMMEDIATE:
     * no message waits on a connection not made) */
    for (guint i = 0; l->managers[i]; i++) {
        if (zmq_connect(sock, l->managers[i]) != 0)
            g_warning("cannot connect to the manager at %s: %s", l->managers[i],
                      zmq_strerror(zmq_errno()));
    }
    return sock;
}

/* registration: until the manager welcomes us, say who we are on its
 * registration socket, so that an operator can accept us by name */
static bool
registration_poll(AgentLink *l, void *reg, char **state)
{
    zmq_msg_t msg;
    bool accepted_now = false;

    for (;;) {
        g_autoptr(JsonObject) obj = NULL;
        const char *now_state;

        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, reg, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return accepted_now;
        }
        obj = wire_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), NULL);
        zmq_msg_close(&msg);
        now_state = json_util_get_string(obj, "state", NULL);
        if (!now_state || g_strcmp0(now_state, *state) == 0)
            continue;
        if (g_str_equal(now_state, "pending"))
            g_message("the site manager has not accepted this host yet: run "
                      "'sporectl host-accept %s' there",
                      l->config.host_name);
        else if (g_str_equal(now_state, "refused"))
            g_warning("the site manager refuses host %s: %s",
                      l->config.host_name,
                      json_util_get_string(obj, "reason", NULL)
                          ? json_util_get_string(obj, "reason", NULL)
                          : "no reason given");
        else {
            g_message("the site manager accepted host %s", l->config.host_name);
            accepted_now = *state != NULL; /* it was refused before */
        }
        g_free(*state);
        *state = g_strdup(now_state);
    }
}

/* What the link thread owns (only it touches these). */
typedef struct {
    void *ctx;
    void *sock; /* the DEALER to the manager's agent endpoint */
    void *reg;  /* the DEALER to its registration endpoint */
    char *reg_state;
    CloneHost *host;    /* the link's libvirt connection, for reports */
    GHashTable *paused; /* domains paused by I/O errors: resume_paused */
    bool welcomed;
    gint64 last_hello, last_report, last_profiles, last_libvirt_try,
        last_register;
    gint64 epoch;         /* the highest leader epoch seen, 0: none */
    gint64 epoch_dropped; /* the last stale epoch logged */
} LinkState;

/* the registration socket: CURVE with our keys, to the manager's
 * registration endpoint */
static void *
registration_socket(AgentLink *l, void *ctx)
{
    void *reg = zmq_socket(ctx, ZMQ_DEALER);
    int one = 1;

    wire_socket_defaults(reg);
    zmq_setsockopt(reg, ZMQ_CURVE_SERVERKEY, l->config.manager_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(reg, ZMQ_CURVE_PUBLICKEY, l->keys.public_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(reg, ZMQ_CURVE_SECRETKEY, l->keys.secret_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(reg, ZMQ_IMMEDIATE, &one, sizeof(one));
    for (guint i = 0; l->managers[i]; i++) {
        g_autofree char *endpoint = wire_register_endpoint(l->managers[i]);

        if (endpoint && zmq_connect(reg, endpoint) != 0)
            g_warning("cannot connect to the manager's registration "
                      "endpoint %s: %s",
                      endpoint, zmq_strerror(zmq_errno()));
    }
    return reg;
}

/* libvirt, for the reports and lifecycle events: retried every
 * LIBVIRT_RETRY_US until it answers */
static void
link_libvirt_retry(AgentLink *l, LinkState *st, gint64 now)
{
    g_autoptr(GError) err = NULL;
    CloneHostConfig hcfg = {
        .uri = l->config.libvirt_uri,
        .pool = l->config.pool,
        .pool_dir = l->config.pool_dir,
        .console_dir = l->config.console_dir,
        .owner = l->config.host_name,
    };

    if (st->host || now - st->last_libvirt_try <= LIBVIRT_RETRY_US)
        return;
    st->last_libvirt_try = now;
    st->host = clone_host_open(&hcfg, &err);
    if (!st->host)
        g_warning("libvirt: %s", err->message);
    else if (!clone_host_watch(st->host, on_domain_event, l, &err))
        g_warning("no lifecycle events, reports every %u ms only: %s",
                  (guint)g_atomic_int_get(&l->report_ms), err->message);
}

/* One message from the manager; NULL when none is waiting.  A message of
 * several frames is dropped whole. */
static JsonObject *
link_receive_one(void *sock, bool *ret_none)
{
    g_autoptr(GError) err = NULL;
    zmq_msg_t msg;
    JsonObject *obj;

    *ret_none = false;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        *ret_none = true;
        return NULL;
    }
    if (zmq_msg_more(&msg)) {
        g_warning("dropped a message of several frames from the manager");
        while (zmq_msg_more(&msg)) {
            zmq_msg_close(&msg);
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0)
                break;
        }
        zmq_msg_close(&msg);
        return NULL;
    }
    obj = wire_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), &err);
    zmq_msg_close(&msg);
    if (!obj)
        g_warning("dropped a malformed message from the manager: %s",
                  err->message);
    return obj;
}

/*
 * link_epoch_ok: whether @obj comes from the site's active manager as
 * far as this agent knows: its leader epoch (on a PostgreSQL state) is
 * not below the highest seen.  A lower one is a manager that lost the
 * site and has not noticed yet (spored's manager-leader.c): what it says
 * is dropped, logged once per epoch.
 */
static bool
link_epoch_ok(LinkState *st, JsonObject *obj)
{
    gint64 epoch = json_util_get_int(obj, "epoch", 0);

    if (epoch <= 0 || epoch == st->epoch)
        return true;
    if (epoch > st->epoch) {
        if (st->epoch > 0)
            g_message("a new site manager is active (leader epoch "
                      "%" G_GINT64_FORMAT ", was %" G_GINT64_FORMAT ")",
                      epoch, st->epoch);
        st->epoch = epoch;
        return true;
    }
    if (st->epoch_dropped != epoch)
        g_warning("dropped a '%s' message from a former site manager "
                  "(leader epoch %" G_GINT64_FORMAT ", the active one's is "
                  "%" G_GINT64_FORMAT ")",
                  json_util_get_string(obj, "type", "?"), epoch, st->epoch);
    st->epoch_dropped = epoch;
    return false;
}

/* Every message waiting from the manager, by type. */
static void
link_receive(AgentLink *l, LinkState *st)
{
    bool none = false;

    while (!none) {
        g_autoptr(JsonObject) obj = link_receive_one(st->sock, &none);
        const char *type = obj ? json_util_get_string(obj, "type", "") : NULL;

        if (!type || !link_epoch_ok(st, obj))
            continue;
        if (g_str_equal(type, "welcome")) {
            gint64 ms = json_util_get_int(obj, "report_ms", 0);

            /* the site's report interval, within the agent's bounds */
            if (ms > 0) {
                guint want =
                    (guint)CLAMP(ms, AGENT_REPORT_MS_MIN, AGENT_REPORT_MS_MAX);

                if (want != (guint)g_atomic_int_get(&l->report_ms))
                    g_message("the site manager asks for a report every "
                              "%u ms",
                              want);
                g_atomic_int_set(&l->report_ms, (gint)want);
            }
            if (!st->welcomed)
                g_message("the site manager welcomed us");
            st->welcomed = true;
            st->last_report = 0;
        } else if (g_str_equal(type, "who")) {
            st->welcomed = false;
            st->last_hello = 0;
        } else if (g_str_equal(type, "cmd")) {
            on_command(l, st->sock, obj);
        } else if (g_str_equal(type, "peers")) {
            on_peers(l, obj);
        } else if (g_str_equal(type, "index") || g_str_equal(type, "profile")) {
            on_answer(l, type, obj);
        } else {
            g_warning("dropped a message of unknown type '%s' from the "
                      "manager",
                      type);
        }
    }
}

/* What is due: acknowledgements, registration, hello, profiles, report. */
static void
link_tick(AgentLink *l, LinkState *st)
{
    gint64 report_us = (gint64)g_atomic_int_get(&l->report_ms) * 1000;
    JsonObject *ack;
    gint64 now;

    while ((ack = g_async_queue_try_pop(l->acks))) {
        /* an ack: report the change at once (a ...-get is not one) */
        if (g_str_equal(json_util_get_string(ack, "type", ""), "ack"))
            st->last_report = 0;
        wire_send(st->sock, NULL, ack);
        json_object_unref(ack);
    }
    now = g_get_monotonic_time();
    if (registration_poll(l, st->reg, &st->reg_state) && !st->welcomed) {
        zmq_close(st->sock);
        st->sock = main_socket(l, st->ctx);
        st->last_hello = 0;
    }
    if (!st->welcomed && now - st->last_register > REGISTER_EVERY_US) {
        g_autoptr(JsonObject) r = wire_new("register");

        json_object_set_string_member(r, "host", l->config.host_name);
        wire_send(st->reg, NULL, r);
        st->last_register = now;
    }
    if (!st->welcomed && now - st->last_hello > HELLO_EVERY_US) {
        send_hello(l, st->sock, st->host);
        st->last_hello = now;
    }
    if (st->welcomed && now - st->last_profiles > PROFILES_EVERY_US) {
        send_profiles(l, st->sock);
        st->last_profiles = now;
    }
    if (g_atomic_int_compare_and_exchange(&l->report_now, 1, 0))
        st->last_report = 0; /* a domain changed state: say so now */
    if (st->welcomed && now - st->last_report > report_us) {
        /* a failed report is tried again in half the interval */
        st->last_report = send_report(l, st->sock, st->host, st->paused)
                              ? now
                              : now - report_us / 2;
    }
}

static gpointer
link_thread(gpointer data)
{
    AgentLink *l = data;
    LinkState st = {0};

    st.ctx = zmq_ctx_new();
    st.paused = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    st.reg = registration_socket(l, st.ctx);
    st.sock = main_socket(l, st.ctx);
    g_message("connecting to the site manager at %s as %s (key %s)",
              l->config.manager, l->config.host_name, l->keys.public_key);
    while (!g_atomic_int_get(&l->stop)) {
        zmq_pollitem_t item = {st.sock, 0, ZMQ_POLLIN, 0};

        link_libvirt_retry(l, &st, g_get_monotonic_time());
        if (zmq_poll(&item, 1, LINK_POLL_MS) > 0)
            link_receive(l, &st);
        link_tick(l, &st);
    }
    clone_host_free(st.host);
    g_hash_table_unref(st.paused);
    g_free(st.reg_state);
    zmq_close(st.reg);
    zmq_close(st.sock);
    zmq_ctx_term(st.ctx);
    return NULL;
}

AgentLink *
agent_link_start(Agent *agent, const AgentLinkConfig *config, GError **error)
{
    AgentLink *l;
    guint8 rnd[8];

    if (!config->manager || !wire_key_valid(config->manager_key)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "the site manager needs an endpoint and its Z85 public "
                    "key (manager_key)");
        return NULL;
    }
    {
        g_auto(GStrv) endpoints = link_endpoints(config->manager);

        for (guint i = 0; endpoints[i] || i == 0; i++) {
            g_autofree char *reg =
                endpoints[i] ? wire_register_endpoint(endpoints[i]) : NULL;

            if (!reg) {
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                            "manager '%s': %s is not tcp://HOST:PORT",
                            config->manager,
                            endpoints[i] ? endpoints[i] : "nothing");
                return NULL;
            }
        }
    }
    if (!wire_host_name_valid(config->host_name)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "host name '%s' is not 1-63 of letters, digits, '-', "
                    "'_' and '.'",
                    config->host_name ? config->host_name : "");
        return NULL;
    }
    l = g_new0(AgentLink, 1);
    l->agent = agent;
    l->config = *config;
    l->config.manager = g_strdup(config->manager);
    l->managers = link_endpoints(config->manager);
    l->config.manager_key = g_strdup(config->manager_key);
    l->config.host_name = g_strdup(config->host_name);
    l->config.state_dir = g_strdup(config->state_dir);
    l->config.libvirt_uri = g_strdup(config->libvirt_uri);
    l->config.pool = g_strdup(config->pool);
    l->config.pool_dir = g_strdup(config->pool_dir);
    l->config.console_dir = g_strdup(config->console_dir);
    l->config.inspect_cache = g_strdup(config->inspect_cache);
    l->config.virt_type = g_strdup(config->virt_type);
    if (!l->config.report_ms)
        l->config.report_ms = AGENT_REPORT_MS_DEFAULT;
    l->report_ms = (gint)CLAMP(l->config.report_ms, AGENT_REPORT_MS_MIN,
                               AGENT_REPORT_MS_MAX);
    if (!wire_keys_load_or_create(config->state_dir, &l->keys, error)) {
        agent_link_stop(l);
        return NULL;
    }
    g_mutex_init(&l->lock);
    l->journal = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    l->in_flight = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    l->journal_path =
        g_build_filename(config->state_dir, "commands.journal", NULL);
    journal_load(l);
    for (guint i = 0; i < sizeof(rnd); i++)
        rnd[i] = (guint8)g_random_int_range(0, 256);
    l->boot =
        g_strdup_printf("%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
                        rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    clone_events_init(); /* before any libvirt connection */
    l->acks = g_async_queue_new();
    g_cond_init(&l->ask_cond);
    l->commands = agent_commands_new(
        agent, &l->config,
        &(AgentSiteFetch){link_fetch_index, link_fetch_profile, l});
    l->worker = g_thread_pool_new(worker, l, 1, TRUE, NULL);
    l->thread = g_thread_new("spore-link", link_thread, l);
    return l;
}

void
agent_link_set_report_ms(AgentLink *l, guint ms)
{
    if (l && ms >= AGENT_REPORT_MS_MIN && ms <= AGENT_REPORT_MS_MAX)
        g_atomic_int_set(&l->report_ms, (gint)ms);
}

bool
agent_link_stop(AgentLink *l)
{
    if (!l)
        return true;
    g_atomic_int_set(&l->stop, 1);
    if (l->commands) { /* a worker waiting for an answer stops waiting */
        g_mutex_lock(&l->lock);
        g_cond_broadcast(&l->ask_cond);
        g_mutex_unlock(&l->lock);
    }
    if (l->thread)
        g_thread_join(l->thread);
    if (l->worker)
        g_thread_pool_free(l->worker, TRUE, FALSE); /* don't wait: an
                                                     * unjournaled command is
                                                     * sent again */
    if (g_atomic_int_get(&l->commands_out) > 0)
        return false; /* its thread still uses all of l: agent.h */
    if (l->acks) {
        JsonObject *ack;

        while ((ack = g_async_queue_try_pop(l->acks)))
            json_object_unref(ack);
        g_async_queue_unref(l->acks);
    }
    if (l->commands) { /* ask_cond was initialized with it */
        g_clear_pointer(&l->ask_reply, json_object_unref);
        g_free(l->ask_image);
        g_cond_clear(&l->ask_cond);
    }
    agent_commands_free(l->commands);
    if (l->journal)
        g_hash_table_unref(l->journal);
    if (l->in_flight)
        g_hash_table_unref(l->in_flight);
    g_free(l->journal_path);
    g_free(l->peer_names);
    g_free(l->boot);
    g_free(l->config.manager);
    g_strfreev(l->managers);
    g_free(l->config.manager_key);
    g_free(l->config.host_name);
    g_free(l->config.state_dir);
    g_free(l->config.libvirt_uri);
    g_free(l->config.pool);
    g_free(l->config.pool_dir);
    g_free(l->config.console_dir);
    g_free(l->config.inspect_cache);
    g_free(l->config.virt_type);
    g_free(l);
    return true;
}
