/*
 * config-util.c: GKeyFile helpers for the daemons' configuration files.
 */
#include "config-util.h"

char *
spore_key_string(GKeyFile *kf, const char *group, const char *key,
                 const char *fallback)
{
    char *v = g_key_file_get_string(kf, group, key, NULL);

    return v ? v : g_strdup(fallback);
}

guint
spore_key_uint(GKeyFile *kf, const char *group, const char *key, guint fallback,
               GError **error)
{
    g_autoptr(GError) err = NULL;
    guint64 v = g_key_file_get_uint64(kf, group, key, &err);

    if (err) {
        if (!g_error_matches(err, G_KEY_FILE_ERROR,
                             G_KEY_FILE_ERROR_KEY_NOT_FOUND) &&
            !g_error_matches(err, G_KEY_FILE_ERROR,
                             G_KEY_FILE_ERROR_GROUP_NOT_FOUND) &&
            error && !*error)
            g_propagate_error(error, g_steal_pointer(&err));
        return fallback;
    }
    return (guint)MIN(v, (guint64)G_MAXUINT);
}
