/*
 * agent.h: the host agent's core: images, their caches and fetch engines,
 * the fetch socket the shims ask, the shims themselves, and the local
 * control socket (docs/agent-control.md).
 *
 * One Agent per host.  Its state lives under state_dir:
 *   cache/<hex>/          the chunk cache of each image (chunk-cache.h)
 *   images/<hex>.image    each image's origins (GKeyFile), so a restarted
 *                         agent serves the same images
 * and its sockets under run_dir:
 *   control.sock          JSON lines, for sporectl and the site manager
 *   fetch.sock            fetch-protocol.h, for the shims
 *   shims/<hex>.sock      each image's NBD export (nbdkit), group-owned by
 *                         shim_group so that QEMU can connect
 *   shims/<hex>.pid       its nbdkit's PID
 *
 * Shims are separate nbdkit processes and outlive the agent: a restarted
 * agent finds them by PID file and serves their fetches again.
 *
 * Threads: the main thread runs the GMainLoop; each control or fetch
 * connection gets a thread of its own (GThreadedSocketService); fetch
 * engines have their workers.  The image table is guarded by a mutex;
 * images are never removed while the agent runs.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <json-glib/json-glib.h>

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

/*
 * agent_handle_command: run one control command (@request, borrowed; see
 * docs/agent-control.md) and return the reply object, owned by the
 * caller.  Never fails: errors are replies {"ok": false, "error": ...}.
 * Thread-safe.
 */
JsonObject *agent_handle_command(Agent *agent, JsonObject *request);
