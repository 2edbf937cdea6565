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
#include "customize-priv.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <guestfs.h>

#include "spore-error.h"
#include "template.h"
#include "virt-autoptr.h"
#include "virt-detect.h"

#define FIRSTBOOT_DIR      "/etc/spore/firstboot.d"
#define FIRSTBOOT_SCRIPT   "/usr/local/lib/spore/firstboot.sh"
#define FIRSTBOOT_DONE_DIR "/var/lib/spore"
#define FIRSTBOOT_DONE     FIRSTBOOT_DONE_DIR "/firstboot.done"
#define FIRSTBOOT_UNIT     "/etc/systemd/system/spore-firstboot.service"
#define FIRSTBOOT_WANTS \
    "/etc/systemd/system/multi-user.target.wants/spore-firstboot.service"

static bool
gfs_fail(guestfs_h *g, GError **error, const char *what)
{
    const char *msg = guestfs_last_error(g);
    /* libguestfs' launch errors go on with a paragraph of generic advice:
     * keep its first line, and say where the details are */
    const char *nl = msg ? strchr(msg, '\n') : NULL;

    if (nl)
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "%s: %.*s (LIBGUESTFS_DEBUG=1 shows the appliance's log)",
                    what, (int)(nl - msg), msg);
    else
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
    g_autoptr(guestfs_h) g = NULL;

    if (access(path, F_OK) == 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "overlay '%s' already exists", path);
        return false;
    }
    g = gfs_open(error);
    if (!g)
        return false;
    if (guestfs_disk_create(
            g, path, "qcow2", -1, GUESTFS_DISK_CREATE_BACKINGFILE, backing,
            GUESTFS_DISK_CREATE_BACKINGFORMAT, backing_format, -1) != 0) {
        g_autofree char *what =
            g_strdup_printf("cannot create overlay '%s'", path);
        return gfs_fail(g, error, what);
    }
    return true;
}

/* ---- one clone --------------------------------------------------------- */

typedef struct {
    guestfs_h *g;
    const CloneCustomizeJob *job;
    ManifestVars vars;
    char *hostname;
} Ctx;

/*
 * Errors inside one clone's customization say what failed; customize_one()
 * prefixes them once with "clone NAME: ".
 */

static bool
write_file(Ctx *c, const char *path, const char *data, gsize len, int mode,
           GError **error)
{
    g_autofree char *dir = g_path_get_dirname(path);
    g_autofree char *what = g_strdup_printf("cannot write '%s'", path);

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
    return manifest_template_expand(tmpl, MANIFEST_VARS_ALL, &c->vars, error);
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
        g_autofree char *content = expand(c, f->content, error);

        if (!content || !write_file(c, f->path, content, strlen(content),
                                    (int)f->mode, error))
            return false;
    }
    return true;
}

/*
 * The manifest's guest paths, checked again (a Manifest may not come from
 * the parser): every clone of the batch, before the appliance is launched.
 */
static bool
check_guest_paths(const CloneCustomizeJob *jobs, gsize n_jobs, GError **error)
{
    for (gsize i = 0; i < n_jobs; i++) {
        GPtrArray *files = jobs[i].manifest->customize.files;

        for (guint j = 0; j < files->len; j++) {
            const ManifestFile *f = files->pdata[j];
            const char *why = manifest_path_problem(f->path, true);

            if (why) {
                g_autofree char *name =
                    manifest_clone_name(jobs[i].manifest, jobs[i].index);

                g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                            "clone %s: refusing guest path '%s': %s", name,
                            f->path, why);
                return false;
            }
        }
    }
    return true;
}

/* a uid or gid field of /etc/passwd: decimal, 0 to CUSTOMIZE_ID_MAX */
static bool
parse_id(const char *text, int *ret)
{
    guint64 v = 0;

    if (!g_ascii_string_to_unsigned(text, 10, 0, CUSTOMIZE_ID_MAX, &v, NULL))
        return false;
    *ret = (int)v;
    return true;
}

bool
customize_passwd_lookup(const char *passwd, const char *user, int *ret_uid,
                        int *ret_gid, char **ret_home, GError **error)
{
    g_auto(GStrv) lines = g_strsplit(passwd, "\n", -1);

    for (guint i = 0; lines[i]; i++) {
        g_auto(GStrv) f = g_strsplit(lines[i], ":", 7);
        int uid, gid;

        if (g_strv_length(f) < 7 || !g_str_equal(f[0], user))
            continue;
        /* a malformed id must not become uid 0 (atoi's answer) */
        if (!parse_id(f[2], &uid) || !parse_id(f[3], &gid)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "the guest's /etc/passwd: line %u: user '%s' has "
                        "no valid uid and gid ('%s', '%s')",
                        i + 1, user, f[2], f[3]);
            return false;
        }
        if (f[5][0] != '/') {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "the guest's /etc/passwd: line %u: user '%s' has "
                        "no absolute home directory ('%s')",
                        i + 1, user, f[5]);
            return false;
        }
        *ret_uid = uid;
        *ret_gid = gid;
        *ret_home = g_strdup(f[5]);
        return true;
    }
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                "user '%s' (for an ssh key) is not in the guest's /etc/passwd",
                user);
    return false;
}

/* Find @user in the guest's /etc/passwd: uid, gid, home. */
static bool
lookup_user(Ctx *c, const char *user, int *uid, int *gid, char **home,
            GError **error)
{
    size_t size = 0;
    g_autofree char *passwd = guestfs_read_file(c->g, "/etc/passwd", &size);

    if (!passwd)
        return gfs_fail(c->g, error, "cannot read the guest's /etc/passwd");
    return customize_passwd_lookup(passwd, user, uid, gid, home, error);
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
        int uid = -1, gid = -1;

        if (!lookup_user(c, k->user, &uid, &gid, &home, error))
            return false;
        if (home[0] != '/' || manifest_path_problem(home, true)) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "user '%s' has an unusable home '%s'", k->user, home);
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
            g_autofree char *what =
                g_strdup_printf("cannot install ssh keys for '%s'", k->user);
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
        /*
         * The done file is recorded before the commands run, not after
         * (an ExecStartPost= does not run when ExecStart= fails): a
         * failing command, or a boot cut short, never runs them again.
         */
        static const char unit[] =
            "[Unit]\n"
            "Description=spore first-boot commands\n"
            "After=network-online.target\n"
            "Wants=network-online.target\n"
            "ConditionPathExists=!" FIRSTBOOT_DONE "\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "ExecStartPre=/bin/sh -c 'mkdir -p " FIRSTBOOT_DONE_DIR
            " && touch " FIRSTBOOT_DONE " && sync'\n"
            "ExecStart=/bin/sh " FIRSTBOOT_SCRIPT "\n"
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
        bool ok = true;

        if (!keys)
            return gfs_fail(c->g, error, "cannot list the ssh host keys");
        /* a key left behind would be shared by every clone: an error */
        for (size_t i = 0; keys[i]; i++) {
            if (ok && guestfs_rm_f(c->g, keys[i]) < 0) {
                g_autofree char *what =
                    g_strdup_printf("cannot remove '%s'", keys[i]);
                ok = gfs_fail(c->g, error, what);
            }
            free(keys[i]);
        }
        free(keys);
        return ok;
    }
    return true;
}

/*
 * A guest's file system layout as inspection found it: mount points and
 * devices, named as on drive 0 ("/dev/sda...").  All overlays of one master
 * share it, so it is found once per master (and kept in the inspection
 * cache) and mapped to each drive by its device name.
 */
typedef struct {
    char *mountpoint;
    char *device;
} MountPair;

typedef GArray Layout; /* of MountPair, "/" first */

static void
mount_pair_clear(gpointer p)
{
    MountPair *m = p;

    g_free(m->mountpoint);
    g_free(m->device);
}

static Layout *
layout_new(void)
{
    GArray *l = g_array_new(FALSE, FALSE, sizeof(MountPair));

    g_array_set_clear_func(l, mount_pair_clear);
    return l;
}

static gint
mountpoint_cmp(gconstpointer a, gconstpointer b)
{
    const MountPair *pa = a, *pb = b;

    return (int)strlen(pa->mountpoint) - (int)strlen(pb->mountpoint);
}

/* @dev in the appliance's names: a guest's fstab may say /dev/vda or
 * /dev/hda, and inspection passes that on; the appliance translates such
 * a name to /dev/sda whatever the drive, so a layout left with /dev/vda
 * mounted the first drive for every clone of a batch (each clone's
 * customization went into the first clone's overlay).  A copy. */
static char *
canonical_device(guestfs_h *g, const char *dev)
{
    char *c = guestfs_canonical_device_name(g, dev);
    char *copy = g_strdup(c ? c : dev);

    free(c);
    return copy;
}

/* @dev renamed from drive @from (e.g. "/dev/sdb") to drive @to, or NULL. */
static char *
map_device(const char *dev, const char *from, const char *to)
{
    gsize n = strlen(from);

    if (strncmp(dev, from, n) != 0 || g_ascii_isalpha(dev[n]))
        return NULL; /* LVM and other names: not per drive */
    return g_strconcat(to, dev + n, NULL);
}

/* drive_of: "/dev/sdb" of "/dev/sdb3" or "/dev/sdb", NULL if @dev is no
 * /dev/sd device */
static char *
drive_of(const char *dev)
{
    gsize n = strlen("/dev/sd");

    if (!g_str_has_prefix(dev, "/dev/sd") || !g_ascii_isalpha(dev[n]))
        return NULL;
    while (g_ascii_isalpha(dev[n]))
        n++;
    return g_strndup(dev, n);
}

/* The layout of inspection root @root of drive @drive_dev, as on sda.
 * The guest's fstab names its devices as it sees them (/dev/vda, or a
 * UUID that all clones of a batch share): whatever drive it puts "/" on
 * is @drive_dev, where inspection found this root. */
static Layout *
layout_from_inspection(guestfs_h *g, const char *root, const char *drive_dev,
                       GError **error)
{
    char **mps = guestfs_inspect_get_mountpoints(g, root);
    g_autofree char *fs_drive = NULL;
    Layout *l;

    if (!mps) {
        gfs_fail(g, error, "cannot read the guest's mount points");
        return NULL;
    }
    for (size_t i = 0; mps[i] && mps[i + 1] && !fs_drive; i += 2) {
        if (g_str_equal(mps[i], "/")) {
            g_autofree char *dev = canonical_device(g, mps[i + 1]);

            fs_drive = drive_of(dev);
        }
    }
    l = layout_new();
    for (size_t i = 0; mps[i] && mps[i + 1]; i += 2) {
        g_autofree char *dev = canonical_device(g, mps[i + 1]);
        MountPair m = {
            g_strdup(mps[i]),
            map_device(dev, fs_drive ? fs_drive : drive_dev, "/dev/sda")};
        if (!m.device)
            m.device = g_steal_pointer(&dev);
        g_array_append_val(l, m);
    }
    for (size_t i = 0; mps[i]; i++)
        free(mps[i]);
    free(mps);
    g_array_sort(l, mountpoint_cmp);
    return l;
}

/* ---- the inspection cache ---------------------------------------------- */

static char *
cache_path(const char *dir, const char *key)
{
    g_autofree char *sum =
        g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);

    return g_build_filename(dir ? dir : CLONE_DEFAULT_INSPECT_CACHE, sum, NULL);
}

static Layout *
cache_load(const char *dir, const char *key)
{
    g_autofree char *path = cache_path(dir, key);
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_auto(GStrv) mps = NULL;
    g_autofree char *stored_key = NULL;
    Layout *l;

    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, NULL))
        return NULL;
    stored_key = g_key_file_get_string(kf, "inspect", "key", NULL);
    mps = g_key_file_get_string_list(kf, "inspect", "mounts", NULL, NULL);
    if (!stored_key || !g_str_equal(stored_key, key) || !mps)
        return NULL;
    l = layout_new();
    for (guint i = 0; mps[i]; i++) {
        const char *eq = strchr(mps[i], '=');
        MountPair m;

        if (!eq)
            continue;
        m.mountpoint = g_strndup(mps[i], (gsize)(eq - mps[i]));
        m.device = g_strdup(eq + 1);
        g_array_append_val(l, m);
    }
    if (l->len == 0 ||
        !g_str_equal(g_array_index(l, MountPair, 0).mountpoint, "/")) {
        g_array_unref(l);
        return NULL;
    }
    return l;
}

static void
cache_store(const char *cache_dir, const char *key, Layout *l)
{
    g_autofree char *path = cache_path(cache_dir, key);
    g_autofree char *dir = g_path_get_dirname(path);
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GPtrArray) mps = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *text = NULL;

    for (guint i = 0; i < l->len; i++) {
        MountPair *m = &g_array_index(l, MountPair, i);
        g_ptr_array_add(mps,
                        g_strdup_printf("%s=%s", m->mountpoint, m->device));
    }
    g_key_file_set_string(kf, "inspect", "key", key);
    g_key_file_set_string_list(kf, "inspect", "mounts",
                               (const char *const *)mps->pdata, mps->len);
    text = g_key_file_to_data(kf, NULL, NULL);
    if (g_mkdir_with_parents(dir, 0700) == 0)
        g_file_set_contents(path, text, -1, NULL); /* a cache: best effort */
}

/* Mount @layout, mapped to drive @drive_dev, "/" first. */
static bool
mount_layout(Ctx *c, Layout *layout, const char *drive_dev, GError **error)
{
    for (guint i = 0; i < layout->len; i++) {
        MountPair *m = &g_array_index(layout, MountPair, i);
        /* (a layout cached before it was made canonical) */
        g_autofree char *canon = canonical_device(c->g, m->device);
        g_autofree char *dev = map_device(canon, "/dev/sda", drive_dev);

        if (guestfs_mount(c->g, dev ? dev : canon, m->mountpoint) < 0 &&
            g_str_equal(m->mountpoint, "/"))
            return gfs_fail(c->g, error, "cannot mount the guest's root");
    }
    /* a stale or wrong layout must not go unnoticed */
    if (guestfs_is_dir(c->g, "/etc") <= 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "the inspected root has no /etc; remove the inspection "
                    "cache and retry");
        return false;
    }
    return true;
}

static bool
customize_one(guestfs_h *g, const CloneCustomizeJob *job, Layout *layout,
              const char *drive_dev, GError **error)
{
    Ctx c = {.g = g, .job = job};
    g_autofree char *name = manifest_clone_name(job->manifest, job->index);
    bool ok;

    c.hostname = manifest_clone_hostname(job->manifest, job->index, error);
    if (!c.hostname) {
        g_prefix_error(error, "clone %s: ", name);
        return false;
    }
    c.vars = (ManifestVars){
        .service = job->manifest->name,
        .index = job->index,
        .hostname = c.hostname,
        .host = job->host,
    };
    ok = mount_layout(&c, layout, drive_dev, error) &&
         set_hostname(&c, error) && write_files(&c, error) &&
         add_ssh_keys(&c, error) && add_firstboot(&c, error) &&
         reset_identity(&c, error);
    if (guestfs_umount_all(g) < 0 && ok)
        ok = gfs_fail(g, error, "cannot unmount the guest");
    if (!ok)
        g_prefix_error(error, "clone %s: ", name);
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

/*
 * Inspect the launched @g and return the layout of drive @drive's guest,
 * as on sda; fails when that drive has no recognizable OS, naming @what
 * (the master image the drive's overlay is backed by).
 */
static Layout *
inspect_drive(guestfs_h *g, int drive, const char *what, GError **error)
{
    char **roots = guestfs_inspect_os(g);
    char **devices = NULL;
    Layout *l = NULL;
    const char *root = NULL;

    if (!roots) {
        gfs_fail(g, error, "inspection failed");
        return NULL;
    }
    for (size_t r = 0; roots[r]; r++) {
        if (root_drive(g, roots[r]) == drive)
            root = roots[r];
    }
    devices = guestfs_list_devices(g);
    if (!root || !devices || !devices[drive])
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "no recognizable operating system in '%s'", what);
    else
        l = layout_from_inspection(g, root, devices[drive], error);
    for (size_t r = 0; roots[r]; r++)
        free(roots[r]);
    free(roots);
    for (size_t d = 0; devices && devices[d]; d++)
        free(devices[d]);
    free(devices);
    return l;
}

/* A read-only launch of one overlay of master @what, to inspect it alone. */
static Layout *
inspect_alone(const char *overlay, const char *what, GError **error)
{
    g_autoptr(guestfs_h) g = gfs_open(error);

    if (!g)
        return NULL;
    if (guestfs_add_drive_opts(g, overlay, GUESTFS_ADD_DRIVE_OPTS_FORMAT,
                               "qcow2", GUESTFS_ADD_DRIVE_OPTS_READONLY, 1,
                               -1) < 0 ||
        guestfs_launch(g) < 0) {
        gfs_fail(g, error, "cannot launch the appliance for inspection");
        return NULL;
    }
    return inspect_drive(g, 0, what, error);
}

/*
 * A cold batch inspects a scratch overlay of the master in an appliance of
 * its own, on a thread, while the batch's appliance launches: the two
 * launches overlap (each is mostly one CPU under TCG), and both only read
 * the master.
 */
typedef struct {
    char *dir;
    char *overlay;
    const char *master;
    Layout *layout;
    GError *error;
} ParallelInspect;

static gpointer
parallel_inspect_thread(gpointer data)
{
    ParallelInspect *pi = data;

    pi->layout = inspect_alone(pi->overlay, pi->master, &pi->error);
    return NULL;
}

static GThread *
parallel_inspect_start(ParallelInspect *pi, const CloneCustomizeJob *job,
                       GError **error)
{
    pi->dir = g_dir_make_tmp("spore-inspect-XXXXXX", error);
    if (!pi->dir)
        return NULL;
    pi->overlay = g_build_filename(pi->dir, "inspect.qcow2", NULL);
    pi->master = job->backing;
    if (!clone_overlay_create(pi->overlay, job->backing, job->backing_format,
                              error))
        return NULL;
    return g_thread_new("spore-inspect", parallel_inspect_thread, pi);
}

static void
parallel_inspect_clear(ParallelInspect *pi)
{
    if (pi->overlay)
        unlink(pi->overlay);
    if (pi->dir)
        rmdir(pi->dir);
    g_free(pi->overlay);
    g_free(pi->dir);
    g_clear_error(&pi->error);
    if (pi->layout)
        g_array_unref(pi->layout);
    memset(pi, 0, sizeof(*pi));
}

/* Over 100 lines, kept whole: one appliance's life (add the drives,
 * launch, customize each clone, shut down) with the handle's cleanup in
 * one place; the per-clone work is in its own functions. */
bool
clone_customize_batch(const CloneCustomizeJob *jobs, gsize n_jobs,
                      GError **error)
{
    const char *key = jobs && n_jobs ? jobs[0].image_key : NULL;
    g_autoptr(GArray) layouts = g_array_new(FALSE, TRUE, sizeof(Layout *));
    Layout *shared = NULL;
    ParallelInspect pi = {0};
    GThread *inspector = NULL;
    g_autoptr(guestfs_h) g = NULL;
    char **devices = NULL;
    bool ok = true;

    if (n_jobs == 0)
        return true;
    for (gsize i = 0; i < n_jobs; i++) {
        if (jobs[i].manifest->customize.method !=
            MANIFEST_CUSTOMIZE_LIBGUESTFS) {
            g_autofree char *name =
                manifest_clone_name(jobs[i].manifest, jobs[i].index);

            g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                        "clone %s: its manifest asks for <customize "
                        "method=\"%s\">, which the guest applies from a "
                        "seed (clone_host_create writes it), not the "
                        "appliance",
                        name,
                        manifest_customize_method_name(
                            jobs[i].manifest->customize.method));
            return false;
        }
    }
    if (!check_guest_paths(jobs, n_jobs, error))
        return false;
    for (gsize i = 1; key && i < n_jobs; i++) {
        if (!jobs[i].image_key || !g_str_equal(jobs[i].image_key, key))
            key = NULL; /* not all of one master: inspect each */
    }
    if (key) {
        shared = cache_load(jobs[0].inspect_cache, key);
        /*
         * Inspection scans every drive of a launch (seconds each under
         * TCG): for a batch, inspect the master once, alone, and map.
         */
        if (!shared && n_jobs > 1 && jobs[0].backing &&
            jobs[0].backing_format) {
            inspector = parallel_inspect_start(&pi, &jobs[0], error);
            if (!inspector) {
                parallel_inspect_clear(&pi);
                return false;
            }
        } else if (!shared && n_jobs > 1) {
            shared = inspect_alone(jobs[0].overlay, jobs[0].overlay, error);
            if (!shared)
                return false;
            cache_store(jobs[0].inspect_cache, key, shared);
        }
    }

    g = gfs_open(error);
    if (!g) {
        if (inspector)
            g_thread_join(inspector);
        parallel_inspect_clear(&pi);
        if (shared)
            g_array_unref(shared);
        return false;
    }
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
    if (inspector) {
        g_thread_join(inspector);
        if (!pi.layout && ok) {
            g_propagate_error(error, g_steal_pointer(&pi.error));
            ok = false;
        } else if (pi.layout) {
            shared = g_steal_pointer(&pi.layout);
            cache_store(jobs[0].inspect_cache, key, shared);
        }
        parallel_inspect_clear(&pi);
    }
    if (ok && !(devices = guestfs_list_devices(g)))
        ok = gfs_fail(g, error, "cannot list the appliance's disks");
    for (gsize i = 0; ok && i < n_jobs; i++) {
        Layout *l = shared;

        if (!l) {
            const char *master =
                jobs[i].backing ? jobs[i].backing : jobs[i].overlay;

            l = inspect_drive(g, (int)i, master, error);
            if (!l) {
                g_autofree char *name =
                    manifest_clone_name(jobs[i].manifest, jobs[i].index);

                g_prefix_error(error, "clone %s: ", name);
                ok = false;
                break;
            }
            g_array_append_val(layouts, l);
            if (key)
                cache_store(jobs[0].inspect_cache, key, l);
        }
        ok = customize_one(g, &jobs[i], l, devices[i], error);
    }
    for (guint i = 0; i < layouts->len; i++)
        g_array_unref(g_array_index(layouts, Layout *, i));
    if (shared)
        g_array_unref(shared);
    for (size_t d = 0; devices && devices[d]; d++)
        free(devices[d]);
    free(devices);
    if (guestfs_shutdown(g) < 0 && ok)
        ok = gfs_fail(g, error, "the appliance did not shut down cleanly");
    return ok;
}
