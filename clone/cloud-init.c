/*
 * cloud-init.c: a clone's <customize> as a NoCloud seed (see cloud-init.h).
 *
 * Rendering is pure text: a GString per file, each value placed through
 * yaml_str() (a double-quoted scalar) or base64, so the YAML structure is
 * only ever the one written here.  Invariants:
 *   1. every scalar from the manifest or the host goes through yaml_str();
 *   2. file content is base64, never a YAML scalar (whitespace, trailing
 *      newlines and any byte survive);
 *   3. guest paths are checked again (manifest_path_problem), as
 *      customize.c does: a Manifest need not come from the parser.
 * The seed ISO is written by an external mkisofs (argument vector) from a
 * private temporary directory, into a temporary name next to @path, and
 * renamed over nothing: a seed is whole or absent.
 */
#include "cloud-init.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spore-error.h"
#include "template.h"

/* mkisofs implementations tried in order (both Debian packages) */
static const char *const mkisofs_programs[] = {"genisoimage", "xorrisofs",
                                               NULL};

/* Code point @c inside a YAML double-quoted scalar. */
static void
yaml_char(GString *out, gunichar c)
{
    if (c == '"' || c == '\\')
        g_string_append_printf(out, "\\%c", (char)c);
    else if (c >= 0x20 && c < 0x7f)
        g_string_append_c(out, (char)c);
    else if (c < 0x100)
        g_string_append_printf(out, "\\x%02x", (guint)c);
    else if (c < 0x10000)
        g_string_append_printf(out, "\\u%04x", (guint)c);
    else
        g_string_append_printf(out, "\\U%08x", (guint)c);
}

/*
 * yaml_str: @s as a YAML double-quoted scalar (invariant 1): printable
 * ASCII but '"' and '\\' as is, everything else escaped by code point, so
 * the result is ASCII and means @s in YAML 1.1 (PyYAML) and 1.2 alike.
 */
static bool
yaml_str(GString *out, const char *s, const char *what, GError **error)
{
    if (!g_utf8_validate(s, -1, NULL)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, "%s is not UTF-8",
                    what);
        return false;
    }
    g_string_append_c(out, '"');
    for (const char *p = s; *p; p = g_utf8_next_char(p))
        yaml_char(out, g_utf8_get_char(p));
    g_string_append_c(out, '"');
    return true;
}

typedef struct {
    const CloudInitSeedSpec *spec;
    ManifestVars vars;
    char *hostname;
    GString *out;
} Render;

static char *
expand(Render *r, const char *tmpl, GError **error)
{
    return manifest_template_expand(tmpl, MANIFEST_VARS_ALL, &r->vars, error);
}

/* hostname, fqdn and the 127.0.1.1 line (customize.c's set_hostname) */
static bool
render_hostname(Render *r, GError **error)
{
    GString *o = r->out;

    g_string_append(o, "preserve_hostname: false\n"
                       "prefer_fqdn_over_hostname: true\n"
                       "manage_etc_hosts: \"localhost\"\n"
                       "hostname: ");
    if (!yaml_str(o, r->hostname, "the hostname", error))
        return false;
    g_string_append(o, "\nfqdn: ");
    if (!yaml_str(o, r->hostname, "the hostname", error))
        return false;
    g_string_append_c(o, '\n');
    return true;
}

/* write_files, content base64 (invariant 2), owned by root */
static bool
render_files(Render *r, GError **error)
{
    GPtrArray *files = r->spec->manifest->customize.files;

    if (files->len == 0)
        return true;
    g_string_append(r->out, "write_files:\n");
    for (guint i = 0; i < files->len; i++) {
        const ManifestFile *f = files->pdata[i];
        const char *why = manifest_path_problem(f->path, true);
        g_autofree char *content = NULL;
        g_autofree char *b64 = NULL;
        g_autofree char *what = NULL;

        if (why) { /* invariant 3 */
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "refusing guest path '%s': %s", f->path, why);
            return false;
        }
        content = expand(r, f->content, error);
        if (!content)
            return false;
        b64 = g_base64_encode((const guchar *)content, strlen(content));
        what = g_strdup_printf("file path '%s'", f->path);
        g_string_append(r->out, "- path: ");
        if (!yaml_str(r->out, f->path, what, error))
            return false;
        g_string_append_printf(r->out,
                               "\n  owner: \"root:root\"\n"
                               "  permissions: \"%04o\"\n"
                               "  encoding: \"b64\"\n"
                               "  content: \"%s\"\n",
                               f->mode & 07777u, b64);
    }
    return true;
}

/* users with their keys, in the order each user first appears */
static bool
render_ssh_keys(Render *r, GError **error)
{
    GPtrArray *keys = r->spec->manifest->customize.ssh_keys;
    g_autoptr(GPtrArray) users = g_ptr_array_new();

    if (keys->len == 0)
        return true;
    for (guint i = 0; i < keys->len; i++) {
        const ManifestSshKey *k = keys->pdata[i];

        if (!g_ptr_array_find_with_equal_func(users, k->user, g_str_equal,
                                              NULL))
            g_ptr_array_add(users, k->user);
    }
    g_string_append(r->out, "disable_root: false\nusers:\n");
    for (guint u = 0; u < users->len; u++) {
        const char *user = users->pdata[u];

        g_string_append(r->out, "- name: ");
        if (!yaml_str(r->out, user, "an ssh key's user", error))
            return false;
        g_string_append(r->out, "\n  lock_passwd: false\n"
                                "  ssh_authorized_keys:\n");
        for (guint i = 0; i < keys->len; i++) {
            const ManifestSshKey *k = keys->pdata[i];

            if (!g_str_equal(k->user, user))
                continue;
            g_string_append(r->out, "  - ");
            if (!yaml_str(r->out, k->key, "an ssh key", error))
                return false;
            g_string_append_c(r->out, '\n');
        }
    }
    return true;
}

static bool
render_firstboot(Render *r, GError **error)
{
    GPtrArray *cmds = r->spec->manifest->customize.firstboot;

    if (cmds->len == 0)
        return true;
    g_string_append(r->out, "runcmd:\n");
    for (guint i = 0; i < cmds->len; i++) {
        g_autofree char *cmd = expand(r, cmds->pdata[i], error);

        if (!cmd)
            return false;
        g_string_append(r->out, "- ");
        if (!yaml_str(r->out, cmd, "a first-boot command", error))
            return false;
        g_string_append_c(r->out, '\n');
    }
    return true;
}

static char *
render_meta_data(Render *r, GError **error)
{
    g_autoptr(GString) o = g_string_new("instance-id: ");

    if (!yaml_str(o, r->spec->instance_id, "the instance id", error))
        return NULL;
    g_string_append(o, "\nlocal-hostname: ");
    if (!yaml_str(o, r->hostname, "the hostname", error))
        return NULL;
    g_string_append_c(o, '\n');
    return g_string_free(g_steal_pointer(&o), FALSE);
}

bool
cloud_init_render(const CloudInitSeedSpec *spec, char **ret_user_data,
                  char **ret_meta_data, GError **error)
{
    const Manifest *m = spec->manifest;
    g_autofree char *name = manifest_clone_name(m, spec->index);
    g_autoptr(GString) out = g_string_new(NULL);
    g_autofree char *hostname = NULL;
    g_autofree char *meta = NULL;
    Render r = {.spec = spec, .out = out};
    bool ok;

    if (!spec->instance_id || !*spec->instance_id) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "clone %s: a cloud-init seed needs an instance id", name);
        return false;
    }
    hostname = manifest_clone_hostname(m, spec->index, error);
    if (!hostname) {
        g_prefix_error(error, "clone %s: ", name);
        return false;
    }
    r.hostname = hostname;
    r.vars = (ManifestVars){
        .service = m->name,
        .index = spec->index,
        .hostname = hostname,
        .host = spec->host,
    };
    g_string_append(out, "#cloud-config\n"
                         "# made by spore from the manifest's <customize>\n"
                         "ssh_deletekeys: true\n");
    ok = render_hostname(&r, error) && render_files(&r, error) &&
         render_ssh_keys(&r, error) && render_firstboot(&r, error) &&
         (meta = render_meta_data(&r, error));
    if (!ok) {
        g_prefix_error(error, "clone %s: ", name);
        return false;
    }
    *ret_user_data = g_string_free(g_steal_pointer(&out), FALSE);
    *ret_meta_data = g_steal_pointer(&meta);
    return true;
}

/* ---- the ISO ---------------------------------------------------------- */

static char *
find_mkisofs(void)
{
    for (guint i = 0; mkisofs_programs[i]; i++) {
        char *path = g_find_program_in_path(mkisofs_programs[i]);

        if (path)
            return path;
    }
    return NULL;
}

/* Remove the files in @dir, then @dir (a private temporary directory). */
static void
remove_tmp_dir(const char *dir)
{
    static const char *const names[] = {"user-data", "meta-data", NULL};

    for (guint i = 0; names[i]; i++) {
        g_autofree char *p = g_build_filename(dir, names[i], NULL);
        unlink(p);
    }
    rmdir(dir);
}

static bool
run_mkisofs(const char *mkisofs, const char *dir, const char *out,
            GError **error)
{
    g_autofree char *ud = g_build_filename(dir, "user-data", NULL);
    g_autofree char *md = g_build_filename(dir, "meta-data", NULL);
    const char *argv[] = {mkisofs,   "-quiet", "-output",
                          out,       "-volid", CLOUD_INIT_SEED_LABEL,
                          "-joliet", "-rock",  "-input-charset",
                          "utf-8",   ud,       md,
                          NULL};
    g_autofree char *err_text = NULL;
    int status = 0;

    if (!g_spawn_sync(NULL, (char **)argv, NULL,
                      G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_CLOEXEC_PIPES, NULL,
                      NULL, NULL, &err_text, &status, error))
        return false;
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_strchomp(err_text);
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED, "%s failed: %s",
                    mkisofs, *err_text ? err_text : "(no message)");
        return false;
    }
    return true;
}

bool
cloud_init_seed_write(const CloudInitSeedSpec *spec, const char *path,
                      GError **error)
{
    g_autofree char *user_data = NULL;
    g_autofree char *meta_data = NULL;
    g_autofree char *mkisofs = NULL;
    g_autofree char *dir = NULL;
    g_autofree char *tmp_iso = NULL;
    g_autofree char *ud = NULL;
    g_autofree char *md = NULL;
    bool ok;

    if (access(path, F_OK) == 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "seed '%s' already exists", path);
        return false;
    }
    if (!cloud_init_render(spec, &user_data, &meta_data, error))
        return false;
    mkisofs = find_mkisofs();
    if (!mkisofs) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "cannot write seed '%s': neither genisoimage nor "
                    "xorrisofs is installed",
                    path);
        return false;
    }
    dir = g_dir_make_tmp("spore-seed-XXXXXX", error);
    if (!dir)
        return false;
    ud = g_build_filename(dir, "user-data", NULL);
    md = g_build_filename(dir, "meta-data", NULL);
    tmp_iso = g_strconcat(path, ".tmp", NULL);
    unlink(tmp_iso); /* left by an interrupted write */
    ok = g_file_set_contents(ud, user_data, -1, error) &&
         g_file_set_contents(md, meta_data, -1, error) &&
         run_mkisofs(mkisofs, dir, tmp_iso, error);
    if (ok && chmod(tmp_iso, 0600) < 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot make it private: %s", g_strerror(errno));
        ok = false;
    }
    if (ok && link(tmp_iso, path) < 0) { /* never over an existing file */
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot link it into place: %s", g_strerror(errno));
        ok = false;
    }
    unlink(tmp_iso);
    remove_tmp_dir(dir);
    if (!ok)
        g_prefix_error(error, "seed '%s': ", path);
    return ok;
}
