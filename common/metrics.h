/*
 * metrics.h: a Prometheus text-format endpoint (GET /metrics) served by
 * libmicrohttpd on its own thread, on loopback unless told otherwise.
 */
#pragma once

#include <glib.h>

typedef struct SporeMetrics SporeMetrics;

/* Append the exposition text (lines "name{labels} value") to @out.
 * Called on the server's thread. */
typedef void (*SporeMetricsFunc)(GString *out, gpointer data);

/*
 * spore_metrics_start: serve GET /metrics on @listen ("ADDRESS:PORT", an
 * IPv4 address; port 0 picks one).  Other paths get 404, other methods
 * 405.
 */
SporeMetrics *spore_metrics_start(const char *listen, SporeMetricsFunc fn,
                                  gpointer data, GError **error);
guint spore_metrics_port(const SporeMetrics *m);
void spore_metrics_stop(SporeMetrics *m);
