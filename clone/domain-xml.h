/*
 * domain-xml.h: the libvirt domain XML of one clone, built from its
 * service's manifest.
 *
 * The XML is built with the libxml2 tree API only: every value from the
 * manifest or the host is escaped by the serializer, so no value can change
 * the structure of the document.  The result validates against libvirt's
 * own schema (domain.rng) for kvm, qemu and xen (libxl) domains.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

#include "manifest.h"

#define CLONE_METADATA_NAMESPACE "urn:spore:clone:1"
#define CLONE_METADATA_PREFIX    "spore"

/* Everything about one clone that is not in its manifest. */
typedef struct {
    const Manifest *manifest;
    guint index;              /* < manifest->scaling.max, <= 999 */
    const char *image_id;     /* "sha256:<64 hex>" */
    guint64 generation;       /* the manifest's generation at the manager */
    const char *overlay_path; /* the clone's qcow2 overlay, absolute */
    const char *console_log;  /* serial console log file, absolute */
    const char *seed_path;    /* the cloud-init seed ISO, absolute: set
                               * exactly when the manifest's customize
                               * method is cloud-init */
    const char *uuid;         /* optional; libvirt makes one when NULL */
    const char *owner;        /* optional: the host agent owning it */
    ManifestHypervisor virt;  /* the domain type actually used: a kvm
                               * manifest runs as qemu (TCG) on hosts
                               * where KVM does not work */
} CloneDomainSpec;

/*
 * clone_domain_xml: the domain XML of @spec's clone, UTF-8, owned by the
 * caller.  Fails (SPORE_ERROR_INVALID) on an index beyond the manifest's
 * max, a malformed image id, relative paths, or a seed given to a clone
 * not customized by cloud-init (or not given to one that is).  The seed
 * is a read-only cdrom (hdc, IDE) for kvm and qemu, a read-only xvdb for
 * xen, after the overlay: the overlay stays the first disk.
 */
char *clone_domain_xml(const CloneDomainSpec *spec, GError **error);
