/*
 * manager-private.h: what the parts of spored share (manager.c: transport
 * and reconciliation; manager-db.c: the SQLite state; manager-control.c:
 * the control socket).
 */
#pragma once

#include <sqlite3.h>
#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "manager.h"
#include "manifest.h"
#include "control.h"
#include "wire.h"

/* What the manager knows of a connected host beyond the database: its
 * last report.  Lives only in memory: after a restart, hosts report again
 * within seconds, and nothing is decided about a host before it has.
 * manager_new() gives every accepted host that is not lost an entry with
 * last_seen = its start, so that a host which never comes back is lost
 * after the grace period like one that stops reporting. */
typedef struct {
    char *name;
    char *boot;         /* the agent's boot id: changes when it restarts */
    gint64 last_seen;   /* monotonic µs (of the last message, or the start) */
    bool heard;         /* a message arrived since the manager started */
    bool reported;      /* a report arrived since the manager started */
    JsonArray *clones;  /* of the last report */
    JsonArray *images;
    char *peer_endpoint; /* its peer server (hello), NULL: none */
} HostRuntime;

struct Manager {
    ManagerConfig config;
    WireKeys keys;
    GMutex lock; /* guards db and runtime */
    sqlite3 *db;
    GHashTable *runtime; /* host name -> HostRuntime * */
    GHashTable *manifests; /* "service:generation" -> Manifest * (cache) */
    GHashTable *backoff;   /* "host/service" -> gint64 µs: no create before */
    GHashTable *failures;  /* "host/service" -> guint consecutive failures */
    GHashTable *refused;   /* key -> gint64 µs: last logged refusal */
    /* auto-scaling (manager-scaling.c) */
    GHashTable *cpu;       /* "host/clone" -> CpuTrack */
    GHashTable *histories; /* service -> ScalingHistory */
    GHashTable *decisions; /* service -> the last ScalingDecision */
    double last_scaling;
    gint64 peers_sent; /* when peer lists last went out; 0: send now */

    void *zctx;
    void *router;
    void *zap;
    void *reg; /* registration ROUTER: any key may say who it is */
    char *register_endpoint;
    guint router_watch, zap_watch, reg_watch, tick, drain;
    ControlServer *control;
    struct SporeMetrics *metrics;
    char *control_path;
};

/* ---- manager-db.c ---- */
bool mdb_open(Manager *m, GError **error);
void mdb_close(Manager *m);
/* mdb_exec: run @sql with "?" parameters bound from the varargs, a
 * G_TYPE_STRING / G_TYPE_INT64 / G_TYPE_DOUBLE tag before each value,
 * G_TYPE_INVALID last; false (logged) on failure */
bool mdb_exec(Manager *m, const char *sql, ...);
sqlite3_stmt *mdb_prepare(Manager *m, const char *sql, ...);
gint64 mdb_int(Manager *m, gint64 fallback, const char *sql, ...);
char *mdb_text(Manager *m, const char *sql, ...);
void mdb_event(Manager *m, const char *kind, const char *service,
               const char *host, const char *format, ...)
    G_GNUC_PRINTF(5, 6);
double mdb_now(void);
const char *mdb_col_text(sqlite3_stmt *st, int col); /* "" for NULL */

/* ---- manager.c ---- */
Manifest *manager_manifest(Manager *m, const char *service);
void manager_wake(Manager *m);

/* ---- manager-scaling.c ---- */
void mscale_init(Manager *m);
void mscale_free(Manager *m);
void mscale_report_clone(Manager *m, const char *host, JsonObject *clone);
void mscale_requests(Manager *m, const char *service, gint64 count);
void mscale_evaluate(Manager *m);
JsonArray *mscale_rules_status(Manager *m, const char *service,
                               const Manifest *mf);

/* ---- manager-control.c ---- */
bool manager_control_start(Manager *m, GError **error);
void manager_control_stop(Manager *m);
