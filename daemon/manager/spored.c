/*
 * spored.c: the site manager daemon's main: configuration (GKeyFile, then
 * command-line flags, which win), signals, sd_notify.  See spored(8).
 */
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <glib.h>
#include <glib-unix.h>
#include <systemd/sd-daemon.h>

#include "config-util.h"
#include "manager.h"
#include "spore-config.h"
#include "wire.h"

#define DEFAULT_CONFIG SPORE_SYSCONFDIR "/spore/spored.conf"

static gboolean
on_quit(gpointer data)
{
    sd_notify(0, "STOPPING=1");
    g_main_loop_quit(data);
    return G_SOURCE_REMOVE;
}

typedef struct {
    Manager *m;
    char *config_path;
    ManagerConfig flags; /* what the command line set: it wins */
} Reload;

static gboolean
on_hup(gpointer data)
{
    Reload *r = data;
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) err = NULL;
    ManagerConfig cfg = {0};

    if (!r->config_path) {
        g_message("SIGHUP: no configuration file to reload");
        return G_SOURCE_CONTINUE;
    }
    if (!g_key_file_load_from_file(kf, r->config_path, G_KEY_FILE_NONE, &err)) {
        g_warning("SIGHUP: config '%s': %s; nothing changed", r->config_path,
                  err->message);
        return G_SOURCE_CONTINUE;
    }
    cfg.lost_after_s =
        r->flags.lost_after_s
            ? r->flags.lost_after_s
            : spore_key_uint(kf, "spored", "lost_after", 30, &err);
    cfg.resend_s = r->flags.resend_s
                       ? r->flags.resend_s
                       : spore_key_uint(kf, "spored", "resend", 20, &err);
    cfg.shutdown_timeout_s =
        spore_key_uint(kf, "spored", "shutdown_timeout", 60, &err);
    cfg.hosts_dir = r->flags.hosts_dir
                        ? g_strdup(r->flags.hosts_dir)
                        : spore_key_string(kf, "spored", "hosts_dir",
                                           SPORE_SYSCONFDIR "/spore/hosts.d");
    if (err)
        g_warning("SIGHUP: config '%s': %s; nothing changed", r->config_path,
                  err->message);
    else
        manager_reconfigure(r->m, &cfg);
    g_free(cfg.hosts_dir);
    return G_SOURCE_CONTINUE;
}

/* config_clear: free what main() allocated in @cfg */
static void
config_clear(ManagerConfig *cfg)
{
    g_clear_pointer(&cfg->state_dir, g_free);
    g_clear_pointer(&cfg->run_dir, g_free);
    g_clear_pointer(&cfg->listen, g_free);
    g_clear_pointer(&cfg->hosts_dir, g_free);
    g_clear_pointer(&cfg->control_group, g_free);
    g_clear_pointer(&cfg->metrics_listen, g_free);
}

int
main(int argc, char **argv)
{
    g_autofree char *config_path = NULL;
    g_autofree char *state_dir = NULL;
    g_autofree char *run_dir = NULL;
    g_autofree char *listen = NULL;
    g_autofree char *hosts_dir = NULL;
    g_autofree char *metrics = NULL;
    gint lost_after = -1, resend = -1;
    gboolean verbose = FALSE, version = FALSE, print_key = FALSE;
    GOptionEntry entries[] = {
        {"config", 0, 0, G_OPTION_ARG_FILENAME, &config_path,
         "Configuration file (default " DEFAULT_CONFIG ")", "FILE"},
        {"state-dir", 0, 0, G_OPTION_ARG_FILENAME, &state_dir,
         "State: spored.db, the CURVE key pair (default /var/lib/spore/spored)",
         "DIR"},
        {"run-dir", 0, 0, G_OPTION_ARG_FILENAME, &run_dir,
         "The control socket (default /run/spore/spored)", "DIR"},
        {"listen", 0, 0, G_OPTION_ARG_STRING, &listen,
         "ZeroMQ endpoint for agents (default tcp://127.0.0.1:7400)",
         "ENDPOINT"},
        {"hosts-dir", 0, 0, G_OPTION_ARG_FILENAME, &hosts_dir,
         "Accepted host keys, NAME.pub (default " SPORE_SYSCONFDIR
         "/spore/hosts.d)",
         "DIR"},
        {"lost-after", 0, 0, G_OPTION_ARG_INT, &lost_after,
         "Seconds without a report before a host is lost (default 30)", "S"},
        {"resend", 0, 0, G_OPTION_ARG_INT, &resend,
         "Seconds before an unacknowledged command is sent again (default "
         "20)",
         "S"},
        {"metrics", 0, 0, G_OPTION_ARG_STRING, &metrics,
         "Prometheus endpoint, ADDRESS:PORT, or none (default "
         "127.0.0.1:9470)",
         "ADDR:PORT"},
        {"print-key", 0, 0, G_OPTION_ARG_NONE, &print_key,
         "Print the manager's public key (made if needed) and exit", NULL},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Debug logging", NULL},
        {"version", 'V', 0, G_OPTION_ARG_NONE, &version, "Print the version",
         NULL},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("");
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(GMainLoop) loop = NULL;
    ManagerConfig cfg = {0};
    Reload reload = {0};
    Manager *m;

    signal(SIGPIPE, SIG_IGN);
    setlocale(LC_ALL, "");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(
        ctx, "The spore site manager: places service clones on host agents "
             "and keeps them\nrunning.  See spored(8).");
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "spored: %s\nTry 'spored --help'.\n", err->message);
        return 2;
    }
    if (version) {
        printf("spored %s\n", SPORE_VERSION);
        return 0;
    }
    if (verbose)
        g_setenv("G_MESSAGES_DEBUG", "all", TRUE);
    if (!config_path && g_file_test(DEFAULT_CONFIG, G_FILE_TEST_EXISTS))
        config_path = g_strdup(DEFAULT_CONFIG);
    if (config_path &&
        !g_key_file_load_from_file(kf, config_path, G_KEY_FILE_NONE, &err)) {
        fprintf(stderr, "spored: config '%s': %s\n", config_path, err->message);
        return 1;
    }
    cfg.state_dir = state_dir ? g_strdup(state_dir)
                              : spore_key_string(kf, "spored", "state_dir",
                                                 "/var/lib/spore/spored");
    cfg.run_dir = run_dir ? g_strdup(run_dir)
                          : spore_key_string(kf, "spored", "run_dir",
                                             "/run/spore/spored");
    cfg.listen = listen ? g_strdup(listen)
                        : spore_key_string(kf, "spored", "listen",
                                           "tcp://127.0.0.1:7400");
    cfg.hosts_dir = hosts_dir
                        ? g_strdup(hosts_dir)
                        : spore_key_string(kf, "spored", "hosts_dir",
                                           SPORE_SYSCONFDIR "/spore/hosts.d");
    cfg.control_group = spore_key_string(kf, "spored", "control_group", "");
    cfg.metrics_listen =
        metrics ? g_strdup(metrics)
                : spore_key_string(kf, "spored", "metrics", "127.0.0.1:9470");
    if (g_str_equal(cfg.metrics_listen, "none"))
        cfg.metrics_listen[0] = '\0';
    cfg.lost_after_s =
        lost_after > 0 ? (guint)lost_after
                       : spore_key_uint(kf, "spored", "lost_after", 30, &err);
    cfg.resend_s = resend > 0
                       ? (guint)resend
                       : spore_key_uint(kf, "spored", "resend", 20, &err);
    cfg.shutdown_timeout_s =
        spore_key_uint(kf, "spored", "shutdown_timeout", 60, &err);
    if (err) {
        fprintf(stderr, "spored: config '%s': %s\n", config_path, err->message);
        config_clear(&cfg);
        return 1;
    }
    if (print_key) {
        WireKeys keys;
        bool ok = wire_keys_load_or_create(cfg.state_dir, &keys, &err);

        config_clear(&cfg);
        if (!ok) {
            fprintf(stderr, "spored: %s\n", err->message);
            return 1;
        }
        printf("%s\n", keys.public_key);
        return 0;
    }
    m = manager_new(&cfg, &err);
    config_clear(&cfg);
    if (!m) {
        fprintf(stderr, "spored: %s\n", err->message);
        return 1;
    }
    loop = g_main_loop_new(NULL, FALSE);
    g_unix_signal_add(SIGTERM, on_quit, loop);
    g_unix_signal_add(SIGINT, on_quit, loop);
    reload.m = m;
    reload.config_path = config_path;
    reload.flags.lost_after_s = lost_after > 0 ? (guint)lost_after : 0;
    reload.flags.resend_s = resend > 0 ? (guint)resend : 0;
    reload.flags.hosts_dir = hosts_dir;
    g_unix_signal_add(SIGHUP, on_hup, &reload);
    sd_notify(0, "READY=1");
    g_main_loop_run(loop);
    g_message("shutting down; agents keep their clones running");
    manager_free(m);
    return 0;
}
