/*  sandbox_bench - how long sandboxes and processes take, measured through the real API.

        sandbox_bench [-n N] [--none] [--cgroup] [--internet] [--agent PATH]

    Prints the median (and min/max) of N runs, each cold (a new state directory):
      create -> ready    sbx_new until on_ready
      destroy            sbx_destroy until everything is gone (agent reaped, cgroup removed)
      spawn true         proc_spawn of /bin/true until on_exit
    Namespaces isolation needs root; --none measures the default sandbox.
*/
#include "base/kberr.h"
#include "base/klog.h"
#include "sandbox/proc.h"
#include "sandbox/sbx.h"
#include "sandbox/template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uv_loop_t *L;
static bool s_flag;
static int s_err;

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

static void on_ready(sbx_t *s, int err, const char *why, void *arg)
{
    (void) s;
    (void) arg;
    s_err = err;
    if (err) fprintf(stderr, "sandbox_bench: %s\n", why);
    s_flag = true;
}

static void on_exit_cb(proc_t *p, const proc_exit_t *e, void *arg)
{
    (void) p;
    (void) e;
    (void) arg;
    s_flag = true;
}

static void on_start(proc_t *p, int err, const char *why, void *arg)
{
    (void) p;
    (void) arg;
    if (err) {
        fprintf(stderr, "sandbox_bench: %s\n", why);
        s_err = err;
        s_flag = true;
    }
}

static void s_run_until_flag(void)
{
    while (!s_flag) uv_run(L, UV_RUN_ONCE);
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

static void s_report(const char *what, double *v, int n)
{
    qsort(v, (size_t) n, sizeof *v, s_cmp);
    printf("%-16s median %8.2f ms   min %8.2f   max %8.2f   (n=%d)\n", what, v[n / 2], v[0],
           v[n - 1], n);
}

int main(int argc, char **argv)
{
    int n = 20;
    bool none = false, cg = false, inet = false;
    const char *agent = getenv("KBRIDGE_AGENT");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--none")) none = true;
        else if (!strcmp(argv[i], "--cgroup")) cg = true;
        else if (!strcmp(argv[i], "--internet")) inet = true;
        else if (!strcmp(argv[i], "--agent") && i + 1 < argc) agent = argv[++i];
        else {
            fprintf(stderr, "usage: %s [-n N] [--none] [--cgroup] [--internet] [--agent PATH]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!agent) agent = "build/kbridge-agent";
    if (n < 1 || n > 1000) n = 20;
    klog_set_level(KLOG_WARN);
    if (!none) {
        char why[512];
        if (sbx_probe(agent, why, sizeof why) < 0) {
            fprintf(stderr, "sandbox_bench: namespaces unavailable: %s\n", why);
            return 1;
        }
    }
    L = uv_default_loop();
    char root[128];
    snprintf(root, sizeof root, "/var/tmp/kbbench-%d", (int) getpid());
    mkdir(root, 0700);
    const char *hidden[] = {root, NULL};
    int err;
    template_t *host = template_new_host("base", hidden, &err);
    double *create = calloc((size_t)n, sizeof *create),
           *destroy = calloc((size_t)n, sizeof *destroy);
    double *spawn = calloc((size_t) n * 5, sizeof *spawn);
    int ns = 0;
    for (int i = 0; i < n; i++) {
        char id[32], sd[256], cgp[64];
        snprintf(id, sizeof id, "bench%d", i);
        snprintf(sd, sizeof sd, "%s/%s", root, id);
        snprintf(cgp, sizeof cgp, "kbbench%d/%s", (int) getpid(), id);
        sbx_opts_t o = {.id = id, .agent_path = agent, .tmpl = host, .state_dir = sd,
                        .uid_base = 1200000000u + 65536u * (uint32_t) (i % 100), .internet = inet,
                        .isolation = none ? SBX_ISOLATION_NONE : SBX_ISOLATION_NAMESPACES,
                        .kernel_dir = root, .home = root, .cgroup = cg ? cgp : NULL,
                        .memory_bytes = cg ? 512u << 20 : 0, .pids = cg ? 256 : 0};
        sbx_events_t ev = {on_ready, NULL};
        s_flag = false;
        s_err = 0;
        double t0 = s_now();
        sbx_t *s = sbx_new(L, &o, &ev, NULL, &err);
        if (!s) {
            fprintf(stderr, "sandbox_bench: sbx_new: %s\n", kb_strerror(err));
            return 1;
        }
        s_run_until_flag();
        create[i] = s_now() - t0;
        if (s_err) return 1;
        for (int k = 0; k < 5; k++) {
            const char *args[] = {"/bin/true", NULL};
            const char *env[] = {"PATH=/usr/bin:/bin", NULL};
            proc_opts_t po = {.argv = args, .env = env, .user = none ? NULL : "user"};
            proc_events_t pe = {on_start, NULL, on_exit_cb};
            s_flag = false;
            t0 = s_now();
            proc_t *p = proc_spawn(s, &po, &pe, NULL, &err);
            s_run_until_flag();
            spawn[ns++] = s_now() - t0;
            proc_destroy(&p);
        }
        t0 = s_now();
        sbx_destroy(&s);
        while (uv_loop_alive(L)) uv_run(L, UV_RUN_ONCE);
        destroy[i] = s_now() - t0;
    }
    printf("sandbox_bench: %s%s%s, %d sandboxes (each cold: a new state directory)\n",
           none ? "isolation none" : "isolation namespaces", cg ? ", cgroup" : "",
           inet ? ", internet (pasta)" : "", n);
    s_report("create -> ready", create, n);
    s_report("destroy", destroy, n);
    s_report("spawn true", spawn, ns);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) fprintf(stderr, "sandbox_bench: could not remove %s\n", root);
    if (cg) {
        //  each sandbox removed its own group; the parent is ours to remove
        const char *h[] = {"memory", "pids", "cpu", "cpuacct", "freezer", ""};
        for (int i = 0; i < 6; i++) {
            snprintf(cmd, sizeof cmd, "/sys/fs/cgroup/%s%skbbench%d", h[i], *h[i] ? "/" : "",
                     (int)getpid());
            rmdir(cmd);
        }
    }
    template_destroy(&host);
    free(create);
    free(destroy);
    free(spawn);
    return 0;
}
