/*  hostsbx - the host's own sandbox for a command. */
#include "hostsbx.h"
#include "commands.h"
#include "../../base/kberr.h"

#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *kbridge_exe_path(void)
{
    static char path[PATH_MAX];
    static int done;
    if (!done) {
        size_t size = sizeof path;
        if (uv_exepath(path, &size) != 0) path[0] = '\0';
        done = 1;
    }
    return path[0] ? path : NULL;
}

const char *hostsbx_agent_path(void)
{
    static char path[PATH_MAX];
    static bool done;
    if (done) return path[0] ? path : NULL;
    done = true;
    const char *env = getenv("KBRIDGE_AGENT");
    if (env && access(env, X_OK) == 0) {
        snprintf(path, sizeof path, "%s", env);
        return path;
    }
    const char *exe = kbridge_exe_path();
    if (exe) {
        char copy[PATH_MAX];
        snprintf(copy, sizeof copy, "%s", exe);
        const char *dir = dirname(copy);
        snprintf(path, sizeof path, "%s/kbridge-agent", dir);
        if (access(path, X_OK) == 0) return path;
        snprintf(path, sizeof path, "%s/../lib/kbridge/kbridge-agent", dir);
        if (access(path, X_OK) == 0) return path;
    }
    path[0] = '\0';
    return NULL;
}

typedef struct {
    bool done;
    int err;
    char why[256];
} wait_t;

static void s_on_ready(sbx_t *sbx, int err, const char *why, void *arg)
{
    (void) sbx;
    wait_t *w = arg;
    w->done = true;
    w->err = err;
    snprintf(w->why, sizeof w->why, "%s", why ? why : "");
}

static void s_on_lost(sbx_t *sbx, const char *why, void *arg)
{
    (void) sbx;
    (void) arg;
    //  The host agent only goes if something killed it: nothing kbridge starts works then.
    fprintf(stderr, "kbridge: the host sandbox's agent went away (%s); stopping\n", why);
    exit(1);
}

sbx_t *hostsbx_start(uv_loop_t *loop, const char *kernel_dir, char *why, size_t size)
{
    const char *agent = hostsbx_agent_path();
    if (!agent) {
        snprintf(why, size, "kbridge-agent not found (next to kbridge, in ../lib/kbridge, or "
                            "$KBRIDGE_AGENT): reinstall kbridge");
        return NULL;
    }
    sbx_opts_t opts;
    memset(&opts, 0, sizeof opts);
    opts.id = "default";
    opts.isolation = SBX_ISOLATION_NONE;
    opts.agent_path = agent;
    opts.kernel_dir = kernel_dir;
    opts.own_kernel_dir = true;  //  this instance's rundir
    wait_t w = {false, 0, ""};
    sbx_events_t events = {s_on_ready, s_on_lost};
    int err;
    sbx_t *sbx = sbx_new(loop, &opts, &events, &w, &err);
    if (!sbx) {
        snprintf(why, size, "cannot start the host sandbox's agent (%s): %s", agent, kb_strerror(err));
        return NULL;
    }
    while (!w.done && uv_run(loop, UV_RUN_ONCE)) {}
    if (!w.done || w.err) {
        snprintf(why, size, "the host sandbox did not start: %s", w.done ? w.why : "the loop ended");
        sbx_destroy(&sbx);
        uv_run(loop, UV_RUN_NOWAIT);
        return NULL;
    }
    return sbx;
}
