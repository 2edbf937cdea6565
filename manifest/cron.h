/*
 * cron.h: when a scheduled scaling policy fires — cron recurrences, ISO
 * 8601 start times and the wall clock of a time zone (docs/scaling.md,
 * "Scheduled policies"; the syntax is in spore-manifest(5)).
 *
 * Times are whole seconds: "UTC seconds" since the Unix epoch, and "wall
 * seconds", the same count for a local calendar date and clock time read
 * as if it were UTC (so a wall time's date and clock come from plain
 * arithmetic, and its UTC instant from the zone).
 *
 * Everything here is pure and thread-safe: the only state is the
 * GTimeZone, which GLib keeps immutable.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

/* Limits on what a manifest may write. */
#define CRON_MAX_BYTES           128u /* a recurrence, as written */
#define CRON_ZONE_NAME_MAX_BYTES 64u  /* a time zone name */
#define CRON_AT_MAX_BYTES        32u  /* an ISO 8601 start time */
#define CRON_AT_YEAR_MIN         1970
#define CRON_AT_YEAR_MAX         9999

/*
 * A parsed recurrence: a bit per allowed value of each field.  A day
 * matches when its month is allowed and, as in Vixie cron, both its
 * day-of-month and day-of-week bits are set when either field begins
 * with '*', else either bit is.
 */
typedef struct {
    guint64 minutes;    /* bits 0..59 */
    guint32 hours;      /* bits 0..23 */
    guint32 days;       /* bits 1..31 */
    guint16 months;     /* bits 1..12 */
    guint8 weekdays;    /* bits 0..6, Sunday = 0 */
    bool days_star;     /* the day-of-month field begins with '*' */
    bool weekdays_star; /* the day-of-week field begins with '*' */
} Cron;

/*
 * cron_parse: parse a recurrence of five fields "MINUTE HOUR DAY MONTH
 * WEEKDAY" (each '*', a value, a range A-B, either with a step /S, or a
 * comma-separated list of those; month and weekday names jan..dec,
 * sun..sat in any case; weekday 7 is Sunday) or one of the macros
 * @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually.
 * A recurrence that matches no date at all ("0 0 31 2 *") is refused.
 *
 * On success fills *ret_cron and, if @ret_normalized is not NULL, sets it
 * to the text with single spaces and lower case (owned by the caller).
 * On failure returns false and sets *ret_problem to a sentence saying
 * what is wrong (owned by the caller).
 */
bool cron_parse(const char *text, Cron *ret_cron, char **ret_normalized,
                char **ret_problem);

/*
 * cron_next: the first instant (UTC seconds) after @after at which @cron
 * fires in the wall clock of @tz, or -1 if there is none within a
 * 400-year Gregorian cycle, after which the calendar repeats (never for
 * a recurrence cron_parse() accepted).
 *
 * A wall time the zone skips (spring forward: 02:30 in Europe/Berlin on
 * the last Sunday of March) fires once, at the UTC instant of that wall
 * time read with the offset before the change (03:30 summer time); a wall
 * time the zone repeats (fall back) fires once, at its first occurrence.
 * See cron_wall_to_utc().
 */
gint64 cron_next(const Cron *cron, GTimeZone *tz, gint64 after);

typedef enum {
    CRON_WALL_EXISTS,   /* exactly one instant has this wall time */
    CRON_WALL_REPEATED, /* two: the clocks went back; the first is given */
    CRON_WALL_SKIPPED,  /* none: the clocks went forward over it */
} CronWall;

/*
 * cron_wall_to_utc: the UTC instant of wall time @wall in @tz into
 * *ret_utc: the only one, the first of two, or for a skipped wall time
 * @wall read with the offset in effect before the skip (an instant just
 * after it).  Says which case it was.  Assumes, as every real zone, that
 * its offset changes at most once within a day of @wall.
 */
CronWall cron_wall_to_utc(GTimeZone *tz, gint64 wall, gint64 *ret_utc);

/* cron_utc_to_wall: the wall time of UTC instant @utc in @tz */
gint64 cron_utc_to_wall(GTimeZone *tz, gint64 utc);

/*
 * cron_zone_new: the time zone named @name: "UTC", or a file of the
 * system's zoneinfo database ($TZDIR, else /usr/share/zoneinfo) such as
 * "Europe/Berlin".  Names are 1 to CRON_ZONE_NAME_MAX_BYTES characters
 * from A-Z a-z 0-9 _ + - in components separated by '/', each starting
 * with a letter or digit: no absolute paths, no "..", no POSIX TZ rule
 * strings.  Returns a reference owned by the caller, or NULL with
 * *ret_problem set (owned by the caller).
 */
GTimeZone *cron_zone_new(const char *name, char **ret_problem);

/*
 * cron_at_parse: an ISO 8601 date and time "YYYY-MM-DDTHH:MM" or
 * "YYYY-MM-DDTHH:MM:SS", optionally followed by "Z" or an offset "+HH:MM"
 * / "-HH:MM"; the year from CRON_AT_YEAR_MIN to CRON_AT_YEAR_MAX.
 * On success sets *ret_wall to the wall seconds as written, and
 * *ret_has_offset and *ret_offset (seconds east of UTC) when an offset or
 * Z was given (the UTC instant is then wall - offset).  On failure
 * returns false with *ret_problem set (owned by the caller).
 */
bool cron_at_parse(const char *text, gint64 *ret_wall, bool *ret_has_offset,
                   gint32 *ret_offset, char **ret_problem);

/* cron_wall_format: "YYYY-MM-DDTHH:MM:SS" of wall seconds @wall, owned by
 * the caller */
char *cron_wall_format(gint64 wall);
