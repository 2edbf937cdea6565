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
