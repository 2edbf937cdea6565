/*
 * manifest-priv.h: internals shared by the manifest library's files and its
 * tests.  Not for other modules.
 */
#pragma once

#include "manifest.h"

/*
 * manifest_new: a Manifest holding every default and empty arrays (with
 * their free functions), and no name, image name, origin, vcpus or memory.
 * Owned by the caller.
 */
Manifest *manifest_new(void);

/* manifest_schedule_free: free @s and what it owns.  Accepts NULL. */
void manifest_schedule_free(ManifestSchedule *s);
