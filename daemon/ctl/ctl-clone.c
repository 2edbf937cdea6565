/*
 * ctl-clone.c: sporectl's clone tools, run on a host without the daemons
 * (ctl.h) — clone-prepare (overlays customized offline), domain-xml (the
 * domain a clone gets), clone-create and clone-destroy (libvirt domains
 * and volumes through clone/clone-host.h).
 *
 * Usage errors (an index beyond the service's max, a URL master without
 * its image id) are found before libvirt or libguestfs are started.
 */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "clone-host.h"
#include "cloud-init.h"
#include "customize.h"
#include "domain-xml.h"
#include "image-index.h"
#include "qcow2-master.h"
#include "virt-detect.h"

/* the longest clone-destroy --timeout, in seconds */
#define CTL_SHUTDOWN_MAX_SECONDS 86400u

/* parse_virt_type: kvm, qemu or xen; returns false on anything else */
static bool
parse_virt_type(const char *text, ManifestHypervisor *out)
{
    if (g_str_equal(text, "kvm"))
        *out = MANIFEST_HYPERVISOR_KVM;
    else if (g_str_equal(text, "qemu"))
        *out = MANIFEST_HYPERVISOR_QEMU;
    else if (g_str_equal(text, "xen"))
        *out = MANIFEST_HYPERVISOR_XEN;
    else
        return false;
    return true;
}

static bool
format_is_known(const char *format)
{
    return g_str_equal(format, "raw") || g_str_equal(format, "qcow2");
}

/* the manifest argument, parsed; NULL after printing its problems */
static Manifest *
load_manifest(const CtlCall *call, const char *file)
{
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    Manifest *m = manifest_parse_file(file, problems, &err);

    if (!m) {
        if (problems->len == 0)
            fprintf(stderr, "sporectl %s: %s\n", call->cmd->name, err->message);
        ctl_print_manifest_problems(file, problems, NULL);
    }
    return m;
}

/* the INDEX arguments from @first on, each below @m's max; NULL after a
 * usage error */
static GArray *
clone_indexes(const CtlCall *call, const Manifest *m, guint first)
{
    g_autoptr(GArray) indexes = g_array_new(FALSE, FALSE, sizeof(guint));

    for (guint i = first; i < ctl_n_args(call); i++) {
        guint64 index;
        guint n;

        if (!g_ascii_string_to_unsigned(ctl_arg(call, i), 10, 0,
                                        m->scaling.max - 1, &index, NULL)) {
            ctl_usage_error(call,
                            "index '%s' is not below the service's max of %u",
                            ctl_arg(call, i), m->scaling.max);
            return NULL;
        }
        n = (guint)index;
        g_array_append_val(indexes, n);
    }
    return g_steal_pointer(&indexes);
}

static const char *
libvirt_uri(const char *given)
{
    const char *env = g_getenv("LIBVIRT_DEFAULT_URI");

    return given ? given : env && *env ? env : CLONE_DEFAULT_URI;
}

static void
print_progress(const char *message, gpointer data)
{
    fprintf(stderr, "sporectl %s: %s\n", (const char *)data, message);
}

/* ---- clone-prepare ----------------------------------------------------- */

/* the master's identity, for the inspection cache: a shim URI names the
 * image id; a file is named by path, size, mtime and inode */
static char *
master_key(const char *backing)
{
    struct stat st;

    if (strstr(backing, "://"))
        return g_strdup(backing);
    if (stat(backing, &st) != 0)
        return NULL;
    return g_strdup_printf("%s:%lld:%lld.%09ld:%llu", backing,
                           (long long)st.st_size, (long long)st.st_mtim.tv_sec,
                           st.st_mtim.tv_nsec, (unsigned long long)st.st_ino);
}

static char *file_image_id(const char *path, GError **error);

/*
 * clone-prepare of a cloud-init manifest: the overlays stay as they are
 * and each gets its NoCloud seed beside it, DIR/NAME.seed.iso, whose
 * instance-id is the UUID clone-create would give the clone (from the
 * image id and the generation) or --uuid.  Prints, per clone, the
 * overlay, the seed and that UUID.  On failure what was made is removed.
 */
static int
prepare_seeds(const CtlCall *call, const Manifest *m, const char *backing,
              GArray *jobs, GPtrArray *paths)
{
    const char *image_id = ctl_string(call, "image-id", NULL);
    const char *uuid = ctl_string(call, "uuid", NULL);
    g_autofree char *computed_id = NULL;
    g_autoptr(GPtrArray) seeds = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) uuids = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GError) err = NULL;

    if (!uuid && !image_id) {
        computed_id = file_image_id(backing, &err);
        if (!computed_id)
            goto fail;
        image_id = computed_id;
    }
    for (guint i = 0; i < jobs->len; i++) {
        CloneCustomizeJob *job = &g_array_index(jobs, CloneCustomizeJob, i);
        g_autofree char *name = manifest_clone_name(m, job->index);
        CloudInitSeedSpec spec = {
            .manifest = m, .index = job->index, .host = job->host};

        g_ptr_array_add(uuids,
                        uuid ? g_strdup(uuid)
                             : clone_uuid(m, job->index, image_id,
                                          ctl_int(call, "generation", 1)));
        /* DIR/NAME.seed.iso, named as in a pool */
        g_autofree char *dir = g_path_get_dirname(paths->pdata[i]);

        g_ptr_array_add(
            seeds, g_strdup_printf("%s/%s%s", dir, name, CLONE_SEED_SUFFIX));
        spec.instance_id = uuids->pdata[i];
        if (!cloud_init_seed_write(&spec, seeds->pdata[i], &err)) {
            g_ptr_array_set_size(seeds, i); /* this one left nothing */
            goto fail;
        }
    }
    for (guint i = 0; i < paths->len; i++)
        printf("%s %s %s\n", (char *)paths->pdata[i], (char *)seeds->pdata[i],
               (char *)uuids->pdata[i]);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;

fail:
    fprintf(stderr, "sporectl clone-prepare: %s\n", err->message);
    for (guint i = 0; i < seeds->len; i++)
        unlink(seeds->pdata[i]);
    for (guint i = 0; i < paths->len; i++)
        unlink(paths->pdata[i]);
    return CTL_EXIT_FAILURE;
}

static int
cmd_clone_prepare(const CtlCall *call)
{
    const char *image = ctl_string(call, "image", NULL);
    const char *format = ctl_string(call, "image-format", NULL);
    const char *host = ctl_string(call, "host", NULL);
    g_autofree char *dir =
        g_canonicalize_filename(ctl_string(call, "dir", "."), NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(GArray) indexes = NULL;
    g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) jobs =
        g_array_new(FALSE, TRUE, sizeof(CloneCustomizeJob));
    g_autofree char *backing = strstr(image, "://")
                                   ? g_strdup(image)
                                   : g_canonicalize_filename(image, NULL);
    g_autofree char *image_key = master_key(backing);
    const char *image_id = ctl_string(call, "image-id", NULL);
    const char *uuid = ctl_string(call, "uuid", NULL);
    char hostname[256] = "localhost";
    bool cloud_init;

    if (format && !format_is_known(format))
        return ctl_usage_error(call, "--image-format is raw or qcow2");
    m = load_manifest(call, ctl_arg(call, 0));
    if (!m)
        return CTL_EXIT_FAILURE;
    if (format &&
        !g_str_equal(format, manifest_image_format_name(m->image.format)))
        return ctl_usage_error(call,
                               "--image-format %s, but the manifest's image "
                               "is %s",
                               format,
                               manifest_image_format_name(m->image.format));
    format = manifest_image_format_name(m->image.format);
    if (g_str_equal(format, "qcow2") &&
        !qcow2_master_check(backing, NULL, &err)) {
        fprintf(stderr, "sporectl clone-prepare: %s\n", err->message);
        return CTL_EXIT_FAILURE;
    }
    indexes = clone_indexes(call, m, 1);
    if (!indexes)
        return CTL_EXIT_USAGE;
    cloud_init = m->customize.method == MANIFEST_CUSTOMIZE_CLOUD_INIT;
    if (!cloud_init && (image_id || uuid))
        return ctl_usage_error(call, "--image-id and --uuid are for a "
                                     "cloud-init manifest's seeds");
    if (uuid && indexes->len != 1)
        return ctl_usage_error(call, "--uuid names one clone: give one INDEX");
    if (uuid && !g_uuid_string_is_valid(uuid))
        return ctl_usage_error(call, "--uuid %s is not a UUID", uuid);
    if (cloud_init && strstr(backing, "://") && !image_id && !uuid)
        return ctl_usage_error(call,
                               "a cloud-init seed's instance-id is the "
                               "clone's UUID, made from the image id: a URL "
                               "master (%s) needs --image-id (as printed by "
                               "'agent-image-list') or --uuid",
                               backing);
    if (!host) {
        gethostname(hostname, sizeof(hostname) - 1);
        host = hostname;
    }
    for (guint i = 0; i < indexes->len; i++) {
        guint index = g_array_index(indexes, guint, i);
        g_autofree char *name = manifest_clone_name(m, index);
        CloneCustomizeJob job = {.manifest = m, .host = host, .index = index};

        g_ptr_array_add(paths, g_strdup_printf("%s/%s.qcow2", dir, name));
        g_array_append_val(jobs, job);
    }
    for (guint i = 0; i < jobs->len; i++) {
        CloneCustomizeJob *job = &g_array_index(jobs, CloneCustomizeJob, i);

        job->overlay = paths->pdata[i];
        job->image_key = image_key;
        job->inspect_cache = g_getenv("SPORE_INSPECT_CACHE");
        job->backing = backing;
        job->backing_format = format;
        if (!clone_overlay_create(paths->pdata[i], backing, format, &err)) {
            fprintf(stderr, "sporectl clone-prepare: %s\n", err->message);
            return CTL_EXIT_FAILURE;
        }
    }
    if (cloud_init)
        return prepare_seeds(call, m, backing, jobs, paths);
    if (!clone_customize_batch((CloneCustomizeJob *)jobs->data, jobs->len,
                               &err)) {
        fprintf(stderr, "sporectl clone-prepare: %s\n", err->message);
        for (guint i = 0; i < paths->len; i++)
            unlink(paths->pdata[i]); /* half-customized: start over */
        return CTL_EXIT_FAILURE;
    }
    for (guint i = 0; i < paths->len; i++)
        printf("%s\n", (char *)paths->pdata[i]);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* ---- domain-xml -------------------------------------------------------- */

static int
cmd_domain_xml(const CtlCall *call)
{
    const char *console = ctl_string(call, "console-log", NULL);
    const char *virt = ctl_string(call, "virt-type", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autofree char *default_console = NULL;
    g_autofree char *xml = NULL;
    CloneDomainSpec spec = {0};

    m = load_manifest(call, ctl_arg(call, 0));
    if (!m)
        return CTL_EXIT_FAILURE;
    spec.manifest = m;
    spec.index = (guint)ctl_arg_int(call, 1);
    spec.image_id = ctl_string(call, "image", NULL);
    spec.generation = ctl_int(call, "generation", 0);
    spec.overlay_path = ctl_string(call, "overlay", NULL);
    spec.uuid = ctl_string(call, "uuid", NULL);
    spec.seed_path = ctl_string(call, "seed", NULL);
    spec.virt = m->vm.hypervisor;
    if (virt && !parse_virt_type(virt, &spec.virt))
        return ctl_usage_error(call, "--virt-type is kvm, qemu or xen");
    if (!console) {
        g_autofree char *dir = g_path_get_dirname(spec.overlay_path);
        g_autofree char *name = manifest_clone_name(m, spec.index);

        default_console = g_strdup_printf("%s/%s.console.log", dir, name);
        console = default_console;
    }
    spec.console_log = console;
    xml = clone_domain_xml(&spec, &err);
    if (!xml) {
        fprintf(stderr, "sporectl domain-xml: %s\n", err->message);
        return CTL_EXIT_FAILURE;
    }
    fputs(xml, stdout);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* ---- clone-create ------------------------------------------------------ */

/* the domain type: --virt-type, else the manifest's, kvm made qemu where
 * KVM does not work; false after a usage error */
static bool
create_virt_type(const CtlCall *call, const Manifest *m,
                 ManifestHypervisor *ret)
{
    const char *virt = ctl_string(call, "virt-type", NULL);

    *ret = m->vm.hypervisor;
    if (virt) {
        if (!parse_virt_type(virt, ret)) {
            ctl_usage_error(call, "--virt-type is kvm, qemu or xen");
            return false;
        }
        return true;
    }
    if (*ret == MANIFEST_HYPERVISOR_KVM && !spore_kvm_works()) {
        fprintf(stderr,
                "sporectl clone-create: %s: the clones run as type "
                "qemu (TCG)\n",
                g_getenv("SPORE_VIRT_TYPE") ? "SPORE_VIRT_TYPE says so"
                                            : "KVM does not work here");
        *ret = MANIFEST_HYPERVISOR_QEMU;
    }
    return true;
}

/* the image id of a file master, computed as image-index does */
static char *
file_image_id(const char *path, GError **error)
{
    g_autoptr(ImageIndex) idx =
        image_index_build_file(path, IMAGE_INDEX_CHUNK_SHIFT_DEFAULT, 0, error);

    return idx ? g_strdup(image_index_id(idx)) : NULL;
}

static void
print_created(const CtlCall *call, const CloneCreateRequest *req,
              const CloneCreateOutcome *outcomes)
{
    for (guint i = 0; i < req->n_indexes; i++) {
        guint index = req->indexes[i];
        g_autofree char *name = manifest_clone_name(req->manifest, index);

        if (call->g.json) {
            g_autofree char *uuid = clone_uuid(req->manifest, index,
                                               req->image_id, req->generation);

            printf("{\"name\":\"%s\",\"uuid\":\"%s\",\"outcome\":\"%s\"}\n",
                   name, uuid,
                   outcomes[i] == CLONE_CREATED ? "created" : "existed");
        } else {
            printf("%s: %s\n", name,
                   outcomes[i] == CLONE_EXISTED ? "exists, unchanged"
                   : req->start                 ? "created and started"
                                                : "created");
        }
    }
}

static int
cmd_clone_create(const CtlCall *call)
{
    const char *image = ctl_string(call, "image", NULL);
    const char *image_id = ctl_string(call, "image-id", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(CloneHost) ch = NULL;
    g_autoptr(GArray) indexes = NULL;
    g_autofree char *backing = NULL;
    g_autofree char *computed_id = NULL;
    g_autofree CloneCreateOutcome *outcomes = NULL;
    CloneCreateRequest req = {0};
    CloneHostConfig config = {.progress = print_progress,
                              .progress_data = (gpointer) "clone-create",
                              .inspect_cache = g_getenv("SPORE_INSPECT_CACHE")};

    req.backing_format = ctl_string(call, "image-format", NULL);
    if (req.backing_format && !format_is_known(req.backing_format))
        return ctl_usage_error(call, "--image-format is raw or qcow2");
    if (strstr(image, "://") && !image_id)
        return ctl_usage_error(call,
                               "a URL master (%s) needs --image-id (as "
                               "printed by 'agent-image-list')",
                               image);
    m = load_manifest(call, ctl_arg(call, 0));
    if (!m)
        return CTL_EXIT_FAILURE;
    indexes = clone_indexes(call, m, 1);
    if (!indexes || !create_virt_type(call, m, &req.virt))
        return CTL_EXIT_USAGE;
    backing = strstr(image, "://") ? g_strdup(image)
                                   : g_canonicalize_filename(image, NULL);
    if (!image_id) {
        computed_id = file_image_id(backing, &err);
        if (!computed_id) {
            fprintf(stderr, "sporectl clone-create: %s\n", err->message);
            return CTL_EXIT_FAILURE;
        }
        image_id = computed_id;
    }
    config.uri = libvirt_uri(ctl_string(call, "libvirt", NULL));
    config.pool = ctl_string(call, "pool", NULL);
    config.pool_dir = ctl_string(call, "pool-dir", NULL);
    config.console_dir = ctl_string(call, "console-dir", NULL);
    req.manifest = m;
    req.indexes = (guint *)indexes->data;
    req.n_indexes = indexes->len;
    req.backing = backing;
    req.image_id = image_id;
    req.generation = ctl_int(call, "generation", 1);
    req.host_name = ctl_string(call, "host", NULL);
    req.start = !ctl_flag(call, "no-start");
    outcomes = g_new0(CloneCreateOutcome, indexes->len);
    ch = clone_host_open(&config, &err);
    if (!ch || !clone_host_create(ch, &req, outcomes, &err)) {
        fprintf(stderr, "sporectl clone-create: %s\n", err->message);
        return CTL_EXIT_FAILURE;
    }
    print_created(call, &req, outcomes);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* ---- clone-destroy ----------------------------------------------------- */

static int
cmd_clone_destroy(const CtlCall *call)
{
    g_autoptr(CloneHost) ch = NULL;
    g_autoptr(GError) err = NULL;
    CloneHostConfig config = {.progress = print_progress,
                              .progress_data = (gpointer) "clone-destroy"};
    guint seconds =
        (guint)ctl_int(call, "timeout", CLONE_DEFAULT_SHUTDOWN_SECONDS);
    int status = CTL_EXIT_OK;
    static const char *const said[] = {
        [CLONE_ABSENT] = "absent",
        [CLONE_WAS_STOPPED] = "undefined (was shut off), volume removed",
        [CLONE_SHUT_DOWN] = "shut down, undefined, volume removed",
        [CLONE_DESTROYED] = "did not shut down in time: powered off, "
                            "undefined, volume removed",
    };

    config.uri = libvirt_uri(ctl_string(call, "libvirt", NULL));
    config.pool = ctl_string(call, "pool", NULL);
    config.pool_dir = ctl_string(call, "pool-dir", NULL);
    ch = clone_host_open(&config, &err);
    if (!ch) {
        fprintf(stderr, "sporectl clone-destroy: %s\n", err->message);
        return CTL_EXIT_FAILURE;
    }
    for (guint i = 0; i < ctl_n_args(call); i++) {
        CloneDestroyOutcome outcome;

        g_clear_error(&err);
        if (!clone_host_destroy(ch, ctl_arg(call, i), seconds, &outcome,
                                &err)) {
            fprintf(stderr, "sporectl clone-destroy: %s\n", err->message);
            status = CTL_EXIT_FAILURE;
            continue;
        }
        printf("%s: %s\n", ctl_arg(call, i), said[outcome]);
    }
    return fflush(stdout) == 0 ? status : CTL_EXIT_FAILURE;
}

/* ---- the table --------------------------------------------------------- */

#define OPT_IMAGE_FORMAT                                            \
    {                                                               \
        "image-format", 0, CTL_OPT_STRING, "raw|qcow2",             \
            .complete = CTL_COMPLETE_CHOICES,                       \
            .help = "the master's format (default: the manifest's)" \
    }
#define OPT_VIRT_TYPE                                           \
    {                                                           \
        "virt-type", 0, CTL_OPT_STRING, "kvm|qemu|xen",         \
            .complete = CTL_COMPLETE_CHOICES,                   \
            .help = "the domain type (default: the manifest's)" \
    }
#define OPT_GENERATION(what)                                                 \
    {                                                                        \
        "generation", 0, CTL_OPT_INT, "N",                                   \
            .max = G_MAXUINT64,                                              \
            .help =                                                          \
                "the manifest generation in the metadata (default " what ")" \
    }
#define OPT_HOST                                                      \
    {                                                                 \
        "host", 0, CTL_OPT_STRING, "NAME",                            \
            .help = "the value of {host} (default: this host's name)" \
    }
#define OPT_LIBVIRT                                                         \
    {                                                                       \
        "libvirt", 0, CTL_OPT_STRING, "URI",                                \
            .help = "the libvirt URI (default: $LIBVIRT_DEFAULT_URI, else " \
                    "qemu:///system)"                                       \
    }
#define OPT_POOL                                       \
    {                                                  \
        "pool", 0, CTL_OPT_STRING, "NAME",             \
            .help = "the storage pool (default spore)" \
    }
#define OPT_POOL_DIR                                          \
    {                                                         \
        "pool-dir", 0, CTL_OPT_STRING, "DIR",                 \
            .complete = CTL_COMPLETE_DIR,                     \
            .help = "the pool's directory when it is created" \
    }

static const CtlArgDef manifest_indexes_args[] = {
    {"MANIFEST", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_FILE},
    {"INDEX", CTL_ARG_MANY},
    {0},
};

static const CtlOptDef clone_prepare_opts[] = {
    {"image", 0, CTL_OPT_STRING, "BACKING", true, .complete = CTL_COMPLETE_FILE,
     .help = "the master: an image file or an nbd+unix:// URI"},
    OPT_IMAGE_FORMAT,
    {"dir", 0, CTL_OPT_STRING, "DIR", .complete = CTL_COMPLETE_DIR,
     .help = "where the overlays go (default: the current directory)"},
    OPT_HOST,
    {"image-id", 0, CTL_OPT_STRING, "ID",
     .help = "cloud-init: the image id the seed's instance-id (the clone's "
             "UUID) is made from (computed for a file)"},
    OPT_GENERATION("1"),
    {"uuid", 0, CTL_OPT_STRING, "UUID",
     .help = "cloud-init: the seed's instance-id, for one INDEX"},
    {0},
};

static const CtlOptDef domain_xml_opts[] = {
    {"image", 0, CTL_OPT_STRING, "ID", true,
     .help = "the image id in the metadata"},
    {"overlay", 0, CTL_OPT_STRING, "PATH", true, .complete = CTL_COMPLETE_FILE,
     .help = "the clone's qcow2 overlay"},
    {"console-log", 0, CTL_OPT_STRING, "PATH", .complete = CTL_COMPLETE_FILE,
     .help = "the serial console's log (default: beside the overlay)"},
    OPT_VIRT_TYPE,
    OPT_GENERATION("0"),
    {"uuid", 0, CTL_OPT_STRING, "UUID", .help = "the domain's UUID"},
    {"seed", 0, CTL_OPT_STRING, "PATH", .complete = CTL_COMPLETE_FILE,
     .help = "a cloud-init clone's seed ISO (from clone-prepare)"},
    {0},
};

static const CtlArgDef manifest_index_args[] = {
    {"MANIFEST", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_FILE},
    {"INDEX", CTL_ARG_REQUIRED, CTL_OPT_INT, 0, MANIFEST_CLONES_MAX - 1,
     "a service has at most 1000 clones"},
    {0},
};

static const CtlOptDef clone_create_opts[] = {
    {"image", 0, CTL_OPT_STRING, "MASTER", true, .complete = CTL_COMPLETE_FILE,
     .help = "the master: an image file or an nbd+unix:// URI"},
    OPT_IMAGE_FORMAT,
    {"image-id", 0, CTL_OPT_STRING, "ID",
     .help = "the master's image id (computed for a file)"},
    OPT_GENERATION("1"),
    OPT_HOST,
    OPT_VIRT_TYPE,
    OPT_LIBVIRT,
    OPT_POOL,
    OPT_POOL_DIR,
    {"console-dir", 0, CTL_OPT_STRING, "DIR", .complete = CTL_COMPLETE_DIR,
     .help = "where serial consoles are logged"},
    {"no-start", 0, CTL_OPT_BOOL, .help = "define the domains, do not start"},
    {0},
};

static const CtlOptDef clone_destroy_opts[] = {
    {"timeout", 0, CTL_OPT_INT, "SECONDS", .max = CTL_SHUTDOWN_MAX_SECONDS,
     .help = "power off after SECONDS (default 60)"},
    OPT_LIBVIRT,
    OPT_POOL,
    OPT_POOL_DIR,
    {0},
};

static const CtlArgDef clone_names_args[] = {
    {"NAME", CTL_ARG_MANY, .complete = CTL_COMPLETE_CLONE},
    {0},
};

const CtlCmdDef ctl_clone_commands[] = {
    {
        .name = "clone-prepare",
        .summary = "Create and customize clone overlays of a service, offline.",
        .help =
            "Creates DIR/SERVICE-INDEX.qcow2 for each INDEX, a qcow2\n"
            "overlay backed by BACKING (an image file, or an nbd+unix:// URI\n"
            "from 'agent-image-serve'), and customizes them all in one\n"
            "libguestfs appliance launch as MANIFEST says: hostname, files,\n"
            "ssh keys, first-boot commands, a fresh identity.  {host}\n"
            "expands to NAME.  Prints the overlays' paths.  The master is\n"
            "never written.  On failure the new overlays are removed.\n"
            "For <customize method=\"cloud-init\"> the overlays are left\n"
            "as they are and each gets a NoCloud seed, DIR/SERVICE-INDEX\n"
            ".seed.iso, whose instance-id is the clone's UUID (as\n"
            "clone-create makes it from the image id and --generation, or\n"
            "--uuid); each line then names the overlay, the seed and the\n"
            "UUID, for 'domain-xml --seed PATH --uuid UUID'.\n",
        .opts = clone_prepare_opts,
        .args = manifest_indexes_args,
        .run = cmd_clone_prepare,
    },
    {
        .name = "domain-xml",
        .summary = "Print the libvirt domain XML of one clone of a service.",
        .help =
            "Builds the domain XML of clone INDEX of the service in\n"
            "MANIFEST, as the host agent defines it: name SERVICE-INDEX, the\n"
            "overlay PATH as its qcow2 disk (error_policy stop), a pty\n"
            "serial console logged to --console-log, direct kernel boot\n"
            "when the manifest has <boot>, and spore's metadata (image ID,\n"
            "manifest generation N).  Offline.\n",
        .opts = domain_xml_opts,
        .args = manifest_index_args,
        .run = cmd_domain_xml,
    },
    {
        .name = "clone-create",
        .summary =
            "Create clones of a service as libvirt domains on this host.",
        .help =
            "For each INDEX: a qcow2 overlay volume SERVICE-INDEX.qcow2\n"
            "backed by MASTER (an image file, or an nbd+unix:// URI from\n"
            "'agent-image-serve', which then needs --image-id) in spore's\n"
            "'dir' storage pool (default 'spore' in /var/lib/spore/clones,\n"
            "created if missing), customized as MANIFEST says (all clones in\n"
            "one libguestfs appliance launch), then a persistent domain\n"
            "SERVICE-INDEX defined and started (unless --no-start).  Manage\n"
            "them with virsh as any domain.  The domain type is the\n"
            "manifest's, except that kvm runs as qemu (TCG) where KVM does\n"
            "not work.  Serial consoles are logged to\n"
            "DIR/SERVICE-INDEX.log (default /var/log/spore/console).\n"
            "\n"
            "Idempotent: a clone's UUID is derived from the manifest, INDEX,\n"
            "the image id and the generation N.  A clone that exists with\n"
            "that UUID is left as it is; a domain of that name with another\n"
            "UUID is an error and is not changed.  A failed create leaves no\n"
            "domain and no volume behind; run it again.\n",
        .opts = clone_create_opts,
        .args = manifest_indexes_args,
        .run = cmd_clone_create,
    },
    {
        .name = "clone-destroy",
        .summary = "Shut down, undefine and remove clones.",
        .help =
            "For each clone NAME (a domain with spore's metadata; others\n"
            "are refused): an ACPI shutdown, a power-off if it is still\n"
            "running after SECONDS (0: power off at once; a paused clone is\n"
            "powered off), then undefine, then its overlay volume is removed\n"
            "from spore's pool.  A clone that does not exist is reported\n"
            "'absent' and is not an error.\n",
        .opts = clone_destroy_opts,
        .args = clone_names_args,
        .run = cmd_clone_destroy,
    },
    {0},
};
