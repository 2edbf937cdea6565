/*
 * fetch-client.h: the shim's side of the fetch protocol (fetch-protocol.h,
 * docs/fetch-protocol.md): ask the host agent to make chunks of one image
 * present in its cache, and wait until it says they are.
 *
 * The agent may be restarted at any time under running shims: a client that
 * cannot connect, or whose connection breaks before every reply came, tries
 * again with backoff (FETCH_CLIENT_RETRY_MIN_MS doubling to
 * FETCH_CLIENT_RETRY_MAX_MS) and sends again the requests not yet answered
 * (requests are idempotent), until the caller's deadline.  A restart within
 * that time is not seen by the caller.
 *
 * No threads, no signals (sends use MSG_NOSIGNAL), no logging: it is linked
 * into the nbdkit plugin, where nothing may start a thread before nbdkit
 * forks, and errors go to the caller as GError values.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "hash.h"

/* first delay before connecting again, doubled after each failure up to
 * FETCH_CLIENT_RETRY_MAX_MS; the first retry after a connection that broke
 * (an agent that went away since the last request) is immediate */
#define FETCH_CLIENT_RETRY_MIN_MS 50u
#define FETCH_CLIENT_RETRY_MAX_MS 1000u
/* a reply may come this long after the deadline the agent was given */
#define FETCH_CLIENT_REPLY_GRACE_MS 1000u
/* connections one call spreads its requests over (the agent answers the
 * requests of one connection one after another); more requests are
 * pipelined on them */
#define FETCH_CLIENT_LANES_MAX 4u
/* chunks one call may ask for: a 64 MiB read of 64 KiB chunks */
#define FETCH_CLIENT_BATCH_MAX 1024u

typedef struct FetchClient FetchClient;

/*
 * fetch_client_new: a client asking the agent listening on the unix socket
 * @socket_path for chunks of the image whose id's digest is @image (the
 * SPORE_SHA256_BYTES behind "sha256:"; copied).  Does not connect yet.
 * Fails (SPORE_ERROR_INVALID) when @socket_path does not fit a unix socket
 * address.  A client is used by one thread at a time.
 */
FetchClient *fetch_client_new(const char *socket_path,
                              const guint8 image[SPORE_SHA256_BYTES],
                              GError **error);

/* fetch_client_free: close its connection and free it.  NULL-safe. */
void fetch_client_free(FetchClient *client);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(FetchClient, fetch_client_free)

/*
 * fetch_client_get: ask for the @n_chunks chunks @chunks (at most
 * FETCH_CLIENT_BATCH_MAX; duplicates are allowed) at @priority (0 demand,
 * 1 profile prefetch) and wait until the agent reported each present, or
 * until @deadline (monotonic time, g_get_monotonic_time) has passed.  All
 * requests are sent before any reply is awaited, over up to
 * FETCH_CLIENT_LANES_MAX connections.  One connection is kept for the next
 * call.
 *
 * Errors: the agent's own message when it answers that a chunk failed
 * (SPORE_ERROR_FAILED); SPORE_ERROR_UNAVAILABLE when the agent could not be
 * reached or lost in time (the message says what failed last);
 * SPORE_ERROR_INVALID on a reply that breaks the protocol (no retry: that
 * agent is broken).  On failure *@failed_chunk, when not NULL, is set to the
 * chunk the error is about; it is not touched on success.
 */
bool fetch_client_get(FetchClient *client, const guint64 *chunks,
                      gsize n_chunks, guint32 priority, gint64 deadline,
                      guint64 *failed_chunk, GError **error);
