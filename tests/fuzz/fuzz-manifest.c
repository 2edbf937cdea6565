/*
 * fuzz-manifest.c: libFuzzer target for the manifest parser.
 *
 * Whatever the input, the parser must return either a manifest or at least
 * one problem, never crash, leak or hang; and a manifest it accepts must
 * survive format -> parse unchanged.  Built with -fsanitize=fuzzer when
 * meson's 'fuzzing' option is on; otherwise fuzz-standalone.c replays the
 * corpus through it as an ordinary test.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <glib.h>

#include "manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    GPtrArray *problems = manifest_problems_new();
    GError *err = NULL;
    Manifest *m = manifest_parse_data((const char *)data, size, problems, &err);

    if (m) {
        char *xml = manifest_format(m);
        Manifest *again = manifest_parse_data(xml, strlen(xml), NULL, NULL);

        if (problems->len != 0 || err || !again || !manifest_equal(m, again))
            abort();
        manifest_free(again);
        g_free(xml);
        manifest_free(m);
    } else if (problems->len == 0 || !err) {
        abort();
    }
    g_clear_error(&err);
    g_ptr_array_unref(problems);
    return 0;
}
