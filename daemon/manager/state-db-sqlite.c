/*
 * state-db-sqlite.c: the SQLite driver of the state layer (state-db.h).
 *
 * One sqlite3 connection (SQLITE_OPEN_FULLMUTEX), WAL, synchronous=FULL:
 * a committed transaction survives kill -9 and power loss.  Writers
 * serialize on the database's write lock (BEGIN IMMEDIATE), waiting up to
 * STATE_BUSY_TIMEOUT_MS: SQLite transactions are serializable.
 *
 * The statement cache: each statement is prepared once per connection
 * and kept (SQLITE_PREPARE_PERSISTENT), keyed by the address of its SQL
 * text (the callers' string literals); release resets it for the next
 * use.  A statement still in use when the same one is asked for again
 * gets a fresh copy, finalized on release; so does dynamic SQL (cache =
 * false).  Parsing SQL was most of spored's time per message before.
 *
 * Checkpoints: a writable database's WAL is copied back into the file by
 * a thread of its own on a second connection (Checkpointer: a PASSIVE
 * checkpoint every CHECKPOINT_INTERVAL_MS, which never takes the write
 * lock nor waits for it), rather than by the commit that happens to cross
 * SQLite's automatic threshold: that commit wrote back and synced the
 * whole WAL inside whatever the main thread was doing (a reconciliation
 * pass's commit took 85-130 ms at 10,000 clones).  The log starts over
 * only when a writer finds it wholly copied back, which a stream of
 * commits without a pause may never let the thread see; so the commits
 * still checkpoint past CHECKPOINT_AUTO_PAGES (4x SQLite's default), and
 * find most of the log copied by then.
 *
 * Invariants:
 *   1. The database file is created STATE_FILE_MODE before SQLite opens
 *      it: it holds manifests, which may hold keys.
 *   2. cache and busy change under SqliteDb.lock only (control threads
 *      and the main thread share the connection under Manager.lock; the
 *      lock here keeps the cache sound on its own).
 *   3. The WAL never grows without bound: the commits checkpoint past
 *      CHECKPOINT_AUTO_PAGES whether or not the Checkpointer runs (its
 *      connection may fail to open: then SQLite's default threshold).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#include "spore-error.h"
#include "state-db.h"

/* how long a statement waits for another connection's write lock */
#define STATE_BUSY_TIMEOUT_MS 5000
#define STATE_FILE_MODE       0600
/* how often the checkpointer copies the WAL back */
#define CHECKPOINT_INTERVAL_MS 1000
/* the commits' own threshold while the checkpointer runs (invariant 3) */
#define CHECKPOINT_AUTO_PAGES "4000"

/* Checkpointer: the thread that checkpoints the WAL (see the top) */
typedef struct {
    sqlite3 *handle; /* its own connection */
    GThread *thread;
    GMutex lock;
    GCond wake;
    bool stop;           /* under lock */
    guint64 checkpoints; /* under lock: ones that copied frames back */
} Checkpointer;

typedef struct {
    StateDb base;
    sqlite3 *handle;
    GMutex lock;        /* invariant 2 */
    GHashTable *cache;  /* SQL text address -> SqliteStmt */
    GHashTable *busy;   /* SqliteStmt: cached, handed out */
    Checkpointer *ckpt; /* NULL: read-only, or SQLite's own (invariant 3) */
} SqliteDb;

typedef struct {
    StateStmt base;
    sqlite3_stmt *st;
} SqliteStmt;

static SqliteDb *
sqlite_db(StateDb *db)
{
    return (SqliteDb *)db;
}

static bool
sqlite_fail(sqlite3 *handle, GError **error)
{
    int rc = sqlite3_extended_errcode(handle);

    g_set_error(error, SPORE_ERROR,
                (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED
                    ? SPORE_ERROR_UNAVAILABLE
                    : SPORE_ERROR_IO,
                "%s", sqlite3_errmsg(handle));
    return false;
}

static void
stmt_free(SqliteStmt *s)
{
    sqlite3_finalize(s->st);
    g_free(s);
}

/* ---- the checkpointer ---------------------------------------------- */

static gpointer
checkpointer_run(gpointer data)
{
    Checkpointer *c = data;
    gint64 next = g_get_monotonic_time();
    int failing = SQLITE_OK; /* logged once until a checkpoint succeeds */

    g_mutex_lock(&c->lock);
    while (!c->stop) {
        int wal = 0, copied = 0, rc;

        next += CHECKPOINT_INTERVAL_MS * G_TIME_SPAN_MILLISECOND;
        /* until @next (a wake-up before it is to stop, or spurious) */
        while (!c->stop && g_cond_wait_until(&c->wake, &c->lock, next))
            ;
        if (c->stop)
            break;
        g_mutex_unlock(&c->lock);
        /* PASSIVE: copies what no reader needs, takes no write lock */
        rc = sqlite3_wal_checkpoint_v2(
            c->handle, NULL, SQLITE_CHECKPOINT_PASSIVE, &wal, &copied);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != failing)
            g_warning("state: checkpoint of the write-ahead log failed: %s "
                      "(tried again every %d ms; logged again if that "
                      "changes)",
                      sqlite3_errmsg(c->handle), CHECKPOINT_INTERVAL_MS);
        if (rc == SQLITE_OK && failing != SQLITE_OK)
            g_message("state: the write-ahead log is checkpointed again");
        if (rc != SQLITE_BUSY)
            failing = rc;
        g_mutex_lock(&c->lock);
        if (rc == SQLITE_OK && copied > 0)
            c->checkpoints++;
    }
    g_mutex_unlock(&c->lock);
    return NULL;
}

static int
first_column(void *data, int n, char **values, char **names)
{
    char **out = data;

    if (n > 0 && values[0] && !*out)
        *out = g_strdup(values[0]);
    return 0;
}

/* checkpointer_start: NULL if its connection cannot be opened or does not
 * see the database in WAL mode (the caller keeps SQLite's automatic
 * checkpoints then) */
static Checkpointer *
checkpointer_start(const char *path)
{
    Checkpointer *c = g_new0(Checkpointer, 1);
    g_autofree char *mode = NULL;

    /* (a connection knows the mode once it has read the file: until then
     * a checkpoint does nothing) */
    if (sqlite3_open_v2(path, &c->handle,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK ||
        sqlite3_exec(c->handle, "PRAGMA journal_mode;", first_column, &mode,
                     NULL) != SQLITE_OK ||
        g_strcmp0(mode, "wal") != 0) {
        g_warning("state: cannot open '%s' for checkpoints (%s); the "
                  "commits checkpoint the write-ahead log themselves",
                  path,
                  !c->handle ? "out of memory"
                  : mode     ? "not in WAL mode"
                             : sqlite3_errmsg(c->handle));
        sqlite3_close(c->handle);
        g_free(c);
        return NULL;
    }
    g_mutex_init(&c->lock);
    g_cond_init(&c->wake);
    c->thread = g_thread_new("spored-wal", checkpointer_run, c);
    return c;
}

static void
checkpointer_stop(Checkpointer *c)
{
    if (!c)
        return;
    g_mutex_lock(&c->lock);
    c->stop = true;
    g_cond_signal(&c->wake);
    g_mutex_unlock(&c->lock);
    g_thread_join(c->thread);
    sqlite3_close(c->handle);
    g_cond_clear(&c->wake);
    g_mutex_clear(&c->lock);
    g_free(c);
}

guint64
state_db_sqlite_checkpoints(StateDb *db)
{
    Checkpointer *c;
    guint64 n;

    g_return_val_if_fail(db->backend == STATE_BACKEND_SQLITE, 0);
    c = sqlite_db(db)->ckpt;
    if (!c)
        return 0;
    g_mutex_lock(&c->lock);
    n = c->checkpoints;
    g_mutex_unlock(&c->lock);
    return n;
}

/* ---- the driver -------------------------------------------------------- */

static void
sqlite_close(StateDb *db)
{
    SqliteDb *d = sqlite_db(db);

    checkpointer_stop(d->ckpt); /* first: it reads the same file */
    g_hash_table_unref(d->busy);
    g_hash_table_unref(d->cache); /* finalizes the statements */
    sqlite3_close(d->handle);
    g_mutex_clear(&d->lock);
    g_free(d->base.label);
    g_free(d);
}

static bool
sqlite_exec_script(StateDb *db, const char *sql, GError **error)
{
    SqliteDb *d = sqlite_db(db);
    char *msg = NULL;

    if (sqlite3_exec(d->handle, sql, NULL, NULL, &msg) == SQLITE_OK)
        return true;
    if (!msg)
        return sqlite_fail(d->handle, error);
    g_set_error(error, SPORE_ERROR,
                (sqlite3_extended_errcode(d->handle) & 0xff) == SQLITE_BUSY
                    ? SPORE_ERROR_UNAVAILABLE
                    : SPORE_ERROR_IO,
                "%s", msg);
    sqlite3_free(msg);
    return false;
}

static bool
sqlite_begin(StateDb *db, bool write, GError **error)
{
    return sqlite_exec_script(db, write ? "BEGIN IMMEDIATE" : "BEGIN", error);
}

static bool
sqlite_commit(StateDb *db, GError **error)
{
    return sqlite_exec_script(db, "COMMIT", error);
}

static bool
sqlite_in_transaction(StateDb *db)
{
    return !sqlite3_get_autocommit(sqlite_db(db)->handle);
}

/* cached: the cached statement of @sql, claimed, or NULL when there is
 * none or it is in use (*ret_cache: whether to cache a new one) */
static SqliteStmt *
cached(SqliteDb *d, const char *sql, bool *ret_cache)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&d->lock);
    SqliteStmt *s = g_hash_table_lookup(d->cache, sql);

    *ret_cache = s == NULL;
    if (!s || g_hash_table_contains(d->busy, s))
        return NULL;
    g_hash_table_add(d->busy, s);
    return s;
}

static bool
bind_one(sqlite3_stmt *st, int i, const StateValue *v)
{
    if (v->null || (v->type == G_TYPE_STRING && !v->text))
        return sqlite3_bind_null(st, i) == SQLITE_OK;
    if (v->type == G_TYPE_STRING)
        return sqlite3_bind_text(st, i, v->text, -1, SQLITE_TRANSIENT) ==
               SQLITE_OK;
    if (v->type == G_TYPE_INT64)
        return sqlite3_bind_int64(st, i, v->i) == SQLITE_OK;
    if (v->type == G_TYPE_DOUBLE)
        return sqlite3_bind_double(st, i, v->d) == SQLITE_OK;
    if (v->type == G_TYPE_BYTES) {
        gsize len = 0;
        const void *data = g_bytes_get_data(v->bytes, &len);

        /* an empty blob, not NULL: SQLite binds NULL for a NULL pointer */
        return sqlite3_bind_blob64(st, i, data ? data : "", len,
                                   SQLITE_TRANSIENT) == SQLITE_OK;
    }
    g_error("state-db-sqlite: unsupported parameter type");
}

static void
sqlite_release(StateStmt *st)
{
    SqliteStmt *s = (SqliteStmt *)st;
    SqliteDb *d = sqlite_db(st->db);
    bool was_cached;

    g_mutex_lock(&d->lock);
    was_cached = g_hash_table_remove(d->busy, s);
    g_mutex_unlock(&d->lock);
    if (!was_cached) {
        stmt_free(s);
        return;
    }
    sqlite3_reset(s->st);
    sqlite3_clear_bindings(s->st);
}

static StateStmt *
sqlite_prepare(StateDb *db, const char *sql, bool cache,
               const StateValue *params, guint n_params, GError **error)
{
    SqliteDb *d = sqlite_db(db);
    bool keep = false;
    SqliteStmt *s = cache ? cached(d, sql, &keep) : NULL;

    if (!s) {
        sqlite3_stmt *st = NULL;

        if (sqlite3_prepare_v3(d->handle, sql, -1,
                               keep ? SQLITE_PREPARE_PERSISTENT : 0, &st,
                               NULL) != SQLITE_OK)
            return sqlite_fail(d->handle, error), NULL;
        s = g_new0(SqliteStmt, 1);
        s->base.db = db;
        s->st = st;
        if (keep) {
            g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&d->lock);

            g_hash_table_insert(d->cache, (gpointer)sql, s);
            g_hash_table_add(d->busy, s);
        }
    }
    for (guint i = 0; i < n_params; i++) {
        if (!bind_one(s->st, (int)i + 1, &params[i])) {
            sqlite_fail(d->handle, error);
            sqlite_release(&s->base);
            return NULL;
        }
    }
    return &s->base;
}

static int
sqlite_step(StateStmt *st, GError **error)
{
    int rc = sqlite3_step(((SqliteStmt *)st)->st);

    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    sqlite_fail(sqlite_db(st->db)->handle, error);
    return -1;
}

static sqlite3_stmt *
raw(StateStmt *st)
{
    return ((SqliteStmt *)st)->st;
}

static guint
sqlite_column_count(StateStmt *st)
{
    return (guint)sqlite3_column_count(raw(st));
}

static bool
sqlite_column_null(StateStmt *st, guint col)
{
    return sqlite3_column_type(raw(st), (int)col) == SQLITE_NULL;
}

static gint64
sqlite_column_int64(StateStmt *st, guint col)
{
    return sqlite3_column_int64(raw(st), (int)col);
}

static double
sqlite_column_double(StateStmt *st, guint col)
{
    return sqlite3_column_double(raw(st), (int)col);
}

static const char *
sqlite_column_text(StateStmt *st, guint col)
{
    return (const char *)sqlite3_column_text(raw(st), (int)col);
}

static GBytes *
sqlite_column_bytes(StateStmt *st, guint col)
{
    const void *data = sqlite3_column_blob(raw(st), (int)col);

    return g_bytes_new(data, (gsize)sqlite3_column_bytes(raw(st), (int)col));
}

static const StateDbOps sqlite_ops = {
    .name = "sqlite",
    .close = sqlite_close,
    .exec_script = sqlite_exec_script,
    .begin = sqlite_begin,
    .commit = sqlite_commit,
    .in_transaction = sqlite_in_transaction,
    .prepare = sqlite_prepare,
    .step = sqlite_step,
    .column_count = sqlite_column_count,
    .column_null = sqlite_column_null,
    .column_int64 = sqlite_column_int64,
    .column_double = sqlite_column_double,
    .column_text = sqlite_column_text,
    .column_bytes = sqlite_column_bytes,
    .release = sqlite_release,
};

/* create_private: @path exists, created STATE_FILE_MODE if it did not
 * (invariant 1) */
static bool
create_private(const char *path, GError **error)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, STATE_FILE_MODE);

    if (fd < 0 && errno != EEXIST) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create '%s': %s", path, g_strerror(errno));
        return false;
    }
    if (fd >= 0)
        close(fd);
    return true;
}

StateDb *
state_db_sqlite_open(const char *path, bool readonly, GError **error)
{
    sqlite3 *handle = NULL;
    SqliteDb *d;
    g_autoptr(GError) err = NULL;

    if (!readonly && !create_private(path, error))
        return NULL;
    if (sqlite3_open_v2(path, &handle,
                        (readonly
                             ? SQLITE_OPEN_READONLY
                             : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                            SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot open database '%s': %s", path,
                    handle ? sqlite3_errmsg(handle) : "out of memory");
        sqlite3_close(handle);
        return NULL;
    }
    d = g_new0(SqliteDb, 1);
    d->base.ops = &sqlite_ops;
    d->base.backend = STATE_BACKEND_SQLITE;
    d->base.label = g_strdup(path);
    d->handle = handle;
    g_mutex_init(&d->lock);
    d->cache = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                     (GDestroyNotify)stmt_free);
    d->busy = g_hash_table_new(g_direct_hash, g_direct_equal);
    sqlite3_extended_result_codes(handle, 1);
    sqlite3_busy_timeout(handle, STATE_BUSY_TIMEOUT_MS);
    if (!readonly && !sqlite_exec_script(&d->base,
                                         "PRAGMA journal_mode=WAL; PRAGMA "
                                         "synchronous=FULL; PRAGMA "
                                         "foreign_keys=ON;",
                                         &err)) {
        g_set_error(error, SPORE_ERROR, err->code,
                    "cannot open database '%s': %s", path, err->message);
        sqlite_close(&d->base);
        return NULL;
    }
    /* invariant 3: the thread first, then the commits' threshold raised */
    if (!readonly && (d->ckpt = checkpointer_start(path)) &&
        !sqlite_exec_script(
            &d->base, "PRAGMA wal_autocheckpoint=" CHECKPOINT_AUTO_PAGES ";",
            &err)) {
        g_set_error(error, SPORE_ERROR, err->code,
                    "cannot open database '%s': %s", path, err->message);
        sqlite_close(&d->base);
        return NULL;
    }
    return &d->base;
}

void
state_db_sqlite_set_busy_timeout(StateDb *db, int ms)
{
    g_return_if_fail(db->backend == STATE_BACKEND_SQLITE);
    sqlite3_busy_timeout(sqlite_db(db)->handle, ms);
}
