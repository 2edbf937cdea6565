/*
 * manager-db.c: spored's state in SQLite (STATE_DIR/spored.db, WAL,
 * synchronous=FULL: a committed change survives kill -9 and power loss).
 *
 * Tables (schema version 1):
 *   services   name, manifest (canonical XML), generation, desired count,
 *              deleting, cooldown_until
 *   images     name, id, format, origins (JSON), the index, size
 *   hosts      name, key, address, accepted, cpus, memory, last_seen
 *   clones     desired clones: service, index, host (NULL: unplaced)
 *   commands   every command sent to an agent: id, host, op, body, state
 *   host_images per host and image: cached fraction, bytes by source
 *   requests   request counts reported in the last minute, per service
 *   profiles   per host and image: the merged access profile (chunk
 *              indexes in first-read order) and how many boots made it
 *   events     what happened, for `sporectl events`
 */
#include "manager-private.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "spore-error.h"

#define SCHEMA_VERSION 1

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
    "  PRIMARY KEY (service, idx));"
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
    "CREATE TABLE IF NOT EXISTS events ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,"
    "  kind TEXT NOT NULL, service TEXT, host TEXT, message TEXT NOT NULL);";

double
mdb_now(void)
{
    return (double)g_get_real_time() / G_USEC_PER_SEC;
}

bool
mdb_open(Manager *m, GError **error)
{
    g_autofree char *path =
        g_build_filename(m->config.state_dir, "spored.db", NULL);
    char *msg = NULL;
    gint64 version;

    if (sqlite3_open_v2(path, &m->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                            SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "%s: %s", path,
                    m->db ? sqlite3_errmsg(m->db) : "cannot open");
        return false;
    }
    sqlite3_busy_timeout(m->db, 5000);
    if (sqlite3_exec(m->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     "PRAGMA foreign_keys=ON;",
                     NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(m->db, schema, NULL, NULL, &msg) != SQLITE_OK) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "%s: %s", path,
                    msg ? msg : sqlite3_errmsg(m->db));
        sqlite3_free(msg);
        return false;
    }
    version = mdb_int(m, 0, "SELECT value FROM meta WHERE key='schema'",
                      G_TYPE_INVALID);
    if (version == 0) {
        mdb_exec(m, "INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                 G_TYPE_INT64, (gint64)SCHEMA_VERSION, G_TYPE_INVALID);
    } else if (version != SCHEMA_VERSION) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "%s: schema version %" G_GINT64_FORMAT
                    ", this spored knows %d",
                    path, version, SCHEMA_VERSION);
        return false;
    }
    return true;
}

void
mdb_close(Manager *m)
{
    if (m->db)
        sqlite3_close(m->db);
    m->db = NULL;
}

static sqlite3_stmt *
prepare_va(Manager *m, const char *sql, va_list ap)
{
    sqlite3_stmt *st = NULL;
    int i = 1;

    if (sqlite3_prepare_v2(m->db, sql, -1, &st, NULL) != SQLITE_OK) {
        g_warning("database: %s: %s", sql, sqlite3_errmsg(m->db));
        return NULL;
    }
    for (;;) {
        GType t = va_arg(ap, GType);

        if (t == G_TYPE_INVALID)
            break;
        if (t == G_TYPE_STRING) {
            const char *s = va_arg(ap, const char *);
            if (s)
                sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
            else
                sqlite3_bind_null(st, i);
        } else if (t == G_TYPE_INT64) {
            sqlite3_bind_int64(st, i, va_arg(ap, gint64));
        } else if (t == G_TYPE_DOUBLE) {
            sqlite3_bind_double(st, i, va_arg(ap, double));
        } else if (t == G_TYPE_BYTES) {
            GBytes *b = va_arg(ap, GBytes *);
            gsize len = 0;
            const void *d = g_bytes_get_data(b, &len);
            sqlite3_bind_blob64(st, i, d, len, SQLITE_TRANSIENT);
        } else {
            g_error("mdb: unsupported parameter type");
        }
        i++;
    }
    return st;
}

sqlite3_stmt *
mdb_prepare(Manager *m, const char *sql, ...)
{
    va_list ap;
    sqlite3_stmt *st;

    va_start(ap, sql);
    st = prepare_va(m, sql, ap);
    va_end(ap);
    return st;
}

bool
mdb_exec(Manager *m, const char *sql, ...)
{
    va_list ap;
    sqlite3_stmt *st;
    int rc;

    va_start(ap, sql);
    st = prepare_va(m, sql, ap);
    va_end(ap);
    if (!st)
        return false;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    if (rc != SQLITE_DONE)
        g_warning("database: %s: %s", sql, sqlite3_errmsg(m->db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE;
}

gint64
mdb_int(Manager *m, gint64 fallback, const char *sql, ...)
{
    va_list ap;
    sqlite3_stmt *st;
    gint64 v = fallback;

    va_start(ap, sql);
    st = prepare_va(m, sql, ap);
    va_end(ap);
    if (!st)
        return fallback;
    if (sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

char *
mdb_text(Manager *m, const char *sql, ...)
{
    va_list ap;
    sqlite3_stmt *st;
    char *v = NULL;

    va_start(ap, sql);
    st = prepare_va(m, sql, ap);
    va_end(ap);
    if (!st)
        return NULL;
    if (sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = g_strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return v;
}

const char *
mdb_col_text(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);

    return t ? (const char *)t : "";
}

void
mdb_event(Manager *m, const char *kind, const char *service, const char *host,
          const char *format, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, format);
    msg = g_strdup_vprintf(format, ap);
    va_end(ap);
    g_message("%s", msg);
    mdb_exec(m,
             "INSERT INTO events (time, kind, service, host, message) "
             "VALUES (?, ?, ?, ?, ?)",
             G_TYPE_DOUBLE, mdb_now(), G_TYPE_STRING, kind, G_TYPE_STRING,
             service, G_TYPE_STRING, host, G_TYPE_STRING, msg, G_TYPE_INVALID);
    /* keep the newest 100000 */
    if (sqlite3_last_insert_rowid(m->db) % 1000 == 0)
        mdb_exec(m,
                 "DELETE FROM events WHERE id < (SELECT MAX(id) FROM events) "
                 "- 100000",
                 G_TYPE_INVALID);
}
