/*
 * ctl-command.c: sporectl's command table, its one parser and the help
 * made from it (ctl.h).
 *
 * The parser reads the whole command line in one pass:
 *
 *   sporectl [GLOBAL...] COMMAND [OPTION | GLOBAL | ARG]... [-- ARG...]
 *
 * Before the command only global options are known; after it, each
 * option is looked up in the command's table first, then in the global
 * one.  "--opt VALUE", "--opt=VALUE" and "-o VALUE" are the forms of an
 * option with a value; "-" alone is an argument (standard input); "--"
 * makes every later word an argument.
 *
 * Invariants:
 *  1. A handler runs only with its required options present, its
 *     arguments counted as its CtlArgDefs say and every integer option
 *     and argument within its [min, max] (ctl_check).
 *  2. Everything the user sees of a command's interface — synopsis,
 *     `help CMD`, `CMD --help`, `--help`, the completion — is printed from
 *     the table; nothing repeats it by hand.
 */
#include "ctl.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "spore-config.h"
#include "virt-detect.h"

static int cmd_help(const CtlCall *call);

static const CtlArgDef help_args[] = {
    {"COMMAND", CTL_ARG_OPTIONAL, .complete = CTL_COMPLETE_COMMAND},
    {0},
};

static const CtlCmdDef help_commands[] = {
    {
        .name = "help",
        .summary = "Show help for sporectl or for one command.",
        .help = "The same as 'sporectl COMMAND --help'.\n",
        .args = help_args,
        .run = cmd_help,
    },
    {0},
};

const CtlFamily ctl_families[] = {
    {"Manifests and images (offline)", ctl_manifest_commands},
    {"The site manager (-c)", ctl_site_commands},
    {"Clones on this host (libvirt, libguestfs)", ctl_clone_commands},
    {"The host agent (--agent)", ctl_agent_commands},
    {"Help", help_commands},
    {0},
};

/* the global options, by position in ctl_global_options */
enum {
    GLOBAL_CONNECT,
    GLOBAL_AGENT,
    GLOBAL_JSON,
    GLOBAL_HELP,
    GLOBAL_VERSION,
};

const CtlOptDef ctl_global_options[] = {
    [GLOBAL_CONNECT] =
        {"connect", 'c', CTL_OPT_STRING, "ENDPOINT",
         .complete = CTL_COMPLETE_FILE,
         .help = "the site manager's control socket; again for a standby's, "
                 "tried in order (default: $SPORE_ENDPOINT, comma-separated, "
                 "or " CTL_DEFAULT_MANAGER_SOCKET ")"},
    [GLOBAL_AGENT] = {"agent", 0, CTL_OPT_STRING, "SOCKET",
                      .complete = CTL_COMPLETE_FILE,
                      .help = "the host agent's control socket (default: "
                              "$SPORE_AGENT_SOCKET or " CTL_DEFAULT_AGENT_SOCKET
                              ")"},
    [GLOBAL_JSON] = {"json", 0, CTL_OPT_BOOL, .help = "print results as JSON"},
    [GLOBAL_HELP] = {"help", 'h', CTL_OPT_BOOL,
                     .help = "show this help, or a command's"},
    [GLOBAL_VERSION] = {"version", 'V', CTL_OPT_BOOL,
                        .help = "show the version"},
    {0},
};

/* ---- the table ---------------------------------------------------------- */

const CtlCmdDef *
ctl_command_find(const char *name)
{
    for (const CtlFamily *f = ctl_families; f->title; f++) {
        for (const CtlCmdDef *c = f->commands; c->name; c++) {
            if (g_str_equal(c->name, name))
                return c;
        }
    }
    return NULL;
}

/* the option of @table named @name (long, without "--"), or NULL */
static const CtlOptDef *
opt_by_name(const CtlOptDef *table, const char *name, gsize len)
{
    for (const CtlOptDef *o = table; o && o->name; o++) {
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    }
    return NULL;
}

static const CtlOptDef *
opt_by_short(const CtlOptDef *table, char c)
{
    for (const CtlOptDef *o = table; o && o->name; o++) {
        if (o->short_name && o->short_name == c)
            return o;
    }
    return NULL;
}

/* "--timeout SECONDS" or "-o INDEX", as the synopsis shows an option */
static void
append_option(GString *s, const CtlOptDef *o)
{
    if (!o->required)
        g_string_append_c(s, '[');
    if (o->short_name)
        g_string_append_printf(s, "-%c|--%s", o->short_name, o->name);
    else
        g_string_append_printf(s, "--%s", o->name);
    if (o->type != CTL_OPT_BOOL)
        g_string_append_printf(s, " %s", o->value_name);
    if (!o->required)
        g_string_append_c(s, ']');
}

char *
ctl_synopsis(const CtlCmdDef *cmd)
{
    GString *s = g_string_new(cmd->name);

    /* required options first, as they are usually written */
    for (int pass = 0; pass < 2; pass++) {
        for (const CtlOptDef *o = cmd->opts; o && o->name; o++) {
            if (o->required == (pass == 0)) {
                g_string_append_c(s, ' ');
                append_option(s, o);
            }
        }
    }
    for (const CtlArgDef *a = cmd->args; a && a->name; a++) {
        g_string_append_printf(s,
                               a->kind == CTL_ARG_OPTIONAL ? " [%s]"
                               : a->kind == CTL_ARG_MANY   ? " %s..."
                                                           : " %s",
                               a->name);
    }
    return g_string_free(s, FALSE);
}

/* ---- help --------------------------------------------------------------- */

/* the width of a help line, and where an option's help starts */
#define HELP_LINE_CHARS   79
#define HELP_COLUMN_CHARS 27

/* @text from column HELP_COLUMN_CHARS, wrapped at HELP_LINE_CHARS */
static void
print_wrapped(FILE *out, const char *text)
{
    g_auto(GStrv) words = g_strsplit(text, " ", -1);
    guint col = HELP_COLUMN_CHARS;

    for (guint i = 0; words[i]; i++) {
        gsize n = strlen(words[i]);

        if (i > 0 && col + 1 + n > HELP_LINE_CHARS) {
            fprintf(out, "\n%*s", HELP_COLUMN_CHARS, "");
            col = HELP_COLUMN_CHARS;
        } else if (i > 0) {
            fputc(' ', out);
            col++;
        }
        fputs(words[i], out);
        col += (guint)n;
    }
    fputc('\n', out);
}

static void
print_option_list(FILE *out, const CtlOptDef *opts)
{
    for (const CtlOptDef *o = opts; o && o->name; o++) {
        bool value = o->type != CTL_OPT_BOOL;
        g_autofree char *left = g_strdup_printf(
            "%s%c%s--%s%s%s", o->short_name ? "-" : " ",
            o->short_name ? o->short_name : ' ', o->short_name ? ", " : "  ",
            o->name, value ? " " : "", value ? o->value_name : "");

        if (strlen(left) + 2 >= HELP_COLUMN_CHARS)
            fprintf(out, "  %s\n%*s", left, HELP_COLUMN_CHARS, "");
        else
            fprintf(out, "  %-*s", HELP_COLUMN_CHARS - 2, left);
        print_wrapped(out, o->help);
    }
}

static void
print_command_help(FILE *out, const CtlCmdDef *cmd)
{
    g_autofree char *synopsis = ctl_synopsis(cmd);

    fprintf(out, "Usage: sporectl %s\n\n%s\n", synopsis, cmd->summary);
    if (cmd->opts && cmd->opts->name) {
        fprintf(out, "\nOptions:\n");
        print_option_list(out, cmd->opts);
    }
    if (cmd->help && *cmd->help)
        fprintf(out, "\n%s", cmd->help);
}

static void
print_usage(FILE *out)
{
    fprintf(out,
            "Usage: sporectl [OPTION...] COMMAND [ARG...]\n"
            "\n"
            "Administer a spore site: validate service definition manifests\n"
            "and talk to the site manager and the host agent.  Options may\n"
            "come anywhere on the line; '--' ends them.\n"
            "\n"
            "Options:\n");
    print_option_list(out, ctl_global_options);
    fprintf(out, "\nCommands:\n");
    for (const CtlFamily *f = ctl_families; f->title; f++) {
        fprintf(out, " %s:\n", f->title);
        for (const CtlCmdDef *c = f->commands; c->name; c++)
            fprintf(out, "  %-20s %s\n", c->name, c->summary);
    }
    fprintf(out,
            "\nRun 'sporectl help COMMAND' for a command's options.\n"
            "Exit status: 0 success, 1 failure, 2 usage error, 3 a --wait\n"
            "that timed out.\n");
}

static int
cmd_help(const CtlCall *call)
{
    const CtlCmdDef *target;

    if (ctl_n_args(call) == 0) {
        print_usage(stdout);
        return CTL_EXIT_OK;
    }
    target = ctl_command_find(ctl_arg(call, 0));
    if (!target)
        return ctl_usage_error(call, "unknown command '%s'", ctl_arg(call, 0));
    print_command_help(stdout, target);
    return CTL_EXIT_OK;
}

/* ---- accessors ---------------------------------------------------------- */

static const CtlValue *
value_of(const CtlCall *call, const char *name, CtlOptType type)
{
    const CtlOptDef *o = opt_by_name(call->cmd->opts, name, strlen(name));

    if (!o || o->type != type)
        g_error("sporectl %s: no %s option '--%s' in the table",
                call->cmd->name, type == CTL_OPT_BOOL ? "flag" : "value", name);
    return &call->opts[o - call->cmd->opts];
}

bool
ctl_flag(const CtlCall *call, const char *name)
{
    return value_of(call, name, CTL_OPT_BOOL)->set;
}

bool
ctl_has(const CtlCall *call, const char *name)
{
    const CtlOptDef *o = opt_by_name(call->cmd->opts, name, strlen(name));

    if (!o)
        g_error("sporectl %s: no option '--%s' in the table", call->cmd->name,
                name);
    return call->opts[o - call->cmd->opts].set;
}

const char *
ctl_string(const CtlCall *call, const char *name, const char *fallback)
{
    const CtlValue *v = value_of(call, name, CTL_OPT_STRING);

    return v->set ? v->text : fallback;
}

guint64
ctl_int(const CtlCall *call, const char *name, guint64 fallback)
{
    const CtlValue *v = value_of(call, name, CTL_OPT_INT);

    return v->set ? v->number : fallback;
}

const char *
ctl_arg(const CtlCall *call, guint i)
{
    return i < call->args->len ? call->args->pdata[i] : NULL;
}

guint
ctl_n_args(const CtlCall *call)
{
    return call->args->len;
}

guint64
ctl_arg_int(const CtlCall *call, guint i)
{
    g_assert(i < call->arg_numbers->len);
    return g_array_index(call->arg_numbers, guint64, i);
}

int
ctl_usage_error(const CtlCall *call, const char *format, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, format);
    msg = g_strdup_vprintf(format, ap);
    va_end(ap);
    ctl_progress_end();
    if (call && call->cmd)
        fprintf(stderr, "sporectl %s: %s\nTry 'sporectl help %s'.\n",
                call->cmd->name, msg, call->cmd->name);
    else
        fprintf(stderr, "sporectl: %s\nTry 'sporectl --help'.\n", msg);
    return CTL_EXIT_USAGE;
}

/* ---- the parser --------------------------------------------------------- */

/* the state of one parse: the globals' values beside the command's */
typedef struct {
    CtlCall call;
    CtlValue globals[CTL_OPTS_MAX];
    GPtrArray *connects; /* every -c given, in order (borrowed from argv) */
} Parse;

/* @text as an integer of [@min, @max]: false when it is not one */
static bool
parse_uint(const char *text, guint64 min, guint64 max, guint64 *ret)
{
    return g_ascii_string_to_unsigned(text, 10, min, max, ret, NULL);
}

/*
 * The option word @a (argv[*i]): find it, take its value (inline or the
 * next word, moving *i), store it.  Returns false after a usage error.
 */
static bool
parse_option(Parse *p, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const CtlOptDef *cmd_opts = p->call.cmd ? p->call.cmd->opts : NULL;
    const CtlOptDef *o = NULL;
    const char *inline_value = NULL;
    CtlValue *v;

    bool global = false;

    if (a[1] == '-') {
        const char *eq = strchr(a + 2, '=');
        gsize len = eq ? (gsize)(eq - a - 2) : strlen(a + 2);

        o = opt_by_name(cmd_opts, a + 2, len);
        if (!o) {
            o = opt_by_name(ctl_global_options, a + 2, len);
            global = true;
        }
        inline_value = eq ? eq + 1 : NULL;
    } else if (a[2] == '\0') {
        o = opt_by_short(cmd_opts, a[1]);
        if (!o) {
            o = opt_by_short(ctl_global_options, a[1]);
            global = true;
        }
    }
    if (!o) {
        ctl_usage_error(&p->call, "unknown option '%s'", a);
        return false;
    }
    v = global ? &p->globals[o - ctl_global_options]
               : &p->call.opts[o - cmd_opts];
    if (o->type == CTL_OPT_BOOL) {
        if (inline_value) {
            ctl_usage_error(&p->call, "option '--%s' takes no value", o->name);
            return false;
        }
        v->set = true;
        return true;
    }
    if (!inline_value) {
        if (*i + 1 >= argc) {
            ctl_usage_error(&p->call, "option '%s' needs its value, %s", a,
                            o->value_name);
            return false;
        }
        inline_value = argv[++*i];
    }
    if (o->type == CTL_OPT_INT &&
        !parse_uint(inline_value, o->min, o->max, &v->number)) {
        ctl_usage_error(&p->call,
                        "--%s '%s' is not an integer from %" G_GUINT64_FORMAT
                        " to %" G_GUINT64_FORMAT,
                        o->name, inline_value, o->min, o->max);
        return false;
    }
    v->set = true;
    v->text = inline_value;
    if (global && o == &ctl_global_options[GLOBAL_CONNECT])
        g_ptr_array_add(p->connects, (gpointer)inline_value);
    return true;
}

/* invariant 1: the required options, the arguments' count and ranges */
static bool
ctl_check(CtlCall *call)
{
    const CtlCmdDef *cmd = call->cmd;
    guint k = 0;

    for (const CtlOptDef *o = cmd->opts; o && o->name; o++) {
        if (o->required && !call->opts[o - cmd->opts].set) {
            ctl_usage_error(call, "option '--%s %s' is required", o->name,
                            o->value_name);
            return false;
        }
    }
    for (const CtlArgDef *a = cmd->args; a && a->name; a++) {
        guint until = a->kind == CTL_ARG_MANY ? call->args->len : k + 1;

        if (k >= call->args->len) {
            if (a->kind == CTL_ARG_OPTIONAL)
                break;
            ctl_usage_error(call, "missing %s", a->name);
            return false;
        }
        for (; k < until && k < call->args->len; k++) {
            const char *text = call->args->pdata[k];
            guint64 n = 0;

            if (a->type == CTL_OPT_INT &&
                !parse_uint(text, a->min, a->max, &n)) {
                ctl_usage_error(
                    call,
                    "%s '%s' is not an integer from "
                    "%" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT "%s%s%s",
                    a->name, text, a->min, a->max, a->limit_note ? " (" : "",
                    a->limit_note ? a->limit_note : "",
                    a->limit_note ? ")" : "");
                return false;
            }
            g_array_append_val(call->arg_numbers, n);
        }
    }
    if (k < call->args->len) {
        ctl_usage_error(call, "unexpected argument '%s'",
                        (const char *)call->args->pdata[k]);
        return false;
    }
    return true;
}

/* the globals as found, else from the environment, else the defaults */
static void
resolve_globals(Parse *p)
{
    CtlGlobals *g = &p->call.g;

    g->json = p->globals[GLOBAL_JSON].set;
    if (p->connects->len > 0) {
        g_ptr_array_add(p->connects, NULL);
        g->endpoints = g_strdupv((char **)p->connects->pdata);
        g_ptr_array_set_size(p->connects, p->connects->len - 1);
    } else {
        g->endpoints = g_strsplit(
            g_getenv("SPORE_ENDPOINT") ? g_getenv("SPORE_ENDPOINT") : "", ",",
            -1);
    }
    if (!g->endpoints[0] || !*g->endpoints[0]) {
        g_strfreev(g->endpoints);
        g->endpoints = g_strsplit(CTL_DEFAULT_MANAGER_SOCKET, ",", -1);
    }
    g->endpoint = g->endpoints[0];
    g->agent = p->globals[GLOBAL_AGENT].set ? p->globals[GLOBAL_AGENT].text
                                            : g_getenv("SPORE_AGENT_SOCKET");
    if (!g->agent || !*g->agent)
        g->agent = CTL_DEFAULT_AGENT_SOCKET;
}

/* Parse @argv into @p; returns -1 to run the command, else an exit code. */
static int
parse_line(Parse *p, int argc, char **argv)
{
    bool options = true;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (options && g_str_equal(a, "--")) {
            options = false;
        } else if (options && a[0] == '-' && a[1] != '\0') {
            if (!parse_option(p, argc, argv, &i))
                return CTL_EXIT_USAGE;
        } else if (!p->call.cmd) {
            p->call.cmd = ctl_command_find(a);
            if (!p->call.cmd)
                return ctl_usage_error(NULL, "unknown command '%s'", a);
        } else {
            g_ptr_array_add(p->call.args, (gpointer)a);
        }
    }
    if (p->globals[GLOBAL_VERSION].set) {
        printf("sporectl %s\n", SPORE_VERSION);
        return CTL_EXIT_OK;
    }
    if (p->globals[GLOBAL_HELP].set) {
        if (p->call.cmd)
            print_command_help(stdout, p->call.cmd);
        else
            print_usage(stdout);
        return CTL_EXIT_OK;
    }
    if (!p->call.cmd) {
        print_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    resolve_globals(p);
    return ctl_check(&p->call) ? -1 : CTL_EXIT_USAGE;
}

int
ctl_main(int argc, char **argv)
{
    Parse p = {0};
    int status;

    if (argc >= 2 && g_str_equal(argv[1], "__complete"))
        return ctl_complete(argc - 2, argv + 2);
    /* SPORE_VIRT_TYPE=kvm|qemu answers the KVM probe (sporectl(1)) */
    if (g_strcmp0(g_getenv("SPORE_VIRT_TYPE"), "kvm") == 0 ||
        g_strcmp0(g_getenv("SPORE_VIRT_TYPE"), "qemu") == 0)
        spore_kvm_set(g_str_equal(g_getenv("SPORE_VIRT_TYPE"), "kvm"));
    if (argc == 2 && g_str_equal(argv[1], "__table"))
        return ctl_dump_table();
    p.call.args = g_ptr_array_new();
    p.call.arg_numbers = g_array_new(FALSE, TRUE, sizeof(guint64));
    p.connects = g_ptr_array_new();
    status = parse_line(&p, argc, argv);
    if (status < 0)
        status = p.call.cmd->run(&p.call);
    ctl_progress_end();
    g_ptr_array_free(p.call.args, TRUE);
    g_array_free(p.call.arg_numbers, TRUE);
    g_ptr_array_free(p.connects, TRUE);
    g_strfreev(p.call.g.endpoints);
    return status;
}
