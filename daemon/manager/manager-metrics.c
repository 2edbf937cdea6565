/*
 * manager-metrics.c: spored's /metrics (Prometheus text format), on the
 * metrics server's thread: counts from the state layer, clone states from
 * the hosts' last reports, under the manager's lock.  When the database
 * fails, the page says so in a comment and has the rest.
 */
#include <math.h>

#include "manager-private.h"
#include "scaling.h"

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

/* metric_rules: per service and rule, the value last evaluated and
 * whether its condition holds (services whose rules have no data yet
 * have no sample) */
static void
metric_rules(Manager *m, GString *out, GPtrArray *services)
{
    metric_head(out, "spore_service_rule_value",
                "The metric a scaling rule compares, as last evaluated.",
                "gauge");
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *s = services->pdata[i];
        ScalingDecision *d = g_hash_table_lookup(m->decisions, s->name);

        for (guint r = 0; d && r < d->n_rules; r++) {
            if (!isnan(d->rules[r].value))
                g_string_append_printf(
                    out,
                    "spore_service_rule_value{service=\"%s\",rule=\"%u\"} "
                    "%g\n",
                    s->name, r + 1, d->rules[r].value);
        }
    }
    metric_head(out, "spore_service_rule_holding",
                "1 while a scaling rule's condition holds, else 0.", "gauge");
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *s = services->pdata[i];
        ScalingDecision *d = g_hash_table_lookup(m->decisions, s->name);

        for (guint r = 0; d && r < d->n_rules; r++) {
            if (!isnan(d->rules[r].value))
                g_string_append_printf(
                    out,
                    "spore_service_rule_holding{service=\"%s\",rule=\"%u\"} "
                    "%d\n",
                    s->name, r + 1, d->rules[r].holds ? 1 : 0);
        }
    }
}

/* metric_services: per service, the clones it wants, those placed on a
 * host, those its hosts report running (any generation: during a rollout
 * both count), and when it last scaled */
static void
metric_services(Manager *m, GString *out, GPtrArray *services, GPtrArray *rows,
                GHashTable *last_scaling)
{
    g_autoptr(GHashTable) placed =
        g_hash_table_new(g_str_hash, g_str_equal); /* borrowed keys */
    g_autoptr(GHashTable) running =
        g_hash_table_new(g_str_hash, g_str_equal); /* borrowed keys */
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, m->runtime);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        JsonArray *clones = manager_host_clones(m, ((HostRuntime *)v)->name);

        for (guint i = 0; clones && i < json_array_get_length(clones); i++) {
            JsonNode *n = json_array_get_element(clones, i);
            JsonObject *c =
                JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
            const char *service = json_util_get_string(c, "service", NULL);

            if (!service ||
                g_strcmp0(json_util_get_string(c, "state", NULL), "running"))
                continue;
            g_hash_table_insert(
                running, (gpointer)service,
                GUINT_TO_POINTER(
                    GPOINTER_TO_UINT(g_hash_table_lookup(running, service)) +
                    1));
        }
    }
    for (guint i = 0; i < rows->len; i++) {
        CloneRow *c = rows->pdata[i];

        if (c->host)
            g_hash_table_insert(
                placed, c->service,
                GUINT_TO_POINTER(
                    GPOINTER_TO_UINT(g_hash_table_lookup(placed, c->service)) +
                    1));
    }
    metric_head(out, "spore_service_clones_desired",
                "Clones a service wants (its desired count).", "gauge");
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *s = services->pdata[i];

        g_string_append_printf(
            out,
            "spore_service_clones_desired{service=\"%s\"} %" G_GINT64_FORMAT
            "\n",
            s->name, s->desired);
    }
    metric_head(out, "spore_service_clones_running",
                "Clones of a service its hosts report running.", "gauge");
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *s = services->pdata[i];

        g_string_append_printf(
            out, "spore_service_clones_running{service=\"%s\"} %u\n", s->name,
            GPOINTER_TO_UINT(g_hash_table_lookup(running, s->name)));
    }
    metric_head(out, "spore_service_clones_placed",
                "Clones of a service placed on a host.", "gauge");
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *s = services->pdata[i];

        g_string_append_printf(
            out, "spore_service_clones_placed{service=\"%s\"} %u\n", s->name,
            GPOINTER_TO_UINT(g_hash_table_lookup(placed, s->name)));
    }
    metric_head(out, "spore_service_last_scaling_timestamp_seconds",
                "When a service last scaled (a rule or a schedule), in "
                "seconds since the epoch; no sample before its first.",
                "gauge");
    for (guint i = 0; i < services->len; i++) {
        ServiceRow *s = services->pdata[i];
        double *t = g_hash_table_lookup(last_scaling, s->name);

        if (t)
            g_string_append_printf(
                out,
                "spore_service_last_scaling_timestamp_seconds{service=\"%s\"} "
                "%.3f\n",
                s->name, *t);
    }
    metric_rules(m, out, services);
}

/* metric_hosts: per accepted host, whether it is up and the clones placed
 * on it */
static void
metric_hosts(GString *out, GPtrArray *hosts)
{
    metric_head(out, "spore_host_up",
                "1 while an accepted host reports, 0 once it is lost.",
                "gauge");
    for (guint i = 0; i < hosts->len; i++) {
        HostRow *h = hosts->pdata[i];

        if (h->accepted)
            g_string_append_printf(out, "spore_host_up{host=\"%s\"} %d\n",
                                   h->name, h->lost ? 0 : 1);
    }
    metric_head(out, "spore_host_clones_placed",
                "Desired clones placed on an accepted host.", "gauge");
    for (guint i = 0; i < hosts->len; i++) {
        HostRow *h = hosts->pdata[i];

        if (h->accepted)
            g_string_append_printf(
                out,
                "spore_host_clones_placed{host=\"%s\"} %" G_GINT64_FORMAT "\n",
                h->name, h->clones);
    }
}

/* metric_pass: the reconciliation pass's duration, a histogram */
static void
metric_pass(GString *out, const ManagerStats *st)
{
    metric_head(out, "spore_reconcile_pass_seconds",
                "Duration of the reconciliation passes.", "histogram");
    for (guint i = 0; i < PASS_BUCKETS; i++)
        g_string_append_printf(
            out,
            "spore_reconcile_pass_seconds_bucket{le=\"%g\"} %" G_GUINT64_FORMAT
            "\n",
            manager_pass_bounds[i], st->pass_buckets[i]);
    g_string_append_printf(
        out,
        "spore_reconcile_pass_seconds_bucket{le=\"+Inf\"} "
        "%" G_GUINT64_FORMAT "\n"
        "spore_reconcile_pass_seconds_sum %.6f\n"
        "spore_reconcile_pass_seconds_count %" G_GUINT64_FORMAT "\n",
        st->pass_count, st->pass_sum, st->pass_count);
    metric_head(out, "spore_reconcile_pass_seconds_max",
                "The longest reconciliation pass since spored started.",
                "gauge");
    g_string_append_printf(out, "spore_reconcile_pass_seconds_max %.6f\n",
                           st->pass_max);
}

/* metric_queues: the message path's queues and what they refused */
static void
metric_queues(Manager *m, GString *out)
{
    const ManagerStats *st = &m->stats;

    metric_head(out, "spore_queue_messages",
                "Messages waiting: read from agents and not applied yet "
                "(inbox).",
                "gauge");
    g_string_append_printf(out, "spore_queue_messages{queue=\"inbox\"} %u\n",
                           m->inbox.length);
    metric_value(out, "spore_queue_messages_max",
                 "The most messages the inbox held since spored started.",
                 "gauge", st->inbox_peak);
    metric_value(out, "spore_queue_bytes", "Bytes of the inbox's messages.",
                 "gauge", (gint64)m->inbox_bytes);
    metric_value(out, "spore_messages_received_total",
                 "Messages read from the agents' socket.", "counter",
                 (gint64)st->received);
    metric_value(out, "spore_messages_applied_total",
                 "Messages applied (or dropped as malformed).", "counter",
                 (gint64)st->handled);
    metric_value(out, "spore_messages_answered_at_once_total",
                 "Of the applied, index-get and profile-get answered on "
                 "arrival from answers made before.",
                 "counter", (gint64)st->answered_at_once);
    metric_value(out, "spore_message_batches_total",
                 "Transactions the messages were applied in.", "counter",
                 (gint64)st->batches);
    metric_value(out, "spore_backpressure_total",
                 "Times the inbox was full and reading from the agents "
                 "paused.",
                 "counter", (gint64)st->backpressure);
    metric_value(out, "spore_messages_send_refused_total",
                 "Messages to agents not queued (the host gone or its queue "
                 "full).",
                 "counter", (gint64)st->send_refused);
}

void
manager_metrics(GString *out, gpointer data)
{
    Manager *m = data;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) images = NULL;
    g_autoptr(GPtrArray) services = NULL;
    g_autoptr(GPtrArray) hosts = NULL;
    g_autoptr(GPtrArray) clones = NULL;
    g_autoptr(GHashTable) last_scaling = NULL;
    StateCounts c = {0};

    if (!state_counts(m->db, &c, &err) ||
        !(images = state_host_image_list(m->db, NULL, &err)) ||
        !(services = state_service_list(m->db, &err)) ||
        !(hosts = state_host_list(m->db, false, &err)) ||
        !(clones = state_clone_list(m->db, NULL, NULL, &err)) ||
        !state_last_scaling(m->db, &last_scaling, &err)) {
        g_string_append_printf(out, "# database: %s\n", err->message);
        state_counts_clear(&c);
        metric_reported_clones(m, out);
        metric_pass(out, &m->stats);
        metric_queues(m, out);
        return;
    }
    metric_counts(out, &c);
    metric_value(out, "spore_leader_epoch",
                 "This active manager's leader epoch on a PostgreSQL state "
                 "(0: SQLite, no standby).",
                 "gauge", m->epoch);
    metric_reported_clones(m, out);
    metric_value(out, "spore_hosts_accepted", "Accepted hosts.", "gauge",
                 c.hosts_accepted);
    metric_value(out, "spore_hosts_lost", "Hosts lost (no report).", "gauge",
                 c.hosts_lost);
    metric_services(m, out, services, clones, last_scaling);
    metric_hosts(out, hosts);
    metric_host_images(out, images);
    metric_value(out, "spore_events_total", "Events logged.", "counter",
                 c.events);
    metric_pass(out, &m->stats);
    metric_queues(m, out);
    state_counts_clear(&c);
}
