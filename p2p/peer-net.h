/*
 * peer-net.h: a host's peer-to-peer chunk exchange (docs/peer-protocol.md).
 *
 * One PeerNet per host agent.  It serves the chunks of this host's caches
 * to peers (a ZeroMQ ROUTER) and asks peers for chunks this host lacks (a
 * DEALER per peer).  Every connection is CURVE-encrypted both ways: a peer
 * is known by its public key, and only keys in the peer list get anything
 * from the server (a ZAP handler with ZMQ_ZAP_ENFORCE_DOMAIN).
 *
 * Availability is exchanged BitTorrent-like: a client asks each peer for
 * its bitmap of an image (HAVE_REQ, which also subscribes it) and the peer
 * pushes the chunks that become present (HAVE_UPDATE).
 *
 * Fetching (peer_source_new, the FetchSource the fetch engine asks after
 * local copies and before the origin):
 *   - a chunk a peer holds is asked of the best-ranked peer holding it
 *     (measured latency and throughput, weighted by its outstanding
 *     requests), within a per-peer window of outstanding requests;
 *   - a slow answer is hedged: after max(hedge_ms, 4 x the peer's latency)
 *     the request is re-issued to the next peer holding the chunk, and the
 *     first answer wins;
 *   - a peer that stays silent for dead_ms with requests outstanding, or
 *     whose connection drops, is dead: its outstanding requests are planned
 *     again at once, elsewhere;
 *   - origin economy: a chunk no peer holds yet is fetched from the origin
 *     by one host only, chosen by rendezvous hashing of the chunk over the
 *     hosts that have the image (this one and its live peers); the others
 *     ask that host (GET with PEER_GET_FETCH), which fetches it once and
 *     answers them all.  If it fails, each falls back to the origin.
 *   - every request has a deadline derived from what was measured of the
 *     peer (a few times its expected time, at least ~1.5 s); a missed
 *     deadline re-plans the chunk at once, and the peer is dead for that
 *     image for a while (2 s, doubling with each miss in a row up to
 *     60 s); a peer with a request past its hedge time and no answer since
 *     gets no new work; a slow delegated request is hedged to the next
 *     holder or, when there is none, to the origin;
 *   - every bad DATA is a strike against the peer for its image: a chunk
 *     that does not verify (peer_source's rejected), of the wrong length,
 *     unasked, or larger than asked (which also drops the connection);
 *     after strikes_max the peer is banned for that image: it is never
 *     asked for it again, also after a restart (config ban_dir).
 *
 * Threads: a PeerNet runs one thread that owns every zmq socket (the
 * context is its own).  Other threads talk to it through a locked queue
 * and a wake-up eventfd; fetches block the calling thread, never the loop.
 * PEER_GET_FETCH requests from peers run on a small thread pool, since they
 * wait for this host's fetch engine.  The mutex guards the peer table
 * (bitmaps, statistics) and the image table.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "chunk-cache.h"
#include "fetch-engine.h"
#include "fetch-source.h"

#define PEER_KEY_CHARS      40 /* a Z85-encoded CURVE key */
#define PEER_NAME_MAX_CHARS 63
#define PEER_PEERS_MAX      256
#define PEER_ZAP_DOMAIN     "spore-peer"

typedef struct {
    char *name;       /* the peer's host name */
    char *endpoint;   /* tcp://ADDRESS:PORT of its peer server */
    char *public_key; /* its Z85 CURVE public key */
} PeerInfo;

/* peer_info_clear: free the members of @info.  NULL-safe members. */
void peer_info_clear(PeerInfo *info);

/* Log levels of PeerNetLogFunc */
typedef enum {
    PEER_LOG_DEBUG,
    PEER_LOG_INFO,
    PEER_LOG_WARNING,
} PeerLogLevel;

/* How a PeerNet reports what happened (the library itself never logs);
 * called from the PeerNet's thread. */
typedef void (*PeerNetLogFunc)(PeerLogLevel level, const char *message,
                               gpointer data);

typedef struct {
    char *listen; /* tcp://ADDRESS:PORT to serve on; NULL: no server */
    char public_key[PEER_KEY_CHARS + 1]; /* this host's key pair */
    char secret_key[PEER_KEY_CHARS + 1];
    char *host_name;   /* this host's name, in messages */
    guint window;      /* outstanding requests per peer; 0: 16 */
    guint hedge_ms;    /* re-issue a slow request after; 0: 300 */
    guint dead_ms;     /* silence with requests outstanding; 0: 3000 */
    guint strikes_max; /* bad chunks before a ban for the image; 0: 3 */
    guint delegate_ms; /* a PEER_GET_FETCH may take at most; 0: 20000 */
    char *ban_dir;     /* bans are kept in ban_dir/bans across restarts
                        * (created 0700); NULL: in memory only */
    PeerNetLogFunc log;
    gpointer log_data;
} PeerNetConfig;

typedef struct PeerNet PeerNet;

/*
 * peer_net_new: start the PeerNet's thread; bind the server when
 * @config->listen is set (":0" or ":*" picks a free port, see
 * peer_net_endpoint).  Copies what it needs of @config.
 */
PeerNet *peer_net_new(const PeerNetConfig *config, GError **error);

/*
 * peer_net_free: stop the thread, fail every waiting fetch, close the
 * sockets.  Images registered must still be open.  Accepts NULL.
 */
void peer_net_free(PeerNet *net);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(PeerNet, peer_net_free)

/* peer_net_endpoint: the server's bound endpoint (owned by @net), or NULL */
const char *peer_net_endpoint(PeerNet *net);

/*
 * peer_net_set_peers: replace the peer list (and with it the server's
 * allow-list of keys) by @peers (@n of them; copied).  Peers whose name,
 * endpoint and key are unchanged keep their connection and what is known of
 * them.  Fails, changing nothing, on an invalid key, name or endpoint, or
 * more than PEER_PEERS_MAX peers.  Thread-safe.
 */
bool peer_net_set_peers(PeerNet *net, const PeerInfo *peers, guint n,
                        GError **error);

/*
 * peer_net_add_image: serve the chunks of @cache to peers and track which
 * peers hold them.  @engine fetches chunks peers ask this host to fetch
 * (PEER_GET_FETCH).  Both are borrowed: they must stay open until
 * peer_net_free.  Thread-safe.
 */
void peer_net_add_image(PeerNet *net, ChunkCache *cache, FetchEngine *engine);

/*
 * peer_source_new: the FetchSource (kind PEER) for the image of @cache,
 * registered with peer_net_add_image first.  @net must outlive it.
 */
FetchSource *peer_source_new(PeerNet *net, ChunkCache *cache);

typedef struct {
    char *name;
    char *endpoint;
    bool connected;    /* its CURVE handshake succeeded */
    bool dead;         /* silent with requests outstanding, or dropped */
    double latency_ms; /* measured, smoothed */
    double mbit_s;     /* measured throughput, smoothed; 0: unknown */
    guint outstanding; /* requests in flight to it */
    guint64 chunks_in; /* chunks received from it (verified or not) */
    guint64 bytes_in;
    guint64 bad_chunks; /* of those, how many did not verify */
    guint64 chunks_out; /* chunks this host served it */
    guint64 bytes_out;
    guint64 hedged;      /* requests to it re-issued elsewhere */
    guint64 missed;      /* requests it did not answer by their deadline */
    guint images_banned; /* how many images it is banned for */
    guint images_dead;   /* how many images it is not asked for now, after
                          * missing deadlines */
} PeerStatus;

/* peer_status_clear: free the members of @st */
void peer_status_clear(PeerStatus *st);

/* peer_net_status: a snapshot of every peer, a GArray of PeerStatus with a
 * clear function.  Thread-safe. */
GArray *peer_net_status(PeerNet *net);

/*
 * peer_net_chunk_source: where chunk @i of the image of @cache would come
 * from now: the name of the best peer holding it (a new string) with
 * *ret_delegated false, or the peer chosen to fetch it from the origin for
 * the site with *ret_delegated true, or NULL when no peer can provide it
 * (the origin).  For image-plan.  Thread-safe.
 */
char *peer_net_chunk_source(PeerNet *net, ChunkCache *cache, guint64 i,
                            bool *ret_delegated);

/*
 * peer_net_holders: how many usable peers hold chunk @i of the image of
 * @cache (for rarest-first background fill).  Thread-safe.
 */
guint peer_net_holders(PeerNet *net, ChunkCache *cache, guint64 i);

/* peer_net_bad_chunks: chunks received from peers that did not verify,
 * over every peer and image */
guint64 peer_net_bad_chunks(PeerNet *net);
