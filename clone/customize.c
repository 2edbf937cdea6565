/*
 * customize.c: overlays and batch customization with libguestfs.
 *
 * This file is spore's adapter for libguestfs's error model: the default
 * handler (which prints to stderr) is disabled on every handle and
 * guestfs_last_error() becomes the GError message, prefixed with the clone.
 *
 * One handle per batch: every overlay is added as a drive, the appliance is
 * launched once, inspection finds each drive's root, and each clone is
 * mounted, changed and unmounted in turn.  The backend is "direct"; where
 * KVM does not work (virt-detect.h) the appliance runs under TCG.
 */
#include "customize.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <guestfs.h>

#include "spore-error.h"
#include "template.h"
#include "virt-detect.h"

#define FIRSTBOOT_DIR    "/etc/spore/firstboot.d"
#define FIRSTBOOT_SCRIPT "/usr/local/lib/spore/firstboot.sh"
#define FIRSTBOOT_DONE   "/var/lib/spore/firstboot.done"
#define FIRSTBOOT_UNIT   "/etc/systemd/system/spore-firstboot.service"
#define FIRSTBOOT_WANTS \
    "/etc/systemd/system/multi-user.target.wants/spore-firstboot.service"

static bool
gfs_fail(guestfs_h *g, GError **error, const char *what)
{
    const char *msg = guestfs_last_error(g);

    g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED, "%s: %s", what,
                msg ? msg : "libguestfs error");
    return false;
}

static guestfs_h *
gfs_open(GError **error)
{
    guestfs_h *g = guestfs_create_flags(GUESTFS_CREATE_NO_ENVIRONMENT);

    if (!g) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot create a libguestfs handle: %s", g_strerror(errno));
        return NULL;
    }
    guestfs_set_error_handler(g, NULL, NULL);
    guestfs_parse_environment(g); /* LIBGUESTFS_CACHEDIR, debug, ... */
    guestfs_set_backend(g, "direct");
    if (!spore_kvm_works()) {
        char *settings[] = {"force_tcg", NULL};
        guestfs_set_backend_settings(g, settings);
    }
    return g;
}

bool
clone_overlay_create(const char *path, const char *backing,
                     const char *backing_format, GError **error)
{
    guestfs_h *g;
    bool ok;

    if (access(path, F_OK) == 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "overlay '%s' already exists", path);
        return false;
    }
    g = gfs_open(error);
    if (!g)
        return false;
    ok = guestfs_disk_create(
             g, path, "qcow2", -1, GUESTFS_DISK_CREATE_BACKINGFILE, backing,
             GUESTFS_DISK_CREATE_BACKINGFORMAT, backing_format, -1) == 0;
    if (!ok) {
        g_autofree char *what =
            g_strdup_printf("cannot create overlay '%s'", path);
        gfs_fail(g, error, what);
    }
    guestfs_close(g);
    return ok;
}

/* ---- one clone --------------------------------------------------------- */

typedef struct {
    guestfs_h *g;
    const CloneCustomizeJob *job;
    ManifestVars vars;
    char *hostname;
    char *label; /* "clone web-3" for messages */
} Ctx;

static bool
write_file(Ctx *c, const char *path, const char *data, gsize len, int mode,
           GError **error)
{
    g_autofree char *dir = g_path_get_dirname(path);
    g_autofree char *what =
        g_strdup_printf("%s: cannot write '%s'", c->label, path);

    if (guestfs_mkdir_p(c->g, dir) < 0 ||
        guestfs_write(c->g, path, data, len) < 0 ||
        guestfs_chmod(c->g, mode, path) < 0 ||
        guestfs_chown(c->g, 0, 0, path) < 0)
        return gfs_fail(c->g, error, what);
    return true;
}

static char *
expand(Ctx *c, const char *tmpl, GError **error)
{
    char *out =
        manifest_template_expand(tmpl, MANIFEST_VARS_ALL, &c->vars, error);

    if (!out)
        g_prefix_error(error, "%s: ", c->label);
    return out;
}

static bool
set_hostname(Ctx *c, GError **error)
{
    g_autofree char *line = g_strdup_printf("%s\n", c->hostname);
    g_autoptr(GString) hosts = g_string_new(NULL);

    if (!write_file(c, "/etc/hostname", line, strlen(line), 0644, error))
        return false;
    if (guestfs_is_file(c->g, "/etc/hosts") > 0) {
        size_t size = 0;
        g_autofree char *old = guestfs_read_file(c->g, "/etc/hosts", &size);
        g_auto(GStrv) lines = NULL;

        if (!old)
            return gfs_fail(c->g, error, "cannot read /etc/hosts");
        lines = g_strsplit(old, "\n", -1);
        for (guint i = 0; lines[i]; i++) {
            if (g_str_has_prefix(lines[i], "127.0.1.1") ||
                (!lines[i + 1] && !*lines[i]))
                continue;
            g_string_append_printf(hosts, "%s\n", lines[i]);
        }
    } else {
        g_string_append(hosts, "127.0.0.1\tlocalhost\n");
    }
    g_string_append_printf(hosts, "127.0.1.1\t%s\n", c->hostname);
    return write_file(c, "/etc/hosts", hosts->str, hosts->len, 0644, error);
}

static bool
write_files(Ctx *c, GError **error)
{
    GPtrArray *files = c->job->manifest->customize.files;

    for (guint i = 0; i < files->len; i++) {
        const ManifestFile *f = files->pdata[i];
        g_autofree char *content = NULL;
        const char *why = manifest_path_problem(f->path, true);

        if (why) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "%s: refusing guest path '%s': %s", c->label, f->path,
                        why);
            return false;
        }
        content = expand(c, f->content, error);
        if (!content || !write_file(c, f->path, content, strlen(content),
                                    (int)f->mode, error))
            return false;
    }
    return true;
}

/* Find @user in the guest's /etc/passwd: uid, gid, home. */
static bool
lookup_user(Ctx *c, const char *user, int *uid, int *gid, char **home,
            GError **error)
{
    size_t size = 0;
    g_autofree char *passwd = guestfs_read_file(c->g, "/etc/passwd", &size);
    g_auto(GStrv) lines = NULL;

    if (!passwd)
        return gfs_fail(c->g, error, "cannot read the guest's /etc/passwd");
    lines = g_strsplit(passwd, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        g_auto(GStrv) f = g_strsplit(lines[i], ":", 7);

        if (g_strv_length(f) < 7 || !g_str_equal(f[0], user))
            continue;
        *uid = atoi(f[2]);
        *gid = atoi(f[3]);
        *home = g_strdup(f[5]);
        return true;
    }
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                "%s: user '%s' (for an ssh key) is not in the guest's "
                "/etc/passwd",
                c->label, user);
    return false;
}

static bool
add_ssh_keys(Ctx *c, GError **error)
{
    GPtrArray *keys = c->job->manifest->customize.ssh_keys;

    for (guint i = 0; i < keys->len; i++) {
        const ManifestSshKey *k = keys->pdata[i];
        g_autofree char *home = NULL;
        g_autofree char *dir = NULL;
        g_autofree char *file = NULL;
        g_autoptr(GString) text = g_string_new(NULL);
        int uid, gid;

        if (!lookup_user(c, k->user, &uid, &gid, &home, error))
            return false;
        if (home[0] != '/' || manifest_path_problem(home, true)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "%s: user '%s' has an unusable home '%s'", c->label,
                        k->user, home);
            return false;
        }
        dir = g_strconcat(home, "/.ssh", NULL);
        file = g_strconcat(dir, "/authorized_keys", NULL);
        if (guestfs_is_file(c->g, file) > 0) {
            size_t size = 0;
            g_autofree char *old = guestfs_read_file(c->g, file, &size);
            if (old) {
                g_string_append_len(text, old, (gssize)size);
                if (text->len && text->str[text->len - 1] != '\n')
                    g_string_append_c(text, '\n');
            }
        }
        g_string_append_printf(text, "%s\n", k->key);
        if (guestfs_mkdir_p(c->g, dir) < 0 ||
            guestfs_chmod(c->g, 0700, dir) < 0 ||
            guestfs_chown(c->g, uid, gid, dir) < 0 ||
            guestfs_write(c->g, file, text->str, text->len) < 0 ||
            guestfs_chmod(c->g, 0600, file) < 0 ||
            guestfs_chown(c->g, uid, gid, file) < 0) {
            g_autofree char *what = g_strdup_printf(
                "%s: cannot install ssh keys for '%s'", c->label, k->user);
            return gfs_fail(c->g, error, what);
        }
    }
    return true;
}

static bool
add_firstboot(Ctx *c, GError **error)
{
    GPtrArray *cmds = c->job->manifest->customize.firstboot;
    bool systemd;

    if (cmds->len == 0)
        return true;
    systemd = guestfs_is_dir(c->g, "/etc/systemd/system") > 0;
    if (systemd) {
        g_autoptr(GString) script = g_string_new("#!/bin/sh\n"
                                                 "# spore first boot: runs "
                                                 "once\n");
        static const char unit[] =
            "[Unit]\n"
            "Description=spore first-boot commands\n"
            "After=network-online.target\n"
            "Wants=network-online.target\n"
            "ConditionPathExists=!" FIRSTBOOT_DONE "\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "ExecStart=/bin/sh " FIRSTBOOT_SCRIPT "\n"
            "ExecStartPost=/bin/sh -c 'mkdir -p /var/lib/spore && "
            "touch " FIRSTBOOT_DONE "'\n"
            "RemainAfterExit=yes\n\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n";

        for (guint i = 0; i < cmds->len; i++) {
            g_autofree char *cmd = expand(c, cmds->pdata[i], error);
            if (!cmd)
                return false;
            g_string_append_printf(script, "%s\n", cmd);
        }
        if (!write_file(c, FIRSTBOOT_SCRIPT, script->str, script->len, 0755,
                        error) ||
            !write_file(c, FIRSTBOOT_UNIT, unit, strlen(unit), 0644, error))
            return false;
        if (guestfs_mkdir_p(c->g, "/etc/systemd/system/"
                                  "multi-user.target.wants") < 0 ||
            (guestfs_exists(c->g, FIRSTBOOT_WANTS) <= 0 &&
             guestfs_ln_s(c->g, FIRSTBOOT_UNIT, FIRSTBOOT_WANTS) < 0))
            return gfs_fail(c->g, error, "cannot enable the first-boot unit");
        return true;
    }
    for (guint i = 0; i < cmds->len; i++) {
        g_autofree char *cmd = expand(c, cmds->pdata[i], error);
        g_autofree char *path =
            g_strdup_printf(FIRSTBOOT_DIR "/%02u-spore.sh", i);
        g_autofree char *text = NULL;

        if (!cmd)
            return false;
        text = g_strdup_printf("#!/bin/sh\n%s\n", cmd);
        if (!write_file(c, path, text, strlen(text), 0755, error))
            return false;
    }
    return true;
}

static bool
reset_identity(Ctx *c, GError **error)
{
    if (guestfs_is_file(c->g, "/etc/machine-id") > 0 &&
        guestfs_truncate(c->g, "/etc/machine-id") < 0)
        return gfs_fail(c->g, error, "cannot empty /etc/machine-id");
    if (guestfs_is_dir(c->g, "/etc/ssh") > 0) {
        char **keys = guestfs_glob_expand(c->g, "/etc/ssh/ssh_host_*");
        for (size_t i = 0; keys && keys[i]; i++) {
            guestfs_rm_f(c->g, keys[i]);
            free(keys[i]);
        }
        free(keys);
    }
    return true;
}

typedef struct {
    char *mountpoint;
    char *device;
} MountPair;

static gint
mountpoint_cmp(gconstpointer a, gconstpointer b)
{
    const MountPair *pa = a, *pb = b;

    return (int)strlen(pa->mountpoint) - (int)strlen(pb->mountpoint);
}

/* Mount the file systems of @root as inspection found them, "/" first. */
static bool
mount_root(Ctx *c, const char *root, GError **error)
{
    char **mps = guestfs_inspect_get_mountpoints(c->g, root);
    g_autoptr(GArray) pairs = g_array_new(FALSE, FALSE, sizeof(MountPair));
    bool ok = true;

    if (!mps)
        return gfs_fail(c->g, error, "cannot read the guest's mount points");
    for (size_t i = 0; mps[i] && mps[i + 1]; i += 2) {
        MountPair pair = {mps[i], mps[i + 1]};
        g_array_append_val(pairs, pair);
    }
    g_array_sort(pairs, mountpoint_cmp);
    for (guint i = 0; i < pairs->len; i++) {
        MountPair *pair = &g_array_index(pairs, MountPair, i);
        if (guestfs_mount(c->g, pair->device, pair->mountpoint) < 0 &&
            g_str_equal(pair->mountpoint, "/")) {
            ok = gfs_fail(c->g, error, "cannot mount the guest's root");
            break;
        }
    }
    for (size_t i = 0; mps[i]; i++)
        free(mps[i]);
    free(mps);
    return ok;
}

static bool
customize_one(guestfs_h *g, const CloneCustomizeJob *job, const char *root,
              GError **error)
{
    Ctx c = {.g = g, .job = job};
    g_autofree char *name = manifest_clone_name(job->manifest, job->index);
    bool ok;

    c.label = g_strdup_printf("clone %s", name);
    c.hostname = manifest_clone_hostname(job->manifest, job->index, error);
    if (!c.hostname) {
        g_free(c.label);
        return false;
    }
    c.vars = (ManifestVars){
        .service = job->manifest->name,
        .index = job->index,
        .hostname = c.hostname,
        .host = job->host,
    };
    ok = mount_root(&c, root, error) && set_hostname(&c, error) &&
         write_files(&c, error) && add_ssh_keys(&c, error) &&
         add_firstboot(&c, error) && reset_identity(&c, error);
    if (guestfs_umount_all(g) < 0 && ok)
        ok = gfs_fail(g, error, "cannot unmount the guest");
    if (!ok)
        g_prefix_error(error, "%s: ", c.label);
    g_free(c.label);
    g_free(c.hostname);
    return ok;
}

/* The drive index of inspection root @root. */
static int
root_drive(guestfs_h *g, const char *root)
{
    g_autofree char *dev = guestfs_part_to_dev(g, root);

    return guestfs_device_index(g, dev ? dev : root);
}

bool
clone_customize_batch(const CloneCustomizeJob *jobs, gsize n_jobs,
                      GError **error)
{
    guestfs_h *g;
    char **roots = NULL;
    bool ok = true;

    if (n_jobs == 0)
        return true;
    g = gfs_open(error);
    if (!g)
        return false;
    for (gsize i = 0; i < n_jobs && ok; i++) {
        if (guestfs_add_drive_opts(g, jobs[i].overlay,
                                   GUESTFS_ADD_DRIVE_OPTS_FORMAT, "qcow2",
                                   -1) < 0) {
            g_autofree char *what =
                g_strdup_printf("cannot add overlay '%s'", jobs[i].overlay);
            ok = gfs_fail(g, error, what);
        }
    }
    if (ok && guestfs_launch(g) < 0)
        ok = gfs_fail(g, error, "cannot launch the libguestfs appliance");
    if (ok) {
        roots = guestfs_inspect_os(g);
        if (!roots)
            ok = gfs_fail(g, error, "inspection failed");
    }
    for (gsize i = 0; ok && i < n_jobs; i++) {
        const char *root = NULL;

        for (size_t r = 0; roots[r]; r++) {
            if (root_drive(g, roots[r]) == (int)i)
                root = roots[r];
        }
        if (!root) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "overlay '%s': no recognizable operating system in "
                        "the image",
                        jobs[i].overlay);
            ok = false;
            break;
        }
        ok = customize_one(g, &jobs[i], root, error);
    }
    for (size_t r = 0; roots && roots[r]; r++)
        free(roots[r]);
    free(roots);
    if (guestfs_shutdown(g) < 0 && ok)
        ok = gfs_fail(g, error, "the appliance did not shut down cleanly");
    guestfs_close(g);
    return ok;
}
