/*
 * spored.c: the site manager daemon's main: configuration, signals,
 * sd_notify.  See spored(8).
 *
 * One table (config_keys) drives the configuration: each key's command-line
 * option, its spored.conf key, its default and whether SIGHUP applies it.
 * A value comes from the command line, else the file, else the default
 * (config_resolve); the help text's defaults are written from the table.
 */
#include <locale.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <glib.h>
#include <glib-unix.h>
#include <systemd/sd-daemon.h>

#include "config-util.h"
#include "log-batch.h"
#include "manager-leader.h"
#include "manager-state.h"
#include "manager.h"
#include "spore-config.h"
#include "spore-error.h"
#include "wire.h"

#define DEFAULT_CONFIG SPORE_SYSCONFDIR "/spore/spored.conf"
#define CONFIG_GROUP   "spored"
#define STATE_GROUP    "state" /* backend, dsn, lease: the file only */
/* the lease of the active manager, seconds ([state] lease) */
#define DEFAULT_LEASE_S 10
/* spored's exit status when another manager took over (EX_TEMPFAIL) */
#define SPORED_EXIT_LOST 75

typedef enum {
    KEY_STRING, /* a char * of ManagerConfig */
    KEY_PATH,   /* the same, a file name */
    KEY_UINT,   /* a guint of ManagerConfig, at least ConfigKey.min */
} KeyType;

typedef struct {
    const char *key;    /* in [spored] of spored.conf */
    const char *option; /* --OPTION, NULL: the file only */
    KeyType type;
    const char *fallback;
    bool reloads; /* SIGHUP applies it */
    guint min;    /* KEY_UINT: the smallest value that makes sense */
    gsize offset; /* in ManagerConfig */
    const char *help;
    const char *arg;
} ConfigKey;

#define FIELD(f) offsetof(ManagerConfig, f)

static const ConfigKey config_keys[] = {
    {"state_dir", "state-dir", KEY_PATH, "/var/lib/spore/spored", false, 0,
     FIELD(state_dir), "State: spored.db, the CURVE key pair", "DIR"},
    {"run_dir", "run-dir", KEY_PATH, "/run/spore/spored", false, 0,
     FIELD(run_dir), "The control socket", "DIR"},
    {"listen", "listen", KEY_STRING, "tcp://127.0.0.1:7400", false, 0,
     FIELD(listen), "ZeroMQ endpoint for agents", "ENDPOINT"},
    {"hosts_dir", "hosts-dir", KEY_PATH, SPORE_SYSCONFDIR "/spore/hosts.d",
     true, 0, FIELD(hosts_dir), "Accepted host keys, NAME.pub", "DIR"},
    {"lost_after", "lost-after", KEY_UINT, "30", true, 1, FIELD(lost_after_s),
     "Seconds without a report before a host is lost", "S"},
    {"resend", "resend", KEY_UINT, "20", true, 1, FIELD(resend_s),
     "Seconds before an unacknowledged command is sent again", "S"},
    {"metrics", "metrics", KEY_STRING, "127.0.0.1:9470", false, 0,
     FIELD(metrics_listen),
     "Endpoint of /metrics and the status page /status, ADDRESS:PORT, or "
     "none",
     "ADDR:PORT"},
    {"control_group", NULL, KEY_STRING, "", false, 0, FIELD(control_group),
     NULL, NULL},
    {"shutdown_timeout", NULL, KEY_UINT, "60", true, 0,
     FIELD(shutdown_timeout_s), NULL, NULL},
};

#define N_CONFIG_KEYS G_N_ELEMENTS(config_keys)

/* what the command line set, per config_keys entry (NULL: not given) */
typedef struct {
    char *values[N_CONFIG_KEYS];
} ConfigFlags;

static void
config_flags_clear(ConfigFlags *flags)
{
    for (guint i = 0; i < N_CONFIG_KEYS; i++)
        g_clear_pointer(&flags->values[i], g_free);
}

static char **
field_string(ManagerConfig *cfg, const ConfigKey *k)
{
    return (char **)((char *)cfg + k->offset);
}

static guint *
field_uint(ManagerConfig *cfg, const ConfigKey *k)
{
    return (guint *)((char *)cfg + k->offset);
}

/* config_clear: free the strings of @cfg */
static void
config_clear(ManagerConfig *cfg)
{
    for (guint i = 0; i < N_CONFIG_KEYS; i++) {
        if (config_keys[i].type != KEY_UINT)
            g_clear_pointer(field_string(cfg, &config_keys[i]), g_free);
    }
    g_clear_pointer(&cfg->state_backend, g_free);
    g_clear_pointer(&cfg->state_dsn, g_free);
}

/*
 * state_config: [state] backend and dsn of @kf into @cfg (the file
 * only: a DSN may hold a password, which a command line would show to
 * every user of the machine).  The DSN itself is checked when spored
 * connects (manager_state_open).
 */
static bool
state_config(GKeyFile *kf, const char *file, ManagerConfig *cfg, GError **error)
{
    g_autofree char *backend =
        spore_key_string(kf, STATE_GROUP, "backend", "sqlite");
    StateBackend b;

    if (!state_backend_from_string(backend, &b)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "config '%s': [state] backend '%s' is neither sqlite nor "
                    "postgresql",
                    file ? file : "(defaults)", backend);
        return false;
    }
    cfg->state_dsn = spore_key_string(kf, STATE_GROUP, "dsn", NULL);
    if (b == STATE_BACKEND_POSTGRESQL &&
        (!cfg->state_dsn || !*cfg->state_dsn)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "config '%s': [state] backend = postgresql needs "
                    "[state] dsn",
                    file ? file : "(defaults)");
        return false;
    }
    if (!g_key_file_has_key(kf, STATE_GROUP, "lease", NULL)) {
        cfg->lease_s = DEFAULT_LEASE_S;
    } else {
        g_autofree char *text =
            spore_key_string(kf, STATE_GROUP, "lease", NULL);
        guint64 v = 0;

        if (!text || !g_ascii_string_to_unsigned(text, 10, MANAGER_LEASE_MIN_S,
                                                 3600, &v, NULL)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "config '%s': [state] lease '%s' is not a number of "
                        "seconds from %d to 3600",
                        file ? file : "(defaults)", text ? text : "",
                        MANAGER_LEASE_MIN_S);
            return false;
        }
        cfg->lease_s = (guint)v;
    }
    cfg->state_backend = g_steal_pointer(&backend);
    return true;
}

/* key_value: @k's value as text: the flag, else the file, else the
 * default; owned by the caller */
static char *
key_value(GKeyFile *kf, const ConfigKey *k, const char *flag)
{
    if (flag)
        return g_strdup(flag);
    return spore_key_string(kf, CONFIG_GROUP, k->key, k->fallback);
}

/* set_key: @k in @cfg from @value (taken); @file: where it came from,
 * NULL: the command line */
static bool
set_key(ManagerConfig *cfg, const ConfigKey *k, char *value, const char *file,
        GError **error)
{
    guint64 n = 0;

    if (k->type != KEY_UINT) {
        if (g_str_equal(k->key, "metrics") && g_str_equal(value, "none"))
            value[0] = '\0';
        *field_string(cfg, k) = value;
        return true;
    }
    if (!g_ascii_string_to_unsigned(value, 10, k->min, G_MAXUINT, &n, NULL)) {
        if (file)
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "config '%s': %s '%s' is not a whole number >= %u",
                        file, k->key, value, k->min);
        else
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                        "--%s '%s' is not a whole number >= %u", k->option,
                        value, k->min);
        g_free(value);
        return false;
    }
    *field_uint(cfg, k) = (guint)n;
    g_free(value);
    return true;
}

/*
 * config_resolve: @cfg from @flags, @kf and the defaults; with @reloading,
 * only the keys SIGHUP applies.  Fails on a value that is not valid (the
 * strings set so far stay in @cfg: config_clear()).
 */
static bool
config_resolve(GKeyFile *kf, const char *file, const ConfigFlags *flags,
               bool reloading, ManagerConfig *cfg, GError **error)
{
    for (guint i = 0; i < N_CONFIG_KEYS; i++) {
        const ConfigKey *k = &config_keys[i];

        if (reloading && !k->reloads)
            continue;
        if (!set_key(cfg, k, key_value(kf, k, flags->values[i]),
                     flags->values[i] ? NULL : (file ? file : "(defaults)"),
                     error))
            return false;
    }
    return true;
}

/* option_entries: the GOptionEntry of every key with an option, writing
 * into @flags, then @extra; the help strings are kept in @strings */
static GArray *
option_entries(ConfigFlags *flags, const GOptionEntry *extra,
               GPtrArray *strings)
{
    GArray *entries = g_array_new(TRUE, TRUE, sizeof(GOptionEntry));

    for (guint i = 0; i < N_CONFIG_KEYS; i++) {
        const ConfigKey *k = &config_keys[i];
        char *help;
        GOptionEntry e = {0};

        if (!k->option)
            continue;
        help = g_strdup_printf("%s (default %s)", k->help, k->fallback);
        g_ptr_array_add(strings, help);
        e.long_name = k->option;
        e.arg =
            k->type == KEY_PATH ? G_OPTION_ARG_FILENAME : G_OPTION_ARG_STRING;
        e.arg_data = &flags->values[i];
        e.description = help;
        e.arg_description = k->arg;
        g_array_append_val(entries, e);
    }
    for (; extra->long_name; extra++)
        g_array_append_vals(entries, extra, 1);
    return entries;
}

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
    const ConfigFlags *flags; /* what the command line set: it wins */
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
    if (!r->m) {
        /* a standby's manager starts with the settings it was started
         * with: say so rather than drop the signal silently */
        g_message("SIGHUP: a standby has no manager to reconfigure yet; "
                  "restart it to read the file again");
        return G_SOURCE_CONTINUE;
    }
    if (!g_key_file_load_from_file(kf, r->config_path, G_KEY_FILE_NONE, &err))
        g_prefix_error(&err, "config '%s': ", r->config_path);
    if (!err && config_resolve(kf, r->config_path, r->flags, true, &cfg, &err))
        manager_reconfigure(r->m, &cfg);
    else
        g_warning("SIGHUP: %s; nothing changed", err->message);
    config_clear(&cfg);
    return G_SOURCE_CONTINUE;
}

static int
print_key(const ManagerConfig *cfg)
{
    g_autoptr(GError) err = NULL;
    WireKeys keys;

    if (!wire_keys_load_or_create(cfg->state_dir, &keys, &err)) {
        fprintf(stderr, "spored: %s\n", err->message);
        return 1;
    }
    printf("%s\n", keys.public_key);
    return 0;
}

/*
 * migrate_state: copy STATE_DIR/spored.db into the PostgreSQL database of
 * [state] dsn (empty, its schema made by this spored), in one
 * transaction; spored must not run on either meanwhile.
 */
static int
migrate_state(const ManagerConfig *cfg)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = g_build_filename(cfg->state_dir, "spored.db", NULL);
    StateDb *from = NULL, *to = NULL;
    gint64 rows = 0;
    int rc = 1;

    if (g_strcmp0(cfg->state_backend, "postgresql") != 0) {
        fprintf(stderr,
                "spored: --migrate-state copies %s into the PostgreSQL "
                "database of [state] dsn: set [state] backend = "
                "postgresql\n",
                path);
        return 1;
    }
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
        fprintf(stderr,
                "spored: --migrate-state: no state to migrate: "
                "'%s' does not exist\n",
                path);
        return 1;
    }
    from = state_open(path, &err);
    if (from)
        to = manager_state_open(cfg, &err);
    if (to && state_copy(from, to, &rows, &err)) {
        printf("spored: copied %" G_GINT64_FORMAT " rows from %s to "
               "PostgreSQL ([state] dsn)\n",
               rows, path);
        rc = 0;
    } else {
        fprintf(stderr, "spored: --migrate-state: %s\n", err->message);
    }
    state_close(to);
    state_close(from);
    return rc;
}

/* what serve() shares with its callbacks */
typedef struct {
    const ManagerConfig *cfg;
    GMainLoop *loop;
    Manager *m;
    ManagerLease *lease; /* PostgreSQL only */
    Reload reload;
    int rc;
} Serve;

/* serve_fail: stop the loop with @rc after saying why */
static void
serve_fail(Serve *s, int rc, const char *why)
{
    g_warning("%s", why);
    s->rc = rc;
    g_main_loop_quit(s->loop);
}

/* on_active: this spored holds the site's lease (or has SQLite): start
 * the manager */
static void
on_active(gint64 epoch, const char *before, gpointer data)
{
    Serve *s = data;
    g_autoptr(GError) err = NULL;

    if (epoch > 0)
        g_message("active: this spored holds the site's lease (leader epoch "
                  "%" G_GINT64_FORMAT "; before: %s)",
                  epoch, before ? before : "none");
    s->m = manager_new(s->cfg, epoch, &err);
    if (!s->m) {
        fprintf(stderr, "spored: %s\n", err->message); /* as before: stderr */
        s->rc = 1;
        g_main_loop_quit(s->loop);
        return;
    }
    s->reload.m = s->m;
    sd_notify(0, epoch > 0 ? "STATUS=active" : "READY=1");
}

/*
 * on_lease_tick: once a second, whether this spored is still the active
 * manager; exit 75 (EX_TEMPFAIL) when not — the unit restarts it, and
 * it waits as a standby (manager-leader.h)
 */
static gboolean
on_lease_tick(gpointer data)
{
    Serve *s = data;
    g_autofree char *why = NULL;

    if (s->m && manager_fenced(s->m))
        why = g_strdup("a write found another manager active");
    else if (!manager_lease_check(s->lease, &why) && !s->m) {
        /* the key is not the site's: starting again will not help */
        serve_fail(s, 1, why);
        return G_SOURCE_REMOVE;
    }
    if (!why)
        return G_SOURCE_CONTINUE;
    {
        g_autofree char *text = g_strdup_printf(
            "no longer the site's active manager: %s; exiting (a new start "
            "waits as a standby)",
            why);

        serve_fail(s, SPORED_EXIT_LOST, text);
    }
    return G_SOURCE_REMOVE;
}

/* serve: run the manager until SIGTERM or SIGINT, or until it loses the
 * site's lease (PostgreSQL) */
static int
serve(const ManagerConfig *cfg, char *config_path, const ConfigFlags *flags)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
    Serve s = {cfg, loop, NULL, NULL, {NULL, config_path, flags}, 0};
    StateDb *first = NULL;
    WireKeys keys;

    g_unix_signal_add(SIGTERM, on_quit, loop);
    g_unix_signal_add(SIGINT, on_quit, loop);
    g_unix_signal_add(SIGHUP, on_hup, &s.reload);
    if (g_strcmp0(cfg->state_backend, "postgresql") != 0) {
        on_active(0, NULL, &s);
    } else if (!wire_keys_load_or_create(cfg->state_dir, &keys, &err) ||
               !(first = manager_state_open(cfg, &err))) {
        /* settings that do not work now will not later: say so */
        fprintf(stderr, "spored: %s\n", err->message);
        return 1;
    } else {
        g_message("standby until this spored holds the site's lease "
                  "([state] lease = %u s)",
                  cfg->lease_s);
        s.lease =
            manager_lease_start(cfg, keys.public_key, first, on_active, &s);
        g_timeout_add_seconds(1, on_lease_tick, &s);
        sd_notify(0, "READY=1\nSTATUS=standby");
    }
    if (s.rc == 0)
        g_main_loop_run(loop);
    if (s.m)
        g_message("shutting down; agents keep their clones running");
    manager_free(s.m);
    manager_lease_stop(s.lease);
    return s.rc;
}

int
main(int argc, char **argv)
{
    g_autofree char *config_path = NULL;
    gboolean verbose = FALSE, version = FALSE, want_key = FALSE;
    gboolean want_migrate = FALSE;
    const GOptionEntry extra[] = {
        {"config", 0, 0, G_OPTION_ARG_FILENAME, &config_path,
         "Configuration file (default " DEFAULT_CONFIG ")", "FILE"},
        {"print-key", 0, 0, G_OPTION_ARG_NONE, &want_key,
         "Print the manager's public key (made if needed) and exit", NULL},
        {"migrate-state", 0, 0, G_OPTION_ARG_NONE, &want_migrate,
         "Copy STATE_DIR/spored.db into the PostgreSQL database of "
         "[state] dsn, and exit",
         NULL},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Debug logging", NULL},
        {"version", 'V', 0, G_OPTION_ARG_NONE, &version, "Print the version",
         NULL},
        {NULL},
    };
    g_autoptr(GPtrArray) strings = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GOptionContext) ctx = g_option_context_new("");
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) entries = NULL;
    ConfigFlags flags = {0};
    ManagerConfig cfg = {0};
    int rc;

    signal(SIGPIPE, SIG_IGN);
    setlocale(LC_ALL, "");
    log_batch_install(); /* a pass's events in one write: log-batch.h */
    entries = option_entries(&flags, extra, strings);
    g_option_context_add_main_entries(ctx, (GOptionEntry *)entries->data, NULL);
    g_option_context_set_description(
        ctx, "The spore site manager: places service clones on host agents "
             "and keeps them\nrunning.  See spored(8).");
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "spored: %s\nTry 'spored --help'.\n", err->message);
        config_flags_clear(&flags);
        return 2;
    }
    if (version) {
        printf("spored %s\n", SPORE_VERSION);
        config_flags_clear(&flags);
        return 0;
    }
    if (verbose)
        g_setenv("G_MESSAGES_DEBUG", "all", TRUE);
    if (!config_path && g_file_test(DEFAULT_CONFIG, G_FILE_TEST_EXISTS))
        config_path = g_strdup(DEFAULT_CONFIG);
    if (config_path &&
        !g_key_file_load_from_file(kf, config_path, G_KEY_FILE_NONE, &err)) {
        fprintf(stderr, "spored: config '%s': %s\n", config_path, err->message);
        rc = 1;
    } else if (!config_resolve(kf, config_path, &flags, false, &cfg, &err) ||
               !state_config(kf, config_path, &cfg, &err)) {
        fprintf(stderr, "spored: %s\n", err->message);
        rc = 1;
    } else if (want_migrate) {
        rc = migrate_state(&cfg);
    } else {
        rc = want_key ? print_key(&cfg) : serve(&cfg, config_path, &flags);
    }
    config_clear(&cfg);
    config_flags_clear(&flags);
    return rc;
}
