/*
 * qcow2-master.h: what spore checks of a qcow2 master before a clone is
 * backed by it.
 *
 * spore serves a qcow2 master as the file's own bytes (docs/image-index.md,
 * "qcow2 masters"); QEMU decodes it in the guest's process.  A qcow2 header
 * can name other files: a backing file, an external data file.  QEMU opens
 * them on the host, so a master naming "/etc/shadow" as its backing file
 * shows that file to the guest (the index pins the master's bytes, not
 * what they point at).  Such masters are refused, as are encrypted ones (no
 * key to boot them) and headers QEMU itself would refuse or mark corrupt.
 *
 * The parser is a pure function of the header's bytes; the reader takes
 * them from a file or, through qemu-img (no format probing), from an NBD
 * URI such as the shim's export.
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

/* A qcow2 header is 72 (version 2) or at least 104 (version 3) bytes. */
#define QCOW2_HEADER_V2_BYTES 72u
#define QCOW2_HEADER_V3_BYTES 104u
/* What qcow2_master_check() reads of a master: the first sector. */
#define QCOW2_MASTER_HEAD_BYTES 512u
/* Cluster sizes QEMU accepts: 512 bytes .. 2 MiB. */
#define QCOW2_CLUSTER_BITS_MIN 9u
#define QCOW2_CLUSTER_BITS_MAX 21u

typedef struct {
    guint version;        /* 2 or 3 */
    guint cluster_bits;   /* clusters of 1 << cluster_bits bytes */
    guint64 virtual_size; /* the guest-visible disk, in bytes */
    guint64 incompatible; /* version 3 incompatible feature bits, else 0 */
    bool compressed_zstd; /* compression type zstd (else zlib) */
} Qcow2Header;

/*
 * qcow2_header_parse: check the @len bytes at @data (the start of a file)
 * as the header of a qcow2 master spore can back clones with, and fill
 * *@ret_header (only on success).  Fails with SPORE_ERROR_INVALID saying
 * what is wrong: not qcow2, an unknown version, a backing file, an
 * external data file, encryption, a header marked corrupt, an unknown
 * incompatible feature, a cluster size or virtual size QEMU refuses.
 */
bool qcow2_header_parse(const guint8 *data, gsize len, Qcow2Header *ret_header,
                        GError **error);

/*
 * qcow2_master_check: read the first QCOW2_MASTER_HEAD_BYTES of @backing
 * (an absolute file path, or a URI qemu-img opens, read as raw: the bytes
 * as they are) and qcow2_header_parse() them.  The error names @backing.
 * Blocks until the bytes are there (through the shim: a fetch of the
 * master's first chunk, which QEMU reads first anyway).  Thread-safe.
 */
bool qcow2_master_check(const char *backing, Qcow2Header *ret_header,
                        GError **error);
