/*  Sandbox tests: isolation, tried as an attacker from inside. Two sandboxes, A and B;
    A tries every way it can think of to see or touch B, the host, or kbridge. */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static sbx_t *A, *B;
static proc_t *B_sleep;
static h_run_t B_run;
static char B_state[300];
static bool s_root;

static int setup(void **state)
{
    (void) state;
    h_setup_root("iso");
    s_root = geteuid() == 0;
    if (!s_root) return 0;
    //  What kbridge's environment would hold: it must never show up inside.
    setenv("KBRIDGE_TOKEN", "secret-token-3f9a", 1);
    A = h_sbx("isoa");
    sbx_opts_t o;
    h_ns_opts(&o, "isob");
    snprintf(B_state, sizeof B_state, "%s", o.state_dir);
    B = h_sbx_opts(&o);
    char *out = h_sh(B, "user", "echo b-secret-9c1 > /home/user/secret-b.txt; echo ok");
    free(out);
    B_sleep = h_start(B, "user", "exec sleep 1000", &B_run);
    assert_true(h_wait(&B_run.started, 5000));
    return 0;
}

static int teardown(void **state)
{
    (void) state;
    if (s_root) {
        proc_destroy(&B_sleep);
        h_run_free(&B_run);
        sbx_destroy(&A);
        sbx_destroy(&B);
        h_spin(50);
    }
    h_teardown_root();
    return 0;
}

#define NEED_ROOT()                                                                        \
    do {                                                                                   \
        if (!s_root) skip();                                                               \
    } while (0)

static void test_processes_are_own(void **state)
{
    (void) state;
    NEED_ROOT();
    //  Only A's own: its pid 1 (the agent), the shell, ps. Not B's sleep, not the host.
    //  (ps writes to a file first: in a pipeline, a stage not yet exec'd shows as "sh".)
    char *out = h_sh(A, "root", "ps -e -o comm= > /tmp/ps.out; sort /tmp/ps.out | tr '\\n' ' '");
    assert_string_equal(out, "kbridge-agent ps sh ");
    free(out);
    out = h_sh(A, "root", "ls /proc | grep -c '^[0-9]*$'");
    assert_true(atoi(out) <= 6);
    free(out);
    //  /proc of a host pid (ours, B's agent) does not exist inside
    char script[256];
    snprintf(script, sizeof script, "test -e /proc/%d/environ || test -e /proc/%d/root; echo $?",
             (int) getpid(), sbx_agent_pid(B) == 1 ? 999999 : 0);
    out = h_sh(A, "root", script);
    assert_string_equal(out, "1\n");
    free(out);
}

static void test_no_kbridge_environment(void **state)
{
    (void) state;
    NEED_ROOT();
    char *out = h_sh(
        A, "root",
        "cat /proc/1/environ | wc -c; grep -l secret-token /proc/*/environ 2>/dev/null | wc -l; "
        "env | grep -c KBRIDGE; true");
    assert_string_equal(out, "0\n0\n0\n");
    free(out);
}

//  By every path: absolute host paths, `..`, symlinks, /proc/<pid>/root, what
//  /proc/self/mountinfo says about layers.
static void test_cannot_read_other_sandbox(void **state)
{
    (void) state;
    NEED_ROOT();
    char script[4096];
    snprintf(
        script, sizeof script,
        "B=%s; n=0;\n"
        "for p in $B/root/home/user/secret-b.txt $B/upper $B; do cat $p/* $p 2>/dev/null && "
        "n=$((n+1)); done\n"
        "cd / && cat ../../../..$B/root/home/user/secret-b.txt 2>/dev/null && n=$((n+1))\n"
        "ln -sf $B/root/home/user/secret-b.txt /tmp/l && cat /tmp/l 2>/dev/null && n=$((n+1))\n"
        "ln -sf ../../../../../../..$B /tmp/l2 && ls /tmp/l2/ 2>/dev/null && n=$((n+1))\n"
        "for pid in $(ls /proc | grep '^[0-9]*$'); do cat /proc/$pid/root/home/user/secret-b.txt "
        "2>/dev/null && n=$((n+1)); done\n"
        "for d in $(grep -o 'upperdir=[^,]*' /proc/self/mountinfo | cut -d= -f2); do\n"
        "  ls $d/../../ 2>/dev/null | grep -q . && n=$((n+1)); cat "
        "$d/../../../isob/root/home/user/secret-b.txt 2>/dev/null && n=$((n+1)); done\n"
        "find / -xdev -name 'secret-b*' 2>/dev/null | grep -q . && n=$((n+1))\n"
        "grep -rl b-secret-9c1 /home /root /tmp /var /etc /run /srv /mnt /media /opt 2>/dev/null | "
        "grep -q . && n=$((n+1))\n"
        "echo $n",
        B_state);
    char *out = h_sh(A, "root", script);
    assert_string_equal(out, "0\n");
    free(out);
    //  while B itself reads it fine (the test can fail)
    out = h_sh(B, "user", "cat /home/user/secret-b.txt");
    assert_string_equal(out, "b-secret-9c1\n");
    free(out);
}

static void test_kill_outside(void **state)
{
    (void) state;
    NEED_ROOT();
    char script[256];
    snprintf(script, sizeof script, "kill -9 %d 2>/dev/null; kill -9 -1; kill -9 1; echo done",
             (int)getpid());
    h_run_t r;
    h_run(A, "root", script, &r, 10000);
    h_run_free(&r);
    //  we live; B's process lives; A's agent lives and serves
    assert_true(proc_running(B_sleep));
    h_spin(100);
    assert_false(B_run.exited);
    char *out = h_sh(A, "user", "echo alive");
    assert_string_equal(out, "alive\n");
    free(out);
}

static void test_host_loopback_unreachable(void **state)
{
    (void) state;
    NEED_ROOT();
    int srv = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(srv, (struct sockaddr *) &a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(srv, (struct sockaddr *) &a, &al);
    assert_int_equal(listen(srv, 8), 0);
    int port = ntohs(a.sin_port);
    char script[512];
    snprintf(
        script, sizeof script,
        "bash -c 'echo x > /dev/tcp/127.0.0.1/%d' 2>/dev/null && echo reached || echo refused; "
        "bash -c 'echo x > /dev/tcp/localhost/%d' 2>/dev/null && echo reached || echo refused",
        port, port);
    char *out = h_sh(A, "user", script);
    assert_string_equal(out, "refused\nrefused\n");
    free(out);
    //  the server is really there: from the host it answers (the test can fail)
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(c, (struct sockaddr *) &a, sizeof a), 0);
    close(c);
    close(srv);
}

static void test_usr_copy_on_write(void **state)
{
    (void) state;
    NEED_ROOT();
    assert_int_not_equal(h_code(A, "user", "touch /usr/kbtest-isoa 2>/dev/null"), 0);
    assert_int_not_equal(h_code(A, "user", "echo x >> /usr/bin/env 2>/dev/null"), 0);
    char *out =
        h_sh(A, "root",
             "echo changed > /usr/kbtest-isoa && cat /usr/kbtest-isoa && rm /usr/bin/env && "
             "test ! -e /usr/bin/env && echo gone");
    assert_string_equal(out, "changed\ngone\n");
    free(out);
    struct stat st;
    assert_int_not_equal(stat("/usr/kbtest-isoa", &st), 0);
    assert_int_equal(stat("/usr/bin/env", &st), 0);
    //  B is unaffected
    out = h_sh(B, "user", "test -x /usr/bin/env && test ! -e /usr/kbtest-isoa && echo clean");
    assert_string_equal(out, "clean\n");
    free(out);
    //  the host's ssh keys, shadow backups, secrets: masked (and cannot be unmasked)
    out = h_sh(
        A, "root",
        "cat /etc/shadow- 2>/dev/null | wc -c; umount /etc/shadow- 2>/dev/null && echo unmounted; "
        "ls /etc/ssl/private 2>/dev/null | wc -l; true");
    assert_string_equal(out, "0\n0\n");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_processes_are_own),
        cmocka_unit_test(test_no_kbridge_environment),
        cmocka_unit_test(test_cannot_read_other_sandbox),
        cmocka_unit_test(test_kill_outside),
        cmocka_unit_test(test_host_loopback_unreachable),
        cmocka_unit_test(test_usr_copy_on_write),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
