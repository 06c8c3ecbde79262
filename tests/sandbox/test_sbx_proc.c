/*  Sandbox tests: processes (both isolations): stdio, exit, exec failures, signals, pty,
    flow control, bytes as bytes. */
#include "harness.h"

#include <sys/resource.h>

static bool s_root;

static int setup(void **state)
{
    (void) state;
    h_setup_root("proc");
    s_root = geteuid() == 0;
    return 0;
}

static int teardown(void **state)
{
    (void) state;
    h_teardown_root();
    return 0;
}

#define NEED_ROOT()                                                                        \
    do {                                                                                   \
        if (!s_root) skip();                                                               \
    } while (0)

static void destroy_sbx(sbx_t **s)
{
    sbx_destroy(s);
    h_spin(30);
}

//  The default sandbox: processes on the host, as us.
static void test_none_basics(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("none1");
    assert_int_equal(sbx_isolation(s), SBX_ISOLATION_NONE);
    char *out = h_sh(s, NULL, "echo hello; echo oops >&2; pwd; echo $FOO; id -u");
    char expect[512];
    snprintf(expect, sizeof expect, "hello\n%s\n\n%d\n", H_root, (int) getuid());
    assert_string_equal(out, expect);
    free(out);
    //  the environment is exactly what we pass
    out = h_sh(s, NULL, "env | sort");
    assert_non_null(strstr(out, "HOME=/tmp\n"));
    assert_non_null(strstr(out, "PATH=/usr/local/bin:/usr/bin:/bin\n"));
    assert_null(strstr(out, "KBRIDGE_AGENT"));
    free(out);
    assert_int_equal(h_code(s, NULL, "exit 7"), 7);
    assert_int_equal(h_code(s, NULL, "kill -9 $$"), -9);
    assert_int_equal(sbx_agent_pid(s) > 1, 1);
    destroy_sbx(&s);
}

static void test_exec_failures(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("none2");
    h_run_t r;
    memset(&r, 0, sizeof r);
    const char *argv[] = {"no-such-program-kb", NULL};
    proc_opts_t o = {.argv = argv, .env = H_env};
    int err;
    proc_t *p = proc_spawn(s, &o, &H_events, &r, &err);
    assert_non_null(p);
    assert_true(h_wait(&r.started, 5000));
    assert_int_equal(r.start_err, KB_ENOTFOUND);
    proc_destroy(&p);

    memset(&r, 0, sizeof r);
    const char *argv2[] = {"/bin/true", NULL};
    proc_opts_t o2 = {.argv = argv2, .env = H_env, .cwd = "/nonexistent/dir"};
    p = proc_spawn(s, &o2, &H_events, &r, &err);
    assert_true(h_wait(&r.started, 5000));
    assert_int_equal(r.start_err, KB_ENOTDIR);
    proc_destroy(&p);

    memset(&r, 0, sizeof r);
    const char *argv3[] = {"/etc/passwd", NULL};  //  not executable
    proc_opts_t o3 = {.argv = argv3, .env = H_env};
    p = proc_spawn(s, &o3, &H_events, &r, &err);
    assert_true(h_wait(&r.started, 5000));
    assert_int_equal(r.start_err, KB_EACCES);
    proc_destroy(&p);

    //  bad options are refused at once
    const char *empty[] = {NULL};
    proc_opts_t o4 = {.argv = empty};
    assert_null(proc_spawn(s, &o4, &H_events, &r, &err));
    assert_int_equal(err, KB_EINVAL);
    destroy_sbx(&s);
}

static void test_stdin_and_close(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("none3");
    h_run_t r;
    memset(&r, 0, sizeof r);
    const char *argv[] = {"/bin/cat", NULL};
    proc_opts_t o = {.argv = argv, .env = H_env, .stdin_pipe = true};
    int err;
    proc_t *p = proc_spawn(s, &o, &H_events, &r, &err);
    assert_true(h_wait(&r.started, 5000));
    assert_int_equal(r.start_err, 0);
    assert_int_equal(proc_write(p, "abc\n", 4), 0);
    assert_int_equal(proc_write(p, "def", 3), 0);
    assert_int_equal(proc_close_stdin(p), 0);
    assert_true(h_wait(&r.exited, 5000));
    assert_string_equal(r.out, "abc\ndef");
    assert_true(r.exit.exited);
    assert_int_equal(r.exit.code, 0);
    assert_int_equal(proc_write(p, "x", 1), KB_EDEAD);
    proc_destroy(&p);
    h_run_free(&r);

    //  no stdin pipe: stdin is /dev/null, writes are refused
    proc_t *q = h_start(s, NULL, "cat; echo done", &r);
    assert_true(h_wait(&r.exited, 5000));
    assert_string_equal(r.out, "done\n");
    assert_int_equal(proc_write(q, "x", 1), KB_EINVAL);
    assert_int_equal(proc_close_stdin(q), KB_EINVAL);
    proc_destroy(&q);
    h_run_free(&r);
    destroy_sbx(&s);
}

static void test_signals_and_terminate(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("none4");
    h_run_t r;
    //  SIGTERM ignored: terminate escalates to SIGKILL
    proc_t *p = h_start(s, NULL, "trap '' TERM; echo ready; while :; do sleep 0.05; done", &r);
    uint64_t t0 = h_now_ms();
    while (!r.out && h_now_ms() - t0 < 5000) h_spin(10);
    assert_non_null(r.out);
    assert_true(proc_running(p));
    proc_terminate(p, 200);
    assert_true(h_wait(&r.exited, 5000));
    assert_false(r.exit.exited);
    assert_int_equal(r.exit.signal, SIGKILL);
    assert_int_equal(proc_signal(p, SIGTERM), KB_EDEAD);
    assert_int_equal(proc_signal(p, 0), KB_EINVAL);
    proc_destroy(&p);
    h_run_free(&r);

    //  a signal to the group reaches the children too; to the leader, only it
    p = h_start(s, NULL, "sleep 30 & echo $!; wait", &r);
    t0 = h_now_ms();
    while (!r.out && h_now_ms() - t0 < 5000) h_spin(10);
    int child = atoi(r.out);
    assert_true(child > 0);
    assert_int_equal(proc_signal(p, SIGKILL), 0);
    assert_true(h_wait(&r.exited, 5000));
    uint64_t end = h_now_ms() + 2000;
    while (kill(child, 0) == 0 && h_now_ms() < end) h_spin(5);
    assert_int_not_equal(kill(child, 0), 0);
    proc_destroy(&p);
    h_run_free(&r);
    destroy_sbx(&s);
}

static void test_pty(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("none5");
    h_run_t r;
    memset(&r, 0, sizeof r);
    const char *argv[] = {"/bin/sh", "-c",
                          "tty >/dev/null && echo TTY; stty size; read x; echo got:$x; stty size",
                          NULL};
    proc_opts_t o = {.argv = argv, .env = H_env, .pty = true, .cols = 100, .rows = 30};
    int err;
    proc_t *p = proc_spawn(s, &o, &H_events, &r, &err);
    assert_true(h_wait(&r.started, 5000));
    assert_int_equal(r.start_err, 0);
    uint64_t t0 = h_now_ms();
    while ((!r.out || !strstr(r.out, "30 100")) && h_now_ms() - t0 < 5000) h_spin(10);
    assert_non_null(strstr(r.out, "TTY"));
    assert_non_null(strstr(r.out, "30 100"));
    assert_int_equal(proc_resize(p, 120, 40), 0);
    assert_int_equal(proc_resize(p, 0, 40), KB_EINVAL);
    assert_int_equal(proc_write(p, "hi\n", 3), 0);
    assert_true(h_wait(&r.exited, 5000));
    assert_non_null(strstr(r.out, "got:hi"));
    assert_non_null(strstr(r.out, "40 120"));
    proc_destroy(&p);
    h_run_free(&r);
    //  resize needs a pty
    p = h_start(s, NULL, "true", &r);
    assert_int_equal(proc_resize(p, 10, 10), KB_EINVAL);
    assert_true(h_wait(&r.exited, 5000));
    proc_destroy(&p);
    h_run_free(&r);
    destroy_sbx(&s);
}

//  A UTF-8 character written in two halves arrives as the same bytes.
static void test_bytes_are_bytes(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("none6");
    h_run_t r;
    proc_t *p = h_start(
        s, NULL, "printf '\\342\\202'; sleep 0.2; printf '\\254\\n'; printf '\\377\\000z'", &r);
    assert_true(h_wait(&r.exited, 5000));
    assert_int_equal(r.nout, 7);
    assert_memory_equal(r.out, "\xe2\x82\xac\n\xff\0z", 7);
    proc_destroy(&p);
    h_run_free(&r);
    destroy_sbx(&s);
}

static size_t s_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %zu", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

typedef struct {
    proc_t *p;
    uint64_t bytes;
    bool exited;
    proc_exit_t ex;
    bool bad;
} flow_t;

static void flow_output(proc_t *p, proc_stream_t st, const char *d, size_t n, void *arg)
{
    (void) p;
    (void) st;
    flow_t *f = arg;
    //  `yes` writes "y\n" forever: any other byte means something was lost or mangled
    for (size_t i = 0; i < n; i++)
        if (d[i] != ((f->bytes + i) % 2 ? '\n' : 'y')) f->bad = true;
    f->bytes += n;
}

static void flow_exit(proc_t *p, const proc_exit_t *e, void *arg)
{
    (void) p;
    flow_t *f = arg;
    f->ex = *e;
    f->exited = true;
}

//  1 GiB of `yes` through one process, paused and resumed: all of it arrives, and our
//  memory stays flat (pausing stops reading; the pipe fills; yes blocks).
static void run_flow(sbx_t *s)
{
    //  Static, not on the stack: a failed assert longjmps out with the process still
    //  running, and its callbacks must not write into a later test's frame (ASan saw
    //  that after a timeout under load).
    static flow_t f;
    memset(&f, 0, sizeof f);
    proc_events_t ev = {NULL, flow_output, flow_exit};
    const char *argv[] = {"/bin/sh", "-c", "yes | head -c 1073741824", NULL};
    proc_opts_t o = {.argv = argv, .env = H_env};
    int err;
    f.p = proc_spawn(s, &o, &ev, &f, &err);
    assert_non_null(f.p);
    size_t rss0 = s_rss_kb();
    //  let some flow, then pause
    uint64_t t0 = h_now_ms();
    while (f.bytes < (64u << 20) && h_now_ms() - t0 < 20000) uv_run(H_loop, UV_RUN_ONCE);
    proc_pause_output(f.p);
    uint64_t at_pause = f.bytes;
    h_spin(300);
    //  paused: at most what was already read in this turn arrives
    assert_true(f.bytes - at_pause <= 65536 * 2);
    uint64_t during = f.bytes;
    h_spin(200);
    assert_int_equal(f.bytes, during);
    proc_resume_output(f.p);
    for (int i = 0; i < 3; i++) {  //  a few more pauses on the way
        uint64_t target = f.bytes + (200u << 20);
        t0 = h_now_ms();
        while (f.bytes < target && !f.exited && h_now_ms() - t0 < 30000)
            uv_run(H_loop, UV_RUN_ONCE);
        proc_pause_output(f.p);
        h_spin(50);
        proc_resume_output(f.p);
    }
    assert_true(h_wait(&f.exited, 60000));
    assert_false(f.bad);
    assert_int_equal(f.bytes, 1073741824ull);
    assert_true(f.ex.exited);
    assert_int_equal(f.ex.code, 0);
    size_t rss1 = s_rss_kb();
    //  flat: a few MiB of slack for allocator noise, never the GiB that went through
    assert_true(rss1 < rss0 + 16 * 1024);
    proc_destroy(&f.p);
}

static void test_flow_control_none(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("none7");
    run_flow(s);
    destroy_sbx(&s);
}

static void test_ns_identity(void **state)
{
    (void) state;
    NEED_ROOT();
    sbx_t *s = h_sbx("ident");
    assert_int_equal(sbx_isolation(s), SBX_ISOLATION_NAMESPACES);
    assert_int_equal(sbx_agent_pid(s), 1);
    char *out = h_sh(s, "user", "id; hostname; echo $HOME; pwd");
    assert_string_equal(
        out, "uid=1000(user) gid=1000(user) groups=1000(user)\nident\n/tmp\n/home/user\n");
    free(out);
    out = h_sh(s, "root", "id -u; pwd; grep -c . /etc/shadow >/dev/null && echo shadow-readable");
    assert_string_equal(out, "0\n/root\nshadow-readable\n");
    free(out);
    //  `user`: no capabilities at all, no_new_privs; root: a container's set, no more
    out = h_sh(s, "user", "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status");
    assert_non_null(strstr(out, "CapPrm:\t0000000000000000"));
    assert_non_null(strstr(out, "CapEff:\t0000000000000000"));
    assert_non_null(strstr(out, "NoNewPrivs:\t1"));
    free(out);
    out = h_sh(s, "root", "grep -E '^(CapEff|CapBnd)' /proc/self/status");
    assert_non_null(strstr(out, "CapEff:\t00000000a80425fb"));
    assert_non_null(strstr(out, "CapBnd:\t00000000a80425fb"));
    free(out);
    //  /etc: root and `user`, nothing else with uid 1000, no host hash
    out =
        h_sh(s, "root",
             "awk -F: '$3==1000' /etc/passwd; awk -F: '$3==1000' /etc/group; "
             "awk -F: '$2!=\"*\"' /etc/shadow /etc/gshadow | wc -l; grep -c '^root:' /etc/passwd");
    assert_string_equal(out, "user:x:1000:1000:user:/home/user:/bin/bash\nuser:x:1000:\n0\n1\n");
    free(out);
    //  the minimal /dev, /tmp of tmp_bytes, /sys read-only, a private devpts
    out = h_sh(s, "user", "ls /dev | tr '\\n' ' '; df -k /tmp | awk 'NR==2 {print $2}'; "
                          "touch /sys/x 2>/dev/null || echo ro; ls /dev/pts");
    assert_string_equal(out, "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero "
                             "65536\nro\nptmx\n");
    free(out);
    //  the host's /proc view of its pid 1 (the agent) from the host side
    uid_t uid;
    gid_t gid;
    assert_int_equal(sbx_host_ids(s, "user", &uid, &gid), 0);
    assert_int_equal(sbx_host_ids(s, "nobody", &uid, &gid), KB_EINVAL);
    assert_string_equal(sbx_home(s, "user"), "/home/user");
    assert_string_equal(sbx_kernel_dir_inside(s), "/run/kbridge");
    struct stat st;
    assert_int_equal(stat(sbx_kernel_dir(s), &st), 0);
    assert_int_equal(st.st_uid, uid);
    assert_int_equal(st.st_mode & 07777, 0700);
    destroy_sbx(&s);
}

static void test_ns_pty_and_flow(void **state)
{
    (void) state;
    NEED_ROOT();
    sbx_t *s = h_sbx("ptyflow");
    h_run_t r;
    memset(&r, 0, sizeof r);
    const char *argv[] = {"/bin/bash", "-c", "tty; stat -c %U $(tty); stty size", NULL};
    proc_opts_t o = {
        .argv = argv, .env = H_env, .pty = true, .user = "user", .cols = 90, .rows = 20};
    int err;
    proc_t *p = proc_spawn(s, &o, &H_events, &r, &err);
    assert_true(h_wait(&r.exited, 5000));
    assert_int_equal(r.start_err, 0);
    assert_non_null(strstr(r.out, "/dev/pts/0"));
    assert_non_null(strstr(r.out, "user"));
    assert_non_null(strstr(r.out, "20 90"));
    proc_destroy(&p);
    h_run_free(&r);
    run_flow(s);
    destroy_sbx(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_none_basics),
        cmocka_unit_test(test_exec_failures),
        cmocka_unit_test(test_stdin_and_close),
        cmocka_unit_test(test_signals_and_terminate),
        cmocka_unit_test(test_pty),
        cmocka_unit_test(test_bytes_are_bytes),
        cmocka_unit_test(test_flow_control_none),
        cmocka_unit_test(test_ns_identity),
        cmocka_unit_test(test_ns_pty_and_flow),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
