/*
 * log-batch.c: a daemon's log writer that writes a batch of messages at
 * once (log-batch.h).
 *
 * Invariants:
 *   1. Only the holding thread (holder) touches the held text: the writer
 *      compares holder with the calling thread before anything else.
 *   2. A line is held only while holder is set; the flush writes what is
 *      held before it clears holder, so no line is left behind.
 */
#include "log-batch.h"

#include <stdio.h>
#include <unistd.h>
#include <glib.h>

/* held text written before it grows further */
#define LOG_BATCH_MAX (64 * 1024)

static bool installed;
static bool to_journal; /* stderr is the journal: GLib writes fields */
static GThread *holder; /* atomic; NULL: nobody holds */
static GString *held;   /* the holder's lines (invariant 1) */

static void
write_held(void)
{
    if (!held || held->len == 0)
        return;
    fwrite(held->str, 1, held->len, stderr);
    fflush(stderr);
    g_string_truncate(held, 0);
}

static GLogWriterOutput
batch_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields,
             gpointer data)
{
    if (g_atomic_pointer_get(&holder) == g_thread_self()) {
        if ((level & G_LOG_LEVEL_MASK) == G_LOG_LEVEL_MESSAGE) {
            g_autofree char *line =
                g_log_writer_format_fields(level, fields, n_fields, FALSE);

            g_string_append(held, line);
            g_string_append_c(held, '\n');
            if (held->len >= LOG_BATCH_MAX)
                write_held();
            return G_LOG_WRITER_HANDLED;
        }
        /* the order of stderr: what is held comes first */
        if (level &
            (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING))
            write_held();
    }
    return g_log_writer_default(level, fields, n_fields, data);
}

void
log_batch_install(void)
{
    g_return_if_fail(!installed);
    to_journal = g_log_writer_is_journald(fileno(stderr));
    held = g_string_new(NULL);
    g_log_set_writer_func(batch_writer, NULL, NULL);
    installed = true;
}

bool
log_batch_hold(void)
{
    /* the journal takes one record per message anyway */
    if (!installed || to_journal)
        return false;
    return g_atomic_pointer_compare_and_exchange(&holder, NULL,
                                                 g_thread_self());
}

void
log_batch_flush(bool was_held)
{
    if (!was_held)
        return;
    write_held(); /* invariant 2 */
    g_atomic_pointer_set(&holder, NULL);
}
