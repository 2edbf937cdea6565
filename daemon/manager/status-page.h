/*
 * status-page.h: spored's read-only HTML status page, rendered from rows
 * (status-page.c, a pure function; manager-status.c gathers the rows).
 *
 * Every text of a row may come from an untrusted manifest or agent
 * (service names, clone states and reasons, event messages): the page
 * escapes all of them, cuts each to STATUS_TEXT_MAX_CHARS and shows at
 * most STATUS_*_ROWS_MAX rows of each table, saying so when it cut.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

/* rows of each table at most; the page says how many it left out */
#define STATUS_SERVICES_ROWS_MAX 100u
#define STATUS_CLONES_ROWS_MAX   300u
#define STATUS_HOSTS_ROWS_MAX    100u
#define STATUS_EVENTS_ROWS_MAX   50u
/* images listed per host at most */
#define STATUS_HOST_IMAGES_MAX 16u
/* characters of one text at most (longer ones end with an ellipsis) */
#define STATUS_TEXT_MAX_CHARS 240u
/* the page's size at most, whatever the rows (a test renders the worst
 * case: every table at its cap, every text at its cut and escaped) */
#define STATUS_PAGE_MAX_BYTES (8u * 1024 * 1024)
/* the page reloads itself this often (<meta http-equiv="refresh">) */
#define STATUS_REFRESH_SECONDS 5u

/* Rows borrow their strings: they belong to the caller and must live
 * until status_page_render() returns.  A NULL string shows as "-". */
typedef struct {
    const char *name;
    gint64 generation;
    gint64 desired;
    gint64 placed;  /* desired clones placed on a host */
    gint64 running; /* of the current generation; -1: not known yet */
    bool deleting;
    /* its last rollout; rollout_state NULL: it never had one */
    const char *rollout_state; /* "rolling", "done", "failed" */
    gint64 rollout_from, rollout_to;
    gint64 updated, updated_running, old, old_running;
    const char *rollout_reason; /* why it failed, or NULL */
} StatusService;

typedef struct {
    const char *name;
    const char *service;
    const char *host; /* NULL: not placed */
    const char *state;
    gint64 generation;
    const char *reason; /* the host's last error for it, or NULL */
} StatusClone;

typedef struct {
    const char *image; /* its name (or id) */
    double cached;     /* fraction of its chunks the host holds, 0..1 */
} StatusHostImage;

typedef struct {
    const char *name;
    const char *state; /* pending, down, up, lost */
    gint64 clones;     /* desired clones placed on it */
    double last_seen;  /* seconds ago; < 0: never */
    const StatusHostImage *images;
    guint n_images;
} StatusHost;

typedef struct {
    double time; /* seconds since the epoch */
    const char *kind;
    const char *service; /* may be NULL */
    const char *host;    /* may be NULL */
    const char *message;
} StatusEvent;

typedef struct {
    double now;        /* seconds since the epoch: "as of" */
    const char *site;  /* a name for the title, or NULL */
    const char *error; /* the database failed: why (shown), else NULL */
    const StatusService *services;
    guint n_services;
    const StatusClone *clones;
    guint n_clones;
    const StatusHost *hosts;
    guint n_hosts;
    const StatusEvent *events; /* oldest first; shown newest first */
    guint n_events;
} StatusPage;

/*
 * status_page_render: append the HTML5 document of @page to @out: a
 * summary, then the services, clones, hosts and the newest events, in
 * tables.  No script, no form, no external resource; it reloads itself
 * every STATUS_REFRESH_SECONDS.  Pure and thread-safe.
 */
void status_page_render(const StatusPage *page, GString *out);

/*
 * status_html_append: append @text to @out for HTML text or a quoted
 * attribute value: invalid UTF-8 repaired, control characters replaced
 * by U+FFFD, cut to @max_chars characters (with "…"), and & < > " '
 * escaped.  NULL appends "-".
 */
void status_html_append(GString *out, const char *text, gsize max_chars);
