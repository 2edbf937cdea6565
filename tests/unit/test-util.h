/*
 * test-util.h: helpers shared by the unit tests.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

/* The absolute path of @rel under tests/data; owned by the caller. */
char *test_data_path(const char *rel);

/* The sorted names of the files in tests/data/@rel ending in @suffix. */
GPtrArray *test_data_list(const char *rel, const char *suffix);

/* The contents of @path; aborts the test when it cannot be read. */
char *test_read_file(const char *path, gsize *ret_len);

/*
 * test_make_image: a new temporary file of @size bytes (path owned by the
 * caller): random data from @seed, with every third 64 KiB block zero; when
 * @sparse the zero blocks are holes rather than written zeros.
 */
char *test_make_image(gsize size, bool sparse, guint32 seed);

/* test_rm_rf: remove @path and everything below it, ignoring errors. */
void test_rm_rf(const char *path);

/* test_free_port_pair: a loopback TCP port P free now with P + 1 free too
 * (spored listens on both) */
guint test_free_port_pair(void);
