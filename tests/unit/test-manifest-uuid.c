/*
 * test-manifest-uuid.c: a clone's UUID is a pure function of the canonical
 * text, the index, the image id and the generation — the same whether the
 * site manager hashes its stored text or the agent its parsed manifest.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "manifest.h"
#include "test-util.h"

#define IMAGE_ID "sha256:0123456789abcdef"

static Manifest *
parse_path(const char *path)
{
    g_autoptr(GError) err = NULL;
    Manifest *m = manifest_parse_file(path, NULL, &err);

    cr_assert(m, "%s: %s", path, err ? err->message : "");
    return m;
}

Test(manifest_clone_uuid, agrees_with_clone_uuid_of_the_parsed_stored_text)
{
    g_autoptr(GPtrArray) files = test_data_list("manifests/valid", ".xml");

    for (guint i = 0; i < files->len; i++) {
        g_autoptr(Manifest) mf = parse_path(files->pdata[i]);
        g_autofree char *stored = manifest_format(mf);
        g_autoptr(Manifest) again =
            manifest_parse_data(stored, strlen(stored), NULL, NULL);
        g_autofree char *by_text = NULL;
        g_autofree char *by_manifest = NULL;

        cr_assert(again);
        by_text = manifest_clone_uuid(stored, 3, IMAGE_ID, 7);
        by_manifest = clone_uuid(again, 3, IMAGE_ID, 7);
        cr_expect_str_eq(by_text, by_manifest, "%s", (char *)files->pdata[i]);
    }
}

Test(manifest_clone_uuid, keeps_the_derivation_of_earlier_releases)
{
    /* sha256("spore-clone-uuid-1\n0\nimg\n1\n<x/>"), version and variant
     * bits set: the value clone-host.c computed before the move */
    g_autofree char *uuid = manifest_clone_uuid("<x/>", 0, "img", 1);

    cr_expect_str_eq(uuid, "57c6b8ba-2e3d-825f-9c9f-94be606f93b9");
}

Test(manifest_clone_uuid, differs_by_index_image_generation_and_text)
{
    g_autofree char *a = manifest_clone_uuid("<x/>", 0, "img", 1);
    g_autofree char *b = manifest_clone_uuid("<x/>", 1, "img", 1);
    g_autofree char *c = manifest_clone_uuid("<x/>", 0, "img2", 1);
    g_autofree char *d = manifest_clone_uuid("<x/>", 0, "img", 2);
    g_autofree char *e = manifest_clone_uuid("<y/>", 0, "img", 1);

    cr_expect_str_neq(a, b);
    cr_expect_str_neq(a, c);
    cr_expect_str_neq(a, d);
    cr_expect_str_neq(a, e);
    cr_expect_eq(strlen(a), 36u);
    cr_expect_eq(a[14], '8', "version 8: %s", a);
}
