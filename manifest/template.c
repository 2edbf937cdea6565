/*
 * template.c: placeholder scanning and expansion.
 *
 * One scanner serves checking, bounding and expanding, so the three can
 * never disagree about what a placeholder is.
 */
#include "template.h"

#include <string.h>

#include "spore-error.h"

static const struct {
    const char *name;
    ManifestVar var;
} known_vars[] = {
    {"service", MANIFEST_VAR_SERVICE},
    {"index", MANIFEST_VAR_INDEX},
    {"hostname", MANIFEST_VAR_HOSTNAME},
    {"host", MANIFEST_VAR_HOST},
};

static bool
is_name_start(char c)
{
    return g_ascii_isalpha(c) || c == '_';
}

static bool
is_name_char(char c)
{
    return g_ascii_isalnum(c) || c == '_';
}

/*
 * Walk @tmpl.  When @out is not NULL, append the expansion from @vars; when
 * @max_len is not NULL, add the longest possible expansion from @lengths.
 * Over 100 lines, kept whole: one scanner for checking, bounding and
 * expanding, so that the three can never disagree on what a placeholder is.
 */
static bool
template_walk(const char *tmpl, guint allowed, const ManifestVars *vars,
              const ManifestVarLengths *lengths, GString *out, gsize *max_len,
              GError **error)
{
    const char *p = tmpl;

    while (*p) {
        const char *name;
        gsize name_len;
        guint var = 0;

        if (p[0] == '{' && p[1] == '{') {
            if (out)
                g_string_append_c(out, '{');
            if (max_len)
                (*max_len)++;
            p += 2;
            continue;
        }
        if (p[0] != '{' || !is_name_start(p[1])) {
            if (out)
                g_string_append_c(out, *p);
            if (max_len)
                (*max_len)++;
            p++;
            continue;
        }

        name = p + 1;
        name_len = 1;
        while (is_name_char(name[name_len]))
            name_len++;
        if (name[name_len] != '}') {
            /* "{word" not closed right away: literal text */
            if (out)
                g_string_append_c(out, *p);
            if (max_len)
                (*max_len)++;
            p++;
            continue;
        }

        for (gsize i = 0; i < G_N_ELEMENTS(known_vars); i++) {
            if (strlen(known_vars[i].name) == name_len &&
                memcmp(known_vars[i].name, name, name_len) == 0)
                var = known_vars[i].var;
        }
        if (var == 0) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "unknown placeholder '{%.*s}' (known: {service}, "
                        "{index}, {hostname}, {host}; write '{{' for a "
                        "literal '{')",
                        (int)name_len, name);
            return false;
        }
        if (!(allowed & var)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "placeholder '{%.*s}' is not allowed here",
                        (int)name_len, name);
            return false;
        }

        if (out) {
            const char *value = NULL;
            char index_buf[16];

            switch ((ManifestVar)var) {
            case MANIFEST_VAR_SERVICE:
                value = vars->service;
                break;
            case MANIFEST_VAR_INDEX:
                g_snprintf(index_buf, sizeof(index_buf), "%u", vars->index);
                value = index_buf;
                break;
            case MANIFEST_VAR_HOSTNAME:
                value = vars->hostname;
                break;
            case MANIFEST_VAR_HOST:
                value = vars->host;
                break;
            }
            if (!value) {
                g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                            "placeholder '{%.*s}' has no value here",
                            (int)name_len, name);
                return false;
            }
            g_string_append(out, value);
        }
        if (max_len) {
            switch ((ManifestVar)var) {
            case MANIFEST_VAR_SERVICE:
                *max_len += lengths->service;
                break;
            case MANIFEST_VAR_INDEX:
                *max_len += lengths->index;
                break;
            case MANIFEST_VAR_HOSTNAME:
                *max_len += lengths->hostname;
                break;
            case MANIFEST_VAR_HOST:
                *max_len += lengths->host;
                break;
            }
        }
        p = name + name_len + 1;
    }
    return true;
}

bool
manifest_template_check(const char *tmpl, guint allowed,
                        const ManifestVarLengths *lengths, gsize *ret_max_len,
                        GError **error)
{
    gsize max_len = 0;

    if (!template_walk(tmpl, allowed, NULL, lengths, NULL,
                       ret_max_len ? &max_len : NULL, error))
        return false;
    if (ret_max_len)
        *ret_max_len = max_len;
    return true;
}

char *
manifest_template_expand(const char *tmpl, guint allowed,
                         const ManifestVars *vars, GError **error)
{
    g_autoptr(GString) out = g_string_new(NULL);

    if (!template_walk(tmpl, allowed, vars, NULL, out, NULL, error))
        return NULL;
    return g_string_free(g_steal_pointer(&out), FALSE);
}
