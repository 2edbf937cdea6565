/*
 * profile.h: access profiles: the order in which a boot first reads an
 * image's chunks, recorded by the shim (CACHE_DIR/profiles/NAME.prof: records
 * of two little-endian u64, chunk index and microseconds since the shim
 * started), merged over several boots into the order a new host should
 * prefetch in.
 *
 * Merge rule: a chunk seen in fewer than a quarter of the boots is dropped
 * (noise, not the boot set); the others are ordered by their mean first
 * access time (ties by chunk index).  Pure functions; thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#define PROFILE_RECORD_BYTES 16u
#define PROFILE_MAX_BYTES    (64u * 1024 * 1024) /* one .prof file */
#define PROFILE_MAX_BOOTS    64u                 /* the newest are merged */

/* One boot: chunk indexes and their first-access times, in file order. */
typedef struct {
    GArray *chunks; /* of guint64 */
    GArray *times;  /* of guint64, microseconds */
} ProfileBoot;

/*
 * profile_boot_parse: decode @len bytes of a .prof file.  Records for
 * chunks >= @chunk_count and repeated chunks are dropped; a trailing partial
 * record (a shim killed mid-write) is ignored.  Owned by the caller.
 */
ProfileBoot *profile_boot_parse(const guint8 *data, gsize len,
                                guint64 chunk_count);

/* profile_boot_free: free @boot.  Accepts NULL. */
void profile_boot_free(ProfileBoot *boot);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(ProfileBoot, profile_boot_free)

/*
 * profile_merge: the prefetch order for @n_boots boots (see the rule
 * above), as a new array of guint64 chunk indexes.
 */
GArray *profile_merge(ProfileBoot *const *boots, guint n_boots);

/*
 * profile_load_dir: parse the newest PROFILE_MAX_BOOTS .prof files of @dir
 * (a missing directory is no profile) and merge them.  *ret_boots, when
 * not NULL, gets how many boots were merged.
 */
GArray *profile_load_dir(const char *dir, guint64 chunk_count,
                         guint *ret_boots);

/*
 * profile_digest: "sha256:" and the hex SHA-256 of @chunks (guint64 chunk
 * numbers) as little-endian u64s in order: the name of a profile as the
 * site manager hands it out (profile-get, docs/site-protocol.md), checked
 * by the host that receives it.  Owned by the caller.
 */
char *profile_digest(const GArray *chunks);
