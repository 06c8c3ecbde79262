/*  runner - a kernel plus a FIFO of executions on it. */
#include "runner.h"
#include "../metrics/metrics.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

//  After an interrupt, how long the queue waits for the interrupted request to settle
//  before it gives up on it and moves on.
#define DRAIN_TIMEOUT_MS 10000
//  A kernel sends execute_reply before its status idle, so once idle is in, the reply is
//  at most a loop turn behind. ipykernel never sends one when an interrupt lands outside
//  the cell's code (between execute_input and the code, or in its own machinery after)
//  or a handler raises: after this long the run ends without it, instead of hanging the
//  queue.
#define REPLY_GRACE_MS 2000

static int64_t s_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct _run_t {
    runner_t *runner;
    klist_t link;
    char *code;
    bool silent;
    uint64_t timeout_ms;
    execution_opts_t exec_opts;
    execution_fn *on_event;  //  NULL once the requester has its end, or left
    void *arg;
    execution_t *exec;
    bool helper;
    bool gate, failed;  //  see run_opts_t.gate; failed: it had an error event
    uint64_t submitted_ms;  //  for the execution latency metric
    const char *outcome;    //  metrics_outcome of its error; NULL: none so far
};

struct _runner_t {
    uv_loop_t *loop;
    kernel_t *kernel;
    runner_events_t events;
    void *arg;
    klist_t queue;  //  run_t, oldest first
    run_t *current;
    bool draining;
    bool interrupted;  //  the kernel was interrupted while the current run ran
    uv_timer_t timer;  //  the current run's timeout, then its drain deadline
    uv_timer_t grace;  //  the current run went idle without a reply: REPLY_GRACE_MS
    uint64_t grace_due;     //  when it should fire (uv_now)
    int grace_extensions;   //  times it was put off because the loop was late
    uv_timer_t kick;   //  dispatches on the next loop turn, never inside runner_execute
    int open_handles;
    klist_t listeners;  //  runner_listener_t
    //  Wall-clock µs of the last iopub message: a clock read per message, formatted only
    //  when someone asks (formatting per message cost more than the rest of the bookkeeping).
    int64_t activity_us, formatted_us;
    char last_activity[32];
    uint64_t active_at;  //  uv_now of the last activity
    bool destroyed;
    bool shutdown_notified;
    bool restart_due;  //  a gate failed: the kick restarts the kernel, nothing is sent before
};

static void s_free_run(run_t *run)
{
    execution_destroy(&run->exec);
    free(run->code);
    free(run);
}

//  Deliver an error and the end to a run's requester without involving the kernel.
static void s_fail_run(run_t *run, const char *name, const char *value)
{
    if (!run->on_event) return;
    if (run->exec) {
        execution_fail(run->exec, name, value);  //  emits through s_on_exec_event
        return;
    }
    //  Never dispatched: synthesize the events an execution would have produced.
    if (!run->helper)
        metrics_execution(metrics_outcome(name), (double) (kb_now_ms() - run->submitted_ms) / 1000.0);
    execution_t *exec = execution_new("-", &run->exec_opts, run->on_event, run->arg);
    run->on_event = NULL;
    if (exec) {
        execution_fail(exec, name, value);
        execution_destroy(&exec);
    }
}

//  What the requester sees is what the metrics count: helpers have no requester, and
//  what a timed-out or cancelled run still produces is nobody's output.
static void s_count_event(run_t *run, const exec_event_t *ev)
{
    switch (ev->kind) {
    case EXEC_EV_STREAM:
        metrics_add(MX_OUTPUT_BYTES, ev->is_stderr ? "stderr" : "stdout", (double) ev->text.len);
        break;
    case EXEC_EV_RESULT: metrics_add(MX_OUTPUT_BYTES, "result", (double) ev->data.len); break;
    case EXEC_EV_ERROR: run->outcome = metrics_outcome(ev->ename); break;
    case EXEC_EV_END:
        metrics_execution(run->outcome ? run->outcome : "ok",
                          (double) (kb_now_ms() - run->submitted_ms) / 1000.0);
        break;
    default: break;
    }
}

static void s_on_exec_event(execution_t *exec, const exec_event_t *ev, void *arg)
{
    run_t *run = arg;
    execution_fn *fn = run->on_event;
    if (ev->kind == EXEC_EV_ERROR) run->failed = true;
    if (ev->kind == EXEC_EV_END) run->on_event = NULL;
    if (fn) {
        s_count_event(run, ev);
        fn(exec, ev, run->arg);
    }
}

static void s_dispatch(runner_t *self);
static void s_on_kick(uv_timer_t *timer);

static void s_complete_current(runner_t *self)
{
    run_t *run = self->current;
    if (!run) return;
    self->current = NULL;
    self->draining = false;
    uv_timer_stop(&self->timer);
    uv_timer_stop(&self->grace);
    bool gate_failed = run->gate && run->failed;
    s_free_run(run);
    if (gate_failed) {
        //  Restarted from the kick, not here: this is inside the kernel's own message
        //  callback, and the queued runs' requesters are called back by the restart.
        self->restart_due = true;
        uv_timer_start(&self->kick, s_on_kick, 0, 0);
        return;
    }
    s_dispatch(self);
}

static void s_on_reply_grace(uv_timer_t *timer)
{
    runner_t *self = timer->data;
    run_t *run = self->current;
    if (!run) return;
    //  A loop that ran late (a starved machine: kbridge and many busy kernels on few
    //  CPUs) may not have read the reply waiting on the shell socket yet: timers run
    //  before I/O in a loop turn. Give I/O a turn or two before deciding.
    uint64_t now = uv_now(self->loop);
    if (self->grace_extensions < 2 || (now > self->grace_due + 100 && self->grace_extensions < 8)) {
        self->grace_extensions++;
        self->grace_due = now + (self->grace_extensions < 2 ? 0 : REPLY_GRACE_MS / 4);
        uv_timer_start(&self->grace, s_on_reply_grace, self->grace_due - now, 0);
        return;
    }
    klog_warn("kernel %.8s: went idle without an execute_reply%s; ending the run",
              kernel_id(self->kernel), self->interrupted ? " (interrupted)" : "");
    if (self->interrupted)
        execution_end_unreplied(run->exec, "KeyboardInterrupt",
                                "The kernel was interrupted outside the cell's code "
                                "and sent no execute_reply");
    else
        execution_end_unreplied(run->exec, "KernelError",
                                "The kernel went idle without sending execute_reply");
    s_complete_current(self);
}

static void s_on_drain_timeout(uv_timer_t *timer)
{
    runner_t *self = timer->data;
    klog_warn("kernel %.8s: interrupted request did not settle in %d ms; moving on",
              kernel_id(self->kernel), DRAIN_TIMEOUT_MS);
    s_complete_current(self);
}

static void s_start_drain(runner_t *self)
{
    if (self->draining) return;
    self->draining = true;
    self->interrupted = true;
    kernel_interrupt(self->kernel);
    uv_timer_start(&self->timer, s_on_drain_timeout, DRAIN_TIMEOUT_MS, 0);
}

static void s_on_run_timeout(uv_timer_t *timer)
{
    runner_t *self = timer->data;
    run_t *run = self->current;
    if (!run) return;
    char value[96];
    snprintf(value, sizeof value, "Execution timed out after %llu ms",
             (unsigned long long) run->timeout_ms);
    execution_fail(run->exec, "TimeoutError", value);
    s_start_drain(self);
}

//  A kernel whose heartbeat is lost gets nothing new: a stopped process would only
//  queue it, and it could run long after its requester was told it failed.
static bool s_ready(runner_t *self)
{
    kernel_state_t st = kernel_state(self->kernel);
    return (st == KERNEL_IDLE || st == KERNEL_BUSY) && kernel_heartbeat_ok(self->kernel);
}

static void s_unresponsive_error(runner_t *self, char *value, size_t size)
{
    snprintf(value, size, "The kernel stopped answering: no heartbeat for %d s (its process is "
                          "alive but not responding: stopped, or stuck)",
             kernel_heartbeat_timeout_ms(self->kernel) / 1000);
}

//  End the queued runs with an error; helpers stay, so that an environment set before a
//  run is still restored after it.
static void s_fail_queued(runner_t *self, const char *name, const char *value)
{
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->queue)
    {
        run_t *run = klist_entry(it, run_t, link);
        if (run->helper) continue;
        klist_remove(&run->link);
        s_fail_run(run, name, value);
        s_free_run(run);
    }
}

static void s_dispatch(runner_t *self)
{
    if (self->restart_due) return;
    if (kernel_heartbeat_expired(self->kernel) && !self->destroyed) {
        char value[200];
        s_unresponsive_error(self, value, sizeof value);
        s_fail_queued(self, "KernelNotResponding", value);
    }
    while (!self->current && !klist_empty(&self->queue) && s_ready(self) && !self->destroyed) {
        run_t *run = klist_entry(klist_first(&self->queue), run_t, link);
        klist_remove(&run->link);
        if (!run->helper && !run->on_event) {  //  cancelled while queued
            s_free_run(run);
            continue;
        }
        //  Written as text: building and dumping a jansson object per cell cost more than
        //  the rest of the request.
        jbuf_t content;
        jbuf_init(&content);
        jbuf_adds(&content, "{\"code\":");
        jbuf_add_string(&content, run->code, strlen(run->code));
        jbuf_adds(&content, run->silent ? ",\"silent\":true,\"store_history\":false"
                                        : ",\"silent\":false,\"store_history\":true");
        //  One request at a time: nothing queued behind it in the kernel for stop_on_error
        //  to abort.
        jbuf_adds(&content, ",\"user_expressions\":{},\"allow_stdin\":false,\"stop_on_error\":false}");
        if (!jbuf_text(&content)) {
            //  jansson refuses to write a string that is not UTF-8 (or memory ran out).
            jbuf_free(&content);
            s_fail_run(run, "InvalidCode", "the code is not valid UTF-8");
            s_free_run(run);
            continue;
        }
        kmsg_t *msg = kernel_msg_new_text(self->kernel, "execute_request", jbuf_text(&content),
                                          content.len);
        jbuf_free(&content);
        if (msg) run->exec = execution_new(kmsg_id(msg), &run->exec_opts, s_on_exec_event, run);
        if (!msg || !run->exec) {
            kmsg_destroy(&msg);
            s_fail_run(run, "InternalError", "out of memory");
            s_free_run(run);
            continue;
        }
        int rc = kernel_send(self->kernel, KCH_SHELL, &msg);
        if (rc != KB_OK) {
            s_fail_run(run, "KernelError", kb_strerror(rc));
            s_free_run(run);
            continue;
        }
        self->current = run;
        self->interrupted = false;
        if (run->timeout_ms) uv_timer_start(&self->timer, s_on_run_timeout, run->timeout_ms, 0);
    }
}

//  End every run, running and queued, with the same error.
static void s_fail_all(runner_t *self, const char *name, const char *value)
{
    run_t *run = self->current;
    self->current = NULL;
    self->draining = false;
    uv_timer_stop(&self->timer);
    uv_timer_stop(&self->grace);
    if (run) {
        s_fail_run(run, name, value);
        s_free_run(run);
    }
    while (!klist_empty(&self->queue)) {
        run = klist_entry(klist_first(&self->queue), run_t, link);
        klist_remove(&run->link);
        s_fail_run(run, name, value);
        s_free_run(run);
    }
}

static void s_on_kernel_msg(kernel_t *kernel, kchan_type_t channel, kmsg_t *msg, void *arg)
{
    (void) kernel;
    runner_t *self = arg;
    if (channel == KCH_IOPUB) {
        self->activity_us = s_wall_us();
        self->active_at = uv_now(self->loop);
    }
    run_t *run = self->current;
    const char *parent = kmsg_parent_id(msg);
    if (run && parent && strcmp(parent, execution_msg_id(run->exec)) == 0) {
        execution_on_message(run->exec, channel, msg);
        if (self->current == run && execution_settled(run->exec)) s_complete_current(self);
        else if (self->current == run && execution_idle_unreplied(run->exec) &&
                 !uv_is_active((uv_handle_t *) &self->grace)) {
            self->grace_extensions = 0;
            self->grace_due = uv_now(self->loop) + REPLY_GRACE_MS;
            uv_timer_start(&self->grace, s_on_reply_grace, REPLY_GRACE_MS, 0);
        }
    }
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->listeners)
    {
        runner_listener_t *l = klist_entry(it, runner_listener_t, link);
        if (l->on_msg) l->on_msg(l, channel, msg);
    }
}

static void s_on_kernel_event(kernel_t *kernel, kernel_event_t event, void *arg)
{
    runner_t *self = arg;
    char reason[256];
    switch (event) {
    case KERNEL_EV_READY: s_dispatch(self); break;
    case KERNEL_EV_DIED:
        //  A process that died before it was ready (a port taken: its start is retried)
        //  ran nothing of what is queued; that waits for the next start or for the end.
        if (!kernel_process_was_ready(kernel) && !self->current) break;
        if (kernel_oom_killed(kernel)) {
            //  What a cell that takes too much memory gets: the limit, and what happens next.
            snprintf(reason, sizeof reason, "The kernel was %s; it is restarted", kernel_exit_reason(kernel));
            s_fail_all(self, "OutOfMemoryError", reason);
            break;
        }
        snprintf(reason, sizeof reason, "The kernel died (%s)", kernel_exit_reason(kernel));
        s_fail_all(self, "KernelDied", reason);
        break;
    case KERNEL_EV_DEAD:
        snprintf(reason, sizeof reason, "The kernel is dead (%s)",
                 *kernel_exit_reason(kernel) ? kernel_exit_reason(kernel) : "gave up");
        s_fail_all(self, "KernelDead", reason);
        break;
    case KERNEL_EV_SHUTDOWN:
        s_fail_all(self, "KernelShutdown", "The kernel was shut down");
        self->shutdown_notified = true;
        break;
    case KERNEL_EV_HB_TIMEOUT:
        //  What runs is interrupted as a timed-out run is: the signal waits in a stopped
        //  process, so a cell its requester was told failed does not go on once it resumes.
        s_unresponsive_error(self, reason, sizeof reason);
        if (self->current && !self->draining) {
            execution_fail(self->current->exec, "KernelNotResponding", reason);
            s_start_drain(self);
        }
        s_fail_queued(self, "KernelNotResponding", reason);
        break;
    case KERNEL_EV_HB_BACK: s_dispatch(self); break;
    default: break;
    }
    //  The owner first, so listeners see its state (kentry_ready...) already updated.
    if (self->events.on_event) self->events.on_event(self, event, self->arg);
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->listeners)
    {
        runner_listener_t *l = klist_entry(it, runner_listener_t, link);
        if (l->on_event) l->on_event(l, event);
    }
}

runner_t *runner_new(uv_loop_t *loop, const kspec_t *spec, const kernel_opts_t *opts,
                     const runner_events_t *events, void *arg, int *err)
{
    runner_t *self = calloc(1, sizeof *self);
    if (!self) {
        if (err) *err = KB_ENOMEM;
        return NULL;
    }
    self->loop = loop;
    if (events) self->events = *events;
    self->arg = arg;
    klist_init(&self->queue);
    klist_init(&self->listeners);
    self->activity_us = s_wall_us();
    self->formatted_us = -1;
    self->active_at = uv_now(loop);
    kernel_events_t kev = {s_on_kernel_msg, s_on_kernel_event};
    self->kernel = kernel_new(loop, spec, opts, &kev, self, err);
    if (!self->kernel) {
        free(self);
        return NULL;
    }
    uv_timer_init(loop, &self->timer);
    uv_timer_init(loop, &self->grace);
    uv_timer_init(loop, &self->kick);
    self->timer.data = self->grace.data = self->kick.data = self;
    self->open_handles = 3;
    return self;
}

static void s_runner_closed(uv_handle_t *handle)
{
    runner_t *self = handle->data;
    if (--self->open_handles == 0) free(self);
}

static void s_on_kick(uv_timer_t *timer)
{
    runner_t *self = timer->data;
    if (self->restart_due && !self->destroyed) {
        self->restart_due = false;
        klog_warn("kernel %.8s: a run the queue depended on failed; restarting the kernel",
                  kernel_id(self->kernel));
        s_fail_all(self, "KernelRestarted",
                   "The kernel could not be moved to its working directory and environment "
                   "(warm pool); it is restarted there, and this run did not start");
        kernel_restart(self->kernel);  //  KB_ECLOSED: shutting down, which ends it too
        return;
    }
    s_dispatch(self);
}

void runner_destroy(runner_t **self_p)
{
    if (!self_p || !*self_p) return;
    runner_t *self = *self_p;
    *self_p = NULL;
    s_fail_all(self, "KernelShutdown", "The kernel was shut down");
    self->destroyed = true;
    //  Listeners hold the kernel's sockets and signer: they must hear it is going, even
    //  when it goes without a graceful shutdown.
    if (!self->shutdown_notified) {
        klist_t *it, *tmp;
        klist_foreach_safe(it, tmp, &self->listeners)
        {
            runner_listener_t *l = klist_entry(it, runner_listener_t, link);
            if (l->on_event) l->on_event(l, KERNEL_EV_SHUTDOWN);
        }
    }
    kernel_destroy(&self->kernel);
    uv_close((uv_handle_t *) &self->timer, s_runner_closed);
    uv_close((uv_handle_t *) &self->grace, s_runner_closed);
    uv_close((uv_handle_t *) &self->kick, s_runner_closed);
}

//  Code that saves, sets or restores environment variables, or NULL if the language has
//  no recipe. Values are JSON string literals, which Python and R both read correctly
//  (quotes, backslashes, newlines, unicode). Nothing is left in the user's namespace.
static char *s_env_code(const char *language, json_t *vars, bool set)
{
    bool python = strcasecmp(language, "python") == 0;
    bool r = strcasecmp(language, "r") == 0;
    if (!python && !r) return NULL;
    if (!set)
        return strdup(
            python ? "[__import__('os').environ.pop(k, None) if v is None else "
                     "__import__('os').environ.__setitem__(k, v) for k, v in "
                     "__import__('os').__dict__.pop('_kbridge_saved_env', {}).items()]"
                   : "invisible(local({ s <- getOption('kbridge.saved.env'); "
                     "for (k in names(s)) if (is.na(s[[k]])) Sys.unsetenv(k) else "
                     "do.call(Sys.setenv, stats::setNames(list(s[[k]]), k)); "
                     "options(kbridge.saved.env = NULL) }))");
    json_t *keys = json_array();
    const char *key;
    json_t *value;
    json_object_foreach(vars, key, value) json_array_append_new(keys, json_string(key));
    char *keys_lit = jx_dumps(keys, false, NULL);
    char *vars_lit = jx_dumps(vars, false, NULL);  //  also sizes the R buffers below
    json_decref(keys);
    char *code = NULL;
    if (keys_lit && vars_lit) {
        int n;
        if (python)
            n = asprintf(&code,
                         "__import__('os').__dict__['_kbridge_saved_env'] = {k: "
                         "__import__('os').environ.get(k) for k in %s}; "
                         "__import__('os').environ.update(%s)",
                         keys_lit, vars_lit);
        else {
            //  R: c("K1", ...) to save, c("K1" = "V1", ...) to set, from the same literals.
            size_t cap = strlen(vars_lit) * 2 + 64, at = 0, kat = 0;
            char *pairs = malloc(cap), *names = malloc(cap);
            n = -1;
            if (pairs && names) {
                pairs[0] = names[0] = '\0';
                json_object_foreach(vars, key, value)
                {
                    json_t *k = json_string(key);
                    char *kl = jx_dumps(k, false, NULL), *vl = jx_dumps(value, false, NULL);
                    json_decref(k);
                    if (kl && vl) {
                        at += (size_t) snprintf(pairs + at, cap - at, "%s%s = %s", at ? ", " : "", kl, vl);
                        kat += (size_t) snprintf(names + kat, cap - kat, "%s%s", kat ? ", " : "", kl);
                    }
                    free(kl);
                    free(vl);
                }
                n = asprintf(&code,
                             "invisible(local({ options(kbridge.saved.env = Sys.getenv(c(%s), "
                             "unset = NA, names = TRUE)); do.call(Sys.setenv, as.list(c(%s))) }))",
                             names, pairs);
            }
            free(pairs);
            free(names);
        }
        if (n < 0) code = NULL;
    }
    free(keys_lit);
    free(vars_lit);
    return code;
}

static run_t *s_new_run(runner_t *self, const char *code, bool silent, bool helper)
{
    run_t *run = calloc(1, sizeof *run);
    if (!run) return NULL;
    run->runner = self;
    run->code = strdup(code);
    run->silent = silent;
    run->helper = helper;
    if (!run->code) {
        free(run);
        return NULL;
    }
    return run;
}

static void s_enqueue(runner_t *self, run_t *run)
{
    klist_push_back(&self->queue, &run->link);
}

run_t *runner_execute(runner_t *self, const char *code, const run_opts_t *opts,
                      execution_fn *on_event, void *arg, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    kernel_state_t st = kernel_state(self->kernel);
    if (st == KERNEL_DEAD) {
        *err = KB_EDEAD;
        return NULL;
    }
    if (st == KERNEL_SHUTDOWN || self->destroyed) {
        *err = KB_ECLOSED;
        return NULL;
    }
    run_opts_t defaults;
    memset(&defaults, 0, sizeof defaults);
    if (!opts) opts = &defaults;
    bool with_env = json_object_size(opts->env_vars) > 0;
    char *set_code = NULL, *restore_code = NULL;
    if (with_env) {
        set_code = s_env_code(kernel_language(self->kernel), opts->env_vars, true);
        restore_code = s_env_code(kernel_language(self->kernel), opts->env_vars, false);
        if (!set_code || !restore_code) {
            free(set_code);
            free(restore_code);
            *err = KB_EINVAL;  //  no recipe for this language
            return NULL;
        }
    }
    run_t *run = s_new_run(self, code, opts->silent, false);
    run_t *set = with_env ? s_new_run(self, set_code, true, true) : NULL;
    run_t *restore = with_env ? s_new_run(self, restore_code, true, true) : NULL;
    free(set_code);
    free(restore_code);
    if (!run || (with_env && (!set || !restore))) {
        if (run) s_free_run(run);
        if (set) s_free_run(set);
        if (restore) s_free_run(restore);
        *err = KB_ENOMEM;
        return NULL;
    }
    run->timeout_ms = opts->timeout_ms;
    run->gate = opts->gate;
    run->exec_opts = opts->exec;
    run->on_event = on_event;
    run->arg = arg;
    run->submitted_ms = kb_now_ms();
    if (set) s_enqueue(self, set);
    s_enqueue(self, run);
    if (restore) s_enqueue(self, restore);
    *err = KB_OK;
    //  Dispatching here could end the run (a send failure) before the caller holds it.
    uv_timer_start(&self->kick, s_on_kick, 0, 0);
    return run;
}

void run_cancel(run_t *run)
{
    if (!run) return;
    runner_t *self = run->runner;
    if (run->on_event && !run->helper)
        metrics_execution("cancelled", (double) (kb_now_ms() - run->submitted_ms) / 1000.0);
    run->on_event = NULL;
    if (run == self->current) {
        execution_mute(run->exec);
        s_start_drain(self);
    }
    //  A queued run stays in the queue, skipped at dispatch (its helpers still pair up).
}

int runner_interrupt(runner_t *self)
{
    if (self->current) self->interrupted = true;
    return kernel_interrupt(self->kernel);
}

int runner_restart(runner_t *self)
{
    self->restart_due = false;  //  this restart is the one it was waiting for
    s_fail_all(self, "KernelRestarted", "The kernel was restarted");
    return kernel_restart(self->kernel);
}

void runner_shutdown(runner_t *self)
{
    kernel_shutdown(self->kernel);
}

void runner_listen(runner_t *self, runner_listener_t *listener)
{
    klist_init(&listener->link);
    klist_push_front(&self->listeners, &listener->link);
}

void runner_unlisten(runner_t *self, runner_listener_t *listener)
{
    (void) self;
    klist_remove(&listener->link);
}

kernel_t *runner_kernel(const runner_t *self)
{
    return self->kernel;
}

size_t runner_pending(const runner_t *self)
{
    size_t n = self->current ? 1 : 0;
    klist_t *it;
    klist_foreach(it, &self->queue)
    {
        if (!klist_entry(it, run_t, link)->helper) n++;
    }
    return n;
}

const char *runner_last_activity(runner_t *self)
{
    if (self->formatted_us != self->activity_us) {
        time_t sec = (time_t) (self->activity_us / 1000000);
        struct tm tm;
        gmtime_r(&sec, &tm);
        size_t n = strftime(self->last_activity, sizeof self->last_activity, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(self->last_activity + n, sizeof self->last_activity - n, ".%06dZ",
                 (int) (self->activity_us % 1000000));
        self->formatted_us = self->activity_us;
    }
    return self->last_activity;
}

void runner_touch(runner_t *self)
{
    self->activity_us = s_wall_us();
    self->active_at = uv_now(self->loop);
}

uint64_t runner_active_at(const runner_t *self)
{
    return self->active_at;
}
