/*
 * state-db.h: the driver interface under spored's state layer — one
 * connection to one database engine (SQLite or PostgreSQL), and the few
 * operations manager-state.c needs to run its SQL on it.  Only
 * manager-state.c, state-leader.c and the tests include this header; the rest of spored
 * sees StateDb as an opaque handle (manager-state.h).
 *
 * A StateDb is one *session*: one connection, used by one thread at a
 * time (the caller holds Manager.lock).  Whatever a session holds on the
 * server — its transaction, its prepared statements, and later the
 * active manager's lease (a PostgreSQL advisory lock is held by a
 * session: state-leader.c) — lives and dies with this object.
 *
 * The SQL is written once for both engines, in the subset they share:
 * "?" and "?N" parameters (the PostgreSQL driver rewrites them to "$N"),
 * INSERT ... ON CONFLICT for upserts, RETURNING for new ids, an alias on
 * every subquery in FROM.  What differs (the schema's types, two JSON
 * functions) manager-state.c chooses by StateDb.backend.
 *
 * Values: parameters are StateValue (text, 64-bit integer, double,
 * bytes, each possibly NULL); columns are read as any of those.  The
 * PostgreSQL driver fetches every row of a statement when it runs
 * (PQexecPrepared), so statements may nest; the SQLite driver steps.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <glib-object.h>

#include "manager-state.h"

typedef struct StateStmt StateStmt;

/* a parameter: @type is G_TYPE_STRING, G_TYPE_INT64, G_TYPE_DOUBLE or
 * G_TYPE_BYTES; @null: SQL NULL (of that type) */
typedef struct {
    GType type;
    bool null;
    const char *text;
    gint64 i;
    double d;
    GBytes *bytes;
} StateValue;

/*
 * The driver's operations.  Each fallible one sets @error with the
 * engine's own message (no prefix: manager-state.c adds what it was
 * doing) and the code SPORE_ERROR_UNAVAILABLE when trying again later
 * may work (SQLite busy or locked; PostgreSQL serialization failure,
 * deadlock, lock timeout, lost connection), else SPORE_ERROR_IO.
 */
typedef struct {
    const char *name; /* "sqlite", "postgresql" */
    void (*close)(StateDb *db);
    /* exec_script: run @sql, statements without parameters or rows */
    bool (*exec_script)(StateDb *db, const char *sql, GError **error);
    /* begin: a write transaction (@write) or a consistent read snapshot;
     * the only place a driver may reconnect a lost session */
    bool (*begin)(StateDb *db, bool write, GError **error);
    /* commit: fails (and rolls back) when the transaction had failed */
    bool (*commit)(StateDb *db, GError **error);
    /* in_transaction: a transaction is open (ROLLBACK has work to do) */
    bool (*in_transaction)(StateDb *db);
    /*
     * prepare: @sql with @params bound, ready for step.  @cache: @sql is
     * a string literal (its address is the key of a statement kept for
     * the session's life); dynamic SQL passes false.
     */
    StateStmt *(*prepare)(StateDb *db, const char *sql, bool cache,
                          const StateValue *params, guint n_params,
                          GError **error);
    /* step: 1 a row, 0 done, -1 an error (set) */
    int (*step)(StateStmt *st, GError **error);
    guint (*column_count)(StateStmt *st);
    bool (*column_null)(StateStmt *st, guint col);
    /* column_int64 / column_double: 0 for NULL */
    gint64 (*column_int64)(StateStmt *st, guint col);
    double (*column_double)(StateStmt *st, guint col);
    /* column_text: valid until the next step or release; NULL for NULL */
    const char *(*column_text)(StateStmt *st, guint col);
    /* column_bytes: a new reference; empty for NULL */
    GBytes *(*column_bytes)(StateStmt *st, guint col);
    /* release: done with @st (kept for reuse when cached) */
    void (*release)(StateStmt *st);
} StateDbOps;

/* the head of every driver's connection */
struct StateDb {
    const StateDbOps *ops;
    StateBackend backend;
    char *label; /* in messages: the file, or the DSN without its password */
    /* state_savepoint began the transaction (none was open): its release
     * commits it, its rollback rolls it back — SQLite's rule for a
     * savepoint outside a transaction, kept on both backends */
    bool savepoint_began;
    /* state_fence: write transactions check the leader row's epoch is
     * this one (0: no check, SQLite and the standby's lease session);
     * fenced: a check found another, nothing more may be written */
    gint64 fence_epoch;
    bool fenced;
    /* writes to the clones table through this session so far
     * (state_clone_writes: the manager keeps the rows between passes) */
    guint64 clone_writes;
};

/* the head of every driver's statement */
struct StateStmt {
    StateDb *db;
};

/* state_stmt_release: @st's driver releases it; accepts NULL (the
 * cleanup of g_autoptr(StateStmt) in manager-state.c and state-leader.c) */
static inline void
state_stmt_release(StateStmt *st)
{
    if (st)
        st->db->ops->release(st);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StateStmt, state_stmt_release)

/*
 * state_db_sqlite_open: a SQLite connection to @path (created 0600 if
 * missing unless @readonly), WAL, synchronous=FULL, a busy timeout; no
 * schema (state_open does that).  Close with state_close().
 */
StateDb *state_db_sqlite_open(const char *path, bool readonly, GError **error);

/* state_db_sqlite_set_busy_timeout: for tests that must not wait */
void state_db_sqlite_set_busy_timeout(StateDb *db, int ms);

/* state_db_sqlite_checkpoints: the checkpoints of @db's write-ahead log
 * that copied frames back, by its checkpointer thread (0 for a read-only
 * database) */
guint64 state_db_sqlite_checkpoints(StateDb *db);

/*
 * state_db_pg_open: a libpq session to @dsn (a conninfo string or a
 * postgresql:// URI); lock_timeout STATE_DB_PG_LOCK_TIMEOUT unless the
 * DSN's options set one.  The error names the DSN without its password
 * and includes libpq's message.
 */
StateDb *state_db_pg_open(const char *dsn, GError **error);

/* state_db_pg_redact: @dsn for messages, the password replaced by "***";
 * a new string */
char *state_db_pg_redact(const char *dsn);

/*
 * state_leader_fence_check: in @db's write transaction just begun, fail
 * (SPORE_ERROR_CONFLICT, db->fenced set) when the leader row's epoch is
 * no longer db->fence_epoch (state-leader.c; state_begin calls it).
 */
bool state_leader_fence_check(StateDb *db, GError **error);

/* state_db_pg_translate: @sql with "?" and "?N" rewritten to "$N"
 * (outside quotes); a new string.  Exposed for the unit tests. */
char *state_db_pg_translate(const char *sql);
