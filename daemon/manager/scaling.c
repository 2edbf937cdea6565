/*
 * scaling.c: the auto-scaling rule engine (see scaling.h).
 */
#include "scaling.h"

#include <string.h>

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
