/*
 * ctl-site.c: sporectl's commands for the site manager, spored, on its
 * control socket (-c; docs/site-control.md) — services, scaling, clones,
 * hosts, images and events (ctl.h).
 *
 * The --wait options (submit, scale, service-delete) poll the manager once
 * a second and show one progress line until the service reaches its goal:
 *
 *   polling --[converged / gone]--> exit 0
 *      |  \--[an error, or deleted under a submit/scale]--> exit 1
 *      \--[--timeout SECONDS passed]--> exit 3 (CTL_EXIT_TIMEOUT)
 *
 * (wait_for_service; the manager keeps working whichever way it ends).
 */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>

#include "file-util.h"

/* the most clones a service may have, and so the largest scale COUNT */
#define CTL_SCALE_MAX MANIFEST_CLONES_MAX
/* the largest request COUNT the manager takes */
#define CTL_REQUEST_MAX G_MAXINT32
/* The largest image index whose base64 leaves room for the rest of the
 * image-add request in the manager's request line. */
#define CTL_IMAGE_ADD_MAX_INDEX_BYTES \
    ((CONTROL_LINE_MAX_BYTES - 65536u) / 4 * 3)
#define CTL_WAIT_DEFAULT_SECONDS 600
#define CTL_WAIT_MAX_SECONDS     86400u
#define CTL_WAIT_POLL_USEC       G_USEC_PER_SEC
#define CTL_EVENTS_BATCH         100 /* the events asked for at a time */

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

/* "hv-1" of a reply's @member, a name or an object with a name. */
static const char *
reply_name(JsonObject *reply, const char *member, const char *fallback)
{
    JsonObject *o = json_util_get_object(reply, member);

    return o ? json_util_get_string(o, "name", fallback)
             : json_util_get_string(reply, member, fallback);
}

/* ---- tables ------------------------------------------------------------ */

static void
print_clone_table(JsonArray *clones, bool with_service)
{
    static const char *const header[] = {"Name",  "Service",    "Host",
                                         "State", "Generation", NULL};
    static const char *const header_short[] = {"Name", "Host", "State",
                                               "Generation", NULL};
    CtlTable t;

    ctl_table_start(&t, with_service ? header : header_short);
    for (guint i = 0; i < array_length(clones); i++) {
        JsonObject *c = array_object(clones, i);

        if (!c)
            continue;
        ctl_table_add(&t, "%s", json_util_get_string(c, "name", "-"));
        if (with_service)
            ctl_table_add(&t, "%s", json_util_get_string(c, "service", "-"));
        ctl_table_add(&t, "%s", json_util_get_string(c, "host", "-"));
        ctl_table_add(&t, "%s", json_util_get_string(c, "state", "-"));
        ctl_table_add(&t, "%" G_GINT64_FORMAT,
                      json_util_get_int(c, "generation", 0));
    }
    ctl_table_finish(&t);
}

static void
print_service_table(JsonArray *services)
{
    static const char *const header[] = {
        "Name", "Generation", "Image", "Running", "Min", "Max", "Status", NULL};
    CtlTable t;

    ctl_table_start(&t, header);
    for (guint i = 0; i < array_length(services); i++) {
        JsonObject *s = array_object(services, i);
        gint64 desired = json_util_get_int(s, "desired", 0);
        gint64 running = json_util_get_int(s, "running", 0);
        /* running is null until the hosts report after a manager restart */
        bool known = json_util_get_int(s, "running", -1) >= 0;
        const char *rollout = json_util_get_string(
            json_util_get_object(s, "rollout"), "state", NULL);

        if (!s)
            continue;
        ctl_table_add(&t, "%s", json_util_get_string(s, "name", "-"));
        ctl_table_add(&t, "%" G_GINT64_FORMAT,
                      json_util_get_int(s, "generation", 0));
        ctl_table_add(&t, "%s", json_util_get_string(s, "image", "-"));
        if (known)
            ctl_table_add(&t, "%" G_GINT64_FORMAT "/%" G_GINT64_FORMAT, running,
                          desired);
        else
            ctl_table_add(&t, "?/%" G_GINT64_FORMAT, desired);
        ctl_table_add(&t, "%" G_GINT64_FORMAT, json_util_get_int(s, "min", 0));
        ctl_table_add(&t, "%" G_GINT64_FORMAT, json_util_get_int(s, "max", 0));
        ctl_table_add(&t, "%s",
                      json_util_get_bool(s, "deleting", false) ? "deleting"
                      : !known                                 ? "unknown"
                      : rollout && g_str_equal(rollout, "failed")
                          ? "rollout-failed"
                      : rollout && g_str_equal(rollout, "rolling") ? "rolling"
                      : running == desired                         ? "ready"
                                           : "converging");
    }
    ctl_table_finish(&t);
}

static void
print_rule(JsonObject *r)
{
    JsonNode *v = json_object_get_member(r, "value");
    g_autofree char *value = NULL;

    if (!v || !JSON_NODE_HOLDS_VALUE(v))
        value = g_strdup("no data");
    else
        value = g_strdup_printf("%.3g", json_util_get_double(r, "value", 0));
    printf("Rule %" G_GINT64_FORMAT ":       %s; last value %s%s\n",
           json_util_get_int(r, "rule", 0),
           json_util_get_string(r, "text", "?"), value,
           json_util_get_bool(r, "fires", false) ? ", fires"
           : json_util_get_bool(r, "pending", false)
               ? ", pending (holds, not for long enough yet)"
               : "");
}

/* print_schedule: a "Schedule N:" line of service-show: the policy as
 * the manager writes it, and its next occurrence */
static void
print_schedule(JsonObject *s)
{
    JsonNode *next = json_object_get_member(s, "next");
    g_autofree char *when =
        next && JSON_NODE_HOLDS_VALUE(next)
            ? ctl_local_time(json_util_get_double(s, "next", 0))
            : NULL;

    printf("Schedule %" G_GINT64_FORMAT ":   %s; %s%s\n",
           json_util_get_int(s, "schedule", 0),
           json_util_get_string(s, "text", "?"),
           when ? "next " : "no further occurrence", when ? when : "");
}

/* print_rollout: the "Rollout:" lines of service-show (docs/sporectl.1) */
static void
print_rollout(JsonObject *r)
{
    const char *state = json_util_get_string(r, "state", NULL);
    const char *reason = json_util_get_string(r, "reason", NULL);
    double started = json_util_get_double(r, "started", 0);
    double finished = json_util_get_double(r, "finished", 0);
    g_autofree char *when = NULL;

    if (!r || !state)
        return;
    when = ctl_local_time(started);
    printf("Rollout:      %s, generation %" G_GINT64_FORMAT
           " -> %" G_GINT64_FORMAT ", started %s",
           state, json_util_get_int(r, "from_generation", 0),
           json_util_get_int(r, "generation", 0), when);
    if (finished > 0)
        printf(", took %.0f s", finished - started);
    putchar('\n');
    printf("Progress:     %" G_GINT64_FORMAT " updated (%" G_GINT64_FORMAT
           " running), %" G_GINT64_FORMAT " old (%" G_GINT64_FORMAT
           " running); max-unavailable %" G_GINT64_FORMAT
           ", max-surge %" G_GINT64_FORMAT "\n",
           json_util_get_int(r, "updated", 0),
           json_util_get_int(r, "updated_running", 0),
           json_util_get_int(r, "old", 0),
           json_util_get_int(r, "old_running", 0),
           json_util_get_int(r, "max_unavailable", 0),
           json_util_get_int(r, "max_surge", 0));
    if (reason)
        printf("Failure:      %s\n", reason);
}

static void
print_service(JsonObject *s)
{
    gint64 cooldown = json_util_get_int(s, "cooldown_until", 0);
    JsonArray *rules = json_util_get_array(s, "rules");
    JsonArray *schedules = json_util_get_array(s, "schedules");

    printf("Name:         %s\n", json_util_get_string(s, "name", "-"));
    printf("Generation:   %" G_GINT64_FORMAT "\n",
           json_util_get_int(s, "generation", 0));
    printf("Image:        %s\n", json_util_get_string(s, "image", "-"));
    printf("Desired:      %" G_GINT64_FORMAT " (min %" G_GINT64_FORMAT
           ", max %" G_GINT64_FORMAT ")\n",
           json_util_get_int(s, "desired", 0), json_util_get_int(s, "min", 0),
           json_util_get_int(s, "max", 0));
    if (json_util_get_int(s, "running", -1) >= 0)
        printf("Running:      %" G_GINT64_FORMAT "\n",
               json_util_get_int(s, "running", 0));
    else
        printf("Running:      not known yet (hosts have not reported since "
               "the manager started)\n");
    if (cooldown > g_get_real_time() / G_USEC_PER_SEC) {
        g_autofree char *until = ctl_local_time((double)cooldown);

        printf("Cooldown:     until %s\n", until);
    }
    if (json_util_get_bool(s, "deleting", false))
        printf("Deleting:     yes\n");
    print_rollout(json_util_get_object(s, "rollout"));
    for (guint i = 0; i < array_length(rules); i++) {
        JsonObject *r = array_object(rules, i);

        if (r)
            print_rule(r);
    }
    for (guint i = 0; i < array_length(schedules); i++) {
        JsonObject *r = array_object(schedules, i);

        if (r)
            print_schedule(r);
    }
    putchar('\n');
    print_clone_table(json_util_get_array(s, "clones"), false);
}

static void
print_host_table(JsonArray *hosts)
{
    static const char *const header[] = {
        "Name",   "State",  "Accepted",  "Address", "CPUs",
        "Memory", "Clones", "Last seen", "Key",     NULL};
    CtlTable t;

    ctl_table_start(&t, header);
    for (guint i = 0; i < array_length(hosts); i++) {
        JsonObject *h = array_object(hosts, i);
        JsonNode *seen = h ? json_object_get_member(h, "last_seen") : NULL;
        g_autofree char *memory = NULL;
        g_autofree char *ago = NULL;

        if (!h)
            continue;
        memory = ctl_human_bytes(
            (guint64)json_util_get_int(h, "memory_kib", 0) * 1024);
        ago = seen && JSON_NODE_HOLDS_VALUE(seen)
                  ? ctl_format_ago(json_util_get_double(h, "last_seen", 0))
                  : g_strdup("never");
        ctl_table_add(&t, "%s", json_util_get_string(h, "name", "-"));
        ctl_table_add(&t, "%s", json_util_get_string(h, "state", "-"));
        ctl_table_add(&t, "%s",
                      json_util_get_bool(h, "accepted", false) ? "yes" : "no");
        ctl_table_add(&t, "%s", json_util_get_string(h, "address", "-"));
        ctl_table_add(&t, "%" G_GINT64_FORMAT, json_util_get_int(h, "cpus", 0));
        ctl_table_add(&t, "%s", memory);
        ctl_table_add(&t, "%" G_GINT64_FORMAT,
                      json_util_get_int(h, "clones", 0));
        ctl_table_add(&t, "%s", ago);
        ctl_table_add(&t, "%s", json_util_get_string(h, "key", "-"));
    }
    ctl_table_finish(&t);
}

/* one indented line per host that has the image */
static void
print_image_hosts(JsonArray *hosts)
{
    int host_width = 0;

    for (guint i = 0; i < array_length(hosts); i++) {
        JsonObject *h = array_object(hosts, i);

        if (h)
            host_width = MAX(host_width,
                             (int)strlen(json_util_get_string(h, "host", "-")));
    }
    for (guint i = 0; i < array_length(hosts); i++) {
        JsonObject *h = array_object(hosts, i);
        JsonObject *fetched = json_util_get_object(h, "fetched");
        g_autofree char *origin = NULL;
        g_autofree char *peer = NULL;
        g_autofree char *local = NULL;
        g_autofree char *host = NULL;

        if (!h)
            continue;
        origin =
            ctl_human_bytes((guint64)json_util_get_int(fetched, "origin", 0));
        peer = ctl_human_bytes((guint64)json_util_get_int(fetched, "peer", 0));
        local =
            ctl_human_bytes((guint64)json_util_get_int(fetched, "local", 0));
        host = ctl_one_line(g_strdup(json_util_get_string(h, "host", "-")));
        printf("  %-*s  %.1f%% cached  from origin %s, peers %s, local %s\n",
               host_width, host,
               100.0 * json_util_get_double(h, "cached_fraction", 0), origin,
               peer, local);
    }
}

/* One line for the image, one indented line for each host that has it. */
static void
print_manager_image(JsonObject *im)
{
    JsonArray *origins = json_util_get_array(im, "origins");
    g_autofree char *size =
        ctl_human_bytes((guint64)json_util_get_int(im, "size", 0));
    g_autoptr(GString) line = g_string_new(NULL);

    g_string_printf(line, "%s  %.19s  %s",
                    json_util_get_string(im, "name", "-"),
                    json_util_get_string(im, "id", "-"), size);
    for (guint i = 0; i < array_length(origins); i++) {
        JsonNode *n = json_array_get_element(origins, i);

        if (JSON_NODE_HOLDS_VALUE(n) &&
            json_node_get_value_type(n) == G_TYPE_STRING)
            g_string_append_printf(line, "%s%s", i ? ", " : "  ",
                                   json_node_get_string(n));
    }
    printf("%s\n", ctl_one_line(line->str));
    print_image_hosts(json_util_get_array(im, "hosts"));
}

/* -q/--name: the "name" of each object of @items, one a line */
static void
print_names(JsonArray *items)
{
    for (guint i = 0; i < array_length(items); i++) {
        JsonObject *o = array_object(items, i);
        g_autofree char *name = NULL;

        if (!o || !json_util_get_string(o, "name", NULL))
            continue;
        name = ctl_one_line(g_strdup(json_util_get_string(o, "name", "")));
        printf("%s\n", name);
    }
}

/* ---- waiting ----------------------------------------------------------- */

typedef enum {
    WAIT_CONVERGED, /* desired clones running, all of the current generation */
    WAIT_GONE,      /* the service no longer exists */
} WaitGoal;

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
    JsonObject *s = json_util_get_object(reply, "service");
    JsonArray *clones = json_util_get_array(s, "clones");
    JsonArray *image_list = json_util_get_array(images, "images");
    gint64 generation = json_util_get_int(s, "generation", 0);
    gint64 desired = json_util_get_int(s, "desired", 0);
    gint64 running = json_util_get_int(s, "running", 0);
    bool deleting = json_util_get_bool(s, "deleting", false);
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
    *done = running == desired && all_current && !deleting;
    g_string_printf(line,
                    "%s: placed %u/%" G_GINT64_FORMAT
                    ", running %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT,
                    json_util_get_string(s, "name", "-"), placed, desired,
                    running, desired);
    for (guint i = 0; i < array_length(image_list); i++) {
        JsonObject *im = array_object(image_list, i);
        JsonArray *copies = json_util_get_array(im, "hosts");
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
    if (deleting)
        g_string_append(line, ", deleting");
    return ctl_one_line(g_string_free(line, FALSE));
}

/* one request {cmd, [member: value]} to the manager; errors printed */
static JsonObject *
ask(const CtlGlobals *quiet, const char *who, const char *cmd,
    const char *member, const char *value)
{
    g_autoptr(JsonBuilder) b = ctl_manager_request(cmd);

    if (member)
        ctl_request_add_string(b, member, value);
    return ctl_manager_call(quiet, who, b, NULL);
}

/* Is @name among the services of a service-list @reply? */
static bool
service_listed(JsonObject *reply, const char *name)
{
    JsonArray *services = json_util_get_array(reply, "services");

    for (guint i = 0; i < array_length(services); i++) {
        JsonObject *s = array_object(services, i);

        if (g_strcmp0(json_util_get_string(s, "name", NULL), name) == 0)
            return true;
    }
    return false;
}

/*
 * One poll towards @goal: the progress line, or NULL after printing an
 * error; *ret_done when the goal is reached, *ret_deleting when a service
 * that should converge is being deleted.
 */
static char *
poll_service(const CtlGlobals *quiet, const char *who, const char *name,
             WaitGoal goal, bool *ret_done, bool *ret_deleting)
{
    g_autoptr(JsonObject) first = NULL;
    g_autoptr(JsonObject) second = NULL;
    char *progress;

    *ret_done = *ret_deleting = false;
    if (goal == WAIT_GONE) {
        first = ask(quiet, who, "service-list", NULL, NULL);
        if (!first)
            return NULL;
        if (!service_listed(first, name)) {
            *ret_done = true;
            return g_strdup_printf("%s: deleted", name);
        }
        second = ask(quiet, who, "clone-list", "service", name);
        if (!second)
            return NULL;
        return ctl_one_line(g_strdup_printf(
            "%s: deleting, clones left: %u", name,
            array_length(json_util_get_array(second, "clones"))));
    }
    first = ask(quiet, who, "service-show", "name", name);
    if (!first)
        return NULL;
    second = ask(quiet, who, "image-list", NULL, NULL);
    if (!second)
        return NULL;
    progress = service_progress(first, second, ret_done);
    *ret_deleting = json_util_get_bool(json_util_get_object(first, "service"),
                                       "deleting", false);
    return progress;
}

/*
 * --wait: poll the service @name every second until @goal or --timeout
 * seconds passed (the state diagram at the top of this file).
 */
static int
wait_for_service(const CtlCall *call, const char *name, WaitGoal goal)
{
    const char *who = call->cmd->name;
    CtlGlobals quiet = call->g; /* the polls are not part of --json's output */
    guint64 seconds = ctl_int(call, "timeout", CTL_WAIT_DEFAULT_SECONDS);
    gint64 deadline = g_get_monotonic_time() + (gint64)seconds * G_USEC_PER_SEC;

    quiet.json = false;
    for (;;) {
        g_autofree char *progress = NULL;
        bool done, deleting;
        gint64 left;

        progress = poll_service(&quiet, who, name, goal, &done, &deleting);
        if (!progress)
            return CTL_EXIT_FAILURE;
        ctl_progress_show(progress);
        if (done) {
            ctl_progress_end();
            if (!call->g.json && goal == WAIT_CONVERGED)
                printf("%s: converged\n", name);
            return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
        }
        if (deleting) {
            ctl_progress_end();
            fprintf(stderr, "sporectl %s: %s is being deleted\n", who, name);
            return CTL_EXIT_FAILURE;
        }
        left = deadline - g_get_monotonic_time();
        if (left <= 0) {
            ctl_progress_end();
            fprintf(stderr,
                    "sporectl %s: %s has not %s after %" G_GUINT64_FORMAT
                    " seconds (%s); the manager goes on\n",
                    who, name, goal == WAIT_GONE ? "gone" : "converged",
                    seconds, progress);
            return CTL_EXIT_TIMEOUT;
        }
        g_usleep((gulong)MIN(left, CTL_WAIT_POLL_USEC));
    }
}

/* --timeout is for --wait */
static bool
check_wait_options(const CtlCall *call)
{
    if (ctl_has(call, "timeout") && !ctl_flag(call, "wait")) {
        ctl_usage_error(call, "--timeout is for --wait");
        return false;
    }
    return true;
}

/* ---- the commands ------------------------------------------------------ */

/* service-list, clone-list, host-list, image-list: a table, or with
 * -q/--name the names */
static int
cmd_list(const CtlCall *call)
{
    const char *name = call->cmd->name;
    g_autoptr(JsonObject) reply = NULL;
    JsonArray *items;

    reply = ask(&call->g, name, name, ctl_n_args(call) ? "service" : NULL,
                ctl_arg(call, 0));
    if (!reply)
        return CTL_EXIT_FAILURE;
    if (call->g.json)
        return CTL_EXIT_OK;
    items = json_util_get_array(reply,
                                g_str_equal(name, "service-list") ? "services"
                                : g_str_equal(name, "clone-list") ? "clones"
                                : g_str_equal(name, "host-list")  ? "hosts"
                                                                  : "images");
    if (ctl_flag(call, "name"))
        print_names(items);
    else if (g_str_equal(name, "service-list"))
        print_service_table(items);
    else if (g_str_equal(name, "clone-list"))
        print_clone_table(items, true);
    else if (g_str_equal(name, "host-list"))
        print_host_table(items);
    else
        for (guint i = 0; i < array_length(items); i++) {
            JsonObject *im = array_object(items, i);

            if (im)
                print_manager_image(im);
        }
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

static int
cmd_service_show(const CtlCall *call)
{
    g_autoptr(JsonObject) reply =
        ask(&call->g, "service-show", "service-show", "name", ctl_arg(call, 0));

    if (!reply)
        return CTL_EXIT_FAILURE;
    if (!call->g.json)
        print_service(json_util_get_object(reply, "service"));
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

static int
cmd_service_delete(const CtlCall *call)
{
    const char *name = ctl_arg(call, 0);
    g_autoptr(JsonObject) reply = NULL;

    if (!check_wait_options(call))
        return CTL_EXIT_USAGE;
    reply = ask(&call->g, "service-delete", "service-delete", "name", name);
    if (!reply)
        return CTL_EXIT_FAILURE;
    if (!call->g.json)
        printf("%s: deleting (its clones are shut down and removed)\n",
               reply_name(reply, "service", name));
    if (fflush(stdout) != 0)
        return CTL_EXIT_FAILURE;
    if (!ctl_flag(call, "wait"))
        return CTL_EXIT_OK;
    return wait_for_service(call, name, WAIT_GONE);
}

static int
cmd_host_accept(const CtlCall *call)
{
    g_autoptr(JsonObject) reply =
        ask(&call->g, "host-accept", "host-accept", "name", ctl_arg(call, 0));

    if (!reply)
        return CTL_EXIT_FAILURE;
    if (!call->g.json)
        printf("%s: accepted\n", reply_name(reply, "host", ctl_arg(call, 0)));
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

static int
cmd_submit(const CtlCall *call)
{
    const char *file = ctl_arg(call, 0);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(JsonBuilder) b = NULL;
    g_autoptr(JsonObject) reply = NULL;
    g_autofree char *text = NULL;
    g_autofree char *service = NULL;
    gsize len = 0;

    if (!check_wait_options(call))
        return CTL_EXIT_USAGE;
    /* validated here as 'validate' does, and exactly the text validated is
     * sent (the manager validates it again) */
    if (spore_file_read_bounded(file, MANIFEST_MAX_BYTES, &text, &len, &err))
        m = manifest_parse_data(text, len, problems, &err);
    if (!m) {
        ctl_print_manifest_problems(file, problems, err);
        return CTL_EXIT_FAILURE;
    }
    b = ctl_manager_request("submit");
    ctl_request_add_string(b, "manifest", text);
    ctl_request_add_string(b, "file", file);
    reply = ctl_manager_call(&call->g, "submit", b, file);
    if (!reply)
        return CTL_EXIT_FAILURE;
    service =
        ctl_one_line(g_strdup(json_util_get_string(reply, "service", m->name)));
    if (!call->g.json)
        printf("%s: %s (generation %" G_GINT64_FORMAT ")\n", service,
               json_util_get_string(reply, "outcome", "submitted"),
               json_util_get_int(reply, "generation", 0));
    if (fflush(stdout) != 0)
        return CTL_EXIT_FAILURE;
    if (!ctl_flag(call, "wait"))
        return CTL_EXIT_OK;
    return wait_for_service(call, service, WAIT_CONVERGED);
}

/* {name, count} as "scale" or "request" */
static JsonObject *
send_count(const CtlCall *call, guint64 count)
{
    g_autoptr(JsonBuilder) b = ctl_manager_request(call->cmd->name);

    ctl_request_add_string(b, "name", ctl_arg(call, 0));
    ctl_request_add_int(b, "count", (gint64)count);
    return ctl_manager_call(&call->g, call->cmd->name, b, NULL);
}

static int
cmd_scale(const CtlCall *call)
{
    const char *name = ctl_arg(call, 0);
    guint64 count = ctl_arg_int(call, 1);
    g_autoptr(JsonObject) reply = NULL;

    if (!check_wait_options(call))
        return CTL_EXIT_USAGE;
    reply = send_count(call, count);
    if (!reply)
        return CTL_EXIT_FAILURE;
    if (!call->g.json)
        printf("%s: scaling to %" G_GUINT64_FORMAT " clones\n",
               reply_name(reply, "service", name), count);
    if (fflush(stdout) != 0)
        return CTL_EXIT_FAILURE;
    if (!ctl_flag(call, "wait"))
        return CTL_EXIT_OK;
    return wait_for_service(call, name, WAIT_CONVERGED);
}

static int
cmd_rollback(const CtlCall *call)
{
    const char *name = ctl_arg(call, 0);
    g_autoptr(JsonObject) reply = NULL;

    if (!check_wait_options(call))
        return CTL_EXIT_USAGE;
    reply = ask(&call->g, "rollback", "rollback", "name", name);
    if (!reply)
        return CTL_EXIT_FAILURE;
    if (!call->g.json)
        printf("%s: rolling back from generation %" G_GINT64_FORMAT
               " to %" G_GINT64_FORMAT "\n",
               reply_name(reply, "service", name),
               json_util_get_int(reply, "from_generation", 0),
               json_util_get_int(reply, "generation", 0));
    if (fflush(stdout) != 0)
        return CTL_EXIT_FAILURE;
    if (!ctl_flag(call, "wait"))
        return CTL_EXIT_OK;
    return wait_for_service(call, name, WAIT_CONVERGED);
}

static int
cmd_request(const CtlCall *call)
{
    guint64 count = ctl_n_args(call) > 1 ? ctl_arg_int(call, 1) : 1;
    g_autoptr(JsonObject) reply = send_count(call, count);

    if (!reply)
        return CTL_EXIT_FAILURE;
    if (!call->g.json)
        printf("%s: %" G_GUINT64_FORMAT " requests reported\n",
               reply_name(reply, "service", ctl_arg(call, 0)), count);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

static int
cmd_image_add(const CtlCall *call)
{
    const char *index = ctl_string(call, "index", NULL);
    g_autoptr(JsonBuilder) b = NULL;
    g_autoptr(JsonObject) reply = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *data = NULL;
    g_autofree char *encoded = NULL;
    gsize len = 0;

    if (index) {
        if (!spore_file_read_bounded(index, CTL_IMAGE_ADD_MAX_INDEX_BYTES,
                                     &data, &len, &err)) {
            fprintf(stderr, "sporectl image-add: %s\n", err->message);
            return CTL_EXIT_FAILURE;
        }
        encoded = g_base64_encode((const guchar *)data, len);
    }
    b = ctl_manager_request("image-add");
    ctl_request_add_string(b, "name", ctl_arg(call, 0));
    ctl_request_add_string(b, "url", ctl_arg(call, 1));
    if (encoded)
        ctl_request_add_string(b, "index", encoded);
    reply = ctl_manager_call(&call->g, "image-add", b, NULL);
    if (!reply)
        return CTL_EXIT_FAILURE;
    if (!call->g.json) {
        JsonObject *im = json_util_get_object(reply, "image");
        g_autofree char *size =
            ctl_human_bytes((guint64)json_util_get_int(im, "size", 0));

        printf("%s: added, %s, %s\n",
               json_util_get_string(im, "name", ctl_arg(call, 0)),
               json_util_get_string(im, "id", "-"), size);
    }
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

static void
print_event(JsonObject *e)
{
    JsonNode *time = json_object_get_member(e, "time");
    g_autofree char *when =
        time && JSON_NODE_HOLDS_VALUE(time)
            ? ctl_local_time(json_util_get_double(e, "time", 0))
            : g_strdup("-");
    g_autofree char *line =
        g_strdup_printf("%s  %-16s  %-12s  %-10s  %s", when,
                        json_util_get_string(e, "kind", "-"),
                        json_util_get_string(e, "service", "-"),
                        json_util_get_string(e, "host", "-"),
                        json_util_get_string(e, "message", ""));

    printf("%s\n", ctl_one_line(line));
}

/* one batch of events after *since (all when !*asked); moves *since.
 * Following, a manager that cannot be reached after the first batch sets
 * *ret_gone instead of failing: it may be restarting. */
static int
events_batch(const CtlCall *call, guint64 *since, bool first, guint *ret_n,
             bool *ret_gone)
{
    const char *service = ctl_string(call, "service", NULL);
    CtlGlobals quiet = call->g; /* with --json, batches are printed here */
    g_autoptr(JsonBuilder) b = ctl_manager_request("events");
    g_autoptr(JsonObject) reply = NULL;
    JsonArray *events;

    quiet.json = false;
    if (ctl_has(call, "since") || !first)
        ctl_request_add_int(b, "since", (gint64)*since);
    if (service)
        ctl_request_add_string(b, "service", service);
    ctl_request_add_int(b, "limit", CTL_EVENTS_BATCH);
    *ret_gone = false;
    if (!first && ctl_flag(call, "follow")) {
        json_builder_end_object(b);
        reply = ctl_manager_call_any(&call->g, b, true);
        if (!reply) {
            *ret_gone = true;
            return CTL_EXIT_OK;
        }
        if (!json_util_get_bool(reply, "ok", false)) {
            fprintf(stderr, "sporectl events: %s\n",
                    json_util_get_string(reply, "error", "failed"));
            return CTL_EXIT_FAILURE;
        }
    } else {
        reply = ctl_manager_call(&quiet, "events", b, NULL);
    }
    if (!reply)
        return CTL_EXIT_FAILURE;
    events = json_util_get_array(reply, "events");
    *ret_n = array_length(events);
    if (call->g.json && (first || *ret_n > 0))
        ctl_print_json(reply);
    for (guint i = 0; i < *ret_n; i++) {
        JsonObject *e = array_object(events, i);

        if (!e)
            continue;
        if (!call->g.json)
            print_event(e);
        *since = MAX(*since, (guint64)json_util_get_int(e, "id", 0));
    }
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* Following, a manager that goes away (a restart) is waited for, once
 * said; the events go on from the last one printed, none twice (ids keep
 * growing across the manager's restarts). */
static int
cmd_events(const CtlCall *call)
{
    guint64 since = ctl_int(call, "since", 0);
    bool away = false;

    for (bool first = true;; first = false) {
        guint64 before = since;
        guint n = 0;
        bool gone = false;
        int status = events_batch(call, &since, first, &n, &gone);

        if (status != CTL_EXIT_OK || !ctl_flag(call, "follow"))
            return status;
        if (gone && !away)
            fprintf(stderr,
                    "sporectl events: the site manager at '%s' went away; "
                    "waiting for it%s\n",
                    call->g.endpoint,
                    call->g.endpoints[1] ? " or a standby" : "");
        else if (!gone && away)
            fprintf(stderr,
                    "sporectl events: the site manager at '%s' is back; "
                    "following after event %" G_GUINT64_FORMAT "\n",
                    call->g.endpoint, before);
        away = gone;
        if (gone || n < CTL_EVENTS_BATCH) /* else more are waiting */
            g_usleep(CTL_WAIT_POLL_USEC);
    }
}

/* ---- the table --------------------------------------------------------- */

#define OPT_WAIT(what)                                      \
    {                                                       \
        "wait", 0, CTL_OPT_BOOL, .help = "wait until " what \
    }
#define OPT_TIMEOUT                                                       \
    {                                                                     \
        "timeout", 0, CTL_OPT_INT, "SECONDS",                             \
            .max = CTL_WAIT_MAX_SECONDS,                                  \
            .help = "give up waiting after SECONDS (default 600; exit 3)" \
    }
#define OPT_NAMES                                                             \
    {                                                                         \
        "name", 'q', CTL_OPT_BOOL, .help = "print only the names, one a line" \
    }

static const CtlOptDef submit_opts[] = {
    OPT_WAIT("the service has converged"),
    OPT_TIMEOUT,
    {0},
};

static const CtlOptDef scale_opts[] = {
    OPT_WAIT("COUNT clones run"),
    OPT_TIMEOUT,
    {0},
};

static const CtlOptDef rollback_opts[] = {
    OPT_WAIT("the service has converged"),
    OPT_TIMEOUT,
    {0},
};

static const CtlOptDef delete_opts[] = {
    OPT_WAIT("the service is gone"),
    OPT_TIMEOUT,
    {0},
};

static const CtlOptDef list_opts[] = {
    OPT_NAMES,
    {0},
};

static const CtlOptDef image_add_opts[] = {
    {"index", 0, CTL_OPT_STRING, "FILE", .complete = CTL_COMPLETE_FILE,
     .help = "the image's index, from 'sporectl image-index'"},
    {0},
};

static const CtlOptDef events_opts[] = {
    {"follow", 'f', CTL_OPT_BOOL, .help = "keep printing new events"},
    {"service", 0, CTL_OPT_STRING, "NAME", .complete = CTL_COMPLETE_SERVICE,
     .help = "only the events of service NAME"},
    {"since", 0, CTL_OPT_INT, "ID", .max = G_MAXINT64,
     .help = "only the events after event ID"},
    {0},
};

static const CtlArgDef file_arg[] = {
    {"FILE", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_FILE},
    {0},
};

static const CtlArgDef service_arg[] = {
    {"NAME", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_SERVICE},
    {0},
};

static const CtlArgDef optional_service_arg[] = {
    {"SERVICE", CTL_ARG_OPTIONAL, .complete = CTL_COMPLETE_SERVICE},
    {0},
};

static const CtlArgDef scale_args[] = {
    {"NAME", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_SERVICE},
    {"COUNT", CTL_ARG_REQUIRED, CTL_OPT_INT, 0, CTL_SCALE_MAX,
     "the most clones a service may have"},
    {0},
};

static const CtlArgDef request_args[] = {
    {"SERVICE", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_SERVICE},
    {"COUNT", CTL_ARG_OPTIONAL, CTL_OPT_INT, 0, CTL_REQUEST_MAX,
     "the most the manager takes at once"},
    {0},
};

static const CtlArgDef host_arg[] = {
    {"NAME", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_HOST},
    {0},
};

static const CtlArgDef image_add_args[] = {
    {"NAME", CTL_ARG_REQUIRED},
    {"URL", CTL_ARG_REQUIRED},
    {0},
};

const CtlCmdDef ctl_site_commands[] = {
    {
        .name = "submit",
        .summary = "Submit a service definition manifest to the site manager.",
        .help =
            "Validates FILE (- for standard input) like 'validate' (problems\n"
            "go to standard error as 'FILE:LINE: message' and nothing is\n"
            "sent), then sends it to the site manager, which creates the\n"
            "service, or updates it to a new generation when its definition\n"
            "changed.  Prints 'SERVICE: created|updated|unchanged\n"
            "(generation N)'.  The manifest's image must have been added\n"
            "with 'image-add'.\n"
            "\n"
            "With --wait, then waits until the service has converged: its\n"
            "desired number of clones running, all of the new generation.\n"
            "Progress goes to standard error, e.g. 'web: placed 2/2, running\n"
            "1/2, image 34% cached' (the mean cached fraction of the image\n"
            "on the hosts with the service's clones).  After SECONDS it\n"
            "gives up with exit status 3; the manager keeps working on the\n"
            "service.\n",
        .opts = submit_opts,
        .args = file_arg,
        .run = cmd_submit,
    },
    {
        .name = "service-list",
        .summary = "List the site's services.",
        .help =
            "One line per service: name, generation, image, running/desired\n"
            "clones, the scaling range, and ready, converging, rolling\n"
            "(a new generation replaces the clones), rollout-failed or\n"
            "deleting.\n",
        .opts = list_opts,
        .run = cmd_list,
    },
    {
        .name = "service-show",
        .summary = "Show a service and its clones.",
        .help =
            "Prints the service's summary and a table of its clones: name,\n"
            "host, state and generation.  After a new generation was\n"
            "submitted, 'Rollout:' says from and to which generation, and\n"
            "rolling, done or failed; 'Progress:' how many clones are of the\n"
            "new generation and of the old, and how many of each run.\n"
            "'Rule N:' lines show each scaling rule's last value;\n"
            "'Schedule N:' lines each scheduled policy (its recurrence or\n"
            "start time, time zone and action) and its next occurrence.  With\n"
            "--json, the reply also carries the service's canonical\n"
            "manifest.\n",
        .args = service_arg,
        .run = cmd_service_show,
    },
    {
        .name = "service-delete",
        .summary = "Delete a service and all its clones.",
        .help =
            "The manager shuts the service's clones down, undefines them and\n"
            "removes their volumes; the service disappears once they are\n"
            "gone.  With --wait, waits until then, showing the clones left;\n"
            "after SECONDS it gives up with exit status 3.\n",
        .opts = delete_opts,
        .args = service_arg,
        .run = cmd_service_delete,
    },
    {
        .name = "scale",
        .summary = "Set the number of clones a service should have.",
        .help =
            "COUNT must lie within the manifest's scaling range [min, max].\n"
            "The manager creates or removes clones until COUNT run.  With\n"
            "--wait, waits until they do, with the progress line of 'submit\n"
            "--wait'; after SECONDS it gives up with exit status 3.\n",
        .opts = scale_opts,
        .args = scale_args,
        .run = cmd_scale,
    },
    {
        .name = "rollback",
        .summary = "Return a service to its previous manifest.",
        .help =
            "The service goes back to the newest kept generation below\n"
            "the current one (after a failed rollout, the one it started\n"
            "from; again, one more step back), with that generation's\n"
            "manifest and number: its clones of that generation are kept,\n"
            "the others replaced within the manifest's <update> bounds.\n"
            "Submitting the manifest a rollout started from again does the\n"
            "same.  With --wait,\n"
            "waits until the service has converged, with the progress line\n"
            "of 'submit --wait'; after SECONDS it gives up with exit status\n"
            "3.\n",
        .opts = rollback_opts,
        .args = service_arg,
        .run = cmd_rollback,
    },
    {
        .name = "request",
        .summary =
            "Report requests served by a service (default 1), for its rules.",
        .help =
            "Adds COUNT to the service's request count.  A rule on the\n"
            "metric 'requests' compares the requests of the last 60 seconds\n"
            "per running clone (requests per clone per minute) with its\n"
            "threshold.  Load balancers and guests can report through the\n"
            "manager's ZeroMQ endpoint as well (docs/scaling.md).\n",
        .args = request_args,
        .run = cmd_request,
    },
    {
        .name = "clone-list",
        .summary = "List the site's clones, or those of SERVICE.",
        .help =
            "One line per clone: name, service, host ('-' while not placed),\n"
            "state and generation.  The state is what its host reports\n"
            "(running, paused, shutoff, ...), or pending, creating or\n"
            "deleting.\n",
        .opts = list_opts,
        .args = optional_service_arg,
        .run = cmd_list,
    },
    {
        .name = "host-list",
        .summary = "List the site's hosts.",
        .help = "One line per host: name, state (up, lost, pending or down),\n"
                "whether its key is accepted, address, CPUs, memory, clones,\n"
                "when it was last heard from, and its CURVE public key.\n",
        .opts = list_opts,
        .run = cmd_list,
    },
    {
        .name = "host-accept",
        .summary = "Admit a host whose key was refused.",
        .help =
            "A host whose key the manager does not know shows as 'pending'\n"
            "in 'host-list'; compare its key with the host agent's, then\n"
            "accept it.\n",
        .args = host_arg,
        .run = cmd_host_accept,
    },
    {
        .name = "image-add",
        .summary = "Register a master image with the site manager.",
        .help =
            "Registers the image NAME, whose origin is URL (http, https or\n"
            "file), for manifests to name.  With --index, FILE is its chunk\n"
            "index (from 'sporectl image-index'), sent along; without it the\n"
            "manager downloads the image once and indexes it, which takes a\n"
            "while for a large image.\n",
        .opts = image_add_opts,
        .args = image_add_args,
        .run = cmd_image_add,
    },
    {
        .name = "image-list",
        .summary = "List the site's images and what each host has cached.",
        .help =
            "One line per image: name, id, size and origins; then one\n"
            "indented line per host that has it: the percentage cached and\n"
            "the bytes fetched from the origin, from peers and from local\n"
            "copies.\n",
        .opts = list_opts,
        .run = cmd_list,
    },
    {
        .name = "events",
        .summary = "Show the site manager's events.",
        .help =
            "One line per event, oldest first: local time, kind, service,\n"
            "host and message.  With --follow, keeps asking every second for\n"
            "new events until interrupted.\n",
        .opts = events_opts,
        .run = cmd_events,
    },
    {0},
};
