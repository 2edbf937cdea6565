/*
 * manager-state.c: spored's state in SQLite (STATE_DIR/spored.db, WAL,
 * synchronous=FULL: a committed change survives kill -9 and power loss).
 * Every statement of the site manager is here, behind a named function;
 * the contract of them all is in manager-state.h.
 *
 * Tables (schema version 2; a version 1 database is brought up to it:
 * migrate_v1):
 *   services   name, manifest (canonical XML), generation, desired count,
 *              deleting, cooldown_until
 *   images     name, id, format, origins (JSON), the index, size
 *   hosts      name, key, address, accepted, cpus, memory, lost, last_seen
 *   clones     desired clones: service, index, host (NULL: unplaced),
 *              generation (the service's, or an older one mid-rollout)
 *   generations every generation of each service: its manifest and image
 *              (the old clones' UUIDs, rollback, the next number)
 *   rollouts   per service, the last rolling replacement: from and to
 *              which generation, its state, when, why it failed
 *   commands   every command sent to an agent: id, host, op, body, state
 *   host_images per host and image: cached fraction, bytes by source
 *   requests   request counts reported in the last minute, per service
 *   schedules  per service and scheduled policy (its text): the time up
 *              to which its occurrences were handled (docs/scaling.md)
 *   profiles   per host and image: the merged access profile (chunk
 *              indexes in first-read order) and how many boots made it
 *   events     what happened, for `sporectl events`
 *
 * Invariants:
 *   1. No statement's failure is dropped: each primitive below turns a
 *      SQLite error into a GError naming the statement's purpose, and
 *      every named function returns it.
 *   2. No function opens a transaction but state_begin(); callers hold
 *      one around each command (manager-control.c) and each pass
 *      (reconcile), and roll back on any error (state_rollback).
 *   3. States are stored by their names from the *_state_to_string()
 *      functions, bound as parameters: no state literal in SQL.
 *   4. The database file is created 0600 before SQLite opens it: it
 *      holds manifests, which may hold keys.
 */
#include "manager-state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>
#include <glib-object.h>

#include "spore-error.h"

#define SCHEMA_VERSION 2
/* how long a statement waits for another connection's write lock */
#define STATE_BUSY_TIMEOUT_MS 5000
/* events kept: the newest EVENTS_KEEP, pruned every EVENTS_PRUNE_EVERY */
#define EVENTS_KEEP        100000
#define EVENTS_PRUNE_EVERY 1000
#define STATE_FILE_MODE    0600

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
    "CREATE TABLE IF NOT EXISTS services ("
    "  name TEXT PRIMARY KEY, manifest TEXT NOT NULL,"
    "  generation INTEGER NOT NULL, image TEXT NOT NULL,"
    "  desired INTEGER NOT NULL, deleting INTEGER NOT NULL DEFAULT 0,"
    "  cooldown_until REAL NOT NULL DEFAULT 0, updated REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS images ("
    "  name TEXT PRIMARY KEY, id TEXT NOT NULL, format TEXT NOT NULL,"
    "  origins TEXT NOT NULL, idx BLOB NOT NULL, size INTEGER NOT NULL,"
    "  chunk_size INTEGER NOT NULL, added REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS hosts ("
    "  name TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, address TEXT,"
    "  accepted INTEGER NOT NULL DEFAULT 0, cpus INTEGER NOT NULL DEFAULT 0,"
    "  memory_kib INTEGER NOT NULL DEFAULT 0, virt TEXT,"
    "  lost INTEGER NOT NULL DEFAULT 0, last_seen REAL,"
    "  first_seen REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS clones ("
    "  service TEXT NOT NULL, idx INTEGER NOT NULL, host TEXT,"
    "  generation INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (service, idx));"
    "CREATE INDEX IF NOT EXISTS clones_by_host ON clones (host);"
    "CREATE TABLE IF NOT EXISTS generations ("
    "  service TEXT NOT NULL, generation INTEGER NOT NULL,"
    "  manifest TEXT NOT NULL, image TEXT NOT NULL, created REAL NOT NULL,"
    "  PRIMARY KEY (service, generation));"
    "CREATE TABLE IF NOT EXISTS rollouts ("
    "  service TEXT PRIMARY KEY, generation INTEGER NOT NULL,"
    "  from_generation INTEGER NOT NULL, state TEXT NOT NULL,"
    "  started REAL NOT NULL, finished REAL, reason TEXT);"
    "CREATE TABLE IF NOT EXISTS commands ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL,"
    "  op TEXT NOT NULL, service TEXT, body TEXT NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL"
    "  DEFAULT 0, created REAL NOT NULL, sent REAL NOT NULL DEFAULT 0,"
    "  finished REAL, error TEXT);"
    "CREATE INDEX IF NOT EXISTS commands_pending ON commands (state, host);"
    "CREATE TABLE IF NOT EXISTS host_images ("
    "  host TEXT NOT NULL, image TEXT NOT NULL, cached REAL NOT NULL,"
    "  origin_bytes INTEGER NOT NULL, peer_bytes INTEGER NOT NULL,"
    "  local_bytes INTEGER NOT NULL, PRIMARY KEY (host, image));"
    "CREATE TABLE IF NOT EXISTS profiles ("
    "  host TEXT NOT NULL, image TEXT NOT NULL, boots INTEGER NOT NULL,"
    "  chunks TEXT NOT NULL, updated REAL NOT NULL,"
    "  PRIMARY KEY (host, image));"
    "CREATE TABLE IF NOT EXISTS requests ("
    "  service TEXT NOT NULL, time REAL NOT NULL, count INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS requests_by_service ON requests (service, "
    "time);"
    "CREATE TABLE IF NOT EXISTS schedules ("
    "  service TEXT NOT NULL, schedule TEXT NOT NULL, handled REAL NOT NULL,"
    "  PRIMARY KEY (service, schedule));"
    "CREATE TABLE IF NOT EXISTS events ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,"
    "  kind TEXT NOT NULL, service TEXT, host TEXT, message TEXT NOT NULL);";

/* ---- named states ------------------------------------------------------ */

static const char *const command_states[] = {
    [COMMAND_PENDING] = "pending",
    [COMMAND_DONE] = "done",
    [COMMAND_FAILED] = "failed",
    [COMMAND_CANCELLED] = "cancelled",
};

static const char *const host_states[] = {
    [HOST_PENDING] = "pending",
    [HOST_DOWN] = "down",
    [HOST_UP] = "up",
    [HOST_LOST] = "lost",
};

static const char *const clone_states[] = {
    [CLONE_PENDING] = "pending",   [CLONE_CREATING] = "creating",
    [CLONE_UPDATING] = "updating", [CLONE_DELETING] = "deleting",
    [CLONE_UNKNOWN] = "unknown",
};

static bool
state_lookup(const char *const *names, guint n, const char *text,
             int *ret_state)
{
    for (guint i = 0; text && i < n; i++) {
        if (g_str_equal(names[i], text)) {
            *ret_state = (int)i;
            return true;
        }
    }
    return false;
}

const char *
command_state_to_string(CommandState state)
{
    g_return_val_if_fail(state < G_N_ELEMENTS(command_states), NULL);
    return command_states[state];
}

bool
command_state_from_string(const char *text, CommandState *ret_state)
{
    int s;

    if (!state_lookup(command_states, G_N_ELEMENTS(command_states), text, &s))
        return false;
    *ret_state = (CommandState)s;
    return true;
}

const char *
host_state_to_string(HostState state)
{
    g_return_val_if_fail(state < G_N_ELEMENTS(host_states), NULL);
    return host_states[state];
}

bool
host_state_from_string(const char *text, HostState *ret_state)
{
    int s;

    if (!state_lookup(host_states, G_N_ELEMENTS(host_states), text, &s))
        return false;
    *ret_state = (HostState)s;
    return true;
}

const char *
clone_state_to_string(CloneState state)
{
    g_return_val_if_fail(state < G_N_ELEMENTS(clone_states), NULL);
    return clone_states[state];
}

bool
clone_state_from_string(const char *text, CloneState *ret_state)
{
    int s;

    if (!state_lookup(clone_states, G_N_ELEMENTS(clone_states), text, &s))
        return false;
    *ret_state = (CloneState)s;
    return true;
}

/* ---- primitives (invariant 1) ------------------------------------------ */

typedef struct sqlite3_stmt Stmt;

/*
 * The statement cache: each statement is prepared once per connection
 * and kept (SQLITE_PREPARE_PERSISTENT), keyed by the connection and the
 * address of its SQL text (every statement here is a string literal);
 * stmt_release() resets it for the next use.  A statement still in use
 * when the same one is asked for again gets a fresh copy, finalized on
 * release.  state_close() finalizes a connection's statements.  Parsing
 * SQL was most of spored's time per message before.
 */
typedef struct {
    sqlite3 *db;
    const char *sql;
} StmtKey;

static GMutex stmt_lock;
static GHashTable *stmt_cache; /* StmtKey -> Stmt */
static GHashTable *stmt_busy;  /* Stmt: cached, handed out */

static guint
stmt_key_hash(gconstpointer p)
{
    const StmtKey *k = p;

    return g_direct_hash(k->db) ^ g_direct_hash(k->sql);
}

static gboolean
stmt_key_equal(gconstpointer a, gconstpointer b)
{
    const StmtKey *x = a, *y = b;

    return x->db == y->db && x->sql == y->sql;
}

/* stmt_cached: the cached statement of @sql on @db, claimed, or NULL
 * when there is none or it is in use (*ret_cache: whether to cache the
 * one the caller prepares) */
static Stmt *
stmt_cached(sqlite3 *db, const char *sql, bool *ret_cache)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&stmt_lock);
    StmtKey key = {db, sql};
    Stmt *st;

    if (!stmt_cache) {
        stmt_cache =
            g_hash_table_new_full(stmt_key_hash, stmt_key_equal, g_free, NULL);
        stmt_busy = g_hash_table_new(g_direct_hash, g_direct_equal);
    }
    st = g_hash_table_lookup(stmt_cache, &key);
    *ret_cache = st == NULL;
    if (!st || g_hash_table_contains(stmt_busy, st))
        return NULL;
    g_hash_table_add(stmt_busy, st);
    return st;
}

static void
stmt_keep(sqlite3 *db, const char *sql, Stmt *st)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&stmt_lock);
    StmtKey *key = g_new(StmtKey, 1);

    key->db = db;
    key->sql = sql;
    g_hash_table_insert(stmt_cache, key, st);
    g_hash_table_add(stmt_busy, st);
}

static void
stmt_release(Stmt *st)
{
    bool cached;

    g_mutex_lock(&stmt_lock);
    cached = stmt_busy && g_hash_table_remove(stmt_busy, st);
    g_mutex_unlock(&stmt_lock);
    if (!cached) {
        sqlite3_finalize(st);
        return;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Stmt, stmt_release)

/* stmt_forget: finalize @db's cached statements (before closing it) */
static void
stmt_forget(sqlite3 *db)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&stmt_lock);
    GHashTableIter it;
    gpointer k, v;

    if (!stmt_cache)
        return;
    g_hash_table_iter_init(&it, stmt_cache);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        if (((StmtKey *)k)->db != db)
            continue;
        g_hash_table_remove(stmt_busy, v);
        sqlite3_finalize(v);
        g_hash_table_iter_remove(&it);
    }
}

static bool
db_fail(sqlite3 *db, const char *what, GError **error)
{
    int rc = sqlite3_extended_errcode(db);

    g_set_error(error, SPORE_ERROR,
                (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED
                    ? SPORE_ERROR_UNAVAILABLE
                    : SPORE_ERROR_IO,
                "database: cannot %s: %s", what, sqlite3_errmsg(db));
    return false;
}

/*
 * prepare: @sql with "?" parameters bound from @ap: a G_TYPE_STRING /
 * G_TYPE_INT64 / G_TYPE_DOUBLE / G_TYPE_BYTES tag before each value,
 * G_TYPE_INVALID last.  @what names the purpose in errors.
 */
static Stmt *
prepare_va(sqlite3 *db, const char *what, GError **error, const char *sql,
           va_list ap)
{
    g_autoptr(Stmt) st = NULL;
    int i = 1, rc = SQLITE_OK;
    bool cache = false;

    st = stmt_cached(db, sql, &cache);
    if (!st) {
        if (sqlite3_prepare_v3(db, sql, -1,
                               cache ? SQLITE_PREPARE_PERSISTENT : 0, &st,
                               NULL) != SQLITE_OK) {
            db_fail(db, what, error);
            return NULL;
        }
        if (cache)
            stmt_keep(db, sql, st);
    }
    for (GType t; (t = va_arg(ap, GType)) != G_TYPE_INVALID; i++) {
        if (t == G_TYPE_STRING) {
            const char *s = va_arg(ap, const char *);

            rc = s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT)
                   : sqlite3_bind_null(st, i);
        } else if (t == G_TYPE_INT64) {
            rc = sqlite3_bind_int64(st, i, va_arg(ap, gint64));
        } else if (t == G_TYPE_DOUBLE) {
            rc = sqlite3_bind_double(st, i, va_arg(ap, double));
        } else if (t == G_TYPE_BYTES) {
            GBytes *b = va_arg(ap, GBytes *);
            gsize len = 0;
            const void *d = g_bytes_get_data(b, &len);

            rc = sqlite3_bind_blob64(st, i, d, len, SQLITE_TRANSIENT);
        } else {
            g_error("manager-state: unsupported parameter type");
        }
        if (rc != SQLITE_OK) {
            db_fail(db, what, error);
            return NULL;
        }
    }
    return g_steal_pointer(&st);
}

static Stmt *
prepare(sqlite3 *db, const char *what, GError **error, const char *sql, ...)
{
    va_list ap;
    Stmt *st;

    va_start(ap, sql);
    st = prepare_va(db, what, error, sql, ap);
    va_end(ap);
    return st;
}

/* step: 1 a row, 0 done, -1 an error (set) */
static int
step(sqlite3 *db, Stmt *st, const char *what, GError **error)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    db_fail(db, what, error);
    return -1;
}

static bool
exec(sqlite3 *db, const char *what, GError **error, const char *sql, ...)
{
    va_list ap;
    g_autoptr(Stmt) st = NULL;
    int rc;

    va_start(ap, sql);
    st = prepare_va(db, what, error, sql, ap);
    va_end(ap);
    if (!st)
        return false;
    while ((rc = step(db, st, what, error)) == 1)
        ;
    return rc == 0;
}

/* query_int: the first column of the first row, @fallback without one */
static bool
query_int(sqlite3 *db, const char *what, gint64 fallback, gint64 *ret,
          GError **error, const char *sql, ...)
{
    va_list ap;
    g_autoptr(Stmt) st = NULL;
    int rc;

    va_start(ap, sql);
    st = prepare_va(db, what, error, sql, ap);
    va_end(ap);
    if (!st || (rc = step(db, st, what, error)) < 0)
        return false;
    *ret = rc == 1 && sqlite3_column_type(st, 0) != SQLITE_NULL
               ? sqlite3_column_int64(st, 0)
               : fallback;
    return true;
}

/* query_text: the first column of the first row, NULL without one */
static bool
query_text(sqlite3 *db, const char *what, char **ret, GError **error,
           const char *sql, ...)
{
    va_list ap;
    g_autoptr(Stmt) st = NULL;
    int rc;

    va_start(ap, sql);
    st = prepare_va(db, what, error, sql, ap);
    va_end(ap);
    if (!st || (rc = step(db, st, what, error)) < 0)
        return false;
    *ret = rc == 1 && sqlite3_column_type(st, 0) != SQLITE_NULL
               ? g_strdup((const char *)sqlite3_column_text(st, 0))
               : NULL;
    return true;
}

/* col_text: column @col as a new string, NULL for NULL */
static char *
col_text(Stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL
               ? NULL
               : g_strdup((const char *)sqlite3_column_text(st, col));
}

typedef gpointer (*RowReader)(Stmt *st);

/* collect: every row of @st read by @read into a new array owning them */
static GPtrArray *
collect(sqlite3 *db, Stmt *st, const char *what, RowReader read,
        GDestroyNotify free_row, GError **error)
{
    g_autoptr(GPtrArray) rows = g_ptr_array_new_with_free_func(free_row);
    int rc;

    if (!st)
        return NULL;
    while ((rc = step(db, st, what, error)) == 1)
        g_ptr_array_add(rows, read(st));
    return rc == 0 ? g_steal_pointer(&rows) : NULL;
}

/* ---- the database ------------------------------------------------------ */

double
state_now(void)
{
    return (double)g_get_real_time() / G_USEC_PER_SEC;
}

/* create_private: @path exists, created STATE_FILE_MODE if it did not
 * (invariant 4) */
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

/* migrate_v1: version 1 had no per-clone generation and no history: each
 * clone takes its service's generation, each service's manifest becomes
 * its first recorded generation */
static bool
migrate_v1(sqlite3 *db, GError **error)
{
    return state_begin(db, error) &&
           exec(db, "add the clones' generation", error,
                "ALTER TABLE clones ADD COLUMN generation INTEGER NOT NULL "
                "DEFAULT 0",
                G_TYPE_INVALID) &&
           exec(db, "set the clones' generation", error,
                "UPDATE clones SET generation = (SELECT generation FROM "
                "services WHERE name = clones.service)",
                G_TYPE_INVALID) &&
           exec(db, "record the services' generations", error,
                "INSERT OR IGNORE INTO generations SELECT name, generation, "
                "manifest, image, updated FROM services",
                G_TYPE_INVALID) &&
           exec(db, "write the schema version", error,
                "UPDATE meta SET value = ? WHERE key = 'schema'", G_TYPE_INT64,
                (gint64)SCHEMA_VERSION, G_TYPE_INVALID) &&
           state_commit(db, error);
}

sqlite3 *
state_open(const char *path, GError **error)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    gint64 version = 0;

    if (!create_private(path, error))
        return NULL;
    if (sqlite3_open_v2(path, &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                            SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot open database '%s': %s", path,
                    db ? sqlite3_errmsg(db) : "out of memory");
        state_close(db);
        return NULL;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, STATE_BUSY_TIMEOUT_MS);
    if (sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     "PRAGMA foreign_keys=ON;",
                     NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, schema, NULL, NULL, &msg) != SQLITE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot open database '%s': %s", path,
                    msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        state_close(db);
        return NULL;
    }
    if (!query_int(db, "read the schema version", 0, &version, error,
                   "SELECT value FROM meta WHERE key='schema'",
                   G_TYPE_INVALID) ||
        (version == 0 &&
         !exec(db, "write the schema version", error,
               "INSERT OR REPLACE INTO meta VALUES ('schema', ?)", G_TYPE_INT64,
               (gint64)SCHEMA_VERSION, G_TYPE_INVALID))) {
        g_prefix_error(error, "'%s': ", path);
        state_close(db);
        return NULL;
    }
    if (version == 1 && !migrate_v1(db, error)) {
        state_rollback(db);
        g_prefix_error(error, "database '%s': from schema version 1: ", path);
        state_close(db);
        return NULL;
    }
    if (version > 1 && version != SCHEMA_VERSION) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "database '%s': schema version %" G_GINT64_FORMAT
                    ", this spored knows %d",
                    path, version, SCHEMA_VERSION);
        state_close(db);
        return NULL;
    }
    return db;
}

void
state_close(sqlite3 *db)
{
    if (!db)
        return;
    stmt_forget(db);
    sqlite3_close(db);
}

bool
state_begin(sqlite3 *db, GError **error)
{
    return exec(db, "begin a transaction", error, "BEGIN IMMEDIATE",
                G_TYPE_INVALID);
}

bool
state_begin_read(sqlite3 *db, GError **error)
{
    return exec(db, "begin a transaction", error, "BEGIN", G_TYPE_INVALID);
}

bool
state_commit(sqlite3 *db, GError **error)
{
    return exec(db, "commit", error, "COMMIT", G_TYPE_INVALID);
}

void
state_rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

bool
state_savepoint(sqlite3 *db, GError **error)
{
    return exec(db, "begin a savepoint", error, "SAVEPOINT one",
                G_TYPE_INVALID);
}

bool
state_release(sqlite3 *db, GError **error)
{
    return exec(db, "release a savepoint", error, "RELEASE one",
                G_TYPE_INVALID);
}

void
state_rollback_to(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK TO one; RELEASE one", NULL, NULL, NULL);
}

/* ---- services ---------------------------------------------------------- */

void
service_row_free(ServiceRow *row)
{
    if (!row)
        return;
    g_free(row->name);
    g_free(row->manifest);
    g_free(row->image);
    g_free(row);
}

#define SERVICE_COLUMNS \
    "name, manifest, generation, image, desired, deleting, cooldown_until"

static gpointer
read_service(Stmt *st)
{
    ServiceRow *r = g_new0(ServiceRow, 1);

    r->name = col_text(st, 0);
    r->manifest = col_text(st, 1);
    r->generation = sqlite3_column_int64(st, 2);
    r->image = col_text(st, 3);
    r->desired = sqlite3_column_int64(st, 4);
    r->deleting = sqlite3_column_int64(st, 5) != 0;
    r->cooldown_until = sqlite3_column_double(st, 6);
    return r;
}

bool
state_service_get(sqlite3 *db, const char *name, ServiceRow **ret_row,
                  GError **error)
{
    g_autoptr(Stmt) st =
        prepare(db, "read a service", error,
                "SELECT " SERVICE_COLUMNS " FROM services WHERE name = ?",
                G_TYPE_STRING, name, G_TYPE_INVALID);
    int rc;

    if (!st || (rc = step(db, st, "read a service", error)) < 0)
        return false;
    *ret_row = rc ? read_service(st) : NULL;
    return true;
}

bool
state_service_generation(sqlite3 *db, const char *name, gint64 *ret_generation,
                         GError **error)
{
    return query_int(db, "read a service's generation", -1, ret_generation,
                     error, "SELECT generation FROM services WHERE name = ?",
                     G_TYPE_STRING, name, G_TYPE_INVALID);
}

GPtrArray *
state_service_list(sqlite3 *db, GError **error)
{
    g_autoptr(Stmt) st =
        prepare(db, "list services", error,
                "SELECT " SERVICE_COLUMNS " FROM services ORDER BY name",
                G_TYPE_INVALID);

    return collect(db, st, "list services", read_service,
                   (GDestroyNotify)service_row_free, error);
}

bool
state_service_insert(sqlite3 *db, const char *name, const char *canonical,
                     const char *image, gint64 desired, GError **error)
{
    return exec(db, "add a service", error,
                "INSERT INTO services (name, manifest, generation, image, "
                "desired, updated) VALUES (?1, ?2, (SELECT COALESCE(MAX("
                "generation), 0) + 1 FROM generations WHERE service = ?1), "
                "?3, ?4, ?5)",
                G_TYPE_STRING, name, G_TYPE_STRING, canonical, G_TYPE_STRING,
                image, G_TYPE_INT64, desired, G_TYPE_DOUBLE, state_now(),
                G_TYPE_INVALID);
}

bool
state_service_update(sqlite3 *db, const char *name, const char *canonical,
                     gint64 generation, const char *image, gint64 desired,
                     GError **error)
{
    return exec(db, "update a service", error,
                "UPDATE services SET manifest = ?, generation = ?, image = ?, "
                "desired = ?, updated = ? WHERE name = ?",
                G_TYPE_STRING, canonical, G_TYPE_INT64, generation,
                G_TYPE_STRING, image, G_TYPE_INT64, desired, G_TYPE_DOUBLE,
                state_now(), G_TYPE_STRING, name, G_TYPE_INVALID);
}

bool
state_service_set_deleting(sqlite3 *db, const char *name, GError **error)
{
    return exec(db, "mark a service deleted", error,
                "UPDATE services SET deleting = 1 WHERE name = ?",
                G_TYPE_STRING, name, G_TYPE_INVALID);
}

bool
state_service_set_desired(sqlite3 *db, const char *name, gint64 desired,
                          double cooldown_until, GError **error)
{
    return exec(db, "scale a service", error,
                "UPDATE services SET desired = ?, cooldown_until = ? WHERE "
                "name = ?",
                G_TYPE_INT64, desired, G_TYPE_DOUBLE, cooldown_until,
                G_TYPE_STRING, name, G_TYPE_INVALID);
}

bool
state_service_remove(sqlite3 *db, const char *name, GError **error)
{
    return state_clone_remove_all(db, name, error) &&
           state_schedule_remove(db, name, NULL, error) &&
           exec(db, "remove a service's rollout", error,
                "DELETE FROM rollouts WHERE service = ?", G_TYPE_STRING, name,
                G_TYPE_INVALID) &&
           exec(db, "remove a service", error,
                "DELETE FROM services WHERE name = ?", G_TYPE_STRING, name,
                G_TYPE_INVALID);
}

bool
state_service_image_id(sqlite3 *db, const char *service, char **ret_id,
                       GError **error)
{
    return query_text(db, "read a service's image", ret_id, error,
                      "SELECT i.id FROM services s JOIN images i ON i.name = "
                      "s.image WHERE s.name = ?",
                      G_TYPE_STRING, service, G_TYPE_INVALID);
}

bool
state_service_busy(sqlite3 *db, const char *service, bool *ret_busy,
                   GError **error)
{
    gint64 n = 0;

    if (!query_int(db, "count a service's pending commands", 0, &n, error,
                   "SELECT COUNT(*) FROM commands WHERE service = ? AND "
                   "state = ? AND host NOT IN (SELECT name FROM hosts WHERE "
                   "lost = 1)",
                   G_TYPE_STRING, service, G_TYPE_STRING,
                   command_state_to_string(COMMAND_PENDING), G_TYPE_INVALID))
        return false;
    *ret_busy = n > 0;
    return true;
}

/* ---- images ------------------------------------------------------------ */

void
image_row_free(ImageRow *row)
{
    if (!row)
        return;
    g_free(row->name);
    g_free(row->id);
    g_free(row->format);
    g_free(row->origins);
    if (row->index)
        g_bytes_unref(row->index);
    g_free(row);
}

static gpointer
read_image(Stmt *st)
{
    ImageRow *r = g_new0(ImageRow, 1);

    r->name = col_text(st, 0);
    r->id = col_text(st, 1);
    r->format = col_text(st, 2);
    r->origins = col_text(st, 3);
    r->size = sqlite3_column_int64(st, 4);
    r->chunk_size = sqlite3_column_int64(st, 5);
    if (sqlite3_column_count(st) > 6)
        r->index = g_bytes_new(sqlite3_column_blob(st, 6),
                               (gsize)sqlite3_column_bytes(st, 6));
    return r;
}

bool
state_image_get(sqlite3 *db, const char *name, ImageRow **ret_row,
                GError **error)
{
    g_autoptr(Stmt) st = prepare(db, "read an image", error,
                                 "SELECT name, id, format, origins, size, "
                                 "chunk_size, idx FROM images WHERE name = ?",
                                 G_TYPE_STRING, name, G_TYPE_INVALID);
    int rc;

    if (!st || (rc = step(db, st, "read an image", error)) < 0)
        return false;
    *ret_row = rc ? read_image(st) : NULL;
    return true;
}

GPtrArray *
state_image_list(sqlite3 *db, GError **error)
{
    g_autoptr(Stmt) st = prepare(db, "list images", error,
                                 "SELECT name, id, format, origins, size, "
                                 "chunk_size FROM images ORDER BY name",
                                 G_TYPE_INVALID);

    return collect(db, st, "list images", read_image,
                   (GDestroyNotify)image_row_free, error);
}

bool
state_image_put(sqlite3 *db, const ImageRow *row, GError **error)
{
    return exec(db, "register an image", error,
                "INSERT OR REPLACE INTO images (name, id, format, origins, "
                "idx, size, chunk_size, added) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "?)",
                G_TYPE_STRING, row->name, G_TYPE_STRING, row->id, G_TYPE_STRING,
                row->format, G_TYPE_STRING, row->origins, G_TYPE_BYTES,
                row->index, G_TYPE_INT64, row->size, G_TYPE_INT64,
                row->chunk_size, G_TYPE_DOUBLE, state_now(), G_TYPE_INVALID);
}

void
host_image_row_free(HostImageRow *row)
{
    if (!row)
        return;
    g_free(row->host);
    g_free(row->image);
    g_free(row);
}

static gpointer
read_host_image(Stmt *st)
{
    HostImageRow *r = g_new0(HostImageRow, 1);

    r->host = col_text(st, 0);
    r->image = col_text(st, 1);
    r->cached = sqlite3_column_double(st, 2);
    r->origin_bytes = sqlite3_column_int64(st, 3);
    r->peer_bytes = sqlite3_column_int64(st, 4);
    r->local_bytes = sqlite3_column_int64(st, 5);
    r->profile_boots = sqlite3_column_type(st, 6) == SQLITE_NULL
                           ? -1
                           : sqlite3_column_int64(st, 6);
    r->profile_chunks = sqlite3_column_int64(st, 7);
    return r;
}

GPtrArray *
state_host_image_list(sqlite3 *db, const char *id, GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "list the hosts' images", error,
        "SELECT h.host, h.image, h.cached, h.origin_bytes, h.peer_bytes, "
        "h.local_bytes, p.boots, json_array_length(p.chunks) FROM "
        "host_images h LEFT JOIN profiles p ON p.host = h.host AND p.image = "
        "h.image WHERE ?1 IS NULL OR h.image = ?1 ORDER BY h.host, h.image",
        G_TYPE_STRING, id, G_TYPE_INVALID);

    return collect(db, st, "list the hosts' images", read_host_image,
                   (GDestroyNotify)host_image_row_free, error);
}

bool
state_host_image_put(sqlite3 *db, const HostImageRow *row, GError **error)
{
    return exec(db, "record a host's image", error,
                "INSERT OR REPLACE INTO host_images VALUES (?, ?, ?, ?, ?, ?)",
                G_TYPE_STRING, row->host, G_TYPE_STRING, row->image,
                G_TYPE_DOUBLE, row->cached, G_TYPE_INT64, row->origin_bytes,
                G_TYPE_INT64, row->peer_bytes, G_TYPE_INT64, row->local_bytes,
                G_TYPE_INVALID);
}

bool
state_host_image_cached(sqlite3 *db, const char *host, const char *id,
                        double *ret_cached, GError **error)
{
    g_autoptr(Stmt) st =
        prepare(db, "read a host's cache", error,
                "SELECT cached FROM host_images WHERE host = ? AND image = ?",
                G_TYPE_STRING, host, G_TYPE_STRING, id, G_TYPE_INVALID);
    int rc;

    if (!st || (rc = step(db, st, "read a host's cache", error)) < 0)
        return false;
    *ret_cached = rc ? sqlite3_column_double(st, 0) : 0;
    return true;
}

GHashTable *
state_host_image_cached_map(sqlite3 *db, const char *id, GError **error)
{
    g_autoptr(Stmt) st =
        prepare(db, "read the hosts' caches", error,
                "SELECT host, cached FROM host_images WHERE image = ?",
                G_TYPE_STRING, id, G_TYPE_INVALID);
    g_autoptr(GHashTable) map =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    int rc;

    if (!st)
        return NULL;
    while ((rc = step(db, st, "read the hosts' caches", error)) == 1) {
        double *v = g_new(double, 1);

        *v = sqlite3_column_double(st, 1);
        g_hash_table_insert(map, col_text(st, 0), v);
    }
    return rc == 0 ? g_steal_pointer(&map) : NULL;
}

bool
state_profile_put(sqlite3 *db, const char *host, const char *id, gint64 boots,
                  const char *chunks, GError **error)
{
    return exec(db, "record an access profile", error,
                "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?)",
                G_TYPE_STRING, host, G_TYPE_STRING, id, G_TYPE_INT64, boots,
                G_TYPE_STRING, chunks, G_TYPE_DOUBLE, state_now(),
                G_TYPE_INVALID);
}

bool
state_profile_best(sqlite3 *db, const char *id, char **ret_chunks,
                   GError **error)
{
    return query_text(db, "read an access profile", ret_chunks, error,
                      "SELECT chunks FROM profiles WHERE image = ? ORDER BY "
                      "boots DESC, updated DESC LIMIT 1",
                      G_TYPE_STRING, id, G_TYPE_INVALID);
}

/* ---- hosts ------------------------------------------------------------- */

void
host_row_free(HostRow *row)
{
    if (!row)
        return;
    g_free(row->name);
    g_free(row->key);
    g_free(row->address);
    g_free(row);
}

#define HOST_COLUMNS                                                 \
    "name, key, address, accepted, lost, cpus, memory_kib, (SELECT " \
    "COUNT(*) FROM clones c WHERE c.host = h.name)"

static gpointer
read_host(Stmt *st)
{
    HostRow *r = g_new0(HostRow, 1);

    r->name = col_text(st, 0);
    r->key = col_text(st, 1);
    r->address = col_text(st, 2);
    r->accepted = sqlite3_column_int64(st, 3) != 0;
    r->lost = sqlite3_column_int64(st, 4) != 0;
    r->cpus = sqlite3_column_int64(st, 5);
    r->memory_kib = sqlite3_column_int64(st, 6);
    r->clones = sqlite3_column_int64(st, 7);
    return r;
}

static bool
host_get_where(sqlite3 *db, const char *sql, const char *value,
               HostRow **ret_row, GError **error)
{
    g_autoptr(Stmt) st = prepare(db, "read a host", error, sql, G_TYPE_STRING,
                                 value, G_TYPE_INVALID);
    int rc;

    if (!st || (rc = step(db, st, "read a host", error)) < 0)
        return false;
    *ret_row = rc ? read_host(st) : NULL;
    return true;
}

bool
state_host_get(sqlite3 *db, const char *name, HostRow **ret_row, GError **error)
{
    return host_get_where(db,
                          "SELECT " HOST_COLUMNS " FROM hosts h WHERE name = ?",
                          name, ret_row, error);
}

bool
state_host_get_by_key(sqlite3 *db, const char *key, HostRow **ret_row,
                      GError **error)
{
    return host_get_where(db,
                          "SELECT " HOST_COLUMNS " FROM hosts h WHERE key = ?",
                          key, ret_row, error);
}

GPtrArray *
state_host_list(sqlite3 *db, bool live, GError **error)
{
    g_autoptr(Stmt) st =
        prepare(db, "list hosts", error,
                "SELECT " HOST_COLUMNS " FROM hosts h WHERE ?1 = 0 OR "
                "(accepted = 1 AND lost = 0) ORDER BY name",
                G_TYPE_INT64, (gint64)live, G_TYPE_INVALID);

    return collect(db, st, "list hosts", read_host,
                   (GDestroyNotify)host_row_free, error);
}

bool
state_host_insert_pending(sqlite3 *db, const char *name, const char *key,
                          const char *address, GError **error)
{
    return exec(db, "add a host", error,
                "INSERT INTO hosts (name, key, address, first_seen) VALUES "
                "(?, ?, ?, ?)",
                G_TYPE_STRING, name, G_TYPE_STRING, key, G_TYPE_STRING, address,
                G_TYPE_DOUBLE, state_now(), G_TYPE_INVALID);
}

bool
state_host_insert_accepted(sqlite3 *db, const char *name, const char *key,
                           GError **error)
{
    return exec(db, "replace a host", error,
                "DELETE FROM hosts WHERE name = ? OR key = ?", G_TYPE_STRING,
                name, G_TYPE_STRING, key, G_TYPE_INVALID) &&
           exec(db, "add a host", error,
                "INSERT INTO hosts (name, key, accepted, first_seen) VALUES "
                "(?, ?, 1, ?)",
                G_TYPE_STRING, name, G_TYPE_STRING, key, G_TYPE_DOUBLE,
                state_now(), G_TYPE_INVALID);
}

bool
state_host_accept(sqlite3 *db, const char *name, GError **error)
{
    return exec(db, "accept a host", error,
                "UPDATE hosts SET accepted = 1 WHERE name = ?", G_TYPE_STRING,
                name, G_TYPE_INVALID);
}

bool
state_host_hello(sqlite3 *db, const char *name, const char *address,
                 gint64 cpus, gint64 memory_kib, const char *virt,
                 GError **error)
{
    return exec(db, "record a host's hello", error,
                "UPDATE hosts SET address = ?, cpus = ?, memory_kib = ?, "
                "virt = ?, last_seen = ? WHERE name = ?",
                G_TYPE_STRING, address, G_TYPE_INT64, cpus, G_TYPE_INT64,
                memory_kib, G_TYPE_STRING, virt, G_TYPE_DOUBLE, state_now(),
                G_TYPE_STRING, name, G_TYPE_INVALID);
}

bool
state_host_seen(sqlite3 *db, const char *name, bool *ret_was_lost,
                GError **error)
{
    gint64 lost = 0;

    if (!query_int(db, "read a host", 0, &lost, error,
                   "SELECT lost FROM hosts WHERE name = ?", G_TYPE_STRING, name,
                   G_TYPE_INVALID) ||
        !exec(db, "record a host's message", error,
              "UPDATE hosts SET last_seen = ?, lost = 0 WHERE name = ?",
              G_TYPE_DOUBLE, state_now(), G_TYPE_STRING, name, G_TYPE_INVALID))
        return false;
    *ret_was_lost = lost != 0;
    return true;
}

bool
state_host_set_lost(sqlite3 *db, const char *name, GError **error)
{
    return exec(db, "mark a host lost", error,
                "UPDATE hosts SET lost = 1 WHERE name = ?", G_TYPE_STRING, name,
                G_TYPE_INVALID) &&
           exec(db, "unplace a lost host's clones", error,
                "UPDATE clones SET host = NULL WHERE host = ?", G_TYPE_STRING,
                name, G_TYPE_INVALID) &&
           exec(db, "cancel a lost host's commands", error,
                "UPDATE commands SET state = ?, finished = ? WHERE host = ? "
                "AND state = ? AND op <> 'clone-destroy'",
                G_TYPE_STRING, command_state_to_string(COMMAND_CANCELLED),
                G_TYPE_DOUBLE, state_now(), G_TYPE_STRING, name, G_TYPE_STRING,
                command_state_to_string(COMMAND_PENDING), G_TYPE_INVALID);
}

/* ---- clones ------------------------------------------------------------ */

void
clone_row_free(CloneRow *row)
{
    if (!row)
        return;
    g_free(row->service);
    g_free(row->host);
    g_free(row);
}

static gpointer
read_clone(Stmt *st)
{
    CloneRow *r = g_new0(CloneRow, 1);

    r->service = col_text(st, 0);
    r->index = sqlite3_column_int64(st, 1);
    r->host = col_text(st, 2);
    r->generation = sqlite3_column_int64(st, 3);
    return r;
}

GPtrArray *
state_clone_list(sqlite3 *db, const char *service, const char *host,
                 GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "list clones", error,
        "SELECT c.service, c.idx, c.host, c.generation FROM clones c JOIN "
        "services s ON s.name = c.service WHERE (?1 IS NULL OR c.service = "
        "?1) AND (?2 IS NULL OR c.host = ?2) ORDER BY c.service, c.idx",
        G_TYPE_STRING, service, G_TYPE_STRING, host, G_TYPE_INVALID);

    return collect(db, st, "list clones", read_clone,
                   (GDestroyNotify)clone_row_free, error);
}

GPtrArray *
state_clone_list_unplaced(sqlite3 *db, GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "list unplaced clones", error,
        "SELECT c.service, c.idx, c.host, c.generation FROM clones c JOIN "
        "services s ON s.name = c.service WHERE c.host IS NULL AND "
        "s.deleting = 0 ORDER BY c.service, c.idx",
        G_TYPE_INVALID);

    return collect(db, st, "list unplaced clones", read_clone,
                   (GDestroyNotify)clone_row_free, error);
}

bool
state_clone_sync(sqlite3 *db, const char *service, gint64 desired,
                 GError **error)
{
    gint64 rows = 0, in_range = 0;

    /* the common case, every pass: the rows are already 0..desired-1
     * (idx is unique per service: as many rows as in that range) */
    if (!query_int(db, "count clones", 0, &rows, error,
                   "SELECT COUNT(*) FROM clones WHERE service = ?",
                   G_TYPE_STRING, service, G_TYPE_INVALID) ||
        !query_int(db, "count clones", 0, &in_range, error,
                   "SELECT COUNT(*) FROM clones WHERE service = ? AND "
                   "idx >= 0 AND idx < ?",
                   G_TYPE_STRING, service, G_TYPE_INT64, desired,
                   G_TYPE_INVALID))
        return false;
    if (rows == desired && in_range == desired)
        return true;
    if (!exec(db, "remove clones", error,
              "DELETE FROM clones WHERE service = ? AND idx >= ?",
              G_TYPE_STRING, service, G_TYPE_INT64, desired, G_TYPE_INVALID))
        return false;
    for (gint64 i = 0; i < desired; i++) {
        if (!exec(db, "add a clone", error,
                  "INSERT OR IGNORE INTO clones (service, idx, generation) "
                  "SELECT ?1, ?2, generation FROM services WHERE name = ?1",
                  G_TYPE_STRING, service, G_TYPE_INT64, i, G_TYPE_INVALID))
            return false;
    }
    return true;
}

bool
state_clone_remove_all(sqlite3 *db, const char *service, GError **error)
{
    return exec(db, "remove clones", error,
                "DELETE FROM clones WHERE service = ?", G_TYPE_STRING, service,
                G_TYPE_INVALID);
}

bool
state_clone_add(sqlite3 *db, const char *service, gint64 index,
                gint64 generation, GError **error)
{
    return exec(
        db, "add a clone", error,
        "INSERT INTO clones (service, idx, generation) VALUES (?, ?, ?)",
        G_TYPE_STRING, service, G_TYPE_INT64, index, G_TYPE_INT64, generation,
        G_TYPE_INVALID);
}

bool
state_clone_remove(sqlite3 *db, const char *service, gint64 index,
                   GError **error)
{
    return exec(db, "remove a clone", error,
                "DELETE FROM clones WHERE service = ? AND idx = ?",
                G_TYPE_STRING, service, G_TYPE_INT64, index, G_TYPE_INVALID);
}

bool
state_clone_place(sqlite3 *db, const char *service, gint64 index,
                  const char *host, GError **error)
{
    return exec(db, "place a clone", error,
                "UPDATE clones SET host = ? WHERE service = ? AND idx = ?",
                G_TYPE_STRING, host, G_TYPE_STRING, service, G_TYPE_INT64,
                index, G_TYPE_INVALID);
}

/* ---- generations and rollouts ------------------------------------------ */

bool
state_generation_put(sqlite3 *db, const char *service, gint64 generation,
                     const char *canonical, const char *image, GError **error)
{
    return exec(db, "record a generation", error,
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?)",
                G_TYPE_STRING, service, G_TYPE_INT64, generation, G_TYPE_STRING,
                canonical, G_TYPE_STRING, image, G_TYPE_DOUBLE, state_now(),
                G_TYPE_INVALID) &&
           exec(db, "prune the generations", error,
                "DELETE FROM generations WHERE service = ?1 AND generation "
                "NOT IN (SELECT generation FROM generations WHERE service = "
                "?1 ORDER BY generation DESC LIMIT ?2) AND generation NOT IN "
                "(SELECT generation FROM clones WHERE service = ?1)",
                G_TYPE_STRING, service, G_TYPE_INT64,
                (gint64)STATE_GENERATIONS_KEPT, G_TYPE_INVALID);
}

bool
state_generation_get(sqlite3 *db, const char *service, gint64 generation,
                     char **ret_canonical, char **ret_image, GError **error)
{
    g_autofree char *canonical = NULL;
    g_autofree char *image = NULL;

    if (!query_text(db, "read a generation", &canonical, error,
                    "SELECT manifest FROM generations WHERE service = ? AND "
                    "generation = ?",
                    G_TYPE_STRING, service, G_TYPE_INT64, generation,
                    G_TYPE_INVALID) ||
        !query_text(db, "read a generation", &image, error,
                    "SELECT image FROM generations WHERE service = ? AND "
                    "generation = ?",
                    G_TYPE_STRING, service, G_TYPE_INT64, generation,
                    G_TYPE_INVALID))
        return false;
    *ret_canonical = g_steal_pointer(&canonical);
    if (ret_image)
        *ret_image = g_steal_pointer(&image);
    return true;
}

bool
state_generation_next(sqlite3 *db, const char *service, gint64 *ret_generation,
                      GError **error)
{
    gint64 last = 0;

    if (!query_int(db, "read the last generation", 0, &last, error,
                   "SELECT MAX(g) FROM (SELECT MAX(generation) AS g FROM "
                   "generations WHERE service = ?1 UNION ALL SELECT "
                   "generation FROM services WHERE name = ?1)",
                   G_TYPE_STRING, service, G_TYPE_INVALID))
        return false;
    *ret_generation = last + 1;
    return true;
}

bool
state_generation_before(sqlite3 *db, const char *service, gint64 generation,
                        gint64 *ret_generation, GError **error)
{
    return query_int(
        db, "read the generation before", -1, ret_generation, error,
        "SELECT MAX(generation) FROM generations WHERE service "
        "= ? AND generation < ?",
        G_TYPE_STRING, service, G_TYPE_INT64, generation, G_TYPE_INVALID);
}

void
rollout_row_free(RolloutRow *row)
{
    if (!row)
        return;
    g_free(row->service);
    g_free(row->state);
    g_free(row->reason);
    g_free(row);
}

static gpointer
read_rollout(Stmt *st)
{
    RolloutRow *r = g_new0(RolloutRow, 1);

    r->service = col_text(st, 0);
    r->generation = sqlite3_column_int64(st, 1);
    r->from_generation = sqlite3_column_int64(st, 2);
    r->state = col_text(st, 3);
    r->started = sqlite3_column_double(st, 4);
    r->finished = sqlite3_column_double(st, 5);
    r->reason = col_text(st, 6);
    return r;
}

bool
state_rollout_get(sqlite3 *db, const char *service, RolloutRow **ret_row,
                  GError **error)
{
    g_autoptr(Stmt) st =
        prepare(db, "read a rollout", error,
                "SELECT service, generation, from_generation, state, started, "
                "finished, reason FROM rollouts WHERE service = ?",
                G_TYPE_STRING, service, G_TYPE_INVALID);
    g_autoptr(GPtrArray) rows = NULL;

    if (!st)
        return false;
    rows = collect(db, st, "read a rollout", read_rollout,
                   (GDestroyNotify)rollout_row_free, error);
    if (!rows)
        return false;
    *ret_row = rows->len ? g_ptr_array_steal_index(rows, 0) : NULL;
    return true;
}

bool
state_rollout_start(sqlite3 *db, const char *service, gint64 generation,
                    gint64 from_generation, GError **error)
{
    return exec(db, "start a rollout", error,
                "INSERT OR REPLACE INTO rollouts VALUES (?, ?, ?, ?, ?, NULL, "
                "NULL)",
                G_TYPE_STRING, service, G_TYPE_INT64, generation, G_TYPE_INT64,
                from_generation, G_TYPE_STRING, STATE_ROLLOUT_ROLLING,
                G_TYPE_DOUBLE, state_now(), G_TYPE_INVALID);
}

bool
state_rollout_finish(sqlite3 *db, const char *service, const char *state,
                     const char *reason, GError **error)
{
    return exec(db, "finish a rollout", error,
                "UPDATE rollouts SET state = ?, finished = ?, reason = ? "
                "WHERE service = ?",
                G_TYPE_STRING, state, G_TYPE_DOUBLE, state_now(), G_TYPE_STRING,
                reason, G_TYPE_STRING, service, G_TYPE_INVALID);
}

bool
state_create_failure(sqlite3 *db, const char *service, gint64 generation,
                     double since, char **ret_reason, GError **error)
{
    g_autofree char *reason = NULL;
    g_autofree char *state = g_strdup(command_state_to_string(COMMAND_FAILED));

    if (!query_text(db, "look for failed creates", &reason, error,
                    "SELECT host || ': ' || COALESCE(error, 'no reason given') "
                    "FROM commands WHERE service = ? AND op = 'clone-create' "
                    "AND state = ? AND finished >= ? AND json_extract(body, "
                    "'$.generation') = ? ORDER BY id DESC LIMIT 1",
                    G_TYPE_STRING, service, G_TYPE_STRING, state, G_TYPE_DOUBLE,
                    since, G_TYPE_INT64, generation, G_TYPE_INVALID))
        return false;
    *ret_reason = g_steal_pointer(&reason);
    return true;
}

/* ---- commands ---------------------------------------------------------- */

void
command_row_free(CommandRow *row)
{
    if (!row)
        return;
    g_free(row->host);
    g_free(row->op);
    g_free(row->service);
    g_free(row->body);
    g_free(row);
}

static gpointer
read_command(Stmt *st)
{
    CommandRow *r = g_new0(CommandRow, 1);

    r->id = sqlite3_column_int64(st, 0);
    r->host = col_text(st, 1);
    r->op = col_text(st, 2);
    r->service = col_text(st, 3);
    r->body = col_text(st, 4);
    return r;
}

bool
state_command_add(sqlite3 *db, const char *host, const char *op,
                  const char *service, const char *body, gint64 *ret_id,
                  GError **error)
{
    if (!exec(db, "add a command", error,
              "INSERT INTO commands (host, op, service, body, state, "
              "created) VALUES (?, ?, ?, ?, ?, ?)",
              G_TYPE_STRING, host, G_TYPE_STRING, op, G_TYPE_STRING, service,
              G_TYPE_STRING, body, G_TYPE_STRING,
              command_state_to_string(COMMAND_PENDING), G_TYPE_DOUBLE,
              state_now(), G_TYPE_INVALID))
        return false;
    *ret_id = sqlite3_last_insert_rowid(db);
    return true;
}

bool
state_command_get_pending(sqlite3 *db, gint64 id, const char *host,
                          CommandRow **ret_row, GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "read a command", error,
        "SELECT id, host, op, service, body FROM commands WHERE id = ? AND "
        "host = ? AND state = ?",
        G_TYPE_INT64, id, G_TYPE_STRING, host, G_TYPE_STRING,
        command_state_to_string(COMMAND_PENDING), G_TYPE_INVALID);
    int rc;

    if (!st || (rc = step(db, st, "read a command", error)) < 0)
        return false;
    *ret_row = rc ? read_command(st) : NULL;
    return true;
}

GPtrArray *
state_command_list_pending(sqlite3 *db, const char *host, double sent_before,
                           GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "list pending commands", error,
        "SELECT id, host, op, service, body FROM commands WHERE state = ?1 "
        "AND (?2 IS NULL OR host = ?2) AND sent < ?3 ORDER BY id",
        G_TYPE_STRING, command_state_to_string(COMMAND_PENDING), G_TYPE_STRING,
        host, G_TYPE_DOUBLE, sent_before, G_TYPE_INVALID);

    return collect(db, st, "list pending commands", read_command,
                   (GDestroyNotify)command_row_free, error);
}

GPtrArray *
state_command_list_pending_heads(sqlite3 *db, GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "list pending commands", error,
        "SELECT id, host, op, service, NULL FROM commands WHERE state = ? "
        "ORDER BY id",
        G_TYPE_STRING, command_state_to_string(COMMAND_PENDING),
        G_TYPE_INVALID);

    return collect(db, st, "list pending commands", read_command,
                   (GDestroyNotify)command_row_free, error);
}

bool
state_command_finish(sqlite3 *db, gint64 id, CommandState state,
                     const char *reason, GError **error)
{
    return exec(db, "finish a command", error,
                "UPDATE commands SET state = ?, finished = ?, error = ? "
                "WHERE id = ?",
                G_TYPE_STRING, command_state_to_string(state), G_TYPE_DOUBLE,
                state_now(), G_TYPE_STRING, reason, G_TYPE_INT64, id,
                G_TYPE_INVALID);
}

bool
state_command_sent(sqlite3 *db, gint64 id, double now, GError **error)
{
    return exec(db, "record a command sent", error,
                "UPDATE commands SET sent = ?, attempts = attempts + 1 WHERE "
                "id = ?",
                G_TYPE_DOUBLE, now, G_TYPE_INT64, id, G_TYPE_INVALID);
}

bool
state_command_resend(sqlite3 *db, const char *host, GError **error)
{
    return exec(db, "resend a host's commands", error,
                "UPDATE commands SET sent = 0 WHERE host = ? AND state = ?",
                G_TYPE_STRING, host, G_TYPE_STRING,
                command_state_to_string(COMMAND_PENDING), G_TYPE_INVALID);
}

/* ---- requests ---------------------------------------------------------- */

bool
state_request_add(sqlite3 *db, const char *service, gint64 count,
                  GError **error)
{
    return exec(db, "record requests", error,
                "INSERT INTO requests (service, time, count) VALUES (?, ?, ?)",
                G_TYPE_STRING, service, G_TYPE_DOUBLE, state_now(),
                G_TYPE_INT64, count, G_TYPE_INVALID);
}

bool
state_request_sum(sqlite3 *db, const char *service, double since,
                  gint64 *ret_sum, GError **error)
{
    return query_int(db, "count requests", 0, ret_sum, error,
                     "SELECT COALESCE(SUM(count), 0) FROM requests WHERE "
                     "service = ? AND time >= ?",
                     G_TYPE_STRING, service, G_TYPE_DOUBLE, since,
                     G_TYPE_INVALID);
}

bool
state_request_prune(sqlite3 *db, double before, GError **error)
{
    return exec(db, "prune requests", error,
                "DELETE FROM requests WHERE time < ?", G_TYPE_DOUBLE, before,
                G_TYPE_INVALID);
}

/* ---- schedules --------------------------------------------------------- */

GHashTable *
state_schedule_handled(sqlite3 *db, const char *service, GError **error)
{
    static const char what[] = "read the schedules' state";
    g_autoptr(GHashTable) out =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autoptr(Stmt) st =
        prepare(db, what, error,
                "SELECT schedule, handled FROM schedules WHERE service = ?",
                G_TYPE_STRING, service, G_TYPE_INVALID);
    int rc;

    if (!st)
        return NULL;
    while ((rc = step(db, st, what, error)) == 1) {
        double *handled = g_new(double, 1);

        *handled = sqlite3_column_double(st, 1);
        g_hash_table_insert(out, col_text(st, 0), handled);
    }
    return rc == 0 ? g_steal_pointer(&out) : NULL;
}

bool
state_schedule_set_handled(sqlite3 *db, const char *service,
                           const char *schedule, double handled, GError **error)
{
    return exec(db, "record a schedule's state", error,
                "INSERT OR REPLACE INTO schedules (service, schedule, "
                "handled) VALUES (?, ?, ?)",
                G_TYPE_STRING, service, G_TYPE_STRING, schedule, G_TYPE_DOUBLE,
                handled, G_TYPE_INVALID);
}

bool
state_schedule_remove(sqlite3 *db, const char *service, const char *schedule,
                      GError **error)
{
    return exec(db, "remove a schedule's state", error,
                "DELETE FROM schedules WHERE service = ? AND (? IS NULL OR "
                "schedule = ?)",
                G_TYPE_STRING, service, G_TYPE_STRING, schedule, G_TYPE_STRING,
                schedule, G_TYPE_INVALID);
}

/* ---- events ------------------------------------------------------------ */

void
event_row_free(EventRow *row)
{
    if (!row)
        return;
    g_free(row->kind);
    g_free(row->service);
    g_free(row->host);
    g_free(row->message);
    g_free(row);
}

static gpointer
read_event(Stmt *st)
{
    EventRow *r = g_new0(EventRow, 1);

    r->id = sqlite3_column_int64(st, 0);
    r->time = sqlite3_column_double(st, 1);
    r->kind = col_text(st, 2);
    r->service = col_text(st, 3);
    r->host = col_text(st, 4);
    r->message = col_text(st, 5);
    return r;
}

bool
state_event_add(sqlite3 *db, const char *kind, const char *service,
                const char *host, const char *message, GError **error)
{
    if (!exec(db, "record an event", error,
              "INSERT INTO events (time, kind, service, host, message) "
              "VALUES (?, ?, ?, ?, ?)",
              G_TYPE_DOUBLE, state_now(), G_TYPE_STRING, kind, G_TYPE_STRING,
              service, G_TYPE_STRING, host, G_TYPE_STRING, message,
              G_TYPE_INVALID))
        return false;
    if (sqlite3_last_insert_rowid(db) % EVENTS_PRUNE_EVERY != 0)
        return true;
    return exec(db, "prune events", error,
                "DELETE FROM events WHERE id < (SELECT MAX(id) FROM events) "
                "- ?",
                G_TYPE_INT64, (gint64)EVENTS_KEEP, G_TYPE_INVALID);
}

GPtrArray *
state_event_list(sqlite3 *db, gint64 since, const char *service, gint64 limit,
                 GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "list events", error,
        "SELECT * FROM (SELECT id, time, kind, service, host, message FROM "
        "events WHERE id > ?1 AND (?2 IS NULL OR service = ?2) ORDER BY id "
        "DESC LIMIT ?3) ORDER BY id",
        G_TYPE_INT64, since, G_TYPE_STRING, service, G_TYPE_INT64, limit,
        G_TYPE_INVALID);

    return collect(db, st, "list events", read_event,
                   (GDestroyNotify)event_row_free, error);
}

/* ---- metrics ----------------------------------------------------------- */

bool
state_last_scaling(sqlite3 *db, GHashTable **ret_times, GError **error)
{
    g_autoptr(Stmt) st = prepare(
        db, "read the last scaling actions", error,
        "SELECT service, MAX(time) FROM events WHERE kind IN ('scaled-up', "
        "'scaled-down', 'scheduled') AND service IS NOT NULL GROUP BY service",
        G_TYPE_INVALID);
    g_autoptr(GHashTable) times =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    int rc;

    if (!st)
        return false;
    while ((rc = step(db, st, "read the last scaling actions", error)) == 1) {
        double *t = g_new(double, 1);

        *t = sqlite3_column_double(st, 1);
        g_hash_table_insert(times, col_text(st, 0), t);
    }
    if (rc < 0)
        return false;
    *ret_times = g_steal_pointer(&times);
    return true;
}

void
state_counts_clear(StateCounts *counts)
{
    g_clear_pointer(&counts->commands_by_state, g_hash_table_unref);
}

bool
state_counts(sqlite3 *db, StateCounts *ret_counts, GError **error)
{
    StateCounts c = {0};
    g_autoptr(Stmt) st = prepare(
        db, "count commands", error,
        "SELECT state, COUNT(*) FROM commands GROUP BY state", G_TYPE_INVALID);
    int rc;

    if (!st)
        return false;
    c.commands_by_state =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    while ((rc = step(db, st, "count commands", error)) == 1)
        g_hash_table_insert(c.commands_by_state, col_text(st, 0),
                            GINT_TO_POINTER(sqlite3_column_int(st, 1)));
    if (rc < 0 ||
        !query_int(db, "count sends", 0, &c.command_sends, error,
                   "SELECT COALESCE(SUM(attempts), 0) FROM commands",
                   G_TYPE_INVALID) ||
        !query_int(db, "count retries", 0, &c.commands_retried, error,
                   "SELECT COUNT(*) FROM commands WHERE attempts > 1",
                   G_TYPE_INVALID) ||
        !query_int(db, "count acknowledgements", 0, &c.commands_acknowledged,
                   error, "SELECT COUNT(*) FROM commands WHERE state IN (?, ?)",
                   G_TYPE_STRING, command_state_to_string(COMMAND_DONE),
                   G_TYPE_STRING, command_state_to_string(COMMAND_FAILED),
                   G_TYPE_INVALID) ||
        !query_int(db, "count clones", 0, &c.clones_desired, error,
                   "SELECT COUNT(*) FROM clones", G_TYPE_INVALID) ||
        !query_int(db, "count hosts", 0, &c.hosts_accepted, error,
                   "SELECT COUNT(*) FROM hosts WHERE accepted = 1",
                   G_TYPE_INVALID) ||
        !query_int(db, "count lost hosts", 0, &c.hosts_lost, error,
                   "SELECT COUNT(*) FROM hosts WHERE lost = 1",
                   G_TYPE_INVALID) ||
        !query_int(db, "count events", 0, &c.events, error,
                   "SELECT COALESCE(MAX(id), 0) FROM events", G_TYPE_INVALID)) {
        state_counts_clear(&c);
        return false;
    }
    *ret_counts = c;
    return true;
}
