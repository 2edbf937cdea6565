/*
 * json-util.c: JSON accessors that never abort on a missing or mistyped
 * member (json-util.h).  Integers are accepted only as JSON integers;
 * doubles also as integers.
 */
#include "json-util.h"

#include "spore-error.h"

static JsonNode *
value_member(JsonObject *obj, const char *member, GType type)
{
    JsonNode *n = obj ? json_object_get_member(obj, member) : NULL;

    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != type)
        return NULL;
    return n;
}

const char *
json_util_get_string(JsonObject *obj, const char *member, const char *fallback)
{
    JsonNode *n = value_member(obj, member, G_TYPE_STRING);

    return n ? json_node_get_string(n) : fallback;
}

gint64
json_util_get_int(JsonObject *obj, const char *member, gint64 fallback)
{
    JsonNode *n = value_member(obj, member, G_TYPE_INT64);

    return n ? json_node_get_int(n) : fallback;
}

double
json_util_get_double(JsonObject *obj, const char *member, double fallback)
{
    JsonNode *n = value_member(obj, member, G_TYPE_DOUBLE);

    if (n)
        return json_node_get_double(n);
    n = value_member(obj, member, G_TYPE_INT64);
    return n ? (double)json_node_get_int(n) : fallback;
}

bool
json_util_get_bool(JsonObject *obj, const char *member, bool fallback)
{
    JsonNode *n = value_member(obj, member, G_TYPE_BOOLEAN);

    return n ? json_node_get_boolean(n) : fallback;
}

JsonObject *
json_util_get_object(JsonObject *obj, const char *member)
{
    JsonNode *n = obj ? json_object_get_member(obj, member) : NULL;

    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

JsonArray *
json_util_get_array(JsonObject *obj, const char *member)
{
    JsonNode *n = obj ? json_object_get_member(obj, member) : NULL;

    return n && JSON_NODE_HOLDS_ARRAY(n) ? json_node_get_array(n) : NULL;
}

GArray *
json_util_chunk_numbers(JsonNode *node)
{
    JsonArray *arr;
    GArray *out;

    if (!node || !JSON_NODE_HOLDS_ARRAY(node))
        return NULL;
    arr = json_node_get_array(node);
    out = g_array_sized_new(FALSE, FALSE, sizeof(guint64),
                            json_array_get_length(arr));
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonNode *e = json_array_get_element(arr, i);
        gint64 n = JSON_NODE_HOLDS_VALUE(e) &&
                           json_node_get_value_type(e) == G_TYPE_INT64
                       ? json_node_get_int(e)
                       : -1;
        guint64 u = (guint64)n;

        if (n >= 0)
            g_array_append_val(out, u);
    }
    return out;
}

char *
json_util_to_text(JsonObject *obj, bool pretty)
{
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) node = json_node_new(JSON_NODE_OBJECT);

    json_node_set_object(node, obj);
    json_generator_set_root(gen, node);
    json_generator_set_pretty(gen, pretty);
    return json_generator_to_data(gen, NULL);
}

JsonObject *
json_util_parse_object(const char *text, gssize len, GError **error)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) err = NULL;
    JsonNode *root;

    if (!json_parser_load_from_data(parser, text, len, &err)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID, "not JSON: %s",
                    err->message);
        return NULL;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "not a JSON object");
        return NULL;
    }
    return json_object_ref(json_node_get_object(root));
}
