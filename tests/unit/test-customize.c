/*
 * test-customize.c: what clone customization refuses before it launches
 * the libguestfs appliance; and the cloud-init seed (cloud-init.c): its
 * YAML read back by PyYAML (cloud-init's reader), its ISO read back by
 * isoinfo.
 *
 * The manifests here are built by hand (manifest-priv.h), bypassing the
 * parser that would refuse their guest paths: customization must check
 * them again.  The overlays do not exist, so a check made only after the
 * launch would fail differently ("cannot add overlay ..."); nothing here
 * launches an appliance.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cloud-init.h"
#include "customize.h"
#include "customize-priv.h"
#include "manifest-priv.h"
#include "spore-error.h"
#include "template.h"
#include "test-util.h"

#define OVERLAY "/nonexistent/spore-test-customize.qcow2"

/* A manifest of service "t" (max 2 clones) writing @path, then /etc/ok. */
static Manifest *
manifest_writing(const char *path)
{
    Manifest *m = manifest_new();
    ManifestFile *bad = g_new0(ManifestFile, 1);
    ManifestFile *good = g_new0(ManifestFile, 1);

    m->name = g_strdup("t");
    m->scaling.max = 2;
    good->path = g_strdup("/etc/ok");
    good->mode = 0644;
    good->content = g_strdup("ok\n");
    bad->path = g_strdup(path);
    bad->mode = 0644;
    bad->content = g_strdup("x\n");
    g_ptr_array_add(m->customize.files, good);
    g_ptr_array_add(m->customize.files, bad);
    return m;
}

Test(customize, refuses_guest_paths_the_parser_would_have_refused)
{
    static const struct {
        const char *path;
        const char *why;
    } cases[] = {
        {"/proc/x", "it is under /dev, /proc or /sys"},
        {"/sys", "it is under /dev, /proc or /sys"},
        {"/dev/sda", "it is under /dev, /proc or /sys"},
        {"/etc/../x", "it has a '..' component"},
        {"/etc/./x", "it has a '.' component"},
        {"/etc//x", "it has an empty component ('//' or a trailing '/')"},
        {"etc/x", "it is not absolute"},
        {"/", "it names the root directory"},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(Manifest) m = manifest_writing(cases[i].path);
        CloneCustomizeJob jobs[] = {
            {.manifest = m, .index = 0, .host = "h", .overlay = OVERLAY},
            {.manifest = m, .index = 1, .host = "h", .overlay = OVERLAY},
        };
        g_autoptr(GError) err = NULL;
        g_autofree char *want =
            g_strdup_printf("clone t-0: refusing guest path '%s': %s",
                            cases[i].path, cases[i].why);

        cr_expect_not(clone_customize_batch(jobs, 2, &err), "%s",
                      cases[i].path);
        cr_assert(err, "%s", cases[i].path);
        cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_INVALID),
                  "%s: %s", cases[i].path, err->message);
        cr_expect_str_eq(err->message, want);
    }
}

Test(customize, checks_every_clone_of_the_batch_before_any_launch)
{
    g_autoptr(Manifest) good = manifest_writing("/etc/fine");
    g_autoptr(Manifest) bad = manifest_writing("/proc/sys/kernel/x");
    CloneCustomizeJob jobs[] = {
        {.manifest = good, .index = 0, .host = "h", .overlay = OVERLAY},
        {.manifest = bad, .index = 1, .host = "h", .overlay = OVERLAY},
    };
    g_autoptr(GError) err = NULL;

    cr_expect_not(clone_customize_batch(jobs, 2, &err));
    cr_assert(err);
    cr_expect_str_eq(err->message,
                     "clone t-1: refusing guest path '/proc/sys/kernel/x': it "
                     "is under /dev, /proc or /sys");
}

#define PASSWD                                   \
    "root:x:0:0:root:/root:/bin/sh\n"            \
    "spore:x:1000:1001::/home/spore:/bin/sh\n"   \
    "broken:x:12ab:1001::/home/broken:/bin/sh\n" \
    "empty:x::::/home/empty:/bin/sh\n"           \
    "huge:x:99999999999:1::/home/huge:/bin/sh\n" \
    "homeless:x:1002:1002::relative:/bin/sh\n"

Test(customize, finds_a_user_in_the_guests_passwd)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *home = NULL;
    int uid = -1, gid = -1;

    cr_assert(customize_passwd_lookup(PASSWD, "spore", &uid, &gid, &home, &err),
              "%s", err ? err->message : "");
    cr_expect_eq(uid, 1000);
    cr_expect_eq(gid, 1001);
    cr_expect_str_eq(home, "/home/spore");
}

Test(customize, refuses_a_malformed_passwd_line_instead_of_reading_uid_0)
{
    static const struct {
        const char *user, *says;
    } cases[] = {
        {"broken", "line 3: user 'broken' has no valid uid and gid ('12ab'"},
        {"empty", "line 4: user 'empty' has no valid uid and gid (''"},
        {"huge", "line 5: user 'huge' has no valid uid"},
        {"homeless", "line 6: user 'homeless' has no absolute home"},
        {"nobody-here", "user 'nobody-here' (for an ssh key) is not in"},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *home = NULL;
        int uid = -1, gid = -1;

        cr_expect_not(customize_passwd_lookup(PASSWD, cases[i].user, &uid, &gid,
                                              &home, &err),
                      "%s was accepted", cases[i].user);
        cr_expect_eq(uid, -1, "%s: uid written on failure", cases[i].user);
        cr_expect(err && strstr(err->message, cases[i].says), "%s: %s",
                  cases[i].user, err ? err->message : "(no error)");
    }
}

/* ---- <customize method="cloud-init">: the NoCloud seed ---------------- */

#define INSTANCE_ID "7a3c1f4e-9d2b-4c8a-b5e6-0f1d2c3b4a59"

/* A cloud-init manifest of service "ci" with values YAML would misread. */
static Manifest *
manifest_hostile(void)
{
    Manifest *m = manifest_new();
    ManifestFile *f = g_new0(ManifestFile, 1);
    ManifestFile *empty = g_new0(ManifestFile, 1);
    ManifestSshKey *k1 = g_new0(ManifestSshKey, 1);
    ManifestSshKey *k2 = g_new0(ManifestSshKey, 1);
    ManifestSshKey *k3 = g_new0(ManifestSshKey, 1);
    GString *bytes = g_string_new(NULL);

    m->name = g_strdup("ci");
    m->scaling.max = 3;
    m->customize.method = MANIFEST_CUSTOMIZE_CLOUD_INIT;
    g_free(m->customize.hostname);
    m->customize.hostname = g_strdup("node-{index}.{service}.example.org");
    /* every byte but NUL, then a placeholder: content is base64 */
    for (int c = 1; c < 256; c++)
        g_string_append_c(bytes, (char)c);
    g_string_append(bytes, "\n{hostname} on {host}\n  ");
    f->path = g_strdup("/etc/spore/all bytes: \"#1\"");
    f->mode = 04750;
    f->content = g_string_free(bytes, FALSE);
    empty->path = g_strdup("/var/lib/empty");
    empty->mode = 0600;
    empty->content = g_strdup("");
    g_ptr_array_add(m->customize.files, f);
    g_ptr_array_add(m->customize.files, empty);
    k1->user = g_strdup("spore");
    k1->key = g_strdup("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6"
                       "UOoqKLsabgH5C9okWi0dh2l9GKJl a: \"b\" #c");
    k2->user = g_strdup("root");
    k2->key = g_strdup("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6"
                       "UOoqKLsabgH5C9okWi0dh2l9GKJl root@x");
    k3->user = g_strdup("spore");
    k3->key = g_strdup("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQ== - [x]");
    g_ptr_array_add(m->customize.ssh_keys, k1);
    g_ptr_array_add(m->customize.ssh_keys, k2);
    g_ptr_array_add(m->customize.ssh_keys, k3);
    g_ptr_array_add(m->customize.firstboot,
                    g_strdup("echo \"{hostname}\" 'it''s' \\\\ $HOME # no "
                             "comment: - [a] {{b} & *c !d | >e %f @g `h`"));
    g_ptr_array_add(m->customize.firstboot,
                    g_strdup("printf 'tab\\tnl\\n' \t\r\x01\x1b\x7f "
                             "\xc2\x85 \xc3\xa9 \xe2\x80\xa8 \xe2\x9c\x93 "
                             "\xf0\x9f\x98\x80\nsecond line"));
    g_ptr_array_add(m->customize.firstboot, g_strdup("- not: a list"));
    return m;
}

static void
render_or_fail(const Manifest *m, guint index, char **ud, char **md)
{
    CloudInitSeedSpec spec = {.manifest = m,
                              .index = index,
                              .host = "hv-1",
                              .instance_id = INSTANCE_ID};
    g_autoptr(GError) err = NULL;

    cr_assert(cloud_init_render(&spec, ud, md, &err), "%s",
              err ? err->message : "");
}

static char *
hex(const char *s, gsize len)
{
    GString *out = g_string_new(NULL);

    for (gsize i = 0; i < len; i++)
        g_string_append_printf(out, "%02x", (guchar)s[i]);
    return g_string_free(out, FALSE);
}

/*
 * What a YAML reader must find in the seed of clone @index of @m: one line
 * per value, strings in hex, in the form of yaml_dump below.
 */
static char *
expected_dump(const Manifest *m, guint index)
{
    g_autofree char *hostname = manifest_clone_hostname(m, index, NULL);
    ManifestVars vars = {m->name, index, hostname, "hv-1"};
    GString *o = g_string_new(NULL);
    g_autoptr(GPtrArray) users = g_ptr_array_new();

    g_string_append_printf(o, "instance-id %s\nlocal-hostname %s\n",
                           INSTANCE_ID, hostname);
    g_string_append_printf(o, "hostname %s\nfqdn %s\n", hostname, hostname);
    g_string_append(o, "manage_etc_hosts localhost\nssh_deletekeys True\n");
    for (guint i = 0; i < m->customize.files->len; i++) {
        const ManifestFile *f = m->customize.files->pdata[i];
        g_autofree char *c = manifest_template_expand(
            f->content, MANIFEST_VARS_ALL, &vars, NULL);
        g_autofree char *hp = hex(f->path, strlen(f->path));
        g_autofree char *hc = hex(c, strlen(c));

        g_string_append_printf(o, "file %s %o root:root %s\n", hp, f->mode, hc);
    }
    for (guint i = 0; i < m->customize.ssh_keys->len; i++) {
        const ManifestSshKey *k = m->customize.ssh_keys->pdata[i];

        if (!g_ptr_array_find_with_equal_func(users, k->user, g_str_equal,
                                              NULL))
            g_ptr_array_add(users, k->user);
    }
    for (guint u = 0; u < users->len; u++) {
        g_string_append_printf(o, "user %s lock_passwd=False\n",
                               (char *)users->pdata[u]);
        for (guint i = 0; i < m->customize.ssh_keys->len; i++) {
            const ManifestSshKey *k = m->customize.ssh_keys->pdata[i];
            g_autofree char *hk = hex(k->key, strlen(k->key));

            if (g_str_equal(k->user, users->pdata[u]))
                g_string_append_printf(o, "key %s\n", hk);
        }
    }
    for (guint i = 0; i < m->customize.firstboot->len; i++) {
        g_autofree char *c = manifest_template_expand(
            m->customize.firstboot->pdata[i], MANIFEST_VARS_ALL, &vars, NULL);
        g_autofree char *hc = hex(c, strlen(c));

        g_string_append_printf(o, "cmd %s\n", hc);
    }
    return g_string_free(o, FALSE);
}

/* a reader independent of the writer: PyYAML's safe_load, as cloud-init */
static const char yaml_dump[] =
    "import base64, sys, yaml\n"
    "raw = open(sys.argv[1], 'rb').read()\n"
    "assert raw.startswith(b'#cloud-config\\n'), 'no #cloud-config line'\n"
    "ud = yaml.safe_load(raw)\n"
    "md = yaml.safe_load(open(sys.argv[2], 'rb'))\n"
    "h = lambda s: s.encode('utf-8').hex()\n"
    "print('instance-id', md['instance-id'])\n"
    "print('local-hostname', md['local-hostname'])\n"
    "print('hostname', ud['hostname'])\n"
    "print('fqdn', ud['fqdn'])\n"
    "print('manage_etc_hosts', ud['manage_etc_hosts'])\n"
    "print('ssh_deletekeys', ud['ssh_deletekeys'])\n"
    "for f in ud.get('write_files', []):\n"
    "    assert f['encoding'] == 'b64'\n"
    "    print('file', h(f['path']), '%o' % int(f['permissions'], 8),\n"
    "          f['owner'], base64.b64decode(f['content']).hex())\n"
    "for u in ud.get('users', []):\n"
    "    print('user', u['name'], 'lock_passwd=%s' % u['lock_passwd'])\n"
    "    for k in u['ssh_authorized_keys']:\n"
    "        print('key', h(k))\n"
    "for c in ud.get('runcmd', []):\n"
    "    print('cmd', h(c))\n";

/* a python3 with PyYAML, or NULL */
static char *
python_with_yaml(void)
{
    static const char *const candidates[] = {"/usr/bin/python3", "python3",
                                             NULL};

    for (guint i = 0; candidates[i]; i++) {
        const char *argv[] = {candidates[i], "-c", "import yaml", NULL};
        int status = 0;

        if (g_spawn_sync(NULL, (char **)argv, NULL,
                         G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL |
                             G_SPAWN_STDERR_TO_DEV_NULL,
                         NULL, NULL, NULL, NULL, &status, NULL) &&
            g_spawn_check_wait_status(status, NULL))
            return g_strdup(candidates[i]);
    }
    return NULL;
}

static void
expect_yaml_reads_back(const Manifest *m, guint index)
{
    g_autofree char *python = python_with_yaml();
    g_autofree char *ud = NULL;
    g_autofree char *md = NULL;
    g_autofree char *dir = NULL;
    g_autofree char *ud_path = NULL;
    g_autofree char *md_path = NULL;
    g_autofree char *out = NULL;
    g_autofree char *err_text = NULL;
    g_autofree char *want = expected_dump(m, index);
    int status = 0;

    if (!python)
        cr_skip_test("no python3 with PyYAML (python3-yaml) to read the "
                     "seed back as cloud-init does");
    render_or_fail(m, index, &ud, &md);
    dir = g_dir_make_tmp("spore-test-seed-XXXXXX", NULL);
    cr_assert(dir);
    ud_path = g_build_filename(dir, "user-data", NULL);
    md_path = g_build_filename(dir, "meta-data", NULL);
    cr_assert(g_file_set_contents(ud_path, ud, -1, NULL));
    cr_assert(g_file_set_contents(md_path, md, -1, NULL));
    {
        const char *argv[] = {python, "-c", yaml_dump, ud_path, md_path, NULL};

        cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH,
                               NULL, NULL, &out, &err_text, &status, NULL));
    }
    unlink(ud_path);
    unlink(md_path);
    rmdir(dir);
    cr_assert(g_spawn_check_wait_status(status, NULL), "PyYAML: %s\n%s",
              err_text, ud);
    cr_expect_str_eq(out, want, "user-data:\n%s", ud);
}

Test(cloud_init, renders_every_customization_that_yaml_reads_back_exactly)
{
    g_autoptr(Manifest) m = manifest_hostile();

    expect_yaml_reads_back(m, 0);
    expect_yaml_reads_back(m, 2);
}

Test(cloud_init, renders_the_example_manifest_that_yaml_reads_back_exactly)
{
    g_autofree char *path =
        test_data_path("manifests/valid/cloud-init-seed.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = manifest_parse_file(path, NULL, &err);

    cr_assert(m, "%s", err ? err->message : "");
    expect_yaml_reads_back(m, 0);
}

Test(cloud_init, writes_yaml_whose_structure_no_value_can_change)
{
    g_autoptr(Manifest) m = manifest_hostile();
    g_autofree char *ud = NULL;
    g_autofree char *md = NULL;
    g_auto(GStrv) lines = NULL;

    render_or_fail(m, 1, &ud, &md);
    /* ASCII only, and every line is a key, a list item or a comment that
     * the renderer wrote: no value starts a line of its own */
    for (const char *p = ud; *p; p++)
        cr_assert((guchar)*p < 0x80 && (*p == '\n' || (guchar)*p >= 0x20),
                  "byte 0x%02x at %td", (guchar)*p, p - ud);
    lines = g_strsplit(ud, "\n", -1);
    for (guint i = 0; lines[i] && *lines[i]; i++) {
        const char *l = lines[i];

        cr_expect(l[0] == '#' || g_ascii_isalpha(l[0]) ||
                      g_str_has_prefix(l, "- ") || g_str_has_prefix(l, "  "),
                  "line %u: %s", i + 1, l);
    }
    cr_expect(strstr(ud, "hostname: \"node-1.ci.example.org\"\n"), "%s", ud);
    cr_expect(strstr(ud, "  permissions: \"4750\"\n"), "%s", ud);
    cr_expect(strstr(ud, "  encoding: \"b64\"\n  content: \"\"\n"),
              "the empty file: %s", ud);
    cr_expect(strstr(ud, "- \"- not: a list\"\n"), "%s", ud);
    cr_expect(strstr(ud, "\\u2028"), "U+2028 escaped: %s", ud);
    cr_expect(strstr(ud, "\\U0001f600"), "U+1F600 escaped: %s", ud);
    cr_expect_str_eq(md, "instance-id: \"" INSTANCE_ID "\"\n"
                         "local-hostname: \"node-1.ci.example.org\"\n");
}

Test(cloud_init, leaves_out_what_the_manifest_does_not_ask_for)
{
    g_autoptr(Manifest) m = manifest_new();
    g_autofree char *ud = NULL;
    g_autofree char *md = NULL;

    m->name = g_strdup("bare");
    m->customize.method = MANIFEST_CUSTOMIZE_CLOUD_INIT;
    render_or_fail(m, 0, &ud, &md);
    cr_expect(strstr(ud, "hostname: \"bare-0\"\n"), "%s", ud);
    cr_expect_null(strstr(ud, "write_files"), "%s", ud);
    cr_expect_null(strstr(ud, "users"), "%s", ud);
    cr_expect_null(strstr(ud, "runcmd"), "%s", ud);
}

Test(cloud_init, refuses_guest_paths_and_text_the_parser_would_have_refused)
{
    static const struct {
        const char *path, *cmd, *says;
    } cases[] = {
        {"/etc/../x", "true",
         "refusing guest path '/etc/../x': it has a "
         "'..' component"},
        {"/proc/x", "true", "refusing guest path '/proc/x': it is under"},
        {"/etc/ok", "echo \xff\xfe", "a first-boot command is not UTF-8"},
        {"/etc/ok", "echo {nope}", "nope"},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(Manifest) m = manifest_writing(cases[i].path);
        CloudInitSeedSpec spec = {
            .manifest = m, .index = 1, .host = "h", .instance_id = INSTANCE_ID};
        g_autoptr(GError) err = NULL;
        char *ud = NULL, *md = NULL;

        m->customize.method = MANIFEST_CUSTOMIZE_CLOUD_INIT;
        g_ptr_array_add(m->customize.firstboot, g_strdup(cases[i].cmd));
        cr_expect_not(cloud_init_render(&spec, &ud, &md, &err), "case %zu", i);
        cr_expect_null(ud, "case %zu: output written on failure", i);
        cr_assert(err, "case %zu", i);
        cr_expect(g_str_has_prefix(err->message, "clone t-1: ") &&
                      strstr(err->message, cases[i].says),
                  "case %zu: %s", i, err->message);
    }
}

/* the output of `isoinfo ARGS...`, or NULL */
static char *
isoinfo(const char *const *args)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    char *out = NULL;
    int status = 0;

    g_ptr_array_add(argv, (char *)"isoinfo");
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, (char *)args[i]);
    g_ptr_array_add(argv, NULL);
    if (!g_spawn_sync(NULL, (char **)argv->pdata, NULL,
                      G_SPAWN_SEARCH_PATH | G_SPAWN_STDERR_TO_DEV_NULL, NULL,
                      NULL, &out, NULL, &status, NULL) ||
        !g_spawn_check_wait_status(status, NULL)) {
        g_free(out);
        return NULL;
    }
    return out;
}

Test(cloud_init, writes_a_cidata_iso_holding_both_files_and_never_replaces_one)
{
    g_autoptr(Manifest) m = manifest_hostile();
    CloudInitSeedSpec spec = {
        .manifest = m, .index = 0, .host = "hv-1", .instance_id = INSTANCE_ID};
    g_autofree char *dir = g_dir_make_tmp("spore-test-iso-XXXXXX", NULL);
    g_autofree char *iso = g_build_filename(dir, "c.seed.iso", NULL);
    g_autofree char *ud = NULL;
    g_autofree char *md = NULL;
    g_autofree char *desc = NULL;
    g_autofree char *got_ud = NULL;
    g_autofree char *got_md = NULL;
    g_autofree char *isoinfo_path = g_find_program_in_path("isoinfo");
    g_autofree char *genisoimage = g_find_program_in_path("genisoimage");
    g_autofree char *xorrisofs = g_find_program_in_path("xorrisofs");
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) again = NULL;
    g_autofree char *tmp = NULL;
    struct stat st;

    if (!genisoimage && !xorrisofs)
        cr_skip_test("neither genisoimage nor xorrisofs is installed");
    if (!isoinfo_path)
        cr_skip_test("no isoinfo (genisoimage) to read the seed back");
    cr_assert(cloud_init_seed_write(&spec, iso, &err), "%s",
              err ? err->message : "");
    cr_assert_eq(stat(iso, &st), 0);
    cr_expect_eq(st.st_mode & 07777, 0600);
    desc = isoinfo((const char *const[]){"-d", "-i", iso, NULL});
    cr_assert(desc);
    cr_expect(strstr(desc, "Volume id: cidata\n"), "%s", desc);
    got_ud = isoinfo(
        (const char *const[]){"-R", "-i", iso, "-x", "/user-data", NULL});
    got_md = isoinfo(
        (const char *const[]){"-R", "-i", iso, "-x", "/meta-data", NULL});
    render_or_fail(m, 0, &ud, &md);
    cr_expect_str_eq(got_ud, ud);
    cr_expect_str_eq(got_md, md);

    cr_expect_not(cloud_init_seed_write(&spec, iso, &again));
    cr_expect(again && strstr(again->message, "already exists"));
    tmp = g_strconcat(iso, ".tmp", NULL);
    cr_expect(!g_file_test(tmp, G_FILE_TEST_EXISTS), "%s left behind", tmp);
    unlink(iso);
    rmdir(dir);
}

Test(customize, refuses_a_manifest_customized_by_cloud_init)
{
    g_autoptr(Manifest) m = manifest_writing("/etc/fine");
    CloneCustomizeJob jobs[] = {
        {.manifest = m, .index = 1, .host = "h", .overlay = OVERLAY},
    };
    g_autoptr(GError) err = NULL;

    m->customize.method = MANIFEST_CUSTOMIZE_CLOUD_INIT;
    cr_expect_not(clone_customize_batch(jobs, 1, &err));
    cr_assert(err);
    cr_expect(g_error_matches(err, SPORE_ERROR, SPORE_ERROR_USAGE));
    cr_expect(g_str_has_prefix(err->message, "clone t-1: its manifest asks "
                                             "for <customize "
                                             "method=\"cloud-init\">"),
              "%s", err->message);
}
