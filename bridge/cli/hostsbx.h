/*  hostsbx - the default sandbox of a command: kbridge's own host, through an agent.

    Every process kbridge starts goes through a sandbox's agent (sandbox/sbx.h); on the
    host that is an agent without namespaces, running as kbridge's user, which kills
    everything it started if kbridge dies. Commands create it before anything else.
*/
#ifndef HOSTSBX_H
#define HOSTSBX_H

#include "../../sandbox/sbx.h"

#include <stddef.h>
#include <uv.h>

//  The kbridge-agent executable: $KBRIDGE_AGENT, else next to this executable, else
//  <prefix>/lib/kbridge/kbridge-agent. Borrowed; NULL if none was found.
const char *hostsbx_agent_path(void);

//  Start the host sandbox with id "default", kernels' files in kernel_dir, and run the
//  loop until it is ready. Returns NULL with a reason in why.
//  Caller owns return value and must destroy it when done.
sbx_t *hostsbx_start(uv_loop_t *loop, const char *kernel_dir, char *why, size_t size);

#endif
