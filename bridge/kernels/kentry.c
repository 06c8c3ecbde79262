/*  kentry - a kernel with its service-level metadata and waiters. */
#include "kentry.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct _kentry_t {
    runner_t *runner;
    kentry_events_t events;
    void *arg;
    klist_t waiters;  //  kwait_t
    bool ready;
    bool shutting_down;
    //  A warm pool's claim: the run that applies its cwd and env is queued first or runs.
    //  Runs queue behind it (ready); what bypasses the runner (a Jupyter client's own
    //  sockets) waits for it (not settled).
    bool moving;
    bool move_failed;
    run_t *claim;
    char *cwd;
};

static void s_notify(kentry_t *self, kwait_result_t result)
{
    //  Waiters may add new waiters or destroy objects of their own: take the list first.
    klist_t list;
    klist_take_all(&list, &self->waiters);
    while (!klist_empty(&list)) {
        kwait_t *w = klist_entry(klist_first(&list), kwait_t, link);
        klist_remove(&w->link);
        w->entry = NULL;
        w->fn(w, self, result);
    }
}

static void s_on_runner(runner_t *runner, kernel_event_t event, void *arg)
{
    (void) runner;
    kentry_t *self = arg;
    switch (event) {
    case KERNEL_EV_READY:
        self->ready = true;
        s_notify(self, KWAIT_READY);
        break;
    case KERNEL_EV_DIED:
    case KERNEL_EV_RESTARTING: self->ready = false; break;
    case KERNEL_EV_DEAD:
        self->ready = false;
        s_notify(self, KWAIT_DEAD);
        break;
    case KERNEL_EV_SHUTDOWN:
        self->ready = false;
        s_notify(self, KWAIT_SHUTDOWN);
        if (self->events.on_shutdown) self->events.on_shutdown(self, self->arg);
        break;
    default: break;
    }
}

kentry_t *kentry_new(uv_loop_t *loop, const kspec_t *spec, const kernel_opts_t *opts,
                     const kentry_events_t *events, void *arg, int *err)
{
    kentry_t *self = calloc(1, sizeof *self);
    if (!self) {
        if (err) *err = KB_ENOMEM;
        return NULL;
    }
    if (events) self->events = *events;
    self->arg = arg;
    klist_init(&self->waiters);
    runner_events_t rev = {s_on_runner};
    self->runner = runner_new(loop, spec, opts, &rev, self, err);
    if (!self->runner) {
        free(self);
        return NULL;
    }
    const char *cwd = kernel_cwd(runner_kernel(self->runner));
    if (cwd)
        self->cwd = strdup(cwd);
    else {
        char buf[4096];
        self->cwd = strdup(getcwd(buf, sizeof buf) ? buf : "/");
    }
    return self;
}

void kentry_destroy(kentry_t **self_p)
{
    if (!self_p || !*self_p) return;
    kentry_t *self = *self_p;
    *self_p = NULL;
    self->shutting_down = true;
    self->moving = false;
    s_notify(self, KWAIT_SHUTDOWN);
    runner_destroy(&self->runner);
    free(self->cwd);
    free(self);
}

const char *kentry_id(const kentry_t *self)
{
    return kernel_id(runner_kernel(self->runner));
}

runner_t *kentry_runner(const kentry_t *self)
{
    return self->runner;
}

kernel_t *kentry_kernel(const kentry_t *self)
{
    return runner_kernel(self->runner);
}

bool kentry_ready(const kentry_t *self)
{
    return self->ready;
}

bool kentry_settled(const kentry_t *self)
{
    return self->ready && !self->moving;
}

bool kentry_shutting_down(const kentry_t *self)
{
    return self->shutting_down;
}

void kentry_wait(kentry_t *self, kwait_t *wait)
{
    kentry_unwait(wait);
    wait->entry = self;
    klist_init(&wait->link);
    klist_push_front(&self->waiters, &wait->link);
}

void kentry_unwait(kwait_t *wait)
{
    if (!wait->entry) return;
    klist_remove(&wait->link);
    wait->entry = NULL;
}

int kentry_restart(kentry_t *self)
{
    if (self->shutting_down) return KB_ECLOSED;
    self->ready = false;
    self->moving = false;  //  the new process starts where the claim moved the kernel
    return runner_restart(self->runner);
}

void kentry_shutdown(kentry_t *self)
{
    if (self->shutting_down) return;
    self->shutting_down = true;
    self->ready = false;
    runner_shutdown(self->runner);
}

int kentry_interrupt(kentry_t *self)
{
    if (self->shutting_down) return KB_ECLOSED;
    return runner_interrupt(self->runner);
}

const char *kentry_state_name(const kentry_t *self)
{
    if (self->shutting_down) return "dead";
    kernel_t *k = kentry_kernel(self);
    kernel_state_t st = kernel_state(k);
    if ((st == KERNEL_IDLE || st == KERNEL_BUSY) && !kernel_heartbeat_ok(k)) return "unresponsive";
    return kernel_state_name(st);
}

static void s_on_claimed(execution_t *execution, const exec_event_t *ev, void *arg)
{
    (void) execution;
    kentry_t *self = arg;
    if (ev->kind == EXEC_EV_ERROR && self->moving) {
        self->move_failed = true;
        klog_warn("kernel %s: applying its cwd and env at the pool's claim failed: %s: %s; "
                  "it is restarted there", kentry_id(self), ev->ename ? ev->ename : "?",
                  ev->evalue ? ev->evalue : "");
    }
    if (ev->kind != EXEC_EV_END) return;
    self->claim = NULL;
    //  Not moving any more: a restart or shutdown took over (and says when it is done).
    if (!self->moving || self->shutting_down) return;
    self->moving = false;
    if (self->move_failed) {
        //  The runner restarts the process (the move was its gate): ready at its start.
        self->ready = false;
        return;
    }
    if (self->ready) s_notify(self, KWAIT_READY);
}

int kentry_claim(kentry_t *self, const char *code)
{
    runner_touch(self->runner);
    const char *cwd = kernel_cwd(kentry_kernel(self));
    if (cwd) {
        char *copy = strdup(cwd);
        if (!copy) return KB_ENOMEM;
        free(self->cwd);
        self->cwd = copy;
    }
    if (!code) return KB_OK;
    //  Silent: no execute_input, no history, no execution count, nothing in the namespace.
    run_opts_t opts;
    memset(&opts, 0, sizeof opts);
    opts.silent = true;
    opts.gate = true;
    opts.exec.stream_only = true;
    int err = KB_OK;
    self->claim = runner_execute(self->runner, code, &opts, s_on_claimed, self, &err);
    if (!self->claim) return err;
    //  Ready at once: the runner's FIFO puts the move before any run asked for from now on.
    self->moving = true;
    self->move_failed = false;
    return KB_OK;
}

const char *kentry_cwd(const kentry_t *self)
{
    return self->cwd;
}

const char *kentry_last_activity(const kentry_t *self)
{
    return runner_last_activity(self->runner);
}

