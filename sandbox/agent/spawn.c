/*  spawn - processes the agent starts for kbridge.

    Each is forked in its own session and process group, as the requested user, with
    no_new_privs, default signal dispositions, an empty signal mask and nothing open but
    its stdio. The outcome of exec comes back through a CLOEXEC pipe: EOF means exec
    succeeded, else the child wrote where it failed and errno. The pipe is polled, so a
    child that is slow to exec never blocks the agent. Only then does kbridge get
    AP_SPAWNED with the parent ends of the stdio, and later AP_EXIT.
*/
#include "agent.h"
#include "base/kberr.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MAX_PROCS 8192
#define MAX_ARGS 4096

typedef struct {
    uint64_t id;
    pid_t pid;
    int status_fd;             //  exec-status pipe (pending), or -1
    int fds[3];                //  parent ends to hand over once exec succeeded
    int nfds;
    uint32_t flags;
    bool failed;               //  exec failed: no EXIT will be sent
    bool reaped;
    int wstatus;
    bool asleep_measured;      //  AK_MAIN_IF_ASLEEP: switches of its main thread, last seen
    bool repeated;             //  AK_MAIN_IF_ASLEEP: done once since the last signal
    unsigned long long switches;
} sproc_t;

static sproc_t *s_procs[MAX_PROCS];
static size_t s_nprocs;

static sproc_t *s_find_id(uint64_t id)
{
    for (size_t i = 0; i < s_nprocs; i++)
        if (s_procs[i]->id == id) return s_procs[i];
    return NULL;
}

static void s_remove(sproc_t *p)
{
    for (size_t i = 0; i < s_nprocs; i++)
        if (s_procs[i] == p) {
            s_procs[i] = s_procs[--s_nprocs];
            break;
        }
    for (int i = 0; i < p->nfds; i++) close(p->fds[i]);
    if (p->status_fd >= 0) close(p->status_fd);
    free(p);
}

typedef struct {
    int stage;  //  1 cwd, 2 exec, 3 setup
    int err;
} exec_status_t;

static void s_child_fail(int fd, int stage, int err)
{
    exec_status_t st = {stage, err};
    ssize_t n = write(fd, &st, sizeof st);
    (void) n;
    _exit(127);
}

//  execvpe with the PATH of the process's environment (glibc's would use the agent's own,
//  which is empty).
static void s_exec(const char *file, char *const argv[], char *const envp[], int status_fd)
{
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        s_child_fail(status_fd, 2, errno);
    }
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
    int saved = ENOENT;
    char full[PATH_MAX];
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t) (colon - p) : strlen(p);
        int len = n ? snprintf(full, sizeof full, "%.*s/%s", (int) n, p, file)
                    : snprintf(full, sizeof full, "%s", file);
        if (len > 0 && (size_t) len < sizeof full) {
            execve(full, argv, envp);
            if (errno == EACCES) saved = EACCES;
            else if (errno != ENOENT && errno != ENOTDIR) saved = errno;
        }
        if (!colon) break;
        p = colon + 1;
    }
    s_child_fail(status_fd, 2, saved);
}

static void s_send_spawned(sproc_t *p)
{
    uint8_t buf[256];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, AP_SPAWNED, p->id);
    ap_put_u32(&w, APT_PID, (uint32_t) p->pid);
    ap_put_u32(&w, APT_FLAGS, p->flags);
    size_t n = ap_end(&w);
    agent_send(buf, n, p->fds, p->nfds);  //  closes them once sent
    p->nfds = 0;
}

static void s_send_exit(sproc_t *p)
{
    uint8_t buf[256];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, AP_EXIT, p->id);
    ap_put_u32(&w, APT_PID, (uint32_t) p->pid);
    ap_put_u32(&w, APT_STATUS, (uint32_t) p->wstatus);
    size_t n = ap_end(&w);
    agent_send(buf, n, NULL, 0);
}

void spawn_request(const ap_msg_t *m)
{
    const char *argv[MAX_ARGS + 1], *envp[MAX_ARGS + 1];
    size_t argc = 0, envc = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (m->f[i].tag != APT_ARGV && m->f[i].tag != APT_ENV) continue;
        const char *s = ap_str(&m->f[i]);
        if (!s) continue;
        if (m->f[i].tag == APT_ARGV && argc < MAX_ARGS) argv[argc++] = s;
        else if (m->f[i].tag == APT_ENV && envc < MAX_ARGS) envp[envc++] = s;
    }
    argv[argc] = envp[envc] = NULL;
    if (argc == 0) {
        agent_error(false, m->id, KB_EINVAL, "no argv");
        return;
    }
    if (s_nprocs == MAX_PROCS) {
        agent_error(false, m->id, KB_ELIMIT, "the agent tracks too many processes");
        return;
    }
    agent_user_t u;
    if (agent_user(ap_get_str(m, APT_USER), &u) < 0) {
        agent_error(false, m->id, KB_EINVAL, "unknown user");
        return;
    }
    const char *cwd = ap_get_str(m, APT_CWD);
    if (!cwd) cwd = u.home;
    uint32_t flags = 0, cols = 80, rows = 24;
    ap_get_u32(m, APT_FLAGS, &flags);
    ap_get_u32(m, APT_COLS, &cols);
    ap_get_u32(m, APT_ROWS, &rows);
    flags &= APS_STDIN | APS_PTY;
    if (flags & APS_PTY) flags |= APS_STDIN;
    if (!cols || cols > 4096) cols = 80;
    if (!rows || rows > 4096) rows = 24;

    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, stp[2] = {-1, -1};
    int master = -1;
    int e = 0;
    if (flags & APS_PTY) {
        master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        int unlock = 0;
        struct winsize ws = {.ws_row = (unsigned short) rows, .ws_col = (unsigned short) cols};
        if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 ||
            ioctl(master, TIOCSWINSZ, &ws) < 0)
            e = errno;
    } else {
        if ((flags & APS_STDIN) && pipe2(in, O_CLOEXEC) < 0) e = errno;
        if (!e && pipe2(out, O_CLOEXEC) < 0) e = errno;
        if (!e && pipe2(err, O_CLOEXEC) < 0) e = errno;
    }
    if (!e && pipe2(stp, O_CLOEXEC) < 0) e = errno;
    sproc_t *p = e ? NULL : calloc(1, sizeof *p);
    if (!p) {
        int fds[] = {in[0], in[1], out[0], out[1], err[0], err[1], stp[0], stp[1], master};
        for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
            if (fds[i] >= 0) close(fds[i]);
        agent_error(false, m->id, e == EMFILE || e == ENFILE ? KB_ELIMIT : KB_ESPAWN,
                    "cannot make the process's stdio: %s", strerror(e ? e : ENOMEM));
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        //  The child: everything here is on its way to exec.
        sigset_t none;
        sigemptyset(&none);
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (setsid() < 0) s_child_fail(stp[1], 3, errno);
        if (flags & APS_PTY) {
            int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
            if (slave < 0) s_child_fail(stp[1], 3, errno);
            if (u.switch_ids && fchown(slave, u.uid, (gid_t) -1) < 0)
                s_child_fail(stp[1], 3, errno);
            if (ioctl(slave, TIOCSCTTY, 0) < 0) s_child_fail(stp[1], 3, errno);
            if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0)
                s_child_fail(stp[1], 3, errno);
        } else {
            int fd0 = (flags & APS_STDIN) ? in[0] : open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd0 < 0 || dup2(fd0, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
                s_child_fail(stp[1], 3, errno);
        }
        //  Nothing else stays open (the agent's socket, other processes' pipes).
        int sfd = fcntl(stp[1], F_DUPFD_CLOEXEC, 3);
        if (sfd < 0) s_child_fail(stp[1], 3, errno);
        if (sfd > 3) close_range(3, (unsigned) sfd - 1, 0);
        close_range((unsigned) sfd + 1, ~0U, 0);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) s_child_fail(sfd, 3, errno);
        if (g_cfg.mode == 0) prctl(PR_SET_PDEATHSIG, SIGKILL);
        int rc = agent_become(&u);
        if (rc < 0) s_child_fail(sfd, 3, -rc);
        umask(022);
        if (cwd && chdir(cwd) < 0) s_child_fail(sfd, 1, errno);
        s_exec(argv[0], (char *const *) argv, (char *const *) envp, sfd);
    }
    int fork_errno = errno;
    //  Parent: keep only our ends.
    if (in[0] >= 0) close(in[0]);
    if (out[1] >= 0) close(out[1]);
    if (err[1] >= 0) close(err[1]);
    close(stp[1]);
    p->id = m->id;
    p->flags = flags;
    p->status_fd = stp[0];
    if (flags & APS_PTY) {
        p->fds[p->nfds++] = master;
    } else {
        if (in[1] >= 0) p->fds[p->nfds++] = in[1];
        p->fds[p->nfds++] = out[0];
        p->fds[p->nfds++] = err[0];
    }
    if (pid < 0) {
        s_procs[s_nprocs++] = p;  //  so s_remove can free it
        s_remove(p);
        agent_error(false, m->id, fork_errno == EAGAIN ? KB_ELIMIT : KB_ESPAWN,
                    fork_errno == EAGAIN ? "cannot fork: the sandbox's process limit"
                                         : "cannot fork: %s",
                    strerror(fork_errno));
        return;
    }
    p->pid = pid;
    s_procs[s_nprocs++] = p;
}

//  Read the exec status of p (its child has exec'd or died, or is about to).
static void s_resolve(sproc_t *p, bool may_block)
{
    if (p->status_fd < 0) return;
    if (!may_block) {
        int fl = fcntl(p->status_fd, F_GETFL);
        fcntl(p->status_fd, F_SETFL, fl | O_NONBLOCK);
    }
    exec_status_t st;
    ssize_t n;
    do n = read(p->status_fd, &st, sizeof st);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN) return;  //  not yet
    close(p->status_fd);
    p->status_fd = -1;
    if (n == (ssize_t) sizeof st) {
        p->failed = true;
        int code;
        const char *what;
        if (st.stage == 1) {
            code = st.err == EACCES ? KB_EACCES : KB_ENOTDIR;
            what = "cannot enter the working directory";
        } else if (st.stage == 2) {
            code = st.err == ENOENT ? KB_ENOTFOUND
                 : st.err == EACCES ? KB_EACCES
                 : st.err == EAGAIN ? KB_ELIMIT
                                    : KB_ESPAWN;
            what = st.err == ENOENT ? "no such executable" : "cannot execute";
        } else {
            code = st.err == EAGAIN ? KB_ELIMIT : KB_ESPAWN;
            what = "cannot set up the process";
        }
        agent_error(false, p->id, code, "%s: %s", what, strerror(st.err));
        for (int i = 0; i < p->nfds; i++) close(p->fds[i]);
        p->nfds = 0;
    } else {
        s_send_spawned(p);
    }
}

void spawn_exec_status(int fd)
{
    for (size_t i = 0; i < s_nprocs; i++)
        if (s_procs[i]->status_fd == fd) {
            sproc_t *p = s_procs[i];
            s_resolve(p, false);
            if (p->status_fd < 0 && p->reaped) {
                if (!p->failed) s_send_exit(p);
                s_remove(p);
            }
            return;
        }
}

size_t spawn_poll_fds(int *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < s_nprocs && n < cap; i++)
        if (s_procs[i]->status_fd >= 0) out[n++] = s_procs[i]->status_fd;
    return n;
}

bool spawn_reaped(pid_t pid, int status)
{
    for (size_t i = 0; i < s_nprocs; i++) {
        sproc_t *p = s_procs[i];
        if (p->pid != pid) continue;
        p->reaped = true;
        p->wstatus = status;
        //  The child is gone, so its end of the status pipe is closed: this cannot block.
        s_resolve(p, true);
        if (!p->failed) s_send_exit(p);
        s_remove(p);
        return true;
    }
    return false;
}

//  Whether the main thread of pid sleeps, and its context switches so far (voluntary and
//  not). A thread that sleeps now and has the same count as before has not run since.
static bool s_main_thread_sleeps(pid_t pid, unsigned long long *switches)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/task/%d/status", (int) pid, (int) pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    const char *state = strstr(buf, "\nState:\t");
    const char *vol = strstr(buf, "\nvoluntary_ctxt_switches:\t");
    const char *nonvol = strstr(buf, "\nnonvoluntary_ctxt_switches:\t");
    if (!state || !vol || !nonvol) return false;
    *switches = strtoull(strchr(vol, ':') + 1, NULL, 10) +
                strtoull(strchr(nonvol, ':') + 1, NULL, 10);
    return state[8] == 'S';
}

//  AK_MAIN_IF_ASLEEP. A process-directed signal that lands between a thread's last check
//  for signals and its blocking call (CPython: after it lets go of the GIL, before
//  clock_nanosleep) is handled but does not wake it. Repeated to that thread, it ends the
//  call. Repeated while the process is already acting on the first one (ipykernel
//  formatting the KeyboardInterrupt), it would raise a second time inside that handling:
//  the error message is lost, or the kernel exits. So it is repeated only to a main
//  thread that has not run since the last look, and once: the flag the first one set
//  needs one wake-up, and a cell that caught the interrupt and sleeps in its own cleanup
//  looks the same from here.
static void s_kill_main_if_asleep(sproc_t *p, int signo)
{
    if (p->repeated) return;
    unsigned long long switches = 0;
    bool sleeps = s_main_thread_sleeps(p->pid, &switches);
    bool repeat = sleeps && p->asleep_measured && switches == p->switches;
    p->asleep_measured = sleeps;
    p->switches = switches;
    if (!repeat) return;
    p->repeated = true;
    syscall(SYS_tgkill, p->pid, p->pid, signo);
}

void spawn_kill(const ap_msg_t *m)
{
    uint32_t signo = 0, mode = AK_GROUP;
    ap_get_u32(m, APT_SIGNO, &signo);
    ap_get_u32(m, APT_GROUP, &mode);
    if (signo == 0 || signo >= NSIG) return;
    sproc_t *p = s_find_id(m->id);
    if (!p || p->reaped) return;  //  exited: its pid may belong to someone else now
    if (mode == AK_MAIN_IF_ASLEEP) {
        s_kill_main_if_asleep(p, (int) signo);
        return;
    }
    p->asleep_measured = p->repeated = false;  //  a new signal: measure afresh
    if (mode == AK_GROUP && kill(-p->pid, (int) signo) == 0) return;
    kill(p->pid, (int) signo);
}

void spawn_kill_all(void)
{
    for (size_t i = 0; i < s_nprocs; i++)
        if (!s_procs[i]->reaped) {
            kill(-s_procs[i]->pid, SIGKILL);
            kill(s_procs[i]->pid, SIGKILL);
        }
}
