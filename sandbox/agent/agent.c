/*  kbridge-agent - the one process kbridge talks to per sandbox.

    kbridge spawns it with an empty environment and one SOCK_SEQPACKET socket as fd 3.
    The first message is AP_CONFIG. Isolation none: the agent stays on the host as
    kbridge's user, a child subreaper that dies with kbridge. Namespaces: ns_setup()
    builds the sandbox, and the agent goes on as its pid 1. Either way it then answers
    requests in a single-threaded poll loop: processes (spawn.c), file operations and
    watches in short-lived workers (fileops.c), exits through a signalfd.

    When the socket closes (kbridge exited, even by SIGKILL), the agent kills everything
    it started and exits; as pid 1 of a PID namespace, exiting does that by itself. On
    the host it also removes kbridge's kernel directory (the connection files and their
    keys) when kbridge said it is the sandbox's own.
*/
#include "agent.h"
#include "base/kberr.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

agent_config_t g_cfg;
int g_sock = AGENT_SOCK_FD;
int g_netfd = -1;

//  The CONFIG message stays here: g_cfg's strings point into it.
static uint8_t s_config_buf[AP_MAX_MSG];
static ap_field_t s_fields[AP_MAX_FIELDS];

void agent_log(const char *fmt, ...)
{
    if (!g_cfg.debug) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t) n > sizeof line - 2) n = (int) sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t) n);
    (void) w;
}

int agent_errno_kb(int e)
{
    switch (e) {
    case 0: return 0;
    case ENOENT: return KB_ENOTFOUND;
    case EEXIST:
    case ENOTEMPTY: return KB_EEXIST;
    case EACCES:
    case EPERM:
    case EROFS: return KB_EACCES;
    case ENOTDIR: return KB_ENOTDIR;
    case EISDIR: return KB_EISDIR;
    case ENOSPC:
    case EDQUOT: return KB_ENOSPC;
    case ENAMETOOLONG: return KB_ETOOBIG;
    case EINVAL:
    case ELOOP:
    case EXDEV: return KB_EINVAL;
    case ENOMEM: return KB_ENOMEM;
    case EAGAIN: return KB_ELIMIT;
    case EBUSY: return KB_EBUSY;
    default: return KB_EIO;
    }
}

int agent_write_file(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, data, len);
    int e = n < 0 ? errno : (size_t) n != len ? EIO : 0;
    close(fd);
    return -e;
}

// ---------------------------------------------------------------------------------------
//  Sending

static int s_sendmsg(const void *buf, size_t len, const int *fds, int nfds, int flags)
{
    struct iovec iov = {.iov_base = (void *) buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * AP_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t) nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t) nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t) nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(g_sock, &mh, flags | MSG_NOSIGNAL);
        if (n >= 0) return 0;
        if (errno == EINTR) continue;
        return -errno;
    }
}

int agent_send_blocking(const void *buf, size_t len, const int *fds, int nfds)
{
    return s_sendmsg(buf, len, fds, nfds, 0);
}

typedef struct qmsg {
    struct qmsg *next;
    size_t len;
    int fds[AP_MAX_FDS];
    int nfds;
    uint8_t data[];
} qmsg_t;

#define QUEUE_MAX 65536  //  messages; kbridge reads all the time, so this is a wedge guard
static qmsg_t *s_qhead, *s_qtail;
static size_t s_qlen;
static bool s_gone;  //  kbridge's end is closed

static void s_close_fds(const int *fds, int nfds)
{
    for (int i = 0; i < nfds; i++) close(fds[i]);
}

int agent_send(const void *buf, size_t len, const int *fds, int nfds)
{
    if (s_gone) {
        s_close_fds(fds, nfds);
        return 0;
    }
    if (!s_qhead) {
        int rc = s_sendmsg(buf, len, fds, nfds, MSG_DONTWAIT);
        if (rc == 0) {
            s_close_fds(fds, nfds);
            return 0;
        }
        if (rc != -EAGAIN) {
            s_gone = true;
            s_close_fds(fds, nfds);
            return 0;
        }
    }
    qmsg_t *q = s_qlen < QUEUE_MAX ? malloc(sizeof *q + len) : NULL;
    if (!q) {
        s_close_fds(fds, nfds);
        s_gone = true;  //  we cannot keep our word to kbridge any more: give up
        return -1;
    }
    q->next = NULL;
    q->len = len;
    q->nfds = nfds;
    if (nfds > 0) memcpy(q->fds, fds, sizeof(int) * (size_t) nfds);
    memcpy(q->data, buf, len);
    if (s_qtail) s_qtail->next = q;
    else s_qhead = q;
    s_qtail = q;
    s_qlen++;
    return 0;
}

static void s_flush(void)
{
    while (s_qhead && !s_gone) {
        qmsg_t *q = s_qhead;
        int rc = s_sendmsg(q->data, q->len, q->fds, q->nfds, MSG_DONTWAIT);
        if (rc == -EAGAIN) return;
        if (rc < 0) s_gone = true;
        s_close_fds(q->fds, q->nfds);
        s_qhead = q->next;
        if (!s_qhead) s_qtail = NULL;
        s_qlen--;
        free(q);
    }
}

void agent_error(bool blocking, uint64_t id, int err, const char *fmt, ...)
{
    char why[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    uint8_t buf[2048];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, AP_ERROR, id);
    ap_put_u32(&w, APT_ERR, (uint32_t) err);
    ap_put_str(&w, APT_WHY, why);
    size_t n = ap_end(&w);
    if (!n) return;
    if (blocking) agent_send_blocking(buf, n, NULL, 0);
    else agent_send(buf, n, NULL, 0);
}

static void s_hello(int err, const char *why)
{
    uint8_t buf[2048];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, AP_HELLO, 0);
    ap_put_u32(&w, APT_VERSION, AP_VERSION);
    ap_put_u32(&w, APT_ERR, (uint32_t) err);
    if (err == 0) ap_put_u32(&w, APT_PID, (uint32_t) getpid());
    ap_put_str(&w, APT_WHY, why);
    size_t n = ap_end(&w);
    if (n) agent_send_blocking(buf, n, NULL, 0);
}

// ---------------------------------------------------------------------------------------
//  Users

int agent_user(const char *name, agent_user_t *out)
{
    memset(out, 0, sizeof *out);
    if (name && strcmp(name, "root") != 0 && strcmp(name, "user") != 0) return KB_EINVAL;
    if (g_cfg.mode == 0) {
        //  One user on the host: kbridge's. "root"/"user" name the sandbox's users, which
        //  the default sandbox does not have, so every request runs as the agent.
        out->uid = getuid();
        out->gid = getgid();
        out->home = g_cfg.home;
        return 0;
    }
    if (name && strcmp(name, "user") == 0) {
        out->switch_ids = true;
        out->uid = 1000;
        out->gid = 1000;
        out->home = "/home/user";
    } else {
        out->switch_ids = name != NULL;
        out->home = "/root";
    }
    return 0;
}

int agent_become(const agent_user_t *u)
{
    if (!u->switch_ids) return 0;
    if (setgroups(1, &u->gid) < 0) return -errno;
    if (setresgid(u->gid, u->gid, u->gid) < 0) return -errno;
    if (setresuid(u->uid, u->uid, u->uid) < 0) return -errno;
    return 0;
}

// ---------------------------------------------------------------------------------------
//  Configuration

static int s_read_config(char *why, size_t size)
{
    ssize_t n;
    do n = recv(g_sock, s_config_buf, sizeof s_config_buf, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        snprintf(why, size, "no configuration from kbridge");
        return -1;
    }
    ap_msg_t m = {.f = s_fields, .cap = AP_MAX_FIELDS};
    if (ap_parse(s_config_buf, (size_t) n, &m) < 0 || m.type != AP_CONFIG) {
        snprintf(why, size, "malformed configuration message");
        return -1;
    }
    uint32_t v = 0;
    ap_get_u32(&m, APT_MODE, &v);
    g_cfg.mode = (int) v;
    const char *id = ap_get_str(&m, APT_SBX_ID);
    snprintf(g_cfg.id, sizeof g_cfg.id, "%s", id ? id : "sandbox");
    ap_get_u32(&m, APT_UID_BASE, &g_cfg.uid_base);
    g_cfg.state_dir = ap_get_str(&m, APT_STATE_DIR);
    g_cfg.tmpl_dir = ap_get_str(&m, APT_TMPL_DIR);
    g_cfg.kernel_dir = ap_get_str(&m, APT_KERNEL_DIR);
    g_cfg.home = ap_get_str(&m, APT_HOME);
    g_cfg.pasta = ap_get_str(&m, APT_PASTA);
    v = 0;
    ap_get_u32(&m, APT_INTERNET, &v);
    g_cfg.internet = v != 0;
    v = 0;
    ap_get_u32(&m, APT_DEBUG, &v);
    g_cfg.debug = v != 0;
    v = 0;
    ap_get_u32(&m, APT_OWN_KERNEL_DIR, &v);
    g_cfg.own_kernel_dir = v != 0 && g_cfg.kernel_dir;
    ap_u64(ap_get(m.f, m.n, APT_TMP_BYTES), &g_cfg.tmp_bytes);
    for (size_t i = 0; i < m.n; i++) {
        const char *s = ap_str(&m.f[i]);
        if (!s) continue;
        if (m.f[i].tag == APT_HIDDEN && g_cfg.nhidden < 256) g_cfg.hidden[g_cfg.nhidden++] = s;
        if (m.f[i].tag == APT_CGROUP_PROCS && g_cfg.ncg < 16) g_cfg.cgprocs[g_cfg.ncg++] = s;
    }
    if (g_cfg.mode == 1 && (!g_cfg.state_dir || g_cfg.uid_base == 0)) {
        snprintf(why, size, "namespaces isolation needs a state directory and a uid base");
        return -1;
    }
    return 0;
}

//  Join the sandbox's cgroups before anything is forked, so that every process the
//  sandbox will ever have is in them.
static int s_join_cgroups(char *why, size_t size)
{
    for (size_t i = 0; i < g_cfg.ncg; i++) {
        int rc = agent_write_file(g_cfg.cgprocs[i], "0", 1);
        if (rc < 0) {
            snprintf(why, size, "cannot join cgroup %s: %s", g_cfg.cgprocs[i], strerror(-rc));
            return -1;
        }
    }
    return 0;
}

//  Namespaces: the first join of a cgroup v1 hierarchy waits for an RCU grace period
//  (cgroup_threadgroup_rwsem), 10-20 ms here, which is longer than the whole namespace
//  setup. A child does it for us (writing our pid) while we build the root; ns_setup
//  waits for it before it forks anything that must be inside (pasta's launcher, pid 1).
//  Only the short-lived user-namespace helper is forked before and may be left outside.
//  Returns the joiner's pid (0: nothing to join), or -1 with why filled.
static pid_t s_start_joiner(int *errfd, char *why, size_t size)
{
    *errfd = -1;
    if (g_cfg.ncg == 0) return 0;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        snprintf(why, size, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, size, "fork: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        char num[32];
        int n = snprintf(num, sizeof num, "%d", (int) getppid());
        for (size_t i = 0; i < g_cfg.ncg; i++) {
            int rc = agent_write_file(g_cfg.cgprocs[i], num, (size_t) n);
            if (rc < 0) {
                char msg[600];
                int m = snprintf(msg, sizeof msg, "cannot join cgroup %s: %s", g_cfg.cgprocs[i],
                                 strerror(-rc));
                ssize_t w = write(p[1], msg, m > 0 ? (size_t) m : 0);
                (void) w;
                _exit(1);
            }
        }
        _exit(0);
    }
    close(p[1]);
    *errfd = p[0];
    return pid;
}

static int s_joiner_errfd = -1;

int agent_wait_joiner(pid_t joiner, char *why, size_t size)
{
    if (joiner <= 0) return 0;
    char msg[600];
    ssize_t n;
    do n = read(s_joiner_errfd, msg, sizeof msg - 1);
    while (n < 0 && errno == EINTR);
    close(s_joiner_errfd);
    s_joiner_errfd = -1;
    int st = 0;
    while (waitpid(joiner, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
    msg[n > 0 ? n : 0] = '\0';
    snprintf(why, size, "%s", n > 0 ? msg : "cannot join the sandbox's cgroups");
    return -1;
}

// ---------------------------------------------------------------------------------------
//  Shutdown (isolation none): nothing the agent started may outlive it.

static void s_kill_children_once(void)
{
    pid_t self = getpid();
    DIR *d = opendir("/proc");
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = '\0';
        char *rp = strrchr(buf, ')');
        int ppid = 0;
        char state;
        if (rp && sscanf(rp + 1, " %c %d", &state, &ppid) == 2 && ppid == self)
            kill(atoi(de->d_name), SIGKILL);
    }
    closedir(d);
}

//  The connection files (with their keys) and ipc sockets of kbridge's kernels: kbridge
//  removes them itself when it exits cleanly, but not when it is killed. Entries are
//  unlinked by name in the directory (a planted symlink goes, not what it points to).
static void s_remove_kernel_dir(void)
{
    if (!g_cfg.own_kernel_dir) return;
    int dfd = open(g_cfg.kernel_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0) close(dfd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_type != DT_DIR) unlinkat(dfd, de->d_name, 0);
    closedir(d);
    rmdir(g_cfg.kernel_dir);  //  fails, harmlessly, if something else is in it
}

static void s_shutdown(void)
{
    if (g_cfg.mode == 1) _exit(0);  //  pid 1: the kernel kills the rest of the namespace
    spawn_kill_all();
    //  Children, and orphans that were reparented to us (we are a subreaper), until
    //  none is left.
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        s_kill_children_once();
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        }
        if (pid < 0 && errno == ECHILD) break;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 5) break;
        struct timespec pause = {0, 2 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    s_remove_kernel_dir();
    _exit(0);
}

// ---------------------------------------------------------------------------------------
//  The loop

//  Process requests that came before the network was up, in order (a KILL may name a
//  held SPAWN), released 64 per loop turn as received ones are. Bounded as kbridge's own
//  queue is (8192 messages), and in bytes: past either a SPAWN fails at once.
#define HELD_MAX 8192
#define HELD_BYTES_MAX (16u << 20)
#define HELD_BUDGET 64
typedef struct held {
    struct held *next;
    size_t len;
    uint8_t data[];
} held_t;
static held_t *s_held_head, *s_held_tail;
static size_t s_nheld, s_held_bytes;
#define NET_WAIT_MS 30000  //  as long as kbridge waits for a sandbox to start

static char s_net_failed[600];  //  why, once the network could not be set up

static bool s_hold(const ap_msg_t *m, const uint8_t *raw, size_t len)
{
    if (s_net_failed[0] && m->type == AP_SPAWN) {
        agent_error(false, m->id, KB_ESPAWN, "%s", s_net_failed);
        return true;
    }
    if ((g_netfd < 0 && !s_held_head) || (m->type != AP_SPAWN && m->type != AP_KILL))
        return false;
    bool room = s_nheld < HELD_MAX && s_held_bytes + len <= HELD_BYTES_MAX;
    held_t *h = room ? malloc(sizeof *h + len) : NULL;
    if (!h) {
        if (m->type == AP_SPAWN)
            agent_error(false, m->id, KB_ELIMIT,
                        "too many processes waiting for the sandbox's network (limit %d)",
                        HELD_MAX);
        return true;
    }
    h->next = NULL;
    h->len = len;
    memcpy(h->data, raw, len);
    if (s_held_tail) s_held_tail->next = h;
    else s_held_head = h;
    s_held_tail = h;
    s_nheld++;
    s_held_bytes += len;
    return true;
}

static void s_dispatch(const ap_msg_t *m, int *fds, int nfds);

//  Once the network is up (or failed): the next held requests, in order.
static void s_release_held(void)
{
    for (int i = 0; i < HELD_BUDGET && s_held_head; i++) {
        held_t *h = s_held_head;
        s_held_head = h->next;
        if (!s_held_head) s_held_tail = NULL;
        s_nheld--;
        s_held_bytes -= h->len;
        ap_msg_t hm = {.f = s_fields, .cap = AP_MAX_FIELDS};
        if (ap_parse(h->data, h->len, &hm) == 0) {
            if (!s_net_failed[0]) s_dispatch(&hm, NULL, 0);
            else if (hm.type == AP_SPAWN) agent_error(false, hm.id, KB_ESPAWN, "%s", s_net_failed);
        }
        free(h);
    }
}

//  The supervisor's word on the network: "ok" releases the held requests. Anything else
//  (or nothing in time) fails them and every later process, and tells kbridge, which
//  ends the sandbox with that reason (as a failed start would have) and closes the socket.
static void s_net_done(bool timed_out)
{
    char msg[512] = "";
    ssize_t n = timed_out ? -1 : read(g_netfd, msg, sizeof msg - 1);
    if (n < 0 && errno == EINTR && !timed_out) return;
    close(g_netfd);
    g_netfd = -1;
    prctl(PR_SET_DUMPABLE, 0);  //  pasta is done with our namespaces (see nsetup.c)
    msg[n > 0 ? n : 0] = '\0';
    bool ok = n > 0 && strcmp(msg, "ok") == 0;
    if (!ok) {
        snprintf(s_net_failed, sizeof s_net_failed, "%s",
                 timed_out ? "the sandbox's network was not set up within 30 s (pasta)"
                 : n <= 0  ? "the sandbox's network was not set up (pasta)"
                           : msg);
        //  id 0: about the sandbox, not a request
        agent_error(false, 0, KB_ESPAWN, "%s", s_net_failed);
    } else {
        agent_log("agent: network up, %zu held requests", s_nheld);
    }
}

static void s_dispatch(const ap_msg_t *m, int *fds, int nfds)
{
    switch (m->type) {
    case AP_SPAWN: spawn_request(m); break;
    case AP_KILL: spawn_kill(m); break;
    case AP_CANCEL: fileop_cancel(m->id); break;
    case AP_STAT:
    case AP_LIST:
    case AP_MKDIR:
    case AP_RENAME:
    case AP_REMOVE:
    case AP_SETMETA:
    case AP_OPEN:
    case AP_UPLOAD_BEGIN:
    case AP_UPLOAD_COMMIT:
    case AP_UPLOAD_ABORT:
    case AP_WATCH:
        fileop_request(m, fds, nfds);  //  takes the fds
        return;
    default: agent_log("agent: unknown message type %d", m->type); break;
    }
    s_close_fds(fds, nfds);
}

static uint8_t s_rx[AP_MAX_MSG + 1];

static void s_receive(void)
{
    for (int budget = 0; budget < 64; budget++) {
        struct iovec iov = {.iov_base = s_rx, .iov_len = sizeof s_rx};
        union {
            char buf[CMSG_SPACE(sizeof(int) * AP_MAX_FDS)];
            struct cmsghdr align;
        } ctl;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                            .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(g_sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) {
            s_gone = true;
            return;
        }
        int fds[AP_MAX_FDS], nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *p = (int *) CMSG_DATA(c);
            for (size_t i = 0; i < k; i++) {
                if (nfds < AP_MAX_FDS) fds[nfds++] = p[i];
                else close(p[i]);
            }
        }
        ap_msg_t m = {.f = s_fields, .cap = AP_MAX_FIELDS};
        if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || ap_parse(s_rx, (size_t) n, &m) < 0) {
            agent_log("agent: dropped a malformed message");
            s_close_fds(fds, nfds);
            continue;
        }
        if (s_hold(&m, s_rx, (size_t) n)) {
            s_close_fds(fds, nfds);  //  SPAWN and KILL carry none
            continue;
        }
        s_dispatch(&m, fds, nfds);
    }
}

static void s_reap(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        if (spawn_reaped(pid, st)) continue;
        if (fileop_reaped(pid, st)) continue;
        //  an orphan that was reparented to us: reaped, nothing to report
    }
}

int main(int argc, char **argv)
{
    char why[1024] = "";
    if (argc > 1 && strcmp(argv[1], "--probe") == 0) return ns_probe();
    //  Signals arrive through the signalfd only; SIGPIPE never (sends use MSG_NOSIGNAL,
    //  and processes get default dispositions back before exec).
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct stat st;
    if (fstat(g_sock, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "kbridge-agent: run by kbridge only (fd 3 must be its socket)\n");
        return 2;
    }
    fcntl(g_sock, F_SETFD, FD_CLOEXEC);
    if (s_read_config(why, sizeof why) < 0) {
        s_hello(KB_EINVAL, why);
        return 1;
    }
    if (g_cfg.mode == 1) {
        pid_t joiner = s_start_joiner(&s_joiner_errfd, why, sizeof why);
        if (joiner < 0) {
            s_hello(KB_EIO, why);
            return 1;
        }
        if (ns_setup(joiner, why, sizeof why) < 0) {
            s_hello(KB_ESPAWN, why);
            return 1;
        }
    } else {
        if (s_join_cgroups(why, sizeof why) < 0) {
            s_hello(KB_EIO, why);
            return 1;
        }
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        //  SIGTERM, not SIGKILL: we must live long enough to kill what we started.
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (g_cfg.home && chdir(g_cfg.home) < 0) {
            //  not fatal: processes get an explicit cwd or report it
        }
    }
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        snprintf(why, sizeof why, "signalfd: %s", strerror(errno));
        s_hello(KB_EIO, why);
        return 1;
    }
    s_hello(0, NULL);

    struct timespec net_start;
    clock_gettime(CLOCK_MONOTONIC, &net_start);
    struct pollfd pfd[3 + 256];
    int extra[256];
    for (;;) {
        if (s_gone) s_shutdown();
        pfd[0].fd = g_sock;
        pfd[0].events = POLLIN | (s_qhead ? POLLOUT : 0);
        pfd[1].fd = sfd;
        pfd[1].events = POLLIN;
        size_t nx = spawn_poll_fds(extra, 256);
        for (size_t i = 0; i < nx; i++) {
            pfd[2 + i].fd = extra[i];
            pfd[2 + i].events = POLLIN;
        }
        //  Held requests go before what arrives next (the socket is read after them).
        int timeout = g_netfd < 0 && s_held_head ? 0 : -1;
        size_t np = 2 + nx;
        if (g_netfd >= 0) {
            pfd[np].fd = g_netfd;
            pfd[np].events = POLLIN;
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long waited = (now.tv_sec - net_start.tv_sec) * 1000 +
                          (now.tv_nsec - net_start.tv_nsec) / 1000000;
            timeout = waited >= NET_WAIT_MS ? 0 : (int) (NET_WAIT_MS - waited);
            np++;
        }
        int rc = poll(pfd, np, timeout);
        if (rc < 0) {
            if (errno == EINTR) continue;
            s_shutdown();
        }
        if (g_netfd >= 0 && (rc == 0 || pfd[2 + nx].revents)) {
            s_net_done(rc == 0);
            continue;
        }
        if (g_netfd < 0 && s_held_head) s_release_held();
        //  Exec statuses before exits, so a process's SPAWNED precedes its EXIT.
        for (size_t i = 0; i < nx; i++)
            if (pfd[2 + i].revents) spawn_exec_status(pfd[2 + i].fd);
        if (pfd[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            bool term = false;
            while (read(sfd, &si, sizeof si) == sizeof si)
                if (si.ssi_signo != SIGCHLD) term = true;
            s_reap();
            if (term && g_cfg.mode == 0) s_gone = true;
        }
        if (pfd[0].revents & POLLOUT) s_flush();
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) s_receive();
    }
}
