/*
 * xml-safe.c: a libxml2 parse that untrusted input cannot turn against us.
 *
 * The parser context's SAX handler is patched before parsing:
 *   - internalSubset / externalSubset stop the parser: a DOCTYPE is refused
 *     before its internal subset is read, so entity bombs and external
 *     entities never get a chance to expand;
 *   - getEntity only knows the five predefined entities;
 *   - startElementNs counts depth and stops past the limit, and records for
 *     each element where its start tag begins and on which line each
 *     attribute is written (libxml2 itself only knows the line where the
 *     start tag ends);
 *   - serror keeps the first error with its line instead of printing it.
 *
 * Locations hang off each element's _private pointer and are owned by the
 * XmlSafeDoc, which owns the xmlDoc too.  Everything here is per call; there
 * is no shared state besides libxml2's per-thread error hooks.
 */
#include "xml-safe.h"

#include <string.h>
#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/SAX2.h>
#include <libxml/xmlerror.h>

#include "spore-error.h"

typedef struct {
    char *name; /* qualified name as written */
    guint line;
} AttrLoc;

typedef struct {
    guint line;
    guint n_attrs;
    AttrLoc attrs[];
} ElementLoc;

struct XmlSafeDoc {
    xmlDoc *doc;
    GPtrArray *locs; /* of ElementLoc*, freed with the doc */
};

typedef struct {
    const XmlSafeLimits *limits;
    const char *data;
    gsize len;
    gsize cursor;      /* offset up to which lines have been counted */
    guint cursor_line; /* line at @cursor */
    guint depth;
    startElementNsSAX2Func start_element;
    endElementNsSAX2Func end_element;
    GPtrArray *locs;
    /* first problem */
    char *error_message;
    guint error_line;
    SporeErrorCode error_code;
} ParseState;

static void
generic_error_noop(void *ctx, const char *msg, ...)
{
}

void
xml_adapter_silence(void)
{
    xmlSetGenericErrorFunc(NULL, generic_error_noop);
    xmlSetStructuredErrorFunc(NULL, NULL);
}

static void
state_fail(ParseState *st, SporeErrorCode code, guint line, char *message)
{
    if (st->error_message) {
        g_free(message);
        return;
    }
    st->error_message = message;
    st->error_line = line;
    st->error_code = code;
}

static guint
current_line(xmlParserCtxt *ctxt)
{
    return ctxt->input ? (guint)ctxt->input->line : 0;
}

static void
on_structured_error(void *user_data, xmlError *err)
{
    xmlParserCtxt *ctxt = user_data;
    ParseState *st = ctxt->_private;
    g_autofree char *msg = NULL;

    if (err->level < XML_ERR_ERROR)
        return;
    msg = g_strdup(err->message ? err->message : "unknown XML error");
    /* libxml2 appends byte dumps on further lines; keep the first */
    msg[strcspn(msg, "\n")] = '\0';
    if (g_str_has_prefix(msg, "Input is not proper UTF-8")) {
        g_free(msg);
        msg = g_strdup("not valid UTF-8");
    }
    state_fail(st, SPORE_ERROR_INVALID, (guint)err->line,
               g_strdup_printf("malformed XML: %s", msg));
}

static void
on_doctype(void *ctx, const xmlChar *name, const xmlChar *external_id,
           const xmlChar *system_id)
{
    xmlParserCtxt *ctxt = ctx;

    state_fail(ctxt->_private, SPORE_ERROR_INVALID, current_line(ctxt),
               g_strdup("DOCTYPE is not allowed (no DTDs, no entity "
                        "declarations)"));
    xmlStopParser(ctxt);
}

static xmlEntity *
on_get_entity(void *ctx, const xmlChar *name)
{
    return xmlGetPredefinedEntity(name);
}

static xmlParserInput *
on_resolve_entity(void *ctx, const xmlChar *public_id, const xmlChar *system_id)
{
    return NULL;
}

/* Advance the line cursor to @offset, which must not go backwards. */
static guint
line_at(ParseState *st, gsize offset)
{
    if (offset > st->len)
        offset = st->len;
    if (offset < st->cursor)
        return st->cursor_line;
    for (gsize i = st->cursor; i < offset; i++) {
        if (st->data[i] == '\n')
            st->cursor_line++;
    }
    st->cursor = offset;
    return st->cursor_line;
}

static bool
is_xml_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * Locate the start tag that ends at @end (the parser's position when
 * startElementNs fires: at its '>' or "/>") and note the line of its '<' and
 * of each attribute.  The tag has already been checked well-formed, and '<'
 * cannot occur inside it (attribute values must escape it).
 */
static ElementLoc *
locate_start_tag(ParseState *st, gsize end, int n_attrs)
{
    gsize lt;
    ElementLoc *loc;
    gsize i;
    guint n = 0;

    /* at end of input libxml2 may report a tag that was never closed */
    end = MIN(end, st->len);
    lt = end;
    while (lt > st->cursor && (lt >= st->len || st->data[lt] != '<'))
        lt--;

    loc = g_malloc0(sizeof(ElementLoc) + sizeof(AttrLoc) * (gsize)n_attrs);
    loc->line = line_at(st, lt);

    /* skip '<' and the element name */
    i = lt + 1;
    while (i < end && !is_xml_space(st->data[i]) && st->data[i] != '>' &&
           st->data[i] != '/')
        i++;

    while (i < end && n < (guint)n_attrs) {
        gsize name_start;
        char quote;

        while (i < end && is_xml_space(st->data[i]))
            i++;
        if (i >= end || st->data[i] == '>' || st->data[i] == '/')
            break;
        name_start = i;
        while (i < end && !is_xml_space(st->data[i]) && st->data[i] != '=')
            i++;
        loc->attrs[n].name = g_strndup(st->data + name_start, i - name_start);
        loc->attrs[n].line = line_at(st, name_start);
        n++;
        while (i < end && st->data[i] != '"' && st->data[i] != '\'')
            i++;
        if (i >= end)
            break;
        quote = st->data[i++];
        while (i < end && st->data[i] != quote)
            i++;
        i++;
    }
    loc->n_attrs = n;
    return loc;
}

static void
element_loc_free(gpointer p)
{
    ElementLoc *loc = p;

    for (guint i = 0; i < loc->n_attrs; i++)
        g_free(loc->attrs[i].name);
    g_free(loc);
}

static void
on_start_element(void *ctx, const xmlChar *localname, const xmlChar *prefix,
                 const xmlChar *uri, int nb_namespaces,
                 const xmlChar **namespaces, int nb_attributes,
                 int nb_defaulted, const xmlChar **attributes)
{
    xmlParserCtxt *ctxt = ctx;
    ParseState *st = ctxt->_private;
    gsize end;
    ElementLoc *loc;
    xmlNode *parent;

    if (++st->depth > st->limits->max_depth) {
        state_fail(st, SPORE_ERROR_LIMIT, current_line(ctxt),
                   g_strdup_printf("elements nested deeper than %u levels",
                                   st->limits->max_depth));
        xmlStopParser(ctxt);
        return;
    }

    end = (gsize)ctxt->input->consumed +
          (gsize)(ctxt->input->cur - ctxt->input->base);
    /* namespace declarations are attributes in the source text too */
    loc = locate_start_tag(st, end, nb_attributes + nb_namespaces);
    g_ptr_array_add(st->locs, loc);

    parent = ctxt->node;
    st->start_element(ctx, localname, prefix, uri, nb_namespaces, namespaces,
                      nb_attributes, nb_defaulted, attributes);
    if (ctxt->node && ctxt->node != parent &&
        ctxt->node->type == XML_ELEMENT_NODE)
        ctxt->node->_private = loc;
}

static void
on_end_element(void *ctx, const xmlChar *localname, const xmlChar *prefix,
               const xmlChar *uri)
{
    xmlParserCtxt *ctxt = ctx;
    ParseState *st = ctxt->_private;

    if (st->depth > 0)
        st->depth--;
    st->end_element(ctx, localname, prefix, uri);
}

XmlSafeDoc *
xml_safe_parse(const char *data, gsize len, const XmlSafeLimits *limits,
               guint *ret_line, GError **error)
{
    g_autoptr(GPtrArray) locs =
        g_ptr_array_new_with_free_func(element_loc_free);
    ParseState st = {
        .limits = limits,
        .data = data,
        .len = len,
        .cursor_line = 1,
        .locs = locs,
    };
    xmlParserCtxt *ctxt;
    xmlDoc *doc = NULL;
    XmlSafeDoc *ret;
    int options = XML_PARSE_NONET | XML_PARSE_BIG_LINES | XML_PARSE_IGNORE_ENC |
                  XML_PARSE_NOCDATA;

    xml_adapter_silence();

    if (len > limits->max_bytes) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_LIMIT,
                    "document is %" G_GSIZE_FORMAT
                    " bytes, larger than the limit of %" G_GSIZE_FORMAT,
                    len, limits->max_bytes);
        if (ret_line)
            *ret_line = 0;
        return NULL;
    }
    if (len == 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "document is empty");
        if (ret_line)
            *ret_line = 0;
        return NULL;
    }

    ctxt = xmlCreateMemoryParserCtxt(data, (int)len);
    if (!ctxt) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "cannot create an XML parser");
        return NULL;
    }
    xmlCtxtUseOptions(ctxt, options);
    xmlSwitchEncoding(ctxt, XML_CHAR_ENCODING_UTF8);

    ctxt->_private = &st;
    ctxt->sax->initialized = XML_SAX2_MAGIC;
    ctxt->sax->serror = on_structured_error;
    ctxt->sax->error = generic_error_noop;
    ctxt->sax->warning = generic_error_noop;
    ctxt->sax->internalSubset = on_doctype;
    ctxt->sax->externalSubset = on_doctype;
    ctxt->sax->getEntity = on_get_entity;
    ctxt->sax->getParameterEntity = on_get_entity;
    ctxt->sax->resolveEntity = on_resolve_entity;
    st.start_element = ctxt->sax->startElementNs;
    st.end_element = ctxt->sax->endElementNs;
    ctxt->sax->startElementNs = on_start_element;
    ctxt->sax->endElementNs = on_end_element;

    xmlParseDocument(ctxt);
    doc = ctxt->myDoc;
    ctxt->myDoc = NULL;

    if (!st.error_message && !ctxt->wellFormed)
        state_fail(&st, SPORE_ERROR_INVALID, current_line(ctxt),
                   g_strdup("malformed XML"));
    if (!st.error_message && (!doc || !xmlDocGetRootElement(doc)))
        state_fail(&st, SPORE_ERROR_INVALID, current_line(ctxt),
                   g_strdup("document has no root element"));
    xmlFreeParserCtxt(ctxt);

    if (st.error_message) {
        if (doc)
            xmlFreeDoc(doc);
        g_set_error_literal(error, SPORE_ERROR, st.error_code,
                            st.error_message);
        if (ret_line)
            *ret_line = st.error_line;
        g_free(st.error_message);
        return NULL;
    }

    ret = g_new0(XmlSafeDoc, 1);
    ret->doc = doc;
    ret->locs = g_steal_pointer(&locs);
    return ret;
}

void
xml_safe_doc_free(XmlSafeDoc *doc)
{
    if (!doc)
        return;
    xmlFreeDoc(doc->doc);
    g_ptr_array_unref(doc->locs);
    g_free(doc);
}

xmlDoc *
xml_safe_doc_xml(const XmlSafeDoc *doc)
{
    return doc->doc;
}

xmlNode *
xml_safe_doc_root(const XmlSafeDoc *doc)
{
    return xmlDocGetRootElement(doc->doc);
}

guint
xml_safe_node_line(const XmlSafeDoc *doc, const xmlNode *node)
{
    const ElementLoc *loc;

    if (!node || node->type != XML_ELEMENT_NODE || node->doc != doc->doc)
        return 0;
    loc = node->_private;
    if (!loc)
        return (guint)xmlGetLineNo(node);
    return loc->line;
}

guint
xml_safe_attr_line(const XmlSafeDoc *doc, const xmlNode *node, const char *name)
{
    const ElementLoc *loc;

    if (!node || node->type != XML_ELEMENT_NODE || node->doc != doc->doc)
        return 0;
    loc = node->_private;
    if (!loc)
        return (guint)xmlGetLineNo(node);
    for (guint i = 0; i < loc->n_attrs; i++) {
        const char *written = loc->attrs[i].name;
        const char *colon = strchr(written, ':');
        const char *local = colon ? colon + 1 : written;

        if (g_str_equal(local, name) || g_str_equal(written, name))
            return loc->attrs[i].line;
    }
    return loc->line;
}

char *
xml_doc_to_string(xmlDoc *doc)
{
    xmlChar *out = NULL;
    int len = 0;
    char *ret;

    xmlDocDumpFormatMemoryEnc(doc, &out, &len, "UTF-8", 1);
    if (len > 0 && out[len - 1] == '\n')
        ret = g_strndup((const char *)out, (gsize)len);
    else
        ret = g_strdup_printf("%.*s\n", len, out ? (const char *)out : "");
    xmlFree(out);
    return ret;
}
