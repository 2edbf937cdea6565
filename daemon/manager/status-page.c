/*
 * status-page.c: the HTML of spored's status page (status-page.h), a pure
 * function of its rows.
 *
 * Invariants:
 *   1. Every text that comes from a row goes through status_html_append
 *      (escaped, cut, valid UTF-8): nothing of a manifest or an agent
 *      reaches the page as markup, in text or in an attribute.  Class
 *      names come from state_class(), a fixed list, never from a row.
 *   2. Each table has at most its STATUS_*_ROWS_MAX rows and the page
 *      says how many it left out, so the page's size is bounded whatever
 *      the site holds (STATUS_PAGE_MAX_BYTES: 8 MiB in the worst case,
 *      tens of KiB for a site of short names).
 *   3. The document is static: no script, no form, no external resource
 *      (the endpoint's Content-Security-Policy forbids them too); it
 *      reloads itself with <meta http-equiv="refresh">.
 *
 * Rows carry data-* attributes (data-service, data-clone, data-host,
 * data-state) so that a test, or a scraper, reads the page's values
 * without parsing its prose.
 */
#include "status-page.h"

#include <math.h>
#include <string.h>

static const char STYLE[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;"
    "background:#fafafa}"
    "h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 "
    ".4em}"
    "p.meta{color:#555;margin:0 0 1em}"
    "table{border-collapse:collapse;background:#fff;min-width:40em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;"
    "vertical-align:top}"
    "th{background:#e8ecf1}td.num{text-align:right}"
    ".ok{background:#d9f2d9}.warn{background:#fff1c2}.bad{background:#f8d0d0}"
    "p.error{background:#f8d0d0;border:1px solid #c66;padding:.5em}"
    "p.cut,p.empty{color:#555;font-style:italic}"
    "td.msg{max-width:60em;overflow-wrap:anywhere}td.nowrap{white-space:"
    "nowrap}";

/* ---- text ------------------------------------------------------------- */

void
status_html_append(GString *out, const char *text, gsize max_chars)
{
    g_autofree char *valid = NULL;
    gsize n = 0;

    if (!text) {
        g_string_append_c(out, '-');
        return;
    }
    valid = g_utf8_make_valid(text, -1);
    for (const char *p = valid; *p; p = g_utf8_next_char(p), n++) {
        gunichar c = g_utf8_get_char(p);

        if (n == max_chars) {
            g_string_append(out, "\xe2\x80\xa6"); /* … */
            return;
        }
        switch (c) {
        case '&':
            g_string_append(out, "&amp;");
            break;
        case '<':
            g_string_append(out, "&lt;");
            break;
        case '>':
            g_string_append(out, "&gt;");
            break;
        case '"':
            g_string_append(out, "&quot;");
            break;
        case '\'':
            g_string_append(out, "&#39;");
            break;
        default:
            if ((c < 0x20 && c != '\t' && c != '\n') || (c >= 0x7f && c < 0xa0))
                g_string_append(out, "\xef\xbf\xbd"); /* U+FFFD */
            else
                g_string_append_len(out, p, g_utf8_next_char(p) - p);
        }
    }
}

/* text: @s escaped, at most STATUS_TEXT_MAX_CHARS */
static void
text(GString *out, const char *s)
{
    status_html_append(out, s, STATUS_TEXT_MAX_CHARS);
}

/* state_class: the CSS class of a state's cell; from this list only
 * (invariant 1) */
static const char *
state_class(const char *state)
{
    static const char *const ok[] = {"running", "ready", "up", "done", NULL};
    static const char *const bad[] = {"failed",  "rollout-failed", "lost",
                                      "crashed", "paused",         "shut off",
                                      NULL};

    if (!state)
        return "";
    for (guint i = 0; ok[i]; i++) {
        if (g_str_equal(state, ok[i]))
            return "ok";
    }
    for (guint i = 0; bad[i]; i++) {
        if (g_str_equal(state, bad[i]))
            return "bad";
    }
    return "warn";
}

/* utc: @t as "2026-12-05 17:12:14 UTC" into a <time> element */
static void
time_element(GString *out, double t)
{
    g_autoptr(GDateTime) dt =
        isfinite(t) ? g_date_time_new_from_unix_utc((gint64)t) : NULL;
    g_autofree char *iso =
        dt ? g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ") : NULL;
    g_autofree char *shown =
        dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S UTC") : NULL;

    if (!dt) {
        g_string_append_c(out, '-');
        return;
    }
    g_string_append_printf(out, "<time datetime=\"%s\">%s</time>", iso, shown);
}

/* state_cell: a <td> of @state with its class and data-state */
static void
state_cell(GString *out, const char *state)
{
    g_string_append_printf(out, "<td class=\"%s\">", state_class(state));
    text(out, state);
    g_string_append(out, "</td>");
}

/* cut_note: "Showing N of M ..." when a table left rows out (invariant
 * 2) */
static void
cut_note(GString *out, guint shown, guint total, const char *what)
{
    if (shown < total)
        g_string_append_printf(
            out,
            "<p class=\"cut\">Showing %u of %u %s (the page shows at most "
            "%u; <code>sporectl</code> lists them all).</p>\n",
            shown, total, what, shown);
}

/* table_open: a section @id titled @title, and when @n rows exist the
 * table with the header cells @heads (NULL-terminated); false, the
 * section closed with "No @what.", when there are none */
static bool
table_open(GString *out, const char *id, const char *title, const char *note,
           guint n, const char *what, const char *const *heads)
{
    g_string_append_printf(out, "<section id=\"%s\">\n<h2>%s</h2>\n%s", id,
                           title, note ? note : "");
    if (!n) {
        g_string_append_printf(
            out, "<p class=\"empty\">No %s.</p>\n</section>\n", what);
        return false;
    }
    g_string_append(out, "<table>\n<thead><tr>");
    for (guint i = 0; heads[i]; i++)
        g_string_append_printf(out, "<th>%s</th>", heads[i]);
    g_string_append(out, "</tr></thead>\n<tbody>\n");
    return true;
}

/* table_close: the table's end, what was cut, the section's end */
static void
table_close(GString *out, guint shown, guint total, const char *what)
{
    g_string_append(out, "</tbody>\n</table>\n");
    cut_note(out, shown, total, what);
    g_string_append(out, "</section>\n");
}

/* ---- the tables ------------------------------------------------------- */

static void
rollout_cell(GString *out, const StatusService *s)
{
    if (!s->rollout_state) {
        g_string_append(out, "<td>-</td>");
        return;
    }
    g_string_append_printf(out, "<td class=\"%s\">",
                           state_class(s->rollout_state));
    text(out, s->rollout_state);
    g_string_append_printf(
        out, ", generation %" G_GINT64_FORMAT " &#8594; %" G_GINT64_FORMAT,
        s->rollout_from, s->rollout_to);
    if (g_str_equal(s->rollout_state, "rolling"))
        g_string_append_printf(
            out,
            ": %" G_GINT64_FORMAT " updated (%" G_GINT64_FORMAT
            " running), %" G_GINT64_FORMAT " old (%" G_GINT64_FORMAT
            " running)",
            s->updated, s->updated_running, s->old, s->old_running);
    if (s->rollout_reason) {
        g_string_append(out, ": ");
        text(out, s->rollout_reason);
    }
    g_string_append(out, "</td>");
}

/* service_state: as sporectl service-list says it */
static const char *
service_state(const StatusService *s)
{
    if (s->deleting)
        return "deleting";
    if (s->running < 0)
        return "unknown";
    if (g_strcmp0(s->rollout_state, "failed") == 0)
        return "rollout-failed";
    if (g_strcmp0(s->rollout_state, "rolling") == 0)
        return "rolling";
    return s->running == s->desired ? "ready" : "converging";
}

static void
services_table(GString *out, const StatusPage *p)
{
    static const char *const heads[] = {"Service", "Generation", "Desired",
                                        "Placed",  "Running",    "State",
                                        "Rollout", NULL};
    guint shown = MIN(p->n_services, STATUS_SERVICES_ROWS_MAX);

    if (!table_open(out, "services", "Services", NULL, p->n_services,
                    "services", heads))
        return;
    for (guint i = 0; i < shown; i++) {
        const StatusService *s = &p->services[i];
        const char *state = service_state(s);

        g_string_append(out, "<tr class=\"service\" data-service=\"");
        text(out, s->name);
        g_string_append_printf(
            out,
            "\" data-state=\"%s\" data-desired=\"%" G_GINT64_FORMAT
            "\" data-placed=\"%" G_GINT64_FORMAT
            "\" data-running=\"%" G_GINT64_FORMAT "\"><td>",
            state, s->desired, s->placed, s->running);
        text(out, s->name);
        g_string_append_printf(out,
                               "</td><td class=\"num\">%" G_GINT64_FORMAT
                               "</td><td class=\"num\">%" G_GINT64_FORMAT
                               "</td><td class=\"num\">%" G_GINT64_FORMAT
                               "</td>",
                               s->generation, s->desired, s->placed);
        if (s->running >= 0)
            g_string_append_printf(
                out, "<td class=\"num\">%" G_GINT64_FORMAT "</td>", s->running);
        else
            g_string_append(out, "<td class=\"warn\">not known yet</td>");
        state_cell(out, state);
        rollout_cell(out, s);
        g_string_append(out, "</tr>\n");
    }
    table_close(out, shown, p->n_services, "services");
}

static void
clones_table(GString *out, const StatusPage *p)
{
    static const char *const heads[] = {
        "Clone", "Service", "Host", "State", "Generation", "Reason", NULL};
    guint shown = MIN(p->n_clones, STATUS_CLONES_ROWS_MAX);

    if (!table_open(out, "clones", "Clones", NULL, p->n_clones, "clones",
                    heads))
        return;
    for (guint i = 0; i < shown; i++) {
        const StatusClone *c = &p->clones[i];

        g_string_append(out, "<tr class=\"clone\" data-clone=\"");
        text(out, c->name);
        g_string_append(out, "\" data-service=\"");
        text(out, c->service);
        g_string_append(out, "\" data-host=\"");
        text(out, c->host);
        g_string_append(out, "\" data-state=\"");
        text(out, c->state);
        g_string_append(out, "\"><td>");
        text(out, c->name);
        g_string_append(out, "</td><td>");
        text(out, c->service);
        g_string_append(out, "</td><td>");
        if (c->host)
            text(out, c->host);
        else
            g_string_append(out, "(not placed)");
        g_string_append(out, "</td>");
        state_cell(out, c->state);
        g_string_append_printf(out,
                               "<td class=\"num\">%" G_GINT64_FORMAT
                               "</td><td class=\"msg\">",
                               c->generation);
        if (c->reason)
            text(out, c->reason);
        g_string_append(out, "</td></tr>\n");
    }
    table_close(out, shown, p->n_clones, "clones");
}

static void
host_images_cell(GString *out, const StatusHost *h)
{
    guint shown = MIN(h->n_images, STATUS_HOST_IMAGES_MAX);

    g_string_append(out, "<td>");
    if (!h->n_images)
        g_string_append_c(out, '-');
    for (guint i = 0; i < shown; i++) {
        double f = h->images[i].cached;

        if (i)
            g_string_append(out, "<br>");
        text(out, h->images[i].image);
        g_string_append_printf(out, " %.1f%%",
                               isfinite(f) ? CLAMP(f, 0.0, 1.0) * 100 : 0.0);
    }
    if (shown < h->n_images)
        g_string_append_printf(out, "<br>(and %u more)", h->n_images - shown);
    g_string_append(out, "</td>");
}

static void
hosts_table(GString *out, const StatusPage *p)
{
    static const char *const heads[] = {"Host",      "State",         "Clones",
                                        "Last seen", "Images cached", NULL};
    guint shown = MIN(p->n_hosts, STATUS_HOSTS_ROWS_MAX);

    if (!table_open(out, "hosts", "Hosts", NULL, p->n_hosts, "hosts", heads))
        return;
    for (guint i = 0; i < shown; i++) {
        const StatusHost *h = &p->hosts[i];

        g_string_append(out, "<tr class=\"host\" data-host=\"");
        text(out, h->name);
        g_string_append(out, "\" data-state=\"");
        text(out, h->state);
        g_string_append(out, "\"><td>");
        text(out, h->name);
        g_string_append(out, "</td>");
        state_cell(out, h->state);
        g_string_append_printf(
            out, "<td class=\"num\">%" G_GINT64_FORMAT "</td>", h->clones);
        if (h->last_seen >= 0)
            g_string_append_printf(out, "<td class=\"num\">%.0f s ago</td>",
                                   h->last_seen);
        else
            g_string_append(out, "<td>never</td>");
        host_images_cell(out, h);
        g_string_append(out, "</tr>\n");
    }
    table_close(out, shown, p->n_hosts, "hosts");
}

static void
events_table(GString *out, const StatusPage *p)
{
    static const char *const heads[] = {"Time", "Kind",    "Service",
                                        "Host", "Message", NULL};
    guint shown = MIN(p->n_events, STATUS_EVENTS_ROWS_MAX);
    g_autofree char *note =
        g_strdup_printf("<p class=\"meta\">The newest %u, newest first "
                        "(<code>sporectl events</code> has them all).</p>\n",
                        STATUS_EVENTS_ROWS_MAX);

    if (!table_open(out, "events", "Events", note, p->n_events, "events",
                    heads))
        return;
    /* newest first: from the end of the array, oldest first */
    for (guint k = 0; k < shown; k++) {
        const StatusEvent *e = &p->events[p->n_events - 1 - k];

        g_string_append(out, "<tr class=\"event\"><td class=\"nowrap\">");
        time_element(out, e->time);
        g_string_append(out, "</td><td class=\"nowrap\">");
        text(out, e->kind);
        g_string_append(out, "</td><td>");
        text(out, e->service);
        g_string_append(out, "</td><td>");
        text(out, e->host);
        g_string_append(out, "</td><td class=\"msg\">");
        text(out, e->message);
        g_string_append(out, "</td></tr>\n");
    }
    table_close(out, shown, p->n_events, "events");
}

/* summary: one line of counts over all the rows (not only those shown) */
static void
summary(GString *out, const StatusPage *p)
{
    guint running = 0, up = 0, lost = 0;

    for (guint i = 0; i < p->n_clones; i++)
        running += g_strcmp0(p->clones[i].state, "running") == 0;
    for (guint i = 0; i < p->n_hosts; i++) {
        up += g_strcmp0(p->hosts[i].state, "up") == 0;
        lost += g_strcmp0(p->hosts[i].state, "lost") == 0;
    }
    g_string_append_printf(
        out,
        "<p id=\"summary\">%u service%s; %u clone%s, %u running; %u host%s, "
        "%u up, %u lost.</p>\n",
        p->n_services, p->n_services == 1 ? "" : "s", p->n_clones,
        p->n_clones == 1 ? "" : "s", running, p->n_hosts,
        p->n_hosts == 1 ? "" : "s", up, lost);
}

void
status_page_render(const StatusPage *p, GString *out)
{
    g_string_append_printf(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n"
        "<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"refresh\" content=\"%u\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, "
        "initial-scale=1\">\n<title>",
        STATUS_REFRESH_SECONDS);
    if (p->site) {
        text(out, p->site);
        g_string_append(out, " - ");
    }
    g_string_append_printf(out,
                           "spore status</title>\n<style>%s</style>\n"
                           "</head>\n<body>\n<h1>spore site status</h1>\n"
                           "<p class=\"meta\">As of ",
                           STYLE);
    time_element(out, p->now);
    g_string_append_printf(out,
                           "; reloads every %u s; read-only. "
                           "Metrics: <a href=\"/metrics\">/metrics</a>.</p>\n",
                           STATUS_REFRESH_SECONDS);
    if (p->error) {
        g_string_append(out, "<p class=\"error\" id=\"error\">The state "
                             "database cannot be read: ");
        text(out, p->error);
        g_string_append(out, "</p>\n");
    }
    summary(out, p);
    services_table(out, p);
    clones_table(out, p);
    hosts_table(out, p);
    events_table(out, p);
    g_string_append(out, "</body>\n</html>\n");
}
