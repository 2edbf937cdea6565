/*
 * hash.h: SHA-256, the digest of every chunk, index and image id.
 *
 * OpenSSL's implementation (SHA-NI / AVX2 where the CPU has them) behind a
 * two-function interface; nothing else in spore links libcrypto directly.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#define SPORE_SHA256_BYTES     32u
#define SPORE_SHA256_HEX_CHARS 64u

/* spore_sha256: the SHA-256 of @len bytes at @data into @out.  Thread-safe. */
void spore_sha256(const void *data, gsize len, guint8 out[SPORE_SHA256_BYTES]);

/* spore_hex: lowercase hex of @len bytes, owned by the caller. */
char *spore_hex(const guint8 *bytes, gsize len);

/*
 * spore_unhex: parse exactly 2 * @len lowercase or uppercase hex digits of
 * @hex into @out.  False (and @out untouched) on anything else.
 */
bool spore_unhex(const char *hex, guint8 *out, gsize len);
