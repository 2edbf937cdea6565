/*
 * state-db-pg.c: the PostgreSQL driver of the state layer (state-db.h),
 * through libpq.  The adapter from libpq's error model to GError.
 *
 * One PGconn per StateDb (a session).  Statements run with
 * PQexecPrepared: each SQL text is prepared once per session (named
 * "s1", "s2", ... and keyed by the address of the caller's string
 * literal), dynamic SQL runs with PQexecParams.  Parameters go as text
 * (int8, float8 and text types declared at prepare time) except bytes,
 * which go binary as bytea; results come back as text and are parsed
 * here (float8 prints the shortest text that reads back the same
 * double, so doubles round-trip).
 *
 * Transactions: write transactions are SERIALIZABLE, read snapshots
 * REPEATABLE READ (docs/state.md says why).  A lock wait ends after
 * lock_timeout (STATE_DB_PG_LOCK_TIMEOUT unless the DSN's options set
 * one) with an error.
 *
 * Session state machine (PgDb.conn):
 *
 *   OK --[a statement finds the connection lost: pg_fail]--> BAD
 *   BAD --[every statement, commit]--> BAD (SPORE_ERROR_UNAVAILABLE)
 *   BAD --[pg_begin: PQreset succeeds; prepared statements forgotten,
 *          lock_timeout set again]--> OK
 *
 * Invariants:
 *   1. A lost session is reconnected only in pg_begin, never under an
 *      open transaction: a statement of a transaction whose connection
 *      died fails, so the caller rolls the whole transaction back rather
 *      than committing its second half alone.
 *   2. COMMIT of a failed transaction is an error (PostgreSQL answers it
 *      with ROLLBACK and no error).
 *   3. The DSN's password never reaches a message: labels and errors
 *      use state_db_pg_redact().
 *   4. libpq's notices (warnings, NOTICE from CREATE ... IF NOT EXISTS)
 *      are silenced: libraries never log.
 *   5. libpq is loaded (dlopen, pq_load) only when a PostgreSQL state is
 *      opened: Debian's libpq brings OpenSSL's libssl, and spored on
 *      SQLite loads one TLS stack only, GnuTLS (tests/check-layout.sh).
 */
#include <dlfcn.h>
#include <string.h>
#include <libpq-fe.h>

#include "spore-error.h"
#include "state-db.h"

#define STATE_DB_PG_LOCK_TIMEOUT "5s"
/* the pg_type OIDs of the parameters' types */
#define PG_OID_BYTEA  17
#define PG_OID_INT8   20
#define PG_OID_TEXT   25
#define PG_OID_FLOAT8 701
#define PG_PARAMS_MAX 32

#define PQ_LIBRARY    "libpq.so.5"
/* clang-format off */
#define PQ_FUNCTIONS(X) \
    X(PQclear) \
    X(PQconnectdb) \
    X(PQconninfoFree) \
    X(PQconninfoParse) \
    X(PQerrorMessage) \
    X(PQexec) \
    X(PQexecParams) \
    X(PQexecPrepared) \
    X(PQfinish) \
    X(PQfreemem) \
    X(PQgetisnull) \
    X(PQgetvalue) \
    X(PQnfields) \
    X(PQntuples) \
    X(PQprepare) \
    X(PQreset) \
    X(PQresultErrorField) \
    X(PQresultErrorMessage) \
    X(PQresultStatus) \
    X(PQsetNoticeProcessor) \
    X(PQstatus) \
    X(PQtransactionStatus) \
    X(PQunescapeBytea)
/* clang-format on */

/* libpq's functions, set once by pq_load (invariant 5) */
static struct {
#define PQ_FIELD(f) __typeof__(f) *f;
    PQ_FUNCTIONS(PQ_FIELD)
#undef PQ_FIELD
} pq;

/* pq_load: libpq's functions in pq, once per process; the reason it
 * cannot be loaded stays for later callers */
static bool
pq_load(GError **error)
{
    static gsize done;
    static char *failure;

    if (g_once_init_enter(&done)) {
        void *lib = dlopen(PQ_LIBRARY, RTLD_NOW | RTLD_LOCAL);

        if (!lib)
            failure = g_strdup(dlerror());
#define PQ_SYM(f)                                                     \
    if (lib && !failure && !(pq.f = (__typeof__(f) *)dlsym(lib, #f))) \
        failure = g_strdup_printf("%s has no %s", PQ_LIBRARY, #f);
        PQ_FUNCTIONS(PQ_SYM)
#undef PQ_SYM
        g_once_init_leave(&done, 1);
    }
    if (failure) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "cannot load libpq (Debian package libpq5): %s", failure);
        return false;
    }
    return true;
}

typedef struct {
    StateDb base;
    PGconn *conn;
    GHashTable *prepared; /* SQL text address -> statement name */
    guint next_name;
} PgDb;

typedef struct {
    StateStmt base;
    PGresult *res;
    int row; /* the current row; -1 before the first step */
} PgStmt;

static PgDb *
pg_db(StateDb *db)
{
    return (PgDb *)db;
}

/* trimmed: libpq's message on one line (it spans several, indented) */
static char *
trimmed(const char *msg)
{
    g_auto(GStrv) lines =
        g_strsplit(msg && *msg ? msg : "unknown error", "\n", -1);
    GString *out = g_string_new(NULL);

    for (guint i = 0; lines[i]; i++) {
        g_strstrip(lines[i]);
        if (!*lines[i])
            continue;
        if (out->len)
            g_string_append_c(out, ' ');
        g_string_append(out, lines[i]);
    }
    return g_string_free(out, FALSE);
}

/* retryable: a SQLSTATE after which trying again later may work */
static bool
retryable(const char *sqlstate)
{
    return sqlstate &&
           (g_str_has_prefix(sqlstate, "40") ||  /* serialization, deadlock */
            g_str_has_prefix(sqlstate, "08") ||  /* connection exception */
            g_str_has_prefix(sqlstate, "57P") || /* server shut down */
            g_str_equal(sqlstate, "55P03") ||    /* lock not available */
            g_str_equal(sqlstate, "53300"));     /* too many connections */
}

/* pg_fail: @error from @res (or the connection when @res has no error) */
static bool
pg_fail(PgDb *d, const PGresult *res, GError **error)
{
    const char *state =
        res ? pq.PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? pq.PQresultErrorMessage(res) : NULL;
    g_autofree char *text = NULL;

    if (pq.PQstatus(d->conn) == CONNECTION_BAD) {
        text = trimmed(pq.PQerrorMessage(d->conn));
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "connection to PostgreSQL lost: %s", text);
        return false;
    }
    text = trimmed(msg && *msg ? msg : pq.PQerrorMessage(d->conn));
    /* no SQLSTATE: libpq's own error, the connection's (the server went
     * away before libpq marked the connection bad) */
    g_set_error(error, SPORE_ERROR,
                !state || retryable(state) ? SPORE_ERROR_UNAVAILABLE
                                           : SPORE_ERROR_IO,
                "%s", text);
    return false;
}

/* checked: @res if it succeeded, else NULL with @error set (and @res
 * cleared) */
static PGresult *
checked(PgDb *d, PGresult *res, GError **error)
{
    ExecStatusType s = res ? pq.PQresultStatus(res) : PGRES_FATAL_ERROR;

    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK)
        return res;
    pg_fail(d, res, error);
    pq.PQclear(res);
    return NULL;
}

static void
pg_close(StateDb *db)
{
    PgDb *d = pg_db(db);

    pq.PQfinish(d->conn);
    g_hash_table_unref(d->prepared);
    g_free(d->base.label);
    g_free(d);
}

static bool
pg_exec_script(StateDb *db, const char *sql, GError **error)
{
    PgDb *d = pg_db(db);
    PGresult *res = checked(d, pq.PQexec(d->conn, sql), error);

    pq.PQclear(res);
    return res != NULL;
}

static bool set_lock_timeout(StateDb *db, GError **error);

static bool
pg_begin(StateDb *db, bool write, GError **error)
{
    PgDb *d = pg_db(db);

    if (pq.PQstatus(d->conn) == CONNECTION_BAD) {
        /* invariant 1: no transaction is open on a lost session */
        pq.PQreset(d->conn);
        g_hash_table_remove_all(d->prepared);
        if (pq.PQstatus(d->conn) != CONNECTION_OK)
            return pg_fail(d, NULL, error);
        if (!set_lock_timeout(db, error)) /* a session setting */
            return false;
    }
    return pg_exec_script(db,
                          write ? "BEGIN ISOLATION LEVEL SERIALIZABLE"
                                : "BEGIN ISOLATION LEVEL REPEATABLE READ",
                          error);
}

static bool
pg_commit(StateDb *db, GError **error)
{
    PgDb *d = pg_db(db);

    if (pq.PQtransactionStatus(d->conn) == PQTRANS_INERROR) {
        /* invariant 2 */
        pg_exec_script(db, "ROLLBACK", NULL);
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "the transaction had failed and was rolled back");
        return false;
    }
    return pg_exec_script(db, "COMMIT", error);
}

static bool
pg_in_transaction(StateDb *db)
{
    PGTransactionStatusType s = pq.PQtransactionStatus(pg_db(db)->conn);

    return s == PQTRANS_INTRANS || s == PQTRANS_INERROR || s == PQTRANS_ACTIVE;
}

static Oid
param_oid(GType type)
{
    if (type == G_TYPE_INT64)
        return PG_OID_INT8;
    if (type == G_TYPE_DOUBLE)
        return PG_OID_FLOAT8;
    if (type == G_TYPE_BYTES)
        return PG_OID_BYTEA;
    if (type == G_TYPE_STRING)
        return PG_OID_TEXT;
    g_error("state-db-pg: unsupported parameter type");
}

/* statement_name: the name of @sql prepared on the session, preparing it
 * first if needed; NULL with @error set */
static const char *
statement_name(PgDb *d, const char *sql, const StateValue *params,
               guint n_params, GError **error)
{
    const char *name = g_hash_table_lookup(d->prepared, sql);
    g_autofree char *text = NULL;
    g_autofree char *fresh = NULL;
    Oid types[PG_PARAMS_MAX];
    PGresult *res;

    if (name)
        return name;
    for (guint i = 0; i < n_params; i++)
        types[i] = param_oid(params[i].type);
    text = state_db_pg_translate(sql);
    fresh = g_strdup_printf("s%u", ++d->next_name);
    res = checked(d, pq.PQprepare(d->conn, fresh, text, (int)n_params, types),
                  error);
    if (!res)
        return NULL;
    pq.PQclear(res);
    name = fresh;
    g_hash_table_insert(d->prepared, (gpointer)sql, g_steal_pointer(&fresh));
    return name;
}

static StateStmt *
pg_prepare(StateDb *db, const char *sql, bool cache, const StateValue *params,
           guint n_params, GError **error)
{
    PgDb *d = pg_db(db);
    const char *values[PG_PARAMS_MAX];
    int lengths[PG_PARAMS_MAX], formats[PG_PARAMS_MAX];
    Oid types[PG_PARAMS_MAX];
    g_autoptr(GPtrArray) texts = g_ptr_array_new_with_free_func(g_free);
    PGresult *res;
    PgStmt *st;

    if (n_params > PG_PARAMS_MAX) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "%u parameters, more than %d", n_params, PG_PARAMS_MAX);
        return NULL;
    }
    for (guint i = 0; i < n_params; i++) {
        const StateValue *v = &params[i];
        char *t = NULL;

        types[i] = param_oid(v->type);
        lengths[i] = 0;
        formats[i] = 0;
        if (v->null || (v->type == G_TYPE_STRING && !v->text)) {
            values[i] = NULL;
            continue;
        }
        if (v->type == G_TYPE_STRING) {
            values[i] = v->text;
        } else if (v->type == G_TYPE_INT64) {
            t = g_strdup_printf("%" G_GINT64_FORMAT, v->i);
        } else if (v->type == G_TYPE_DOUBLE) {
            t = g_malloc(G_ASCII_DTOSTR_BUF_SIZE);
            g_ascii_dtostr(t, G_ASCII_DTOSTR_BUF_SIZE, v->d);
        } else {
            gsize len = 0;
            const void *data = g_bytes_get_data(v->bytes, &len);

            if (len > G_MAXINT) {
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                            "a value of %" G_GSIZE_FORMAT " bytes", len);
                return NULL;
            }
            values[i] = data ? data : "";
            lengths[i] = (int)len;
            formats[i] = 1;
        }
        if (t) {
            g_ptr_array_add(texts, t);
            values[i] = t;
        }
    }
    if (cache) {
        const char *name = statement_name(d, sql, params, n_params, error);

        if (!name)
            return NULL;
        res = pq.PQexecPrepared(d->conn, name, (int)n_params, values, lengths,
                                formats, 0);
    } else {
        g_autofree char *text = state_db_pg_translate(sql);

        res = pq.PQexecParams(d->conn, text, (int)n_params, types, values,
                              lengths, formats, 0);
    }
    res = checked(d, res, error);
    if (!res)
        return NULL;
    st = g_new0(PgStmt, 1);
    st->base.db = db;
    st->res = res;
    st->row = -1;
    return &st->base;
}

static PgStmt *
pg_stmt(StateStmt *st)
{
    return (PgStmt *)st;
}

static int
pg_step(StateStmt *st, GError **error)
{
    PgStmt *s = pg_stmt(st);

    (void)error;
    if (s->row + 1 >= pq.PQntuples(s->res)) {
        s->row = pq.PQntuples(s->res);
        return 0;
    }
    s->row++;
    return 1;
}

static guint
pg_column_count(StateStmt *st)
{
    return (guint)pq.PQnfields(pg_stmt(st)->res);
}

static bool
pg_column_null(StateStmt *st, guint col)
{
    PgStmt *s = pg_stmt(st);

    return pq.PQgetisnull(s->res, s->row, (int)col);
}

static gint64
pg_column_int64(StateStmt *st, guint col)
{
    PgStmt *s = pg_stmt(st);

    if (pq.PQgetisnull(s->res, s->row, (int)col))
        return 0;
    /* COUNT and SUM may come as numeric: "12" reads the same */
    return g_ascii_strtoll(pq.PQgetvalue(s->res, s->row, (int)col), NULL, 10);
}

static double
pg_column_double(StateStmt *st, guint col)
{
    PgStmt *s = pg_stmt(st);

    if (pq.PQgetisnull(s->res, s->row, (int)col))
        return 0;
    return g_ascii_strtod(pq.PQgetvalue(s->res, s->row, (int)col), NULL);
}

static const char *
pg_column_text(StateStmt *st, guint col)
{
    PgStmt *s = pg_stmt(st);

    if (pq.PQgetisnull(s->res, s->row, (int)col))
        return NULL;
    return pq.PQgetvalue(s->res, s->row, (int)col);
}

static GBytes *
pg_column_bytes(StateStmt *st, guint col)
{
    PgStmt *s = pg_stmt(st);
    unsigned char *data;
    size_t len = 0;
    GBytes *out;

    if (pq.PQgetisnull(s->res, s->row, (int)col))
        return g_bytes_new(NULL, 0);
    /* bytea as text: "\x" and hex digits */
    data = pq.PQunescapeBytea(
        (const unsigned char *)pq.PQgetvalue(s->res, s->row, (int)col), &len);
    if (!data)
        return g_bytes_new(NULL, 0);
    out = g_bytes_new(data, len);
    pq.PQfreemem(data);
    return out;
}

static void
pg_release(StateStmt *st)
{
    pq.PQclear(pg_stmt(st)->res);
    g_free(st);
}

static const StateDbOps pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .exec_script = pg_exec_script,
    .begin = pg_begin,
    .commit = pg_commit,
    .in_transaction = pg_in_transaction,
    .prepare = pg_prepare,
    .step = pg_step,
    .column_count = pg_column_count,
    .column_null = pg_column_null,
    .column_int64 = pg_column_int64,
    .column_double = pg_column_double,
    .column_text = pg_column_text,
    .column_bytes = pg_column_bytes,
    .release = pg_release,
};

char *
state_db_pg_redact(const char *dsn)
{
    PQconninfoOption *opts =
        pq_load(NULL) ? pq.PQconninfoParse(dsn, NULL) : NULL;
    GString *out;

    if (!opts)
        return g_strdup("(a DSN libpq cannot parse)");
    out = g_string_new(NULL);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (out->len)
            g_string_append_c(out, ' ');
        g_string_append_printf(out, "%s=%s", o->keyword,
                               g_str_equal(o->keyword, "password") ? "***"
                                                                   : o->val);
    }
    pq.PQconninfoFree(opts);
    return g_string_free(out, FALSE);
}

char *
state_db_pg_translate(const char *sql)
{
    GString *out = g_string_sized_new(strlen(sql) + 16);
    guint next = 0;
    char quote = 0;

    for (const char *p = sql; *p; p++) {
        if (quote) {
            if (*p == quote)
                quote = 0; /* a doubled quote closes and reopens */
            g_string_append_c(out, *p);
            continue;
        }
        if (*p == '\'' || *p == '"') {
            quote = *p;
            g_string_append_c(out, *p);
            continue;
        }
        if (*p != '?') {
            g_string_append_c(out, *p);
            continue;
        }
        if (g_ascii_isdigit(p[1])) {
            g_string_append_c(out, '$');
            continue; /* ?N is $N */
        }
        g_string_append_printf(out, "$%u", ++next);
    }
    return g_string_free(out, FALSE);
}

static void
silence(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* invariant 4 */
}

/* set_lock_timeout: STATE_DB_PG_LOCK_TIMEOUT unless the DSN set one */
static bool
set_lock_timeout(StateDb *db, GError **error)
{
    PgDb *d = pg_db(db);
    PGresult *res = checked(
        d, pq.PQexec(d->conn, "SELECT current_setting('lock_timeout')"), error);
    bool unset;

    if (!res)
        return false;
    unset =
        pq.PQntuples(res) == 1 && g_str_equal(pq.PQgetvalue(res, 0, 0), "0");
    pq.PQclear(res);
    return !unset ||
           pg_exec_script(
               db, "SET lock_timeout = '" STATE_DB_PG_LOCK_TIMEOUT "'", error);
}

StateDb *
state_db_pg_open(const char *dsn, GError **error)
{
    g_autofree char *label = NULL;
    g_autoptr(GError) err = NULL;
    PgDb *d;

    if (!pq_load(error))
        return NULL;
    label = state_db_pg_redact(dsn);

    d = g_new0(PgDb, 1);
    d->base.ops = &pg_ops;
    d->base.backend = STATE_BACKEND_POSTGRESQL;
    d->base.label = g_steal_pointer(&label);
    d->prepared =
        g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    d->conn = pq.PQconnectdb(dsn);
    if (d->conn)
        pq.PQsetNoticeProcessor(d->conn, silence, NULL);
    if (!d->conn || pq.PQstatus(d->conn) != CONNECTION_OK) {
        g_autofree char *msg =
            trimmed(d->conn ? pq.PQerrorMessage(d->conn) : "out of memory");

        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "cannot connect to PostgreSQL '%s': %s", d->base.label,
                    msg);
        pg_close(&d->base);
        return NULL;
    }
    if (!set_lock_timeout(&d->base, &err)) {
        g_set_error(error, SPORE_ERROR, err->code,
                    "PostgreSQL '%s': cannot set lock_timeout: %s",
                    d->base.label, err->message);
        pg_close(&d->base);
        return NULL;
    }
    return &d->base;
}
