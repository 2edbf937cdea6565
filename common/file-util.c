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
