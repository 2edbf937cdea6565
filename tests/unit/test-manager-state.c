/*
 * test-manager-state.c: spored's state layer against databases that fail —
 * read-only, locked by another connection, a statement that breaks a
 * constraint inside a transaction: every function reports the error, and a
 * rolled-back transaction leaves nothing behind — and what it keeps:
 * values of every type, ids, a copy to another backend.
 *
 * The same tests run against both backends (test-state-util.h): meson
 * registers this file as manager-state (SQLite) and manager-state-pg
 * (PostgreSQL, under tests/pg-lib.sh).  A few are of one backend only,
 * and say so.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <libpq-fe.h>

#include "manager-state.h"
#include "spore-error.h"
#include "state-db.h"
#include "test-state-util.h"
#include "test-util.h"

static char *dir;
static char *path; /* the SQLite file, or the PostgreSQL DSN */

static bool
on_pg(void)
{
    return test_state_backend() == STATE_BACKEND_POSTGRESQL;
}

static void
setup(void)
{
    dir = g_dir_make_tmp("spore-state-XXXXXX", NULL);
    cr_assert(dir);
    path = test_state_where(dir);
}

static void
teardown(void)
{
    if (dir)
        test_rm_rf(dir);
    g_clear_pointer(&dir, g_free);
    g_clear_pointer(&path, g_free);
}

/* skip_here: skip the test, its temporary directory removed first
 * (Criterion runs no .fini after a skip) */
#define skip_here(...)             \
    do {                           \
        teardown();                \
        cr_skip_test(__VA_ARGS__); \
    } while (0)

TestSuite(manager_state, .init = setup, .fini = teardown);

static StateDb *
open_or_fail(void)
{
    g_autoptr(GError) err = NULL;
    StateDb *db = test_state_open_at(path, &err);

    cr_assert(db, "%s", err ? err->message : "");
    return db;
}

/* a database with service "web" (2 clones) and image "img" */
static StateDb *
populated(void)
{
    StateDb *db = open_or_fail();
    g_autoptr(GError) err = NULL;

    cr_assert(state_begin(db, &err) &&
                  state_service_insert(db, "web", "<m/>", "img", 2, &err) &&
                  state_clone_sync(db, "web", 2, &err) &&
                  state_commit(db, &err),
              "%s", err ? err->message : "");
    return db;
}

static guint
services_in(StateDb *db)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) list = state_service_list(db, &err);

    cr_assert(list, "%s", err ? err->message : "");
    return list->len;
}

Test(manager_state, creates_the_database_readable_by_its_owner_only)
{
    StateDb *db = NULL;
    struct stat st;

    if (on_pg())
        skip_here("a SQLite file's mode (PostgreSQL has roles)");
    db = open_or_fail();

    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
    state_close(db);
}

/* add_commands: @n commands, one transaction each (as a pass's sends) */
static void
add_commands(StateDb *db, guint n)
{
    g_autoptr(GError) err = NULL;

    for (guint i = 0; i < n; i++) {
        gint64 id;

        cr_assert(state_begin(db, &err) &&
                      state_command_add(db, "hv1", "clone-create", "web",
                                        "{\"v\":1,\"pad\":\"................"
                                        "................................\"}",
                                        &id, &err) &&
                      state_commit(db, &err),
                  "%s", err ? err->message : "");
    }
}

/* checkpointed_after: the checkpointer copied frames back more than
 * @before times (waits for it: at most 60 s) */
static bool
checkpointed_after(StateDb *db, guint64 before)
{
    for (guint i = 0; i < 600; i++) {
        if (state_db_sqlite_checkpoints(db) > before)
            return true;
        g_usleep(100 * 1000);
    }
    return false;
}

/* The write-ahead log is checkpointed by a thread of its own, rather than
 * by the commit that crosses SQLite's threshold (which synced the whole
 * log in the middle of a pass), and it does not grow round after round
 * (a stream of commits without a pause never lets the log start over
 * after the thread's checkpoints alone: the commits' own threshold
 * bounds it). */
Test(manager_state, checkpoints_the_write_ahead_log_in_a_thread)
{
    StateDb *db = NULL;
    g_autofree char *wal = NULL;
    struct stat st;
    off_t first;

    if (on_pg())
        skip_here("SQLite's write-ahead log");
    db = populated();
    wal = g_strconcat(path, "-wal", NULL);
    add_commands(db, 1500);
    cr_assert(checkpointed_after(db, 0), "no checkpoint within 60 s");
    cr_assert_eq(stat(wal, &st), 0);
    first = st.st_size;
    for (guint round = 0; round < 3; round++) {
        guint64 n = state_db_sqlite_checkpoints(db);

        add_commands(db, 1500);
        cr_assert(checkpointed_after(db, n), "round %u: no checkpoint", round);
    }
    cr_assert_eq(stat(wal, &st), 0);
    cr_expect_lt(st.st_size, 2 * first,
                 "the log grew from %jd to %jd bytes over 3 more rounds",
                 (intmax_t)first, (intmax_t)st.st_size);
    state_close(db);
}

Test(manager_state, names_every_state_both_ways)
{
    for (CommandState s = COMMAND_PENDING; s <= COMMAND_CANCELLED; s++) {
        CommandState back;

        cr_expect(command_state_from_string(command_state_to_string(s), &back));
        cr_expect_eq(back, s);
    }
    for (HostState s = HOST_PENDING; s <= HOST_LOST; s++) {
        HostState back;

        cr_expect(host_state_from_string(host_state_to_string(s), &back));
        cr_expect_eq(back, s);
    }
    for (CloneState s = CLONE_PENDING; s <= CLONE_UNKNOWN; s++) {
        CloneState back;

        cr_expect(clone_state_from_string(clone_state_to_string(s), &back));
        cr_expect_eq(back, s);
    }
    cr_expect_str_eq(clone_state_to_string(CLONE_DELETING), "deleting");
    cr_expect_not(command_state_from_string("launched", &(CommandState){0}));
}

Test(manager_state, rolls_back_a_command_whose_last_statement_fails)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) clones = NULL;
    gint64 id = 0;

    cr_assert(state_begin(db, &err));
    cr_assert(
        state_command_add(db, "hv1", "clone-create", "web", "{}", &id, &err));
    cr_assert(state_clone_sync(db, "web", 5, &err));
    /* a second service of the same name breaks the primary key */
    cr_expect_not(state_service_insert(db, "web", "<m/>", "img", 1, &err));
    cr_assert(err);
    cr_expect(strstr(err->message, "cannot add a service"), "%s", err->message);
    state_rollback(db);
    clones = state_clone_list(db, "web", NULL, NULL);
    cr_assert(clones);
    cr_expect_eq(clones->len, 2u, "the grown clone rows were rolled back");
    {
        g_autoptr(GPtrArray) cmds =
            state_command_list_pending(db, NULL, G_MAXDOUBLE, NULL);

        cr_assert(cmds);
        cr_expect_eq(cmds->len, 0u, "the command was rolled back");
    }
    state_close(db);
}

/* read_only: a second session to the test's database that may not
 * write (SQLite: opened read-only; PostgreSQL: read-only transactions) */
static StateDb *
read_only(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *dsn = NULL;
    StateDb *ro;

    if (!on_pg()) {
        ro = state_db_sqlite_open(path, true, &err);
    } else {
        dsn = g_strdup_printf(
            "%s options='-c default_transaction_read_only=on'", path);
        ro = state_open_postgresql(dsn, &err);
    }
    cr_assert(ro, "%s", err ? err->message : "");
    return ro;
}

Test(manager_state, reports_every_write_to_a_read_only_database)
{
    StateDb *db = populated();
    StateDb *ro = NULL;
    g_autoptr(GError) err = NULL;
    gint64 id;

    state_close(db);
    ro = read_only();
    cr_expect_not(state_service_insert(ro, "db", "<m/>", "img", 1, &err));
    cr_expect(err && (strstr(err->message, "readonly") ||
                      strstr(err->message, "read-only")),
              "%s", err ? err->message : "");
    cr_expect(err && strstr(err->message, "cannot add a service"), "%s",
              err ? err->message : "");
    g_clear_error(&err);
    cr_expect_not(
        state_command_add(ro, "hv1", "clone-create", "web", "{}", &id, &err));
    cr_expect(err);
    g_clear_error(&err);
    cr_expect_not(state_event_add(ro, "x", NULL, NULL, "x", &err));
    cr_expect(err);
    cr_expect_eq(services_in(ro), 1u, "reads still work");
    state_close(ro);
    db = open_or_fail();
    cr_expect_eq(services_in(db), 1u, "nothing was written");
    state_close(db);
}

Test(manager_state, reports_a_database_locked_by_another_connection)
{
    StateDb *db = NULL;
    sqlite3 *other = NULL;
    g_autoptr(GError) err = NULL;

    if (on_pg())
        skip_here("SQLite's write lock (manager_state_pg has the "
                  "PostgreSQL one)");
    db = populated();
    cr_assert_eq(sqlite3_open(path, &other), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL),
                 SQLITE_OK);
    state_db_sqlite_set_busy_timeout(db, 0); /* not the daemon's timeout */
    cr_expect_not(state_begin(db, &err));
    cr_assert(err);
    cr_expect(strstr(err->message, "locked"), "%s", err->message);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE));
    g_clear_error(&err);
    cr_expect_not(state_service_set_deleting(db, "web", &err),
                  "a write outside a transaction fails too");
    cr_expect(err);
    sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(other);
    g_clear_error(&err);
    cr_expect(
        state_begin(db, &err) && state_service_set_deleting(db, "web", &err) &&
            state_commit(db, &err),
        "once released, the same write works: %s", err ? err->message : "");
    state_close(db);
}

Test(manager_state, reports_a_row_locked_by_another_session_after_lock_timeout)
{
    StateDb *db = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *dsn = NULL;
    PGconn *other = NULL;
    PGresult *res;

    if (!on_pg())
        skip_here("PostgreSQL's lock_timeout (SQLite has the test above)");
    state_close(populated());
    dsn = g_strdup_printf("%s options='-c lock_timeout=200'", path);
    db = state_open_postgresql(dsn, &err);
    cr_assert(db, "%s", err ? err->message : "");
    other = PQconnectdb(path);
    cr_assert_eq(PQstatus(other), CONNECTION_OK);
    res = PQexec(other, "BEGIN; LOCK TABLE services IN ACCESS EXCLUSIVE MODE");
    cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    cr_assert(state_begin(db, &err), "%s", err ? err->message : "");
    cr_expect_not(state_service_set_deleting(db, "web", &err));
    cr_assert(err);
    cr_expect(strstr(err->message, "lock timeout"), "%s", err->message);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE),
              "a lock timeout is worth trying again");
    g_clear_error(&err);
    cr_expect_not(state_commit(db, &err), "a failed transaction never commits");
    state_rollback(db);
    PQclear(PQexec(other, "ROLLBACK"));
    PQfinish(other);
    g_clear_error(&err);
    cr_expect(
        state_begin(db, &err) && state_service_set_deleting(db, "web", &err) &&
            state_commit(db, &err),
        "once released, the same write works: %s", err ? err->message : "");
    state_close(db);
}

Test(manager_state, cancels_a_lost_hosts_commands_but_its_destroys)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) pending = NULL;
    g_autoptr(GPtrArray) clones = NULL;
    gint64 create = 0, destroy = 0;

    cr_assert(state_host_insert_accepted(db, "hv1", "KEY", &err));
    cr_assert(state_clone_place(db, "web", 0, "hv1", &err));
    cr_assert(state_command_add(db, "hv1", "clone-create", "web", "{}", &create,
                                &err));
    cr_assert(state_command_add(db, "hv1", "clone-destroy", "web", "{}",
                                &destroy, &err));
    cr_assert(state_host_set_lost(db, "hv1", &err), "%s",
              err ? err->message : "");
    pending = state_command_list_pending(db, "hv1", G_MAXDOUBLE, &err);
    cr_assert(pending);
    cr_assert_eq(pending->len, 1u);
    cr_expect_eq(((CommandRow *)pending->pdata[0])->id, destroy);
    clones = state_clone_list_unplaced(db, &err);
    cr_assert(clones);
    cr_expect_eq(clones->len, 2u, "its clone is unplaced");
    state_close(db);
}

/* what the pass reads of the pending commands: their heads (id and host
 * only, from the index), and those above an id (a pass's own) */
Test(manager_state, lists_the_pending_commands_heads)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) heads = NULL;
    gint64 a = 0, b = 0, c = 0;

    cr_assert(state_host_insert_accepted(db, "hv1", "KEY", &err));
    cr_assert(state_host_insert_accepted(db, "hv2", "KEY2", &err));
    cr_assert(state_command_add(db, "hv1", "clone-create", "web", "{\"a\":1}",
                                &a, &err));
    cr_assert(state_command_add(db, "hv2", "clone-create", "web", "{\"b\":1}",
                                &b, &err));
    cr_assert(state_command_add(db, "hv1", "clone-destroy", "web", "{\"c\":1}",
                                &c, &err));
    cr_assert(state_command_finish(db, b, COMMAND_DONE, NULL, &err));
    heads = state_command_list_pending_heads(db, &err);
    cr_assert(heads, "%s", err ? err->message : "");
    cr_assert_eq(heads->len, 2u, "the done one is not pending");
    cr_expect_eq(((CommandRow *)heads->pdata[0])->id, a);
    cr_expect_str_eq(((CommandRow *)heads->pdata[0])->host, "hv1");
    cr_expect_null(((CommandRow *)heads->pdata[0])->body);
    cr_expect_eq(((CommandRow *)heads->pdata[1])->id, c);
    state_close(db);
}

/* A pass stores its commands as sent (they go right after its commit,
 * with no transaction of their own); one that then could not go is marked
 * unsent: due at once, and not counted as a send. */
Test(manager_state, stores_a_command_as_sent_and_marks_it_unsent_if_it_was_not)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) due = NULL;
    g_autoptr(GPtrArray) due_after = NULL;
    StateCounts counts = {0};
    gint64 a = 0, b = 0;

    cr_assert(state_host_insert_accepted(db, "hv1", "KEY", &err));
    cr_assert(state_command_add_sent(db, "hv1", "clone-create", "web",
                                     "{\"a\":1}", 1000.0, &a, &err));
    cr_assert(state_command_add_sent(db, "hv1", "clone-create", "web",
                                     "{\"b\":1}", 1000.0, &b, &err));
    due = state_command_list_pending(db, NULL, 1000.0, &err);
    cr_assert(due, "%s", err ? err->message : "");
    cr_expect_eq(due->len, 0u, "both were sent at 1000");
    cr_assert(state_command_unsent(db, b, &err), "%s", err ? err->message : "");
    due_after = state_command_list_pending(db, NULL, 1.0, &err);
    cr_assert(due_after, "%s", err ? err->message : "");
    cr_assert_eq(due_after->len, 1u, "the unsent one is due at once");
    cr_expect_eq(((CommandRow *)due_after->pdata[0])->id, b);
    cr_assert(state_counts(db, &counts, &err), "%s", err ? err->message : "");
    cr_expect_eq(counts.command_sends, 1,
                 "one send counted, not %" G_GINT64_FORMAT,
                 counts.command_sends);
    state_counts_clear(&counts);
    state_close(db);
}

/* The commands due to be sent again are those pending and last sent
 * before the time asked, found through the index commands_due (schema 4):
 * without it every pending row, with its body, was read to look at its
 * sent time (the timer's pass, thousands pending after a big submit). */
Test(manager_state, finds_the_commands_due_through_an_index)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) due = NULL;
    gint64 a = 0, b = 0, c = 0;
    sqlite3 *raw = NULL;
    sqlite3_stmt *st = NULL;
    g_autoptr(GString) plan = g_string_new(NULL);

    cr_assert(state_host_insert_accepted(db, "hv1", "KEY", &err));
    cr_assert(state_command_add(db, "hv1", "clone-create", "web", "{\"a\":1}",
                                &a, &err));
    cr_assert(state_command_add(db, "hv1", "clone-create", "web", "{\"b\":1}",
                                &b, &err));
    cr_assert(state_command_add(db, "hv1", "clone-create", "web", "{\"c\":1}",
                                &c, &err));
    cr_assert(state_command_sent(db, a, 100.0, &err));
    cr_assert(state_command_sent(db, b, 300.0, &err));
    cr_assert(state_command_finish(db, c, COMMAND_DONE, NULL, &err));
    due = state_command_list_pending(db, NULL, 200.0, &err);
    cr_assert(due, "%s", err ? err->message : "");
    cr_assert_eq(due->len, 1u, "sent at 100 only, not at 300, not done");
    cr_expect_eq(((CommandRow *)due->pdata[0])->id, a);
    cr_expect_str_eq(((CommandRow *)due->pdata[0])->body, "{\"a\":1}");
    state_close(db);
    if (on_pg())
        return; /* the plan below is SQLite's */
    cr_assert_eq(sqlite3_open(path, &raw), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(
                     raw,
                     "EXPLAIN QUERY PLAN SELECT id, host, op, service, body "
                     "FROM commands WHERE state = ?1 AND (?2 IS NULL OR host "
                     "= ?2) AND sent < ?3 ORDER BY id",
                     -1, &st, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(raw));
    while (sqlite3_step(st) == SQLITE_ROW)
        g_string_append_printf(plan, "%s; ", sqlite3_column_text(st, 3));
    sqlite3_finalize(st);
    sqlite3_close(raw);
    cr_expect(
        strstr(plan->str, "USING INDEX commands_due (state=? AND sent<?)"),
        "plan: %s", plan->str);
}

Test(manager_state, refuses_a_schema_of_another_version)
{
    StateDb *db = open_or_fail();
    g_autoptr(GError) err = NULL;

    state_close(db);
    test_state_sql(path, "UPDATE meta SET value = '99' WHERE key = 'schema'");
    cr_expect_null(test_state_open_at(path, &err));
    cr_expect(err && strstr(err->message, "schema version 99"), "%s",
              err ? err->message : "");
}

Test(manager_state, brings_a_version_1_database_up_to_version_2)
{
    sqlite3 *raw = NULL;
    StateDb *db = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) clones = NULL;
    g_autofree char *canonical = NULL;
    g_autofree char *image = NULL;
    gint64 next = 0;

    if (on_pg())
        skip_here("PostgreSQL states began at version 2");
    /* what spored of schema 1 left: a service at generation 3, 2 clones */
    cr_assert_eq(sqlite3_open(path, &raw), SQLITE_OK);
    cr_assert_eq(
        sqlite3_exec(raw,
                     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
                     "INSERT INTO meta VALUES ('schema', 1);"
                     "CREATE TABLE services (name TEXT PRIMARY KEY, manifest "
                     "TEXT NOT NULL, generation INTEGER NOT NULL, image TEXT "
                     "NOT NULL, desired INTEGER NOT NULL, deleting INTEGER NOT "
                     "NULL DEFAULT 0, cooldown_until REAL NOT NULL DEFAULT 0, "
                     "updated REAL NOT NULL);"
                     "CREATE TABLE clones (service TEXT NOT NULL, idx INTEGER "
                     "NOT NULL, host TEXT, PRIMARY KEY (service, idx));"
                     "INSERT INTO services VALUES ('web', '<m3/>', 3, 'img', "
                     "2, 0, 0, 1);"
                     "INSERT INTO clones VALUES ('web', 0, 'hv1'), ('web', 1, "
                     "NULL);",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(raw);
    db = state_open(path, &err);
    cr_assert(db, "%s", err ? err->message : "");
    clones = state_clone_list(db, "web", NULL, &err);
    cr_assert(clones && clones->len == 2);
    for (guint i = 0; i < clones->len; i++)
        cr_expect_eq(((CloneRow *)clones->pdata[i])->generation, 3,
                     "each clone takes its service's generation");
    cr_assert(state_generation_get(db, "web", 3, &canonical, &image, &err));
    cr_expect_str_eq(canonical, "<m3/>");
    cr_expect_str_eq(image, "img");
    cr_assert(state_generation_next(db, "web", &next, &err));
    cr_expect_eq(next, 4);
    state_close(db);
    db = open_or_fail(); /* and it opens again as version 2 */
    state_close(db);
}

Test(manager_state, never_gives_a_generation_number_twice)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    gint64 gen = 0, before = 0;

    cr_assert(
        state_begin(db, &err) &&
            state_generation_put(db, "web", 1, "<m/>", "img", &err) &&
            state_generation_next(db, "web", &gen, &err) &&
            state_service_update(db, "web", "<m2/>", gen, "img", 2, &err) &&
            state_generation_put(db, "web", gen, "<m2/>", "img", &err) &&
            state_commit(db, &err),
        "%s", err ? err->message : "");
    cr_expect_eq(gen, 2);
    cr_assert(state_generation_before(db, "web", 2, &before, &err));
    cr_expect_eq(before, 1);
    cr_assert(state_generation_before(db, "web", 1, &before, &err));
    cr_expect_eq(before, -1, "none before the first");
    /* deleted and submitted again: numbering goes on */
    cr_assert(state_begin(db, &err) && state_service_remove(db, "web", &err) &&
                  state_service_insert(db, "web", "<m3/>", "img", 1, &err) &&
                  state_service_generation(db, "web", &gen, &err) &&
                  state_commit(db, &err),
              "%s", err ? err->message : "");
    cr_expect_eq(gen, 3, "a new service of an old name does not reuse 1");
    state_close(db);
}

Test(manager_state, tells_each_services_last_scaling_action)
{
    StateDb *db = open_or_fail();
    g_autoptr(GError) err = NULL;
    g_autoptr(GHashTable) times = NULL;
    double before = state_now();
    double *web, *api;

    cr_assert(
        state_event_add(db, "scaled-up", "web", NULL, "1 -> 2", &err) &&
            state_event_add(db, "command", "api", "hv1", "create", &err) &&
            state_event_add(db, "scheduled", "api", NULL, "2 -> 4", &err) &&
            state_event_add(db, "scaled-down", "web", NULL, "2 -> 1", &err) &&
            state_event_add(db, "submitted", "db", NULL, "new", &err),
        "%s", err ? err->message : "");
    cr_assert(state_last_scaling(db, &times, &err), "%s",
              err ? err->message : "");
    web = g_hash_table_lookup(times, "web");
    api = g_hash_table_lookup(times, "api");
    cr_assert(web && api);
    cr_expect_geq(*web, before);
    cr_expect_geq(*web, *api, "web's scale-down is its last action");
    cr_expect_geq(*api, before, "a scheduled change is a scaling action");
    cr_expect_null(g_hash_table_lookup(times, "db"),
                   "no scaling action, no time");
    cr_expect_eq(g_hash_table_size(times), 2u);
    state_close(db);
}

Test(manager_state, keeps_every_type_of_value_as_written)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    static const guint8 index[] = {0, 1, 0xff, 0, 0x5c, 0x78, 0x27, 0};
    g_autoptr(GBytes) bytes = g_bytes_new_static(index, sizeof(index));
    ImageRow in = {
        .name = (char *)"img",
        .id = (char *)"sha256:x",
        .format = (char *)"raw",
        .origins = (char *)"[\"file:///a'b\"]",
        .index = bytes,
        .size = G_GINT64_CONSTANT(1) << 42,
        .chunk_size = 65536,
    };
    HostImageRow hi = {.host = (char *)"hv1",
                       .image = (char *)"sha256:x",
                       .cached = 0.1234567890123456789,
                       .origin_bytes = G_MAXINT64,
                       .peer_bytes = -1,
                       .local_bytes = 0};
    g_autoptr(ImageRow) out = NULL;
    g_autoptr(ServiceRow) svc = NULL;
    g_autoptr(GPtrArray) his = NULL;
    g_autoptr(GPtrArray) events = NULL;
    double cached = 0;

    cr_assert(
        state_begin(db, &err) && state_image_put(db, &in, &err) &&
            state_host_image_put(db, &hi, &err) &&
            state_service_set_desired(db, "web", 2, 1e9 + 0.125, &err) &&
            state_event_add(db, "note", NULL, NULL, "ünïcode ' \" ?", &err) &&
            state_commit(db, &err),
        "%s", err ? err->message : "");
    cr_assert(state_image_get(db, "img", &out, &err) && out, "%s",
              err ? err->message : "");
    cr_expect(g_bytes_equal(out->index, bytes), "the index's bytes");
    cr_expect_eq(out->size, in.size);
    cr_expect_str_eq(out->origins, in.origins);
    cr_assert(state_host_image_cached(db, "hv1", "sha256:x", &cached, &err));
    cr_expect(cached == hi.cached, "%.17g", cached);
    his = state_host_image_list(db, NULL, &err);
    cr_assert(his && his->len == 1, "%s", err ? err->message : "");
    cr_expect_eq(((HostImageRow *)his->pdata[0])->origin_bytes, G_MAXINT64);
    cr_expect_eq(((HostImageRow *)his->pdata[0])->peer_bytes, -1);
    cr_expect_eq(((HostImageRow *)his->pdata[0])->profile_boots, -1,
                 "no profile: NULL");
    g_clear_pointer(&his, g_ptr_array_unref);
    cr_assert(state_profile_put(db, "hv1", "sha256:x", 3, "[5,1,9,2]", &err));
    his = state_host_image_list(db, "sha256:x", &err);
    cr_assert(his && his->len == 1, "%s", err ? err->message : "");
    cr_expect_eq(((HostImageRow *)his->pdata[0])->profile_boots, 3);
    cr_expect_eq(((HostImageRow *)his->pdata[0])->profile_chunks, 4,
                 "the profile's length in chunks");
    cr_assert(state_service_get(db, "web", &svc, &err) && svc);
    cr_expect(svc->cooldown_until == 1e9 + 0.125);
    events = state_event_list(db, 0, NULL, 10, &err);
    cr_assert(events && events->len == 1, "%s", err ? err->message : "");
    cr_expect_str_eq(((EventRow *)events->pdata[0])->message, "ünïcode ' \" ?");
    cr_expect_null(((EventRow *)events->pdata[0])->service);
    state_close(db);
}

Test(manager_state, finds_the_failed_create_of_a_generation)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    g_autofree char *reason = NULL;
    g_autofree char *none = NULL;
    gint64 a = 0, b = 0;

    cr_assert(
        state_command_add(db, "hv1", "clone-create", "web",
                          "{\"generation\": 2, \"index\": 0}", &a, &err) &&
            state_command_add(db, "hv2", "clone-create", "web",
                              "{\"generation\": 3, \"index\": 1}", &b, &err) &&
            state_command_finish(db, a, COMMAND_FAILED, "no room", &err) &&
            state_command_finish(db, b, COMMAND_DONE, NULL, &err),
        "%s", err ? err->message : "");
    cr_expect_gt(b, a, "ids grow");
    cr_assert(state_create_failure(db, "web", 2, 0, &reason, &err), "%s",
              err ? err->message : "");
    cr_expect_str_eq(reason, "hv1: no room");
    cr_assert(state_create_failure(db, "web", 3, 0, &none, &err), "%s",
              err ? err->message : "");
    cr_expect_null(none, "generation 3's create did not fail");
    state_close(db);
}

Test(manager_state, copies_a_sqlite_state_whole_and_numbering_goes_on)
{
    g_autofree char *src_path = g_build_filename(dir, "source.db", NULL);
    g_autoptr(GError) err = NULL;
    StateDb *src = state_open(src_path, &err);
    StateDb *dst = open_or_fail();
    g_autofree char *before = NULL;
    g_autofree char *after = NULL;
    g_autoptr(GPtrArray) events = NULL;
    gint64 rows = 0, id = 0;

    cr_assert(src, "%s", err ? err->message : "");
    test_state_fill(src);
    cr_assert(state_copy(src, dst, &rows, &err), "%s", err ? err->message : "");
    cr_expect_eq(rows, 16, "%" G_GINT64_FORMAT " rows", rows);
    before = test_state_summary(src);
    after = test_state_summary(dst);
    cr_expect_str_eq(after, before);
    /* new ids follow the copied ones */
    cr_assert(
        state_command_add(dst, "hv1", "clone-start", "web", "{}", &id, &err),
        "%s", err ? err->message : "");
    cr_expect_eq(id, 3, "the third command");
    cr_assert(state_event_add(dst, "x", NULL, NULL, "after", &err));
    events = state_event_list(dst, 0, NULL, 10, &err);
    cr_assert(events && events->len == 3);
    cr_expect_eq(((EventRow *)events->pdata[2])->id, 3);
    /* a second copy would mix two states */
    cr_expect_not(state_copy(src, dst, &rows, &err));
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_CONFLICT), "%s",
              err ? err->message : "");
    state_close(dst);
    state_close(src);
}

Test(manager_state, numbers_parameters_for_postgresql_outside_quotes_only)
{
    g_autofree char *plain =
        state_db_pg_translate("SELECT a FROM t WHERE b = ? AND c = '?' AND "
                              "\"d?\" = ?");
    g_autofree char *numbered =
        state_db_pg_translate("SELECT ?1 IS NULL OR x = ?1 OR y = ?12");
    g_autofree char *quoted = state_db_pg_translate("SELECT 'it''s ?', ?");

    cr_expect_str_eq(plain, "SELECT a FROM t WHERE b = $1 AND c = '?' AND "
                            "\"d?\" = $2");
    cr_expect_str_eq(numbered, "SELECT $1 IS NULL OR x = $1 OR y = $12");
    cr_expect_str_eq(quoted, "SELECT 'it''s ?', $1");
}

Test(manager_state, shows_a_dsn_without_its_password)
{
    g_autofree char *kv =
        state_db_pg_redact("host=/run/pg dbname=spore password='a b'");
    g_autofree char *uri =
        state_db_pg_redact("postgresql://spore:pw123@db.example.org/spore");

    cr_expect(strstr(kv, "password=***") && strstr(kv, "dbname=spore"), "%s",
              kv);
    cr_expect_null(strstr(kv, "a b"), "%s", kv);
    cr_expect(strstr(uri, "password=***") && strstr(uri, "db.example.org"),
              "%s", uri);
    cr_expect_null(strstr(uri, "pw123"), "%s", uri);
}

Test(manager_state, fails_one_of_two_transactions_that_would_not_serialize)
{
    StateDb *a = populated();
    StateDb *b = open_or_fail();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) seen_a = NULL;
    g_autoptr(GPtrArray) seen_b = NULL;
    bool b_done;

    if (!on_pg())
        skip_here("SQLite has one writer at a time: nothing to serialize");
    /* each reads the services, then adds one the other did not see */
    cr_assert(state_begin(a, &err) && state_begin(b, &err), "%s",
              err ? err->message : "");
    seen_a = state_service_list(a, &err);
    seen_b = state_service_list(b, &err);
    cr_assert(seen_a && seen_b, "%s", err ? err->message : "");
    cr_assert(state_service_insert(a, "api", "<m/>", "img", 1, &err) &&
                  state_commit(a, &err),
              "%s", err ? err->message : "");
    b_done = state_service_insert(b, "db", "<m/>", "img", 1, &err) &&
             state_commit(b, &err);
    cr_expect_not(b_done, "the second one would not be serializable");
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE),
              "worth trying again: %s", err->message);
    cr_expect(strstr(err->message, "serialize"), "%s", err->message);
    state_rollback(b);
    g_clear_error(&err);
    cr_expect(state_begin(b, &err) &&
                  state_service_insert(b, "db", "<m/>", "img", 1, &err) &&
                  state_commit(b, &err),
              "tried again, it works: %s", err ? err->message : "");
    cr_expect_eq(services_in(a), 3u);
    state_close(b);
    state_close(a);
}

Test(manager_state, keeps_or_undoes_a_savepoint_outside_a_transaction)
{
    StateDb *db = populated();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) events = NULL;

    cr_assert(state_savepoint(db, &err) &&
                  state_event_add(db, "kept", NULL, NULL, "1", &err) &&
                  state_release(db, &err),
              "%s", err ? err->message : "");
    cr_assert(state_savepoint(db, &err) &&
                  state_event_add(db, "undone", NULL, NULL, "2", &err),
              "%s", err ? err->message : "");
    state_rollback_to(db);
    /* nothing is left open: a transaction begins and commits */
    cr_assert(state_begin(db, &err) &&
                  state_event_add(db, "after", NULL, NULL, "3", &err) &&
                  state_commit(db, &err),
              "%s", err ? err->message : "");
    state_close(db);
    db = open_or_fail(); /* what was committed, from a new session */
    events = state_event_list(db, 0, NULL, 10, &err);
    cr_assert(events && events->len == 2, "%s",
              err ? err->message : "2 events");
    cr_expect_str_eq(((EventRow *)events->pdata[0])->kind, "kept");
    cr_expect_str_eq(((EventRow *)events->pdata[1])->kind, "after");
    state_close(db);
}
