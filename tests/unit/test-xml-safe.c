/*
 * test-xml-safe.c: the hostile-input XML parser and its source locations.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "spore-error.h"
#include "xml-safe.h"

static const XmlSafeLimits limits = {.max_bytes = 4096, .max_depth = 8};

static XmlSafeDoc *
parse(const char *text, guint *ret_line, GError **error)
{
    return xml_safe_parse(text, strlen(text), &limits, ret_line, error);
}

static xmlNode *
child(xmlNode *parent, const char *name)
{
    for (xmlNode *c = parent->children; c; c = c->next) {
        if (c->type == XML_ELEMENT_NODE && xmlStrEqual(c->name, BAD_CAST name))
            return c;
    }
    cr_assert_fail("no <%s>", name);
    return NULL;
}

Test(xml_safe, finds_the_line_where_a_start_tag_and_each_attribute_begin)
{
    static const char text[] = "<a>\n"                /* 1 */
                               "  <b x='1'\n"         /* 2 */
                               "     y=\"a>b\"\n"     /* 3 */
                               "\n"                   /* 4 */
                               "     z = '3'/>\n"     /* 5 */
                               "  <c\n"               /* 6 */
                               "   xmlns:p='urn:p'\n" /* 7 */
                               "   p:w='4'></c>\n"    /* 8 */
                               "</a>\n";
    g_autoptr(GError) err = NULL;
    g_autoptr(XmlSafeDoc) doc = parse(text, NULL, &err);
    xmlNode *root, *b, *c;

    cr_assert(doc, "%s", err ? err->message : "");
    root = xml_safe_doc_root(doc);
    b = child(root, "b");
    c = child(root, "c");
    cr_expect_eq(xml_safe_node_line(doc, root), 1u);
    cr_expect_eq(xml_safe_node_line(doc, b), 2u);
    cr_expect_eq(xml_safe_attr_line(doc, b, "x"), 2u);
    cr_expect_eq(xml_safe_attr_line(doc, b, "y"), 3u);
    cr_expect_eq(xml_safe_attr_line(doc, b, "z"), 5u);
    cr_expect_eq(xml_safe_attr_line(doc, b, "missing"), 2u);
    cr_expect_eq(xml_safe_node_line(doc, c), 6u);
    cr_expect_eq(xml_safe_attr_line(doc, c, "w"), 8u);
}

Test(xml_safe, refuses_any_doctype_with_its_line)
{
    static const char text[] = "<?xml version='1.0'?>\n"
                               "\n"
                               "<!DOCTYPE a [<!ENTITY e 'x'>]>\n"
                               "<a>&e;</a>\n";
    g_autoptr(GError) err = NULL;
    guint line = 0;
    g_autoptr(XmlSafeDoc) doc = parse(text, &line, &err);

    cr_assert_null(doc);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
    cr_expect(strstr(err->message, "DOCTYPE is not allowed"), "%s",
              err->message);
    cr_expect_eq(line, 3u);
}

Test(xml_safe, accepts_predefined_entities_and_character_references)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(XmlSafeDoc) doc =
        parse("<a v='&lt;&amp;&#x41;'>&gt;&quot;&apos;&#66;</a>", NULL, &err);
    xmlChar *v, *t;

    cr_assert(doc, "%s", err ? err->message : "");
    v = xmlGetProp(xml_safe_doc_root(doc), BAD_CAST "v");
    t = xmlNodeGetContent(xml_safe_doc_root(doc));
    cr_expect_str_eq((char *)v, "<&A");
    cr_expect_str_eq((char *)t, ">\"'B");
    xmlFree(v);
    xmlFree(t);
}

Test(xml_safe, refuses_undefined_entities)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(XmlSafeDoc) doc = parse("<a>&nbsp;</a>", NULL, &err);

    cr_assert_null(doc);
    cr_expect(strstr(err->message, "nbsp"), "%s", err->message);
}

Test(xml_safe, enforces_the_depth_limit_exactly)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(XmlSafeDoc) at_limit = parse(
        "<a><a><a><a><a><a><a><a/></a></a></a></a></a></a></a>", NULL, &err);
    g_autoptr(XmlSafeDoc) beyond = NULL;

    cr_expect(at_limit, "8 levels are allowed: %s", err ? err->message : "");
    g_clear_error(&err);
    beyond = parse("<a><a><a><a><a><a><a><a><a/></a></a></a></a></a></a></a>"
                   "</a>",
                   NULL, &err);
    cr_expect_null(beyond);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT));
}

Test(xml_safe, enforces_the_size_limit_before_parsing)
{
    g_autofree char *big = g_strnfill(limits.max_bytes + 1, ' ');
    g_autoptr(GError) err = NULL;
    g_autoptr(XmlSafeDoc) doc =
        xml_safe_parse(big, limits.max_bytes + 1, &limits, NULL, &err);

    cr_assert_null(doc);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT));
}

Test(xml_safe, reports_malformed_xml_with_its_line_and_one_line_message)
{
    g_autoptr(GError) err = NULL;
    guint line = 0;
    g_autoptr(XmlSafeDoc) doc = parse("<a>\n<b>\n</a>\n", &line, &err);

    cr_assert_null(doc);
    cr_expect(g_str_has_prefix(err->message, "malformed XML: "), "%s",
              err->message);
    cr_expect_null(strchr(err->message, '\n'));
    cr_expect_eq(line, 3u);
}

Test(xml_safe, refuses_invalid_utf8)
{
    g_autoptr(GError) err = NULL;
    guint line = 0;
    g_autoptr(XmlSafeDoc) doc = parse("<a>\n\xc3\x28</a>", &line, &err);

    cr_assert_null(doc);
    cr_expect(strstr(err->message, "not valid UTF-8"), "%s", err->message);
    cr_expect_eq(line, 2u);
}

Test(xml_safe, ignores_a_declared_legacy_encoding_and_reads_utf8)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(XmlSafeDoc) doc =
        parse("<?xml version='1.0' encoding='ISO-8859-1'?><a>\xc3\xa9</a>",
              NULL, &err);
    xmlChar *t;

    cr_assert(doc, "%s", err ? err->message : "");
    t = xmlNodeGetContent(xml_safe_doc_root(doc));
    cr_expect_str_eq((char *)t, "\xc3\xa9");
    xmlFree(t);
}

/*
 * Regression (found by fuzz-manifest): a start tag cut off by the end of the
 * input made the location scan read one byte past the buffer.  The buffers
 * here are exactly as long as their text, with no NUL after it.
 */
Test(xml_safe, stays_inside_a_buffer_that_ends_inside_a_start_tag)
{
    static const char *const inputs[] = {"<p", "<p a='1'", "<a><b x='y' ",
                                         "<a\n", "<"};

    for (gsize i = 0; i < G_N_ELEMENTS(inputs); i++) {
        gsize len = strlen(inputs[i]);
        g_autofree char *exact = g_memdup2(inputs[i], len);
        g_autoptr(GError) err = NULL;
        g_autoptr(XmlSafeDoc) doc =
            xml_safe_parse(exact, len, &limits, NULL, &err);

        cr_expect_null(doc, "'%s' parsed", inputs[i]);
        cr_expect(err != NULL);
    }
}
