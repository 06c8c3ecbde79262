/*  kentry - one kernel as the service knows it: its runner plus what the APIs report
    about it (name, cwd, connections, activity) and one-shot waiters for its next
    transition (ready, dead, shut down).

    Kernels are shared by every API: the same kentry is a native-API kernel, a Jupyter
    Server kernel and an E2B context.
*/
#ifndef KENTRY_H
#define KENTRY_H

#include "runner.h"

#include <jansson.h>
#include <stdbool.h>

typedef struct _kentry_t kentry_t;

typedef enum { KWAIT_READY, KWAIT_DEAD, KWAIT_SHUTDOWN } kwait_result_t;

//  A one-shot waiter; embed it in the waiting object. It is unlinked before fn runs.
typedef struct _kwait_t kwait_t;
struct _kwait_t {
    void (*fn)(kwait_t *wait, kentry_t *entry, kwait_result_t result);
    void *arg;
    kwait_t *prev, *next;
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
//  True once ready at least once since the last (re)start request.
bool kentry_ready(const kentry_t *self);
bool kentry_shutting_down(const kentry_t *self);

//  Wait for the next ready / dead / shutdown transition.
void kentry_wait(kentry_t *self, kwait_t *wait);
//  Stop waiting (no-op if not linked).
void kentry_unwait(kwait_t *wait);

//  Restart / shut down; waiters learn the outcome.
int kentry_restart(kentry_t *self);
void kentry_shutdown(kentry_t *self);

//  Count of Jupyter WebSocket connections (for the kernel model).
void kentry_connections_add(kentry_t *self, int delta);

//  Free-form tags other APIs keep on a kernel (e.g. "e2b_language"). Borrowed object.
json_t *kentry_tags(kentry_t *self);

//  {kernel_id, kernel_name, language, cwd, state}
json_t *kentry_model_native(const kentry_t *self);
//  {id, name, last_activity, execution_state, connections}
json_t *kentry_model_jupyter(const kentry_t *self);

#endif
