/*
 * test-rollout.c: the rolling replacement's decision
 * (daemon/manager/rollout.c): single steps, and whole replacements
 * simulated step by step with clones that boot a few steps after they are
 * created, checking the bounds at every step.
 */
#include <criterion/criterion.h>

#include "rollout.h"

static bool
has(GArray *a, guint index)
{
    for (guint i = 0; i < a->len; i++) {
        if (g_array_index(a, guint, i) == index)
            return true;
    }
    return false;
}

#define OLD(i)                                                         \
    {                                                                  \
        .index = (i), .current = false, .state = ROLLOUT_CLONE_RUNNING \
    }
#define NEW(i)                                                        \
    {                                                                 \
        .index = (i), .current = true, .state = ROLLOUT_CLONE_RUNNING \
    }
#define WAIT(i)                                                       \
    {                                                                 \
        .index = (i), .current = true, .state = ROLLOUT_CLONE_WAITING \
    }

Test(rollout, steady_adds_the_lowest_free_indexes_up_to_desired)
{
    RolloutClone c[] = {NEW(0), NEW(2)};
    RolloutLimits l = {.desired = 4, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_expect_eq(p.status, ROLLOUT_STEADY);
    cr_assert_eq(p.create->len, 2u);
    cr_expect(has(p.create, 1) && has(p.create, 3));
    cr_expect_eq(p.remove->len, 0u);
    rollout_plan_clear(&p);
}

Test(rollout, steady_removes_from_the_highest_index_down)
{
    RolloutClone c[] = {NEW(0), NEW(1), NEW(2), NEW(3)};
    RolloutLimits l = {.desired = 1, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_assert_eq(p.remove->len, 3u);
    cr_expect(has(p.remove, 1) && has(p.remove, 2) && has(p.remove, 3));
    cr_expect_eq(p.create->len, 0u);
    rollout_plan_clear(&p);
}

Test(rollout, a_first_step_adds_one_surge_clone_and_removes_nothing)
{
    RolloutClone c[] = {OLD(0), OLD(1), OLD(2)};
    RolloutLimits l = {.desired = 3, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_expect_eq(p.status, ROLLOUT_ROLLING);
    cr_assert_eq(p.create->len, 1u);
    cr_expect_eq(g_array_index(p.create, guint, 0), 3u);
    cr_expect_eq(p.remove->len, 0u, "nothing goes before its successor runs");
    rollout_plan_clear(&p);
}

Test(rollout, an_old_clone_goes_once_its_successor_runs)
{
    RolloutClone c[] = {OLD(0), OLD(1), OLD(2), NEW(3)};
    RolloutLimits l = {.desired = 3, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_assert_eq(p.remove->len, 1u);
    cr_expect_eq(g_array_index(p.remove, guint, 0), 2u);
    cr_assert_eq(p.create->len, 1u);
    cr_expect_eq(g_array_index(p.create, guint, 0), 4u,
                 "not the index removed in the same step");
    rollout_plan_clear(&p);
}

Test(rollout, waits_while_the_new_clone_boots)
{
    RolloutClone c[] = {OLD(0), OLD(1), OLD(2), WAIT(3)};
    RolloutLimits l = {.desired = 3, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_expect_eq(p.status, ROLLOUT_ROLLING);
    cr_expect_eq(p.create->len, 0u);
    cr_expect_eq(p.remove->len, 0u);
    rollout_plan_clear(&p);
}

Test(rollout, max_unavailable_lets_an_old_clone_go_first)
{
    RolloutClone c[] = {OLD(0), OLD(1), OLD(2)};
    RolloutLimits l = {
        .desired = 3, .max_unavailable = 1, .max_surge = 0, .index_limit = 3};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_assert_eq(p.remove->len, 1u);
    cr_expect_eq(p.create->len, 0u,
                 "index 2 is still taken by the clone going away");
    rollout_plan_clear(&p);
}

Test(rollout, a_failed_new_clone_stops_everything)
{
    RolloutClone c[] = {
        OLD(0),
        OLD(1),
        OLD(2),
        {.index = 3, .current = true, .state = ROLLOUT_CLONE_FAILED}};
    RolloutLimits l = {.desired = 3, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_expect_eq(p.status, ROLLOUT_FAILED);
    cr_expect_eq(p.create->len, 0u);
    cr_expect_eq(p.remove->len, 0u, "the old clones keep running");
    rollout_plan_clear(&p);
}

Test(rollout, after_a_rollback_the_failed_clones_go_and_the_old_stay)
{
    /* the old generation is current again; the failed one is old */
    RolloutClone c[] = {
        NEW(0),
        NEW(1),
        NEW(2),
        {.index = 3, .current = false, .state = ROLLOUT_CLONE_FAILED}};
    RolloutLimits l = {.desired = 3, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_assert_eq(p.remove->len, 1u);
    cr_expect_eq(g_array_index(p.remove, guint, 0), 3u);
    cr_expect_eq(p.create->len, 0u);
    rollout_plan_clear(&p);
}

Test(rollout, busy_indexes_and_the_limit_block_a_surge)
{
    RolloutClone c[] = {OLD(0), OLD(1), OLD(2)};
    guint busy[] = {3};
    RolloutLimits l = {.desired = 3,
                       .max_surge = 1,
                       .index_limit = 4,
                       .busy = busy,
                       .n_busy = 1};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_expect_eq(p.status, ROLLOUT_BLOCKED);
    cr_expect_eq(p.create->len, 0u);
    cr_expect_eq(p.remove->len, 0u);
    rollout_plan_clear(&p);
}

Test(rollout, an_old_clone_missing_from_a_report_stays_until_the_new_run)
{
    RolloutClone c[] = {
        {.index = 0, .current = false, .state = ROLLOUT_CLONE_WAITING},
        OLD(1),
        OLD(2),
        WAIT(3)};
    RolloutClone d[] = {
        {.index = 0, .current = false, .state = ROLLOUT_CLONE_WAITING},
        NEW(1),
        NEW(2),
        NEW(3)};
    RolloutLimits l = {.desired = 3, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_expect_eq(p.remove->len, 0u,
                 "a clone the last report missed may well run: kept");
    rollout_plan_clear(&p);
    rollout_decide(d, G_N_ELEMENTS(d), &l, &p);
    cr_assert_eq(p.remove->len, 1u, "once the new ones run, it goes");
    cr_expect_eq(g_array_index(p.remove, guint, 0), 0u);
    rollout_plan_clear(&p);
}

Test(rollout, old_clones_not_placed_go_at_once)
{
    RolloutClone c[] = {
        OLD(0),
        {.index = 1, .current = false, .state = ROLLOUT_CLONE_ABSENT},
        OLD(2)};
    RolloutLimits l = {.desired = 3, .max_surge = 1, .index_limit = 8};
    RolloutPlan p;

    rollout_decide(c, G_N_ELEMENTS(c), &l, &p);
    cr_assert_eq(p.remove->len, 1u);
    cr_expect_eq(g_array_index(p.remove, guint, 0), 1u);
    cr_expect_eq(p.create->len, 2u, "two rows, room for two more");
    rollout_plan_clear(&p);
}

/* ---- whole replacements, simulated ------------------------------------- */

typedef struct {
    guint index;
    bool current;
    guint age; /* steps since created; runs at BOOT_STEPS */
} SimClone;

#define BOOT_STEPS 3

/* simulate: replace @desired running old clones under @u, @s; every step
 * checks running >= desired - u and rows <= desired + s; returns the
 * steps taken */
static guint
simulate(guint desired, guint u, guint s, guint limit)
{
    g_autoptr(GArray) rows = g_array_new(FALSE, FALSE, sizeof(SimClone));
    guint steps = 0;

    for (guint i = 0; i < desired; i++) {
        SimClone c = {.index = i, .current = false, .age = BOOT_STEPS};
        g_array_append_val(rows, c);
    }
    for (;;) {
        g_autofree RolloutClone *view = g_new0(RolloutClone, rows->len + 1);
        RolloutLimits l = {.desired = desired,
                           .max_unavailable = u,
                           .max_surge = s,
                           .index_limit = limit};
        RolloutPlan p;
        guint running = 0;

        cr_assert_lt(steps, 200u, "no progress (%u/%u/%u)", desired, u, s);
        for (guint i = 0; i < rows->len; i++) {
            SimClone *c = &g_array_index(rows, SimClone, i);

            view[i].index = c->index;
            view[i].current = c->current;
            view[i].state = c->age >= BOOT_STEPS ? ROLLOUT_CLONE_RUNNING
                                                 : ROLLOUT_CLONE_WAITING;
            running += c->age >= BOOT_STEPS;
        }
        cr_assert_geq(running, desired - u, "step %u: %u running", steps,
                      running);
        cr_assert_leq(rows->len, desired + s, "step %u: %u rows", steps,
                      rows->len);
        rollout_decide(view, rows->len, &l, &p);
        if (p.status == ROLLOUT_STEADY && p.create->len == 0 &&
            p.remove->len == 0 && running == desired) {
            rollout_plan_clear(&p);
            break;
        }
        cr_assert_neq(p.status, ROLLOUT_FAILED);
        for (guint k = 0; k < p.remove->len; k++) {
            for (guint i = 0; i < rows->len; i++) {
                if (g_array_index(rows, SimClone, i).index ==
                    g_array_index(p.remove, guint, k)) {
                    g_array_remove_index(rows, i);
                    break;
                }
            }
        }
        for (guint i = 0; i < rows->len; i++)
            g_array_index(rows, SimClone, i).age++;
        for (guint k = 0; k < p.create->len; k++) {
            SimClone c = {.index = g_array_index(p.create, guint, k),
                          .current = true};
            cr_assert_lt(c.index, limit);
            g_array_append_val(rows, c);
        }
        rollout_plan_clear(&p);
        steps++;
    }
    for (guint i = 0; i < rows->len; i++)
        cr_expect(g_array_index(rows, SimClone, i).current);
    cr_expect_eq(rows->len, desired);
    return steps;
}

Test(rollout, replaces_every_clone_within_the_bounds)
{
    static const guint cases[][4] = {
        /* desired, max-unavailable, max-surge, index limit */
        {3, 0, 1, 8}, {3, 0, 2, 8},  {3, 1, 0, 3}, {3, 1, 1, 8},
        {1, 0, 1, 2}, {5, 2, 3, 16}, {4, 4, 0, 4}, {10, 0, 1, 11},
    };

    for (guint i = 0; i < G_N_ELEMENTS(cases); i++)
        simulate(cases[i][0], cases[i][1], cases[i][2], cases[i][3]);
}

Test(rollout, a_larger_surge_replaces_in_fewer_steps)
{
    cr_expect_lt(simulate(6, 0, 3, 12), simulate(6, 0, 1, 12));
}

/* the last step of a replacement of 1,000 clones: every old row goes,
 * highest index first, in one linear walk (it took ~10^9 steps when each
 * removal walked the rows and the removals: the pass's budget) */
Test(rollout, a_big_replacement_removes_every_old_row_highest_first,
     .timeout = 10)
{
    const guint n = 1000;
    g_autofree RolloutClone *c = g_new0(RolloutClone, 2 * n);
    RolloutLimits l = {.desired = n, .max_surge = 1, .index_limit = 2 * n};
    RolloutPlan p;

    for (guint i = 0; i < n; i++) {
        /* old rows at the even indexes, new ones at the odd, shuffled */
        c[2 * i] =
            (RolloutClone){2 * (n - 1 - i), false, ROLLOUT_CLONE_RUNNING};
        c[2 * i + 1] = (RolloutClone){2 * i + 1, true, ROLLOUT_CLONE_RUNNING};
    }
    for (guint rep = 0; rep < 20; rep++) {
        rollout_decide(c, 2 * n, &l, &p);
        cr_assert_eq(p.status, ROLLOUT_ROLLING);
        cr_assert_eq(p.remove->len, n);
        for (guint i = 0; i < n; i++)
            cr_assert_eq(g_array_index(p.remove, guint, i), 2 * (n - 1 - i));
        cr_assert_eq(p.create->len, 0u);
        rollout_plan_clear(&p);
    }
}
