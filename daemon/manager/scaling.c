/*
 * scaling.c: the auto-scaling rule engine (see scaling.h).
 */
#include "scaling.h"

#include <string.h>

#include "cron.h"

ScalingHistory *
scaling_history_new(void)
{
    ScalingHistory *h = g_new0(ScalingHistory, 1);

    for (int i = 0; i < SCALING_METRICS; i++)
        h->series[i] = g_array_new(FALSE, FALSE, sizeof(ScalingSample));
    return h;
}

void
scaling_history_free(ScalingHistory *h)
{
    if (!h)
        return;
    for (int i = 0; i < SCALING_METRICS; i++)
        g_array_unref(h->series[i]);
    g_free(h);
}

void
scaling_history_add(ScalingHistory *h, ManifestMetric metric, double time,
                    double value)
{
    GArray *s = h->series[metric];
    ScalingSample sample = {time, value};
    guint drop = 0;

    if (s->len && g_array_index(s, ScalingSample, s->len - 1).time > time)
        return; /* the clock went back: ignore */
    g_array_append_val(s, sample);
    while (drop < s->len && g_array_index(s, ScalingSample, drop).time <
                                time - SCALING_HISTORY_S)
        drop++;
    if (drop)
        g_array_remove_range(s, 0, drop);
}

const ScalingSample *
scaling_history_latest(const ScalingHistory *h, ManifestMetric metric)
{
    GArray *s = h->series[metric];

    return s->len ? &g_array_index(s, ScalingSample, s->len - 1) : NULL;
}

void
scaling_decision_clear(ScalingDecision *d)
{
    g_free(d->reason);
    g_free(d->rules);
    memset(d, 0, sizeof(*d));
}

static bool
condition(const ManifestRule *r, double v)
{
    if (isnan(v))
        return false;
    return r->above ? v > r->threshold : v < r->threshold;
}

/* evaluate one rule over @window seconds */
static void
rule_state(const ManifestRule *r, const ScalingHistory *h, double now,
           double window, ScalingRuleState *st)
{
    GArray *s = h->series[r->metric];
    const ScalingSample *latest =
        s->len ? &g_array_index(s, ScalingSample, s->len - 1) : NULL;
    gint i;

    st->value = NAN;
    st->held_since = NAN;
    st->holds = false;
    st->fires = false;
    if (!latest || latest->time < now - SCALING_STALE_S)
        return; /* no fresh data: never fires */
    st->value = latest->value;
    st->holds = condition(r, latest->value);
    if (!st->holds)
        return;
    /* walk back while the condition holds */
    for (i = (gint)s->len - 1; i >= 0; i--) {
        const ScalingSample *x = &g_array_index(s, ScalingSample, i);

        if (!condition(r, x->value))
            break;
        st->held_since = x->time;
    }
    st->fires = now - st->held_since >= window;
}

static const char *
metric_unit(ManifestMetric m)
{
    return m == MANIFEST_METRIC_REQUESTS ? " requests/clone/min" : "";
}

void
scaling_evaluate(const Manifest *m, const ScalingHistory *h, guint current,
                 double now, double cooldown_until, ScalingDecision *out)
{
    GPtrArray *rules = m->scaling.rules;
    guint n = rules ? rules->len : 0;
    int best_add = -1, best_remove = -1;
    int chosen;
    const ManifestRule *r;
    guint target;

    memset(out, 0, sizeof(*out));
    out->from = out->to = current;
    out->rule = -1;
    out->n_rules = n;
    out->rules = g_new0(ScalingRuleState, MAX(n, 1));
    for (guint i = 0; i < n; i++) {
        const ManifestRule *ri = rules->pdata[i];
        double window =
            ri->add ? ri->for_seconds
                    : MAX(ri->for_seconds, m->scaling.stabilization_seconds);

        rule_state(ri, h, now, window, &out->rules[i]);
        if (!out->rules[i].fires)
            continue;
        if (ri->add) {
            if (best_add < 0 ||
                ri->step > ((ManifestRule *)rules->pdata[best_add])->step)
                best_add = (int)i;
        } else if (best_remove < 0 ||
                   ri->step >
                       ((ManifestRule *)rules->pdata[best_remove])->step) {
            best_remove = (int)i;
        }
    }
    chosen = best_add >= 0 ? best_add : best_remove; /* scale-up wins */
    if (chosen < 0)
        return;
    r = rules->pdata[chosen];
    if (r->add)
        target = MIN(current + r->step, m->scaling.max);
    else
        target = current > r->step ? current - r->step : 0;
    target = CLAMP(target, m->scaling.min, m->scaling.max);
    if (target == current)
        return; /* already at the bound */
    if (now < cooldown_until) {
        out->in_cooldown = true;
        out->reason = g_strdup_printf(
            "rule %d (%s %s %g) fires at %g%s, but the cooldown lasts %.0f s "
            "more",
            chosen + 1, manifest_metric_name(r->metric),
            r->above ? "above" : "below", r->threshold,
            out->rules[chosen].value, metric_unit(r->metric),
            cooldown_until - now);
        return;
    }
    out->rule = chosen;
    out->to = target;
    out->reason = g_strdup_printf(
        "rule %d (%s %s %g for %u s) fired at %g%s: %u -> %u clones%s",
        chosen + 1, manifest_metric_name(r->metric),
        r->above ? "above" : "below", r->threshold,
        r->add ? r->for_seconds
               : MAX(r->for_seconds, m->scaling.stabilization_seconds),
        out->rules[chosen].value, metric_unit(r->metric), current, target,
        best_add >= 0 && best_remove >= 0 ? " (scale-up wins over rule "
                                            "disagreeing)"
                                          : "");
}

/* ---- scheduled policies ------------------------------------------------ */

/* the times a schedule accepts: beyond them there is no next occurrence */
#define SCHEDULE_TIME_MAX_S 1e12

static void
step_clear(gpointer p)
{
    ScalingScheduleStep *st = p;

    g_free(st->reason);
}

GArray *
scaling_schedule_steps_new(void)
{
    GArray *a = g_array_new(FALSE, TRUE, sizeof(ScalingScheduleStep));

    g_array_set_clear_func(a, step_clear);
    return a;
}

double
scaling_schedule_next(const ManifestSchedule *s, double after)
{
    gint64 a, next;

    if (!(after >= -SCHEDULE_TIME_MAX_S && after <= SCHEDULE_TIME_MAX_S))
        return INFINITY; /* also NAN */
    a = (gint64)after;   /* floor, without libm */
    if ((double)a > after)
        a--;
    if (s->has_at)
        return s->at > a ? (double)s->at : INFINITY;
    next = cron_next(&s->parsed, s->tz, a);
    return next < 0 ? INFINITY : (double)next;
}

/* the count after schedule @s acts on @current, clamped; *ret_clamped:
 * the bound cut it */
static guint
schedule_target(const Manifest *m, const ManifestSchedule *s, guint current,
                bool *ret_clamped)
{
    guint64 n = s->amount, target;

    if (s->percent) /* rounded up: at least one clone */
        n = MAX(((guint64)current * s->amount + 99) / 100, 1);
    switch (s->action) {
    case MANIFEST_SCHEDULE_SET:
        target = s->amount;
        break;
    case MANIFEST_SCHEDULE_ADD:
        target = current + n;
        break;
    case MANIFEST_SCHEDULE_REMOVE:
    default:
        target = current > n ? current - n : 0;
        break;
    }
    *ret_clamped = target < m->scaling.min || target > m->scaling.max;
    return (guint)CLAMP(target, m->scaling.min, m->scaling.max);
}

/* "2026-03-29T03:30:00 Europe/Berlin": @t in the schedule's wall clock */
static char *
schedule_time(const ManifestSchedule *s, double t)
{
    g_autofree char *wall = cron_wall_format(
        s->tz ? cron_utc_to_wall(s->tz, (gint64)t) : (gint64)t);

    return g_strdup_printf("%s %s", wall, s->timezone ? s->timezone : "UTC");
}

static void
step_fired(const Manifest *m, guint i, double due, guint current, double now,
           ScalingScheduleStep *st)
{
    const ManifestSchedule *s = m->scaling.schedules->pdata[i];
    g_autofree char *text = manifest_schedule_text(s);
    g_autofree char *when = schedule_time(s, due);
    g_autofree char *late = NULL;
    bool clamped = false;

    st->schedule = i;
    st->outcome = SCALING_SCHEDULE_FIRED;
    st->due = due;
    st->from = current;
    st->to = schedule_target(m, s, current, &clamped);
    if (now - due >= 60)
        late = g_strdup_printf(", %.0f s late (the manager was not running)",
                               now - due);
    if (st->to == st->from)
        st->reason =
            g_strdup_printf("schedule %u (%s) due at %s%s: already %u clones%s",
                            i + 1, text, when, late ? late : "", current,
                            clamped ? " (at a bound of [min, max])" : "");
    else
        st->reason =
            g_strdup_printf("schedule %u (%s) due at %s%s: %u -> %u clones%s",
                            i + 1, text, when, late ? late : "", st->from,
                            st->to, clamped ? " (clamped to [min, max])" : "");
}

static gint
fired_cmp(gconstpointer a, gconstpointer b)
{
    const ScalingScheduleStep *x = a, *y = b;

    if (x->due != y->due)
        return x->due < y->due ? -1 : 1;
    return (x->schedule > y->schedule) - (x->schedule < y->schedule);
}

guint
scaling_schedules_evaluate(const Manifest *m, const double *handled,
                           double since_new, guint current, double now,
                           GArray *steps)
{
    GPtrArray *schedules = m->scaling.schedules;
    g_autoptr(GArray) fired =
        g_array_new(FALSE, TRUE, sizeof(ScalingScheduleStep));

    for (guint i = 0; schedules && i < schedules->len; i++) {
        const ManifestSchedule *s = schedules->pdata[i];
        ScalingScheduleStep st = {.schedule = i, .due = NAN};
        bool is_new = isnan(handled[i]);
        double from = !is_new ? handled[i] : isnan(since_new) ? now : since_new;
        double due, missed;

        due = scaling_schedule_next(s, MAX(from, now - s->grace_seconds));
        if (due <= now) {
            st.due = due; /* applied below, in order */
            g_array_append_val(fired, st);
            continue;
        }
        if (is_new) {
            st.outcome = SCALING_SCHEDULE_ARMED;
            g_array_append_val(steps, st);
            continue;
        }
        missed = scaling_schedule_next(s, from);
        if (missed <= now) {
            g_autofree char *text = manifest_schedule_text(s);
            g_autofree char *when = schedule_time(s, missed);

            st.outcome = SCALING_SCHEDULE_MISSED;
            st.due = missed;
            st.from = st.to = current;
            st.reason = g_strdup_printf(
                "schedule %u (%s) was due at %s, more than its grace ago "
                "(the manager was not running): skipped",
                i + 1, text, when);
            g_array_append_val(steps, st);
        }
    }
    g_array_sort(fired, fired_cmp);
    for (guint k = 0; k < fired->len; k++) {
        ScalingScheduleStep st = g_array_index(fired, ScalingScheduleStep, k);

        step_fired(m, st.schedule, st.due, current, now, &st);
        current = st.to;
        g_array_append_val(steps, st);
    }
    return current;
}
