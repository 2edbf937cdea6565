/*
 * manager-status.c: spored's status page (GET /status on the metrics
 * endpoint), on the metrics server's thread.
 *
 * The rows come from the control socket's own read commands
 * (service-list, clone-list, host-list, image-list, events), run by
 * manager_control_read() in one read transaction under Manager.lock: the
 * page shows one consistent snapshot, with exactly the states sporectl
 * shows, and computes none of its own.  status-page.c turns the rows into
 * HTML.  When the database fails, the page says why and shows no rows.
 */
#include "manager-private.h"
#include "status-page.h"

enum { REQ_SERVICES, REQ_CLONES, REQ_HOSTS, REQ_IMAGES, REQ_EVENTS, N_REQS };

static JsonObject *
request(const char *cmd)
{
    JsonObject *o = json_object_new();

    json_object_set_string_member(o, "cmd", cmd);
    return o;
}

/* array_len: 0 for a NULL array */
static guint
array_len(JsonArray *a)
{
    return a ? json_array_get_length(a) : 0;
}

static JsonObject *
element(JsonArray *a, guint i)
{
    JsonNode *n = json_array_get_element(a, i);

    return JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

/* null_or_int: @o's member @name, -1 when null or absent */
static gint64
null_or_int(JsonObject *o, const char *name)
{
    JsonNode *n = json_object_get_member(o, name);

    return n && JSON_NODE_HOLDS_VALUE(n) ? json_node_get_int(n) : -1;
}

static void
fill_services(JsonObject *reply, GHashTable *placed, GArray *rows)
{
    JsonArray *a = json_util_get_array(reply, "services");

    for (guint i = 0; i < array_len(a); i++) {
        JsonObject *o = element(a, i);
        JsonObject *ro = o ? json_util_get_object(o, "rollout") : NULL;
        StatusService s = {0};

        if (!o)
            continue;
        s.name = json_util_get_string(o, "name", NULL);
        s.generation = json_util_get_int(o, "generation", 0);
        s.desired = json_util_get_int(o, "desired", 0);
        s.placed = GPOINTER_TO_UINT(g_hash_table_lookup(placed, s.name));
        s.running = null_or_int(o, "running");
        s.deleting = json_util_get_bool(o, "deleting", false);
        if (ro) {
            s.rollout_state = json_util_get_string(ro, "state", NULL);
            s.rollout_from = json_util_get_int(ro, "from_generation", 0);
            s.rollout_to = json_util_get_int(ro, "generation", 0);
            s.updated = json_util_get_int(ro, "updated", 0);
            s.updated_running = json_util_get_int(ro, "updated_running", 0);
            s.old = json_util_get_int(ro, "old", 0);
            s.old_running = json_util_get_int(ro, "old_running", 0);
            s.rollout_reason = json_util_get_string(ro, "reason", NULL);
        }
        g_array_append_val(rows, s);
    }
}

/* fill_clones: the clone rows, and per service (borrowed names) how many
 * of its desired clones are placed (those being removed are not) */
static void
fill_clones(JsonObject *reply, GHashTable *placed, GArray *rows)
{
    JsonArray *a = json_util_get_array(reply, "clones");

    for (guint i = 0; i < array_len(a); i++) {
        JsonObject *o = element(a, i);
        StatusClone c = {0};

        if (!o)
            continue;
        c.name = json_util_get_string(o, "name", NULL);
        c.service = json_util_get_string(o, "service", NULL);
        c.host = json_util_get_string(o, "host", NULL);
        c.state = json_util_get_string(o, "state", NULL);
        c.generation = json_util_get_int(o, "generation", 0);
        c.reason = json_util_get_string(o, "reason", NULL);
        if (c.service && c.host &&
            g_strcmp0(c.state, clone_state_to_string(CLONE_DELETING)))
            g_hash_table_insert(
                placed, (gpointer)c.service,
                GUINT_TO_POINTER(
                    GPOINTER_TO_UINT(g_hash_table_lookup(placed, c.service)) +
                    1));
        g_array_append_val(rows, c);
    }
}

/* host_images: host name (borrowed) -> GArray of StatusHostImage, from
 * image-list */
static GHashTable *
host_images(JsonObject *reply)
{
    GHashTable *t = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                          (GDestroyNotify)g_array_unref);
    JsonArray *a = json_util_get_array(reply, "images");

    for (guint i = 0; i < array_len(a); i++) {
        JsonObject *im = element(a, i);
        JsonArray *hosts = im ? json_util_get_array(im, "hosts") : NULL;

        for (guint j = 0; j < array_len(hosts); j++) {
            JsonObject *h = element(hosts, j);
            const char *host = json_util_get_string(h, "host", NULL);
            StatusHostImage hi = {
                .image = json_util_get_string(im, "name", NULL),
                .cached = json_util_get_double(h, "cached_fraction", 0),
            };
            GArray *list;

            if (!host)
                continue;
            if (!(list = g_hash_table_lookup(t, host))) {
                list = g_array_new(FALSE, FALSE, sizeof(StatusHostImage));
                g_hash_table_insert(t, (gpointer)host, list);
            }
            g_array_append_val(list, hi);
        }
    }
    return t;
}

static void
fill_hosts(JsonObject *reply, GHashTable *images, GArray *rows)
{
    JsonArray *a = json_util_get_array(reply, "hosts");

    for (guint i = 0; i < array_len(a); i++) {
        JsonObject *o = element(a, i);
        JsonNode *seen = o ? json_object_get_member(o, "last_seen") : NULL;
        StatusHost h = {0};
        GArray *list;

        if (!o)
            continue;
        h.name = json_util_get_string(o, "name", NULL);
        h.state = json_util_get_string(o, "state", NULL);
        h.clones = json_util_get_int(o, "clones", 0);
        h.last_seen = seen && JSON_NODE_HOLDS_VALUE(seen)
                          ? json_node_get_double(seen)
                          : -1;
        if (h.name && (list = g_hash_table_lookup(images, h.name))) {
            h.images = (const StatusHostImage *)list->data;
            h.n_images = list->len;
        }
        g_array_append_val(rows, h);
    }
}

static void
fill_events(JsonObject *reply, GArray *rows)
{
    JsonArray *a = json_util_get_array(reply, "events");

    for (guint i = 0; i < array_len(a); i++) {
        JsonObject *o = element(a, i);
        StatusEvent e = {0};

        if (!o)
            continue;
        e.time = json_util_get_double(o, "time", 0);
        e.kind = json_util_get_string(o, "kind", NULL);
        e.service = json_util_get_string(o, "service", NULL);
        e.host = json_util_get_string(o, "host", NULL);
        e.message = json_util_get_string(o, "message", NULL);
        g_array_append_val(rows, e);
    }
}

void
manager_status_page(GString *out, gpointer data)
{
    Manager *m = data;
    static const char *const cmds[N_REQS] = {
        "service-list", "clone-list", "host-list", "image-list", "events"};
    JsonObject *reqs[N_REQS];
    JsonObject *replies[N_REQS] = {NULL};
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) services =
        g_array_new(FALSE, FALSE, sizeof(StatusService));
    g_autoptr(GArray) clones = g_array_new(FALSE, FALSE, sizeof(StatusClone));
    g_autoptr(GArray) hosts = g_array_new(FALSE, FALSE, sizeof(StatusHost));
    g_autoptr(GArray) events = g_array_new(FALSE, FALSE, sizeof(StatusEvent));
    g_autoptr(GHashTable) placed = g_hash_table_new(g_str_hash, g_str_equal);
    g_autoptr(GHashTable) images = NULL;
    StatusPage page = {.now = (double)g_get_real_time() / G_USEC_PER_SEC};

    for (guint i = 0; i < N_REQS; i++)
        reqs[i] = request(cmds[i]);
    json_object_set_int_member(reqs[REQ_EVENTS], "limit",
                               STATUS_EVENTS_ROWS_MAX);
    if (manager_control_read(m, reqs, N_REQS, replies, &err)) {
        fill_clones(replies[REQ_CLONES], placed, clones);
        fill_services(replies[REQ_SERVICES], placed, services);
        images = host_images(replies[REQ_IMAGES]);
        fill_hosts(replies[REQ_HOSTS], images, hosts);
        fill_events(replies[REQ_EVENTS], events);
    } else {
        page.error = err->message;
    }
    page.services = (const StatusService *)services->data;
    page.n_services = services->len;
    page.clones = (const StatusClone *)clones->data;
    page.n_clones = clones->len;
    page.hosts = (const StatusHost *)hosts->data;
    page.n_hosts = hosts->len;
    page.events = (const StatusEvent *)events->data;
    page.n_events = events->len;
    status_page_render(&page, out);
    for (guint i = 0; i < N_REQS; i++) {
        json_object_unref(reqs[i]);
        if (replies[i])
            json_object_unref(replies[i]);
    }
}
