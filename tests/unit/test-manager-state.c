/*
 * test-manager-state.c: spored's state layer against databases that fail —
 * read-only, locked by another connection, a statement that breaks a
 * constraint inside a transaction: every function reports the error, and a
 * rolled-back transaction leaves nothing behind.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/stat.h>

#include "manager-state.h"
#include "test-util.h"

static char *dir;
static char *path;

static void
setup(void)
{
    dir = g_dir_make_tmp("spore-state-XXXXXX", NULL);
    cr_assert(dir);
    path = g_build_filename(dir, "spored.db", NULL);
}

static void
teardown(void)
{
    test_rm_rf(dir);
    g_free(dir);
    g_free(path);
}

TestSuite(manager_state, .init = setup, .fini = teardown);

static sqlite3 *
open_or_fail(void)
{
    g_autoptr(GError) err = NULL;
    sqlite3 *db = state_open(path, &err);

    cr_assert(db, "%s", err ? err->message : "");
    return db;
}

/* a database with service "web" (2 clones) and image "img" */
static sqlite3 *
populated(void)
{
    sqlite3 *db = open_or_fail();
    g_autoptr(GError) err = NULL;

    cr_assert(state_begin(db, &err) &&
                  state_service_insert(db, "web", "<m/>", "img", 2, &err) &&
                  state_clone_sync(db, "web", 2, &err) &&
                  state_commit(db, &err),
              "%s", err ? err->message : "");
    return db;
}

static guint
services_in(sqlite3 *db)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) list = state_service_list(db, &err);

    cr_assert(list, "%s", err ? err->message : "");
    return list->len;
}

Test(manager_state, creates_the_database_readable_by_its_owner_only)
{
    sqlite3 *db = open_or_fail();
    struct stat st;

    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
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
    sqlite3 *db = populated();
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

Test(manager_state, reports_every_write_to_a_read_only_database)
{
    sqlite3 *db = populated();
    sqlite3 *ro = NULL;
    g_autoptr(GError) err = NULL;
    gint64 id;

    state_close(db);
    cr_assert_eq(sqlite3_open_v2(path, &ro, SQLITE_OPEN_READONLY, NULL),
                 SQLITE_OK);
    cr_expect_not(state_service_insert(ro, "db", "<m/>", "img", 1, &err));
    cr_expect(err && strstr(err->message, "readonly"), "%s",
              err ? err->message : "");
    g_clear_error(&err);
    cr_expect_not(
        state_command_add(ro, "hv1", "clone-create", "web", "{}", &id, &err));
    cr_expect(err);
    g_clear_error(&err);
    cr_expect_not(state_event_add(ro, "x", NULL, NULL, "x", &err));
    cr_expect(err);
    cr_expect_eq(services_in(ro), 1u, "reads still work");
    sqlite3_close(ro);
    db = open_or_fail();
    cr_expect_eq(services_in(db), 1u, "nothing was written");
    state_close(db);
}

Test(manager_state, reports_a_database_locked_by_another_connection)
{
    sqlite3 *db = populated();
    sqlite3 *other = NULL;
    g_autoptr(GError) err = NULL;

    cr_assert_eq(sqlite3_open(path, &other), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_busy_timeout(db, 0); /* not wait the daemon's timeout here */
    cr_expect_not(state_begin(db, &err));
    cr_assert(err);
    cr_expect(strstr(err->message, "locked"), "%s", err->message);
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

Test(manager_state, cancels_a_lost_hosts_commands_but_its_destroys)
{
    sqlite3 *db = populated();
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

Test(manager_state, refuses_a_schema_of_another_version)
{
    sqlite3 *db = open_or_fail();
    g_autoptr(GError) err = NULL;

    cr_assert_eq(sqlite3_exec(db,
                              "UPDATE meta SET value = 99 WHERE key = "
                              "'schema'",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    state_close(db);
    cr_expect_null(state_open(path, &err));
    cr_expect(err && strstr(err->message, "schema version 99"), "%s",
              err ? err->message : "");
}

Test(manager_state, brings_a_version_1_database_up_to_version_2)
{
    sqlite3 *db = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) clones = NULL;
    g_autofree char *canonical = NULL;
    g_autofree char *image = NULL;
    gint64 next = 0;

    /* what spored of schema 1 left: a service at generation 3, 2 clones */
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(
        sqlite3_exec(db,
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
    sqlite3_close(db);
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
    sqlite3 *db = populated();
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
    sqlite3 *db = open_or_fail();
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
