/*
 * virt-autoptr.h: scoped cleanups for libvirt's and libguestfs's handles.
 *
 * With these, an owning local is declared
 *
 *   g_autoptr(virDomain) dom = virDomainLookupByName(conn, name);
 *
 * and released once, on every path out of its scope; a handle whose
 * ownership moves elsewhere leaves with g_steal_pointer().  Each cleanup
 * releases the caller's reference only: virDomainFree() and friends neither
 * destroy nor undefine anything, guestfs_close() shuts the appliance down
 * (when it was launched) and frees the handle.
 */
#pragma once

#include <glib.h>
#include <guestfs.h>
#include <libvirt/libvirt.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(virConnect, virConnectClose)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virDomain, virDomainFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virStoragePool, virStoragePoolFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virStorageVol, virStorageVolFree)
/* the NULL-terminated list virConnectGetAllDomainStats() returns:
 * g_autoptr(virDomainStatsRecordPtr) records declares records as
 * virDomainStatsRecordPtr * */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virDomainStatsRecordPtr,
                              virDomainStatsRecordListFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(guestfs_h, guestfs_close)
