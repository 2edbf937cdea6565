/*
 * sporectl.c: the operator's command-line tool.
 *
 * virsh-style: `sporectl [GLOBAL-OPTIONS] COMMAND [ARGS]`.  Each command is
 * a row of the commands[] table with its own synopsis, help text and
 * handler; `sporectl help COMMAND` and `sporectl COMMAND --help` print the
 * same text.  Offline commands (validate, format) need no daemon.
 *
 * Exit codes: 0 success, 1 failure (including an invalid manifest), 2 usage.
 * Problems go to stderr as "FILE:LINE: message"; results go to stdout.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "manifest.h"
#include "spore-config.h"
#include "spore-error.h"

#define EXIT_USAGE 2

typedef struct {
    bool json;
    const char *endpoint;
} Globals;

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

/*
 * Parse a command's own options: only --help is common to all; the rest are
 * listed in @flags (NULL-terminated long names, each stored in @values).
 * Returns the index of the first operand, or -1 after a usage error was
 * printed, or -2 when help was printed.
 */
static int
parse_command_flags(const Command *cmd, int argc, char **argv,
                    const char *const *flags, bool *values)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool known = false;

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
        for (gsize f = 0; flags && flags[f]; f++) {
            if (g_str_has_prefix(a, "--") && g_str_equal(a + 2, flags[f])) {
                values[f] = true;
                known = true;
            }
        }
        if (!known) {
            fprintf(stderr,
                    "sporectl %s: unknown option '%s'\n"
                    "Try 'sporectl help %s'.\n",
                    cmd->name, a, cmd->name);
            return -1;
        }
    }
    return i;
}

static void
print_problem(const char *file, const ManifestProblem *p)
{
    if (p->line)
        fprintf(stderr, "%s:%u: %s\n", file, p->line, p->message);
    else
        fprintf(stderr, "%s: %s\n", file, p->message);
}

/* ---- validate ---------------------------------------------------------- */

static int
cmd_validate(const Command *cmd, const Globals *g, int argc, char **argv)
{
    int first = parse_command_flags(cmd, argc, argv, NULL, NULL);
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
    int first = parse_command_flags(cmd, argc, argv, NULL, NULL);
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
            "  -c, --connect=ENDPOINT  the site manager's control endpoint\n"
            "                          (default: $SPORE_ENDPOINT)\n"
            "      --json              print results as JSON\n"
            "  -h, --help              show this help\n"
            "  -V, --version           show the version\n"
            "\n"
            "Commands:\n");
    for (const Command *c = commands; c->name; c++)
        fprintf(out, "  %-12s %s\n", c->name, c->summary);
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
    Globals g = {.endpoint = g_getenv("SPORE_ENDPOINT")};
    const Command *cmd;
    int i;

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
        } else {
            fprintf(stderr,
                    "sporectl: unknown option '%s'\n"
                    "Try 'sporectl --help'.\n",
                    a);
            return EXIT_USAGE;
        }
    }

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
