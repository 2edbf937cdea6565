/*
 * test-customize.c: what clone customization refuses before it launches
 * the libguestfs appliance.
 *
 * The manifests here are built by hand (manifest-priv.h), bypassing the
 * parser that would refuse their guest paths: customization must check
 * them again.  The overlays do not exist, so a check made only after the
 * launch would fail differently ("cannot add overlay ..."); nothing here
 * launches an appliance.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "customize.h"
#include "customize-priv.h"
#include "manifest-priv.h"
#include "spore-error.h"

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
