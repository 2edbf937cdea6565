/*
 * agent-commands.c: the site manager's commands, run on this host
 * (docs/site-protocol.md): clone-create makes the command's image known
 * and served through the typed API of agent.h, then creates and starts the
 * clones through the clone library; clone-start serves the image and
 * starts clones that are shut off (a host's reboot); clone-destroy
 * removes clones.  The
 * link (agent-link.c) journals each outcome and acknowledges it.
 *
 * Threads: one command at a time, on the link's worker thread, which owns
 * the libvirt connection here (opened on the first command).
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <string.h>

#include "clone-host.h"
#include "json-util.h"
#include "manifest.h"
#include "spore-error.h"
#include "virt-detect.h"

#define DESTROY_TIMEOUT_S_DEFAULT 60
#define DESTROY_TIMEOUT_S_MAX     3600

struct AgentCommands {
    Agent *agent;                  /* borrowed */
    const AgentLinkConfig *config; /* borrowed: the link's */
    CloneHost *host;               /* the worker's libvirt connection */
    AgentSiteFetch fetch;          /* from the site manager */
};

AgentCommands *
agent_commands_new(Agent *agent, const AgentLinkConfig *config,
                   const AgentSiteFetch *fetch)
{
    AgentCommands *c = g_new0(AgentCommands, 1);

    c->agent = agent;
    c->config = config;
    c->fetch = *fetch;
    return c;
}

void
agent_commands_free(AgentCommands *c)
{
    if (!c)
        return;
    clone_host_free(c->host);
    g_free(c);
}

/*
 * image_index_of: the index of the command's image: inline (base64, from
 * a manager before index-get), else asked of the site manager; verified
 * against the id (its digest) before anything keeps it.
 */
static ImageIndex *
image_index_of(AgentCommands *c, const char *id, const char *b64,
               GError **error)
{
    g_autoptr(GBytes) bytes = NULL;
    g_autofree guint8 *data = NULL;
    gsize len = 0;

    if (b64) {
        data = g_base64_decode(b64, &len);
        return image_index_parse(data, len, id, error);
    }
    if (!(bytes = c->fetch.index(id, c->fetch.data, error)))
        return NULL;
    return image_index_parse(g_bytes_get_data(bytes, NULL),
                             g_bytes_get_size(bytes), id, error);
}

/*
 * site_profile_ready: when the create names the site's access profile of
 * image @id (@profile_id) and this host never booted the image nor keeps
 * that profile, get it from the site manager and keep it (a host's first
 * boot of an image prefetches it).  Without it the clone boots all the
 * same: a failure is logged, not returned.
 */
static void
site_profile_ready(AgentCommands *c, const char *id, const char *profile_id)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) chunks = NULL;
    g_autofree char *got = NULL;

    if (!profile_id ||
        !agent_image_wants_site_profile(c->agent, id, profile_id))
        return;
    if (!(chunks = c->fetch.profile(id, c->fetch.data, &got, &err)) ||
        !agent_image_set_site_profile(c->agent, id, chunks, got, &err))
        g_warning("image %.19s: no site profile to prefetch: %s", id,
                  err->message);
}

/*
 * image_ready: make the agent know and serve the command's image (known
 * here already, or its index inline or from the site manager, verified
 * before anything keeps it; its origins; the site's access profile,
 * inline or from the site manager, prefetched on a host that never booted
 * it); the export's URI, owned by the caller.
 */
static char *
image_ready(AgentCommands *c, JsonObject *image, GError **error)
{
    const char *id = json_util_get_string(image, "id", NULL);
    const char *b64 = json_util_get_string(image, "index", NULL);
    JsonArray *arr = json_util_get_array(image, "origins");
    g_autoptr(GPtrArray) origins = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) profile =
        json_util_chunk_numbers(json_object_get_member(image, "profile"));
    g_autoptr(ImageIndex) idx = NULL;
    g_autofree char *uri = NULL;
    bool known = false;

    if (!id || !arr || !g_str_has_prefix(id, "sha256:") ||
        strlen(id) != IMAGE_ID_CHARS) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the command's image lacks an id or origins");
        return NULL;
    }
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        const char *u = json_array_get_string_element(arr, i);

        if (u)
            g_ptr_array_add(origins, g_strdup(u));
    }
    g_ptr_array_add(origins, NULL);
    if (!b64 && !agent_image_add_known(c->agent, id, profile, &known, error)) {
        g_prefix_error(error, "image %s: ", id);
        return NULL;
    }
    if (!known &&
        (!(idx = image_index_of(c, id, b64, error)) ||
         !agent_image_add(c->agent, idx, (const char *const *)origins->pdata,
                          profile, NULL, error))) {
        g_prefix_error(error, "image %s: ", id);
        return NULL;
    }
    site_profile_ready(c, id, json_util_get_string(image, "profile_id", NULL));
    if (!agent_image_serve(c->agent, id, &uri, error)) {
        g_prefix_error(error, "image %s: ", id);
        return NULL;
    }
    return g_steal_pointer(&uri);
}

static CloneHost *
worker_host(AgentCommands *c, GError **error)
{
    CloneHostConfig cfg = {
        .uri = c->config->libvirt_uri,
        .pool = c->config->pool,
        .pool_dir = c->config->pool_dir,
        .console_dir = c->config->console_dir,
        .inspect_cache = c->config->inspect_cache,
        .owner = c->config->host_name,
    };

    if (!c->host)
        c->host = clone_host_open(&cfg, error);
    return c->host;
}

static ManifestHypervisor
virt_for(AgentCommands *c, const Manifest *mf)
{
    if (mf->vm.hypervisor != MANIFEST_HYPERVISOR_KVM)
        return mf->vm.hypervisor;
    if (c->config->virt_type)
        return g_str_equal(c->config->virt_type, "qemu")
                   ? MANIFEST_HYPERVISOR_QEMU
                   : MANIFEST_HYPERVISOR_KVM;
    return spore_kvm_works() ? MANIFEST_HYPERVISOR_KVM
                             : MANIFEST_HYPERVISOR_QEMU;
}

static bool
run_create(AgentCommands *c, JsonObject *cmd, GString *summary, GError **error)
{
    const char *text = json_util_get_string(cmd, "manifest", NULL);
    const char *service = json_util_get_string(cmd, "service", NULL);
    JsonNode *image = json_object_get_member(cmd, "image");
    JsonNode *idx = json_object_get_member(cmd, "indexes");
    g_autoptr(Manifest) mf = NULL;
    g_autofree char *uri = NULL;
    g_autofree guint *indexes = NULL;
    g_autofree CloneCreateOutcome *outcomes = NULL;
    CloneCreateRequest req = {0};
    CloneHost *host;
    JsonArray *arr;
    guint n;

    if (!text || !service || !image || !JSON_NODE_HOLDS_OBJECT(image) || !idx ||
        !JSON_NODE_HOLDS_ARRAY(idx)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "a clone-create command needs manifest, service, image "
                    "and indexes");
        return false;
    }
    mf = manifest_parse_data(text, strlen(text), NULL, error);
    if (!mf)
        return false;
    if (!g_str_equal(mf->name, service)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the command is for service '%s' but its manifest is "
                    "'%s'",
                    service, mf->name);
        return false;
    }
    arr = json_node_get_array(idx);
    n = json_array_get_length(arr);
    if (n == 0 || n > mf->scaling.max) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "%u clone indexes for a service of at most %u", n,
                    mf->scaling.max);
        return false;
    }
    indexes = g_new0(guint, n);
    outcomes = g_new0(CloneCreateOutcome, n);
    for (guint i = 0; i < n; i++) {
        gint64 v = json_array_get_int_element(arr, i);

        if (v < 0 || v >= mf->scaling.max) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "clone index %" G_GINT64_FORMAT " out of range", v);
            return false;
        }
        indexes[i] = (guint)v;
    }
    uri = image_ready(c, json_node_get_object(image), error);
    if (!uri)
        return false;
    host = worker_host(c, error);
    if (!host)
        return false;
    req.manifest = mf;
    req.indexes = indexes;
    req.n_indexes = n;
    req.backing = uri;
    /* the manifest's <image format> is the master's format (the image's
     * registered "format" is raw unless the request said otherwise) */
    req.backing_format = NULL;
    req.image_id =
        json_util_get_string(json_node_get_object(image), "id", NULL);
    req.generation = (guint64)json_util_get_int(cmd, "generation", 0);
    req.host_name = c->config->host_name;
    req.virt = virt_for(c, mf);
    req.start = true;
    if (!clone_host_create(host, &req, outcomes, error))
        return false;
    for (guint i = 0; i < n; i++)
        g_string_append_printf(
            summary, "%s%s-%u %s", i ? ", " : "", mf->name, indexes[i],
            outcomes[i] == CLONE_CREATED ? "created" : "existed");
    return true;
}

static bool
run_destroy(AgentCommands *c, JsonObject *cmd, GString *summary, GError **error)
{
    JsonNode *names = json_object_get_member(cmd, "names");
    guint timeout = (guint)CLAMP(
        json_util_get_int(cmd, "timeout", DESTROY_TIMEOUT_S_DEFAULT), 0,
        DESTROY_TIMEOUT_S_MAX);
    CloneHost *host;
    JsonArray *arr;
    bool ok = true;

    if (!names || !JSON_NODE_HOLDS_ARRAY(names)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "a clone-destroy command needs names");
        return false;
    }
    host = worker_host(c, error);
    if (!host)
        return false;
    arr = json_node_get_array(names);
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        const char *name = json_array_get_string_element(arr, i);
        g_autoptr(GError) err = NULL;
        CloneDestroyOutcome outcome;

        if (!name)
            continue;
        if (!clone_host_destroy(host, name, timeout, &outcome, &err)) {
            if (ok)
                g_propagate_error(error, g_steal_pointer(&err));
            ok = false;
            continue;
        }
        g_string_append_printf(summary, "%s%s %s", summary->len ? ", " : "",
                               name,
                               outcome == CLONE_ABSENT      ? "absent"
                               : outcome == CLONE_DESTROYED ? "powered off"
                                                            : "removed");
    }
    return ok;
}

/* run_start: the image served, then each clone of "clones" ({name,
 * uuid}) started if shut off, on its existing overlay */
static bool
run_start(AgentCommands *c, JsonObject *cmd, GString *summary, GError **error)
{
    JsonObject *image = json_util_get_object(cmd, "image");
    JsonArray *clones = json_util_get_array(cmd, "clones");
    g_autofree char *uri = NULL;
    CloneHost *host;

    if (!image || !clones) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "a clone-start command needs image and clones");
        return false;
    }
    uri = image_ready(c, image, error);
    if (!uri || !(host = worker_host(c, error)))
        return false;
    for (guint i = 0; i < json_array_get_length(clones); i++) {
        JsonObject *o = json_array_get_object_element(clones, i);
        const char *name = json_util_get_string(o, "name", NULL);
        bool started = false;

        if (!name)
            continue;
        if (!clone_host_start(host, name, json_util_get_string(o, "uuid", NULL),
                              &started, error))
            return false;
        g_string_append_printf(summary, "%s%s %s", summary->len ? ", " : "",
                               name, started ? "started" : "was running");
    }
    return true;
}

bool
agent_commands_run(AgentCommands *c, JsonObject *cmd, GString *summary,
                   GError **error)
{
    const char *op = json_util_get_string(cmd, "op", NULL);

    if (g_strcmp0(op, "clone-create") == 0)
        return run_create(c, cmd, summary, error);
    if (g_strcmp0(op, "clone-destroy") == 0)
        return run_destroy(c, cmd, summary, error);
    if (g_strcmp0(op, "clone-start") == 0)
        return run_start(c, cmd, summary, error);
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, "unknown command '%s'",
                op ? op : "");
    return false;
}
