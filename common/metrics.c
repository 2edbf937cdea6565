/*
 * metrics.c: the Prometheus endpoint (see metrics.h).
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <string.h>
#include <microhttpd.h>

#include "spore-error.h"

struct SporeMetrics {
    struct MHD_Daemon *daemon;
    SporeMetricsFunc fn;
    gpointer data;
    guint port;
};

static enum MHD_Result
reply(struct MHD_Connection *conn, unsigned status, const char *type,
      GString *body)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        body->len, body->str, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret;

    MHD_add_response_header(r, "Content-Type", type);
    ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url,
           const char *method, const char *version, const char *upload,
           size_t *upload_size, void **state)
{
    SporeMetrics *m = cls;
    g_autoptr(GString) body = g_string_new(NULL);

    if (!g_str_equal(method, "GET") && !g_str_equal(method, "HEAD")) {
        g_string_append(body, "only GET\n");
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", body);
    }
    if (!g_str_equal(url, "/metrics")) {
        g_string_append(body, "see /metrics\n");
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", body);
    }
    m->fn(body, m->data);
    return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", body);
}

SporeMetrics *
spore_metrics_start(const char *listen, SporeMetricsFunc fn, gpointer data,
                    GError **error)
{
    g_autofree char *host = NULL;
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    guint64 port;
    SporeMetrics *m;
    const union MHD_DaemonInfo *info;

    if (!colon ||
        !g_ascii_string_to_unsigned(colon + 1, 10, 0, 65535, &port, NULL)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "metrics address '%s' is not ADDRESS:PORT",
                    listen ? listen : "");
        return NULL;
    }
    host = g_strndup(listen, (gsize)(colon - listen));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "metrics address '%s' is not an IPv4 address", host);
        return NULL;
    }
    sa.sin_port = htons((guint16)port);
    m = g_new0(SporeMetrics, 1);
    m->fn = fn;
    m->data = data;
    m->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_request, m, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!m->daemon) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot serve metrics on %s (in use?)", listen);
        g_free(m);
        return NULL;
    }
    info = MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
    m->port = info ? info->port : (guint)port;
    return m;
}

guint
spore_metrics_port(const SporeMetrics *m)
{
    return m->port;
}

void
spore_metrics_stop(SporeMetrics *m)
{
    if (!m)
        return;
    MHD_stop_daemon(m->daemon);
    g_free(m);
}
