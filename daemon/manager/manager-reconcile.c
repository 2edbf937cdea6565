/*
 * manager-reconcile.c: the reconciliation pass, once a second and after
 * anything changes, and the commands it sends to agents.
 *
 *   1. hosts silent for lost_after_s are lost: their clones are unplaced
 *      (a host counts as heard from when the manager starts, so that one
 *      down across a restart is lost too: seed_runtime); none while more
 *      than RESEND_HOLD_MESSAGES messages wait in the inbox (unread
 *      messages are no silence);
 *   2. auto-scaling decides (manager-scaling.c);
 *   3. each service's clone rows follow its desired count, and a new
 *      generation replaces the old one's clones a step at a time within
 *      the manifest's <update> bounds (rollout_step, rollout.h); a
 *      deleted service goes once no host reports a clone of it;
 *   4. unplaced clones are placed (placement.c), at most
 *      PASS_CLONES_MAX of them;
 *   5. per host that has reported since the manager started: each of its
 *      desired clones missing from the report is created (one command per
 *      service: one appliance launch), each reported clone that is not
 *      desired there, or is of another version (UUID), is destroyed;
 *      each desired clone of the current generation it reports shut off
 *      (a reboot) is started on its overlay (plan_starts).  Creates stop
 *      once the pass commanded PASS_CLONES_MAX clones (a host's are not
 *      split): the hosts after wait for the next pass, which starts with
 *      them (Manager.pass_cursor);
 *   6. the pass's own commands are sent (send_new); the timer's pass
 *      also sends again those not acknowledged within resend_s (not
 *      while more than RESEND_HOLD_MESSAGES messages wait in the inbox:
 *      the acks may be among them: send_due).
 * Agents apply a command id once; creating and destroying are idempotent
 * anyway (UUIDs), so re-sending is always safe.
 *
 * A pass is O(clones) and bounded: what steps 4 and 5 leave (a submit of
 * thousands) is done by the passes that follow at once, on an idle source
 * at the inbox's priority (pass_continue), so that acks and reports are
 * applied between them and no pass holds the main loop for long.
 *
 * Invariants:
 *   1. Steps 1-5 are one transaction: a pass that fails at any statement
 *      is rolled back whole and logged, and the next pass starts afresh.
 *   2. Step 6 runs after the commit, so a command is never sent before it
 *      is stored.  The pass's own commands are stored as sent (at their
 *      first attempt); one that then cannot go is marked unsent in a
 *      transaction of its own.  Re-sends are recorded in one transaction
 *      (sends whose record fails are sent again: harmless, see above).
 *   3. Nothing is decided about a host before it reported since the
 *      manager started (HostRuntime.reported).
 *   4. A pass that leaves placements or creates undone has the next pass
 *      scheduled (Manager.pass_more, one at a time): nothing waits for the
 *      timer.
 *   5. The clone rows a pass committed are kept for the next one while
 *      nothing else wrote the table (state_clone_writes) under the same
 *      leader epoch (kept_rows); a pass that rolls back keeps none.
 */
#include "manager-private.h"

#include <string.h>
#include <time.h>
#include <zmq.h>

#include "log-batch.h"
#include "peer-lists.h"
#include "placement.h"
#include "rollout.h"
#include "spore-error.h"

#define PEERS_RESEND_US (30 * G_USEC_PER_SEC)
/* no re-sends of commands, and no host lost, while the inbox holds more
 * than this */
#define RESEND_HOLD_MESSAGES 1000
/* after a change, peer lists go out again at most this often */
#define PEERS_MIN_US (2 * G_USEC_PER_SEC)
/* entries of one host's peer list (the agent takes WIRE_PEERS_MAX) */
#define PEERS_PER_HOST 64
G_STATIC_ASSERT(PEERS_PER_HOST <= WIRE_PEERS_MAX);
/* a clone reported shut off is started again at most this often */
#define RESTART_INTERVAL_US (30 * G_USEC_PER_SEC)
/* at most this many clones are placed, and about this many commanded to
 * be created, in one pass (PassBudget): at 1,000 hosts and 10,000 clones
 * a pass of 500 took up to 340 ms, one of 250 up to 160 ms; with the rows
 * kept between passes and the commands sent without a second transaction,
 * one of 150 up to 97 ms, and 10,000 commanded in 6-7.5 s
 * (docs/benchmarks.md) */
#define PASS_CLONES_MAX 150
/* a pass longer than this is logged with its steps' times (the target of
 * docs/benchmarks.md, "Site manager scale") */
#define PASS_SLOW_S 0.1

/* PassRows: every clone row, read once by step 3 (or kept from the last
 * pass: kept_rows) and used by steps 4 (which writes its placements into
 * them) and 5; when a step changed the table otherwise (stale), step 5
 * reads them again, and a pass that commits keeps them for the next */
typedef struct {
    GPtrArray *clones; /* of CloneRow, by service and index */
    bool stale;
} PassRows;

static void
pass_rows_clear(PassRows *pr)
{
    g_clear_pointer(&pr->clones, g_ptr_array_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(PassRows, pass_rows_clear)

/* PassBudget: what one pass may still do of steps 4 and 5.  A submit of
 * thousands of clones is spread over passes that follow each other at
 * once (pass_continue), so that no pass holds the main loop, and the
 * acks and reports waiting behind it, for long. */
typedef struct {
    guint place;       /* clones that may still be placed */
    guint create;      /* clones that may still be commanded */
    bool more;         /* some were left for the next pass */
    bool creates_left; /* a host's creates were: step 5 ran out */
} PassBudget;

/* a clone desired on a host; its strings are borrowed from the pass
 * (the clone row) and the manifest cache (CloneIds) */
typedef struct {
    const char *service;
    guint index;
    const char *name;
    const char *uuid;
    bool current; /* of the service's current generation: may be created */
} Wanted;

static GHashTable *pending_keys(Manager *m, const char *host, GError **error);
static GPtrArray *command_keys(const char *text);

/* ---- commands to agents ------------------------------------------------ */

static GPtrArray *command_keys_of(JsonObject *body);

/* PassSend: a command the pass stored, sent once the pass commits
 * (send_new) */
typedef struct {
    CommandRow row; /* id, host and body */
} PassSend;

static void
pass_send_free(gpointer p)
{
    PassSend *ps = p;

    g_free(ps->row.host);
    g_free(ps->row.body);
    g_free(ps);
}

/* command_add: store @body as a command to @host, sent once the pass
 * commits (stored as sent then: send_new), its keys (what it creates,
 * starts, destroys) kept from here on, not parsed again from the stored
 * text (Manager.command_keys: the pending commands') */
static bool
command_add(Manager *m, const char *host, const char *service, JsonObject *body,
            gint64 *ret_id, GError **error)
{
    g_autofree char *text = json_util_to_text(body, false);
    PassSend *ps;
    gint64 *id;

    if (!state_command_add_sent(m->db, host,
                                json_util_get_string(body, "op", NULL), service,
                                text, state_now(), ret_id, error))
        return false;
    id = g_new(gint64, 1);
    *id = *ret_id;
    g_hash_table_insert(m->command_keys, id, command_keys_of(body));
    ps = g_new0(PassSend, 1);
    ps->row.id = *ret_id;
    ps->row.host = g_strdup(host);
    ps->row.body = g_steal_pointer(&text);
    g_ptr_array_add(m->pass_sends, ps);
    return true;
}

/* image_object: the image of a create command: the service's image (not
 * its index, which a host lacking the image asks for once, index-get) and
 * the digest of the site's access profile (the profile of the host that
 * booted it most, which a host that never did asks for, profile-get, and
 * prefetches: docs/site-protocol.md) */
static JsonObject *
image_object(Manager *m, const char *image, GError **error)
{
    g_autoptr(ImageRow) row = NULL;
    g_autoptr(JsonObject) o = json_object_new();
    g_autoptr(JsonParser) p = json_parser_new();
    SiteProfile *profile = NULL;

    if (!state_image_get(m->db, image, &row, error))
        return NULL;
    if (!row) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "image '%s' is not registered", image);
        return NULL;
    }
    if (!manager_site_profile(m, row->id, &profile, error))
        return NULL;
    json_object_set_string_member(o, "name", row->name);
    json_object_set_string_member(o, "id", row->id);
    json_object_set_string_member(o, "format", row->format);
    if (json_parser_load_from_data(p, row->origins, -1, NULL))
        json_object_set_member(o, "origins",
                               json_node_copy(json_parser_get_root(p)));
    if (profile)
        json_object_set_string_member(o, "profile_id", profile->digest);
    return g_steal_pointer(&o);
}

/* CommandTemplate: what every command of a service carries, read once
 * per pass (step 5 sends one per host: a thousand after a submit) */
typedef struct {
    ServiceRow *svc;   /* NULL: the service is gone */
    JsonObject *image; /* image_object() of its image, shared by ref */
} CommandTemplate;

static void
command_template_free(gpointer p)
{
    CommandTemplate *t = p;

    g_clear_pointer(&t->svc, service_row_free);
    g_clear_pointer(&t->image, json_object_unref);
    g_free(t);
}

static CommandTemplate *service_template(Manager *m, const char *service,
                                         GError **error);

/* service_command: a command @op for @service carrying its image (the
 * agent serves it first), the service's row in *ret_svc (borrowed from
 * the pass); false on an error, true with *ret_body NULL when the service
 * is gone */
static bool
service_command(Manager *m, const char *service, const char *op,
                const ServiceRow **ret_svc, JsonObject **ret_body,
                GError **error)
{
    CommandTemplate *t = service_template(m, service, error);
    JsonObject *body;

    *ret_body = NULL;
    if (!t)
        return false;
    if (!t->svc)
        return true;
    body = wire_new("cmd");
    json_object_set_string_member(body, "op", op);
    json_object_set_string_member(body, "service", service);
    json_object_set_object_member(body, "image", json_object_ref(t->image));
    *ret_svc = t->svc;
    *ret_body = body;
    return true;
}

static bool
command_create(Manager *m, const char *host, const char *service,
               GArray *indexes, GError **error)
{
    const ServiceRow *svc = NULL;
    g_autoptr(JsonObject) body = NULL;
    g_autoptr(JsonArray) idx = json_array_new();
    g_autoptr(GString) list = g_string_new(NULL);
    gint64 id;

    if (!service_command(m, service, "clone-create", &svc, &body, error))
        return false;
    if (!body)
        return true;
    json_object_set_int_member(body, "generation", svc->generation);
    json_object_set_string_member(body, "manifest", svc->manifest);
    for (guint i = 0; i < indexes->len; i++) {
        json_array_add_int_element(idx, g_array_index(indexes, guint, i));
        g_string_append_printf(list, "%s%s-%u", i ? ", " : "", service,
                               g_array_index(indexes, guint, i));
    }
    json_object_set_array_member(body, "indexes", json_array_ref(idx));
    return command_add(m, host, service, body, &id, error) &&
           manager_event(m, error, "command", service, host,
                         "command %" G_GINT64_FORMAT ": create %s on %s", id,
                         list->str, host);
}

/* command_start: start @service's clones @starts (of Wanted *), defined
 * and shut off on @host, on their overlays */
static bool
command_start(Manager *m, const char *host, const char *service,
              GPtrArray *starts, GError **error)
{
    const ServiceRow *svc = NULL;
    g_autoptr(JsonObject) body = NULL;
    g_autoptr(JsonArray) arr = json_array_new();
    g_autoptr(GString) list = g_string_new(NULL);
    gint64 id;

    if (!service_command(m, service, "clone-start", &svc, &body, error))
        return false;
    if (!body)
        return true;
    for (guint i = 0; i < starts->len; i++) {
        const Wanted *w = starts->pdata[i];
        JsonObject *o = json_object_new();

        json_object_set_string_member(o, "name", w->name);
        json_object_set_string_member(o, "uuid", w->uuid);
        json_array_add_object_element(arr, o);
        g_string_append_printf(list, "%s%s", i ? ", " : "", w->name);
    }
    json_object_set_array_member(body, "clones", json_array_ref(arr));
    return command_add(m, host, service, body, &id, error) &&
           manager_event(m, error, "command", service, host,
                         "command %" G_GINT64_FORMAT
                         ": start %s on %s (reported shut off)",
                         id, list->str, host);
}

static bool
command_destroy(Manager *m, const char *host, const char *service,
                GPtrArray *names, GError **error)
{
    g_autoptr(JsonObject) body = wire_new("cmd");
    g_autoptr(JsonArray) arr = json_array_new();
    g_autoptr(GString) list = g_string_new(NULL);
    gint64 id;

    for (guint i = 0; i < names->len; i++) {
        json_array_add_string_element(arr, names->pdata[i]);
        g_string_append_printf(list, "%s%s", i ? ", " : "",
                               (char *)names->pdata[i]);
    }
    json_object_set_string_member(body, "op", "clone-destroy");
    json_object_set_array_member(body, "names", json_array_ref(arr));
    json_object_set_int_member(body, "timeout", m->config.shutdown_timeout_s);
    return command_add(m, host, service, body, &id, error) &&
           manager_event(m, error, "command", service, host,
                         "command %" G_GINT64_FORMAT ": destroy %s on %s", id,
                         list->str, host);
}

/* ---- 1. lost hosts ----------------------------------------------------- */

/* names_by_service: service -> GPtrArray of the clone names of @clones */
static GHashTable *
names_by_service(Manager *m, GPtrArray *clones, GError **error)
{
    g_autoptr(GHashTable) names = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);

    for (guint i = 0; i < clones->len; i++) {
        CloneRow *c = clones->pdata[i];
        g_autoptr(GError) err = NULL;
        Manifest *mf = manager_manifest(m, c->service, &err);
        GPtrArray *arr;

        if (err) {
            g_propagate_error(error, g_steal_pointer(&err));
            return NULL;
        }
        if (!mf)
            continue;
        arr = g_hash_table_lookup(names, c->service);
        if (!arr) {
            arr = g_ptr_array_new_with_free_func(g_free);
            g_hash_table_insert(names, g_strdup(c->service), arr);
        }
        g_ptr_array_add(arr, manifest_clone_name(mf, (guint)c->index));
    }
    return g_steal_pointer(&names);
}

/*
 * host_lose: @h is lost: its clones are unplaced (placed again
 * elsewhere), its pending commands other than destroys are cancelled,
 * and a destroy of the clones it had waits for it: should it come back,
 * its copies go (a report would show those that are still defined; the
 * command also removes overlays whose domain went while it was away).
 */
static bool
host_lose(Manager *m, HostRuntime *h, GError **error)
{
    g_autoptr(GPtrArray) clones = NULL;
    g_autoptr(GHashTable) names = NULL;
    GHashTableIter it;
    gpointer service, list;

    clones = state_clone_list(m->db, NULL, h->name, error);
    if (!clones || !(names = names_by_service(m, clones, error)) ||
        !state_host_set_lost(m->db, h->name, error) ||
        !manager_event(m, error, "host-lost", NULL, h->name,
                       "host %s lost: no report for %u s; its clones are "
                       "placed again",
                       h->name, m->config.lost_after_s))
        return false;
    h->reported = false;
    m->peers_changed = true; /* the others' peer lists drop it */
    g_hash_table_iter_init(&it, names);
    while (g_hash_table_iter_next(&it, &service, &list)) {
        if (!command_destroy(m, h->name, service, list, error))
            return false;
    }
    return true;
}

static bool
mark_lost_hosts(Manager *m, GError **error)
{
    GHashTableIter it;
    gpointer v;

    /* with a backlog, messages wait unread (backpressure): silence does
     * not say that a host is gone */
    if (m->inbox.length > RESEND_HOLD_MESSAGES)
        return true;

    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        HostRuntime *h = v;
        g_autoptr(HostRow) row = NULL;

        if (h->last_seen == 0 || manager_host_is_up(m, h->name))
            continue;
        if (!state_host_get(m->db, h->name, &row, error))
            return false;
        if (!row || row->lost)
            continue;
        if (!host_lose(m, h, error))
            return false;
    }
    return true;
}

/* ---- 3. clone rows ----------------------------------------------------- */

/* service_reported: whether any host reports a clone of @service */
static bool
service_reported(Manager *m, const char *service)
{
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        HostRuntime *h = v;

        for (guint c = 0; c < h->n_view; c++) {
            if (g_strcmp0(h->view[c].service, service) == 0)
                return true;
        }
    }
    return false;
}

/* service_gone: a deleted service goes once no host reports a clone of
 * it (a destroy waiting for a lost host does not hold it up) */
static bool
service_gone(Manager *m, const char *service, GError **error)
{
    bool busy = false;

    if (service_reported(m, service))
        return true;
    if (!state_service_busy(m->db, service, &busy, error))
        return false;
    if (busy)
        return true;
    return state_service_remove(m->db, service, error) &&
           manager_event(m, error, "service-deleted", service, NULL,
                         "service %s deleted: its clones are gone", service);
}

/* generation_entry: the manifest of @service at @generation (the current
 * one from manager_manifest_entry, older ones from the generations
 * table), cached like it; NULL without @error when not kept */
static ManagerManifest *
generation_entry(Manager *m, const char *service, gint64 generation,
                 gint64 current, GError **error)
{
    g_autofree char *key = NULL;
    g_autofree char *canonical = NULL;
    g_autoptr(GError) err = NULL;
    ManagerManifest *e;

    if (generation == current)
        return manager_manifest_entry(m, service, error);
    key = g_strdup_printf("%s:%" G_GINT64_FORMAT, service, generation);
    if ((e = g_hash_table_lookup(m->manifests, key)))
        return e;
    if (!state_generation_get(m->db, service, generation, &canonical, NULL,
                              error))
        return NULL;
    if (!canonical)
        return NULL;
    e = g_new0(ManagerManifest, 1);
    e->manifest = manifest_parse_data(canonical, strlen(canonical), NULL, &err);
    if (!e->manifest) {
        g_free(e);
        g_warning("service %s: generation %" G_GINT64_FORMAT
                  " does not parse: %s",
                  service, generation, err ? err->message : "invalid");
        return NULL;
    }
    e->canonical = g_steal_pointer(&canonical);
    g_hash_table_insert(m->manifests, g_steal_pointer(&key), e);
    return e;
}

/* generation_image_id: the id of the image of @service at @generation */
static bool
generation_image_id(Manager *m, const char *service, gint64 generation,
                    gint64 current, char **ret_id, GError **error)
{
    g_autofree char *canonical = NULL;
    g_autofree char *image = NULL;
    g_autoptr(ImageRow) row = NULL;

    if (generation == current)
        return state_service_image_id(m->db, service, ret_id, error);
    if (!state_generation_get(m->db, service, generation, &canonical, &image,
                              error))
        return false;
    if (image && !state_image_get(m->db, image, &row, error))
        return false;
    *ret_id = row ? g_strdup(row->id) : NULL;
    return true;
}

/* pending_create: a create of @service's clone @index to @host waits for
 * its acknowledgement (the clone may be defined, not started yet).  Step
 * 3 asks before the pass's cache of pending commands exists (it is built
 * for step 5, after the rows changed): then from the database, for the
 * few clones reported shut off. */
static bool
pending_create(Manager *m, const char *host, const char *service, guint index,
               bool *ret_pending, GError **error)
{
    g_autofree char *key = g_strdup_printf("create:%s:%u", service, index);
    g_autoptr(GPtrArray) cmds = NULL;

    *ret_pending = false;
    if (m->pass) {
        g_autoptr(GHashTable) keys = pending_keys(m, host, error);

        if (!keys)
            return false;
        *ret_pending = g_hash_table_contains(keys, key);
        return true;
    }
    cmds = state_command_list_pending(m->db, host, G_MAXDOUBLE, error);
    if (!cmds)
        return false;
    for (guint c = 0; c < cmds->len && !*ret_pending; c++) {
        g_autoptr(GPtrArray) keys =
            command_keys(((CommandRow *)cmds->pdata[c])->body);

        for (guint k = 0; k < keys->len && !*ret_pending; k++)
            *ret_pending = g_str_equal(keys->pdata[k], key);
    }
    return true;
}

/* row_state: what rollout_decide needs of row @c; false with *ret_known
 * false when its host has not reported since the manager started */
static bool
row_state(Manager *m, const CloneRow *c, RolloutCloneState *ret_state,
          bool *ret_known, GError **error)
{
    HostRuntime *h = c->host ? g_hash_table_lookup(m->runtime, c->host) : NULL;
    g_autofree char *name =
        g_strdup_printf("%s-%" G_GINT64_FORMAT, c->service, c->index);
    const ReportedClone *rep;
    bool pending = false;

    *ret_known = true;
    *ret_state = ROLLOUT_CLONE_ABSENT;
    if (!c->host)
        return true;
    *ret_state = ROLLOUT_CLONE_WAITING;
    if (!h || !h->reported) {
        *ret_known = false;
        return true;
    }
    rep = manager_reported(m, c->host, name);
    if (!rep || rep->generation != c->generation)
        return true;
    if (g_str_equal(rep->state, "running")) {
        *ret_state = ROLLOUT_CLONE_RUNNING;
    } else if (g_str_equal(rep->state, "crashed")) {
        *ret_state = ROLLOUT_CLONE_FAILED;
    } else if (g_str_equal(rep->state, "shutoff")) {
        /* defined but not started yet while its create is pending */
        if (!pending_create(m, c->host, c->service, (guint)c->index, &pending,
                            error))
            return false;
        if (!pending)
            *ret_state = ROLLOUT_CLONE_FAILED;
    }
    return true;
}

/* reported_indexes: service -> GArray of guint, the indexes of the
 * service's clones that hosts that are up report (one walk over every
 * report, for a whole step 3) */
static GHashTable *
reported_indexes(Manager *m)
{
    GHashTable *by_service = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_array_unref);
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        HostRuntime *h = v;

        if (!manager_host_is_up(m, h->name))
            continue;
        for (guint i = 0; i < h->n_view; i++) {
            const ReportedClone *rc = &h->view[i];
            const char *service = rc->service;
            gint64 index = rc->index;
            GArray *list;
            guint u;

            if (index < 0 || index > G_MAXUINT || !service)
                continue;
            list = g_hash_table_lookup(by_service, service);
            if (!list) {
                list = g_array_new(FALSE, FALSE, sizeof(guint));
                g_hash_table_insert(by_service, g_strdup(service), list);
            }
            u = (guint)index;
            g_array_append_val(list, u);
        }
    }
    return by_service;
}

/* busy_indexes: of @reported (the indexes of the service's clones that
 * hosts that are up report), those that are no rows (going away: their
 * names are not free yet) */
static GArray *
busy_indexes(GArray *reported, GPtrArray *rows)
{
    GArray *busy = g_array_new(FALSE, FALSE, sizeof(guint));
    g_autoptr(GHashTable) held = g_hash_table_new(g_direct_hash, NULL);

    if (!reported)
        return busy;
    for (guint r = 0; r < rows->len; r++)
        g_hash_table_add(
            held, GUINT_TO_POINTER((guint)((CloneRow *)rows->pdata[r])->index));
    for (guint i = 0; i < reported->len; i++) {
        guint u = g_array_index(reported, guint, i);

        if (!g_hash_table_contains(held, GUINT_TO_POINTER(u)))
            g_array_append_val(busy, u);
    }
    return busy;
}

/* rollout_names: "web-3, web-4" of the indexes in @a */
static char *
rollout_names(const char *service, GArray *a)
{
    GString *s = g_string_new(NULL);

    for (guint i = 0; i < a->len; i++)
        g_string_append_printf(s, "%s%s-%u", i ? ", " : "", service,
                               g_array_index(a, guint, i));
    return g_string_free(s, FALSE);
}

/* rollout_record: the events of a step and the end of a rollout */
static bool
rollout_record(Manager *m, const ServiceRow *s, const RolloutRow *ro,
               const RolloutPlan *p, const char *failure, GError **error)
{
    bool rolling = ro && g_str_equal(ro->state, STATE_ROLLOUT_ROLLING) &&
                   ro->generation == s->generation;
    g_autofree char *adds = rollout_names(s->name, p->create);
    g_autofree char *removes = rollout_names(s->name, p->remove);

    if (!rolling)
        return true;
    if (p->status == ROLLOUT_FAILED) {
        g_autofree char *why = g_strdup_printf(
            "a clone of generation %" G_GINT64_FORMAT " failed%s%s",
            s->generation, failure ? ": " : "", failure ? failure : "");

        return state_rollout_finish(m->db, s->name, STATE_ROLLOUT_FAILED, why,
                                    error) &&
               manager_event(
                   m, error, "rollout-failed", s->name, NULL,
                   "service %s: rollout to generation %" G_GINT64_FORMAT
                   " stopped, %u old clones kept: %s; sporectl "
                   "rollback %s returns to generation %" G_GINT64_FORMAT,
                   s->name, s->generation, p->old, why, s->name,
                   ro->from_generation);
    }
    if (p->status == ROLLOUT_STEADY &&
        (p->create->len || p->remove->len || p->updated_running < p->updated))
        return true; /* no old clone left, the new ones not all running */
    if (p->status == ROLLOUT_STEADY)
        return state_rollout_finish(m->db, s->name, STATE_ROLLOUT_DONE, NULL,
                                    error) &&
               manager_event(
                   m, error, "rollout-done", s->name, NULL,
                   "service %s: rollout to generation %" G_GINT64_FORMAT
                   " done in %.1f s: %u clones of it running",
                   s->name, s->generation, state_now() - ro->started,
                   p->updated_running);
    if (p->create->len == 0 && p->remove->len == 0)
        return true;
    return manager_event(
        m, error, "rollout-step", s->name, NULL,
        "service %s: generation %" G_GINT64_FORMAT ": %u/%" G_GINT64_FORMAT
        " clones updated (%u running), %u old (%u running)%s%s%s%s",
        s->name, s->generation, p->updated, s->desired, p->updated_running,
        p->old, p->running - p->updated_running, *adds ? "; adding " : "", adds,
        *removes ? "; removing " : "", removes);
}

/* needs_rows: whether rollout_decide may add rows to @rows of @s: some
 * are of another generation, or fewer than desired are */
static bool
needs_rows(const ServiceRow *s, GPtrArray *rows, const Manifest *mf)
{
    gint64 desired = CLAMP(s->desired, 0, (gint64)mf->scaling.max);

    if ((gint64)rows->len < desired)
        return true;
    for (guint i = 0; i < rows->len; i++) {
        if (((CloneRow *)rows->pdata[i])->generation != s->generation)
            return true;
    }
    return false;
}

/* rollout_step: @s's clone rows one step closer to its desired count of
 * its current generation (rollout.h), recorded */
static bool
rollout_step(Manager *m, const ServiceRow *s, GPtrArray *rows,
             GHashTable **reported, bool *ret_changed, GError **error)
{
    g_autoptr(GError) err = NULL;
    Manifest *mf = manager_manifest(m, s->name, &err);
    g_autoptr(GArray) busy = NULL;
    g_autoptr(RolloutRow) ro = NULL;
    g_autofree RolloutClone *view = NULL;
    g_autofree char *failure = NULL;
    RolloutLimits limits;
    RolloutPlan plan;
    bool ok;

    if (err) {
        g_propagate_error(error, g_steal_pointer(&err));
        return false;
    }
    if (!mf || !state_rollout_get(m->db, s->name, &ro, error))
        return mf == NULL;
    if (ro && g_str_equal(ro->state, STATE_ROLLOUT_ROLLING) &&
        !state_create_failure(m->db, s->name, s->generation, ro->started,
                              &failure, error))
        return false;
    view = g_new0(RolloutClone, rows->len + 1);
    for (guint i = 0; i < rows->len; i++) {
        CloneRow *c = rows->pdata[i];
        bool known;

        if (!row_state(m, c, &view[i].state, &known, error))
            return false;
        if (!known)
            return true; /* nothing decided blind (invariant 3) */
        view[i].index = (guint)c->index;
        view[i].current = c->generation == s->generation;
        if (failure && view[i].current &&
            view[i].state != ROLLOUT_CLONE_RUNNING)
            view[i].state = ROLLOUT_CLONE_FAILED;
    }
    /* busy indexes matter only to rows added; none are while every row
     * is of the current generation and there are enough: then the walk
     * of every report is spared (once per pass at most) */
    if (needs_rows(s, rows, mf) && !*reported)
        *reported = reported_indexes(m);
    busy = busy_indexes(
        *reported ? g_hash_table_lookup(*reported, s->name) : NULL, rows);
    limits = (RolloutLimits){
        .desired = (guint)CLAMP(s->desired, 0, (gint64)mf->scaling.max),
        .max_unavailable = mf->update.max_unavailable,
        .max_surge = mf->update.max_surge,
        .index_limit = mf->scaling.max,
        .busy = (const guint *)busy->data,
        .n_busy = busy->len,
    };
    rollout_decide(view, rows->len, &limits, &plan);
    *ret_changed = plan.remove->len || plan.create->len;
    ok = true;
    for (guint i = 0; ok && i < plan.remove->len; i++)
        ok = state_clone_remove(m->db, s->name,
                                g_array_index(plan.remove, guint, i), error);
    for (guint i = 0; ok && i < plan.create->len; i++)
        ok = state_clone_add(m->db, s->name,
                             g_array_index(plan.create, guint, i),
                             s->generation, error);
    ok = ok && rollout_record(m, s, ro, &plan, failure, error);
    rollout_plan_clear(&plan);
    return ok;
}

/* rows_by_service: service -> GPtrArray of its rows in @clones
 * (borrowed) */
static GHashTable *
rows_by_service(GPtrArray *clones)
{
    GHashTable *by = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                           (GDestroyNotify)g_ptr_array_unref);

    for (guint i = 0; i < clones->len; i++) {
        CloneRow *c = clones->pdata[i];
        GPtrArray *list = g_hash_table_lookup(by, c->service);

        if (!list) {
            list = g_ptr_array_new();
            g_hash_table_insert(by, c->service, list);
        }
        g_ptr_array_add(list, c);
    }
    return by;
}

/* kept_rows: every clone row: those the last pass committed (taken from
 * the manager) while nothing wrote the table since and the leader epoch
 * is the same (a leader alone writes it), else read.  At 10,000 clones the
 * read was 12-24 ms of each pass. */
static GPtrArray *
kept_rows(Manager *m, GError **error)
{
    g_autoptr(GPtrArray) kept = g_steal_pointer(&m->kept_clones);

    if (kept && m->kept_clone_writes == state_clone_writes(m->db) &&
        m->kept_epoch == m->epoch)
        return g_steal_pointer(&kept);
    return state_clone_list(m->db, NULL, NULL, error);
}

/* keep_rows: after a commit, the pass's rows for the next pass, unless
 * they are stale */
static void
keep_rows(Manager *m, PassRows *pr)
{
    if (!pr->clones || pr->stale)
        return;
    m->kept_clones = g_ptr_array_ref(pr->clones);
    m->kept_clone_writes = state_clone_writes(m->db);
    m->kept_epoch = m->epoch;
}

/* sync_clone_rows: step 3, every clone row read once (into @pr) */
static bool
sync_clone_rows(Manager *m, PassRows *pr, GError **error)
{
    g_autoptr(GPtrArray) services = state_service_list(m->db, error);
    g_autoptr(GHashTable) reported = NULL;
    g_autoptr(GHashTable) by_service = NULL;
    g_autoptr(GPtrArray) none = g_ptr_array_new();

    if (!services || !(pr->clones = kept_rows(m, error)))
        return false;
    by_service = rows_by_service(pr->clones);
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *s = services->pdata[i];
        GPtrArray *rows = g_hash_table_lookup(by_service, s->name);
        bool changed = false;

        if (s->deleting) {
            if (!state_clone_remove_all(m->db, s->name, error) ||
                !service_gone(m, s->name, error))
                return false;
            changed = rows != NULL;
        } else if (!rollout_step(m, s, rows ? rows : none, &reported, &changed,
                                 error)) {
            return false;
        }
        pr->stale = pr->stale || changed;
    }
    return true;
}

/* ---- 4. placement ------------------------------------------------------ */

typedef struct {
    PlacementHost ph;       /* totals over all services */
    GHashTable *by_service; /* service -> GUINT_TO_POINTER(clones) */
} HostUsage;

static void
host_usage_clear(gpointer p)
{
    HostUsage *u = p;

    g_clear_pointer(&u->by_service, g_hash_table_unref);
}

/* usage_add: one more clone of @service (manifest @mf) on @u */
static void
usage_add(HostUsage *u, const char *service, const Manifest *mf)
{
    guint n = GPOINTER_TO_UINT(g_hash_table_lookup(u->by_service, service));

    g_hash_table_insert(u->by_service, g_strdup(service),
                        GUINT_TO_POINTER(n + 1));
    u->ph.total_clones++;
    if (mf) {
        u->ph.used_vcpus += mf->vm.vcpus;
        u->ph.used_memory_kib += mf->vm.memory_kib;
    }
}

/* host_usages: the live hosts with what is placed on them, in @hosts'
 * order (by name); from the pass's rows @pr unless they are stale */
static GArray *
host_usages(Manager *m, GPtrArray *hosts, PassRows *pr, GError **error)
{
    g_autoptr(GArray) usages = g_array_new(FALSE, TRUE, sizeof(HostUsage));
    g_autoptr(GHashTable) index = g_hash_table_new(g_str_hash, g_str_equal);
    g_autoptr(GPtrArray) placed = NULL;

    g_array_set_clear_func(usages, host_usage_clear);
    for (guint i = 0; i < hosts->len; i++) {
        HostRow *h = hosts->pdata[i];
        HostRuntime *rt = g_hash_table_lookup(m->runtime, h->name);
        HostUsage u = {0};

        u.ph.name = h->name;
        u.ph.up = manager_host_is_up(m, h->name) && rt && rt->reported;
        u.ph.cpus = (guint)h->cpus;
        u.ph.memory_kib = (guint64)h->memory_kib;
        u.by_service =
            g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        g_array_append_val(usages, u);
        g_hash_table_insert(index, h->name, GUINT_TO_POINTER(i + 1));
    }
    placed = pr->clones && !pr->stale
                 ? g_ptr_array_ref(pr->clones)
                 : state_clone_list(m->db, NULL, NULL, error);
    if (!placed)
        return NULL;
    for (guint i = 0; i < placed->len; i++) {
        CloneRow *c = placed->pdata[i];
        guint at =
            c->host ? GPOINTER_TO_UINT(g_hash_table_lookup(index, c->host)) : 0;
        g_autoptr(GError) err = NULL;

        ManagerManifest *e =
            at ? manager_manifest_entry_at(m, c->service, c->generation, &err)
               : NULL;

        if (at)
            usage_add(&g_array_index(usages, HostUsage, at - 1), c->service,
                      e ? e->manifest : NULL);
    }
    return g_steal_pointer(&usages);
}

/* place_service: place @clones (unplaced, all of @service, from @from to
 * @to) among @usages: one candidate list and one heap for them all
 * (placement_queue_take), the hosts' caches of the image read once.  The
 * host chosen is written into the row too (the pass's rows: step 5 reads
 * them). */
static bool
place_service(Manager *m, GArray *usages, GPtrArray *clones, guint from,
              guint to, PassBudget *budget, GError **error)
{
    const char *service = ((CloneRow *)clones->pdata[from])->service;
    Manifest *mf = manager_manifest(m, service, error);
    g_autofree char *image_id = NULL;
    g_autoptr(GHashTable) cached = NULL;
    g_autoptr(GArray) cand = g_array_new(FALSE, TRUE, sizeof(PlacementHost));
    g_autoptr(PlacementQueue) q = NULL;

    if (!mf)
        return error == NULL || *error == NULL;
    if (!state_service_image_id(m->db, service, &image_id, error))
        return false;
    if (image_id &&
        !(cached = state_host_image_cached_map(m->db, image_id, error)))
        return false;
    for (guint i = 0; i < usages->len; i++) {
        HostUsage *hu = &g_array_index(usages, HostUsage, i);
        PlacementHost ph = hu->ph;
        double *c = cached ? g_hash_table_lookup(cached, ph.name) : NULL;

        ph.service_clones =
            GPOINTER_TO_UINT(g_hash_table_lookup(hu->by_service, service));
        ph.cached_fraction = c ? *c : 0;
        g_array_append_val(cand, ph);
    }
    q = placement_queue_new((PlacementHost *)cand->data, cand->len, mf);
    for (guint k = from; k < to; k++) {
        CloneRow *c = clones->pdata[k];
        g_autofree char *reason = NULL;
        int chosen;
        HostUsage *u;

        if (budget->place == 0) {
            budget->more = true;
            return true;
        }
        chosen = placement_queue_take(q, &reason);
        if (chosen < 0) {
            g_debug("cannot place %s-%" G_GINT64_FORMAT " yet: %s", c->service,
                    c->index, reason);
            return true;
        }
        u = &g_array_index(usages, HostUsage, chosen);
        if (!state_clone_place(m->db, c->service, c->index, u->ph.name,
                               error) ||
            !manager_event(m, error, "clone-placed", c->service, u->ph.name,
                           "%s-%" G_GINT64_FORMAT " placed on %s (%s)",
                           c->service, c->index, u->ph.name,
                           mf->placement.strategy == MANIFEST_PLACEMENT_PACK
                               ? "pack"
                               : "spread"))
            return false;
        g_free(c->host);
        c->host = g_strdup(u->ph.name);
        usage_add(u, c->service, mf);
        budget->place--;
    }
    return true;
}

/* unplaced_rows: the rows of the clones to place, by service and index:
 * those of the pass (@pr, borrowed), unless a step changed the rows since
 * they were read; then from the state.  (A deleted service's rows went in
 * step 3, which made @pr stale.) */
static GPtrArray *
unplaced_rows(Manager *m, PassRows *pr, GError **error)
{
    GPtrArray *out;

    if (!pr->clones || pr->stale)
        return state_clone_list_unplaced(m->db, error);
    out = g_ptr_array_new();
    for (guint i = 0; i < pr->clones->len; i++) {
        CloneRow *c = pr->clones->pdata[i];

        if (!c->host)
            g_ptr_array_add(out, c);
    }
    return out;
}

/* place_clones: step 4, O(clones + hosts x services with unplaced
 * clones), at most budget->place of them */
static bool
place_clones(Manager *m, PassBudget *budget, PassRows *pr, GError **error)
{
    g_autoptr(GPtrArray) unplaced = unplaced_rows(m, pr, error);
    g_autoptr(GPtrArray) hosts = NULL;
    g_autoptr(GArray) usages = NULL;

    if (!unplaced)
        return false;
    if (unplaced->len == 0)
        return true;
    if (budget->place == 0) {
        budget->more = true;
        return true;
    }
    hosts = state_host_list(m->db, true, error);
    if (!hosts || !(usages = host_usages(m, hosts, pr, error)))
        return false;
    /* the list is by service: one run per service */
    for (guint i = 0, j; i < unplaced->len && budget->place > 0; i = j) {
        const char *service = ((CloneRow *)unplaced->pdata[i])->service;

        for (j = i + 1;
             j < unplaced->len &&
             g_str_equal(((CloneRow *)unplaced->pdata[j])->service, service);
             j++)
            ;
        if (!place_service(m, usages, unplaced, i, j, budget, error))
            return false;
    }
    return true;
}

/* ---- 5. per host ------------------------------------------------------- */

/* command_keys: "create:SERVICE:INDEX", "start:NAME" and "destroy:NAME"
 * of a command's body */
static GPtrArray *
command_keys(const char *text)
{
    g_autoptr(JsonObject) body =
        text ? wire_parse(text, strlen(text), NULL) : NULL;

    return command_keys_of(body);
}

/* command_keys_of: the same of the object @body (may be NULL) */
static GPtrArray *
command_keys_of(JsonObject *body)
{
    GPtrArray *keys = g_ptr_array_new_with_free_func(g_free);
    const char *op = body ? json_util_get_string(body, "op", NULL) : NULL;
    const char *service = json_util_get_string(body, "service", NULL);
    JsonArray *arr;

    if (!op)
        return keys;
    if (g_str_equal(op, "clone-create") &&
        (arr = json_object_get_array_member(body, "indexes"))) {
        for (guint i = 0; i < json_array_get_length(arr); i++)
            g_ptr_array_add(
                keys, g_strdup_printf("create:%s:%" G_GINT64_FORMAT, service,
                                      json_array_get_int_element(arr, i)));
    } else if (g_str_equal(op, "clone-start") &&
               (arr = json_object_get_array_member(body, "clones"))) {
        for (guint i = 0; i < json_array_get_length(arr); i++)
            g_ptr_array_add(
                keys, g_strdup_printf("start:%s",
                                      json_util_get_string(
                                          json_array_get_object_element(arr, i),
                                          "name", "")));
    } else if (g_str_equal(op, "clone-destroy") &&
               (arr = json_object_get_array_member(body, "names"))) {
        for (guint i = 0; i < json_array_get_length(arr); i++)
            g_ptr_array_add(
                keys, g_strdup_printf("destroy:%s",
                                      json_array_get_string_element(arr, i)));
    }
    return keys;
}

/*
 * PassCache: what step 5 reads once per pass rather than once per host:
 * the desired clones by host, the services' image ids, the hosts' rows,
 * and the pending commands' keys by host (each command's body parsed
 * once in its life: Manager.command_keys).
 */
typedef struct PassCache PassCache;
struct PassCache {
    GPtrArray *clones;     /* of CloneRow */
    GHashTable *by_host;   /* host -> GPtrArray of CloneRow (borrowed) */
    GHashTable *image_ids; /* "SERVICE:GENERATION" -> image id, "" for none */
    GHashTable *current;   /* service -> its current generation (gint64 *) */
    GPtrArray *hosts;      /* of HostRow */
    GHashTable *host_rows; /* name -> HostRow (borrowed) */
    GHashTable *pending;   /* host -> GHashTable of keys (borrowed) */
    GHashTable *templates; /* service -> CommandTemplate */
    PassBudget *budget;    /* the pass's (borrowed) */
};

static void
pass_cache_free(PassCache *pc)
{
    if (!pc)
        return;
    g_clear_pointer(&pc->by_host, g_hash_table_unref);
    g_clear_pointer(&pc->clones, g_ptr_array_unref);
    g_clear_pointer(&pc->image_ids, g_hash_table_unref);
    g_clear_pointer(&pc->current, g_hash_table_unref);
    g_clear_pointer(&pc->host_rows, g_hash_table_unref);
    g_clear_pointer(&pc->hosts, g_ptr_array_unref);
    g_clear_pointer(&pc->pending, g_hash_table_unref);
    g_clear_pointer(&pc->templates, g_hash_table_unref);
    g_free(pc);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PassCache, pass_cache_free)

/* pass_cache_pending: the pending commands' keys by host; the cache of
 * parsed bodies keeps the pending ones only */
static bool
pass_cache_pending(Manager *m, PassCache *pc, GError **error)
{
    g_autoptr(GPtrArray) heads = state_command_list_pending_heads(m->db, error);
    g_autoptr(GHashTable) live = g_hash_table_new(g_int64_hash, g_int64_equal);
    GHashTableIter it;
    gpointer k;

    if (!heads)
        return false;
    pc->pending = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                        (GDestroyNotify)g_hash_table_unref);
    for (guint i = 0; i < heads->len; i++) {
        CommandRow *row = heads->pdata[i];
        GPtrArray *keys = g_hash_table_lookup(m->command_keys, &row->id);
        GHashTable *set = g_hash_table_lookup(pc->pending, row->host);

        if (!keys) {
            g_autoptr(CommandRow) full = NULL;
            gint64 *id = g_new(gint64, 1);

            if (!state_command_get_pending(m->db, row->id, row->host, &full,
                                           error)) {
                g_free(id);
                return false;
            }
            *id = row->id;
            keys = command_keys(full ? full->body : NULL);
            g_hash_table_insert(m->command_keys, id, keys);
        }
        g_hash_table_add(live, &row->id);
        if (!set) {
            set = g_hash_table_new(g_str_hash, g_str_equal);
            g_hash_table_insert(pc->pending, g_strdup(row->host), set);
        }
        for (guint j = 0; j < keys->len; j++)
            g_hash_table_add(set, keys->pdata[j]); /* borrowed */
    }
    g_hash_table_iter_init(&it, m->command_keys);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        if (!g_hash_table_contains(live, k))
            g_hash_table_iter_remove(&it);
    }
    return true;
}

static PassCache *
pass_cache_new(Manager *m, PassBudget *budget, PassRows *pr, GError **error)
{
    g_autoptr(PassCache) pc = g_new0(PassCache, 1);

    pc->budget = budget;
    pc->templates = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          command_template_free);

    /* step 3's rows, unless steps 3 or 4 changed some since: then read
     * again, the pass's from now on (step 5 writes no clone row) */
    if (!pr->clones || pr->stale) {
        g_clear_pointer(&pr->clones, g_ptr_array_unref);
        if (!(pr->clones = state_clone_list(m->db, NULL, NULL, error)))
            return NULL;
        pr->stale = false;
    }
    pc->clones = g_ptr_array_ref(pr->clones);
    pc->hosts = state_host_list(m->db, false, error);
    if (!pc->clones || !pc->hosts || !pass_cache_pending(m, pc, error))
        return NULL;
    pc->by_host = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                        (GDestroyNotify)g_ptr_array_unref);
    for (guint i = 0; i < pc->clones->len; i++) {
        CloneRow *c = pc->clones->pdata[i];
        GPtrArray *list;

        if (!c->host)
            continue;
        list = g_hash_table_lookup(pc->by_host, c->host);
        if (!list) {
            list = g_ptr_array_new();
            g_hash_table_insert(pc->by_host, c->host, list);
        }
        g_ptr_array_add(list, c);
    }
    pc->host_rows = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < pc->hosts->len; i++)
        g_hash_table_insert(pc->host_rows,
                            ((HostRow *)pc->hosts->pdata[i])->name,
                            pc->hosts->pdata[i]);
    pc->image_ids =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    pc->current =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    return g_steal_pointer(&pc);
}

/* service_template: @service's CommandTemplate, read at its first
 * command of the pass */
static CommandTemplate *
service_template(Manager *m, const char *service, GError **error)
{
    CommandTemplate *t = g_hash_table_lookup(m->pass->templates, service);
    g_autoptr(ServiceRow) svc = NULL;
    g_autoptr(JsonObject) image = NULL;

    if (t)
        return t;
    if (!state_service_get(m->db, service, &svc, error))
        return NULL;
    if (svc && !(image = image_object(m, svc->image, error)))
        return NULL;
    t = g_new0(CommandTemplate, 1);
    t->svc = g_steal_pointer(&svc);
    t->image = g_steal_pointer(&image);
    g_hash_table_insert(m->pass->templates, g_strdup(service), t);
    return t;
}

/* pending_keys: "create:SERVICE:INDEX", "start:NAME" and "destroy:NAME"
 * of the host's pending commands (a new set, its strings borrowed from the
 * cache) */
static GHashTable *
pending_keys(Manager *m, const char *host, GError **error)
{
    GHashTable *set = g_hash_table_lookup(m->pass->pending, host);
    GHashTable *keys = g_hash_table_new(g_str_hash, g_str_equal);
    GHashTableIter it;
    gpointer k;

    if (set) {
        g_hash_table_iter_init(&it, set);
        while (g_hash_table_iter_next(&it, &k, NULL))
            g_hash_table_add(keys, k);
    }
    return keys;
}

/* service_current: the current generation of @service, once per pass
 * (-1 for none) */
static bool
service_current(Manager *m, const char *service, gint64 *ret_generation,
                GError **error)
{
    gint64 *g = g_hash_table_lookup(m->pass->current, service);

    if (!g) {
        g = g_new(gint64, 1);
        if (!state_service_generation(m->db, service, g, error)) {
            g_free(g);
            return false;
        }
        g_hash_table_insert(m->pass->current, g_strdup(service), g);
    }
    *ret_generation = *g;
    return true;
}

/* generation_image_id_cached: the image id of @service at @generation
 * (@current is the service's), once per pass; NULL for none */
static bool
generation_image_id_cached(Manager *m, const char *service, gint64 generation,
                           gint64 current, const char **ret_id, GError **error)
{
    g_autofree char *key =
        g_strdup_printf("%s:%" G_GINT64_FORMAT, service, generation);
    char *id = g_hash_table_lookup(m->pass->image_ids, key);

    if (!id) {
        if (!generation_image_id(m, service, generation, current, &id, error))
            return false;
        if (!id)
            id = g_strdup("");
        g_hash_table_insert(m->pass->image_ids, g_steal_pointer(&key), id);
    }
    *ret_id = *id ? id : NULL;
    return true;
}

/* CloneIds: a clone's name and UUID, kept in its manifest entry's cache
 * (ManagerManifest.uuids: index -> CloneIds) */
typedef struct {
    char *name;
    char *uuid;
} CloneIds;

static void
clone_ids_free(gpointer p)
{
    CloneIds *ids = p;

    g_free(ids->name);
    g_free(ids->uuid);
    g_free(ids);
}

/* clone_ids_cached: the name and manifest_clone_uuid of clone @index of
 * @e, computed once per manifest entry and image (every pass asks for
 * every clone: no allocation then) */
static const CloneIds *
clone_ids_cached(ManagerManifest *e, guint index, const char *image_id,
                 guint64 generation)
{
    CloneIds *ids;

    if (!e->uuids || g_strcmp0(e->uuid_image, image_id) != 0) {
        g_clear_pointer(&e->uuids, g_hash_table_unref);
        g_free(e->uuid_image);
        e->uuid_image = g_strdup(image_id);
        e->uuids = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                         clone_ids_free);
    }
    ids = g_hash_table_lookup(e->uuids, GUINT_TO_POINTER(index));
    if (!ids) {
        ids = g_new(CloneIds, 1);
        ids->name = manifest_clone_name(e->manifest, index);
        ids->uuid =
            manifest_clone_uuid(e->canonical, index, image_id, generation);
        g_hash_table_insert(e->uuids, GUINT_TO_POINTER(index), ids);
    }
    return ids;
}

/* WantedRun: what wanted_on resolves once per run of rows of one service
 * and generation (a host's rows come by service and index) */
typedef struct {
    const char *service; /* NULL: nothing resolved yet */
    gint64 generation;
    gint64 current;
    ManagerManifest *e; /* NULL: not kept, its rows skipped */
    const char *image_id;
} WantedRun;

static bool
wanted_run(Manager *m, const CloneRow *c, WantedRun *run, GError **error)
{
    g_autofree char *key = NULL;
    g_autoptr(GError) err = NULL;

    if (run->service && run->generation == c->generation &&
        g_str_equal(run->service, c->service))
        return true;
    *run = (WantedRun){.service = c->service, .generation = c->generation};
    key = g_strdup_printf("%s:%" G_GINT64_FORMAT, c->service, c->generation);
    run->e = g_hash_table_lookup(m->manifests, key);
    if (!service_current(m, c->service, &run->current, error))
        return false;
    if (!run->e)
        run->e =
            generation_entry(m, c->service, c->generation, run->current, &err);
    if (err) {
        g_propagate_error(error, g_steal_pointer(&err));
        return false;
    }
    return !run->e ||
           generation_image_id_cached(m, c->service, c->generation,
                                      run->current, &run->image_id, error);
}

/* wanted_on: name -> Wanted, the clones desired on @host with their UUIDs
 * (hashing each manifest's stored canonical text) */
static GHashTable *
wanted_on(Manager *m, const char *host, GError **error)
{
    g_autoptr(GHashTable) wanted =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
    GPtrArray *clones = g_hash_table_lookup(m->pass->by_host, host);
    WantedRun run = {0};

    for (guint i = 0; clones && i < clones->len; i++) {
        CloneRow *c = clones->pdata[i];
        const CloneIds *ids;
        Wanted *w;

        if (!wanted_run(m, c, &run, error))
            return NULL;
        if (!run.e || !run.image_id)
            continue;
        ids = clone_ids_cached(run.e, (guint)c->index, run.image_id,
                               (guint64)c->generation);
        w = g_new(Wanted, 1);
        w->service = c->service;
        w->index = (guint)c->index;
        w->current = c->generation == run.current;
        w->name = ids->name;
        w->uuid = ids->uuid;
        g_hash_table_insert(wanted, (gpointer)w->name, w);
    }
    return g_steal_pointer(&wanted);
}

/* plan_destroys: service -> names of the reported clones that are not
 * wanted there (or of another version), unless a destroy is pending */
static void
plan_destroys(HostRuntime *h, GHashTable *wanted, GHashTable *pending,
              GHashTable *observed, GHashTable *destroys)
{
    for (guint i = 0; i < h->n_view; i++) {
        const ReportedClone *rc = &h->view[i];
        const char *name = rc->name, *uuid = rc->uuid;
        const char *service = rc->service ? rc->service : "";
        g_autofree char *key = NULL;
        Wanted *w;
        GPtrArray *list;

        if (!name || !uuid)
            continue;
        g_hash_table_insert(observed, (gpointer)name, (gpointer)uuid);
        w = g_hash_table_lookup(wanted, name);
        if (w && g_ascii_strcasecmp(w->uuid, uuid) == 0)
            continue;
        key = g_strdup_printf("destroy:%s", name);
        if (g_hash_table_contains(pending, key))
            continue;
        list = g_hash_table_lookup(destroys, service);
        if (!list) {
            list = g_ptr_array_new_with_free_func(g_free);
            g_hash_table_insert(destroys, g_strdup(service), list);
        }
        g_ptr_array_add(list, g_strdup(name));
    }
}

/* plan_creates: service -> indexes of the wanted clones not reported,
 * not pending, not backing off, and whose old version is not being
 * destroyed (same name, another UUID: it must go first) */
static void
plan_creates(Manager *m, HostRuntime *h, GHashTable *wanted,
             GHashTable *pending, GHashTable *observed, GHashTable *creates)
{
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, wanted);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Wanted *w = v;
        g_autofree char *ckey = NULL;
        g_autofree char *dkey = NULL;
        g_autofree char *bkey = NULL;
        gint64 *until;
        GArray *list;

        /* the common case first, before any key is made: it runs */
        if (!w->current || /* an older generation is replaced, not made */
            g_hash_table_contains(observed, w->name))
            continue;
        ckey = g_strdup_printf("create:%s:%u", w->service, w->index);
        dkey = g_strdup_printf("destroy:%s", w->name);
        bkey = g_strdup_printf("%s/%s", h->name, w->service);
        until = g_hash_table_lookup(m->backoff, bkey);
        if (g_hash_table_contains(pending, ckey) ||
            g_hash_table_contains(pending, dkey) ||
            (h->acked && g_hash_table_contains(h->acked, ckey)))
            continue;
        if (until && g_get_monotonic_time() < *until)
            continue;
        list = g_hash_table_lookup(creates, w->service);
        if (!list) {
            list = g_array_new(FALSE, FALSE, sizeof(guint));
            g_hash_table_insert(creates, g_strdup(w->service), list);
        }
        g_array_append_val(list, w->index);
    }
}

/* plan_starts: service -> the wanted clones of the current generation
 * that @h reports shut off (or crashed) with their UUID: a reboot of the
 * host, or a guest that stopped; each started again at most once every
 * RESTART_INTERVAL_US */
static void
plan_starts(Manager *m, HostRuntime *h, GHashTable *wanted, GHashTable *pending,
            GHashTable *starts)
{
    gint64 now = g_get_monotonic_time();

    for (guint i = 0; i < h->n_view; i++) {
        const ReportedClone *rc = &h->view[i];
        const char *state = rc->state;
        Wanted *w;
        g_autofree char *skey = NULL;
        g_autofree char *ckey = NULL;
        g_autofree char *dkey = NULL;
        gint64 *until;
        GPtrArray *list;

        w = rc->name ? g_hash_table_lookup(wanted, rc->name) : NULL;
        if (!w || !w->current ||
            g_ascii_strcasecmp(w->uuid, rc->uuid ? rc->uuid : "") ||
            (!g_str_equal(state, "shutoff") && !g_str_equal(state, "crashed")))
            continue;
        skey = g_strdup_printf("start:%s", w->name);
        ckey = g_strdup_printf("create:%s:%u", w->service, w->index);
        dkey = g_strdup_printf("destroy:%s", w->name);
        if (g_hash_table_contains(pending, skey) ||
            g_hash_table_contains(pending, ckey) ||
            g_hash_table_contains(pending, dkey))
            continue;
        g_free(skey);
        skey = g_strdup_printf("start:%s/%s", h->name, w->name);
        until = g_hash_table_lookup(m->backoff, skey);
        if (until && now < *until)
            continue;
        until = g_new(gint64, 1);
        *until = now + RESTART_INTERVAL_US;
        g_hash_table_insert(m->backoff, g_steal_pointer(&skey), until);
        list = g_hash_table_lookup(starts, w->service);
        if (!list) {
            list = g_ptr_array_new();
            g_hash_table_insert(starts, g_strdup(w->service), list);
        }
        g_ptr_array_add(list, w);
    }
}

/* budget_creates: @creates (one host's) fit in what is left of the
 * pass's budget, or wait for the next pass; a host's creates are not
 * split (one command per service, one appliance launch) */
static void
budget_creates(PassBudget *budget, GHashTable *creates)
{
    GHashTableIter it;
    gpointer v;
    guint n = 0;

    g_hash_table_iter_init(&it, creates);
    while (g_hash_table_iter_next(&it, NULL, &v))
        n += ((GArray *)v)->len;
    if (n == 0)
        return;
    if (budget->create == 0) {
        budget->more = budget->creates_left = true;
        g_hash_table_remove_all(creates);
        return;
    }
    budget->create -= MIN(n, budget->create);
}

static bool
reconcile_host(Manager *m, HostRuntime *h, GError **error)
{
    g_autoptr(GHashTable) pending = NULL;
    g_autoptr(GHashTable) wanted = NULL;
    g_autoptr(GHashTable) observed =
        g_hash_table_new(g_str_hash, g_str_equal); /* name -> uuid */
    g_autoptr(GHashTable) creates = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_array_unref);
    g_autoptr(GHashTable) destroys = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
    g_autoptr(GHashTable) starts = g_hash_table_new_full(
        g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
    GHashTableIter it;
    gpointer k, v;

    if (!(pending = pending_keys(m, h->name, error)) ||
        !(wanted = wanted_on(m, h->name, error)))
        return false;
    plan_destroys(h, wanted, pending, observed, destroys);
    plan_creates(m, h, wanted, pending, observed, creates);
    budget_creates(m->pass->budget, creates);
    plan_starts(m, h, wanted, pending, starts);
    g_hash_table_iter_init(&it, starts);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        if (!command_start(m, h->name, k, v, error))
            return false;
    }
    g_hash_table_iter_init(&it, destroys);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        if (!command_destroy(m, h->name, *(char *)k ? k : NULL, v, error))
            return false;
    }
    g_hash_table_iter_init(&it, creates);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        if (!command_create(m, h->name, k, v, error))
            return false;
    }
    return true;
}

/*
 * reconcile_hosts: step 5.  The hosts are walked in the runtime table's
 * order; Manager.pass_cursor is where the creates ran out of budget (the
 * first host whose creates were left).  A pass that goes on with the last
 * one's work (@continuing) starts there and stops where its own budget
 * runs out: the hosts before had their creates commanded, and their
 * destroys and starts wait for the timer's pass, within a second (a
 * submit of 10,000 clones on 1,000 hosts took ~40 continuing passes that
 * each walked all 1,000 hosts: a third of each pass).
 */
static bool
reconcile_hosts(Manager *m, PassBudget *budget, PassRows *pr, bool continuing,
                GError **error)
{
    g_autoptr(PassCache) pc = pass_cache_new(m, budget, pr, error);
    g_autoptr(GPtrArray) hosts = g_ptr_array_new();
    GHashTableIter it;
    gpointer v;
    guint start;
    bool ok = true;

    if (!pc)
        return false;
    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v))
        g_ptr_array_add(hosts, v);
    start = continuing && hosts->len ? m->pass_cursor % hosts->len : 0;
    m->pass = pc;
    for (guint k = 0; ok && k < hosts->len; k++) {
        guint i = (start + k) % hosts->len;
        HostRuntime *h = hosts->pdata[i];
        bool left = budget->creates_left;
        HostRow *row;

        if (!h->reported || !manager_host_is_up(m, h->name)) /* inv. 3 */
            continue;
        row = g_hash_table_lookup(pc->host_rows, h->name);
        if (row && row->accepted && !reconcile_host(m, h, error))
            ok = false;
        if (!left && budget->creates_left) {
            m->pass_cursor = i; /* the next pass starts here */
            if (continuing)
                break;
        }
    }
    m->pass = NULL;
    return ok;
}

/* ---- 6. sending -------------------------------------------------------- */

/* send_text: the message @text (@len bytes) to @host, as wire_send()
 * sends an object, for a text made without one */
static bool
send_text(Manager *m, const char *host, const char *text, gsize len)
{
    return len <= WIRE_MAX_MESSAGE &&
           zmq_send(m->router, host, strlen(host),
                    ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
           zmq_send(m->router, text, len, ZMQ_DONTWAIT) >= 0;
}

/* command_send: @c's body with its id to its host.  The body is stored as
 * wire_new() makes it, '{"v":' first: the id goes in front of its text,
 * not through a parse and a new text (a submit sends thousands); another
 * text is parsed. */
static bool
command_send(Manager *m, const CommandRow *c)
{
    static const char head[] = "{\"v\":";
    g_autofree char *text = NULL;

    if (g_str_has_prefix(c->body, head) && m->epoch > 0) {
        /* and the leader epoch, as manager_send() adds it */
        text = g_strdup_printf("{\"id\":%" G_GINT64_FORMAT
                               ",\"epoch\":%" G_GINT64_FORMAT ",%s",
                               c->id, m->epoch, c->body + 1);
    } else if (g_str_has_prefix(c->body, head)) {
        text = g_strdup_printf("{\"id\":%" G_GINT64_FORMAT ",%s", c->id,
                               c->body + 1);
    } else {
        g_autoptr(JsonObject) body = wire_parse(c->body, strlen(c->body), NULL);

        if (!body)
            return false;
        json_object_set_int_member(body, "id", c->id);
        if (m->epoch > 0)
            json_object_set_int_member(body, "epoch", m->epoch);
        text = json_util_to_text(body, false);
    }
    return send_text(m, c->host, text, strlen(text));
}

/* send_new: the commands the pass stored (@sends, of PassSend), after
 * its commit (invariant 2).  They were stored as sent: no transaction of
 * their own, unless some cannot go (their host is not up, its socket is
 * full): those are marked unsent, due at the next pass. */
static void
send_new(Manager *m, GPtrArray *sends)
{
    g_autoptr(GArray) unsent = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GError) err = NULL;

    for (guint i = 0; i < sends->len; i++) {
        const CommandRow *c = &((PassSend *)sends->pdata[i])->row;

        if (!manager_host_heard_up(m, c->host) || !command_send(m, c))
            g_array_append_val(unsent, c->id);
    }
    if (unsent->len == 0)
        return;
    if (state_begin(m->db, &err)) {
        for (guint i = 0; i < unsent->len && !err; i++)
            state_command_unsent(m->db, g_array_index(unsent, gint64, i), &err);
    }
    if (err || !state_commit(m->db, &err)) {
        state_rollback(m->db);
        g_warning("%u commands not sent are sent again after %u s: %s",
                  unsent->len, m->config.resend_s, err->message);
    }
}

/* send_due: send the commands due (never sent, or not acknowledged within
 * resend_s) and stored before @before (not the pass's own: send_new),
 * recording the sends in one transaction (invariant 2; one fdatasync for
 * all, not one each); a failure is logged and the rest wait for the next
 * pass */
static void
send_due(Manager *m, double before)
{
    double now = state_now();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) due = NULL;

    if (!state_begin(m->db, &err)) {
        g_warning("cannot send commands: %s", err->message);
        return;
    }
    /* while messages wait to be applied, their acks may be among them:
     * first sends only, no re-sends (a resend storm would follow) */
    due =
        state_command_list_pending(m->db, NULL,
                                   m->inbox.length > RESEND_HOLD_MESSAGES
                                       ? 1.0
                                       : MIN(before, now - m->config.resend_s),
                                   &err);
    for (guint i = 0; due && i < due->len; i++) {
        CommandRow *c = due->pdata[i];

        if (!manager_host_heard_up(m, c->host) || !c->body)
            continue;
        if (command_send(m, c) && !state_command_sent(m->db, c->id, now, &err))
            break;
    }
    if (err || !state_commit(m->db, &err)) {
        state_rollback(m->db); /* sent again at the next pass: harmless */
        g_warning("cannot send commands: %s", err->message);
    }
}

/* host_images: the image ids @h reported (borrowed from its report) */
static GPtrArray *
host_images(HostRuntime *h)
{
    GPtrArray *ids = g_ptr_array_new();

    for (guint i = 0; h->images && i < json_array_get_length(h->images); i++) {
        JsonNode *n = json_array_get_element(h->images, i);
        const char *id =
            JSON_NODE_HOLDS_OBJECT(n)
                ? json_util_get_string(json_node_get_object(n), "image", NULL)
                : NULL;

        if (id)
            g_ptr_array_add(ids, (gpointer)id);
    }
    return ids;
}

/* peer_entry: the text of {name, endpoint, key} of @h */
static char *
peer_entry(HostRuntime *h, const HostRow *row)
{
    g_autoptr(JsonObject) p = json_object_new();

    json_object_set_string_member(p, "name", h->name);
    json_object_set_string_member(p, "endpoint", h->peer_endpoint);
    json_object_set_string_member(p, "key", row->key);
    return json_util_to_text(p, false);
}

/* peers_head: the text of a "peers" message up to its list, '{"v":1,
 * "type":"peers",["epoch":E,]"peers":[' */
static GString *
peers_head(Manager *m)
{
    g_autoptr(JsonObject) msg = wire_new("peers");
    g_autofree char *text = NULL;
    GString *head;

    if (m->epoch > 0) /* as manager_send() adds it */
        json_object_set_int_member(msg, "epoch", m->epoch);
    text = json_util_to_text(msg, false);
    head = g_string_new(text);
    g_string_truncate(head, head->len - 1); /* its '}' */
    g_string_append(head, ",\"peers\":[");
    return head;
}

/* PeerBroadcast: one broadcast of peer lists on its way out; the lists
 * are chosen at once (peer_lists_choose), and sent PEERS_SEND_BATCH
 * hosts at a time, one batch per turn of the main loop: at 1,000 hosts
 * the texts of a broadcast are ~6 MB, and sending them in one go held
 * the loop for 60 ms */
typedef struct PeerBroadcast {
    GPtrArray *names;   /* the hosts to tell, in the lists' order */
    GPtrArray *lists;   /* of GArray of guint: indexes of names/entries */
    GPtrArray *entries; /* each host's entry, its text */
    GString *head;      /* peers_head() */
    guint next;         /* the first host not told yet */
} PeerBroadcast;

#define PEERS_SEND_BATCH 100

static void
peer_broadcast_free(PeerBroadcast *b)
{
    if (!b)
        return;
    g_ptr_array_unref(b->names);
    g_clear_pointer(&b->lists, g_ptr_array_unref);
    g_ptr_array_unref(b->entries);
    g_string_free(b->head, TRUE);
    g_free(b);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PeerBroadcast, peer_broadcast_free)

/* send_peer_list: the list of host @i of @b; each entry written once per
 * broadcast, each list put together from their texts (a thousand lists
 * of 40 written by json-glib took 30-55 ms) */
static void
send_peer_list(Manager *m, const PeerBroadcast *b, guint i)
{
    const char *name = b->names->pdata[i];
    GArray *mine = b->lists->pdata[i];
    g_autoptr(GString) text =
        g_string_new_len(b->head->str, (gssize)b->head->len);

    if (!manager_host_is_up(m, name))
        return; /* gone since the lists were chosen */
    for (guint k = 0; k < mine->len; k++) {
        if (k)
            g_string_append_c(text, ',');
        g_string_append(text, b->entries->pdata[g_array_index(mine, guint, k)]);
    }
    g_string_append(text, "]}");
    if (!send_text(m, name, text->str, text->len)) {
        m->stats.send_refused++; /* as manager_send() counts */
        g_debug("could not send peers to %s: %s", name,
                zmq_strerror(zmq_errno()));
    }
}

/* peer_broadcast_new: the peer lists of every connected host that is up
 * and accepted, chosen now */
static PeerBroadcast *
peer_broadcast_new(Manager *m, GError **error)
{
    g_autoptr(PeerBroadcast) b = g_new0(PeerBroadcast, 1);
    g_autoptr(GPtrArray) rows = NULL;
    g_autoptr(GHashTable) by_name = g_hash_table_new(g_str_hash, g_str_equal);
    g_autoptr(GPtrArray) images =
        g_ptr_array_new_with_free_func((GDestroyNotify)g_ptr_array_unref);
    g_autoptr(GArray) cand = g_array_new(FALSE, TRUE, sizeof(PeerCandidate));
    GHashTableIter it;
    gpointer v;

    b->names = g_ptr_array_new_with_free_func(g_free);
    b->entries = g_ptr_array_new_with_free_func(g_free);
    b->head = peers_head(m);
    /* the hosts' rows in one query, not one per host */
    if (!(rows = state_host_list(m->db, false, error)))
        return NULL;
    for (guint i = 0; i < rows->len; i++)
        g_hash_table_insert(by_name, ((HostRow *)rows->pdata[i])->name,
                            rows->pdata[i]);
    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        HostRuntime *h = v;
        HostRow *row;
        PeerCandidate c;

        if (!h->peer_endpoint || !manager_host_is_up(m, h->name))
            continue;
        row = g_hash_table_lookup(by_name, h->name);
        if (!row || !row->accepted)
            continue;
        g_ptr_array_add(b->names, g_strdup(h->name));
        g_ptr_array_add(b->entries, peer_entry(h, row));
        g_ptr_array_add(images, host_images(h));
        /* (names and images live until the lists are chosen) */
        c.name = b->names->pdata[b->names->len - 1];
        c.images = images->pdata[images->len - 1];
        g_array_append_val(cand, c);
    }
    b->lists = peer_lists_choose((PeerCandidate *)(void *)cand->data, cand->len,
                                 PEERS_PER_HOST, ++m->peers_epoch);
    return g_steal_pointer(&b);
}

void
manager_peers_stop(Manager *m)
{
    if (m->peers_idle)
        g_source_remove(m->peers_idle);
    m->peers_idle = 0;
    g_clear_pointer(&m->peers_out, peer_broadcast_free);
}

/* on_peers: the next batch of the broadcast under way */
static gboolean
on_peers(gpointer data)
{
    Manager *m = data;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);
    PeerBroadcast *b = m->peers_out;
    guint end = MIN(b->next + PEERS_SEND_BATCH, b->names->len);

    for (; b->next < end; b->next++)
        send_peer_list(m, b, b->next);
    if (b->next < b->names->len)
        return G_SOURCE_CONTINUE;
    m->peers_idle = 0;
    g_clear_pointer(&m->peers_out, peer_broadcast_free);
    return G_SOURCE_REMOVE;
}

/*
 * send_peer_lists: tell each connected host the peer servers of some
 * other hosts that are up, with their keys (docs/site-protocol.md
 * "peers"): all of them in a site of up to PEERS_PER_HOST + 1, else a
 * bounded, symmetric choice (peer-lists.h: a random ring, rotated per
 * broadcast, and the hosts that hold the same images).  Chosen when
 * something changed, at most every PEERS_MIN_US, and every
 * PEERS_RESEND_US anyway; sent by an idle source at the inbox's priority,
 * PEERS_SEND_BATCH hosts at a time (PeerBroadcast); the next is not
 * chosen before the last is out.
 */
static bool
send_peer_lists(Manager *m, GError **error)
{
    gint64 now = g_get_monotonic_time();
    PeerBroadcast *b;

    if (m->peers_out || /* the last one is still going out */
        (m->peers_sent &&
         now - m->peers_sent <
             (m->peers_changed ? PEERS_MIN_US : PEERS_RESEND_US)))
        return true;
    if (!(b = peer_broadcast_new(m, error)))
        return false;
    m->peers_sent = now;
    m->peers_changed = false;
    m->peers_out = b;
    m->peers_idle = g_idle_add_full(G_PRIORITY_DEFAULT_IDLE, on_peers, m, NULL);
    return true;
}

/* ---- the pass ---------------------------------------------------------- */

static void reconcile(Manager *m, bool continuing);

static gboolean
on_more(gpointer data)
{
    Manager *m = data;

    m->pass_more = 0;
    reconcile(m, true);
    return G_SOURCE_REMOVE;
}

/* pass_continue: the next pass, as soon as the main loop is idle (at the
 * inbox's priority: the two take turns), for what this one's budget
 * left; one at a time.  Main thread. */
static void
pass_continue(Manager *m)
{
    if (!m->pass_more)
        m->pass_more =
            g_idle_add_full(G_PRIORITY_DEFAULT_IDLE, on_more, m, NULL);
}

/* pass_lap: the time since *@t in ms into @at, *@t now; true, to be
 * chained with the steps */
static bool
pass_lap(gint64 *t, double *at)
{
    gint64 now = g_get_monotonic_time();

    *at = (double)(now - *t) / 1e3;
    *t = now;
    return true;
}

/* thread_cpu_ms: the CPU time of the calling thread */
static double
thread_cpu_ms(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* pass_note: record the pass; one over PASS_SLOW_S is logged with the
 * time of each step (ms), to say which one to look at, and the CPU time
 * it had (on a loaded machine the wall clock says little of the code) */
static void
pass_note(Manager *m, bool continuing, gint64 start, double cpu_start,
          const double *ms)
{
    double s = (double)(g_get_monotonic_time() - start) / 1e6;

    manager_note_pass(m, s);
    if (s > PASS_SLOW_S)
        g_message("slow reconciliation pass (%s): %.0f ms, %.0f ms of CPU "
                  "(lost hosts %.1f, peer lists %.1f, scaling %.1f, rows "
                  "%.1f, placement %.1f, hosts %.1f, commit %.1f, sends %.1f)",
                  continuing ? "continuing" : "timer", s * 1e3,
                  thread_cpu_ms() - cpu_start, ms[0], ms[1], ms[2], ms[3],
                  ms[4], ms[5], ms[6], ms[7]);
}

/* reconcile: one pass; @continuing: one that goes on with what the last
 * one left (pass_continue), which sends its own commands only */
static void
reconcile(Manager *m, bool continuing)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);
    g_autoptr(GError) err = NULL;
    gint64 start = g_get_monotonic_time();
    gint64 t = start;
    double cpu_start = thread_cpu_ms();
    double began = state_now();
    PassBudget budget = {PASS_CLONES_MAX, PASS_CLONES_MAX, false, false};
    double ms[8] = {0};
    g_auto(PassRows) rows = {NULL, false};
    g_autoptr(GPtrArray) sends = g_ptr_array_new_with_free_func(pass_send_free);
    bool held = log_batch_hold(); /* the pass's events: one write */
    bool ok;

    m->pass_sends = sends;
    ok = state_begin(m->db, &err) && mark_lost_hosts(m, &err) &&
         pass_lap(&t, &ms[0]) && send_peer_lists(m, &err) &&
         pass_lap(&t, &ms[1]) && mscale_evaluate(m, &err) &&
         pass_lap(&t, &ms[2]) && sync_clone_rows(m, &rows, &err) &&
         pass_lap(&t, &ms[3]) && place_clones(m, &budget, &rows, &err) &&
         pass_lap(&t, &ms[4]) &&
         reconcile_hosts(m, &budget, &rows, continuing, &err) &&
         pass_lap(&t, &ms[5]) && state_commit(m->db, &err) &&
         pass_lap(&t, &ms[6]);
    m->pass_sends = NULL;
    if (!ok) {
        state_rollback(m->db); /* invariant 1 */
        g_warning("reconciliation pass rolled back: %s", err->message);
        log_batch_flush(held);
        pass_note(m, continuing, start, cpu_start, ms);
        return;
    }
    keep_rows(m, &rows);
    send_new(m, sends);
    if (!continuing) /* re-sends: the timer's pass */
        send_due(m, began);
    log_batch_flush(held);
    pass_lap(&t, &ms[7]);
    if (budget.more)
        pass_continue(m);
    pass_note(m, continuing, start, cpu_start, ms);
}

void
manager_reconcile(Manager *m)
{
    reconcile(m, false);
}
