/*
 * virt-detect.h: whether hardware virtualization really works here.
 *
 * /dev/kvm existing is not enough: nested setups may open it and then
 * never run a guest.  The probe boots the host's newest kernel
 * (/boot/vmlinuz-*) under KVM for at most VIRT_PROBE_SECONDS and looks for
 * its banner on the serial console, the same check as
 * scripts/detect-virt-type.  A program may give the answer instead
 * (spore_kvm_set: spore-agent's virt_type, sporectl's SPORE_VIRT_TYPE); the
 * library reads nothing from the environment.
 */
#pragma once

#include <stdbool.h>

#define VIRT_PROBE_SECONDS 10

/* spore_kvm_works: the probe's answer, computed once.  Thread-safe. */
bool spore_kvm_works(void);

/* spore_kvm_set: answer @works from now on, without probing; false (and
 * nothing changed) when the answer was already given or probed.  Call it
 * at start, before anything asks.  Thread-safe. */
bool spore_kvm_set(bool works);
