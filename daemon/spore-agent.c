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

#include "agent.h"
#include "spore-config.h"

#define DEFAULT_CONFIG SPORE_SYSCONFDIR "/spore/spore-agent.conf"

static gboolean
on_signal(gpointer data)
{
    g_main_loop_quit(data);
    return G_SOURCE_REMOVE;
}

static char *
key_string(GKeyFile *kf, const char *key, const char *fallback)
{
    char *v = g_key_file_get_string(kf, "agent", key, NULL);

    return v ? v : g_strdup(fallback);
}

static guint
key_uint(GKeyFile *kf, const char *key, guint fallback, GError **error)
{
    g_autoptr(GError) err = NULL;
    guint64 v = g_key_file_get_uint64(kf, "agent", key, &err);

    if (err) {
        if (!g_error_matches(err, G_KEY_FILE_ERROR,
                             G_KEY_FILE_ERROR_KEY_NOT_FOUND) &&
            !g_error_matches(err, G_KEY_FILE_ERROR,
                             G_KEY_FILE_ERROR_GROUP_NOT_FOUND))
            g_propagate_error(error, g_steal_pointer(&err));
        return fallback;
    }
    return (guint)MIN(v, (guint64)G_MAXUINT);
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

    signal(SIGPIPE, SIG_IGN); /* a peer gone: an error from write(), not death */

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

    cfg.state_dir = state_dir
                        ? g_strdup(state_dir)
                        : key_string(kf, "state_dir", "/var/lib/spore/agent");
    cfg.run_dir = run_dir ? g_strdup(run_dir)
                          : key_string(kf, "run_dir", "/run/spore/agent");
    cfg.nbdkit = nbdkit ? g_strdup(nbdkit) : key_string(kf, "nbdkit", "nbdkit");
    cfg.plugin = plugin ? g_strdup(plugin)
                        : key_string(kf, "plugin", SPORE_NBDKIT_PLUGIN);
    cfg.shim_group = shim_group ? g_strdup(shim_group)
                                : key_string(kf, "shim_group", "libvirt-qemu");
    cfg.fetch_workers = fetch_workers > 0
                            ? (guint)fetch_workers
                            : key_uint(kf, "fetch_workers", 8, &err);
    cfg.shim_timeout_s = shim_timeout > 0
                             ? (guint)shim_timeout
                             : key_uint(kf, "shim_timeout", 60, &err);
    cfg.verify_cache = verify_cache || g_key_file_get_boolean(
                                           kf, "agent", "verify_cache", NULL);
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
    if (!agent) {
        fprintf(stderr, "spore-agent: %s\n", err->message);
        return 1;
    }

    loop = g_main_loop_new(NULL, FALSE);
    g_unix_signal_add(SIGTERM, on_signal, loop);
    g_unix_signal_add(SIGINT, on_signal, loop);
    g_main_loop_run(loop);
    g_message("shutting down; shims keep serving");
    /* connection threads may still wait on fetches: leave the rest to exit */
    return 0;
}
