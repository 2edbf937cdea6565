/*
 * customize.h: clone overlays and their per-clone customization, with the
 * libguestfs C API (no shell, no virt-customize).
 *
 * Several clones of one service are customized in one appliance launch
 * (the launch dominates: ~15 s under TCG).  The guest's root file system is
 * found by inspection, never by assuming a device name.  What is written:
 *
 *   hostname    /etc/hostname, and a 127.0.1.1 line in /etc/hosts
 *   files       content (placeholders expanded), mode, owner root:root,
 *               parent directories created
 *   ssh keys    appended to ~USER/.ssh/authorized_keys, USER looked up in
 *               the guest's /etc/passwd; .ssh 0700, the file 0600, owned
 *               by the user
 *   firstboot   systemd guests: /usr/local/lib/spore/firstboot.sh run once
 *               by spore-firstboot.service (ConditionPathExists= on
 *               /var/lib/spore/firstboot.done, which it creates before the
 *               commands run: at most once, even if one fails).  Other
 *               guests: one script per command in /etc/spore/firstboot.d/,
 *               which their init must run the same way (spore's test guest
 *               does; docs/customization.md)
 *   identity    /etc/machine-id emptied, /etc/ssh/ssh_host_* removed
 *
 * Only manifests whose customize method is libguestfs (the default) are
 * customized here: a batch with a cloud-init one is refused
 * (SPORE_ERROR_USAGE; cloud-init.h makes its seed instead).  Guest paths
 * are checked again here (manifest_path_problem), for every clone of a
 * batch before its appliance is launched: a Manifest need not come from
 * the parser.  Thread-safe (each call has its own libguestfs
 * handle).
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "manifest.h"

/* where inspection results are kept unless a job says otherwise */
#define CLONE_DEFAULT_INSPECT_CACHE "/var/cache/spore/inspect"

typedef struct {
    const Manifest *manifest;
    guint index;
    const char *host;    /* the hypervisor host's name, for {host} */
    const char *overlay; /* the clone's qcow2 overlay, written in place */
    /*
     * Identifies the master the overlay is backed by (its image id, or a
     * path with its size and mtime), or NULL.  Overlays of one master share
     * their file system layout, so inspection runs once per master and is
     * kept in @inspect_cache (NULL: CLONE_DEFAULT_INSPECT_CACHE).
     */
    const char *image_key;
    const char *inspect_cache; /* the inspection cache's directory */
    /*
     * The master the overlay was created from (as for clone_overlay_create),
     * or NULL.  With it, a batch whose master is not in the inspection
     * cache inspects the master in a second appliance while its own
     * launches, instead of before.
     */
    const char *backing;
    const char *backing_format;
} CloneCustomizeJob;

/*
 * clone_overlay_create: create the qcow2 overlay @path backed by @backing
 * (a file path or an nbd+unix:// URI) whose format is @backing_format
 * ("raw" or "qcow2"), always recorded in the overlay.  Refuses to replace an
 * existing file.  Does not launch the appliance.
 */
bool clone_overlay_create(const char *path, const char *backing,
                          const char *backing_format, GError **error);

/*
 * clone_customize_batch: customize the @n_jobs overlays in one appliance
 * launch.  On failure nothing is guaranteed about the overlays (the caller
 * recreates them from the master; the master is never written), and the
 * error names the clone.
 */
bool clone_customize_batch(const CloneCustomizeJob *jobs, gsize n_jobs,
                           GError **error);
