/*
 * test-httpd.c: lighttpd as the test origin.  Started with its own config
 * in a temporary directory, listening on loopback only, stopped by PID.
 */
#include "test-httpd.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <string.h>
#include <glib/gstdio.h>

#define LIGHTTPD "/usr/sbin/lighttpd"

struct TestHttpd {
    GPid pid;
    guint port;
    char *dir;
    char *access_log;
};

static guint
free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    guint port;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static bool
port_answers(guint port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* in the child: lighttpd must not outlive a test that crashed */
static void
die_with_parent(gpointer data)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
}

TestHttpd *
test_httpd_start(const char *docroot)
{
    return test_httpd_start_port(docroot, 0);
}

guint
test_httpd_port(TestHttpd *h)
{
    return h->port;
}

TestHttpd *
test_httpd_start_port(const char *docroot, guint port)
{
    return test_httpd_start_with(docroot, port, "");
}

TestHttpd *
test_httpd_start_with(const char *docroot, guint port, const char *extra_config)
{
    TestHttpd *h;
    g_autofree char *conf = NULL;
    g_autofree char *conf_path = NULL;
    g_autoptr(GError) err = NULL;
    char *argv[] = {LIGHTTPD, "-D", "-f", NULL, NULL};

    if (!g_file_test(LIGHTTPD, G_FILE_TEST_IS_EXECUTABLE))
        cr_skip_test("lighttpd is not installed (scripts/install-deps)");

    h = g_new0(TestHttpd, 1);
    h->dir = g_dir_make_tmp("spore-httpd-XXXXXX", NULL);
    h->port = port ? port : free_port();
    h->access_log = g_build_filename(h->dir, "access.log", NULL);
    conf = g_strdup_printf(
        "server.document-root = \"%s\"\n"
        "server.bind = \"127.0.0.1\"\n"
        "server.port = %u\n"
        "server.modules = (\"mod_accesslog\")\n"
        "accesslog.filename = \"%s\"\n"
        "server.errorlog = \"%s/error.log\"\n"
        "server.max-keep-alive-requests = 1000\n"
        "mimetype.assign = (\"\" => \"application/octet-stream\")\n"
        "%s\n",
        docroot, h->port, h->access_log, h->dir, extra_config);
    conf_path = g_build_filename(h->dir, "lighttpd.conf", NULL);
    cr_assert(g_file_set_contents(conf_path, conf, -1, NULL));
    argv[3] = conf_path;
    cr_assert(g_spawn_async(NULL, argv, NULL,
                            G_SPAWN_DO_NOT_REAP_CHILD |
                                G_SPAWN_STDOUT_TO_DEV_NULL |
                                G_SPAWN_STDERR_TO_DEV_NULL,
                            die_with_parent, NULL, &h->pid, &err),
              "cannot start lighttpd: %s", err ? err->message : "");
    for (int i = 0; i < 200 && !port_answers(h->port); i++)
        g_usleep(25000);
    cr_assert(port_answers(h->port), "lighttpd did not start on port %u",
              h->port);
    return h;
}

void
test_httpd_stop(TestHttpd *h)
{
    g_autofree char *conf_path = NULL;
    g_autofree char *error_log = NULL;

    if (!h)
        return;
    if (h->pid > 0) {
        kill(h->pid, SIGTERM);
        waitpid(h->pid, NULL, 0);
    }
    conf_path = g_build_filename(h->dir, "lighttpd.conf", NULL);
    error_log = g_build_filename(h->dir, "error.log", NULL);
    g_unlink(conf_path);
    g_unlink(error_log);
    g_unlink(h->access_log);
    g_rmdir(h->dir);
    g_free(h->access_log);
    g_free(h->dir);
    g_free(h);
}

char *
test_httpd_url(TestHttpd *h, const char *name)
{
    return g_strdup_printf("http://127.0.0.1:%u/%s", h->port, name);
}

/* Sum of the %b field of each access log line (after the status). */
static void
scan_log(TestHttpd *h, guint64 *ret_bytes, guint *ret_requests)
{
    g_autofree char *log = NULL;
    g_auto(GStrv) lines = NULL;
    guint64 bytes = 0;
    guint requests = 0;

    *ret_bytes = 0;
    *ret_requests = 0;
    if (!g_file_get_contents(h->access_log, &log, NULL, NULL))
        return;
    lines = g_strsplit(log, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        /* ... "GET /x HTTP/1.1" 206 65536 "-" "spore/0.1" */
        const char *q = strstr(lines[i], "\" ");
        guint status;
        guint64 n = 0;

        if (!q)
            continue;
        if (sscanf(q + 2, "%u %" G_GUINT64_FORMAT, &status, &n) >= 1) {
            requests++;
            bytes += n;
        }
    }
    *ret_bytes = bytes;
    *ret_requests = requests;
}

guint64
test_httpd_body_bytes(TestHttpd *h)
{
    guint64 bytes;
    guint requests;

    scan_log(h, &bytes, &requests);
    return bytes;
}

guint
test_httpd_requests(TestHttpd *h)
{
    guint64 bytes;
    guint requests;

    scan_log(h, &bytes, &requests);
    return requests;
}
