/*
 * file-util.h: bounded reads of local files.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

/*
 * spore_file_read_bounded: read all of @path (or standard input when @path
 * is "-") into a new NUL-terminated buffer, refusing more than @max_bytes.
 *
 * The size is enforced while reading, not taken from fstat(), so FIFOs and
 * files that grow are bounded too.  On success *ret_data (free with g_free)
 * and *ret_len are set; on failure the error is SPORE_ERROR_IO or
 * SPORE_ERROR_LIMIT, names the file, and nothing is written.  Thread-safe.
 */
bool spore_file_read_bounded(const char *path, gsize max_bytes, char **ret_data,
                             gsize *ret_len, GError **error);

/*
 * spore_file_write_atomic: replace @path with @len bytes of @data so that a
 * crash leaves either the old file or the whole new one: a temporary file
 * in the same directory, written, fsync'ed, given @mode, renamed over
 * @path, and the directory fsync'ed.  Errors name @path.  Thread-safe.
 */
bool spore_file_write_atomic(const char *path, const void *data, gsize len,
                             int mode, GError **error);
