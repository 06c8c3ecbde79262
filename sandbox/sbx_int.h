/*  sbx_int - what proc.c and sbx.c know of each other (not part of the sandbox API).

    A proc registers with its sandbox as a request (its SPAWN id); sbx.c routes the agent's
    AP_SPAWNED / AP_ERROR / AP_EXIT for that id to proc__spawned / proc__failed /
    proc__exited, and tells every proc when the sandbox is gone (proc__lost). A proc holds
    a reference on its sandbox, so sbx_t memory stays valid as long as any proc exists.
*/
#ifndef SBX_INT_H
#define SBX_INT_H

#include "proc.h"
#include "sbx.h"

#include <stdint.h>

//  Register proc; *id is its request id. NULL with *err (KB_ECLOSED, KB_ENOMEM).
sbx_req_t *sbx__proc_register(sbx_t *sbx, proc_t *proc, uint64_t *id, int *err);
//  No more events for this request (the proc is going away). Frees the request.
void sbx__proc_forget(sbx_req_t *req);
//  Queue a message to the agent (fds are duplicated). 0, KB_ECLOSED or KB_ENOMEM.
int sbx__send(sbx_t *sbx, const void *buf, size_t len, const int *fds, int nfds);
//  A kill for the process of request id; mode is AK_* (agentproto.h). 0 or KB_ECLOSED.
int sbx__kill(sbx_t *sbx, uint64_t id, int signo, unsigned mode);
void sbx__ref(sbx_t *sbx);
void sbx__unref(sbx_t *sbx);
uv_loop_t *sbx__loop(const sbx_t *sbx);
//  Processes may be started: not lost, not destroyed.
bool sbx__alive(const sbx_t *sbx);
//  The sandbox's OOM-kill count so far (0 without a memory cgroup).
uint64_t sbx__oom_kills(const sbx_t *sbx);

//  proc.c, called by sbx.c:
void proc__spawned(proc_t *proc, int pid, uint32_t flags, int *fds, int nfds);  //  takes fds
void proc__failed(proc_t *proc, int err, const char *why);
void proc__exited(proc_t *proc, int status);
void proc__lost(proc_t *proc);

#endif
