/*
 * json-util.h: the one set of JSON accessors of daemon/ — for messages of
 * the site protocol (wire.h), requests and replies of the control sockets
 * (control.h) and their use in sporectl.
 *
 * Every accessor takes an object that may be NULL and a member that may be
 * missing or of another type, and then returns the fallback: a message
 * from a peer or an operator never aborts the reader.  Returned strings,
 * objects and arrays are borrowed from @obj.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <json-glib/json-glib.h>

const char *json_util_get_string(JsonObject *obj, const char *member,
                                 const char *fallback);
gint64 json_util_get_int(JsonObject *obj, const char *member, gint64 fallback);
double json_util_get_double(JsonObject *obj, const char *member,
                            double fallback);
bool json_util_get_bool(JsonObject *obj, const char *member, bool fallback);
JsonObject *json_util_get_object(JsonObject *obj, const char *member);
JsonArray *json_util_get_array(JsonObject *obj, const char *member);

/* json_util_chunk_numbers: the non-negative integers of the JSON array
 * @node (NULL allowed) as a new GArray of guint64, in order (other elements
 * dropped); NULL when @node is not an array */
GArray *json_util_chunk_numbers(JsonNode *node);

/* json_util_to_text: @obj as compact JSON (pretty when @pretty), owned by
 * the caller */
char *json_util_to_text(JsonObject *obj, bool pretty);

/*
 * json_util_parse_object: @text (of @len bytes, -1: NUL-terminated) as one
 * JSON object, a new reference; SPORE_ERROR_INVALID when it is not JSON or
 * not an object.
 */
JsonObject *json_util_parse_object(const char *text, gssize len,
                                   GError **error);
