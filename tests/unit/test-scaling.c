/*
 * test-scaling.c: the auto-scaling rule engine (daemon/manager/scaling.c), with an
 * injected clock: thresholds, for, cooldown, stabilization, clamping,
 * conflicting rules, missing data, a flapping metric, and a cooldown that
 * must hold across a restart of the manager; and the scheduled policies:
 * arming, daily firing, adjustments within [min, max], the order of
 * policies due together, their interplay with the cooldown and the rules,
 * Europe/Berlin's spring-forward and fall-back days, restarts within and
 * beyond the grace window, a pass rolled back, a clock stepped back.
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

/* ---- scheduled policies ------------------------------------------------ */

/* UTC seconds of y-m-d h:mi:s UTC */
static double
utc(int y, int m, int d, int h, int mi, int s)
{
    g_autoptr(GDateTime) t = g_date_time_new_utc(y, m, d, h, mi, s);

    return (double)g_date_time_to_unix(t);
}

/*
 * What spored keeps of a service between evaluations, in its database:
 * the desired count, the cooldown's end and each schedule's handled time.
 * A restart of the manager loses nothing of it (every field is stored);
 * a pass rolled back loses the whole evaluation.
 */
typedef struct {
    const Manifest *m;
    guint count;
    double cooldown_until;
    double handled[MANIFEST_SCHEDULES_MAX];
    double since_new;    /* the evaluation before, for new schedules */
    guint fired, missed; /* events so far */
    double last_due;     /* of the last firing */
    char *last_reason;
} Site;

static void
site_init(Site *s, const Manifest *m, guint count)
{
    memset(s, 0, sizeof(*s));
    s->m = m;
    s->count = count;
    for (guint i = 0; i < MANIFEST_SCHEDULES_MAX; i++)
        s->handled[i] = NAN;
    s->since_new = NAN;
}

static void
site_clear(Site *s)
{
    g_free(s->last_reason);
}

/* one evaluation at @now as manager-scaling.c does it; @commit false: the
 * pass is rolled back (a kill -9 before its commit).  Returns the number
 * of schedules that fired. */
static guint
site_tick(Site *s, double now, bool commit)
{
    g_autoptr(GArray) steps = scaling_schedule_steps_new();
    guint to = scaling_schedules_evaluate(s->m, s->handled, s->since_new,
                                          s->count, now, steps);
    guint fired = 0;

    if (!commit)
        return 0;
    for (guint i = 0; i < steps->len; i++) {
        ScalingScheduleStep *st = &g_array_index(steps, ScalingScheduleStep, i);

        s->handled[st->schedule] = now;
        if (st->outcome == SCALING_SCHEDULE_MISSED)
            s->missed++;
        if (st->outcome != SCALING_SCHEDULE_FIRED)
            continue;
        fired++;
        s->fired++;
        s->last_due = st->due;
        g_free(s->last_reason);
        s->last_reason = g_strdup(st->reason);
    }
    if (to != s->count) {
        s->count = to;
        s->cooldown_until = now + s->m->scaling.cooldown_seconds;
    }
    return fired;
}

/* ticks every @step seconds in [from, to) */
static guint
site_run(Site *s, double from, double to, double step)
{
    guint fired = 0;

    for (double t = from; t < to; t += step)
        fired += site_tick(s, t, true);
    return fired;
}

Test(scaling_schedule, a_new_schedule_is_armed_and_does_not_fire_for_the_past)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"0 8 * * *\" set=\"4\"/>"
                 "<schedule at=\"2026-12-05T09:00Z\" set=\"6\"/></scaling>");
    Site s;

    site_init(&s, m, 1);
    /* submitted at 09:05: both were due earlier today, within grace */
    cr_expect_eq(site_tick(&s, utc(2026, 12, 5, 9, 5, 0), true), 0);
    cr_expect_eq(s.count, 1);
    cr_expect_eq(s.handled[0], utc(2026, 12, 5, 9, 5, 0), "armed");
    cr_expect_eq(
        site_run(&s, utc(2026, 12, 5, 9, 5, 5), utc(2026, 12, 6, 7, 59, 0), 60),
        0);
    cr_expect_eq(
        site_run(&s, utc(2026, 12, 6, 7, 59, 0), utc(2026, 12, 6, 8, 1, 0), 5),
        1, "tomorrow's 08:00 fires");
    cr_expect_eq(s.count, 4);
    site_clear(&s);
}

Test(scaling_schedule, a_schedule_submitted_just_before_its_time_fires)
{
    /* evaluations every 5 s: at 11:59:58 (without the schedule), then
     * 12:00:03; the manifest came at 11:59:59 with a policy for 12:00:00 */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule at=\"2026-12-05T12:00:00Z\" set=\"3\"/>"
                 "</scaling>");
    Site s;

    site_init(&s, m, 1);
    s.since_new = utc(2026, 12, 5, 11, 59, 58);
    cr_expect_eq(site_tick(&s, utc(2026, 12, 5, 12, 0, 3), true), 1);
    cr_expect_eq(s.count, 3);
    site_clear(&s);
}

Test(scaling_schedule, a_daily_policy_fires_once_a_day_at_its_time)
{
    g_autoptr(Manifest) m = manifest(
        "<scaling min=\"1\" max=\"8\" cooldown=\"2m\">"
        "<schedule cron=\"0 8 * * mon-fri\" timezone=\"Europe/Berlin\" "
        "set=\"6\"/>"
        "<schedule cron=\"0 20 * * *\" timezone=\"Europe/Berlin\" set=\"2\"/>"
        "</scaling>");
    double start = utc(2026, 11, 30, 0, 0, 0); /* a Monday */
    Site s;

    site_init(&s, m, 2);
    site_tick(&s, start, true);
    cr_expect_eq(site_run(&s, start + 5, start + 7 * 86400, 5), 5 + 7,
                 "five weekday mornings and seven evenings");
    cr_expect_eq(s.count, 2, "the evening's set came last");
    /* Monday 08:00 CET is 07:00 UTC */
    site_tick(&s, utc(2026, 12, 7, 7, 0, 3), true);
    cr_expect_eq(s.count, 6);
    cr_expect_eq(s.last_due, utc(2026, 12, 7, 7, 0, 0));
    cr_expect(strstr(s.last_reason, "due at 2026-12-07T08:00:00 "
                                    "Europe/Berlin: 2 -> 6 clones"),
              "%s", s.last_reason);
    cr_expect_eq(s.cooldown_until, utc(2026, 12, 7, 7, 0, 3) + 120);
    site_clear(&s);
}

Test(scaling_schedule, adjustments_add_remove_and_percent_within_min_and_max)
{
    static const struct {
        const char *action;
        guint from, to;
    } cases[] = {
        {"add=\"2\"", 3, 5},      {"add=\"2\"", 7, 8},
        {"remove=\"3\"", 5, 2},   {"remove=\"3\"", 3, 2},
        {"add=\"50%\"", 5, 8},    {"add=\"10%\"", 3, 4},
        {"remove=\"50%\"", 5, 2}, {"remove=\"100%\"", 7, 2},
        {"remove=\"1%\"", 8, 7},  {"set=\"5\"", 2, 5},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *xml = g_strdup_printf(
            "<scaling min=\"2\" max=\"8\"><schedule cron=\"* * * * *\" %s/>"
            "</scaling>",
            cases[i].action);
        g_autoptr(Manifest) m = manifest(xml);
        Site s;

        site_init(&s, m, cases[i].from);
        site_tick(&s, 1000, true);
        cr_expect_eq(site_tick(&s, 1030, true), 1, "%s", cases[i].action);
        cr_expect_eq(s.count, cases[i].to, "%s from %u: %u", cases[i].action,
                     cases[i].from, s.count);
        if (cases[i].to == 8 && cases[i].from + 2 > 8)
            cr_expect(strstr(s.last_reason, "clamped"), "%s", s.last_reason);
        site_clear(&s);
    }
}

Test(scaling_schedule,
     a_policy_at_its_bound_changes_nothing_and_starts_no_cooldown)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"2\" max=\"8\">"
                 "<schedule cron=\"*/10 * * * *\" remove=\"1\"/></scaling>");
    Site s;

    site_init(&s, m, 2);
    site_tick(&s, 1000, true);
    cr_expect_eq(site_tick(&s, 1200, true), 1);
    cr_expect_eq(s.count, 2);
    cr_expect_eq(s.cooldown_until, 0);
    cr_expect(strstr(s.last_reason, "already 2 clones"), "%s", s.last_reason);
    site_clear(&s);
}

Test(scaling_schedule, policies_due_together_apply_in_the_order_they_were_due)
{
    /* the at was due 30 s before the cron's minute; both seen at once */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"0 8 * * *\" set=\"2\"/>"
                 "<schedule at=\"2026-12-05T07:59:30Z\" add=\"1\"/>"
                 "</scaling>");
    g_autoptr(GArray) steps = scaling_schedule_steps_new();
    double handled[2] = {utc(2026, 12, 5, 7, 0, 0), utc(2026, 12, 5, 7, 0, 0)};
    guint to = scaling_schedules_evaluate(m, handled, NAN, 5,
                                          utc(2026, 12, 5, 8, 0, 10), steps);
    ScalingScheduleStep *a, *b;

    cr_assert_eq(steps->len, 2);
    a = &g_array_index(steps, ScalingScheduleStep, 0);
    b = &g_array_index(steps, ScalingScheduleStep, 1);
    cr_expect_eq(a->schedule, 1);
    cr_expect_eq(a->from, 5);
    cr_expect_eq(a->to, 6);
    cr_expect_eq(b->schedule, 0);
    cr_expect_eq(b->from, 6);
    cr_expect_eq(b->to, 2);
    cr_expect_eq(to, 2);
}

Test(scaling_schedule,
     ignores_the_cooldown_and_hands_the_new_count_to_the_rules)
{
    /* a rule scaled up at 07:59 (cooldown 5 min); at 08:00 the schedule
     * sets 6 regardless and starts a new cooldown, and the rule then works
     * from 6 once that ends */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"10\" cooldown=\"5m\">"
                 "<rule metric=\"cpu\" above=\"0.8\" add=\"1\"/>"
                 "<schedule cron=\"0 8 * * *\" set=\"6\"/></scaling>");
    g_autoptr(ScalingHistory) h = scaling_history_new();
    double t0 = utc(2026, 12, 5, 7, 59, 0);
    ScalingDecision d;
    Site s;

    site_init(&s, m, 3);
    site_tick(&s, t0 - 60, true);
    scaling_history_add(h, MANIFEST_METRIC_CPU, t0, 0.9);
    s.count = eval(m, h, s.count, t0, s.cooldown_until, NULL);
    s.cooldown_until = t0 + 300;
    cr_assert_eq(s.count, 4);

    cr_expect_eq(site_tick(&s, t0 + 62, true), 1, "not held by the cooldown");
    cr_expect_eq(s.count, 6);
    cr_expect_eq(s.cooldown_until, t0 + 62 + 300, "a new cooldown");
    scaling_history_add(h, MANIFEST_METRIC_CPU, t0 + 62, 0.9);
    cr_expect_eq(eval(m, h, s.count, t0 + 62, s.cooldown_until, &d), 6);
    cr_expect(d.in_cooldown);
    scaling_decision_clear(&d);
    scaling_history_add(h, MANIFEST_METRIC_CPU, t0 + 362, 0.9);
    cr_expect_eq(eval(m, h, s.count, t0 + 362, s.cooldown_until, NULL), 7,
                 "from the scheduled count");
    site_clear(&s);
}

/* firings of @m's schedules per UTC day, ticking every 30 s over @days
 * days from @from */
static void
fire_per_day(const Manifest *m, double from, guint days, guint *per_day,
             double *due)
{
    Site s;

    site_init(&s, m, 1);
    site_tick(&s, from, true);
    for (guint d = 0; d < days; d++) {
        per_day[d] = 0;
        for (double t = from + d * 86400.0; t < from + (d + 1) * 86400.0;
             t += 30) {
            if (site_tick(&s, t, true)) {
                per_day[d]++;
                due[d] = s.last_due;
            }
        }
    }
    site_clear(&s);
}

Test(scaling_schedule,
     at_spring_forward_a_skipped_time_fires_once_an_hour_later)
{
    /* Europe/Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not
     * exist and fires at 03:30 CEST (01:30 UTC), once */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"30 2 * * *\" timezone=\"Europe/Berlin\" "
                 "add=\"1\"/></scaling>");
    guint n[3];
    double due[3];

    fire_per_day(m, utc(2026, 3, 28, 0, 0, 1), 3, n, due);
    cr_expect_eq(n[0], 1);
    cr_expect_eq(due[0], utc(2026, 3, 28, 1, 30, 0), "02:30 CET");
    cr_expect_eq(n[1], 1, "the skipped 02:30: %u firings", n[1]);
    cr_expect_eq(due[1], utc(2026, 3, 29, 1, 30, 0), "03:30 CEST");
    cr_expect_eq(n[2], 1);
    cr_expect_eq(due[2], utc(2026, 3, 30, 0, 30, 0), "02:30 CEST");
}

Test(scaling_schedule, at_fall_back_a_repeated_time_fires_once)
{
    /* Europe/Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 comes at
     * 00:30 and at 01:30 UTC and fires at the first only */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"30 2 * * *\" timezone=\"Europe/Berlin\" "
                 "add=\"1\"/></scaling>");
    guint n[3];
    double due[3];

    fire_per_day(m, utc(2026, 10, 24, 0, 0, 1), 3, n, due);
    cr_expect_eq(n[0], 1);
    cr_expect_eq(due[0], utc(2026, 10, 24, 0, 30, 0), "02:30 CEST");
    cr_expect_eq(n[1], 1, "the repeated 02:30: %u firings", n[1]);
    cr_expect_eq(due[1], utc(2026, 10, 25, 0, 30, 0), "the first 02:30");
    cr_expect_eq(n[2], 1);
    cr_expect_eq(due[2], utc(2026, 10, 26, 1, 30, 0), "02:30 CET");
}

Test(scaling_schedule, a_restart_within_grace_fires_once_on_start)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"0 8 * * *\" set=\"5\" grace=\"15m\"/>"
                 "</scaling>");
    double t = utc(2026, 12, 5, 7, 50, 0);
    Site s;

    site_init(&s, m, 2);
    site_tick(&s, t - 3600, true);
    site_run(&s, t - 3595, t, 5);
    /* down from 07:50 to 08:10 */
    cr_expect_eq(site_tick(&s, t + 1200, true), 1, "fires on start");
    cr_expect_eq(s.count, 5);
    cr_expect(strstr(s.last_reason, "600 s late"), "%s", s.last_reason);
    /* killed and restarted at once, and again */
    cr_expect_eq(site_tick(&s, t + 1201, true), 0);
    cr_expect_eq(site_tick(&s, t + 1260, true), 0);
    cr_expect_eq(site_run(&s, t + 1265, t + 86400 - 700, 5), 0);
    cr_expect_eq(s.fired, 1);
    cr_expect_eq(s.missed, 0);
    site_clear(&s);
}

Test(scaling_schedule, a_restart_after_grace_reports_the_miss_once)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"0 8 * * *\" set=\"5\"/></scaling>");
    double t = utc(2026, 12, 5, 7, 50, 0);
    Site s;

    site_init(&s, m, 2);
    site_tick(&s, t, true);
    /* down from 07:50 to 08:30: more than the default grace of 10 min */
    cr_expect_eq(site_tick(&s, t + 2400, true), 0);
    cr_expect_eq(s.missed, 1);
    cr_expect_eq(s.count, 2, "a missed policy changes nothing");
    cr_expect_eq(site_run(&s, t + 2405, t + 86400 + 900, 5), 1,
                 "the next day's fires as usual");
    cr_expect_eq(s.missed, 1);
    cr_expect_eq(s.count, 5);
    site_clear(&s);
}

Test(scaling_schedule, many_missed_occurrences_fire_once)
{
    /* every 15 min, +1; down for 2 hours, grace 30 min: one firing on
     * start (not eight), then one per quarter hour again */
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"100\">"
                 "<schedule cron=\"*/15 * * * *\" add=\"1\" grace=\"30m\"/>"
                 "</scaling>");
    double t = utc(2026, 12, 5, 10, 0, 1);
    Site s;

    site_init(&s, m, 1);
    site_tick(&s, t, true);
    cr_expect_eq(site_tick(&s, t + 7200, true), 1);
    cr_expect_eq(s.count, 2);
    cr_expect_eq(s.last_due, utc(2026, 12, 5, 11, 45, 0),
                 "the first occurrence within the grace (11:30 is 30 min "
                 "and 1 s before)");
    cr_expect_eq(site_run(&s, t + 7205, t + 7200 + 3610, 5), 4);
    site_clear(&s);
}

Test(scaling_schedule, a_pass_rolled_back_fires_at_the_next_and_only_then)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule at=\"2026-12-05T12:00Z\" set=\"3\"/></scaling>");
    double t = utc(2026, 12, 5, 11, 0, 0);
    Site s;

    site_init(&s, m, 1);
    site_tick(&s, t, true);
    cr_expect_eq(site_tick(&s, t + 3605, false), 0, "killed before commit");
    cr_expect_eq(site_tick(&s, t + 3615, true), 1, "after the restart");
    cr_expect_eq(s.count, 3);
    cr_expect_eq(site_run(&s, t + 3620, t + 2 * 86400, 60), 0,
                 "an at fires once");
    site_clear(&s);
}

Test(scaling_schedule, a_clock_stepped_back_does_not_fire_twice)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"0 8 * * *\" add=\"1\"/></scaling>");
    double t = utc(2026, 12, 5, 7, 59, 0);
    Site s;

    site_init(&s, m, 1);
    site_tick(&s, t - 60, true);
    cr_expect_eq(site_run(&s, t, t + 120, 5), 1);
    /* the clock goes back an hour and comes forward again */
    cr_expect_eq(site_run(&s, t - 3600, t + 600, 5), 0);
    cr_expect_eq(s.count, 2);
    site_clear(&s);
}

Test(scaling_schedule, next_occurrences_of_cron_and_at)
{
    g_autoptr(Manifest) m =
        manifest("<scaling min=\"1\" max=\"8\">"
                 "<schedule cron=\"0 8 * * *\" timezone=\"Europe/Berlin\" "
                 "set=\"2\"/>"
                 "<schedule at=\"2026-12-24T18:00\" timezone=\"Europe/Berlin\" "
                 "set=\"1\"/></scaling>");
    const ManifestSchedule *cron = m->scaling.schedules->pdata[0];
    const ManifestSchedule *at = m->scaling.schedules->pdata[1];
    double t = utc(2026, 12, 5, 12, 0, 0);

    cr_expect_eq(scaling_schedule_next(cron, t), utc(2026, 12, 6, 7, 0, 0));
    cr_expect_eq(scaling_schedule_next(at, t), utc(2026, 12, 24, 17, 0, 0));
    cr_expect_eq(scaling_schedule_next(at, utc(2026, 12, 24, 17, 0, 0)),
                 INFINITY);
    cr_expect_eq(scaling_schedule_next(cron, NAN), INFINITY);
    {
        /* a start time in the hour fall back repeats: its first time */
        g_autoptr(Manifest) twice = manifest(
            "<scaling min=\"1\" max=\"8\"><schedule "
            "at=\"2026-10-25T02:30\" timezone=\"Europe/Berlin\" set=\"2\"/>"
            "</scaling>");
        const ManifestSchedule *s = twice->scaling.schedules->pdata[0];

        cr_expect_eq(scaling_schedule_next(s, 0), utc(2026, 10, 25, 0, 30, 0));
    }
    cr_expect_eq(scaling_schedule_next(cron, 1e300), INFINITY);
}
