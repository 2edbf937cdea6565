/*
 * sporectl.c: the operator's command-line tool.
 *
 * virsh-style: `sporectl [GLOBAL-OPTIONS] COMMAND [ARGS]`.  Each command is
 * a row of the commands[] table with its own synopsis, help text and
 * handler; `sporectl help COMMAND` and `sporectl COMMAND --help` print the
 * same text.  Offline commands (validate, format) need no daemon; the site
 * manager's commands (submit, service-*, ...) talk to spored over its control
 * socket (-c, docs/site-control.md), the agent-* commands to the host agent.
 *
 * Exit codes: 0 success, 1 failure (including an invalid manifest), 2 usage.
 * Problems go to stderr as "FILE:LINE: message"; results go to stdout.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <glib.h>
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <json-glib/json-glib.h>

#include "clone-host.h"
#include "control.h"
#include "customize.h"
#include "domain-xml.h"
#include "file-util.h"
#include "image-index.h"
#include "manifest.h"
#include "spore-config.h"
#include "spore-error.h"
#include "virt-detect.h"

#define EXIT_USAGE 2

typedef struct {
    bool json;
    const char *endpoint; /* the site manager's control socket */
    const char *agent;    /* the host agent's control socket */
} Globals;

#define DEFAULT_AGENT_SOCKET   "/run/spore/agent/control.sock"
#define DEFAULT_MANAGER_SOCKET "/run/spore/spored/control.sock"

typedef struct Command Command;
struct Command {
    const char *name;
    const char *synopsis;
    const char *summary;
    const char *help;
    int (*run)(const Command *cmd, const Globals *g, int argc, char **argv);
};

static const Command *find_command(const char *name);

static void
print_command_help(FILE *out, const Command *cmd)
{
    fprintf(out, "Usage: sporectl %s %s\n\n%s\n\n%s", cmd->name, cmd->synopsis,
            cmd->summary, cmd->help);
}

/* One option of a command: a flag, or one taking a value. */
typedef struct {
    const char *long_name; /* without "--" */
    char short_name;       /* 0: none */
    const char **value;    /* non-NULL: takes a value, stored here */
    bool *flag;            /* non-NULL: a flag, set to true */
} CommandOption;

/*
 * Parse a command's own options from @argv (argv[0] is the command name):
 * "-h"/"--help" and those in @opts (terminated by a zeroed entry; may be
 * NULL), as "--name VALUE", "--name=VALUE" or "-x VALUE".  Options and
 * operands may not be mixed: the first operand (or "--") ends the options.
 * Returns the index of the first operand, or -1 after a usage error was
 * printed, or -2 when help was printed.
 */
static int
parse_command_flags(const Command *cmd, int argc, char **argv,
                    const CommandOption *opts)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const CommandOption *o = NULL;
        const char *inline_value = NULL;

        if (g_str_equal(a, "--")) {
            i++;
            break;
        }
        if (a[0] != '-' || g_str_equal(a, "-"))
            break;
        if (g_str_equal(a, "-h") || g_str_equal(a, "--help")) {
            print_command_help(stdout, cmd);
            return -2;
        }
        for (gsize k = 0; opts && opts[k].long_name; k++) {
            gsize n = strlen(opts[k].long_name);

            if (a[1] == '-' && strncmp(a + 2, opts[k].long_name, n) == 0 &&
                (a[2 + n] == '\0' || (a[2 + n] == '=' && opts[k].value))) {
                o = &opts[k];
                if (a[2 + n] == '=')
                    inline_value = a + 3 + n;
            } else if (a[1] != '-' && opts[k].short_name &&
                       a[1] == opts[k].short_name && a[2] == '\0') {
                o = &opts[k];
            }
        }
        if (!o) {
            fprintf(stderr,
                    "sporectl %s: unknown option '%s'\n"
                    "Try 'sporectl help %s'.\n",
                    cmd->name, a, cmd->name);
            return -1;
        }
        if (o->flag) {
            *o->flag = true;
        } else if (inline_value) {
            *o->value = inline_value;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            fprintf(stderr, "sporectl %s: option '%s' needs a value\n",
                    cmd->name, a);
            return -1;
        }
    }
    return i;
}

static void
print_problem_at(const char *file, guint line, const char *message)
{
    if (line)
        fprintf(stderr, "%s:%u: %s\n", file, line, message);
    else
        fprintf(stderr, "%s: %s\n", file, message);
}

static void
print_problem(const char *file, const ManifestProblem *p)
{
    print_problem_at(file, p->line, p->message);
}

/* ---- validate ---------------------------------------------------------- */

static int
cmd_validate(const Command *cmd, const Globals *g, int argc, char **argv)
{
    int first = parse_command_flags(cmd, argc, argv, NULL);
    g_autoptr(JsonBuilder) jb = NULL;
    bool all_valid = true;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (first >= argc) {
        fprintf(stderr, "sporectl validate: no FILE given\n"
                        "Try 'sporectl help validate'.\n");
        return EXIT_USAGE;
    }

    if (g->json) {
        jb = json_builder_new();
        json_builder_begin_array(jb);
    }

    for (int i = first; i < argc; i++) {
        const char *file = argv[i];
        g_autoptr(GPtrArray) problems = manifest_problems_new();
        g_autoptr(GError) err = NULL;
        g_autoptr(Manifest) m = manifest_parse_file(file, problems, &err);

        if (!m) {
            all_valid = false;
            if (problems->len == 0) {
                /* could not be read at all */
                ManifestProblem *p = g_new0(ManifestProblem, 1);
                p->message = g_strdup(err->message);
                g_ptr_array_add(problems, p);
            }
        }

        if (jb) {
            json_builder_begin_object(jb);
            json_builder_set_member_name(jb, "file");
            json_builder_add_string_value(jb, file);
            json_builder_set_member_name(jb, "valid");
            json_builder_add_boolean_value(jb, m != NULL);
            json_builder_set_member_name(jb, "problems");
            json_builder_begin_array(jb);
            for (guint p = 0; p < problems->len; p++) {
                const ManifestProblem *prob = problems->pdata[p];
                json_builder_begin_object(jb);
                json_builder_set_member_name(jb, "line");
                json_builder_add_int_value(jb, prob->line);
                json_builder_set_member_name(jb, "message");
                json_builder_add_string_value(jb, prob->message);
                json_builder_end_object(jb);
            }
            json_builder_end_array(jb);
            json_builder_end_object(jb);
        } else if (m) {
            printf("%s: valid\n", file);
        } else {
            for (guint p = 0; p < problems->len; p++)
                print_problem(file, problems->pdata[p]);
        }
    }

    if (jb) {
        g_autoptr(JsonGenerator) gen = json_generator_new();
        g_autoptr(JsonNode) root = NULL;
        g_autofree char *text = NULL;

        json_builder_end_array(jb);
        root = json_builder_get_root(jb);
        json_generator_set_root(gen, root);
        json_generator_set_pretty(gen, TRUE);
        text = json_generator_to_data(gen, NULL);
        printf("%s\n", text);
    }
    fflush(stdout);
    return all_valid ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- format ------------------------------------------------------------ */

static int
cmd_format(const Command *cmd, const Globals *g, int argc, char **argv)
{
    int first = parse_command_flags(cmd, argc, argv, NULL);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autofree char *xml = NULL;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first != 1) {
        fprintf(stderr, "sporectl format: give exactly one FILE\n"
                        "Try 'sporectl help format'.\n");
        return EXIT_USAGE;
    }
    m = manifest_parse_file(argv[first], problems, &err);
    if (!m) {
        if (problems->len == 0)
            fprintf(stderr, "sporectl format: %s\n", err->message);
        for (guint p = 0; p < problems->len; p++)
            print_problem(argv[first], problems->pdata[p]);
        return EXIT_FAILURE;
    }
    xml = manifest_format(m);
    fputs(xml, stdout);
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- clone-prepare ----------------------------------------------------- */

static int
cmd_clone_prepare(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *image = NULL, *format = "raw", *dir = ".", *host = NULL;
    const CommandOption opts[] = {
        {"image", 0, &image, NULL},
        {"image-format", 0, &format, NULL},
        {"dir", 0, &dir, NULL},
        {"host", 0, &host, NULL},
        {0},
    };
    int first = parse_command_flags(cmd, argc, argv, opts);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) jobs =
        g_array_new(FALSE, TRUE, sizeof(CloneCustomizeJob));
    g_autofree char *abs_dir = NULL;
    g_autofree char *backing = NULL;
    g_autofree char *image_key = NULL;
    char hostname[256] = "localhost";

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first < 2 || !image ||
        (!g_str_equal(format, "raw") && !g_str_equal(format, "qcow2"))) {
        fprintf(stderr, "sporectl clone-prepare: give --image, MANIFEST and "
                        "at least one INDEX (--image-format raw or qcow2)\n"
                        "Try 'sporectl help clone-prepare'.\n");
        return EXIT_USAGE;
    }
    m = manifest_parse_file(argv[first], problems, &err);
    if (!m) {
        if (problems->len == 0)
            fprintf(stderr, "sporectl clone-prepare: %s\n", err->message);
        for (guint p = 0; p < problems->len; p++)
            print_problem(argv[first], problems->pdata[p]);
        return EXIT_FAILURE;
    }
    if (!host) {
        gethostname(hostname, sizeof(hostname) - 1);
        host = hostname;
    }
    abs_dir = g_canonicalize_filename(dir, NULL);
    backing = strstr(image, "://") ? g_strdup(image)
                                   : g_canonicalize_filename(image, NULL);
    /* the master's identity, for the inspection cache: a shim URI names
     * the image id; a file is named by path, size, mtime and inode */
    if (strstr(backing, "://")) {
        image_key = g_strdup(backing);
    } else {
        struct stat st;
        if (stat(backing, &st) == 0)
            image_key = g_strdup_printf(
                "%s:%lld:%lld.%09ld:%llu", backing, (long long)st.st_size,
                (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                (unsigned long long)st.st_ino);
    }
    for (int i = first + 1; i < argc; i++) {
        guint64 index;
        g_autofree char *name = NULL;
        CloneCustomizeJob job = {.manifest = m, .host = host};

        if (!g_ascii_string_to_unsigned(argv[i], 10, 0, m->scaling.max - 1,
                                        &index, NULL)) {
            fprintf(stderr,
                    "sporectl clone-prepare: index '%s' is not below the "
                    "service's max of %u\n",
                    argv[i], m->scaling.max);
            return EXIT_USAGE;
        }
        name = manifest_clone_name(m, (guint)index);
        g_ptr_array_add(paths, g_strdup_printf("%s/%s.qcow2", abs_dir, name));
        job.index = (guint)index;
        g_array_append_val(jobs, job);
    }
    for (guint i = 0; i < jobs->len; i++) {
        g_array_index(jobs, CloneCustomizeJob, i).overlay = paths->pdata[i];
        g_array_index(jobs, CloneCustomizeJob, i).image_key = image_key;
        g_array_index(jobs, CloneCustomizeJob, i).backing = backing;
        g_array_index(jobs, CloneCustomizeJob, i).backing_format = format;
        if (!clone_overlay_create(paths->pdata[i], backing, format, &err)) {
            fprintf(stderr, "sporectl clone-prepare: %s\n", err->message);
            return EXIT_FAILURE;
        }
    }
    if (!clone_customize_batch((CloneCustomizeJob *)jobs->data, jobs->len,
                               &err)) {
        fprintf(stderr, "sporectl clone-prepare: %s\n", err->message);
        for (guint i = 0; i < paths->len; i++)
            unlink(paths->pdata[i]); /* half-customized: start over */
        return EXIT_FAILURE;
    }
    for (guint i = 0; i < paths->len; i++)
        printf("%s\n", (char *)paths->pdata[i]);
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- domain-xml -------------------------------------------------------- */

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

static int
cmd_domain_xml(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *image = NULL, *overlay = NULL, *console = NULL;
    const char *virt = NULL, *generation = NULL, *uuid = NULL;
    const CommandOption opts[] = {
        {"image", 0, &image, NULL},
        {"overlay", 0, &overlay, NULL},
        {"console-log", 0, &console, NULL},
        {"virt-type", 0, &virt, NULL},
        {"generation", 0, &generation, NULL},
        {"uuid", 0, &uuid, NULL},
        {0},
    };
    int first = parse_command_flags(cmd, argc, argv, opts);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autofree char *default_console = NULL;
    g_autofree char *xml = NULL;
    CloneDomainSpec spec = {0};
    guint64 index = 0, gen = 0;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first != 2 || !image || !overlay ||
        !g_ascii_string_to_unsigned(argv[first + 1], 10, 0, 999, &index,
                                    NULL) ||
        (generation && !g_ascii_string_to_unsigned(generation, 10, 0,
                                                   G_MAXUINT64, &gen, NULL))) {
        fprintf(stderr,
                "sporectl domain-xml: give MANIFEST, INDEX (0-999), --image "
                "and --overlay\nTry 'sporectl help domain-xml'.\n");
        return EXIT_USAGE;
    }
    m = manifest_parse_file(argv[first], problems, &err);
    if (!m) {
        if (problems->len == 0)
            fprintf(stderr, "sporectl domain-xml: %s\n", err->message);
        for (guint p = 0; p < problems->len; p++)
            print_problem(argv[first], problems->pdata[p]);
        return EXIT_FAILURE;
    }
    spec.manifest = m;
    spec.index = (guint)index;
    spec.image_id = image;
    spec.generation = gen;
    spec.overlay_path = overlay;
    spec.uuid = uuid;
    spec.virt = m->vm.hypervisor;
    if (virt && !parse_virt_type(virt, &spec.virt)) {
        fprintf(stderr, "sporectl domain-xml: --virt-type is kvm, qemu or "
                        "xen\n");
        return EXIT_USAGE;
    }
    if (!console) {
        g_autofree char *dir = g_path_get_dirname(overlay);
        g_autofree char *name = manifest_clone_name(m, spec.index);
        default_console = g_strdup_printf("%s/%s.console.log", dir, name);
        console = default_console;
    }
    spec.console_log = console;
    xml = clone_domain_xml(&spec, &err);
    if (!xml) {
        fprintf(stderr, "sporectl domain-xml: %s\n", err->message);
        return EXIT_FAILURE;
    }
    fputs(xml, stdout);
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- clone-create / clone-destroy -------------------------------------- */

static void
print_progress(const char *message, gpointer data)
{
    fprintf(stderr, "sporectl %s: %s\n", (const char *)data, message);
}

static const char *
libvirt_uri(const char *given)
{
    const char *env = g_getenv("LIBVIRT_DEFAULT_URI");

    return given ? given : env && *env ? env : CLONE_DEFAULT_URI;
}

static int
cmd_clone_create(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *image = NULL, *format = "raw", *image_id = NULL;
    const char *generation = NULL, *host = NULL, *virt = NULL;
    const char *uri = NULL, *pool = NULL, *pool_dir = NULL, *console = NULL;
    bool no_start = false;
    const CommandOption opts[] = {
        {"image", 0, &image, NULL},       {"image-format", 0, &format, NULL},
        {"image-id", 0, &image_id, NULL}, {"generation", 0, &generation, NULL},
        {"host", 0, &host, NULL},         {"virt-type", 0, &virt, NULL},
        {"libvirt", 0, &uri, NULL},       {"pool", 0, &pool, NULL},
        {"pool-dir", 0, &pool_dir, NULL}, {"console-dir", 0, &console, NULL},
        {"no-start", 0, NULL, &no_start}, {0},
    };
    int first = parse_command_flags(cmd, argc, argv, opts);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(CloneHost) ch = NULL;
    g_autofree char *backing = NULL;
    g_autofree char *computed_id = NULL;
    g_autofree guint *indexes = NULL;
    g_autofree CloneCreateOutcome *outcomes = NULL;
    CloneCreateRequest req = {0};
    CloneHostConfig config = {.progress = print_progress,
                              .progress_data = (gpointer) "clone-create"};
    guint64 gen = 1;
    guint n;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first < 2 || !image ||
        (!g_str_equal(format, "raw") && !g_str_equal(format, "qcow2")) ||
        (generation && !g_ascii_string_to_unsigned(generation, 10, 0,
                                                   G_MAXUINT64, &gen, NULL))) {
        fprintf(stderr, "sporectl clone-create: give --image, MANIFEST and at "
                        "least one INDEX (--image-format raw or qcow2)\n"
                        "Try 'sporectl help clone-create'.\n");
        return EXIT_USAGE;
    }
    if (strstr(image, "://") && !image_id) {
        fprintf(stderr,
                "sporectl clone-create: a URL master (%s) needs "
                "--image-id (as printed by 'agent-image-list')\n",
                image);
        return EXIT_USAGE;
    }
    m = manifest_parse_file(argv[first], problems, &err);
    if (!m) {
        if (problems->len == 0)
            fprintf(stderr, "sporectl clone-create: %s\n", err->message);
        for (guint p = 0; p < problems->len; p++)
            print_problem(argv[first], problems->pdata[p]);
        return EXIT_FAILURE;
    }
    req.virt = m->vm.hypervisor;
    if (virt && !parse_virt_type(virt, &req.virt)) {
        fprintf(stderr, "sporectl clone-create: --virt-type is kvm, qemu or "
                        "xen\n");
        return EXIT_USAGE;
    }
    n = (guint)(argc - first - 1);
    indexes = g_new0(guint, n);
    outcomes = g_new0(CloneCreateOutcome, n);
    for (guint i = 0; i < n; i++) {
        guint64 index;

        if (!g_ascii_string_to_unsigned(argv[first + 1 + i], 10, 0,
                                        m->scaling.max - 1, &index, NULL)) {
            fprintf(stderr,
                    "sporectl clone-create: index '%s' is not below the "
                    "service's max of %u\n",
                    argv[first + 1 + i], m->scaling.max);
            return EXIT_USAGE;
        }
        indexes[i] = (guint)index;
    }
    if (!virt && req.virt == MANIFEST_HYPERVISOR_KVM && !spore_kvm_works()) {
        fprintf(stderr,
                "sporectl clone-create: %s: the clones run as type "
                "qemu (TCG)\n",
                g_getenv("SPORE_VIRT_TYPE") ? "SPORE_VIRT_TYPE says so"
                                            : "KVM does not work here");
        req.virt = MANIFEST_HYPERVISOR_QEMU;
    }
    if (strstr(image, "://")) {
        backing = g_strdup(image);
    } else {
        backing = g_canonicalize_filename(image, NULL);
        if (!image_id) {
            g_autoptr(ImageIndex) idx = image_index_build_file(
                backing, IMAGE_INDEX_CHUNK_SHIFT_DEFAULT, 0, &err);

            if (!idx) {
                fprintf(stderr, "sporectl clone-create: %s\n", err->message);
                return EXIT_FAILURE;
            }
            computed_id = g_strdup(image_index_id(idx));
            image_id = computed_id;
        }
    }
    config.uri = libvirt_uri(uri);
    config.pool = pool;
    config.pool_dir = pool_dir;
    config.console_dir = console;
    ch = clone_host_open(&config, &err);
    if (!ch) {
        fprintf(stderr, "sporectl clone-create: %s\n", err->message);
        return EXIT_FAILURE;
    }
    req.manifest = m;
    req.indexes = indexes;
    req.n_indexes = n;
    req.backing = backing;
    req.backing_format = format;
    req.image_id = image_id;
    req.generation = gen;
    req.host_name = host;
    req.start = !no_start;
    if (!clone_host_create(ch, &req, outcomes, &err)) {
        fprintf(stderr, "sporectl clone-create: %s\n", err->message);
        return EXIT_FAILURE;
    }
    for (guint i = 0; i < n; i++) {
        g_autofree char *name = manifest_clone_name(m, indexes[i]);

        if (g->json) {
            g_autofree char *uuid = clone_uuid(m, indexes[i], image_id, gen);
            printf("{\"name\":\"%s\",\"uuid\":\"%s\",\"outcome\":\"%s\"}\n",
                   name, uuid,
                   outcomes[i] == CLONE_CREATED ? "created" : "existed");
        } else {
            printf("%s: %s\n", name,
                   outcomes[i] == CLONE_EXISTED ? "exists, unchanged"
                   : no_start                   ? "created"
                                                : "created and started");
        }
    }
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

static int
cmd_clone_destroy(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *timeout = NULL, *uri = NULL, *pool = NULL, *pool_dir = NULL;
    const CommandOption opts[] = {
        {"timeout", 0, &timeout, NULL},
        {"libvirt", 0, &uri, NULL},
        {"pool", 0, &pool, NULL},
        {"pool-dir", 0, &pool_dir, NULL},
        {0},
    };
    int first = parse_command_flags(cmd, argc, argv, opts);
    g_autoptr(CloneHost) ch = NULL;
    g_autoptr(GError) err = NULL;
    CloneHostConfig config = {.progress = print_progress,
                              .progress_data = (gpointer) "clone-destroy"};
    guint64 seconds = CLONE_DEFAULT_SHUTDOWN_SECONDS;
    int status = EXIT_SUCCESS;
    static const char *const said[] = {
        [CLONE_ABSENT] = "absent",
        [CLONE_WAS_STOPPED] = "undefined (was shut off), volume removed",
        [CLONE_SHUT_DOWN] = "shut down, undefined, volume removed",
        [CLONE_DESTROYED] = "did not shut down in time: powered off, "
                            "undefined, volume removed",
    };

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first < 1 ||
        (timeout &&
         !g_ascii_string_to_unsigned(timeout, 10, 0, 86400, &seconds, NULL))) {
        fprintf(stderr, "sporectl clone-destroy: give at least one NAME "
                        "(--timeout 0 to 86400 seconds)\n"
                        "Try 'sporectl help clone-destroy'.\n");
        return EXIT_USAGE;
    }
    config.uri = libvirt_uri(uri);
    config.pool = pool;
    config.pool_dir = pool_dir;
    ch = clone_host_open(&config, &err);
    if (!ch) {
        fprintf(stderr, "sporectl clone-destroy: %s\n", err->message);
        return EXIT_FAILURE;
    }
    for (int i = first; i < argc; i++) {
        CloneDestroyOutcome outcome;

        g_clear_error(&err);
        if (!clone_host_destroy(ch, argv[i], (guint)seconds, &outcome, &err)) {
            fprintf(stderr, "sporectl clone-destroy: %s\n", err->message);
            status = EXIT_FAILURE;
            continue;
        }
        printf("%s: %s\n", argv[i], said[outcome]);
    }
    return fflush(stdout) == 0 ? status : EXIT_FAILURE;
}

/* ---- image-index ------------------------------------------------------- */

static char *
human_bytes(guint64 n)
{
    return g_format_size_full(n, G_FORMAT_SIZE_IEC_UNITS);
}

static int
cmd_image_index(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *chunk_size = NULL;
    const char *output = NULL;
    const char *threads_text = NULL;
    const CommandOption opts[] = {
        {"chunk-size", 0, &chunk_size, NULL},
        {"output", 'o', &output, NULL},
        {"threads", 0, &threads_text, NULL},
        {0},
    };
    int first = parse_command_flags(cmd, argc, argv, opts);
    guint shift = IMAGE_INDEX_CHUNK_SHIFT_DEFAULT;
    guint64 threads = 0;
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = NULL;
    g_autofree char *default_output = NULL;
    g_autofree char *size_text = NULL;
    g_autofree char *chunk_text = NULL;
    g_autofree char *data_text = NULL;
    const char *image;
    guint64 zero, count;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first != 1) {
        fprintf(stderr, "sporectl image-index: give exactly one FILE\n"
                        "Try 'sporectl help image-index'.\n");
        return EXIT_USAGE;
    }
    image = argv[first];
    if (chunk_size && !image_index_parse_chunk_size(chunk_size, &shift, &err)) {
        fprintf(stderr, "sporectl image-index: %s\n", err->message);
        return EXIT_USAGE;
    }
    if (threads_text && (!g_ascii_string_to_unsigned(threads_text, 10, 1, 256,
                                                     &threads, NULL))) {
        fprintf(stderr,
                "sporectl image-index: --threads '%s' must be 1 to 256\n",
                threads_text);
        return EXIT_USAGE;
    }
    if (!output) {
        g_autofree char *base = g_path_get_basename(image);
        default_output = g_strconcat(base, ".sporeidx", NULL);
        output = default_output;
    }

    idx = image_index_build_file(image, shift, (guint)threads, &err);
    if (!idx || !image_index_write(idx, output, &err)) {
        fprintf(stderr, "sporectl image-index: %s\n", err->message);
        return EXIT_FAILURE;
    }

    count = image_index_chunk_count(idx);
    zero = image_index_zero_count(idx);
    size_text = human_bytes(image_index_image_size(idx));
    chunk_text = human_bytes(image_index_chunk_size(idx));
    data_text = human_bytes((count - zero) * image_index_chunk_size(idx));
    if (g->json) {
        printf("{\"id\": \"%s\", \"image_size\": %" G_GUINT64_FORMAT
               ", \"chunk_size\": %" G_GUINT64_FORMAT
               ", \"chunks\": %" G_GUINT64_FORMAT
               ", \"zero_chunks\": %" G_GUINT64_FORMAT "}\n",
               image_index_id(idx), image_index_image_size(idx),
               image_index_chunk_size(idx), count, zero);
    } else if (g_str_equal(output, "-")) {
        fprintf(stderr, "%s\n", image_index_id(idx));
    } else {
        printf("%s\n", image_index_id(idx));
    }
    fprintf(stderr,
            "%s: %s in %" G_GUINT64_FORMAT " chunks of %s, %" G_GUINT64_FORMAT
            " all-zero (at most %s to fetch); index in %s\n",
            image, size_text, count, chunk_text, zero, data_text,
            g_str_equal(output, "-") ? "standard output" : output);
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- control sockets --------------------------------------------------- */

/* A progress line is on standard error, not ended yet (submit --wait). */
static bool progress_pending;

/* End the pending progress line, before a message goes to standard error. */
static void
progress_end(void)
{
    if (progress_pending)
        fputc('\n', stderr);
    progress_pending = false;
}

/*
 * Send one JSON request (a line) to the daemon listening on the unix socket
 * @path, the host agent or the site manager as @what says, and return its
 * reply object (a new reference), or NULL after printing why.
 */
static JsonObject *
socket_call(const char *path, const char *what, JsonBuilder *request)
{
    g_autoptr(JsonNode) root = json_builder_get_root(request);
    g_autoptr(GError) err = NULL;
    g_autofree char *who = g_strconcat("the ", what, NULL);
    JsonObject *reply =
        control_call(who, path, json_node_get_object(root), &err);

    if (!reply) {
        progress_end();
        fprintf(stderr, "sporectl: %s\n", err->message);
    }
    return reply;
}

static void
print_json_object(JsonObject *obj)
{
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) node = json_node_new(JSON_NODE_OBJECT);
    g_autofree char *text = NULL;

    json_node_set_object(node, obj);
    json_generator_set_root(gen, node);
    json_generator_set_pretty(gen, TRUE);
    text = json_generator_to_data(gen, NULL);
    printf("%s\n", text);
}

/* ---- host agent commands ----------------------------------------------- */

static void
print_image_line(JsonObject *im)
{
    JsonObject *bytes = json_object_get_object_member(im, "fetched_bytes");
    g_autofree char *size =
        human_bytes((guint64)json_object_get_int_member(im, "size"));
    g_autofree char *origin =
        human_bytes((guint64)json_object_get_int_member(bytes, "origin"));
    g_autofree char *peer =
        human_bytes((guint64)json_object_get_int_member(bytes, "peer"));
    g_autofree char *local =
        human_bytes((guint64)json_object_get_int_member(bytes, "local"));

    printf("%.19s  %9s  %5.1f%% cached  from origin %s, peers %s, local %s"
           "%s%s\n",
           json_object_get_string_member(im, "image"), size,
           100.0 * json_object_get_double_member(im, "cached_fraction"), origin,
           peer, local,
           json_object_get_boolean_member(im, "serving") ? "  serving " : "",
           json_object_get_boolean_member(im, "serving")
               ? json_object_get_string_member(im, "uri")
               : "");
}

/* image-plan's reply: where the missing bytes would come from */
static void
print_plan(JsonObject *r)
{
    static const struct {
        const char *member, *label;
    } rows[] = {
        {"cached_bytes", "cached here"},
        {"zero_bytes", "zero (never fetched)"},
        {"local_bytes", "copied from local images"},
        {"peer_bytes", "from peers"},
        {"origin_via_peer_bytes", "from the origin, via a peer"},
        {"origin_bytes", "from the origin, by this host"},
    };
    const char *groups[] = {"peers", "origin_via"};

    printf("%s\n", json_object_get_string_member(r, "image"));
    for (guint k = 0; k < G_N_ELEMENTS(rows); k++) {
        g_autofree char *h =
            human_bytes((guint64)json_object_get_int_member(r, rows[k].member));
        printf("  %-32s %10s\n", rows[k].label, h);
        if (k < 3 || k == 5)
            continue;
        {
            JsonObject *per = json_object_get_object_member(r, groups[k - 3]);
            g_autoptr(GList) names = json_object_get_members(per);

            for (GList *l = names; l; l = l->next) {
                g_autofree char *b = human_bytes(
                    (guint64)json_object_get_int_member(per, l->data));
                printf("    %-30s %10s\n", (char *)l->data, b);
            }
        }
    }
}

static void
print_similarity(JsonArray *pairs)
{
    if (json_array_get_length(pairs) == 0)
        printf("fewer than two images on this host\n");
    for (guint i = 0; i < json_array_get_length(pairs); i++) {
        JsonObject *p = json_array_get_object_element(pairs, i);

        printf(
            "%.19s shares %5.1f%% of its chunks with %.19s (%" G_GINT64_FORMAT
            " of %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT " cached there)\n",
            json_object_get_string_member(p, "image"),
            100.0 * json_object_get_double_member(p, "fraction"),
            json_object_get_string_member(p, "other"),
            json_object_get_int_member(p, "shared_chunks"),
            json_object_get_int_member(p, "chunks"),
            json_object_get_int_member(p, "shared_cached_chunks"));
    }
}

static void
print_peers(JsonObject *r)
{
    JsonArray *peers = json_object_get_array_member(r, "peers");

    if (!json_object_get_boolean_member(r, "enabled")) {
        printf("peer exchange is off on this host\n");
        return;
    }
    printf("listening on %s\n",
           json_object_get_string_member_with_default(r, "listen", "?"));
    for (guint i = 0; i < json_array_get_length(peers); i++) {
        JsonObject *p = json_array_get_object_element(peers, i);
        g_autofree char *in =
            human_bytes((guint64)json_object_get_int_member(p, "bytes_in"));
        g_autofree char *out =
            human_bytes((guint64)json_object_get_int_member(p, "bytes_out"));

        printf("%-16s %-24s %-12s %6.1f ms  in %s, out %s, %" G_GINT64_FORMAT
               " bad, %" G_GINT64_FORMAT " images banned\n",
               json_object_get_string_member(p, "name"),
               json_object_get_string_member(p, "endpoint"),
               json_object_get_boolean_member(p, "dead")        ? "dead"
               : json_object_get_boolean_member(p, "connected") ? "connected"
                                                                : "unreachable",
               json_object_get_double_member(p, "latency_ms"), in, out,
               json_object_get_int_member(p, "bad_chunks"),
               json_object_get_int_member(p, "images_banned"));
    }
}

/* Finish an agent command: print the reply, return the exit code. */
static int
agent_finish(const Globals *g, const Command *cmd, JsonObject *reply)
{
    if (!reply)
        return EXIT_FAILURE;
    if (g->json)
        print_json_object(reply);
    if (!json_object_get_boolean_member_with_default(reply, "ok", FALSE)) {
        fprintf(stderr, "sporectl %s: %s\n", cmd->name,
                json_object_get_string_member_with_default(reply, "error",
                                                           "failed"));
        json_object_unref(reply);
        return EXIT_FAILURE;
    }
    if (!g->json) {
        if (g_str_equal(cmd->name, "image-plan")) {
            print_plan(reply);
        } else if (json_object_has_member(reply, "pairs")) {
            print_similarity(json_object_get_array_member(reply, "pairs"));
        } else if (g_str_equal(cmd->name, "agent-peer-list")) {
            print_peers(reply);
        } else if (json_object_has_member(reply, "images")) {
            JsonArray *arr = json_object_get_array_member(reply, "images");
            for (guint i = 0; i < json_array_get_length(arr); i++)
                print_image_line(json_array_get_object_element(arr, i));
        } else if (json_object_has_member(reply, "image")) {
            JsonObject *im = json_object_get_object_member(reply, "image");
            if (g_str_equal(cmd->name, "agent-image-serve"))
                printf("%s\n", json_object_get_string_member(im, "uri"));
            else
                print_image_line(im);
        }
    }
    json_object_unref(reply);
    return EXIT_SUCCESS;
}

static int
cmd_agent_image_add(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *pin = NULL;
    const CommandOption opts[] = {{"id", 0, &pin, NULL}, {0}};
    int first = parse_command_flags(cmd, argc, argv, opts);
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autofree char *index = NULL;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first < 2) {
        fprintf(stderr,
                "sporectl %s: give INDEX and at least one URL\n"
                "Try 'sporectl help %s'.\n",
                cmd->name, cmd->name);
        return EXIT_USAGE;
    }
    index = g_canonicalize_filename(argv[first], NULL);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "command");
    json_builder_add_string_value(b, "image-add");
    json_builder_set_member_name(b, "index");
    json_builder_add_string_value(b, index);
    if (pin) {
        json_builder_set_member_name(b, "id");
        json_builder_add_string_value(b, pin);
    }
    json_builder_set_member_name(b, "origins");
    json_builder_begin_array(b);
    for (int i = first + 1; i < argc; i++)
        json_builder_add_string_value(b, argv[i]);
    json_builder_end_array(b);
    json_builder_end_object(b);
    return agent_finish(g, cmd, socket_call(g->agent, "host agent", b));
}

/* agent-image-list, and the commands taking one IMAGE */
static int
cmd_agent_simple(const Command *cmd, const Globals *g, int argc, char **argv)
{
    int first = parse_command_flags(cmd, argc, argv, NULL);
    bool takes_image = g_str_equal(cmd->synopsis, "IMAGE");
    const char *command = g_str_has_prefix(cmd->name, "agent-")
                              ? cmd->name + strlen("agent-")
                              : cmd->name;
    g_autoptr(JsonBuilder) b = json_builder_new();

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first != (takes_image ? 1 : 0)) {
        fprintf(stderr, "sporectl %s: %s\nTry 'sporectl help %s'.\n", cmd->name,
                takes_image ? "give exactly one IMAGE" : "takes no arguments",
                cmd->name);
        return EXIT_USAGE;
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "command");
    json_builder_add_string_value(b, command);
    if (takes_image) {
        json_builder_set_member_name(b, "image");
        json_builder_add_string_value(b, argv[first]);
    }
    json_builder_end_object(b);
    return agent_finish(g, cmd, socket_call(g->agent, "host agent", b));
}

/* ---- site manager commands --------------------------------------------- */

/* The largest request line the manager reads (docs/site-control.md). */
#define MANAGER_MAX_REQUEST (32u * 1024 * 1024)
/* The largest image index whose base64 leaves room for the rest of the
 * image-add request. */
#define IMAGE_ADD_MAX_INDEX         ((MANAGER_MAX_REQUEST - 65536u) / 4 * 3)
#define SUBMIT_WAIT_DEFAULT_SECONDS 600
#define EVENTS_BATCH                100 /* the events asked for at a time */

static bool
get_bool(JsonObject *o, const char *name)
{
    return o && json_object_get_boolean_member_with_default(o, name, FALSE);
}

/* Member @name of @o when it is an array, else NULL. */
static JsonArray *
get_array(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;

    return n && JSON_NODE_HOLDS_ARRAY(n) ? json_node_get_array(n) : NULL;
}

/* Member @name of @o when it is an object, else NULL. */
static JsonObject *
get_object(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;

    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static guint
array_length(JsonArray *a)
{
    return a ? json_array_get_length(a) : 0;
}

/* Element @i of @a when it is an object, else NULL. */
static JsonObject *
array_object(JsonArray *a, guint i)
{
    JsonNode *n = json_array_get_element(a, i);

    return JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

/* What the manager sent, made one line: control characters become spaces. */
static char *
one_line(char *text)
{
    for (char *p = text; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    }
    return text;
}

/* @t, a Unix time, as local "YYYY-MM-DD HH:MM:SS". */
static char *
local_time(double t)
{
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_local((gint64)t);

    return dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
}

/* A table printed virsh-style: a header line, a dashed line, the rows. */
typedef struct {
    guint columns;
    GPtrArray *cells; /* of char *, row after row, the header first */
} Table;

static void
table_start(Table *t, const char *const *header)
{
    t->columns = 0;
    t->cells = g_ptr_array_new_with_free_func(g_free);
    while (header[t->columns])
        g_ptr_array_add(t->cells, g_strdup(header[t->columns++]));
}

/* Add the next cell, filling the rows left to right. */
static void table_add(Table *t, const char *format, ...) G_GNUC_PRINTF(2, 3);

static void
table_add(Table *t, const char *format, ...)
{
    va_list ap;

    va_start(ap, format);
    g_ptr_array_add(t->cells, one_line(g_strdup_vprintf(format, ap)));
    va_end(ap);
}

/* Print @t with aligned columns and free it. */
static void
table_finish(Table *t)
{
    g_autofree glong *width = g_new0(glong, t->columns);
    glong total = 0;

    for (guint i = 0; i < t->cells->len; i++) {
        glong n = g_utf8_strlen(t->cells->pdata[i], -1);

        width[i % t->columns] = MAX(width[i % t->columns], n);
    }
    for (guint c = 0; c < t->columns; c++)
        total += width[c] + 3;
    for (guint i = 0; i < t->cells->len; i++) {
        const char *cell = t->cells->pdata[i];
        guint c = i % t->columns;

        if (c == 0)
            putchar(' ');
        if (c + 1 < t->columns)
            printf("%s%*s", cell, (int)(width[c] - g_utf8_strlen(cell, -1) + 3),
                   "");
        else
            printf("%s\n", cell);
        if (i + 1 == t->columns) {
            for (glong k = 0; k < total; k++)
                putchar('-');
            putchar('\n');
        }
    }
    g_ptr_array_free(t->cells, TRUE);
    t->cells = NULL;
}

/* Begin a request to the site manager: {"cmd": @cmd, ...} */
static JsonBuilder *
manager_request(const char *cmd)
{
    JsonBuilder *b = json_builder_new();

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "cmd");
    json_builder_add_string_value(b, cmd);
    return b;
}

static void
request_add_string(JsonBuilder *b, const char *name, const char *value)
{
    json_builder_set_member_name(b, name);
    json_builder_add_string_value(b, value);
}

static void
request_add_int(JsonBuilder *b, const char *name, gint64 value)
{
    json_builder_set_member_name(b, name);
    json_builder_add_int_value(b, value);
}

/*
 * End the request begun by manager_request(), send it to the site manager
 * and return its reply (a new reference) when it is ok; with --json it is
 * printed first.  Otherwise return NULL after printing the manager's error,
 * and the problems it found in the manifest @file (NULL: none sent).
 */
static JsonObject *
manager_call(const Globals *g, const char *name, JsonBuilder *request,
             const char *file)
{
    JsonObject *reply;
    JsonArray *problems;

    json_builder_end_object(request);
    reply = socket_call(g->endpoint, "site manager", request);
    if (!reply)
        return NULL;
    if (g->json)
        print_json_object(reply);
    if (get_bool(reply, "ok")) {
        if (g->json)
            fflush(stdout);
        return reply;
    }
    progress_end();
    fprintf(stderr, "sporectl %s: %s\n", name,
            json_util_get_string(reply, "error", "failed"));
    problems = get_array(reply, "problems");
    for (guint i = 0; i < array_length(problems); i++) {
        JsonObject *p = array_object(problems, i);

        if (p)
            print_problem_at(file ? file : "manifest",
                             (guint)json_util_get_int(p, "line", 0),
                             json_util_get_string(p, "message", "invalid"));
    }
    json_object_unref(reply);
    return NULL;
}

/* "hv-1" of a reply's @member, a name or an object with a name. */
static const char *
reply_name(JsonObject *reply, const char *member, const char *fallback)
{
    JsonObject *o = get_object(reply, member);

    return o ? json_util_get_string(o, "name", fallback)
             : json_util_get_string(reply, member, fallback);
}

static void
print_clone_table(JsonArray *clones, bool with_service)
{
    static const char *const header[] = {"Name",  "Service",    "Host",
                                         "State", "Generation", NULL};
    static const char *const header_short[] = {"Name", "Host", "State",
                                               "Generation", NULL};
    Table t;

    table_start(&t, with_service ? header : header_short);
    for (guint i = 0; i < array_length(clones); i++) {
        JsonObject *c = array_object(clones, i);

        if (!c)
            continue;
        table_add(&t, "%s", json_util_get_string(c, "name", "-"));
        if (with_service)
            table_add(&t, "%s", json_util_get_string(c, "service", "-"));
        table_add(&t, "%s", json_util_get_string(c, "host", "-"));
        table_add(&t, "%s", json_util_get_string(c, "state", "-"));
        table_add(&t, "%" G_GINT64_FORMAT,
                  json_util_get_int(c, "generation", 0));
    }
    table_finish(&t);
}

static void
print_service_table(JsonArray *services)
{
    static const char *const header[] = {
        "Name", "Generation", "Image", "Running", "Min", "Max", "Status", NULL};
    Table t;

    table_start(&t, header);
    for (guint i = 0; i < array_length(services); i++) {
        JsonObject *s = array_object(services, i);
        gint64 desired = json_util_get_int(s, "desired", 0);
        gint64 running = json_util_get_int(s, "running", 0);

        if (!s)
            continue;
        table_add(&t, "%s", json_util_get_string(s, "name", "-"));
        table_add(&t, "%" G_GINT64_FORMAT,
                  json_util_get_int(s, "generation", 0));
        table_add(&t, "%s", json_util_get_string(s, "image", "-"));
        table_add(&t, "%" G_GINT64_FORMAT "/%" G_GINT64_FORMAT, running,
                  desired);
        table_add(&t, "%" G_GINT64_FORMAT, json_util_get_int(s, "min", 0));
        table_add(&t, "%" G_GINT64_FORMAT, json_util_get_int(s, "max", 0));
        table_add(&t, "%s",
                  get_bool(s, "deleting") ? "deleting"
                  : running == desired    ? "ready"
                                          : "converging");
    }
    table_finish(&t);
}

static void
print_service(JsonObject *s)
{
    gint64 cooldown = json_util_get_int(s, "cooldown_until", 0);

    printf("Name:         %s\n", json_util_get_string(s, "name", "-"));
    printf("Generation:   %" G_GINT64_FORMAT "\n",
           json_util_get_int(s, "generation", 0));
    printf("Image:        %s\n", json_util_get_string(s, "image", "-"));
    printf("Desired:      %" G_GINT64_FORMAT " (min %" G_GINT64_FORMAT
           ", max %" G_GINT64_FORMAT ")\n",
           json_util_get_int(s, "desired", 0), json_util_get_int(s, "min", 0),
           json_util_get_int(s, "max", 0));
    printf("Running:      %" G_GINT64_FORMAT "\n",
           json_util_get_int(s, "running", 0));
    if (cooldown > g_get_real_time() / G_USEC_PER_SEC) {
        g_autofree char *until = local_time((double)cooldown);

        printf("Cooldown:     until %s\n", until);
    }
    if (get_bool(s, "deleting"))
        printf("Deleting:     yes\n");
    for (guint i = 0; i < array_length(get_array(s, "rules")); i++) {
        JsonObject *r = array_object(get_array(s, "rules"), i);
        JsonNode *v = r ? json_object_get_member(r, "value") : NULL;
        g_autofree char *value = NULL;

        if (!r)
            continue;
        if (!v || JSON_NODE_HOLDS_NULL(v))
            value = g_strdup("no data");
        else
            value = g_strdup_printf("%.3g", json_node_get_double(v));
        printf("%s %" G_GINT64_FORMAT ":       %s; last value %s%s\n", "Rule",
               json_util_get_int(r, "rule", 0),
               json_util_get_string(r, "text", "?"), value,
               get_bool(r, "fires")     ? ", fires"
               : get_bool(r, "pending") ? ", pending (holds, not for long "
                                          "enough yet)"
                                        : "");
    }
    putchar('\n');
    print_clone_table(get_array(s, "clones"), false);
}

/* "12s ago", "5m ago", ... */
static char *
format_ago(double seconds)
{
    if (seconds < 60)
        return g_strdup_printf("%.0fs ago", seconds);
    if (seconds < 3600)
        return g_strdup_printf("%.0fm ago", seconds / 60);
    if (seconds < 86400)
        return g_strdup_printf("%.0fh ago", seconds / 3600);
    return g_strdup_printf("%.0fd ago", seconds / 86400);
}

static void
print_host_table(JsonArray *hosts)
{
    static const char *const header[] = {
        "Name",   "State",  "Accepted",  "Address", "CPUs",
        "Memory", "Clones", "Last seen", "Key",     NULL};
    Table t;

    table_start(&t, header);
    for (guint i = 0; i < array_length(hosts); i++) {
        JsonObject *h = array_object(hosts, i);
        JsonNode *seen = h ? json_object_get_member(h, "last_seen") : NULL;
        g_autofree char *memory = NULL;
        g_autofree char *ago = NULL;

        if (!h)
            continue;
        memory =
            human_bytes((guint64)json_util_get_int(h, "memory_kib", 0) * 1024);
        ago = seen && JSON_NODE_HOLDS_VALUE(seen)
                  ? format_ago(json_node_get_double(seen))
                  : g_strdup("never");
        table_add(&t, "%s", json_util_get_string(h, "name", "-"));
        table_add(&t, "%s", json_util_get_string(h, "state", "-"));
        table_add(&t, "%s", get_bool(h, "accepted") ? "yes" : "no");
        table_add(&t, "%s", json_util_get_string(h, "address", "-"));
        table_add(&t, "%" G_GINT64_FORMAT, json_util_get_int(h, "cpus", 0));
        table_add(&t, "%s", memory);
        table_add(&t, "%" G_GINT64_FORMAT, json_util_get_int(h, "clones", 0));
        table_add(&t, "%s", ago);
        table_add(&t, "%s", json_util_get_string(h, "key", "-"));
    }
    table_finish(&t);
}

/* One line for the image, one indented line for each host that has it. */
static void
print_manager_image(JsonObject *im)
{
    JsonArray *origins = get_array(im, "origins");
    JsonArray *hosts = get_array(im, "hosts");
    g_autofree char *size =
        human_bytes((guint64)json_util_get_int(im, "size", 0));
    g_autoptr(GString) line = g_string_new(NULL);
    int host_width = 0;

    g_string_printf(line, "%s  %.19s  %s",
                    json_util_get_string(im, "name", "-"),
                    json_util_get_string(im, "id", "-"), size);
    for (guint i = 0; i < array_length(origins); i++) {
        JsonNode *n = json_array_get_element(origins, i);

        if (JSON_NODE_HOLDS_VALUE(n) && json_node_get_string(n))
            g_string_append_printf(line, "%s%s", i ? ", " : "  ",
                                   json_node_get_string(n));
    }
    printf("%s\n", one_line(line->str));
    for (guint i = 0; i < array_length(hosts); i++) {
        JsonObject *h = array_object(hosts, i);

        if (h)
            host_width = MAX(host_width,
                             (int)strlen(json_util_get_string(h, "host", "-")));
    }
    for (guint i = 0; i < array_length(hosts); i++) {
        JsonObject *h = array_object(hosts, i);
        JsonObject *fetched = get_object(h, "fetched");
        g_autofree char *origin = NULL;
        g_autofree char *peer = NULL;
        g_autofree char *local = NULL;
        g_autofree char *host = NULL;

        if (!h)
            continue;
        origin = human_bytes((guint64)json_util_get_int(fetched, "origin", 0));
        peer = human_bytes((guint64)json_util_get_int(fetched, "peer", 0));
        local = human_bytes((guint64)json_util_get_int(fetched, "local", 0));
        host = one_line(g_strdup(json_util_get_string(h, "host", "-")));
        printf("  %-*s  %.1f%% cached  from origin %s, peers %s, local %s\n",
               host_width, host,
               100.0 * json_util_get_double(h, "cached_fraction", 0), origin,
               peer, local);
    }
}

/*
 * service-list, service-show, service-delete, clone-list, host-list,
 * host-accept and image-list: no options, at most one operand.
 */
static int
cmd_manager_simple(const Command *cmd, const Globals *g, int argc, char **argv)
{
    int first = parse_command_flags(cmd, argc, argv, NULL);
    /* the operand's member in the request; NULL: the command takes none */
    const char *member = NULL;
    bool optional = false;
    g_autoptr(JsonBuilder) b = NULL;
    g_autoptr(JsonObject) reply = NULL;

    if (g_str_equal(cmd->name, "service-show") ||
        g_str_equal(cmd->name, "service-delete") ||
        g_str_equal(cmd->name, "host-accept")) {
        member = "name";
    } else if (g_str_equal(cmd->name, "clone-list")) {
        member = "service";
        optional = true;
    }
    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first > (member ? 1 : 0) ||
        argc - first < (member && !optional ? 1 : 0)) {
        fprintf(stderr, "sporectl %s: %s\nTry 'sporectl help %s'.\n", cmd->name,
                !member    ? "takes no arguments"
                : optional ? "takes at most one SERVICE"
                           : "give exactly one NAME",
                cmd->name);
        return EXIT_USAGE;
    }
    b = manager_request(cmd->name);
    if (argc - first == 1)
        request_add_string(b, member, argv[first]);
    reply = manager_call(g, cmd->name, b, NULL);
    if (!reply)
        return EXIT_FAILURE;
    if (g->json)
        return EXIT_SUCCESS;

    if (g_str_equal(cmd->name, "service-list")) {
        print_service_table(get_array(reply, "services"));
    } else if (g_str_equal(cmd->name, "service-show")) {
        print_service(get_object(reply, "service"));
    } else if (g_str_equal(cmd->name, "service-delete")) {
        printf("%s: deleting (its clones are shut down and removed)\n",
               reply_name(reply, "service", argv[first]));
    } else if (g_str_equal(cmd->name, "clone-list")) {
        print_clone_table(get_array(reply, "clones"), true);
    } else if (g_str_equal(cmd->name, "host-list")) {
        print_host_table(get_array(reply, "hosts"));
    } else if (g_str_equal(cmd->name, "host-accept")) {
        printf("%s: accepted\n", reply_name(reply, "host", argv[first]));
    } else if (g_str_equal(cmd->name, "image-list")) {
        JsonArray *images = get_array(reply, "images");

        for (guint i = 0; i < array_length(images); i++) {
            JsonObject *im = array_object(images, i);

            if (im)
                print_manager_image(im);
        }
    }
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- submit ------------------------------------------------------------ */

/*
 * How far the service of a service-show @reply is from converged (its
 * desired number of clones running, all of its current generation):
 * returns "web: placed 2/2, running 1/2, image 34% cached" and sets *done.
 * @images: an image-list reply, for how much of the image the hosts with
 * the service's clones have cached.
 */
static char *
service_progress(JsonObject *reply, JsonObject *images, bool *done)
{
    JsonObject *s = get_object(reply, "service");
    JsonArray *clones = get_array(s, "clones");
    JsonArray *image_list = get_array(images, "images");
    gint64 generation = json_util_get_int(s, "generation", 0);
    gint64 desired = json_util_get_int(s, "desired", 0);
    gint64 running = json_util_get_int(s, "running", 0);
    g_autoptr(GHashTable) hosts = g_hash_table_new(g_str_hash, g_str_equal);
    GString *line = g_string_new(NULL);
    bool all_current = true;
    guint placed = 0;

    for (guint i = 0; i < array_length(clones); i++) {
        JsonObject *c = array_object(clones, i);
        const char *host = json_util_get_string(c, "host", NULL);
        bool current = json_util_get_int(c, "generation", 0) == generation;

        if (!c)
            continue;
        if (host)
            g_hash_table_add(hosts, (gpointer)host);
        if (host && current)
            placed++;
        if (!current ||
            !g_str_equal(json_util_get_string(c, "state", ""), "running"))
            all_current = false;
    }
    *done = running == desired && all_current && !get_bool(s, "deleting");
    g_string_printf(line,
                    "%s: placed %u/%" G_GINT64_FORMAT
                    ", running %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT,
                    json_util_get_string(s, "name", "-"), placed, desired,
                    running, desired);
    for (guint i = 0; i < array_length(image_list); i++) {
        JsonObject *im = array_object(image_list, i);
        JsonArray *copies = get_array(im, "hosts");
        double sum = 0;

        if (!im || g_hash_table_size(hosts) == 0 ||
            g_strcmp0(json_util_get_string(im, "name", NULL),
                      json_util_get_string(s, "image", "")) != 0)
            continue;
        /* a host with clones and no entry has none of the image */
        for (guint k = 0; k < array_length(copies); k++) {
            JsonObject *h = array_object(copies, k);

            if (h && g_hash_table_contains(hosts,
                                           json_util_get_string(h, "host", "")))
                sum += json_util_get_double(h, "cached_fraction", 0);
        }
        g_string_append_printf(line, ", image %.0f%% cached",
                               100.0 * sum / g_hash_table_size(hosts));
        break;
    }
    if (get_bool(s, "deleting"))
        g_string_append(line, ", deleting");
    return one_line(g_string_free(line, FALSE));
}

/* Show @text as the progress: redrawn in place on a terminal, else a line
 * when it changed since @last. */
static void
show_progress(const char *text, char **last)
{
    if (isatty(STDERR_FILENO)) {
        gsize width = strlen(text);
        gsize old = *last ? strlen(*last) : 0;

        fprintf(stderr, "\r%s%*s", text, (int)(old > width ? old - width : 0),
                "");
        progress_pending = true;
    } else if (!*last || !g_str_equal(*last, text)) {
        fprintf(stderr, "%s\n", text);
    }
    g_free(*last);
    *last = g_strdup(text);
}

/* submit --wait: poll the service @name every second until it converged or
 * @seconds passed. */
static int
wait_for_service(const Globals *g, const char *name, guint64 seconds)
{
    Globals quiet = *g; /* the polls are not part of --json's output */
    gint64 deadline = g_get_monotonic_time() + (gint64)seconds * G_USEC_PER_SEC;
    g_autofree char *last = NULL;

    quiet.json = false;
    for (;;) {
        g_autoptr(JsonBuilder) show = manager_request("service-show");
        g_autoptr(JsonBuilder) list = manager_request("image-list");
        g_autoptr(JsonObject) shown = NULL;
        g_autoptr(JsonObject) images = NULL;
        g_autofree char *progress = NULL;
        gint64 left;
        bool done;

        request_add_string(show, "name", name);
        shown = manager_call(&quiet, "submit", show, NULL);
        if (!shown)
            return EXIT_FAILURE;
        images = manager_call(&quiet, "submit", list, NULL);
        if (!images)
            return EXIT_FAILURE;
        progress = service_progress(shown, images, &done);
        show_progress(progress, &last);
        if (done) {
            progress_end();
            if (!g->json)
                printf("%s: converged\n", name);
            return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
        }
        if (get_bool(get_object(shown, "service"), "deleting")) {
            progress_end();
            fprintf(stderr, "sporectl submit: %s is being deleted\n", name);
            return EXIT_FAILURE;
        }
        left = deadline - g_get_monotonic_time();
        if (left <= 0) {
            progress_end();
            fprintf(
                stderr,
                "sporectl submit: %s has not converged after %" G_GUINT64_FORMAT
                " seconds (%s)\n",
                name, seconds, progress);
            return EXIT_FAILURE;
        }
        g_usleep((gulong)MIN(left, G_USEC_PER_SEC));
    }
}

static int
cmd_submit(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *timeout = NULL;
    bool wait = false;
    const CommandOption opts[] = {
        {"wait", 0, NULL, &wait},
        {"timeout", 0, &timeout, NULL},
        {0},
    };
    int first = parse_command_flags(cmd, argc, argv, opts);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(JsonBuilder) b = NULL;
    g_autoptr(JsonObject) reply = NULL;
    g_autofree char *text = NULL;
    g_autofree char *service = NULL;
    guint64 seconds = SUBMIT_WAIT_DEFAULT_SECONDS;
    gsize len = 0;
    const char *file;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first != 1 || (timeout && !wait) ||
        (timeout &&
         !g_ascii_string_to_unsigned(timeout, 10, 0, 86400, &seconds, NULL))) {
        fprintf(stderr, "sporectl submit: give exactly one FILE (--timeout "
                        "0 to 86400 seconds, with --wait)\n"
                        "Try 'sporectl help submit'.\n");
        return EXIT_USAGE;
    }
    /* validated here as 'validate' does, and exactly the text validated is
     * sent (the manager validates it again) */
    file = argv[first];
    if (spore_file_read_bounded(file, MANIFEST_MAX_BYTES, &text, &len, &err))
        m = manifest_parse_data(text, len, problems, &err);
    if (!m) {
        if (problems->len == 0)
            print_problem_at(file, 0, err->message);
        for (guint p = 0; p < problems->len; p++)
            print_problem(file, problems->pdata[p]);
        return EXIT_FAILURE;
    }

    b = manager_request("submit");
    request_add_string(b, "manifest", text);
    request_add_string(b, "file", file);
    reply = manager_call(g, cmd->name, b, file);
    if (!reply)
        return EXIT_FAILURE;
    service =
        one_line(g_strdup(json_util_get_string(reply, "service", m->name)));
    if (!g->json)
        printf("%s: %s (generation %" G_GINT64_FORMAT ")\n", service,
               json_util_get_string(reply, "outcome", "submitted"),
               json_util_get_int(reply, "generation", 0));
    if (fflush(stdout) != 0)
        return EXIT_FAILURE;
    return wait ? wait_for_service(g, service, seconds) : EXIT_SUCCESS;
}

/* ---- scale, request, image-add, events ---------------------------------- */

/*
 * service_count_command: "scale NAME COUNT" and "request SERVICE [COUNT]":
 * send {name, count} as @cmd->name; @count_optional: COUNT defaults to 1.
 * Prints "SERVICE: @before COUNT @after".
 */
static int
service_count_command(const Command *cmd, const Globals *g, int argc,
                      char **argv, bool count_optional, const char *before,
                      const char *after)
{
    int first = parse_command_flags(cmd, argc, argv, NULL);
    g_autoptr(JsonBuilder) b = NULL;
    g_autoptr(JsonObject) reply = NULL;
    guint64 count = 1;
    int n;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    n = argc - first;
    if (n < (count_optional ? 1 : 2) || n > 2 ||
        (n == 2 && !g_ascii_string_to_unsigned(argv[first + 1], 10, 0,
                                               G_MAXINT32, &count, NULL))) {
        fprintf(stderr,
                "sporectl %s: give %s, a non-negative integer\n"
                "Try 'sporectl help %s'.\n",
                cmd->name,
                count_optional ? "SERVICE and optionally COUNT"
                               : "NAME and COUNT",
                cmd->name);
        return EXIT_USAGE;
    }
    b = manager_request(cmd->name);
    request_add_string(b, "name", argv[first]);
    request_add_int(b, "count", (gint64)count);
    reply = manager_call(g, cmd->name, b, NULL);
    if (!reply)
        return EXIT_FAILURE;
    if (!g->json)
        printf("%s: %s%" G_GUINT64_FORMAT "%s\n",
               reply_name(reply, "service", argv[first]), before, count, after);
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

static int
cmd_request(const Command *cmd, const Globals *g, int argc, char **argv)
{
    return service_count_command(cmd, g, argc, argv, true, "",
                                 " requests reported");
}

static int
cmd_scale(const Command *cmd, const Globals *g, int argc, char **argv)
{
    return service_count_command(cmd, g, argc, argv, false, "scaling to ",
                                 " clones");
}

static int
cmd_image_add(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *index = NULL;
    const CommandOption opts[] = {{"index", 0, &index, NULL}, {0}};
    int first = parse_command_flags(cmd, argc, argv, opts);
    g_autoptr(JsonBuilder) b = NULL;
    g_autoptr(JsonObject) reply = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *data = NULL;
    g_autofree char *encoded = NULL;
    g_autofree char *size = NULL;
    JsonObject *im;
    gsize len = 0;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first != 2) {
        fprintf(stderr, "sporectl image-add: give NAME and URL\n"
                        "Try 'sporectl help image-add'.\n");
        return EXIT_USAGE;
    }
    if (index) {
        if (!spore_file_read_bounded(index, IMAGE_ADD_MAX_INDEX, &data, &len,
                                     &err)) {
            fprintf(stderr, "sporectl image-add: %s\n", err->message);
            return EXIT_FAILURE;
        }
        encoded = g_base64_encode((const guchar *)data, len);
    }
    b = manager_request("image-add");
    request_add_string(b, "name", argv[first]);
    request_add_string(b, "url", argv[first + 1]);
    if (encoded)
        request_add_string(b, "index", encoded);
    reply = manager_call(g, cmd->name, b, NULL);
    if (!reply)
        return EXIT_FAILURE;
    if (!g->json) {
        im = get_object(reply, "image");
        size = human_bytes((guint64)json_util_get_int(im, "size", 0));
        printf("%s: added, %s, %s\n",
               json_util_get_string(im, "name", argv[first]),
               json_util_get_string(im, "id", "-"), size);
    }
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

static void
print_event(JsonObject *e)
{
    JsonNode *time = json_object_get_member(e, "time");
    g_autofree char *when = time && JSON_NODE_HOLDS_VALUE(time)
                                ? local_time(json_node_get_double(time))
                                : g_strdup("-");
    g_autofree char *line =
        g_strdup_printf("%s  %-16s  %-12s  %-10s  %s", when,
                        json_util_get_string(e, "kind", "-"),
                        json_util_get_string(e, "service", "-"),
                        json_util_get_string(e, "host", "-"),
                        json_util_get_string(e, "message", ""));

    printf("%s\n", one_line(line));
}

static int
cmd_events(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const char *service = NULL, *since_text = NULL;
    bool follow = false;
    const CommandOption opts[] = {
        {"follow", 'f', NULL, &follow},
        {"service", 0, &service, NULL},
        {"since", 0, &since_text, NULL},
        {0},
    };
    int first = parse_command_flags(cmd, argc, argv, opts);
    Globals quiet = *g; /* with --json, batches are printed here */
    guint64 since = 0;
    bool first_batch = true;

    if (first == -2)
        return EXIT_SUCCESS;
    if (first < 0)
        return EXIT_USAGE;
    if (argc - first != 0 ||
        (since_text && !g_ascii_string_to_unsigned(since_text, 10, 0,
                                                   G_MAXINT64, &since, NULL))) {
        fprintf(stderr, "sporectl events: takes no arguments (--since is an "
                        "event id)\n"
                        "Try 'sporectl help events'.\n");
        return EXIT_USAGE;
    }
    quiet.json = false;
    for (;;) {
        g_autoptr(JsonBuilder) b = manager_request("events");
        g_autoptr(JsonObject) reply = NULL;
        JsonArray *events;
        guint n;

        if (since_text || !first_batch)
            request_add_int(b, "since", (gint64)since);
        if (service)
            request_add_string(b, "service", service);
        request_add_int(b, "limit", EVENTS_BATCH);
        reply = manager_call(&quiet, cmd->name, b, NULL);
        if (!reply)
            return EXIT_FAILURE;
        events = get_array(reply, "events");
        n = array_length(events);
        if (g->json && (first_batch || n > 0))
            print_json_object(reply);
        for (guint i = 0; i < n; i++) {
            JsonObject *e = array_object(events, i);

            if (!e)
                continue;
            if (!g->json)
                print_event(e);
            since = MAX(since, (guint64)json_util_get_int(e, "id", 0));
        }
        if (fflush(stdout) != 0)
            return EXIT_FAILURE;
        if (!follow)
            return EXIT_SUCCESS;
        first_batch = false;
        if (n < EVENTS_BATCH) /* else more are waiting */
            g_usleep(G_USEC_PER_SEC);
    }
}

/* ---- help -------------------------------------------------------------- */

static const Command commands[];

static void
print_usage(FILE *out)
{
    fprintf(out,
            "Usage: sporectl [OPTION...] COMMAND [ARGS...]\n"
            "\n"
            "Administer a spore site: validate service definition manifests\n"
            "and talk to the site manager.\n"
            "\n"
            "Options:\n"
            "  -c, --connect=ENDPOINT  the site manager's control socket\n"
            "                          (default: $SPORE_ENDPOINT or\n"
            "                          " DEFAULT_MANAGER_SOCKET ")\n"
            "      --agent=SOCKET      the host agent's control socket\n"
            "                          (default: $SPORE_AGENT_SOCKET or\n"
            "                          " DEFAULT_AGENT_SOCKET ")\n"
            "      --json              print results as JSON\n"
            "  -h, --help              show this help\n"
            "  -V, --version           show the version\n"
            "\n"
            "Commands:\n");
    for (const Command *c = commands; c->name; c++)
        fprintf(out, "  %-20s %s\n", c->name, c->summary);
    fprintf(out, "\nRun 'sporectl help COMMAND' for a command's options.\n"
                 "Exit status: 0 success, 1 failure, 2 usage error.\n");
}

static int
cmd_help(const Command *cmd, const Globals *g, int argc, char **argv)
{
    const Command *target;

    if (argc < 2) {
        print_usage(stdout);
        return EXIT_SUCCESS;
    }
    target = find_command(argv[1]);
    if (!target) {
        fprintf(stderr, "sporectl help: unknown command '%s'\n", argv[1]);
        return EXIT_USAGE;
    }
    print_command_help(stdout, target);
    return EXIT_SUCCESS;
}

static const Command commands[] = {
    {
        "validate",
        "FILE...",
        "Check service definition manifests offline.",
        "Each FILE (or - for standard input) is parsed and checked against\n"
        "the manifest schema and rules of spore-manifest(5).  A valid file\n"
        "prints 'FILE: valid' on standard output; every problem of an invalid\n"
        "file is printed on standard error as 'FILE:LINE: message'.  With\n"
        "--json, a JSON array of {file, valid, problems} goes to standard\n"
        "output instead.  No daemon is needed.\n"
        "\n"
        "Exit status: 0 when every FILE is valid, 1 when any is not, 2 on a\n"
        "usage error.\n",
        cmd_validate,
    },
    {
        "format",
        "FILE",
        "Print a manifest in canonical form.",
        "Validates FILE like 'validate' and prints its canonical XML on\n"
        "standard output: every default written out, elements in schema\n"
        "order, sizes and durations in their largest exact unit.\n",
        cmd_format,
    },
    {
        "submit",
        "[--wait] [--timeout SECONDS] FILE",
        "Submit a service definition manifest to the site manager.",
        "Validates FILE (- for standard input) like 'validate' (problems go\n"
        "to standard error as 'FILE:LINE: message' and nothing is sent), then\n"
        "sends it to the site manager, which creates the service, or updates\n"
        "it to a new generation when its definition changed.  Prints\n"
        "'SERVICE: created|updated|unchanged (generation N)'.  The manifest's\n"
        "image must have been added with 'image-add'.\n"
        "\n"
        "With --wait, then waits until the service has converged: its desired\n"
        "number of clones running, all of the new generation.  Progress goes\n"
        "to standard error, e.g. 'web: placed 2/2, running 1/2, image 34%\n"
        "cached' (the mean cached fraction of the image on the hosts with the\n"
        "service's clones).  After SECONDS (default 600) it gives up with\n"
        "exit status 1; the manager keeps working on the service.\n",
        cmd_submit,
    },
    {
        "service-list",
        "",
        "List the site's services.",
        "One line per service: name, generation, image, running/desired\n"
        "clones, the scaling range, and ready, converging or deleting.\n",
        cmd_manager_simple,
    },
    {
        "service-show",
        "NAME",
        "Show a service and its clones.",
        "Prints the service's summary and a table of its clones: name, host,\n"
        "state and generation.  With --json, the reply also carries the\n"
        "service's canonical manifest.\n",
        cmd_manager_simple,
    },
    {
        "service-delete",
        "NAME",
        "Delete a service and all its clones.",
        "The manager shuts the service's clones down, undefines them and\n"
        "removes their volumes; the service disappears once they are gone.\n",
        cmd_manager_simple,
    },
    {
        "scale",
        "NAME COUNT",
        "Set the number of clones a service should have.",
        "COUNT must lie within the manifest's scaling range [min, max].  The\n"
        "manager creates or removes clones until COUNT run.\n",
        cmd_scale,
    },
    {
        "request",
        "SERVICE [COUNT]",
        "Report requests served by a service (default 1), for its rules.",
        "Adds COUNT to the service's request count.  A rule on the metric\n"
        "'requests' compares the requests of the last 60 seconds per running\n"
        "clone (requests per clone per minute) with its threshold.  Load\n"
        "balancers and guests can report through the manager's ZeroMQ\n"
        "endpoint as well (docs/scaling.md).\n",
        cmd_request,
    },
    {
        "clone-list",
        "[SERVICE]",
        "List the site's clones, or those of SERVICE.",
        "One line per clone: name, service, host ('-' while not placed),\n"
        "state and generation.  The state is what its host reports (running,\n"
        "paused, shutoff, ...), or pending, creating or deleting.\n",
        cmd_manager_simple,
    },
    {
        "host-list",
        "",
        "List the site's hosts.",
        "One line per host: name, state (up, lost, pending or down), whether\n"
        "its key is accepted, address, CPUs, memory, clones, when it was last\n"
        "heard from, and its CURVE public key.\n",
        cmd_manager_simple,
    },
    {
        "host-accept",
        "NAME",
        "Admit a host whose key was refused.",
        "A host whose key the manager does not know shows as 'pending' in\n"
        "'host-list'; compare its key with the host agent's, then accept it.\n",
        cmd_manager_simple,
    },
    {
        "image-add",
        "[--index FILE] NAME URL",
        "Register a master image with the site manager.",
        "Registers the image NAME, whose origin is URL (http, https or\n"
        "file), for manifests to name.  With --index, FILE is its chunk index\n"
        "(from 'sporectl image-index'), sent along; without it the manager\n"
        "downloads the image once and indexes it, which takes a while for a\n"
        "large image.\n",
        cmd_image_add,
    },
    {
        "image-list",
        "",
        "List the site's images and what each host has cached.",
        "One line per image: name, id, size and origins; then one indented\n"
        "line per host that has it: the percentage cached and the bytes\n"
        "fetched from the origin, from peers and from local copies.\n",
        cmd_manager_simple,
    },
    {
        "events",
        "[--follow] [--service NAME] [--since ID]",
        "Show the site manager's events.",
        "One line per event, oldest first: local time, kind, service, host\n"
        "and message.  --service shows only those of service NAME, --since\n"
        "only those after event ID.  With --follow (-f), keeps asking every\n"
        "second for new events until interrupted.\n",
        cmd_events,
    },
    {
        "clone-prepare",
        "--image BACKING [--image-format raw|qcow2] [--dir DIR] "
        "[--host NAME] MANIFEST INDEX...",
        "Create and customize clone overlays of a service, offline.",
        "Creates DIR/SERVICE-INDEX.qcow2 for each INDEX, a qcow2 overlay\n"
        "backed by BACKING (an image file, or an nbd+unix:// URI from\n"
        "'agent-image-serve'), and customizes them all in one libguestfs\n"
        "appliance launch as MANIFEST says: hostname, files, ssh keys,\n"
        "first-boot commands, a fresh identity.  {host} expands to NAME\n"
        "(default: this host's name).  Prints the overlays' paths.  The\n"
        "master is never written.  On failure the new overlays are removed.\n",
        cmd_clone_prepare,
    },
    {
        "domain-xml",
        "--image ID --overlay PATH [--console-log PATH] [--virt-type T] "
        "[--generation N] [--uuid UUID] MANIFEST INDEX",
        "Print the libvirt domain XML of one clone of a service.",
        "Builds the domain XML of clone INDEX of the service in MANIFEST,\n"
        "as the host agent defines it: name SERVICE-INDEX, the overlay\n"
        "PATH as its qcow2 disk (error_policy stop), a pty serial console\n"
        "logged to --console-log (default: beside the overlay), direct\n"
        "kernel boot when the manifest has <boot>, and spore's metadata\n"
        "(image ID, manifest generation N).  --virt-type overrides the\n"
        "manifest's hypervisor (kvm, qemu or xen).  Offline.\n",
        cmd_domain_xml,
    },
    {
        "clone-create",
        "--image MASTER [--image-format raw|qcow2] [--image-id ID] "
        "[--generation N] [--host NAME] [--virt-type T] [--libvirt URI] "
        "[--pool NAME] [--pool-dir DIR] [--console-dir DIR] [--no-start] "
        "MANIFEST INDEX...",
        "Create clones of a service as libvirt domains on this host.",
        "For each INDEX: a qcow2 overlay volume SERVICE-INDEX.qcow2 backed by\n"
        "MASTER (an image file, or an nbd+unix:// URI from\n"
        "'agent-image-serve', which then needs --image-id) in spore's 'dir'\n"
        "storage pool (default 'spore' in /var/lib/spore/clones, created if\n"
        "missing), customized as MANIFEST says (all clones in one libguestfs\n"
        "appliance launch), then a persistent domain SERVICE-INDEX defined\n"
        "and started (unless --no-start).  Manage them with virsh as any\n"
        "domain.  The image id of a file MASTER is computed (image-index) "
        "when\n"
        "not given.  The domain type is the manifest's, except that kvm runs\n"
        "as qemu (TCG) where KVM does not work; --virt-type overrides it.\n"
        "Serial consoles are logged to DIR/SERVICE-INDEX.log (--console-dir,\n"
        "default /var/log/spore/console).  --libvirt defaults to\n"
        "$LIBVIRT_DEFAULT_URI, else qemu:///system.\n"
        "\n"
        "Idempotent: a clone's UUID is derived from the manifest, INDEX, the\n"
        "image id and the generation N (default 1).  A clone that exists with\n"
        "that UUID is left as it is; a domain of that name with another UUID\n"
        "is an error and is not changed.  A failed create leaves no domain\n"
        "and no volume behind; run it again.\n",
        cmd_clone_create,
    },
    {
        "clone-destroy",
        "[--timeout SECONDS] [--libvirt URI] [--pool NAME] NAME...",
        "Shut down, undefine and remove clones.",
        "For each clone NAME (a domain with spore's metadata; others are\n"
        "refused): an ACPI shutdown, a power-off if it is still running\n"
        "after SECONDS (default 60; 0: power off at once; a paused clone is\n"
        "powered off), then undefine, then its overlay volume is removed from\n"
        "spore's pool.  A clone that does not exist is reported 'absent' and\n"
        "is not an error.\n",
        cmd_clone_destroy,
    },
    {
        "image-index",
        "[--chunk-size SIZE] [-o INDEX] [--threads N] FILE",
        "Build the chunk index of an image and print its id.",
        "Cuts the image FILE (a raw image file or block device) into chunks\n"
        "of SIZE bytes (a power of two from 4K to 4M; default 64K), hashes\n"
        "each with SHA-256, flags all-zero chunks, writes the index to INDEX\n"
        "(default: FILE's name + .sporeidx in the current directory; - for\n"
        "standard output) and prints the image id, sha256:HEX, the SHA-256 of\n"
        "the index.  A summary goes to standard error.  --threads sets the\n"
        "hashing threads (default: one per CPU).  The format is in\n"
        "docs/image-index.md.\n",
        cmd_image_index,
    },
    {
        "agent-image-add",
        "[--id IMAGE-ID] INDEX URL...",
        "Give the host agent an image to serve.",
        "Sends the host agent (--agent) the image index INDEX (a file on\n"
        "this host, e.g. from 'sporectl image-index') and the image's origin\n"
        "URLs, tried in order.  The agent verifies the index (against\n"
        "IMAGE-ID when given), opens the image's chunk cache and keeps the\n"
        "image across restarts.  Nothing is fetched yet.\n",
        cmd_agent_image_add,
    },
    {
        "agent-image-list",
        "",
        "List the host agent's images, cached fraction and bytes fetched.",
        "One line per image: id, size, the fraction of its non-zero chunks\n"
        "cached, the bytes fetched from the origin, peers and local copies,\n"
        "and the NBD URI when it is served.\n",
        cmd_agent_simple,
    },
    {
        "agent-image-serve",
        "IMAGE",
        "Serve an image as an NBD export (start its shim) and print its URI.",
        "Starts the block-fetch shim (nbdkit with the spore plugin) for IMAGE\n"
        "(its id, or a unique prefix of its hex digits) unless it runs, and\n"
        "prints nbd+unix:///HEX?socket=PATH, usable as the backing file of a\n"
        "qcow2 overlay:\n"
        "  qemu-img create -f qcow2 -F raw -b 'URI' clone.qcow2\n"
        "Reads of chunks not cached yet are fetched on demand.\n",
        cmd_agent_simple,
    },
    {
        "agent-image-unserve",
        "IMAGE",
        "Stop an image's shim.",
        "Stops the nbdkit shim of IMAGE; guests using it get I/O errors.\n",
        cmd_agent_simple,
    },
    {
        "agent-image-fill",
        "IMAGE",
        "Fetch all of an image in the background.",
        "Queues every missing chunk of IMAGE at background priority; reads\n"
        "by guests still come first.\n",
        cmd_agent_simple,
    },
    {
        "agent-image-show",
        "IMAGE",
        "Show one of the host agent's images.",
        "",
        cmd_agent_simple,
    },
    {
        "agent-peer-list",
        "",
        "List the host agent's peers and what was measured of them.",
        "One line per peer of the host agent (--agent): its name and\n"
        "endpoint, whether it is connected, unreachable (its CURVE handshake\n"
        "did not succeed: is this host's key in its list?) or dead (it\n"
        "stopped answering), the measured latency, the bytes received from\n"
        "it and served to it, the chunks from it that did not verify, and\n"
        "the images it is banned for.  See docs/peer-protocol.md.\n",
        cmd_agent_simple,
    },
    {
        "image-plan",
        "IMAGE",
        "Show where each missing byte of an image would come from.",
        "Asks the host agent (--agent) for the transfer plan of IMAGE as it\n"
        "stands: the bytes cached, zero, copied from another image cached on\n"
        "this host (same chunk digest), fetched from each peer that holds\n"
        "them, fetched from the origin by the peer chosen to fetch them for\n"
        "the site, and fetched from the origin by this host.\n",
        cmd_agent_simple,
    },
    {
        "image-similarity",
        "",
        "Show the fraction of chunks the host's images share.",
        "For each ordered pair of images on the host agent (--agent): the\n"
        "fraction of the first image's non-zero chunks whose digest the\n"
        "second has too, and how many of those are cached there, which local\n"
        "copies serve instead of a fetch.\n",
        cmd_agent_simple,
    },
    {
        "help",
        "[COMMAND]",
        "Show help for sporectl or for one command.",
        "",
        cmd_help,
    },
    {NULL, NULL, NULL, NULL, NULL},
};

static const Command *
find_command(const char *name)
{
    for (const Command *c = commands; c->name; c++) {
        if (g_str_equal(c->name, name))
            return c;
    }
    return NULL;
}

int
main(int argc, char **argv)
{
    Globals g = {.endpoint = g_getenv("SPORE_ENDPOINT"),
                 .agent = g_getenv("SPORE_AGENT_SOCKET")};
    const Command *cmd;
    int i;

    /* a peer that goes away (libvirtd, the agent) must be an error from
     * write(), not a silent death by SIGPIPE */
    signal(SIGPIPE, SIG_IGN);
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (a[0] != '-')
            break;
        if (g_str_equal(a, "-h") || g_str_equal(a, "--help")) {
            print_usage(stdout);
            return EXIT_SUCCESS;
        } else if (g_str_equal(a, "-V") || g_str_equal(a, "--version")) {
            printf("sporectl %s\n", SPORE_VERSION);
            return EXIT_SUCCESS;
        } else if (g_str_equal(a, "--json")) {
            g.json = true;
        } else if (g_str_equal(a, "-c") || g_str_equal(a, "--connect")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "sporectl: option '%s' needs an ENDPOINT\n", a);
                return EXIT_USAGE;
            }
            g.endpoint = argv[++i];
        } else if (g_str_has_prefix(a, "--connect=")) {
            g.endpoint = a + strlen("--connect=");
        } else if (g_str_equal(a, "--agent")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "sporectl: option '%s' needs a SOCKET\n", a);
                return EXIT_USAGE;
            }
            g.agent = argv[++i];
        } else if (g_str_has_prefix(a, "--agent=")) {
            g.agent = a + strlen("--agent=");
        } else {
            fprintf(stderr,
                    "sporectl: unknown option '%s'\n"
                    "Try 'sporectl --help'.\n",
                    a);
            return EXIT_USAGE;
        }
    }

    if (!g.agent)
        g.agent = DEFAULT_AGENT_SOCKET;
    if (!g.endpoint || !*g.endpoint)
        g.endpoint = DEFAULT_MANAGER_SOCKET;
    if (i >= argc) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    cmd = find_command(argv[i]);
    if (!cmd) {
        fprintf(stderr,
                "sporectl: unknown command '%s'\n"
                "Try 'sporectl help'.\n",
                argv[i]);
        return EXIT_USAGE;
    }
    return cmd->run(cmd, &g, argc - i, argv + i);
}
