/*
 * rollout.h: what a service's clone rows should become next — a pure
 * function of the rows, their states and the manifest's bounds, so that
 * it is tested without a site (tests/unit/test-rollout.c).
 *
 * A service's clones are rows (index, generation).  Rows of the
 * service's current generation are "new", the others "old".  With no old
 * row the service is steady: rows are added at the lowest free indexes
 * up to the desired count and removed from the highest index down.  With
 * old rows a rolling replacement runs, one reconciliation pass at a time:
 *
 *   - an old row that is not placed or failed is removed at once (it
 *     serves nothing); one placed but not seen running (a report that
 *     missed it, a pause) is kept, not counted, until every new row runs;
 *   - a running old row is removed while more than
 *     desired - max_unavailable clones (old and new) run;
 *   - once desired new rows run, every old row goes;
 *   - new rows are added while fewer than desired exist and the rows
 *     number less than desired + max_surge;
 *   - a new row that failed stops it all (FAILED): nothing is added or
 *     removed, so the old clones keep running until a rollback or a new
 *     submit changes the current generation.
 *
 * A new row takes the lowest index below index_limit (the manifest's
 * max: agents refuse others) that no row holds and that is not busy (a
 * clone of that name still going away somewhere: the same domain name
 * cannot be defined twice on one libvirt).  With none free the step
 * waits (BLOCKED while nothing else can be done).
 *
 * Running during the replacement never drops below desired -
 * max_unavailable because of it: a running old row goes only when the
 * clones that run without it are still enough.  (A clone that stops on
 * its own is outside this promise.)  Removed rows' domains are shut down
 * by the agents afterwards, so for a while more domains may exist than
 * desired + max_surge rows; they are not counted as rows.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

typedef enum {
    ROLLOUT_CLONE_ABSENT,  /* not placed on a host (none yet, or lost) */
    ROLLOUT_CLONE_WAITING, /* placed, being created or booting, or not in
                              its host's last report */
    ROLLOUT_CLONE_RUNNING,
    ROLLOUT_CLONE_FAILED, /* its create failed, or it crashed or stopped */
} RolloutCloneState;

typedef struct {
    guint index;
    bool current; /* of the service's current generation */
    RolloutCloneState state;
} RolloutClone;

typedef struct {
    guint desired;
    guint max_unavailable;
    guint max_surge;
    guint index_limit; /* new indexes are below it */
    const guint *busy; /* indexes that may not be taken yet */
    guint n_busy;
} RolloutLimits;

typedef enum {
    ROLLOUT_STEADY,  /* every row of the current generation */
    ROLLOUT_ROLLING, /* replacing */
    ROLLOUT_BLOCKED, /* replacing, and no step possible now */
    ROLLOUT_FAILED,  /* a new clone failed: no step until the generation
                        changes */
} RolloutStatus;

typedef struct {
    RolloutStatus status;
    GArray *create; /* of guint: indexes to add, of the current generation */
    GArray *remove; /* of guint: indexes of rows to remove */
    /* counts before the step */
    guint old;     /* old rows */
    guint updated; /* new rows */
    guint updated_running;
    guint running; /* old and new */
} RolloutPlan;

/*
 * rollout_decide: the next step for @n_clones rows @clones (any order,
 * distinct indexes) under @limits, in *@ret_plan (its arrays created
 * here; free with rollout_plan_clear).  Pure; thread-safe.
 */
void rollout_decide(const RolloutClone *clones, guint n_clones,
                    const RolloutLimits *limits, RolloutPlan *ret_plan);

/* rollout_plan_clear: free the arrays of @plan; accepts a cleared plan */
void rollout_plan_clear(RolloutPlan *plan);

/* rollout_status_name: "steady", "rolling", "blocked", "failed" */
const char *rollout_status_name(RolloutStatus status);
