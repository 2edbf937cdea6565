/*
 * hash.c: SHA-256 through OpenSSL's EVP interface.
 *
 * The EVP_MD is fetched once (an implicit fetch on every call costs a lock
 * and a lookup in OpenSSL 3) and then shared read-only by all threads.
 */
#include "hash.h"

#include <string.h>
#include <openssl/evp.h>

static const EVP_MD *
sha256_md(void)
{
    static gsize once = 0;
    static EVP_MD *md = NULL;

    if (g_once_init_enter(&once)) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        g_assert(md); /* OpenSSL's default provider always has it */
        g_once_init_leave(&once, 1);
    }
    return md;
}

void
spore_sha256(const void *data, gsize len, guint8 out[SPORE_SHA256_BYTES])
{
    unsigned int out_len = 0;
    int ok = EVP_Digest(data, len, out, &out_len, sha256_md(), NULL);

    g_assert(ok == 1 && out_len == SPORE_SHA256_BYTES);
}

char *
spore_hex(const guint8 *bytes, gsize len)
{
    static const char digits[] = "0123456789abcdef";
    char *out = g_malloc(2 * len + 1);

    for (gsize i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 0xf];
    }
    out[2 * len] = '\0';
    return out;
}

bool
spore_unhex(const char *hex, guint8 *out, gsize len)
{
    g_autofree guint8 *tmp = g_malloc(len ? len : 1);

    for (gsize i = 0; i < len; i++) {
        int hi = g_ascii_xdigit_value(hex[2 * i]);
        int lo = hi < 0 ? -1 : g_ascii_xdigit_value(hex[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return false;
        tmp[i] = (guint8)(hi << 4 | lo);
    }
    if (hex[2 * len] != '\0')
        return false;
    memcpy(out, tmp, len);
    return true;
}
