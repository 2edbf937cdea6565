/*
 * log-batch.h: a daemon's log writer that writes a batch of messages at
 * once.
 *
 * GLib's default writer makes one write(2) per message.  spored logs an
 * event per clone placed and per command (manager_event): a pass that
 * places 250 clones wrote 500 lines one by one, ~15 % of the pass's CPU
 * time.  Between log_batch_hold() and log_batch_flush(), the G_LOG_LEVEL_
 * MESSAGE lines of the holding thread are kept and written together at
 * the flush (or once 64 KiB are held), formatted as GLib's default writer
 * formats them.  Everything else (another thread, a warning, a debug
 * line, a log that goes to the journal) goes to GLib's default writer at
 * once; a warning or critical of the holding thread first writes what is
 * held, so that the log keeps its order.
 */
#pragma once

#include <stdbool.h>

/* log_batch_install: make this writer the program's (g_log_set_writer_
 * func, once, before threads log; programs only, never libraries).
 * Without it, hold and flush do nothing. */
void log_batch_install(void);

/* log_batch_hold: keep the calling thread's messages until
 * log_batch_flush(); false (and nothing held) when another thread holds
 * or the writer is not installed. */
bool log_batch_hold(void);

/* log_batch_flush: write what is held, in one write, and stop holding.
 * Call it with what log_batch_hold() returned (false: nothing to do). */
void log_batch_flush(bool held);
