/*  kentry - one kernel as the service knows it: its runner, the state every API reports
    (id, name, language, cwd, state, activity), the control operations (interrupt,
    restart, shutdown) and one-shot waiters for its next transition (ready, dead, shut
    down).

    Kernels are shared by every API: the same kentry is a native-API kernel, a Jupyter
    Server kernel and an E2B context. What only one API cares about (its models, E2B's
    context languages, Jupyter's connection counts) is that API's business.
*/
#ifndef KENTRY_H
#define KENTRY_H

#include "runner.h"
#include "../../base/klist.h"

#include <jansson.h>
#include <stdbool.h>

typedef struct _kentry_t kentry_t;

typedef enum { KWAIT_READY, KWAIT_DEAD, KWAIT_SHUTDOWN } kwait_result_t;

//  A one-shot waiter; embed it in the waiting object. It is unlinked before fn runs.
typedef struct _kwait_t kwait_t;
struct _kwait_t {
    void (*fn)(kwait_t *wait, kentry_t *entry, kwait_result_t result);
    void *arg;
    klist_t link;
    kentry_t *entry;  //  set while linked
};

typedef struct {
    void (*on_shutdown)(kentry_t *entry, void *arg);  //  the registry reaps it
} kentry_events_t;

//  Start a kernel. Returns NULL with *err as runner_new.
//  Caller (the registry) owns return value and must destroy it when done.
kentry_t *kentry_new(uv_loop_t *loop, const kspec_t *spec, const kernel_opts_t *opts,
                     const kentry_events_t *events, void *arg, int *err);
void kentry_destroy(kentry_t **self_p);

const char *kentry_id(const kentry_t *self);
runner_t *kentry_runner(const kentry_t *self);
kernel_t *kentry_kernel(const kentry_t *self);
//  True once ready at least once since the last (re)start request: runs may be queued
//  (a warm kernel's move, if any, runs first).
bool kentry_ready(const kentry_t *self);
//  Ready, and nothing of kbridge's own queued ahead (a claim's move has run): what goes
//  to the kernel's sockets without the runner (Jupyter channels) may go.
bool kentry_settled(const kentry_t *self);
bool kentry_shutting_down(const kentry_t *self);

//  Wait for the next ready / dead / shutdown transition.
void kentry_wait(kentry_t *self, kwait_t *wait);
//  Stop waiting (no-op if not linked).
void kentry_unwait(kwait_t *wait);

//  Interrupt (what runs gets KeyboardInterrupt), restart, shut down; waiters learn the
//  outcome of the last two. Returns 0 or a KB_ code (KB_EDEAD: no process to interrupt;
//  KB_ECLOSED: shutting down).
int kentry_interrupt(kentry_t *self);
int kentry_restart(kentry_t *self);
void kentry_shutdown(kentry_t *self);

//  A warm pool's kernel is taken: its cwd (from the kernel's, already replaced) becomes
//  the entry's, and code (NULL: none), a silent execution that moves the running process
//  there, is queued first. The entry stays ready (every run asked for later queues behind
//  the move) but is not settled until the move has run (waiters then hear KWAIT_READY).
//  If the move fails, the runner restarts the kernel (it starts at the new place) and
//  what was queued behind it ends with KernelRestarted: no run sees the pool's place.
//  Returns 0 or a runner_execute error.
int kentry_claim(kentry_t *self, const char *code);

//  "starting", "idle", "busy", "restarting", "dead" (shutting down counts as dead), or
//  "unresponsive": the process is alive but its heartbeat stopped answering.
const char *kentry_state_name(const kentry_t *self);
//  Its working directory (the kernel's, or kbridge's when it inherited it). Borrowed.
const char *kentry_cwd(const kentry_t *self);
//  ISO-8601 time of its last activity.
const char *kentry_last_activity(const kentry_t *self);


#endif
