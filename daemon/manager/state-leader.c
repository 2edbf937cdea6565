/*
 * state-leader.c: which spored is the site's active manager, in the
 * state itself (manager-state.h, "the active manager"; docs/state.md,
 * "Active and standby").
 *
 * Two things decide it, and they answer different questions:
 *
 *   the leader lock   who may become active: a PostgreSQL session-level
 *                     advisory lock, held by the active manager's lease
 *                     session (manager-leader.c).  The server frees it
 *                     when that session ends: the process died (its
 *                     socket closed), or the session stayed idle for the
 *                     lease (idle_session_timeout: a frozen or cut-off
 *                     manager stops pinging).
 *   the leader row    who *is* active: its epoch grows by one at each
 *                     takeover.  The active manager's state session
 *                     checks it at the start of every write transaction
 *                     (state_fence): a manager that lost the lock while
 *                     it could not tell — frozen, cut off — writes
 *                     nothing once another took over.  The same epoch
 *                     goes with every message to the agents, which drop
 *                     a lower one (docs/site-protocol.md).
 *
 * Invariants:
 *   1. The epoch is written only under the leader lock (state_leader_take
 *      is called by the lock's holder), so two managers never get the
 *      same epoch.
 *   2. The fence check runs inside the write transaction it guards: on
 *      PostgreSQL that transaction is SERIALIZABLE, so it either
 *      serializes before the takeover's update of the row or fails.
 *   3. SQLite has one process per file: the lock is always granted and
 *      no epoch is fenced (state_fence is not called with SQLite).
 */
#include <string.h>

#include "manager-state.h"
#include "spore-error.h"
#include "state-db.h"

/* the key of the PostgreSQL advisory lock of the active manager (the
 * migration lock's key + 1) */
#define STATE_LEADER_LOCK (0x73706f7265 + 1)

void
leader_row_clear(LeaderRow *row)
{
    g_clear_pointer(&row->holder, g_free);
    g_clear_pointer(&row->public_key, g_free);
    row->epoch = 0;
    row->since = 0;
}

/* one_int: the first column of @sql's one row (0 without a row) */
static bool
one_int(StateDb *db, const char *sql, const StateValue *params, guint n,
        gint64 *ret, GError **error)
{
    g_autoptr(StateStmt) st = db->ops->prepare(db, sql, true, params, n, error);
    int rc;

    *ret = 0;
    if (!st)
        return false;
    rc = db->ops->step(st, error);
    if (rc == 1)
        *ret = db->ops->column_int64(st, 0);
    return rc >= 0;
}

bool
state_leader_lease(StateDb *db, guint lease_s, GError **error)
{
    g_autofree char *sql = NULL;

    if (db->backend != STATE_BACKEND_POSTGRESQL)
        return true;
    sql = g_strdup_printf("SET idle_session_timeout = %u", lease_s * 1000);
    if (!db->ops->exec_script(db, sql, error)) {
        g_prefix_error(error, "database: cannot set the lease: ");
        return false;
    }
    return true;
}

bool
state_leader_try_lock(StateDb *db, bool *ret_held, GError **error)
{
    const StateValue key = {.type = G_TYPE_INT64, .i = STATE_LEADER_LOCK};
    gint64 got = 0;

    *ret_held = true; /* invariant 3 */
    if (db->backend != STATE_BACKEND_POSTGRESQL)
        return true;
    if (!one_int(db,
                 "SELECT CASE WHEN pg_try_advisory_lock(?) THEN 1 ELSE 0 END",
                 &key, 1, &got, error)) {
        g_prefix_error(error, "database: cannot try the leader lock: ");
        return false;
    }
    *ret_held = got == 1;
    return true;
}

bool
state_leader_unlock(StateDb *db, GError **error)
{
    const StateValue key = {.type = G_TYPE_INT64, .i = STATE_LEADER_LOCK};
    gint64 done = 0;

    if (db->backend != STATE_BACKEND_POSTGRESQL)
        return true;
    if (!one_int(db, "SELECT CASE WHEN pg_advisory_unlock(?) THEN 1 ELSE 0 END",
                 &key, 1, &done, error)) {
        g_prefix_error(error, "database: cannot give the leader lock back: ");
        return false;
    }
    return true;
}

/* read_row: the leader row into @row (cleared first) */
static bool
read_row(StateDb *db, LeaderRow *row, GError **error)
{
    g_autoptr(StateStmt) st = db->ops->prepare(
        db, "SELECT epoch, holder, public_key, since FROM leader WHERE id = 1",
        true, NULL, 0, error);
    int rc;

    leader_row_clear(row);
    if (!st)
        return false;
    rc = db->ops->step(st, error);
    if (rc == 1) {
        row->epoch = db->ops->column_int64(st, 0);
        row->holder = g_strdup(db->ops->column_text(st, 1));
        row->public_key = g_strdup(db->ops->column_text(st, 2));
        row->since = db->ops->column_double(st, 3);
    }
    return rc >= 0;
}

bool
state_leader_read(StateDb *db, LeaderRow *ret_row, GError **error)
{
    if (!read_row(db, ret_row, error)) {
        g_prefix_error(error, "database: cannot read the leader row: ");
        return false;
    }
    return true;
}

/* write_row: the leader row as @epoch, @holder, @public_key, now */
static bool
write_row(StateDb *db, gint64 epoch, const char *holder, const char *public_key,
          GError **error)
{
    const StateValue params[] = {
        {.type = G_TYPE_INT64, .i = epoch},
        {.type = G_TYPE_STRING, .text = holder},
        {.type = G_TYPE_STRING, .text = public_key},
        {.type = G_TYPE_DOUBLE, .d = (double)g_get_real_time() / 1e6},
    };
    g_autoptr(StateStmt) st = db->ops->prepare(
        db,
        "INSERT INTO leader (id, epoch, holder, public_key, since) "
        "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "epoch = excluded.epoch, holder = excluded.holder, "
        "public_key = excluded.public_key, since = excluded.since",
        true, params, G_N_ELEMENTS(params), error);

    return st && db->ops->step(st, error) == 0;
}

bool
state_leader_take(StateDb *db, const char *holder, const char *public_key,
                  LeaderRow *ret_before, gint64 *ret_epoch, GError **error)
{
    if (!db->ops->begin(db, true, error) || !read_row(db, ret_before, error))
        goto fail;
    if (ret_before->public_key &&
        !g_str_equal(ret_before->public_key, public_key)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                    "the site's manager key is %s (%s), this spored's is "
                    "%s: the agents would not accept it; give every manager "
                    "of the site the same curve.key",
                    ret_before->public_key,
                    ret_before->holder ? ret_before->holder : "?", public_key);
        if (db->ops->in_transaction(db))
            db->ops->exec_script(db, "ROLLBACK", NULL);
        return false;
    }
    *ret_epoch = ret_before->epoch + 1;
    if (!write_row(db, *ret_epoch, holder, public_key, error) ||
        !db->ops->commit(db, error))
        goto fail;
    return true;
fail:
    if (db->ops->in_transaction(db))
        db->ops->exec_script(db, "ROLLBACK", NULL);
    g_prefix_error(error, "database: cannot take the site's leadership: ");
    return false;
}

void
state_fence(StateDb *db, gint64 epoch)
{
    db->fence_epoch = epoch;
    db->fenced = false;
}

bool
state_fenced(StateDb *db)
{
    return db->fenced;
}

bool
state_leader_fence_check(StateDb *db, GError **error)
{
    gint64 epoch = 0;

    if (!one_int(db, "SELECT epoch FROM leader WHERE id = 1", NULL, 0, &epoch,
                 error)) {
        g_prefix_error(error, "database: cannot read the leader row: ");
        return false;
    }
    if (epoch == db->fence_epoch)
        return true;
    db->fenced = true;
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                "this spored is no longer the site's active manager (its "
                "leader epoch is %" G_GINT64_FORMAT
                ", the site's %" G_GINT64_FORMAT "): nothing written",
                db->fence_epoch, epoch);
    return false;
}
