/*
 * test-util.h: helpers shared by the unit tests.
 */
#pragma once

#include <glib.h>

/* The absolute path of @rel under tests/data; owned by the caller. */
char *test_data_path(const char *rel);

/* The sorted names of the files in tests/data/@rel ending in @suffix. */
GPtrArray *test_data_list(const char *rel, const char *suffix);

/* The contents of @path; aborts the test when it cannot be read. */
char *test_read_file(const char *path, gsize *ret_len);
