/*
 * cloud-init.h: <customize method="cloud-init">: a clone's customization
 * as a cloud-init NoCloud seed, applied by the guest itself at first boot.
 *
 * No libguestfs appliance is launched and the overlay is not opened: the
 * seed is a small ISO 9660 volume labelled "cidata" holding two files,
 *
 *   meta-data   instance-id (the clone's UUID: cloud-init runs its
 *               per-instance modules, and so the first-boot commands, once
 *               per id) and local-hostname
 *   user-data   "#cloud-config": the same customizations as customize.c,
 *               placeholders expanded the same way:
 *     hostname    hostname + fqdn (prefer_fqdn_over_hostname: the whole
 *                 name goes to /etc/hostname) and manage_etc_hosts:
 *                 localhost (the 127.0.1.1 line of /etc/hosts, others kept)
 *     files       write_files: content base64 (encoding: b64), owner
 *                 root:root, permissions in octal
 *     ssh keys    users: one entry per user (in the order they first
 *                 appear) with its ssh_authorized_keys; lock_passwd: false
 *                 (cloud-init would otherwise lock an existing user's
 *                 password); disable_root: false
 *     firstboot   runcmd, in order (one shell script, per instance)
 *     identity    ssh_deletekeys: true (host keys made anew); the machine
 *                 id cannot be reset from outside: the master must ship an
 *                 empty /etc/machine-id, as cloud images do
 *
 * Every string in both files is a YAML double-quoted scalar with every
 * byte outside printable ASCII, '"' and '\\' escaped, so no value can
 * change the document's structure; file content is base64.
 *
 * The ISO is made by genisoimage (or xorriso's mkisofs emulation), run with
 * an argument vector, never a shell.  Thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "manifest.h"

/* the volume label cloud-init's NoCloud data source looks for */
#define CLOUD_INIT_SEED_LABEL "cidata"

typedef struct {
    const Manifest *manifest;
    guint index;
    const char *host;        /* the hypervisor host's name, for {host} */
    const char *instance_id; /* the clone's UUID */
} CloudInitSeedSpec;

/*
 * cloud_init_render: the seed's user-data and meta-data for @spec, UTF-8,
 * owned by the caller, written only on success.  Fails
 * (SPORE_ERROR_INVALID, naming the clone) on a guest path the parser would
 * have refused, a placeholder that cannot be expanded, or text that is not
 * UTF-8.  Pure: the same spec gives the same bytes.
 */
bool cloud_init_render(const CloudInitSeedSpec *spec, char **ret_user_data,
                       char **ret_meta_data, GError **error);

/*
 * cloud_init_seed_write: render @spec and write the seed ISO at @path
 * (mode 0600; libvirt gives it to QEMU as it does the overlay).  Refuses
 * to replace an existing file; on failure nothing is left at @path.
 * SPORE_ERROR_UNAVAILABLE when neither genisoimage nor xorrisofs is
 * installed.
 */
bool cloud_init_seed_write(const CloudInitSeedSpec *spec, const char *path,
                           GError **error);
