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
 *
 * Scheduled policies (scaling_schedules_evaluate) are a second pure
 * function of the manifest, the clock, the count and, per schedule, the
 * time up to which its occurrences were handled (kept by the caller
 * across restarts).  An occurrence fires when it is the first one after
 * max(handled, now - grace) and is not after now: once, since the caller
 * then stores handled = now; at most once per evaluation however many
 * were missed; older ones are reported missed.  Not blocked by the
 * cooldown; the caller starts one after a change, so that metric rules
 * then work from the new count.
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

/* ---- scheduled policies ------------------------------------------------ */

typedef enum {
    SCALING_SCHEDULE_ARMED,  /* first seen: occurrences after now count */
    SCALING_SCHEDULE_FIRED,  /* an occurrence within its grace: applied */
    SCALING_SCHEDULE_MISSED, /* occurrences older than its grace only */
} ScalingScheduleOutcome;

typedef struct {
    guint schedule; /* index in the manifest's scaling.schedules */
    ScalingScheduleOutcome outcome;
    double due;     /* FIRED: the occurrence applied; MISSED: the first
                       * missed; ARMED: NAN */
    guint from, to; /* FIRED: the count before and after, clamped */
    char *reason;   /* FIRED and MISSED: a sentence for the event log */
} ScalingScheduleStep;

/* scaling_schedule_steps_new: an empty array of ScalingScheduleStep that
 * frees their reasons */
GArray *scaling_schedule_steps_new(void);

/*
 * scaling_schedule_next: the first occurrence of @s after @after (UTC
 * seconds), INFINITY when there is none.  Thread-safe.
 */
double scaling_schedule_next(const ManifestSchedule *s, double after);

/*
 * scaling_schedules_evaluate: the scheduled policies of @m at time @now,
 * for a service with @current clones desired.  @handled holds one value
 * per schedule (the manifest's order): the time up to which its
 * occurrences were handled, NAN for a schedule not seen before, whose
 * occurrences count from @since_new (NAN: from @now).
 *
 * Appends to @steps one step per schedule whose state changes: ARMED
 * (seen for the first time, nothing due) and MISSED ones, then the FIRED
 * ones in the order applied (by due time, then the manifest's order),
 * each from the count the one before left.  The caller records handled =
 * @now for every schedule with a step, in the same transaction as the
 * count it applies.  Returns the count after them all (@current when
 * none fired).  Pure.
 */
guint scaling_schedules_evaluate(const Manifest *m, const double *handled,
                                 double since_new, guint current, double now,
                                 GArray *steps);
