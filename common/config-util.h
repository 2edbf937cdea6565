/*
 * config-util.h: reading the daemons' GKeyFile configuration, where a
 * missing key means "the default" and a malformed one is an error.
 */
#pragma once

#include <glib.h>

/* spore_key_string: [@group] @key, or a copy of @fallback when absent */
char *spore_key_string(GKeyFile *kf, const char *group, const char *key,
                       const char *fallback);

/* spore_key_uint: [@group] @key as an unsigned integer, @fallback when
 * absent; a value that is not a number sets @error (if not yet set) */
guint spore_key_uint(GKeyFile *kf, const char *group, const char *key,
                     guint fallback, GError **error);
