/*
 * test-domain-xml.c: clones' libvirt domain XML: golden files for kvm,
 * qemu and xen, validity against libvirt's own schema and spore's metadata
 * schema, and values that carry XML metacharacters.
 *
 * Golden files regenerate with SPORE_REGENERATE_GOLDEN=1.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <libxml/parser.h>
#include <libxml/relaxng.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include "domain-xml.h"
#include "manifest-priv.h"
#include "spore-error.h"
#include "test-util.h"

#define LIBVIRT_DOMAIN_RNG "/usr/share/libvirt/schemas/domain.rng"
#define IMAGE_ID \
    "sha256:6532722d5f2bdcb02018109dc3f3fbbe9fd879d68071cc917f46457a988282ca"

static Manifest *
load(const char *name)
{
    g_autofree char *rel = g_strconcat("manifests/valid/", name, NULL);
    g_autofree char *path = test_data_path(rel);
    g_autoptr(GError) err = NULL;
    Manifest *m = manifest_parse_file(path, NULL, &err);

    cr_assert(m, "%s", err ? err->message : "");
    return m;
}

static char *
make_xml(const Manifest *m, ManifestHypervisor virt, guint index)
{
    CloneDomainSpec spec = {
        .manifest = m,
        .index = index,
        .image_id = IMAGE_ID,
        .generation = 7,
        .overlay_path = "/var/lib/spore/clones/clone.qcow2",
        .console_log = "/var/log/spore/clone.console.log",
        .seed_path = m->customize.method == MANIFEST_CUSTOMIZE_CLOUD_INIT
                         ? "/var/lib/spore/clones/clone.seed.iso"
                         : NULL,
        .uuid = "7a3c1f4e-9d2b-4c8a-b5e6-0f1d2c3b4a59",
        .virt = virt,
    };
    g_autoptr(GError) err = NULL;
    char *xml = clone_domain_xml(&spec, &err);

    cr_assert(xml, "%s", err ? err->message : "");
    return xml;
}

/* Validate @xml against the RelaxNG schema at @rng_path. */
static bool
validates(const char *xml, const char *rng_path, char **ret_why)
{
    xmlRelaxNGParserCtxt *pctxt = xmlRelaxNGNewParserCtxt(rng_path);
    xmlRelaxNG *schema = xmlRelaxNGParse(pctxt);
    xmlRelaxNGValidCtxt *vctxt;
    xmlDoc *doc = xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL,
                                XML_PARSE_NONET);
    int rc;

    xmlRelaxNGFreeParserCtxt(pctxt);
    cr_assert(schema, "cannot compile '%s'", rng_path);
    cr_assert(doc);
    vctxt = xmlRelaxNGNewValidCtxt(schema);
    rc = xmlRelaxNGValidateDoc(vctxt, doc);
    if (rc != 0 && ret_why) {
        const xmlError *e = xmlGetLastError();
        *ret_why = g_strdup(e && e->message ? e->message : "invalid");
    }
    xmlRelaxNGFreeValidCtxt(vctxt);
    xmlRelaxNGFree(schema);
    xmlFreeDoc(doc);
    return rc == 0;
}

static void
check_golden(const char *xml, const char *golden_name)
{
    g_autofree char *rel = g_strconcat("domains/", golden_name, NULL);
    g_autofree char *path = test_data_path(rel);
    g_autofree char *golden = NULL;

    if (g_getenv("SPORE_REGENERATE_GOLDEN")) {
        cr_assert(g_file_set_contents(path, xml, -1, NULL));
        return;
    }
    golden = test_read_file(path, NULL);
    cr_expect_str_eq(xml, golden,
                     "%s changed; if intended, rerun with "
                     "SPORE_REGENERATE_GOLDEN=1",
                     golden_name);
}

static const struct {
    const char *manifest;
    ManifestHypervisor virt;
    const char *golden;
} cases[] = {
    {"web-full.xml", MANIFEST_HYPERVISOR_KVM, "web-kvm.xml"},
    {"web-full.xml", MANIFEST_HYPERVISOR_QEMU, "web-qemu.xml"},
    {"web-full.xml", MANIFEST_HYPERVISOR_XEN, "web-xen-pv.xml"},
    {"xen-qcow2-bridge.xml", MANIFEST_HYPERVISOR_XEN, "db-xen-hvm.xml"},
    {"minimal.xml", MANIFEST_HYPERVISOR_QEMU, "tiny-qemu.xml"},
    {"cloud-init-seed.xml", MANIFEST_HYPERVISOR_QEMU, "cloudy-qemu.xml"},
    {"cloud-init-seed.xml", MANIFEST_HYPERVISOR_XEN, "cloudy-xen-hvm.xml"},
};

Test(domain_xml, matches_the_golden_files)
{
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(Manifest) m = load(cases[i].manifest);
        g_autofree char *xml = make_xml(m, cases[i].virt, 0);

        check_golden(xml, cases[i].golden);
    }
}

Test(domain_xml, validates_against_libvirts_schema_for_every_type)
{
    if (!g_file_test(LIBVIRT_DOMAIN_RNG, G_FILE_TEST_EXISTS))
        cr_skip_test("libvirt's schemas are not installed (libvirt0)");
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(Manifest) m = load(cases[i].manifest);
        g_autofree char *xml = make_xml(m, cases[i].virt, 0);
        g_autofree char *why = NULL;

        cr_expect(validates(xml, LIBVIRT_DOMAIN_RNG, &why), "%s: %s\n%s",
                  cases[i].golden, why ? why : "", xml);
    }
}

Test(domain_xml, carries_metadata_valid_against_its_own_schema)
{
    g_autoptr(Manifest) m = load("web-full.xml");
    g_autofree char *xml = make_xml(m, MANIFEST_HYPERVISOR_KVM, 3);
    g_autofree char *rng = NULL;
    g_autofree char *why = NULL;
    xmlDoc *doc = xmlReadMemory(xml, (int)strlen(xml), NULL, NULL, 0);
    xmlXPathContext *xp = xmlXPathNewContext(doc);
    xmlXPathObject *res;
    xmlDoc *meta = xmlNewDoc(BAD_CAST "1.0");
    xmlChar *meta_text = NULL;
    xmlChar *index_text;
    int meta_len = 0;

    xmlXPathRegisterNs(xp, BAD_CAST "spore", BAD_CAST CLONE_METADATA_NAMESPACE);
    res = xmlXPathEvalExpression(BAD_CAST "/domain/metadata/spore:clone", xp);
    cr_assert(res && res->nodesetval && res->nodesetval->nodeNr == 1);
    xmlDocSetRootElement(meta,
                         xmlDocCopyNode(res->nodesetval->nodeTab[0], meta, 1));
    index_text = xmlGetProp(res->nodesetval->nodeTab[0], BAD_CAST "index");
    cr_expect_str_eq((char *)index_text, "3");
    xmlFree(index_text);
    xmlDocDumpMemory(meta, &meta_text, &meta_len);
    rng = g_build_filename(g_getenv("SPORE_SOURCE_ROOT"), "xml-schemas",
                           "clone-metadata.rng", NULL);
    cr_expect(validates((char *)meta_text, rng, &why), "%s\n%s", why ? why : "",
              meta_text);
    xmlFree(meta_text);
    xmlXPathFreeObject(res);
    xmlXPathFreeContext(xp);
    xmlFreeDoc(meta);
    xmlFreeDoc(doc);
}

/*
 * A manifest's command line and the host's paths carry markup: the domain
 * keeps its structure, and the values come back exactly.
 */
Test(domain_xml, values_with_xml_metacharacters_cannot_change_its_structure)
{
    static const char manifest[] =
        "<service xmlns=\"urn:spore:manifest:1\" name=\"evil\">"
        "<description>&lt;/description&gt;&lt;devices&gt;&lt;disk/&gt;"
        "</description>"
        "<image name=\"i\"><origin url=\"http://127.0.0.1/i\"/></image>"
        "<vm hypervisor=\"qemu\"><vcpus>1</vcpus><memory>65536</memory>"
        "<boot kernel=\"/boot/v'&quot;&lt;&amp;\" "
        "cmdline=\"a&lt;/cmdline&gt;&lt;/os&gt;&lt;devices&gt;&lt;hostdev/&gt;"
        " q='x' &amp;amp;\"/></vm></service>";
    g_autoptr(Manifest) m =
        manifest_parse_data(manifest, strlen(manifest), NULL, NULL);
    CloneDomainSpec spec = {
        .manifest = m,
        .image_id = IMAGE_ID,
        .overlay_path = "/tmp/a'b\"c<d>&e.qcow2",
        .console_log = "/tmp/log]]>",
        .virt = MANIFEST_HYPERVISOR_QEMU,
    };
    g_autofree char *xml = NULL;
    xmlDoc *doc;
    xmlXPathContext *xp;
    xmlXPathObject *res;
    xmlChar *v;

    cr_assert(m);
    xml = clone_domain_xml(&spec, NULL);
    cr_assert(xml);
    doc = xmlReadMemory(xml, (int)strlen(xml), NULL, NULL, XML_PARSE_NONET);
    cr_assert(doc, "the domain XML is not well-formed:\n%s", xml);
    xp = xmlXPathNewContext(doc);

    res = xmlXPathEvalExpression(BAD_CAST "count(//devices)", xp);
    cr_expect_eq(res->floatval, 1.0, "one <devices>:\n%s", xml);
    xmlXPathFreeObject(res);
    res =
        xmlXPathEvalExpression(BAD_CAST "count(//hostdev) + count(//disk)", xp);
    cr_expect_eq(res->floatval, 1.0, "only spore's disk:\n%s", xml);
    xmlXPathFreeObject(res);

    res = xmlXPathEvalExpression(BAD_CAST "string(/domain/os/cmdline)", xp);
    cr_expect_str_eq((char *)res->stringval,
                     "a</cmdline></os><devices><hostdev/> q='x' &amp;");
    xmlXPathFreeObject(res);
    res = xmlXPathEvalExpression(BAD_CAST "string(/domain/os/kernel)", xp);
    cr_expect_str_eq((char *)res->stringval, "/boot/v'\"<&");
    xmlXPathFreeObject(res);
    res = xmlXPathEvalExpression(BAD_CAST "/domain/devices/disk/source", xp);
    cr_assert(res->nodesetval && res->nodesetval->nodeNr == 1);
    v = xmlGetProp(res->nodesetval->nodeTab[0], BAD_CAST "file");
    cr_expect_str_eq((char *)v, "/tmp/a'b\"c<d>&e.qcow2");
    xmlFree(v);
    xmlXPathFreeObject(res);
    res = xmlXPathEvalExpression(BAD_CAST "string(/domain/description)", xp);
    cr_expect_str_eq((char *)res->stringval, "</description><devices><disk/>");
    xmlXPathFreeObject(res);

    xmlXPathFreeContext(xp);
    xmlFreeDoc(doc);
}

/* The number that XPath @expr evaluates to in @xml. */
static double
xpath_number(const char *xml, const char *expr)
{
    xmlDoc *doc =
        xmlReadMemory(xml, (int)strlen(xml), NULL, NULL, XML_PARSE_NONET);
    xmlXPathContext *xp;
    xmlXPathObject *res;
    double v;

    cr_assert(doc, "the domain XML is not well-formed:\n%s", xml);
    xp = xmlXPathNewContext(doc);
    xmlXPathRegisterNs(xp, BAD_CAST "spore", BAD_CAST CLONE_METADATA_NAMESPACE);
    res = xmlXPathEvalExpression(BAD_CAST expr, xp);
    cr_assert(res, "%s", expr);
    v = xmlXPathCastToNumber(res);
    xmlXPathFreeObject(res);
    xmlXPathFreeContext(xp);
    xmlFreeDoc(doc);
    return v;
}

/*
 * A service name is a domain name and a metadata attribute: the parser
 * refuses one with markup; one that gets past it anyway (a Manifest built
 * by hand) is escaped, never markup.
 */
Test(domain_xml, a_service_name_with_xml_metacharacters_is_refused_or_escaped)
{
    static const char *const names[] = {
        "a&lt;b", "w&quot;/&gt;&lt;evil/&gt;", "x&amp;y", "q&apos;z", "]]&gt;",
    };
    static const char evil[] = "w\"/><evil/><name>x</name>&amp;'<!--";
    g_autoptr(Manifest) m = manifest_new();
    CloneDomainSpec spec = {
        .manifest = m,
        .image_id = IMAGE_ID,
        .overlay_path = "/x.qcow2",
        .console_log = "/x.log",
        .virt = MANIFEST_HYPERVISOR_QEMU,
    };
    g_autofree char *xml = NULL;

    for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
        g_autofree char *doc = g_strdup_printf(
            "<service xmlns=\"urn:spore:manifest:1\" name=\"%s\">"
            "<image name=\"i\"><origin url=\"http://127.0.0.1/i\"/></image>"
            "<vm><vcpus>1</vcpus><memory>65536</memory></vm></service>",
            names[i]);
        g_autoptr(GError) err = NULL;
        g_autoptr(Manifest) bad =
            manifest_parse_data(doc, strlen(doc), NULL, &err);

        cr_expect_null(bad, "service name '%s' was accepted", names[i]);
        cr_expect(err && strstr(err->message, "service name"), "%s: %s",
                  names[i], err ? err->message : "");
    }

    m->name = g_strdup(evil);
    m->vm.vcpus = 1;
    m->vm.memory_kib = 65536;
    xml = clone_domain_xml(&spec, NULL);
    cr_assert(xml);
    cr_expect_eq(xpath_number(xml, "count(//evil) + count(//comment())"), 0,
                 "%s", xml);
    cr_expect_eq(xpath_number(xml, "count(/domain/name)"), 1, "%s", xml);
    /* XPath 1.0 has no escape for "'": compare with concat() */
    cr_expect_eq(xpath_number(xml, "number(/domain/name = concat('w\"/><evil/>"
                                   "<name>x</name>&amp;', \"'\", '<!---0'))"),
                 1, "%s", xml);
    cr_expect_eq(xpath_number(xml, "number(/domain/metadata/spore:clone/"
                                   "@service = concat('w\"/><evil/><name>x"
                                   "</name>&amp;', \"'\", '<!--'))"),
                 1, "%s", xml);
}

/*
 * File contents, first-boot commands and ssh keys go into the guest, never
 * into the domain XML: markup in them cannot reach it.
 */
Test(domain_xml, customization_content_never_reaches_the_domain_xml)
{
    static const char manifest[] =
        "<service xmlns=\"urn:spore:manifest:1\" name=\"web\">"
        "<image name=\"i\"><origin url=\"http://127.0.0.1/i\"/></image>"
        "<vm hypervisor=\"qemu\"><vcpus>1</vcpus><memory>65536</memory></vm>"
        "<customize>"
        "<file path=\"/etc/x\">&lt;/domain&gt;&lt;evil/&gt;</file>"
        "<file path=\"/etc/y\"><![CDATA[</devices><evil2 a='1'/>]]></file>"
        "<ssh-key>ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsa"
        "bgH5C9okWi0dh2l9GKJl &lt;/domain&gt;&lt;evil3/&gt;</ssh-key>"
        "<firstboot>echo '&lt;/domain&gt;&lt;evil4/&gt;'</firstboot>"
        "</customize></service>";
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m =
        manifest_parse_data(manifest, strlen(manifest), NULL, &err);

    cr_assert(m, "%s", err ? err->message : "");
    for (int virt = MANIFEST_HYPERVISOR_KVM; virt <= MANIFEST_HYPERVISOR_XEN;
         virt++) {
        g_autofree char *xml = make_xml(m, (ManifestHypervisor)virt, 0);

        cr_expect_null(strstr(xml, "evil"), "%s", xml);
        cr_expect_null(strstr(xml, "/etc/x"), "%s", xml);
        cr_expect_eq(xpath_number(xml, "count(/domain)"), 1);
    }
}

Test(domain_xml, refuses_bad_indexes_ids_and_relative_paths)
{
    g_autoptr(Manifest) m = load("web-full.xml"); /* max 8 */
    CloneDomainSpec spec = {
        .manifest = m,
        .index = 8,
        .image_id = IMAGE_ID,
        .overlay_path = "/x.qcow2",
        .console_log = "/x.log",
    };
    g_autoptr(GError) e1 = NULL;
    g_autoptr(GError) e2 = NULL;
    g_autoptr(GError) e3 = NULL;
    g_autofree char *a = clone_domain_xml(&spec, &e1);
    g_autofree char *b = NULL;
    g_autofree char *c = NULL;

    cr_expect_null(a);
    cr_expect(e1 && strstr(e1->message, "beyond"), "%s", e1 ? e1->message : "");
    spec.index = 0;
    spec.image_id = "sha256:XYZ";
    b = clone_domain_xml(&spec, &e2);
    cr_expect_null(b);
    cr_expect(e2 && strstr(e2->message, "not an image id"));
    spec.image_id = IMAGE_ID;
    spec.overlay_path = "clones/x.qcow2";
    c = clone_domain_xml(&spec, &e3);
    cr_expect_null(c);
    cr_expect(e3 && strstr(e3->message, "absolute"));
}

Test(domain_xml, attaches_a_cloud_init_seed_read_only_after_the_overlay)
{
    g_autoptr(Manifest) m = load("cloud-init-seed.xml");
    static const struct {
        ManifestHypervisor virt;
        const char *device, *dev, *bus;
    } types[] = {
        {MANIFEST_HYPERVISOR_KVM, "cdrom", "hdc", "ide"},
        {MANIFEST_HYPERVISOR_QEMU, "cdrom", "hdc", "ide"},
        {MANIFEST_HYPERVISOR_XEN, "disk", "xvdb", "xen"},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(types); i++) {
        g_autofree char *xml = make_xml(m, types[i].virt, 0);
        g_autofree char *seed = g_strdup_printf(
            "count(/domain/devices/disk[2][@type='file'][@device='%s']"
            "[driver/@type='raw'][readonly]"
            "[source/@file='/var/lib/spore/clones/clone.seed.iso']"
            "[target/@dev='%s'][target/@bus='%s'])",
            types[i].device, types[i].dev, types[i].bus);

        cr_expect_eq(xpath_number(xml, seed), 1, "%s", xml);
        cr_expect_eq(xpath_number(xml, "count(/domain/devices/disk)"), 2);
        /* the overlay stays the first disk, writable: clone-host.c finds
         * it there */
        cr_expect_eq(xpath_number(xml, "count(/domain/devices/disk[1]"
                                       "[driver/@type='qcow2'][not(readonly)]"
                                       "[source/@file='/var/lib/spore/clones/"
                                       "clone.qcow2'])"),
                     1, "%s", xml);
    }
}

Test(domain_xml, refuses_a_seed_that_does_not_match_the_customize_method)
{
    g_autoptr(Manifest) ci = load("cloud-init-seed.xml");
    g_autoptr(Manifest) gfs = load("web-full.xml");
    CloneDomainSpec spec = {
        .manifest = ci,
        .index = 0,
        .image_id = IMAGE_ID,
        .overlay_path = "/x.qcow2",
        .console_log = "/x.log",
    };
    g_autoptr(GError) e1 = NULL;
    g_autoptr(GError) e2 = NULL;
    g_autoptr(GError) e3 = NULL;
    g_autofree char *a = clone_domain_xml(&spec, &e1);
    g_autofree char *b = NULL;
    g_autofree char *c = NULL;

    cr_expect_null(a);
    cr_expect(e1 && strstr(e1->message, "a seed is needed"), "%s",
              e1 ? e1->message : "");
    spec.seed_path = "seed.iso";
    b = clone_domain_xml(&spec, &e2);
    cr_expect_null(b);
    cr_expect(e2 && strstr(e2->message, "must be absolute"));
    spec.manifest = gfs;
    spec.seed_path = "/x.seed.iso";
    c = clone_domain_xml(&spec, &e3);
    cr_expect_null(c);
    cr_expect(e3 && strstr(e3->message, "not customized by cloud-init"), "%s",
              e3 ? e3->message : "");
}
