/*
 * test-state-util.c: the state tests against either backend
 * (test-state-util.h).
 */
#include "test-state-util.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <unistd.h>

StateBackend
test_state_backend(void)
{
    const char *dsn = g_getenv("SPORE_TEST_PG_DSN");

    return dsn && *dsn ? STATE_BACKEND_POSTGRESQL : STATE_BACKEND_SQLITE;
}

static void
pg_sql(const char *dsn, const char *sql)
{
    PGconn *conn = PQconnectdb(dsn);
    PGresult *res = NULL;

    cr_assert(conn && PQstatus(conn) == CONNECTION_OK, "connect '%s': %s", dsn,
              conn ? PQerrorMessage(conn) : "out of memory");
    res = PQexec(conn, sql);
    cr_assert(PQresultStatus(res) == PGRES_COMMAND_OK ||
                  PQresultStatus(res) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(conn);
}

char *
test_state_pg_dsn_new(void)
{
    static guint counter;
    const char *admin = g_getenv("SPORE_TEST_PG_DSN");
    g_autofree char *name = NULL;
    g_autofree char *create = NULL;

    cr_assert(admin && *admin, "SPORE_TEST_PG_DSN is not set");
    name = g_strdup_printf("t_%d_%u_%" G_GINT64_FORMAT, (int)getpid(),
                           ++counter, g_get_real_time());
    create = g_strdup_printf("CREATE DATABASE %s", name);
    pg_sql(admin, create);
    return g_strdup_printf("%s dbname=%s", admin, name);
}

char *
test_state_where(const char *dir)
{
    if (test_state_backend() == STATE_BACKEND_POSTGRESQL)
        return test_state_pg_dsn_new();
    return g_build_filename(dir, "spored.db", NULL);
}

StateDb *
test_state_open_at(const char *where, GError **error)
{
    if (test_state_backend() == STATE_BACKEND_POSTGRESQL)
        return state_open_postgresql(where, error);
    return state_open(where, error);
}

void
test_state_sql(const char *where, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;

    if (test_state_backend() == STATE_BACKEND_POSTGRESQL) {
        pg_sql(where, sql);
        return;
    }
    cr_assert_eq(sqlite3_open(where, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, &msg), SQLITE_OK, "%s: %s",
                 sql, msg ? msg : "");
    sqlite3_close(db);
}

void
test_state_fill(StateDb *db)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GBytes) index = g_bytes_new("\0\1\2\3", 4);
    ImageRow img = {.name = (char *)"img",
                    .id = (char *)"sha256:i",
                    .format = (char *)"qcow2",
                    .origins = (char *)"[]",
                    .index = index,
                    .size = 1 << 20,
                    .chunk_size = 65536};
    gint64 id = 0;

    cr_assert(
        state_begin(db, &err) &&
            state_service_insert(db, "web", "<m1/>", "img", 3, &err) &&
            state_generation_put(db, "web", 1, "<m1/>", "img", &err) &&
            state_clone_sync(db, "web", 3, &err) &&
            state_image_put(db, &img, &err) &&
            state_host_insert_accepted(db, "hv1", "KEY1", &err) &&
            state_host_insert_pending(db, "hv2", "KEY2", "10.0.0.2", &err) &&
            state_clone_place(db, "web", 0, "hv1", &err) &&
            state_rollout_start(db, "web", 1, 0, &err) &&
            state_command_add(db, "hv1", "clone-create", "web",
                              "{\"generation\": 1}", &id, &err) &&
            state_command_finish(db, id, COMMAND_DONE, NULL, &err) &&
            state_command_add(db, "hv1", "clone-create", "web",
                              "{\"generation\": 1}", &id, &err) &&
            state_schedule_set_handled(db, "web", "0 8 * * *", 12.5, &err) &&
            state_request_add(db, "web", 7, &err) &&
            state_profile_put(db, "hv1", "sha256:i", 2, "[1,2]", &err) &&
            state_event_add(db, "submitted", "web", NULL, "new", &err) &&
            state_event_add(db, "host-accepted", NULL, "hv1", "ok", &err) &&
            state_commit(db, &err),
        "%s", err ? err->message : "");
}

char *
test_state_summary(StateDb *db)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) services = state_service_list(db, &err);
    g_autoptr(GPtrArray) clones = state_clone_list(db, NULL, NULL, &err);
    g_autoptr(GPtrArray) hosts = state_host_list(db, false, &err);
    g_autoptr(GPtrArray) cmds =
        state_command_list_pending(db, NULL, G_MAXDOUBLE, &err);
    g_autoptr(GPtrArray) events = state_event_list(db, 0, NULL, 100, &err);
    g_autoptr(GPtrArray) images = state_image_list(db, &err);
    g_autoptr(RolloutRow) ro = NULL;
    g_autoptr(GHashTable) sched = state_schedule_handled(db, "web", &err);
    g_autofree char *gen1 = NULL;
    g_autofree char *profile = NULL;
    GString *out = g_string_new(NULL);
    gint64 requests = 0;

    cr_assert(services && clones && hosts && cmds && events && images && sched,
              "%s", err ? err->message : "");
    cr_assert(state_rollout_get(db, "web", &ro, &err) && ro);
    cr_assert(state_generation_get(db, "web", 1, &gen1, NULL, &err));
    cr_assert(state_profile_best(db, "sha256:i", &profile, &err));
    cr_assert(state_request_sum(db, "web", 0, &requests, &err));
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *r = services->pdata[i];

        g_string_append_printf(
            out, "service %s %s g%" G_GINT64_FORMAT " d%" G_GINT64_FORMAT "\n",
            r->name, r->manifest, r->generation, r->desired);
    }
    for (guint i = 0; i < clones->len; i++) {
        CloneRow *r = clones->pdata[i];

        g_string_append_printf(out, "clone %s/%" G_GINT64_FORMAT " on %s\n",
                               r->service, r->index, r->host ? r->host : "-");
    }
    for (guint i = 0; i < hosts->len; i++) {
        HostRow *r = hosts->pdata[i];

        g_string_append_printf(out, "host %s %s %s a%d c%" G_GINT64_FORMAT "\n",
                               r->name, r->key, r->address ? r->address : "-",
                               r->accepted, r->clones);
    }
    for (guint i = 0; i < cmds->len; i++) {
        CommandRow *r = cmds->pdata[i];

        g_string_append_printf(out, "pending %" G_GINT64_FORMAT " %s %s %s\n",
                               r->id, r->host, r->op, r->body);
    }
    for (guint i = 0; i < events->len; i++) {
        EventRow *r = events->pdata[i];

        g_string_append_printf(out, "event %" G_GINT64_FORMAT " %s %s\n", r->id,
                               r->kind, r->message);
    }
    for (guint i = 0; i < images->len; i++) {
        ImageRow *r = images->pdata[i];

        g_string_append_printf(out, "image %s %s %" G_GINT64_FORMAT "\n",
                               r->name, r->id, r->size);
    }
    g_string_append_printf(out, "rollout %s %" G_GINT64_FORMAT "\n", ro->state,
                           ro->generation);
    g_string_append_printf(out, "generation 1 %s\n", gen1);
    g_string_append_printf(out, "profile %s\n", profile);
    g_string_append_printf(out, "requests %" G_GINT64_FORMAT "\n", requests);
    g_string_append_printf(out, "schedule %g\n",
                           *(double *)g_hash_table_lookup(sched, "0 8 * * *"));
    return g_string_free(out, FALSE);
}
