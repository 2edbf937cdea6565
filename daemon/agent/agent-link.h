/*
 * agent-link.h: the host agent's side of the site protocol
 * (docs/site-protocol.md): a DEALER connection to spored, over CURVE with
 * this host's key pair, that says hello (capacity), reports every couple of
 * seconds (the host's spore clones with their state and stats, and its
 * images' cache state), and executes the manager's commands through the
 * clone library, acknowledging each.
 *
 * Commands run one at a time on a worker thread.  Each command id (per
 * manager key) is applied at most once: the outcome is journaled in
 * STATE_DIR/commands.journal and a replay is answered from it.
 */
#pragma once

#include <glib.h>

#include "agent.h"

typedef struct {
    char *manager;     /* ZeroMQ endpoint of spored, tcp://HOST:PORT */
    char *manager_key; /* its Z85 public key */
    char *host_name;   /* this host's name in the site */
    char *state_dir;   /* keys, the journal, image indexes */
    char *libvirt_uri; /* NULL: qemu:///system */
    char *pool;        /* NULL: "spore" */
    char *pool_dir;
    char *console_dir;
    char *virt_type; /* "kvm", "qemu" or NULL: probe */
    guint report_ms;
} AgentLinkConfig;

typedef struct AgentLink AgentLink;

AgentLink *agent_link_start(Agent *agent, const AgentLinkConfig *config,
                            GError **error);
void agent_link_stop(AgentLink *link);

/* agent_link_set_report_ms: change the report interval (100 ms - 10 min) */
void agent_link_set_report_ms(AgentLink *link, guint ms);
