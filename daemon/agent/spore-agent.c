/*
 * spore-agent.c: the host agent daemon's entry point.
 *
 * Reads /etc/spore/spore-agent.conf (GKeyFile; --config to choose another),
 * lets command-line flags override it, starts the Agent and runs the main
 * loop until SIGTERM or SIGINT.  Logs go to stderr (the service manager's
 * journal); --verbose adds debug messages.  See spore-agent(8).
 *
 * On shutdown the sockets are closed and the process exits; shims (nbdkit)
 * keep serving, and a restarted agent picks them up.
 */
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <glib.h>
#include <glib-unix.h>
#include <json-glib/json-glib.h>
#include <systemd/sd-daemon.h>

#include "agent.h"
#include "config-util.h"
#include "fetch-protocol.h"
#include "metrics.h"
#include "spore-config.h"
#include "spore-error.h"
#include "wire.h"

#define DEFAULT_CONFIG SPORE_SYSCONFDIR "/spore/spore-agent.conf"

static gboolean
on_signal(gpointer data)
{
    g_main_loop_quit(data);
    return G_SOURCE_REMOVE;
}

/* agent_metrics: the images' counters, from the agent's image list */
static void
agent_metrics(GString *out, gpointer data)
{
    g_autoptr(GPtrArray) images = agent_image_list(data);
    static const struct {
        const char *name, *type, *help;
        gsize offset; /* of a guint64 in AgentImageInfo */
    } plain[] = {
        {"spore_agent_cached_chunks", "gauge", "Chunks in the cache.",
         G_STRUCT_OFFSET(AgentImageInfo, cached_chunks)},
        {"spore_agent_chunks", "gauge", "Chunks of the image.",
         G_STRUCT_OFFSET(AgentImageInfo, chunks)},
        {"spore_agent_chunks_rejected_total", "counter",
         "Fetched chunks that failed verification (never stored).",
         G_STRUCT_OFFSET(AgentImageInfo, rejected_chunks)},
        {"spore_agent_fetch_failures_total", "counter",
         "Chunk fetches that failed from every source.",
         G_STRUCT_OFFSET(AgentImageInfo, failed_fetches)},
        {"spore_agent_queued_chunks", "gauge", "Chunks waiting to be fetched.",
         G_STRUCT_OFFSET(AgentImageInfo, queued_chunks)},
    };
    static const FetchSourceKind src[] = {
        FETCH_SOURCE_ORIGIN, FETCH_SOURCE_PEER, FETCH_SOURCE_LOCAL};

    g_string_append(out, "# HELP spore_agent_fetched_bytes_total Verified "
                         "bytes fetched, by source.\n"
                         "# TYPE spore_agent_fetched_bytes_total counter\n");
    for (guint i = 0; i < images->len; i++) {
        AgentImageInfo *im = images->pdata[i];

        for (gsize k = 0; k < G_N_ELEMENTS(src); k++)
            g_string_append_printf(
                out,
                "spore_agent_fetched_bytes_total{image=\"%s\",source=\"%s\"}"
                " %" G_GUINT64_FORMAT "\n",
                im->id, fetch_source_kind_name(src[k]),
                im->fetched_bytes[src[k]]);
    }
    for (gsize m = 0; m < G_N_ELEMENTS(plain); m++) {
        g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n",
                               plain[m].name, plain[m].help, plain[m].name,
                               plain[m].type);
        for (guint i = 0; i < images->len; i++) {
            AgentImageInfo *im = images->pdata[i];

            g_string_append_printf(
                out, "%s{image=\"%s\"} %" G_GUINT64_FORMAT "\n", plain[m].name,
                im->id, G_STRUCT_MEMBER(guint64, im, plain[m].offset));
        }
    }
}

typedef struct {
    const char *config_path;
    Agent *agent;
    AgentLink *link;
    bool shim_timeout_flag; /* given on the command line: it wins */
} Reload;

/*
 * The static peer list: a group "[peer NAME]" per peer with "endpoint"
 * (tcp://ADDRESS:PORT) and "key" (Z85) or "key_file".  A site manager's
 * list replaces it when the agent has one.
 */
static GArray *
load_static_peers(GKeyFile *kf, GError **error)
{
    g_autoptr(GArray) peers = g_array_new(FALSE, TRUE, sizeof(PeerInfo));
    g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);

    g_array_set_clear_func(peers, (GDestroyNotify)peer_info_clear);
    for (guint i = 0; groups && groups[i]; i++) {
        PeerInfo p = {0};
        g_autofree char *key_file = NULL;

        if (!g_str_has_prefix(groups[i], "peer "))
            continue;
        p.name = g_strstrip(g_strdup(groups[i] + strlen("peer ")));
        p.endpoint = spore_key_string(kf, groups[i], "endpoint", NULL);
        key_file = spore_key_string(kf, groups[i], "key_file", NULL);
        p.public_key = key_file ? wire_key_read_file(key_file, error)
                                : spore_key_string(kf, groups[i], "key", NULL);
        if (!p.endpoint || !p.public_key) {
            if (error && !*error)
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                            "[%s] needs endpoint and key (or key_file)",
                            groups[i]);
            peer_info_clear(&p);
            return NULL;
        }
        g_array_append_val(peers, p);
    }
    return g_steal_pointer(&peers);
}

/* SIGHUP: re-read the settings that can change while running */
static gboolean
on_hup(gpointer data)
{
    Reload *r = data;
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) peers = NULL;
    guint report_ms, shim_timeout;

    if (!r->config_path) {
        g_message("SIGHUP: no configuration file to reload");
        return G_SOURCE_CONTINUE;
    }
    if (!g_key_file_load_from_file(kf, r->config_path, G_KEY_FILE_NONE, &err)) {
        g_warning("SIGHUP: config '%s': %s; nothing changed", r->config_path,
                  err->message);
        return G_SOURCE_CONTINUE;
    }
    report_ms = spore_key_uint(kf, "agent", "report_ms", 2000, &err);
    shim_timeout = spore_key_uint(kf, "agent", "shim_timeout",
                                  SHIM_TIMEOUT_DEFAULT_S, &err);
    if (err) {
        g_warning("SIGHUP: config '%s': %s; nothing changed", r->config_path,
                  err->message);
        return G_SOURCE_CONTINUE;
    }
    peers = load_static_peers(kf, &err);
    if (!peers) {
        g_warning("SIGHUP: config '%s': %s; nothing changed", r->config_path,
                  err->message);
        return G_SOURCE_CONTINUE;
    }
    if (!r->shim_timeout_flag &&
        !agent_set_shim_timeout(r->agent, shim_timeout, &err)) {
        g_warning("SIGHUP: config '%s': %s; nothing changed", r->config_path,
                  err->message);
        return G_SOURCE_CONTINUE;
    }
    /* the manager's list wins where there is a manager */
    if (!r->link && agent_peer_endpoint(r->agent) &&
        !agent_set_peers(r->agent, (PeerInfo *)(void *)peers->data, peers->len,
                         &err)) {
        g_warning("SIGHUP: config '%s': peer list: %s; the peer list is "
                  "unchanged",
                  r->config_path, err->message);
        g_clear_error(&err);
    }
    agent_link_set_report_ms(r->link, report_ms);
    /* the timeout in effect: the command line's, when it gave one */
    g_message("configuration reloaded: report_ms=%u, shim_timeout=%u s%s (for "
              "shims started from now on), %u static peers; other keys need "
              "a restart, which keeps shims and clones running",
              report_ms, agent_shim_timeout(r->agent),
              r->shim_timeout_flag ? " (from the command line)" : "",
              peers->len);
    return G_SOURCE_CONTINUE;
}

int
main(int argc, char **argv)
{
    g_autofree char *config_path = NULL;
    g_autofree char *state_dir = NULL;
    g_autofree char *run_dir = NULL;
    g_autofree char *nbdkit = NULL;
    g_autofree char *plugin = NULL;
    g_autofree char *shim_group = NULL;
    g_autofree char *manager = NULL;
    g_autofree char *manager_key_file = NULL;
    g_autofree char *host_name = NULL;
    g_autofree char *pool = NULL;
    g_autofree char *pool_dir = NULL;
    g_autofree char *console_dir = NULL;
    g_autofree char *virt_type = NULL;
    g_autofree char *metrics = NULL;
    g_autofree char *peer_listen = NULL;
    g_autoptr(GArray) static_peers = NULL;
    SporeMetrics *metrics_server = NULL;
    AgentLinkConfig lcfg = {0};
    AgentLink *link = NULL;
    Reload reload = {0};
    gint fetch_workers = -1;
    gint shim_timeout = -1;
    gboolean verify_cache = FALSE;
    gboolean verbose = FALSE;
    gboolean version = FALSE;
    GOptionEntry entries[] = {
        {"config", 0, 0, G_OPTION_ARG_FILENAME, &config_path,
         "Configuration file (default " DEFAULT_CONFIG ")", "FILE"},
        {"state-dir", 0, 0, G_OPTION_ARG_FILENAME, &state_dir,
         "Caches and image records (default /var/lib/spore/agent)", "DIR"},
        {"run-dir", 0, 0, G_OPTION_ARG_FILENAME, &run_dir,
         "Sockets and PID files (default /run/spore/agent)", "DIR"},
        {"nbdkit", 0, 0, G_OPTION_ARG_FILENAME, &nbdkit,
         "The nbdkit binary (default nbdkit)", "PATH"},
        {"plugin", 0, 0, G_OPTION_ARG_FILENAME, &plugin,
         "The spore nbdkit plugin (default " SPORE_NBDKIT_PLUGIN ")", "PATH"},
        {"shim-group", 0, 0, G_OPTION_ARG_STRING, &shim_group,
         "Group given the shim sockets, for QEMU (default libvirt-qemu)",
         "GROUP"},
        {"fetch-workers", 0, 0, G_OPTION_ARG_INT, &fetch_workers,
         "Fetch threads per image (default 8)", "N"},
        {"shim-timeout", 0, 0, G_OPTION_ARG_INT, &shim_timeout,
         "Seconds a guest read waits for a missing chunk (default 60)", "S"},
        {"verify-cache", 0, 0, G_OPTION_ARG_NONE, &verify_cache,
         "Verify every cached chunk when an image is loaded", NULL},
        {"manager", 0, 0, G_OPTION_ARG_STRING, &manager,
         "The site manager's endpoint, tcp://HOST:PORT (default: none, a "
         "host on its own)",
         "ENDPOINT"},
        {"manager-key-file", 0, 0, G_OPTION_ARG_FILENAME, &manager_key_file,
         "File holding the manager's public key (spored --print-key)", "FILE"},
        {"host-name", 0, 0, G_OPTION_ARG_STRING, &host_name,
         "This host's name in the site (default: the system's host name)",
         "NAME"},
        {"pool", 0, 0, G_OPTION_ARG_STRING, &pool,
         "libvirt storage pool for clone overlays (default spore)", "NAME"},
        {"pool-dir", 0, 0, G_OPTION_ARG_FILENAME, &pool_dir,
         "Its directory when it is created (default /var/lib/spore/clones)",
         "DIR"},
        {"console-dir", 0, 0, G_OPTION_ARG_FILENAME, &console_dir,
         "Clone console logs (default /var/log/spore/console)", "DIR"},
        {"metrics", 0, 0, G_OPTION_ARG_STRING, &metrics,
         "Prometheus endpoint, ADDRESS:PORT, or none (default "
         "127.0.0.1:9471)",
         "ADDR:PORT"},
        {"peer-listen", 0, 0, G_OPTION_ARG_STRING, &peer_listen,
         "Serve chunks to peers on tcp://ADDRESS:PORT, or none (default: "
         "[peers] listen, else none)",
         "ENDPOINT"},
        {"virt-type", 0, 0, G_OPTION_ARG_STRING, &virt_type,
         "Domain type for kvm manifests: kvm or qemu (default: probe KVM)",
         "TYPE"},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Log debug messages",
         NULL},
        {"version", 'V', 0, G_OPTION_ARG_NONE, &version, "Show the version",
         NULL},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- spore host agent");
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(GMainLoop) loop = NULL;
    AgentConfig cfg = {0};
    Agent *agent;

    signal(SIGPIPE,
           SIG_IGN); /* a peer gone: an error from write(), not death */

    setlocale(LC_ALL, "");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(
        ctx, "Serves spore images to local guests through nbdkit shims, "
             "fetching their chunks\non demand.  See spore-agent(8).");
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "spore-agent: %s\nTry 'spore-agent --help'.\n",
                err->message);
        return 2;
    }
    if (version) {
        printf("spore-agent %s\n", SPORE_VERSION);
        return 0;
    }
    if (verbose)
        g_setenv("G_MESSAGES_DEBUG", "all", TRUE);

    if (!config_path && g_file_test(DEFAULT_CONFIG, G_FILE_TEST_EXISTS))
        config_path = g_strdup(DEFAULT_CONFIG);
    if (config_path &&
        !g_key_file_load_from_file(kf, config_path, G_KEY_FILE_NONE, &err)) {
        fprintf(stderr, "spore-agent: config '%s': %s\n", config_path,
                err->message);
        return 1;
    }

    cfg.state_dir = state_dir ? g_strdup(state_dir)
                              : spore_key_string(kf, "agent", "state_dir",
                                                 "/var/lib/spore/agent");
    cfg.run_dir =
        run_dir ? g_strdup(run_dir)
                : spore_key_string(kf, "agent", "run_dir", "/run/spore/agent");
    cfg.nbdkit = nbdkit ? g_strdup(nbdkit)
                        : spore_key_string(kf, "agent", "nbdkit", "nbdkit");
    cfg.plugin =
        plugin ? g_strdup(plugin)
               : spore_key_string(kf, "agent", "plugin", SPORE_NBDKIT_PLUGIN);
    cfg.shim_group = shim_group ? g_strdup(shim_group)
                                : spore_key_string(kf, "agent", "shim_group",
                                                   "libvirt-qemu");
    cfg.fetch_workers =
        fetch_workers > 0
            ? (guint)fetch_workers
            : spore_key_uint(kf, "agent", "fetch_workers", 8, &err);
    cfg.shim_timeout_s =
        shim_timeout != -1 /* given: 0 or less is refused below */
            ? (guint)MAX(shim_timeout, 0)
            : spore_key_uint(kf, "agent", "shim_timeout",
                             SHIM_TIMEOUT_DEFAULT_S, &err);
    cfg.verify_cache = verify_cache || g_key_file_get_boolean(
                                           kf, "agent", "verify_cache", NULL);
    if (!peer_listen)
        peer_listen = spore_key_string(kf, "peers", "listen", NULL);
    if (peer_listen && g_str_equal(peer_listen, "none"))
        g_clear_pointer(&peer_listen, g_free);
    cfg.peer_listen = peer_listen;
    cfg.host_name = host_name ? g_strdup(host_name)
                              : spore_key_string(kf, "agent", "host_name",
                                                 g_get_host_name());
    cfg.peer_tuning.window = spore_key_uint(kf, "peers", "window", 0, &err);
    cfg.peer_tuning.hedge_ms = spore_key_uint(kf, "peers", "hedge_ms", 0, &err);
    cfg.peer_tuning.dead_ms = spore_key_uint(kf, "peers", "dead_ms", 0, &err);
    cfg.peer_tuning.strikes_max =
        spore_key_uint(kf, "peers", "strikes", 0, &err);
    cfg.peer_tuning.delegate_ms =
        spore_key_uint(kf, "peers", "delegate_ms", 0, &err);
    if (!err && (static_peers = load_static_peers(kf, &err))) {
        cfg.peers = (PeerInfo *)(void *)static_peers->data;
        cfg.n_peers = static_peers->len;
    }
    if (err) {
        fprintf(stderr, "spore-agent: config '%s': %s\n", config_path,
                err->message);
        return 1;
    }

    agent = agent_new(&cfg, &err);
    g_free(cfg.state_dir);
    g_free(cfg.run_dir);
    g_free(cfg.nbdkit);
    g_free(cfg.plugin);
    g_free(cfg.shim_group);
    g_free(cfg.host_name);
    if (!agent) {
        fprintf(stderr, "spore-agent: %s\n", err->message);
        return 1;
    }

    /* the site manager, when there is one */
    lcfg.manager = manager ? g_strdup(manager)
                           : spore_key_string(kf, "agent", "manager", NULL);
    if (lcfg.manager && *lcfg.manager) {
        g_autofree char *key_file =
            manager_key_file
                ? g_strdup(manager_key_file)
                : spore_key_string(kf, "agent", "manager_key_file", NULL);

        lcfg.manager_key =
            key_file ? wire_key_read_file(key_file, &err)
                     : spore_key_string(kf, "agent", "manager_key", NULL);
        if (err) {
            fprintf(stderr, "spore-agent: %s\n", err->message);
            return 1;
        }
        lcfg.host_name = host_name ? g_strdup(host_name)
                                   : spore_key_string(kf, "agent", "host_name",
                                                      g_get_host_name());
        {
            g_autofree char *dir =
                state_dir ? g_strdup(state_dir)
                          : spore_key_string(kf, "agent", "state_dir",
                                             "/var/lib/spore/agent");
            lcfg.state_dir = g_canonicalize_filename(dir, NULL);
        }
        lcfg.libvirt_uri = spore_key_string(kf, "agent", "libvirt_uri", NULL);
        lcfg.pool =
            pool ? g_strdup(pool) : spore_key_string(kf, "agent", "pool", NULL);
        lcfg.pool_dir = pool_dir
                            ? g_strdup(pool_dir)
                            : spore_key_string(kf, "agent", "pool_dir", NULL);
        lcfg.console_dir =
            console_dir ? g_strdup(console_dir)
                        : spore_key_string(kf, "agent", "console_dir", NULL);
        lcfg.virt_type = virt_type
                             ? g_strdup(virt_type)
                             : spore_key_string(kf, "agent", "virt_type", NULL);
        if (lcfg.virt_type && !g_str_equal(lcfg.virt_type, "kvm") &&
            !g_str_equal(lcfg.virt_type, "qemu")) {
            fprintf(stderr, "spore-agent: virt_type is kvm or qemu\n");
            return 2;
        }
        lcfg.report_ms = spore_key_uint(kf, "agent", "report_ms", 2000, &err);
        link = agent_link_start(agent, &lcfg, &err);
        g_free(lcfg.manager_key);
        g_free(lcfg.host_name);
        g_free(lcfg.state_dir);
        g_free(lcfg.libvirt_uri);
        g_free(lcfg.pool);
        g_free(lcfg.pool_dir);
        g_free(lcfg.console_dir);
        g_free(lcfg.virt_type);
        if (!link) {
            fprintf(stderr, "spore-agent: %s\n", err->message);
            return 1;
        }
    }
    g_free(lcfg.manager);
    if (!metrics)
        metrics = spore_key_string(kf, "agent", "metrics", "");
    if (!*metrics) {
        /* the default: a busy port (another agent on this machine) is a
         * warning, not a failure; a configured one must work */
        metrics_server =
            spore_metrics_start("127.0.0.1:9471", agent_metrics, agent, &err);
        if (!metrics_server)
            g_warning("no metrics endpoint: %s", err->message);
        else
            g_message("metrics on http://127.0.0.1:9471/metrics");
        g_clear_error(&err);
    } else if (!g_str_equal(metrics, "none")) {
        metrics_server =
            spore_metrics_start(metrics, agent_metrics, agent, &err);
        if (!metrics_server) {
            fprintf(stderr, "spore-agent: %s\n", err->message);
            return 1;
        }
        g_message("metrics on http://%s/metrics (port %u)", metrics,
                  spore_metrics_port(metrics_server));
    }

    loop = g_main_loop_new(NULL, FALSE);
    g_unix_signal_add(SIGTERM, on_signal, loop);
    g_unix_signal_add(SIGINT, on_signal, loop);
    reload.config_path = config_path;
    reload.agent = agent;
    reload.link = link;
    reload.shim_timeout_flag = shim_timeout != -1;
    g_unix_signal_add(SIGHUP, on_hup, &reload);
    sd_notify(0, "READY=1");
    g_main_loop_run(loop);
    sd_notify(0, "STOPPING=1");
    g_message("shutting down; shims and clones keep running");
    agent_link_stop(link);
    spore_metrics_stop(metrics_server);
    /* connection threads may still wait on fetches: leave the rest to exit */
    return 0;
}
