/*
 * test-state-backend.c: spored on PostgreSQL, end to end — the [state]
 * settings and their errors, spored --migrate-state from a SQLite state,
 * and a database that goes away under a running spored.  The real spored
 * and sporectl binaries (SPORED, SPORECTL) against the throwaway server
 * of tests/pg-lib.sh, which some tests stop and start again (hence
 * --jobs=1 in meson.build).
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "manager-state.h"
#include "spore-error.h"
#include "test-state-util.h"
#include "test-util.h"

/* bounded waits: WAIT_TRIES of WAIT_STEP_US for a condition */
#define WAIT_TRIES   600
#define WAIT_STEP_US 50000

static char *dir;
static GPid daemon_pid;

static const char *
env_or_skip(const char *name)
{
    const char *v = g_getenv(name);

    cr_assert(v && *v, "%s is not set (run under tests/pg-lib.sh)", name);
    return v;
}

/* pg_server: stop or start the test server (tests/pg-lib.sh) */
static void
pg_server(const char *what)
{
    const char *argv[] = {env_or_skip("SPORE_TEST_PG_LIB"), what, NULL};
    int status = -1;

    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, NULL, NULL, &status, NULL));
    cr_assert(g_spawn_check_wait_status(status, NULL), "pg-lib.sh %s", what);
}

static bool
pg_up(void)
{
    return PQping(env_or_skip("SPORE_TEST_PG_DSN")) == PQPING_OK;
}

static void
setup(void)
{
    dir = g_dir_make_tmp("spore-pgstate-XXXXXX", NULL);
    cr_assert(dir);
}

static void
teardown(void)
{
    int status;

    if (daemon_pid > 0) {
        kill(daemon_pid, SIGKILL);
        waitpid(daemon_pid, &status, 0);
        daemon_pid = 0;
    }
    if (!pg_up())
        pg_server("start"); /* a test that stopped it failed midway */
    test_rm_rf(dir);
    g_free(dir);
}

TestSuite(spored_state, .init = setup, .fini = teardown);

/* write_conf: DIR/spored.conf with @state_group as its [state]; its path */
static char *
write_conf(const char *state_group)
{
    g_autofree char *text = g_strdup_printf(
        "[spored]\nstate_dir=%s/state\nrun_dir=%s/run\n"
        "listen=tcp://127.0.0.1:%u\nhosts_dir=%s/hosts.d\nmetrics=none\n"
        "[state]\n%s",
        dir, dir, test_free_port_pair(), dir, state_group);
    char *path = g_build_filename(dir, "spored.conf", NULL);

    cr_assert(g_file_set_contents(path, text, -1, NULL));
    return path;
}

/* run: @argv to its end; its exit status, *ret_out and *ret_err */
static int
run(const char *const *argv, char **ret_out, char **ret_err)
{
    int status = -1;
    g_autoptr(GError) err = NULL;

    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, ret_out, ret_err, &status, &err),
              "%s", err ? err->message : "");
    cr_assert(WIFEXITED(status), "%s died", argv[0]);
    return WEXITSTATUS(status);
}

static int
spored_run(const char *conf, const char *extra, char **ret_out, char **ret_err)
{
    const char *argv[] = {env_or_skip("SPORED"), "--config", conf, extra, NULL};

    return run(argv, ret_out, ret_err);
}

static char *
control_path(void)
{
    return g_build_filename(dir, "run", "control.sock", NULL);
}

/* spored_start: the daemon with @conf, its output in DIR/spored.log;
 * returns once its control socket answers */
static void
spored_start(const char *conf)
{
    g_autofree char *log = g_build_filename(dir, "spored.log", NULL);
    g_autofree char *cmd = g_strdup_printf("exec '%s' --config '%s' >'%s' 2>&1",
                                           env_or_skip("SPORED"), conf, log);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    g_autofree char *sock = control_path();
    g_autoptr(GError) err = NULL;
    int i;

    cr_assert(g_spawn_async(NULL, (char **)argv, NULL,
                            G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &daemon_pid,
                            &err),
              "%s", err ? err->message : "");
    for (i = 0; i < WAIT_TRIES && !g_file_test(sock, G_FILE_TEST_EXISTS); i++) {
        int status;

        cr_assert_eq(waitpid(daemon_pid, &status, WNOHANG), 0,
                     "spored exited: see %s", log);
        g_usleep(WAIT_STEP_US);
    }
    cr_assert_lt(i, WAIT_TRIES, "no control socket %s", sock);
}

/* spored_stop: SIGTERM, and spored exits 0 */
static void
spored_stop(void)
{
    int status = -1;

    cr_assert_eq(kill(daemon_pid, SIGTERM), 0);
    cr_assert_eq(waitpid(daemon_pid, &status, 0), daemon_pid);
    daemon_pid = 0;
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "spored's exit status %d", status);
}

static bool
spored_alive(void)
{
    int status;

    return daemon_pid > 0 && waitpid(daemon_pid, &status, WNOHANG) == 0;
}

/* ctl: sporectl -c CONTROL_SOCKET @cmd [@arg]; its exit status */
static int
ctl(const char *cmd, const char *arg, char **ret_out, char **ret_err)
{
    g_autofree char *sock = control_path();
    const char *argv[] = {env_or_skip("SPORECTL"), "-c", sock, cmd, arg, NULL};

    return run(argv, ret_out, ret_err);
}

Test(spored_state, refuses_postgresql_without_a_dsn)
{
    g_autofree char *conf = write_conf("backend=postgresql\n");
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;

    cr_expect_eq(spored_run(conf, NULL, &out, &err), 1);
    cr_expect(strstr(err, "[state] backend = postgresql needs [state] dsn"),
              "%s", err);
    cr_expect(strstr(err, conf), "the file is named: %s", err);
}

Test(spored_state, refuses_a_backend_it_does_not_know)
{
    g_autofree char *conf = write_conf("backend=mysql\ndsn=x\n");
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;

    cr_expect_eq(spored_run(conf, NULL, &out, &err), 1);
    cr_expect(strstr(err, "[state] backend 'mysql' is neither sqlite nor "
                          "postgresql"),
              "%s", err);
}

Test(spored_state, names_the_dsn_without_its_password_when_it_cannot_connect)
{
    g_autofree char *group = g_strdup_printf(
        "backend=postgresql\ndsn=host=%s/nowhere user=spore dbname=spore "
        "password=s3cret-pw\n",
        dir);
    g_autofree char *conf = write_conf(group);
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;

    cr_expect_eq(spored_run(conf, NULL, &out, &err), 1);
    cr_expect(strstr(err, "[state] dsn: cannot connect to PostgreSQL"), "%s",
              err);
    cr_expect(strstr(err, "No such file or directory"),
              "libpq's own message: %s", err);
    cr_expect(strstr(err, "password=***"), "%s", err);
    cr_expect_null(strstr(err, "s3cret-pw"), "the password leaked: %s", err);
}

Test(spored_state, migrates_a_sqlite_state_and_serves_it_from_postgresql)
{
    g_autofree char *state_dir = g_build_filename(dir, "state", NULL);
    g_autofree char *db_path = g_build_filename(state_dir, "spored.db", NULL);
    g_autofree char *dsn = test_state_pg_dsn_new();
    g_autofree char *group =
        g_strdup_printf("backend=postgresql\ndsn=%s\n", dsn);
    g_autofree char *conf = write_conf(group);
    g_autofree char *before = NULL;
    g_autofree char *after = NULL;
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    g_autoptr(GError) error = NULL;
    StateDb *sqlite = NULL, *pg = NULL;

    cr_assert_eq(g_mkdir_with_parents(state_dir, 0700), 0);
    sqlite = state_open(db_path, &error);
    cr_assert(sqlite, "%s", error ? error->message : "");
    test_state_fill(sqlite);
    before = test_state_summary(sqlite);
    state_close(sqlite);

    cr_assert_eq(spored_run(conf, "--migrate-state", &out, &err), 0, "%s", err);
    cr_expect(strstr(out, "copied 16 rows"), "%s", out);
    pg = state_open_postgresql(dsn, &error);
    cr_assert(pg, "%s", error ? error->message : "");
    after = test_state_summary(pg);
    state_close(pg);
    cr_expect_str_eq(after, before);

    /* and spored serves it */
    spored_start(conf);
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_assert_eq(ctl("service-list", NULL, &out, &err), 0, "%s", err);
    cr_expect(strstr(out, "web"), "%s", out);
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_assert_eq(ctl("events", NULL, &out, &err), 0, "%s", err);
    cr_expect(strstr(out, "submitted") && strstr(out, "host-accepted"), "%s",
              out);
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_assert_eq(ctl("clone-list", "web", &out, &err), 0, "%s", err);
    cr_expect(strstr(out, "web-0") && strstr(out, "web-2"), "%s", out);
    spored_stop();

    /* a second migration would mix two states */
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_expect_eq(spored_run(conf, "--migrate-state", &out, &err), 1);
    cr_expect(strstr(err, "holds a state already"), "%s", err);
}

Test(spored_state, refuses_to_migrate_into_sqlite)
{
    g_autofree char *conf = write_conf("backend=sqlite\n");
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;

    cr_expect_eq(spored_run(conf, "--migrate-state", &out, &err), 1);
    cr_expect(strstr(err, "set [state] backend = postgresql"), "%s", err);
}

Test(spored_state, fails_a_transaction_whose_connection_is_lost_and_reconnects)
{
    g_autofree char *dsn = test_state_pg_dsn_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) services = NULL;
    StateDb *db = state_open_postgresql(dsn, &err);

    cr_assert(db, "%s", err ? err->message : "");
    test_state_fill(db);
    cr_assert(state_begin(db, &err) &&
                  state_service_set_desired(db, "web", 9, 0, &err),
              "%s", err ? err->message : "");
    pg_server("stop");
    cr_expect_not(state_service_insert(db, "api", "<m/>", "img", 1, &err));
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE), "%s",
              err->message);
    cr_expect(strstr(err->message, "cannot add a service"), "%s", err->message);
    g_clear_error(&err);
    cr_expect_not(state_commit(db, &err), "no commit on a lost session");
    g_clear_error(&err);
    state_rollback(db);
    cr_expect_not(state_begin(db, &err), "the database is still down");
    cr_expect(err && strstr(err->message, "begin a transaction"), "%s",
              err ? err->message : "");
    g_clear_error(&err);
    pg_server("start");
    cr_assert(state_begin_read(db, &err), "reconnected: %s",
              err ? err->message : "");
    services = state_service_list(db, &err);
    state_rollback(db);
    cr_assert(services && services->len == 1, "%s", err ? err->message : "");
    cr_expect_eq(((ServiceRow *)services->pdata[0])->desired, 3,
                 "the lost transaction's write is not there");
    state_close(db);
}

Test(spored_state, answers_errors_while_its_database_is_down_and_recovers)
{
    g_autofree char *dsn = test_state_pg_dsn_new();
    g_autofree char *group =
        g_strdup_printf("backend=postgresql\ndsn=%s\n", dsn);
    g_autofree char *conf = write_conf(group);
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    int i, rc = -1;

    spored_start(conf);
    cr_assert_eq(ctl("service-list", NULL, &out, &err), 0, "%s", err);
    pg_server("stop");
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_expect_neq(ctl("service-list", NULL, &out, &err), 0);
    cr_expect(strstr(err, "PostgreSQL") || strstr(err, "connection"),
              "a clear error: %s", err);
    cr_expect(spored_alive(), "spored is still running");
    pg_server("start");
    for (i = 0; i < WAIT_TRIES && rc != 0; i++) {
        g_clear_pointer(&out, g_free);
        g_clear_pointer(&err, g_free);
        rc = ctl("service-list", NULL, &out, &err);
        if (rc != 0)
            g_usleep(WAIT_STEP_US);
    }
    cr_expect_eq(rc, 0, "spored reconnected: %s", err);
    cr_expect(spored_alive());
    spored_stop();
}
