/*
 * spore-error.c: the SPORE_ERROR GError domain.
 */
#include "spore-error.h"

G_DEFINE_QUARK(spore - error - quark, spore_error)
