/*
 * le-bytes.h: little-endian integers in byte buffers, for the on-disk and
 * on-wire formats (image index, fetch protocol).  Alignment-free.
 */
#pragma once

#include <glib.h>

static inline void
le_put32(guint8 *p, guint32 v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (guint8)(v >> (8 * i));
}

static inline void
le_put64(guint8 *p, guint64 v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (guint8)(v >> (8 * i));
}

static inline guint32
le_get32(const guint8 *p)
{
    guint32 v = 0;

    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static inline guint64
le_get64(const guint8 *p)
{
    guint64 v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
