/*
 * manifest-uuid.c: a clone's identity.  One function for the site manager
 * (which has the stored canonical text of each manifest) and the agent
 * (which has the parsed manifest): both reach manifest_clone_uuid(), so
 * they agree by construction.
 *
 * Invariant: the UUID depends on the canonical text only, never on how a
 * manifest was written; manifest_format() is idempotent over
 * manifest_parse_data() (tests/unit/test-manifest-uuid.c), so hashing the
 * text stored at submit and hashing the re-formatted parse are the same.
 */
#include "manifest.h"

#include "hash.h"

/* a version tag hashed first, so that another derivation never collides */
#define CLONE_UUID_TAG "spore-clone-uuid-1\n"

char *
manifest_clone_uuid(const char *canonical, guint index, const char *image_id,
                    guint64 generation)
{
    g_autoptr(GString) key = g_string_new(CLONE_UUID_TAG);
    guint8 d[SPORE_SHA256_BYTES];

    g_string_append_printf(key, "%u\n%s\n%" G_GUINT64_FORMAT "\n", index,
                           image_id, generation);
    g_string_append(key, canonical);
    spore_sha256(key->str, key->len, d);
    d[6] = (guint8)((d[6] & 0x0f) | 0x80); /* version 8 */
    d[8] = (guint8)((d[8] & 0x3f) | 0x80); /* RFC 9562 variant */
    return g_strdup_printf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                           "%02x%02x%02x%02x%02x%02x",
                           d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8],
                           d[9], d[10], d[11], d[12], d[13], d[14], d[15]);
}

char *
clone_uuid(const Manifest *manifest, guint index, const char *image_id,
           guint64 generation)
{
    g_autofree char *canonical = manifest_format(manifest);

    return manifest_clone_uuid(canonical, index, image_id, generation);
}
