/*
 * metrics.h: a small read-only HTTP endpoint served by libmicrohttpd on
 * its own thread, on loopback unless told otherwise: the Prometheus
 * text format at GET /metrics, and whatever other pages the caller
 * gives (spored's HTML status page at GET /status).
 */
#pragma once

#include <glib.h>

typedef struct SporeMetrics SporeMetrics;

/* Append the page's body to @out.  Called on the server's thread (one
 * thread: never two calls at once). */
typedef void (*SporeMetricsFunc)(GString *out, gpointer data);

/* A page of the endpoint: its path ("/metrics"), its Content-Type and
 * the function that writes its body.  Pages of type text/html are sent
 * with a Content-Security-Policy that allows no script, no frame, no
 * request of any kind (inline style only), and never cached. */
typedef struct {
    const char *path;
    const char *content_type;
    SporeMetricsFunc fn;
} SporeMetricsPage;

/* the Content-Type of the Prometheus text format */
#define SPORE_METRICS_TEXT_TYPE "text/plain; version=0.0.4"

/*
 * spore_metrics_start: serve GET /metrics on @listen ("ADDRESS:PORT", an
 * IPv4 address; port 0 picks one).  Other paths get 404, other methods
 * 405.  Same as spore_metrics_start_pages() with the one page.
 */
SporeMetrics *spore_metrics_start(const char *listen, SporeMetricsFunc fn,
                                  gpointer data, GError **error);

/*
 * spore_metrics_start_pages: serve @pages (@n_pages of them, at most
 * SPORE_METRICS_PAGES_MAX; copied, their strings must outlive the
 * server) on @listen, each called with @data.  GET / answers a redirect
 * (302) to the first page.  Other paths get 404, methods other than GET
 * and HEAD 405.
 */
#define SPORE_METRICS_PAGES_MAX 8u
SporeMetrics *spore_metrics_start_pages(const char *listen,
                                        const SporeMetricsPage *pages,
                                        guint n_pages, gpointer data,
                                        GError **error);
guint spore_metrics_port(const SporeMetrics *m);
/* spore_metrics_stop: waits for the request being answered, if any;
 * NULL-safe */
void spore_metrics_stop(SporeMetrics *m);
