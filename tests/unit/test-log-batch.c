/*
 * test-log-batch.c: the log writer that writes a batch of messages at
 * once (common/log-batch.c).  Each test is a process of its own
 * (Criterion forks), so each installs the writer once, with stderr sent
 * to a file of the test.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>

#include "log-batch.h"

static char log_path[] = "/tmp/spore-log-batch-XXXXXX";

/* stderr into a new file; the writer installed when @install */
static void
setup_log(bool install)
{
    int fd = mkstemp(log_path);

    cr_assert(fd >= 0);
    cr_assert(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
    close(fd);
    if (install)
        log_batch_install();
}

static char *
logged(void)
{
    char *text = NULL;

    cr_assert(g_file_get_contents(log_path, &text, NULL, NULL));
    return text;
}

static void
teardown_log(void)
{
    unlink(log_path);
}

Test(log_batch, holds_messages_until_the_flush_then_writes_them_in_order)
{
    g_autofree char *before = NULL, *after = NULL;
    bool held;
    const char *one, *two;

    setup_log(true);
    held = log_batch_hold();
    cr_assert(held);
    g_message("first line");
    g_message("second line");
    before = logged();
    cr_expect_str_empty(before, "written before the flush: %s", before);
    log_batch_flush(held);
    after = logged();
    one = strstr(after, "first line\n");
    two = strstr(after, "second line\n");
    cr_assert(one && two && one < two, "%s", after);
    /* formatted as GLib's default writer does */
    cr_expect(g_str_has_prefix(after, "** Message: "), "%s", after);
    teardown_log();
}

Test(log_batch, writes_at_once_when_nobody_holds)
{
    g_autofree char *text = NULL;

    setup_log(true);
    g_message("not held");
    text = logged();
    cr_expect(strstr(text, "not held\n") != NULL, "%s", text);
    teardown_log();
}

Test(log_batch, a_warning_writes_the_held_lines_before_itself)
{
    g_autofree char *text = NULL;
    bool held;
    const char *msg, *warn;

    setup_log(true);
    held = log_batch_hold();
    g_message("held message");
    g_warning("a warning");
    text = logged();
    msg = strstr(text, "held message\n");
    warn = strstr(text, "a warning\n");
    cr_assert(msg && warn && msg < warn, "%s", text);
    log_batch_flush(held);
    teardown_log();
}

static gpointer
log_other(gpointer data)
{
    (void)data;
    g_message("from another thread");
    return NULL;
}

Test(log_batch, another_threads_messages_are_not_held)
{
    g_autofree char *text = NULL, *all = NULL;
    bool held;

    setup_log(true);
    held = log_batch_hold();
    g_message("held by the main thread");
    g_thread_join(g_thread_new("other", log_other, NULL));
    text = logged();
    cr_expect(strstr(text, "from another thread\n") != NULL, "%s", text);
    cr_expect(strstr(text, "held by the main thread") == NULL, "%s", text);
    /* and it cannot hold while the main thread does */
    log_batch_flush(held);
    all = logged();
    cr_expect(strstr(all, "held by the main thread\n") != NULL, "%s", all);
    teardown_log();
}

Test(log_batch, a_nested_hold_is_refused_and_the_outer_flush_writes_all)
{
    g_autofree char *text = NULL, *all = NULL;
    bool outer, inner;

    setup_log(true);
    outer = log_batch_hold();
    inner = log_batch_hold();
    cr_assert(outer);
    cr_assert(!inner);
    g_message("inside both");
    log_batch_flush(inner);
    text = logged();
    cr_expect_str_empty(text, "the inner flush wrote: %s", text);
    log_batch_flush(outer);
    all = logged();
    cr_expect(strstr(all, "inside both\n") != NULL, "%s", all);
    teardown_log();
}

Test(log_batch, writes_what_it_holds_past_64_kib_without_a_flush)
{
    g_autofree char *text = NULL;
    g_autofree char *long_text = g_strnfill(1000, 'x');
    bool held;

    setup_log(true);
    held = log_batch_hold();
    for (int i = 0; i < 100; i++)
        g_message("%d %s", i, long_text);
    text = logged();
    cr_expect(strlen(text) >= 64 * 1024, "held %zu bytes unwritten",
              100 * strlen(long_text) - strlen(text));
    cr_expect(strstr(text, "99 xxx") == NULL, "the last line before the flush");
    log_batch_flush(held);
    g_free(text);
    text = logged();
    cr_expect(strstr(text, "99 xxx") != NULL);
    teardown_log();
}

Test(log_batch, does_nothing_unless_installed)
{
    g_autofree char *text = NULL;

    setup_log(false);
    cr_expect(!log_batch_hold());
    g_message("default writer");
    text = logged();
    cr_expect(strstr(text, "default writer\n") != NULL, "%s", text);
    teardown_log();
}
