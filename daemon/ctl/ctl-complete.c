/*
 * ctl-complete.c: the command table as the bash completion and the tests
 * see it (ctl.h) — `sporectl __complete CWORD WORD...` answers what may
 * complete a word, `sporectl __table` lists the table.  Both are hidden:
 * not in --help, not for people.
 *
 * The completion reads the words as the parser would (ctl-command.c): the
 * command is the first word that is not an option or an option's value;
 * "--" ends the options.  It never prints to standard error and always
 * exits 0: a site manager that cannot be reached gives no names.
 */
#include "ctl.h"

#include <string.h>

/* the option @word names in @cmd's table or the global one, or NULL;
 * *ret_inline: the value after "=", if any */
static const CtlOptDef *
find_option(const CtlCmdDef *cmd, const char *word, const char **ret_inline)
{
    const CtlOptDef *tables[] = {cmd ? cmd->opts : NULL, ctl_global_options};

    *ret_inline = NULL;
    for (guint t = 0; t < G_N_ELEMENTS(tables); t++) {
        for (const CtlOptDef *o = tables[t]; o && o->name; o++) {
            gsize n = strlen(o->name);

            if (word[1] == '-' && strncmp(word + 2, o->name, n) == 0 &&
                (word[2 + n] == '\0' || word[2 + n] == '=')) {
                *ret_inline = word[2 + n] == '=' ? word + 3 + n : NULL;
                return o;
            }
            if (word[1] != '-' && o->short_name == word[1] && word[2] == '\0')
                return o;
        }
    }
    return NULL;
}

static void
print_choices(const char *value_name)
{
    g_auto(GStrv) choices = g_strsplit(value_name, "|", -1);

    printf("words\n");
    for (guint i = 0; choices[i]; i++)
        printf("%s\n", choices[i]);
}

static void
print_options(const CtlOptDef *opts)
{
    for (const CtlOptDef *o = opts; o && o->name; o++) {
        printf("--%s\n", o->name);
        if (o->short_name)
            printf("-%c\n", o->short_name);
    }
}

/* what completes a value or an argument of kind @kind */
static void
print_kind(CtlComplete kind, const char *value_name, const char *endpoint)
{
    g_autoptr(GPtrArray) names = NULL;

    switch (kind) {
    case CTL_COMPLETE_FILE:
        printf("files\n");
        return;
    case CTL_COMPLETE_DIR:
        printf("dirs\n");
        return;
    case CTL_COMPLETE_CHOICES:
        print_choices(value_name);
        return;
    case CTL_COMPLETE_COMMAND:
        printf("words\n");
        for (const CtlFamily *f = ctl_families; f->title; f++) {
            for (const CtlCmdDef *c = f->commands; c->name; c++)
                printf("%s\n", c->name);
        }
        return;
    case CTL_COMPLETE_SERVICE:
    case CTL_COMPLETE_CLONE:
    case CTL_COMPLETE_HOST:
    case CTL_COMPLETE_IMAGE:
        printf("words\n");
        names = ctl_manager_names(endpoint, kind);
        for (guint i = 0; names && i < names->len; i++)
            printf("%s\n", (char *)names->pdata[i]);
        return;
    case CTL_COMPLETE_NONE:
        printf("words\n");
        return;
    }
}

/* the CtlArgDef of the @k-th argument of @cmd, or NULL */
static const CtlArgDef *
arg_at(const CtlCmdDef *cmd, guint k)
{
    const CtlArgDef *a = cmd->args;

    for (guint i = 0; a && a->name; i++, a++) {
        if (i == k || a->kind == CTL_ARG_MANY)
            return a;
    }
    return NULL;
}

/* the words before the current one, read as the parser reads them */
typedef struct {
    const CtlCmdDef *cmd;
    const CtlOptDef *pending; /* the option whose value comes next */
    const char *endpoint;
    guint n_args;
    bool options_ended;
} Scan;

static void
scan_words(Scan *s, char **words, int cword)
{
    for (int i = 1; i < cword; i++) {
        const char *w = words[i];
        const CtlOptDef *o;
        const char *inline_value;

        if (s->pending) {
            if (g_str_equal(s->pending->name, "connect"))
                s->endpoint = w;
            s->pending = NULL;
        } else if (!s->options_ended && g_str_equal(w, "--")) {
            s->options_ended = true;
        } else if (!s->options_ended && w[0] == '-' && w[1] != '\0') {
            o = find_option(s->cmd, w, &inline_value);
            if (o && o->type != CTL_OPT_BOOL && !inline_value)
                s->pending = o;
            if (o && inline_value && g_str_equal(o->name, "connect"))
                s->endpoint = inline_value;
        } else if (!s->cmd) {
            s->cmd = ctl_command_find(w);
            if (!s->cmd)
                return;
        } else {
            s->n_args++;
        }
    }
}

int
ctl_complete(int argc, char **argv)
{
    Scan s = {0};
    g_autofree char *first = NULL;
    guint64 cword;
    char **words = argv + 1;
    const char *cur;
    const CtlArgDef *a;

    if (argc < 2 || !g_ascii_string_to_unsigned(
                        argv[0], 10, 1, (guint64)argc - 1, &cword, NULL))
        return CTL_EXIT_OK;
    cur = (int)cword < argc - 1 ? words[cword] : "";
    scan_words(&s, words, (int)cword);
    if (!s.endpoint || !*s.endpoint)
        s.endpoint = first = g_strdup(g_getenv("SPORE_ENDPOINT"));
    if (first && strchr(first, ','))
        *strchr(first, ',') = '\0'; /* a list: its first */
    if (!s.endpoint || !*s.endpoint)
        s.endpoint = CTL_DEFAULT_MANAGER_SOCKET;
    if (s.pending) {
        print_kind(s.pending->complete, s.pending->value_name, s.endpoint);
    } else if (!s.options_ended && cur[0] == '-') {
        const char *inline_value;
        const CtlOptDef *o =
            strchr(cur, '=') ? find_option(s.cmd, cur, &inline_value) : NULL;

        if (o && o->type != CTL_OPT_BOOL) {
            print_kind(o->complete, o->value_name, s.endpoint);
            return CTL_EXIT_OK;
        }
        printf("words\n");
        if (s.cmd)
            print_options(s.cmd->opts);
        print_options(ctl_global_options);
    } else if (!s.cmd) {
        print_kind(CTL_COMPLETE_COMMAND, NULL, s.endpoint);
    } else if ((a = arg_at(s.cmd, s.n_args))) {
        print_kind(a->complete, NULL, s.endpoint);
    } else {
        printf("words\n");
    }
    return CTL_EXIT_OK;
}

static void
dump_options(const char *prefix, const CtlOptDef *opts)
{
    for (const CtlOptDef *o = opts; o && o->name; o++) {
        printf("%s --%s", prefix, o->name);
        if (o->short_name)
            printf(" -%c", o->short_name);
        putchar('\n');
    }
}

int
ctl_dump_table(void)
{
    dump_options("global", ctl_global_options);
    for (const CtlFamily *f = ctl_families; f->title; f++) {
        for (const CtlCmdDef *c = f->commands; c->name; c++) {
            g_autofree char *synopsis = ctl_synopsis(c);
            g_autofree char *prefix = g_strconcat("option ", c->name, NULL);

            printf("command %s\t%s\n", c->name, synopsis);
            dump_options(prefix, c->opts);
        }
    }
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}
