/*
 * agent.c: the Agent itself: its configuration, directories and peer
 * server, and the start and stop of its parts (agent-private.h lists the
 * files and their roles; agent.h the layout on disk and the threads).
 *
 * agent_new makes the directories, starts the peer server, loads the
 * images, then listens on the fetch and control sockets, in that order: a
 * shim left running by an earlier agent may ask for chunks as soon as the
 * fetch socket exists, so its image must be loaded first.
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <errno.h>
#include <grp.h>
#include <string.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "fetch-protocol.h"
#include "spore-error.h"
#include "wire.h"

#define UNIX_PATH_BYTES 108 /* sizeof(sun_path) */
#define SHIM_NAME_BYTES (sizeof("/0123456789abcdef.sock") - 1)
#define STATE_DIR_MODE  0750
#define RUN_DIR_MODE    0755
#define SHIMS_DIR_MODE  0750

bool
agent_set_peers(Agent *a, const PeerInfo *peers, guint n, GError **error)
{
    if (!a->peers) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "peer exchange is off on this host (no [peers] listen)");
        return false;
    }
    return peer_net_set_peers(a->peers, peers, n, error);
}

const char *
agent_peer_endpoint(Agent *a)
{
    return a->peers ? peer_net_endpoint(a->peers) : NULL;
}

static bool
check_shim_timeout(guint seconds, GError **error)
{
    if (seconds == 0 || seconds > SHIM_TIMEOUT_MAX_S) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "shim timeout '%u' is out of range (1 to %u seconds)",
                    seconds, SHIM_TIMEOUT_MAX_S);
        return false;
    }
    return true;
}

bool
agent_set_shim_timeout(Agent *a, guint seconds, GError **error)
{
    if (!check_shim_timeout(seconds, error))
        return false;
    g_atomic_int_set(&a->shim_timeout, (gint)seconds);
    return true;
}

guint
agent_shim_timeout(Agent *a)
{
    return (guint)g_atomic_int_get(&a->shim_timeout);
}

static bool
make_dir(const char *path, int mode, GError **error)
{
    if (g_mkdir_with_parents(path, mode) < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create directory '%s': %s", path,
                    g_strerror(saved));
        return false;
    }
    return true;
}

static void
on_peer_log(PeerLogLevel level, const char *message, gpointer data)
{
    g_log(G_LOG_DOMAIN,
          level == PEER_LOG_WARNING ? G_LOG_LEVEL_WARNING
          : level == PEER_LOG_INFO  ? G_LOG_LEVEL_MESSAGE
                                    : G_LOG_LEVEL_DEBUG,
          "%s", message);
}

/* The peer server and the static peer list, with the host's key pair. */
static bool
agent_start_peers(Agent *a, const AgentConfig *cfg, GError **error)
{
    PeerNetConfig pc = cfg->peer_tuning;
    g_autofree char *ban_dir =
        g_build_filename(cfg->state_dir, "peer-bans", NULL);
    WireKeys keys;

    if (!wire_keys_load_or_create(a->cfg.state_dir, &keys, error))
        return false;
    pc.listen = cfg->peer_listen;
    pc.host_name = cfg->host_name;
    pc.ban_dir = ban_dir;
    memcpy(pc.public_key, keys.public_key, sizeof(pc.public_key));
    memcpy(pc.secret_key, keys.secret_key, sizeof(pc.secret_key));
    pc.log = on_peer_log;
    a->peers = peer_net_new(&pc, error);
    memset(&keys, 0, sizeof(keys));
    memset(pc.secret_key, 0, sizeof(pc.secret_key));
    if (!a->peers)
        return false;
    if (!peer_net_set_peers(a->peers, cfg->peers, cfg->n_peers, error)) {
        g_prefix_error(error, "peer list: ");
        return false;
    }
    g_message("peer server on %s, %u static peers", peer_net_endpoint(a->peers),
              cfg->n_peers);
    return true;
}

/* Copy what the agent keeps of @cfg, its paths made absolute: shims
 * (nbdkit daemons) and QEMU use them too.  The peer settings are used in
 * agent_new only. */
static void
agent_config_copy(AgentConfig *to, const AgentConfig *cfg)
{
    *to = *cfg;
    to->state_dir = g_canonicalize_filename(cfg->state_dir, NULL);
    to->run_dir = g_canonicalize_filename(cfg->run_dir, NULL);
    to->nbdkit = g_strdup(cfg->nbdkit);
    to->plugin = strchr(cfg->plugin, '/')
                     ? g_canonicalize_filename(cfg->plugin, NULL)
                     : g_strdup(cfg->plugin);
    to->shim_group = g_strdup(cfg->shim_group);
    to->host_name = NULL;
    to->peer_listen = NULL;
    to->peers = NULL;
    to->n_peers = 0;
}

/* The directories, with the shim group given the shims' one. */
static bool
agent_make_dirs(Agent *a, GError **error)
{
    const char *group = a->cfg.shim_group;

    if (strlen(a->shims_dir) + SHIM_NAME_BYTES >= UNIX_PATH_BYTES ||
        strlen(a->control_path) >= UNIX_PATH_BYTES) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "run directory '%s' is too long for unix socket paths "
                    "(at most %d bytes in all)",
                    a->cfg.run_dir, UNIX_PATH_BYTES - 1);
        return false;
    }
    if (!make_dir(a->cache_root, STATE_DIR_MODE, error) ||
        !make_dir(a->images_dir, STATE_DIR_MODE, error) ||
        !make_dir(a->cfg.run_dir, RUN_DIR_MODE, error) ||
        !make_dir(a->shims_dir, SHIMS_DIR_MODE, error))
        return false;
    if (group && *group) {
        struct group *gr = getgrnam(group);

        if (!gr || chown(a->shims_dir, (uid_t)-1, gr->gr_gid) < 0)
            g_warning("cannot give group '%s' the shim directory '%s'%s, "
                      "ignoring",
                      group, a->shims_dir, gr ? "" : " (no such group)");
    }
    return true;
}

Agent *
agent_new(const AgentConfig *cfg, GError **error)
{
    g_autoptr(Agent) a = g_new0(Agent, 1);

    agent_config_copy(&a->cfg, cfg);
    a->shim_timeout = (gint)cfg->shim_timeout_s;
    a->cache_root = g_build_filename(a->cfg.state_dir, "cache", NULL);
    a->images_dir = g_build_filename(a->cfg.state_dir, "images", NULL);
    a->shims_dir = g_build_filename(a->cfg.run_dir, "shims", NULL);
    a->control_path = g_build_filename(a->cfg.run_dir, "control.sock", NULL);
    a->fetch_path = g_build_filename(a->cfg.run_dir, "fetch.sock", NULL);
    a->images =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, agent_image_free);
    a->caches = cache_set_new();
    g_mutex_init(&a->lock);
    g_mutex_init(&a->add_lock);

    if (!check_shim_timeout(cfg->shim_timeout_s, error) ||
        !agent_make_dirs(a, error))
        return NULL;
    if (cfg->peer_listen && *cfg->peer_listen &&
        !agent_start_peers(a, cfg, error))
        return NULL;
    agent_images_load(a);
    if (!agent_fetch_start(a, error) || !agent_control_start(a, error))
        return NULL;
    g_message("listening on '%s' (control) and '%s' (fetch); %u images",
              a->control_path, a->fetch_path, g_hash_table_size(a->images));
    return g_steal_pointer(&a);
}

void
agent_free(Agent *a)
{
    if (!a)
        return;
    control_server_stop(a->control);
    agent_fetch_stop(a);
    peer_net_free(a->peers); /* before the images it serves */
    g_hash_table_unref(a->images);
    cache_set_free(a->caches); /* after the caches it borrowed */
    g_mutex_clear(&a->lock);
    g_mutex_clear(&a->add_lock);
    g_free(a->cfg.state_dir);
    g_free(a->cfg.run_dir);
    g_free(a->cfg.nbdkit);
    g_free(a->cfg.plugin);
    g_free(a->cfg.shim_group);
    g_free(a->cache_root);
    g_free(a->images_dir);
    g_free(a->shims_dir);
    g_free(a->control_path);
    g_free(a->fetch_path);
    g_free(a);
}
