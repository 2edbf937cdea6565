/*
 * spore-agent.c: the host agent daemon's entry point.
 *
 * Loads the settings (agent-config.c: the command line, then
 * /etc/spore/spore-agent.conf or --config's file, then the defaults),
 * starts the Agent, the site link when there is a manager, and the metrics
 * endpoint, and runs the main loop until SIGTERM or SIGINT; SIGHUP reloads
 * what can change while running.  Logs go to stderr (the service manager's
 * journal); --verbose adds debug messages.  See spore-agent(8).
 *
 * On shutdown the sockets are closed and the process exits; shims (nbdkit)
 * keep serving, and a restarted agent picks them up.
 */
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
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
#include "virt-detect.h"
#include "wire.h"

#define METRICS_DEFAULT "127.0.0.1:9471"

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
    g_string_append(out, "# HELP spore_agent_fetch_seconds How long a "
                         "chunk's fetch took, by source (stored chunks).\n"
                         "# TYPE spore_agent_fetch_seconds histogram\n");
    for (guint i = 0; i < images->len; i++) {
        AgentImageInfo *im = images->pdata[i];

        for (gsize k = 0; k < G_N_ELEMENTS(src); k++) {
            const char *name = fetch_source_kind_name(src[k]);

            for (guint b = 0; b < FETCH_LATENCY_BUCKETS; b++)
                g_string_append_printf(
                    out,
                    "spore_agent_fetch_seconds_bucket{image=\"%s\",source="
                    "\"%s\",le=\"%g\"} %" G_GUINT64_FORMAT "\n",
                    im->id, name, fetch_latency_bounds[b],
                    im->latency_buckets[src[k]][b]);
            g_string_append_printf(
                out,
                "spore_agent_fetch_seconds_bucket{image=\"%s\",source=\"%s\","
                "le=\"+Inf\"} %" G_GUINT64_FORMAT "\n"
                "spore_agent_fetch_seconds_sum{image=\"%s\",source=\"%s\"} "
                "%.6f\n"
                "spore_agent_fetch_seconds_count{image=\"%s\",source=\"%s\"} "
                "%" G_GUINT64_FORMAT "\n",
                im->id, name, im->fetched_chunks[src[k]], im->id, name,
                im->latency_sum[src[k]], im->id, name,
                im->fetched_chunks[src[k]]);
        }
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
    const AgentCommandLine *command_line;
    Agent *agent;
    AgentLink *link;
} Reload;

/* SIGHUP: re-read the settings that can change while running (the command
 * line's values keep winning: agent_settings_load) */
static gboolean
on_hup(gpointer data)
{
    Reload *r = data;
    g_auto(AgentSettings) s = {0};
    g_autoptr(GError) err = NULL;

    if (!agent_settings_load(r->command_line, &s, &err)) {
        g_warning("SIGHUP: %s; nothing changed", err->message);
        return G_SOURCE_CONTINUE;
    }
    if (!s.config_path) {
        g_message("SIGHUP: no configuration file to reload");
        return G_SOURCE_CONTINUE;
    }
    if (!agent_set_shim_timeout(r->agent, s.shim_timeout_s, &err)) {
        g_warning("SIGHUP: config '%s': %s; nothing changed", s.config_path,
                  err->message);
        return G_SOURCE_CONTINUE;
    }
    /* the manager's list wins where there is a manager */
    if (!r->link && agent_peer_endpoint(r->agent) &&
        !agent_set_peers(r->agent, (PeerInfo *)(void *)s.static_peers->data,
                         s.static_peers->len, &err)) {
        g_warning("SIGHUP: config '%s': peer list: %s; the peer list is "
                  "unchanged",
                  s.config_path, err->message);
        g_clear_error(&err);
    }
    agent_link_set_report_ms(r->link, s.report_ms);
    /* what is in effect, which is the command line's where it gave one */
    g_message("configuration reloaded: report_ms=%u, shim_timeout=%u s (for "
              "shims started from now on), %u static peers; other keys need "
              "a restart, which keeps shims and clones running",
              s.report_ms, agent_shim_timeout(r->agent), s.static_peers->len);
    return G_SOURCE_CONTINUE;
}

/* The site link, when the settings name a manager (else *ret_link is NULL). */
static bool
start_link(const AgentSettings *s, Agent *agent, AgentLink **ret_link,
           GError **error)
{
    g_autofree char *key = NULL;
    g_autofree char *state_dir = NULL;
    AgentLinkConfig lcfg;

    *ret_link = NULL;
    if (!s->manager || !*s->manager)
        return true;
    key = s->manager_key_file ? wire_key_read_file(s->manager_key_file, error)
                              : g_strdup(s->manager_key);
    if (s->manager_key_file && !key)
        return false;
    state_dir = g_canonicalize_filename(s->state_dir, NULL);
    /* the domain type given: also what customization's appliance uses */
    if (s->virt_type)
        spore_kvm_set(g_str_equal(s->virt_type, "kvm"));
    lcfg = (AgentLinkConfig){
        .manager = s->manager,
        .manager_key = key,
        .host_name = s->host_name,
        .state_dir = state_dir,
        .libvirt_uri = s->libvirt_uri,
        .pool = s->pool,
        .pool_dir = s->pool_dir,
        .console_dir = s->console_dir,
        .inspect_cache = s->inspect_cache,
        .virt_type = s->virt_type,
        .report_ms = s->report_ms,
    };
    *ret_link = agent_link_start(agent, &lcfg, error);
    return *ret_link != NULL;
}

/* The Prometheus endpoint: by default 127.0.0.1:9471 if free (another
 * agent on this machine may hold it: a warning), or a configured one,
 * which must work, or none. */
static bool
start_metrics(const char *metrics, Agent *agent, SporeMetrics **ret,
              GError **error)
{
    g_autoptr(GError) err = NULL;

    *ret = NULL;
    if (g_str_equal(metrics, "none"))
        return true;
    if (!*metrics) {
        *ret = spore_metrics_start(METRICS_DEFAULT, agent_metrics, agent, &err);
        if (!*ret)
            g_warning("no metrics endpoint: %s", err->message);
        else
            g_message("metrics on http://" METRICS_DEFAULT "/metrics");
        return true;
    }
    *ret = spore_metrics_start(metrics, agent_metrics, agent, error);
    if (!*ret)
        return false;
    g_message("metrics on http://%s/metrics (port %u)", metrics,
              spore_metrics_port(*ret));
    return true;
}

int
main(int argc, char **argv)
{
    g_autoptr(AgentCommandLine) cl = NULL;
    g_auto(AgentSettings) s = {0};
    g_autoptr(GError) err = NULL;
    g_autoptr(GMainLoop) loop = NULL;
    SporeMetrics *metrics_server = NULL;
    AgentLink *link = NULL;
    Reload reload = {0};
    AgentConfig cfg;
    Agent *agent;

    signal(SIGPIPE, SIG_IGN); /* a peer gone: an error from write() */
    setlocale(LC_ALL, "");
    cl = agent_command_line_parse(&argc, &argv, &err);
    if (!cl) {
        fprintf(stderr, "spore-agent: %s\nTry 'spore-agent --help'.\n",
                err->message);
        return 2;
    }
    if (!agent_settings_load(cl, &s, &err)) {
        fprintf(stderr, "spore-agent: %s\n", err->message);
        return g_error_matches(err, SPORE_ERROR, SPORE_ERROR_USAGE) ? 2 : 1;
    }
    if (s.version) {
        printf("spore-agent %s\n", SPORE_VERSION);
        return 0;
    }
    if (s.verbose)
        g_setenv("G_MESSAGES_DEBUG", "all", TRUE);

    agent_settings_agent_config(&s, &cfg);
    agent = agent_new(&cfg, &err);
    if (!agent || !start_link(&s, agent, &link, &err) ||
        !start_metrics(s.metrics, agent, &metrics_server, &err)) {
        fprintf(stderr, "spore-agent: %s\n", err->message);
        return 1;
    }

    loop = g_main_loop_new(NULL, FALSE);
    g_unix_signal_add(SIGTERM, on_signal, loop);
    g_unix_signal_add(SIGINT, on_signal, loop);
    reload = (Reload){.command_line = cl, .agent = agent, .link = link};
    g_unix_signal_add(SIGHUP, on_hup, &reload);
    sd_notify(0, "READY=1");
    g_main_loop_run(loop);
    sd_notify(0, "STOPPING=1");
    g_message("shutting down; shims and clones keep running");
    if (!agent_link_stop(link)) {
        g_message("a command of the site manager was still running: left "
                  "unfinished (the manager sends it again)");
        spore_metrics_stop(metrics_server);
        _exit(0); /* agent.h: not exit() */
    }
    spore_metrics_stop(metrics_server);
    /* connection threads may still wait on fetches: leave the rest to exit */
    return 0;
}
