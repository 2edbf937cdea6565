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

static bool
held(const RolloutClone *clones, guint n, guint index)
{
    for (guint i = 0; i < n; i++) {
        if (clones[i].index == index)
            return true;
    }
    return false;
}

static bool
in_array(const guint *v, guint n, guint index)
{
    for (guint i = 0; i < n; i++) {
        if (v[i] == index)
            return true;
    }
    return false;
}

/* add_free: up to @count of the lowest indexes free for a new row
 * (invariant 1) to plan->create */
static void
add_free(const RolloutClone *clones, guint n, const RolloutLimits *l,
         RolloutPlan *plan, guint count)
{
    for (guint i = 0; i < l->index_limit && plan->create->len < count; i++) {
        if (held(clones, n, i) || in_array(l->busy, l->n_busy, i) ||
            in_array((guint *)plan->remove->data, plan->remove->len, i))
            continue;
        g_array_append_val(plan->create, i);
    }
}

/* remove_highest: up to @count rows matching @current and (unless
 * @any_state) @state, highest index first, to plan->remove */
static guint
remove_highest(const RolloutClone *clones, guint n, RolloutPlan *plan,
               bool current, bool any_state, RolloutCloneState state,
               guint count)
{
    guint done = 0;

    while (done < count) {
        const RolloutClone *best = NULL;

        for (guint i = 0; i < n; i++) {
            const RolloutClone *c = &clones[i];

            if (c->current != current || (!any_state && c->state != state) ||
                in_array((guint *)plan->remove->data, plan->remove->len,
                         c->index))
                continue;
            if (!best || c->index > best->index)
                best = c;
        }
        if (!best)
            break;
        g_array_append_val(plan->remove, best->index);
        done++;
    }
    return done;
}

static void
decide_steady(const RolloutClone *clones, guint n, const RolloutLimits *l,
              RolloutPlan *plan)
{
    plan->status = ROLLOUT_STEADY;
    if (plan->updated > l->desired)
        remove_highest(clones, n, plan, true, true, 0,
                       plan->updated - l->desired);
    else if (plan->updated < l->desired)
        add_free(clones, n, l, plan, l->desired - plan->updated);
}

static void
decide_rolling(const RolloutClone *clones, guint n, const RolloutLimits *l,
               RolloutPlan *plan)
{
    guint floor = l->desired - MIN(l->max_unavailable, l->desired);
    guint old_running = plan->running - plan->updated_running;
    guint removed, rows, kept_new, want, room;

    plan->status = ROLLOUT_ROLLING;
    /* desired shrank during the replacement: new rows beyond it go */
    if (plan->updated > l->desired)
        remove_highest(clones, n, plan, true, true, 0,
                       plan->updated - l->desired);
    kept_new = MIN(plan->updated, l->desired);
    /* old rows that serve nothing, then running ones above the floor
     * (invariant 3) */
    remove_highest(clones, n, plan, false, false, ROLLOUT_CLONE_ABSENT,
                   G_MAXUINT);
    remove_highest(clones, n, plan, false, false, ROLLOUT_CLONE_FAILED,
                   G_MAXUINT);
    if (plan->running > floor)
        remove_highest(clones, n, plan, false, false, ROLLOUT_CLONE_RUNNING,
                       MIN(plan->running - floor, old_running));
    if (plan->updated_running >= l->desired) /* the new ones all run */
        remove_highest(clones, n, plan, false, true, 0, G_MAXUINT);
    removed = plan->remove->len;
    rows = plan->old + plan->updated - removed;
    want = l->desired - kept_new;
    room =
        l->desired + l->max_surge > rows ? l->desired + l->max_surge - rows : 0;
    add_free(clones, n, l, plan, MIN(want, room));
    if (plan->create->len == 0 && removed == 0 && want > 0 && room > 0)
        plan->status = ROLLOUT_BLOCKED; /* no free index */
}

void
rollout_decide(const RolloutClone *clones, guint n_clones,
               const RolloutLimits *limits, RolloutPlan *ret_plan)
{
    bool failed = false;

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
    if (ret_plan->old == 0)
        decide_steady(clones, n_clones, limits, ret_plan);
    else if (failed)
        ret_plan->status = ROLLOUT_FAILED; /* invariant 2 */
    else
        decide_rolling(clones, n_clones, limits, ret_plan);
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
