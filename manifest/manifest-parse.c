/*
 * manifest-parse.c: manifest XML -> Manifest, with every problem reported.
 *
 * Three layers, in order:
 *   1. xml_safe_parse(): size cap, no DOCTYPE/entities/network, depth cap,
 *      well-formedness, UTF-8.  A failure here is the only problem reported,
 *      since there is no tree to look at.
 *   2. The walker below: structure (unknown, missing and duplicate elements
 *      and attributes) and every value rule, each problem with the line of
 *      the element or attribute it concerns.  It keeps going after a problem
 *      so that a file's problems are all reported in one run; the checks
 *      that span elements (check_cross) run too, on the fields that parsed.
 *   3. The RelaxNG schema (xml-schemas/manifest.rng, compiled in): run on
 *      documents the walker found clean, so that the published schema and the
 *      code can never silently disagree.  Its problems are reported as
 *      "schema: ...".
 *
 * Invariant: a Manifest is returned only when all three found nothing, and
 * then every field is within the limits of manifest.h.
 */
#include "manifest.h"
#include "manifest-priv.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <libxml/relaxng.h>

#include "file-util.h"
#include "spore-error.h"
#include "spore-schemas.h"
#include "template.h"
#include "xml-autoptr.h"
#include "xml-safe.h"

#define VALUE_SHOWN_MAX_CHARS 48u

typedef struct {
    const XmlSafeDoc *xdoc;
    GPtrArray *problems;
    Manifest *m;
    bool truncated;
    /* kept for the checks that span elements */
    guint hostname_line;
    guint scaling_line;
    guint customize_line;
    guint service_name_line;
    GArray *file_lines; /* of guint, parallel to m->customize.files */
    /*
     * What the cross-field checks may rely on when other fields failed:
     * clones_max is max once it parsed (else the default, so only clone 0
     * is checked); hostname_failed means m->customize.hostname is still the
     * default although the manifest gave one, so it must not be checked.
     */
    guint clones_max;
    bool hostname_failed;
} Walker;

static void
manifest_problem_free(gpointer p)
{
    ManifestProblem *problem = p;

    g_free(problem->message);
    g_free(problem);
}

GPtrArray *
manifest_problems_new(void)
{
    return g_ptr_array_new_with_free_func(manifest_problem_free);
}

static void G_GNUC_PRINTF(3, 4)
    problem(Walker *w, guint line, const char *fmt, ...)
{
    ManifestProblem *p;
    va_list ap;

    if (w->problems->len >= MANIFEST_MAX_PROBLEMS) {
        w->truncated = true;
        return;
    }
    p = g_new0(ManifestProblem, 1);
    p->line = line;
    va_start(ap, fmt);
    p->message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_ptr_array_add(w->problems, p);
}

/*
 * A value from the manifest made safe to print: at most
 * VALUE_SHOWN_MAX_CHARS characters, control characters and invalid UTF-8
 * escaped, so that a hostile manifest cannot drive the operator's terminal.
 */
static char *
shown(const char *value)
{
    GString *out = g_string_new(NULL);
    const char *p = value;
    guint chars = 0;

    while (*p) {
        gunichar c = g_utf8_get_char_validated(p, -1);

        if (chars >= VALUE_SHOWN_MAX_CHARS) {
            g_string_append(out, "...");
            break;
        }
        if (c == (gunichar)-1 || c == (gunichar)-2) {
            g_string_append_printf(out, "\\x%02x", (guchar)*p);
            p++;
        } else if (c == '\n') {
            g_string_append(out, "\\n");
            p = g_utf8_next_char(p);
        } else if (c == '\t') {
            g_string_append(out, "\\t");
            p = g_utf8_next_char(p);
        } else if (!g_unichar_isprint(c)) {
            g_string_append_printf(out, "\\u%04x", c);
            p = g_utf8_next_char(p);
        } else {
            g_string_append_len(out, p, g_utf8_next_char(p) - p);
            p = g_utf8_next_char(p);
        }
        chars++;
    }
    return g_string_free(out, FALSE);
}

/* ---- small checks on values -------------------------------------------- */

static bool
is_name(const char *s, bool allow_dot)
{
    gsize len = strlen(s);

    if (len == 0 || len > MANIFEST_NAME_MAX_CHARS)
        return false;
    if (!g_ascii_islower(s[0]) && !g_ascii_isdigit(s[0]))
        return false;
    for (gsize i = 1; i < len; i++) {
        char c = s[i];
        if (!g_ascii_islower(c) && !g_ascii_isdigit(c) && c != '-' &&
            !(allow_dot && c == '.'))
            return false;
    }
    return true;
}

static bool
has_control_chars(const char *s, bool allow_newlines)
{
    for (const guchar *p = (const guchar *)s; *p; p++) {
        if (allow_newlines && (*p == '\n' || *p == '\t'))
            continue;
        if (*p < 0x20 || *p == 0x7f)
            return true;
    }
    return false;
}

/* Strict unsigned decimal: digits only, no sign, no spaces. */
static bool
parse_u64(const char *s, guint64 max, guint64 *ret)
{
    guint64 v = 0;

    if (!*s)
        return false;
    for (const char *p = s; *p; p++) {
        if (!g_ascii_isdigit(*p))
            return false;
        if (v > (G_MAXUINT64 - (guint64)(*p - '0')) / 10)
            return false;
        v = v * 10 + (guint64)(*p - '0');
    }
    if (v > max)
        return false;
    *ret = v;
    return true;
}

/*
 * Duration: an integer of 1 to MANIFEST_DURATION_MAX_DIGITS digits with an
 * optional unit s, m or h, at most MANIFEST_DURATION_MAX_SECONDS.  The
 * syntax is the schema's "duration" pattern, [0-9]{1,9}[smh]?; the limit in
 * seconds is ours alone.
 */
static bool
parse_duration(const char *s, guint *ret)
{
    g_autofree char *digits = g_strdup(s);
    gsize len = strlen(digits);
    guint64 unit = 1;
    guint64 v;

    if (len > 0) {
        switch (digits[len - 1]) {
        case 's':
            unit = 1;
            digits[--len] = '\0';
            break;
        case 'm':
            unit = 60;
            digits[--len] = '\0';
            break;
        case 'h':
            unit = 3600;
            digits[--len] = '\0';
            break;
        default:
            break;
        }
    }
    if (len > MANIFEST_DURATION_MAX_DIGITS ||
        !parse_u64(digits, MANIFEST_DURATION_MAX_SECONDS, &v))
        return false;
    if (v * unit > MANIFEST_DURATION_MAX_SECONDS)
        return false;
    *ret = (guint)(v * unit);
    return true;
}

/* The number of ASCII digits at the start of @s. */
static gsize
digits_span(const char *s)
{
    gsize n = 0;

    while (g_ascii_isdigit(s[n]))
        n++;
    return n;
}

/*
 * Threshold: a non-negative decimal without exponent ("100", "0.25"), of
 * at most MANIFEST_THRESHOLD_INT_MAX_DIGITS digits before the point and
 * MANIFEST_THRESHOLD_FRAC_MAX_DIGITS after it: the schema's "threshold"
 * pattern, [0-9]{1,13}(\.[0-9]{1,17})?.  At most
 * MANIFEST_REQUESTS_THRESHOLD_MAX.
 */
static bool
parse_threshold(const char *s, double *ret)
{
    const char *p = s;
    char *end = NULL;
    gsize n;
    double v;

    n = digits_span(p);
    if (n == 0 || n > MANIFEST_THRESHOLD_INT_MAX_DIGITS)
        return false;
    p += n;
    if (*p == '.') {
        p++;
        n = digits_span(p);
        if (n == 0 || n > MANIFEST_THRESHOLD_FRAC_MAX_DIGITS)
            return false;
        p += n;
    }
    if (*p)
        return false;
    errno = 0;
    v = g_ascii_strtod(s, &end);
    if (errno != 0 || *end || v > MANIFEST_REQUESTS_THRESHOLD_MAX)
        return false;
    *ret = v;
    return true;
}

static const char *
rfc1123_problem(const char *h)
{
    gsize len = strlen(h);
    const char *label = h;

    if (len == 0)
        return "it is empty";
    if (len > 253)
        return "it is longer than 253 characters";
    for (const char *p = h;; p++) {
        if (*p == '.' || *p == '\0') {
            gsize label_len = (gsize)(p - label);
            if (label_len == 0)
                return "it has an empty label";
            if (label_len > 63)
                return "a label is longer than 63 characters";
            if (label[0] == '-' || p[-1] == '-')
                return "a label starts or ends with '-'";
            if (*p == '\0')
                break;
            label = p + 1;
        } else if (!g_ascii_isalnum(*p) && *p != '-') {
            return "it may only hold letters, digits, '-' and '.'";
        }
    }
    return NULL;
}

static bool
is_posix_user(const char *s)
{
    gsize len = strlen(s);

    if (len == 0 || len > MANIFEST_USER_NAME_MAX_CHARS)
        return false;
    if (!g_ascii_islower(s[0]) && s[0] != '_')
        return false;
    for (gsize i = 1; i < len; i++) {
        if (!g_ascii_islower(s[i]) && !g_ascii_isdigit(s[i]) && s[i] != '_' &&
            s[i] != '-')
            return false;
    }
    return true;
}

static const char *const ssh_key_types[] = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
};

/* NULL when @key is one well-formed authorized_keys line, else why not. */
static const char *
ssh_key_problem(const char *key)
{
    const char *space = strchr(key, ' ');
    const char *b64;
    const char *p;
    bool known = false;

    if (has_control_chars(key, false))
        return "it must be one line without control characters";
    if (!space)
        return "it must be 'TYPE BASE64 [COMMENT]'";
    for (gsize i = 0; i < G_N_ELEMENTS(ssh_key_types); i++) {
        if (strlen(ssh_key_types[i]) == (gsize)(space - key) &&
            strncmp(key, ssh_key_types[i], (gsize)(space - key)) == 0)
            known = true;
    }
    if (!known)
        return "it does not start with a known key type (ssh-ed25519, "
               "ssh-rsa, ecdsa-sha2-nistp256/384/521, "
               "sk-ssh-ed25519@openssh.com"
               ", sk-ecdsa-sha2-nistp256@openssh.com)";
    b64 = space + 1;
    for (p = b64; *p && *p != ' '; p++) {
        if (!g_ascii_isalnum(*p) && *p != '+' && *p != '/' && *p != '=')
            return "its key data is not base64";
    }
    if (p - b64 < 16)
        return "its key data is missing or too short";
    return NULL;
}

/* NULL when @path is a plain absolute path, else why not. */
const char *
manifest_path_problem(const char *path, bool guest)
{
    g_auto(GStrv) parts = NULL;

    if (path[0] != '/')
        return "it is not absolute";
    if (strlen(path) > MANIFEST_GUEST_PATH_MAX_BYTES)
        return "it is longer than 4096 bytes";
    if (has_control_chars(path, false))
        return "it holds control characters";
    if (guest && g_str_equal(path, "/"))
        return "it names the root directory";
    parts = g_strsplit(path + 1, "/", -1);
    for (guint i = 0; parts[i]; i++) {
        if (g_str_equal(parts[i], "."))
            return "it has a '.' component";
        if (g_str_equal(parts[i], ".."))
            return "it has a '..' component";
        if (guest && parts[i][0] == '\0')
            return "it has an empty component ('//' or a trailing '/')";
    }
    if (guest) {
        static const char *const forbidden[] = {"/dev", "/proc", "/sys"};
        for (gsize i = 0; i < G_N_ELEMENTS(forbidden); i++) {
            gsize n = strlen(forbidden[i]);
            if (strncmp(path, forbidden[i], n) == 0 &&
                (path[n] == '\0' || path[n] == '/'))
                return "it is under /dev, /proc or /sys";
        }
    }
    return NULL;
}

/* NULL when @url is an origin URL spore can fetch from, else why not. */
static const char *
url_problem(const char *url)
{
    g_autoptr(GUri) uri = NULL;
    const char *scheme;

    if (strlen(url) > MANIFEST_URL_MAX_BYTES)
        return "it is longer than 4096 bytes";
    for (const guchar *p = (const guchar *)url; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f)
            return "it holds spaces, control or non-ASCII characters "
                   "(percent-encode them)";
    }
    uri = g_uri_parse(url, G_URI_FLAGS_ENCODED, NULL);
    if (!uri)
        return "it is not a valid URL";
    scheme = g_uri_get_scheme(uri);
    if (g_ascii_strcasecmp(scheme, "http") == 0 ||
        g_ascii_strcasecmp(scheme, "https") == 0) {
        if (!g_uri_get_host(uri) || !*g_uri_get_host(uri))
            return "it has no host";
        if (g_uri_get_fragment(uri))
            return "it has a fragment";
    } else if (g_ascii_strcasecmp(scheme, "file") == 0) {
        const char *host = g_uri_get_host(uri);
        if (host && *host && g_ascii_strcasecmp(host, "localhost") != 0)
            return "a file URL must not name a host";
        if (g_uri_get_path(uri)[0] != '/' || g_uri_get_query(uri) ||
            g_uri_get_fragment(uri))
            return "a file URL must be file:///absolute/path";
    } else {
        return "its scheme is not http, https or file";
    }
    return NULL;
}

/* ---- tree helpers ------------------------------------------------------ */

static bool
in_our_ns(const xmlNode *n)
{
    return n->ns && n->ns->href &&
           xmlStrEqual(n->ns->href, BAD_CAST MANIFEST_NAMESPACE);
}

static const char *
el_name(const xmlNode *n)
{
    return (const char *)n->name;
}

static guint
line_of(Walker *w, const xmlNode *n)
{
    return xml_safe_node_line(w->xdoc, n);
}

static guint
attr_line(Walker *w, const xmlNode *n, const char *name)
{
    return xml_safe_attr_line(w->xdoc, n, name);
}

/*
 * The line of @first_nonblank, a pointer into text node @c of @parent.
 * libxml2 stamps a text node with the line where it ends, so count back.
 */
static guint
text_line(Walker *w, const xmlNode *parent, const xmlNode *c,
          const char *first_nonblank)
{
    long end_line = xmlGetLineNo(c);
    guint parent_line = line_of(w, parent);
    long newlines = 0;

    for (const char *p = first_nonblank; *p; p++) {
        if (*p == '\n')
            newlines++;
    }
    if (end_line - newlines < (long)parent_line)
        return parent_line;
    return (guint)(end_line - newlines);
}

/* Report attributes of @el not in the NULL-terminated @allowed. */
static void
check_attributes(Walker *w, const xmlNode *el, const char *const *allowed)
{
    for (const xmlAttr *a = el->properties; a; a = a->next) {
        bool ok = false;
        g_autofree char *name = shown((const char *)a->name);

        if (!a->ns) {
            for (gsize i = 0; allowed[i]; i++) {
                if (xmlStrEqual(a->name, BAD_CAST allowed[i]))
                    ok = true;
            }
        }
        if (!ok)
            problem(w, attr_line(w, el, (const char *)a->name),
                    "unknown attribute '%s' on <%s>", name, el_name(el));
    }
}

static bool
get_attr_present(const xmlNode *el, const char *name)
{
    return xmlHasNsProp(el, BAD_CAST name, NULL) != NULL;
}

/* The attribute's value, owned by the caller; NULL when absent. */
static char *
get_attr(const xmlNode *el, const char *name)
{
    g_autoptr(xmlChar) v = xmlGetNoNsProp(el, BAD_CAST name);

    return v ? g_strdup((const char *)v) : NULL;
}

/*
 * The text content of a text-only element, owned by the caller; reports
 * child elements.  Comments are not part of the text.
 */
static char *
get_text(Walker *w, const xmlNode *el, bool trim)
{
    GString *text = g_string_new(NULL);

    for (const xmlNode *c = el->children; c; c = c->next) {
        if (c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) {
            g_string_append(text, (const char *)c->content);
        } else if (c->type == XML_ELEMENT_NODE) {
            g_autofree char *name = shown(el_name(c));
            problem(w, line_of(w, c), "element <%s> is not allowed in <%s>",
                    name, el_name(el));
        }
    }
    if (trim)
        g_strstrip(text->str);
    return g_string_free(text, FALSE);
}

/*
 * Iterate the element children of @parent, reporting foreign or unexpected
 * elements and non-blank text, and calling @fn(w, child, data) for the known
 * ones, whose names are in the NULL-terminated @known.
 */
typedef void (*ChildFn)(Walker *w, xmlNode *child, gpointer data);

static void
each_child(Walker *w, xmlNode *parent, const char *const *known, ChildFn fn,
           gpointer data)
{
    for (xmlNode *c = parent->children; c; c = c->next) {
        if (c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) {
            const char *t = (const char *)c->content;
            while (*t == ' ' || *t == '\t' || *t == '\n' || *t == '\r')
                t++;
            if (*t) {
                g_autofree char *trimmed = g_strstrip(g_strdup(t));
                g_autofree char *text = shown(trimmed);
                problem(w, text_line(w, parent, c, t),
                        "unexpected text in <%s>: '%s'", el_name(parent), text);
            }
            continue;
        }
        if (c->type != XML_ELEMENT_NODE)
            continue;
        if (!in_our_ns(c)) {
            g_autofree char *name = shown(el_name(c));
            problem(w, line_of(w, c),
                    "element <%s> is not in namespace '" MANIFEST_NAMESPACE
                    "' and is not allowed in <%s>",
                    name, el_name(parent));
            continue;
        }
        if (!g_strv_contains(known, el_name(c))) {
            g_autofree char *name = shown(el_name(c));
            problem(w, line_of(w, c), "unknown element <%s> in <%s>", name,
                    el_name(parent));
            continue;
        }
        fn(w, c, data);
    }
}

static bool
is_el(const xmlNode *n, const char *name)
{
    return xmlStrEqual(n->name, BAD_CAST name);
}

/* Whether @c is the first of its kind; reports it when it is not. */
static bool
first_of(Walker *w, const xmlNode *c, guint *seen_line)
{
    if (*seen_line) {
        problem(w, line_of(w, c), "duplicate <%s> (the first is on line %u)",
                el_name(c), *seen_line);
        return false;
    }
    *seen_line = line_of(w, c);
    return true;
}

static char *
required_attr(Walker *w, const xmlNode *el, const char *name)
{
    char *v = get_attr(el, name);

    if (!v)
        problem(w, line_of(w, el), "<%s> has no '%s' attribute", el_name(el),
                name);
    return v;
}

/*
 * An enumerated attribute: stores the index of its value in @values into
 * *ret, or leaves *ret (the default) when the attribute is absent.
 */
static void
enum_attr(Walker *w, const xmlNode *el, const char *name,
          const char *const *values, int *ret)
{
    g_autofree char *v = get_attr(el, name);
    g_autofree char *list = NULL;
    g_autofree char *bad = NULL;

    if (!v)
        return;
    for (int i = 0; values[i]; i++) {
        if (g_str_equal(v, values[i])) {
            *ret = i;
            return;
        }
    }
    list = g_strjoinv(", ", (char **)values);
    bad = shown(v);
    problem(w, attr_line(w, el, name), "%s '%s' on <%s> is not one of: %s",
            name, bad, el_name(el), list);
}

/* An unsigned integer attribute in [min, max]; false when absent or bad. */
static bool
uint_attr(Walker *w, const xmlNode *el, const char *name, bool required,
          guint64 min, guint64 max, guint64 *ret)
{
    g_autofree char *v =
        required ? required_attr(w, el, name) : get_attr(el, name);
    g_autofree char *bad = NULL;
    guint64 n;

    if (!v)
        return false;
    if (parse_u64(v, max, &n) && n >= min) {
        *ret = n;
        return true;
    }
    bad = shown(v);
    problem(w, attr_line(w, el, name),
            "%s '%s' on <%s> must be an integer from %" G_GUINT64_FORMAT
            " to %" G_GUINT64_FORMAT,
            name, bad, el_name(el), min, max);
    return false;
}

static bool
duration_attr(Walker *w, const xmlNode *el, const char *name, guint *ret)
{
    g_autofree char *v = get_attr(el, name);
    g_autofree char *bad = NULL;

    if (!v)
        return false;
    if (parse_duration(v, ret))
        return true;
    bad = shown(v);
    problem(w, attr_line(w, el, name),
            "%s '%s' on <%s> is not a duration (1 to %u digits with an "
            "optional unit s, m or h, at most 30 days)",
            name, bad, el_name(el), MANIFEST_DURATION_MAX_DIGITS);
    return false;
}

/* ---- <image> ----------------------------------------------------------- */

typedef struct {
    guint digest;
    guint origins;
} ImageSeen;

static void
image_child(Walker *w, xmlNode *c, gpointer data)
{
    static const char *const origin_attrs[] = {"url", NULL};
    ImageSeen *seen = data;
    Manifest *m = w->m;

    if (is_el(c, "origin")) {
        g_autofree char *url = NULL;
        const char *why;

        seen->origins++;
        check_attributes(w, c, origin_attrs);
        each_child(w, c, (const char *const[]){NULL}, NULL, NULL);
        url = required_attr(w, c, "url");
        if (!url)
            return;
        if (seen->origins > MANIFEST_ORIGINS_MAX) {
            problem(w, line_of(w, c), "more than %u <origin> elements",
                    MANIFEST_ORIGINS_MAX);
            return;
        }
        if ((why = url_problem(url))) {
            g_autofree char *bad = shown(url);
            problem(w, attr_line(w, c, "url"), "origin URL '%s' is invalid: %s",
                    bad, why);
            return;
        }
        for (guint i = 0; i < m->image.origins->len; i++) {
            if (g_str_equal(m->image.origins->pdata[i], url)) {
                g_autofree char *bad = shown(url);
                problem(w, attr_line(w, c, "url"), "duplicate origin '%s'",
                        bad);
                return;
            }
        }
        g_ptr_array_add(m->image.origins, g_steal_pointer(&url));
    } else if (is_el(c, "digest")) {
        g_autofree char *digest = NULL;
        bool ok;

        if (!first_of(w, c, &seen->digest))
            return;
        check_attributes(w, c, (const char *const[]){NULL});
        digest = get_text(w, c, true);
        ok = g_str_has_prefix(digest, "sha256:") && strlen(digest) == 7 + 64;
        for (gsize i = 7; ok && digest[i]; i++) {
            if (!g_ascii_isdigit(digest[i]) &&
                !(digest[i] >= 'a' && digest[i] <= 'f'))
                ok = false;
        }
        if (!ok) {
            g_autofree char *bad = shown(digest);
            problem(w, line_of(w, c),
                    "digest '%s' must be 'sha256:' and 64 lowercase hex "
                    "digits",
                    bad);
            return;
        }
        m->image.digest = g_steal_pointer(&digest);
    }
}

static void
parse_image(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"name", "format", NULL};
    static const char *const children[] = {"origin", "digest", NULL};
    static const char *const formats[] = {"raw", "qcow2", NULL};
    ImageSeen seen = {0};
    g_autofree char *name = NULL;
    int format = MANIFEST_IMAGE_FORMAT_RAW;

    check_attributes(w, el, attrs);
    name = required_attr(w, el, "name");
    if (name && !is_name(name, false)) {
        g_autofree char *bad = shown(name);
        problem(w, attr_line(w, el, "name"),
                "image name '%s' is invalid: use 1 to 63 characters from a-z, "
                "0-9 and '-', starting with a letter or digit",
                bad);
    } else if (name) {
        w->m->image.name = g_steal_pointer(&name);
    }
    enum_attr(w, el, "format", formats, &format);
    w->m->image.format = (ManifestImageFormat)format;

    each_child(w, el, children, image_child, &seen);
    if (seen.origins == 0)
        problem(w, line_of(w, el), "<image> has no <origin>");
}

/* ---- <vm> -------------------------------------------------------------- */

typedef struct {
    guint vcpus;
    guint memory;
    guint boot;
    guint interfaces;
} VmSeen;

static void
host_path_attr(Walker *w, xmlNode *el, const char *name, bool required,
               char **ret)
{
    g_autofree char *v =
        required ? required_attr(w, el, name) : get_attr(el, name);
    const char *why;

    if (!v)
        return;
    if ((why = manifest_path_problem(v, false))) {
        g_autofree char *bad = shown(v);
        problem(w, attr_line(w, el, name), "%s path '%s' is invalid: %s", name,
                bad, why);
        return;
    }
    *ret = g_steal_pointer(&v);
}

static void
parse_boot(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"kernel", "initrd", "cmdline", NULL};
    g_autofree char *cmdline = NULL;
    Manifest *m = w->m;

    check_attributes(w, el, attrs);
    each_child(w, el, (const char *const[]){NULL}, NULL, NULL);
    host_path_attr(w, el, "kernel", true, &m->vm.kernel);
    host_path_attr(w, el, "initrd", false, &m->vm.initrd);
    cmdline = get_attr(el, "cmdline");
    if (cmdline) {
        if (strlen(cmdline) > MANIFEST_CMDLINE_MAX_BYTES)
            problem(w, attr_line(w, el, "cmdline"),
                    "cmdline is longer than %u bytes",
                    MANIFEST_CMDLINE_MAX_BYTES);
        else if (has_control_chars(cmdline, false))
            problem(w, attr_line(w, el, "cmdline"),
                    "cmdline holds control characters");
        else
            m->vm.cmdline = g_steal_pointer(&cmdline);
    }
}

static bool
is_ifname(const char *s, gsize max)
{
    gsize len = strlen(s);

    if (len == 0 || len > max)
        return false;
    for (gsize i = 0; i < len; i++) {
        if (!g_ascii_isalnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return false;
    }
    return true;
}

static void
parse_interface(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"network", "bridge", NULL};
    g_autofree char *network = get_attr(el, "network");
    g_autofree char *bridge = get_attr(el, "bridge");
    g_autofree ManifestInterface *iface = NULL;

    check_attributes(w, el, attrs);
    each_child(w, el, (const char *const[]){NULL}, NULL, NULL);
    if (!network == !bridge) {
        problem(w, line_of(w, el),
                "<interface> needs exactly one of 'network' and 'bridge'");
        return;
    }
    if (network && !is_ifname(network, MANIFEST_NETWORK_NAME_MAX_CHARS)) {
        g_autofree char *bad = shown(network);
        problem(w, attr_line(w, el, "network"),
                "network name '%s' is invalid: use 1 to %u characters from "
                "A-Z, a-z, 0-9, '_', '.' and '-'",
                bad, MANIFEST_NETWORK_NAME_MAX_CHARS);
        return;
    }
    if (bridge && !is_ifname(bridge, MANIFEST_BRIDGE_NAME_MAX_CHARS)) {
        g_autofree char *bad = shown(bridge);
        problem(w, attr_line(w, el, "bridge"),
                "bridge name '%s' is invalid: use 1 to %u characters from "
                "A-Z, a-z, 0-9, '_', '.' and '-'",
                bad, MANIFEST_BRIDGE_NAME_MAX_CHARS);
        return;
    }
    iface = g_new0(ManifestInterface, 1);
    iface->network = g_steal_pointer(&network);
    iface->bridge = g_steal_pointer(&bridge);
    g_ptr_array_add(w->m->vm.interfaces, g_steal_pointer(&iface));
}

static void
vm_child(Walker *w, xmlNode *c, gpointer data)
{
    VmSeen *seen = data;
    Manifest *m = w->m;

    if (is_el(c, "vcpus")) {
        g_autofree char *text = NULL;
        guint64 n;

        if (!first_of(w, c, &seen->vcpus))
            return;
        check_attributes(w, c, (const char *const[]){NULL});
        text = get_text(w, c, true);
        if (!parse_u64(text, MANIFEST_VCPUS_MAX, &n) || n < 1) {
            g_autofree char *bad = shown(text);
            problem(w, line_of(w, c),
                    "<vcpus> '%s' must be an integer from 1 to %u", bad,
                    MANIFEST_VCPUS_MAX);
            return;
        }
        m->vm.vcpus = (guint)n;
    } else if (is_el(c, "memory")) {
        static const char *const attrs[] = {"unit", NULL};
        static const char *const units[] = {"KiB", "MiB", "GiB", NULL};
        static const guint64 unit_kib[] = {1, 1024, 1024 * 1024};
        g_autofree char *text = NULL;
        int unit = 0;
        guint64 n;

        if (!first_of(w, c, &seen->memory))
            return;
        check_attributes(w, c, attrs);
        enum_attr(w, c, "unit", units, &unit);
        text = get_text(w, c, true);
        if (!parse_u64(text, G_MAXUINT64, &n) || n == 0 ||
            n > MANIFEST_MEMORY_MAX_KIB / unit_kib[unit]) {
            g_autofree char *bad = shown(text);
            problem(w, line_of(w, c),
                    "<memory> '%s' %s must be an integer above 0 and at most "
                    "4 TiB",
                    bad, units[unit]);
            return;
        }
        m->vm.memory_kib = n * unit_kib[unit];
    } else if (is_el(c, "boot")) {
        if (first_of(w, c, &seen->boot))
            parse_boot(w, c);
    } else if (is_el(c, "interface")) {
        if (++seen->interfaces > MANIFEST_INTERFACES_MAX) {
            problem(w, line_of(w, c), "more than %u <interface> elements",
                    MANIFEST_INTERFACES_MAX);
            return;
        }
        parse_interface(w, c);
    }
}

static void
parse_vm(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"hypervisor", NULL};
    static const char *const children[] = {"vcpus", "memory", "boot",
                                           "interface", NULL};
    static const char *const hypervisors[] = {"kvm", "qemu", "xen", NULL};
    VmSeen seen = {0};
    int hv = MANIFEST_HYPERVISOR_KVM;

    check_attributes(w, el, attrs);
    enum_attr(w, el, "hypervisor", hypervisors, &hv);
    w->m->vm.hypervisor = (ManifestHypervisor)hv;
    each_child(w, el, children, vm_child, &seen);
    if (!seen.vcpus)
        problem(w, line_of(w, el), "<vm> has no <vcpus>");
    if (!seen.memory)
        problem(w, line_of(w, el), "<vm> has no <memory>");
}

/* ---- <customize> ------------------------------------------------------- */

typedef struct {
    guint hostname;
    guint files;
    guint ssh_keys;
    guint firstboot;
    GHashTable *file_lines; /* path -> line of its first <file> */
} CustomizeSeen;

static void
parse_file(Walker *w, xmlNode *el, CustomizeSeen *seen)
{
    static const char *const attrs[] = {"path", "mode", NULL};
    g_autofree char *path = NULL;
    g_autofree char *mode = NULL;
    g_autofree char *content = NULL;
    g_autoptr(GError) err = NULL;
    ManifestFile *file;
    guint64 mode_value = MANIFEST_DEFAULT_FILE_MODE;
    const char *why;
    bool ok = true;

    check_attributes(w, el, attrs);
    path = required_attr(w, el, "path");
    if (path && (why = manifest_path_problem(path, true))) {
        g_autofree char *bad = shown(path);
        problem(w, attr_line(w, el, "path"), "file path '%s' is invalid: %s",
                bad, why);
        ok = false;
    } else if (path) {
        gpointer first = g_hash_table_lookup(seen->file_lines, path);
        if (first) {
            g_autofree char *bad = shown(path);
            problem(w, attr_line(w, el, "path"),
                    "duplicate file path '%s' (the first is on line %u)", bad,
                    GPOINTER_TO_UINT(first));
            ok = false;
        } else {
            g_hash_table_insert(seen->file_lines, g_strdup(path),
                                GUINT_TO_POINTER(line_of(w, el)));
        }
    } else {
        ok = false;
    }

    mode = get_attr(el, "mode");
    if (mode) {
        bool digits_ok = *mode && strlen(mode) <= 5;
        for (const char *p = mode; digits_ok && *p; p++)
            digits_ok = *p >= '0' && *p <= '7';
        if (digits_ok)
            mode_value = g_ascii_strtoull(mode, NULL, 8);
        if (!digits_ok || mode_value > MANIFEST_FILE_MODE_MAX) {
            g_autofree char *bad = shown(mode);
            problem(w, attr_line(w, el, "mode"),
                    "file mode '%s' must be octal and at most 07777", bad);
            ok = false;
        }
    }

    content = get_text(w, el, false);
    if (!manifest_template_check(content, MANIFEST_VARS_ALL, NULL, NULL,
                                 &err)) {
        problem(w, line_of(w, el), "<file> content: %s", err->message);
        ok = false;
    }
    if (!ok)
        return;

    file = g_new0(ManifestFile, 1);
    file->path = g_steal_pointer(&path);
    file->mode = (guint)mode_value;
    file->content = g_steal_pointer(&content);
    g_ptr_array_add(w->m->customize.files, file);
    {
        guint line = line_of(w, el);
        g_array_append_val(w->file_lines, line);
    }
}

static void
parse_ssh_key(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"user", NULL};
    g_autofree char *user = get_attr(el, "user");
    g_autofree char *key = NULL;
    ManifestSshKey *k;
    const char *why;
    bool ok = true;

    check_attributes(w, el, attrs);
    if (!user) {
        user = g_strdup(MANIFEST_DEFAULT_SSH_USER);
    } else if (!is_posix_user(user)) {
        g_autofree char *bad = shown(user);
        problem(w, attr_line(w, el, "user"),
                "user name '%s' is not a valid POSIX user name "
                "([a-z_][a-z0-9_-]*, at most %u characters)",
                bad, MANIFEST_USER_NAME_MAX_CHARS);
        ok = false;
    }
    key = get_text(w, el, true);
    if (strlen(key) > MANIFEST_SSH_KEY_MAX_BYTES) {
        problem(w, line_of(w, el), "ssh key is longer than %u bytes",
                MANIFEST_SSH_KEY_MAX_BYTES);
        ok = false;
    } else if ((why = ssh_key_problem(key))) {
        g_autofree char *bad = shown(key);
        problem(w, line_of(w, el), "ssh key '%s' is invalid: %s", bad, why);
        ok = false;
    }
    if (!ok)
        return;
    k = g_new0(ManifestSshKey, 1);
    k->user = g_steal_pointer(&user);
    k->key = g_steal_pointer(&key);
    g_ptr_array_add(w->m->customize.ssh_keys, k);
}

static void
customize_child(Walker *w, xmlNode *c, gpointer data)
{
    CustomizeSeen *seen = data;
    Manifest *m = w->m;

    if (is_el(c, "hostname")) {
        g_autofree char *text = NULL;
        g_autoptr(GError) err = NULL;

        if (!first_of(w, c, &seen->hostname))
            return;
        check_attributes(w, c, (const char *const[]){NULL});
        text = get_text(w, c, true);
        if (strlen(text) > MANIFEST_HOSTNAME_TEMPLATE_MAX_BYTES) {
            problem(w, line_of(w, c), "<hostname> is longer than %u bytes",
                    MANIFEST_HOSTNAME_TEMPLATE_MAX_BYTES);
            w->hostname_failed = true;
            return;
        }
        if (!manifest_template_check(text,
                                     MANIFEST_VAR_SERVICE | MANIFEST_VAR_INDEX,
                                     NULL, NULL, &err)) {
            problem(w, line_of(w, c),
                    "<hostname>: %s (a hostname may use {service} and "
                    "{index} only)",
                    err->message);
            w->hostname_failed = true;
            return;
        }
        w->hostname_line = line_of(w, c);
        g_free(m->customize.hostname);
        m->customize.hostname = g_steal_pointer(&text);
    } else if (is_el(c, "file")) {
        if (++seen->files > MANIFEST_FILES_MAX) {
            problem(w, line_of(w, c), "more than %u <file> elements",
                    MANIFEST_FILES_MAX);
            return;
        }
        parse_file(w, c, seen);
    } else if (is_el(c, "ssh-key")) {
        if (++seen->ssh_keys > MANIFEST_SSH_KEYS_MAX) {
            problem(w, line_of(w, c), "more than %u <ssh-key> elements",
                    MANIFEST_SSH_KEYS_MAX);
            return;
        }
        parse_ssh_key(w, c);
    } else if (is_el(c, "firstboot")) {
        g_autofree char *text = NULL;
        g_autoptr(GError) err = NULL;

        if (++seen->firstboot > MANIFEST_FIRSTBOOT_MAX) {
            problem(w, line_of(w, c), "more than %u <firstboot> elements",
                    MANIFEST_FIRSTBOOT_MAX);
            return;
        }
        check_attributes(w, c, (const char *const[]){NULL});
        text = get_text(w, c, true);
        if (!*text) {
            problem(w, line_of(w, c), "<firstboot> is empty");
            return;
        }
        if (strlen(text) > MANIFEST_FIRSTBOOT_MAX_BYTES) {
            problem(w, line_of(w, c), "<firstboot> is longer than %u bytes",
                    MANIFEST_FIRSTBOOT_MAX_BYTES);
            return;
        }
        if (!manifest_template_check(text, MANIFEST_VARS_ALL, NULL, NULL,
                                     &err)) {
            problem(w, line_of(w, c), "<firstboot>: %s", err->message);
            return;
        }
        g_ptr_array_add(m->customize.firstboot, g_steal_pointer(&text));
    }
}

static void
parse_customize(Walker *w, xmlNode *el)
{
    static const char *const children[] = {"hostname", "file", "ssh-key",
                                           "firstboot", NULL};
    CustomizeSeen seen = {0};

    static const char *const attrs[] = {"method", NULL};
    /* in ManifestCustomizeMethod's order */
    static const char *const methods[] = {"libguestfs", "cloud-init", NULL};
    int method = MANIFEST_CUSTOMIZE_LIBGUESTFS;

    w->customize_line = line_of(w, el);
    seen.file_lines =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    check_attributes(w, el, attrs);
    enum_attr(w, el, "method", methods, &method);
    w->m->customize.method = (ManifestCustomizeMethod)method;
    each_child(w, el, children, customize_child, &seen);
    g_hash_table_unref(seen.file_lines);
}

/* ---- <scaling> --------------------------------------------------------- */

static void
parse_rule(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"metric", "above", "below", "add",
                                        "remove", "for",   NULL};
    static const char *const metrics[] = {"requests", "cpu", "memory", NULL};
    g_autofree char *metric = NULL;
    g_autofree char *above = get_attr(el, "above");
    g_autofree char *below = get_attr(el, "below");
    g_autofree char *add = get_attr(el, "add");
    g_autofree char *remove = get_attr(el, "remove");
    g_autofree ManifestRule *rule = g_new0(ManifestRule, 1);
    int metric_index = -1;
    guint64 step = 0;
    bool ok = true;

    check_attributes(w, el, attrs);
    each_child(w, el, (const char *const[]){NULL}, NULL, NULL);

    metric = required_attr(w, el, "metric");
    if (metric) {
        enum_attr(w, el, "metric", metrics, &metric_index);
        if (metric_index < 0)
            ok = false;
        else
            rule->metric = (ManifestMetric)metric_index;
    } else {
        ok = false;
    }

    if (!above == !below) {
        problem(w, line_of(w, el),
                "<rule> needs exactly one of 'above' and 'below'");
        ok = false;
    } else {
        const char *name = above ? "above" : "below";
        const char *value = above ? above : below;

        rule->above = above != NULL;
        if (!parse_threshold(value, &rule->threshold)) {
            g_autofree char *bad = shown(value);
            problem(w, attr_line(w, el, name),
                    "%s '%s' on <rule> is not a non-negative decimal number "
                    "(at most %u digits before the point and %u after, at "
                    "most 1e12)",
                    name, bad, MANIFEST_THRESHOLD_INT_MAX_DIGITS,
                    MANIFEST_THRESHOLD_FRAC_MAX_DIGITS);
            ok = false;
        } else if (metric_index > 0 && rule->threshold > 1.0) {
            g_autofree char *bad = shown(value);
            problem(w, attr_line(w, el, name),
                    "%s '%s' on a %s rule must lie in [0, 1] (a fraction)",
                    name, bad, metric);
            ok = false;
        }
    }

    if (!add == !remove) {
        problem(w, line_of(w, el),
                "<rule> needs exactly one of 'add' and 'remove'");
        ok = false;
    } else {
        rule->add = add != NULL;
        if (!uint_attr(w, el, add ? "add" : "remove", true, 1,
                       MANIFEST_STEP_MAX, &step))
            ok = false;
        rule->step = (guint)step;
    }

    if (get_attr_present(el, "for") &&
        !duration_attr(w, el, "for", &rule->for_seconds))
        ok = false;

    if (ok)
        g_ptr_array_add(w->m->scaling.rules, g_steal_pointer(&rule));
}

/* ---- <schedule> -------------------------------------------------------- */

/* What <scaling> keeps of its children for the checks after them. */
typedef struct {
    guint rules;
    guint schedules;
    GHashTable *schedule_lines; /* manifest_schedule_text -> line */
    GArray *set_lines; /* of guint, parallel to m->scaling.schedules: the
                        * line of 'set', 0 without */
} ScalingSeen;

G_DEFINE_AUTOPTR_CLEANUP_FUNC(ManifestSchedule, manifest_schedule_free)

/* the timezone attribute (default UTC) into s->timezone and s->tz */
static bool
schedule_zone(Walker *w, xmlNode *el, ManifestSchedule *s)
{
    g_autofree char *name = get_attr(el, "timezone");
    g_autofree char *why = NULL;

    if (!name) {
        s->timezone = g_strdup(MANIFEST_DEFAULT_TIMEZONE);
        s->tz = g_time_zone_new_utc();
        return true;
    }
    if (!(s->tz = cron_zone_new(name, &why))) {
        g_autofree char *bad = shown(name);

        problem(w, attr_line(w, el, "timezone"),
                "timezone '%s' on <schedule>: %s", bad, why);
        return false;
    }
    s->timezone = g_steal_pointer(&name);
    return true;
}

/* the at attribute @at: its instant, in s->tz unless it has an offset */
static bool
schedule_at(Walker *w, xmlNode *el, const char *at, ManifestSchedule *s)
{
    g_autofree char *why = NULL;
    g_autofree char *bad = shown(at);
    guint line = attr_line(w, el, "at");
    gint32 offset = 0;

    s->has_at = true;
    if (!cron_at_parse(at, &s->at_wall, &s->at_has_offset, &offset, &why)) {
        problem(w, line, "at '%s' on <schedule>: %s", bad, why);
        return false;
    }
    if (s->at_has_offset) {
        if (get_attr_present(el, "timezone")) {
            problem(w, line,
                    "at '%s' on <schedule> has an offset, so 'timezone' "
                    "would mean nothing: give one or the other",
                    bad);
            return false;
        }
        g_clear_pointer(&s->timezone, g_free);
        s->at = s->at_wall - offset;
        return true;
    }
    if (s->tz &&
        cron_wall_to_utc(s->tz, s->at_wall, &s->at) == CRON_WALL_SKIPPED) {
        problem(w, line,
                "at '%s' on <schedule> does not exist in %s: the clocks "
                "skip it",
                bad, s->timezone);
        return false;
    }
    return s->tz != NULL;
}

/* the cron or at attribute, exactly one */
static bool
schedule_when(Walker *w, xmlNode *el, ManifestSchedule *s)
{
    g_autofree char *cron = get_attr(el, "cron");
    g_autofree char *at = get_attr(el, "at");
    g_autofree char *why = NULL;
    g_autofree char *normalized = NULL;

    if (!cron == !at) {
        problem(w, line_of(w, el),
                "<schedule> needs exactly one of 'cron' and 'at'");
        return false;
    }
    if (at)
        return schedule_at(w, el, at, s);
    if (!cron_parse(cron, &s->parsed, &normalized, &why)) {
        g_autofree char *bad = shown(cron);

        problem(w, attr_line(w, el, "cron"), "cron '%s' on <schedule>: %s", bad,
                why);
        return false;
    }
    s->cron = g_steal_pointer(&normalized);
    return true;
}

/* "N" or "N%" of an add or remove */
static bool
parse_schedule_step(const char *v, guint64 percent_max, guint *ret_amount,
                    bool *ret_percent)
{
    g_autofree char *digits = g_strdup(v);
    gsize len = strlen(digits);
    bool percent = len > 0 && digits[len - 1] == '%';
    guint64 n;

    if (percent)
        digits[len - 1] = '\0';
    if (strlen(digits) > 4 ||
        !parse_u64(digits, percent ? percent_max : MANIFEST_STEP_MAX, &n) ||
        n < 1)
        return false;
    *ret_amount = (guint)n;
    *ret_percent = percent;
    return true;
}

/* the set, add or remove attribute, exactly one */
static bool
schedule_action(Walker *w, xmlNode *el, ManifestSchedule *s)
{
    static const char *const names[] = {"set", "add", "remove"};
    int which = -1, count = 0;
    guint64 set = 0;

    for (int i = 0; i < 3; i++) {
        if (get_attr_present(el, names[i])) {
            which = i;
            count++;
        }
    }
    if (count != 1) {
        problem(w, line_of(w, el),
                "<schedule> needs exactly one of 'set', 'add' and 'remove'");
        return false;
    }
    s->action = (ManifestScheduleAction)which;
    if (s->action == MANIFEST_SCHEDULE_SET) {
        if (!uint_attr(w, el, "set", true, 0, MANIFEST_CLONES_MAX, &set))
            return false;
        s->amount = (guint)set;
    } else {
        g_autofree char *v = get_attr(el, names[which]);
        guint64 pmax = s->action == MANIFEST_SCHEDULE_ADD
                           ? MANIFEST_SCHEDULE_ADD_PERCENT_MAX
                           : MANIFEST_SCHEDULE_REMOVE_PERCENT_MAX;

        if (!parse_schedule_step(v, pmax, &s->amount, &s->percent)) {
            g_autofree char *bad = shown(v);

            problem(w, attr_line(w, el, names[which]),
                    "%s '%s' on <schedule> must be an integer from 1 to %u, "
                    "or a percentage from 1%% to %" G_GUINT64_FORMAT "%%",
                    names[which], bad, MANIFEST_STEP_MAX, pmax);
            return false;
        }
    }
    return true;
}

static void
parse_schedule(Walker *w, xmlNode *el, ScalingSeen *seen)
{
    static const char *const attrs[] = {"cron", "at",     "timezone", "set",
                                        "add",  "remove", "grace",    NULL};
    g_autoptr(ManifestSchedule) s = g_new0(ManifestSchedule, 1);
    g_autofree char *text = NULL;
    bool ok;
    gpointer first;
    guint set_line;

    check_attributes(w, el, attrs);
    each_child(w, el, (const char *const[]){NULL}, NULL, NULL);
    s->grace_seconds = MANIFEST_DEFAULT_GRACE_SECONDS;
    ok = schedule_zone(w, el, s);
    ok = schedule_when(w, el, s) && ok;
    ok = schedule_action(w, el, s) && ok;
    if (get_attr_present(el, "grace")) {
        if (!duration_attr(w, el, "grace", &s->grace_seconds)) {
            ok = false;
        } else if (s->grace_seconds < MANIFEST_SCHEDULE_GRACE_MIN_SECONDS) {
            problem(w, attr_line(w, el, "grace"),
                    "grace on <schedule> must be at least %u s, more than "
                    "the time between two evaluations",
                    MANIFEST_SCHEDULE_GRACE_MIN_SECONDS);
            ok = false;
        }
    }
    if (!ok)
        return;
    text = manifest_schedule_text(s);
    first = g_hash_table_lookup(seen->schedule_lines, text);
    if (first) {
        problem(w, line_of(w, el),
                "duplicate <schedule> (the same as on line %u)",
                GPOINTER_TO_UINT(first));
        return;
    }
    g_hash_table_insert(seen->schedule_lines, g_steal_pointer(&text),
                        GUINT_TO_POINTER(line_of(w, el)));
    set_line = s->action == MANIFEST_SCHEDULE_SET ? attr_line(w, el, "set") : 0;
    g_array_append_val(seen->set_lines, set_line);
    g_ptr_array_add(w->m->scaling.schedules, g_steal_pointer(&s));
}

/* a scheduled set must lie in [min, max] */
static void
check_schedule_sets(Walker *w, const ScalingSeen *seen)
{
    const Manifest *m = w->m;

    for (guint i = 0; i < m->scaling.schedules->len; i++) {
        const ManifestSchedule *s = m->scaling.schedules->pdata[i];

        if (s->action == MANIFEST_SCHEDULE_SET &&
            (s->amount < m->scaling.min || s->amount > m->scaling.max))
            problem(w, g_array_index(seen->set_lines, guint, i),
                    "set %u on <schedule> is outside [min, max] = [%u, %u]",
                    s->amount, m->scaling.min, m->scaling.max);
    }
}

static void
scaling_child(Walker *w, xmlNode *c, gpointer data)
{
    ScalingSeen *seen = data;

    if (is_el(c, "schedule")) {
        if (++seen->schedules > MANIFEST_SCHEDULES_MAX) {
            problem(w, line_of(w, c), "more than %u <schedule> elements",
                    MANIFEST_SCHEDULES_MAX);
            return;
        }
        parse_schedule(w, c, seen);
        return;
    }
    if (++seen->rules > MANIFEST_RULES_MAX) {
        problem(w, line_of(w, c), "more than %u <rule> elements",
                MANIFEST_RULES_MAX);
        return;
    }
    parse_rule(w, c);
}

static void
parse_scaling(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"min",      "max",           "initial",
                                        "cooldown", "stabilization", NULL};
    static const char *const children[] = {"rule", "schedule", NULL};
    Manifest *m = w->m;
    guint64 min = 0, max = 0, initial = 0;
    bool have_min, have_max, have_initial;
    ScalingSeen seen = {0};

    w->scaling_line = line_of(w, el);
    check_attributes(w, el, attrs);
    have_min = uint_attr(w, el, "min", true, 0, MANIFEST_CLONES_MAX, &min);
    have_max = uint_attr(w, el, "max", true, 0, MANIFEST_CLONES_MAX, &max);
    if (have_max)
        w->clones_max = (guint)max;
    have_initial =
        uint_attr(w, el, "initial", false, 0, MANIFEST_CLONES_MAX, &initial);
    duration_attr(w, el, "cooldown", &m->scaling.cooldown_seconds);
    duration_attr(w, el, "stabilization", &m->scaling.stabilization_seconds);

    if (have_min && have_max) {
        if (!have_initial && !get_attr_present(el, "initial"))
            initial = min;
        if (min > max)
            problem(w, attr_line(w, el, "min"),
                    "min %" G_GUINT64_FORMAT " is above max %" G_GUINT64_FORMAT
                    " (need 0 <= min <= initial <= max <= %u)",
                    min, max, MANIFEST_CLONES_MAX);
        else if (have_initial && (initial < min || initial > max))
            problem(w, attr_line(w, el, "initial"),
                    "initial %" G_GUINT64_FORMAT
                    " is outside [min, max] = [%" G_GUINT64_FORMAT
                    ", %" G_GUINT64_FORMAT "]",
                    initial, min, max);
        m->scaling.min = (guint)min;
        m->scaling.max = (guint)max;
        m->scaling.initial = (guint)initial;
    }
    seen.schedule_lines =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    seen.set_lines = g_array_new(FALSE, FALSE, sizeof(guint));
    each_child(w, el, children, scaling_child, &seen);
    if (have_min && have_max && min <= max)
        check_schedule_sets(w, &seen);
    g_hash_table_unref(seen.schedule_lines);
    g_array_unref(seen.set_lines);
}

/* ---- <placement> ------------------------------------------------------- */

static void
placement_child(Walker *w, xmlNode *c, gpointer data)
{
    GHashTable *lines = data;
    g_autofree char *host = NULL;
    gpointer first;

    if (g_hash_table_size(lines) >= MANIFEST_HOSTS_MAX) {
        problem(w, line_of(w, c), "more than %u <host> elements",
                MANIFEST_HOSTS_MAX);
        return;
    }
    check_attributes(w, c, (const char *const[]){NULL});
    host = get_text(w, c, true);
    if (!is_name(host, true)) {
        g_autofree char *bad = shown(host);
        problem(w, line_of(w, c),
                "host name '%s' is invalid: use 1 to 63 characters from a-z, "
                "0-9, '-' and '.', starting with a letter or digit",
                bad);
        return;
    }
    if ((first = g_hash_table_lookup(lines, host))) {
        g_autofree char *bad = shown(host);
        problem(w, line_of(w, c),
                "duplicate host '%s' (the first is on line %u)", bad,
                GPOINTER_TO_UINT(first));
        return;
    }
    g_hash_table_insert(lines, g_strdup(host), GUINT_TO_POINTER(line_of(w, c)));
    g_ptr_array_add(w->m->placement.hosts, g_steal_pointer(&host));
}

static void
parse_placement(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"strategy", NULL};
    static const char *const children[] = {"host", NULL};
    static const char *const strategies[] = {"spread", "pack", NULL};
    g_autoptr(GHashTable) lines =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    int strategy = MANIFEST_PLACEMENT_SPREAD;

    check_attributes(w, el, attrs);
    enum_attr(w, el, "strategy", strategies, &strategy);
    w->m->placement.strategy = (ManifestPlacementStrategy)strategy;
    each_child(w, el, children, placement_child, lines);
}

/* ---- <update> ---------------------------------------------------------- */

/* parse_update: the rolling replacement's bounds; both 0 could never
 * replace a clone (none may stop before its successor, none may be added) */
static void
parse_update(Walker *w, xmlNode *el)
{
    static const char *const attrs[] = {"max-unavailable", "max-surge", NULL};
    guint64 unavailable = MANIFEST_DEFAULT_MAX_UNAVAILABLE;
    guint64 surge = MANIFEST_DEFAULT_MAX_SURGE;
    bool ok;

    check_attributes(w, el, attrs);
    each_child(w, el, (const char *const[]){NULL}, NULL, NULL);
    ok = (!get_attr_present(el, "max-unavailable") ||
          uint_attr(w, el, "max-unavailable", false, 0, MANIFEST_CLONES_MAX,
                    &unavailable)) &&
         (!get_attr_present(el, "max-surge") ||
          uint_attr(w, el, "max-surge", false, 0, MANIFEST_CLONES_MAX, &surge));
    if (!ok)
        return;
    if (unavailable == 0 && surge == 0) {
        problem(w, line_of(w, el),
                "<update> with max-unavailable 0 and max-surge 0 could never "
                "replace a clone: allow one of them");
        return;
    }
    w->m->update.max_unavailable = (guint)unavailable;
    w->m->update.max_surge = (guint)surge;
}

/* ---- <service> --------------------------------------------------------- */

typedef struct {
    guint description;
    guint image;
    guint vm;
    guint customize;
    guint scaling;
    guint placement;
    guint update;
} ServiceSeen;

static void
service_child(Walker *w, xmlNode *c, gpointer data)
{
    ServiceSeen *seen = data;

    if (is_el(c, "description")) {
        g_autofree char *text = NULL;

        if (!first_of(w, c, &seen->description))
            return;
        check_attributes(w, c, (const char *const[]){NULL});
        text = get_text(w, c, true);
        if (strlen(text) > MANIFEST_DESCRIPTION_MAX_BYTES)
            problem(w, line_of(w, c), "<description> is longer than %u bytes",
                    MANIFEST_DESCRIPTION_MAX_BYTES);
        else if (has_control_chars(text, true))
            problem(w, line_of(w, c), "<description> holds control characters");
        else
            w->m->description = g_steal_pointer(&text);
    } else if (is_el(c, "image")) {
        if (first_of(w, c, &seen->image))
            parse_image(w, c);
    } else if (is_el(c, "vm")) {
        if (first_of(w, c, &seen->vm))
            parse_vm(w, c);
    } else if (is_el(c, "customize")) {
        if (first_of(w, c, &seen->customize))
            parse_customize(w, c);
    } else if (is_el(c, "scaling")) {
        if (first_of(w, c, &seen->scaling))
            parse_scaling(w, c);
    } else if (is_el(c, "placement")) {
        if (first_of(w, c, &seen->placement))
            parse_placement(w, c);
    } else if (is_el(c, "update")) {
        if (first_of(w, c, &seen->update))
            parse_update(w, c);
    }
}

/*
 * Checks that need the whole manifest: the hostname for every index below
 * max, and the size of every file once its placeholders are expanded.
 * They run even when other fields had problems, on the fields that parsed:
 * a field that failed is left out (an unknown length counts as 0), so that
 * a check can miss a problem but never report one that is not there.
 */
static void
check_hostnames(Walker *w, ManifestVarLengths *lengths)
{
    Manifest *m = w->m;
    guint line = w->hostname_line ? w->hostname_line : w->service_name_line;
    bool reported = false;

    /* the default template uses {service}; so may any other */
    if (!m->name || !m->customize.hostname || w->hostname_failed)
        return;

    for (guint i = 0; i < MAX(w->clones_max, 1u); i++) {
        ManifestVars vars = {.service = m->name, .index = i};
        g_autofree char *h = manifest_template_expand(
            m->customize.hostname, MANIFEST_VAR_SERVICE | MANIFEST_VAR_INDEX,
            &vars, NULL);
        const char *why;

        if (!h)
            return; /* already reported */
        /* one problem per template, but the longest expansion still bounds
         * the files' {hostname} */
        if (!reported && (why = rfc1123_problem(h))) {
            g_autofree char *bad = shown(h);
            problem(w, line,
                    "%shostname template yields '%s' for clone %u, which is "
                    "not a valid hostname: %s",
                    w->hostname_line ? "" : "the default ", bad, i, why);
            reported = true;
        }
        lengths->hostname = MAX(lengths->hostname, strlen(h));
    }
}

static void
check_file_sizes(Walker *w, const ManifestVarLengths *lengths)
{
    Manifest *m = w->m;
    gsize total = 0;

    for (guint i = 0; i < m->customize.files->len; i++) {
        const ManifestFile *f = m->customize.files->pdata[i];
        gsize max_len = 0;

        if (!manifest_template_check(f->content, MANIFEST_VARS_ALL, lengths,
                                     &max_len, NULL))
            continue;
        if (max_len > MANIFEST_FILE_MAX_BYTES) {
            g_autofree char *bad = shown(f->path);
            problem(w, g_array_index(w->file_lines, guint, i),
                    "file '%s' can reach %" G_GSIZE_FORMAT
                    " bytes with its placeholders expanded; the limit is "
                    "%u",
                    bad, max_len, MANIFEST_FILE_MAX_BYTES);
        }
        total += max_len;
    }
    if (total > MANIFEST_FILES_TOTAL_MAX_BYTES)
        problem(w, w->customize_line,
                "files together can reach %" G_GSIZE_FORMAT
                " bytes with their placeholders expanded; the limit is %u",
                total, MANIFEST_FILES_TOTAL_MAX_BYTES);
}

static void
check_cross(Walker *w)
{
    ManifestVarLengths lengths = {0};
    char digits[16];

    lengths.service = w->m->name ? strlen(w->m->name) : 0;
    lengths.index = (gsize)g_snprintf(digits, sizeof(digits), "%u",
                                      w->clones_max ? w->clones_max - 1 : 0);
    lengths.host = MANIFEST_HOST_NAME_MAX_CHARS;
    check_hostnames(w, &lengths);
    check_file_sizes(w, &lengths);
}

/* ---- RelaxNG ----------------------------------------------------------- */

static xmlRelaxNG *
compiled_schema(void)
{
    static gsize once = 0;
    static xmlRelaxNG *schema = NULL;

    if (g_once_init_enter(&once)) {
        g_autoptr(GBytes) rng = g_resource_lookup_data(
            spore_schemas_get_resource(), "/org/spore/schemas/manifest.rng",
            G_RESOURCE_LOOKUP_FLAGS_NONE, NULL);
        g_autoptr(xmlRelaxNGParserCtxt) pctxt = NULL;
        gsize size = 0;
        const char *data;

        xml_adapter_silence();
        g_assert(rng);
        data = g_bytes_get_data(rng, &size);
        pctxt = xmlRelaxNGNewMemParserCtxt(data, (int)size);
        schema = xmlRelaxNGParse(pctxt);
        g_assert(schema); /* compiled in and tested: cannot fail */
        g_once_init_leave(&once, 1);
    }
    return schema;
}

static void
on_schema_error(void *data, xmlError *err)
{
    Walker *w = data;
    g_autofree char *msg = g_strdup(err->message ? err->message : "invalid");

    g_strchomp(msg);
    problem(w, err->line > 0 ? (guint)err->line : 0, "schema: %s", msg);
}

static void
check_schema(Walker *w, xmlDoc *doc)
{
    g_autoptr(xmlRelaxNGValidCtxt) vctxt =
        xmlRelaxNGNewValidCtxt(compiled_schema());

    xml_adapter_silence();
    xmlRelaxNGSetValidStructuredErrors(vctxt, on_schema_error, w);
    if (xmlRelaxNGValidateDoc(vctxt, doc) != 0 && w->problems->len == 0)
        problem(w, 0, "schema: document does not match manifest.rng");
}

/* ---- entry points ------------------------------------------------------ */

static void
walk_service(Walker *w, xmlNode *root)
{
    static const char *const attrs[] = {"name", NULL};
    static const char *const children[] = {
        "description", "image",     "vm",     "customize",
        "scaling",     "placement", "update", NULL};
    ServiceSeen seen = {0};
    g_autofree char *name = NULL;

    if (!is_el(root, "service") || !in_our_ns(root)) {
        g_autofree char *bad = shown(el_name(root));
        problem(
            w, line_of(w, root),
            "root element must be <service> in namespace '" MANIFEST_NAMESPACE
            "', not <%s>%s",
            bad, in_our_ns(root) ? "" : " outside that namespace");
        return;
    }
    check_attributes(w, root, attrs);
    w->service_name_line = attr_line(w, root, "name");
    name = required_attr(w, root, "name");
    if (name && !is_name(name, false)) {
        g_autofree char *bad = shown(name);
        problem(w, attr_line(w, root, "name"),
                "service name '%s' is invalid: use 1 to 63 characters from "
                "a-z, 0-9 and '-', starting with a letter or digit",
                bad);
    } else if (name) {
        w->m->name = g_steal_pointer(&name);
    }

    each_child(w, root, children, service_child, &seen);
    if (!seen.image)
        problem(w, line_of(w, root), "<service> has no <image>");
    if (!seen.vm)
        problem(w, line_of(w, root), "<service> has no <vm>");
    check_cross(w);
}

static gint
problem_cmp(gconstpointer a, gconstpointer b)
{
    const ManifestProblem *pa = *(const ManifestProblem *const *)a;
    const ManifestProblem *pb = *(const ManifestProblem *const *)b;

    return (pa->line > pb->line) - (pa->line < pb->line);
}

Manifest *
manifest_parse_data(const char *data, gsize len, GPtrArray *problems,
                    GError **error)
{
    static const XmlSafeLimits limits = {
        .max_bytes = MANIFEST_MAX_BYTES,
        .max_depth = MANIFEST_MAX_DEPTH,
    };
    g_autoptr(GPtrArray) own_problems = NULL;
    g_autoptr(XmlSafeDoc) xdoc = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(GError) parse_error = NULL;
    g_autoptr(GArray) file_lines = NULL;
    guint first_new;
    guint line = 0;
    Walker w = {0};

    if (!problems)
        problems = own_problems = manifest_problems_new();
    first_new = problems->len;
    w.problems = problems;

    xdoc = xml_safe_parse(data, len, &limits, &line, &parse_error);
    if (!xdoc) {
        problem(&w, line, "%s", parse_error->message);
        g_set_error(error, SPORE_ERROR, parse_error->code, "%u: %s", line,
                    parse_error->message);
        return NULL;
    }

    m = manifest_new();
    file_lines = g_array_new(FALSE, FALSE, sizeof(guint));
    w.file_lines = file_lines;
    w.xdoc = xdoc;
    w.m = m;
    w.clones_max = m->scaling.max;
    walk_service(&w, xml_safe_doc_root(xdoc));
    if (w.problems->len == first_new)
        check_schema(&w, xml_safe_doc_xml(xdoc));

    if (w.problems->len > first_new) {
        const ManifestProblem *p;
        guint n = w.problems->len - first_new;

        /* stable: problems on one line stay in the order found */
        if (first_new == 0)
            g_ptr_array_sort(w.problems, problem_cmp);
        if (w.truncated) {
            ManifestProblem *last = g_new0(ManifestProblem, 1);
            last->message = g_strdup_printf("more than %u problems; the "
                                            "rest are not reported",
                                            MANIFEST_MAX_PROBLEMS);
            g_ptr_array_add(w.problems, last);
        }
        p = w.problems->pdata[first_new];
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, "%u: %s%s",
                    p->line, p->message, n > 1 ? " (and more problems)" : "");
        return NULL;
    }
    return g_steal_pointer(&m);
}

Manifest *
manifest_parse_file(const char *path, GPtrArray *problems, GError **error)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    GError *err = NULL;

    if (!spore_file_read_bounded(path, MANIFEST_MAX_BYTES, &data, &len, &err)) {
        if (err->code == SPORE_ERROR_LIMIT && problems) {
            ManifestProblem *p = g_new0(ManifestProblem, 1);
            p->message = g_strdup_printf("manifest is larger than %u bytes",
                                         MANIFEST_MAX_BYTES);
            g_ptr_array_add(problems, p);
        }
        g_propagate_error(error, err);
        return NULL;
    }
    return manifest_parse_data(data, len, problems, error);
}
