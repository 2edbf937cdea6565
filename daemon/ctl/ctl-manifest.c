/*
 * ctl-manifest.c: sporectl's offline tools for what an operator writes
 * and publishes — validate and format manifests, index a master image
 * (ctl.h).  No daemon is involved; every problem is printed as
 * "FILE:LINE: message" on standard error.
 */
#include "ctl.h"

#include <stdlib.h>

#include "image-index.h"

/* the hashing threads image-index may be given */
#define CTL_INDEX_THREADS_MAX 256u

/* ---- validate ---------------------------------------------------------- */

/* {file, valid, problems: [{line, message}]} of one file */
static void
add_validate_json(JsonBuilder *jb, const char *file, bool valid,
                  GPtrArray *problems)
{
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "file");
    json_builder_add_string_value(jb, file);
    json_builder_set_member_name(jb, "valid");
    json_builder_add_boolean_value(jb, valid);
    json_builder_set_member_name(jb, "problems");
    json_builder_begin_array(jb);
    for (guint p = 0; p < problems->len; p++) {
        const ManifestProblem *prob = problems->pdata[p];

        json_builder_begin_object(jb);
        json_builder_set_member_name(jb, "line");
        json_builder_add_int_value(jb, prob->line);
        json_builder_set_member_name(jb, "message");
        json_builder_add_string_value(jb, prob->message);
        json_builder_end_object(jb);
    }
    json_builder_end_array(jb);
    json_builder_end_object(jb);
}

static void
print_json_node(JsonNode *root)
{
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *text = NULL;

    json_generator_set_root(gen, root);
    json_generator_set_pretty(gen, TRUE);
    text = json_generator_to_data(gen, NULL);
    printf("%s\n", text);
}

static int
cmd_validate(const CtlCall *call)
{
    g_autoptr(JsonBuilder) jb = NULL;
    bool all_valid = true;

    if (call->g.json) {
        jb = json_builder_new();
        json_builder_begin_array(jb);
    }
    for (guint i = 0; i < ctl_n_args(call); i++) {
        const char *file = ctl_arg(call, i);
        g_autoptr(GPtrArray) problems = manifest_problems_new();
        g_autoptr(GError) err = NULL;
        g_autoptr(Manifest) m = manifest_parse_file(file, problems, &err);

        if (!m) {
            all_valid = false;
            if (problems->len == 0) { /* could not be read at all */
                ManifestProblem *p = g_new0(ManifestProblem, 1);

                p->message = g_strdup(err->message);
                g_ptr_array_add(problems, p);
            }
        }
        if (jb)
            add_validate_json(jb, file, m != NULL, problems);
        else if (m)
            printf("%s: valid\n", file);
        else
            ctl_print_manifest_problems(file, problems, NULL);
    }
    if (jb) {
        g_autoptr(JsonNode) root = NULL;

        json_builder_end_array(jb);
        root = json_builder_get_root(jb);
        print_json_node(root);
    }
    fflush(stdout);
    return all_valid ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* ---- format ------------------------------------------------------------ */

static int
cmd_format(const CtlCall *call)
{
    g_autoptr(GPtrArray) problems = manifest_problems_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autofree char *xml = NULL;

    m = manifest_parse_file(ctl_arg(call, 0), problems, &err);
    if (!m) {
        if (problems->len == 0)
            fprintf(stderr, "sporectl format: %s\n", err->message);
        ctl_print_manifest_problems(ctl_arg(call, 0), problems, NULL);
        return CTL_EXIT_FAILURE;
    }
    xml = manifest_format(m);
    fputs(xml, stdout);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* ---- image-index ------------------------------------------------------- */

static void
print_index_summary(const CtlCall *call, ImageIndex *idx, const char *image,
                    const char *output)
{
    guint64 count = image_index_chunk_count(idx);
    guint64 zero = image_index_zero_count(idx);
    g_autofree char *size_text = ctl_human_bytes(image_index_image_size(idx));
    g_autofree char *chunk_text = ctl_human_bytes(image_index_chunk_size(idx));
    g_autofree char *data_text =
        ctl_human_bytes((count - zero) * image_index_chunk_size(idx));

    if (call->g.json) {
        printf("{\"id\": \"%s\", \"image_size\": %" G_GUINT64_FORMAT
               ", \"chunk_size\": %" G_GUINT64_FORMAT
               ", \"chunks\": %" G_GUINT64_FORMAT
               ", \"zero_chunks\": %" G_GUINT64_FORMAT "}\n",
               image_index_id(idx), image_index_image_size(idx),
               image_index_chunk_size(idx), count, zero);
    } else if (g_str_equal(output, "-")) {
        fprintf(stderr, "%s\n", image_index_id(idx));
    } else {
        printf("%s\n", image_index_id(idx));
    }
    fprintf(stderr,
            "%s: %s in %" G_GUINT64_FORMAT " chunks of %s, %" G_GUINT64_FORMAT
            " all-zero (at most %s to fetch); index in %s\n",
            image, size_text, count, chunk_text, zero, data_text,
            g_str_equal(output, "-") ? "standard output" : output);
}

static int
cmd_image_index(const CtlCall *call)
{
    const char *chunk_size = ctl_string(call, "chunk-size", NULL);
    const char *output = ctl_string(call, "output", NULL);
    const char *image = ctl_arg(call, 0);
    guint shift = IMAGE_INDEX_CHUNK_SHIFT_DEFAULT;
    g_autoptr(GError) err = NULL;
    g_autoptr(ImageIndex) idx = NULL;
    g_autofree char *default_output = NULL;

    if (chunk_size && !image_index_parse_chunk_size(chunk_size, &shift, &err))
        return ctl_usage_error(call, "%s", err->message);
    if (!output) {
        g_autofree char *base = g_path_get_basename(image);

        default_output = g_strconcat(base, ".sporeidx", NULL);
        output = default_output;
    }
    idx = image_index_build_file(image, shift,
                                 (guint)ctl_int(call, "threads", 0), &err);
    if (!idx || !image_index_write(idx, output, &err)) {
        fprintf(stderr, "sporectl image-index: %s\n", err->message);
        return CTL_EXIT_FAILURE;
    }
    print_index_summary(call, idx, image, output);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

/* ---- the table --------------------------------------------------------- */

static const CtlArgDef files_args[] = {
    {"FILE", CTL_ARG_MANY, .complete = CTL_COMPLETE_FILE},
    {0},
};

static const CtlArgDef file_arg[] = {
    {"FILE", CTL_ARG_REQUIRED, .complete = CTL_COMPLETE_FILE},
    {0},
};

static const CtlOptDef image_index_opts[] = {
    {"chunk-size", 0, CTL_OPT_STRING, "SIZE",
     .help = "chunk size, a power of two from 4K to 4M (default 64K)"},
    {"output", 'o', CTL_OPT_STRING, "INDEX", .complete = CTL_COMPLETE_FILE,
     .help = "where to write the index (- : standard output)"},
    {"threads", 0, CTL_OPT_INT, "N", .min = 1, .max = CTL_INDEX_THREADS_MAX,
     .help = "hashing threads (default: one per CPU)"},
    {0},
};

const CtlCmdDef ctl_manifest_commands[] = {
    {
        .name = "validate",
        .summary = "Check service definition manifests offline.",
        .help =
            "Each FILE (or - for standard input) is parsed and checked\n"
            "against the manifest schema and rules of spore-manifest(5). A\n"
            "valid file prints 'FILE: valid' on standard output; every\n"
            "problem of an invalid file is printed on standard error as\n"
            "'FILE:LINE: message'. With --json, a JSON array of {file, valid,\n"
            "problems} goes to standard output instead. No daemon is needed.\n"
            "\n"
            "Exit status: 0 when every FILE is valid, 1 when any is not, 2 on\n"
            "a usage error.\n",
        .args = files_args,
        .run = cmd_validate,
    },
    {
        .name = "format",
        .summary = "Print a manifest in canonical form.",
        .help =
            "Validates FILE like 'validate' and prints its canonical XML on\n"
            "standard output: every default written out, elements in schema\n"
            "order, sizes and durations in their largest exact unit.\n",
        .args = file_arg,
        .run = cmd_format,
    },
    {
        .name = "image-index",
        .summary = "Build the chunk index of an image and print its id.",
        .help =
            "Cuts the image FILE (a raw image file or block device) into\n"
            "chunks of SIZE bytes, hashes each with SHA-256, flags all-zero\n"
            "chunks, writes the index to INDEX (default: FILE's name +\n"
            ".sporeidx in the current directory) and prints the image id,\n"
            "sha256:HEX, the SHA-256 of the index. A summary goes to standard\n"
            "error. The format is in docs/image-index.md.\n",
        .opts = image_index_opts,
        .args = file_arg,
        .run = cmd_image_index,
    },
    {0},
};
