/*
 * test-httpd.h: a real HTTP origin for tests: lighttpd on 127.0.0.1 at a
 * free port, serving one directory, with an access log to count bytes.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

typedef struct TestHttpd TestHttpd;

/*
 * test_httpd_start: start lighttpd serving @docroot; skips the test (exit
 * 77 semantics through cr_skip_test) when lighttpd is not installed.
 */
TestHttpd *test_httpd_start(const char *docroot);

/* test_httpd_start_port: the same on a given port (0: a free one). */
TestHttpd *test_httpd_start_port(const char *docroot, guint port);

/*
 * test_httpd_start_with: the same with @extra_config (lighttpd.conf lines,
 * e.g. server.range-requests = "disable") appended.
 */
TestHttpd *test_httpd_start_with(const char *docroot, guint port,
                                 const char *extra_config);

/* test_httpd_port: the port it listens on. */
guint test_httpd_port(TestHttpd *h);

/* test_httpd_stop: stop it (SIGTERM, then wait) and free.  NULL-safe. */
void test_httpd_stop(TestHttpd *h);

/* test_httpd_url: "http://127.0.0.1:PORT/@name"; owned by the caller. */
char *test_httpd_url(TestHttpd *h, const char *name);

/* test_httpd_body_bytes: body bytes served so far, from the access log. */
guint64 test_httpd_body_bytes(TestHttpd *h);

/* test_httpd_requests: requests served so far, from the access log. */
guint test_httpd_requests(TestHttpd *h);
