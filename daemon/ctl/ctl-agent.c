/*
 * ctl-agent.c: sporectl's commands for this host's agent, spore-agent, on
 * its control socket (--agent; docs/agent-control.md) — its images, their
 * shims, its peers, transfer plans (ctl.h).
 *
 * A request is {"command": NAME, ...} with NAME the command's name less
 * its "agent-" prefix; the reply's envelope is read by agent_finish.
 */
#include "ctl.h"

#include <string.h>

static JsonObject *
array_object(JsonArray *a, guint i)
{
    JsonNode *n = json_array_get_element(a, i);

    return JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static guint
array_length(JsonArray *a)
{
    return a ? json_array_get_length(a) : 0;
}

static char *
member_bytes(JsonObject *o, const char *member)
{
    return ctl_human_bytes((guint64)json_util_get_int(o, member, 0));
}

static void
print_image_line(JsonObject *im)
{
    JsonObject *bytes = json_util_get_object(im, "fetched_bytes");
    g_autofree char *size = member_bytes(im, "size");
    g_autofree char *origin = member_bytes(bytes, "origin");
    g_autofree char *peer = member_bytes(bytes, "peer");
    g_autofree char *local = member_bytes(bytes, "local");
    bool serving = json_util_get_bool(im, "serving", false);

    printf("%.19s  %9s  %5.1f%% cached  from origin %s, peers %s, local %s"
           "%s%s\n",
           json_util_get_string(im, "image", "-"), size,
           100.0 * json_util_get_double(im, "cached_fraction", 0), origin, peer,
           local, serving ? "  serving " : "",
           serving ? json_util_get_string(im, "uri", "") : "");
}

/* image-plan's reply: where the missing bytes would come from */
static void
print_plan(JsonObject *r)
{
    static const struct {
        const char *member, *label, *per_source;
    } rows[] = {
        {"cached_bytes", "cached here", NULL},
        {"zero_bytes", "zero (never fetched)", NULL},
        {"local_bytes", "copied from local images", NULL},
        {"peer_bytes", "from peers", "peers"},
        {"origin_via_peer_bytes", "from the origin, via a peer", "origin_via"},
        {"origin_bytes", "from the origin, by this host", NULL},
    };

    printf("%s\n", json_util_get_string(r, "image", "-"));
    for (guint k = 0; k < G_N_ELEMENTS(rows); k++) {
        g_autofree char *h = member_bytes(r, rows[k].member);
        JsonObject *per = rows[k].per_source
                              ? json_util_get_object(r, rows[k].per_source)
                              : NULL;
        g_autoptr(GList) names = per ? json_object_get_members(per) : NULL;

        printf("  %-32s %10s\n", rows[k].label, h);
        for (GList *l = names; l; l = l->next) {
            g_autofree char *b = member_bytes(per, l->data);

            printf("    %-30s %10s\n", (char *)l->data, b);
        }
    }
}

static void
print_similarity(JsonArray *pairs)
{
    if (array_length(pairs) == 0)
        printf("fewer than two images on this host\n");
    for (guint i = 0; i < array_length(pairs); i++) {
        JsonObject *p = array_object(pairs, i);

        printf(
            "%.19s shares %5.1f%% of its chunks with %.19s (%" G_GINT64_FORMAT
            " of %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT " cached there)\n",
            json_util_get_string(p, "image", "-"),
            100.0 * json_util_get_double(p, "fraction", 0),
            json_util_get_string(p, "other", "-"),
            json_util_get_int(p, "shared_chunks", 0),
            json_util_get_int(p, "chunks", 0),
            json_util_get_int(p, "shared_cached_chunks", 0));
    }
}

static const char *
peer_state(JsonObject *p)
{
    return json_util_get_bool(p, "dead", false)        ? "dead"
           : json_util_get_bool(p, "connected", false) ? "connected"
                                                       : "unreachable";
}

static void
print_peers(JsonObject *r)
{
    JsonArray *peers = json_util_get_array(r, "peers");

    if (!json_util_get_bool(r, "enabled", false)) {
        printf("peer exchange is off on this host\n");
        return;
    }
    printf("listening on %s\n", json_util_get_string(r, "listen", "?"));
    for (guint i = 0; i < array_length(peers); i++) {
        JsonObject *p = array_object(peers, i);
        g_autofree char *in = member_bytes(p, "bytes_in");
        g_autofree char *out = member_bytes(p, "bytes_out");

        printf("%-16s %-24s %-12s %6.1f ms  in %s, out %s, %" G_GINT64_FORMAT
               " bad, %" G_GINT64_FORMAT " missed, banned for %" G_GINT64_FORMAT
               " images, dead for %" G_GINT64_FORMAT "\n",
               json_util_get_string(p, "name", "-"),
               json_util_get_string(p, "endpoint", "-"), peer_state(p),
               json_util_get_double(p, "latency_ms", 0), in, out,
               json_util_get_int(p, "bad_chunks", 0),
               json_util_get_int(p, "missed", 0),
               json_util_get_int(p, "images_banned", 0),
               json_util_get_int(p, "images_dead", 0));
    }
}

static void
print_reply(const CtlCall *call, JsonObject *reply)
{
    const char *name = call->cmd->name;

    if (g_str_equal(name, "image-plan")) {
        print_plan(reply);
    } else if (json_object_has_member(reply, "pairs")) {
        print_similarity(json_util_get_array(reply, "pairs"));
    } else if (g_str_equal(name, "agent-peer-list")) {
        print_peers(reply);
    } else if (g_str_equal(name, "agent-image-verify")) {
        printf("%s: %" G_GINT64_FORMAT
               " cached chunks verified, %" G_GINT64_FORMAT
               " bad (%" G_GINT64_FORMAT " dropped, to be fetched again)\n",
               json_util_get_string(reply, "image", "-"),
               json_util_get_int(reply, "verified", 0),
               json_util_get_int(reply, "bad", 0),
               json_util_get_int(reply, "dropped", 0));
    } else if (json_object_has_member(reply, "images")) {
        JsonArray *arr = json_util_get_array(reply, "images");

        for (guint i = 0; i < array_length(arr); i++) {
            JsonObject *im = array_object(arr, i);

            if (im)
                print_image_line(im);
        }
    } else if (json_util_get_object(reply, "image")) {
        JsonObject *im = json_util_get_object(reply, "image");

        if (g_str_equal(name, "agent-image-serve"))
            printf("%s\n", json_util_get_string(im, "uri", "-"));
        else
            print_image_line(im);
    }
}

/* Send @b (not ended yet) to the agent, print the reply, return the exit
 * code. */
static int
agent_finish(const CtlCall *call, JsonBuilder *b)
{
    g_autoptr(JsonObject) reply = NULL;

    json_builder_end_object(b);
    reply = ctl_socket_call(call->g.agent, "the host agent", b, false);
    if (!reply)
        return CTL_EXIT_FAILURE;
    if (call->g.json)
        ctl_print_json(reply);
    if (!json_util_get_bool(reply, "ok", false)) {
        fprintf(stderr, "sporectl %s: %s\n", call->cmd->name,
                json_util_get_string(reply, "error", "failed"));
        return CTL_EXIT_FAILURE;
    }
    if (!call->g.json)
        print_reply(call, reply);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* {"command": NAME less "agent-"} */
static JsonBuilder *
agent_request(const CtlCall *call)
{
    const char *name = call->cmd->name;
    JsonBuilder *b = json_builder_new();

    if (g_str_has_prefix(name, "agent-"))
        name += strlen("agent-");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "command");
    json_builder_add_string_value(b, name);
    return b;
}

static int
cmd_agent_image_add(const CtlCall *call)
{
    const char *pin = ctl_string(call, "id", NULL);
    g_autoptr(JsonBuilder) b = agent_request(call);
    g_autofree char *index = g_canonicalize_filename(ctl_arg(call, 0), NULL);

    json_builder_set_member_name(b, "index");
    json_builder_add_string_value(b, index);
    if (pin) {
        json_builder_set_member_name(b, "id");
        json_builder_add_string_value(b, pin);
    }
    json_builder_set_member_name(b, "origins");
    json_builder_begin_array(b);
    for (guint i = 1; i < ctl_n_args(call); i++)
        json_builder_add_string_value(b, ctl_arg(call, i));
    json_builder_end_array(b);
    return agent_finish(call, b);
}

/* the commands taking no argument or one IMAGE */
static int
cmd_agent_simple(const CtlCall *call)
{
    g_autoptr(JsonBuilder) b = agent_request(call);

    if (ctl_n_args(call) == 1) {
        json_builder_set_member_name(b, "image");
        json_builder_add_string_value(b, ctl_arg(call, 0));
    }
    return agent_finish(call, b);
}

/* ---- the table --------------------------------------------------------- */

static const CtlArgDef image_arg[] = {
    {"IMAGE", CTL_ARG_REQUIRED},
    {0},
};

static const CtlArgDef index_urls_args[] = {
    {"INDEX", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_FILE},
    {"URL", CTL_ARG_MANY},
    {0},
};

static const CtlOptDef image_add_opts[] = {
    {"id", 0, CTL_OPT_STRING, "IMAGE-ID", .help = "the id the index must have"},
    {0},
};

const CtlCmdDef ctl_agent_commands[] = {
    {
        .name = "agent-image-add",
        .summary = "Give the host agent an image to serve.",
        .help =
            "Sends the host agent (--agent) the image index INDEX (a file on\n"
            "this host, e.g. from 'sporectl image-index') and the image's\n"
            "origin URLs, tried in order.  The agent verifies the index\n"
            "(against IMAGE-ID when given), opens the image's chunk cache\n"
            "and keeps the image across restarts.  Nothing is fetched yet.\n",
        .opts = image_add_opts,
        .args = index_urls_args,
        .run = cmd_agent_image_add,
    },
    {
        .name = "agent-image-list",
        .summary =
            "List the host agent's images, cached fraction and bytes fetched.",
        .help = "One line per image: id, size, the fraction of its non-zero\n"
                "chunks cached, the bytes fetched from the origin, peers and\n"
                "local copies, and the NBD URI when it is served.\n",
        .run = cmd_agent_simple,
    },
    {
        .name = "agent-image-serve",
        .summary =
            "Serve an image as an NBD export (start its shim) and print its "
            "URI.",
        .help =
            "Starts the block-fetch shim (nbdkit with the spore plugin) for\n"
            "IMAGE (its id, or a unique prefix of its hex digits) unless it\n"
            "runs, and prints nbd+unix:///HEX?socket=PATH, usable as the\n"
            "backing file of a qcow2 overlay:\n"
            "  qemu-img create -f qcow2 -F raw -b 'URI' clone.qcow2\n"
            "Reads of chunks not cached yet are fetched on demand.\n",
        .args = image_arg,
        .run = cmd_agent_simple,
    },
    {
        .name = "agent-image-unserve",
        .summary = "Stop an image's shim.",
        .help = "Stops the nbdkit shim of IMAGE; guests using it get I/O "
                "errors.\n",
        .args = image_arg,
        .run = cmd_agent_simple,
    },
    {
        .name = "agent-image-fill",
        .summary = "Fetch all of an image in the background.",
        .help = "Queues every missing chunk of IMAGE at background priority;\n"
                "reads by guests still come first.\n",
        .args = image_arg,
        .run = cmd_agent_simple,
    },
    {
        .name = "agent-image-show",
        .summary = "Show one of the host agent's images.",
        .help = "",
        .args = image_arg,
        .run = cmd_agent_simple,
    },
    {
        .name = "agent-image-verify",
        .summary = "Read back and verify an image's cached chunks.",
        .help =
            "Reads every cached chunk of IMAGE and checks it against the\n"
            "image's index, while the image serves (guests may read\n"
            "meanwhile); a chunk that does not match is dropped and fetched\n"
            "again on its next read.  Prints the chunks verified and bad; "
            "exits\n"
            "1 only when the cache cannot be read.  What spore-agent\n"
            "--verify-cache does for every image at its start.\n",
        .args = image_arg,
        .run = cmd_agent_simple,
    },
    {
        .name = "agent-peer-list",
        .summary = "List the host agent's peers and what was measured of them.",
        .help =
            "One line per peer of the host agent (--agent): its name and\n"
            "endpoint, whether it is connected, unreachable (its CURVE\n"
            "handshake did not succeed: is this host's key in its list?) or\n"
            "dead (it stopped answering), the measured latency, the bytes\n"
            "received from it and served to it, its bad chunks (strikes: a\n"
            "wrong digest or length, DATA it was not asked for, an oversized\n"
            "frame), the requests it did not answer by their deadline, the\n"
            "number of images it is banned for (kept in\n"
            "STATE_DIR/peer-bans/bans across restarts) and the number it is\n"
            "dead for now.  See docs/peer-protocol.md.\n",
        .run = cmd_agent_simple,
    },
    {
        .name = "image-plan",
        .summary = "Show where each missing byte of an image would come from.",
        .help =
            "Asks the host agent (--agent) for the transfer plan of IMAGE as\n"
            "it stands: the bytes cached, zero, copied from another image\n"
            "cached on this host (same chunk digest), fetched from each peer\n"
            "that holds them, fetched from the origin by the peer chosen to\n"
            "fetch them for the site, and fetched from the origin by this\n"
            "host.\n",
        .args = image_arg,
        .run = cmd_agent_simple,
    },
    {
        .name = "image-similarity",
        .summary = "Show the fraction of chunks the host's images share.",
        .help =
            "For each ordered pair of images on the host agent (--agent):\n"
            "the fraction of the first image's non-zero chunks whose digest\n"
            "the second has too, and how many of those are cached there,\n"
            "which local copies serve instead of a fetch.\n",
        .run = cmd_agent_simple,
    },
    {0},
};
