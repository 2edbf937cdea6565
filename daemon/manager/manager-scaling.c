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
 *
 * Scheduled policies (scaling_schedules_evaluate) come first in each
 * evaluation and need no metrics: they act whether or not hosts have
 * reported.  Their state, per service and schedule, is the time up to
 * which occurrences were handled (table schedules).
 *
 * Invariants:
 *   1. A service is not sampled, and its rules not applied, until every
 *      host with one of its clones has reported since the manager
 *      started: before, its running clones are not known, and a metric
 *      per running clone would be a lie (a false scale-up after each
 *      restart).
 *   2. Decisions are written in the pass's transaction: a pass rolled
 *      back decides again at the next.  A schedule's handled time is
 *      written with the count it set, so it fires once.
 */
#include "manager-private.h"

#include <math.h>
#include <string.h>

#include "scaling.h"

#define SCALING_EVAL_S   5.0
#define REQUEST_WINDOW_S 60.0

/*
 * The clock of scheduled policies is the real one, ahead by
 * SPORE_TEST_SCHEDULE_CLOCK_OFFSET seconds when that is set in spored's
 * environment: for tests only (docs/scaling.md), so that a test sees a
 * policy come due while spored was down without waiting for it.
 */
#define SCHEDULE_CLOCK_OFFSET_ENV   "SPORE_TEST_SCHEDULE_CLOCK_OFFSET"
#define SCHEDULE_CLOCK_OFFSET_MAX_S (400.0 * 86400)

static double
schedule_clock_offset(void)
{
    static gsize once = 0;
    static double offset = 0;

    if (g_once_init_enter(&once)) {
        const char *v = g_getenv(SCHEDULE_CLOCK_OFFSET_ENV);
        char *end = NULL;
        double d;

        if (v && *v) {
            d = g_ascii_strtod(v, &end);
            if (*end || !(d >= -SCHEDULE_CLOCK_OFFSET_MAX_S &&
                          d <= SCHEDULE_CLOCK_OFFSET_MAX_S)) {
                g_warning("%s='%s' is not a number of seconds within 400 "
                          "days, ignoring",
                          SCHEDULE_CLOCK_OFFSET_ENV, v);
            } else {
                offset = d;
                g_warning("%s=%s: scheduled policies run %.0f s ahead of "
                          "the clock (for tests only)",
                          SCHEDULE_CLOCK_OFFSET_ENV, v, d);
            }
        }
        g_once_init_leave(&once, 1);
    }
    return offset;
}

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
    schedule_clock_offset(); /* says so now if it is set */
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

bool
mscale_requests(Manager *m, const char *service, gint64 count, GError **error)
{
    /* in the database, so that a restarted manager still sees the window */
    return state_request_add(m->db, service, count, error);
}

/* clone_metrics: add reported clone @c's CPU and memory use to the sums */
static void
clone_metrics(Manager *m, const char *host, const char *name, JsonObject *c,
              double *cpu, guint *n_cpu, double *mem, guint *n_mem)
{
    g_autofree char *key = g_strdup_printf("%s/%s", host, name);
    CpuTrack *tr = g_hash_table_lookup(m->cpu, key);
    gint64 cur = json_util_get_int(c, "memory_kib", 0);
    gint64 usable = json_util_get_int(c, "memory_usable_kib", -1);
    gint64 unused = json_util_get_int(c, "memory_unused_kib", -1);

    if (tr && !isnan(tr->util)) {
        *cpu += tr->util;
        (*n_cpu)++;
    }
    if (cur > 0 && (usable >= 0 || unused >= 0)) {
        double free_kib = usable >= 0 ? usable : unused;

        *mem += CLAMP(1.0 - free_kib / (double)cur, 0.0, 1.0);
        (*n_mem)++;
    }
}

/*
 * sample: the service's metrics into its history.  *ret_known is false
 * (and nothing is sampled) while a host of one of its clones has not
 * reported since the manager started: its running clones would count as
 * none, and requests per clone would jump (invariant 1).
 */
static bool
sample(Manager *m, const char *service, gint64 generation, double now,
       ScalingHistory *h, bool *ret_known, GError **error)
{
    g_autoptr(GPtrArray) clones = state_clone_list(m->db, service, NULL, error);
    guint running = 0, n_cpu = 0, n_mem = 0;
    double cpu = 0, mem = 0;
    gint64 requests = 0;

    if (!clones)
        return false;
    *ret_known = false;
    for (guint i = 0; i < clones->len; i++) {
        CloneRow *row = clones->pdata[i];
        HostRuntime *rt =
            row->host ? g_hash_table_lookup(m->runtime, row->host) : NULL;
        g_autofree char *name = NULL;
        JsonObject *c;

        if (!row->host)
            continue;
        if (!rt || !rt->reported)
            return true; /* not known yet */
        name = g_strdup_printf("%s-%u", service, (guint)row->index);
        c = manager_reported_clone(m, row->host, name);
        if (!c || json_util_get_int(c, "generation", -1) != generation ||
            g_strcmp0(json_util_get_string(c, "state", NULL), "running") != 0)
            continue;
        running++;
        clone_metrics(m, row->host, name, c, &cpu, &n_cpu, &mem, &n_mem);
    }
    if (!state_request_sum(m->db, service, now - REQUEST_WINDOW_S, &requests,
                           error))
        return false;
    *ret_known = true;
    scaling_history_add(h, MANIFEST_METRIC_REQUESTS, now,
                        (double)requests / MAX(running, 1u) *
                            (60.0 / REQUEST_WINDOW_S));
    scaling_history_add(h, MANIFEST_METRIC_CPU, now, n_cpu ? cpu / n_cpu : NAN);
    scaling_history_add(h, MANIFEST_METRIC_MEMORY, now,
                        n_mem ? mem / n_mem : NAN);
    return true;
}

/* keep_decision: the rule states for service-show (a flat copy) */
static void
keep_decision(Manager *m, const char *service, const ScalingDecision *d)
{
    ScalingDecision *keep =
        g_malloc0(sizeof(ScalingDecision) +
                  sizeof(ScalingRuleState) * MAX(d->n_rules, 1));

    keep->from = d->from;
    keep->to = d->to;
    keep->in_cooldown = d->in_cooldown;
    keep->n_rules = d->n_rules;
    keep->rules = (ScalingRuleState *)(keep + 1);
    memcpy(keep->rules, d->rules, sizeof(ScalingRuleState) * d->n_rules);
    g_hash_table_insert(m->decisions, g_strdup(service), keep);
}

/* schedule_record: the outcome of one step: its handled time (always), an
 * event for a firing or a miss */
static bool
schedule_record(Manager *m, const char *service, const Manifest *mf,
                const ScalingScheduleStep *st, double now, GError **error)
{
    g_autofree char *key =
        manifest_schedule_text(mf->scaling.schedules->pdata[st->schedule]);

    if (!state_schedule_set_handled(m->db, service, key, now, error))
        return false;
    if (st->outcome == SCALING_SCHEDULE_MISSED)
        return manager_event(m, error, "schedule-missed", service, NULL,
                             "service %s: %s", service, st->reason);
    if (st->outcome != SCALING_SCHEDULE_FIRED)
        return true;
    if (st->to == st->from)
        return manager_event(m, error, "scheduled", service, NULL,
                             "service %s: %s", service, st->reason);
    return manager_event(m, error, "scheduled", service, NULL,
                         "service %s: %s; cooldown %u s", service, st->reason,
                         mf->scaling.cooldown_seconds);
}

/* schedule_prune: forget the state of schedules the manifest no longer
 * has, so that one added again later starts afresh */
static bool
schedule_prune(Manager *m, const char *service, const Manifest *mf,
               GHashTable *stored, GError **error)
{
    GHashTableIter it;
    gpointer key;

    for (guint i = 0; i < mf->scaling.schedules->len; i++) {
        g_autofree char *text =
            manifest_schedule_text(mf->scaling.schedules->pdata[i]);

        g_hash_table_remove(stored, text);
    }
    g_hash_table_iter_init(&it, stored);
    while (g_hash_table_iter_next(&it, &key, NULL)) {
        if (!state_schedule_remove(m->db, service, key, error))
            return false;
    }
    return true;
}

/*
 * apply_schedules: @svc's scheduled policies at @at, the schedules' clock
 * (docs/scaling.md): a change of the count sets it and starts the
 * cooldown from @now, in the pass's transaction together with each
 * schedule's handled time (invariant 2: so a schedule fires once, also
 * across a kill -9).  *desired and *cooldown_until are updated for the
 * rules evaluated after.
 */
static bool
apply_schedules(Manager *m, const ServiceRow *svc, const Manifest *mf,
                double at, double now, guint *desired, double *cooldown_until,
                GError **error)
{
    GPtrArray *schedules = mf->scaling.schedules;
    g_autoptr(GHashTable) stored =
        state_schedule_handled(m->db, svc->name, error);
    g_autoptr(GArray) steps = scaling_schedule_steps_new();
    g_autofree double *handled = g_new(double, MAX(schedules->len, 1));
    /* a schedule new since the last evaluation (just submitted) counts
     * occurrences from that evaluation on; after a start, from now */
    double since_new = m->last_scaling > 0 ? m->last_scaling + (at - now) : NAN;
    guint to;

    if (!stored)
        return false;
    for (guint i = 0; i < schedules->len; i++) {
        g_autofree char *key = manifest_schedule_text(schedules->pdata[i]);
        const double *h = g_hash_table_lookup(stored, key);

        handled[i] = h ? *h : NAN;
    }
    to =
        scaling_schedules_evaluate(mf, handled, since_new, *desired, at, steps);
    for (guint i = 0; i < steps->len; i++) {
        if (!schedule_record(m, svc->name, mf,
                             &g_array_index(steps, ScalingScheduleStep, i), at,
                             error))
            return false;
    }
    if (to != *desired) {
        *cooldown_until = now + mf->scaling.cooldown_seconds;
        if (!state_service_set_desired(m->db, svc->name, to, *cooldown_until,
                                       error))
            return false;
        *desired = to;
    }
    return schedule_prune(m, svc->name, mf, stored, error);
}

/* evaluate_service: apply @svc's schedules, then sample it and apply its
 * rules */
static bool
evaluate_service(Manager *m, const ServiceRow *svc, double now, GError **error)
{
    g_autoptr(GError) err = NULL;
    Manifest *mf = manager_manifest(m, svc->name, &err);
    ScalingHistory *h;
    ScalingDecision d;
    bool known = false, ok = true;
    guint desired = (guint)svc->desired;
    double cooldown_until = svc->cooldown_until;

    if (err) {
        g_propagate_error(error, g_steal_pointer(&err));
        return false;
    }
    if (!mf)
        return true;
    if (!apply_schedules(m, svc, mf, now + schedule_clock_offset(), now,
                         &desired, &cooldown_until, error))
        return false;
    if (!mf->scaling.rules || mf->scaling.rules->len == 0)
        return true;
    h = g_hash_table_lookup(m->histories, svc->name);
    if (!h) {
        h = scaling_history_new();
        g_hash_table_insert(m->histories, g_strdup(svc->name), h);
    }
    if (!sample(m, svc->name, svc->generation, now, h, &known, error))
        return false;
    if (!known)
        return true;
    scaling_evaluate(mf, h, desired, now, cooldown_until, &d);
    if (d.to != d.from)
        ok =
            state_service_set_desired(m->db, svc->name, d.to,
                                      now + mf->scaling.cooldown_seconds,
                                      error) &&
            manager_event(m, error, d.to > d.from ? "scaled-up" : "scaled-down",
                          svc->name, NULL, "service %s: %s; cooldown %u s",
                          svc->name, d.reason, mf->scaling.cooldown_seconds);
    if (ok)
        keep_decision(m, svc->name, &d);
    scaling_decision_clear(&d);
    return ok;
}

bool
mscale_evaluate(Manager *m, GError **error)
{
    double now = state_now();
    g_autoptr(GPtrArray) services = NULL;

    if (now - m->last_scaling < SCALING_EVAL_S)
        return true;
    if (!state_request_prune(m->db, now - REQUEST_WINDOW_S, error) ||
        !(services = state_service_list(m->db, error)))
        return false;
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *svc = services->pdata[i];

        if (!svc->deleting && !evaluate_service(m, svc, now, error))
            return false;
    }
    m->last_scaling = now;
    return true;
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
