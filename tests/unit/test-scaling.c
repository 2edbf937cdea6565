/*
 * test-scaling.c: the auto-scaling rule engine (daemon/manager/scaling.c), with an
 * injected clock: thresholds, for, cooldown, stabilization, clamping,
 * conflicting rules, missing data, a flapping metric, and a cooldown that
 * must hold across a restart of the manager.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "manifest.h"
#include "scaling.h"

static Manifest *
manifest(const char *scaling)
{
    g_autofree char *xml = g_strdup_printf(
        "<service xmlns=\"urn:spore:manifest:1\" name=\"web\">"
        "<image name=\"i\"><origin url=\"http://o/i.raw\"/></image>"
        "<vm><vcpus>1</vcpus><memory unit=\"MiB\">256</memory></vm>"
        "%s</service>",
        scaling);
    g_autoptr(GError) err = NULL;
    Manifest *m = manifest_parse_data(xml, strlen(xml), NULL, &err);

    cr_assert(m, "%s", err ? err->message : "");
    return m;
}

/* One evaluation; returns the new count (the current one: no action). */
static guint
eval(const Manifest *m, const ScalingHistory *h, guint current, double now,
     double cooldown_until, ScalingDecision *keep)
{
    ScalingDecision d;
    guint to;

    scaling_evaluate(m, h, current, now, cooldown_until, &d);
    to = d.to;
    if (keep)
        *keep = d;
    else
        scaling_decision_clear(&d);
    return to;
}

Test(scaling, a_threshold_fires_on_one_sample_without_for)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"5\" initial=\"2\">"
                 "<rule metric=\"cpu\" above=\"0.8\" add=\"2\"/></scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();
    ScalingDecision d;

    scaling_history_add(h, MANIFEST_METRIC_CPU, 100, 0.8);
    cr_expect_eq(eval(m, h, 2, 100, 0, NULL), 2, "0.8 is not above 0.8");
    scaling_history_add(h, MANIFEST_METRIC_CPU, 110, 0.81);
    cr_expect_eq(eval(m, h, 2, 110, 0, &d), 4);
    cr_expect_eq(d.rule, 0);
    cr_expect(d.reason && strstr(d.reason, "2 -> 4"), "%s", d.reason);
    scaling_decision_clear(&d);
}

Test(scaling, for_requires_the_condition_over_the_whole_window)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"5\">"
                 "<rule metric=\"cpu\" above=\"0.5\" for=\"60s\" add=\"1\"/>"
                 "</scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();

    for (int t = 0; t <= 50; t += 10)
        scaling_history_add(h, MANIFEST_METRIC_CPU, t, 0.9);
    cr_expect_eq(eval(m, h, 1, 50, 0, NULL), 1, "held 50 s of 60");
    scaling_history_add(h, MANIFEST_METRIC_CPU, 60, 0.9);
    cr_expect_eq(eval(m, h, 1, 60, 0, NULL), 2, "held 60 s");
    /* one dip restarts the window */
    scaling_history_add(h, MANIFEST_METRIC_CPU, 70, 0.4);
    scaling_history_add(h, MANIFEST_METRIC_CPU, 80, 0.9);
    cr_expect_eq(eval(m, h, 1, 80, 0, NULL), 1);
    scaling_history_add(h, MANIFEST_METRIC_CPU, 140, 0.9);
    cr_expect_eq(eval(m, h, 1, 140, 0, NULL), 2);
}

Test(scaling, cooldown_blocks_actions_until_it_ends)
{
    g_autoptr(Manifest) m = manifest(
        "<scaling min=\"1\" max=\"5\" cooldown=\"5m\">"
        "<rule metric=\"requests\" above=\"100\" add=\"1\"/></scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();
    ScalingDecision d;

    scaling_history_add(h, MANIFEST_METRIC_REQUESTS, 1000, 250);
    cr_expect_eq(eval(m, h, 2, 1000, 1200, &d), 2);
    cr_expect(d.in_cooldown);
    cr_expect(d.reason && strstr(d.reason, "cooldown"), "%s", d.reason);
    scaling_decision_clear(&d);
    scaling_history_add(h, MANIFEST_METRIC_REQUESTS, 1200, 250);
    cr_expect_eq(eval(m, h, 2, 1200, 1200, NULL), 3, "the cooldown ended");
}

Test(scaling, scale_down_waits_for_the_stabilization_window)
{
    /* stabilization defaults to 300 s; the rule's for is 60 s */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"5\">"
                 "<rule metric=\"cpu\" below=\"0.2\" for=\"60s\" remove=\"1\"/>"
                 "</scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();

    cr_assert_eq(m->scaling.stabilization_seconds, 300);
    for (int t = 0; t < 300; t += 30) {
        scaling_history_add(h, MANIFEST_METRIC_CPU, t, 0.05);
        cr_expect_eq(eval(m, h, 3, t, 0, NULL), 3, "at %d s", t);
    }
    scaling_history_add(h, MANIFEST_METRIC_CPU, 300, 0.05);
    cr_expect_eq(eval(m, h, 3, 300, 0, NULL), 2);
}

Test(scaling, results_are_clamped_to_min_and_max)
{
    g_autoptr(Manifest) m = manifest(
        "<scaling min=\"2\" max=\"4\" stabilization=\"0s\">"
        "<rule metric=\"cpu\" above=\"0.7\" add=\"3\"/>"
        "<rule metric=\"memory\" below=\"0.1\" remove=\"5\"/></scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();

    scaling_history_add(h, MANIFEST_METRIC_CPU, 10, 0.9);
    cr_expect_eq(eval(m, h, 3, 10, 0, NULL), 4, "3 + 3 clamped to 4");
    cr_expect_eq(eval(m, h, 4, 10, 0, NULL), 4, "at max: no action");
    scaling_history_add(h, MANIFEST_METRIC_CPU, 20, 0.5);
    scaling_history_add(h, MANIFEST_METRIC_MEMORY, 20, 0.05);
    cr_expect_eq(eval(m, h, 4, 20, 0, NULL), 2, "4 - 5 clamped to 2");
    cr_expect_eq(eval(m, h, 2, 20, 0, NULL), 2, "at min: no action");
}

Test(scaling, scale_up_wins_when_rules_disagree)
{
    g_autoptr(Manifest) m = manifest(
        "<scaling min=\"1\" max=\"8\" stabilization=\"0s\">"
        "<rule metric=\"memory\" below=\"0.3\" remove=\"2\"/>"
        "<rule metric=\"cpu\" above=\"0.7\" add=\"1\"/>"
        "<rule metric=\"requests\" above=\"10\" add=\"2\"/></scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();
    ScalingDecision d;

    scaling_history_add(h, MANIFEST_METRIC_MEMORY, 5, 0.1);
    scaling_history_add(h, MANIFEST_METRIC_CPU, 5, 0.9);
    scaling_history_add(h, MANIFEST_METRIC_REQUESTS, 5, 50);
    cr_expect_eq(eval(m, h, 4, 5, 0, &d), 6, "the largest add step");
    cr_expect_eq(d.rule, 2);
    cr_expect(d.rules[0].fires && d.rules[1].fires && d.rules[2].fires);
    scaling_decision_clear(&d);
}

Test(scaling, a_rule_on_missing_or_stale_data_never_fires)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"5\" stabilization=\"0s\">"
                 "<rule metric=\"memory\" below=\"0.5\" remove=\"1\"/>"
                 "<rule metric=\"cpu\" above=\"0.5\" add=\"1\"/></scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();
    ScalingDecision d;

    cr_expect_eq(eval(m, h, 3, 100, 0, &d), 3, "no samples at all");
    cr_expect(isnan(d.rules[0].value));
    scaling_decision_clear(&d);
    scaling_history_add(h, MANIFEST_METRIC_MEMORY, 100, NAN);
    cr_expect_eq(eval(m, h, 3, 100, 0, NULL), 3, "no balloon data");
    scaling_history_add(h, MANIFEST_METRIC_CPU, 100, 0.9);
    cr_expect_eq(eval(m, h, 3, 100 + SCALING_STALE_S + 1, 0, NULL), 3,
                 "a stale sample");
}

Test(scaling, a_flapping_metric_does_not_make_the_service_oscillate)
{
    /* cpu alternates 0.9 / 0.1 every 30 s for two hours; up needs 2 min,
     * down needs the 5 min stabilization: neither may ever act */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"6\" initial=\"3\" cooldown=\"2m\">"
                 "<rule metric=\"cpu\" above=\"0.8\" for=\"2m\" add=\"1\"/>"
                 "<rule metric=\"cpu\" below=\"0.2\" for=\"1m\" remove=\"1\"/>"
                 "</scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();
    guint count = 3, actions = 0;
    double cooldown = 0;

    for (int t = 0; t < 7200; t += 15) {
        guint to;

        scaling_history_add(h, MANIFEST_METRIC_CPU, t,
                            (t / 30) % 2 ? 0.1 : 0.9);
        to = eval(m, h, count, t, cooldown, NULL);
        if (to != count) {
            actions++;
            count = to;
            cooldown = t + m->scaling.cooldown_seconds;
        }
    }
    cr_expect_eq(actions, 0, "%u scaling actions on a flapping metric",
                 actions);
    cr_expect_eq(count, 3);
}

Test(scaling, a_sustained_load_scales_step_by_step_with_cooldowns)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"4\" initial=\"1\" cooldown=\"2m\">"
                 "<rule metric=\"cpu\" above=\"0.8\" for=\"1m\" add=\"1\"/>"
                 "</scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();
    guint count = 1, actions = 0;
    double cooldown = 0;
    double when[4] = {0};

    for (int t = 0; t <= 900; t += 10) {
        guint to;

        scaling_history_add(h, MANIFEST_METRIC_CPU, t, 0.95);
        to = eval(m, h, count, t, cooldown, NULL);
        if (to != count) {
            when[actions++] = t;
            count = to;
            cooldown = t + m->scaling.cooldown_seconds;
        }
    }
    cr_expect_eq(count, 4, "ends at max");
    cr_expect_eq(actions, 3);
    cr_expect_eq(when[0], 60, "after for=1m");
    cr_expect_eq(when[1], 180, "after the 2 min cooldown");
    cr_expect_eq(when[2], 300);
}

Test(scaling, a_stored_cooldown_holds_across_a_manager_restart)
{
    /* the manager keeps cooldown_until in its database and the metric
     * history in memory: after a restart the history starts empty, and
     * the stored cooldown alone must hold back a rule that fires at once
     * (no for) */
    g_autoptr(Manifest) m = manifest(
        "<scaling min=\"1\" max=\"3\" initial=\"1\" cooldown=\"120s\">"
        "<rule metric=\"requests\" above=\"30\" add=\"1\"/></scaling>");
    g_autoptr(ScalingHistory) before = scaling_history_new();
    g_autoptr(ScalingHistory) after = NULL;
    double stored_cooldown = 0; /* services.cooldown_until */
    guint count = 1, actions = 0;

    scaling_history_add(before, MANIFEST_METRIC_REQUESTS, 1000, 600);
    count = eval(m, before, count, 1000, stored_cooldown, NULL);
    cr_assert_eq(count, 2);
    stored_cooldown = 1000 + m->scaling.cooldown_seconds;

    /* kill -9 at 1010; the restarted manager samples the same load */
    after = scaling_history_new();
    for (int t = 1015; t < 1120; t += 5) {
        ScalingDecision d;
        guint to;

        scaling_history_add(after, MANIFEST_METRIC_REQUESTS, t, 600);
        to = eval(m, after, count, t, stored_cooldown, &d);
        cr_expect(d.rules[0].fires, "the rule fires at %d s", t);
        cr_expect(d.in_cooldown, "at %d s the cooldown holds it", t);
        scaling_decision_clear(&d);
        if (to != count)
            actions++;
    }
    cr_expect_eq(actions, 0, "%u actions before cooldown_until", actions);
    scaling_history_add(after, MANIFEST_METRIC_REQUESTS, 1120, 600);
    cr_expect_eq(eval(m, after, count, 1120, stored_cooldown, NULL), 3,
                 "at cooldown_until the rule acts again");
}
