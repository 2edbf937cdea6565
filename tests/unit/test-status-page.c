/*
 * test-status-page.c: the HTML of spored's status page
 * (daemon/manager/status-page.c): an empty site, escaping of every text
 * that comes from a manifest or an agent, the caps on rows and texts and
 * the size they bound, the newest events first, rollout progress.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "status-page.h"

/* render: the page of @p, owned by the caller */
static char *
render(const StatusPage *p)
{
    GString *out = g_string_new(NULL);

    status_page_render(p, out);
    return g_string_free(out, FALSE);
}

static guint
count(const char *haystack, const char *needle)
{
    guint n = 0;

    for (const char *p = strstr(haystack, needle); p;
         p = strstr(p + strlen(needle), needle))
        n++;
    return n;
}

static const char HOSTILE[] =
    "<script>alert(1)</script>\"' onload=x &amp; <img src=//evil>";

Test(status_page, an_empty_site_says_so_in_each_section)
{
    StatusPage p = {.now = 1764950400};
    g_autofree char *html = render(&p);

    cr_expect(g_str_has_prefix(html, "<!DOCTYPE html>\n"));
    cr_expect(strstr(html, "<p class=\"empty\">No services.</p>"));
    cr_expect(strstr(html, "<p class=\"empty\">No clones.</p>"));
    cr_expect(strstr(html, "<p class=\"empty\">No hosts.</p>"));
    cr_expect(strstr(html, "<p class=\"empty\">No events.</p>"));
    cr_expect(strstr(html, "0 services; 0 clones, 0 running; 0 hosts, 0 up, "
                           "0 lost."));
    cr_expect(strstr(html, "2025-12-05 16:00:00 UTC"), "the time is UTC");
    cr_expect(g_str_has_suffix(html, "</html>\n"));
    cr_expect_null(strstr(html, "id=\"error\""));
}

Test(status_page, reloads_itself_and_has_no_script_form_or_external_resource)
{
    StatusPage p = {.now = 1};
    g_autofree char *html = render(&p);
    g_autofree char *refresh = g_strdup_printf(
        "<meta http-equiv=\"refresh\" content=\"%u\">", STATUS_REFRESH_SECONDS);

    cr_expect(strstr(html, refresh));
    cr_expect_null(strstr(html, "<script"));
    cr_expect_null(strstr(html, "<form"));
    cr_expect_null(strstr(html, "src="));
    cr_expect_null(strstr(html, "http://"));
    cr_expect_null(strstr(html, "https://"));
}

Test(status_page, escapes_every_text_of_manifests_and_agents)
{
    StatusHostImage im = {HOSTILE, 0.5};
    StatusService s = {.name = HOSTILE,
                       .desired = 1,
                       .rollout_state = HOSTILE,
                       .rollout_reason = HOSTILE};
    StatusClone c = {HOSTILE, HOSTILE, HOSTILE, HOSTILE, 1, HOSTILE};
    StatusHost h = {HOSTILE, HOSTILE, 1, 2, &im, 1};
    StatusEvent e = {1, HOSTILE, HOSTILE, HOSTILE, HOSTILE};
    StatusPage p = {.now = 1,
                    .site = HOSTILE,
                    .error = HOSTILE,
                    .services = &s,
                    .n_services = 1,
                    .clones = &c,
                    .n_clones = 1,
                    .hosts = &h,
                    .n_hosts = 1,
                    .events = &e,
                    .n_events = 1};
    g_autofree char *html = render(&p);
    const char *escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39; "
                          "onload=x &amp;amp; &lt;img src=//evil&gt;";

    cr_expect_null(strstr(html, "<script"));
    cr_expect_null(strstr(html, "<img"));
    cr_expect_null(strstr(html, "\"' onload"));
    /* the title, the error, 2 of the service (+ its rollout's state and
     * reason), 9 of the clone (row attributes and cells), 5 of the host
     * and its image, 4 of the event */
    cr_expect_eq(count(html, escaped), 1 + 1 + 4 + 9 + 5 + 4, "%u",
                 count(html, escaped));
    /* a state from an agent never becomes a class name */
    cr_expect_null(strstr(html, "class=\"&lt;"));
}

Test(status_page, repairs_invalid_utf8_and_replaces_control_characters)
{
    GString *out = g_string_new(NULL);
    g_autofree char *s = NULL;

    status_html_append(out,
                       "a\xff"
                       "b\x01"
                       "c\x1b[31md\te\xc2\x85"
                       "f",
                       100);
    s = g_string_free(out, FALSE);
    cr_expect(g_utf8_validate(s, -1, NULL));
    cr_expect_str_eq(s, "a\xef\xbf\xbd"
                        "b\xef\xbf\xbd"
                        "c\xef\xbf\xbd[31md\te"
                        "\xef\xbf\xbd"
                        "f");
}

Test(status_page, cuts_long_texts_at_a_character_with_an_ellipsis)
{
    GString *out = g_string_new(NULL);
    g_autofree char *s = NULL;

    /* 3 two-byte characters, then '<': cut after 3 characters */
    status_html_append(out, "\xc3\xa9\xc3\xa9\xc3\xa9<<<", 3);
    s = g_string_free(out, FALSE);
    cr_expect_str_eq(s, "\xc3\xa9\xc3\xa9\xc3\xa9\xe2\x80\xa6");
    out = g_string_new(NULL);
    status_html_append(out, NULL, 3);
    g_free(s);
    s = g_string_free(out, FALSE);
    cr_expect_str_eq(s, "-", "a missing text shows as -");
}

Test(status_page, caps_the_clones_and_says_how_many_it_left_out)
{
    guint n = STATUS_CLONES_ROWS_MAX + 7;
    g_autofree StatusClone *c = g_new0(StatusClone, n);
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    StatusPage p = {.now = 1, .clones = c, .n_clones = n};
    g_autofree char *html = NULL;
    g_autofree char *note =
        g_strdup_printf("Showing %u of %u clones", STATUS_CLONES_ROWS_MAX, n);
    g_autofree char *last_shown =
        g_strdup_printf("data-clone=\"web-%u\"", STATUS_CLONES_ROWS_MAX - 1);
    g_autofree char *first_cut =
        g_strdup_printf("data-clone=\"web-%u\"", STATUS_CLONES_ROWS_MAX);

    for (guint i = 0; i < n; i++) {
        char *name = g_strdup_printf("web-%u", i);

        g_ptr_array_add(names, name);
        c[i] = (StatusClone){name, "web", "hv1", "running", 1, NULL};
    }
    html = render(&p);
    cr_expect_eq(count(html, "<tr class=\"clone\""), STATUS_CLONES_ROWS_MAX);
    cr_expect(strstr(html, note));
    cr_expect(strstr(html, last_shown));
    cr_expect_null(strstr(html, first_cut));
    /* the summary counts them all */
    cr_expect(strstr(html, "clones, 307 running;"));
}

Test(status_page, shows_the_newest_events_first_and_at_most_its_cap)
{
    guint n = STATUS_EVENTS_ROWS_MAX + 3;
    g_autofree StatusEvent *e = g_new0(StatusEvent, n);
    g_autoptr(GPtrArray) texts = g_ptr_array_new_with_free_func(g_free);
    StatusPage p = {.now = 1, .events = e, .n_events = n};
    g_autofree char *html = NULL;
    const char *newest, *older;

    for (guint i = 0; i < n; i++) {
        char *m = g_strdup_printf("event number %u.", i);

        g_ptr_array_add(texts, m);
        e[i] = (StatusEvent){1000 + i, "scaled-up", "web", NULL, m};
    }
    html = render(&p);
    cr_expect_eq(count(html, "<tr class=\"event\">"), STATUS_EVENTS_ROWS_MAX);
    newest = strstr(html, "event number 52.");
    older = strstr(html, "event number 51.");
    cr_expect(newest && older && newest < older, "newest first");
    cr_expect_null(strstr(html, "event number 2."), "the oldest are cut");
    cr_expect(strstr(html, "event number 3."));
}

Test(status_page,
     shows_rollout_progress_why_one_failed_and_states_as_service_list)
{
    StatusService s[] = {
        {.name = "web",
         .generation = 2,
         .desired = 3,
         .placed = 3,
         .running = 1,
         .rollout_state = "rolling",
         .rollout_from = 1,
         .rollout_to = 2,
         .updated = 2,
         .updated_running = 1,
         .old = 2,
         .old_running = 2},
        {.name = "db",
         .generation = 4,
         .desired = 1,
         .placed = 1,
         .running = 1,
         .rollout_state = "failed",
         .rollout_from = 3,
         .rollout_to = 4,
         .rollout_reason = "hv2: cannot customize"},
        {.name = "new", .desired = 2, .running = -1},
        {.name = "ok", .desired = 2, .placed = 2, .running = 2},
        {.name = "grow", .desired = 3, .placed = 3, .running = 2},
    };
    StatusPage p = {.now = 1, .services = s, .n_services = 5};
    g_autofree char *html = render(&p);

    cr_expect(strstr(html, "rolling, generation 1 &#8594; 2: 2 updated (1 "
                           "running), 2 old (2 running)"));
    cr_expect(strstr(html, "<td class=\"bad\">failed, generation 3 &#8594; 4: "
                           "hv2: cannot customize</td>"));
    cr_expect(strstr(html, "data-service=\"web\" data-state=\"rolling\" "
                           "data-desired=\"3\" data-placed=\"3\" "
                           "data-running=\"1\""));
    cr_expect(
        strstr(html, "data-service=\"db\" data-state=\"rollout-failed\""));
    cr_expect(strstr(html, "<td class=\"bad\">rollout-failed</td>"));
    cr_expect(strstr(html, "<td class=\"warn\">not known yet</td>"),
              "running not known before the hosts reported");
    cr_expect(strstr(html, "data-service=\"new\" data-state=\"unknown\""));
    cr_expect(strstr(html, "data-service=\"ok\" data-state=\"ready\""));
    cr_expect(strstr(html, "data-service=\"grow\" data-state=\"converging\""));
}

Test(status_page, lists_each_hosts_cached_fractions_up_to_its_cap)
{
    guint n = STATUS_HOST_IMAGES_MAX + 2;
    g_autofree StatusHostImage *im = g_new0(StatusHostImage, n);
    StatusHost h[] = {{"hv1", "up", 2, 1.2, im, n},
                      {"hv2", "lost", 0, -1, NULL, 0}};
    StatusPage p = {.now = 1, .hosts = h, .n_hosts = 2};
    g_autofree char *html = NULL;

    for (guint i = 0; i < n; i++)
        im[i] = (StatusHostImage){"test-guest", i == 0 ? 0.0463 : 1.0};
    html = render(&p);
    cr_expect(strstr(html, "<td>test-guest 4.6%<br>test-guest 100.0%"));
    cr_expect_eq(count(html, "test-guest "), STATUS_HOST_IMAGES_MAX);
    cr_expect(strstr(html, "(and 2 more)"));
    cr_expect(strstr(html, "data-host=\"hv2\" data-state=\"lost\""));
    cr_expect(strstr(html, "<td class=\"bad\">lost</td>"));
    cr_expect(strstr(html, "<td>never</td>"));
    cr_expect(strstr(html, "2 hosts, 1 up, 1 lost."));
}

Test(status_page, stays_within_its_size_bound_at_every_cap)
{
    /* every text longer than the cut, and all of it escaped 6 bytes a
     * character: the worst a site can make of the page */
    g_autofree char *big = g_strnfill(STATUS_TEXT_MAX_CHARS * 4, '"');
    guint n = 2000;
    g_autofree StatusService *s = g_new0(StatusService, n);
    g_autofree StatusClone *c = g_new0(StatusClone, n);
    g_autofree StatusHost *h = g_new0(StatusHost, n);
    g_autofree StatusEvent *e = g_new0(StatusEvent, n);
    g_autofree StatusHostImage *im = g_new0(StatusHostImage, n);
    StatusPage p = {.now = 1,
                    .site = big,
                    .error = big,
                    .services = s,
                    .n_services = n,
                    .clones = c,
                    .n_clones = n,
                    .hosts = h,
                    .n_hosts = n,
                    .events = e,
                    .n_events = n};
    g_autofree char *html = NULL;
    gsize len;

    for (guint i = 0; i < n; i++) {
        im[i] = (StatusHostImage){big, 1};
        s[i] = (StatusService){
            .name = big, .rollout_state = big, .rollout_reason = big};
        c[i] = (StatusClone){big, big, big, big, 1, big};
        h[i] = (StatusHost){big, big, 1, 1, im, n};
        e[i] = (StatusEvent){1, big, big, big, big};
    }
    html = render(&p);
    len = strlen(html);
    cr_expect_lt(len, STATUS_PAGE_MAX_BYTES, "%zu bytes", len);
    cr_expect_gt(len, STATUS_PAGE_MAX_BYTES / 2,
                 "the bound is near the worst case (%zu bytes)", len);
}
