/*
 * manifest.h: service definition manifests (urn:spore:manifest:1).
 *
 * A Manifest is the parsed, validated and defaulted form of one manifest
 * file.  Only manifest_parse_data() and manifest_parse_file() produce one, and
 * they only do when every rule in docs/spore-manifest.5 holds, so code that
 * holds a Manifest may rely on every field being within its limits.  The
 * element reference is docs/spore-manifest.5; the schema is
 * xml-schemas/manifest.rng.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "cron.h"

#define MANIFEST_NAMESPACE "urn:spore:manifest:1"

/* Limits on the document itself. */
#define MANIFEST_MAX_BYTES    (1024u * 1024)
#define MANIFEST_MAX_DEPTH    16u
#define MANIFEST_MAX_PROBLEMS 100u

/* Limits on its contents. */
#define MANIFEST_NAME_MAX_CHARS              63u
#define MANIFEST_HOST_NAME_MAX_CHARS         63u
#define MANIFEST_DESCRIPTION_MAX_BYTES       4096u
#define MANIFEST_ORIGINS_MAX                 8u
#define MANIFEST_URL_MAX_BYTES               4096u
#define MANIFEST_VCPUS_MAX                   256u
#define MANIFEST_MEMORY_MAX_KIB              (4ull * 1024 * 1024 * 1024) /* 4 TiB */
#define MANIFEST_HOST_PATH_MAX_BYTES         4096u
#define MANIFEST_CMDLINE_MAX_BYTES           4096u
#define MANIFEST_INTERFACES_MAX              16u
#define MANIFEST_NETWORK_NAME_MAX_CHARS      64u
#define MANIFEST_BRIDGE_NAME_MAX_CHARS       15u /* IFNAMSIZ - 1 */
#define MANIFEST_HOSTNAME_TEMPLATE_MAX_BYTES 512u
#define MANIFEST_GUEST_PATH_MAX_BYTES        4096u
#define MANIFEST_FILES_MAX                   256u
#define MANIFEST_FILE_MAX_BYTES              (1024u * 1024)     /* expanded */
#define MANIFEST_FILES_TOTAL_MAX_BYTES       (8u * 1024 * 1024) /* expanded */
#define MANIFEST_FILE_MODE_MAX               07777u
#define MANIFEST_SSH_KEYS_MAX                64u
#define MANIFEST_SSH_KEY_MAX_BYTES           16384u
#define MANIFEST_USER_NAME_MAX_CHARS         32u
#define MANIFEST_FIRSTBOOT_MAX               64u
#define MANIFEST_FIRSTBOOT_MAX_BYTES         65536u
#define MANIFEST_CLONES_MAX                  1000u
#define MANIFEST_RULES_MAX                   32u
#define MANIFEST_STEP_MAX                    1000u
#define MANIFEST_DURATION_MAX_SECONDS        (30u * 24 * 3600)
#define MANIFEST_DURATION_MAX_DIGITS         9u
#define MANIFEST_REQUESTS_THRESHOLD_MAX      1e12
#define MANIFEST_THRESHOLD_INT_MAX_DIGITS    13u
#define MANIFEST_THRESHOLD_FRAC_MAX_DIGITS   17u
#define MANIFEST_HOSTS_MAX                   1000u
#define MANIFEST_SCHEDULES_MAX               32u
#define MANIFEST_SCHEDULE_ADD_PERCENT_MAX    1000u
#define MANIFEST_SCHEDULE_REMOVE_PERCENT_MAX 100u
#define MANIFEST_SCHEDULE_GRACE_MIN_SECONDS  60u

/* Defaults for what a manifest may leave out. */
#define MANIFEST_DEFAULT_HOSTNAME              "{service}-{index}"
#define MANIFEST_DEFAULT_FILE_MODE             0644u
#define MANIFEST_DEFAULT_SSH_USER              "root"
#define MANIFEST_DEFAULT_COOLDOWN_SECONDS      300u
#define MANIFEST_DEFAULT_STABILIZATION_SECONDS 300u
#define MANIFEST_DEFAULT_GRACE_SECONDS         600u
#define MANIFEST_DEFAULT_TIMEZONE              "UTC"
/* <update>: a rolling replacement keeps every desired clone running and
 * adds at most one clone beyond the desired count */
#define MANIFEST_DEFAULT_MAX_UNAVAILABLE 0u
#define MANIFEST_DEFAULT_MAX_SURGE       1u

typedef enum {
    MANIFEST_IMAGE_FORMAT_RAW,
    MANIFEST_IMAGE_FORMAT_QCOW2,
} ManifestImageFormat;

typedef enum {
    MANIFEST_HYPERVISOR_KVM,
    MANIFEST_HYPERVISOR_QEMU,
    MANIFEST_HYPERVISOR_XEN,
} ManifestHypervisor;

/* How a clone's <customize> reaches its guest (docs/customization.md). */
typedef enum {
    MANIFEST_CUSTOMIZE_LIBGUESTFS, /* written into the overlay (default) */
    MANIFEST_CUSTOMIZE_CLOUD_INIT, /* a NoCloud seed the guest applies */
} ManifestCustomizeMethod;

typedef enum {
    MANIFEST_METRIC_REQUESTS,
    MANIFEST_METRIC_CPU,
    MANIFEST_METRIC_MEMORY,
} ManifestMetric;

typedef enum {
    MANIFEST_PLACEMENT_SPREAD,
    MANIFEST_PLACEMENT_PACK,
} ManifestPlacementStrategy;

typedef struct {
    char *network; /* exactly one of network and bridge is set */
    char *bridge;
} ManifestInterface;

typedef struct {
    char *path;    /* absolute guest path, checked */
    guint mode;    /* permission bits, <= 07777 */
    char *content; /* template text, placeholders not yet expanded */
} ManifestFile;

typedef struct {
    char *user; /* POSIX user name in the guest */
    char *key;  /* one authorized_keys line: type, base64, optional comment */
} ManifestSshKey;

typedef struct {
    ManifestMetric metric;
    bool above;        /* true: fires above threshold; false: below */
    double threshold;  /* cpu and memory: in [0, 1] */
    bool add;          /* true: add step clones; false: remove step clones */
    guint step;        /* 1 .. MANIFEST_STEP_MAX */
    guint for_seconds; /* how long the condition must hold; 0: one sample */
} ManifestRule;

typedef enum {
    MANIFEST_SCHEDULE_SET,    /* the count becomes amount */
    MANIFEST_SCHEDULE_ADD,    /* amount clones (or percent) more */
    MANIFEST_SCHEDULE_REMOVE, /* amount clones (or percent) fewer */
} ManifestScheduleAction;

/*
 * A scheduled policy (<schedule>): exactly one of a recurrence (cron) and
 * a start time (at), and one action.  docs/scaling.md says when it fires.
 */
typedef struct {
    char *cron;         /* the recurrence normalized (cron_parse), or NULL */
    Cron parsed;        /* of cron */
    bool has_at;        /* a start time instead */
    gint64 at;          /* its instant, UTC seconds */
    gint64 at_wall;     /* its wall time as written */
    bool at_has_offset; /* written with Z or +HH:MM: no time zone */
    char *timezone;     /* zone name; NULL only for an at with an offset */
    GTimeZone *tz;      /* of timezone, UTC without one; a reference */
    ManifestScheduleAction action;
    guint amount;        /* set: 0 .. MANIFEST_CLONES_MAX, within [min, max];
                          * add/remove: 1 .. MANIFEST_STEP_MAX clones, or
                          * a percentage (up to the PERCENT_MAX limits) */
    bool percent;        /* add/remove only */
    guint grace_seconds; /* >= MANIFEST_SCHEDULE_GRACE_MIN_SECONDS */
} ManifestSchedule;

typedef struct {
    char *name;
    char *description; /* NULL when absent */

    struct {
        char *name;
        ManifestImageFormat format;
        GPtrArray *origins; /* of char *, 1 .. MANIFEST_ORIGINS_MAX URLs */
        char *digest;       /* "sha256:" + 64 hex, or NULL */
    } image;

    struct {
        ManifestHypervisor hypervisor;
        guint vcpus;
        guint64 memory_kib;
        char *kernel; /* direct kernel boot; all three NULL when absent */
        char *initrd;
        char *cmdline;
        GPtrArray *interfaces; /* of ManifestInterface * */
    } vm;

    struct {
        ManifestCustomizeMethod method;
        char *hostname;      /* template; MANIFEST_DEFAULT_HOSTNAME if absent */
        GPtrArray *files;    /* of ManifestFile * */
        GPtrArray *ssh_keys; /* of ManifestSshKey * */
        GPtrArray *firstboot; /* of char * (templates), run in order */
    } customize;

    struct {
        guint min; /* 0 <= min <= initial <= max <= MANIFEST_CLONES_MAX */
        guint max;
        guint initial;
        guint cooldown_seconds;
        guint stabilization_seconds;
        GPtrArray *rules;     /* of ManifestRule * */
        GPtrArray *schedules; /* of ManifestSchedule *, no two alike */
    } scaling; /* without <scaling>: min = initial = max = 1, no rules */

    struct {
        ManifestPlacementStrategy strategy;
        GPtrArray *hosts; /* of char *; empty: any host */
    } placement;

    struct {
        guint max_unavailable; /* <= MANIFEST_CLONES_MAX, not both 0 */
        guint max_surge;       /* <= MANIFEST_CLONES_MAX */
    } update; /* how a new generation replaces the clones: <update> */
} Manifest;

/* One problem found in a manifest: where, and what. */
typedef struct {
    guint line; /* 1-based; 0 when it concerns the whole file */
    char *message;
} ManifestProblem;

/* manifest_free: free @m and everything it owns.  Accepts NULL. */
void manifest_free(Manifest *m);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(Manifest, manifest_free)

/*
 * manifest_parse_data: parse and validate @len bytes of manifest XML.
 *
 * Every problem found is appended to @problems (an array made by
 * manifest_problems_new(); may be NULL) in document order, up to
 * MANIFEST_MAX_PROBLEMS.  Returns the manifest, owned by the caller, when
 * there is none.  Otherwise returns NULL and sets @error to
 * SPORE_ERROR_INVALID (or SPORE_ERROR_LIMIT for an oversized document) with
 * "LINE: message" of the first problem.  Reads nothing but @data.
 * Thread-safe.
 */
Manifest *manifest_parse_data(const char *data, gsize len, GPtrArray *problems,
                              GError **error);

/*
 * manifest_parse_file: manifest_parse_data() on the contents of @path ("-"
 * for standard input), read with the MANIFEST_MAX_BYTES limit.  A file that
 * cannot be read fails with SPORE_ERROR_IO and adds no problem.
 */
Manifest *manifest_parse_file(const char *path, GPtrArray *problems,
                              GError **error);

/* manifest_problems_new: an empty array of ManifestProblem, owning them. */
GPtrArray *manifest_problems_new(void);

/*
 * manifest_format: the canonical XML form of @m, UTF-8, owned by the caller.
 *
 * Every default is written out but <customize method="libguestfs"> and
 * <update> when it is the default (older manifests' canonical forms, and
 * so their clones' UUIDs, stay as they were); elements appear in the
 * order of the schema;
 * numbers are written in their shortest exact form.  Parsing the result
 * yields a manifest equal to @m (manifest_equal).
 */
char *manifest_format(const Manifest *m);

/*
 * manifest_clone_uuid: the UUID of clone @index of the manifest whose
 * canonical form (manifest_format) is @canonical, with image @image_id at
 * @generation: SHA-256 based, RFC 9562 version 8.  Owned by the caller.
 * Pure: the same inputs give the same UUID on every host.
 */
char *manifest_clone_uuid(const char *canonical, guint index,
                          const char *image_id, guint64 generation);

/*
 * clone_uuid: manifest_clone_uuid() of manifest_format(@manifest).  Owned
 * by the caller.
 */
char *clone_uuid(const Manifest *manifest, guint index, const char *image_id,
                 guint64 generation);

/* manifest_equal: whether @a and @b define the same service.  NULL-safe. */
bool manifest_equal(const Manifest *a, const Manifest *b);

/* Names of enumerated values as written in manifests. */
const char *manifest_hypervisor_name(ManifestHypervisor h);
const char *manifest_image_format_name(ManifestImageFormat f);
const char *manifest_customize_method_name(ManifestCustomizeMethod m);
const char *manifest_metric_name(ManifestMetric m);
const char *manifest_placement_strategy_name(ManifestPlacementStrategy s);

/*
 * manifest_schedule_text: @s in one line, its attributes in canonical
 * form: "cron '0 8 * * 1-5' Europe/Berlin: set 4, grace 10m".  Two
 * schedules are alike exactly when their texts are equal; the site manager
 * keys a schedule's state by it.  Owned by the caller.
 */
char *manifest_schedule_text(const ManifestSchedule *s);

/*
 * manifest_clone_hostname: the hostname of clone @index of @m, the template
 * expanded.  Owned by the caller.  Cannot fail for index < scaling.max of a
 * validated manifest; returns NULL and sets @error otherwise.
 */
char *manifest_clone_hostname(const Manifest *m, guint index, GError **error);

/*
 * manifest_clone_name: "{service}-{index}", the libvirt domain name of clone
 * @index.  Owned by the caller.
 */
char *manifest_clone_name(const Manifest *m, guint index);

/*
 * manifest_path_problem: NULL when @path is an acceptable absolute path,
 * else a static string saying why not.  With @guest, the rules of guest
 * file paths: no '.', '..' or empty components, not '/', not under /dev,
 * /proc or /sys.  Used by the parser, and again by the clone manager before
 * it launches the appliance that writes into a guest.
 */
const char *manifest_path_problem(const char *path, bool guest);
