/*
 * template.h: placeholders in manifest text ({service}, {index}, ...).
 *
 * Syntax: "{name}" where name is [A-Za-z_][A-Za-z0-9_]* is a placeholder and
 * must be one of the known ones; "{{" is a literal "{"; any other "{" or "}"
 * is literal text.  So shell code such as "${HOME}" must be written
 * "${{HOME}" (docs/spore-manifest.5 explains why).
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

typedef enum {
    MANIFEST_VAR_SERVICE = 1u << 0,  /* {service}: the service name */
    MANIFEST_VAR_INDEX = 1u << 1,    /* {index}: the clone index, from 0 */
    MANIFEST_VAR_HOSTNAME = 1u << 2, /* {hostname}: the clone's hostname */
    MANIFEST_VAR_HOST = 1u << 3,     /* {host}: the hypervisor host's name */
} ManifestVar;

#define MANIFEST_VARS_ALL                                                \
    (MANIFEST_VAR_SERVICE | MANIFEST_VAR_INDEX | MANIFEST_VAR_HOSTNAME | \
     MANIFEST_VAR_HOST)

typedef struct {
    const char *service;
    guint index;
    const char *hostname;
    const char *host;
} ManifestVars;

/* The longest value each placeholder can take, for size bounds. */
typedef struct {
    gsize service;
    gsize index;
    gsize hostname;
    gsize host;
} ManifestVarLengths;

/*
 * manifest_template_check: whether every placeholder in @tmpl is known and
 * allowed by the ManifestVar mask @allowed.  On success, when @ret_max_len is
 * not NULL, stores there the longest expansion possible with values no
 * longer than @lengths (which may then not be NULL).  Thread-safe.
 */
bool manifest_template_check(const char *tmpl, guint allowed,
                             const ManifestVarLengths *lengths,
                             gsize *ret_max_len, GError **error);

/*
 * manifest_template_expand: @tmpl with its placeholders replaced from @vars.
 * Fails, like manifest_template_check(), on unknown or disallowed
 * placeholders, and on an allowed one whose value in @vars is NULL.  The
 * result is owned by the caller.  Thread-safe.
 */
char *manifest_template_expand(const char *tmpl, guint allowed,
                               const ManifestVars *vars, GError **error);
