/*
 * agent-private.h: what the files of daemon/agent/ share and nothing else
 * may use: the Agent and AgentImage structures, their locks, and the
 * functions one role offers another.
 *
 *   agent.c           the Agent: configuration, directories, peers, start
 *                     and stop of everything below
 *   agent-images.c    the image table: open, persist, load, find; the typed
 *                     image API of agent.h but for serving
 *   agent-shim.c      each image's shim (nbdkit): its state machine
 *   agent-fetch.c     the fetch socket the shims ask for missing chunks
 *   agent-control.c   the control socket's JSON commands, over the typed API
 *   agent-link.c      the site link (docs/site-protocol.md)
 *   agent-commands.c  the site manager's commands: clone create, destroy
 *   agent-config.c    spore-agent's options and configuration file
 *
 * Locks (the invariants are numbered in agent-images.c and agent-shim.c):
 * Agent.lock guards the images table only and is never held across I/O;
 * AgentImage.lock guards the image's shim state; Agent.add_lock serializes
 * image-add.  No lock is taken while another is held, but for
 * Agent.add_lock, under which Agent.lock is taken for a lookup and an
 * insert (image_open_once).  Each is held as a scoped GMutexLocker whose
 * scope is the critical section.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "agent.h"
#include "chunk-cache.h"
#include "control.h"
#include "fetch-engine.h"
#include "image-index.h"
#include "peer-net.h"
#include "hash.h"
#include "local-source.h"

#define SITE_PROFILE_FILE    "site-profile"
#define SITE_PROFILE_ID_FILE "site-profile.id" /* its profile_digest */

/* the shim of one image: the diagram is in agent-shim.c */
typedef enum {
    SHIM_IDLE,     /* no nbdkit of ours serves the image */
    SHIM_STARTING, /* one thread spawns and polls nbdkit, holding no lock */
    SHIM_SERVING,  /* shim_pid serves the image (checked on each serve) */
} ShimState;

typedef struct {
    /* immutable once the image is in the table (agent-images.c, inv. 2) */
    char *id;  /* "sha256:<hex>" */
    char *hex; /* the id's hex digits: directory and file names */
    guint8 digest[SPORE_SHA256_BYTES];
    ImageIndex *idx;
    ChunkCache *cache;
    FetchEngine *engine;
    FetchSource *local; /* borrowed from the engine, for image-plan */
    GStrv origins;
    char *shim_socket;
    char *shim_pidfile;
    char *shim_log;
    /* guarded by lock (agent-shim.c, invariant 1) */
    GMutex lock;
    GCond cond; /* broadcast when shim_state leaves SHIM_STARTING */
    ShimState shim_state;
    GPid shim_pid; /* SHIM_SERVING: nbdkit's daemon; else 0 */
} AgentImage;

struct Agent {
    AgentConfig cfg; /* paths absolute; the peer settings are not kept */
    char *cache_root;
    char *images_dir;
    char *shims_dir;
    char *control_path;
    char *fetch_path;
    GMutex lock;        /* guards the images table only */
    GMutex add_lock;    /* serializes image-add */
    GHashTable *images; /* hex -> AgentImage *, never removed */
    CacheSet *caches;   /* every image's cache, for local copies */
    PeerNet *peers;     /* NULL: no peer exchange */
    ControlServer *control;
    GSocketService *fetch;
    gint shim_timeout; /* atomic, seconds: SIGHUP may change it */
};

/* ---- agent-images.c ---- */

/* agent_images_load: open every image recorded in state_dir (at start,
 * before any socket listens); a broken record is skipped with a warning */
void agent_images_load(Agent *agent);

/* agent_image_free: a GDestroyNotify for the table */
void agent_image_free(gpointer image);

/*
 * agent_find_image: an image by id, hex, or a unique hex prefix of at least
 * 6 digits; borrowed, valid while the agent lives.  Takes Agent.lock for the
 * lookup only.
 */
AgentImage *agent_find_image(Agent *agent, const char *name, GError **error);

/* agent_find_image_by_digest: the image whose id has @digest, or NULL.
 * Takes Agent.lock for the lookup only. */
AgentImage *agent_find_image_by_digest(Agent *agent, const guint8 *digest);

/* agent_images_sorted: the images sorted by id, borrowed; the array is the
 * caller's.  Takes Agent.lock while listing only. */
GPtrArray *agent_images_sorted(Agent *agent);

/* agent_image_prefetch_profile: queue the chunks earlier boots read first
 * (this host's profile, else the site's) behind demand misses */
void agent_image_prefetch_profile(AgentImage *im);

/* ---- agent-shim.c ---- */

/* agent_shim_adopt: at load, take on a shim left running by an earlier
 * agent (its PID file names a running nbdkit): IDLE -> SERVING */
void agent_shim_adopt(AgentImage *im);

/* agent_shim_serve, agent_shim_unserve: the transitions of agent-shim.c's
 * diagram; thread-safe, holding no agent-wide lock */
bool agent_shim_serve(Agent *agent, AgentImage *im, GError **error);
void agent_shim_unserve(AgentImage *im);

/* agent_shim_pid: the serving nbdkit's PID, or 0 */
GPid agent_shim_pid(AgentImage *im);

/* agent_shim_uri: the NBD URI of the image's export (whether it serves or
 * not); owned by the caller */
char *agent_shim_uri(AgentImage *im);

/* ---- agent-fetch.c ---- */

/* agent_fetch_start: listen on fetch_path for the shims, serving each
 * connection on a thread of its own */
bool agent_fetch_start(Agent *agent, GError **error);

/* agent_fetch_stop: stop listening and remove the socket; accepts an agent
 * whose fetch socket never started */
void agent_fetch_stop(Agent *agent);

/* ---- agent-control.c ---- */

/* agent_control_start: listen on control_path (docs/agent-control.md) */
bool agent_control_start(Agent *agent, GError **error);

/* ---- agent-commands.c: the site manager's commands ---- */

typedef struct AgentCommands AgentCommands;

/* AgentIndexFetch: the encoded index of image @id (sha256:HEX) from the
 * site manager (index-get, docs/site-protocol.md), not yet verified; NULL
 * with @error when it cannot be had */
typedef GBytes *(*AgentIndexFetch)(const char *id, gpointer data,
                                   GError **error);

/* AgentProfileFetch: the site's access profile of image @id from the site
 * manager (profile-get), chunk numbers checked against the name in
 * *ret_profile_id (owned by the caller); NULL with @error when it cannot
 * be had */
typedef GArray *(*AgentProfileFetch)(const char *id, gpointer data,
                                     char **ret_profile_id, GError **error);

/* AgentSiteFetch: what the commands ask the site manager for, both
 * required, called with @data */
typedef struct {
    AgentIndexFetch index;     /* an image a clone-create names, unknown */
    AgentProfileFetch profile; /* its site profile, when this host has none */
    gpointer data;
} AgentSiteFetch;

/* agent_commands_new: what runs commands for @link_config's host; borrows
 * @agent and @config (both outlive it); @fetch (copied) gets what a
 * command names by id only.
 * Never fails: libvirt is connected on the first command. */
AgentCommands *agent_commands_new(Agent *agent, const AgentLinkConfig *config,
                                  const AgentSiteFetch *fetch);

/*
 * agent_commands_run: run one command of the site manager (@cmd, borrowed:
 * clone-create or clone-destroy, docs/site-protocol.md), appending what was
 * done to @summary.  Called from one thread at a time.
 */
bool agent_commands_run(AgentCommands *commands, JsonObject *cmd,
                        GString *summary, GError **error);

/* agent_commands_free: close its libvirt connection; accepts NULL */
void agent_commands_free(AgentCommands *commands);
