/*
 * ctl-output.c: what sporectl prints (ctl.h) — sizes and times for people,
 * virsh-style tables, JSON, manifest problems and the progress line of the
 * --wait options.
 *
 * Results go to standard output, problems and progress to standard error.
 * Invariant: a progress line left pending on a terminal (no '\n' yet) is
 * ended by ctl_progress_end before anything else is written to standard
 * error, so that no message starts in the middle of it.
 */
#include "ctl.h"

#include <stdarg.h>
#include <string.h>
#include <unistd.h>

char *
ctl_human_bytes(guint64 n)
{
    return g_format_size_full(n, G_FORMAT_SIZE_IEC_UNITS);
}

char *
ctl_one_line(char *text)
{
    for (char *p = text; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    }
    return text;
}

char *
ctl_local_time(double t)
{
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_local((gint64)t);

    return dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
}

char *
ctl_format_ago(double seconds)
{
    if (seconds < 60)
        return g_strdup_printf("%.0fs ago", seconds);
    if (seconds < 3600)
        return g_strdup_printf("%.0fm ago", seconds / 60);
    if (seconds < 86400)
        return g_strdup_printf("%.0fh ago", seconds / 3600);
    return g_strdup_printf("%.0fd ago", seconds / 86400);
}

void
ctl_print_json(JsonObject *obj)
{
    g_autofree char *text = json_util_to_text(obj, true);

    printf("%s\n", text);
}

void
ctl_print_problem_at(const char *file, guint line, const char *message)
{
    ctl_progress_end();
    if (line)
        fprintf(stderr, "%s:%u: %s\n", file, line, message);
    else
        fprintf(stderr, "%s: %s\n", file, message);
}

void
ctl_print_manifest_problems(const char *file, GPtrArray *problems,
                            const GError *err)
{
    if (problems->len == 0 && err)
        ctl_print_problem_at(file, 0, err->message);
    for (guint p = 0; p < problems->len; p++) {
        const ManifestProblem *prob = problems->pdata[p];

        ctl_print_problem_at(file, prob->line, prob->message);
    }
}

/* ---- tables ------------------------------------------------------------ */

void
ctl_table_start(CtlTable *t, const char *const *header)
{
    t->columns = 0;
    t->cells = g_ptr_array_new_with_free_func(g_free);
    while (header[t->columns])
        g_ptr_array_add(t->cells, g_strdup(header[t->columns++]));
}

void
ctl_table_add(CtlTable *t, const char *format, ...)
{
    va_list ap;

    va_start(ap, format);
    g_ptr_array_add(t->cells, ctl_one_line(g_strdup_vprintf(format, ap)));
    va_end(ap);
}

void
ctl_table_finish(CtlTable *t)
{
    g_autofree glong *width = g_new0(glong, t->columns);
    glong total = 0;

    for (guint i = 0; i < t->cells->len; i++) {
        glong n = g_utf8_strlen(t->cells->pdata[i], -1);

        width[i % t->columns] = MAX(width[i % t->columns], n);
    }
    for (guint c = 0; c < t->columns; c++)
        total += width[c] + 3;
    for (guint i = 0; i < t->cells->len; i++) {
        const char *cell = t->cells->pdata[i];
        guint c = i % t->columns;

        if (c == 0)
            putchar(' ');
        if (c + 1 < t->columns)
            printf("%s%*s", cell, (int)(width[c] - g_utf8_strlen(cell, -1) + 3),
                   "");
        else
            printf("%s\n", cell);
        if (i + 1 == t->columns) {
            for (glong k = 0; k < total; k++)
                putchar('-');
            putchar('\n');
        }
    }
    g_ptr_array_free(t->cells, TRUE);
    t->cells = NULL;
}

/* ---- the progress line ------------------------------------------------- */

static bool progress_pending; /* a line on stderr without its '\n' yet */
static char *progress_last;   /* the text shown last */

void
ctl_progress_end(void)
{
    if (progress_pending)
        fputc('\n', stderr);
    progress_pending = false;
    g_clear_pointer(&progress_last, g_free);
}

void
ctl_progress_show(const char *text)
{
    if (isatty(STDERR_FILENO)) {
        gsize width = strlen(text);
        gsize old = progress_last ? strlen(progress_last) : 0;

        fprintf(stderr, "\r%s%*s", text, (int)(old > width ? old - width : 0),
                "");
        progress_pending = true;
    } else if (!progress_last || !g_str_equal(progress_last, text)) {
        fprintf(stderr, "%s\n", text);
    }
    g_free(progress_last);
    progress_last = g_strdup(text);
}
