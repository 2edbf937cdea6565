/*
 * ctl.h: sporectl, the operator's tool — the one header of daemon/ctl/.
 *
 * A command is a row of a table (CtlCmdDef, after virsh's vshCmdDef): its
 * name, summary, help, options (CtlOptDef) and positional arguments
 * (CtlArgDef), and a handler.  One generic parser (ctl_main) reads the
 * command line against that table — options before, between and after the
 * arguments, global options anywhere, "--" ends the options — checks
 * required options, argument counts and integer ranges, and hands the
 * handler a CtlCall.  The synopsis, `help CMD`, `CMD --help`, the man
 * page's synopsis test and the bash completion all come from the same
 * table.
 *
 * The commands live by family, as virsh's do: ctl-manifest.c (offline
 * manifest and image tools), ctl-clone.c (clones on this host), ctl-site.c
 * (the site manager), ctl-agent.c (the host agent); ctl-output.c prints
 * tables, JSON and the progress line; ctl-call.c talks to the daemons.
 *
 * Not thread-safe: sporectl is one thread.
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "control.h"
#include "manifest.h"

/* exit codes (sporectl(1) EXIT STATUS) */
#define CTL_EXIT_OK                0
#define CTL_EXIT_FAILURE           1
#define CTL_EXIT_USAGE             2
#define CTL_EXIT_TIMEOUT           3 /* a --wait gave up after its --timeout */

#define CTL_DEFAULT_AGENT_SOCKET   "/run/spore/agent/control.sock"
#define CTL_DEFAULT_MANAGER_SOCKET "/run/spore/spored/control.sock"

/* the most options a command (or the global table) may declare */
#define CTL_OPTS_MAX 16u

typedef enum {
    CTL_OPT_BOOL,   /* a flag */
    CTL_OPT_STRING, /* takes a value */
    CTL_OPT_INT,    /* takes an unsigned integer within [min, max] */
} CtlOptType;

/* what the bash completion offers for a value or an argument */
typedef enum {
    CTL_COMPLETE_NONE,
    CTL_COMPLETE_FILE,
    CTL_COMPLETE_DIR,
    CTL_COMPLETE_CHOICES, /* the value name, "raw|qcow2", split at '|' */
    CTL_COMPLETE_COMMAND,
    CTL_COMPLETE_SERVICE, /* names asked of the site manager */
    CTL_COMPLETE_CLONE,
    CTL_COMPLETE_HOST,
    CTL_COMPLETE_IMAGE,
} CtlComplete;

/* One option of a command, or a global option. */
typedef struct {
    const char *name;       /* long name, without "--"; NULL ends a table */
    char short_name;        /* 0: none */
    CtlOptType type;        /* */
    const char *value_name; /* the value in the synopsis: "SECONDS" */
    bool required;          /* shown without brackets, checked */
    guint64 min, max;       /* CTL_OPT_INT */
    CtlComplete complete;   /* */
    const char *help;       /* one line */
} CtlOptDef;

typedef enum {
    CTL_ARG_REQUIRED,
    CTL_ARG_OPTIONAL, /* only after the required ones */
    CTL_ARG_MANY,     /* one or more; the last argument only */
} CtlArgKind;

/* One positional argument of a command. */
typedef struct {
    const char *name; /* "FILE"; NULL ends a table */
    CtlArgKind kind;
    CtlOptType type;        /* CTL_OPT_STRING or CTL_OPT_INT */
    guint64 min, max;       /* CTL_OPT_INT */
    const char *limit_note; /* CTL_OPT_INT: what max is, for the message */
    CtlComplete complete;
} CtlArgDef;

/* the global options, parsed */
typedef struct {
    bool json;
    const char *endpoint; /* the site manager's control socket: the first
                           * of endpoints */
    char **endpoints;     /* every -c (or $SPORE_ENDPOINT's comma-separated
                           * list): an active manager and its standbys,
                           * tried in order (ctl_manager_call) */
    const char *agent;    /* the host agent's control socket */
} CtlGlobals;

/* One value the parser found (opaque to handlers: use the accessors). */
typedef struct {
    bool set;
    const char *text; /* borrowed from argv */
    guint64 number;   /* CTL_OPT_INT */
} CtlValue;

typedef struct CtlCmdDef CtlCmdDef;

/* A command line, parsed against its command's table. */
typedef struct {
    const CtlCmdDef *cmd;
    CtlGlobals g;
    CtlValue opts[CTL_OPTS_MAX]; /* by position in cmd->opts */
    GPtrArray *args;             /* of const char *, borrowed from argv */
    GArray *arg_numbers;         /* guint64 per arg; CTL_OPT_INT args only */
} CtlCall;

typedef int (*CtlHandler)(const CtlCall *call);

struct CtlCmdDef {
    const char *name; /* NULL ends a table */
    const char *summary;
    const char *help; /* paragraphs after the options; may be "" */
    const CtlOptDef *opts;
    const CtlArgDef *args;
    CtlHandler run;
};

/* A family of commands, a section of `sporectl --help`. */
typedef struct {
    const char *title;
    const CtlCmdDef *commands;
} CtlFamily;

/* the families (each defined in its file) */
extern const CtlCmdDef ctl_manifest_commands[];
extern const CtlCmdDef ctl_site_commands[];
extern const CtlCmdDef ctl_clone_commands[];
extern const CtlCmdDef ctl_agent_commands[];

/* ---- ctl-command.c: the table, the parser, help ------------------------ */

/*
 * ctl_main: run sporectl with @argv; returns the exit code.  Usage errors
 * are printed here (exit CTL_EXIT_USAGE); each handler prints its own.
 */
int ctl_main(int argc, char **argv);

/* ctl_command_find: the command named @name, or NULL */
const CtlCmdDef *ctl_command_find(const char *name);

/* ctl_synopsis: "submit [--wait] [--timeout SECONDS] FILE", owned by the
 * caller */
char *ctl_synopsis(const CtlCmdDef *cmd);

/* accessors of a CtlCall; @name must be an option of the command's table
 * (anything else is a programming error and aborts) */
bool ctl_flag(const CtlCall *call, const char *name);
bool ctl_has(const CtlCall *call, const char *name);
const char *ctl_string(const CtlCall *call, const char *name,
                       const char *fallback);
guint64 ctl_int(const CtlCall *call, const char *name, guint64 fallback);
/* the @i-th positional argument (NULL past the end), their number, and
 * the value of an integer argument */
const char *ctl_arg(const CtlCall *call, guint i);
guint ctl_n_args(const CtlCall *call);
guint64 ctl_arg_int(const CtlCall *call, guint i);

/* ctl_usage_error: print "sporectl CMD: MESSAGE" and the hint to stderr;
 * returns CTL_EXIT_USAGE */
int ctl_usage_error(const CtlCall *call, const char *format, ...)
    G_GNUC_PRINTF(2, 3);

/* ---- ctl-complete.c: the bash completion's helper ---------------------- */

/*
 * ctl_complete: `sporectl __complete CWORD WORD...`: print what may
 * complete word CWORD of WORDS (WORD 0 is the program): first a line
 * "words", "files" or "dirs", then the candidate words, one a line.  Names
 * of services, clones, hosts and images are asked of the site manager;
 * when it cannot be reached there are none, silently.  Returns 0.
 */
int ctl_complete(int argc, char **argv);

/* ctl_dump_table: `sporectl __table`: the command table for tests, one
 * "command NAME\tSYNOPSIS", "option NAME --LONG [-S]" or
 * "global --LONG [-S]" a line */
int ctl_dump_table(void);

/* the families in order, ended by a zeroed entry; the global options */
extern const CtlFamily ctl_families[];
extern const CtlOptDef ctl_global_options[];

/* ---- ctl-output.c: what goes to the terminal ------------------------- */

/* a human size, "2.0 GiB", owned by the caller */
char *ctl_human_bytes(guint64 n);
/* @text with control characters made spaces, in place; returns @text */
char *ctl_one_line(char *text);
/* @t, a Unix time, as local "YYYY-MM-DD HH:MM:SS"; owned by the caller */
char *ctl_local_time(double t);
/* "12s ago", "5m ago", ...; owned by the caller */
char *ctl_format_ago(double seconds);
/* @obj pretty-printed on standard output */
void ctl_print_json(JsonObject *obj);
/* "FILE:LINE: message" (no line: "FILE: message") on standard error */
void ctl_print_problem_at(const char *file, guint line, const char *message);
/* every problem of a manifest that did not parse (or @err when none) */
void ctl_print_manifest_problems(const char *file, GPtrArray *problems,
                                 const GError *err);

/* A table printed virsh-style: a header line, a dashed line, the rows. */
typedef struct {
    guint columns;
    GPtrArray *cells; /* of char *, row after row, the header first */
} CtlTable;

/* ctl_table_start: begin @t with the NULL-terminated @header */
void ctl_table_start(CtlTable *t, const char *const *header);
/* ctl_table_add: the next cell, rows filled left to right, made one line */
void ctl_table_add(CtlTable *t, const char *format, ...) G_GNUC_PRINTF(2, 3);
/* ctl_table_finish: print @t with aligned columns and free its cells */
void ctl_table_finish(CtlTable *t);

/*
 * The progress line of the --wait options, on standard error: redrawn in
 * place on a terminal, else a line each time it changes.  ctl_progress_end
 * ends a line left pending, before anything else goes to standard error.
 */
void ctl_progress_show(const char *text);
void ctl_progress_end(void);

/* ---- ctl-call.c: the daemons' control sockets ------------------------ */

/*
 * ctl_socket_call: send @request (a finished builder) to the daemon at
 * @path, "the site manager" or "the host agent" as @what says, and return
 * its reply, a new reference, ok or not; NULL after printing why it could
 * not be reached (unless @quiet).
 */
JsonObject *ctl_socket_call(const char *path, const char *what,
                            JsonBuilder *request, bool quiet);

/* ctl_manager_request: begin {"cmd": @cmd, ...}; the caller adds members */
JsonBuilder *ctl_manager_request(const char *cmd);
void ctl_request_add_string(JsonBuilder *b, const char *name,
                            const char *value);
void ctl_request_add_int(JsonBuilder *b, const char *name, gint64 value);

/*
 * ctl_manager_call: end @request, send it to the site manager, and return
 * its reply (a new reference) when it is ok; with @g->json it is printed
 * first.  Otherwise NULL after printing the manager's error as
 * "sporectl @name: ...", and the problems it found in the manifest @file
 * (NULL: none sent).
 */
JsonObject *ctl_manager_call(const CtlGlobals *g, const char *name,
                             JsonBuilder *request, const char *file);

/*
 * ctl_manager_names: the names the site manager lists for @kind
 * (CTL_COMPLETE_SERVICE ... CTL_COMPLETE_IMAGE), a new array of strings,
 * or NULL when it cannot be reached or refuses (nothing printed).
 */
/*
 * ctl_manager_call_any: @request (ended) sent to the first of @g's
 * endpoints that can be reached (a standby's socket cannot: the next is
 * tried); its reply, or NULL, said on stderr unless @quiet.  Once sent, a
 * request is not sent again elsewhere.
 */
JsonObject *ctl_manager_call_any(const CtlGlobals *g, JsonBuilder *request,
                                 bool quiet);
GPtrArray *ctl_manager_names(const char *endpoint, CtlComplete kind);
