/*
 * profile.c: parsing and merging access profiles (see profile.h).
 */
#include "profile.h"

#include <string.h>
#include <sys/stat.h>
#include <glib/gstdio.h>

#include "file-util.h"
#include "le-bytes.h"

ProfileBoot *
profile_boot_parse(const guint8 *data, gsize len, guint64 chunk_count)
{
    ProfileBoot *b = g_new0(ProfileBoot, 1);
    g_autofree guint8 *seen = g_malloc0((gsize)((chunk_count + 7) / 8));

    b->chunks = g_array_new(FALSE, FALSE, sizeof(guint64));
    b->times = g_array_new(FALSE, FALSE, sizeof(guint64));
    for (gsize off = 0; off + PROFILE_RECORD_BYTES <= len;
         off += PROFILE_RECORD_BYTES) {
        guint64 chunk = le_get64(data + off);
        guint64 t = le_get64(data + off + 8);

        if (chunk >= chunk_count || (seen[chunk / 8] >> (chunk % 8)) & 1)
            continue;
        seen[chunk / 8] |= (guint8)(1u << (chunk % 8));
        g_array_append_val(b->chunks, chunk);
        g_array_append_val(b->times, t);
    }
    return b;
}

void
profile_boot_free(ProfileBoot *b)
{
    if (!b)
        return;
    g_array_unref(b->chunks);
    g_array_unref(b->times);
    g_free(b);
}

typedef struct {
    guint64 chunk;
    guint boots;
    double sum_us;
} Tally;

static gint
tally_cmp(gconstpointer a, gconstpointer b)
{
    const Tally *ta = *(Tally *const *)a, *tb = *(Tally *const *)b;
    double ma = ta->sum_us / ta->boots, mb = tb->sum_us / tb->boots;

    if (ma != mb)
        return ma < mb ? -1 : 1;
    return (ta->chunk > tb->chunk) - (ta->chunk < tb->chunk);
}

GArray *
profile_merge(ProfileBoot *const *boots, guint n_boots)
{
    g_autoptr(GHashTable) tallies =
        g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
    g_autoptr(GPtrArray) kept = g_ptr_array_new();
    GArray *order = g_array_new(FALSE, FALSE, sizeof(guint64));
    GHashTableIter it;
    gpointer value;

    for (guint k = 0; k < n_boots; k++) {
        for (guint i = 0; i < boots[k]->chunks->len; i++) {
            guint64 chunk = g_array_index(boots[k]->chunks, guint64, i);
            Tally *t = g_hash_table_lookup(tallies, &chunk);

            if (!t) {
                t = g_new0(Tally, 1);
                t->chunk = chunk;
                g_hash_table_insert(tallies, &t->chunk, t);
            }
            t->boots++;
            t->sum_us += (double)g_array_index(boots[k]->times, guint64, i);
        }
    }
    g_hash_table_iter_init(&it, tallies);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Tally *t = value;
        /* seen in at least a quarter of the boots */
        if ((guint64)t->boots * 4 >= n_boots)
            g_ptr_array_add(kept, t);
    }
    g_ptr_array_sort(kept, tally_cmp);
    for (guint i = 0; i < kept->len; i++)
        g_array_append_val(order, ((Tally *)kept->pdata[i])->chunk);
    return order;
}

typedef struct {
    char *path;
    gint64 mtime;
} ProfFile;

static gint
newest_first(gconstpointer a, gconstpointer b)
{
    const ProfFile *fa = a, *fb = b;

    if (fa->mtime != fb->mtime)
        return fa->mtime > fb->mtime ? -1 : 1;
    return strcmp(fb->path, fa->path);
}

static void
prof_file_clear(gpointer p)
{
    g_free(((ProfFile *)p)->path);
}

GArray *
profile_load_dir(const char *dir, guint64 chunk_count, guint *ret_boots)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    g_autoptr(GArray) files = g_array_new(FALSE, FALSE, sizeof(ProfFile));
    g_autoptr(GPtrArray) boots =
        g_ptr_array_new_with_free_func((GDestroyNotify)profile_boot_free);
    const char *name;

    g_array_set_clear_func(files, prof_file_clear);
    while (d && (name = g_dir_read_name(d))) {
        ProfFile f;
        GStatBuf st;

        if (!g_str_has_suffix(name, ".prof"))
            continue;
        f.path = g_build_filename(dir, name, NULL);
        if (g_stat(f.path, &st) != 0 || st.st_size == 0) {
            g_free(f.path);
            continue;
        }
        f.mtime = (gint64)st.st_mtime;
        g_array_append_val(files, f);
    }
    g_array_sort(files, newest_first);
    for (guint i = 0; i < files->len && boots->len < PROFILE_MAX_BOOTS; i++) {
        g_autofree char *data = NULL;
        gsize len = 0;

        if (!spore_file_read_bounded(g_array_index(files, ProfFile, i).path,
                                     PROFILE_MAX_BYTES, &data, &len, NULL))
            continue; /* a profile is a hint: skip what cannot be read */
        g_ptr_array_add(
            boots, profile_boot_parse((const guint8 *)data, len, chunk_count));
    }
    if (ret_boots)
        *ret_boots = boots->len;
    return profile_merge((ProfileBoot *const *)boots->pdata, boots->len);
}

char *
profile_digest(const GArray *chunks)
{
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);

    for (guint i = 0; i < chunks->len; i++) {
        guint8 b[8];

        le_put64(b, g_array_index(chunks, guint64, i));
        g_checksum_update(sum, b, sizeof(b));
    }
    return g_strconcat("sha256:", g_checksum_get_string(sum), NULL);
}
