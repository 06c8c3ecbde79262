/*  runner - owns one kernel and runs executions on it, one at a time, in order.

    Executions submitted to a runner form a FIFO: the next execute_request is sent only
    once the previous one has settled in the kernel (its execute_reply and status idle
    both arrived). An execution that times out, or whose requester leaves, ends for the
    requester at once; the kernel is interrupted and the queue waits for that request to
    settle, so the interrupt can never land on the next run. Per-execution environment
    variables are applied by silent helper requests in the same queue, before and after.

    Every iopub message and kernel event is also fanned out to the runner's listeners
    (the Jupyter kernel WebSocket connections).
*/
#ifndef RUNNER_H
#define RUNNER_H

#include "../../kernelmgr/kernel.h"
#include "execution.h"
#include "../../base/klist.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct _runner_t runner_t;
typedef struct _run_t run_t;

typedef struct {
    json_t *env_vars;       //  per-execution environment (object of strings); borrowed
    uint64_t timeout_ms;    //  0: none
    bool silent;            //  no execute_input, no history (helpers)
    //  What is queued behind it depends on it (a warm pool's move of the kernel to its
    //  cwd and env): if it ends with an error, nothing queued runs in the wrong place:
    //  every queued run ends with KernelRestarted and the kernel is restarted (a new
    //  process starts where kernel_replace_place put it).
    bool gate;
    execution_opts_t exec;  //  result conventions and retained-output limit
} run_opts_t;

//  Observers of a runner's kernel (borrowed; unregister before freeing).
typedef struct _runner_listener_t runner_listener_t;
struct _runner_listener_t {
    void (*on_msg)(runner_listener_t *l, kchan_type_t channel, kmsg_t *msg);
    void (*on_event)(runner_listener_t *l, kernel_event_t event);
    klist_t link;
    void *arg;
};

//  Notified of the runner's own lifecycle (borrowed).
typedef struct {
    //  The runner's kernel changed state (any kernel event).
    void (*on_event)(runner_t *runner, kernel_event_t event, void *arg);
} runner_events_t;

//  Start a kernel and a runner over it. Returns NULL if the kernel could not be started
//  (*err from kernel_new). Caller owns return value and must destroy it when done.
runner_t *runner_new(uv_loop_t *loop, const kspec_t *spec, const kernel_opts_t *opts,
                     const runner_events_t *events, void *arg, int *err);

//  Destroy at once: pending runs are failed, the kernel is killed (kernel_destroy).
//  Nullifies *self_p. Not to be called from inside the runner's callbacks: use
//  runner_shutdown and destroy after KERNEL_EV_SHUTDOWN, from a deferred context.
void runner_destroy(runner_t **self_p);

//  Queue code for execution. on_event receives the execution's events (see execution.h)
//  until and including end_of_execution. Returns the run (borrowed; valid until its end
//  event or run_cancel), or NULL with *err = KB_EDEAD (the kernel is dead), KB_ECLOSED
//  (shutting down), KB_ENOMEM.
run_t *runner_execute(runner_t *self, const char *code, const run_opts_t *opts,
                      execution_fn *on_event, void *arg, int *err);

//  The requester is gone: no more events for this run. A queued run is dropped; a
//  running one is interrupted (and the queue waits for it to settle).
void run_cancel(run_t *run);

//  Interrupt the kernel (what is running gets KeyboardInterrupt).
int runner_interrupt(runner_t *self);
//  Restart the kernel: pending runs end with KernelRestarted; KERNEL_EV_READY follows.
int runner_restart(runner_t *self);
//  Graceful shutdown; KERNEL_EV_SHUTDOWN reports the end. Pending runs end with an error.
void runner_shutdown(runner_t *self);

void runner_listen(runner_t *self, runner_listener_t *listener);
void runner_unlisten(runner_t *self, runner_listener_t *listener);

kernel_t *runner_kernel(const runner_t *self);
//  Runs queued or running.
size_t runner_pending(const runner_t *self);
//  ISO-8601 time of the last kernel activity (iopub message), or of the start.
const char *runner_last_activity(runner_t *self);
//  Count now as activity (a warm kernel taken from the pool starts its clock afresh).
void runner_touch(runner_t *self);
//  The same, as the loop's clock (uv_now).
uint64_t runner_active_at(const runner_t *self);

#endif
