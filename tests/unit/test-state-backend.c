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
#include <sys/stat.h>
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

/* ---- active and standby (state-leader.c, manager-leader.c) ------------- */

#define KEY_A "rq:rAtUIHb3-Ln0c0000000000000000000000000"
#define KEY_B "rq:rAtUIHb3-Ln0c0000000000000000000000001"

static StateDb *
open_or_fail(const char *dsn)
{
    g_autoptr(GError) err = NULL;
    StateDb *db = state_open_postgresql(dsn, &err);

    cr_assert(db, "%s", err ? err->message : "");
    return db;
}

static bool
try_lock(StateDb *db)
{
    g_autoptr(GError) err = NULL;
    bool held = false;

    cr_assert(state_leader_try_lock(db, &held, &err), "%s",
              err ? err->message : "");
    return held;
}

static gint64
take(StateDb *db, const char *holder, const char *key)
{
    g_autoptr(GError) err = NULL;
    g_auto(LeaderRow) before = {0};
    gint64 epoch = 0;

    cr_assert(state_leader_take(db, holder, key, &before, &epoch, &err), "%s",
              err ? err->message : "");
    return epoch;
}

Test(spored_state, fences_the_writes_of_a_manager_another_took_over_from)
{
    g_autofree char *dsn = test_state_pg_dsn_new();
    StateDb *lease_a = open_or_fail(dsn), *lease_b = open_or_fail(dsn);
    StateDb *state_a = open_or_fail(dsn);
    g_autoptr(GError) err = NULL;
    g_auto(LeaderRow) row = {0};
    g_auto(LeaderRow) before = {0};
    gint64 epoch = 0;

    test_state_fill(state_a);
    cr_assert(try_lock(lease_a), "the first session gets the lock");
    cr_expect_eq(take(lease_a, "a", KEY_A), 1);
    cr_expect_not(try_lock(lease_b), "one holder at a time");
    state_fence(state_a, 1);
    cr_assert(state_begin(state_a, &err) &&
                  state_service_set_desired(state_a, "web", 4, 0, &err) &&
                  state_commit(state_a, &err),
              "the active manager writes: %s", err ? err->message : "");

    /* a: its lease session ends (dead, frozen past the lease, cut off) */
    state_close(lease_a);
    {
        int i = 0;

        /* the server ends the session's backend, and its locks, just
         * after the connection closes */
        while (i++ < WAIT_TRIES && !try_lock(lease_b))
            g_usleep(WAIT_STEP_US);
        cr_assert_lt(i, WAIT_TRIES, "the lock is free once its session ended");
    }
    cr_expect_eq(take(lease_b, "b", KEY_A), 2);
    cr_expect_not(state_begin(state_a, &err), "a's next write is refused");
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_CONFLICT), "%s",
              err ? err->message : "");
    cr_expect(err && strstr(err->message, "no longer the site's active "
                                          "manager"),
              "%s", err ? err->message : "");
    cr_expect(state_fenced(state_a));
    g_clear_error(&err);
    cr_assert(state_begin_read(state_a, &err), "reads still work: %s",
              err ? err->message : "");
    state_rollback(state_a);
    cr_assert(state_leader_read(lease_b, &row, &err), "%s",
              err ? err->message : "");
    cr_expect_eq(row.epoch, 2);
    cr_expect_str_eq(row.holder, "b");
    cr_expect_str_eq(row.public_key, KEY_A);

    /* a manager with another key would not be accepted by the agents */
    cr_expect_not(
        state_leader_take(lease_b, "c", KEY_B, &before, &epoch, &err));
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_CONFLICT) &&
                  strstr(err->message, "same curve.key"),
              "%s", err ? err->message : "");
    state_close(state_a);
    state_close(lease_b);
}

/* Two spored on one database: "a" and "b", each with its own directories
 * and port under DIR/NAME, the same CURVE key (a's, copied), lease 2 s */
typedef struct {
    char *name, *conf, *log, *sock;
    GPid pid;
} Manager2;

static void
manager2_init(Manager2 *m, const char *name, const char *dsn)
{
    g_autofree char *base = g_build_filename(dir, name, NULL);
    g_autofree char *text = g_strdup_printf(
        "[spored]\nstate_dir=%s/state\nrun_dir=%s/run\n"
        "listen=tcp://127.0.0.1:%u\nhosts_dir=%s/hosts.d\nmetrics=none\n"
        "[state]\nbackend=postgresql\ndsn=%s\nlease=2\n",
        base, base, test_free_port_pair(), base, dsn);

    cr_assert_eq(g_mkdir_with_parents(base, 0700), 0);
    m->name = g_strdup(name);
    m->conf = g_build_filename(base, "spored.conf", NULL);
    m->log = g_build_filename(base, "spored.log", NULL);
    m->sock = g_build_filename(base, "run", "control.sock", NULL);
    cr_assert(g_file_set_contents(m->conf, text, -1, NULL));
}

static void
manager2_start(Manager2 *m)
{
    g_autofree char *cmd =
        g_strdup_printf("exec '%s' --config '%s' >>'%s' 2>&1",
                        env_or_skip("SPORED"), m->conf, m->log);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    g_autoptr(GError) err = NULL;

    cr_assert(g_spawn_async(NULL, (char **)argv, NULL,
                            G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &m->pid,
                            &err),
              "%s", err ? err->message : "");
}

/* manager2_exited: its exit status once it has exited, else -1 */
static int
manager2_exited(Manager2 *m)
{
    int status;

    if (m->pid <= 0)
        return -2;
    if (waitpid(m->pid, &status, WNOHANG) != m->pid)
        return -1;
    m->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* manager2_wait_exit: its exit status (manager2_exited) within the
 * bounded wait, -1 if it is still running */
static int
manager2_wait_exit(Manager2 *m)
{
    int status = -1;

    for (int i = 0; i < WAIT_TRIES && (status = manager2_exited(m)) == -1; i++)
        g_usleep(WAIT_STEP_US);
    return status;
}

static void
manager2_kill(Manager2 *m, int sig)
{
    int status;

    if (m->pid <= 0)
        return;
    kill(m->pid, sig);
    if (sig == SIGKILL || sig == SIGTERM) {
        waitpid(m->pid, &status, 0);
        m->pid = 0;
    }
}

static void
manager2_clear(Manager2 *m)
{
    if (m->pid > 0) {
        kill(m->pid, SIGCONT);
        manager2_kill(m, SIGKILL);
    }
    g_free(m->name);
    g_free(m->conf);
    g_free(m->log);
    g_free(m->sock);
}

static bool
log_has(const Manager2 *m, const char *text)
{
    g_autofree char *log = NULL;

    return g_file_get_contents(m->log, &log, NULL, NULL) && strstr(log, text);
}

/* wait_log: @m's log has @text, within the bounded wait */
static bool
wait_log(const Manager2 *m, const char *text)
{
    for (int i = 0; i < WAIT_TRIES; i++) {
        if (log_has(m, text))
            return true;
        g_usleep(WAIT_STEP_US);
    }
    return false;
}

static bool
wait_socket(const Manager2 *m)
{
    for (int i = 0; i < WAIT_TRIES; i++) {
        if (g_file_test(m->sock, G_FILE_TEST_EXISTS))
            return true;
        g_usleep(WAIT_STEP_US);
    }
    return false;
}

/* copy_key: b's state directory gets a's CURVE key pair */
static void
copy_key(const Manager2 *from, const Manager2 *to)
{
    const char *files[] = {"curve.key", "curve.pub"};
    g_autofree char *from_dir = g_path_get_dirname(from->conf);
    g_autofree char *to_dir = g_path_get_dirname(to->conf);
    g_autofree char *to_state = g_build_filename(to_dir, "state", NULL);

    cr_assert_eq(g_mkdir_with_parents(to_state, 0700), 0);
    for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
        g_autofree char *src =
            g_build_filename(from_dir, "state", files[i], NULL);
        g_autofree char *dst = g_build_filename(to_state, files[i], NULL);
        g_autofree char *text = NULL;
        gsize len = 0;

        cr_assert(g_file_get_contents(src, &text, &len, NULL), "%s", src);
        cr_assert(g_file_set_contents(dst, text, (gssize)len, NULL));
        cr_assert_eq(chmod(dst, 0600), 0);
    }
}

/* ctl2: sporectl -c A -c B @cmd; exit status, output */
static int
ctl2(const Manager2 *a, const Manager2 *b, const char *cmd, char **ret_out,
     char **ret_err)
{
    const char *argv[] = {
        env_or_skip("SPORECTL"), "-c", a->sock, "-c", b->sock, cmd, NULL};

    return run(argv, ret_out, ret_err);
}

Test(spored_state, a_standby_takes_over_when_the_active_manager_is_killed)
{
    g_autofree char *dsn = test_state_pg_dsn_new();
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    Manager2 a = {0}, b = {0};
    gint64 t0, t1;

    manager2_init(&a, "a", dsn);
    manager2_init(&b, "b", dsn);
    manager2_start(&a);
    cr_assert(wait_socket(&a), "a is active: see %s", a.log);
    cr_expect(log_has(&a, "leader epoch 1; before: none"), "see %s", a.log);
    copy_key(&a, &b);
    manager2_start(&b);
    cr_assert(wait_log(&b, "standby: "), "b waits: see %s", b.log);
    cr_expect(wait_log(&b, "is the site's active manager (leader epoch 1)"),
              "b says who is active: see %s", b.log);
    cr_expect_not(g_file_test(b.sock, G_FILE_TEST_EXISTS),
                  "a standby has no control socket");
    cr_assert_eq(ctl2(&b, &a, "service-list", &out, &err), 0,
                 "sporectl moves past the standby's socket: %s", err);

    t0 = g_get_monotonic_time();
    manager2_kill(&a, SIGKILL);
    cr_assert(wait_socket(&b), "b takes over: see %s", b.log);
    t1 = g_get_monotonic_time();
    cr_log_info("takeover after kill -9: %.1f s",
                (double)(t1 - t0) / G_USEC_PER_SEC);
    cr_expect(log_has(&b, "leader epoch 2; before: "), "see %s", b.log);
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_assert_eq(ctl2(&a, &b, "events", &out, &err), 0,
                 "a's socket is gone, b answers: %s", err);
    cr_expect(strstr(out, "is the site's active manager (leader epoch 1)") &&
                  strstr(out, "is the site's active manager (leader epoch 2)"),
              "both takeovers are events: %s", out);
    manager2_clear(&a);
    manager2_clear(&b);
}

Test(spored_state, a_frozen_active_manager_is_fenced_and_exits)
{
    g_autofree char *dsn = test_state_pg_dsn_new();
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    Manager2 a = {0}, b = {0};
    int status = -1;

    manager2_init(&a, "a", dsn);
    manager2_init(&b, "b", dsn);
    manager2_start(&a);
    cr_assert(wait_socket(&a), "a is active: see %s", a.log);
    copy_key(&a, &b);
    manager2_start(&b);
    cr_assert(wait_log(&b, "is the site's active manager (leader epoch 1)"),
              "b waits: see %s", b.log);

    /* a stops reading its lease (SIGSTOP: frozen, as on a cut network):
     * the server ends its session after the lease, b takes over */
    manager2_kill(&a, SIGSTOP);
    cr_assert(wait_socket(&b), "b takes over from a frozen a: see %s", b.log);
    cr_expect(log_has(&b, "leader epoch 2"), "see %s", b.log);
    manager2_kill(&a, SIGCONT);
    status = manager2_wait_exit(&a);
    cr_expect_eq(status, 75, "a exits 75 once it sees it: status %d, see %s",
                 status, a.log);
    cr_expect(log_has(&a, "no longer the site's active manager"), "see %s",
              a.log);
    cr_assert_eq(ctl2(&a, &b, "service-list", &out, &err), 0, "%s", err);

    /* a started again is b's standby */
    manager2_start(&a);
    cr_expect(wait_log(&a, "is the site's active manager (leader epoch 2)"),
              "see %s", a.log);
    manager2_clear(&a);
    manager2_clear(&b);
}

Test(spored_state, refuses_to_stand_by_with_another_curve_key)
{
    g_autofree char *dsn = test_state_pg_dsn_new();
    Manager2 a = {0}, b = {0};
    int status = -1;

    manager2_init(&a, "a", dsn);
    manager2_init(&b, "b", dsn);
    manager2_start(&a);
    cr_assert(wait_socket(&a), "a is active: see %s", a.log);
    manager2_start(&b); /* a key of its own */
    status = manager2_wait_exit(&b);
    cr_expect_eq(status, 1, "b exits 1: see %s", b.log);
    cr_expect(log_has(&b, "copy the active manager's curve.key"), "see %s",
              b.log);
    cr_expect_eq(manager2_exited(&a), -1, "a goes on");
    manager2_clear(&a);
    manager2_clear(&b);
}
