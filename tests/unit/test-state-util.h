/*
 * test-state-util.h: the state tests against either backend.  Under
 * tests/pg-lib.sh (SPORE_TEST_PG_DSN set) every test gets a database of
 * its own on the throwaway PostgreSQL server; otherwise a SQLite file in
 * a temporary directory.  Meson registers such tests twice: NAME
 * (SQLite) and NAME-pg (PostgreSQL).
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "manager-state.h"

/* test_state_backend: the backend this run tests */
StateBackend test_state_backend(void);

/* test_state_pg_dsn_new: a new, empty database on the test server: its
 * DSN (owned by the caller); aborts the test when it cannot */
char *test_state_pg_dsn_new(void);

/*
 * test_state_where: where this test's state is — a new database's DSN
 * under PostgreSQL, @dir/spored.db under SQLite (owned by the caller);
 * the same value for the whole test once made.
 */
char *test_state_where(const char *dir);

/* test_state_open_at: state_open or state_open_postgresql of @where */
StateDb *test_state_open_at(const char *where, GError **error);

/* test_state_sql: run @sql (no parameters, no rows wanted) straight on
 * the engine at @where, bypassing the state layer; aborts on failure */
void test_state_sql(const char *where, const char *sql);

/*
 * test_state_fill: a state with a bit of everything, as spored leaves it:
 * service "web" (generation 1, 3 clones, one placed on "hv1", a rollout),
 * image "img", hosts "hv1" (accepted) and "hv2" (pending), 2 commands (1
 * pending), a schedule, requests, a profile, 2 events — 16 rows
 */
void test_state_fill(StateDb *db);

/* test_state_summary: what the state API shows of a state filled so, as
 * one text (owned by the caller) */
char *test_state_summary(StateDb *db);
