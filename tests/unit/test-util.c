/*
 * test-util.c: helpers shared by the unit tests.  The data directory comes
 * from SPORE_TEST_DATA, which meson sets to the source tree's tests/data.
 */
#include "test-util.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <glib/gstdio.h>

char *
test_data_path(const char *rel)
{
    const char *root = g_getenv("SPORE_TEST_DATA");

    cr_assert(root, "SPORE_TEST_DATA is not set (run the tests with meson)");
    return g_build_filename(root, rel, NULL);
}

static gint
cmp_str(gconstpointer a, gconstpointer b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

GPtrArray *
test_data_list(const char *rel, const char *suffix)
{
    g_autofree char *dir_path = test_data_path(rel);
    g_autoptr(GDir) dir = g_dir_open(dir_path, 0, NULL);
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    const char *name;

    cr_assert(dir, "cannot open '%s'", dir_path);
    while ((name = g_dir_read_name(dir))) {
        if (g_str_has_suffix(name, suffix))
            g_ptr_array_add(names, g_build_filename(dir_path, name, NULL));
    }
    g_ptr_array_sort(names, cmp_str);
    return names;
}

char *
test_read_file(const char *path, gsize *ret_len)
{
    char *data = NULL;
    gsize len = 0;
    g_autoptr(GError) err = NULL;

    cr_assert(g_file_get_contents(path, &data, &len, &err), "%s",
              err ? err->message : "");
    if (ret_len)
        *ret_len = len;
    return data;
}

char *
test_make_image(gsize size, bool sparse, guint32 seed)
{
    const gsize block_len = 64 * 1024;
    g_autoptr(GRand) rand = g_rand_new_with_seed(seed);
    g_autofree guint8 *block = g_malloc(block_len);
    char *path = NULL;
    int fd = g_file_open_tmp("spore-image-XXXXXX.raw", &path, NULL);

    cr_assert_geq(fd, 0);
    for (gsize off = 0; off < size; off += block_len) {
        gsize len = MIN(block_len, size - off);
        bool zero = (off / block_len) % 3 == 1;

        if (zero && sparse)
            continue;
        for (gsize i = 0; i < len; i++)
            block[i] = zero ? 0 : (guint8)g_rand_int(rand);
        cr_assert_eq(pwrite(fd, block, len, (off_t)off), (ssize_t)len);
    }
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    close(fd);
    return path;
}

void
test_rm_rf(const char *path)
{
    g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *child = g_build_filename(path, name, NULL);
        if (g_file_test(child, G_FILE_TEST_IS_DIR) &&
            !g_file_test(child, G_FILE_TEST_IS_SYMLINK))
            test_rm_rf(child);
        else
            g_unlink(child);
    }
    g_rmdir(path);
}

guint
test_free_port_pair(void)
{
    for (;;) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        socklen_t len = sizeof(a);
        int s = socket(AF_INET, SOCK_STREAM, 0), t;
        guint port;

        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
        getsockname(s, (struct sockaddr *)&a, &len);
        port = ntohs(a.sin_port);
        t = socket(AF_INET, SOCK_STREAM, 0);
        a.sin_port = htons(port + 1);
        if (port < 65000 && bind(t, (struct sockaddr *)&a, sizeof(a)) == 0) {
            close(s);
            close(t);
            return port;
        }
        close(s);
        close(t);
    }
}
