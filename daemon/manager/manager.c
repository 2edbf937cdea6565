/*
 * manager.c: spored's setup and teardown, and what its parts share: the
 * hosts' runtime records, the manifest cache and events (see manager.h
 * for the threads, manager-private.h for the parts).
 *
 * Invariants:
 *   1. The manifest cache is keyed by "service:generation": a stored
 *      manifest never changes under a generation, so an entry is never
 *      stale; entries of old generations stay until the manager stops
 *      (one per submit).
 *   2. An event is logged only once it is recorded in the database.
 */
#include "manager-private.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <glib-unix.h>
#include <zmq.h>

#include "metrics.h"
#include "spore-error.h"

#define TICK_MS  1000
#define DRAIN_MS 100

static void
host_runtime_free(gpointer p)
{
    HostRuntime *h = p;

    g_free(h->name);
    g_free(h->boot);
    g_free(h->peer_endpoint);
    manager_runtime_set_report(h, NULL, NULL);
    if (h->acked)
        g_hash_table_unref(h->acked);
    g_free(h);
}

HostRuntime *
manager_runtime_get(Manager *m, const char *name)
{
    HostRuntime *h = g_hash_table_lookup(m->runtime, name);

    if (!h) {
        h = g_new0(HostRuntime, 1);
        h->name = g_strdup(name);
        g_hash_table_insert(m->runtime, h->name, h);
    }
    return h;
}

bool
manager_host_is_up(Manager *m, const char *name)
{
    HostRuntime *h = g_hash_table_lookup(m->runtime, name);

    return h && h->last_seen > 0 &&
           g_get_monotonic_time() - h->last_seen <
               (gint64)m->config.lost_after_s * G_USEC_PER_SEC;
}

bool
manager_host_heard_up(Manager *m, const char *name)
{
    HostRuntime *h = g_hash_table_lookup(m->runtime, name);

    return h && h->heard && manager_host_is_up(m, name);
}

JsonArray *
manager_host_clones(Manager *m, const char *host)
{
    HostRuntime *h = host ? g_hash_table_lookup(m->runtime, host) : NULL;

    return h && h->reported ? h->clones : NULL;
}

/* report_view: @c's members as a ReportedClone */
static void
report_view(JsonNode *n, ReportedClone *rc)
{
    JsonObject *c = JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;

    rc->obj = c;
    rc->name = json_util_get_string(c, "name", NULL);
    rc->uuid = json_util_get_string(c, "uuid", NULL);
    rc->service = json_util_get_string(c, "service", NULL);
    rc->state = json_util_get_string(c, "state", "");
    rc->index = c ? json_util_get_int(c, "index", -1) : -1;
    rc->generation = c ? json_util_get_int(c, "generation", -1) : -1;
}

void
manager_runtime_set_report(HostRuntime *h, JsonArray *clones, JsonArray *images)
{
    g_clear_pointer(&h->view_by_name, g_hash_table_unref);
    g_clear_pointer(&h->view, g_free);
    h->n_view = 0;
    g_clear_pointer(&h->clones, json_array_unref);
    g_clear_pointer(&h->images, json_array_unref);
    if (images)
        h->images = json_array_ref(images);
    if (!clones)
        return;
    h->clones = json_array_ref(clones);
    h->n_view = json_array_get_length(clones);
    h->view = g_new(ReportedClone, h->n_view);
    h->view_by_name = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < h->n_view; i++) {
        ReportedClone *rc = &h->view[i];

        report_view(json_array_get_element(clones, i), rc);
        /* the first of a name wins, as a walk of the report would */
        if (rc->name && !g_hash_table_contains(h->view_by_name, rc->name))
            g_hash_table_insert(h->view_by_name, (gpointer)rc->name, rc);
    }
}

const ReportedClone *
manager_reported(Manager *m, const char *host, const char *name)
{
    HostRuntime *h = host ? g_hash_table_lookup(m->runtime, host) : NULL;

    if (!h || !h->reported || !h->view_by_name || !name)
        return NULL;
    return g_hash_table_lookup(h->view_by_name, name);
}

JsonObject *
manager_reported_clone(Manager *m, const char *host, const char *name)
{
    const ReportedClone *rc = manager_reported(m, host, name);

    return rc ? rc->obj : NULL;
}

static void
manager_manifest_free(gpointer p)
{
    ManagerManifest *e = p;

    manifest_free(e->manifest);
    g_free(e->canonical);
    if (e->uuids)
        g_hash_table_unref(e->uuids);
    g_free(e->uuid_image);
    g_free(e);
}

ManagerManifest *
manager_manifest_entry(Manager *m, const char *service, GError **error)
{
    g_autofree char *key = NULL;
    g_autoptr(ServiceRow) row = NULL;
    g_autoptr(GError) err = NULL;
    ManagerManifest *e;
    gint64 generation;

    if (!state_service_generation(m->db, service, &generation, error))
        return NULL;
    if (generation < 0)
        return NULL;
    key = g_strdup_printf("%s:%" G_GINT64_FORMAT, service, generation);
    e = g_hash_table_lookup(m->manifests, key);
    if (e)
        return e;
    if (!state_service_get(m->db, service, &row, error))
        return NULL;
    if (!row)
        return NULL;
    e = g_new0(ManagerManifest, 1);
    e->manifest =
        manifest_parse_data(row->manifest, strlen(row->manifest), NULL, &err);
    if (!e->manifest) {
        /* not the database's fault: skipped by every pass, said each time */
        g_free(e);
        g_warning("service %s: its stored manifest does not parse: %s", service,
                  err ? err->message : "invalid");
        return NULL;
    }
    e->canonical = g_steal_pointer(&row->manifest);
    g_hash_table_insert(m->manifests, g_steal_pointer(&key), e);
    return e;
}

ManagerManifest *
manager_manifest_entry_at(Manager *m, const char *service, gint64 generation,
                          GError **error)
{
    g_autofree char *key =
        g_strdup_printf("%s:%" G_GINT64_FORMAT, service, generation);
    ManagerManifest *e = g_hash_table_lookup(m->manifests, key);

    return e ? e : manager_manifest_entry(m, service, error);
}

Manifest *
manager_manifest(Manager *m, const char *service, GError **error)
{
    ManagerManifest *e = manager_manifest_entry(m, service, error);

    return e ? e->manifest : NULL;
}

bool
manager_event(Manager *m, GError **error, const char *kind, const char *service,
              const char *host, const char *format, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, format);
    msg = g_strdup_vprintf(format, ap);
    va_end(ap);
    if (!state_event_add(m->db, kind, service, host, msg, error))
        return false;
    g_message("%s", msg); /* invariant 2 */
    return true;
}

const double manager_pass_bounds[PASS_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
};

void
manager_note_pass(Manager *m, double seconds)
{
    ManagerStats *st = &m->stats;

    st->pass_count++;
    st->pass_sum += seconds;
    st->pass_last = seconds;
    st->pass_max = MAX(st->pass_max, seconds);
    for (guint i = 0; i < PASS_BUCKETS; i++) {
        if (seconds <= manager_pass_bounds[i])
            st->pass_buckets[i]++;
    }
}

static gboolean
on_tick(gpointer data)
{
    manager_reconcile(data);
    return G_SOURCE_CONTINUE;
}

/* on_inbox: apply the next batch of the inbox; idle priority, so that
 * the pass's timer and the sockets come first between batches */
static gboolean
on_inbox(gpointer data)
{
    Manager *m = data;

    manager_zap_drain(m); /* handshakes wait for these: first */
    manager_router_drain(m);
    if (manager_inbox_apply(m))
        return G_SOURCE_CONTINUE;
    m->inbox_idle = 0;
    return G_SOURCE_REMOVE;
}

static gboolean
on_drain(gpointer data)
{
    Manager *m = data;

    manager_zap_drain(m);
    manager_router_drain(m);
    if (manager_inbox_apply(m) && !m->inbox_idle)
        m->inbox_idle = g_idle_add(on_inbox, m);
    manager_register_drain(m);
    return G_SOURCE_CONTINUE;
}

static gboolean
on_socket(gint fd, GIOCondition cond, gpointer data)
{
    on_drain(data);
    return G_SOURCE_CONTINUE;
}

static gboolean
on_wake(gpointer data)
{
    manager_reconcile(data);
    return G_SOURCE_REMOVE;
}

void
manager_wake(Manager *m)
{
    g_idle_add_full(G_PRIORITY_DEFAULT, on_wake, m, NULL);
}

/* ---- setup ------------------------------------------------------------ */

/* seed_runtime: every accepted host that is not lost counts as seen now,
 * so that mark_lost_hosts() loses it if it stays silent for lost_after_s
 * (the runtime is in memory only: without this, a host down when the
 * manager restarts would keep its clones forever) */
static bool
seed_runtime(Manager *m, GError **error)
{
    g_autoptr(GPtrArray) hosts = state_host_list(m->db, true, error);
    gint64 now = g_get_monotonic_time();

    if (!hosts)
        return false;
    for (guint i = 0; i < hosts->len; i++) {
        HostRow *h = hosts->pdata[i];

        manager_runtime_get(m, h->name)->last_seen = now;
    }
    return true;
}

static guint
watch_socket(Manager *m, void *sock)
{
    int fd = -1;
    size_t len = sizeof(fd);

    zmq_getsockopt(sock, ZMQ_FD, &fd, &len);
    return g_unix_fd_add(fd, G_IO_IN, on_socket, m);
}

StateDb *
manager_state_open(const ManagerConfig *config, GError **error)
{
    StateBackend backend = STATE_BACKEND_SQLITE;
    g_autofree char *path = NULL;

    if (config->state_backend && *config->state_backend &&
        !state_backend_from_string(config->state_backend, &backend)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "[state] backend '%s' is neither sqlite nor postgresql",
                    config->state_backend);
        return NULL;
    }
    if (backend == STATE_BACKEND_POSTGRESQL) {
        StateDb *db = NULL;

        if (!config->state_dsn || !*config->state_dsn) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "[state] backend = postgresql needs [state] dsn");
            return NULL;
        }
        db = state_open_postgresql(config->state_dsn, error);
        if (!db)
            g_prefix_error(error, "[state] dsn: ");
        return db;
    }
    path = g_build_filename(config->state_dir, "spored.db", NULL);
    return state_open(path, error);
}

/* took_over: on a PostgreSQL state, fence the state session at @epoch
 * and say who took over the site */
static bool
took_over(Manager *m, GError **error)
{
    if (m->epoch <= 0)
        return true;
    state_fence(m->db, m->epoch);
    if (!state_begin(m->db, error) ||
        !manager_event(m, error, "manager-active", NULL, NULL,
                       "spored listening on %s is the site's active manager "
                       "(leader epoch %" G_GINT64_FORMAT ")",
                       m->config.listen, m->epoch) ||
        !state_commit(m->db, error)) {
        state_rollback(m->db);
        return false;
    }
    return true;
}

bool
manager_fenced(Manager *m)
{
    bool fenced;

    g_mutex_lock(&m->lock);
    fenced = m->db && state_fenced(m->db);
    g_mutex_unlock(&m->lock);
    return fenced;
}

Manager *
manager_new(const ManagerConfig *config, gint64 epoch, GError **error)
{
    g_autoptr(Manager) m = g_new0(Manager, 1);

    m->config = *config;
    m->config.state_dir = g_strdup(config->state_dir);
    m->config.run_dir = g_strdup(config->run_dir);
    m->config.listen = g_strdup(config->listen);
    m->config.hosts_dir = g_strdup(config->hosts_dir);
    m->config.control_group = g_strdup(config->control_group);
    m->config.metrics_listen = g_strdup(config->metrics_listen);
    m->config.state_backend = g_strdup(config->state_backend);
    m->config.state_dsn = g_strdup(config->state_dsn);
    m->epoch = epoch;
    g_mutex_init(&m->lock);
    m->runtime =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, host_runtime_free);
    m->manifests = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                         manager_manifest_free);
    m->backoff = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    m->failures = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    m->refused = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    m->served = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                      (GDestroyNotify)manager_served_free);
    m->command_keys = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                            (GDestroyNotify)g_ptr_array_unref);
    g_queue_init(&m->inbox);
    mscale_init(m);
    if (g_mkdir_with_parents(m->config.state_dir, 0700) < 0 ||
        g_mkdir_with_parents(m->config.run_dir, 0755) < 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create %s or %s: %s", m->config.state_dir,
                    m->config.run_dir, g_strerror(errno));
        return NULL;
    }
    if (!wire_keys_load_or_create(m->config.state_dir, &m->keys, error))
        return NULL;
    m->db = manager_state_open(&m->config, error);
    if (!m->db || !took_over(m, error) || !seed_runtime(m, error))
        return NULL;

    if (!manager_transport_bind(m, error))
        return NULL;
    if (!manager_control_start(m, error))
        return NULL;
    if (m->config.metrics_listen && *m->config.metrics_listen) {
        /* the first page is where GET / leads */
        static const SporeMetricsPage pages[] = {
            {"/status", "text/html; charset=utf-8", manager_status_page},
            {"/metrics", SPORE_METRICS_TEXT_TYPE, manager_metrics},
        };

        m->metrics = spore_metrics_start_pages(m->config.metrics_listen, pages,
                                               G_N_ELEMENTS(pages), m, error);
        if (!m->metrics)
            return NULL;
        g_message("metrics on http://%s/metrics, status page on "
                  "http://%s/status",
                  m->config.metrics_listen, m->config.metrics_listen);
    }
    m->reg_watch = watch_socket(m, m->reg);
    m->zap_watch = watch_socket(m, m->zap);
    m->router_watch = watch_socket(m, m->router);
    m->drain = g_timeout_add(DRAIN_MS, on_drain, m);
    m->tick = g_timeout_add(TICK_MS, on_tick, m);
    g_message("listening for agents on %s and registrations on %s (CURVE, "
              "key %s); control socket %s",
              m->config.listen, m->register_endpoint, m->keys.public_key,
              m->control_path);
    return g_steal_pointer(&m);
}

void
manager_free(Manager *m)
{
    if (!m)
        return;
    spore_metrics_stop(m->metrics);
    manager_control_stop(m);
    if (m->tick)
        g_source_remove(m->tick);
    if (m->drain)
        g_source_remove(m->drain);
    if (m->inbox_idle)
        g_source_remove(m->inbox_idle);
    if (m->pass_more)
        g_source_remove(m->pass_more);
    manager_peers_stop(m);
    g_clear_pointer(&m->kept_clones, g_ptr_array_unref);
    manager_inbox_clear(m);
    if (m->zap_watch)
        g_source_remove(m->zap_watch);
    if (m->router_watch)
        g_source_remove(m->router_watch);
    if (m->reg_watch)
        g_source_remove(m->reg_watch);
    if (m->reg)
        zmq_close(m->reg);
    g_free(m->register_endpoint);
    if (m->router)
        zmq_close(m->router);
    if (m->zap)
        zmq_close(m->zap);
    if (m->zctx)
        zmq_ctx_term(m->zctx);
    g_clear_pointer(&m->db, state_close);
    g_hash_table_unref(m->runtime);
    g_hash_table_unref(m->manifests);
    g_hash_table_unref(m->backoff);
    g_hash_table_unref(m->failures);
    g_hash_table_unref(m->served);
    g_hash_table_unref(m->refused);
    g_hash_table_unref(m->command_keys);
    g_clear_pointer(&m->dir_keys, g_hash_table_unref);
    mscale_free(m);
    g_mutex_clear(&m->lock);
    g_free(m->config.state_dir);
    g_free(m->config.run_dir);
    g_free(m->config.listen);
    g_free(m->config.hosts_dir);
    g_free(m->config.control_group);
    g_free(m->config.metrics_listen);
    g_free(m->config.state_backend);
    g_free(m->config.state_dsn);
    g_free(m->control_path);
    g_free(m);
}

void
manager_reconfigure(Manager *m, const ManagerConfig *config)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);

    m->config.lost_after_s = config->lost_after_s;
    m->config.resend_s = config->resend_s;
    m->config.shutdown_timeout_s = config->shutdown_timeout_s;
    g_free(m->config.hosts_dir);
    m->config.hosts_dir = g_strdup(config->hosts_dir);
    g_message("configuration reloaded: lost_after=%u s, resend=%u s, "
              "shutdown_timeout=%u s, hosts_dir=%s",
              config->lost_after_s, config->resend_s,
              config->shutdown_timeout_s,
              config->hosts_dir ? config->hosts_dir : "(none)");
}

const char *
manager_public_key(const Manager *m)
{
    return m->keys.public_key;
}
