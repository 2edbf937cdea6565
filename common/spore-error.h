/*
 * spore-error.h: the GError domain shared by spore's libraries.
 *
 * Library code reports failures as GError values in SPORE_ERROR and never
 * logs; the top level (a daemon or sporectl) prints them once.
 */
#pragma once

#include <glib.h>

#define SPORE_ERROR (spore_error_quark())

typedef enum {
    SPORE_ERROR_FAILED,      /* anything not covered below */
    SPORE_ERROR_IO,          /* a read or write of a local file failed */
    SPORE_ERROR_INVALID,     /* input broke a rule: bad manifest, bad message */
    SPORE_ERROR_LIMIT,       /* input exceeded a named limit */
    SPORE_ERROR_USAGE,       /* a command was called the wrong way */
    SPORE_ERROR_UNAVAILABLE, /* a service (libvirtd, a peer) is unreachable
                              * or went away: retrying later may work */
    SPORE_ERROR_CONFLICT,    /* the thing exists and differs from what was
                              * asked: never overwritten */
} SporeErrorCode;

/* spore_error_quark: the quark behind SPORE_ERROR.  Thread-safe. */
GQuark spore_error_quark(void);
