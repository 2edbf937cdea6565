/*
 * customize-priv.h: customize.c's pure helpers, exported for its unit tests
 * only (tests/unit/test-customize.c).
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

/* the largest uid or gid taken from a guest's /etc/passwd */
#define CUSTOMIZE_ID_MAX 0x7fffffffu

/*
 * customize_passwd_lookup: @user's uid, gid and home in @passwd (the text
 * of a guest's /etc/passwd).  SPORE_ERROR_INVALID, naming the line, when
 * its uid or gid is not a number from 0 to CUSTOMIZE_ID_MAX or its home is
 * not absolute (a malformed line never becomes uid 0); when @user is
 * absent.  *ret_home is the caller's.
 */
bool customize_passwd_lookup(const char *passwd, const char *user, int *ret_uid,
                             int *ret_gid, char **ret_home, GError **error);
