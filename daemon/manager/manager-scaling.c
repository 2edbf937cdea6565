/*
 * manager-scaling.c: spored's side of auto-scaling (docs/scaling.md): the
 * service metrics, sampled every SCALING_EVAL_S from the agents' reports
 * and the request counts pushed to the manager, and the rule engine
 * (scaling.c) applied to them.  Decisions set the desired count and the
 * cooldown in the database, as `sporectl scale` does, and are events with
 * their reason.
 *
 * Metrics of a service, over its running clones of the current generation:
 *   requests  requests reported in the last 60 s, per running clone (per
 *             clone per minute); 0 when none were reported
 *   cpu       the mean of each clone's CPU utilization between its last
 *             two reports: cpu time delta / (wall time delta x vCPUs)
 *   memory    the mean fraction of guest memory in use, 1 - usable (or
 *             unused) / current balloon size, over the clones whose guests
 *             report balloon statistics; no data when none do
 */
#include "manager-private.h"

#include <math.h>
#include <string.h>

#include "scaling.h"

#define SCALING_EVAL_S   5.0
#define REQUEST_WINDOW_S 60.0

typedef struct {
    gint64 cpu_ns;
    gint64 time_ms;
    double util; /* NAN until two reports */
} CpuTrack;

void
mscale_init(Manager *m)
{
    m->cpu = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    m->histories = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                         (GDestroyNotify)scaling_history_free);
    m->decisions =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
}

void
mscale_free(Manager *m)
{
    if (m->cpu)
        g_hash_table_unref(m->cpu);
    if (m->histories)
        g_hash_table_unref(m->histories);
    if (m->decisions)
        g_hash_table_unref(m->decisions);
}

void
mscale_report_clone(Manager *m, const char *host, JsonObject *c)
{
    const char *name = json_util_get_string(c, "name", NULL);
    gint64 cpu = json_util_get_int(c, "cpu_ns", -1);
    gint64 t = json_util_get_int(c, "time_ms", -1);
    guint vcpus = (guint)MAX(json_util_get_int(c, "vcpus", 1), 1);
    g_autofree char *key = NULL;
    CpuTrack *tr;

    if (!name || cpu < 0 || t < 0)
        return;
    key = g_strdup_printf("%s/%s", host, name);
    tr = g_hash_table_lookup(m->cpu, key);
    if (!tr) {
        tr = g_new0(CpuTrack, 1);
        tr->util = NAN;
        g_hash_table_insert(m->cpu, g_steal_pointer(&key), tr);
    } else if (t > tr->time_ms && cpu >= tr->cpu_ns) {
        tr->util = (double)(cpu - tr->cpu_ns) /
                   ((double)(t - tr->time_ms) * 1e6 * vcpus);
        tr->util = CLAMP(tr->util, 0.0, 1.0);
    } else if (cpu < tr->cpu_ns) {
        tr->util = NAN; /* the domain restarted */
    }
    tr->cpu_ns = cpu;
    tr->time_ms = t;
}

void
mscale_requests(Manager *m, const char *service, gint64 count)
{
    /* in the database, so that a restarted manager still sees the window */
    mdb_exec(m, "INSERT INTO requests (service, time, count) VALUES (?, ?, ?)",
             G_TYPE_STRING, service, G_TYPE_DOUBLE, mdb_now(), G_TYPE_INT64,
             count, G_TYPE_INVALID);
}

/* the requests of @service in the last window */
static gint64
recent_requests(Manager *m, const char *service, double now)
{
    return mdb_int(m, 0,
                   "SELECT COALESCE(SUM(count), 0) FROM requests WHERE "
                   "service = ? AND time >= ?",
                   G_TYPE_STRING, service, G_TYPE_DOUBLE,
                   now - REQUEST_WINDOW_S, G_TYPE_INVALID);
}

/* sample the service's metrics into its history */
static void
sample(Manager *m, const char *service, gint64 generation, double now,
       ScalingHistory *h)
{
    sqlite3_stmt *st = mdb_prepare(
        m,
        "SELECT idx, host FROM clones WHERE service = ? AND host IS NOT "
        "NULL",
        G_TYPE_STRING, service, G_TYPE_INVALID);
    guint running = 0, n_cpu = 0, n_mem = 0;
    double cpu = 0, mem = 0;

    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *host = mdb_col_text(st, 1);
        HostRuntime *rt = g_hash_table_lookup(m->runtime, host);
        g_autofree char *name = g_strdup_printf(
            "%s-%u", service, (guint)sqlite3_column_int64(st, 0));

        for (guint i = 0; rt && rt->reported && rt->clones &&
                          i < json_array_get_length(rt->clones);
             i++) {
            JsonNode *n = json_array_get_element(rt->clones, i);
            JsonObject *c;
            g_autofree char *key = NULL;
            CpuTrack *tr;
            gint64 cur, usable, unused;

            if (!JSON_NODE_HOLDS_OBJECT(n))
                continue;
            c = json_node_get_object(n);
            if (g_strcmp0(json_util_get_string(c, "name", NULL), name) != 0 ||
                json_util_get_int(c, "generation", -1) != generation ||
                g_strcmp0(json_util_get_string(c, "state", NULL), "running") != 0)
                continue;
            running++;
            key = g_strdup_printf("%s/%s", host, name);
            tr = g_hash_table_lookup(m->cpu, key);
            if (tr && !isnan(tr->util)) {
                cpu += tr->util;
                n_cpu++;
            }
            cur = json_util_get_int(c, "memory_kib", 0);
            usable = json_util_get_int(c, "memory_usable_kib", -1);
            unused = json_util_get_int(c, "memory_unused_kib", -1);
            if (cur > 0 && (usable >= 0 || unused >= 0)) {
                double free_kib = usable >= 0 ? usable : unused;

                mem += CLAMP(1.0 - free_kib / (double)cur, 0.0, 1.0);
                n_mem++;
            }
        }
    }
    sqlite3_finalize(st);
    scaling_history_add(h, MANIFEST_METRIC_REQUESTS, now,
                        (double)recent_requests(m, service, now) /
                            MAX(running, 1u) * (60.0 / REQUEST_WINDOW_S));
    scaling_history_add(h, MANIFEST_METRIC_CPU, now, n_cpu ? cpu / n_cpu : NAN);
    scaling_history_add(h, MANIFEST_METRIC_MEMORY, now,
                        n_mem ? mem / n_mem : NAN);
}

void
mscale_evaluate(Manager *m)
{
    double now = mdb_now();
    sqlite3_stmt *st;
    g_autoptr(GPtrArray) actions = g_ptr_array_new_with_free_func(g_free);

    if (now - m->last_scaling < SCALING_EVAL_S)
        return;
    m->last_scaling = now;
    mdb_exec(m, "DELETE FROM requests WHERE time < ?", G_TYPE_DOUBLE,
             now - REQUEST_WINDOW_S, G_TYPE_INVALID);
    st = mdb_prepare(m,
                     "SELECT name, generation, desired, cooldown_until FROM "
                     "services WHERE deleting = 0",
                     G_TYPE_INVALID);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *service = mdb_col_text(st, 0);
        Manifest *mf = manager_manifest(m, service);
        ScalingHistory *h;
        ScalingDecision d;
        ScalingDecision *keep;

        if (!mf || !mf->scaling.rules || mf->scaling.rules->len == 0)
            continue;
        h = g_hash_table_lookup(m->histories, service);
        if (!h) {
            h = scaling_history_new();
            g_hash_table_insert(m->histories, g_strdup(service), h);
        }
        sample(m, service, sqlite3_column_int64(st, 1), now, h);
        scaling_evaluate(mf, h, (guint)sqlite3_column_int64(st, 2), now,
                         sqlite3_column_double(st, 3), &d);
        if (d.to != d.from) {
            mdb_exec(m,
                     "UPDATE services SET desired = ?, cooldown_until = ? "
                     "WHERE name = ?",
                     G_TYPE_INT64, (gint64)d.to, G_TYPE_DOUBLE,
                     now + mf->scaling.cooldown_seconds, G_TYPE_STRING, service,
                     G_TYPE_INVALID);
            g_ptr_array_add(actions, g_strdup(service));
            mdb_event(m, d.to > d.from ? "scaled-up" : "scaled-down", service,
                      NULL, "service %s: %s; cooldown %u s", service, d.reason,
                      mf->scaling.cooldown_seconds);
        }
        /* keep the rule states for service-show (a flat copy) */
        keep = g_malloc0(sizeof(ScalingDecision) +
                         sizeof(ScalingRuleState) * MAX(d.n_rules, 1));
        keep->from = d.from;
        keep->to = d.to;
        keep->in_cooldown = d.in_cooldown;
        keep->n_rules = d.n_rules;
        keep->rules = (ScalingRuleState *)(keep + 1);
        memcpy(keep->rules, d.rules, sizeof(ScalingRuleState) * d.n_rules);
        g_hash_table_insert(m->decisions, g_strdup(service), keep);
        scaling_decision_clear(&d);
    }
    sqlite3_finalize(st);
}

JsonArray *
mscale_rules_status(Manager *m, const char *service, const Manifest *mf)
{
    JsonArray *arr = json_array_new();
    ScalingDecision *d = g_hash_table_lookup(m->decisions, service);

    for (guint i = 0; mf->scaling.rules && i < mf->scaling.rules->len; i++) {
        const ManifestRule *r = mf->scaling.rules->pdata[i];
        JsonObject *o = json_object_new();
        g_autofree char *text = g_strdup_printf(
            "%s %s %g for %us: %s %u", manifest_metric_name(r->metric),
            r->above ? "above" : "below", r->threshold, r->for_seconds,
            r->add ? "add" : "remove", r->step);

        json_object_set_int_member(o, "rule", i + 1);
        json_object_set_string_member(o, "text", text);
        if (d && i < d->n_rules && !isnan(d->rules[i].value)) {
            json_object_set_double_member(o, "value", d->rules[i].value);
            json_object_set_boolean_member(o, "holds", d->rules[i].holds);
            /* holding but not yet long enough: pending */
            json_object_set_boolean_member(
                o, "pending", d->rules[i].holds && !d->rules[i].fires);
            json_object_set_boolean_member(o, "fires", d->rules[i].fires);
            if (!isnan(d->rules[i].held_since))
                json_object_set_double_member(o, "held_since",
                                              d->rules[i].held_since);
        } else {
            json_object_set_null_member(o, "value"); /* no data */
            json_object_set_boolean_member(o, "holds", FALSE);
            json_object_set_boolean_member(o, "pending", FALSE);
            json_object_set_boolean_member(o, "fires", FALSE);
        }
        json_array_add_object_element(arr, o);
    }
    return arr;
}
