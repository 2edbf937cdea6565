/*
 * agent-config.c: spore-agent's settings, from one table: each row is a
 * command-line option, a configuration file key ([group] key), or both,
 * with its default and its field in AgentSettings.  The rule is the same
 * for every row: the command line wins, then the file, then the default.
 * SIGHUP re-reads the file through the same table with the same command
 * line, so a value given on the command line keeps winning.
 *
 * Values are parsed from text whatever their source, so that a bad value
 * is reported the same way on the command line and in the file.
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <string.h>

#include "config-util.h"
#include "fetch-protocol.h"
#include "spore-config.h"
#include "spore-error.h"
#include "wire.h"

#define DEFAULT_CONFIG SPORE_SYSCONFDIR "/spore/spore-agent.conf"

typedef enum {
    SETTING_TEXT, /* char * */
    SETTING_PATH, /* char *, a file name on the command line */
    SETTING_UINT, /* guint */
    SETTING_BOOL, /* bool: a flag on the command line */
} SettingType;

typedef struct {
    const char *option; /* --OPTION; NULL: the file only */
    char short_name;
    const char *group; /* [group] key in the file; NULL: command line only */
    const char *key;
    SettingType type;
    const char *text_default; /* TEXT, PATH: NULL is unset */
    guint64 uint_default;     /* UINT */
    gsize offset;             /* of the field in AgentSettings */
    const char *help, *arg;
} Setting;

#define AS(field) G_STRUCT_OFFSET(AgentSettings, field)
#define PATH_OPT(opt, grp, k, def, field, help, arg)               \
    {                                                              \
        opt, 0, grp, k, SETTING_PATH, def, 0, AS(field), help, arg \
    }
#define TEXT_OPT(opt, grp, k, def, field, help, arg)               \
    {                                                              \
        opt, 0, grp, k, SETTING_TEXT, def, 0, AS(field), help, arg \
    }
#define UINT_OPT(opt, grp, k, def, field, help, arg)                  \
    {                                                                 \
        opt, 0, grp, k, SETTING_UINT, NULL, def, AS(field), help, arg \
    }

static const Setting agent_settings_table[] = {
    PATH_OPT("config", NULL, NULL, NULL, config_path,
             "Configuration file (default " DEFAULT_CONFIG ")", "FILE"),
    PATH_OPT("state-dir", "agent", "state_dir", "/var/lib/spore/agent",
             state_dir,
             "Caches and image records (default /var/lib/spore/agent)", "DIR"),
    PATH_OPT("run-dir", "agent", "run_dir", "/run/spore/agent", run_dir,
             "Sockets and PID files (default /run/spore/agent)", "DIR"),
    PATH_OPT("nbdkit", "agent", "nbdkit", "nbdkit", nbdkit,
             "The nbdkit binary (default nbdkit)", "PATH"),
    PATH_OPT("plugin", "agent", "plugin", SPORE_NBDKIT_PLUGIN, plugin,
             "The spore nbdkit plugin (default " SPORE_NBDKIT_PLUGIN ")",
             "PATH"),
    TEXT_OPT("shim-group", "agent", "shim_group", "libvirt-qemu", shim_group,
             "Group given the shim sockets, for QEMU (default libvirt-qemu)",
             "GROUP"),
    UINT_OPT("fetch-workers", "agent", "fetch_workers", 8, fetch_workers,
             "Fetch threads per image (default 8)", "N"),
    UINT_OPT("shim-timeout", "agent", "shim_timeout", SHIM_TIMEOUT_DEFAULT_S,
             shim_timeout_s,
             "Seconds a guest read waits for a missing chunk (default 60)",
             "S"),
    {"verify-cache", 0, "agent", "verify_cache", SETTING_BOOL, NULL, 0,
     AS(verify_cache), "Verify every cached chunk when an image is loaded",
     NULL},
    TEXT_OPT("manager", "agent", "manager", NULL, manager,
             "The site manager's endpoint, tcp://HOST:PORT (default: none, a "
             "host on its own)",
             "ENDPOINT"),
    PATH_OPT(
        "manager-key-file", "agent", "manager_key_file", NULL, manager_key_file,
        "File holding the manager's public key (spored --print-key)", "FILE"),
    TEXT_OPT(NULL, "agent", "manager_key", NULL, manager_key, NULL, NULL),
    TEXT_OPT("host-name", "agent", "host_name", NULL, host_name,
             "This host's name in the site (default: the system's host name)",
             "NAME"),
    TEXT_OPT(NULL, "agent", "libvirt_uri", NULL, libvirt_uri, NULL, NULL),
    TEXT_OPT("pool", "agent", "pool", NULL, pool,
             "libvirt storage pool for clone overlays (default spore)", "NAME"),
    PATH_OPT("pool-dir", "agent", "pool_dir", NULL, pool_dir,
             "Its directory when it is created (default "
             "/var/lib/spore/clones)",
             "DIR"),
    PATH_OPT("console-dir", "agent", "console_dir", NULL, console_dir,
             "Clone console logs (default /var/log/spore/console)", "DIR"),
    PATH_OPT("inspect-cache", "agent", "inspect_cache", NULL, inspect_cache,
             "Where customization keeps what inspecting a master found "
             "(default /var/cache/spore/inspect)",
             "DIR"),
    UINT_OPT(NULL, "agent", "report_ms", AGENT_REPORT_MS_DEFAULT, report_ms,
             NULL, NULL),
    TEXT_OPT("metrics", "agent", "metrics", "", metrics,
             "Prometheus endpoint, ADDRESS:PORT, or none (default "
             "127.0.0.1:9471)",
             "ADDR:PORT"),
    TEXT_OPT("peer-listen", "peers", "listen", NULL, peer_listen,
             "Serve chunks to peers on tcp://ADDRESS:PORT, or none (default: "
             "[peers] listen, else none)",
             "ENDPOINT"),
    UINT_OPT(NULL, "peers", "window", 0, peer_tuning.window, NULL, NULL),
    UINT_OPT(NULL, "peers", "hedge_ms", 0, peer_tuning.hedge_ms, NULL, NULL),
    UINT_OPT(NULL, "peers", "dead_ms", 0, peer_tuning.dead_ms, NULL, NULL),
    UINT_OPT(NULL, "peers", "strikes", 0, peer_tuning.strikes_max, NULL, NULL),
    UINT_OPT(NULL, "peers", "delegate_ms", 0, peer_tuning.delegate_ms, NULL,
             NULL),
    TEXT_OPT("virt-type", "agent", "virt_type", NULL, virt_type,
             "Domain type for kvm manifests: kvm or qemu (default: probe KVM)",
             "TYPE"),
    {"verbose", 'v', NULL, NULL, SETTING_BOOL, NULL, 0, AS(verbose),
     "Log debug messages", NULL},
    {"version", 'V', NULL, NULL, SETTING_BOOL, NULL, 0, AS(version),
     "Show the version", NULL},
};

#define N_SETTINGS G_N_ELEMENTS(agent_settings_table)

/* what the command line gave, by row of agent_settings_table */
struct AgentCommandLine {
    char *text[N_SETTINGS];
    gboolean flag[N_SETTINGS];
};

void
agent_command_line_free(AgentCommandLine *cl)
{
    if (!cl)
        return;
    for (gsize i = 0; i < N_SETTINGS; i++)
        g_free(cl->text[i]);
    g_free(cl);
}

AgentCommandLine *
agent_command_line_parse(int *argc, char ***argv, GError **error)
{
    g_autoptr(AgentCommandLine) cl = g_new0(AgentCommandLine, 1);
    g_autoptr(GOptionContext) ctx = g_option_context_new("- spore host agent");
    GOptionEntry entries[N_SETTINGS + 1];
    guint n = 0;

    for (gsize i = 0; i < N_SETTINGS; i++) {
        const Setting *s = &agent_settings_table[i];
        GOptionEntry e = {
            s->option,    s->short_name, 0,     G_OPTION_ARG_STRING,
            &cl->text[i], s->help,       s->arg};

        if (!s->option)
            continue;
        if (s->type == SETTING_PATH)
            e.arg = G_OPTION_ARG_FILENAME;
        if (s->type == SETTING_BOOL) {
            e.arg = G_OPTION_ARG_NONE;
            e.arg_data = &cl->flag[i];
        }
        entries[n++] = e;
    }
    entries[n] = (GOptionEntry){NULL};
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(
        ctx, "Serves spore images to local guests through nbdkit shims, "
             "fetching their chunks\non demand.  See spore-agent(8).");
    if (!g_option_context_parse(ctx, argc, argv, error))
        return NULL;
    return g_steal_pointer(&cl);
}

/* One row's value: the command line's, else the file's, else the default.
 * @kf may be NULL (no file). */
static bool
setting_resolve(const Setting *s, const AgentCommandLine *cl, gsize row,
                GKeyFile *kf, AgentSettings *out, GError **error)
{
    gpointer field = G_STRUCT_MEMBER_P(out, s->offset);
    bool in_file =
        kf && s->group && g_key_file_has_key(kf, s->group, s->key, NULL);
    g_autofree char *text = NULL;
    guint64 v = 0;

    if (s->type == SETTING_BOOL) {
        *(bool *)field =
            cl->flag[row] ||
            (in_file && g_key_file_get_boolean(kf, s->group, s->key, NULL));
        return true;
    }
    if (cl->text[row])
        text = g_strdup(cl->text[row]);
    else if (in_file)
        text = g_key_file_get_string(kf, s->group, s->key, error);
    if (in_file && !cl->text[row] && !text)
        return false;
    if (s->type != SETTING_UINT) {
        *(char **)field =
            text ? g_steal_pointer(&text) : g_strdup(s->text_default);
        return true;
    }
    if (!text)
        v = s->uint_default;
    else if (!g_ascii_string_to_unsigned(g_strstrip(text), 10, 0, G_MAXUINT, &v,
                                         error)) {
        g_prefix_error(error, "%s%s: ", cl->text[row] ? "--" : "",
                       cl->text[row] ? s->option : s->key);
        return false;
    }
    *(guint *)field = (guint)v;
    return true;
}

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

/* What no row says: the defaults that are not constants, and checks. */
static bool
settings_finish(AgentSettings *s, GError **error)
{
    if (!s->host_name)
        s->host_name = g_strdup(g_get_host_name());
    if (s->peer_listen && g_str_equal(s->peer_listen, "none"))
        g_clear_pointer(&s->peer_listen, g_free);
    if (s->virt_type && !g_str_equal(s->virt_type, "kvm") &&
        !g_str_equal(s->virt_type, "qemu")) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "virt_type is kvm or qemu, not '%s'", s->virt_type);
        return false;
    }
    return true;
}

bool
agent_settings_load(const AgentCommandLine *cl, AgentSettings *ret,
                    GError **error)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_auto(AgentSettings) s = {0};
    bool have_file;

    /* the file first: --config, else the default one when it exists */
    if (!setting_resolve(&agent_settings_table[0], cl, 0, NULL, &s, error))
        return false;
    if (!s.config_path && g_file_test(DEFAULT_CONFIG, G_FILE_TEST_EXISTS))
        s.config_path = g_strdup(DEFAULT_CONFIG);
    have_file = s.config_path != NULL;
    if (have_file &&
        !g_key_file_load_from_file(kf, s.config_path, G_KEY_FILE_NONE, error)) {
        g_prefix_error(error, "config '%s': ", s.config_path);
        return false;
    }
    for (gsize i = 1; i < N_SETTINGS; i++) {
        if (!setting_resolve(&agent_settings_table[i], cl, i,
                             have_file ? kf : NULL, &s, error)) {
            if (have_file)
                g_prefix_error(error, "config '%s': ", s.config_path);
            return false;
        }
    }
    s.static_peers = load_static_peers(kf, error);
    if (!s.static_peers) {
        g_prefix_error(error, "config '%s': ", s.config_path);
        return false;
    }
    if (!settings_finish(&s, error))
        return false;
    *ret = s;
    memset(&s, 0, sizeof(s));
    return true;
}

void
agent_settings_clear(AgentSettings *s)
{
    for (gsize i = 0; i < N_SETTINGS; i++) {
        const Setting *row = &agent_settings_table[i];

        if (row->type == SETTING_TEXT || row->type == SETTING_PATH)
            g_free(G_STRUCT_MEMBER(char *, s, row->offset));
    }
    if (s->static_peers)
        g_array_unref(s->static_peers);
    memset(s, 0, sizeof(*s));
}

void
agent_settings_agent_config(const AgentSettings *s, AgentConfig *ret)
{
    *ret = (AgentConfig){
        .state_dir = s->state_dir,
        .run_dir = s->run_dir,
        .nbdkit = s->nbdkit,
        .plugin = s->plugin,
        .shim_group = s->shim_group,
        .fetch_workers = s->fetch_workers,
        .shim_timeout_s = s->shim_timeout_s,
        .verify_cache = s->verify_cache,
        .host_name = s->host_name,
        .peer_listen = s->peer_listen,
        .peers = (PeerInfo *)(void *)s->static_peers->data,
        .n_peers = s->static_peers->len,
        .peer_tuning = s->peer_tuning,
    };
}
