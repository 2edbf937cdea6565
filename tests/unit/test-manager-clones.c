/*
 * test-manager-clones.c: spored in-process, with a fake agent speaking the
 * site protocol over loopback (CURVE, a DEALER as spore-agent has), and
 * its control socket: clone states tell the truth.
 *
 *   - a clone being removed shows as "deleting" until its host stops
 *     reporting it;
 *   - right after a restart, before its host reports, a clone is
 *     "unknown", not "creating", and the service's running count is null,
 *     not 0;
 *   - the scaling engine does not evaluate a service before its hosts
 *     reported after a restart (requests per running clone would jump);
 *   - a scale to the current count does not restart the cooldown;
 *   - a new generation replaces the clones within <update>'s bounds; a
 *     failed create stops it with the old clones running, rollback keeps
 *     them; a clone reported shut off is started again;
 *   - a service of more clones than one pass commands is commanded over
 *     passes that follow at once, each clone once;
 *   - each host is told the other's peer server and key;
 *   - a create names its image without the index, which a host asks for
 *     (index-get) and gets in slices that add up to the registered one;
 *   - and the digest of the site's access profile, which a host asks for
 *     (profile-get); a profile over the wire's bound is not kept.
 *
 * Every wait is for a condition; PUMP_TRIES_MAX only stops a broken
 * manager from hanging the suite.
 *
 * Meson runs it twice: manager-clones (SQLite) and manager-clones-pg
 * (the state on PostgreSQL: tests/pg-lib.sh, test-state-util.h).
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include <zmq.h>

#include "image-index.h"
#include "json-util.h"
#include "manager-private.h"
#include "profile.h"
#include "test-state-util.h"
#include "test-util.h"
#include "wire.h"

#define PUMP_SLEEP_US  10000
#define PUMP_TRIES_MAX 6000 /* a minute of 10 ms turns */
#define REPORT_EVERY   20   /* turns between the fake agent's reports */

typedef struct {
    const char *name;
    void *ctx, *sock;
    GPtrArray *clones;      /* JsonObject: what it reports */
    bool silent;            /* sends nothing (a host not reported yet) */
    bool hold_destroys;     /* leaves clone-destroy commands unanswered */
    bool no_reports;        /* reads and acknowledges, but does not report */
    guint creates;          /* clones created */
    guint duplicates;       /* creates of a clone it already had */
    GPtrArray *held;        /* JsonObject: the held destroys */
    gint64 fail_generation; /* creates of it fail (0: none) */
    guint turn;
    guint cpus; /* its hello's capacity (0: 4 CPUs, 8 GiB) */
    guint64 memory_kib;
    guint create_cmds;          /* clone-create commands executed */
    guint create_max;           /* the most clones one of them created */
    JsonArray *peers;           /* of the last "peers" message */
    GHashTable *epochs;         /* "TYPE EPOCH" of every message read (EPOCH 0:
                         * none), when not NULL */
    guint creates_with_index;   /* clone-create commands carrying an index */
    JsonObject *answer;         /* the last "index" or "profile" message */
    guint creates_with_profile; /* clone-create commands carrying a profile */
    char *profile_id;           /* the last create's image's profile_id */
} FakeAgent;

static char *dir;
static ManagerConfig config;
static Manager *m;
static FakeAgent agent;  /* hv1 */
static FakeAgent agent2; /* hv2, connected by the tests that need it */
static FakeAgent *cur;   /* the one the agent_* functions act for */

static void
agent_send(JsonObject *msg)
{
    g_autofree char *text = json_util_to_text(msg, false);

    zmq_send(cur->sock, text, strlen(text), ZMQ_DONTWAIT);
}

static void
agent_hello(void)
{
    g_autoptr(JsonObject) hello = wire_new("hello");
    JsonObject *cap = json_object_new();

    json_object_set_string_member(hello, "host", cur->name);
    json_object_set_string_member(hello, "boot", "fake-boot");
    {
        g_autofree char *peer =
            g_strdup_printf("tcp://127.0.0.1:%u", 20000 + (cur == &agent2));

        json_object_set_string_member(hello, "peer_endpoint", peer);
    }
    json_object_set_int_member(cap, "cpus", cur->cpus ? cur->cpus : 4);
    json_object_set_int_member(
        cap, "memory_kib", cur->memory_kib ? cur->memory_kib : 8 * 1024 * 1024);
    json_object_set_object_member(hello, "capacity", cap);
    agent_send(hello);
}

static void
agent_report(void)
{
    g_autoptr(JsonObject) report = wire_new("report");
    JsonArray *arr = json_array_new();

    for (guint i = 0; i < cur->clones->len; i++)
        json_array_add_object_element(arr,
                                      json_object_ref(cur->clones->pdata[i]));
    json_object_set_array_member(report, "clones", arr);
    json_object_set_array_member(report, "images", json_array_new());
    json_object_set_int_member(report, "time_ms",
                               g_get_monotonic_time() / 1000);
    agent_send(report);
}

static void
agent_ack(gint64 id)
{
    g_autoptr(JsonObject) ack = wire_new("ack");

    json_object_set_int_member(ack, "id", id);
    json_object_set_boolean_member(ack, "ok", TRUE);
    json_object_set_string_member(ack, "summary", "fake");
    agent_send(ack);
}

/* agent_create: what spore-agent would define, reported running */
static void
agent_create(JsonObject *cmd)
{
    const char *text = json_util_get_string(cmd, "manifest", "");
    g_autoptr(Manifest) mf =
        manifest_parse_data(text, strlen(text), NULL, NULL);
    JsonObject *image = json_object_get_object_member(cmd, "image");
    JsonArray *idx = json_object_get_array_member(cmd, "indexes");
    gint64 gen = json_util_get_int(cmd, "generation", 0);

    cr_assert(mf);
    cur->create_cmds++;
    cur->creates_with_index += json_object_has_member(image, "index");
    cur->creates_with_profile += json_object_has_member(image, "profile");
    g_free(cur->profile_id);
    cur->profile_id = g_strdup(json_util_get_string(image, "profile_id", NULL));
    cur->create_max = MAX(cur->create_max, json_array_get_length(idx));
    for (guint i = 0; i < json_array_get_length(idx); i++) {
        guint index = (guint)json_array_get_int_element(idx, i);
        JsonObject *c = json_object_new();
        g_autofree char *uuid = clone_uuid(
            mf, index, json_util_get_string(image, "id", ""), (guint64)gen);
        g_autofree char *name = manifest_clone_name(mf, index);
        bool had = false;

        for (guint k = 0; k < cur->clones->len; k++)
            had |= g_str_equal(
                json_util_get_string(cur->clones->pdata[k], "name", ""), name);
        /* idempotent, as spore-agent is: a re-sent create changes nothing
         * (spore-agent answers "existed", after libvirt work) */
        if (had) {
            cur->duplicates++;
            json_object_unref(c);
            continue;
        }
        cur->creates++;
        json_object_set_string_member(c, "name", name);
        json_object_set_string_member(c, "uuid", uuid);
        json_object_set_string_member(c, "service", mf->name);
        json_object_set_int_member(c, "index", index);
        json_object_set_int_member(c, "generation", gen);
        json_object_set_string_member(c, "state", "running");
        g_ptr_array_add(cur->clones, c);
    }
}

static void
agent_destroy(JsonObject *cmd)
{
    JsonArray *names = json_object_get_array_member(cmd, "names");

    for (guint n = 0; n < json_array_get_length(names); n++) {
        const char *name = json_array_get_string_element(names, n);

        for (guint i = 0; i < cur->clones->len; i++) {
            if (g_str_equal(
                    json_util_get_string(cur->clones->pdata[i], "name", ""),
                    name)) {
                g_ptr_array_remove_index(cur->clones, i);
                break;
            }
        }
    }
    agent_ack(json_util_get_int(cmd, "id", -1));
}

static void
agent_fail(gint64 id, const char *error)
{
    g_autoptr(JsonObject) ack = wire_new("ack");

    json_object_set_int_member(ack, "id", id);
    json_object_set_boolean_member(ack, "ok", FALSE);
    json_object_set_string_member(ack, "error", error);
    agent_send(ack);
}

/* agent_start: the clones of a clone-start, running again */
static void
agent_start(JsonObject *cmd)
{
    JsonArray *arr = json_object_get_array_member(cmd, "clones");

    for (guint n = 0; n < json_array_get_length(arr); n++) {
        const char *name = json_util_get_string(
            json_array_get_object_element(arr, n), "name", "");

        for (guint i = 0; i < cur->clones->len; i++) {
            JsonObject *c = cur->clones->pdata[i];

            if (g_str_equal(json_util_get_string(c, "name", ""), name))
                json_object_set_string_member(c, "state", "running");
        }
    }
    agent_ack(json_util_get_int(cmd, "id", -1));
}

static void
agent_handle(JsonObject *msg)
{
    const char *type = json_util_get_string(msg, "type", "");
    const char *op = json_util_get_string(msg, "op", "");

    if (cur->epochs)
        g_hash_table_add(cur->epochs,
                         g_strdup_printf("%s %" G_GINT64_FORMAT, type,
                                         json_util_get_int(msg, "epoch", 0)));
    if (g_str_equal(type, "who")) {
        agent_hello();
    } else if (g_str_equal(type, "index")) {
        g_clear_pointer(&cur->answer, json_object_unref);
        cur->answer = json_object_ref(msg);
    } else if (g_str_equal(type, "profile")) {
        g_clear_pointer(&cur->answer, json_object_unref);
        cur->answer = json_object_ref(msg);
    } else if (g_str_equal(type, "peers")) {
        g_clear_pointer(&cur->peers, json_array_unref);
        cur->peers = json_array_ref(json_object_get_array_member(msg, "peers"));
    } else if (g_str_equal(type, "cmd") && g_str_equal(op, "clone-create") &&
               json_util_get_int(msg, "generation", 0) ==
                   cur->fail_generation) {
        agent_fail(json_util_get_int(msg, "id", -1),
                   "cannot write '/etc/hostname/x': Not a directory");
    } else if (g_str_equal(type, "cmd") && g_str_equal(op, "clone-start")) {
        agent_start(msg);
    } else if (g_str_equal(type, "cmd") && g_str_equal(op, "clone-create")) {
        agent_create(msg);
        agent_ack(json_util_get_int(msg, "id", -1));
    } else if (g_str_equal(type, "cmd") && g_str_equal(op, "clone-destroy")) {
        if (cur->hold_destroys)
            g_ptr_array_add(cur->held, json_object_ref(msg));
        else
            agent_destroy(msg);
    }
}

/* agent_turn: read what the manager sent; report now and then */
static void
agent_turn(void)
{
    zmq_msg_t frame;

    zmq_msg_init(&frame);
    while (!cur->silent && zmq_msg_recv(&frame, cur->sock, ZMQ_DONTWAIT) >= 0) {
        g_autoptr(JsonObject) msg =
            wire_parse(zmq_msg_data(&frame), zmq_msg_size(&frame), NULL);

        if (msg)
            agent_handle(msg);
    }
    zmq_msg_close(&frame);
    if (!cur->silent && cur->turn++ % REPORT_EVERY == 0 && !cur->no_reports)
        agent_report();
}

typedef bool (*Condition)(gpointer data);

/* pump: run the manager's loop and the agent until @cond holds */
static bool
pump(Condition cond, gpointer data)
{
    for (int i = 0; i < PUMP_TRIES_MAX; i++) {
        while (g_main_context_iteration(NULL, FALSE))
            ;
        cur = &agent;
        agent_turn();
        if (agent2.sock) {
            cur = &agent2;
            agent_turn();
        }
        if (cond(data))
            return true;
        g_usleep(PUMP_SLEEP_US);
    }
    return false;
}

typedef struct {
    JsonObject *request;
    JsonObject *reply;
    gint done;
} Call;

static gpointer
call_thread(gpointer data)
{
    Call *c = data;
    g_autofree char *path =
        g_build_filename(config.run_dir, "control.sock", NULL);
    g_autoptr(GError) err = NULL;

    c->reply = control_call("the site manager", path, c->request, &err);
    cr_assert(c->reply, "%s", err ? err->message : "");
    g_atomic_int_set(&c->done, 1);
    return NULL;
}

static bool
call_done(gpointer data)
{
    return g_atomic_int_get(&((Call *)data)->done) != 0;
}

/* control: a control command answered while the loop runs; the reply */
static JsonObject *
control(const char *json)
{
    g_autoptr(JsonParser) p = json_parser_new();
    Call c = {0};
    GThread *t;

    cr_assert(json_parser_load_from_data(p, json, -1, NULL));
    c.request = json_node_get_object(json_parser_get_root(p));
    t = g_thread_new("control", call_thread, &c);
    cr_assert(pump(call_done, &c), "no reply to %s", json);
    g_thread_join(t);
    return c.reply;
}

static JsonObject *
control_ok(const char *json)
{
    JsonObject *r = control(json);

    cr_assert(json_util_get_bool(r, "ok", false), "%s: %s", json,
              json_util_get_string(r, "error", ""));
    return r;
}

/* clone_state: the state clone-list gives @name, or NULL when absent */
static char *
clone_state(const char *name)
{
    g_autoptr(JsonObject) r = control_ok("{\"cmd\": \"clone-list\"}");
    JsonArray *arr = json_object_get_array_member(r, "clones");

    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonObject *c = json_array_get_object_element(arr, i);

        if (g_str_equal(json_util_get_string(c, "name", ""), name))
            return g_strdup(json_util_get_string(c, "state", ""));
    }
    return NULL;
}

static bool
clone_is(gpointer data)
{
    const char **want = data; /* {name, state or NULL for absent} */
    g_autofree char *state = clone_state(want[0]);

    return g_strcmp0(state, want[1]) == 0;
}

static void
wait_clone(const char *name, const char *state)
{
    const char *want[] = {name, state};

    cr_assert(pump(clone_is, want), "%s never became %s", name,
              state ? state : "absent");
}

static JsonObject *
service(void)
{
    g_autoptr(JsonObject) r =
        control_ok("{\"cmd\": \"service-show\", \"name\": \"web\"}");

    return json_object_ref(json_object_get_object_member(r, "service"));
}

static void
manager_start(void)
{
    g_autoptr(GError) err = NULL;

    m = manager_new(&config, 0, &err);
    cr_assert(m, "%s", err ? err->message : "");
}

/* agent_connect: @a as host @name, its key accepted (hosts_dir) */
static void
agent_connect(FakeAgent *a, const char *name)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *adir = g_build_filename(dir, name, NULL);
    g_autofree char *file = g_strdup_printf("%s.pub", name);
    g_autofree char *pub = g_build_filename(config.hosts_dir, file, NULL);
    WireKeys keys;
    int zero = 0;

    g_mkdir_with_parents(adir, 0700);
    cr_assert(wire_keys_load_or_create(adir, &keys, &err), "%s",
              err ? err->message : "");
    cr_assert(g_file_set_contents(pub, keys.public_key, -1, NULL));
    a->name = name;
    a->ctx = zmq_ctx_new();
    a->sock = zmq_socket(a->ctx, ZMQ_DEALER);
    zmq_setsockopt(a->sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(a->sock, ZMQ_CURVE_SERVERKEY, manager_public_key(m),
                   WIRE_KEY_CHARS);
    zmq_setsockopt(a->sock, ZMQ_CURVE_PUBLICKEY, keys.public_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(a->sock, ZMQ_CURVE_SECRETKEY, keys.secret_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(a->sock, ZMQ_ROUTING_ID, name, strlen(name));
    cr_assert_eq(zmq_connect(a->sock, config.listen), 0);
    a->clones =
        g_ptr_array_new_with_free_func((GDestroyNotify)json_object_unref);
    a->held = g_ptr_array_new_with_free_func((GDestroyNotify)json_object_unref);
    cur = a;
    agent_hello();
}

static void
agent_disconnect(FakeAgent *a)
{
    if (!a->sock)
        return;
    zmq_close(a->sock);
    zmq_ctx_term(a->ctx);
    g_clear_pointer(&a->peers, json_array_unref);
    g_clear_pointer(&a->answer, json_object_unref);
    g_free(a->profile_id);
    g_ptr_array_unref(a->clones);
    g_ptr_array_unref(a->held);
    memset(a, 0, sizeof(*a));
}

static void
setup(void)
{
    dir = g_dir_make_tmp("spore-mclones-XXXXXX", NULL);
    config.state_dir = g_build_filename(dir, "state", NULL);
    if (test_state_backend() == STATE_BACKEND_POSTGRESQL) {
        config.state_backend = g_strdup("postgresql");
        config.state_dsn = test_state_pg_dsn_new();
    }
    config.run_dir = g_build_filename(dir, "run", NULL);
    config.listen =
        g_strdup_printf("tcp://127.0.0.1:%u", test_free_port_pair());
    config.hosts_dir = g_build_filename(dir, "hosts.d", NULL);
    config.lost_after_s = 60;
    config.resend_s = 5;
    config.shutdown_timeout_s = 60;
    g_mkdir_with_parents(config.hosts_dir, 0700);
    manager_start();
    agent_connect(&agent, "hv1");
}

static void
teardown(void)
{
    manager_free(m);
    agent_disconnect(&agent);
    agent_disconnect(&agent2);
    test_rm_rf(dir);
    g_free(dir);
    g_free(config.state_dir);
    g_clear_pointer(&config.state_backend, g_free);
    g_clear_pointer(&config.state_dsn, g_free);
    g_free(config.run_dir);
    g_free(config.listen);
    g_free(config.hosts_dir);
}

/* submit_manifest: submit service web of @memory_mib MiB, its image
 * @image, with @extra in the service element */
static JsonObject *
submit_manifest(const char *image, guint memory_mib, const char *extra)
{
    g_autofree char *xml = g_strdup_printf(
        "<service xmlns=\"urn:spore:manifest:1\" name=\"web\">"
        "<image name=\"img\"><origin url=\"file://%s\"/></image>"
        "<vm><vcpus>1</vcpus><memory unit=\"MiB\">%u</memory></vm>"
        "<scaling min=\"1\" max=\"3\" initial=\"2\" cooldown=\"120s\">"
        "<rule metric=\"requests\" above=\"100\" add=\"1\"/>"
        "</scaling>%s</service>",
        image, memory_mib, extra);
    g_autoptr(JsonObject) s = json_object_new();
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *submit = NULL;
    JsonNode *node;

    json_object_set_string_member(s, "cmd", "submit");
    json_object_set_string_member(s, "manifest", xml);
    node = json_node_init_object(json_node_alloc(), json_object_ref(s));
    json_generator_set_root(gen, node);
    submit = json_generator_to_data(gen, NULL);
    json_node_unref(node);
    return control_ok(submit);
}

/* submit_two: a service "web" of 2 clones with a requests rule */
static void
submit_two(void)
{
    g_autofree char *image = g_build_filename(dir, "image.raw", NULL);
    g_autofree char *add = NULL;
    g_autofree char *submit = NULL;
    g_autofree char *xml = NULL;
    g_autoptr(JsonObject) r = NULL;
    g_autoptr(JsonObject) s = NULL;
    g_autoptr(JsonGenerator) gen = json_generator_new();
    JsonNode *node;

    cr_assert(g_file_set_contents(image, "spore test image\n", -1, NULL));
    add = g_strdup_printf("{\"cmd\": \"image-add\", \"name\": \"img\", "
                          "\"url\": \"file://%s\"}",
                          image);
    json_object_unref(control_ok(add));
    xml = g_strdup_printf(
        "<service xmlns=\"urn:spore:manifest:1\" name=\"web\">"
        "<image name=\"img\"><origin url=\"file://%s\"/></image>"
        "<vm><vcpus>1</vcpus><memory unit=\"MiB\">64</memory></vm>"
        "<scaling min=\"1\" max=\"3\" initial=\"2\" cooldown=\"120s\">"
        "<rule metric=\"requests\" above=\"100\" add=\"1\"/>"
        "</scaling></service>",
        image);
    s = json_object_new();
    json_object_set_string_member(s, "cmd", "submit");
    json_object_set_string_member(s, "manifest", xml);
    node = json_node_init_object(json_node_alloc(), s);
    json_generator_set_root(gen, node);
    submit = json_generator_to_data(gen, NULL);
    json_node_unref(node);
    r = control_ok(submit);
}

/* a service "web" of 2 clones with a requests rule, both running */
static void
two_running(void)
{
    submit_two();
    wait_clone("web-0", "running");
    wait_clone("web-1", "running");
}

TestSuite(manager_clones, .init = setup, .fini = teardown, .timeout = 240);

Test(manager_clones, shows_a_clone_being_removed_as_deleting)
{
    g_autoptr(JsonObject) r = NULL;

    two_running();
    agent.hold_destroys = true;
    r = control_ok("{\"cmd\": \"scale\", \"name\": \"web\", \"count\": 1}");
    wait_clone("web-1", "deleting");
    agent.hold_destroys = false;
    for (guint i = 0; i < agent.held->len; i++)
        agent_destroy(agent.held->pdata[i]);
    wait_clone("web-1", NULL);
    {
        g_autofree char *s0 = clone_state("web-0");

        cr_expect_str_eq(s0, "running");
    }
}

Test(manager_clones, a_scale_to_the_current_count_keeps_the_cooldown)
{
    g_autoptr(JsonObject) before = NULL;
    g_autoptr(JsonObject) after = NULL;
    g_autoptr(JsonObject) r = NULL;

    two_running();
    r = control_ok("{\"cmd\": \"scale\", \"name\": \"web\", \"count\": 2}");
    cr_expect_str_eq(json_util_get_string(r, "outcome", ""), "unchanged");
    after = service();
    cr_expect_eq(json_util_get_double(after, "cooldown_until", -1), 0.0,
                 "a no-op scale started a cooldown");
    json_object_unref(r);
    r = control_ok("{\"cmd\": \"scale\", \"name\": \"web\", \"count\": 3}");
    cr_expect_str_eq(json_util_get_string(r, "outcome", ""), "scaled");
    before = service();
    cr_expect_gt(json_util_get_double(before, "cooldown_until", 0), 0.0);
}

static bool
scaling_ran(gpointer data)
{
    return m->last_scaling > 0;
}

static bool
rule_has_value(gpointer data)
{
    g_autoptr(JsonObject) s = service();
    JsonArray *rules = json_object_get_array_member(s, "rules");
    JsonObject *rule = json_array_get_object_element(rules, 0);
    JsonNode *v = json_object_get_member(rule, "value");

    return v && !JSON_NODE_HOLDS_NULL(v);
}

Test(manager_clones, after_a_restart_tells_unknown_until_the_host_reports)
{
    g_autoptr(JsonObject) s = NULL;
    g_autoptr(JsonObject) r = NULL;
    g_autoptr(JsonObject) events = NULL;
    g_autofree char *s0 = NULL;
    JsonArray *arr;

    two_running();
    agent.silent = true;
    manager_free(m);
    manager_start();
    s0 = clone_state("web-0");
    cr_expect_str_eq(s0, "unknown", "not 'creating': it may well run");
    s = service();
    cr_expect(JSON_NODE_HOLDS_NULL(json_object_get_member(s, "running")),
              "running is not known yet, not 0");
    cr_expect_eq(json_util_get_int(s, "unknown", -1), 2);
    /* 150 requests: 75 per running clone, under the rule's 100; read
     * as none running, 150 per clone would scale up */
    r = control_ok("{\"cmd\": \"request\", \"name\": \"web\", "
                   "\"count\": 150}");
    cr_assert(pump(scaling_ran, NULL));
    agent.silent = false;
    wait_clone("web-0", "running");
    wait_clone("web-1", "running");
    cr_assert(pump(rule_has_value, NULL));
    json_object_unref(s);
    s = service();
    cr_expect_eq(json_util_get_int(s, "running", -1), 2);
    cr_expect_eq(json_util_get_int(s, "desired", -1), 2, "no false scale-up");
    arr = json_object_get_array_member(s, "rules");
    cr_expect_float_eq(json_util_get_double(
                           json_array_get_object_element(arr, 0), "value", -1),
                       75.0, 1e-9);
    events = control_ok("{\"cmd\": \"events\", \"service\": \"web\"}");
    arr = json_object_get_array_member(events, "events");
    for (guint i = 0; i < json_array_get_length(arr); i++)
        cr_expect_str_neq(
            json_util_get_string(json_array_get_object_element(arr, i), "kind",
                                 ""),
            "scaled-up");
}

static bool
both_reported(gpointer data)
{
    HostRuntime *h1 = g_hash_table_lookup(m->runtime, "hv1");
    HostRuntime *h2 = g_hash_table_lookup(m->runtime, "hv2");

    return h1 && h1->reported && h2 && h2->reported;
}

static char *
host_of(const char *name)
{
    g_autoptr(JsonObject) r = control_ok("{\"cmd\": \"clone-list\"}");
    JsonArray *arr = json_object_get_array_member(r, "clones");

    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonObject *c = json_array_get_object_element(arr, i);

        if (g_str_equal(json_util_get_string(c, "name", ""), name))
            return g_strdup(json_util_get_string(c, "host", ""));
    }
    return NULL;
}

Test(manager_clones, spreads_the_clones_of_a_service_over_the_hosts)
{
    g_autofree char *h0 = NULL;
    g_autofree char *h1 = NULL;

    agent_connect(&agent2, "hv2");
    cr_assert(pump(both_reported, NULL));
    two_running();
    h0 = host_of("web-0");
    h1 = host_of("web-1");
    cr_expect_str_neq(h0, h1, "both on %s", h0);
}

/* told_of: @a's last peer list names @name alone, with the endpoint of
 * its hello and a key */
static bool
told_of(FakeAgent *a, const char *name)
{
    JsonObject *p;

    if (!a->peers || json_array_get_length(a->peers) != 1)
        return false;
    p = json_array_get_object_element(a->peers, 0);
    return p && g_str_equal(json_util_get_string(p, "name", ""), name) &&
           g_str_equal(json_util_get_string(p, "endpoint", ""),
                       g_str_equal(name, "hv2") ? "tcp://127.0.0.1:20001"
                                                : "tcp://127.0.0.1:20000") &&
           strlen(json_util_get_string(p, "key", "")) == WIRE_KEY_CHARS;
}

static bool
peers_told(gpointer data)
{
    return told_of(&agent, "hv2") && told_of(&agent2, "hv1");
}

static bool
answer_came(gpointer data)
{
    return agent.answer != NULL;
}

/* ask: the fake agent sends @type ("index-get", "profile-get") for slice
 * @offset of image @id; the answer */
static JsonObject *
ask(const char *type, const char *id, gint64 offset)
{
    g_autoptr(JsonObject) req = wire_new(type);

    g_clear_pointer(&agent.answer, json_object_unref);
    json_object_set_string_member(req, "image", id);
    json_object_set_int_member(req, "offset", offset);
    cur = &agent;
    agent_send(req);
    cr_assert(pump(answer_came, NULL), "an answer to %s", type);
    return g_steal_pointer(&agent.answer);
}

static JsonObject *
index_get(const char *id, gint64 offset)
{
    return ask("index-get", id, offset);
}

/* register_zero_image: register image @name of @chunks all-zero 4 KiB
 * chunks (its size makes its id); its index */
static ImageIndex *
register_zero_image(const char *name, guint chunks)
{
    g_autofree char *path = g_strdup_printf("%s/%s.raw", dir, name);
    g_autoptr(GError) err = NULL;
    ImageIndex *idx;
    ImageRow row = {0};
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    cr_assert(fd >= 0 && ftruncate(fd, (off_t)chunks * 4096) == 0);
    close(fd);
    idx = image_index_build_file(path, 12, 2, &err);
    cr_assert(idx, "%s", err ? err->message : "");
    row.name = (char *)name;
    row.id = (char *)image_index_id(idx);
    row.format = "raw";
    row.origins = "[\"http://127.0.0.1:1/image.raw\"]";
    row.index = image_index_encoding(idx);
    row.size = (gint64)image_index_image_size(idx);
    row.chunk_size = (gint64)image_index_chunk_size(idx);
    cr_assert(state_image_put(m->db, &row, &err), "%s",
              err ? err->message : "");
    return idx;
}

/* A create names its image, not its index (1 MiB for a 2 GiB image, in
 * every command before); the host asks for it and gets it in slices of at
 * most 64 KiB that add up to the registered index, verified by its id;
 * a slice asked for again is answered from the answer made the first
 * time. */
Test(manager_clones, sends_an_image_index_in_slices_not_in_every_create)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = NULL;
    g_autoptr(GByteArray) got = g_byte_array_new();
    g_autoptr(JsonObject) none = NULL;
    const char *id;
    GBytes *want;
    guint slices = 0;

    two_running();
    cr_assert_gt(agent.create_cmds, 0u);
    cr_expect_eq(agent.creates_with_index, 0u,
                 "%u of %u creates carried the index", agent.creates_with_index,
                 agent.create_cmds);

    /* an image of 140,000 chunks of 4 KiB: an index of 4.3 MiB */
    idx = register_zero_image("big", 140000);
    id = image_index_id(idx);
    want = image_index_encoding(idx);
    cr_assert_gt(g_bytes_get_size(want), 4u * 1024 * 1024);

    while (got->len < g_bytes_get_size(want)) {
        g_autoptr(JsonObject) r = index_get(id, (gint64)got->len);
        const char *b64 = json_util_get_string(r, "data", NULL);
        g_autofree guint8 *slice = NULL;
        gsize len = 0;

        cr_assert(b64, "a slice at %u: %s", got->len,
                  json_util_get_string(r, "error", "no data"));
        cr_assert_eq(json_util_get_int(r, "offset", -1), (gint64)got->len);
        cr_assert_eq(json_util_get_int(r, "size", -1),
                     (gint64)g_bytes_get_size(want));
        slice = g_base64_decode(b64, &len);
        cr_assert(len > 0 && len <= 64u * 1024, "a slice of %zu", len);
        g_byte_array_append(got, slice, (guint)len);
        slices++;
    }
    cr_expect_eq(slices, (g_bytes_get_size(want) + 65535) / 65536);
    {
        guint64 before = m->stats.answered_at_once;
        g_autoptr(JsonObject) again = index_get(id, 65536);

        cr_expect_eq(json_util_get_int(again, "offset", -1), 65536);
        cr_expect_eq(m->stats.answered_at_once, before + 1,
                     "a slice asked for again is answered at once");
    }
    cr_assert_eq(got->len, g_bytes_get_size(want));
    cr_expect(memcmp(got->data, g_bytes_get_data(want, NULL), got->len) == 0,
              "the slices add up to the registered index");
    {
        g_autoptr(ImageIndex) back =
            image_index_parse(got->data, got->len, id, &err);

        cr_expect(back, "it verifies against the id: %s",
                  err ? err->message : "");
    }
    /* an id that is no registered image's: an error, named */
    none = index_get("sha256:00000000000000000000000000000000000000000000000"
                     "00000000000000000",
                     0);
    cr_expect(json_util_get_string(none, "error", NULL));
    cr_expect_not(json_object_has_member(none, "data"));
}

/* index_get_at_once: index_get of slice 0 of @idx's image; whether it was
 * answered on arrival (from an answer made before) */
static bool
index_get_at_once(ImageIndex *idx)
{
    guint64 before = m->stats.answered_at_once;
    g_autoptr(JsonObject) r = index_get(image_index_id(idx), 0);

    cr_assert(json_util_get_string(r, "data", NULL), "slice 0 of %.19s: %s",
              image_index_id(idx), json_util_get_string(r, "error", "no data"));
    return m->stats.answered_at_once == before + 1;
}

/* Services of different images submitted together: their hosts ask for
 * both indexes at once.  Each image's answers are kept (with one image
 * kept, every ask of the other read its index from the state and encoded
 * the slice anew: a thousand hosts' worth), and at most
 * SERVED_IMAGES_MAX images are, the one asked for least recently
 * forgotten first. */
Test(manager_clones, keeps_the_answers_of_several_images_and_forgets_the_oldest)
{
    ImageIndex *imgs[SERVED_IMAGES_MAX + 1];
    guint at_once = 0;

    two_running();
    for (guint i = 0; i <= SERVED_IMAGES_MAX; i++) {
        g_autofree char *name = g_strdup_printf("zero%u", i);

        imgs[i] = register_zero_image(name, 16 + i);
    }
    cr_expect_not(index_get_at_once(imgs[0]), "the first ask makes it");
    cr_expect_not(index_get_at_once(imgs[1]));
    for (guint r = 0; r < 3; r++) {
        at_once += index_get_at_once(imgs[0]);
        at_once += index_get_at_once(imgs[1]);
    }
    cr_expect_eq(at_once, 6u,
                 "%u of 6 asks of two images in turn answered "
                 "at once",
                 at_once);

    /* the others asked for after them: imgs[0], asked least recently, is
     * forgotten, the last is kept */
    for (guint i = 2; i <= SERVED_IMAGES_MAX; i++)
        cr_expect_not(index_get_at_once(imgs[i]));
    cr_expect_leq(g_hash_table_size(m->served), SERVED_IMAGES_MAX);
    cr_expect(index_get_at_once(imgs[SERVED_IMAGES_MAX]));
    cr_expect_not(index_get_at_once(imgs[0]),
                  "the image asked for least recently was kept");
    for (guint i = 0; i <= SERVED_IMAGES_MAX; i++)
        image_index_free(imgs[i]);
}

static JsonObject *
profile_get(const char *id, gint64 offset)
{
    return ask("profile-get", id, offset);
}

/* profile_fetch: @id's site profile, slice by slice as an agent asks
 * (each at most 8192 chunk numbers, all of one name); its name in
 * *ret_id */
static GArray *
profile_fetch(const char *id, char **ret_id)
{
    GArray *all = g_array_new(FALSE, FALSE, sizeof(guint64));
    gint64 total = -1;

    *ret_id = NULL;
    while (total < 0 || (gint64)all->len < total) {
        g_autoptr(JsonObject) r = profile_get(id, all->len);
        g_autoptr(GArray) slice =
            json_util_chunk_numbers(json_object_get_member(r, "chunks"));
        const char *name = json_util_get_string(r, "profile_id", "");

        cr_assert(slice, "a slice at %u: %s", all->len,
                  json_util_get_string(r, "error", "no chunks"));
        cr_assert_eq(json_util_get_int(r, "offset", -1), (gint64)all->len);
        cr_assert(slice->len > 0 && slice->len <= 8192, "a slice of %u",
                  slice->len);
        if (!*ret_id)
            *ret_id = g_strdup(name);
        cr_assert_str_eq(name, *ret_id, "every slice of one profile");
        total = json_util_get_int(r, "total", -1);
        g_array_append_vals(all, slice->data, slice->len);
    }
    cr_assert_eq((gint64)all->len, total);
    return all;
}

static bool
best_is(gpointer data)
{
    g_autofree char *chunks = NULL;
    g_autoptr(ImageRow) row = NULL;

    return state_image_get(m->db, "img", &row, NULL) && row &&
           state_profile_best(m->db, row->id, &chunks, NULL) && chunks &&
           g_str_equal(chunks, data);
}

static bool
other_profile_stored(gpointer data)
{
    g_autofree char *chunks = NULL;

    return state_profile_best(m->db, "sha256:other", &chunks, NULL) &&
           chunks != NULL;
}

/* A create names the site's access profile by its digest (up to 65,536
 * chunk numbers were in every command before); a host that wants it asks
 * for it (profile-get) and can check what comes against the name. */
Test(manager_clones, names_the_site_profile_in_a_create_and_sends_it_on_ask)
{
    static const guint64 best[] = {5, 1, 9, 2};
    g_autoptr(GArray) want = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autofree char *digest = NULL;
    g_autofree char *kept = NULL;
    g_autoptr(ImageRow) row = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) none = NULL;
    g_autoptr(JsonObject) got = NULL;
    g_autoptr(JsonObject) r = NULL;
    g_autoptr(JsonObject) msg = wire_new("profiles");
    g_autoptr(GArray) chunks = NULL;
    JsonArray *list = json_array_new();
    JsonObject *big = json_object_new();
    JsonObject *other = json_object_new();
    JsonArray *many = json_array_new();
    JsonArray *one = json_array_new();

    two_running();
    cr_expect_eq(agent.creates_with_profile, 0u);
    cr_expect_null(agent.profile_id, "no host sent a profile, none named");
    cr_assert(state_image_get(m->db, "img", &row, &err) && row, "%s",
              err ? err->message : "no image img");
    none = profile_get(row->id, 0);
    cr_expect(json_util_get_string(none, "error", NULL));
    cr_expect_not(json_object_has_member(none, "chunks"));

    /* hv1 booted it three times, hv2 once: hv1's is the site's */
    cr_assert(state_profile_put(m->db, "hv1", row->id, 3, "[5,1,9,2]", &err));
    cr_assert(state_profile_put(m->db, "hv2", row->id, 1, "[7]", &err));
    g_array_append_vals(want, best, G_N_ELEMENTS(best));
    digest = profile_digest(want);
    r = control_ok("{\"cmd\": \"scale\", \"name\": \"web\", \"count\": 3}");
    wait_clone("web-2", "running");
    cr_expect_eq(agent.creates_with_profile, 0u, "a create carried chunks");
    cr_expect_str_eq(agent.profile_id ? agent.profile_id : "", digest);
    got = profile_get(row->id, 0);
    cr_expect_str_eq(json_util_get_string(got, "profile_id", ""), digest);
    cr_expect_eq(json_util_get_int(got, "total", -1), 4);
    chunks = json_util_chunk_numbers(json_object_get_member(got, "chunks"));
    cr_assert(chunks && chunks->len == 4, "%u chunks",
              chunks ? chunks->len : 0);
    cr_expect(memcmp(chunks->data, best, sizeof(best)) == 0);

    /* a profile longer than the wire's bound is dropped, the rest of the
     * message kept */
    for (guint i = 0; i <= WIRE_PROFILE_CHUNKS_MAX; i++)
        json_array_add_int_element(many, i);
    json_object_set_string_member(big, "image", row->id);
    json_object_set_int_member(big, "boots", 9);
    json_object_set_array_member(big, "chunks", many);
    json_array_add_int_element(one, 1);
    json_object_set_string_member(other, "image", "sha256:other");
    json_object_set_int_member(other, "boots", 1);
    json_object_set_array_member(other, "chunks", one);
    json_array_add_object_element(list, big);
    json_array_add_object_element(list, other);
    json_object_set_array_member(msg, "profiles", list);
    cur = &agent;
    agent_send(msg);
    cr_assert(pump(other_profile_stored, NULL));
    cr_assert(state_profile_best(m->db, row->id, &kept, &err));
    cr_expect_str_eq(kept ? kept : "", "[5,1,9,2]");
}

/* A profile comes in slices of at most 8192 chunk numbers that add up to
 * the one named; the answers made are served again at once, until a host
 * sends a new profile of the image: then the new one, never the kept. */
Test(manager_clones, sends_a_profile_in_slices_and_never_a_stale_one)
{
    g_autoptr(ImageRow) row = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) want = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autoptr(GArray) got = NULL;
    g_autoptr(GArray) newer = NULL;
    g_autoptr(GString) text = g_string_new("[");
    g_autofree char *digest = NULL;
    g_autofree char *name = NULL;
    g_autofree char *name2 = NULL;
    g_autofree char *name3 = NULL;
    g_autoptr(JsonObject) past = NULL;
    g_autoptr(JsonObject) msg = wire_new("profiles");
    JsonArray *list = json_array_new();
    JsonObject *p = json_object_new();
    JsonArray *two = json_array_new();
    guint64 before;

    two_running();
    cr_assert(state_image_get(m->db, "img", &row, &err) && row);
    for (guint64 i = 0; i < 20000; i++) { /* 3 slices: 8192, 8192, 3616 */
        guint64 c = (i * 7919) % 40000;

        g_array_append_val(want, c);
        g_string_append_printf(text, "%s%" G_GUINT64_FORMAT, i ? "," : "", c);
    }
    g_string_append_c(text, ']');
    cr_assert(state_profile_put(m->db, "hv1", row->id, 2, text->str, &err));
    digest = profile_digest(want);
    got = profile_fetch(row->id, &name);
    cr_expect_str_eq(name, digest);
    cr_assert_eq(got->len, want->len);
    cr_expect(memcmp(got->data, want->data, want->len * 8) == 0);
    past = profile_get(row->id, 20001);
    cr_expect(json_util_get_string(past, "error", NULL), "an offset past "
                                                         "the end");

    /* asked again: the answers made the first time */
    before = m->stats.answered_at_once;
    g_array_unref(profile_fetch(row->id, &name2));
    cr_expect_str_eq(name2, digest);
    cr_expect_eq(m->stats.answered_at_once, before + 3);

    /* hv1 sends a profile of more boots: what is asked next is that */
    json_array_add_int_element(two, 8);
    json_array_add_int_element(two, 6);
    json_object_set_string_member(p, "image", row->id);
    json_object_set_int_member(p, "boots", 5);
    json_object_set_array_member(p, "chunks", two);
    json_array_add_object_element(list, p);
    json_object_set_array_member(msg, "profiles", list);
    cur = &agent;
    agent_send(msg);
    cr_assert(pump(best_is, "[8,6]"));
    newer = profile_fetch(row->id, &name3);
    cr_assert_eq(newer->len, 2u);
    cr_expect_eq(g_array_index(newer, guint64, 0), 8u);
    cr_expect_str_neq(name3, digest, "the kept profile was served");
}

Test(manager_clones, tells_each_host_the_other_peer_server)
{
    agent_connect(&agent2, "hv2");
    cr_assert(pump(both_reported, NULL));
    cr_assert(pump(peers_told, NULL), "hv1 told %u peers, hv2 %u",
              agent.peers ? json_array_get_length(agent.peers) : 0,
              agent2.peers ? json_array_get_length(agent2.peers) : 0);
}

/* event_kinds: the kinds of service web's events, in order, space-joined */
static char *
event_kinds(void)
{
    g_autoptr(JsonObject) r =
        control_ok("{\"cmd\": \"events\", \"service\": \"web\"}");
    JsonArray *arr = json_object_get_array_member(r, "events");
    GString *kinds = g_string_new(NULL);

    for (guint i = 0; i < json_array_get_length(arr); i++)
        g_string_append_printf(
            kinds, "%s ",
            json_util_get_string(json_array_get_object_element(arr, i), "kind",
                                 ""));
    return g_string_free(kinds, FALSE);
}

static bool
events_include(gpointer data)
{
    g_autofree char *kinds = event_kinds();

    return strstr(kinds, data) != NULL;
}

/* reported_paused: hv1's last report, as the manager holds it, has web-0
 * paused (the main loop runs in this thread: pump) */
static bool
reported_paused(gpointer data)
{
    HostRuntime *h = g_hash_table_lookup(m->runtime, "hv1");

    for (guint i = 0; h && h->clones && i < json_array_get_length(h->clones);
         i++) {
        JsonObject *c = json_array_get_object_element(h->clones, i);

        if (g_str_equal(json_util_get_string(c, "name", ""), "web-0"))
            return g_str_equal(json_util_get_string(c, "state", ""), "paused");
    }
    return false;
}

/* set_state: clone @name of the fake agent's report is in @state
 * (@reason) */
static void
set_state(const char *name, const char *state, const char *reason)
{
    for (guint i = 0; i < agent.clones->len; i++) {
        JsonObject *c = agent.clones->pdata[i];

        if (g_str_equal(json_util_get_string(c, "name", ""), name)) {
            json_object_set_string_member(c, "state", state);
            json_object_set_string_member(c, "reason", reason);
            return;
        }
    }
    cr_assert_fail("the fake agent has no clone %s", name);
}

/* the agent's "io_paused": it is resuming the clone, its resumes have not
 * held yet */
static void
set_io_paused(const char *name, bool on)
{
    for (guint i = 0; i < agent.clones->len; i++) {
        JsonObject *c = agent.clones->pdata[i];

        if (g_str_equal(json_util_get_string(c, "name", ""), name)) {
            if (on)
                json_object_set_boolean_member(c, "io_paused", true);
            else if (json_object_has_member(c, "io_paused"))
                json_object_remove_member(c, "io_paused");
            return;
        }
    }
    cr_assert_fail("the fake agent has no clone %s", name);
}

Test(manager_clones, says_when_a_clone_is_paused_by_an_io_error_and_runs_again)
{
    g_autofree char *before = NULL;
    g_autofree char *after = NULL;

    two_running();
    cur = &agent;
    set_state("web-0", "paused",
              "user"); /* virsh suspend: not spore's business */
    agent_report();
    cr_assert(pump(reported_paused, NULL), "the report was not taken");
    before = event_kinds();
    cr_expect_null(strstr(before, "clone-paused"), "events: %s", before);
    set_state("web-0", "paused", "ioerror");
    agent_report();
    cr_assert(pump(events_include, "clone-paused "), "no clone-paused event");
    agent_report(); /* the same state again: no second event */
    /* resumed while its retried read still waits, then paused again by
     * it: the same episode, as long as the agent says io_paused */
    set_state("web-0", "running", "unpaused");
    set_io_paused("web-0", true);
    agent_report();
    set_state("web-0", "paused", "ioerror");
    agent_report();
    set_state("web-0", "running", "unpaused");
    agent_report();
    set_io_paused("web-0", false); /* its resume held */
    agent_report();
    cr_assert(pump(events_include, "clone-resumed "), "no clone-resumed event");
    after = event_kinds();
    cr_expect_eq(strstr(strstr(after, "clone-paused ") + 1, "clone-paused "),
                 NULL, "two clone-paused events: %s", after);
    cr_expect_eq(strstr(strstr(after, "clone-resumed ") + 1, "clone-resumed "),
                 NULL, "two clone-resumed events: %s", after);
}

static bool
has_reported(gpointer data)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);

    return manager_host_clones(m, data) != NULL;
}

static bool
created(gpointer data)
{
    return agent.creates >= GPOINTER_TO_UINT(data);
}

static bool
passes_done(gpointer data)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);

    return m->stats.pass_count >= *(guint64 *)data;
}

Test(manager_clones, sends_no_second_create_between_an_ack_and_the_next_report)
{
    guint64 until;

    cr_assert(pump(has_reported, (gpointer) "hv1"), "hv1 never reported");
    agent.no_reports = true; /* acks, and reports nothing after them */
    submit_two();
    cr_assert(pump(created, GUINT_TO_POINTER(2)), "the creates never came");
    {
        g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);

        until = m->stats.pass_count + 4;
    }
    /* passes that see the creates acknowledged and no report showing
     * them: none may create them again */
    cr_assert(pump(passes_done, &until));
    cr_expect_eq(agent.duplicates, 0, "%u creates repeated", agent.duplicates);
    agent.no_reports = false;
    wait_clone("web-0", "running");
    wait_clone("web-1", "running");
    cr_expect_eq(agent.creates, 2);
    cr_expect_eq(agent.duplicates, 0);
}

/* ---- rolling updates --------------------------------------------------- */

typedef struct {
    guint min_running; /* the least the fake host ran, at any turn */
    guint max_clones;  /* the most clones it had */
    const char *state; /* the rollout state waited for */
} Watch;

static guint
running_on_agent(void)
{
    guint n = 0;

    for (guint i = 0; i < agent.clones->len; i++)
        n += g_str_equal(
            json_util_get_string(agent.clones->pdata[i], "state", ""),
            "running");
    return n;
}

/* rollout_reached: the rollout is in w->state; meanwhile the fake host's
 * running clones and clones are tracked */
static bool
rollout_reached(gpointer data)
{
    Watch *w = data;
    g_autoptr(JsonObject) s = NULL;
    JsonObject *ro;

    w->min_running = MIN(w->min_running, running_on_agent());
    w->max_clones = MAX(w->max_clones, agent.clones->len);
    s = service();
    ro = json_util_get_object(s, "rollout");
    return ro && g_str_equal(json_util_get_string(ro, "state", ""), w->state);
}

/* agent_clones_text: "name:generation:state ..." of the fake host */
static const char *
agent_clones_text(void)
{
    static char text[512];
    GString *s = g_string_new(NULL);

    for (guint i = 0; i < agent.clones->len; i++) {
        JsonObject *c = agent.clones->pdata[i];

        g_string_append_printf(s, "%s:%" G_GINT64_FORMAT ":%s ",
                               json_util_get_string(c, "name", ""),
                               json_util_get_int(c, "generation", 0),
                               json_util_get_string(c, "state", ""));
    }
    g_strlcpy(text, s->str, sizeof(text));
    g_string_free(s, TRUE);
    return text;
}

static gint64
generation_of(const char *name)
{
    for (guint i = 0; i < agent.clones->len; i++) {
        JsonObject *c = agent.clones->pdata[i];

        if (g_str_equal(json_util_get_string(c, "name", ""), name))
            return json_util_get_int(c, "generation", -1);
    }
    return -1;
}

Test(manager_clones, replaces_a_new_generation_without_fewer_running)
{
    g_autofree char *image = g_build_filename(dir, "image.raw", NULL);
    g_autoptr(JsonObject) r = NULL;
    g_autoptr(JsonObject) s = NULL;
    g_autofree char *kinds = NULL;
    Watch w = {.min_running = G_MAXUINT, .state = "done"};

    two_running();
    r = submit_manifest(image, 96, "");
    cr_expect_str_eq(json_util_get_string(r, "outcome", ""), "updated");
    cr_assert(pump(rollout_reached, &w), "the rollout never finished");
    cr_expect_geq(w.min_running, 2u, "only %u ran during the rollout",
                  w.min_running);
    cr_expect_leq(w.max_clones, 3u, "max-surge 1: %u clones", w.max_clones);
    s = service();
    cr_expect_eq(json_util_get_int(s, "generation", 0), 2);
    cr_expect_eq(json_util_get_int(s, "running", 0), 2);
    cr_expect_eq(agent.clones->len, 2u, "the old clones are gone");
    for (guint i = 0; i < agent.clones->len; i++)
        cr_expect_eq(json_util_get_int(agent.clones->pdata[i], "generation", 0),
                     2);
    kinds = event_kinds();
    cr_expect(strstr(kinds, "rollout-started ") &&
                  strstr(kinds, "rollout-step ") &&
                  strstr(kinds, "rollout-done "),
              "events: %s", kinds);
}

Test(manager_clones, max_unavailable_lets_one_go_first_without_surge)
{
    g_autofree char *image = g_build_filename(dir, "image.raw", NULL);
    g_autoptr(JsonObject) r = NULL;
    Watch w = {.min_running = G_MAXUINT, .state = "done"};

    two_running();
    r = submit_manifest(image, 96,
                        "<update max-unavailable=\"1\" max-surge=\"0\"/>");
    cr_assert(pump(rollout_reached, &w), "the rollout never finished");
    cr_expect_geq(w.min_running, 1u);
    cr_expect_leq(w.max_clones, 2u, "max-surge 0: %u clones", w.max_clones);
}

Test(manager_clones,
     a_failed_create_stops_the_rollout_and_rollback_keeps_the_old)
{
    g_autofree char *image = g_build_filename(dir, "image.raw", NULL);
    g_autoptr(JsonObject) r = NULL;
    g_autoptr(JsonObject) back = NULL;
    g_autoptr(JsonObject) s = NULL;
    Watch failed = {.min_running = G_MAXUINT, .state = "failed"};
    Watch done = {.min_running = G_MAXUINT, .state = "done"};
    JsonObject *ro;

    two_running();
    agent.fail_generation = 2;
    r = submit_manifest(image, 96, "");
    cr_assert(pump(rollout_reached, &failed), "the rollout never failed");
    s = service();
    ro = json_util_get_object(s, "rollout");
    cr_expect(strstr(json_util_get_string(ro, "reason", ""),
                     "hv1: cannot write '/etc/hostname/x'"),
              "reason: %s", json_util_get_string(ro, "reason", ""));
    cr_expect_eq(running_on_agent(), 2u, "the old clones run on (%s)",
                 agent_clones_text());
    cr_expect_eq(generation_of("web-0"), 1);
    cr_expect_eq(generation_of("web-1"), 1);
    back = control_ok("{\"cmd\": \"rollback\", \"name\": \"web\"}");
    cr_expect_eq(json_util_get_int(back, "generation", 0), 1);
    cr_expect_eq(json_util_get_int(back, "from_generation", 0), 2);
    cr_assert(pump(rollout_reached, &done), "the rollback never finished");
    cr_expect_geq(done.min_running, 2u);
    cr_expect_eq(generation_of("web-0"), 1, "the same clones");
    cr_expect_eq(generation_of("web-1"), 1);
    cr_expect_eq(agent.clones->len, 2u, "%s", agent_clones_text());
}

static bool
all_running(gpointer data)
{
    return running_on_agent() == GPOINTER_TO_UINT(data);
}

Test(manager_clones, starts_again_a_clone_its_host_reports_shut_off)
{
    two_running();
    cur = &agent;
    set_state("web-0", "shutoff", "");
    set_state("web-1", "shutoff", "");
    agent_report();
    cr_assert(pump(all_running, GUINT_TO_POINTER(2)),
              "the clones were not started again");
    cr_assert(pump(events_include, "clones-started "),
              "no clones-started event");
    wait_clone("web-0", "running");
}

/* ---- a big submit ------------------------------------------------------ */

/* manager-reconcile.c's budget: clones placed, and commanded, per pass */
#define PASS_CLONES_MAX 250

static bool
capacity_is(gpointer data)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&m->lock);
    g_autoptr(HostRow) row = NULL;

    return state_host_get(m->db, "hv1", &row, NULL) && row &&
           row->cpus == GPOINTER_TO_INT(data) &&
           manager_host_clones(m, "hv1") != NULL;
}

Test(manager_clones, commands_a_big_service_over_passes_each_clone_once)
{
    g_autofree char *image = g_build_filename(dir, "image.raw", NULL);
    g_autofree char *add = NULL;
    g_autoptr(JsonObject) r = NULL;
    const guint n = PASS_CLONES_MAX + 200;

    /* room for them all on hv1 (1 vCPU and 64 MiB each) */
    cur = &agent;
    agent.cpus = 256;
    agent.memory_kib = 64ull * 1024 * 1024;
    agent_hello();
    cr_assert(pump(capacity_is, GINT_TO_POINTER(256)), "no new capacity");
    cr_assert(g_file_set_contents(image, "spore test image\n", -1, NULL));
    add = g_strdup_printf("{\"cmd\": \"image-add\", \"name\": \"img\", "
                          "\"url\": \"file://%s\"}",
                          image);
    json_object_unref(control_ok(add));
    {
        g_autofree char *extra = NULL;
        g_autofree char *xml = g_strdup_printf(
            "<service xmlns=\"urn:spore:manifest:1\" name=\"web\">"
            "<image name=\"img\"><origin url=\"file://%s\"/></image>"
            "<vm><vcpus>1</vcpus><memory unit=\"MiB\">64</memory></vm>"
            "<scaling min=\"%u\" max=\"%u\" initial=\"%u\"/></service>",
            image, n, n, n);
        g_autoptr(JsonObject) s = json_object_new();
        g_autoptr(JsonGenerator) gen = json_generator_new();
        g_autofree char *submit = NULL;
        JsonNode *node;

        json_object_set_string_member(s, "cmd", "submit");
        json_object_set_string_member(s, "manifest", xml);
        node = json_node_init_object(json_node_alloc(), json_object_ref(s));
        json_generator_set_root(gen, node);
        submit = json_generator_to_data(gen, NULL);
        json_node_unref(node);
        r = control_ok(submit);
    }
    cr_assert(pump(created, GUINT_TO_POINTER(n)), "%u of %u created",
              agent.creates, n);
    /* one host: a pass's budget bounds its command (it is not split
     * further), the next pass commands the rest */
    cr_expect_geq(agent.create_cmds, 2, "%u create commands",
                  agent.create_cmds);
    cr_expect_leq(agent.create_max, PASS_CLONES_MAX, "a create of %u clones",
                  agent.create_max);
    cr_expect_eq(agent.creates, n);
    cr_expect_eq(agent.duplicates, 0, "%u creates repeated", agent.duplicates);
    wait_clone("web-0", "running");
    {
        g_autofree char *last = g_strdup_printf("web-%u", n - 1);

        wait_clone(last, "running");
    }
}

/* epochs_seen: hv1 was told "welcome 1", hv2 "peers 1", and one of
 * them "cmd 1" */
static bool
epochs_seen(gpointer data)
{
    (void)data;
    return g_hash_table_contains(agent.epochs, "welcome 1") &&
           g_hash_table_contains(agent2.epochs, "peers 1") &&
           (g_hash_table_contains(agent.epochs, "cmd 1") ||
            g_hash_table_contains(agent2.epochs, "cmd 1"));
}

/* epoch_list: @a's "TYPE EPOCH" set, sorted and space-joined */
static char *
epoch_list(FakeAgent *a)
{
    g_autoptr(GList) keys = g_hash_table_get_keys(a->epochs);
    GString *out = g_string_new(NULL);

    keys = g_list_sort(keys, (GCompareFunc)g_strcmp0);
    for (GList *k = keys; k; k = k->next)
        g_string_append_printf(out, "%s%s", out->len ? ", " : "",
                               (char *)k->data);
    return g_string_free(out, FALSE);
}

Test(manager_clones, a_manager_with_a_leader_epoch_sends_it_in_every_message)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) r = NULL;
    g_auto(LeaderRow) before = {0};
    g_autofree char *seen1 = NULL;
    g_autofree char *seen2 = NULL;
    gint64 epoch = 0;
    StateDb *db;
    bool held = false, seen;

    two_running();
    manager_free(m);
    /* what a standby does before it starts its manager (manager-leader.c) */
    db = manager_state_open(&config, &err);
    cr_assert(db, "%s", err ? err->message : "");
    cr_assert(state_leader_try_lock(db, &held, &err) && held, "%s",
              err ? err->message : "");
    cr_assert(state_leader_take(db, "test", "key", &before, &epoch, &err), "%s",
              err ? err->message : "");
    state_close(db);
    cr_assert_eq(epoch, 1);
    agent.epochs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    agent2.epochs =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    m = manager_new(&config, epoch, &err);
    cr_assert(m, "%s", err ? err->message : "");
    agent_connect(&agent2, "hv2");
    r = control_ok("{\"cmd\": \"scale\", \"name\": \"web\", \"count\": 3}");
    seen = pump(epochs_seen, NULL);
    seen1 = epoch_list(&agent);
    seen2 = epoch_list(&agent2);
    cr_expect(seen,
              "welcome, peers and a command with epoch 1: hv1 saw %s; "
              "hv2 saw %s",
              seen1, seen2);
    cr_expect_null(strstr(seen1, " 0"), "every message has epoch 1: %s", seen1);
    cr_expect_null(strstr(seen2, " 0"), "every message has epoch 1: %s", seen2);
    g_clear_pointer(&agent.epochs, g_hash_table_unref);
    g_clear_pointer(&agent2.epochs, g_hash_table_unref);
}

/* A registration of hv9 on the manager's registration socket */
typedef struct {
    void *ctx, *sock;
    char *state; /* of the last answer */
    gint64 asked;
} Registrar;

/* registrar_poll: read the answers; register again every 0.5 s */
static void
registrar_poll(Registrar *r)
{
    char buf[4096];
    int n;

    while ((n = zmq_recv(r->sock, buf, sizeof(buf) - 1, ZMQ_DONTWAIT)) > 0) {
        g_autoptr(JsonObject) reply = NULL;

        buf[n] = '\0';
        reply = wire_parse(buf, (gsize)n, NULL);
        g_free(r->state);
        r->state = g_strdup(json_util_get_string(reply, "state", "?"));
    }
    if (g_get_monotonic_time() - r->asked > G_USEC_PER_SEC / 2) {
        g_autoptr(JsonObject) msg = wire_new("register");
        g_autofree char *text = NULL;

        json_object_set_string_member(msg, "host", "hv9");
        text = json_util_to_text(msg, false);
        zmq_send(r->sock, text, strlen(text), ZMQ_DONTWAIT);
        r->asked = g_get_monotonic_time();
    }
}

static bool
registrar_answered(gpointer data)
{
    registrar_poll(data);
    return ((Registrar *)data)->state != NULL;
}

static bool
registrar_accepted(gpointer data)
{
    registrar_poll(data);
    return g_strcmp0(((Registrar *)data)->state, "accepted") == 0;
}

Test(manager_clones, accepts_a_key_written_into_hosts_dir_after_a_refusal)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *adir = g_build_filename(dir, "hv9", NULL);
    g_autofree char *pub = g_build_filename(config.hosts_dir, "hv9.pub", NULL);
    g_autofree char *endpoint = wire_register_endpoint(config.listen);
    Registrar r = {0};
    WireKeys keys;
    FILE *f;
    int zero = 0;

    g_mkdir_with_parents(adir, 0700);
    cr_assert(wire_keys_load_or_create(adir, &keys, &err), "%s",
              err ? err->message : "");
    /* the file exists, empty, when the manager reads the directory (a
     * shell's "> hv9.pub" before its key is written) */
    f = fopen(pub, "w");
    cr_assert(f);
    r.ctx = zmq_ctx_new();
    r.sock = zmq_socket(r.ctx, ZMQ_DEALER);
    zmq_setsockopt(r.sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(r.sock, ZMQ_CURVE_SERVERKEY, manager_public_key(m),
                   WIRE_KEY_CHARS);
    zmq_setsockopt(r.sock, ZMQ_CURVE_PUBLICKEY, keys.public_key,
                   WIRE_KEY_CHARS);
    zmq_setsockopt(r.sock, ZMQ_CURVE_SECRETKEY, keys.secret_key,
                   WIRE_KEY_CHARS);
    cr_assert_eq(zmq_connect(r.sock, endpoint), 0);
    cr_assert(pump(registrar_answered, &r), "no answer to a registration");
    cr_expect_str_eq(r.state, "pending", "its key is not there yet");
    /* now the key is written: the directory's mtime does not change */
    fputs(keys.public_key, f);
    fclose(f);
    cr_expect(pump(registrar_accepted, &r),
              "hv9's key in hosts_dir is accepted at a later registration "
              "(the last answer: %s)",
              r.state ? r.state : "none");
    g_free(r.state);
    zmq_close(r.sock);
    zmq_ctx_term(r.ctx);
}
