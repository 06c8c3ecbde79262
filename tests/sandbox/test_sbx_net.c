/*  Sandbox tests: networking and the kernels' directory. The same port in two sandboxes;
    sbx_socket reaching a server inside; outbound network through pasta (configured only:
    nothing is sent anywhere); unix and ZeroMQ ipc sockets inside, reached from the host
    through /proc/<agent>/root/run/kbridge. */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <zmq.h>

static bool s_root;

static int setup(void **state)
{
    (void) state;
    h_setup_root("net");
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

//  A server on 127.0.0.1:8080 that says its hostname to whoever connects.
static const char *SERVER =
    "exec python3 -c \"\n"
    "import socket, os\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', 8080)); s.listen(4); print('listening', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(os.uname().nodename.encode()); c.close()\n\"";

static void s_wait_output(h_run_t *r, const char *what)
{
    uint64_t t0 = h_now_ms();
    while ((!r->out || !strstr(r->out, what)) && !r->exited && h_now_ms() - t0 < 10000) h_spin(10);
    if (!r->out || !strstr(r->out, what)) fail_msg("no \"%s\": %s", what, r->err ? r->err : "");
}

static void s_expect_hello(sbx_t *s, const char *name)
{
    int fd = sbx_socket(s, AF_INET, SOCK_STREAM);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8080),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(fd, (struct sockaddr *) &a, sizeof a);
    assert_true(rc == 0 || errno == EINPROGRESS);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[64] = "";
    uint64_t t0 = h_now_ms();
    ssize_t n = 0;
    while (h_now_ms() - t0 < 5000) {
        poll(&p, 1, 100);
        n = read(fd, buf, sizeof buf - 1);
        if (n > 0 || (n == 0)) break;
    }
    close(fd);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, name);
}

static void test_same_port_two_sandboxes(void **state)
{
    (void) state;
    NEED_ROOT();
    sbx_t *a = h_sbx("neta"), *b = h_sbx("netb");
    h_run_t ra, rb;
    proc_t *pa = h_start(a, "user", SERVER, &ra), *pb = h_start(b, "user", SERVER, &rb);
    s_wait_output(&ra, "listening");
    s_wait_output(&rb, "listening");
    s_expect_hello(a, "neta");
    s_expect_hello(b, "netb");
    //  no internet: only loopback
    char *out = h_sh(a, "user", "ip -o link | awk '{print $2}'; ip route | wc -l");
    assert_string_equal(out, "lo:\n0\n");
    free(out);
    proc_destroy(&pa);
    proc_destroy(&pb);
    h_run_free(&ra);
    h_run_free(&rb);
    sbx_destroy(&a);
    sbx_destroy(&b);
    h_spin(50);
}

static void test_internet_through_pasta(void **state)
{
    (void) state;
    NEED_ROOT();
    H_NEED_TOOL("/usr/bin/pasta");
    sbx_opts_t o;
    h_ns_opts(&o, "inet");
    o.internet = true;
    sbx_t *s = h_sbx_opts(&o);
    //  An interface with an address and a default route, set up before the first process
    //  runs (on_ready may come before pasta is done; processes wait for it). (Nothing is
    //  sent: this machine reaches no network; the host's loopback is tested below.)
    char *out =
        h_sh(s, "user", "ip -o -4 addr show scope global | wc -l; ip route | grep -c '^default'");
    assert_string_equal(out, "1\n1\n");
    free(out);
    int srv = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(srv, (struct sockaddr *) &a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(srv, (struct sockaddr *) &a, &al);
    listen(srv, 4);
    char script[256];
    snprintf(script, sizeof script,
             "timeout 3 bash -c 'echo x > /dev/tcp/127.0.0.1/%d' 2>/dev/null && echo reached || "
             "echo refused",
             ntohs(a.sin_port));
    out = h_sh(s, "user", script);
    assert_string_equal(out, "refused\n");
    free(out);
    close(srv);
    //  two internet sandboxes can listen on the same port too
    h_run_t r;
    proc_t *p = h_start(s, "user", SERVER, &r);
    s_wait_output(&r, "listening");
    s_expect_hello(s, "inet");
    proc_destroy(&p);
    h_run_free(&r);
    sbx_destroy(&s);
    h_spin(50);
}

//  The sandbox is ready before pasta has configured its network (it takes longer than the
//  rest of the start), and processes wait for it. When pasta fails, no process runs
//  without its network: the first one fails, and the sandbox ends with pasta's reason.
static void test_network_failure_after_ready(void **state)
{
    (void) state;
    NEED_ROOT();
    H_NEED_TOOL("/bin/false");
    sbx_opts_t o;
    h_ns_opts(&o, "inetfail");
    o.internet = true;
    o.pasta = "/bin/false";  //  a "pasta" that exits 1 without configuring anything
    sbx_t *s = h_sbx_opts(&o);
    h_sbx_state_t *st = &H_states[(H_nstates - 1) % 16];
    //  Twice: the first may be held until pasta's failure is known, or come after it (or
    //  after the sandbox ended); the second comes after. None runs.
    for (int i = 0; i < 2; i++) {
        h_run_t r;
        memset(&r, 0, sizeof r);
        const char *argv[] = {"/bin/sh", "-c", "echo ran", NULL};
        proc_opts_t po = {.argv = argv, .env = H_env, .user = "user"};
        int err = 0;
        proc_t *p = proc_spawn(s, &po, &H_events, &r, &err);
        if (p) {
            assert_true(h_wait(&r.exited, 10000));
            assert_true(r.start_err == KB_ESPAWN || r.start_err == KB_ECLOSED);
            assert_null(r.out);
            proc_destroy(&p);
        } else {
            assert_int_equal(err, KB_ECLOSED);
        }
        h_run_free(&r);
        if (i == 0) {
            assert_true(h_wait(&st->lost, 10000));
            assert_non_null(strstr(st->why, "pasta"));
        }
    }
    sbx_destroy(&s);
    h_spin(50);
}

//  kbridge connects to kernels that bind ipc sockets inside: from the host, through the
//  agent's /proc root, both by plain path and (safer: no symlink can redirect it) through
//  an O_PATH descriptor of the socket file.
static void test_kernel_dir_sockets(void **state)
{
    (void) state;
    NEED_ROOT();
    sbx_t *s = h_sbx("kdir");
    h_run_t r;
    proc_t *p =
        h_start(s, "user",
                "exec python3 -c \"\n"
                "import socket, zmq, os\n"
                "u = socket.socket(socket.AF_UNIX); u.bind('/run/kbridge/k.sock'); u.listen(4)\n"
                "ctx = zmq.Context(); z = ctx.socket(zmq.REP); z.bind('ipc:///run/kbridge/z.ipc')\n"
                "print('ready', os.getppid(), flush=True)\n"
                "c, _ = u.accept(); c.sendall(b'unix'); c.close()\n"
                "c, _ = u.accept(); c.sendall(b'opath'); c.close()\n"
                "m = z.recv(); z.send(b'zmq:' + m)\n\"",
                &r);
    s_wait_output(&r, "ready");
    //  the kernel's parent is the sandbox's pid 1 (ipykernel: JPY_PARENT_PID=1 or unset)
    assert_non_null(strstr(r.out, "ready 1"));
    char path[100];
    snprintf(path, sizeof path, "%.80s/k.sock", sbx_kernel_dir(s));
    for (int i = 0; i < 2; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        int opath = -1;
        if (i == 0) {
            snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
        } else {
            opath = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
            assert_true(opath >= 0);
            struct stat st;
            assert_int_equal(fstat(opath, &st), 0);
            assert_true(S_ISSOCK(st.st_mode));
            snprintf(un.sun_path, sizeof un.sun_path, "/proc/self/fd/%d", opath);
        }
        assert_int_equal(connect(fd, (struct sockaddr *) &un, sizeof un), 0);
        char buf[16] = "";
        ssize_t n = read(fd, buf, sizeof buf - 1);
        assert_true(n > 0);
        buf[n] = '\0';
        assert_string_equal(buf, i == 0 ? "unix" : "opath");
        close(fd);
        if (opath >= 0) close(opath);
    }
    //  the safe way: the directory resolved inside, the socket opened without following
    int dfd = sbx_kernel_dir_fd(s);
    assert_true(dfd >= 0);
    int zfd = openat(dfd, "z.ipc", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    assert_true(zfd >= 0);
    struct stat zst;
    assert_int_equal(fstat(zfd, &zst), 0);
    assert_true(S_ISSOCK(zst.st_mode));
    void *ctx = zmq_ctx_new();
    void *z = zmq_socket(ctx, ZMQ_REQ);
    char ep[300];
    snprintf(ep, sizeof ep, "ipc:///proc/self/fd/%d", zfd);
    assert_int_equal(zmq_connect(z, ep), 0);
    int tmo = 5000;
    zmq_setsockopt(z, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_send(z, "hi", 2, 0), 2);
    char buf[32] = "";
    int n = zmq_recv(z, buf, sizeof buf - 1, 0);
    assert_int_equal(n, 6);
    assert_memory_equal(buf, "zmq:hi", 6);
    zmq_close(z);
    zmq_ctx_term(ctx);
    close(zfd);
    //  root inside swaps the directory for a symlink to /etc: by path, the host would
    //  follow it to its own /etc; the descriptor stays inside.
    char *out = h_sh(s, "root", "rm -rf /run/kbridge && ln -s /etc /run/kbridge && echo swapped");
    free(out);
    close(dfd);
    dfd = sbx_kernel_dir_fd(s);
    assert_true(dfd >= 0);
    int nf =
        openat(dfd, "kbtest-planted", O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
    assert_true(nf >= 0);
    close(nf);
    close(dfd);
    assert_int_not_equal(access("/etc/kbtest-planted", F_OK), 0);
    out = h_sh(s, "root", "ls /etc/kbtest-planted");
    assert_string_equal(out, "/etc/kbtest-planted\n");
    free(out);
    assert_true(h_wait(&r.exited, 5000));
    proc_destroy(&p);
    h_run_free(&r);
    sbx_destroy(&s);
    h_spin(50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_port_two_sandboxes),
        cmocka_unit_test(test_internet_through_pasta),
        cmocka_unit_test(test_network_failure_after_ready),
        cmocka_unit_test(test_kernel_dir_sockets),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
