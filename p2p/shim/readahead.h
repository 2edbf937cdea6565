/*
 * readahead.h: the shim's read-ahead of sequential streams (the design note
 * is in readahead.c).
 *
 * ShimStreams: per NBD connection, the sequential streams seen (pure
 *   bookkeeping, no I/O: readahead_note says which chunks to ask ahead).
 * The ahead fetcher: one thread of the shim's own, started on first use
 *   (after nbdkit's fork), that sends the chunks asked ahead to the agent at
 *   profile priority, over connections of its own, without anyone waiting.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* streams tracked per connection (a guest reading a few files at once) */
#define READAHEAD_STREAMS 4u
/* the default window cap (readahead= of the plugin) */
#define READAHEAD_DEFAULT_BYTES (1024u * 1024u)
/* a stream asks ahead once it has read this much back to back: a boot
 * reads many small files, and two files next to each other on the disk
 * look like a stream (readahead.c) */
#define READAHEAD_START_BYTES (256u * 1024u)
/* the largest cap the plugin takes */
#define READAHEAD_MAX_BYTES (64u * 1024u * 1024u)

typedef struct {
    uint64_t next;  /* byte offset where its last read ended */
    uint64_t run;   /* bytes it read back to back so far; 0: slot free */
    uint64_t ahead; /* one past the last chunk asked ahead for it */
    uint64_t reads; /* reads it is made of */
    uint64_t used;  /* for least-recently-used replacement */
} ShimStream;

typedef struct {
    pthread_mutex_t lock;
    ShimStream s[READAHEAD_STREAMS];
    uint64_t tick;
} ShimStreams;

/*
 * readahead_note: a read of @count bytes at @offset on the connection of
 * @st.  When it continues a stream (starts where one of its reads ended),
 * and the stream had read at least READAHEAD_START_BYTES back to back
 * before it, sets *@from and *@to (inclusive) to the chunks to ask ahead
 * now and returns true; *@continued is true when the read continued a
 * stream (a stream's first continuation sets *@new_stream as well).  The
 * window: what the stream read back to back before this read, at most @cap
 * bytes (at least one chunk), past the end of this read, never beyond
 * @chunk_count; chunks already asked for the stream are not returned again.
 */
bool readahead_note(ShimStreams *st, uint64_t offset, uint32_t count,
                    unsigned chunk_shift, uint64_t chunk_count, uint64_t cap,
                    uint64_t *from, uint64_t *to, bool *continued,
                    bool *new_stream);
