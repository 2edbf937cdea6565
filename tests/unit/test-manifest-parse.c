/*
 * test-manifest-parse.c: the manifest parser and its semantic rules.
 *
 * The corpus under tests/data/manifests/ drives most of it: every file in
 * valid/ must parse; every file in invalid/ names the rule it breaks and
 * carries "<!-- expect: LINE: TEXT -->", and must produce exactly one
 * problem, on LINE, whose message contains TEXT.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "manifest.h"
#include "spore-error.h"
#include "test-util.h"

#include <glib/gstdio.h>

#define MIN_INVALID_EXAMPLES 40u

static const char *
base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Parse inline text; problems returned in *ret_problems. */
static Manifest *
parse_text(const char *text, GPtrArray **ret_problems)
{
    g_autoptr(GError) err = NULL;
    GPtrArray *problems = manifest_problems_new();
    Manifest *m = manifest_parse_data(text, strlen(text), problems, &err);

    cr_assert((m == NULL) == (err != NULL));
    cr_assert((m == NULL) == (problems->len > 0));
    *ret_problems = problems;
    return m;
}

static const char *const minimal_prefix =
    "<?xml version=\"1.0\"?>\n"
    "<service xmlns=\"urn:spore:manifest:1\" name=\"s\">\n"
    "  <image name=\"i\"><origin url=\"http://127.0.0.1/i.raw\"/></image>\n"
    "  <vm><vcpus>1</vcpus><memory unit=\"MiB\">64</memory></vm>\n";

Test(manifest_parse, accepts_every_valid_example)
{
    g_autoptr(GPtrArray) files = test_data_list("manifests/valid", ".xml");

    cr_assert_geq(files->len, 5u);
    for (guint i = 0; i < files->len; i++) {
        g_autoptr(GPtrArray) problems = manifest_problems_new();
        g_autoptr(GError) err = NULL;
        g_autoptr(Manifest) m =
            manifest_parse_file(files->pdata[i], problems, &err);

        cr_expect(m != NULL, "%s: %s", base_name(files->pdata[i]),
                  err ? err->message : "");
        cr_expect_eq(problems->len, 0u);
    }
}

Test(manifest_parse, reports_the_exact_line_for_each_invalid_example)
{
    g_autoptr(GPtrArray) files = test_data_list("manifests/invalid", ".xml");
    g_autoptr(GRegex) re =
        g_regex_new("<!-- expect: ([0-9]+): (.*?) -->", G_REGEX_RAW, 0, NULL);

    cr_assert_geq(files->len, MIN_INVALID_EXAMPLES,
                  "the corpus must hold at least %u invalid examples",
                  MIN_INVALID_EXAMPLES);
    for (guint i = 0; i < files->len; i++) {
        const char *name = base_name(files->pdata[i]);
        gsize len;
        g_autofree char *data = test_read_file(files->pdata[i], &len);
        g_autoptr(GMatchInfo) match = NULL;
        g_autoptr(GPtrArray) problems = manifest_problems_new();
        g_autoptr(GError) err = NULL;
        g_autoptr(Manifest) m = NULL;
        g_autofree char *line_text = NULL;
        g_autofree char *expected = NULL;
        const ManifestProblem *p;

        cr_assert(g_regex_match_full(re, data, (gssize)len, 0, 0, &match, NULL),
                  "%s: no '<!-- expect: LINE: TEXT -->' comment", name);
        line_text = g_match_info_fetch(match, 1);
        expected = g_match_info_fetch(match, 2);

        m = manifest_parse_data(data, len, problems, &err);
        cr_expect(m == NULL, "%s: accepted, but should break a rule", name);
        cr_expect(err != NULL, "%s: no GError", name);
        if (!m && problems->len > 0) {
            p = problems->pdata[0];
            cr_expect_eq(problems->len, 1u,
                         "%s: %u problems, expected exactly 1 (first: %u: %s)",
                         name, problems->len, p->line, p->message);
            cr_expect_eq(p->line, (guint)atoi(line_text),
                         "%s: problem on line %u, expected %s (%s)", name,
                         p->line, line_text, p->message);
            cr_expect(strstr(p->message, expected) != NULL,
                      "%s: message '%s' lacks '%s'", name, p->message,
                      expected);
        }
    }
}

Test(manifest_parse, fills_in_every_default)
{
    g_autofree char *path = test_data_path("manifests/valid/minimal.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = manifest_parse_file(path, NULL, &err);

    cr_assert(m, "%s", err ? err->message : "");
    cr_expect_str_eq(m->name, "tiny");
    cr_expect_null(m->description);
    cr_expect_eq(m->image.format, MANIFEST_IMAGE_FORMAT_RAW);
    cr_expect_null(m->image.digest);
    cr_expect_eq(m->vm.hypervisor, MANIFEST_HYPERVISOR_KVM);
    cr_expect_eq(m->vm.memory_kib, 131072u, "memory without a unit is KiB");
    cr_expect_null(m->vm.kernel);
    cr_expect_eq(m->vm.interfaces->len, 0u);
    cr_expect_str_eq(m->customize.hostname, MANIFEST_DEFAULT_HOSTNAME);
    cr_expect_eq(m->scaling.min, 1u);
    cr_expect_eq(m->scaling.initial, 1u);
    cr_expect_eq(m->scaling.max, 1u);
    cr_expect_eq(m->scaling.cooldown_seconds,
                 MANIFEST_DEFAULT_COOLDOWN_SECONDS);
    cr_expect_eq(m->scaling.stabilization_seconds,
                 MANIFEST_DEFAULT_STABILIZATION_SECONDS);
    cr_expect_eq(m->placement.strategy, MANIFEST_PLACEMENT_SPREAD);
    cr_expect_eq(m->placement.hosts->len, 0u);
    cr_expect_eq(m->update.max_unavailable, 0u);
    cr_expect_eq(m->update.max_surge, 1u);
}

Test(manifest_parse, reads_the_update_bounds_and_writes_them_back)
{
    g_autofree char *path =
        test_data_path("manifests/valid/rolling-update.xml");
    g_autofree char *minimal = test_data_path("manifests/valid/minimal.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = manifest_parse_file(path, NULL, &err);
    g_autoptr(Manifest) d = NULL;
    g_autofree char *text = NULL;
    g_autofree char *dtext = NULL;

    cr_assert(m, "%s", err ? err->message : "");
    cr_expect_eq(m->update.max_unavailable, 1u);
    cr_expect_eq(m->update.max_surge, 2u);
    text = manifest_format(m);
    cr_expect(strstr(text, "<update max-unavailable=\"1\" max-surge=\"2\"/>"),
              "%s", text);
    d = manifest_parse_file(minimal, NULL, &err);
    cr_assert(d, "%s", err ? err->message : "");
    dtext = manifest_format(d);
    cr_expect_null(strstr(dtext, "<update"),
                   "the defaults leave the canonical form as it was: %s",
                   dtext);
}

Test(manifest_parse, reads_every_field_of_the_reference_example)
{
    g_autofree char *path = test_data_path("manifests/valid/web-full.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = manifest_parse_file(path, NULL, &err);
    const ManifestFile *f;
    const ManifestSshKey *k;
    const ManifestRule *r;
    const ManifestInterface *iface;

    cr_assert(m, "%s", err ? err->message : "");
    cr_expect_str_eq(m->name, "web");
    cr_expect_str_eq(m->description, "Public web front end");
    cr_expect_str_eq(m->image.name, "debian-12");
    cr_assert_eq(m->image.origins->len, 2u);
    cr_expect_str_eq(m->image.origins->pdata[0],
                     "http://10.0.0.5/images/debian-12.raw");
    cr_expect_str_eq(m->image.origins->pdata[1],
                     "file:///srv/images/debian-12.raw");
    cr_expect_str_eq(m->image.digest, "sha256:0123456789abcdef0123456789abcd"
                                      "ef0123456789abcdef0123456789abcdef");
    cr_expect_eq(m->vm.vcpus, 2u);
    cr_expect_eq(m->vm.memory_kib, 1024u * 1024u);
    cr_expect_str_eq(m->vm.kernel, "/var/lib/spore/boot/vmlinuz");
    cr_expect_str_eq(m->vm.initrd, "/var/lib/spore/boot/initrd.img");
    cr_expect_str_eq(m->vm.cmdline, "console=ttyS0 root=/dev/vda");
    cr_assert_eq(m->vm.interfaces->len, 1u);
    iface = m->vm.interfaces->pdata[0];
    cr_expect_str_eq(iface->network, "default");
    cr_expect_null(iface->bridge);

    cr_expect_str_eq(m->customize.hostname, "web-{index}");
    cr_assert_eq(m->customize.files->len, 1u);
    f = m->customize.files->pdata[0];
    cr_expect_str_eq(f->path, "/etc/motd");
    cr_expect_eq(f->mode, 0644u);
    cr_expect_str_eq(f->content, "Welcome to {hostname}\n",
                     "file content is kept byte for byte");
    cr_assert_eq(m->customize.ssh_keys->len, 1u);
    k = m->customize.ssh_keys->pdata[0];
    cr_expect_str_eq(k->user, "root");
    cr_expect(g_str_has_prefix(k->key, "ssh-ed25519 AAAAC3Nza"));
    cr_assert_eq(m->customize.firstboot->len, 1u);

    cr_expect_eq(m->scaling.min, 1u);
    cr_expect_eq(m->scaling.max, 8u);
    cr_expect_eq(m->scaling.initial, 2u);
    cr_expect_eq(m->scaling.cooldown_seconds, 60u);
    cr_assert_eq(m->scaling.rules->len, 2u);
    r = m->scaling.rules->pdata[0];
    cr_expect_eq(r->metric, MANIFEST_METRIC_REQUESTS);
    cr_expect(r->above);
    cr_expect_float_eq(r->threshold, 100.0, 1e-12);
    cr_expect(r->add);
    cr_expect_eq(r->step, 1u);
    cr_expect_eq(r->for_seconds, 0u);
    r = m->scaling.rules->pdata[1];
    cr_expect_eq(r->metric, MANIFEST_METRIC_CPU);
    cr_expect(!r->above);
    cr_expect_float_eq(r->threshold, 0.2, 1e-12);
    cr_expect(!r->add);
    cr_expect_eq(r->for_seconds, 300u);

    cr_expect_eq(m->placement.strategy, MANIFEST_PLACEMENT_SPREAD);
    cr_assert_eq(m->placement.hosts->len, 1u);
    cr_expect_str_eq(m->placement.hosts->pdata[0], "host-a");
}

Test(manifest_parse, reports_all_problems_of_a_file_in_line_order)
{
    static const char text[] =
        "<?xml version=\"1.0\"?>\n"                               /* 1 */
        "<service xmlns=\"urn:spore:manifest:1\" name=\"Bad\">\n" /* 2 */
        "  <image name=\"i\"\n"                                   /* 3 */
        "         format=\"vmdk\">\n"                             /* 4 */
        "    <origin url=\"gopher://x/\"/>\n"                     /* 5 */
        "  </image>\n"                                            /* 6 */
        "  <vm>\n"                                                /* 7 */
        "    <vcpus>0</vcpus>\n"                                  /* 8 */
        "    <memory>1</memory>\n"                                /* 9 */
        "    <gpu/>\n"                                            /* 10 */
        "  </vm>\n"                                               /* 11 */
        "  <scaling min=\"5\" max=\"2\"/>\n"                      /* 12 */
        "</service>\n";
    static const guint expected_lines[] = {2, 4, 5, 8, 10, 12};
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(Manifest) m = parse_text(text, &problems);

    cr_assert_null(m);
    cr_assert_eq(problems->len, G_N_ELEMENTS(expected_lines));
    for (guint i = 0; i < problems->len; i++) {
        const ManifestProblem *p = problems->pdata[i];
        cr_expect_eq(p->line, expected_lines[i], "problem %u (%s) on %u", i,
                     p->message, p->line);
    }
}

Test(manifest_parse, reports_cross_field_problems_alongside_local_ones)
{
    static const char text[] =
        "<?xml version=\"1.0\"?>\n"                               /* 1 */
        "<service xmlns=\"urn:spore:manifest:1\" name=\"web\">\n" /* 2 */
        "  <image name=\"i\"><origin url=\"http://h/i\"/></image>\n"
        "  <vm><vcpus>0</vcpus><memory>1</memory></vm>\n" /* 4 */
        "  <customize>\n"                                 /* 5 */
        "    <hostname>web_{index}</hostname>\n"          /* 6 */
        "  </customize>\n"                                /* 7 */
        "  <placement strategy=\"random\"/>\n"            /* 8 */
        "</service>\n";
    static const struct {
        guint line;
        const char *text;
    } expected[] = {
        {4, "<vcpus> '0'"},
        {6, "hostname template yields 'web_0' for clone 0"},
        {8, "strategy 'random'"},
    };
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(Manifest) m = parse_text(text, &problems);

    cr_assert_null(m);
    cr_assert_eq(problems->len, G_N_ELEMENTS(expected));
    for (guint i = 0; i < problems->len; i++) {
        const ManifestProblem *p = problems->pdata[i];
        cr_expect_eq(p->line, expected[i].line, "problem %u (%s) on %u", i,
                     p->message, p->line);
        cr_expect(strstr(p->message, expected[i].text), "problem %u: %s", i,
                  p->message);
    }
}

Test(manifest_parse, leaves_a_failed_field_out_of_the_cross_field_checks)
{
    /* With a 62-character name the default hostname '{service}-{index}'
     * would be 64 characters: it must not be blamed when the manifest's own
     * <hostname> failed, nor may a max that failed widen the index range. */
    g_autofree char *text = g_strdup_printf(
        "<?xml version=\"1.0\"?>\n"
        "<service xmlns=\"urn:spore:manifest:1\" name=\"%s\">\n"
        "  <image name=\"i\"><origin url=\"http://h/i\"/></image>\n"
        "  <vm><vcpus>1</vcpus><memory>1</memory></vm>\n"
        "  <customize><hostname>{bogus}</hostname></customize>\n"
        "  <scaling min=\"0\" max=\"1001\"/>\n"
        "</service>\n",
        "ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss");
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(Manifest) m = parse_text(text, &problems);

    cr_assert_null(m);
    cr_assert_eq(problems->len, 2u);
    cr_expect_eq(((ManifestProblem *)problems->pdata[0])->line, 5u, "%s",
                 ((ManifestProblem *)problems->pdata[0])->message);
    cr_expect_eq(((ManifestProblem *)problems->pdata[1])->line, 6u, "%s",
                 ((ManifestProblem *)problems->pdata[1])->message);
}

Test(manifest_parse, names_the_line_of_an_attribute_on_a_continuation_line)
{
    g_autofree char *text =
        g_strconcat(minimal_prefix,
                    "  <scaling min=\"1\"\n"              /* 5 */
                    "           max=\"2\"\n"              /* 6 */
                    "           cooldown=\"forever\"/>\n" /* 7 */
                    "</service>\n",
                    NULL);
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(Manifest) m = parse_text(text, &problems);
    const ManifestProblem *p;

    cr_assert_null(m);
    cr_assert_eq(problems->len, 1u);
    p = problems->pdata[0];
    cr_expect_eq(p->line, 7u, "%s", p->message);
    cr_expect(strstr(p->message, "cooldown 'forever'"));
}

Test(manifest_parse, stops_reporting_after_the_problem_limit)
{
    g_autoptr(GString) text = g_string_new(minimal_prefix);
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(Manifest) m = NULL;
    const ManifestProblem *last;

    g_string_append(text, "  <placement>\n");
    for (guint i = 0; i < 2 * MANIFEST_MAX_PROBLEMS; i++)
        g_string_append(text, "    <host>BAD</host>\n");
    g_string_append(text, "  </placement>\n</service>\n");
    m = parse_text(text->str, &problems);
    cr_assert_null(m);
    cr_assert_eq(problems->len, MANIFEST_MAX_PROBLEMS + 1);
    last = problems->pdata[problems->len - 1];
    cr_expect(strstr(last->message, "the rest are not reported"), "%s",
              last->message);
}

Test(manifest_parse, rejects_a_document_over_the_size_limit_before_parsing)
{
    gsize len = MANIFEST_MAX_BYTES + 1;
    g_autofree char *data = g_malloc(len);
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;

    /* a valid start, then padding in a comment that never closes */
    memset(data, ' ', len);
    memcpy(data, "<!--", 4);
    m = manifest_parse_data(data, len, problems, &err);
    cr_assert_null(m);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT), "%s",
              err->message);
    cr_expect(strstr(err->message, "larger than the limit"));
}

Test(manifest_parse, rejects_a_file_over_the_size_limit_without_reading_it_all)
{
    g_autofree char *path = NULL;
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    int fd = g_file_open_tmp("spore-big-XXXXXX.xml", &path, NULL);

    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 64ll * 1024 * 1024), 0);
    close(fd);
    m = manifest_parse_file(path, problems, &err);
    unlink(path);
    cr_assert_null(m);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_LIMIT), "%s",
              err->message);
    cr_expect_eq(problems->len, 1u);
}

Test(manifest_parse, reports_a_missing_file_as_an_io_error)
{
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m =
        manifest_parse_file("/nonexistent/spore/web.xml", problems, &err);

    cr_assert_null(m);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_IO));
    cr_expect(strstr(err->message, "'/nonexistent/spore/web.xml'"));
    cr_expect_eq(problems->len, 0u);
}

Test(manifest_parse, rejects_deep_nesting_at_the_limit)
{
    const guint depth = 200000; /* far beyond libxml2's own limit too */
    g_autoptr(GString) text =
        g_string_new("<service xmlns=\"urn:spore:manifest:1\" name=\"s\">");
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;

    for (guint i = 0; i < depth && text->len < MANIFEST_MAX_BYTES - 8; i++)
        g_string_append(text, "<a>");
    m = manifest_parse_data(text->str, text->len, problems, &err);
    cr_assert_null(m);
    cr_assert_eq(problems->len, 1u);
    cr_expect(strstr(((ManifestProblem *)problems->pdata[0])->message,
                     "nested deeper than 16 levels"),
              "%s", ((ManifestProblem *)problems->pdata[0])->message);
}

Test(manifest_parse, survives_binary_garbage)
{
    g_autoptr(GRand) rand = g_rand_new_with_seed(20261122);

    for (guint round = 0; round < 200; round++) {
        gsize len = 1 + g_rand_int_range(rand, 0, 4096);
        g_autofree guint8 *data = g_malloc(len);
        g_autoptr(GPtrArray) problems = manifest_problems_new();
        g_autoptr(GError) err = NULL;
        g_autoptr(Manifest) m = NULL;

        for (gsize i = 0; i < len; i++)
            data[i] = (guint8)g_rand_int(rand);
        if (round % 2)
            memcpy(data, "<service ", MIN(len, 9u)); /* get past byte 0 */
        m = manifest_parse_data((const char *)data, len, problems, &err);
        cr_assert_null(m, "round %u accepted garbage", round);
        cr_assert_geq(problems->len, 1u);
    }
}

Test(manifest_parse, rejects_an_empty_document_and_nul_bytes)
{
    static const char with_nul[] = "<service xmlns=\"urn:spore:manifest:1\" "
                                   "name=\"a\0b\"/>";
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = manifest_parse_data("", 0, problems, &err);

    cr_assert_null(m);
    cr_expect(strstr(err->message, "empty"));
    g_clear_error(&err);
    m = manifest_parse_data(with_nul, sizeof(with_nul) - 1, problems, &err);
    cr_assert_null(m);
}

Test(manifest_parse, does_not_expand_an_entity_bomb)
{
    g_autofree char *path =
        test_data_path("manifests/invalid/doctype-entity-bomb.xml");
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = manifest_parse_file(path, problems, &err);

    cr_assert_null(m);
    cr_expect(strstr(err->message, "DOCTYPE is not allowed"), "%s",
              err->message);
}

Test(manifest_parse, escapes_control_characters_in_messages)
{
    g_autofree char *text = g_strconcat(
        minimal_prefix,
        "  <placement><host>a&#x9b;31mred&#x202e;</host></placement>\n"
        "</service>\n",
        NULL);
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(Manifest) m = parse_text(text, &problems);
    const ManifestProblem *p;

    cr_assert_null(m);
    cr_assert_eq(problems->len, 1u);
    p = problems->pdata[0];
    /* U+009B is CSI, a C1 control that XML 1.0 allows in text */
    cr_expect_null(strstr(p->message, "\xc2\x9b"), "raw CSI reached: %s",
                   p->message);
    cr_expect(strstr(p->message, "a\\u009b31mred"), "%s", p->message);
}

Test(manifest_parse, keeps_file_content_whitespace_and_metacharacters)
{
    g_autofree char *text = g_strconcat(
        minimal_prefix,
        "  <customize><file path=\"/etc/x\">  a &lt;b&gt; &amp; \"q\"\n"
        "\tend  </file></customize>\n"
        "</service>\n",
        NULL);
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(Manifest) m = parse_text(text, &problems);
    const ManifestFile *f;

    cr_assert(m);
    f = m->customize.files->pdata[0];
    cr_expect_str_eq(f->content, "  a <b> & \"q\"\n\tend  ");
    cr_expect_eq(f->mode, MANIFEST_DEFAULT_FILE_MODE);
}

Test(manifest_parse, checks_the_hostname_template_for_every_index_below_max)
{
    /* 61 letters + {index}: 62 chars up to 9, 63 up to 99, 64 from 100 */
    g_autofree char *ok_text = g_strdup_printf(
        "%s  <customize><hostname>%s{index}</hostname></customize>\n"
        "  <scaling min=\"0\" max=\"100\"/>\n</service>\n",
        minimal_prefix,
        "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh");
    g_autofree char *bad_text = g_strdup_printf(
        "%s  <customize><hostname>%s{index}</hostname></customize>\n"
        "  <scaling min=\"0\" max=\"101\"/>\n</service>\n",
        minimal_prefix,
        "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh");
    g_autoptr(GPtrArray) problems = NULL;
    g_autoptr(GPtrArray) problems2 = NULL;
    g_autoptr(Manifest) ok = parse_text(ok_text, &problems);
    g_autoptr(Manifest) bad = parse_text(bad_text, &problems2);

    cr_expect(ok, "max=100 keeps every hostname within 63 characters");
    cr_expect_null(bad, "clone 100 would get a 64-character label");
}

Test(manifest_parse, derives_clone_names_and_hostnames)
{
    g_autofree char *path = test_data_path("manifests/valid/web-full.xml");
    g_autoptr(Manifest) m = manifest_parse_file(path, NULL, NULL);
    g_autofree char *name = NULL;
    g_autofree char *hostname = NULL;

    cr_assert(m);
    name = manifest_clone_name(m, 7);
    hostname = manifest_clone_hostname(m, 7, NULL);
    cr_expect_str_eq(name, "web-7");
    cr_expect_str_eq(hostname, "web-7");
}

Test(manifest_parse, reads_every_form_of_scheduled_policy)
{
    g_autofree char *path = test_data_path("manifests/valid/scheduled.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = manifest_parse_file(path, NULL, &err);
    const ManifestSchedule *s;

    cr_assert(m, "%s", err ? err->message : "");
    cr_expect_eq(m->scaling.rules->len, 2u, "rules and schedules interleave");
    cr_assert_eq(m->scaling.schedules->len, 8u);

    s = m->scaling.schedules->pdata[0];
    cr_expect_str_eq(s->cron, "0 8 * * mon-fri", "normalized");
    cr_expect_not(s->has_at);
    cr_expect_eq(s->parsed.hours, 1u << 8);
    cr_expect_eq(s->parsed.weekdays, 0x3e);
    cr_expect_str_eq(s->timezone, "Europe/Berlin");
    cr_expect_str_eq(g_time_zone_get_identifier(s->tz), "Europe/Berlin");
    cr_expect_eq(s->action, MANIFEST_SCHEDULE_SET);
    cr_expect_eq(s->amount, 6u);
    cr_expect_not(s->percent);
    cr_expect_eq(s->grace_seconds, MANIFEST_DEFAULT_GRACE_SECONDS);

    s = m->scaling.schedules->pdata[1];
    cr_expect_str_eq(s->cron, "30 18 * * mon-fri");
    cr_expect_eq(s->grace_seconds, 3600u);

    s = m->scaling.schedules->pdata[2];
    cr_expect_str_eq(s->timezone, MANIFEST_DEFAULT_TIMEZONE);
    cr_expect_eq(s->action, MANIFEST_SCHEDULE_ADD);
    cr_expect_eq(s->amount, 25u);
    cr_expect(s->percent);

    s = m->scaling.schedules->pdata[4];
    cr_expect_str_eq(s->cron, "@weekly");
    cr_expect_eq(s->action, MANIFEST_SCHEDULE_REMOVE);
    cr_expect(s->percent);

    /* 18:00 in Berlin in winter is 17:00 UTC */
    s = m->scaling.schedules->pdata[5];
    cr_expect(s->has_at);
    cr_expect_null(s->cron);
    cr_expect_not(s->at_has_offset);
    cr_expect_eq(s->at, 1798131600, "2026-12-24T17:00:00Z");
    cr_expect_str_eq(s->timezone, "Europe/Berlin");

    s = m->scaling.schedules->pdata[6];
    cr_expect(s->at_has_offset);
    cr_expect_null(s->timezone, "an offset leaves no time zone");
    cr_expect_eq(s->at, 1798187400, "2026-12-25T08:30:00Z");

    s = m->scaling.schedules->pdata[7];
    cr_expect_eq(s->at, 1798243200, "2026-12-26T00:00:00Z");
}

Test(manifest_parse, reports_every_broken_schedule_of_a_file)
{
    static const char xml[] =
        "<?xml version=\"1.0\"?>\n"
        "<service xmlns=\"urn:spore:manifest:1\" name=\"s\">\n"
        "  <image name=\"i\"><origin url=\"http://127.0.0.1/i.raw\"/></image>\n"
        "  <vm><vcpus>1</vcpus><memory unit=\"MiB\">64</memory></vm>\n"
        "  <scaling min=\"1\" max=\"4\">\n"
        "    <schedule cron=\"0 25 * * *\" set=\"2\"/>\n"
        "    <schedule at=\"2026-13-01T00:00\"\n"
        "              timezone=\"Nowhere/City\" add=\"1\"/>\n"
        "    <schedule cron=\"@daily\" set=\"5\"/>\n"
        "  </scaling>\n"
        "</service>\n";
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(Manifest) m =
        manifest_parse_data(xml, strlen(xml), problems, NULL);
    static const struct {
        guint line;
        const char *text;
    } want[] = {
        {6, "hour field '25': 25 is not in 0-23"},
        {7, "there is no such date and time"},
        {8, "timezone 'Nowhere/City' on <schedule>"},
        {9, "set 5 on <schedule> is outside [min, max] = [1, 4]"},
    };

    cr_assert_null(m);
    cr_assert_eq(problems->len, G_N_ELEMENTS(want));
    for (guint i = 0; i < problems->len; i++) {
        const ManifestProblem *p = problems->pdata[i];

        cr_expect_eq(p->line, want[i].line, "%u: %s", p->line, p->message);
        cr_expect(strstr(p->message, want[i].text), "%u: %s", p->line,
                  p->message);
    }
}

Test(manifest_parse, reads_time_zones_from_tzdir)
{
    g_autofree char *dir = g_dir_make_tmp("spore-tz-XXXXXX", NULL);
    g_autofree char *zone = g_build_filename(dir, "Test", NULL);
    g_autofree char *sub = g_build_filename(zone, "Berlin", NULL);
    g_autofree char *xml = g_strdup_printf(
        "%s<scaling min=\"1\" max=\"2\">"
        "<schedule cron=\"0 8 * * *\" timezone=\"Test/Berlin\" set=\"2\"/>"
        "</scaling></service>",
        minimal_prefix);
    g_autofree char *data = NULL;
    gsize len = 0;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(GError) err = NULL;

    cr_assert(g_file_get_contents("/usr/share/zoneinfo/Europe/Berlin", &data,
                                  &len, NULL));
    cr_assert(g_mkdir_with_parents(zone, 0700) == 0);
    cr_assert(g_file_set_contents(sub, data, (gssize)len, NULL));
    m = manifest_parse_data(xml, strlen(xml), NULL, &err);
    cr_expect_null(m, "not in the system's database");
    g_setenv("TZDIR", dir, TRUE);
    g_clear_error(&err);
    m = manifest_parse_data(xml, strlen(xml), NULL, &err);
    g_unsetenv("TZDIR");
    cr_expect(m, "%s", err ? err->message : "");
    g_unlink(sub);
    g_rmdir(zone);
    g_rmdir(dir);
}
