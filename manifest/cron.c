/*
 * cron.c: recurrences, start times and wall clocks (see cron.h).
 *
 * The calendar arithmetic is proleptic Gregorian on day numbers (days
 * since 1970-01-01), with Howard Hinnant's civil <-> days conversions; the
 * zone only ever answers "what is the offset at this UTC instant"
 * (g_time_zone_find_interval on G_TIME_TYPE_UNIVERSAL), so that the rules
 * for skipped and repeated wall times are ours and stated in one place,
 * cron_wall_to_utc().
 *
 * cron_next() walks days from the day before @after's wall date, and in
 * each matching day the allowed hours and minutes in order.  Because a
 * skipped wall time is moved forward (by the size of the skip), wall
 * order and UTC order can disagree near a change, so it keeps the
 * smallest instant found and stops only once a wall time lies more than a
 * day past it (no offset reaches a day, so nothing later can be earlier).
 * Invariants:
 *   1. Every candidate instant returned is > @after (strictly): a
 *      schedule that fired at t and asks again from t never gets t.
 *   2. A wall time maps to exactly one instant, so a repeated hour does
 *      not fire twice.
 */
#include "cron.h"

#include <string.h>

#define SECONDS_PER_DAY      86400
#define GREGORIAN_CYCLE_DAYS 146097 /* 400 years */

typedef struct {
    const char *name;         /* for messages */
    guint min, max;           /* values as written (weekday: 0..7) */
    const char *const *names; /* [i] is the name of value min + i, or NULL */
} CronField;

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may",
                                          "jun", "jul", "aug", "sep", "oct",
                                          "nov", "dec", NULL};
static const char *const weekday_names[] = {"sun", "mon", "tue", "wed",
                                            "thu", "fri", "sat", NULL};

static const CronField fields[5] = {
    {"minute", 0, 59, NULL},
    {"hour", 0, 23, NULL},
    {"day-of-month", 1, 31, NULL},
    {"month", 1, 12, month_names},
    {"day-of-week", 0, 7, weekday_names},
};

static const struct {
    const char *macro;
    const char *expansion;
} macros[] = {
    {"@hourly", "0 * * * *"},   {"@daily", "0 0 * * *"},
    {"@midnight", "0 0 * * *"}, {"@weekly", "0 0 * * 0"},
    {"@monthly", "0 0 1 * *"},  {"@yearly", "0 0 1 1 *"},
    {"@annually", "0 0 1 1 *"},
};

/* ---- calendar arithmetic ----------------------------------------------- */

static gint64
floor_div(gint64 a, gint64 b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* days since 1970-01-01 of y-m-d (m 1..12, d 1..31) */
static gint64
days_from_civil(gint64 y, guint m, guint d)
{
    gint64 era;
    guint yoe, doy, doe;

    y -= m <= 2;
    era = floor_div(y, 400);
    yoe = (guint)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * GREGORIAN_CYCLE_DAYS + (gint64)doe - 719468;
}

static void
civil_from_days(gint64 z, gint64 *ret_y, guint *ret_m, guint *ret_d)
{
    gint64 era;
    guint doe, yoe, doy, mp;

    z += 719468;
    era = floor_div(z, GREGORIAN_CYCLE_DAYS);
    doe = (guint)(z - era * GREGORIAN_CYCLE_DAYS);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *ret_d = doy - (153 * mp + 2) / 5 + 1;
    *ret_m = mp < 10 ? mp + 3 : mp - 9;
    *ret_y = (gint64)yoe + era * 400 + (*ret_m <= 2);
}

static guint
days_in_month(gint64 y, guint m)
{
    static const guint days[] = {31, 28, 31, 30, 31, 30,
                                 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

    return m == 2 && leap ? 29 : days[m - 1];
}

/* ---- parsing a recurrence ---------------------------------------------- */

/* one value of @f: 1 or 2 digits, or a name; false if neither */
static bool
field_value(const CronField *f, const char *s, gsize len, guint *ret)
{
    if (len >= 1 && len <= 2 && g_ascii_isdigit(s[0]) &&
        (len == 1 || g_ascii_isdigit(s[1]))) {
        *ret = (guint)(s[0] - '0');
        if (len == 2)
            *ret = *ret * 10 + (guint)(s[1] - '0');
        return true;
    }
    for (guint i = 0; f->names && len == 3 && f->names[i]; i++) {
        if (g_ascii_strncasecmp(s, f->names[i], 3) == 0) {
            *ret = f->min + i;
            return true;
        }
    }
    return false;
}

/*
 * parse_item: one list item of field @f ("*", "V", "A-B", each with an
 * optional "/S") into *bits; NULL, or a problem (owned by the caller).
 */
static char *
parse_item(const CronField *f, const char *item, guint64 *bits)
{
    const char *slash = strchr(item, '/');
    gsize base_len = slash ? (gsize)(slash - item) : strlen(item);
    const char *dash = memchr(item, '-', base_len);
    guint lo = f->min, hi = f->max, step = 1;

    if (f->max == 7)
        hi = 6; /* '*' of weekdays: 7 is Sunday again */
    if (base_len == 0)
        return g_strdup_printf("'%s' has no value", item);
    if (slash) {
        gsize slen = strlen(slash + 1);

        if (slen == 0 || slen > 2 || !g_ascii_isdigit(slash[1]) ||
            (slen == 2 && !g_ascii_isdigit(slash[2])))
            return g_strdup_printf("step '%s' is not a number", slash + 1);
        step = (guint)g_ascii_strtoull(slash + 1, NULL, 10);
        if (step < 1 || step > f->max - f->min + 1)
            return g_strdup_printf("step %u is not in 1-%u", step,
                                   f->max - f->min + 1);
        if (!dash && !(base_len == 1 && item[0] == '*'))
            return g_strdup("a step needs '*' or a range before it");
    }
    if (base_len == 1 && item[0] == '*') {
        /* lo, hi as set */
    } else if (dash) {
        gsize alen = (gsize)(dash - item);

        if (!field_value(f, item, alen, &lo) ||
            !field_value(f, dash + 1, base_len - alen - 1, &hi))
            return g_strdup_printf("'%.*s' is not a range of two values",
                                   (int)base_len, item);
        if (lo > hi)
            return g_strdup_printf("range %u-%u goes backwards", lo, hi);
    } else {
        if (!field_value(f, item, base_len, &lo))
            return g_strdup_printf("'%.*s' is not a number%s", (int)base_len,
                                   item, f->names ? " or a name" : "");
        hi = lo;
    }
    if (lo < f->min || hi > f->max)
        return g_strdup_printf("%u is not in %u-%u", lo < f->min ? lo : hi,
                               f->min, f->max);
    for (guint v = lo; v <= hi; v += step)
        *bits |= G_GUINT64_CONSTANT(1) << (f->max == 7 && v == 7 ? 0 : v);
    return NULL;
}

/* parse_field: a comma-separated list of items of field @f */
static char *
parse_field(const CronField *f, const char *text, guint64 *ret_bits)
{
    g_auto(GStrv) items = g_strsplit(text, ",", -1);

    *ret_bits = 0;
    for (guint i = 0; items[i]; i++) {
        g_autofree char *why = parse_item(f, items[i], ret_bits);

        if (why)
            return g_strdup_printf("%s field '%s': %s", f->name, text, why);
    }
    return NULL;
}

/* whether some allowed month has some allowed day of the month */
static bool
some_date_exists(const Cron *c)
{
    for (guint m = 1; m <= 12; m++) {
        if (!(c->months & (1u << m)))
            continue;
        for (guint d = 1; d <= days_in_month(2000, m); d++) {
            if (c->days & (1u << d))
                return true;
        }
    }
    return false;
}

/* the fields of @text (a macro expanded), or NULL with a problem */
static GStrv
split_fields(const char *text, char **ret_problem)
{
    g_auto(GStrv) fields_out = NULL;
    GPtrArray *parts;

    if (text[0] == '@') {
        for (guint i = 0; i < G_N_ELEMENTS(macros); i++) {
            if (g_str_equal(text, macros[i].macro))
                return g_strsplit(macros[i].expansion, " ", -1);
        }
        *ret_problem = g_strdup_printf(
            "unknown macro '%s' (use @hourly, @daily, @midnight, @weekly, "
            "@monthly, @yearly or @annually)",
            text);
        return NULL;
    }
    parts = g_ptr_array_new();
    for (const char *p = text; *p;) {
        gsize n = strcspn(p, " ");

        if (n == 0) {
            p++;
            continue;
        }
        g_ptr_array_add(parts, g_strndup(p, n));
        p += n;
    }
    g_ptr_array_add(parts, NULL);
    fields_out = (GStrv)g_ptr_array_free(parts, FALSE);
    if (g_strv_length(fields_out) != 5) {
        guint n = g_strv_length(fields_out);

        *ret_problem = g_strdup_printf(
            "it has %u field%s, not 5 (minute hour day-of-month month "
            "day-of-week), nor is it a macro such as @daily",
            n, n == 1 ? "" : "s");
        return NULL;
    }
    return g_steal_pointer(&fields_out);
}

/* the characters a recurrence may hold */
static bool
cron_chars_ok(const char *text)
{
    for (const char *p = text; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("*,/- @", *p))
            return false;
    }
    return true;
}

bool
cron_parse(const char *text, Cron *ret_cron, char **ret_normalized,
           char **ret_problem)
{
    g_auto(GStrv) parts = NULL;
    g_autofree char *trimmed = NULL;
    guint64 bits[5];
    Cron c = {0};

    if (strlen(text) > CRON_MAX_BYTES) {
        *ret_problem =
            g_strdup_printf("it is longer than %u bytes", CRON_MAX_BYTES);
        return false;
    }
    if (!cron_chars_ok(text)) {
        *ret_problem = g_strdup("it may only hold letters, digits, spaces "
                                "and * , / - @");
        return false;
    }
    trimmed = g_strstrip(g_strdup(text)); /* spaces only, as checked */
    if (!(parts = split_fields(trimmed, ret_problem)))
        return false;
    for (guint i = 0; i < 5; i++) {
        if ((*ret_problem = parse_field(&fields[i], parts[i], &bits[i])))
            return false;
    }
    c.minutes = bits[0];
    c.hours = (guint32)bits[1];
    c.days = (guint32)bits[2];
    c.months = (guint16)bits[3];
    c.weekdays = (guint8)bits[4];
    c.days_star = parts[2][0] == '*';
    c.weekdays_star = parts[4][0] == '*';
    /* with both day fields restricted either matches: some day always does */
    if ((c.days_star || c.weekdays_star) && !some_date_exists(&c)) {
        *ret_problem = g_strdup("it never fires: no month it allows has "
                                "such a day");
        return false;
    }
    if (ret_normalized) {
        g_autofree char *joined =
            trimmed[0] == '@' ? g_strdup(trimmed) : g_strjoinv(" ", parts);

        *ret_normalized = g_ascii_strdown(joined, -1);
    }
    *ret_cron = c;
    return true;
}

/* ---- wall clocks ------------------------------------------------------- */

static gint32
offset_at(GTimeZone *tz, gint64 utc)
{
    return g_time_zone_get_offset(
        tz, g_time_zone_find_interval(tz, G_TIME_TYPE_UNIVERSAL, utc));
}

gint64
cron_utc_to_wall(GTimeZone *tz, gint64 utc)
{
    return utc + offset_at(tz, utc);
}

CronWall
cron_wall_to_utc(GTimeZone *tz, gint64 wall, gint64 *ret_utc)
{
    gint32 before = offset_at(tz, wall - SECONDS_PER_DAY);
    gint32 after = offset_at(tz, wall + SECONDS_PER_DAY);
    gint64 ua = wall - before, ub = wall - after;
    bool a_ok = offset_at(tz, ua) == before;
    bool b_ok = before != after && offset_at(tz, ub) == after;

    if (a_ok && b_ok) {
        *ret_utc = MIN(ua, ub);
        return CRON_WALL_REPEATED;
    }
    if (a_ok || b_ok) {
        *ret_utc = a_ok ? ua : ub;
        return CRON_WALL_EXISTS;
    }
    *ret_utc = ua; /* the offset before the skip: an instant after it */
    return CRON_WALL_SKIPPED;
}

/* ---- the next firing --------------------------------------------------- */

static bool
day_matches(const Cron *c, gint64 day)
{
    gint64 y;
    guint m, d, wd = (guint)(day + 4 - floor_div(day + 4, 7) * 7);
    bool dom, dow;

    civil_from_days(day, &y, &m, &d);
    if (!(c->months & (1u << m)))
        return false;
    dom = (c->days & (1u << d)) != 0;
    dow = (c->weekdays & (1u << wd)) != 0;
    return c->days_star || c->weekdays_star ? dom && dow : dom || dow;
}

/*
 * day_best: the smallest instant > @after among the firings of @c on wall
 * day @day, if smaller than *best (-1: none yet); false once a wall time
 * of the day lies a day beyond *best (no offset reaches a day, so nothing
 * later can be earlier: stop).  A day whose offset is the same a day
 * before and a day after it is read with that offset, two lookups for
 * the day (the common case); only days near a change are read wall time
 * by wall time with cron_wall_to_utc().
 */
static bool
day_best(const Cron *c, GTimeZone *tz, gint64 day, gint64 after, gint64 *best)
{
    gint64 start = day * SECONDS_PER_DAY;
    gint32 off = offset_at(tz, start - SECONDS_PER_DAY);
    bool uniform = off == offset_at(tz, start + 2 * SECONDS_PER_DAY);

    for (guint h = 0; h < 24; h++) {
        if (!(c->hours & (1u << h)))
            continue;
        for (guint mi = 0; mi < 60; mi++) {
            gint64 wall = start + h * 3600 + mi * 60;
            gint64 utc = wall - off;

            if (!(c->minutes & (G_GUINT64_CONSTANT(1) << mi)))
                continue;
            if (*best >= 0 && wall - SECONDS_PER_DAY > *best)
                return false;
            if (wall + SECONDS_PER_DAY <= after)
                continue; /* every offset is less than a day */
            if (!uniform)
                cron_wall_to_utc(tz, wall, &utc);
            if (utc > after && (*best < 0 || utc < *best)) {
                *best = utc;
                if (uniform)
                    return true; /* the day's first: in UTC order too */
            }
        }
    }
    return true;
}

gint64
cron_next(const Cron *c, GTimeZone *tz, gint64 after)
{
    gint64 first = floor_div(cron_utc_to_wall(tz, after), SECONDS_PER_DAY) - 1;
    gint64 best = -1;

    /* a whole Gregorian cycle without a firing: there is none */
    for (gint64 day = first; day < first + GREGORIAN_CYCLE_DAYS + 2; day++) {
        if (best >= 0 && (day - 1) * SECONDS_PER_DAY > best)
            break;
        if (day_matches(c, day) && !day_best(c, tz, day, after, &best))
            break;
    }
    return best;
}

/* ---- zones ------------------------------------------------------------- */

static bool
zone_name_ok(const char *name)
{
    gsize len = strlen(name);
    bool start = true;

    if (len == 0 || len > CRON_ZONE_NAME_MAX_BYTES)
        return false;
    for (const char *p = name; *p; p++) {
        if (start && !g_ascii_isalnum(*p))
            return false;
        start = *p == '/';
        if (!start && !g_ascii_isalnum(*p) && !strchr("_+-", *p))
            return false;
    }
    return !start;
}

GTimeZone *
cron_zone_new(const char *name, char **ret_problem)
{
    const char *dir = g_getenv("TZDIR");
    g_autofree char *path = NULL;
    GTimeZone *tz;

    if (!zone_name_ok(name)) {
        *ret_problem = g_strdup_printf(
            "it is not a time zone name (1 to %u characters from A-Z a-z "
            "0-9 _ + - in parts separated by '/', each starting with a "
            "letter or digit)",
            CRON_ZONE_NAME_MAX_BYTES);
        return NULL;
    }
    if (g_str_equal(name, "UTC"))
        return g_time_zone_new_utc();
    /* the same directory GLib reads, so that a rule string ("XYZ5") or a
     * name the database lacks is not taken for a zone */
    path =
        g_build_filename(dir && *dir ? dir : "/usr/share/zoneinfo", name, NULL);
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR) ||
        !(tz = g_time_zone_new_identifier(name))) {
        *ret_problem = g_strdup_printf("there is no such time zone in the "
                                       "zoneinfo database ('%s')",
                                       path);
        return NULL;
    }
    return tz;
}

/* ---- ISO 8601 ---------------------------------------------------------- */

/* @n digits at @s into *ret; false if they are not all digits */
static bool
digits(const char *s, guint n, guint *ret)
{
    guint v = 0;

    for (guint i = 0; i < n; i++) {
        if (!g_ascii_isdigit(s[i]))
            return false;
        v = v * 10 + (guint)(s[i] - '0');
    }
    *ret = v;
    return true;
}

/* the offset "Z", "+HH:MM" or "-HH:MM" at @s, to the end */
static bool
parse_offset(const char *s, gint32 *ret)
{
    guint h, m;

    if (g_str_equal(s, "Z")) {
        *ret = 0;
        return true;
    }
    if ((s[0] != '+' && s[0] != '-') || strlen(s) != 6 || s[3] != ':' ||
        !digits(s + 1, 2, &h) || !digits(s + 4, 2, &m) || h > 23 || m > 59)
        return false;
    *ret = (gint32)(h * 3600 + m * 60) * (s[0] == '-' ? -1 : 1);
    return true;
}

/* the "YYYY-MM-DDTHH:MM[:SS]" at the start of @text, *ret_rest after it */
static bool
parse_date_time(const char *text, guint v[6], const char **ret_rest)
{
    const char *rest = text + 16;

    v[5] = 0;
    if (strlen(text) < 16 || !digits(text, 4, &v[0]) || text[4] != '-' ||
        !digits(text + 5, 2, &v[1]) || text[7] != '-' ||
        !digits(text + 8, 2, &v[2]) || text[10] != 'T' ||
        !digits(text + 11, 2, &v[3]) || text[13] != ':' ||
        !digits(text + 14, 2, &v[4]))
        return false;
    if (rest[0] == ':') {
        if (!digits(rest + 1, 2, &v[5]))
            return false;
        rest += 3;
    }
    *ret_rest = rest;
    return true;
}

bool
cron_at_parse(const char *text, gint64 *ret_wall, bool *ret_has_offset,
              gint32 *ret_offset, char **ret_problem)
{
    guint v[6]; /* year, month, day, hour, minute, second */
    const char *rest = NULL;
    gint32 offset = 0;

    if (strlen(text) > CRON_AT_MAX_BYTES || !parse_date_time(text, v, &rest) ||
        (*rest && !parse_offset(rest, &offset))) {
        *ret_problem = g_strdup("it is not an ISO 8601 date and time "
                                "YYYY-MM-DDTHH:MM[:SS] with an optional Z "
                                "or +HH:MM");
        return false;
    }
    if (v[0] < CRON_AT_YEAR_MIN || v[0] > CRON_AT_YEAR_MAX || v[1] < 1 ||
        v[1] > 12 || v[2] < 1 || v[2] > days_in_month(v[0], v[1]) ||
        v[3] > 23 || v[4] > 59 || v[5] > 59) {
        *ret_problem =
            g_strdup_printf("there is no such date and time (years %d to %d)",
                            CRON_AT_YEAR_MIN, CRON_AT_YEAR_MAX);
        return false;
    }
    *ret_wall = days_from_civil(v[0], v[1], v[2]) * SECONDS_PER_DAY +
                v[3] * 3600 + v[4] * 60 + v[5];
    *ret_has_offset = *rest != '\0';
    *ret_offset = offset;
    return true;
}

char *
cron_wall_format(gint64 wall)
{
    gint64 day = floor_div(wall, SECONDS_PER_DAY);
    gint64 sec = wall - day * SECONDS_PER_DAY;
    gint64 y;
    guint m, d;

    civil_from_days(day, &y, &m, &d);
    return g_strdup_printf("%04" G_GINT64_FORMAT "-%02u-%02uT%02d:%02d:%02d", y,
                           m, d, (int)(sec / 3600), (int)(sec / 60 % 60),
                           (int)(sec % 60));
}
