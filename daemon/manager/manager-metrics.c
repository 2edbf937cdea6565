/*
 * manager-metrics.c: spored's /metrics (Prometheus text format), on the
 * metrics server's thread: counts from the state layer, clone states from
 * the hosts' last reports, under the manager's lock.  When the database
 * fails, the page says so in a comment and has the rest.
 */
#include "manager-private.h"

static void
metric_head(GString *out, const char *name, const char *help, const char *type)
{
    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help,
                           name, type);
}

static void
metric_value(GString *out, const char *name, const char *help, const char *type,
             gint64 value)
{
    metric_head(out, name, help, type);
    g_string_append_printf(out, "%s %" G_GINT64_FORMAT "\n", name, value);
}

static void
metric_counts(GString *out, const StateCounts *c)
{
    GHashTableIter it;
    gpointer k, v;

    metric_head(out, "spore_commands", "Commands to agents by state.", "gauge");
    g_hash_table_iter_init(&it, c->commands_by_state);
    while (g_hash_table_iter_next(&it, &k, &v))
        g_string_append_printf(out, "spore_commands{state=\"%s\"} %d\n",
                               (char *)k, GPOINTER_TO_INT(v));
    metric_value(out, "spore_command_sends_total",
                 "Times commands were sent to agents (first sends and "
                 "re-sends).",
                 "counter", c->command_sends);
    metric_value(out, "spore_commands_retried_total",
                 "Commands that had to be sent more than once.", "counter",
                 c->commands_retried);
    metric_value(out, "spore_commands_acknowledged_total",
                 "Commands acknowledged by agents.", "counter",
                 c->commands_acknowledged);
    metric_value(out, "spore_clones_desired", "Clones the services want.",
                 "gauge", c->clones_desired);
}

static void
metric_reported_clones(Manager *m, GString *out)
{
    g_autoptr(GHashTable) states =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    GHashTableIter it;
    gpointer k, v;

    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        JsonArray *clones = manager_host_clones(m, ((HostRuntime *)v)->name);

        for (guint i = 0; clones && i < json_array_get_length(clones); i++) {
            JsonNode *n = json_array_get_element(clones, i);
            const char *state =
                JSON_NODE_HOLDS_OBJECT(n)
                    ? json_util_get_string(json_node_get_object(n), "state",
                                           NULL)
                    : NULL;
            guint c;

            if (!state)
                continue;
            c = GPOINTER_TO_UINT(g_hash_table_lookup(states, state));
            g_hash_table_insert(states, g_strdup(state),
                                GUINT_TO_POINTER(c + 1));
        }
    }
    metric_head(out, "spore_clones", "Clones the hosts report, by state.",
                "gauge");
    g_hash_table_iter_init(&it, states);
    while (g_hash_table_iter_next(&it, &k, &v))
        g_string_append_printf(out, "spore_clones{state=\"%s\"} %u\n",
                               (char *)k, GPOINTER_TO_UINT(v));
}

static void
metric_host_images(GString *out, GPtrArray *rows)
{
    static const char *const src[] = {"origin", "peer", "local"};

    /* one family after the other: a family's samples must be contiguous */
    metric_head(out, "spore_fetched_bytes_total",
                "Verified image bytes the hosts fetched, by source.",
                "counter");
    for (guint i = 0; i < rows->len; i++) {
        HostImageRow *r = rows->pdata[i];
        gint64 bytes[] = {r->origin_bytes, r->peer_bytes, r->local_bytes};

        for (guint s = 0; s < G_N_ELEMENTS(src); s++)
            g_string_append_printf(
                out,
                "spore_fetched_bytes_total{host=\"%s\",image=\"%s\","
                "source=\"%s\"} %" G_GINT64_FORMAT "\n",
                r->host, r->image, src[s], bytes[s]);
    }
    metric_head(out, "spore_cached_ratio",
                "Fraction of the image's chunks in the host's cache.", "gauge");
    for (guint i = 0; i < rows->len; i++) {
        HostImageRow *r = rows->pdata[i];

        g_string_append_printf(
            out, "spore_cached_ratio{host=\"%s\",image=\"%s\"} %.4f\n", r->host,
            r->image, r->cached);
    }
}

void
manager_metrics(GString *out, gpointer data)
{
    Manager *m = data;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) images = NULL;
    StateCounts c = {0};

    if (!state_counts(m->db, &c, &err) ||
        !(images = state_host_image_list(m->db, NULL, &err))) {
        g_string_append_printf(out, "# database: %s\n", err->message);
        state_counts_clear(&c);
        metric_reported_clones(m, out);
        return;
    }
    metric_counts(out, &c);
    metric_reported_clones(m, out);
    metric_value(out, "spore_hosts_accepted", "Accepted hosts.", "gauge",
                 c.hosts_accepted);
    metric_value(out, "spore_hosts_lost", "Hosts lost (no report).", "gauge",
                 c.hosts_lost);
    metric_host_images(out, images);
    metric_value(out, "spore_events_total", "Events logged.", "counter",
                 c.events);
    state_counts_clear(&c);
}
