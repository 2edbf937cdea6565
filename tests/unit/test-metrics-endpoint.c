/*
 * test-metrics-endpoint.c: the daemons' read-only HTTP endpoint
 * (common/metrics.c): each page at its path with its type, GET / leading
 * to the first page, unknown paths and methods refused, HTML pages sent
 * with their security policy; real requests over loopback TCP.
 */
#include <criterion/criterion.h>
#include <gio/gio.h>
#include <string.h>

#include "metrics.h"

static void
text_page(GString *out, gpointer data)
{
    g_string_append_printf(out, "text %s\n", (const char *)data);
}

static void
html_page(GString *out, gpointer data)
{
    g_string_append_printf(out, "<p>html %s</p>\n", (const char *)data);
}

static const SporeMetricsPage PAGES[] = {
    {"/status", "text/html; charset=utf-8", html_page},
    {"/metrics", SPORE_METRICS_TEXT_TYPE, text_page},
};

/* request: the whole answer (head and body) of @method @path to port
 * @port of 127.0.0.1, HTTP/1.0 */
static char *
request(guint port, const char *method, const char *path)
{
    g_autoptr(GSocketClient) client = g_socket_client_new();
    g_autoptr(GSocketConnection) conn = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *req = g_strdup_printf(
        "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method, path);
    GString *answer = g_string_new(NULL);
    char buf[4096];
    gssize n;

    conn = g_socket_client_connect_to_host(client, "127.0.0.1", (guint16)port,
                                           NULL, &err);
    cr_assert_not_null(conn, "connect: %s", err ? err->message : "?");
    cr_assert(g_output_stream_write_all(
        g_io_stream_get_output_stream(G_IO_STREAM(conn)), req, strlen(req),
        NULL, NULL, &err));
    while ((n = g_input_stream_read(
                g_io_stream_get_input_stream(G_IO_STREAM(conn)), buf,
                sizeof(buf), NULL, &err)) > 0)
        g_string_append_len(answer, buf, n);
    cr_assert_geq(n, 0, "read: %s", err ? err->message : "?");
    return g_string_free(answer, FALSE);
}

static SporeMetrics *
start(void)
{
    g_autoptr(GError) err = NULL;
    SporeMetrics *m = spore_metrics_start_pages(
        "127.0.0.1:0", PAGES, G_N_ELEMENTS(PAGES), (gpointer) "x", &err);

    cr_assert_not_null(m, "%s", err ? err->message : "?");
    return m;
}

Test(metrics, serves_each_page_at_its_path_with_its_type)
{
    SporeMetrics *m = start();
    g_autofree char *status = request(spore_metrics_port(m), "GET", "/status");
    g_autofree char *metrics =
        request(spore_metrics_port(m), "GET", "/metrics");

    cr_expect(g_str_has_prefix(status, "HTTP/1.0 200") ||
              g_str_has_prefix(status, "HTTP/1.1 200"));
    cr_expect(strstr(status, "Content-Type: text/html; charset=utf-8\r\n"));
    cr_expect(g_str_has_suffix(status, "\r\n\r\n<p>html x</p>\n"));
    cr_expect(strstr(metrics, "Content-Type: text/plain; version=0.0.4\r\n"));
    cr_expect(g_str_has_suffix(metrics, "\r\n\r\ntext x\n"));
    spore_metrics_stop(m);
}

Test(metrics, html_pages_forbid_scripts_and_caching_text_pages_need_not)
{
    SporeMetrics *m = start();
    g_autofree char *status = request(spore_metrics_port(m), "GET", "/status");
    g_autofree char *metrics =
        request(spore_metrics_port(m), "GET", "/metrics");

    cr_expect(strstr(status, "Content-Security-Policy: default-src 'none'; "
                             "style-src 'unsafe-inline';"));
    cr_expect(strstr(status, "Cache-Control: no-store\r\n"));
    cr_expect(strstr(status, "X-Content-Type-Options: nosniff\r\n"));
    cr_expect_null(strstr(metrics, "Content-Security-Policy"));
    cr_expect(strstr(metrics, "X-Content-Type-Options: nosniff\r\n"));
    spore_metrics_stop(m);
}

Test(metrics, root_leads_to_the_first_page)
{
    SporeMetrics *m = start();
    g_autofree char *root = request(spore_metrics_port(m), "GET", "/");

    cr_expect(strstr(root, " 302 "), "%s", root);
    cr_expect(strstr(root, "Location: /status\r\n"));
    spore_metrics_stop(m);
}

Test(metrics, an_unknown_path_is_404_naming_the_pages)
{
    SporeMetrics *m = start();
    g_autofree char *a = request(spore_metrics_port(m), "GET", "/statusx");
    g_autofree char *b = request(spore_metrics_port(m), "GET", "/../metrics");

    cr_expect(strstr(a, " 404 "));
    cr_expect(g_str_has_suffix(a, "\r\n\r\nsee /status /metrics\n"));
    cr_expect(strstr(b, " 404 ") || strstr(b, " 400 "), "%s", b);
    spore_metrics_stop(m);
}

Test(metrics, takes_no_writes)
{
    SporeMetrics *m = start();
    g_autofree char *post = request(spore_metrics_port(m), "POST", "/status");
    g_autofree char *put = request(spore_metrics_port(m), "PUT", "/metrics");
    g_autofree char *head = request(spore_metrics_port(m), "HEAD", "/status");

    cr_expect(strstr(post, " 405 "));
    cr_expect(strstr(put, " 405 "));
    cr_expect(strstr(head, " 200 "));
    cr_expect_null(strstr(head, "<p>"), "HEAD has no body");
    spore_metrics_stop(m);
}

Test(metrics, the_single_page_form_serves_metrics_only)
{
    g_autoptr(GError) err = NULL;
    SporeMetrics *m =
        spore_metrics_start("127.0.0.1:0", text_page, (gpointer) "y", &err);
    g_autofree char *metrics = NULL;
    g_autofree char *root = NULL;

    cr_assert_not_null(m);
    metrics = request(spore_metrics_port(m), "GET", "/metrics");
    root = request(spore_metrics_port(m), "GET", "/");
    cr_expect(g_str_has_suffix(metrics, "\r\n\r\ntext y\n"));
    cr_expect(strstr(root, "Location: /metrics\r\n"));
    spore_metrics_stop(m);
}

Test(metrics, refuses_an_address_that_is_not_ipv4_address_and_port)
{
    g_autoptr(GError) e1 = NULL;
    g_autoptr(GError) e2 = NULL;

    cr_expect_null(spore_metrics_start("localhost:80", text_page, NULL, &e1));
    cr_expect_str_eq(e1->message,
                     "metrics address 'localhost' is not an IPv4 address");
    cr_expect_null(spore_metrics_start("127.0.0.1", text_page, NULL, &e2));
    cr_expect_str_eq(e2->message,
                     "metrics address '127.0.0.1' is not ADDRESS:PORT");
}
