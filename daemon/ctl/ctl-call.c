/*
 * ctl-call.c: sporectl's side of the daemons' control sockets (ctl.h) —
 * requests built with json-glib, sent with control_call (control.h), and
 * the manager's {ok, error, problems} envelope turned into messages.
 *
 * One blocking connection per call; sporectl is one thread.
 */
#include "ctl.h"

#include "spore-error.h"

JsonObject *
ctl_socket_call(const char *path, const char *what, JsonBuilder *request,
                bool quiet)
{
    g_autoptr(JsonNode) root = json_builder_get_root(request);
    g_autoptr(GError) err = NULL;
    JsonObject *reply =
        control_call(what, path, json_node_get_object(root), &err);

    if (!reply && !quiet) {
        ctl_progress_end();
        fprintf(stderr, "sporectl: %s\n", err->message);
    }
    return reply;
}

JsonBuilder *
ctl_manager_request(const char *cmd)
{
    JsonBuilder *b = json_builder_new();

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "cmd");
    json_builder_add_string_value(b, cmd);
    return b;
}

void
ctl_request_add_string(JsonBuilder *b, const char *name, const char *value)
{
    json_builder_set_member_name(b, name);
    json_builder_add_string_value(b, value);
}

void
ctl_request_add_int(JsonBuilder *b, const char *name, gint64 value)
{
    json_builder_set_member_name(b, name);
    json_builder_add_int_value(b, value);
}

/*
 * ctl_manager_call_any: @request's reply from the first of @g's endpoints
 * that answers.  Only a socket that cannot be reached (missing, refused:
 * a standby binds none) moves on to the next: once a request was sent,
 * its failure is final, since the manager may have applied it.
 */
JsonObject *
ctl_manager_call_any(const CtlGlobals *g, JsonBuilder *request, bool quiet)
{
    g_autoptr(JsonNode) root = json_builder_get_root(request);
    g_autoptr(GString) why = g_string_new(NULL);

    for (guint i = 0; g->endpoints && g->endpoints[i]; i++) {
        g_autoptr(GError) err = NULL;
        JsonObject *reply = control_call("the site manager", g->endpoints[i],
                                         json_node_get_object(root), &err);

        if (reply)
            return reply;
        if (!g_error_matches(err, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE)) {
            g_string_assign(why, err->message);
            break;
        }
        g_string_append_printf(why, "%s%s", why->len ? "; " : "", err->message);
    }
    if (!quiet) {
        ctl_progress_end();
        fprintf(stderr, "sporectl: %s\n", why->str);
    }
    return NULL;
}

JsonObject *
ctl_manager_call(const CtlGlobals *g, const char *name, JsonBuilder *request,
                 const char *file)
{
    JsonObject *reply;
    JsonArray *problems;

    json_builder_end_object(request);
    reply = ctl_manager_call_any(g, request, false);
    if (!reply)
        return NULL;
    if (g->json)
        ctl_print_json(reply);
    if (json_util_get_bool(reply, "ok", false)) {
        if (g->json)
            fflush(stdout);
        return reply;
    }
    ctl_progress_end();
    fprintf(stderr, "sporectl %s: %s\n", name,
            json_util_get_string(reply, "error", "failed"));
    problems = json_util_get_array(reply, "problems");
    for (guint i = 0; problems && i < json_array_get_length(problems); i++) {
        JsonNode *n = json_array_get_element(problems, i);
        JsonObject *p =
            JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;

        if (p)
            ctl_print_problem_at(file ? file : "manifest",
                                 (guint)json_util_get_int(p, "line", 0),
                                 json_util_get_string(p, "message", "invalid"));
    }
    json_object_unref(reply);
    return NULL;
}

GPtrArray *
ctl_manager_names(const char *endpoint, CtlComplete kind)
{
    static const struct {
        CtlComplete kind;
        const char *cmd, *member, *name;
    } lists[] = {
        {CTL_COMPLETE_SERVICE, "service-list", "services", "name"},
        {CTL_COMPLETE_CLONE, "clone-list", "clones", "name"},
        {CTL_COMPLETE_HOST, "host-list", "hosts", "name"},
        {CTL_COMPLETE_IMAGE, "image-list", "images", "name"},
    };

    for (guint k = 0; k < G_N_ELEMENTS(lists); k++) {
        g_autoptr(JsonBuilder) b = NULL;
        g_autoptr(JsonObject) reply = NULL;
        GPtrArray *names;
        JsonArray *arr;

        if (lists[k].kind != kind)
            continue;
        b = ctl_manager_request(lists[k].cmd);
        json_builder_end_object(b);
        reply = ctl_socket_call(endpoint, "the site manager", b, true);
        if (!reply || !json_util_get_bool(reply, "ok", false))
            return NULL;
        arr = json_util_get_array(reply, lists[k].member);
        names = g_ptr_array_new_with_free_func(g_free);
        for (guint i = 0; arr && i < json_array_get_length(arr); i++) {
            JsonNode *n = json_array_get_element(arr, i);
            const char *name =
                JSON_NODE_HOLDS_OBJECT(n)
                    ? json_util_get_string(json_node_get_object(n),
                                           lists[k].name, NULL)
                    : NULL;

            if (name)
                g_ptr_array_add(names, ctl_one_line(g_strdup(name)));
        }
        return names;
    }
    return NULL;
}
