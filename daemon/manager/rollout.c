/*
 * rollout.c: the rolling replacement's decision (rollout.h has the rules).
 *
 * Invariants of every plan rollout_decide() returns:
 *   1. No index is both created and removed; no created index is held by
 *      a row, busy, removed in the same step, or at or above index_limit.
 *   2. A FAILED plan neither creates nor removes.
 *   3. In a replacement, the running rows left after the removals are at
 *      least min(running before, desired - max_unavailable).
 *   4. In a replacement, rows after the step <= max(rows before - removed,
 *      desired + max_surge).
 */
#include "rollout.h"

/* Rows: the rows of one decision, highest index first (sorted once), and
 * which of them the plan removes: each helper is one walk, so that a
 * decision is O(n log n), not a walk per row removed (a replacement of
 * 1,000 clones removed its last old rows in ~10^9 steps) */
typedef struct {
    const RolloutClone *clones;
    guint n;
    guint *order;  /* positions in clones, highest index first */
    bool *removed; /* by position */
} Rows;

static int
by_index_down(gconstpointer a, gconstpointer b, gpointer data)
{
    const RolloutClone *clones = data;
    guint x = clones[*(const guint *)a].index;
    guint y = clones[*(const guint *)b].index;

    return x < y ? 1 : x > y ? -1 : 0;
}

static void
rows_init(Rows *rows, const RolloutClone *clones, guint n)
{
    rows->clones = clones;
    rows->n = n;
    rows->order = g_new(guint, MAX(n, 1));
    rows->removed = g_new0(bool, MAX(n, 1));
    for (guint i = 0; i < n; i++)
        rows->order[i] = i;
    g_qsort_with_data(rows->order, (gint)n, sizeof(guint), by_index_down,
                      (gpointer)clones);
}

static void
rows_clear(Rows *rows)
{
    g_free(rows->order);
    g_free(rows->removed);
}

/* add_free: up to @count of the lowest indexes free for a new row
 * (invariant 1) to plan->create: not held by a row (removed ones
 * included), not busy */
static void
add_free(const Rows *rows, const RolloutLimits *l, RolloutPlan *plan,
         guint count)
{
    g_autofree bool *taken = g_new0(bool, MAX(l->index_limit, 1));

    for (guint i = 0; i < rows->n; i++) {
        if (rows->clones[i].index < l->index_limit)
            taken[rows->clones[i].index] = true;
    }
    for (guint i = 0; i < l->n_busy; i++) {
        if (l->busy[i] < l->index_limit)
            taken[l->busy[i]] = true;
    }
    for (guint i = 0; i < l->index_limit && plan->create->len < count; i++) {
        if (!taken[i])
            g_array_append_val(plan->create, i);
    }
}

/* remove_highest: up to @count rows matching @current and (unless
 * @any_state) @state, highest index first, to plan->remove */
static guint
remove_highest(Rows *rows, RolloutPlan *plan, bool current, bool any_state,
               RolloutCloneState state, guint count)
{
    guint done = 0;

    for (guint k = 0; k < rows->n && done < count; k++) {
        guint i = rows->order[k];
        const RolloutClone *c = &rows->clones[i];

        if (rows->removed[i] || c->current != current ||
            (!any_state && c->state != state))
            continue;
        rows->removed[i] = true;
        g_array_append_val(plan->remove, c->index);
        done++;
    }
    return done;
}

static void
decide_steady(Rows *rows, const RolloutLimits *l, RolloutPlan *plan)
{
    plan->status = ROLLOUT_STEADY;
    if (plan->updated > l->desired)
        remove_highest(rows, plan, true, true, 0, plan->updated - l->desired);
    else if (plan->updated < l->desired)
        add_free(rows, l, plan, l->desired - plan->updated);
}

static void
decide_rolling(Rows *rows, const RolloutLimits *l, RolloutPlan *plan)
{
    guint floor = l->desired - MIN(l->max_unavailable, l->desired);
    guint old_running = plan->running - plan->updated_running;
    guint removed, left, kept_new, want, room;

    plan->status = ROLLOUT_ROLLING;
    /* desired shrank during the replacement: new rows beyond it go */
    if (plan->updated > l->desired)
        remove_highest(rows, plan, true, true, 0, plan->updated - l->desired);
    kept_new = MIN(plan->updated, l->desired);
    /* old rows that serve nothing, then running ones above the floor
     * (invariant 3) */
    remove_highest(rows, plan, false, false, ROLLOUT_CLONE_ABSENT, G_MAXUINT);
    remove_highest(rows, plan, false, false, ROLLOUT_CLONE_FAILED, G_MAXUINT);
    if (plan->running > floor)
        remove_highest(rows, plan, false, false, ROLLOUT_CLONE_RUNNING,
                       MIN(plan->running - floor, old_running));
    if (plan->updated_running >= l->desired) /* the new ones all run */
        remove_highest(rows, plan, false, true, 0, G_MAXUINT);
    removed = plan->remove->len;
    left = plan->old + plan->updated - removed;
    want = l->desired - kept_new;
    room =
        l->desired + l->max_surge > left ? l->desired + l->max_surge - left : 0;
    add_free(rows, l, plan, MIN(want, room));
    if (plan->create->len == 0 && removed == 0 && want > 0 && room > 0)
        plan->status = ROLLOUT_BLOCKED; /* no free index */
}

void
rollout_decide(const RolloutClone *clones, guint n_clones,
               const RolloutLimits *limits, RolloutPlan *ret_plan)
{
    bool failed = false;
    Rows rows;

    *ret_plan = (RolloutPlan){0};
    ret_plan->create = g_array_new(FALSE, FALSE, sizeof(guint));
    ret_plan->remove = g_array_new(FALSE, FALSE, sizeof(guint));
    for (guint i = 0; i < n_clones; i++) {
        const RolloutClone *c = &clones[i];
        bool running = c->state == ROLLOUT_CLONE_RUNNING;

        if (c->current) {
            ret_plan->updated++;
            ret_plan->updated_running += running;
            failed = failed || c->state == ROLLOUT_CLONE_FAILED;
        } else {
            ret_plan->old++;
        }
        ret_plan->running += running;
    }
    rows_init(&rows, clones, n_clones);
    if (ret_plan->old == 0)
        decide_steady(&rows, limits, ret_plan);
    else if (failed)
        ret_plan->status = ROLLOUT_FAILED; /* invariant 2 */
    else
        decide_rolling(&rows, limits, ret_plan);
    rows_clear(&rows);
}

void
rollout_plan_clear(RolloutPlan *plan)
{
    g_clear_pointer(&plan->create, g_array_unref);
    g_clear_pointer(&plan->remove, g_array_unref);
}

const char *
rollout_status_name(RolloutStatus status)
{
    switch (status) {
    case ROLLOUT_STEADY:
        return "steady";
    case ROLLOUT_ROLLING:
        return "rolling";
    case ROLLOUT_BLOCKED:
        return "blocked";
    case ROLLOUT_FAILED:
        return "failed";
    }
    return "unknown";
}
