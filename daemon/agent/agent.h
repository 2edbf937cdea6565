/*
 * agent.h: the host agent, daemon/agent/'s one public header: its core
 * (images, their caches and fetch engines, the fetch socket the shims ask,
 * the shims themselves, the local control socket of docs/agent-control.md),
 * the typed image API that the control socket and the site link both call,
 * the site link, and spore-agent's settings.
 *
 * One Agent per host.  Its state lives under state_dir:
 *   cache/<hex>/          the chunk cache of each image (chunk-cache.h)
 *   images/<hex>.image    each image's origins (GKeyFile), so a restarted
 *                         agent serves the same images
 *   commands.journal      the site manager's commands applied (the link)
 * and its sockets under run_dir (both made absolute by agent_new):
 *   control.sock          JSON lines, for sporectl and the site manager
 *   fetch.sock            fetch-protocol.h, for the shims
 *   shims/<hex16>.sock    each image's NBD export (nbdkit), mode 0660,
 *                         group shim_group when set, so that QEMU connects
 *   shims/<hex16>.pid     its nbdkit's PID
 *
 * Shims are separate nbdkit processes and outlive the agent: a restarted
 * agent finds them by PID file and serves their fetches again.
 *
 * Threads: the main thread runs the GMainLoop; each control or fetch
 * connection gets a thread of its own (GThreadedSocketService); fetch
 * engines have their workers; the link has two threads.  The image table
 * has a lock held for lookups only; each image has its own lock for its
 * shim's state, so that one image's slow shim start or fetch never delays
 * another's guests; images are never removed while the agent runs.
 * agent-private.h lists the files and their roles.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "fetch-source.h"
#include "image-index.h"
#include "peer-net.h"

typedef struct {
    char *state_dir;
    char *run_dir;
    char *nbdkit;     /* the nbdkit binary */
    char *plugin;     /* nbdkit-spore-plugin.so */
    char *shim_group; /* group owning shim sockets; NULL or "": none */
    guint fetch_workers;
    guint shim_timeout_s; /* 1 to SHIM_TIMEOUT_MAX_S (fetch-protocol.h) */
    bool verify_cache;    /* verify every cached chunk when an image opens */
    /* peer-to-peer exchange (docs/peer-protocol.md): on when peer_listen
     * is set; the CURVE key pair is state_dir/curve.key, the host's key
     * in the site */
    char *host_name;   /* in peers' logs */
    char *peer_listen; /* tcp://ADDRESS:PORT, NULL or "": no peer exchange */
    PeerInfo *peers;   /* the static peer list (a site manager's replaces it) */
    guint n_peers;
    PeerNetConfig peer_tuning; /* window, hedge_ms, ... (0: defaults) */
} AgentConfig;

typedef struct Agent Agent;

/* the most chunks an image-profile reply lists (the first ones read) */
#define AGENT_PROFILE_CHUNKS_MAX 65536u

/*
 * agent_new: create the directories, load the images kept in state_dir and
 * listen on the control and fetch sockets.  The sockets are served from
 * their own threads at once; the caller runs a GMainLoop for the rest.
 */
Agent *agent_new(const AgentConfig *config, GError **error);

/* agent_free: stop listening, stop the fetch engines, free.  Shims keep
 * running.  Accepts NULL. */
void agent_free(Agent *agent);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(Agent, agent_free)

/*
 * agent_set_shim_timeout: the read timeout given to shims started from now
 * on (running shims keep theirs).  Fails, changing nothing, outside 1 to
 * SHIM_TIMEOUT_MAX_S (fetch-protocol.h), which agent_new checks too.
 */
bool agent_set_shim_timeout(Agent *agent, guint seconds, GError **error);

/* agent_shim_timeout: the read timeout, in seconds, given to the shims
 * started from now on.  Thread-safe. */
guint agent_shim_timeout(Agent *agent);

/*
 * agent_set_peers: replace the peer list (from the site manager).  Fails,
 * changing nothing, when an entry is invalid or peer exchange is off.
 * Thread-safe.
 */
bool agent_set_peers(Agent *agent, const PeerInfo *peers, guint n,
                     GError **error);

/* agent_peer_endpoint: where this host's peer server listens, or NULL */
const char *agent_peer_endpoint(Agent *agent);

/* ---- the typed image API: the control socket and the site link both use
 * it.  @name is an image's id (sha256:HEX), its hex digits or a unique
 * prefix of at least 6 of them.  Every function is thread-safe and holds
 * no agent-wide lock across I/O, so a slow call on one image never delays
 * another image's guests. */

/* What is known of one image: a snapshot, owned by the caller. */
typedef struct {
    char *id; /* sha256:HEX */
    guint64 size;
    guint64 chunk_size;
    guint64 chunks;
    guint64 zero_chunks;
    guint64 cached_chunks;
    GStrv origins;
    bool serving;
    char *socket; /* serving: the shim's socket, else NULL */
    char *uri;    /* serving: nbd+unix:///HEX?socket=SOCKET, else NULL */
    GPid shim_pid;
    guint64 fetched_bytes[FETCH_SOURCE_KINDS];  /* by FetchSourceKind */
    guint64 fetched_chunks[FETCH_SOURCE_KINDS]; /* by FetchSourceKind */
    /* the fetches' latency histogram by FetchSourceKind (FetchStats) */
    guint64 latency_buckets[FETCH_SOURCE_KINDS][FETCH_LATENCY_BUCKETS];
    double latency_sum[FETCH_SOURCE_KINDS];
    guint64 rejected_chunks;
    guint64 failed_fetches;
    guint64 queued_chunks;
} AgentImageInfo;

void agent_image_info_free(AgentImageInfo *info);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(AgentImageInfo, agent_image_info_free)

/* agent_image_info_to_json: @info as docs/agent-control.md's image object
 * (also the site report's); owned by the caller */
JsonObject *agent_image_info_to_json(const AgentImageInfo *info);

/*
 * agent_image_add: make @idx's image known (its cache opened or created,
 * its record kept across restarts) with @origins (NULL-terminated, tried in
 * order).  @profile (optional, chunk numbers, at most
 * AGENT_PROFILE_CHUNKS_MAX kept; numbers outside the image dropped) becomes
 * the site's access profile of the image.  Idempotent: an image already
 * known keeps its origins.  *ret_id (optional) gets the id.  Takes a
 * reference of @idx when the image is new.
 */
bool agent_image_add(Agent *agent, ImageIndex *idx, const char *const *origins,
                     const GArray *profile, char **ret_id, GError **error);

/*
 * agent_image_add_known: agent_image_add for image @id (sha256:HEX) without
 * its index, when this host knows the image already: *ret_known is set,
 * and @profile (optional) stored as agent_image_add stores it.  When the
 * image is not known, *ret_known is false and nothing is done (true).
 */
bool agent_image_add_known(Agent *agent, const char *id, const GArray *profile,
                           bool *ret_known, GError **error);

/*
 * agent_image_wants_site_profile: whether image @id (known here) should
 * get the site's profile named @profile_id (profile_digest, from a
 * clone-create): this host never booted it (its own boots' profile is what
 * a prefetch takes, when there is one) and keeps another site profile or
 * none.  False for an image not known.
 */
bool agent_image_wants_site_profile(Agent *agent, const char *id,
                                    const char *profile_id);

/*
 * agent_image_set_site_profile: keep @profile (as agent_image_add keeps
 * one) as the site's profile of image @id, named @profile_id.  An image
 * not known is an error.
 */
bool agent_image_set_site_profile(Agent *agent, const char *id,
                                  const GArray *profile, const char *profile_id,
                                  GError **error);

/*
 * agent_image_serve: start the image's shim unless it runs; *ret_uri
 * (optional) gets its NBD URI.  Concurrent calls for one image start one
 * shim; they wait for it, up to 2 x 10 s.
 */
bool agent_image_serve(Agent *agent, const char *name, char **ret_uri,
                       GError **error);

/* agent_image_unserve: stop the image's shim (SIGTERM) if it runs */
bool agent_image_unserve(Agent *agent, const char *name, GError **error);

/* agent_image_fill: queue every missing chunk at background priority,
 * rarest first (the chunks fewest peers hold first) */
bool agent_image_fill(Agent *agent, const char *name, GError **error);

/* agent_image_info: a snapshot of one image, or NULL */
AgentImageInfo *agent_image_info(Agent *agent, const char *name,
                                 GError **error);

/* agent_image_list: snapshots of every image, sorted by id; a GPtrArray of
 * AgentImageInfo *, owned by the caller */
GPtrArray *agent_image_list(Agent *agent);

/*
 * agent_image_profile: the merged access profile of the image's boots
 * recorded on this host: chunk numbers (guint64) in the order guests first
 * read them, at most AGENT_PROFILE_CHUNKS_MAX; *ret_boots gets how many
 * boots it merges.  NULL when no such image.
 */
GArray *agent_image_profile(Agent *agent, const char *name, guint *ret_boots,
                            GError **error);

/* The outcome of agent_image_verify. */
typedef struct {
    guint64 verified; /* chunks cached after the check: read back and good,
                       * or stored meanwhile (verified on store) */
    guint64 bad;      /* cached chunks that did not match their digest */
    guint64 dropped;  /* of those, marked missing: fetched again on read */
} AgentVerifyCounts;

/*
 * agent_image_verify: read back every cached chunk of the image and check
 * it (what --verify-cache does at start); a bad chunk is dropped.  Guests
 * may read meanwhile.  Fails on an I/O error of the cache.
 */
bool agent_image_verify(Agent *agent, const char *name,
                        AgentVerifyCounts *ret_counts, GError **error);

/*
 * agent_handle_command: run one control command (@request, borrowed; see
 * docs/agent-control.md) and return the reply object, owned by the
 * caller.  Never fails: errors are replies {"ok": false, "error": ...}.
 * Thread-safe.
 */
JsonObject *agent_handle_command(Agent *agent, JsonObject *request);

/* ---- the site link (docs/site-protocol.md) ------------------------------
 *
 * A DEALER connection to spored, over CURVE with this host's key pair, that
 * says hello (capacity), reports every couple of seconds (the host's spore
 * clones with their state and stats, and its images' cache state), and
 * executes the manager's commands through the clone library, acknowledging
 * each.  Commands run one at a time on a worker thread.  Each command id
 * (per manager key) is applied at most once: the outcome is journaled in
 * STATE_DIR/commands.journal and a replay is answered from it.
 */

#define AGENT_REPORT_MS_DEFAULT 2000u
#define AGENT_REPORT_MS_MIN     100u
#define AGENT_REPORT_MS_MAX     600000u

typedef struct {
    char *manager;     /* ZeroMQ endpoint of spored, tcp://HOST:PORT */
    char *manager_key; /* its Z85 public key */
    char *host_name;   /* this host's name in the site */
    char *state_dir;   /* keys, the journal */
    char *libvirt_uri; /* NULL: qemu:///system */
    char *pool;        /* NULL: "spore" */
    char *pool_dir;
    char *console_dir;
    char *inspect_cache; /* NULL: CLONE_DEFAULT_INSPECT_CACHE */
    char *virt_type;     /* "kvm", "qemu" or NULL: probe */
    guint report_ms;     /* 0: AGENT_REPORT_MS_DEFAULT */
} AgentLinkConfig;

typedef struct AgentLink AgentLink;

/* agent_link_start: connect to the manager and serve it from threads of
 * its own; borrows @agent (it must outlive the link), copies @config */
AgentLink *agent_link_start(Agent *agent, const AgentLinkConfig *config,
                            GError **error);

/*
 * agent_link_stop: stop the threads and free; accepts NULL.  A command
 * running is abandoned (the manager sends it again): then nothing is
 * freed, since its thread still uses the link, and false says the
 * caller must leave with _exit() — exit()'s handlers (libguestfs closes
 * its handles there) would run under that thread.
 */
bool agent_link_stop(AgentLink *link);

/* agent_link_set_report_ms: change the report interval
 * (AGENT_REPORT_MS_MIN to AGENT_REPORT_MS_MAX; others are ignored).
 * Accepts NULL.  Thread-safe. */
void agent_link_set_report_ms(AgentLink *link, guint ms);

/* ---- spore-agent's settings (agent-config.c) -----------------------------
 *
 * One table drives the command-line options, the configuration file's keys
 * and their defaults: the command line wins, then the file, then the
 * default.  SIGHUP loads them again with the same command line. */

typedef struct {
    char *config_path; /* NULL: no file */
    char *state_dir;
    char *run_dir;
    char *nbdkit;
    char *plugin;
    char *shim_group;
    guint fetch_workers;
    guint shim_timeout_s; /* checked by agent_new */
    bool verify_cache;
    char *manager; /* NULL or "": no site manager */
    char *manager_key_file;
    char *manager_key;
    char *host_name; /* default: the system's host name */
    char *libvirt_uri;
    char *pool;
    char *pool_dir;
    char *console_dir;
    char *inspect_cache; /* NULL: the clone library's default */
    char *virt_type;     /* NULL, "kvm" or "qemu" */
    guint report_ms;
    char *metrics;     /* "": the default endpoint if free; "none" */
    char *peer_listen; /* NULL: no peer exchange ("none" in the file) */
    PeerNetConfig peer_tuning;
    GArray *static_peers; /* of PeerInfo: the [peer NAME] groups */
    bool verbose;
    bool version;
} AgentSettings;

typedef struct AgentCommandLine AgentCommandLine;

/* agent_command_line_parse: the options of @argv (removed from it), kept
 * for agent_settings_load; --help prints the table's help and exits.
 * Errors are G_OPTION_ERROR. */
AgentCommandLine *agent_command_line_parse(int *argc, char ***argv,
                                           GError **error);
void agent_command_line_free(AgentCommandLine *command_line);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(AgentCommandLine, agent_command_line_free)

/*
 * agent_settings_load: the settings from @command_line and the file it
 * names (or the default file when it exists), into *ret, which the caller
 * clears with agent_settings_clear.  Errors name the file; a bad virt_type
 * is SPORE_ERROR_USAGE.
 */
bool agent_settings_load(const AgentCommandLine *command_line,
                         AgentSettings *ret, GError **error);
void agent_settings_clear(AgentSettings *settings);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(AgentSettings, agent_settings_clear)

/* agent_settings_agent_config: the AgentConfig of @settings, borrowing its
 * strings and peer list (valid while @settings is) */
void agent_settings_agent_config(const AgentSettings *settings,
                                 AgentConfig *ret);
