/*  nsbx - the native API's ops inside the attached sandbox: processes (through the
    process table, bridge/procs/procs.h), files and directory watches (sandbox/sbx.h),
    and the sandbox itself (info, timeout, kill).

    Processes belong to the table and outlive the session that started them; a session
    sees one through a listener, from process_start or process_connect until the exit.
    Output events are sent like execution outputs (numbered, bounded by the session's
    outbox); while the attached client's outbox is congested the process's pipe is not
    read (proc_pause_output), until it drains. A session with no connection applies no
    backpressure: its outbox keeps what it can, the rest is dropped and reported as
    events_lost, and the process's tail (replayed by process_connect) has the last MiB.

    Everything a session is waiting on (a listener, a file request, a watch) is tracked by
    the session (session_track) and goes with it.
*/
#ifndef NSBX_H
#define NSBX_H

#include "nmsg.h"
#include "session.h"
#include "../sandboxes/sandboxes.h"

#include <uv.h>

typedef struct _nsbx_t nsbx_t;

//  Caller owns return value and must destroy it when done (before the sandboxes table).
nsbx_t *nsbx_new(uv_loop_t *loop, sandboxes_t *sandboxes);
//  Kills every process started through it. Destroy the sessions first. Nullifies *self_p.
void nsbx_destroy(nsbx_t **self_p);

//  Whether op is one of the ops served here.
bool nsbx_handles(nmsg_op_t op);
//  Serve one of them for session, attached to sb (NULL: its sandbox ended).
void nsbx_op(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req);
//  The session's connection went away: its processes are read at full speed again.
void nsbx_detached(nsbx_t *self, session_t *session);

#endif
