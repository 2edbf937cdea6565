/*
 * manager.h: spored, the site manager — state in SQLite or PostgreSQL
 * (docs/state.md), agents over
 * ZeroMQ (docs/site-protocol.md), operators over the control socket
 * (docs/site-control.md), and the reconciliation loop that turns desired
 * clones into commands.
 *
 * Threads: the main thread runs the GMainLoop: the ROUTER socket, the ZAP
 * handler and the reconciliation timer.  Control connections have threads
 * of their own (GThreadedSocketService).  All state is in the database,
 * guarded by one mutex; only the main thread touches ZeroMQ sockets.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

typedef struct {
    char *state_dir;          /* spored.db, curve.key */
    char *run_dir;            /* control.sock */
    char *listen;             /* ZeroMQ endpoint for agents, tcp://ADDR:PORT */
    char *hosts_dir;          /* accepted host keys: NAME.pub; may be NULL */
    char *control_group;      /* group of control.sock; NULL: the daemon's */
    guint lost_after_s;       /* a host silent this long is lost */
    guint resend_s;           /* an unacknowledged command is sent again */
    guint shutdown_timeout_s; /* for clone-destroy commands */
    char *metrics_listen;     /* ADDRESS:PORT of /metrics; NULL or "": none */
    char *state_backend;      /* [state] backend: NULL or "sqlite": spored.db
                                 in state_dir; "postgresql": state_dsn */
    char *state_dsn;          /* [state] dsn: libpq's conninfo or URI */
    guint lease_s;            /* [state] lease: PostgreSQL, the active
                                 manager's lease (manager-leader.h) */
} ManagerConfig;

typedef struct Manager Manager;
typedef struct StateDb StateDb;

/*
 * manager_state_open: the state of @config: SQLite's STATE_DIR/spored.db,
 * or the PostgreSQL database of [state] dsn; errors name the setting
 * (never the DSN's password).  Close with state_close().
 */
StateDb *manager_state_open(const ManagerConfig *config, GError **error);

/*
 * manager_new: the site manager of @config, serving.  @epoch: its leader
 * epoch on a PostgreSQL state (manager-leader.h): its state session
 * writes only while the epoch is the site's, and every message to the
 * agents carries it; 0 on SQLite.
 */
Manager *manager_new(const ManagerConfig *config, gint64 epoch, GError **error);
/* manager_fenced: a write found that another manager took over */
bool manager_fenced(Manager *m);
void manager_free(Manager *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Manager, manager_free)

/*
 * manager_reconfigure: apply the settings that can change while running
 * (lost_after_s, resend_s, shutdown_timeout_s, hosts_dir) from @config;
 * the others need a restart.
 */
void manager_reconfigure(Manager *m, const ManagerConfig *config);

/* manager_public_key: the Z85 CURVE public key agents must be given */
const char *manager_public_key(const Manager *m);
