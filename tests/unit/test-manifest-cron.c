/*
 * test-manifest-cron.c: when scheduled policies fire (manifest/cron.c):
 * the recurrence parser, the next firing in UTC and in zones across their
 * daylight saving changes (Europe/Berlin: spring forward on 2026-03-29,
 * fall back on 2026-10-25), zone names, ISO 8601 start times.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "cron.h"

/* UTC seconds of y-m-d h:mi:00 UTC */
static gint64
utc(int y, int m, int d, int h, int mi)
{
    g_autoptr(GDateTime) t = g_date_time_new_utc(y, m, d, h, mi, 0);

    return g_date_time_to_unix(t);
}

static Cron
parse_ok(const char *text)
{
    g_autofree char *why = NULL;
    Cron c;

    cr_assert(cron_parse(text, &c, NULL, &why), "'%s': %s", text, why);
    return c;
}

static GTimeZone *
zone(const char *name)
{
    g_autofree char *why = NULL;
    GTimeZone *tz = cron_zone_new(name, &why);

    cr_assert(tz, "%s: %s", name, why);
    return tz;
}

/* "2026-03-29T01:30:00Z" of UTC seconds @t */
static char *
iso(gint64 t)
{
    g_autofree char *w = cron_wall_format(t);

    return g_strconcat(w, "Z", NULL);
}

static void
expect_next(const char *cron, const char *tzname, gint64 after, gint64 want)
{
    Cron c = parse_ok(cron);
    g_autoptr(GTimeZone) tz = zone(tzname);
    gint64 got = cron_next(&c, tz, after);
    g_autofree char *a = iso(after);
    g_autofree char *g = iso(got);
    g_autofree char *w = iso(want);

    cr_expect_eq(got, want, "'%s' in %s after %s: got %s, want %s", cron,
                 tzname, a, g, w);
}

Test(cron, parses_values_ranges_lists_steps_and_names)
{
    Cron c = parse_ok("*/15 9-17/4 1,15 jan,JUL-aug mon-fri");

    cr_expect_eq(c.minutes,
                 (1ull << 0) | (1ull << 15) | (1ull << 30) | (1ull << 45));
    cr_expect_eq(c.hours, (1u << 9) | (1u << 13) | (1u << 17));
    cr_expect_eq(c.days, (1u << 1) | (1u << 15));
    cr_expect_eq(c.months, (1u << 1) | (1u << 7) | (1u << 8));
    cr_expect_eq(c.weekdays, 0x3e, "monday to friday: %x", c.weekdays);
    cr_expect_not(c.days_star);
    cr_expect_not(c.weekdays_star);
}

Test(cron, takes_seven_and_sun_for_sunday)
{
    cr_expect_eq(parse_ok("0 0 * * 7").weekdays, 1u);
    cr_expect_eq(parse_ok("0 0 * * 5-7").weekdays, 1u | (1u << 5) | (1u << 6));
    cr_expect_eq(parse_ok("0 0 * * SUN").weekdays, 1u);
    cr_expect_eq(parse_ok("0 0 * * *").weekdays, 0x7f);
    cr_expect_eq(parse_ok("0 0 * * */2").weekdays, 0x55, "sun tue thu sat");
}

Test(cron, normalizes_spaces_and_case)
{
    g_autofree char *norm = NULL;
    g_autofree char *why = NULL;
    Cron c;

    cr_assert(cron_parse("  0   8 * *  MON-Fri ", &c, &norm, &why), "%s", why);
    cr_expect_str_eq(norm, "0 8 * * mon-fri");
    g_clear_pointer(&norm, g_free);
    cr_assert(cron_parse(" @daily  ", &c, &norm, &why), "%s", why);
    cr_expect_str_eq(norm, "@daily");
}

Test(cron, expands_macros)
{
    Cron daily = parse_ok("@daily");
    Cron explicit = parse_ok("0 0 * * *");

    cr_expect(memcmp(&daily, &explicit, sizeof(Cron)) == 0);
    expect_next("@hourly", "UTC", utc(2026, 12, 5, 10, 20),
                utc(2026, 12, 5, 11, 0));
    expect_next("@weekly", "UTC", utc(2026, 12, 5, 10, 20),
                utc(2026, 12, 6, 0, 0)); /* 2026-12-06 is a Sunday */
    expect_next("@monthly", "UTC", utc(2026, 12, 5, 10, 20),
                utc(2027, 1, 1, 0, 0));
    expect_next("@yearly", "UTC", utc(2026, 12, 5, 10, 20),
                utc(2027, 1, 1, 0, 0));
}

Test(cron, refuses_malformed_recurrences_saying_why)
{
    static const struct {
        const char *text, *why;
    } bad[] = {
        {"0 8 * *", "has 4 fields, not 5"},
        {"0 8 * * * *", "has 6 fields"},
        {"", "has 0 fields"},
        {"60 * * * *", "minute field '60': 60 is not in 0-59"},
        {"* 24 * * *", "hour field '24': 24 is not in 0-23"},
        {"* * 0 * *", "day-of-month field '0': 0 is not in 1-31"},
        {"* * 32 * *", "32 is not in 1-31"},
        {"* * * 13 *", "month field '13': 13 is not in 1-12"},
        {"* * * * 8", "day-of-week field '8': 8 is not in 0-7"},
        {"* * * foo *", "'foo' is not a number or a name"},
        {"* * * * monday", "'monday' is not a number or a name"},
        {"x * * * *", "'x' is not a number"},
        {"5-1 * * * *", "range 5-1 goes backwards"},
        {"*/0 * * * *", "step 0 is not in 1-60"},
        {"*/61 * * * *", "step 61 is not in 1-60"},
        {"5/15 * * * *", "a step needs '*' or a range before it"},
        {"*/x * * * *", "step 'x' is not a number"},
        {"1,,2 * * * *", "has no value"},
        {"1- * * * *", "is not a range of two values"},
        {"007 * * * *", "'007' is not a number"},
        {"@reboot", "unknown macro '@reboot'"},
        {"0\t8 * * *", "may only hold letters, digits, spaces"},
        {"0 8 * * 1;reboot", "may only hold"},
        {"0 0 30 2 *", "never fires"},
        {"0 0 31 4,6,9,11 *", "never fires"},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *why = NULL;
        Cron c;

        cr_expect_not(cron_parse(bad[i].text, &c, NULL, &why), "'%s'",
                      bad[i].text);
        cr_expect(why && strstr(why, bad[i].why), "'%s': %s (want '%s')",
                  bad[i].text, why, bad[i].why);
    }
}

Test(cron, refuses_a_recurrence_longer_than_its_limit)
{
    g_autofree char *why = NULL;
    GString *s = g_string_new("0");
    g_autofree char *text = NULL;
    Cron c;

    while (s->len <= CRON_MAX_BYTES)
        g_string_append(s, ",0");
    g_string_append(s, " * * * *");
    text = g_string_free(s, FALSE);
    cr_expect_not(cron_parse(text, &c, NULL, &why));
    cr_expect(strstr(why, "longer than 128 bytes"), "%s", why);
}

Test(cron, fires_strictly_after_the_given_instant)
{
    gint64 at = utc(2026, 12, 5, 8, 30);

    expect_next("30 8 * * *", "UTC", at - 1, at);
    expect_next("30 8 * * *", "UTC", at, utc(2026, 12, 6, 8, 30));
    expect_next("* * * * *", "UTC", at, at + 60);
    expect_next("* * * * *", "UTC", at + 59, at + 60);
}

Test(cron, matches_either_day_field_when_both_are_restricted)
{
    gint64 from = utc(2026, 1, 1, 12, 0); /* a Thursday */

    /* as in Vixie cron: the 13th or any Friday; 2026-01-02 is a Friday */
    expect_next("0 0 13 * fri", "UTC", from, utc(2026, 1, 2, 0, 0));
    expect_next("0 0 13 * *", "UTC", from, utc(2026, 1, 13, 0, 0));
    /* a field starting with '*' is unrestricted: both must match, here odd
     * days that are Fridays */
    expect_next("0 0 */2 * fri", "UTC", from, utc(2026, 1, 9, 0, 0));
    /* 31 February does not exist, but Mondays do */
    expect_next("0 0 31 2 mon", "UTC", from, utc(2026, 2, 2, 0, 0));
}

Test(cron, waits_years_for_a_rare_date)
{
    expect_next("0 0 29 2 *", "UTC", utc(2026, 3, 1, 0, 0),
                utc(2028, 2, 29, 0, 0));
    /* 2100 is not a leap year */
    expect_next("0 0 29 2 *", "UTC", utc(2097, 3, 1, 0, 0),
                utc(2104, 2, 29, 0, 0));
    /* 29 February that is a Saturday or Sunday ('*' starts the weekday
     * field: both must match): 2032-02-29 is a Sunday */
    expect_next("0 0 29 2 */6", "UTC", utc(2026, 3, 1, 0, 0),
                utc(2032, 2, 29, 0, 0));
}

/* A reference: the first minute after @after that matches, by a scan */
static gint64
scan_utc(const Cron *c, gint64 after)
{
    for (gint64 t = (after / 60 + 1) * 60;; t += 60) {
        g_autoptr(GDateTime) d = g_date_time_new_from_unix_utc(t);
        int wd = g_date_time_get_day_of_week(d) % 7;
        bool dom = c->days & (1u << g_date_time_get_day_of_month(d));
        bool dow = c->weekdays & (1u << wd);

        if ((c->minutes & (1ull << g_date_time_get_minute(d))) &&
            (c->hours & (1u << g_date_time_get_hour(d))) &&
            (c->months & (1u << g_date_time_get_month(d))) &&
            (c->days_star || c->weekdays_star ? dom && dow : dom || dow))
            return t;
    }
}

Test(cron, agrees_with_a_minute_by_minute_scan_in_utc)
{
    static const char *const crons[] = {
        "*/7 * * * *",    "0 */5 * * *",     "15,45 9-17 * * 1-5",
        "0 0 1,15 * *",   "30 23 * * sat",   "0 12 13 * fri",
        "*/20 3 */3 * *", "5 4 * jan,feb *", "59 23 31 * *",
    };
    g_autoptr(GTimeZone) tz = zone("UTC");
    gint64 start = utc(2026, 1, 28, 22, 13);

    for (gsize i = 0; i < G_N_ELEMENTS(crons); i++) {
        Cron c = parse_ok(crons[i]);
        gint64 t = start;

        for (int k = 0; k < 40; k++) {
            gint64 want = scan_utc(&c, t);
            gint64 got = cron_next(&c, tz, t);

            cr_assert_eq(got, want, "'%s' after %" G_GINT64_FORMAT, crons[i],
                         t);
            t = got + (k % 3 == 0 ? 0 : 17); /* also from between firings */
        }
    }
}

Test(cron, follows_the_zone_s_offset_in_winter_and_summer)
{
    /* 08:00 in Berlin is 07:00 UTC in winter, 06:00 UTC in summer */
    expect_next("0 8 * * *", "Europe/Berlin", utc(2026, 12, 5, 12, 0),
                utc(2026, 12, 6, 7, 0));
    expect_next("0 8 * * *", "Europe/Berlin", utc(2026, 7, 1, 12, 0),
                utc(2026, 7, 2, 6, 0));
    expect_next("0 8 * * *", "America/New_York", utc(2026, 12, 5, 14, 0),
                utc(2026, 12, 6, 13, 0));
}

Test(cron, a_wall_time_skipped_by_spring_forward_fires_once_just_after)
{
    /* 2026-03-29 in Berlin: 02:00 CET becomes 03:00 CEST (01:00 UTC);
     * 02:30 does not exist: it fires at 02:30 read as CET, 03:30 CEST */
    gint64 fired = utc(2026, 3, 29, 1, 30);

    expect_next("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0), fired);
    expect_next("30 2 * * *", "Europe/Berlin", fired,
                utc(2026, 3, 30, 0, 30)); /* then 02:30 CEST */
    /* 03:00 exists (the first instant of summer time) */
    expect_next("0 3 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0),
                utc(2026, 3, 29, 1, 0));
}

Test(cron, every_half_hour_across_spring_forward_never_fires_twice)
{
    /* 01:30 CET (00:30 UTC), then 02:00 and 02:30 are skipped: they map to
     * 03:00 and 03:30 CEST, the same instants as the wall times 03:00 and
     * 03:30: one firing each */
    Cron c = parse_ok("*/30 * * * *");
    g_autoptr(GTimeZone) tz = zone("Europe/Berlin");
    gint64 t = utc(2026, 3, 29, 0, 0);
    gint64 want[] = {utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 0),
                     utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 0)};

    for (gsize i = 0; i < G_N_ELEMENTS(want); i++) {
        g_autofree char *g = NULL, *w = iso(want[i]);

        t = cron_next(&c, tz, t);
        g = iso(t);
        cr_expect_eq(t, want[i], "firing %zu: %s, want %s", i, g, w);
    }
}

Test(cron, a_wall_time_repeated_by_fall_back_fires_once)
{
    /* 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET (01:00 UTC);
     * 02:30 happens at 00:30 UTC and again at 01:30 UTC: only the first */
    gint64 first = utc(2026, 10, 25, 0, 30);

    expect_next("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12, 0), first);
    expect_next("30 2 * * *", "Europe/Berlin", first,
                utc(2026, 10, 26, 1, 30)); /* the next day, 02:30 CET */
}

Test(cron, every_half_hour_across_fall_back_skips_the_repeated_wall_times)
{
    /* 02:00 and 02:30 CEST fire; in the repeated hour (02:00 and 02:30
     * CET) those wall times have fired already; 03:00 CET is next */
    Cron c = parse_ok("*/30 * * * *");
    g_autoptr(GTimeZone) tz = zone("Europe/Berlin");
    gint64 t = utc(2026, 10, 24, 23, 45);
    gint64 want[] = {utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30),
                     utc(2026, 10, 25, 2, 0), utc(2026, 10, 25, 2, 30)};

    for (gsize i = 0; i < G_N_ELEMENTS(want); i++) {
        g_autofree char *g = NULL, *w = iso(want[i]);

        t = cron_next(&c, tz, t);
        g = iso(t);
        cr_expect_eq(t, want[i], "firing %zu: %s, want %s", i, g, w);
    }
}

Test(cron, firings_only_move_forward_through_a_year_of_changes)
{
    static const char *const zones[] = {"Europe/Berlin", "America/New_York",
                                        "Australia/Lord_Howe"};
    Cron c = parse_ok("*/15 * * * *");

    for (gsize z = 0; z < G_N_ELEMENTS(zones); z++) {
        g_autoptr(GTimeZone) tz = zone(zones[z]);
        gint64 t = utc(2026, 1, 1, 0, 0), end = utc(2027, 1, 1, 0, 0);
        guint n = 0;

        while (t < end) {
            gint64 next = cron_next(&c, tz, t);

            cr_assert_gt(next, t, "%s", zones[z]);
            cr_assert_leq(next - t, 75 * 60,
                          "%s: a gap of %" G_GINT64_FORMAT " s", zones[z],
                          next - t);
            t = next;
            n++;
        }
        /* 96 a day, less the repeated hour (or half hour) of fall back */
        cr_expect(n >= 365 * 96 - 4 && n <= 365 * 96, "%s: %u firings",
                  zones[z], n);
    }
}

Test(cron, classifies_wall_times)
{
    g_autoptr(GTimeZone) tz = zone("Europe/Berlin");
    gint64 wall, u;

    cr_assert(cron_at_parse("2026-03-29T02:30", &wall, &(bool){0}, &(gint32){0},
                            &(char *){NULL}));
    cr_expect_eq(cron_wall_to_utc(tz, wall, &u), CRON_WALL_SKIPPED);
    cr_expect_eq(u, utc(2026, 3, 29, 1, 30));
    cr_assert(cron_at_parse("2026-10-25T02:30", &wall, &(bool){0}, &(gint32){0},
                            &(char *){NULL}));
    cr_expect_eq(cron_wall_to_utc(tz, wall, &u), CRON_WALL_REPEATED);
    cr_expect_eq(u, utc(2026, 10, 25, 0, 30));
    cr_assert(cron_at_parse("2026-07-01T12:00", &wall, &(bool){0}, &(gint32){0},
                            &(char *){NULL}));
    cr_expect_eq(cron_wall_to_utc(tz, wall, &u), CRON_WALL_EXISTS);
    cr_expect_eq(u, utc(2026, 7, 1, 10, 0));
    cr_expect_eq(cron_utc_to_wall(tz, u), wall);
}

Test(cron, accepts_only_names_of_the_zoneinfo_database)
{
    static const char *const good[] = {
        "UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5"};
    static const struct {
        const char *name, *why;
    } bad[] = {
        {"", "not a time zone name"},
        {"/etc/localtime", "not a time zone name"},
        {"../../etc/passwd", "not a time zone name"},
        {"Europe/../Europe/Berlin", "not a time zone name"},
        {"Europe//Berlin", "not a time zone name"},
        {"Europe/", "not a time zone name"},
        {"Europe/Berlin ", "not a time zone name"},
        {"CET-1CEST,M3.5.0,M10.5.0/3", "not a time zone name"},
        {"XYZ5", "no such time zone"},
        {"Mars/Olympus_Mons", "no such time zone"},
        {"Europe", "no such time zone"}, /* a directory */
    };

    for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
        g_autoptr(GTimeZone) tz = zone(good[i]);
    }
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *why = NULL;
        GTimeZone *tz = cron_zone_new(bad[i].name, &why);

        cr_expect_null(tz, "'%s'", bad[i].name);
        cr_expect(why && strstr(why, bad[i].why), "'%s': %s", bad[i].name, why);
        if (tz)
            g_time_zone_unref(tz);
    }
}

Test(cron, parses_iso_8601_start_times)
{
    static const struct {
        const char *text;
        gint64 utc;
        bool offset;
    } good[] = {
        {"2026-12-24T18:00", 0, false},
        {"2026-12-24T18:00:30", 30, false},
        {"2026-12-24T18:00Z", 0, true},
        {"2026-12-24T19:00:00+01:00", 0, true},
        {"2026-12-24T13:30-04:30", 0, true},
    };
    static const char *const bad[] = {
        "2026-12-24",
        "2026-12-24 18:00",
        "2026-12-24T18",
        "2026-12-24T18:00:0",
        "2026-12-24T18:00Zx",
        "2026-12-24T18:00+1:00",
        "2026-12-24T18:00+0100",
        "2026-02-29T00:00",
        "2026-13-01T00:00",
        "2026-12-24T24:00",
        "2026-12-24T18:60",
        "2026-12-24T18:00:60",
        "1969-12-31T23:59Z",
        "+2026-12-24T18:00",
        "2026-12-24t18:00",
        "2026-12-24T18:00+24:00",
        "",
    };
    gint64 base = utc(2026, 12, 24, 18, 0);

    for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
        gint64 wall = 0;
        bool has_offset = false;
        gint32 offset = 1;
        g_autofree char *why = NULL;

        cr_assert(
            cron_at_parse(good[i].text, &wall, &has_offset, &offset, &why),
            "'%s': %s", good[i].text, why);
        cr_expect_eq(has_offset, good[i].offset, "'%s'", good[i].text);
        cr_expect_eq(wall - offset, base + good[i].utc, "'%s'", good[i].text);
    }
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        gint64 wall;
        bool has_offset;
        gint32 offset;
        g_autofree char *why = NULL;

        cr_expect_not(cron_at_parse(bad[i], &wall, &has_offset, &offset, &why),
                      "'%s'", bad[i]);
        cr_expect(why != NULL);
    }
}

Test(cron, formats_wall_times)
{
    g_autofree char *a = cron_wall_format(utc(2026, 3, 29, 1, 30) + 7);
    g_autofree char *b = cron_wall_format(0);

    cr_expect_str_eq(a, "2026-03-29T01:30:07");
    cr_expect_str_eq(b, "1970-01-01T00:00:00");
}
