/*
 * fuzz-standalone.c: replay files through LLVMFuzzerTestOneInput without
 * libFuzzer, so that the fuzz corpora run in the normal test suite.
 * Arguments are files or directories (read one level deep).  Prints TAP.
 */
#include <stdint.h>
#include <stdio.h>
#include <glib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static guint count;

static void
run_file(const char *path)
{
    g_autofree char *data = NULL;
    g_autofree uint8_t *exact = NULL;
    gsize len = 0;
    g_autoptr(GError) err = NULL;

    if (!g_file_get_contents(path, &data, &len, &err)) {
        printf("not ok %u - %s: %s\n", ++count, path, err->message);
        return;
    }
    /* an exact-size copy, so that sanitizers catch reads past the end */
    exact = g_memdup2(data, len);
    LLVMFuzzerTestOneInput(exact, len);
    printf("ok %u - %s\n", ++count, path);
}

int
main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (g_file_test(argv[i], G_FILE_TEST_IS_DIR)) {
            g_autoptr(GDir) dir = g_dir_open(argv[i], 0, NULL);
            const char *name;

            while (dir && (name = g_dir_read_name(dir))) {
                g_autofree char *path = g_build_filename(argv[i], name, NULL);
                if (g_file_test(path, G_FILE_TEST_IS_REGULAR))
                    run_file(path);
            }
        } else {
            run_file(argv[i]);
        }
    }
    printf("1..%u\n", count);
    return count > 0 ? 0 : 1;
}
