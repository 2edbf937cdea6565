/*
 * metrics.c: the read-only HTTP endpoint (see metrics.h).
 *
 * libmicrohttpd answers on one internal thread: the page functions are
 * called there, one at a time; the page table is copied at start and
 * never changes after, so it needs no lock.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <string.h>
#include <microhttpd.h>

#include "spore-error.h"

/* what an HTML page may do: show itself with its inline style; no
 * script, no frame, no request (images, fonts, forms included) */
#define HTML_SECURITY_POLICY                                           \
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; " \
    "form-action 'none'; frame-ancestors 'none'"

struct SporeMetrics {
    struct MHD_Daemon *daemon;
    SporeMetricsPage pages[SPORE_METRICS_PAGES_MAX];
    guint n_pages;
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
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (g_str_has_prefix(type, "text/html")) {
        MHD_add_response_header(r, "Content-Security-Policy",
                                HTML_SECURITY_POLICY);
        MHD_add_response_header(r, "Cache-Control", "no-store");
    }
    ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* redirect: 302 to @path, with a body that links to it */
static enum MHD_Result
redirect(struct MHD_Connection *conn, const char *path)
{
    g_autoptr(GString) body = g_string_new(NULL);
    struct MHD_Response *r;
    enum MHD_Result ret;

    g_string_printf(body, "see %s\n", path);
    r = MHD_create_response_from_buffer(body->len, body->str,
                                        MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "text/plain");
    MHD_add_response_header(r, "Location", path);
    ret = MHD_queue_response(conn, MHD_HTTP_FOUND, r);
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
    if (g_str_equal(url, "/"))
        return redirect(conn, m->pages[0].path);
    for (guint i = 0; i < m->n_pages; i++) {
        if (g_str_equal(url, m->pages[i].path)) {
            m->pages[i].fn(body, m->data);
            return reply(conn, MHD_HTTP_OK, m->pages[i].content_type, body);
        }
    }
    g_string_append(body, "see");
    for (guint i = 0; i < m->n_pages; i++)
        g_string_append_printf(body, " %s", m->pages[i].path);
    g_string_append_c(body, '\n');
    return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", body);
}

SporeMetrics *
spore_metrics_start(const char *listen, SporeMetricsFunc fn, gpointer data,
                    GError **error)
{
    const SporeMetricsPage page = {"/metrics", SPORE_METRICS_TEXT_TYPE, fn};

    return spore_metrics_start_pages(listen, &page, 1, data, error);
}

SporeMetrics *
spore_metrics_start_pages(const char *listen, const SporeMetricsPage *pages,
                          guint n_pages, gpointer data, GError **error)
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
    g_return_val_if_fail(n_pages >= 1 && n_pages <= SPORE_METRICS_PAGES_MAX,
                         NULL);
    m = g_new0(SporeMetrics, 1);
    memcpy(m->pages, pages, n_pages * sizeof(*pages));
    m->n_pages = n_pages;
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
