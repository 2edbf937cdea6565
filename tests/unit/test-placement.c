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
