/*
 * test-manifest-format.c: canonical XML out of a Manifest, and the round
 * trip parse -> format -> parse on every valid example.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "manifest.h"
#include "test-util.h"

static Manifest *
parse_or_fail(const char *what, const char *xml)
{
    g_autoptr(GError) err = NULL;
    Manifest *m = manifest_parse_data(xml, strlen(xml), NULL, &err);

    cr_assert(m, "%s: %s\n%s", what, err ? err->message : "", xml);
    return m;
}

Test(manifest_format, round_trips_every_valid_example)
{
    g_autoptr(GPtrArray) files = test_data_list("manifests/valid", ".xml");

    cr_assert_geq(files->len, 5u);
    for (guint i = 0; i < files->len; i++) {
        const char *path = files->pdata[i];
        g_autoptr(GError) err = NULL;
        g_autoptr(Manifest) first = manifest_parse_file(path, NULL, &err);
        g_autoptr(Manifest) second = NULL;
        g_autofree char *xml1 = NULL;
        g_autofree char *xml2 = NULL;

        cr_assert(first, "%s: %s", path, err ? err->message : "");
        xml1 = manifest_format(first);
        second = parse_or_fail(path, xml1);
        cr_expect(manifest_equal(first, second),
                  "%s: parse(format(m)) differs from m:\n%s", path, xml1);
        xml2 = manifest_format(second);
        cr_expect_str_eq(xml1, xml2, "%s: canonical form is not a fixpoint",
                         path);
    }
}

/* the canonical form of tests/data/manifests/valid/NAME.xml, against
 * tests/data/manifests/canonical/NAME.xml */
static void
expect_canonical_form(const char *name)
{
    g_autofree char *in_rel = g_strdup_printf("manifests/valid/%s.xml", name);
    g_autofree char *golden_rel =
        g_strdup_printf("manifests/canonical/%s.xml", name);
    g_autofree char *in_path = test_data_path(in_rel);
    g_autofree char *golden_path = test_data_path(golden_rel);
    g_autoptr(Manifest) m = manifest_parse_file(in_path, NULL, NULL);
    g_autofree char *xml = NULL;
    g_autofree char *golden = NULL;

    cr_assert(m, "%s", in_path);
    xml = manifest_format(m);
    if (g_getenv("SPORE_REGENERATE_GOLDEN")) {
        cr_assert(g_file_set_contents(golden_path, xml, -1, NULL));
        return;
    }
    golden = test_read_file(golden_path, NULL);
    cr_expect_str_eq(xml, golden,
                     "%s: canonical form changed; if intended, rerun with "
                     "SPORE_REGENERATE_GOLDEN=1",
                     name);
}

Test(manifest_format, writes_the_expected_canonical_form)
{
    expect_canonical_form("autoscaled");
}

Test(manifest_format, writes_the_cloud_init_method_and_leaves_the_default_out)
{
    g_autofree char *path = test_data_path("manifests/valid/web-full.xml");
    g_autoptr(Manifest) m = manifest_parse_file(path, NULL, NULL);
    g_autofree char *xml = NULL;

    expect_canonical_form("cloud-init-seed");
    cr_assert(m);
    cr_expect_eq(m->customize.method, MANIFEST_CUSTOMIZE_LIBGUESTFS);
    xml = manifest_format(m);
    cr_expect_null(strstr(xml, "method="), "%s", xml);
}

Test(manifest_format, writes_schedules_in_canonical_form)
{
    g_autofree char *in_path = test_data_path("manifests/valid/scheduled.xml");
    g_autofree char *golden_path =
        test_data_path("manifests/canonical/scheduled.xml");
    g_autoptr(Manifest) m = manifest_parse_file(in_path, NULL, NULL);
    g_autofree char *xml = NULL;
    g_autofree char *golden = NULL;

    cr_assert(m);
    xml = manifest_format(m);
    if (g_getenv("SPORE_REGENERATE_GOLDEN")) {
        cr_assert(g_file_set_contents(golden_path, xml, -1, NULL));
        return;
    }
    golden = test_read_file(golden_path, NULL);
    cr_expect_str_eq(xml, golden,
                     "canonical form changed; if intended, rerun with "
                     "SPORE_REGENERATE_GOLDEN=1");
}

Test(manifest_equal, tells_schedules_apart)
{
    g_autofree char *path = test_data_path("manifests/valid/scheduled.xml");
    g_autoptr(Manifest) a = manifest_parse_file(path, NULL, NULL);
    g_autoptr(Manifest) b = manifest_parse_file(path, NULL, NULL);
    ManifestSchedule *s;

    cr_assert(a && b);
    cr_expect(manifest_equal(a, b));
    s = b->scaling.schedules->pdata[0];
    s->amount = 7;
    cr_expect_not(manifest_equal(a, b), "another count");
    s->amount = 6;
    s->grace_seconds = 601;
    cr_expect_not(manifest_equal(a, b), "another grace");
    s->grace_seconds = MANIFEST_DEFAULT_GRACE_SECONDS;
    cr_expect(manifest_equal(a, b));
    s = b->scaling.schedules->pdata[6];
    s->at += 60;
    cr_expect_not(manifest_equal(a, b), "another start time");
    s->at -= 60;
    g_ptr_array_remove_index(b->scaling.schedules, 7);
    cr_expect_not(manifest_equal(a, b), "one schedule fewer");
}

Test(manifest_format, picks_the_largest_exact_units)
{
    static const char xml[] =
        "<service xmlns=\"urn:spore:manifest:1\" name=\"s\">"
        "<image name=\"i\"><origin url=\"http://127.0.0.1/i\"/></image>"
        "<vm><vcpus>1</vcpus><memory unit=\"KiB\">3145728</memory></vm>"
        "<scaling min=\"0\" max=\"3\" cooldown=\"7200\" stabilization=\"90s\">"
        "<rule metric=\"cpu\" above=\"0.750\" add=\"1\" for=\"120s\"/>"
        "</scaling></service>";
    g_autoptr(Manifest) m = parse_or_fail("units", xml);
    g_autofree char *out = manifest_format(m);

    cr_expect(strstr(out, "<memory unit=\"GiB\">3</memory>"), "%s", out);
    cr_expect(strstr(out, "cooldown=\"2h\""), "%s", out);
    cr_expect(strstr(out, "stabilization=\"90s\""), "%s", out);
    cr_expect(strstr(out, "above=\"0.75\""), "%s", out);
    cr_expect(strstr(out, "for=\"2m\""), "%s", out);
    cr_expect(strstr(out, "initial=\"0\""), "initial defaults to min: %s", out);
}

Test(manifest_format, escapes_markup_in_text_so_structure_is_kept)
{
    static const char xml[] =
        "<service xmlns=\"urn:spore:manifest:1\" name=\"s\">"
        "<description>&lt;/description&gt;&lt;vm/&gt; &amp;amp;</description>"
        "<image name=\"i\"><origin url=\"http://127.0.0.1/i?a=1&amp;b=2\"/>"
        "</image>"
        "<vm><vcpus>1</vcpus><memory>65536</memory></vm>"
        "<customize><file path=\"/etc/x\">]]&gt; &lt;/file&gt;\"'</file>"
        "</customize></service>";
    g_autoptr(Manifest) m = parse_or_fail("markup", xml);
    g_autofree char *out = manifest_format(m);
    g_autoptr(Manifest) again = parse_or_fail("markup formatted", out);

    cr_expect_str_eq(again->description, "</description><vm/> &amp;");
    cr_expect_str_eq(again->image.origins->pdata[0],
                     "http://127.0.0.1/i?a=1&b=2");
    cr_expect_str_eq(
        ((ManifestFile *)again->customize.files->pdata[0])->content,
        "]]> </file>\"'");
    cr_expect(manifest_equal(m, again));
}

Test(manifest_equal, tells_different_manifests_apart)
{
    g_autofree char *path = test_data_path("manifests/valid/web-full.xml");
    g_autoptr(Manifest) a = manifest_parse_file(path, NULL, NULL);
    g_autoptr(Manifest) b = manifest_parse_file(path, NULL, NULL);

    cr_assert(a && b);
    cr_expect(manifest_equal(a, b));
    b->customize.method = MANIFEST_CUSTOMIZE_CLOUD_INIT;
    cr_expect_not(manifest_equal(a, b));
    b->customize.method = MANIFEST_CUSTOMIZE_LIBGUESTFS;
    b->vm.vcpus++;
    cr_expect_not(manifest_equal(a, b));
    b->vm.vcpus--;
    ((ManifestRule *)b->scaling.rules->pdata[1])->threshold = 0.25;
    cr_expect_not(manifest_equal(a, b));
    ((ManifestRule *)b->scaling.rules->pdata[1])->threshold = 0.2;
    cr_expect(manifest_equal(a, b));
    g_ptr_array_add(b->placement.hosts, g_strdup("host-b"));
    cr_expect_not(manifest_equal(a, b));
    cr_expect_not(manifest_equal(a, NULL));
    cr_expect(manifest_equal(NULL, NULL));
}
