/*  Helpers for the sandbox tests: a loop that runs until a condition holds (with a
    deadline, never a sleep), synchronous wrappers around sandboxes, processes and file
    operations, and a scratch directory per test binary.

    Each test binary includes this once (static functions).
*/
#ifndef SBX_HARNESS_H
#define SBX_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/kberr.h"
#include "base/klog.h"
#include "sandbox/proc.h"
#include "sandbox/sbx.h"
#include "sandbox/template.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uv_loop_t *H_loop;
static const char *H_agent;
static char H_root[256];  //  scratch: state dirs, files
static template_t *H_host;

static uint64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

__attribute__((unused)) static void h_wake(uv_timer_t *t)
{
    (void) t;
}

//  Run the loop until *flag, or ms pass. Returns *flag.
__attribute__((unused)) static bool h_wait(const volatile bool *flag, int ms)
{
    uv_timer_t t;
    uv_timer_init(H_loop, &t);
    uv_timer_start(&t, h_wake, 20, 20);
    uint64_t end = h_now_ms() + (uint64_t) ms;
    while (!*flag && h_now_ms() < end) uv_run(H_loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *) &t, NULL);
    uv_run(H_loop, UV_RUN_NOWAIT);
    return *flag;
}

//  Run the loop for ms (to let things that should NOT happen have their chance).
__attribute__((unused)) static void h_spin(int ms)
{
    bool never = false;
    h_wait(&never, ms);
}

//  A test cannot run for want of a tool: skipped locally, a failure when $CI is set (to
//  anything but "", "0" or "false"), where a skip would hide that it never ran. A macro, as
//  cmocka's skip() must be called from the test itself.
__attribute__((unused)) static bool h_in_ci(void)
{
    const char *ci = getenv("CI");
    return ci && *ci && strcmp(ci, "0") != 0 && strcasecmp(ci, "false") != 0;
}
#define H_NEED_TOOL(path)                                                                   \
    do {                                                                                    \
        if (access(path, X_OK) != 0) {                                                      \
            if (h_in_ci()) fail_msg("%s is not installed (CI is set: a missing tool fails)", path); \
            print_message("%s is not installed: skipped\n", path);                          \
            skip();                                                                         \
        }                                                                                   \
    } while (0)

__attribute__((unused)) static int h_rm_rf(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    return system(cmd);
}

__attribute__((unused)) static void h_setup_root(const char *name)
{
    H_agent = getenv("KBRIDGE_AGENT");
    if (!H_agent) H_agent = "build/kbridge-agent";
    snprintf(H_root, sizeof H_root, "/var/tmp/kbsbx-%s-%d", name, (int) getpid());
    h_rm_rf(H_root);
    mkdir(H_root, 0700);
    H_loop = calloc(1, sizeof *H_loop);
    uv_loop_init(H_loop);
    const char *hidden[] = {H_root, NULL};
    int err;
    H_host = template_new_host("base", hidden, &err);
    klog_set_level(getenv("KBRIDGE_DEBUG") ? KLOG_DEBUG : KLOG_WARN);
}

__attribute__((unused)) static void h_walk_cb(uv_handle_t *h, void *arg)
{
    (void) arg;
    fprintf(stderr, "harness: handle left open: type %d\n", (int) h->type);
}

__attribute__((unused)) static void h_teardown_root(void)
{
    //  Everything must have been closed by the tests themselves; what is still closing
    //  (agents being reaped, threadpool work) gets a few seconds.
    uint64_t end = h_now_ms() + 10000;
    while (uv_loop_alive(H_loop) && h_now_ms() < end) {
        uv_timer_t t;
        uv_timer_init(H_loop, &t);
        uv_timer_start(&t, h_wake, 20, 0);
        uv_run(H_loop, UV_RUN_ONCE);
        uv_close((uv_handle_t *) &t, NULL);
        uv_run(H_loop, UV_RUN_NOWAIT);
    }
    uv_walk(H_loop, h_walk_cb, NULL);
    int rc = uv_loop_close(H_loop);
    free(H_loop);
    template_destroy(&H_host);
    h_rm_rf(H_root);
    if (rc != 0) {
        fprintf(stderr, "harness: the loop still had handles\n");
        exit(1);
    }
}

// ---------------------------------------------------------------------------------------
//  Sandboxes

typedef struct {
    bool ready, lost;
    int err;
    char why[512];
} h_sbx_state_t;

__attribute__((unused)) static void h_on_ready(sbx_t *s, int err, const char *why, void *arg)
{
    (void) s;
    h_sbx_state_t *st = arg;
    st->ready = true;
    st->err = err;
    snprintf(st->why, sizeof st->why, "%s", why ? why : "");
}

__attribute__((unused)) static void h_on_lost(sbx_t *s, const char *why, void *arg)
{
    (void) s;
    h_sbx_state_t *st = arg;
    st->lost = true;
    snprintf(st->why, sizeof st->why, "%s", why ? why : "");
}

static h_sbx_state_t H_states[16];
static int H_nstates;

//  A namespaces sandbox (opts may adjust), ready; fails the test otherwise.
__attribute__((unused)) static sbx_t *h_sbx_opts(sbx_opts_t *o)
{
    h_sbx_state_t *st = &H_states[H_nstates++ % 16];
    memset(st, 0, sizeof *st);
    sbx_events_t ev = {h_on_ready, h_on_lost};
    int err;
    sbx_t *s = sbx_new(H_loop, o, &ev, st, &err);
    if (!s) fail_msg("sbx_new: %s", kb_strerror(err));
    if (!h_wait(&st->ready, 20000)) fail_msg("sandbox %s not ready in time", o->id);
    if (st->err) fail_msg("sandbox %s: %s (%s)", o->id, st->why, kb_strerror(st->err));
    return s;
}

static char H_state_dirs[16][300];

__attribute__((unused)) static void h_ns_opts(sbx_opts_t *o, const char *id)
{
    static int n;
    memset(o, 0, sizeof *o);
    o->id = id;
    o->isolation = SBX_ISOLATION_NAMESPACES;
    o->agent_path = H_agent;
    o->tmpl = H_host;
    char *sd = H_state_dirs[n++ % 16];
    snprintf(sd, 300, "%s/%s", H_root, id);
    o->state_dir = sd;
    //  Distinct per test binary too (ctest -j): a range shared by two sandboxes would be
    //  one set of users for both.
    //  Below 0x40000000, where kbridge's own sandboxes start (bridge/sandboxes/sandbox.c).
    o->uid_base = 0x10000000u + 65536u * (uint32_t) ((getpid() % 256) * 32 + n % 32);
    o->tmp_bytes = 64 << 20;
}

__attribute__((unused)) static sbx_t *h_sbx(const char *id)
{
    sbx_opts_t o;
    h_ns_opts(&o, id);
    return h_sbx_opts(&o);
}

__attribute__((unused)) static sbx_t *h_sbx_none(const char *id)
{
    sbx_opts_t o;
    memset(&o, 0, sizeof o);
    o.id = id;
    o.isolation = SBX_ISOLATION_NONE;
    o.agent_path = H_agent;
    o.kernel_dir = H_root;
    o.home = H_root;
    return h_sbx_opts(&o);
}

// ---------------------------------------------------------------------------------------
//  Processes

typedef struct {
    bool started, exited;
    int start_err;
    char why[256];
    proc_exit_t exit;
    char *out, *err;
    size_t nout, nerr, cap_out, cap_err;
    size_t limit;  //  keep at most this much (0: 16 MiB)
    uint64_t total;
} h_run_t;

__attribute__((unused)) static void h_append(char **b, size_t *n, size_t *cap, const char *d,
                                             size_t len, size_t limit)
{
    if (*n + len > limit) len = *n < limit ? limit - *n : 0;
    if (!len) return;
    if (*n + len + 1 > *cap) {
        *cap = (*n + len + 1) * 2;
        *b = realloc(*b, *cap);
    }
    memcpy(*b + *n, d, len);
    *n += len;
    (*b)[*n] = '\0';
}

__attribute__((unused)) static void h_on_start(proc_t *p, int err, const char *why, void *arg)
{
    (void) p;
    h_run_t *r = arg;
    r->start_err = err;
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
    r->started = true;
    if (err) r->exited = true;
}

__attribute__((unused)) static void h_on_output(proc_t *p, proc_stream_t s, const char *d,
                                                size_t len, void *arg)
{
    (void) p;
    h_run_t *r = arg;
    size_t lim = r->limit ? r->limit : (16u << 20);
    r->total += len;
    if (s == PROC_STDERR) h_append(&r->err, &r->nerr, &r->cap_err, d, len, lim);
    else h_append(&r->out, &r->nout, &r->cap_out, d, len, lim);
}

__attribute__((unused)) static void h_on_exit(proc_t *p, const proc_exit_t *e, void *arg)
{
    (void) p;
    h_run_t *r = arg;
    r->exit = *e;
    r->exited = true;
}

static const proc_events_t H_events = {h_on_start, h_on_output, h_on_exit};

__attribute__((unused)) static void h_run_free(h_run_t *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

static const char *const H_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp",
                                    "LANG=C.UTF-8", NULL};

//  Start sh -c script as user; the caller waits.
__attribute__((unused)) static proc_t *h_start(sbx_t *s, const char *user, const char *script,
                                               h_run_t *r)
{
    memset(r, 0, sizeof *r);
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    proc_opts_t o = {.argv = argv, .env = H_env, .user = user};
    int err;
    proc_t *p = proc_spawn(s, &o, &H_events, r, &err);
    if (!p) fail_msg("proc_spawn: %s", kb_strerror(err));
    return p;
}

//  Run sh -c script to its end (ms at most). r holds output and exit; free with h_run_free.
__attribute__((unused)) static void h_run(sbx_t *s, const char *user, const char *script,
                                          h_run_t *r, int ms)
{
    proc_t *p = h_start(s, user, script, r);
    if (!h_wait(&r->exited, ms)) {
        proc_destroy(&p);
        fail_msg("timed out: %s", script);
    }
    proc_destroy(&p);
}

//  Run and return stdout (caller frees); asserts exit code 0.
__attribute__((unused)) static char *h_sh(sbx_t *s, const char *user, const char *script)
{
    h_run_t r;
    h_run(s, user, script, &r, 20000);
    if (r.start_err) fail_msg("cannot start: %s", r.why);
    if (!r.exit.exited || r.exit.code != 0)
        fail_msg("`%s` failed (%s %d): %s", script, r.exit.exited ? "exit" : "signal",
                 r.exit.exited ? (int) r.exit.code : r.exit.signal, r.err ? r.err : "");
    char *out = r.out ? r.out : strdup("");
    free(r.err);
    return out;
}

//  Exit code of script (-signal if killed).
__attribute__((unused)) static int h_code(sbx_t *s, const char *user, const char *script)
{
    h_run_t r;
    h_run(s, user, script, &r, 20000);
    int c = r.start_err ? -1000 : r.exit.exited ? (int) r.exit.code : -r.exit.signal;
    h_run_free(&r);
    return c;
}

// ---------------------------------------------------------------------------------------
//  Files

typedef struct {
    bool done;
    int err;
    char why[512];
    size_t n;
    sbx_entry_t e[64];     //  copies of the first entries (strings below)
    char names[64][256];
    char targets[64][256];
    char owners[64][64];
    char meta[1024];       //  "name=value;..." of the first entry
    int fd;
} h_fop_t;

__attribute__((unused)) static void h_on_entries(int err, const char *why, const sbx_entry_t *e,
                                                 size_t n, void *arg)
{
    h_fop_t *f = arg;
    f->err = err;
    snprintf(f->why, sizeof f->why, "%s", why ? why : "");
    f->n = n;
    for (size_t i = 0; i < n && i < 64; i++) {
        f->e[i] = e[i];
        snprintf(f->names[i], 256, "%s", e[i].path);
        f->e[i].path = f->names[i];
        f->e[i].name = NULL;
        snprintf(f->targets[i], 256, "%s", e[i].symlink_target ? e[i].symlink_target : "");
        f->e[i].symlink_target = e[i].symlink_target ? f->targets[i] : NULL;
        snprintf(f->owners[i], 64, "%s:%s", e[i].owner, e[i].group);
        f->e[i].owner = f->owners[i];
        f->e[i].group = NULL;
        f->e[i].meta = NULL;
        if (i == 0) {
            f->meta[0] = '\0';
            for (size_t k = 0; e[i].meta && e[i].meta[k]; k += 2) {
                size_t l = strlen(f->meta);
                snprintf(f->meta + l, sizeof f->meta - l, "%s=%s;", e[i].meta[k], e[i].meta[k + 1]);
            }
        }
    }
    f->done = true;
}

__attribute__((unused)) static void h_on_open(int err, const char *why, int fd,
                                              const sbx_entry_t *e, void *arg)
{
    h_fop_t *f = arg;
    f->err = err;
    snprintf(f->why, sizeof f->why, "%s", why ? why : "");
    f->fd = fd;
    if (e) {
        f->n = 1;
        f->e[0] = *e;
        f->e[0].path = f->e[0].name = f->e[0].owner = f->e[0].group = f->e[0].symlink_target = NULL;
        f->e[0].meta = NULL;
    }
    f->done = true;
}

#define H_FOP(f, call)                                                                     \
    do {                                                                                   \
        memset(&(f), 0, sizeof(f));                                                        \
        (f).fd = -1;                                                                       \
        sbx_req_t *req_ = (call);                                                          \
        assert_non_null(req_);                                                             \
        if (!h_wait(&(f).done, 20000)) {                                                   \
            sbx_req_cancel(req_);                                                          \
            fail_msg("file operation timed out");                                          \
        }                                                                                  \
    } while (0)

#endif
