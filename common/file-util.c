/*
 * file-util.c: bounded reads of local files.
 *
 * Untrusted files (manifests, indexes) are read whole into memory only up
 * to a named limit; the limit is checked against the bytes actually read.
 */
#include "file-util.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdio.h>
#include <sys/stat.h>

#include "spore-error.h"

#define READ_BLOCK_BYTES (64u * 1024)

static void
close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

bool
spore_file_read_bounded(const char *path, gsize max_bytes, char **ret_data,
                        gsize *ret_len, GError **error)
{
    bool is_stdin = g_str_equal(path, "-");
    const char *name = is_stdin ? "<stdin>" : path;
    __attribute__((cleanup(close_fd))) int fd = -1;
    g_autoptr(GByteArray) buf = g_byte_array_new();

    if (is_stdin) {
        fd = dup(STDIN_FILENO);
    } else {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    }
    if (fd < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot open '%s': %s",
                    name, g_strerror(saved));
        return false;
    }

    for (;;) {
        guint old_len = buf->len;
        ssize_t n;

        g_byte_array_set_size(buf, old_len + READ_BLOCK_BYTES);
        n = read(fd, buf->data + old_len, READ_BLOCK_BYTES);
        if (n < 0) {
            int saved = errno;
            if (saved == EINTR) {
                g_byte_array_set_size(buf, old_len);
                continue;
            }
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                        "cannot read '%s': %s", name, g_strerror(saved));
            return false;
        }
        g_byte_array_set_size(buf, old_len + (guint)n);
        if (n == 0)
            break;
        if (buf->len > max_bytes) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                        "'%s' is larger than the limit of %" G_GSIZE_FORMAT
                        " bytes",
                        name, max_bytes);
            return false;
        }
    }

    *ret_len = buf->len;
    g_byte_array_append(buf, (const guint8 *)"", 1);
    *ret_data = (char *)g_byte_array_free(g_steal_pointer(&buf), FALSE);
    return true;
}

static bool
write_all(int fd, const guint8 *data, gsize len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return false;
        data += n;
        len -= (gsize)n;
    }
    return true;
}

bool
spore_file_write_atomic(const char *path, const void *data, gsize len, int mode,
                        GError **error)
{
    g_autofree char *dir = g_path_get_dirname(path);
    g_autofree char *base = g_path_get_basename(path);
    g_autofree char *tmp = g_strdup_printf("%s/.%s.XXXXXX", dir, base);
    __attribute__((cleanup(close_fd))) int fd = -1;
    __attribute__((cleanup(close_fd))) int dir_fd = -1;
    int saved;

    fd = g_mkstemp_full(tmp, O_RDWR | O_CLOEXEC, mode);
    if (fd < 0) {
        saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create a file in '%s': %s", dir, g_strerror(saved));
        return false;
    }
    if (!write_all(fd, data, len) || fchmod(fd, (mode_t)mode) < 0 ||
        fsync(fd) < 0) {
        saved = errno;
        unlink(tmp);
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO, "cannot write '%s': %s",
                    path, g_strerror(saved));
        return false;
    }
    if (rename(tmp, path) < 0) {
        saved = errno;
        unlink(tmp);
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot rename '%s' to '%s': %s", tmp, path,
                    g_strerror(saved));
        return false;
    }
    dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0)
        fsync(dir_fd);
    return true;
}
