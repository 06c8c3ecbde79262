/*  cmd_exec - `kbridge exec`: run cells in one fresh kernel, print Executions as JSON.

    Each CODE argument is a cell, run in order in the same kernel. Stream output is
    passed through to stderr as it arrives; each finished Execution is printed as one
    JSON line on stdout. SIGINT interrupts the running cell (twice quits). Exit status: 0 when every cell ran (a cell's own error is data
    in its Execution), 1 when the kernel could not be started, 2 on bad usage, 3 when
    the kernel died, 130 when interrupted.
*/
#include "commands.h"
#include "hostsbx.h"
#include "options.h"
#include "../kernels/runner.h"
#include "../../kernelmgr/jraw.h"
#include "../../kernelmgr/hmac.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../kernelmgr/rundir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uv_loop_t *loop;
    runner_t *runner;
    sbx_t *host;
    int cells, finished;
    int status;
    bool ready, stopping;
    uint64_t last_sigint;
    uv_signal_t sigint, sigterm;
    uv_timer_t reaper;
} exec_state_t;

static void s_stop(exec_state_t *st)
{
    if (st->stopping) return;
    st->stopping = true;
    runner_shutdown(st->runner);
}

static void s_on_event(execution_t *exec, const exec_event_t *ev, void *arg)
{
    exec_state_t *st = arg;
    if (ev->kind == EXEC_EV_STREAM) {
        //  The text as the kernel sent it, decoded to pass it through.
        json_t *text = jraw_decode(ev->text);
        fwrite(json_string_value(text), 1, json_string_length(text), stderr);
        fflush(stderr);
        json_decref(text);
    } else if (ev->kind == EXEC_EV_END) {
        jbuf_t b;
        jbuf_init(&b);
        execution_write(exec, &b);
        if (jbuf_text(&b)) {
            fwrite(jbuf_text(&b), 1, b.len, stdout);
            fputc('\n', stdout);
            fflush(stdout);
        }
        jbuf_free(&b);
        if (++st->finished == st->cells) s_stop(st);
    }
}

static void s_on_reap(uv_timer_t *timer)
{
    exec_state_t *st = timer->data;
    runner_destroy(&st->runner);
    sbx_destroy(&st->host);
    uv_close((uv_handle_t *) &st->sigint, NULL);
    uv_close((uv_handle_t *) &st->sigterm, NULL);
    uv_close((uv_handle_t *) &st->reaper, NULL);
}

static void s_on_runner_event(runner_t *runner, kernel_event_t event, void *arg)
{
    exec_state_t *st = arg;
    if (event == KERNEL_EV_READY) st->ready = true;
    if ((event == KERNEL_EV_DIED || event == KERNEL_EV_DEAD) && st->status == 0) {
        st->status = st->ready ? 3 : 1;
        if (!st->ready)
            fprintf(stderr, "kbridge: the kernel could not be started: %s\n",
                    kernel_exit_reason(runner_kernel(runner)));
    }
    if (event == KERNEL_EV_DEAD) s_stop(st);
    //  Destroy from a fresh loop turn, never from inside the runner's own callback.
    if (event == KERNEL_EV_SHUTDOWN) uv_timer_start(&st->reaper, s_on_reap, 0, 0);
}

//  SIGINT interrupts the running cell, as in a notebook; a second one within two
//  seconds, or SIGTERM, shuts the kernel down and exits.
static void s_on_signal(uv_signal_t *handle, int signum)
{
    exec_state_t *st = handle->data;
    uint64_t now = uv_now(st->loop);
    if (signum == SIGINT && !st->stopping && (!st->last_sigint || now - st->last_sigint > 2000)) {
        st->last_sigint = now;
        runner_interrupt(st->runner);
        return;
    }
    if (st->status == 0) st->status = 130;
    s_stop(st);
}

static const char s_exit_codes[] =
    "Runs each CODE as a cell, in order, in one fresh kernel. Each finished Execution is\n"
    "printed as one JSON line on stdout; the cells' stdout and stderr go to stderr as they\n"
    "arrive. SIGINT interrupts the running cell (a second one quits).\n\n"
    "exit status:\n"
    "  0    every cell ran (a cell's exception is data, in its Execution's error)\n"
    "  1    the kernel could not be started\n"
    "  2    bad usage\n"
    "  3    the kernel died\n"
    "  130  stopped by a signal";

int cmd_exec(int argc, char **argv)
{
    const char *kernel_name = kspec_default_name(), *cwd = NULL, *scheme = "hmac-sha256";
    const char *log_level = "warn";
    uint64_t timeout_ms = 0;
    json_t *env = json_object(), *cells = NULL;
    static const char *const schemes[] = {"hmac-sha256", "hmac-sha512", NULL};
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    const opt_t table[] = {
        {"kernel", 'k', OPT_STRING, "KBRIDGE_DEFAULT_KERNEL", "NAME", "kernelspec to run", "python3", 0, 0, NULL, &kernel_name},
        {"cwd", 0, OPT_STRING, NULL, "DIR", "the kernel's working directory", "the current one", 0, 0, NULL, &cwd},
        {"timeout-ms", 0, OPT_UINT, NULL, "N", "interrupt a cell that runs longer (0: never)", "0", 0, 86400000, NULL, &timeout_ms},
        {"env", 0, OPT_KV, NULL, "K=V", "environment variable for the kernel", NULL, 0, 0, NULL, &env},
        {"signature-scheme", 0, OPT_CHOICE, NULL, "S", "hmac-sha256 or hmac-sha512", "hmac-sha256", 0, 0, schemes, &scheme},
        {"log-level", 0, OPT_CHOICE, NULL, "L", "debug, info, warn or error", "warn", 0, 0, levels, &log_level},
    };
    char why[512];
    int prc = options_parse(table, sizeof table / sizeof *table, argc, argv, 1, &cells, why, sizeof why);
    if (prc == 1 || (prc == 0 && json_array_size(cells) == 0)) {
        options_help(table, sizeof table / sizeof *table, "usage: kbridge exec [options] CODE...",
                     s_exit_codes, prc == 1 ? stdout : stderr);
        json_decref(env);
        json_decref(cells);
        return prc == 1 ? 0 : 2;
    }
    if (prc != 0) {
        fprintf(stderr, "kbridge exec: %s\n", why);
        json_decref(env);
        json_decref(cells);
        return 2;
    }
    klog_set_level((klog_level_t) klog_parse_level(log_level));
    int err;
    kspec_t *spec = kspec_find(kernel_name, &err);
    if (!spec) {
        fprintf(stderr, "kbridge exec: no such kernel '%s'\n", kernel_name);
        json_decref(env);
        json_decref(cells);
        return 1;
    }
    rundir_t *rundir = rundir_new(NULL);
    if (!rundir) {
        kspec_destroy(&spec);
        json_decref(env);
        json_decref(cells);
        return 1;
    }
    exec_state_t st;
    memset(&st, 0, sizeof st);
    st.loop = uv_default_loop();
    st.host = hostsbx_start(st.loop, rundir_path(rundir), why, sizeof why);
    if (!st.host) {
        fprintf(stderr, "kbridge exec: %s\n", why);
        kspec_destroy(&spec);
        rundir_destroy(&rundir);
        json_decref(env);
        json_decref(cells);
        return 1;
    }
    kernel_opts_t kopts;
    memset(&kopts, 0, sizeof kopts);
    kopts.sbx = st.host;
    kopts.cwd = cwd;
    kopts.env = env;
    kopts.signature_scheme = scheme;
    runner_events_t revents = {s_on_runner_event};
    st.runner = runner_new(st.loop, spec, &kopts, &revents, &st, &err);
    kspec_destroy(&spec);
    json_decref(env);
    if (!st.runner) {
        fprintf(stderr, "kbridge exec: the kernel could not be started: %s\n", kb_strerror(err));
        sbx_destroy(&st.host);
        uv_run(st.loop, UV_RUN_DEFAULT);
        rundir_destroy(&rundir);
        json_decref(cells);
        return 1;
    }
    uv_signal_init(st.loop, &st.sigint);
    uv_signal_init(st.loop, &st.sigterm);
    uv_timer_init(st.loop, &st.reaper);
    st.sigint.data = st.sigterm.data = st.reaper.data = &st;
    uv_signal_start(&st.sigint, s_on_signal, SIGINT);
    uv_signal_start(&st.sigterm, s_on_signal, SIGTERM);

    run_opts_t ropts;
    memset(&ropts, 0, sizeof ropts);
    ropts.timeout_ms = timeout_ms;
    st.cells = (int) json_array_size(cells);
    for (size_t i = 0; i < json_array_size(cells); i++) {
        if (!runner_execute(st.runner, json_string_value(json_array_get(cells, i)), &ropts, s_on_event, &st, &err)) {
            fprintf(stderr, "kbridge: cannot queue cell: %s\n", kb_strerror(err));
            st.status = 1;
            s_stop(&st);
            break;
        }
    }
    uv_run(st.loop, UV_RUN_DEFAULT);
    rundir_destroy(&rundir);
    json_decref(cells);
    if (uv_loop_close(st.loop) != 0) klog_debug("loop closed with handles still open");
    return st.status;
}
