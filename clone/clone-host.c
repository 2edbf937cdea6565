/*
 * clone-host.c: clones as libvirt domains (see clone-host.h).
 *
 * libvirt's own error printing is silenced; every failing call is turned
 * into a GError that says what spore was doing, with libvirt's message.
 * When the connection is found dead at the start of an operation it is
 * reopened, so a long-lived caller (the agent) recovers by itself.
 */
#include "clone-host.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "cloud-init.h"
#include "customize.h"
#include "domain-xml.h"
#include "hash.h"
#include "qcow2-master.h"
#include "spore-error.h"
#include "virt-autoptr.h"
#include "xml-autoptr.h"
#include "xml-safe.h"

struct CloneHost {
    char *uri;
    char *pool_name;
    char *pool_dir_wanted;
    char *pool_dir; /* the pool's actual target path */
    char *console_dir;
    char *inspect_cache; /* NULL: customize.h's default */
    char *owner;
    CloneProgressFunc progress;
    gpointer progress_data;
    virConnectPtr conn;
};

static void
ignore_libvirt_error(void *data, virErrorPtr err)
{
    (void)data;
    (void)err;
}

static gpointer
silence_libvirt_once(gpointer data)
{
    (void)data;
    virSetErrorFunc(NULL, ignore_libvirt_error);
    return NULL;
}

static void G_GNUC_PRINTF(2, 3)
    progress(const CloneHost *host, const char *format, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    if (!host->progress)
        return;
    va_start(ap, format);
    msg = g_strdup_vprintf(format, ap);
    va_end(ap);
    host->progress(msg, host->progress_data);
}

/*
 * lv_error: set @error for a failed libvirt call made while doing @what;
 * a dead connection is reported as such (SPORE_ERROR_UNAVAILABLE).
 * Returns false, for `return lv_error(...)`.
 */
static bool G_GNUC_PRINTF(3, 4)
    lv_error(CloneHost *host, GError **error, const char *format, ...)
{
    va_list ap;
    g_autofree char *what = NULL;
    g_autofree char *msg = g_strdup(virGetLastErrorMessage());

    va_start(ap, format);
    what = g_strdup_vprintf(format, ap);
    va_end(ap);
    if (!host->conn || virConnectIsAlive(host->conn) != 1)
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "lost the connection to libvirt (%s) while %s: %s; "
                    "run the command again once libvirtd is back",
                    host->uri, what, msg);
    else
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED, "%s: %s", what,
                    msg);
    return false;
}

static bool
ensure_connected(CloneHost *host, GError **error)
{
    if (host->conn && virConnectIsAlive(host->conn) == 1)
        return true;
    g_clear_pointer(&host->conn, virConnectClose);
    host->conn = virConnectOpen(host->uri);
    if (!host->conn) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_UNAVAILABLE,
                    "cannot connect to libvirt at %s: %s (is libvirtd "
                    "running?)",
                    host->uri, virGetLastErrorMessage());
        return false;
    }
    return true;
}

/* ---- the storage pool ------------------------------------------------- */

static char *
pool_xml(const char *name, const char *dir)
{
    g_autoptr(xmlDoc) doc = xmlNewDoc(BAD_CAST "1.0");
    xmlNode *pool = xmlNewNode(NULL, BAD_CAST "pool");
    xmlNode *target, *perms;

    xmlDocSetRootElement(doc, pool); /* @doc owns @pool from here */
    xmlNewProp(pool, BAD_CAST "type", BAD_CAST "dir");
    xmlNewTextChild(pool, NULL, BAD_CAST "name", BAD_CAST name);
    target = xmlNewChild(pool, NULL, BAD_CAST "target", NULL);
    xmlNewTextChild(target, NULL, BAD_CAST "path", BAD_CAST dir);
    /* QEMU runs unprivileged: it must be able to reach its overlay */
    perms = xmlNewChild(target, NULL, BAD_CAST "permissions", NULL);
    xmlNewTextChild(perms, NULL, BAD_CAST "mode", BAD_CAST "0711");
    return xml_doc_to_string(doc);
}

/* xpath_string: the string value of @expr in the XML @text, or NULL */
static char *
xpath_string(const char *text, const char *expr)
{
    g_autoptr(xmlDoc) doc =
        xmlReadMemory(text, (int)strlen(text), NULL, NULL, XML_PARSE_NONET);
    g_autoptr(xmlXPathContext) ctx = NULL;
    g_autoptr(xmlXPathObject) obj = NULL;

    if (!doc)
        return NULL;
    ctx = xmlXPathNewContext(doc);
    obj = ctx ? xmlXPathEvalExpression(BAD_CAST expr, ctx) : NULL;
    if (obj && obj->type == XPATH_STRING && obj->stringval && obj->stringval[0])
        return g_strdup((const char *)obj->stringval);
    return NULL;
}

static bool
ensure_pool(CloneHost *host, GError **error)
{
    g_autoptr(virStoragePool) pool = NULL;
    g_autofree char *desc = NULL;
    g_autofree char *type = NULL;
    int active;

    pool = virStoragePoolLookupByName(host->conn, host->pool_name);
    if (!pool && virGetLastErrorCode() != VIR_ERR_NO_STORAGE_POOL)
        return lv_error(host, error, "looking up storage pool '%s'",
                        host->pool_name);
    if (!pool) {
        g_autofree char *xml = pool_xml(host->pool_name, host->pool_dir_wanted);

        progress(host, "defining storage pool '%s' in %s", host->pool_name,
                 host->pool_dir_wanted);
        pool = virStoragePoolDefineXML(host->conn, xml, 0);
        if (!pool) /* defined meanwhile by someone else? */
            pool = virStoragePoolLookupByName(host->conn, host->pool_name);
        if (!pool)
            return lv_error(host, error, "defining storage pool '%s' in %s",
                            host->pool_name, host->pool_dir_wanted);
        if (virStoragePoolBuild(pool, 0) < 0 ||
            virStoragePoolSetAutostart(pool, 1) < 0)
            return lv_error(host, error, "building storage pool '%s' in %s",
                            host->pool_name, host->pool_dir_wanted);
    }
    active = virStoragePoolIsActive(pool);
    if (active == 0 && virStoragePoolCreate(pool, 0) < 0)
        active = -1;
    if (active < 0)
        return lv_error(host, error, "starting storage pool '%s'",
                        host->pool_name);
    desc = virStoragePoolGetXMLDesc(pool, 0);
    if (!desc)
        return lv_error(host, error, "reading storage pool '%s'",
                        host->pool_name);
    type = xpath_string(desc, "string(/pool/@type)");
    g_free(host->pool_dir);
    host->pool_dir = xpath_string(desc, "string(/pool/target/path)");
    if (!type || !g_str_equal(type, "dir") || !host->pool_dir ||
        !g_path_is_absolute(host->pool_dir)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                    "storage pool '%s' exists but is not a 'dir' pool with "
                    "an absolute path (type '%s'); choose another pool name",
                    host->pool_name, type ? type : "?");
        return false;
    }
    return true;
}

static bool
refresh_pool(CloneHost *host, GError **error)
{
    g_autoptr(virStoragePool) pool =
        virStoragePoolLookupByName(host->conn, host->pool_name);

    if (!pool || virStoragePoolRefresh(pool, 0) != 0)
        return lv_error(host, error, "refreshing storage pool '%s'",
                        host->pool_name);
    return true;
}

CloneHost *
clone_host_open(const CloneHostConfig *config, GError **error)
{
    static GOnce silence = G_ONCE_INIT;
    g_autoptr(CloneHost) host = g_new0(CloneHost, 1);

    g_once(&silence, silence_libvirt_once, NULL);
    host->uri =
        g_strdup(config && config->uri ? config->uri : CLONE_DEFAULT_URI);
    host->pool_name =
        g_strdup(config && config->pool ? config->pool : CLONE_DEFAULT_POOL);
    host->pool_dir_wanted = g_canonicalize_filename(
        config && config->pool_dir ? config->pool_dir : CLONE_DEFAULT_POOL_DIR,
        NULL);
    host->inspect_cache = g_strdup(config ? config->inspect_cache : NULL);
    host->console_dir = g_canonicalize_filename(config && config->console_dir
                                                    ? config->console_dir
                                                    : CLONE_DEFAULT_CONSOLE_DIR,
                                                NULL);
    if (config) {
        host->owner = g_strdup(config->owner);
        host->progress = config->progress;
        host->progress_data = config->progress_data;
    }
    if (!ensure_connected(host, error) || !ensure_pool(host, error))
        return NULL;
    if (g_mkdir_with_parents(host->console_dir, 0755) < 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot create console log directory %s: %s",
                    host->console_dir, g_strerror(errno));
        return NULL;
    }
    return g_steal_pointer(&host);
}

void
clone_host_free(CloneHost *host)
{
    if (!host)
        return;
    if (host->conn)
        virConnectClose(host->conn);
    g_free(host->uri);
    g_free(host->pool_name);
    g_free(host->pool_dir_wanted);
    g_free(host->pool_dir);
    g_free(host->console_dir);
    g_free(host->inspect_cache);
    g_free(host->owner);
    g_free(host);
}

const char *
clone_host_pool_dir(const CloneHost *host)
{
    return host->pool_dir;
}

static bool parse_metadata(const char *meta, CloneInfo *info);

/* domain_owner: the host named in @dom's clone metadata, or NULL */
static char *
domain_owner(virDomainPtr dom)
{
    g_autofree char *meta = virDomainGetMetadata(
        dom, VIR_DOMAIN_METADATA_ELEMENT, CLONE_METADATA_NAMESPACE, 0);
    g_autoptr(CloneInfo) info = g_new0(CloneInfo, 1);

    if (meta && parse_metadata(meta, info))
        return g_steal_pointer(&info->owner);
    return NULL;
}

/* owned_elsewhere: @dom's metadata names a host other than ours */
static bool
owned_elsewhere(const CloneHost *host, virDomainPtr dom, char **ret_owner)
{
    g_autofree char *owner = domain_owner(dom);
    bool other = host->owner && owner && !g_str_equal(owner, host->owner);

    if (ret_owner)
        *ret_owner = g_steal_pointer(&owner);
    return other;
}

static bool
is_spore_clone(virDomainPtr dom)
{
    g_autofree char *meta = virDomainGetMetadata(
        dom, VIR_DOMAIN_METADATA_ELEMENT, CLONE_METADATA_NAMESPACE, 0);

    return meta != NULL;
}

/* ---- create ----------------------------------------------------------- */

typedef struct {
    guint index;
    char *name;
    char *uuid;
    char *overlay;
    char *console;
    char *seed;   /* the cloud-init seed, or NULL */
    bool pending; /* overlay (and seed) made here, domain not yet defined */
} CreateItem;

static void
create_item_clear(gpointer p)
{
    CreateItem *it = p;

    g_free(it->name);
    g_free(it->uuid);
    g_free(it->overlay);
    g_free(it->console);
    g_free(it->seed);
}

/*
 * check_existing: look for a domain named like @it or with its UUID.
 * Returns 1 when the clone exists and matches, 0 when it does not exist,
 * -1 with @error on a conflict or a libvirt failure.
 */
static int
check_existing(CloneHost *host, const CreateItem *it, GError **error)
{
    g_autoptr(virDomain) dom = virDomainLookupByName(host->conn, it->name);
    char uuid[VIR_UUID_STRING_BUFLEN];

    if (dom) {
        bool spore = is_spore_clone(dom);
        g_autofree char *owner = NULL;
        bool elsewhere = owned_elsewhere(host, dom, &owner);
        int got = virDomainGetUUIDString(dom, uuid);

        if (got < 0) {
            lv_error(host, error, "reading the UUID of domain '%s'", it->name);
            return -1;
        }
        if (elsewhere) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                        "domain '%s' exists and belongs to host '%s'; it was "
                        "not changed",
                        it->name, owner);
            return -1;
        }
        if (g_ascii_strcasecmp(uuid, it->uuid) == 0)
            return 1;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                    "domain '%s' exists with UUID %s, but this manifest, "
                    "index, image and generation make UUID %s: %s; it was "
                    "not changed (sporectl clone-destroy %s, then create "
                    "it again, to replace it)",
                    it->name, uuid, it->uuid,
                    spore ? "it is a different version of the clone"
                          : "it is not a spore clone",
                    it->name);
        return -1;
    }
    if (virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
        lv_error(host, error, "looking up domain '%s'", it->name);
        return -1;
    }
    dom = virDomainLookupByUUIDString(host->conn, it->uuid); /* was NULL */
    if (dom) {
        const char *other = virDomainGetName(dom);

        g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                    "domain '%s' already has clone %s's UUID %s; it was not "
                    "changed",
                    other ? other : "?", it->name, it->uuid);
        return -1;
    }
    if (virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
        lv_error(host, error, "looking up UUID %s", it->uuid);
        return -1;
    }
    return 0;
}

/* discard_overlays: remove the overlays and seeds of items still pending */
static void
discard_overlays(CloneHost *host, GArray *items)
{
    bool removed = false;

    for (guint i = 0; i < items->len; i++) {
        CreateItem *it = &g_array_index(items, CreateItem, i);

        if (it->pending && unlink(it->overlay) == 0)
            removed = true;
        if (it->pending && it->seed && unlink(it->seed) == 0)
            removed = true;
        it->pending = false;
    }
    if (removed && host->conn && virConnectIsAlive(host->conn) == 1) {
        g_autoptr(virStoragePool) pool =
            virStoragePoolLookupByName(host->conn, host->pool_name);

        if (pool)
            virStoragePoolRefresh(pool, 0);
    }
}

/* seed_path: where clone @name's cloud-init seed lives in the pool */
static char *
seed_path(const CloneHost *host, const char *name)
{
    return g_strdup_printf("%s/%s" CLONE_SEED_SUFFIX, host->pool_dir, name);
}

/* write_seeds: the cloud-init seed of every item (a leftover replaced) */
static bool
write_seeds(CloneHost *host, const CloneCreateRequest *req,
            const char *host_name, GArray *items, GError **error)
{
    for (guint i = 0; i < items->len; i++) {
        CreateItem *it = &g_array_index(items, CreateItem, i);
        CloudInitSeedSpec spec = {
            .manifest = req->manifest,
            .index = it->index,
            .host = host_name,
            .instance_id = it->uuid,
        };

        if (unlink(it->seed) == 0)
            progress(host, "removed %s, left by an interrupted create",
                     it->seed);
        if (!cloud_init_seed_write(&spec, it->seed, error)) {
            g_prefix_error(error, "clone %s: ", it->name);
            return false;
        }
    }
    return true;
}

static bool
define_and_start(CloneHost *host, const CloneCreateRequest *req, CreateItem *it,
                 GError **error)
{
    CloneDomainSpec spec = {
        .manifest = req->manifest,
        .index = it->index,
        .image_id = req->image_id,
        .generation = req->generation,
        .overlay_path = it->overlay,
        .console_log = it->console,
        .seed_path = it->seed,
        .uuid = it->uuid,
        .owner = host->owner,
        .virt = req->virt,
    };
    g_autofree char *xml = clone_domain_xml(&spec, error);
    g_autoptr(virDomain) dom = NULL;

    if (!xml)
        return false;
    dom = virDomainDefineXMLFlags(host->conn, xml, VIR_DOMAIN_DEFINE_VALIDATE);
    if (!dom)
        return lv_error(host, error, "defining domain '%s'", it->name);
    it->pending = false; /* the overlay belongs to the domain now */
    if (req->start) {
        progress(host, "starting %s", it->name);
        if (virDomainCreate(dom) < 0) {
            lv_error(host, error, "starting domain '%s'", it->name);
            /* not half-made: undefine it again, the caller removes the
             * overlay, and a retry starts from scratch */
            if (virDomainUndefineFlags(dom, 0) == 0)
                it->pending = true;
            return false;
        }
    }
    return true;
}

/* backing_format: the master's format: the manifest's <image format>; a
 * caller's explicit format must agree with it (a qcow2 master read as raw
 * boots the guest on qcow2's metadata, a raw one read as qcow2 fails).  A
 * qcow2 master naming files of the host (backing, data file) is refused:
 * qcow2-master.h */
static const char *
backing_format(const CloneCreateRequest *req, GError **error)
{
    const char *declared =
        manifest_image_format_name(req->manifest->image.format);

    if (req->backing_format && !g_str_equal(req->backing_format, declared)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                    "the master is given as '%s' but service '%s''s manifest "
                    "says its image '%s' is '%s'",
                    req->backing_format, req->manifest->name,
                    req->manifest->image.name, declared);
        return NULL;
    }
    if (req->manifest->image.format == MANIFEST_IMAGE_FORMAT_QCOW2 &&
        !qcow2_master_check(req->backing, NULL, error))
        return NULL;
    return declared;
}

/* Over 100 lines, kept whole: the steps of a create (check what exists,
 * make overlays, customize them in one launch, define, start) share the
 * items and undo each other's work on failure; split, the cleanup would be
 * spread over several functions. */
bool
clone_host_create(CloneHost *host, const CloneCreateRequest *req,
                  CloneCreateOutcome *outcomes, GError **error)
{
    g_autoptr(GArray) items = g_array_new(FALSE, TRUE, sizeof(CreateItem));
    g_autoptr(GArray) jobs =
        g_array_new(FALSE, TRUE, sizeof(CloneCustomizeJob));
    const char *host_name = req->host_name ? req->host_name : g_get_host_name();
    bool cloud_init =
        req->manifest->customize.method == MANIFEST_CUSTOMIZE_CLOUD_INIT;
    const char *format;

    g_array_set_clear_func(items, create_item_clear);
    if (!req->image_id || !req->backing) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_USAGE,
                    "a clone needs a master image and its id");
        return false;
    }
    if (!(format = backing_format(req, error)))
        return false;
    if (!ensure_connected(host, error) || !ensure_pool(host, error))
        return false;
    for (gsize i = 0; i < req->n_indexes; i++) {
        CreateItem it = {.index = req->indexes[i]};
        int exists;

        if (it.index >= req->manifest->scaling.max) {
            g_set_error(error, SPORE_ERROR, SPORE_ERROR_INVALID,
                        "clone index %u is not below service '%s''s max of "
                        "%u",
                        it.index, req->manifest->name,
                        req->manifest->scaling.max);
            return false;
        }
        it.name = manifest_clone_name(req->manifest, it.index);
        it.uuid =
            clone_uuid(req->manifest, it.index, req->image_id, req->generation);
        it.overlay = g_strdup_printf("%s/%s.qcow2", host->pool_dir, it.name);
        it.console = g_strdup_printf("%s/%s.log", host->console_dir, it.name);
        if (cloud_init)
            it.seed = seed_path(host, it.name);
        exists = check_existing(host, &it, error);
        if (exists < 0) {
            create_item_clear(&it);
            return false;
        }
        if (outcomes)
            outcomes[i] = exists ? CLONE_EXISTED : CLONE_CREATED;
        if (exists) {
            progress(host, "%s exists (UUID %s): unchanged", it.name, it.uuid);
            create_item_clear(&it);
            continue;
        }
        g_array_append_val(items, it);
    }
    if (items->len == 0)
        return true;

    /* overlays: a file left by an interrupted create (no domain uses it,
     * checked above) is replaced */
    for (guint i = 0; i < items->len; i++) {
        CreateItem *it = &g_array_index(items, CreateItem, i);
        CloneCustomizeJob job = {
            .manifest = req->manifest,
            .index = it->index,
            .host = host_name,
            .overlay = it->overlay,
            .image_key = req->image_id,
            .inspect_cache = host->inspect_cache,
            .backing = req->backing,
            .backing_format = format,
        };

        if (unlink(it->overlay) == 0)
            progress(host, "removed %s, left by an interrupted create",
                     it->overlay);
        if (!clone_overlay_create(it->overlay, req->backing, format, error)) {
            discard_overlays(host, items);
            return false;
        }
        it->pending = true;
        g_array_append_val(jobs, job);
    }
    if (cloud_init) {
        progress(host, "writing cloud-init seeds for %u clone%s of %s",
                 items->len, items->len == 1 ? "" : "s", req->manifest->name);
        if (!write_seeds(host, req, host_name, items, error)) {
            discard_overlays(host, items);
            return false;
        }
    } else {
        progress(host, "customizing %u clone%s of %s in one appliance launch",
                 items->len, items->len == 1 ? "" : "s", req->manifest->name);
    }
    if (!cloud_init && !clone_customize_batch((CloneCustomizeJob *)jobs->data,
                                              jobs->len, error)) {
        g_autoptr(GString) names = g_string_new(NULL);
        /* a bad manifest or image fails again: say "run it again" only
         * where a retry can help (the appliance died, ...) */
        bool invalid =
            error && g_error_matches(*error, SPORE_ERROR, SPORE_ERROR_INVALID);

        for (guint i = 0; i < items->len; i++)
            g_string_append_printf(names, "%s%s", i ? ", " : "",
                                   g_array_index(items, CreateItem, i).name);
        g_prefix_error(error,
                       "customizing %s (nothing was defined%s): ", names->str,
                       invalid ? "" : "; run it again");
        discard_overlays(host, items);
        return false;
    }
    if (!ensure_connected(host, error) || !refresh_pool(host, error)) {
        discard_overlays(host, items);
        return false;
    }
    for (guint i = 0; i < items->len; i++) {
        CreateItem *it = &g_array_index(items, CreateItem, i);

        unlink(it->console); /* a fresh console log per clone */
        progress(host, "defining %s (UUID %s)", it->name, it->uuid);
        if (!define_and_start(host, req, it, error)) {
            discard_overlays(host, items);
            return false;
        }
    }
    return true;
}

/* ---- destroy ---------------------------------------------------------- */

static bool
wait_shutoff(virDomainPtr dom, guint timeout_seconds)
{
    gint64 deadline =
        g_get_monotonic_time() + (gint64)timeout_seconds * G_USEC_PER_SEC;

    for (;;) {
        int state, reason;

        if (virDomainGetState(dom, &state, &reason, 0) < 0)
            return false;
        if (state == VIR_DOMAIN_SHUTOFF)
            return true;
        if (g_get_monotonic_time() >= deadline)
            return false;
        g_usleep(200 * 1000);
    }
}

/* the overlay of a clone's domain XML */
#define DISK_SOURCE_XPATH \
    "string(/domain/devices/disk[@device='disk'][1]/source/@file)"
/* its cloud-init seed: the read-only disk (a cdrom, or xvdb on xen) */
#define SEED_SOURCE_XPATH \
    "string(/domain/devices/disk[readonly][1]/source/@file)"

/* remove_volume: delete the volume at @path if it is in spore's pool */
static bool
remove_volume(CloneHost *host, const char *path, GError **error)
{
    g_autoptr(virStorageVol) vol = NULL;
    bool ours;

    if (!refresh_pool(host, error))
        return false;
    vol = virStorageVolLookupByPath(host->conn, path);
    if (!vol) {
        if (virGetLastErrorCode() == VIR_ERR_NO_STORAGE_VOL)
            return true; /* gone already */
        return lv_error(host, error, "looking up volume %s", path);
    }
    {
        g_autoptr(virStoragePool) pool = virStoragePoolLookupByVolume(vol);
        const char *pool_name = pool ? virStoragePoolGetName(pool) : NULL;

        ours = pool_name && g_str_equal(pool_name, host->pool_name);
    }
    if (ours) {
        progress(host, "removing volume %s", path);
        if (virStorageVolDelete(vol, 0) < 0)
            return lv_error(host, error, "removing volume %s", path);
    } else {
        progress(host, "%s is not in pool '%s': left in place", path,
                 host->pool_name);
    }
    return true;
}

/*
 * remove_leftovers: remove the overlay and seed named after clone @name
 * from the pool, left by an interrupted create or destroy; but not a disk
 * of @other_desc (the XML of another host's domain of that name), if given.
 */
static bool
remove_leftovers(CloneHost *host, const char *name, const char *other_desc,
                 GError **error)
{
    g_autofree char *other_disk =
        other_desc ? xpath_string(other_desc, DISK_SOURCE_XPATH) : NULL;
    g_autofree char *other_seed =
        other_desc ? xpath_string(other_desc, SEED_SOURCE_XPATH) : NULL;
    g_autofree char *overlay =
        g_strdup_printf("%s/%s.qcow2", host->pool_dir, name);
    g_autofree char *seed = seed_path(host, name);
    const char *paths[] = {overlay, seed};

    for (guint i = 0; i < G_N_ELEMENTS(paths); i++) {
        if (g_strcmp0(paths[i], other_disk) == 0 ||
            g_strcmp0(paths[i], other_seed) == 0 ||
            !g_file_test(paths[i], G_FILE_TEST_EXISTS))
            continue;
        if (!remove_volume(host, paths[i], error))
            return false;
    }
    return true;
}

/* spore_clone_or_refuse: true when @dom (named @name) carries spore's clone
 * metadata; else fails: spore leaves other domains alone.  @dom stays the
 * caller's. */
static bool
spore_clone_or_refuse(virDomainPtr dom, const char *name, GError **error)
{
    if (is_spore_clone(dom))
        return true;
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                "domain '%s' is not a spore clone (no <spore:clone> "
                "metadata): left alone",
                name);
    return false;
}

bool
clone_host_resume(CloneHost *host, const char *name, bool *ret_resumed,
                  GError **error)
{
    g_autoptr(virDomain) dom = NULL;
    int state = 0, reason = 0;

    if (!ensure_connected(host, error))
        return false;
    dom = virDomainLookupByName(host->conn, name);
    if (!dom)
        return lv_error(host, error, "looking up domain '%s'", name);
    if (!spore_clone_or_refuse(dom, name, error))
        return false;
    if (virDomainGetState(dom, &state, &reason, 0) < 0)
        return lv_error(host, error, "reading the state of domain '%s'", name);
    if (state == VIR_DOMAIN_PAUSED && virDomainResume(dom) < 0)
        return lv_error(host, error, "resuming domain '%s'", name);
    if (ret_resumed)
        *ret_resumed = state == VIR_DOMAIN_PAUSED;
    return true;
}

bool
clone_host_start(CloneHost *host, const char *name, const char *uuid,
                 bool *ret_started, GError **error)
{
    g_autoptr(virDomain) dom = NULL;
    char got[VIR_UUID_STRING_BUFLEN];
    g_autofree char *owner = NULL;
    int active;

    if (!ensure_connected(host, error))
        return false;
    dom = virDomainLookupByName(host->conn, name);
    if (!dom)
        return lv_error(host, error, "looking up domain '%s'", name);
    if (!spore_clone_or_refuse(dom, name, error))
        return false;
    if (owned_elsewhere(host, dom, &owner)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                    "domain '%s' belongs to host '%s'; it was not started",
                    name, owner);
        return false;
    }
    if (virDomainGetUUIDString(dom, got) < 0)
        return lv_error(host, error, "reading the UUID of domain '%s'", name);
    if (uuid && g_ascii_strcasecmp(got, uuid) != 0) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_CONFLICT,
                    "domain '%s' has UUID %s, not %s: another version of the "
                    "clone; it was not started",
                    name, got, uuid);
        return false;
    }
    if ((active = virDomainIsActive(dom)) < 0)
        return lv_error(host, error, "reading the state of domain '%s'", name);
    if (!active && virDomainCreate(dom) < 0)
        return lv_error(host, error, "starting domain '%s'", name);
    if (ret_started)
        *ret_started = !active;
    return true;
}

/* Over 100 lines, kept whole: one clone's teardown in order (look up,
 * refuse foreign domains, shut down or power off, undefine, remove the
 * volume), each step's outcome feeding the next and the reported outcome. */
bool
clone_host_destroy(CloneHost *host, const char *name, guint timeout_seconds,
                   CloneDestroyOutcome *outcome, GError **error)
{
    g_autoptr(virDomain) dom = NULL;
    g_autofree char *desc = NULL;
    g_autofree char *disk = NULL;
    g_autofree char *seed = NULL;
    CloneDestroyOutcome result = CLONE_WAS_STOPPED;
    int active;

    if (!ensure_connected(host, error) || !ensure_pool(host, error))
        return false;
    dom = virDomainLookupByName(host->conn, name);
    if (!dom) {
        if (virGetLastErrorCode() != VIR_ERR_NO_DOMAIN)
            return lv_error(host, error, "looking up domain '%s'", name);
        /* an overlay or seed left by an interrupted create or destroy */
        if (!remove_leftovers(host, name, NULL, error))
            return false;
        if (outcome)
            *outcome = CLONE_ABSENT;
        return true;
    }
    if (!spore_clone_or_refuse(dom, name, error))
        return false;
    {
        g_autofree char *owner = NULL;

        if (owned_elsewhere(host, dom, &owner)) {
            /* another host's clone of that name (agents sharing one
             * libvirtd): it is left alone, but an overlay of ours by that
             * name is a copy this host lost track of (its domain went
             * while the host was away); it goes, unless it is the other
             * domain's disk */
            g_autofree char *other = virDomainGetXMLDesc(dom, 0);

            if (!other)
                return lv_error(host, error, "reading domain '%s'", name);
            if (!remove_leftovers(host, name, other, error))
                return false;
            progress(host, "%s belongs to host '%s': left alone", name, owner);
            if (outcome)
                *outcome = CLONE_ABSENT;
            return true;
        }
    }
    desc = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    if (!desc)
        return lv_error(host, error, "reading domain '%s'", name);
    disk = xpath_string(desc, DISK_SOURCE_XPATH);
    seed = xpath_string(desc, SEED_SOURCE_XPATH);
    active = virDomainIsActive(dom);
    if (active < 0)
        return lv_error(host, error, "reading the state of '%s'", name);
    if (active) {
        int state, reason;
        bool paused = virDomainGetState(dom, &state, &reason, 0) == 0 &&
                      state == VIR_DOMAIN_PAUSED;

        result = CLONE_SHUT_DOWN;
        if (paused || timeout_seconds == 0 || virDomainShutdown(dom) < 0 ||
            !wait_shutoff(dom, timeout_seconds)) {
            if (virConnectIsAlive(host->conn) != 1)
                return lv_error(host, error, "shutting down '%s'", name);
            progress(host, "%s did not shut down %s: powering it off", name,
                     paused            ? "(it is paused)"
                     : timeout_seconds ? "in time"
                                       : "(no timeout)");
            if (virDomainDestroy(dom) < 0 && virDomainIsActive(dom) != 0)
                return lv_error(host, error, "destroying '%s'", name);
            result = CLONE_DESTROYED;
        }
    }
    if (virDomainUndefineFlags(
            dom, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                     VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                     VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA) < 0)
        return lv_error(host, error, "undefining '%s'", name);
    if (disk && !remove_volume(host, disk, error))
        return false;
    if (seed && !remove_volume(host, seed, error))
        return false;
    if (outcome)
        *outcome = result;
    return true;
}

/* ---- listing ---------------------------------------------------------- */

void
clone_info_free(CloneInfo *info)
{
    if (!info)
        return;
    g_free(info->name);
    g_free(info->uuid);
    g_free(info->service);
    g_free(info->image_id);
    g_free(info->owner);
    g_free(info);
}

static const char *
state_name(int state)
{
    switch (state) {
    case VIR_DOMAIN_RUNNING:
        return "running";
    case VIR_DOMAIN_BLOCKED:
        return "blocked";
    case VIR_DOMAIN_PAUSED:
        return "paused";
    case VIR_DOMAIN_SHUTDOWN:
        return "shutting-down";
    case VIR_DOMAIN_SHUTOFF:
        return "shutoff";
    case VIR_DOMAIN_CRASHED:
        return "crashed";
    case VIR_DOMAIN_PMSUSPENDED:
        return "suspended";
    default:
        return "unknown";
    }
}

static const char *
paused_reason(int reason)
{
    switch (reason) {
    case VIR_DOMAIN_PAUSED_IOERROR:
        return "ioerror";
    case VIR_DOMAIN_PAUSED_USER:
        return "user";
    default:
        return "";
    }
}

/* parse spore's metadata element into @info; false when it is not ours */
static bool
parse_metadata(const char *meta, CloneInfo *info)
{
    g_autofree char *service = xpath_string(meta, "string(/*/@service)");
    g_autofree char *index = xpath_string(meta, "string(/*/@index)");
    g_autofree char *image = xpath_string(meta, "string(/*/@image)");
    g_autofree char *generation = xpath_string(meta, "string(/*/@generation)");
    g_autofree char *owner = xpath_string(meta, "string(/*/@host)");
    guint64 i = 0, gen = 0;

    if (!service || !index ||
        !g_ascii_string_to_unsigned(index, 10, 0, 999, &i, NULL))
        return false;
    if (generation)
        g_ascii_string_to_unsigned(generation, 10, 0, G_MAXUINT64, &gen, NULL);
    info->service = g_steal_pointer(&service);
    info->index = (guint)i;
    info->image_id = g_steal_pointer(&image);
    info->generation = gen;
    info->owner = g_steal_pointer(&owner);
    return true;
}

GPtrArray *
clone_host_list(CloneHost *host, GError **error)
{
    g_autoptr(GPtrArray) out =
        g_ptr_array_new_with_free_func((GDestroyNotify)clone_info_free);
    g_autoptr(virDomainStatsRecordPtr) records = NULL;
    int n;

    if (!ensure_connected(host, error))
        return NULL;
    n = virConnectGetAllDomainStats(
        host->conn,
        VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_CPU_TOTAL |
            VIR_DOMAIN_STATS_BALLOON | VIR_DOMAIN_STATS_VCPU,
        &records, 0);
    if (n < 0) {
        lv_error(host, error, "listing domains");
        return NULL;
    }
    for (int r = 0; r < n; r++) {
        virDomainStatsRecordPtr rec = records[r];
        g_autofree char *meta = virDomainGetMetadata(
            rec->dom, VIR_DOMAIN_METADATA_ELEMENT, CLONE_METADATA_NAMESPACE, 0);
        g_autoptr(CloneInfo) info = g_new0(CloneInfo, 1);
        char uuid[VIR_UUID_STRING_BUFLEN];
        int state = 0, reason = 0;
        unsigned long long ull;
        unsigned int ui;

        if (!meta)
            continue; /* not a spore clone */
        if (!parse_metadata(meta, info))
            continue;
        if (host->owner &&
            (!info->owner || !g_str_equal(host->owner, info->owner)))
            continue; /* not this agent's (another's on a shared libvirtd,
                       * or made by hand with sporectl clone-create) */
        info->name = g_strdup(virDomainGetName(rec->dom));
        if (virDomainGetUUIDString(rec->dom, uuid) == 0)
            info->uuid = g_strdup(uuid);
        if (virTypedParamsGetInt(rec->params, rec->nparams, "state.state",
                                 &state) == 1)
            virTypedParamsGetInt(rec->params, rec->nparams, "state.reason",
                                 &reason);
        info->state = state_name(state);
        info->reason = state == VIR_DOMAIN_PAUSED ? paused_reason(reason) : "";
        if (virTypedParamsGetULLong(rec->params, rec->nparams, "cpu.time",
                                    &ull) == 1)
            info->cpu_time_ns = ull;
        if (virTypedParamsGetUInt(rec->params, rec->nparams, "vcpu.current",
                                  &ui) == 1)
            info->vcpus = ui;
        if (virTypedParamsGetULLong(rec->params, rec->nparams,
                                    "balloon.current", &ull) == 1)
            info->memory_kib = ull;
        info->memory_unused_kib = -1;
        info->memory_usable_kib = -1;
        if (virTypedParamsGetULLong(rec->params, rec->nparams, "balloon.unused",
                                    &ull) == 1)
            info->memory_unused_kib = (gint64)ull;
        if (virTypedParamsGetULLong(rec->params, rec->nparams, "balloon.usable",
                                    &ull) == 1)
            info->memory_usable_kib = (gint64)ull;
        g_ptr_array_add(out, g_steal_pointer(&info));
    }
    return g_steal_pointer(&out);
}

bool
clone_host_capacity(CloneHost *host, guint *cpus, guint64 *memory_kib,
                    GError **error)
{
    virNodeInfo info;

    if (!ensure_connected(host, error))
        return false;
    if (virNodeGetInfo(host->conn, &info) < 0)
        return lv_error(host, error, "reading the host's CPUs and memory");
    *cpus = info.cpus;
    *memory_kib = info.memory;
    return true;
}

/* ---- lifecycle events ------------------------------------------------- */

static gpointer
event_loop_thread(gpointer data)
{
    for (;;) {
        if (virEventRunDefaultImpl() < 0)
            g_usleep(100 * 1000);
    }
    return NULL;
}

static gpointer
events_init_once(gpointer data)
{
    if (virEventRegisterDefaultImpl() < 0) {
        g_warning("libvirt: cannot start its event loop: %s",
                  virGetLastErrorMessage());
        return NULL;
    }
    g_thread_unref(g_thread_new("libvirt-events", event_loop_thread, NULL));
    return NULL;
}

void
clone_events_init(void)
{
    static GOnce once = G_ONCE_INIT;

    g_once(&once, events_init_once, NULL);
}

typedef struct {
    CloneEventFunc fn;
    gpointer data;
} Watch;

static const char *
lifecycle_name(int event)
{
    switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
        return "defined";
    case VIR_DOMAIN_EVENT_UNDEFINED:
        return "undefined";
    case VIR_DOMAIN_EVENT_STARTED:
        return "started";
    case VIR_DOMAIN_EVENT_SUSPENDED:
        return "suspended";
    case VIR_DOMAIN_EVENT_RESUMED:
        return "resumed";
    case VIR_DOMAIN_EVENT_STOPPED:
        return "stopped";
    case VIR_DOMAIN_EVENT_SHUTDOWN:
        return "shutdown";
    case VIR_DOMAIN_EVENT_CRASHED:
        return "crashed";
    default:
        return "other";
    }
}

static int
on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail,
             void *opaque)
{
    Watch *w = opaque;

    w->fn(virDomainGetName(dom), lifecycle_name(event), w->data);
    return 0;
}

bool
clone_host_watch(CloneHost *host, CloneEventFunc fn, gpointer data,
                 GError **error)
{
    Watch *w;

    clone_events_init();
    if (!ensure_connected(host, error))
        return false;
    w = g_new0(Watch, 1);
    w->fn = fn;
    w->data = data;
    if (virConnectDomainEventRegisterAny(
            host->conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), w, g_free) < 0) {
        g_free(w);
        return lv_error(host, error, "watching domain lifecycle events");
    }
    return true;
}
