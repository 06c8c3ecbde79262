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
    kwait_t *waiters;
    int connections;
    bool ready;
    bool shutting_down;
    char *cwd;
    json_t *tags;
};

static void s_notify(kentry_t *self, kwait_result_t result)
{
    //  Waiters may add new waiters or destroy objects of their own: take the list first.
    kwait_t *list = self->waiters;
    self->waiters = NULL;
    while (list) {
        kwait_t *w = list;
        list = w->next;
        if (list) list->prev = NULL;
        w->prev = w->next = NULL;
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
    self->tags = json_object();
    runner_events_t rev = {s_on_runner};
    self->runner = runner_new(loop, spec, opts, &rev, self, err);
    if (!self->runner || !self->tags) {
        runner_destroy(&self->runner);
        json_decref(self->tags);
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
    s_notify(self, KWAIT_SHUTDOWN);
    runner_destroy(&self->runner);
    json_decref(self->tags);
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

bool kentry_shutting_down(const kentry_t *self)
{
    return self->shutting_down;
}

void kentry_wait(kentry_t *self, kwait_t *wait)
{
    kentry_unwait(wait);
    wait->entry = self;
    wait->prev = NULL;
    wait->next = self->waiters;
    if (self->waiters) self->waiters->prev = wait;
    self->waiters = wait;
}

void kentry_unwait(kwait_t *wait)
{
    kentry_t *self = wait->entry;
    if (!self) return;
    if (wait->prev) wait->prev->next = wait->next;
    else self->waiters = wait->next;
    if (wait->next) wait->next->prev = wait->prev;
    wait->prev = wait->next = NULL;
    wait->entry = NULL;
}

int kentry_restart(kentry_t *self)
{
    if (self->shutting_down) return KB_ECLOSED;
    self->ready = false;
    return runner_restart(self->runner);
}

void kentry_shutdown(kentry_t *self)
{
    if (self->shutting_down) return;
    self->shutting_down = true;
    self->ready = false;
    runner_shutdown(self->runner);
}

void kentry_connections_add(kentry_t *self, int delta)
{
    self->connections += delta;
}

json_t *kentry_tags(kentry_t *self)
{
    return self->tags;
}

//  "starting", "idle", "busy", "restarting", "dead"
static const char *s_state_name(const kentry_t *self)
{
    if (self->shutting_down) return "dead";
    return kernel_state_name(kernel_state(kentry_kernel(self)));
}

json_t *kentry_model_native(const kentry_t *self)
{
    kernel_t *k = kentry_kernel(self);
    return json_pack("{s:s, s:s, s:s, s:s, s:s}", "kernel_id", kernel_id(k), "kernel_name",
                     kernel_name(k), "language", kernel_language(k), "cwd", self->cwd, "state",
                     s_state_name(self));
}

json_t *kentry_model_jupyter(const kentry_t *self)
{
    kernel_t *k = kentry_kernel(self);
    return json_pack("{s:s, s:s, s:s, s:s, s:i}", "id", kernel_id(k), "name", kernel_name(k),
                     "last_activity", runner_last_activity(self->runner), "execution_state",
                     s_state_name(self), "connections", self->connections);
}
