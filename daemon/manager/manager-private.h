/*
 * manager-private.h: what the parts of spored share — the folder's private
 * header (manager.h is the public one).
 *
 *   manager.c            setup, teardown, the manifest cache, events
 *   manager-state.[ch]   the state layer: every SQL statement, on SQLite
 *                        or PostgreSQL (state-db-*.c: the drivers)
 *   manager-zap.c        ZAP: which keys may connect, hosts_dir admission
 *   manager-transport.c  the agents' and the registration sockets: messages
 *   manager-reconcile.c  the reconciliation pass and commands to agents
 *   manager-metrics.c    /metrics
 *   manager-status.c     /status, the HTML status page (status-page.c)
 *   manager-control.c    the control socket's commands
 *   manager-scaling.c    auto-scaling: metrics and the rule engine
 *
 * Locking: Manager.lock guards db, runtime and every table below; the
 * main thread takes it per message and per pass, control threads per
 * command.  Each of those holds one transaction (state_begin) while it
 * writes, and rolls it back on any error.
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "control.h"
#include "json-util.h"
#include "manager-state.h"
#include "manager.h"
#include "manifest.h"
#include "wire.h"

/* how often agents report (welcome.report_ms) */
#define MANAGER_REPORT_MS 2000

/* A clone of a host's last report, its members read once when the
 * report arrives (the pass reads every reported clone's name, UUID,
 * service, state and generation two or three times a second: lookups in
 * the report's JSON objects were 40 % of a steady pass at 10,000
 * clones).  Strings are borrowed from the report (HostRuntime.clones). */
typedef struct {
    const char *name;    /* NULL: the entry has none (or is no object) */
    const char *uuid;    /* NULL: none */
    const char *service; /* NULL: none */
    const char *state;   /* "" when none */
    gint64 index;        /* -1: none */
    gint64 generation;   /* -1: none */
    JsonObject *obj;     /* the entry, NULL if it is no object */
} ReportedClone;

/* What the manager knows of a connected host beyond the database: its
 * last report.  Lives only in memory: after a restart, hosts report again
 * within seconds, and nothing is decided about a host before it has.
 * manager_new() gives every accepted host that is not lost an entry with
 * last_seen = its start, so that a host which never comes back is lost
 * after the grace period like one that stops reporting. */
typedef struct {
    char *name;
    char *boot;        /* the agent's boot id: changes when it restarts */
    gint64 last_seen;  /* monotonic µs (of the last message, or the start) */
    bool heard;        /* a message arrived since the manager started */
    bool reported;     /* a report arrived since the manager started */
    JsonArray *clones; /* of the last report */
    /* its entries as ReportedClone, made with clones
     * (manager_runtime_set_report), and name -> the first of that name
     * in it */
    ReportedClone *view;
    guint n_view;
    GHashTable *view_by_name;
    JsonArray *images;
    char *peer_endpoint; /* its peer server (hello), NULL: none */
    /* "create:SERVICE:INDEX" of creates acknowledged since its last
     * report: created, though no report shows them yet (a host sends
     * its ack before its next report, on one connection, in order) */
    GHashTable *acked;
} HostRuntime;

/* A message read from the agents' socket, waiting in Manager.inbox */
typedef struct {
    char *host;    /* the ZAP user id */
    char *address; /* Peer-Address */
    GBytes *body;
} InboxMessage;

/* the reconciliation pass's duration histogram (seconds), and its
 * buckets' upper bounds */
#define PASS_BUCKETS 12
extern const double manager_pass_bounds[PASS_BUCKETS];

/* counters and gauges of the message path and the pass, for /metrics
 * (under the lock) */
typedef struct {
    guint64 received;         /* messages read from the agents' socket */
    guint64 handled;          /* of them applied (or dropped as malformed) */
    guint64 answered_at_once; /* of them answered on arrival (cached) */
    guint64 batches;          /* transactions they were applied in */
    guint64 backpressure;     /* times the inbox was full: reading paused */
    guint64 send_refused;     /* messages to agents not queued (peer gone or
                             its queue full) */
    guint inbox_peak;
    guint64 pass_count;
    double pass_sum, pass_max, pass_last;
    guint64 pass_buckets[PASS_BUCKETS]; /* cumulative counts by bound */
} ManagerStats;

/* Answers: the answers made for the slices of one image's index or
 * profile (wire_text), by offset, under one leader epoch: made once, sent
 * to every host that asks (manager-transport.c) */
typedef struct {
    GHashTable *by_offset; /* gint64 * -> GBytes * */
    gint64 epoch;
    gsize bytes; /* of the answers' texts */
} Answers;

/* SiteProfile: an image's profile as hosts get it (profile-get): its
 * chunk numbers as stored (JSON text) and as sent, and their digest
 * (profile_digest), which a clone-create names; kept in its image's
 * ServedImage */
typedef struct {
    char *text;      /* the JSON array of chunk numbers, as stored */
    char *digest;    /* profile_digest of the chunks */
    GArray *chunks;  /* of guint64: the chunk numbers */
    Answers answers; /* its "profile" answers */
} SiteProfile;

/* ServedImage: what spored keeps of an image hosts ask for (index-get,
 * profile-get), so that a thousand hosts asking cost one read of the
 * state and one encoding per slice: its index and site profile as read,
 * and the answers made of them.  Several images are kept (a site fetches
 * several at once after submits of different services); the least
 * recently asked for is forgotten first, past SERVED_IMAGES_MAX images or
 * SERVED_BYTES_MAX bytes (manager-transport.c). */
#define SERVED_IMAGES_MAX 8u
/* ... and bytes besides the image being answered (a 2 GiB image at 64 KiB
 * chunks: a 1 MiB index and 1.4 MB of answers) */
#define SERVED_BYTES_MAX (64u * 1024 * 1024)
typedef struct {
    char *id;              /* the image's id (its index's digest) */
    GBytes *index;         /* NULL: not read (yet) */
    Answers index_answers; /* its "index" answers */
    SiteProfile *profile;  /* NULL: not read (yet), or none */
    guint64 used;          /* Manager.served_clock when last asked for */
} ServedImage;

struct Manager {
    ManagerConfig config;
    WireKeys keys;
    GMutex lock;           /* guards db and runtime */
    StateDb *db;           /* the state's session (SQLite or PostgreSQL) */
    gint64 epoch;          /* leader epoch (manager-leader.h), 0: SQLite */
    GHashTable *runtime;   /* host name -> HostRuntime * */
    GHashTable *manifests; /* "service:generation" -> ManagerManifest * */
    GHashTable *backoff;   /* "host/service" -> gint64 µs: no create before */
    GHashTable *failures;  /* "host/service" -> guint consecutive failures */
    GHashTable *served;    /* image id -> ServedImage * (manager-transport.c) */
    guint64 served_clock;  /* counts the asks, for ServedImage.used */
    GHashTable *refused;   /* key -> gint64 µs: last logged refusal */
    /* auto-scaling (manager-scaling.c) */
    GHashTable *cpu;       /* "host/clone" -> CpuTrack */
    GHashTable *histories; /* service -> ScalingHistory */
    GHashTable *decisions; /* service -> the last ScalingDecision */
    double last_scaling;
    gint64 peers_sent;   /* when peer lists last went out; 0: send now */
    bool peers_changed;  /* a host came or went since they went out */
    guint64 peers_epoch; /* broadcasts so far: rotates the random peers */
    /* the broadcast going out, a batch of hosts per turn of the main
     * loop, and its idle source (manager-reconcile.c, send_peer_lists) */
    struct PeerBroadcast *peers_out;
    guint peers_idle;
    struct PassCache *pass; /* during step 5 of a pass (manager-reconcile.c) */
    GPtrArray *pass_sends;  /* during a pass: the commands it stored, sent
                             * after its commit (manager-reconcile.c) */
    /* the idle source of the pass that goes on with the clones the last
     * one left unplaced or uncommanded (its budget: manager-reconcile.c) */
    guint pass_more;
    guint pass_cursor; /* where step 5 left creates (manager-reconcile.c) */
    /* every clone row as the last pass committed it, for the next pass
     * while nothing wrote the table since (state_clone_writes is
     * kept_clone_writes) under the same leader epoch (manager-reconcile.c,
     * kept_rows) */
    GPtrArray *kept_clones;
    guint64 kept_clone_writes;
    gint64 kept_epoch;

    /* the inbox: messages read, not yet applied (bounded: INBOX_MAX_*) */
    GQueue inbox;
    gsize inbox_bytes;
    gint64 backpressure_logged; /* µs of the last log line saying so */
    guint inbox_idle;           /* the source that goes on applying */
    ManagerStats stats;
    /* command id -> GPtrArray of its "create:S:I" / "destroy:NAME" keys,
     * for the pending commands (their bodies parsed once) */
    GHashTable *command_keys;
    /* hosts_dir, read once: key -> host name (manager-zap.c) */
    GHashTable *dir_keys;
    gint64 dir_mtime, dir_read;

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

/* ---- manager.c ---- */

/* A service's manifest of one generation, parsed once, with its stored
 * canonical text (what clone UUIDs hash). */
typedef struct {
    Manifest *manifest;
    char *canonical;
    /* clone index -> its name and UUID with image uuid_image (CloneIds,
     * manager-reconcile.c) */
    GHashTable *uuids;
    char *uuid_image;
} ManagerManifest;

/*
 * manager_manifest: the current manifest of @service from the cache, or
 * parsed from the database.  NULL with @error set when the database
 * fails; NULL without when there is no such service or its stored text
 * does not parse (logged).  Owned by the cache: valid while the lock is
 * held.  Locked.
 */
Manifest *manager_manifest(Manager *m, const char *service, GError **error);
/* manager_manifest_entry: the same with the canonical text */
ManagerManifest *manager_manifest_entry(Manager *m, const char *service,
                                        GError **error);
/* manager_manifest_entry_at: the same, for a caller that read the
 * service's current @generation along with its rows: no query when the
 * cache has it (a row read in the caller's transaction is current) */
ManagerManifest *manager_manifest_entry_at(Manager *m, const char *service,
                                           gint64 generation, GError **error);
/* manager_event: record an event (in the caller's transaction) and log it
 * once recorded.  Locked. */
bool manager_event(Manager *m, GError **error, const char *kind,
                   const char *service, const char *host, const char *format,
                   ...) G_GNUC_PRINTF(6, 7);
HostRuntime *manager_runtime_get(Manager *m, const char *name);
/* manager_host_is_up: a message within lost_after_s */
bool manager_host_is_up(Manager *m, const char *name);
/* manager_host_heard_up: up, and a message of its own arrived since the
 * manager started (host-list's "up"; commands go only to such a host) */
bool manager_host_heard_up(Manager *m, const char *name);
/* manager_host_clones: the clones @host reported since the manager
 * started, NULL if it has not reported */
JsonArray *manager_host_clones(Manager *m, const char *host);
/* manager_reported_clone: the clone @name in @host's last report, or
 * NULL */
JsonObject *manager_reported_clone(Manager *m, const char *host,
                                   const char *name);
/* manager_reported: the same as its ReportedClone (valid until the
 * host's next report) */
const ReportedClone *manager_reported(Manager *m, const char *host,
                                      const char *name);
/* manager_runtime_set_report: @clones and @images (new references taken)
 * are @h's last report from now on */
void manager_runtime_set_report(HostRuntime *h, JsonArray *clones,
                                JsonArray *images);
/* manager_peers_stop: drop a peer-list broadcast under way (manager-
 * reconcile.c) */
void manager_peers_stop(Manager *m);
void manager_wake(Manager *m);

/* ---- manager-zap.c ---- */
/* manager_zap_drain: answer the ZAP requests waiting.  Main thread. */
void manager_zap_drain(Manager *m);
/* manager_accept_from_dir: the name of the host whose key @key is in
 * hosts_dir, accepted now (a savepoint of the caller's transaction), or
 * NULL (@error set if the database failed).  Locked. */
char *manager_accept_from_dir(Manager *m, const char *key, GError **error);
/* manager_should_log_refusal: once a minute per key.  Locked. */
bool manager_should_log_refusal(Manager *m, const char *key);

/* ---- manager-transport.c ---- */
/* manager_transport_bind: the ZAP handler and both ROUTER sockets, bound
 * (m->zctx, m->zap, m->router, m->reg, m->register_endpoint) */
bool manager_transport_bind(Manager *m, GError **error);
/* manager_router_drain, manager_register_drain: handle the messages
 * waiting on the agents' and the registration sockets.  Main thread. */
void manager_router_drain(Manager *m);
void manager_register_drain(Manager *m);
/* manager_send: one message to @host (not queued if it cannot go:
 * counted, and logged at most once a minute).  Locked. */
bool manager_send(Manager *m, const char *host, JsonObject *msg);
/* manager_inbox_apply: apply the messages of the inbox, one batch (at
 * most INBOX_BATCH_* in one transaction); whether some are left.  Main
 * thread. */
bool manager_inbox_apply(Manager *m);
void manager_inbox_clear(Manager *m);
/* manager_note_pass: record a pass of @seconds in the stats.  Locked. */
void manager_note_pass(Manager *m, double seconds);
/* manager_site_profile: the site's access profile of image @id (the
 * merged profile of the host that booted it most), borrowed until the
 * next call; *ret NULL when no host sent one.  Locked. */
bool manager_site_profile(Manager *m, const char *id, SiteProfile **ret,
                          GError **error);
/* manager_served_free: a ServedImage's destructor (Manager.served's values) */
void manager_served_free(ServedImage *k);

/* ---- manager-reconcile.c ---- */
/* manager_reconcile: one pass (see the file's note).  Main thread. */
void manager_reconcile(Manager *m);

/* ---- manager-metrics.c ---- */
void manager_metrics(GString *out, gpointer data);

/* ---- manager-status.c ---- */
/* manager_status_page: the HTML of /status (a SporeMetricsFunc, on the
 * metrics server's thread; takes the lock) */
void manager_status_page(GString *out, gpointer data);

/* ---- manager-scaling.c ---- */
void mscale_init(Manager *m);
void mscale_free(Manager *m);
void mscale_report_clone(Manager *m, const char *host, JsonObject *clone);
bool mscale_requests(Manager *m, const char *service, gint64 count,
                     GError **error);
bool mscale_evaluate(Manager *m, GError **error);
JsonArray *mscale_rules_status(Manager *m, const char *service,
                               const Manifest *mf);

/* ---- manager-control.c ---- */
bool manager_control_start(Manager *m, GError **error);
void manager_control_stop(Manager *m);
/* manager_control_read: the replies of the control commands @reqs, each
 * one that only reads (service-list, clone-list, ...), run in one read
 * transaction under the lock (one consistent snapshot) into
 * @ret_replies (@n new references, the caller's); false with @error when
 * one fails (nothing returned).  Takes the lock: not locked. */
bool manager_control_read(Manager *m, JsonObject *const *reqs, guint n,
                          JsonObject **ret_replies, GError **error);
