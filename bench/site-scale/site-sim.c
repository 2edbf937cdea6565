/*
 * site-sim.c: many simulated hosts speaking the real site protocol to one
 * spored, for bench/site-scale/run (read that script first).
 *
 *   site-sim keygen KEY-FILE HOSTS-DIR PREFIX N
 *   site-sim run [OPTIONS]
 *
 * keygen makes N CURVE key pairs (hosts PREFIX0001 ...): KEY-FILE holds
 * "NAME PUBLIC SECRET" lines (0600), HOSTS-DIR/NAME.pub the public keys,
 * so that spored accepts the hosts when they first connect.
 *
 * run connects one DEALER per host (CURVE, routing id = the host's name)
 * from this one process and plays an agent without libvirt:
 *   - hello every 2 s until welcome (capacity 64 CPUs, 256 GiB, a peer
 *     endpoint that nobody serves: the manager only hands it out);
 *   - a report every report_ms (2 s), the first one at a random offset,
 *     and at once after each ack, as spore-agent does;
 *   - a command is applied once per id (a journal, as the agent's): it
 *     runs 1 s after it arrives, then is acknowledged; a re-send while it
 *     runs is ignored, a re-send after it ran is answered from the
 *     journal.  A clone-create of a clone the host already has counts as
 *     a duplicate executed (the real agent answers "existed" but repeats
 *     libvirt work); clone UUIDs are the manager's (manifest_clone_uuid).
 *
 * Phases, timed on the monotonic clock: connect until all hosts are
 * welcomed; --submit-cmd runs (a shell command, in the background); until
 * every clone of --clones was commanded, then until every one runs on
 * some host; then --steady seconds in which spored's CPU (from
 * /proc/PID/stat of --pid) and RSS are taken, and once a second one
 * running clone vanishes from its host's reports, to time the manager's
 * repair: from the first report without it to the create that brings it
 * back (the command round trip); then, with --restart-cmd, spored is
 * killed -9 and started again under the hosts' reports (recover).
 * --timeout bounds the whole run, and the recovery again.
 *
 * With --fetch a host does what spore-agent does on its first create of
 * an image it lacks: it asks spored for the image's index, slice by slice
 * (index-get), then, when the create names the site's access profile, for
 * that (profile-get), again every 5 s while unanswered, and runs its
 * commands only then (1 s after); creates of several images are fetched
 * one image after the other, and the commands wait for all of them.
 * --profile-image ID --profile-chunks N: the first host welcomed sends a
 * profile of N chunk numbers of image ID, so that creates name one.  Timed: each host's fetch, the span from the
 * first ask to the last answer, and the bytes.
 *
 * With --clones 0 it only holds the hosts up (hello, reports, commands
 * answered; with --image every report says the host holds that image)
 * until --timeout or SIGTERM: the big site around a test's real agents.
 *
 * Prints "key: value" lines on stdout; progress on stderr.  Single
 * threaded; the ZeroMQ context has two I/O threads.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <glib.h>
#include <zmq.h>

#include "manifest.h"
#include "wire.h"

#define SIM_HELLO_US       (2 * G_USEC_PER_SEC)
#define SIM_CMD_DELAY_US   (1 * G_USEC_PER_SEC)
#define SIM_PEER_PORT      20000
#define SIM_CPUS           64
#define SIM_MEMORY_KIB     (256ull * 1024 * 1024)
#define SIM_PROBE_EVERY_US (1 * G_USEC_PER_SEC)
#define SIM_ASK_EVERY_US   (5 * G_USEC_PER_SEC) /* as the agent's */

/* a host's fetch of an image's index and profile (--fetch) */
typedef enum {
    FETCH_NONE,    /* not asked yet */
    FETCH_INDEX,   /* waiting for a slice of the index */
    FETCH_PROFILE, /* waiting for the profile */
    FETCH_DONE,
} FetchState;

typedef struct {
    char *name, *uuid, *service, *image;
    gint64 index, generation;
} SimClone;

typedef struct {
    gint64 id;
    gint64 due;
    JsonObject *cmd;
} SimJob;

typedef struct {
    char *name;
    WireKeys keys;
    void *sock;
    char boot[17];
    bool welcomed;
    gint64 report_us;
    gint64 next_hello, next_report;
    guint report_seq;
    GHashTable *clones;    /* name -> SimClone */
    GHashTable *journal;   /* id -> ack text */
    GHashTable *in_flight; /* id */
    GQueue jobs;           /* SimJob, by due time */
    bool rewelcomed;       /* welcomed by the restarted spored */
    GHashTable *vanished;  /* name -> gint64 µs: first report without it */
    bool told_peers;       /* a peer list arrived */
    FetchState fetch;      /* --fetch: the image being fetched */
    char *fetch_image, *fetch_profile_id;
    gint64 fetch_offset, fetch_start, fetch_asked;
    GHashTable *fetched; /* image ids fetched, being fetched or queued */
    GQueue fetch_next;   /* of JsonObject *: images of creates, to fetch */
} SimHost;

typedef struct {
    const char *endpoint, *manager_key, *key_file, *submit_cmd, *probe_cmd;
    const char *restart_cmd, *pre_kill_cmd;
    const char *hold_image; /* every host reports it (a site sharing it) */
    guint target_clones;
    guint steady_s, timeout_s;
    int pid;
    SimHost *hosts;
    guint n_hosts;
    void *ctx;
    gint64 start;
    /* counts */
    guint welcomed;
    GHashTable *commanded; /* clone name -> 1 */
    guint running;         /* clones present over all hosts */
    guint64 cmds_received, cmd_ids, replays, dup_creates, resends_running;
    guint64 peers_msgs, peers_bytes, peers_max, peers_over;
    guint peers_told; /* hosts a peer list reached */
    guint64 reports_sent, bytes_sent;
    GArray *repair_us; /* gint64 */
    double cpu_start;  /* spored's CPU seconds at the start */
    bool recovering;   /* spored was killed and started again */
    guint rewelcomed, welcomed_at_kill;
    GHashTable *id_seen; /* host/id -> 1 */
    /* --fetch, --profile-image, --profile-chunks */
    bool fetch;
    const char *profile_image;
    guint profile_chunks;
    bool profile_sent;
    guint64 index_gets, index_bytes, index_msg_bytes, profile_gets,
        profile_msg_bytes, fetch_reasks, fetch_errors;
    GArray *fetch_us;               /* gint64: per host, first ask -> done */
    gint64 fetch_first, fetch_last; /* µs */
} Sim;

static gint64
now_us(void)
{
    return g_get_monotonic_time();
}

static void
sim_clone_free(gpointer p)
{
    SimClone *c = p;

    g_free(c->name);
    g_free(c->uuid);
    g_free(c->service);
    g_free(c->image);
    g_free(c);
}

/* ---- keygen ----------------------------------------------------------- */

static int
keygen(const char *key_file, const char *hosts_dir, const char *prefix, guint n)
{
    g_autoptr(GString) all = g_string_new(NULL);
    g_autoptr(GError) err = NULL;

    g_mkdir_with_parents(hosts_dir, 0755);
    for (guint i = 1; i <= n; i++) {
        char pub[WIRE_KEY_CHARS + 1], sec[WIRE_KEY_CHARS + 1];
        g_autofree char *name = g_strdup_printf("%s%04u", prefix, i);
        g_autofree char *path = NULL;
        g_autofree char *line = NULL;

        if (zmq_curve_keypair(pub, sec) != 0) {
            fprintf(stderr, "site-sim: cannot make a CURVE key pair: %s\n",
                    zmq_strerror(zmq_errno()));
            return 1;
        }
        g_string_append_printf(all, "%s %s %s\n", name, pub, sec);
        path = g_strdup_printf("%s/%s.pub", hosts_dir, name);
        line = g_strdup_printf("%s\n", pub);
        if (!g_file_set_contents(path, line, -1, &err)) {
            fprintf(stderr, "site-sim: %s\n", err->message);
            return 1;
        }
    }
    if (!g_file_set_contents_full(key_file, all->str, (gssize)all->len,
                                  G_FILE_SET_CONTENTS_CONSISTENT, 0600, &err)) {
        fprintf(stderr, "site-sim: %s\n", err->message);
        return 1;
    }
    return 0;
}

/* ---- messages --------------------------------------------------------- */

static void
send_obj(Sim *s, SimHost *h, JsonObject *o)
{
    g_autofree char *text = json_util_to_text(o, false);

    s->bytes_sent += strlen(text);
    zmq_send(h->sock, text, strlen(text), ZMQ_DONTWAIT);
}

static void
send_hello(Sim *s, SimHost *h, guint i)
{
    g_autoptr(JsonObject) o = wire_new("hello");
    JsonObject *cap = json_object_new();
    g_autofree char *peer =
        g_strdup_printf("tcp://127.0.0.1:%u", SIM_PEER_PORT + i);

    json_object_set_string_member(o, "host", h->name);
    json_object_set_string_member(o, "boot", h->boot);
    json_object_set_int_member(cap, "cpus", SIM_CPUS);
    json_object_set_int_member(cap, "memory_kib", (gint64)SIM_MEMORY_KIB);
    json_object_set_object_member(o, "capacity", cap);
    json_object_set_string_member(o, "virt", "qemu");
    json_object_set_string_member(o, "peer_endpoint", peer);
    send_obj(s, h, o);
}

static void
send_report(Sim *s, SimHost *h)
{
    g_autoptr(JsonObject) o = wire_new("report");
    JsonArray *clones = json_array_new();
    JsonArray *images = json_array_new();
    g_autoptr(GHashTable) ims = g_hash_table_new(g_str_hash, g_str_equal);
    GHashTableIter it;
    gpointer v;
    gint64 t = now_us();

    g_hash_table_iter_init(&it, h->clones);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        SimClone *c = v;
        JsonObject *r = json_object_new();

        json_object_set_string_member(r, "name", c->name);
        json_object_set_string_member(r, "uuid", c->uuid);
        json_object_set_string_member(r, "service", c->service);
        json_object_set_int_member(r, "index", c->index);
        json_object_set_string_member(r, "image", c->image);
        json_object_set_int_member(r, "generation", c->generation);
        json_object_set_string_member(r, "state", "running");
        json_object_set_int_member(r, "cpu_ns", t * 10);
        json_object_set_int_member(r, "vcpus", 1);
        json_object_set_int_member(r, "memory_kib", 65536);
        json_object_set_int_member(r, "memory_unused_kib", -1);
        json_object_set_int_member(r, "memory_usable_kib", -1);
        json_array_add_object_element(clones, r);
        g_hash_table_add(ims, c->image);
    }
    if (s->hold_image)
        g_hash_table_add(ims, (gpointer)s->hold_image);
    g_hash_table_iter_init(&it, ims);
    while (g_hash_table_iter_next(&it, &v, NULL)) {
        JsonObject *im = json_object_new();
        JsonObject *b = json_object_new();

        json_object_set_string_member(im, "image", v);
        json_object_set_double_member(im, "cached_fraction", 0.05);
        json_object_set_int_member(b, "origin", 1 << 20);
        json_object_set_int_member(b, "peer", 4 << 20);
        json_object_set_int_member(b, "local", 0);
        json_object_set_object_member(im, "fetched_bytes", b);
        json_array_add_object_element(images, im);
    }
    json_object_set_array_member(o, "clones", clones);
    json_object_set_array_member(o, "images", images);
    json_object_set_int_member(o, "time_ms", g_get_real_time() / 1000);
    send_obj(s, h, o);
    s->reports_sent++;
    h->report_seq++;
}

/* send_profile: the first host welcomed sends a profile of
 * --profile-chunks chunk numbers of --profile-image, once */
static void
send_profile(Sim *s, SimHost *h)
{
    g_autoptr(JsonObject) o = wire_new("profiles");
    JsonArray *list = json_array_new();
    JsonObject *p = json_object_new();
    JsonArray *chunks = json_array_sized_new(s->profile_chunks);

    for (guint i = 0; i < s->profile_chunks; i++)
        json_array_add_int_element(chunks, i);
    json_object_set_string_member(p, "image", s->profile_image);
    json_object_set_int_member(p, "boots", 1);
    json_object_set_array_member(p, "chunks", chunks);
    json_array_add_object_element(list, p);
    json_object_set_array_member(o, "profiles", list);
    send_obj(s, h, o);
    s->profile_sent = true;
}

/* fetch_ask: (again) the request the host's fetch waits on */
static void
fetch_ask(Sim *s, SimHost *h)
{
    g_autoptr(JsonObject) o =
        wire_new(h->fetch == FETCH_INDEX ? "index-get" : "profile-get");

    json_object_set_string_member(o, "image", h->fetch_image);
    json_object_set_int_member(o, "offset", h->fetch_offset);
    if (h->fetch == FETCH_INDEX) {
        s->index_gets++;
    } else {
        s->profile_gets++;
    }
    if (h->fetch_asked)
        s->fetch_reasks++;
    h->fetch_asked = now_us();
    send_obj(s, h, o);
}

static void fetch_begin(Sim *s, SimHost *h, JsonObject *image);

/* fetch_done: the host has what it asked for: the next image queued, or
 * its commands run 1 s from now, as the agent's worker creates once the
 * images are ready */
static void
fetch_done(Sim *s, SimHost *h)
{
    gint64 t = now_us(), d = t - h->fetch_start;
    g_autoptr(JsonObject) next = g_queue_pop_head(&h->fetch_next);

    if (next) {
        fetch_begin(s, h, next);
        return;
    }
    h->fetch = FETCH_DONE;
    g_array_append_val(s->fetch_us, d);
    s->fetch_last = MAX(s->fetch_last, t);
    for (GList *l = h->jobs.head; l; l = l->next) {
        SimJob *j = l->data;

        j->due = MAX(j->due, t + SIM_CMD_DELAY_US);
    }
}

/* fetch_begin: ask for the index (and profile) of @image (a create's) */
static void
fetch_begin(Sim *s, SimHost *h, JsonObject *image)
{
    h->fetch = FETCH_INDEX;
    g_free(h->fetch_image);
    h->fetch_image = g_strdup(json_util_get_string(image, "id", NULL));
    g_free(h->fetch_profile_id);
    h->fetch_profile_id =
        g_strdup(json_util_get_string(image, "profile_id", NULL));
    h->fetch_offset = 0;
    h->fetch_asked = 0;
    fetch_ask(s, h);
}

/* fetch_start: a create of an image the host has not fetched: fetched
 * now, or after the one being fetched (its commands wait for both) */
static void
fetch_start(Sim *s, SimHost *h, JsonObject *cmd)
{
    JsonObject *image = json_util_get_object(cmd, "image");
    const char *id = json_util_get_string(image, "id", NULL);

    if (!s->fetch || !id || g_hash_table_contains(h->fetched, id))
        return;
    g_hash_table_add(h->fetched, g_strdup(id));
    if (h->fetch == FETCH_INDEX || h->fetch == FETCH_PROFILE) {
        g_queue_push_tail(&h->fetch_next, json_object_ref(image));
        return;
    }
    h->fetch_start = now_us();
    if (!s->fetch_first)
        s->fetch_first = h->fetch_start;
    fetch_begin(s, h, image);
}

/* Answer: what the fetch needs of an "index" or "profile" message */
typedef struct {
    const char *type;  /* "index", "profile" */
    char *image;       /* its "image" */
    gint64 offset;     /* "offset" (-1: none) */
    gint64 size;       /* "size" of an index, "total" of a profile */
    gint64 data_bytes; /* the bytes "data" (base64) decodes to, or how many
                        * "chunks" a profile answer has; -1: none */
    bool error;        /* an "error" member */
} Answer;

/* base64_bytes: what @n characters of base64 ending at @end decode to */
static gint64
base64_bytes(const char *end, gsize n)
{
    return (gint64)(n / 4 * 3) - (n && end[-1] == '=') -
           (n > 1 && end[-2] == '=');
}

/* answer_of_object: an Answer from a parsed message */
static void
answer_of_object(Answer *a, JsonObject *o, const char *type)
{
    const char *data = json_util_get_string(o, "data", NULL);

    a->type = type;
    a->image = g_strdup(json_util_get_string(o, "image", ""));
    a->offset = json_util_get_int(o, "offset", -1);
    a->size = json_util_get_int(o, "size", -1);
    a->data_bytes = data ? base64_bytes(data + strlen(data), strlen(data)) : -1;
    a->error = json_util_get_string(o, "error", NULL) != NULL;
    if (g_str_equal(type, "profile")) {
        JsonArray *chunks = json_util_get_array(o, "chunks");

        a->size = json_util_get_int(o, "total", -1);
        a->data_bytes = chunks ? (gint64)json_array_get_length(chunks) : -1;
    }
}

/* member_at: where the value of "@name": starts in @data, or NULL */
static const char *
member_at(const char *data, gsize len, const char *name)
{
    g_autofree char *key = g_strdup_printf("\"%s\":", name);
    const char *p = memmem(data, len, key, strlen(key));

    return p ? p + strlen(key) : NULL;
}

/* answer_of_text: an Answer read from a large answer's text without
 * parsing it (json-glib takes ~10 ms per MB: a thousand hosts' indexes
 * would be the simulator's CPU, not spored's); the members are spored's
 * (wire_new, then as handle_index_get sets them).  False when @data is not
 * such an answer. */
static bool
answer_of_text(Answer *a, const char *data, gsize len)
{
    const char *end = data + len, *p, *q;

    if ((p = member_at(data, MIN(len, 256), "type")) &&
        g_str_has_prefix(p, "\"index\""))
        a->type = "index";
    else
        return false; /* profile answers are small: parsed */
    if (!(p = member_at(data, MIN(len, 512), "image")) || *p != '"' ||
        !(q = memchr(p + 1, '"', (gsize)(end - p - 1))))
        return false;
    a->image = g_strndup(p + 1, (gsize)(q - p - 1));
    p = member_at(data, MIN(len, 512), "offset");
    a->offset = p ? g_ascii_strtoll(p, NULL, 10) : -1;
    p = member_at(data, MIN(len, 512), "size");
    a->size = p ? g_ascii_strtoll(p, NULL, 10) : -1;
    a->data_bytes = -1;
    if ((p = member_at(data, MIN(len, 512), "data")) && *p == '"' &&
        (q = memchr(p + 1, '"', (gsize)(end - p - 1))))
        a->data_bytes = base64_bytes(q, (gsize)(q - p - 1));
    a->error = member_at(data, MIN(len, 512), "error") != NULL;
    return true;
}

/* on_answer: an index slice or a profile for the host's fetch */
static void
on_answer(Sim *s, SimHost *h, const Answer *a, gsize len)
{
    if (!g_str_equal(a->image, h->fetch_image ? h->fetch_image : "") ||
        (g_str_equal(a->type, "index") != (h->fetch == FETCH_INDEX)) ||
        (h->fetch != FETCH_INDEX && h->fetch != FETCH_PROFILE) ||
        a->offset != h->fetch_offset)
        return; /* a late answer to a re-ask */
    if (a->error) {
        fprintf(stderr, "site-sim: %s: an error answer (%s)\n", h->name,
                a->type);
        s->fetch_errors++;
        fetch_done(s, h);
        return;
    }
    h->fetch_asked = 0;
    if (h->fetch == FETCH_PROFILE)
        s->profile_msg_bytes += len;
    else
        s->index_msg_bytes += len;
    if (a->data_bytes > 0) {
        h->fetch_offset += a->data_bytes;
        if (h->fetch == FETCH_INDEX)
            s->index_bytes += (guint64)a->data_bytes;
    }
    if (a->data_bytes > 0 && a->size >= 0 && h->fetch_offset < a->size) {
        fetch_ask(s, h); /* the next slice */
    } else if (h->fetch == FETCH_INDEX && h->fetch_profile_id) {
        h->fetch = FETCH_PROFILE;
        h->fetch_offset = 0;
        fetch_ask(s, h);
    } else {
        fetch_done(s, h);
    }
}

/* apply: run a command whose second has come; the ack text */
static char *
apply(Sim *s, SimHost *h, gint64 id, JsonObject *cmd)
{
    const char *op = json_util_get_string(cmd, "op", "");
    g_autoptr(JsonObject) ack = wire_new("ack");
    guint n = 0;

    json_object_set_int_member(ack, "id", id);
    if (g_str_equal(op, "clone-create")) {
        const char *service = json_util_get_string(cmd, "service", "");
        const char *canonical = json_util_get_string(cmd, "manifest", "");
        gint64 gen = json_util_get_int(cmd, "generation", 0);
        JsonObject *image = json_object_get_object_member(cmd, "image");
        const char *image_id =
            image ? json_util_get_string(image, "id", "") : "";
        JsonArray *idx = json_object_get_array_member(cmd, "indexes");

        for (guint i = 0; idx && i < json_array_get_length(idx); i++) {
            gint64 k = json_array_get_int_element(idx, i);
            g_autofree char *name =
                g_strdup_printf("%s-%" G_GINT64_FORMAT, service, k);
            SimClone *c;

            if (g_hash_table_contains(h->clones, name)) {
                s->dup_creates++;
                continue;
            }
            c = g_new0(SimClone, 1);
            c->name = g_strdup(name);
            c->uuid = manifest_clone_uuid(canonical, (guint)k, image_id,
                                          (guint64)gen);
            c->service = g_strdup(service);
            c->image = g_strdup(image_id);
            c->index = k;
            c->generation = gen;
            g_hash_table_insert(h->clones, c->name, c);
            s->running++;
            n++;
        }
    } else if (g_str_equal(op, "clone-destroy")) {
        JsonArray *names = json_object_get_array_member(cmd, "names");

        for (guint i = 0; names && i < json_array_get_length(names); i++) {
            if (g_hash_table_remove(h->clones,
                                    json_array_get_string_element(names, i))) {
                s->running--;
                n++;
            }
        }
    }
    json_object_set_boolean_member(ack, "ok", true);
    {
        g_autofree char *summary = g_strdup_printf("%s: %u (simulated)", op, n);

        json_object_set_string_member(ack, "summary", summary);
    }
    return json_util_to_text(ack, false);
}

static void
note_commanded(Sim *s, SimHost *h, JsonObject *cmd)
{
    JsonArray *idx = json_object_get_array_member(cmd, "indexes");
    const char *service = json_util_get_string(cmd, "service", "");

    for (guint i = 0; idx && i < json_array_get_length(idx); i++) {
        g_autofree char *name =
            g_strdup_printf("%s-%" G_GINT64_FORMAT, service,
                            json_array_get_int_element(idx, i));
        gint64 *since = g_hash_table_lookup(h->vanished, name);

        if (since) {
            gint64 d = now_us() - *since;

            if (*since > 0) /* else: before a report could show it gone */
                g_array_append_val(s->repair_us, d);
            g_hash_table_remove(h->vanished, name);
        }
        if (!g_hash_table_contains(s->commanded, name))
            g_hash_table_add(s->commanded, g_steal_pointer(&name));
    }
}

static void
on_message(Sim *s, SimHost *h, const char *data, gsize len)
{
    g_autoptr(JsonObject) o = NULL;
    const char *type;
    Answer a = {0};

    if (len > 64 * 1024 && answer_of_text(&a, data, len)) {
        on_answer(s, h, &a, len);
        g_free(a.image);
        return;
    }
    if (!(o = wire_parse(data, len, NULL)))
        return;
    type = json_util_get_string(o, "type", "");
    if (g_str_equal(type, "welcome")) {
        if (s->recovering && h->welcomed && !h->rewelcomed) {
            h->rewelcomed = true;
            s->rewelcomed++;
        }
        if (!h->welcomed) {
            h->welcomed = true;
            s->welcomed++;
            h->report_us = json_util_get_int(o, "report_ms", 2000) * 1000;
            h->next_report =
                now_us() + g_random_int_range(0, (int)h->report_us);
            if (s->profile_image && !s->profile_sent)
                send_profile(s, h);
        }
    } else if (g_str_equal(type, "who")) {
        h->next_hello = 0;
        send_hello(s, h, (guint)(h - s->hosts));
    } else if (g_str_equal(type, "index") || g_str_equal(type, "profile")) {
        answer_of_object(&a, o, type);
        on_answer(s, h, &a, len);
        g_free(a.image);
    } else if (g_str_equal(type, "peers")) {
        JsonArray *p = json_object_get_array_member(o, "peers");
        guint n = p ? json_array_get_length(p) : 0;

        s->peers_msgs++;
        s->peers_bytes += len;
        if (!h->told_peers)
            s->peers_told++;
        h->told_peers = true;
        s->peers_max = MAX(s->peers_max, n);
        if (n > WIRE_PEERS_MAX)
            s->peers_over++;
    } else if (g_str_equal(type, "cmd")) {
        gint64 id = json_util_get_int(o, "id", -1);
        g_autofree char *key =
            g_strdup_printf("%s/%" G_GINT64_FORMAT, h->name, id);
        const char *done = g_hash_table_lookup(h->journal, &id);

        s->cmds_received++;
        if (!g_hash_table_contains(s->id_seen, key)) {
            g_hash_table_add(s->id_seen, g_steal_pointer(&key));
            s->cmd_ids++;
        }
        if (done) {
            s->replays++;
            zmq_send(h->sock, done, strlen(done), ZMQ_DONTWAIT);
            return;
        }
        if (g_hash_table_contains(h->in_flight, &id)) {
            s->resends_running++;
            return;
        }
        {
            SimJob *j = g_new0(SimJob, 1);
            gint64 *k = g_new(gint64, 1);

            *k = id;
            g_hash_table_add(h->in_flight, k);
            j->id = id;
            j->due = now_us() + SIM_CMD_DELAY_US;
            j->cmd = json_object_ref(o);
            g_queue_push_tail(&h->jobs, j);
            if (g_str_equal(json_util_get_string(o, "op", ""),
                            "clone-create")) {
                note_commanded(s, h, o);
                fetch_start(s, h, o);
            }
        }
    }
}

/* ---- timers ----------------------------------------------------------- */

static void
run_jobs(Sim *s, SimHost *h, gint64 t)
{
    bool acked = false;

    if (h->fetch == FETCH_INDEX || h->fetch == FETCH_PROFILE)
        return; /* the image is not ready */
    while (!g_queue_is_empty(&h->jobs)) {
        SimJob *j = g_queue_peek_head(&h->jobs);
        g_autofree char *ack = NULL;
        gint64 *k;

        if (j->due > t)
            break;
        g_queue_pop_head(&h->jobs);
        ack = apply(s, h, j->id, j->cmd);
        zmq_send(h->sock, ack, strlen(ack), ZMQ_DONTWAIT);
        k = g_new(gint64, 1);
        *k = j->id;
        g_hash_table_remove(h->in_flight, &j->id);
        g_hash_table_insert(h->journal, k, g_steal_pointer(&ack));
        json_object_unref(j->cmd);
        g_free(j);
        acked = true;
    }
    if (acked)
        send_report(s, h); /* at once after an ack, as the agent does */
}

static gint64
tick(Sim *s, gint64 t)
{
    gint64 next = t + 100 * 1000;

    for (guint i = 0; i < s->n_hosts; i++) {
        SimHost *h = &s->hosts[i];

        if (!h->welcomed) {
            if (t >= h->next_hello) {
                send_hello(s, h, i);
                h->next_hello = t + SIM_HELLO_US;
            }
            next = MIN(next, h->next_hello);
            continue;
        }
        if ((h->fetch == FETCH_INDEX || h->fetch == FETCH_PROFILE) &&
            h->fetch_asked && t - h->fetch_asked >= SIM_ASK_EVERY_US)
            fetch_ask(s, h); /* unanswered: again, as the agent does */
        if (h->fetch == FETCH_INDEX || h->fetch == FETCH_PROFILE)
            next = MIN(next, h->fetch_asked + SIM_ASK_EVERY_US);
        run_jobs(s, h, t);
        if (!g_queue_is_empty(&h->jobs))
            next = MIN(next, ((SimJob *)g_queue_peek_head(&h->jobs))->due);
        if (t >= h->next_report) {
            GHashTableIter it;
            gpointer k;

            send_report(s, h);
            h->next_report = t + h->report_us;
            /* a clone that vanished: its repair is timed from now */
            g_hash_table_iter_init(&it, h->vanished);
            while (g_hash_table_iter_next(&it, &k, NULL)) {
                gint64 *v = g_hash_table_lookup(h->vanished, k);

                if (*v == 0)
                    *v = t;
            }
        }
        next = MIN(next, h->next_report);
    }
    return next;
}

/* vanish_one: a running clone of a random host disappears (as if its
 * domain were undefined behind the agent's back) */
static void
vanish_one(Sim *s)
{
    for (guint tries = 0; tries < 16; tries++) {
        SimHost *h = &s->hosts[g_random_int_range(0, (int)s->n_hosts)];
        GHashTableIter it;
        gpointer k;

        if (g_hash_table_size(h->clones) == 0)
            continue;
        g_hash_table_iter_init(&it, h->clones);
        if (!g_hash_table_iter_next(&it, &k, NULL))
            continue;
        g_hash_table_insert(h->vanished, g_strdup(k), g_new0(gint64, 1));
        g_hash_table_iter_remove(&it);
        s->running--;
        return;
    }
}

/* ---- spored's /proc ---------------------------------------------------- */

static double
proc_cpu_s(int pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *text = NULL;
    char *p;
    unsigned long long ut = 0, st = 0;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return -1;
    p = strrchr(text, ')');
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long
proc_kib(int pid, const char *field)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", pid);
    g_autofree char *text = NULL;
    const char *p;

    if (!g_file_get_contents(path, &text, NULL, NULL) ||
        !(p = strstr(text, field)))
        return -1;
    return strtol(p + strlen(field) + 1, NULL, 10);
}

/* ---- the run ---------------------------------------------------------- */

static bool
load_keys(Sim *s, guint limit)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    g_autoptr(GError) err = NULL;
    guint n = 0;

    if (!g_file_get_contents(s->key_file, &text, NULL, &err)) {
        fprintf(stderr, "site-sim: %s\n", err->message);
        return false;
    }
    lines = g_strsplit(text, "\n", -1);
    s->hosts = g_new0(SimHost, g_strv_length(lines));
    for (guint i = 0; lines[i] && n < limit; i++) {
        g_auto(GStrv) f = g_strsplit(lines[i], " ", 3);
        SimHost *h = &s->hosts[n];

        if (g_strv_length(f) != 3)
            continue;
        h->name = g_strdup(f[0]);
        g_strlcpy(h->keys.public_key, f[1], sizeof(h->keys.public_key));
        g_strlcpy(h->keys.secret_key, f[2], sizeof(h->keys.secret_key));
        g_snprintf(h->boot, sizeof(h->boot), "%08x%08x", g_random_int(),
                   g_random_int());
        h->clones = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                          sim_clone_free);
        h->journal =
            g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
        h->in_flight =
            g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
        h->vanished =
            g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        h->fetched =
            g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        g_queue_init(&h->fetch_next);
        n++;
    }
    s->n_hosts = n;
    return n > 0;
}

static void
connect_all(Sim *s)
{
    for (guint i = 0; i < s->n_hosts; i++) {
        SimHost *h = &s->hosts[i];

        h->sock = zmq_socket(s->ctx, ZMQ_DEALER);
        wire_socket_defaults(h->sock);
        zmq_setsockopt(h->sock, ZMQ_CURVE_SERVERKEY, s->manager_key,
                       WIRE_KEY_CHARS);
        zmq_setsockopt(h->sock, ZMQ_CURVE_PUBLICKEY, h->keys.public_key,
                       WIRE_KEY_CHARS);
        zmq_setsockopt(h->sock, ZMQ_CURVE_SECRETKEY, h->keys.secret_key,
                       WIRE_KEY_CHARS);
        zmq_setsockopt(h->sock, ZMQ_ROUTING_ID, h->name, strlen(h->name));
        zmq_connect(h->sock, s->endpoint);
    }
}

/* pump: read what waits, run the timers; until @until (µs) */
static void
pump(Sim *s, zmq_pollitem_t *items, gint64 until)
{
    for (gint64 t = now_us(); t < until; t = now_us()) {
        gint64 next = MIN(tick(s, t), until);
        long wait_ms = next > t ? (long)((next - t + 999) / 1000) : 0;

        if (zmq_poll(items, (int)s->n_hosts, wait_ms) <= 0)
            continue;
        for (guint i = 0; i < s->n_hosts; i++) {
            for (int k = 0; k < 64 && (items[i].revents & ZMQ_POLLIN); k++) {
                zmq_msg_t m;

                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, s->hosts[i].sock, ZMQ_DONTWAIT) < 0) {
                    zmq_msg_close(&m);
                    break;
                }
                on_message(s, &s->hosts[i], zmq_msg_data(&m), zmq_msg_size(&m));
                zmq_msg_close(&m);
            }
        }
    }
}

/* run_until: pump until @done says so or @deadline; the time it took
 * (seconds) or -1 */
static double
run_until(Sim *s, zmq_pollitem_t *items, bool (*done)(Sim *), gint64 from,
          gint64 deadline, const char *what)
{
    gint64 last_note = now_us();

    while (!done(s)) {
        if (now_us() >= deadline)
            return -1;
        pump(s, items, MIN(now_us() + 200 * 1000, deadline));
        if (now_us() - last_note > 5 * G_USEC_PER_SEC) {
            fprintf(stderr,
                    "site-sim: %s: %.0f s, %u hosts up, %u commanded, %u "
                    "running\n",
                    what, (double)(now_us() - from) / G_USEC_PER_SEC,
                    s->welcomed, g_hash_table_size(s->commanded), s->running);
            last_note = now_us();
        }
    }
    return (double)(now_us() - from) / G_USEC_PER_SEC;
}

static bool
all_up(Sim *s)
{
    return s->welcomed == s->n_hosts;
}

static bool
all_commanded(Sim *s)
{
    return g_hash_table_size(s->commanded) >= s->target_clones;
}

static bool
all_running(Sim *s)
{
    return s->running >= s->target_clones;
}

static GPid
spawn_shell(const char *cmd)
{
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    GPid pid = 0;
    g_autoptr(GError) err = NULL;

    if (!g_spawn_async(NULL, (char **)argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
                       NULL, NULL, &pid, &err)) {
        fprintf(stderr, "site-sim: %s\n", err->message);
        return 0;
    }
    return pid;
}

static int
cmp_i64(gconstpointer a, gconstpointer b)
{
    gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;

    return x < y ? -1 : x > y;
}

static void
print_time(const char *key, double t, const char *missing)
{
    if (t < 0)
        printf("%s: not reached (%s)\n", key, missing);
    else
        printf("%s: %.1f s\n", key, t);
}

static void
steady(Sim *s, zmq_pollitem_t *items, gint64 deadline)
{
    gint64 t0 = now_us(),
           end = MIN(deadline, t0 + (gint64)s->steady_s * G_USEC_PER_SEC);
    double cpu0 = proc_cpu_s(s->pid), cpu1;
    gint64 next_probe = t0 + SIM_PROBE_EVERY_US;
    GPid probe = 0;
    gint64 probe_start = 0;
    double probe_s = -1;

    if (s->probe_cmd && *s->probe_cmd) {
        probe = spawn_shell(s->probe_cmd);
        probe_start = now_us();
    }
    while (now_us() < end) {
        pump(s, items, MIN(now_us() + 100 * 1000, end));
        if (now_us() >= next_probe && now_us() < end - 5 * G_USEC_PER_SEC) {
            vanish_one(s);
            next_probe += SIM_PROBE_EVERY_US;
        }
        if (probe && waitpid(probe, NULL, WNOHANG) == probe) {
            probe_s = (double)(now_us() - probe_start) / G_USEC_PER_SEC;
            probe = 0;
        }
    }
    cpu1 = proc_cpu_s(s->pid);
    printf("spored CPU (steady, %u s): %.1f %%\n", s->steady_s,
           100.0 * (cpu1 - cpu0) / ((double)(now_us() - t0) / G_USEC_PER_SEC));
    printf("spored RSS: %ld MiB (peak %ld MiB)\n",
           proc_kib(s->pid, "VmRSS:") / 1024,
           proc_kib(s->pid, "VmHWM:") / 1024);
    if (s->probe_cmd && *s->probe_cmd) {
        if (probe_s < 0)
            printf("probe command: not done in the steady window\n");
        else
            printf("probe command (host-list): %.2f s\n", probe_s);
    }
}

/* pct_s: the @q quantile of @us (sorted, gint64 µs, not empty), in s */
static double
pct_s(GArray *us, guint q)
{
    guint n = us->len;

    return (double)g_array_index(us, gint64, MIN(n - 1, n * q / 100)) /
           G_USEC_PER_SEC;
}

static void
print_counts(Sim *s)
{
    g_array_sort(s->repair_us, cmp_i64);
    if (s->repair_us->len) {
        guint n = s->repair_us->len;

        printf("command round trip (repair: report -> create), %u: p50 %.2f s, "
               "p99 %.2f s\n",
               n, pct_s(s->repair_us, 50), pct_s(s->repair_us, 99));
    } else {
        printf("command round trip: no repair measured\n");
    }
    printf("commands: %" G_GUINT64_FORMAT " ids, %" G_GUINT64_FORMAT
           " sends (%.2f per command), %" G_GUINT64_FORMAT
           " re-sends while running, %" G_GUINT64_FORMAT " replays answered\n",
           s->cmd_ids, s->cmds_received,
           s->cmd_ids ? (double)s->cmds_received / (double)s->cmd_ids : 0.0,
           s->resends_running, s->replays);
    printf("duplicate creates executed: %" G_GUINT64_FORMAT "\n",
           s->dup_creates);
    printf("peer lists: %" G_GUINT64_FORMAT
           " received, %.1f MB, at most %" G_GUINT64_FORMAT
           " entries, %" G_GUINT64_FORMAT " over the agent's limit of %d\n",
           s->peers_msgs, (double)s->peers_bytes / 1e6, s->peers_max,
           s->peers_over, WIRE_PEERS_MAX);
    printf("peer lists reached %u of %u hosts\n", s->peers_told, s->n_hosts);
    printf("sent: %" G_GUINT64_FORMAT " reports, %.1f MB\n", s->reports_sent,
           (double)s->bytes_sent / 1e6);
    if (s->fetch) {
        guint n = s->fetch_us->len;

        g_array_sort(s->fetch_us, cmp_i64);
        printf("index and profile fetched by %u hosts: %" G_GUINT64_FORMAT
               " index-get (%.1f MB of index, %.1f MB of messages), "
               "%" G_GUINT64_FORMAT
               " profile-get (%.1f MB of messages), %" G_GUINT64_FORMAT
               " re-asked, %" G_GUINT64_FORMAT " errors\n",
               n, s->index_gets, (double)s->index_bytes / 1e6,
               (double)s->index_msg_bytes / 1e6, s->profile_gets,
               (double)s->profile_msg_bytes / 1e6, s->fetch_reasks,
               s->fetch_errors);
        if (n)
            printf("fetch per host: p50 %.2f s, p99 %.2f s, max %.2f s; "
                   "first ask -> last answer %.2f s\n",
                   pct_s(s->fetch_us, 50), pct_s(s->fetch_us, 99),
                   pct_s(s->fetch_us, 100),
                   (double)(s->fetch_last - s->fetch_first) / G_USEC_PER_SEC);
    }
}

static bool
all_rewelcomed(Sim *s)
{
    return s->rewelcomed >= s->welcomed_at_kill;
}

/* whether process @pid is gone (or a zombie its parent has not reaped) */
static bool
process_gone(int pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *text = NULL;
    const char *close;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return true;
    close = strrchr(text, ')');
    return close && close[1] == ' ' && close[2] == 'Z';
}

/*
 * recover: spored is killed (SIGKILL) while every host reports, and
 * --restart-cmd starts it again (it prints the new PID once the control
 * socket answers).  Timed from the kill: spored answering again, every
 * host welcomed again (the restarted spored answers a report with "who"),
 * and then a quiet window of RECOVER_QUIET_S in which the commands it
 * sends are counted: every clone already runs, so each create is one too
 * many, and a duplicate executed is a create of a clone its host has.
 */
#define RECOVER_QUIET_S 15

static void
recover(Sim *s, zmq_pollitem_t *items, gint64 deadline)
{
    guint64 ids0 = s->cmd_ids, sends0 = s->cmds_received, replays0 = s->replays,
            dup0 = s->dup_creates;
    guint commanded0 = g_hash_table_size(s->commanded);
    g_autofree char *out = NULL;
    g_autoptr(GError) err = NULL;
    const char *argv[] = {"/bin/sh", "-c", s->restart_cmd, NULL};
    gint64 t0, tw;
    double t_up;
    int status = 0, pid;

    if (s->pre_kill_cmd && *s->pre_kill_cmd) {
        const char *pre[] = {"/bin/sh", "-c", s->pre_kill_cmd, NULL};

        g_spawn_sync(NULL, (char **)pre, NULL, G_SPAWN_DEFAULT, NULL, NULL,
                     NULL, NULL, NULL, NULL);
    }
    for (guint i = 0; i < s->n_hosts; i++)
        s->hosts[i].rewelcomed = false;
    s->welcomed_at_kill = s->welcomed;
    s->rewelcomed = 0;
    s->recovering = true;
    t0 = now_us();
    kill(s->pid, SIGKILL);
    while (!process_gone(s->pid) && now_us() - t0 < 10 * G_USEC_PER_SEC)
        g_usleep(10 * 1000);
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL,
                      &out, NULL, &status, &err) ||
        !g_spawn_check_wait_status(status, &err) ||
        (pid = (int)g_ascii_strtoll(out, NULL, 10)) <= 0) {
        printf("recovery: the restart command failed: %s\n",
               err ? err->message : "no PID printed");
        return;
    }
    s->pid = pid;
    printf("recovery after kill -9 (under %u hosts' reports): spored answers "
           "again after %.1f s\n",
           s->n_hosts, (double)(now_us() - t0) / G_USEC_PER_SEC);
    t_up = run_until(s, items, all_rewelcomed, t0, deadline, "recovering");
    {
        g_autofree char *m = g_strdup_printf(
            "%u of %u welcomed again", s->rewelcomed, s->welcomed_at_kill);
        print_time("recovery: kill -9 -> every host welcomed again", t_up, m);
    }
    tw = now_us();
    pump(s, items, MIN(deadline, tw + RECOVER_QUIET_S * G_USEC_PER_SEC));
    printf("recovery: in the %d s after, %" G_GUINT64_FORMAT
           " new command ids, %" G_GUINT64_FORMAT " sends (%" G_GUINT64_FORMAT
           " replays of commands acked before the kill), %u clones "
           "commanded that were not before, %" G_GUINT64_FORMAT
           " duplicate creates executed; %u of %u clones running\n",
           RECOVER_QUIET_S, s->cmd_ids - ids0, s->cmds_received - sends0,
           s->replays - replays0, g_hash_table_size(s->commanded) - commanded0,
           s->dup_creates - dup0, s->running, s->target_clones);
    printf("recovery: spored RSS %ld MiB after it\n",
           proc_kib(s->pid, "VmRSS:") / 1024);
}

static volatile sig_atomic_t stop_hold;

static void
on_term(int sig)
{
    stop_hold = 1;
}

/* hold: with --clones 0, only be the hosts (hello, reports, commands
 * answered) until --timeout or SIGTERM, for a test that needs a big site
 * around real agents */
static int
hold(Sim *s, zmq_pollitem_t *items, gint64 deadline)
{
    double t_up = run_until(s, items, all_up, s->start, deadline, "connecting");

    print_time("all hosts up", t_up, "not every host welcomed");
    fflush(stdout);
    signal(SIGTERM, on_term);
    while (!stop_hold && now_us() < deadline)
        pump(s, items, MIN(deadline, now_us() + 200 * 1000));
    print_counts(s);
    fflush(stdout);
    return t_up >= 0 ? 0 : 3;
}

static int
run(Sim *s, guint n_limit)
{
    g_autofree zmq_pollitem_t *items = NULL;
    gint64 deadline, t_submit;
    double t_up, t_cmd = -1, t_run = -1;
    GPid submit = 0;

    if (!load_keys(s, n_limit))
        return 1;
    s->ctx = zmq_ctx_new();
    zmq_ctx_set(s->ctx, ZMQ_IO_THREADS, 2);
    zmq_ctx_set(s->ctx, ZMQ_MAX_SOCKETS, (int)s->n_hosts + 64);
    s->commanded = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    s->id_seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    s->repair_us = g_array_new(FALSE, FALSE, sizeof(gint64));
    s->fetch_us = g_array_new(FALSE, FALSE, sizeof(gint64));
    s->start = now_us();
    s->cpu_start = proc_cpu_s(s->pid);
    deadline = s->start + (gint64)s->timeout_s * G_USEC_PER_SEC;
    connect_all(s);
    items = g_new0(zmq_pollitem_t, s->n_hosts);
    for (guint i = 0; i < s->n_hosts; i++)
        items[i] = (zmq_pollitem_t){s->hosts[i].sock, 0, ZMQ_POLLIN, 0};

    printf("hosts: %u, clones: %u\n", s->n_hosts, s->target_clones);
    if (s->target_clones == 0) {
        int rc = hold(s, items, deadline);

        for (guint i = 0; i < s->n_hosts; i++)
            zmq_close(s->hosts[i].sock);
        zmq_ctx_term(s->ctx);
        return rc;
    }
    /* a third of the time to connect; then on with those that are up */
    t_up = run_until(s, items, all_up, s->start,
                     s->start + (deadline - s->start) / 3, "connecting");
    {
        g_autofree char *m =
            g_strdup_printf("%u of %u welcomed", s->welcomed, s->n_hosts);
        print_time("all hosts up", t_up, m);
    }
    fflush(stdout);
    if (s->welcomed > 0) {
        /* a few reports from everyone before the submit */
        pump(s, items, MIN(deadline, now_us() + 3 * G_USEC_PER_SEC));
        t_submit = now_us();
        if (s->submit_cmd)
            submit = spawn_shell(s->submit_cmd);
        t_cmd =
            run_until(s, items, all_commanded, t_submit, deadline, "placing");
        {
            g_autofree char *m = g_strdup_printf(
                "%u of %u commanded", g_hash_table_size(s->commanded),
                s->target_clones);
            print_time("submit -> all placed and commanded", t_cmd, m);
        }
        fflush(stdout);
        t_run =
            run_until(s, items, all_running, t_submit, deadline, "creating");
        {
            g_autofree char *m = g_strdup_printf("%u of %u running", s->running,
                                                 s->target_clones);
            print_time("submit -> all running", t_run, m);
        }
        fflush(stdout);
        if (submit) {
            int status = 0;

            if (waitpid(submit, &status, WNOHANG) == 0)
                printf("submit command: still running\n");
            else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                printf("submit command: failed (status %d)\n", status);
        }
        steady(s, items, deadline + 60 * G_USEC_PER_SEC);
        if (s->restart_cmd && *s->restart_cmd && t_run >= 0)
            recover(s, items, now_us() + (gint64)s->timeout_s * G_USEC_PER_SEC);
    }
    print_counts(s);
    /* what the run cost spored, whatever share of the CPUs it was given
     * (on a busy machine the wall-clock figures above stretch) */
    printf("spored CPU time, whole run: %.1f s in %.0f s\n",
           proc_cpu_s(s->pid) - s->cpu_start,
           (double)(now_us() - s->start) / G_USEC_PER_SEC);
    fflush(stdout);
    for (guint i = 0; i < s->n_hosts; i++)
        zmq_close(s->hosts[i].sock);
    zmq_ctx_term(s->ctx);
    return t_run >= 0 ? 0 : 3;
}

int
main(int argc, char **argv)
{
    Sim s = {.steady_s = 20, .timeout_s = 300};
    gint n_hosts = G_MAXINT, clones = 0, steady_s = 20, timeout_s = 300;
    int pid = 0;
    char *endpoint = NULL, *key = NULL, *keys = NULL, *submit = NULL,
         *probe = NULL, *restart = NULL, *pre_kill = NULL, *hold_image = NULL,
         *profile_image = NULL;
    gboolean fetch = FALSE;
    gint profile_chunks = 0;
    GOptionEntry entries[] = {
        {"endpoint", 0, 0, G_OPTION_ARG_STRING, &endpoint,
         "spored's agents' endpoint", "tcp://ADDR:PORT"},
        {"manager-key", 0, 0, G_OPTION_ARG_STRING, &key,
         "spored's public key (Z85)", "KEY"},
        {"keys", 0, 0, G_OPTION_ARG_FILENAME, &keys, "from keygen", "FILE"},
        {"hosts", 0, 0, G_OPTION_ARG_INT, &n_hosts, "hosts (of the key file)",
         "N"},
        {"clones", 0, 0, G_OPTION_ARG_INT, &clones,
         "clones submitted (0: only hold the hosts up until --timeout or "
         "SIGTERM)",
         "N"},
        {"image", 0, 0, G_OPTION_ARG_STRING, &hold_image,
         "an image id every host reports it holds", "ID"},
        {"submit-cmd", 0, 0, G_OPTION_ARG_STRING, &submit,
         "shell command that submits them", "CMD"},
        {"probe-cmd", 0, 0, G_OPTION_ARG_STRING, &probe,
         "shell command timed in the steady window", "CMD"},
        {"pid", 0, 0, G_OPTION_ARG_INT, &pid, "spored's PID", "PID"},
        {"restart-cmd", 0, 0, G_OPTION_ARG_STRING, &restart,
         "after the steady window: kill -9 spored, run this (it starts "
         "spored again and prints its PID), time the recovery",
         "CMD"},
        {"pre-kill-cmd", 0, 0, G_OPTION_ARG_STRING, &pre_kill,
         "run before that kill (e.g. to save spored's metrics)", "CMD"},
        {"fetch", 0, 0, G_OPTION_ARG_NONE, &fetch,
         "ask for the index (and profile) of a create's image first", NULL},
        {"profile-image", 0, 0, G_OPTION_ARG_STRING, &profile_image,
         "the first host welcomed sends a profile of this image", "ID"},
        {"profile-chunks", 0, 0, G_OPTION_ARG_INT, &profile_chunks,
         "... of N chunk numbers (at most 65536)", "N"},
        {"steady", 0, 0, G_OPTION_ARG_INT, &steady_s, "steady window", "S"},
        {"timeout", 0, 0, G_OPTION_ARG_INT, &timeout_s, "bound of the run",
         "S"},
        {NULL},
    };
    g_autoptr(GOptionContext) oc = NULL;
    g_autoptr(GError) err = NULL;
    struct rlimit rl;

    if (argc == 6 && g_str_equal(argv[1], "keygen"))
        return keygen(argv[2], argv[3], argv[4],
                      (guint)g_ascii_strtoull(argv[5], NULL, 10));
    if (argc < 2 || !g_str_equal(argv[1], "run")) {
        fprintf(stderr, "usage: site-sim keygen KEY-FILE HOSTS-DIR PREFIX N\n"
                        "       site-sim run --help\n");
        return 2;
    }
    oc = g_option_context_new("- simulated hosts against spored");
    g_option_context_add_main_entries(oc, entries, NULL);
    if (!g_option_context_parse(oc, &argc, &argv, &err) || !endpoint || !key ||
        !keys || clones < 0 || n_hosts <= 0 || steady_s < 5 || timeout_s <= 0 ||
        profile_chunks < 0 || profile_chunks > (gint)WIRE_PROFILE_CHUNKS_MAX) {
        fprintf(stderr, "site-sim: %s\n",
                err ? err->message
                    : "--endpoint, --manager-key, --keys and --clones are "
                      "needed (--steady at least 5)");
        return 2;
    }
    /* two descriptors per host and then some */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    s.endpoint = endpoint;
    s.manager_key = key;
    s.key_file = keys;
    s.submit_cmd = submit;
    s.probe_cmd = probe;
    s.restart_cmd = restart;
    s.pre_kill_cmd = pre_kill;
    s.hold_image = hold_image;
    s.fetch = fetch;
    s.profile_image = profile_chunks > 0 ? profile_image : NULL;
    s.profile_chunks = (guint)profile_chunks;
    s.target_clones = (guint)clones;
    s.steady_s = (guint)steady_s;
    s.timeout_s = (guint)timeout_s;
    s.pid = pid;
    return run(&s, (guint)n_hosts);
}
