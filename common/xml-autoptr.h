/*
 * xml-autoptr.h: scoped cleanups for libxml2's objects.
 *
 *   g_autoptr(xmlDoc) doc = xmlNewDoc(BAD_CAST "1.0");
 *
 * frees the document (and every node attached to it) once, on every path
 * out of the scope.  A node attached to a tree belongs to its document and
 * is never declared g_autoptr(xmlNode): only a node not (yet) linked into a
 * tree is, and it leaves with g_steal_pointer() when it is linked.
 * g_autoptr(xmlChar) is for the strings libxml2 returns to be freed with
 * xmlFree() (xmlGetProp, xmlNodeGetContent, ...).
 */
#pragma once

#include <glib.h>
#include <libxml/relaxng.h>
#include <libxml/tree.h>
#include <libxml/xmlmemory.h>
#include <libxml/xpath.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlNode, xmlFreeNode)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlChar, xmlFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathContext, xmlXPathFreeContext)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathObject, xmlXPathFreeObject)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlRelaxNGParserCtxt, xmlRelaxNGFreeParserCtxt)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlRelaxNGValidCtxt, xmlRelaxNGFreeValidCtxt)
