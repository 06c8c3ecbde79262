/*  Sandbox tests: cgroup limits and lifecycle: a fork bomb hits the pids limit, too much
    memory is OOM-killed and says so, freeze stops a counter and thaw resumes it, destroy
    leaves no process, mount or cgroup behind, stale cgroups are reaped. */
#include "harness.h"

#include <dirent.h>
#include <sys/statfs.h>

static bool s_ok;
static char s_cg[64];

static int setup(void **state)
{
    (void) state;
    h_setup_root("limits");
    struct statfs sf;
    s_ok = geteuid() == 0 && statfs("/sys/fs/cgroup", &sf) == 0;
    snprintf(s_cg, sizeof s_cg, "kbtest%d", (int) getpid());
    return 0;
}

static int teardown(void **state)
{
    (void) state;
    sbx_reap_stale(s_cg);
    char p[256];
    const char *h[] = {"memory", "pids", "cpu", "cpuacct", "freezer", ""};
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s%s%s", h[i], *h[i] ? "/" : "", s_cg);
        rmdir(p);
    }
    h_teardown_root();
    return 0;
}

#define NEED_CG()                                                                          \
    do {                                                                                   \
        if (!s_ok) skip();                                                                 \
    } while (0)

static sbx_t *s_limited(const char *id, uint64_t mem, uint32_t pids, char *cgpath, size_t n)
{
    sbx_opts_t o;
    h_ns_opts(&o, id);
    snprintf(cgpath, n, "%s/%s", s_cg, id);
    o.cgroup = cgpath;
    o.memory_bytes = mem;
    o.pids = pids;
    o.cpu_millis = 1000;
    return h_sbx_opts(&o);
}

//  Any process whose host uid is in [base, base + 65536)?
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

static bool s_cgroup_exists(const char *path)
{
    char p[300];
    struct statfs sf;
    statfs("/sys/fs/cgroup", &sf);
    if (sf.f_type == 0x63677270) snprintf(p, sizeof p, "/sys/fs/cgroup/%s", path);
    else snprintf(p, sizeof p, "/sys/fs/cgroup/pids/%s", path);
    struct stat st;
    return stat(p, &st) == 0;
}

static void test_fork_bomb(void **state)
{
    (void) state;
    NEED_CG();
    char cg[128];
    sbx_t *s = s_limited("bomb", 256u << 20, 48, cg, sizeof cg);
    h_run_t r;
    proc_t *p = h_start(s, "user", "bomb() { bomb | bomb & }; bomb; sleep 5", &r);
    //  it reaches the limit
    sbx_stats_t st;
    uint32_t most = 0;
    uint64_t t0 = h_now_ms();
    do {
        h_spin(10);
        sbx_stats(s, &st);
        if (st.pids > most) most = st.pids;
    } while (most < 44 && h_now_ms() - t0 < 15000);
    if (most < 44 || most > 48) fail_msg("pids peaked at %u (limit 48)", most);
    //  the host goes on
    assert_int_equal(system("true"), 0);
    proc_destroy(&p);
    h_run_free(&r);
    //  and so does the sandbox, once the bomb is gone
    t0 = h_now_ms();
    int code;
    do {
        h_spin(20);
        code = h_code(s, "user", "echo ok >/dev/null");
    } while (code != 0 && h_now_ms() - t0 < 10000);
    assert_int_equal(code, 0);
    sbx_destroy(&s);
    t0 = h_now_ms();
    while (s_cgroup_exists(cg) && h_now_ms() - t0 < 10000) h_spin(20);
    assert_false(s_cgroup_exists(cg));
}

static void test_oom(void **state)
{
    (void) state;
    NEED_CG();
    char cg[128];
    sbx_t *s = s_limited("oom", 64u << 20, 64, cg, sizeof cg);
    h_run_t r;
    h_run(s, "user", "exec python3 -c 'a = bytearray(256 * 1024 * 1024); print(len(a))'", &r,
          30000);
    assert_false(r.exit.exited);
    assert_int_equal(r.exit.signal, SIGKILL);
    assert_true(r.exit.oom_killed);
    h_run_free(&r);
    sbx_stats_t st;
    assert_int_equal(sbx_stats(s, &st), 0);
    assert_true(st.oom_kills >= 1);
    assert_int_equal(st.memory_limit, 64u << 20);
    //  a plain SIGKILL is not an OOM kill; the sandbox goes on
    h_run(s, "user", "kill -9 $$", &r, 10000);
    assert_int_equal(r.exit.signal, SIGKILL);
    assert_false(r.exit.oom_killed);
    h_run_free(&r);
    sbx_destroy(&s);
    h_spin(50);
}

static long s_read_counter(sbx_t *s)
{
    char p[128];
    snprintf(p, sizeof p, "%s/../../tmp/counter", sbx_kernel_dir(s));  //  /proc/<pid>/root/tmp
    FILE *f = fopen(p, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

static void test_freeze_thaw_stats(void **state)
{
    (void) state;
    NEED_CG();
    char cg[128];
    sbx_t *s = s_limited("frz", 128u << 20, 64, cg, sizeof cg);
    h_run_t r;
    proc_t *p = h_start(s, "user", "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; "
                                   "mv /tmp/counter.new /tmp/counter; sleep 0.01; done", &r);
    uint64_t t0 = h_now_ms();
    while (s_read_counter(s) < 5 && h_now_ms() - t0 < 5000) h_spin(10);
    assert_int_equal(sbx_freeze(s), 0);
    //  (freezing completes asynchronously: under load, after sbx_freeze returns)
    h_spin(200);
    long a = s_read_counter(s);
    h_spin(300);
    long b = s_read_counter(s);
    assert_int_equal(a, b);
    sbx_stats_t st;
    assert_int_equal(sbx_stats(s, &st), 0);
    assert_true(st.memory_bytes > 0);
    assert_true(st.cpu_ns > 0);
    assert_true(st.pids >= 2);
    assert_int_equal(sbx_thaw(s), 0);
    t0 = h_now_ms();
    while (s_read_counter(s) <= b + 3 && h_now_ms() - t0 < 5000) h_spin(10);
    assert_true(s_read_counter(s) > b + 3);
    proc_destroy(&p);
    h_run_free(&r);
    //  without a cgroup there is no freezer
    sbx_t *n = h_sbx_none("nofrz");
    assert_int_equal(sbx_freeze(n), KB_EINVAL);
    assert_int_equal(sbx_stats(n, &st), KB_EINVAL);
    sbx_destroy(&n);
    //  destroy while frozen still cleans up
    assert_int_equal(sbx_freeze(s), 0);
    sbx_destroy(&s);
    t0 = h_now_ms();
    while (s_cgroup_exists(cg) && h_now_ms() - t0 < 10000) h_spin(20);
    assert_false(s_cgroup_exists(cg));
}

//  Nothing left: no process of the sandbox's uids, no cgroup, no mount namespace (its
//  last process is gone); the state stays until sbx_remove_state.
static bool s_removed_done;
static int s_removed_err;

static void s_removed(int err, void *arg)
{
    s_removed_err = err;
    *(bool *) arg = true;
}

static void test_destroy_leaves_nothing(void **state)
{
    (void) state;
    NEED_CG();
    char cg[128];
    sbx_opts_t o;
    h_ns_opts(&o, "gone");
    snprintf(cg, sizeof cg, "%s/gone", s_cg);
    o.cgroup = cg;
    o.internet = access("/usr/bin/pasta", X_OK) == 0;
    o.pids = 64;
    sbx_t *s = h_sbx_opts(&o);
    //  (their output elsewhere: on_exit waits for EOF from everything holding the pipes)
    char *out = h_sh(s, "user",
                     "exec >/dev/null 2>&1; sleep 1000 & sleep 1000 & setsid sleep 1000 & "
                     "(sleep 1000 &) ; echo data > /home/user/keep.txt; echo started");
    free(out);
    char mntns[64];
    char link[128];
    int apid = 0;
    assert_int_equal(sscanf(sbx_kernel_dir(s), "/proc/%d/", &apid), 1);
    snprintf(link, sizeof link, "/proc/%d/ns/mnt", apid);
    ssize_t n = readlink(link, mntns, sizeof mntns - 1);
    assert_true(n > 0);
    mntns[n] = '\0';
    assert_true(s_count_uid_range(o.uid_base) >= 5);
    sbx_destroy(&s);
    uint64_t t0 = h_now_ms();
    while ((s_count_uid_range(o.uid_base) || s_cgroup_exists(cg)) && h_now_ms() - t0 < 10000)
        h_spin(20);
    assert_int_equal(s_count_uid_range(o.uid_base), 0);
    assert_false(s_cgroup_exists(cg));
    //  no process of the sandbox is still in that mount namespace (a namespace's inode
    //  number is reused once it is freed: another test's sandbox may have it by now, so a
    //  process there counts only if it runs as one of this sandbox's uids)
    char cmd[300];
    snprintf(cmd, sizeof cmd,
             "for p in /proc/[0-9]*; do [ \"$(readlink $p/ns/mnt)\" = '%s' ] && stat -c %%u $p; "
             "done 2>/dev/null",
             mntns);
    FILE *ps = popen(cmd, "r");
    assert_non_null(ps);
    unsigned long uid;
    int left = 0;
    while (fscanf(ps, "%lu", &uid) == 1)
        if (uid >= o.uid_base && uid < (unsigned long) o.uid_base + 65536u) left++;
    pclose(ps);
    assert_int_equal(left, 0);
    //  the state survives, and a new sandbox on it sees the file
    s = h_sbx_opts(&o);
    out = h_sh(s, "user", "cat /home/user/keep.txt");
    assert_string_equal(out, "data\n");
    free(out);
    sbx_destroy(&s);
    h_spin(50);
    //  remove it (the sandbox is gone first)
    t0 = h_now_ms();
    while (s_count_uid_range(o.uid_base) && h_now_ms() - t0 < 10000) h_spin(20);
    s_removed_err = 1;
    sbx_remove_state(H_loop, o.state_dir, s_removed, &s_removed_done);
    assert_true(h_wait(&s_removed_done, 10000));
    assert_int_equal(s_removed_err, 0);
    struct stat st;
    assert_int_not_equal(stat(o.state_dir, &st), 0);
}

static void test_reap_stale(void **state)
{
    (void) state;
    NEED_CG();
    //  What a previous kbridge left: a cgroup with a process in it.
    char dir[256], procs[300];
    struct statfs sf;
    statfs("/sys/fs/cgroup", &sf);
    bool v2 = sf.f_type == 0x63677270;
    snprintf(dir, sizeof dir, "/sys/fs/cgroup/%s%s/stale1", v2 ? "" : "pids/", s_cg);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    assert_int_equal(system(cmd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        snprintf(procs, sizeof procs, "%s/cgroup.procs", dir);
        FILE *f = fopen(procs, "w");
        if (f) {
            fprintf(f, "0\n");
            fclose(f);
        }
        execl("/bin/sleep", "sleep", "1000", (char *) NULL);
        _exit(1);
    }
    uint64_t t0 = h_now_ms();
    int count = 0;
    while (count == 0 && h_now_ms() - t0 < 5000) {
        snprintf(procs, sizeof procs, "%s/cgroup.procs", dir);
        FILE *f = fopen(procs, "r");
        int x;
        count = 0;
        while (f && fscanf(f, "%d", &x) == 1) count++;
        if (f) fclose(f);
        if (!count) h_spin(5);
    }
    assert_int_equal(count, 1);
    sbx_reap_stale(s_cg);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    struct stat sb;
    assert_int_not_equal(stat(dir, &sb), 0);
}

//  The cgroup v2 code paths (join, freeze, kill, remove, reap) on this host's cgroup2
//  mount, when it has one (hybrid: no controllers there, so no limits).
static void test_cgroup_v2_paths(void **state)
{
    (void) state;
    NEED_CG();
    struct statfs sf;
    if (statfs("/sys/fs/cgroup/unified", &sf) != 0 || sf.f_type != 0x63677270) skip();
    setenv("KBRIDGE_CGROUP2_ROOT", "/sys/fs/cgroup/unified", 1);
    char cg[128];
    sbx_opts_t o;
    h_ns_opts(&o, "v2");
    snprintf(cg, sizeof cg, "%s/v2", s_cg);
    o.cgroup = cg;
    sbx_t *s = h_sbx_opts(&o);
    char p[300];
    snprintf(p, sizeof p, "/sys/fs/cgroup/unified/%s", cg);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    h_run_t r;
    proc_t *pr = h_start(s, "user", "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; "
                                    "mv /tmp/counter.new /tmp/counter; sleep 0.01; done", &r);
    uint64_t t0 = h_now_ms();
    while (s_read_counter(s) < 5 && h_now_ms() - t0 < 5000) h_spin(10);
    assert_int_equal(sbx_freeze(s), 0);
    long a = s_read_counter(s);
    h_spin(200);
    assert_int_equal(s_read_counter(s), a);
    assert_int_equal(sbx_thaw(s), 0);
    t0 = h_now_ms();
    while (s_read_counter(s) <= a + 3 && h_now_ms() - t0 < 5000) h_spin(10);
    assert_true(s_read_counter(s) > a + 3);
    proc_destroy(&pr);
    h_run_free(&r);
    assert_int_equal(sbx_freeze(s), 0);  //  destroyed frozen: still cleaned up
    sbx_destroy(&s);
    t0 = h_now_ms();
    while ((stat(p, &st) == 0 || s_count_uid_range(o.uid_base)) && h_now_ms() - t0 < 10000)
        h_spin(20);
    assert_int_not_equal(stat(p, &st), 0);
    assert_int_equal(s_count_uid_range(o.uid_base), 0);
    snprintf(p, sizeof p, "/sys/fs/cgroup/unified/%s", s_cg);
    rmdir(p);
    unsetenv("KBRIDGE_CGROUP2_ROOT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fork_bomb),
        cmocka_unit_test(test_oom),
        cmocka_unit_test(test_freeze_thaw_stats),
        cmocka_unit_test(test_destroy_leaves_nothing),
        cmocka_unit_test(test_reap_stale),
        cmocka_unit_test(test_cgroup_v2_paths),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
