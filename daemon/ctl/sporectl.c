/*
 * sporectl.c: main of sporectl, the operator's tool.  Everything else is
 * in the spore-ctl library of this folder (ctl.h): the command table, its
 * parser and the commands by family.
 */
#include <signal.h>

#include "ctl.h"

int
main(int argc, char **argv)
{
    /* a peer that goes away (libvirtd, a daemon) must be an error from
     * write(), not a silent death by SIGPIPE */
    signal(SIGPIPE, SIG_IGN);
    return ctl_main(argc, argv);
}
