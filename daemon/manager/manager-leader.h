/*
 * manager-leader.h: active and standby managers on one PostgreSQL state
 * (manager-leader.c; docs/state.md, "Active and standby").
 *
 * spored on PostgreSQL starts as a standby: manager_lease_start() tries
 * the site's leader lock every second on a session of its own and calls
 * on_active (in the main context) once it holds it, with the new leader
 * epoch; spored then starts its manager.  From then on the main thread
 * calls manager_lease_check() every second and exits when it says the
 * lease is lost.  spored on SQLite has no lease: it is always active.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "manager-state.h"
#include "manager.h"

/* the shortest lease ([state] lease): the holder reads every second */
#define MANAGER_LEASE_MIN_S 2

typedef struct ManagerLease ManagerLease;

/* on_active: @epoch, the new leader epoch; @before, who was active
 * before (NULL: nobody was) */
typedef void (*ManagerLeaseFunc)(gint64 epoch, const char *before,
                                 gpointer data);

/* manager_lease_start: the lease thread of @config's [state] dsn, lease
 * and listen (in the holder's name), for a manager with @public_key;
 * @db (taken): a first session to the state, opened by the caller to
 * check the settings before it goes on */
ManagerLease *manager_lease_start(const ManagerConfig *config,
                                  const char *public_key, StateDb *db,
                                  ManagerLeaseFunc on_active, gpointer data);
/* manager_lease_check: false, with why in *@ret_why (free it), when the
 * lease is lost: another manager took over, or the key is not the
 * site's.  (A database that does not answer suspends the lease but does
 * not lose it: manager-leader.c.)  Main thread. */
bool manager_lease_check(ManagerLease *l, char **ret_why);
/* manager_lease_holder: "HOSTNAME pid PID (ENDPOINT)", this manager's
 * name in the leader row and in events */
const char *manager_lease_holder(const ManagerLease *l);
/* manager_lease_stop: stop the thread and end the lease session (the
 * lock is freed at once) */
void manager_lease_stop(ManagerLease *l);
