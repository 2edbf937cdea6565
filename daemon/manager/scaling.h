/*
 * scaling.h: the auto-scaling rule engine — a pure function of the
 * manifest's rules, the service's metric history, the clock and the
 * current count (docs/scaling.md), so that it is tested with an injected
 * clock.
 *
 * A metric history holds one series per metric of the service as a whole
 * (requests per running clone per minute; mean CPU utilization 0..1; mean
 * fraction of guest memory in use 0..1), sampled at each evaluation, NAN
 * when there is no data.
 *
 * A rule's condition holds at an instant when the sample there is on the
 * rule's side of its threshold (strictly above, or strictly below).  It
 * *fires* when its condition held at every sample of the last `for`
 * seconds, and the samples cover that window (the first is at least `for`
 * seconds old; with for = 0, the latest sample alone).  A remove rule
 * must hold over max(for, stabilization) instead.  Samples older than
 * SCALING_STALE_S before now do not count as current: a rule on a metric
 * without fresh data never fires.
 *
 * Then: scale-up wins when rules disagree (the largest add step), else the
 * largest remove step; the result is clamped to [min, max]; no action when
 * the clamped count is the current one, or before the cooldown ends.
 */
#pragma once

#include <math.h>
#include <glib.h>

#include "manifest.h"

#define SCALING_METRICS   3
#define SCALING_STALE_S   120.0
#define SCALING_HISTORY_S 3600.0 /* samples older than this are dropped */

typedef struct {
    double time;  /* seconds (any epoch, the same as the clock's) */
    double value; /* NAN: no data */
} ScalingSample;

typedef struct {
    GArray *series[SCALING_METRICS]; /* of ScalingSample, oldest first */
} ScalingHistory;

ScalingHistory *scaling_history_new(void);
void scaling_history_free(ScalingHistory *h);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ScalingHistory, scaling_history_free)

/* scaling_history_add: append a sample (times must not go back); drops
 * samples older than SCALING_HISTORY_S before @time */
void scaling_history_add(ScalingHistory *h, ManifestMetric metric, double time,
                         double value);

/* the latest sample of @metric, or NULL */
const ScalingSample *scaling_history_latest(const ScalingHistory *h,
                                            ManifestMetric metric);

typedef struct {
    double value;      /* the latest value (NAN: no data) */
    bool holds;        /* the condition holds now */
    bool fires;        /* ... and has held long enough */
    double held_since; /* when the current run of holding began (or NAN) */
} ScalingRuleState;

typedef struct {
    guint from, to;          /* to == from: no action */
    int rule;                /* the rule that decided, or -1 */
    bool in_cooldown;        /* a rule fired but the cooldown blocks it */
    char *reason;            /* a sentence for the event log */
    ScalingRuleState *rules; /* one per rule of the manifest */
    guint n_rules;
} ScalingDecision;

void scaling_decision_clear(ScalingDecision *d);

/*
 * scaling_evaluate: what to do now, for a service whose manifest is @m,
 * with @current clones desired, at time @now, with @cooldown_until (0:
 * none) from the last action.
 */
void scaling_evaluate(const Manifest *m, const ScalingHistory *h, guint current,
                      double now, double cooldown_until, ScalingDecision *out);
