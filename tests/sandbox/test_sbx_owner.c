/*  Sandbox tests: when kbridge dies, even by SIGKILL, nothing it started survives. The
    owner is this program run again as a child (--owner): it starts a namespaces sandbox
    and the default one, each with processes that try to outlive it (background, setsid,
    double fork), reports what to look for, and is then killed with SIGKILL. */
#include "harness.h"

#include <dirent.h>
#include <poll.h>
#include <sys/statfs.h>

static int s_count_uid_range(uid_t base)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        char p[300], line[256];
        snprintf(p, sizeof p, "/proc/%s/status", de->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        while (fgets(line, sizeof line, f)) {
            unsigned u;
            if (sscanf(line, "Uid: %u", &u) == 1) {
                if (u >= base && u - base < 65536) n++;
                break;
            }
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

static bool s_alive(int pid)
{
    if (kill(pid, 0) != 0) return false;
    //  a zombie waiting for its parent is gone for our purpose
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    FILE *f = fopen(p, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *rp = strrchr(buf, ')');
    return !(rp && rp[1] == ' ' && rp[2] == 'Z');
}

static void s_tick(uv_timer_t *t)
{
    (void) t;
}

static int s_owner(const char *pidfile, const char *cg)
{
    h_setup_root("owner");
    bool root = geteuid() == 0;
    uint32_t base = 0;
    int nsagent = 0;
    sbx_t *ns = NULL;
    if (root) {
        sbx_opts_t o;
        h_ns_opts(&o, "ownns");
        o.uid_base = 1500000000u;
        o.internet = access("/usr/bin/pasta", X_OK) == 0;
        struct statfs sf;
        if (statfs("/sys/fs/cgroup", &sf) == 0) o.cgroup = cg;
        base = o.uid_base;
        ns = h_sbx_opts(&o);
        char *out =
            h_sh(ns, "user",
                 "exec >/dev/null 2>&1; sleep 1000 & setsid sleep 1000 & (sleep 1000 &); echo");
        free(out);
        sscanf(sbx_kernel_dir(ns), "/proc/%d/", &nsagent);
    }
    sbx_t *none = h_sbx_none("ownnone");
    char script[512];
    snprintf(script, sizeof script,
             "exec >/dev/null 2>&1; sleep 1000 & echo $! >> %s; setsid sleep 1000 & echo $! >> %s; "
             "(sleep 1000 & echo $! >> %s); echo",
             pidfile, pidfile, pidfile);
    char *out = h_sh(none, NULL, script);
    free(out);
    h_run_t r;
    proc_t *p = h_start(none, NULL, "echo $$; exec sleep 1000", &r);
    while (!r.out) uv_run(H_loop, UV_RUN_ONCE);
    printf("base=%u nsagent=%d noneagent=%d nonepid=%d\n", base, nsagent, sbx_agent_pid(none),
           atoi(r.out));
    fflush(stdout);
    (void) p;
    uv_timer_t t;
    uv_timer_init(H_loop, &t);
    uv_timer_start(&t, s_tick, 1000, 1000);
    uv_run(H_loop, UV_RUN_DEFAULT);  //  until SIGKILL
    return 0;
}

static void test_owner_sigkill(void **state)
{
    (void) state;
    char pidfile[128], cg[64];
    snprintf(pidfile, sizeof pidfile, "/tmp/kbsbx-owner-%d.pids", (int) getpid());
    snprintf(cg, sizeof cg, "kbtest-owner%d/ownns", (int) getpid());
    unlink(pidfile);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t child = fork();
    if (child == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execl("/proc/self/exe", "test_sbx_owner", "--owner", pidfile, cg, (char *) NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[512] = "";
    size_t n = 0;
    uint64_t t0 = h_now_ms();
    while (!strchr(line, '\n') && h_now_ms() - t0 < 30000) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            ssize_t k = read(pfd[0], line + n, sizeof line - 1 - n);
            if (k <= 0) break;
            n += (size_t) k;
            line[n] = '\0';
        }
    }
    close(pfd[0]);
    unsigned base = 0;
    int nsagent = 0, noneagent = 0, nonepid = 0;
    if (sscanf(line, "base=%u nsagent=%d noneagent=%d nonepid=%d", &base, &nsagent, &noneagent,
               &nonepid) != 4) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        fail_msg("the owner did not start: \"%s\"", line);
    }
    int pids[16], np = 0;
    FILE *f = fopen(pidfile, "r");
    while (f && np < 16 && fscanf(f, "%d", &pids[np]) == 1) np++;
    if (f) fclose(f);
    assert_int_equal(np, 3);
    for (int i = 0; i < np; i++) assert_true(s_alive(pids[i]));
    assert_true(s_alive(nonepid));
    assert_true(s_alive(noneagent));
    if (base) assert_true(s_count_uid_range(base) >= 4);

    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    t0 = h_now_ms();
    bool any = true;
    while (any && h_now_ms() - t0 < 10000) {
        any = s_alive(nonepid) || s_alive(noneagent) || (base && s_count_uid_range(base) > 0) ||
              (nsagent && s_alive(nsagent));
        for (int i = 0; i < np; i++) any = any || s_alive(pids[i]);
        if (any) usleep(10000);
    }
    for (int i = 0; i < np; i++) assert_false(s_alive(pids[i]));
    assert_false(s_alive(nonepid));
    assert_false(s_alive(noneagent));
    if (base) assert_int_equal(s_count_uid_range(base), 0);
    unlink(pidfile);
    //  what is left is the empty cgroup; the next kbridge reaps it
    char parent[64];
    snprintf(parent, sizeof parent, "kbtest-owner%d", (int) getpid());
    sbx_reap_stale(parent);
    char d[256];
    const char *h[] = {"memory", "pids", "cpu", "cpuacct", "freezer", ""};
    for (int i = 0; i < 6; i++) {
        snprintf(d, sizeof d, "/sys/fs/cgroup/%s%s%s", h[i], *h[i] ? "/" : "", parent);
        rmdir(d);
    }
    char state_dir[256];
    snprintf(state_dir, sizeof state_dir, "rm -rf /var/tmp/kbsbx-owner-%d", (int) child);
    assert_int_equal(system(state_dir), 0);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--owner") == 0) return s_owner(argv[2], argv[3]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_owner_sigkill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
