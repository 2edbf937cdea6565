/*
 * xml-safe.h: parse untrusted XML with hard limits and exact source lines.
 *
 * This is spore's adapter for libxml2's error model: libxml2's own printing
 * to stderr is silenced and its errors become GError values that carry the
 * line they were found on.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>
#include <libxml/tree.h>

typedef struct {
    gsize max_bytes; /* the document, checked before parsing */
    guint max_depth; /* element nesting, the root element being depth 1 */
} XmlSafeLimits;

typedef struct XmlSafeDoc XmlSafeDoc;

/*
 * xml_safe_parse: parse @data (@len bytes, UTF-8) as one XML document.
 *
 * Refused: more than limits->max_bytes bytes; any DOCTYPE (so no DTD, no
 * entity declarations and no external entities are ever processed); any
 * reference to an entity other than the five predefined ones; nesting deeper
 * than limits->max_depth; anything not well-formed or not valid UTF-8.  No
 * network or file access happens (XML_PARSE_NONET, no DTD loading, no
 * XInclude).
 *
 * On failure returns NULL, sets @error (SPORE_ERROR_INVALID or
 * SPORE_ERROR_LIMIT) and, when @ret_line is not NULL, the 1-based line the
 * problem was found on (0 when it concerns the whole document).  The result
 * is owned by the caller; free it with xml_safe_doc_free().  Thread-safe.
 */
XmlSafeDoc *xml_safe_parse(const char *data, gsize len,
                           const XmlSafeLimits *limits, guint *ret_line,
                           GError **error);

/* xml_safe_doc_free: free @doc and its libxml2 tree.  Accepts NULL. */
void xml_safe_doc_free(XmlSafeDoc *doc);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(XmlSafeDoc, xml_safe_doc_free)

/* xml_safe_doc_xml: the libxml2 document; owned by @doc. */
xmlDoc *xml_safe_doc_xml(const XmlSafeDoc *doc);

/* xml_safe_doc_root: the root element; owned by @doc. */
xmlNode *xml_safe_doc_root(const XmlSafeDoc *doc);

/*
 * xml_safe_node_line: the line of the '<' that opens element @node (libxml2
 * itself records the line where the start tag ends).  0 for nodes that are
 * not elements of @doc.
 */
guint xml_safe_node_line(const XmlSafeDoc *doc, const xmlNode *node);

/*
 * xml_safe_attr_line: the line on which attribute @name (its local name) of
 * element @node is written; the element's line when it is not found.
 */
guint xml_safe_attr_line(const XmlSafeDoc *doc, const xmlNode *node,
                         const char *name);

/*
 * xml_doc_to_string: @doc serialized as indented UTF-8 XML ending in a
 * newline, owned by the caller (g_free).  @doc is not freed.
 */
char *xml_doc_to_string(xmlDoc *doc);

/*
 * xml_adapter_silence: stop libxml2 from printing errors on stderr in the
 * calling thread.  Idempotent; every parse in this file calls it.
 */
void xml_adapter_silence(void);
