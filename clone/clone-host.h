/*
 * clone-host.h: clones as libvirt domains on one hypervisor host, through
 * the libvirt C API.
 *
 * A clone is a persistent libvirt domain named "{service}-{index}" whose
 * disk is a qcow2 overlay volume in spore's `dir` storage pool (created when
 * missing, so `virsh vol-list spore` shows the overlays).  Creating:
 *
 *   1. overlays created with libguestfs (backing file and format recorded)
 *      in the pool's directory, customized in one appliance launch; or,
 *      for <customize method="cloud-init">, left as they are, and a
 *      NoCloud seed ISO written beside each (cloud-init.h), no appliance;
 *   2. the pool refreshed, so each overlay is a volume;
 *   3. the domain defined (persistent; the seed, if any, a read-only
 *      cdrom), then started.
 *
 * The domain is defined only after its overlay is fully customized, so an
 * interrupted create (appliance killed, libvirt gone, the process killed)
 * never leaves a half-made domain: at most an overlay without a domain,
 * which the next create of that clone replaces.
 *
 * Every operation is idempotent, keyed by domain name and UUID.  A clone's
 * UUID is derived from what made it (the canonical manifest, the index, the
 * image id and the generation; clone_uuid()).  Creating a clone whose
 * domain exists with that UUID changes nothing; a domain of that name with
 * another UUID is an error, never overwritten.  Destroying a clone that is
 * not there succeeds.  Only domains carrying spore's clone metadata are
 * ever shut down, undefined or have their volume removed.
 *
 * A lost libvirt connection fails the operation with an error that says so
 * (SPORE_ERROR_UNAVAILABLE); running it again once libvirtd is back
 * completes it.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "manifest.h"

#define CLONE_DEFAULT_URI              "qemu:///system"
#define CLONE_DEFAULT_POOL             "spore"
#define CLONE_DEFAULT_POOL_DIR         "/var/lib/spore/clones"
#define CLONE_DEFAULT_CONSOLE_DIR      "/var/log/spore/console"
#define CLONE_DEFAULT_SHUTDOWN_SECONDS 60
/* a cloud-init clone's seed volume: "{name}" CLONE_SEED_SUFFIX in the pool */
#define CLONE_SEED_SUFFIX ".seed.iso"

typedef struct CloneHost CloneHost;

/* Called with one line of progress ("customizing 2 clones of web ..."). */
typedef void (*CloneProgressFunc)(const char *message, gpointer data);

typedef struct {
    const char *uri;            /* NULL: CLONE_DEFAULT_URI */
    const char *pool;           /* NULL: CLONE_DEFAULT_POOL */
    const char *pool_dir;       /* where a new pool lives; NULL: the default.
                                 * An existing pool keeps its own path. */
    const char *console_dir;    /* NULL: CLONE_DEFAULT_CONSOLE_DIR */
    const char *inspect_cache;  /* NULL: CLONE_DEFAULT_INSPECT_CACHE */
    const char *owner;          /* optional: the host agent's name, recorded in
                                 * each clone's metadata; clones of other
                                 * owners are not listed and not touched */
    CloneProgressFunc progress; /* optional */
    gpointer progress_data;
} CloneHostConfig;

/*
 * clone_host_open: connect to libvirt and make sure spore's storage pool
 * exists and is active (defining, building and starting it if needed, with
 * autostart on).
 */
CloneHost *clone_host_open(const CloneHostConfig *config, GError **error);
void clone_host_free(CloneHost *host);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CloneHost, clone_host_free)

/* The pool's directory (absolute). */
const char *clone_host_pool_dir(const CloneHost *host);

typedef struct {
    const Manifest *manifest;
    const guint *indexes; /* the clones to create, each < scaling.max */
    gsize n_indexes;
    const char *backing;        /* master: absolute file path or nbd+unix URI */
    const char *backing_format; /* "raw", "qcow2" or NULL: the manifest's
                                 * <image format>, which it must match */
    const char *image_id;       /* "sha256:<64 hex>" of the master */
    guint64 generation;         /* the manifest's generation */
    const char *host_name;      /* for {host}; NULL: this machine's name */
    ManifestHypervisor virt;    /* the domain type actually used */
    bool start;                 /* start the domains once defined */
} CloneCreateRequest;

typedef enum {
    CLONE_CREATED, /* defined (and started when asked) now */
    CLONE_EXISTED, /* already there with the same UUID: nothing changed */
} CloneCreateOutcome;

/*
 * clone_host_create: create the request's clones.  @outcomes (may be NULL)
 * receives one CloneCreateOutcome per index, in order.  Clones that already
 * exist and match are skipped; the others are customized together in one
 * appliance launch.  On failure, overlays of clones that were not defined
 * are removed, and the error names the clone.
 */
bool clone_host_create(CloneHost *host, const CloneCreateRequest *req,
                       CloneCreateOutcome *outcomes, GError **error);

typedef enum {
    CLONE_ABSENT,      /* no such domain (a leftover volume was removed) */
    CLONE_WAS_STOPPED, /* was shut off: undefined, volume removed */
    CLONE_SHUT_DOWN,   /* shut down gracefully, undefined, volume removed */
    CLONE_DESTROYED,   /* did not shut down in time: destroyed (power off) */
} CloneDestroyOutcome;

/*
 * clone_host_resume: resume the spore clone @name if it is paused (after an
 * I/O error of its disk with error_policy='stop', the failed request is
 * retried); *ret_resumed says whether it was paused.  Refuses domains
 * without spore's clone metadata.  Not thread-safe for one @host.
 */
bool clone_host_resume(CloneHost *host, const char *name, bool *ret_resumed,
                       GError **error);

/*
 * clone_host_start: start the spore clone @name, defined and shut off
 * (after a host's reboot), on the overlay it has: nothing is created or
 * customized again.  With @uuid, a domain of another UUID is refused (a
 * conflict), as are domains without spore's clone metadata and those
 * another host owns.  *ret_started: it was not running.  Its image's
 * export must be served first.  Not thread-safe for one @host.
 */
bool clone_host_start(CloneHost *host, const char *name, const char *uuid,
                      bool *ret_started, GError **error);

/*
 * clone_host_destroy: stop the clone @name (ACPI shutdown, then power off
 * after @timeout_seconds), undefine it and remove its overlay volume and
 * its cloud-init seed volume, if any (each only when in spore's pool).
 * Refuses domains without spore's clone metadata.  A domain @name that
 * another host owns (a libvirtd shared by agents) is not touched: the
 * clone is CLONE_ABSENT here, and an overlay @name.qcow2 or a seed
 * @name.seed.iso left in this host's pool is removed (unless it is that
 * domain's own).
 */
bool clone_host_destroy(CloneHost *host, const char *name,
                        guint timeout_seconds, CloneDestroyOutcome *outcome,
                        GError **error);

/* One clone found on the host: a domain with spore's clone metadata. */
typedef struct {
    char *name;
    char *uuid;
    char *service;
    guint index;
    char *image_id;
    guint64 generation;
    char *owner;         /* the metadata's host, or NULL */
    const char *state;   /* "running", "paused", "shutoff", "crashed", ... */
    const char *reason;  /* libvirt's reason for the state, e.g. "ioerror" */
    guint64 cpu_time_ns; /* guest CPU time; 0 when not running */
    guint vcpus;
    guint64 memory_kib;       /* current memory */
    gint64 memory_unused_kib; /* from the balloon driver; -1: no data */
    gint64 memory_usable_kib; /* idem */
} CloneInfo;

void clone_info_free(CloneInfo *info);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CloneInfo, clone_info_free)

/*
 * clone_host_list: every spore clone defined on the host, with its state
 * and stats (one bulk stats call).  Returns a GPtrArray of CloneInfo *.
 */
GPtrArray *clone_host_list(CloneHost *host, GError **error);

/* clone_host_capacity: the host's CPUs and memory, from libvirt. */
bool clone_host_capacity(CloneHost *host, guint *cpus, guint64 *memory_kib,
                         GError **error);

/*
 * clone_host_watch: call @fn (on libvirt's event thread) whenever one of
 * the host's domains changes state (libvirt lifecycle events: defined,
 * started, suspended, resumed, stopped, ...).  Starts libvirt's default
 * event loop on a thread of its own, once per process (connections opened
 * before that get no events: call clone_events_init() first).  @fn gets
 * the domain's name and the event's name.
 */
typedef void (*CloneEventFunc)(const char *domain, const char *event,
                               gpointer data);
bool clone_host_watch(CloneHost *host, CloneEventFunc fn, gpointer data,
                      GError **error);

/* clone_events_init: start libvirt's event loop thread (idempotent);
 * call before opening connections that will be watched */
void clone_events_init(void);
