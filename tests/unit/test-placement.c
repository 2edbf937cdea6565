/*
 * test-placement.c: choosing a host for a clone (daemon/manager/placement.c).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "manifest.h"
#include "placement.h"

static Manifest *
manifest(const char *strategy, const char *hosts, guint vcpus, guint mib)
{
    g_autofree char *xml = g_strdup_printf(
        "<service xmlns=\"urn:spore:manifest:1\" name=\"web\">"
        "<image name=\"i\"><origin url=\"http://o/i.raw\"/></image>"
        "<vm><vcpus>%u</vcpus><memory unit=\"MiB\">%u</memory></vm>"
        "<scaling min=\"1\" max=\"8\"/>"
        "<placement strategy=\"%s\">%s</placement>"
        "</service>",
        vcpus, mib, strategy, hosts);
    g_autoptr(GError) err = NULL;
    Manifest *m = manifest_parse_data(xml, strlen(xml), NULL, &err);

    cr_assert(m, "%s", err ? err->message : "");
    return m;
}

#define GIB (1024u * 1024u) /* in KiB */

Test(placement, spread_prefers_the_fewest_clones_of_the_service)
{
    g_autoptr(Manifest) m = manifest("spread", "", 1, 512);
    PlacementHost h[] = {
        {.name = "a",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .service_clones = 2,
         .total_clones = 2},
        {.name = "b",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .service_clones = 1,
         .total_clones = 5},
        {.name = "c",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .service_clones = 1,
         .total_clones = 3},
    };

    cr_expect_eq(placement_choose(h, 3, m, NULL), 2);
}

Test(placement, spread_breaks_ties_by_the_cached_image)
{
    g_autoptr(Manifest) m = manifest("spread", "", 1, 512);
    PlacementHost h[] = {
        {.name = "a", .up = TRUE, .cpus = 4, .memory_kib = 8 * GIB},
        {.name = "b",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .cached_fraction = 0.6},
    };

    cr_expect_eq(placement_choose(h, 2, m, NULL), 1);
}

Test(placement, pack_fills_the_busiest_host_that_has_room)
{
    g_autoptr(Manifest) m = manifest("pack", "", 1, 1024);
    PlacementHost h[] = {
        {.name = "a",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .used_memory_kib = 2 * GIB},
        {.name = "b",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .used_memory_kib = 7 * GIB + GIB / 2}, /* 1 GiB does not fit */
        {.name = "c",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .used_memory_kib = 5 * GIB},
    };

    cr_expect_eq(placement_choose(h, 3, m, NULL), 2);
}

Test(placement, honours_the_allow_list_and_skips_hosts_that_are_down)
{
    g_autoptr(Manifest) m =
        manifest("spread", "<host>b</host><host>c</host>", 1, 256);
    PlacementHost h[] = {
        {.name = "a", .up = TRUE, .cpus = 4, .memory_kib = 8 * GIB},
        {.name = "b", .up = FALSE, .cpus = 4, .memory_kib = 8 * GIB},
        {.name = "c",
         .up = TRUE,
         .cpus = 4,
         .memory_kib = 8 * GIB,
         .service_clones = 3},
    };

    cr_expect_eq(placement_choose(h, 3, m, NULL), 2);
}

Test(placement, never_overcommits_memory_and_says_why_nothing_fits)
{
    g_autoptr(Manifest) m = manifest("spread", "", 2, 4096);
    g_autofree char *reason = NULL;
    PlacementHost h[] = {
        {.name = "a",
         .up = TRUE,
         .cpus = 8,
         .memory_kib = 4 * GIB,
         .used_memory_kib = 1},
        {.name = "b",
         .up = TRUE,
         .cpus = 1,
         .memory_kib = 64 * GIB,
         .used_vcpus = 3}, /* 3 + 2 > 1 x 4 */
    };

    cr_expect_eq(placement_choose(h, 2, m, &reason), -1);
    cr_expect(reason && strstr(reason, "no host has room"), "%s", reason);
}

Test(placement, says_when_no_host_is_up_or_listed)
{
    g_autoptr(Manifest) m = manifest("spread", "<host>z</host>", 1, 256);
    g_autofree char *r1 = NULL;
    g_autofree char *r2 = NULL;
    PlacementHost down[] = {{.name = "a", .up = FALSE}};
    PlacementHost up[] = {
        {.name = "a", .up = TRUE, .cpus = 4, .memory_kib = 8 * GIB}};

    cr_expect_eq(placement_choose(down, 1, m, &r1), -1);
    cr_expect(r1 && strstr(r1, "no host is up"), "%s", r1);
    cr_expect_eq(placement_choose(up, 1, m, &r2), -1);
    cr_expect(r2 && strstr(r2, "<placement>"), "%s", r2);
}

/* random_hosts: @n hosts of varied sizes and loads, some down */
static PlacementHost *
random_hosts(GRand *r, guint n, GPtrArray *names)
{
    PlacementHost *h = g_new0(PlacementHost, n);

    for (guint i = 0; i < n; i++) {
        g_ptr_array_add(names, g_strdup_printf("h%03u", i));
        h[i].name = names->pdata[i];
        h[i].up = g_rand_int_range(r, 0, 10) != 0;
        h[i].cpus = (guint)g_rand_int_range(r, 1, 5);
        h[i].memory_kib = (guint64)g_rand_int_range(r, 1, 9) * GIB;
        h[i].service_clones = (guint)g_rand_int_range(r, 0, 3);
        h[i].total_clones = h[i].service_clones + g_rand_int_range(r, 0, 3);
        h[i].used_vcpus = h[i].total_clones;
        h[i].used_memory_kib = h[i].total_clones * 256 * 1024;
        h[i].cached_fraction = g_rand_int_range(r, 0, 3) / 2.0;
    }
    return h;
}

/* one_more: what manager-reconcile.c did per clone before the queue:
 * placement_choose, then the clone accounted on the host */
static int
one_more(PlacementHost *h, guint n, const Manifest *m)
{
    int at = placement_choose(h, n, m, NULL);

    if (at >= 0) {
        h[at].service_clones++;
        h[at].total_clones++;
        h[at].used_vcpus += m->vm.vcpus;
        h[at].used_memory_kib += m->vm.memory_kib;
    }
    return at;
}

static void
queue_matches_choose(const char *strategy, const char *allow)
{
    for (guint32 seed = 1; seed <= 40; seed++) {
        g_autoptr(GRand) r = g_rand_new_with_seed(seed);
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(Manifest) m = manifest(strategy, allow, 1, 512);
        guint n = (guint)g_rand_int_range(r, 1, 40);
        g_autofree PlacementHost *a = random_hosts(r, n, names);
        g_autofree PlacementHost *b = g_memdup2(a, n * sizeof(*a));
        g_autoptr(PlacementQueue) q = placement_queue_new(b, n, m);

        for (guint k = 0; k < 200; k++) {
            int want = one_more(a, n, m);
            g_autofree char *reason = NULL;
            int got = placement_queue_take(q, &reason);

            cr_assert_eq(got, want, "%s, seed %u, clone %u: %d, not %d",
                         strategy, seed, k, got, want);
            if (want < 0) {
                cr_assert(reason && *reason);
                break;
            }
        }
        cr_assert_eq(memcmp(a, b, n * sizeof(*a)), 0);
    }
}

Test(placement, queue_chooses_as_placement_choose_does_clone_after_clone)
{
    queue_matches_choose("spread", "");
    queue_matches_choose("pack", "");
    queue_matches_choose("spread", "<host>h001</host><host>h003</host>"
                                   "<host>h007</host>");
}

Test(placement, queue_says_why_when_no_host_is_up)
{
    g_autoptr(Manifest) m = manifest("spread", "", 1, 512);
    PlacementHost h[] = {{.name = "a", .cpus = 4, .memory_kib = 8 * GIB}};
    g_autoptr(PlacementQueue) q = placement_queue_new(h, 1, m);
    g_autofree char *reason = NULL;

    cr_expect_eq(placement_queue_take(q, &reason), -1);
    cr_expect_str_eq(reason, "no host is up");
}
