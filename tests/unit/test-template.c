/*
 * test-template.c: placeholder checking, bounding and expansion.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "spore-error.h"
#include "template.h"

static const ManifestVars vars = {
    .service = "web",
    .index = 12,
    .hostname = "web-12",
    .host = "host-a",
};

static char *
expand(const char *tmpl)
{
    g_autoptr(GError) err = NULL;
    char *out = manifest_template_expand(tmpl, MANIFEST_VARS_ALL, &vars, &err);

    cr_assert(out, "'%s': %s", tmpl, err ? err->message : "");
    return out;
}

Test(template, expands_every_known_placeholder)
{
    g_autofree char *out =
        expand("{service}/{index}/{hostname}/{host}/{service}");

    cr_expect_str_eq(out, "web/12/web-12/host-a/web");
}

Test(template, keeps_text_that_is_not_a_placeholder)
{
    g_autofree char *a = expand("int main() { return 0; }");
    g_autofree char *b = expand("{{index}} and {{ and {index");
    g_autofree char *c = expand("{ index} {1x} {} }{");
    g_autofree char *d = expand("${{HOME}");

    cr_expect_str_eq(a, "int main() { return 0; }");
    cr_expect_str_eq(b, "{index}} and { and {index");
    cr_expect_str_eq(c, "{ index} {1x} {} }{");
    cr_expect_str_eq(d, "${HOME}");
}

Test(template, rejects_an_unknown_placeholder_by_name)
{
    g_autoptr(GError) err = NULL;

    cr_expect_not(manifest_template_check("echo ${HOME}", MANIFEST_VARS_ALL,
                                          NULL, NULL, &err));
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID));
    cr_expect(strstr(err->message, "unknown placeholder '{HOME}'"), "%s",
              err->message);
}

Test(template, rejects_a_placeholder_not_allowed_in_its_context)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = manifest_template_expand(
        "{host}-{index}", MANIFEST_VAR_SERVICE | MANIFEST_VAR_INDEX, &vars,
        &err);

    cr_expect_null(out);
    cr_assert(err);
    cr_expect(strstr(err->message, "'{host}' is not allowed here"), "%s",
              err->message);
}

Test(template, fails_when_an_allowed_value_is_missing)
{
    ManifestVars partial = {.service = "web", .index = 0};
    g_autoptr(GError) err = NULL;
    g_autofree char *out =
        manifest_template_expand("{host}", MANIFEST_VARS_ALL, &partial, &err);

    cr_expect_null(out);
    cr_expect(err && strstr(err->message, "has no value"));
}

Test(template, bounds_the_longest_expansion)
{
    ManifestVarLengths lengths = {
        .service = 3, .index = 3, .hostname = 10, .host = 63};
    gsize max_len = 0;

    cr_assert(manifest_template_check("ab{service}{index}{hostname}{host}{{",
                                      MANIFEST_VARS_ALL, &lengths, &max_len,
                                      NULL));
    cr_expect_eq(max_len, 2u + 3u + 3u + 10u + 63u + 1u);
}
