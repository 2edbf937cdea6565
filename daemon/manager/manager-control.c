/*
 * manager-control.c: spored's control socket (docs/site-control.md).
 *
 * Each connection runs in a thread of its own.  Invariants:
 *   1. Every command runs in one transaction under the manager's lock
 *      (run_command: BEGIN IMMEDIATE for those that write, BEGIN for
 *      those that read, so that a listing is one consistent snapshot),
 *      and either commits whole or is rolled back whole.
 *   2. A command that fails, for any reason down to a failed COMMIT,
 *      answers {"ok": false, "error": ...}: never "ok" for something not
 *      stored.  The daemon keeps serving.
 *   3. A command that changed the desired state wakes the reconciliation
 *      loop after its commit.
 *   4. image-add downloads and indexes the image before it takes the lock
 *      (it may take minutes); only the store is in the transaction.
 *
 * manager_control_read() runs read commands for the status page
 * (manager-status.c, on the metrics server's thread) under invariant 1:
 * several of them in one read transaction, so the page is one snapshot.
 */
#include "manager-private.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "image-index.h"
#include "origin.h"
#include "scaling.h"
#include "spore-error.h"

/* connections served at once */
#define CONTROL_THREADS_MAX  16
#define EVENTS_LIMIT_MAX     1000
#define EVENTS_LIMIT_DEFAULT 100

/* the control socket's mode: its owner and group administer the site */
#define CONTROL_SOCKET_MODE 0660

typedef JsonObject *(*CommandFn)(Manager *m, JsonObject *req, GError **error);

static gboolean G_GNUC_PRINTF(2, 3)
    fail(GError **error, const char *format, ...)
{
    va_list ap;

    va_start(ap, format);
    g_propagate_error(error, g_error_new_valist(
                                 SPORE_ERROR, SPORE_ERROR_INVALID, format, ap));
    va_end(ap);
    return FALSE;
}

/* ---- objects ---------------------------------------------------------- */

static bool
is_running(JsonObject *rep, gint64 generation)
{
    return rep && json_util_get_int(rep, "generation", -1) == generation &&
           g_strcmp0(json_util_get_string(rep, "state", NULL), "running") == 0;
}

/* host_known: @host reported since the manager started (its clones' true
 * states are known) */
static bool
host_known(Manager *m, const char *host)
{
    HostRuntime *h = host ? g_hash_table_lookup(m->runtime, host) : NULL;

    return h && h->reported;
}

/* clone_state: what clone-list says of a desired clone (the clone's
 * life: manager-state.h) */
static const char *
clone_state(Manager *m, const CloneRow *c, JsonObject *rep)
{
    if (rep && json_util_get_int(rep, "generation", -1) == c->generation)
        return json_util_get_string(rep, "state", "unknown");
    if (rep)
        return clone_state_to_string(CLONE_UPDATING);
    if (!c->host)
        return clone_state_to_string(CLONE_PENDING);
    if (!host_known(m, c->host))
        return clone_state_to_string(CLONE_UNKNOWN);
    return clone_state_to_string(CLONE_CREATING);
}

static JsonObject *
clone_object(Manager *m, const CloneRow *c)
{
    JsonObject *o = json_object_new();
    g_autofree char *name =
        g_strdup_printf("%s-%u", c->service, (guint)c->index);
    JsonObject *rep = manager_reported_clone(m, c->host, name);
    const char *reason = json_util_get_string(rep, "reason", NULL);

    json_object_set_string_member(o, "name", name);
    json_object_set_string_member(o, "service", c->service);
    json_object_set_int_member(o, "index", c->index);
    if (c->host)
        json_object_set_string_member(o, "host", c->host);
    else
        json_object_set_null_member(o, "host");
    json_object_set_int_member(o, "generation",
                               rep ? json_util_get_int(rep, "generation", 0)
                                   : c->generation);
    json_object_set_string_member(o, "state", clone_state(m, c, rep));
    if (reason && *reason)
        json_object_set_string_member(o, "reason", reason);
    return o;
}

/* deleting_object: a clone a host still reports that is no longer
 * desired: being removed */
static JsonObject *
deleting_object(const char *host, JsonObject *rep)
{
    JsonObject *o = json_object_new();

    json_object_set_string_member(o, "name",
                                  json_util_get_string(rep, "name", ""));
    json_object_set_string_member(o, "service",
                                  json_util_get_string(rep, "service", ""));
    json_object_set_int_member(o, "index", json_util_get_int(rep, "index", 0));
    json_object_set_string_member(o, "host", host);
    json_object_set_int_member(o, "generation",
                               json_util_get_int(rep, "generation", 0));
    json_object_set_string_member(o, "state",
                                  clone_state_to_string(CLONE_DELETING));
    return o;
}

/* add_deleting: to @arr, the clones of the services in @services that
 * hosts report but that are not in @desired (names) */
static void
add_deleting(Manager *m, GHashTable *services, GHashTable *desired,
             JsonArray *arr)
{
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        HostRuntime *h = v;
        JsonArray *clones = manager_host_clones(m, h->name);

        for (guint i = 0; clones && i < json_array_get_length(clones); i++) {
            JsonNode *n = json_array_get_element(clones, i);
            JsonObject *rep;

            if (!JSON_NODE_HOLDS_OBJECT(n))
                continue;
            rep = json_node_get_object(n);
            if (!g_hash_table_contains(
                    services, json_util_get_string(rep, "service", "")) ||
                g_hash_table_contains(desired,
                                      json_util_get_string(rep, "name", "")))
                continue;
            json_array_add_object_element(arr, deleting_object(h->name, rep));
        }
    }
}

/* clones_of: the clones of @service (all when NULL): the desired ones and
 * those still being removed */
static JsonArray *
clones_of(Manager *m, const char *service, GError **error)
{
    g_autoptr(JsonArray) arr = json_array_new();
    g_autoptr(GPtrArray) rows = state_clone_list(m->db, service, NULL, error);
    g_autoptr(GPtrArray) services = NULL;
    g_autoptr(GHashTable) names =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GHashTable) scope =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

    if (!rows)
        return NULL;
    for (guint i = 0; i < rows->len; i++) {
        CloneRow *c = rows->pdata[i];
        JsonObject *o = clone_object(m, c);

        g_hash_table_add(names,
                         g_strdup(json_object_get_string_member(o, "name")));
        json_array_add_object_element(arr, o);
    }
    if (service) {
        g_hash_table_add(scope, g_strdup(service));
    } else {
        if (!(services = state_service_list(m->db, error)))
            return NULL;
        for (guint i = 0; i < services->len; i++)
            g_hash_table_add(
                scope, g_strdup(((ServiceRow *)services->pdata[i])->name));
    }
    add_deleting(m, scope, names, arr);
    return g_steal_pointer(&arr);
}

/* rollout_summary: @o's "rollout": the last rolling replacement of @svc,
 * with @counts of its clone rows (updated, updated running, old, old
 * running) and the bounds of its manifest @mf; null when it never had
 * one */
static bool
rollout_summary(Manager *m, const ServiceRow *svc, const Manifest *mf,
                const guint counts[4], JsonObject *o, GError **error)
{
    g_autoptr(RolloutRow) ro = NULL;
    JsonObject *r;

    if (!state_rollout_get(m->db, svc->name, &ro, error))
        return false;
    if (!ro) {
        json_object_set_null_member(o, "rollout");
        return true;
    }
    r = json_object_new();
    json_object_set_string_member(r, "state", ro->state);
    json_object_set_int_member(r, "generation", ro->generation);
    json_object_set_int_member(r, "from_generation", ro->from_generation);
    json_object_set_double_member(r, "started", ro->started);
    if (ro->finished > 0)
        json_object_set_double_member(r, "finished", ro->finished);
    else
        json_object_set_null_member(r, "finished");
    if (ro->reason)
        json_object_set_string_member(r, "reason", ro->reason);
    json_object_set_int_member(r, "updated", counts[0]);
    json_object_set_int_member(r, "updated_running", counts[1]);
    json_object_set_int_member(r, "old", counts[2]);
    json_object_set_int_member(r, "old_running", counts[3]);
    json_object_set_int_member(r, "max_unavailable",
                               mf ? mf->update.max_unavailable : 0);
    json_object_set_int_member(r, "max_surge", mf ? mf->update.max_surge : 0);
    json_object_set_object_member(o, "rollout", r);
    return true;
}

static JsonObject *
service_summary(Manager *m, const ServiceRow *svc, GError **error)
{
    g_autoptr(JsonObject) o = json_object_new();
    g_autoptr(GError) err = NULL;
    Manifest *mf = manager_manifest(m, svc->name, &err);
    g_autoptr(GPtrArray) clones = NULL;
    guint running = 0, unknown = 0;
    guint counts[4] = {0}; /* updated, updated running, old, old running */

    if (err) {
        g_propagate_error(error, g_steal_pointer(&err));
        return NULL;
    }
    clones = state_clone_list(m->db, svc->name, NULL, error);
    if (!clones)
        return NULL;
    json_object_set_string_member(o, "name", svc->name);
    json_object_set_int_member(o, "generation", svc->generation);
    json_object_set_string_member(o, "image", svc->image);
    json_object_set_int_member(o, "min", mf ? mf->scaling.min : 0);
    json_object_set_int_member(o, "max", mf ? mf->scaling.max : 0);
    json_object_set_int_member(o, "desired", svc->desired);
    json_object_set_boolean_member(o, "deleting", svc->deleting);
    json_object_set_double_member(o, "cooldown_until", svc->cooldown_until);
    for (guint i = 0; i < clones->len; i++) {
        CloneRow *c = clones->pdata[i];
        g_autofree char *name =
            g_strdup_printf("%s-%u", svc->name, (guint)c->index);
        bool current = c->generation == svc->generation;
        bool runs =
            is_running(manager_reported_clone(m, c->host, name), c->generation);

        if (c->host && !host_known(m, c->host))
            unknown++;
        else if (runs && current)
            running++;
        counts[current ? 0 : 2]++;
        counts[current ? 1 : 3] += runs;
    }
    if (!rollout_summary(m, svc, mf, counts, o, error))
        return NULL;
    /* not known yet (hosts not reported since spored started): null */
    if (unknown)
        json_object_set_null_member(o, "running");
    else
        json_object_set_int_member(o, "running", running);
    json_object_set_int_member(o, "unknown", unknown);
    return g_steal_pointer(&o);
}

/* service_of: the service @name of request @req, or NULL with "no such
 * service" */
static ServiceRow *
service_of(Manager *m, const char *name, bool deleting_ok, GError **error)
{
    g_autoptr(ServiceRow) svc = NULL;

    if (!state_service_get(m->db, name, &svc, error))
        return NULL;
    if (!svc || (!deleting_ok && svc->deleting)) {
        fail(error, "no such service '%s'", name);
        return NULL;
    }
    return g_steal_pointer(&svc);
}

/* ---- commands --------------------------------------------------------- */

static JsonObject *
problems_reply(GPtrArray *problems, const GError *err)
{
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

/* service_roll_to: @svc back to its kept generation @generation (its
 * manifest, image and number): its clones of that generation are current
 * again, those of the generation it leaves are replaced by them */
static bool
service_roll_to(Manager *m, const ServiceRow *svc, gint64 generation,
                GError **error)
{
    g_autofree char *canonical = NULL;
    g_autofree char *image = NULL;
    g_autoptr(Manifest) mf = NULL;
    gint64 desired;

    if (!state_generation_get(m->db, svc->name, generation, &canonical, &image,
                              error))
        return false;
    if (!canonical)
        return fail(error,
                    "generation %" G_GINT64_FORMAT
                    " of service '%s' is no longer kept",
                    generation, svc->name);
    mf = manifest_parse_data(canonical, strlen(canonical), NULL, error);
    if (!mf) {
        g_prefix_error(error,
                       "generation %" G_GINT64_FORMAT " of '%s': ", generation,
                       svc->name);
        return false;
    }
    desired =
        CLAMP(svc->desired, (gint64)mf->scaling.min, (gint64)mf->scaling.max);
    return state_service_update(m->db, svc->name, canonical, generation, image,
                                desired, error) &&
           state_rollout_start(m->db, svc->name, generation, svc->generation,
                               error) &&
           manager_event(
               m, error, "rollout-started", svc->name, NULL,
               "service %s: rollback from generation %" G_GINT64_FORMAT
               " to %" G_GINT64_FORMAT " (%" G_GINT64_FORMAT " clones)",
               svc->name, svc->generation, generation, desired);
}

/* rollback_target: the generation that submitting @canonical to @svc
 * returns to (the one its last rollout started from, when that is the
 * manifest submitted), else 0 */
static bool
rollback_target(Manager *m, const ServiceRow *svc, const char *canonical,
                gint64 *ret_generation, GError **error)
{
    g_autoptr(RolloutRow) ro = NULL;
    g_autofree char *from = NULL;

    *ret_generation = 0;
    if (!state_rollout_get(m->db, svc->name, &ro, error))
        return false;
    if (!ro || ro->generation != svc->generation)
        return true;
    if (!state_generation_get(m->db, svc->name, ro->from_generation, &from,
                              NULL, error))
        return false;
    if (from && g_str_equal(from, canonical))
        *ret_generation = ro->from_generation;
    return true;
}

/* submit_store: store @mf (canonical text @canonical); *ret_outcome and
 * *ret_generation say what happened */
static bool
submit_store(Manager *m, const Manifest *mf, const char *canonical,
             const char *file, const char **ret_outcome, gint64 *ret_generation,
             GError **error)
{
    g_autoptr(ImageRow) image = NULL;
    g_autoptr(ServiceRow) old = NULL;
    gint64 desired;

    if (!state_image_get(m->db, mf->image.name, &image, error) ||
        !state_service_get(m->db, mf->name, &old, error))
        return false;
    if (!image)
        return fail(error,
                    "%s: image '%s' is not registered with the site "
                    "manager: sporectl image-add %s URL",
                    file ? file : "manifest", mf->image.name, mf->image.name);
    if (old && old->deleting)
        return fail(error,
                    "service '%s' is being deleted; submit it again once it "
                    "is gone",
                    mf->name);
    if (old && g_str_equal(old->manifest, canonical)) {
        *ret_outcome = "unchanged";
        *ret_generation = old->generation;
        return true;
    }
    if (!old) {
        *ret_outcome = "created";
        return state_service_insert(m->db, mf->name, canonical, mf->image.name,
                                    mf->scaling.initial, error) &&
               state_service_generation(m->db, mf->name, ret_generation,
                                        error) &&
               state_generation_put(m->db, mf->name, *ret_generation, canonical,
                                    mf->image.name, error) &&
               manager_event(m, error, "service-created", mf->name, NULL,
                             "service %s created: %u clones of image %s",
                             mf->name, mf->scaling.initial, mf->image.name);
    }
    if (!rollback_target(m, old, canonical, ret_generation, error))
        return false;
    if (*ret_generation > 0) {
        *ret_outcome = "rolled back";
        return service_roll_to(m, old, *ret_generation, error);
    }
    *ret_outcome = "updated";
    if (!state_generation_next(m->db, mf->name, ret_generation, error))
        return false;
    desired =
        CLAMP(old->desired, (gint64)mf->scaling.min, (gint64)mf->scaling.max);
    return state_service_update(m->db, mf->name, canonical, *ret_generation,
                                mf->image.name, desired, error) &&
           state_generation_put(m->db, mf->name, *ret_generation, canonical,
                                mf->image.name, error) &&
           state_rollout_start(m->db, mf->name, *ret_generation,
                               old->generation, error) &&
           manager_event(m, error, "service-updated", mf->name, NULL,
                         "service %s updated to generation %" G_GINT64_FORMAT
                         " (%" G_GINT64_FORMAT " clones)",
                         mf->name, *ret_generation, desired) &&
           manager_event(m, error, "rollout-started", mf->name, NULL,
                         "service %s: rollout from generation %" G_GINT64_FORMAT
                         " to %" G_GINT64_FORMAT
                         " (max-unavailable %u, max-surge %u)",
                         mf->name, old->generation, *ret_generation,
                         mf->update.max_unavailable, mf->update.max_surge);
}

static JsonObject *
cmd_submit(Manager *m, JsonObject *req, GError **error)
{
    const char *text = json_util_get_string(req, "manifest", NULL);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) mf = NULL;
    g_autofree char *canonical = NULL;
    const char *outcome = NULL;
    gint64 generation = 0;
    JsonObject *r;

    if (!text) {
        fail(error, "submit needs the manifest's text");
        return NULL;
    }
    mf = manifest_parse_data(text, strlen(text), problems, &err);
    if (!mf)
        return problems_reply(problems, err);
    canonical = manifest_format(mf);
    if (!submit_store(m, mf, canonical, json_util_get_string(req, "file", NULL),
                      &outcome, &generation, error))
        return NULL;
    r = control_reply_ok();
    json_object_set_string_member(r, "service", mf->name);
    json_object_set_int_member(r, "generation", generation);
    json_object_set_string_member(r, "outcome", outcome);
    return r;
}

static JsonObject *
cmd_service_list(Manager *m, JsonObject *req, GError **error)
{
    g_autoptr(JsonArray) arr = json_array_new();
    g_autoptr(GPtrArray) services = state_service_list(m->db, error);
    JsonObject *r;

    if (!services)
        return NULL;
    for (guint i = 0; i < services->len; i++) {
        JsonObject *o = service_summary(m, services->pdata[i], error);

        if (!o)
            return NULL;
        json_array_add_object_element(arr, o);
    }
    r = control_reply_ok();
    json_object_set_array_member(r, "services", g_steal_pointer(&arr));
    return r;
}

static const char *
schedule_action(ManifestScheduleAction a)
{
    return a == MANIFEST_SCHEDULE_ADD      ? "add"
           : a == MANIFEST_SCHEDULE_REMOVE ? "remove"
                                           : "set";
}

/* schedules_status: service-show's "schedules": each scheduled policy of
 * @mf (its text as manifest_schedule_text writes it, its parts, the time
 * up to which its occurrences were handled and its next occurrence after
 * that, in the schedules' clock: docs/scaling.md) */
static JsonArray *
schedules_status(Manager *m, const char *service, const Manifest *mf,
                 GError **error)
{
    g_autoptr(JsonArray) arr = json_array_new();
    g_autoptr(GHashTable) handled = NULL;
    GPtrArray *schedules = mf->scaling.schedules;

    if (!schedules || !schedules->len)
        return g_steal_pointer(&arr);
    if (!(handled = state_schedule_handled(m->db, service, error)))
        return NULL;
    for (guint i = 0; i < schedules->len; i++) {
        const ManifestSchedule *s = schedules->pdata[i];
        g_autofree char *text = manifest_schedule_text(s);
        const double *h = g_hash_table_lookup(handled, text);
        double next = scaling_schedule_next(s, h ? *h : state_now());
        JsonObject *o = json_object_new();

        json_object_set_int_member(o, "schedule", i + 1);
        json_object_set_string_member(o, "text", text);
        if (s->cron)
            json_object_set_string_member(o, "cron", s->cron);
        else
            json_object_set_null_member(o, "cron");
        if (s->has_at)
            json_object_set_int_member(o, "at", s->at);
        else
            json_object_set_null_member(o, "at");
        if (s->timezone)
            json_object_set_string_member(o, "timezone", s->timezone);
        else
            json_object_set_null_member(o, "timezone");
        json_object_set_string_member(o, "action", schedule_action(s->action));
        json_object_set_int_member(o, "amount", s->amount);
        json_object_set_boolean_member(o, "percent", s->percent);
        json_object_set_int_member(o, "grace_seconds", s->grace_seconds);
        if (h)
            json_object_set_double_member(o, "handled", *h);
        else
            json_object_set_null_member(o, "handled");
        if (isfinite(next))
            json_object_set_double_member(o, "next", next);
        else
            json_object_set_null_member(o, "next");
        json_array_add_object_element(arr, o);
    }
    return g_steal_pointer(&arr);
}

static JsonObject *
cmd_service_show(Manager *m, JsonObject *req, GError **error)
{
    const char *name = json_util_get_string(req, "name", NULL);
    g_autoptr(ServiceRow) svc = NULL;
    g_autoptr(JsonObject) o = NULL;
    g_autoptr(GError) err = NULL;
    JsonArray *clones;
    Manifest *mf;
    JsonObject *r;

    if (!name) {
        fail(error, "service-show needs a service name");
        return NULL;
    }
    if (!(svc = service_of(m, name, true, error)) ||
        !(o = service_summary(m, svc, error)))
        return NULL;
    json_object_set_string_member(o, "manifest", svc->manifest);
    mf = manager_manifest(m, name, &err);
    if (mf) {
        JsonArray *schedules = schedules_status(m, name, mf, error);

        if (!schedules)
            return NULL;
        json_object_set_array_member(o, "rules",
                                     mscale_rules_status(m, name, mf));
        json_object_set_array_member(o, "schedules", schedules);
    }
    if (!(clones = clones_of(m, name, error)))
        return NULL;
    json_object_set_array_member(o, "clones", clones);
    r = control_reply_ok();
    json_object_set_object_member(r, "service", g_steal_pointer(&o));
    return r;
}

static JsonObject *
cmd_service_delete(Manager *m, JsonObject *req, GError **error)
{
    const char *name = json_util_get_string(req, "name", NULL);
    g_autoptr(ServiceRow) svc = NULL;
    JsonObject *r;

    if (!name) {
        fail(error, "service-delete needs a service name");
        return NULL;
    }
    if (!(svc = service_of(m, name, true, error)) ||
        !state_service_set_deleting(m->db, name, error) ||
        !manager_event(m, error, "service-deleting", name, NULL,
                       "service %s is being deleted: its clones are shut "
                       "down and removed",
                       name))
        return NULL;
    r = control_reply_ok();
    json_object_set_string_member(r, "service", name);
    return r;
}

/* cmd_scale: a new desired count, and a cooldown; a count equal to the
 * desired one changes nothing (not the cooldown either) */
static JsonObject *
cmd_scale(Manager *m, JsonObject *req, GError **error)
{
    const char *name = json_util_get_string(req, "name", NULL);
    gint64 count = json_util_get_int(req, "count", -1);
    g_autoptr(ServiceRow) svc = NULL;
    Manifest *mf;
    JsonObject *r;

    if (!name || count < 0) {
        fail(error, "scale needs a service name and a count >= 0");
        return NULL;
    }
    if (!(svc = service_of(m, name, false, error)) ||
        !(mf = manager_manifest(m, name, error))) {
        if (error && !*error)
            fail(error, "no such service '%s'", name);
        return NULL;
    }
    if (count < mf->scaling.min || count > mf->scaling.max) {
        fail(error,
             "service '%s' runs between %u and %u clones (its manifest's "
             "<scaling>); %" G_GINT64_FORMAT " is outside",
             name, mf->scaling.min, mf->scaling.max, count);
        return NULL;
    }
    if (count != svc->desired &&
        (!state_service_set_desired(m->db, name, count,
                                    state_now() + mf->scaling.cooldown_seconds,
                                    error) ||
         !manager_event(m, error, "scaled", name, NULL,
                        "service %s scaled by hand from %" G_GINT64_FORMAT
                        " to %" G_GINT64_FORMAT " clones (cooldown %u s)",
                        name, svc->desired, count,
                        mf->scaling.cooldown_seconds)))
        return NULL;
    r = control_reply_ok();
    json_object_set_string_member(r, "service", name);
    json_object_set_int_member(r, "desired", count);
    json_object_set_string_member(
        r, "outcome", count != svc->desired ? "scaled" : "unchanged");
    return r;
}

/* cmd_rollback: back to the newest kept generation below the current one
 * (after a failed rollout: the one it started from; again: one more step
 * back) */
static JsonObject *
cmd_rollback(Manager *m, JsonObject *req, GError **error)
{
    const char *name = json_util_get_string(req, "name", NULL);
    g_autoptr(ServiceRow) svc = NULL;
    gint64 target = -1;
    JsonObject *r;

    if (!name) {
        fail(error, "rollback needs a service name");
        return NULL;
    }
    if (!(svc = service_of(m, name, false, error)) ||
        !state_generation_before(m->db, name, svc->generation, &target, error))
        return NULL;
    if (target < 0) {
        fail(error,
             "service '%s' has no earlier generation to return to (it is at "
             "generation %" G_GINT64_FORMAT ")",
             name, svc->generation);
        return NULL;
    }
    if (!service_roll_to(m, svc, target, error))
        return NULL;
    r = control_reply_ok();
    json_object_set_string_member(r, "service", name);
    json_object_set_int_member(r, "generation", target);
    json_object_set_int_member(r, "from_generation", svc->generation);
    return r;
}

static JsonObject *
cmd_request(Manager *m, JsonObject *req, GError **error)
{
    const char *name = json_util_get_string(req, "name", NULL);
    gint64 count = json_util_get_int(req, "count", 1);
    g_autoptr(ServiceRow) svc = NULL;
    JsonObject *r;

    if (!name || count < 0 || count > G_MAXINT32) {
        fail(error, "request needs a service name and a count >= 0");
        return NULL;
    }
    if (!(svc = service_of(m, name, true, error)) ||
        !mscale_requests(m, name, count, error))
        return NULL;
    r = control_reply_ok();
    json_object_set_string_member(r, "service", name);
    json_object_set_int_member(r, "count", count);
    return r;
}

static JsonObject *
cmd_clone_list(Manager *m, JsonObject *req, GError **error)
{
    const char *service = json_util_get_string(req, "service", NULL);
    g_autoptr(ServiceRow) svc = NULL;
    JsonArray *clones;
    JsonObject *r;

    if (service && !(svc = service_of(m, service, true, error)))
        return NULL;
    if (!(clones = clones_of(m, service, error)))
        return NULL;
    r = control_reply_ok();
    json_object_set_array_member(r, "clones", clones);
    return r;
}

/* host_state: a host's registration state (manager-state.h) */
static HostState
host_state(Manager *m, const HostRow *row)
{
    if (!row->accepted)
        return HOST_PENDING;
    if (row->lost)
        return HOST_LOST;
    if (manager_host_heard_up(m, row->name))
        return HOST_UP;
    return HOST_DOWN;
}

static JsonObject *
host_object(Manager *m, const HostRow *row)
{
    JsonObject *o = json_object_new();
    HostRuntime *h = g_hash_table_lookup(m->runtime, row->name);

    json_object_set_string_member(o, "name", row->name);
    json_object_set_string_member(o, "state",
                                  host_state_to_string(host_state(m, row)));
    json_object_set_boolean_member(o, "accepted", row->accepted);
    json_object_set_string_member(o, "key", row->key);
    json_object_set_string_member(o, "address",
                                  row->address ? row->address : "");
    json_object_set_int_member(o, "cpus", row->cpus);
    json_object_set_int_member(o, "memory_kib", row->memory_kib);
    json_object_set_int_member(o, "clones", row->clones);
    if (h && h->heard)
        json_object_set_double_member(
            o, "last_seen",
            (double)(g_get_monotonic_time() - h->last_seen) / G_USEC_PER_SEC);
    else
        json_object_set_null_member(o, "last_seen");
    return o;
}

static JsonObject *
cmd_host_list(Manager *m, JsonObject *req, GError **error)
{
    g_autoptr(GPtrArray) hosts = state_host_list(m->db, false, error);
    JsonArray *arr;
    JsonObject *r;

    if (!hosts)
        return NULL;
    arr = json_array_new();
    for (guint i = 0; i < hosts->len; i++)
        json_array_add_object_element(arr, host_object(m, hosts->pdata[i]));
    r = control_reply_ok();
    json_object_set_array_member(r, "hosts", arr);
    return r;
}

static JsonObject *
cmd_host_accept(Manager *m, JsonObject *req, GError **error)
{
    const char *name = json_util_get_string(req, "name", NULL);
    g_autoptr(HostRow) host = NULL;
    JsonObject *r;

    if (!name) {
        fail(error, "host-accept needs a host name");
        return NULL;
    }
    if (!state_host_get(m->db, name, &host, error))
        return NULL;
    if (!host) {
        fail(error,
             "no host '%s' has tried to connect (see sporectl host-list; or "
             "place its key in the hosts directory)",
             name);
        return NULL;
    }
    if (!state_host_accept(m->db, name, error) ||
        !manager_event(m, error, "host-accepted", NULL, name,
                       "host %s accepted", name))
        return NULL;
    r = control_reply_ok();
    json_object_set_string_member(r, "host", name);
    return r;
}

/* ---- images ----------------------------------------------------------- */

/* on_image_data: the next bytes of the image, into the index (an
 * OriginDataFunc) */
static bool
on_image_data(const guint8 *bytes, gsize len, gpointer data, GError **error)
{
    if (image_index_builder_feed(data, bytes, len))
        return true;
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                "the image is larger than an index holds");
    return false;
}

/* index_from_origin: read @url once (p2p/origin.c, the one libcurl
 * adapter) and index it on the way */
static ImageIndex *
index_from_origin(const char *url, GError **error)
{
    g_autoptr(ImageIndexBuilder) b =
        image_index_builder_new(IMAGE_INDEX_CHUNK_SHIFT_DEFAULT);

    if (!origin_read_all(url, NULL, on_image_data, b, error)) {
        g_prefix_error(error, "cannot download the image: ");
        return NULL;
    }
    return image_index_builder_finish(b, error);
}

/* image_index_of: the index of image @name: given in @req, or built by
 * reading @url once (invariant 4: without the lock) */
static ImageIndex *
image_index_of(JsonObject *req, const char *name, const char *url,
               GError **error)
{
    const char *index_b64 = json_util_get_string(req, "index", NULL);
    g_autoptr(ImageIndex) idx = NULL;
    g_autofree guint8 *data = NULL;
    gsize len = 0;

    if (!index_b64) {
        g_message("indexing image %s from %s", name, url);
        idx = index_from_origin(url, error);
        if (!idx)
            g_prefix_error(error, "image '%s': ", name);
        return g_steal_pointer(&idx);
    }
    data = g_base64_decode(index_b64, &len);
    idx = image_index_parse(data, len, NULL, error);
    if (!idx)
        g_prefix_error(error, "the index given for image '%s': ", name);
    return g_steal_pointer(&idx);
}

static bool
image_check(const char *name, const char *url, const char *format,
            GError **error)
{
    if (!name || !url)
        return fail(error, "image-add needs a name and a URL");
    if (!g_str_has_prefix(url, "http://") &&
        !g_str_has_prefix(url, "https://") && !g_str_has_prefix(url, "file://"))
        return fail(error, "image URL '%s' is not http, https or file", url);
    if (format && !g_str_equal(format, "raw") && !g_str_equal(format, "qcow2"))
        return fail(error, "image format '%s' is not raw or qcow2", format);
    return true;
}

/* image_store: register @row (locked, in the command's transaction) */
static bool
image_store(Manager *m, const ImageRow *row, const char *url, GError **error)
{
    g_autoptr(ImageRow) old = NULL;

    if (!state_image_get(m->db, row->name, &old, error))
        return false;
    if (old && !g_str_equal(old->id, row->id))
        return fail(error,
                    "image '%s' is registered with id %s; this one is %s (an "
                    "image's content never changes: give the new one another "
                    "name)",
                    row->name, old->id, row->id);
    return state_image_put(m->db, row, error) &&
           manager_event(m, error, "image-added", NULL, NULL,
                         "image %s registered: %s, %s", row->name, row->id,
                         url);
}

static JsonObject *
image_object(const ImageRow *row)
{
    JsonObject *im = json_object_new();
    g_autoptr(JsonParser) p = json_parser_new();

    json_object_set_string_member(im, "name", row->name);
    json_object_set_string_member(im, "id", row->id);
    json_object_set_int_member(im, "size", row->size);
    json_object_set_int_member(im, "chunk_size", row->chunk_size);
    if (json_parser_load_from_data(p, row->origins, -1, NULL))
        json_object_set_member(im, "origins",
                               json_node_copy(json_parser_get_root(p)));
    return im;
}

/* ---- transactions (invariants 1 and 2) ------------------------------- */

typedef bool (*TxnFn)(Manager *m, gpointer data, GError **error);

/* transact: @fn under the lock in one transaction, committed if it
 * returns true, rolled back otherwise */
static bool
transact(Manager *m, bool writes, TxnFn fn, gpointer data, GError **error)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);

    if ((writes ? state_begin(m->db, error) : state_begin_read(m->db, error)) &&
        fn(m, data, error) && state_commit(m->db, error))
        return true;
    state_rollback(m->db);
    return false;
}

typedef struct {
    CommandFn fn;
    JsonObject *req;
    JsonObject *reply;
} CommandCall;

/* call_command: a command's handler as a TxnFn: a reply that is not "ok"
 * (a manifest's problems) rolls back too */
static bool
call_command(Manager *m, gpointer data, GError **error)
{
    CommandCall *c = data;

    c->reply = c->fn(m, c->req, error);
    return c->reply && json_util_get_bool(c->reply, "ok", false);
}

typedef struct {
    const ImageRow *row;
    const char *url;
} ImageStore;

static bool
call_image_store(Manager *m, gpointer data, GError **error)
{
    ImageStore *s = data;

    return image_store(m, s->row, s->url, error);
}

static JsonObject *
cmd_image_add(Manager *m, JsonObject *req, GError **error)
{
    const char *name = json_util_get_string(req, "name", NULL);
    const char *url = json_util_get_string(req, "url", NULL);
    const char *format = json_util_get_string(req, "format", NULL);
    g_autoptr(ImageIndex) idx = NULL;
    g_autoptr(JsonArray) origins = json_array_new();
    g_autoptr(ImageRow) row = g_new0(ImageRow, 1);
    ImageStore store = {row, url};
    JsonObject *r;

    if (!image_check(name, url, format, error) ||
        !(idx = image_index_of(req, name, url, error)))
        return NULL;
    json_array_add_string_element(origins, url);
    {
        g_autoptr(JsonNode) node = json_node_new(JSON_NODE_ARRAY);

        json_node_set_array(node, origins);
        row->origins = json_to_string(node, FALSE);
    }
    row->name = g_strdup(name);
    row->id = g_strdup(image_index_id(idx));
    row->format = g_strdup(format ? format : "raw");
    row->index = g_bytes_ref(image_index_encoding(idx));
    row->size = (gint64)image_index_image_size(idx);
    row->chunk_size = (gint64)image_index_chunk_size(idx);
    if (!transact(m, true, call_image_store, &store, error))
        return NULL;
    r = control_reply_ok();
    json_object_set_object_member(r, "image", image_object(row));
    return r;
}

static JsonObject *
cmd_image_list(Manager *m, JsonObject *req, GError **error)
{
    g_autoptr(GPtrArray) images = state_image_list(m->db, error);
    g_autoptr(JsonArray) arr = json_array_new();
    JsonObject *r;

    if (!images)
        return NULL;
    for (guint i = 0; i < images->len; i++) {
        ImageRow *row = images->pdata[i];
        JsonObject *o = image_object(row);
        JsonArray *hosts = json_array_new();
        g_autoptr(GPtrArray) his = NULL;

        json_object_remove_member(o, "chunk_size");
        json_object_set_int_member(o, "chunk_size", row->chunk_size);
        json_object_set_array_member(o, "hosts", hosts);
        json_array_add_object_element(arr, o);
        if (!(his = state_host_image_list(m->db, row->id, error)))
            return NULL;
        for (guint j = 0; j < his->len; j++) {
            HostImageRow *hi = his->pdata[j];
            JsonObject *h = json_object_new();
            JsonObject *f = json_object_new();

            json_object_set_string_member(h, "host", hi->host);
            json_object_set_double_member(h, "cached_fraction", hi->cached);
            json_object_set_int_member(f, "origin", hi->origin_bytes);
            json_object_set_int_member(f, "peer", hi->peer_bytes);
            json_object_set_int_member(f, "local", hi->local_bytes);
            json_object_set_object_member(h, "fetched", f);
            if (hi->profile_boots >= 0) {
                JsonObject *pr = json_object_new();

                json_object_set_int_member(pr, "boots", hi->profile_boots);
                json_object_set_int_member(pr, "chunks", hi->profile_chunks);
                json_object_set_object_member(h, "profile", pr);
            }
            json_array_add_object_element(hosts, h);
        }
    }
    r = control_reply_ok();
    json_object_set_array_member(r, "images", g_steal_pointer(&arr));
    return r;
}

static JsonObject *
event_object(const EventRow *e)
{
    JsonObject *o = json_object_new();

    json_object_set_int_member(o, "id", e->id);
    json_object_set_double_member(o, "time", e->time);
    json_object_set_string_member(o, "kind", e->kind);
    if (e->service)
        json_object_set_string_member(o, "service", e->service);
    else
        json_object_set_null_member(o, "service");
    if (e->host)
        json_object_set_string_member(o, "host", e->host);
    else
        json_object_set_null_member(o, "host");
    json_object_set_string_member(o, "message", e->message);
    return o;
}

static JsonObject *
cmd_events(Manager *m, JsonObject *req, GError **error)
{
    gint64 since = json_util_get_int(req, "since", 0);
    gint64 limit = CLAMP(json_util_get_int(req, "limit", EVENTS_LIMIT_DEFAULT),
                         1, EVENTS_LIMIT_MAX);
    const char *service = json_util_get_string(req, "service", NULL);
    g_autoptr(GPtrArray) events = NULL;
    g_autoptr(ServiceRow) svc = NULL;
    JsonArray *arr;
    JsonObject *r;

    /* a deleted service's events stay: unknown is what never had one */
    if (service) {
        gint64 n = 0;
        g_autoptr(GPtrArray) any = NULL;

        if (!state_service_get(m->db, service, &svc, error))
            return NULL;
        if (!svc) {
            any = state_event_list(m->db, 0, service, 1, error);
            if (!any)
                return NULL;
            n = any->len;
        }
        if (!svc && n == 0) {
            fail(error, "no such service '%s'", service);
            return NULL;
        }
    }
    if (!(events = state_event_list(m->db, since, service, limit, error)))
        return NULL;
    arr = json_array_new();
    for (guint i = 0; i < events->len; i++)
        json_array_add_object_element(arr, event_object(events->pdata[i]));
    r = control_reply_ok();
    json_object_set_array_member(r, "events", arr);
    return r;
}

/* ---- dispatch ----------------------------------------------------------- */

typedef enum {
    COMMAND_READS,  /* BEGIN: a consistent snapshot */
    COMMAND_WRITES, /* BEGIN IMMEDIATE, and the loop woken after */
    COMMAND_OWN,    /* takes the lock itself (image-add: invariant 4) */
} CommandKind;

static const struct {
    const char *name;
    CommandFn fn;
    CommandKind kind;
} commands[] = {
    {"submit", cmd_submit, COMMAND_WRITES},
    {"service-list", cmd_service_list, COMMAND_READS},
    {"service-show", cmd_service_show, COMMAND_READS},
    {"service-delete", cmd_service_delete, COMMAND_WRITES},
    {"scale", cmd_scale, COMMAND_WRITES},
    {"rollback", cmd_rollback, COMMAND_WRITES},
    {"clone-list", cmd_clone_list, COMMAND_READS},
    {"request", cmd_request, COMMAND_WRITES},
    {"host-list", cmd_host_list, COMMAND_READS},
    {"host-accept", cmd_host_accept, COMMAND_WRITES},
    {"image-add", cmd_image_add, COMMAND_OWN},
    {"image-list", cmd_image_list, COMMAND_READS},
    {"events", cmd_events, COMMAND_READS},
};

/* run_command: command @i on @req in its transaction; the reply */
static JsonObject *
run_command(Manager *m, guint i, JsonObject *req)
{
    g_autoptr(GError) err = NULL;
    CommandCall call = {commands[i].fn, req, NULL};
    bool ok;

    if (commands[i].kind == COMMAND_OWN) {
        call.reply = commands[i].fn(m, req, &err);
        ok = call.reply != NULL;
    } else {
        ok = transact(m, commands[i].kind == COMMAND_WRITES, call_command,
                      &call, &err);
    }
    if (!ok && call.reply && !err)
        return call.reply; /* its own error reply (a manifest's problems) */
    if (!ok) {
        if (call.reply)
            json_object_unref(call.reply);
        return control_reply_error("%s", err ? err->message : "failed");
    }
    if (commands[i].kind == COMMAND_WRITES)
        manager_wake(m);
    return call.reply;
}

/* the control socket's handler (ControlHandler), on the connection's
 * thread */
static JsonObject *
manager_handle_control(JsonObject *req, gpointer data)
{
    const char *cmd = json_util_get_string(req, "cmd", NULL);

    if (!cmd)
        return control_reply_error("the request has no \"cmd\"");
    for (guint i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (g_str_equal(cmd, commands[i].name))
            return run_command(data, i, req);
    }
    return control_reply_error("unknown command '%s'", cmd);
}

/* ---- the status page's snapshot --------------------------------------- */

typedef struct {
    JsonObject *const *reqs;
    guint n;
    JsonObject **replies;
} ReadCall;

static bool
call_reads(Manager *m, gpointer data, GError **error)
{
    ReadCall *c = data;

    for (guint i = 0; i < c->n; i++) {
        const char *cmd = json_util_get_string(c->reqs[i], "cmd", "");
        guint k = 0;

        while (k < G_N_ELEMENTS(commands) &&
               !g_str_equal(cmd, commands[k].name))
            k++;
        if (k == G_N_ELEMENTS(commands) || commands[k].kind != COMMAND_READS)
            return fail(error, "'%s' is not a command that only reads", cmd);
        c->replies[i] = commands[k].fn(m, c->reqs[i], error);
        if (!c->replies[i])
            return false;
    }
    return true;
}

bool
manager_control_read(Manager *m, JsonObject *const *reqs, guint n,
                     JsonObject **ret_replies, GError **error)
{
    g_autofree JsonObject **replies = g_new0(JsonObject *, MAX(n, 1));
    ReadCall call = {reqs, n, replies};

    if (!transact(m, false, call_reads, &call, error)) {
        for (guint i = 0; i < n; i++)
            g_clear_pointer(&replies[i], json_object_unref);
        return false;
    }
    memcpy(ret_replies, replies, n * sizeof(*replies));
    return true;
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
