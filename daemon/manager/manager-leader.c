/*
 * manager-leader.c: active and standby — the lease of the site's active
 * manager on a PostgreSQL state (manager-leader.h; the lock and the
 * epoch: state-leader.c; docs/state.md, "Active and standby").
 *
 * One thread per spored owns a session of its own, the lease session
 * (never the state session the manager works on: a long pass must not
 * delay the lease, and losing one must not lose the other silently):
 *
 *   STANDBY --[the leader lock taken, the epoch bumped]--> ACTIVE
 *            (on_active runs in the main context with the new epoch)
 *   STANDBY --[no database, or the lock is held]--> STANDBY, once a second
 *   ACTIVE --[the leader row read, same epoch]--> ACTIVE, once a second
 *   ACTIVE --[the row shows another epoch]--> LOST (final)
 *   ACTIVE --[the read fails: the session is gone]--> SUSPENDED
 *   SUSPENDED --[a new session, the lock taken again, same epoch]--> ACTIVE
 *   SUSPENDED --[another epoch, or the lock held by another]--> LOST
 *   SUSPENDED --[no database]--> SUSPENDED, once a second
 *
 * SUSPENDED is a database restart or a cut between this manager and the
 * database: the lock went with the session, and another manager may
 * take it.  Meanwhile this one writes nothing (the state is unreachable,
 * and once another took over its writes are fenced) and carries on
 * otherwise, so that a site with one manager rides out a database
 * restart.  The main thread asks manager_lease_check() every second:
 * LOST is the end of this spored as the active manager; spored exits and
 * its next start waits as a standby.
 *
 * Invariants:
 *   1. The lease session reads every second while ACTIVE, well inside
 *      the lease (≥ 2 s): the server ends it only when this process
 *      stops reading — dead, frozen or cut off.
 *   2. The main thread never waits for the lease thread: what it reads
 *      (state, lost) is under ManagerLease.lock, which the
 *      thread never holds across a query.
 */
#include "manager-leader.h"

#include <unistd.h>

#include "manager-state.h"
#include "spore-error.h"

#define LEASE_TRY_US G_USEC_PER_SEC /* a lock try or a read, this often */

typedef enum {
    LEASE_STANDBY,
    LEASE_ACTIVE,
    LEASE_SUSPENDED,
    LEASE_LOST,
} LeaseState;

struct ManagerLease {
    char *dsn;
    guint lease_s;
    char *holder;
    char *public_key;
    ManagerLeaseFunc on_active;
    gpointer data;
    GThread *thread;
    StateDb *first; /* the session spored opened at start, the thread's */

    GMutex lock; /* guards the fields below (invariant 2) */
    GCond cond;
    bool stop;
    LeaseState state;
    gint64 epoch;
    char *lost; /* why the lease was lost */
};

/* what the thread hands the main context when it became active */
typedef struct {
    ManagerLease *lease;
    gint64 epoch;
    char *before; /* the holder before, or NULL */
} Activation;

static gboolean
on_activated(gpointer data)
{
    Activation *a = data;

    a->lease->on_active(a->epoch, a->before, a->lease->data);
    g_free(a->before);
    g_free(a);
    return G_SOURCE_REMOVE;
}

/* note: log @text once, until another note replaces it (the standby
 * says why it waits once per change, not once a second) */
static void
note(char **last, const char *text)
{
    if (g_strcmp0(*last, text) == 0)
        return;
    g_message("%s", text);
    g_free(*last);
    *last = g_strdup(text);
}

/* lease_open: the lease session, or NULL (why in *@why) */
static StateDb *
lease_open(ManagerLease *l, char **why)
{
    g_autoptr(GError) err = NULL;
    StateDb *db = state_open_postgresql(l->dsn, &err);

    if (db && !state_leader_lease(db, l->lease_s, &err))
        g_clear_pointer(&db, state_close);
    if (!db)
        *why = g_strdup_printf("standby: cannot reach the state (%s); "
                               "trying again every second",
                               err->message);
    return db;
}

/* lease_set: the new state (and why, for LOST: taken) */
static void
lease_set(ManagerLease *l, LeaseState state, char *why)
{
    g_mutex_lock(&l->lock);
    l->state = state;
    if (why) {
        g_free(l->lost);
        l->lost = why;
    }
    g_mutex_unlock(&l->lock);
}

/* standby_step: try the lock once; true when this manager became active */
static bool
standby_step(ManagerLease *l, StateDb *db, char **last, GError **error)
{
    g_auto(LeaderRow) row = {0};
    g_auto(LeaderRow) before = {0};
    bool held = false;
    gint64 epoch = 0;

    if (!state_leader_read(db, &row, error))
        return false;
    if (row.public_key && !g_str_equal(row.public_key, l->public_key)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                    "the site's manager key is %s (%s), this spored's is "
                    "%s: copy the active manager's curve.key into this "
                    "one's state directory",
                    row.public_key, row.holder ? row.holder : "?",
                    l->public_key);
        return false;
    }
    if (!state_leader_try_lock(db, &held, error))
        return false;
    if (!held) {
        g_autofree char *text = g_strdup_printf(
            "standby: %s is the site's active manager (leader epoch "
            "%" G_GINT64_FORMAT "); taking over when its lease ends",
            row.holder ? row.holder : "another spored", row.epoch);

        note(last, text);
        return false;
    }
    if (!state_leader_take(db, l->holder, l->public_key, &before, &epoch,
                           error))
        return false;
    g_mutex_lock(&l->lock);
    l->state = LEASE_ACTIVE;
    l->epoch = epoch;
    g_mutex_unlock(&l->lock);
    {
        Activation *a = g_new0(Activation, 1);

        a->lease = l;
        a->epoch = epoch;
        a->before = g_steal_pointer(&before.holder);
        g_idle_add(on_activated, a);
    }
    return true;
}

/* took_over: why the lease is lost when @row has another epoch */
static char *
took_over(const LeaderRow *row)
{
    return g_strdup_printf("%s took over (leader epoch %" G_GINT64_FORMAT ")",
                           row->holder ? row->holder : "another spored",
                           row->epoch);
}

/* active_step: read the leader row: ACTIVE stays, or SUSPENDED (the
 * session is closed: *@db NULL) or LOST */
static void
active_step(ManagerLease *l, StateDb **db)
{
    g_autoptr(GError) err = NULL;
    g_auto(LeaderRow) row = {0};

    if (!state_leader_read(*db, &row, &err)) {
        g_warning("the lease session failed: %s; writing nothing until the "
                  "database answers again (another spored may take over "
                  "meanwhile)",
                  err->message);
        g_clear_pointer(db, state_close);
        lease_set(l, LEASE_SUSPENDED, NULL);
    } else if (row.epoch != l->epoch) {
        lease_set(l, LEASE_LOST, took_over(&row));
    }
}

/* suspended_step: on a new session, take the lock back if nobody else
 * took over: ACTIVE again, or LOST */
static void
suspended_step(ManagerLease *l, StateDb *db)
{
    g_autoptr(GError) err = NULL;
    g_auto(LeaderRow) row = {0};
    bool held = false;

    if (!state_leader_read(db, &row, &err) ||
        !state_leader_try_lock(db, &held, &err)) {
        g_debug("suspended: %s", err->message);
        return;
    }
    if (row.epoch != l->epoch || !held) {
        if (held)
            state_leader_unlock(db, NULL);
        lease_set(l, LEASE_LOST,
                  row.epoch != l->epoch
                      ? took_over(&row)
                      : g_strdup("another spored holds the site's lease"));
        return;
    }
    g_message("the lease is back: still the site's active manager (leader "
              "epoch %" G_GINT64_FORMAT ")",
              l->epoch);
    lease_set(l, LEASE_ACTIVE, NULL);
}

/* lease_wait: a second, or less when asked to stop; false: stop */
static bool
lease_wait(ManagerLease *l)
{
    gint64 until = g_get_monotonic_time() + LEASE_TRY_US;
    bool stop;

    g_mutex_lock(&l->lock);
    while (!l->stop && g_cond_wait_until(&l->cond, &l->lock, until))
        ;
    stop = l->stop;
    g_mutex_unlock(&l->lock);
    return !stop;
}

static gpointer
lease_thread(gpointer data)
{
    ManagerLease *l = data;
    g_autofree char *last = NULL;
    StateDb *db = g_steal_pointer(&l->first);

    if (db && !state_leader_lease(db, l->lease_s, NULL))
        g_clear_pointer(&db, state_close); /* a new one, below */
    do {
        g_autoptr(GError) err = NULL;
        g_autofree char *why = NULL;

        if (!db && !(db = lease_open(l, &why))) {
            if (l->state == LEASE_STANDBY)
                note(&last, why);
            continue;
        }
        if (l->state == LEASE_ACTIVE || l->state == LEASE_SUSPENDED) {
            if (l->state == LEASE_ACTIVE)
                active_step(l, &db);
            else
                suspended_step(l, db);
            if (l->state == LEASE_LOST)
                break;
            continue;
        }
        if (standby_step(l, db, &last, &err))
            continue;
        if (err && err->code == SPORE_ERROR_CONFLICT) {
            lease_set(l, LEASE_LOST, g_strdup(err->message));
            break;
        }
        if (err) {
            g_autofree char *text = g_strdup_printf(
                "standby: %s; trying again every second", err->message);

            note(&last, text);
            g_clear_pointer(&db, state_close); /* a new session next time */
        }
    } while (lease_wait(l));
    state_close(db); /* ends the session: frees the lock at once */
    return NULL;
}

ManagerLease *
manager_lease_start(const ManagerConfig *config, const char *public_key,
                    StateDb *db, ManagerLeaseFunc on_active, gpointer data)
{
    ManagerLease *l = g_new0(ManagerLease, 1);

    l->first = db;
    l->dsn = g_strdup(config->state_dsn);
    l->lease_s = MAX(config->lease_s, MANAGER_LEASE_MIN_S);
    l->holder = g_strdup_printf("%s pid %d (%s)", g_get_host_name(),
                                (int)getpid(), config->listen);
    l->public_key = g_strdup(public_key);
    l->on_active = on_active;
    l->data = data;
    g_mutex_init(&l->lock);
    g_cond_init(&l->cond);
    l->state = LEASE_STANDBY;
    l->thread = g_thread_new("spored-lease", lease_thread, l);
    return l;
}

bool
manager_lease_check(ManagerLease *l, char **ret_why)
{
    bool ok;

    g_mutex_lock(&l->lock);
    ok = l->state != LEASE_LOST;
    if (!ok)
        *ret_why = g_strdup(l->lost);
    g_mutex_unlock(&l->lock);
    return ok;
}

const char *
manager_lease_holder(const ManagerLease *l)
{
    return l->holder;
}

void
manager_lease_stop(ManagerLease *l)
{
    if (!l)
        return;
    g_mutex_lock(&l->lock);
    l->stop = true;
    g_cond_signal(&l->cond);
    g_mutex_unlock(&l->lock);
    g_thread_join(l->thread);
    g_mutex_clear(&l->lock);
    g_cond_clear(&l->cond);
    g_free(l->dsn);
    g_free(l->holder);
    g_free(l->public_key);
    g_free(l->lost);
    g_free(l);
}
