/*
 * fetch-source.c: what all FetchSources share.
 */
#include "fetch-source.h"

void
fetch_source_free(FetchSource *src)
{
    if (src)
        src->ops->free(src);
}

const char *
fetch_source_kind_name(FetchSourceKind kind)
{
    switch (kind) {
    case FETCH_SOURCE_LOCAL:
        return "local";
    case FETCH_SOURCE_PEER:
        return "peer";
    case FETCH_SOURCE_ORIGIN:
        return "origin";
    }
    return "unknown";
}
