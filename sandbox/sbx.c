/*  sbx - one sandbox, as kbridge sees it: an agent process and one seqpacket socket to it
    (see sbx.h for the contract, agentproto.h for the messages).

    Everything here runs on the libuv loop and never blocks it: the agent is started with
    uv_spawn (kbridge is multi-threaded, so no namespace work ever happens in a fork of
    it: the freshly exec'd agent does all of that); cgroup creation and removal and state
    removal run in the threadpool; the socket is watched with uv_poll and read with a
    budget per turn.

    Requests are multiplexed by a 64-bit id. Replies come in any order; a reply for an id
    we no longer know (cancelled) is dropped, with its fds closed. Whatever the agent
    sends is checked (agentproto.c, plus the types of received fds here): a message that
    breaks the protocol ends the sandbox, since an agent that does that has been taken
    over.

    Lifetime: the user's handle is one reference; each proc, watch and upload holds one
    too, and so does work in flight in the threadpool. sbx_destroy (or the agent's loss)
    fails what is pending from a later loop turn; the memory goes when the last reference
    is dropped, the agent process has been reaped and every handle has closed.
*/
#include "sbx.h"
#include "agentproto.h"
#include "cgroup.h"
#include "sbx_int.h"
#include "base/kberr.h"
#include "base/klog.h"
#include "base/kutil.h"

#include <stdarg.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 30000
#define KILL_GRACE_MS 3000       //  the agent's own cleanup, before SIGKILL
#define RX_BUDGET 64             //  messages read per loop turn
#define QUEUE_MAX 8192           //  messages waiting for the socket
#define LIST_MAX_ENTRIES 100000  //  entries kept for one request
#define ARENA_BLOCK (64 * 1024)

enum { REQ_ENTRIES = 1, REQ_OPEN, REQ_UPLOAD, REQ_PROC, REQ_WATCH };

typedef struct arena {
    struct arena *next;
    size_t used, cap;
    char data[];
} arena_t;

struct _sbx_req_t {
    sbx_req_t *next, *prev;  //  in sbx->reqs, or sbx->done (deferred failure)
    sbx_t *sbx;
    uint64_t id;
    int kind;
    bool on_done;            //  queued for deferred delivery
    bool delivering;         //  its callback is running
    bool cancelled;
    sbx_entries_fn *entries_cb;
    sbx_open_fn *open_cb;
    void *arg;
    void *owner;             //  proc_t, sbx_watch_t, sbx_upload_t
    int err;
    char *why;
    sbx_entry_t *entries;
    size_t n, cap;
    arena_t *arena;
};

struct _sbx_upload_t {
    sbx_t *sbx;
    sbx_req_t *req;  //  the BEGIN, while pending
    uint64_t begin_id;
    int fd;
    sbx_upload_fn *cb;
    void *arg;
};

struct _sbx_watch_t {
    sbx_t *sbx;
    sbx_req_t *req;
    sbx_watch_events_t ev;
    void *arg;
    bool started, ended;
    int busy;
    bool dead;
};

typedef struct qmsg {
    struct qmsg *next;
    size_t len;
    int fds[AP_MAX_FDS];
    int nfds;
    uint8_t data[];
} qmsg_t;

struct _sbx_t {
    uv_loop_t *loop;
    char id[33];
    sbx_isolation_t isolation;
    char *agent_path, *kernel_dir, *home, *state_dir, *cgroup_path, *pasta;
    char **hidden;
    size_t nhidden;
    const template_t *tmpl;
    uint32_t uid_base;
    bool internet;
    bool own_kernel_dir;
    cgroup_limits_t limits;
    uint64_t tmp_bytes;
    sbx_events_t ev;
    void *arg;

    int refs;
    bool destroyed, lost, ready, failed;
    bool got_pid;
    int sock;
    int sock_closing;    //  closed when the poll handle has closed
    uv_poll_t poll;
    bool poll_on, poll_writable;
    uv_process_t process;
    bool process_running;
    uv_timer_t timer;    //  ready timeout, then the agent's kill escalation
    uv_timer_t defer;    //  deferred deliveries
    int open_handles;
    bool freeing;
    int work;            //  threadpool jobs in flight
    cgroup_t *cg;
    int agent_host_pid;  //  pid 1 inside (namespaces), as the host sees it
    int agent_pid;       //  as processes inside see it
    int pidfd;
    int netns_fd, host_netns_fd;
    char kdir_host[64];
    uint64_t next_id;
    qmsg_t *qhead, *qtail;
    size_t qlen;
    sbx_req_t *reqs;
    sbx_req_t *done_head, *done_tail;
    bool ready_pending, lost_pending;
    int ready_err;
    char why[512];
};

//  One receive buffer and field scratch for all sandboxes: the loop is one thread and a
//  message is handled before the next is read (what outlives the call is copied).
static uint8_t s_rx[AP_MAX_MSG + 1];
static ap_field_t s_fields[AP_MAX_FIELDS], s_efields[AP_MAX_FIELDS];

static void s_maybe_free(sbx_t *self);
static void s_on_defer(uv_timer_t *t);
static void s_on_timer(uv_timer_t *t);
static void s_lost(sbx_t *self, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// ---------------------------------------------------------------------------------------
//  Small helpers

static bool s_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n < 1 || n > 32) return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9'))) return false;
    return true;
}

static bool s_path_ok(const char *p)
{
    return p && p[0] == '/' && strlen(p) < PATH_MAX;
}

static void *s_arena_alloc(arena_t **a, size_t n)
{
    n = (n + 7) & ~(size_t) 7;
    if (!*a || (*a)->cap - (*a)->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        arena_t *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = *a;
        b->used = 0;
        b->cap = cap;
        *a = b;
    }
    void *p = (*a)->data + (*a)->used;
    (*a)->used += n;
    return p;
}

static const char *s_arena_str(arena_t **a, const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *p = s_arena_alloc(a, n);
    if (p) memcpy(p, s, n);
    return p;
}

static void s_arena_free(arena_t *a)
{
    while (a) {
        arena_t *next = a->next;
        free(a);
        a = next;
    }
}

static void s_close_fds(int *fds, int nfds)
{
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

static void s_on_handle_closed(uv_handle_t *h)
{
    sbx_t *self = h->data;
    self->open_handles--;
    s_maybe_free(self);
}

// ---------------------------------------------------------------------------------------
//  Requests

static void s_req_link(sbx_t *self, sbx_req_t *r)
{
    r->prev = NULL;
    r->next = self->reqs;
    if (self->reqs) self->reqs->prev = r;
    self->reqs = r;
}

static void s_req_unlink(sbx_t *self, sbx_req_t *r)
{
    if (r->on_done) {
        sbx_req_t **p = &self->done_head;
        sbx_req_t *prev = NULL;
        while (*p && *p != r) {
            prev = *p;
            p = &(*p)->next;
        }
        if (*p) *p = r->next;
        if (self->done_tail == r) self->done_tail = prev;
        r->on_done = false;
    } else {
        if (r->prev) r->prev->next = r->next;
        else if (self->reqs == r) self->reqs = r->next;
        if (r->next) r->next->prev = r->prev;
    }
    r->next = r->prev = NULL;
}

static sbx_req_t *s_req_find(sbx_t *self, uint64_t id)
{
    for (sbx_req_t *r = self->reqs; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

static void s_req_free(sbx_req_t *r)
{
    if (!r) return;
    s_arena_free(r->arena);
    free(r->entries);
    free(r->why);
    free(r);
}

static sbx_req_t *s_req_new(sbx_t *self, int kind)
{
    sbx_req_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->sbx = self;
    r->kind = kind;
    r->id = ++self->next_id;
    s_req_link(self, r);
    return r;
}

static void s_schedule(sbx_t *self)
{
    if (!uv_is_closing((uv_handle_t *) &self->defer))
        uv_timer_start(&self->defer, s_on_defer, 0, 0);
}

// ---------------------------------------------------------------------------------------
//  Sending

static int s_sendmsg(int sock, const void *buf, size_t len, const int *fds, int nfds)
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
        ssize_t n = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0) return 0;
        if (errno == EINTR) continue;
        return -errno;
    }
}

static void s_on_poll(uv_poll_t *h, int status, int events);

static void s_update_poll(sbx_t *self)
{
    if (!self->poll_on) return;
    bool want = self->qhead != NULL && self->ready;
    if (want == self->poll_writable) return;
    self->poll_writable = want;
    uv_poll_start(&self->poll, UV_READABLE | UV_DISCONNECT | (want ? UV_WRITABLE : 0), s_on_poll);
}

static void s_flush(sbx_t *self)
{
    while (self->qhead && self->ready && self->sock >= 0) {
        qmsg_t *q = self->qhead;
        int rc = s_sendmsg(self->sock, q->data, q->len, q->fds, q->nfds);
        if (rc == -EAGAIN) break;
        self->qhead = q->next;
        if (!self->qhead) self->qtail = NULL;
        self->qlen--;
        s_close_fds(q->fds, q->nfds);
        free(q);
        if (rc < 0) {
            s_lost(self, KB_ECLOSED, "cannot write to the agent: %s", strerror(-rc));
            return;
        }
    }
    s_update_poll(self);
}

int sbx__send(sbx_t *self, const void *buf, size_t len, const int *fds, int nfds)
{
    if (self->lost || self->destroyed || self->failed || self->sock < 0) return KB_ECLOSED;
    if (!len || nfds > AP_MAX_FDS) return KB_EINVAL;
    if (self->ready && !self->qhead) {
        int rc = s_sendmsg(self->sock, buf, len, fds, nfds);
        if (rc == 0) return 0;
        if (rc != -EAGAIN) {
            s_lost(self, KB_ECLOSED, "cannot write to the agent: %s", strerror(-rc));
            return KB_ECLOSED;
        }
    }
    if (self->qlen >= QUEUE_MAX) return KB_ENOMEM;
    qmsg_t *q = malloc(sizeof *q + len);
    if (!q) return KB_ENOMEM;
    q->next = NULL;
    q->len = len;
    q->nfds = 0;
    for (int i = 0; i < nfds; i++) {
        q->fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (q->fds[i] < 0) {
            s_close_fds(q->fds, i);
            free(q);
            return KB_EIO;
        }
        q->nfds++;
    }
    memcpy(q->data, buf, len);
    if (self->qtail) self->qtail->next = q;
    else self->qhead = q;
    self->qtail = q;
    self->qlen++;
    s_update_poll(self);
    return 0;
}

static int s_send_simple(sbx_t *self, uint8_t type, uint64_t id)
{
    uint8_t buf[64];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, type, id);
    return sbx__send(self, buf, ap_end(&w), NULL, 0);
}

int sbx__kill(sbx_t *self, uint64_t id, int signo, unsigned mode)
{
    uint8_t buf[64];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, AP_KILL, id);
    ap_put_u32(&w, APT_SIGNO, (uint32_t) signo);
    ap_put_u32(&w, APT_GROUP, mode);
    return sbx__send(self, buf, ap_end(&w), NULL, 0);
}

// ---------------------------------------------------------------------------------------
//  Delivery

static void s_deliver_failure(sbx_t *self, sbx_req_t *r)
{
    const char *why = r->why ? r->why : kb_strerror(r->err);
    switch (r->kind) {
    case REQ_ENTRIES:
        if (r->entries_cb) r->entries_cb(r->err, why, NULL, 0, r->arg);
        break;
    case REQ_OPEN:
        if (r->open_cb) r->open_cb(r->err, why, -1, NULL, r->arg);
        break;
    case REQ_UPLOAD: {
        sbx_upload_t *up = r->owner;
        up->req = NULL;
        if (up->cb) up->cb(up, r->err, why, -1, up->arg);
        break;
    }
    case REQ_PROC: proc__lost(r->owner); break;
    case REQ_WATCH: {
        sbx_watch_t *w = r->owner;
        w->req = NULL;
        w->busy++;
        if (!w->started) {
            w->ended = true;
            if (w->ev.on_start) w->ev.on_start(w, r->err, why, w->arg);
        } else if (!w->ended) {
            w->ended = true;
            if (w->ev.on_end) w->ev.on_end(w, r->err, why, w->arg);
        }
        w->busy--;
        if (w->dead && !w->busy) {
            sbx_t *sbx = w->sbx;
            free(w);
            sbx__unref(sbx);
        }
        break;
    }
    default: break;
    }
    (void) self;
}

//  Fail r later (a deferred callback): err, why.
static void s_fail_later(sbx_t *self, sbx_req_t *r, int err, const char *why)
{
    s_req_unlink(self, r);
    r->err = err;
    free(r->why);
    r->why = why ? strdup(why) : NULL;
    r->on_done = true;
    r->next = NULL;
    if (self->done_tail) self->done_tail->next = r;
    else self->done_head = r;
    self->done_tail = r;
    s_schedule(self);
}

static void s_fail_all(sbx_t *self, const char *why)
{
    while (self->reqs) s_fail_later(self, self->reqs, KB_ECLOSED, why);
}

static void s_on_defer(uv_timer_t *t)
{
    sbx_t *self = t->data;
    sbx__ref(self);
    while (self->done_head) {
        sbx_req_t *r = self->done_head;
        self->done_head = r->next;
        if (!self->done_head) self->done_tail = NULL;
        r->on_done = false;
        r->next = NULL;
        r->delivering = true;
        s_deliver_failure(self, r);
        s_req_free(r);
    }
    if (self->ready_pending) {
        self->ready_pending = false;
        if (!self->destroyed && self->ev.on_ready)
            self->ev.on_ready(self, self->ready_err, self->ready_err ? self->why : NULL, self->arg);
    }
    if (self->lost_pending) {
        self->lost_pending = false;
        if (!self->destroyed && self->ev.on_lost) self->ev.on_lost(self, self->why, self->arg);
    }
    sbx__unref(self);
}

// ---------------------------------------------------------------------------------------
//  The agent going away

static void s_on_poll_closed(uv_handle_t *h)
{
    sbx_t *self = h->data;
    //  Only now: closing the fd while libuv still knew it could let a later close of the
    //  handle unregister whatever reused the number.
    if (self->sock_closing >= 0) close(self->sock_closing);
    self->sock_closing = -1;
    s_on_handle_closed(h);
}

static void s_stop_agent(sbx_t *self)
{
    if (self->poll.data == self && !uv_is_closing((uv_handle_t *) &self->poll)) {
        //  The agent sees EOF once the socket closes: it kills everything and exits.
        self->sock_closing = self->sock;
        self->sock = -1;
        self->poll_on = false;
        uv_close((uv_handle_t *) &self->poll, s_on_poll_closed);
    } else if (self->sock >= 0) {
        close(self->sock);
        self->sock = -1;
    }
    if (self->pidfd >= 0) {
        syscall(SYS_pidfd_send_signal, self->pidfd, SIGKILL, NULL, 0);
        close(self->pidfd);
        self->pidfd = -1;
    }
    if (self->process_running) {
        uv_process_kill(&self->process, SIGTERM);
        uv_timer_stop(&self->timer);
        uv_timer_start(&self->timer, s_on_timer, KILL_GRACE_MS, 0);
    }
    while (self->qhead) {
        qmsg_t *q = self->qhead;
        self->qhead = q->next;
        s_close_fds(q->fds, q->nfds);
        free(q);
    }
    self->qtail = NULL;
    self->qlen = 0;
}

static void s_lost(sbx_t *self, int err, const char *fmt, ...)
{
    if (self->lost || self->destroyed || self->failed) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(self->why, sizeof self->why, fmt, ap);
    va_end(ap);
    s_stop_agent(self);
    if (!self->ready) {
        self->failed = true;
        self->ready_err = err;
        self->ready_pending = true;
        klog_warn("sandbox %s: could not start: %s", self->id, self->why);
    } else {
        self->lost = true;
        self->lost_pending = true;
        klog_warn("sandbox %s: lost: %s", self->id, self->why);
    }
    s_fail_all(self, "the sandbox is gone");
    s_schedule(self);
}

// ---------------------------------------------------------------------------------------
//  Threadpool work: cgroups and state

typedef struct {
    uv_work_t work;
    sbx_t *sbx;        //  create: the sandbox (referenced)
    cgroup_t *cg;
    char *path;
    cgroup_limits_t limits;
    int err;
    char why[256];
    //  remove_state
    char *dir;
    void (*done)(int, void *);
    void *arg;
} job_t;

static void s_job_free(job_t *j)
{
    cgroup_destroy(&j->cg);
    free(j->path);
    free(j->dir);
    free(j);
}

static void s_cg_remove_work(uv_work_t *w)
{
    job_t *j = w->data;
    cgroup_freeze(j->cg, false);
    int rc = cgroup_kill_all(j->cg, 5000);
    if (rc == 0) rc = cgroup_remove(j->cg);
    j->err = rc;
}

static void s_cg_remove_after(uv_work_t *w, int status)
{
    job_t *j = w->data;
    (void) status;
    if (j->err) klog_warn("sandbox: cgroup %s not removed: %s", j->path, kb_strerror(j->err));
    s_job_free(j);
}

//  Kill everything in the cgroup and remove it, in the background. Takes the cgroup.
static void s_cg_remove_async(uv_loop_t *loop, cgroup_t *cg, const char *path)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j) {
        cgroup_destroy(&cg);
        return;
    }
    j->cg = cg;
    j->path = strdup(path ? path : "");
    j->work.data = j;
    if (uv_queue_work(loop, &j->work, s_cg_remove_work, s_cg_remove_after) < 0) s_job_free(j);
}

static void s_start_agent(sbx_t *self);

static void s_cg_create_work(uv_work_t *w)
{
    job_t *j = w->data;
    j->cg = cgroup_new(j->path, &j->limits, j->why, sizeof j->why, &j->err);
}

static void s_cg_create_after(uv_work_t *w, int status)
{
    job_t *j = w->data;
    sbx_t *self = j->sbx;
    self->work--;
    if (self->destroyed || status < 0) {
        if (j->cg) s_cg_remove_async(self->loop, j->cg, j->path);
        j->cg = NULL;
    } else if (!j->cg) {
        snprintf(self->why, sizeof self->why, "%s", j->why);
        self->failed = true;
        self->ready_err = j->err;
        self->ready_pending = true;
        s_fail_all(self, "the sandbox could not start");
        s_schedule(self);
    } else {
        self->cg = j->cg;
        j->cg = NULL;
        s_start_agent(self);
    }
    s_job_free(j);
    sbx__unref(self);
}

// ---------------------------------------------------------------------------------------
//  Starting the agent

static void s_on_agent_exit(uv_process_t *p, int64_t status, int signo)
{
    sbx_t *self = p->data;
    self->process_running = false;
    uv_timer_stop(&self->timer);
    if (!self->destroyed)
        s_lost(self, KB_ECLOSED, "the agent exited (%s %d)", signo ? "signal" : "status",
               signo ? signo : (int) status);
    uv_close((uv_handle_t *) p, s_on_handle_closed);
    s_maybe_free(self);
}

static void s_on_timer(uv_timer_t *t)
{
    sbx_t *self = t->data;
    if (self->process_running && (self->destroyed || self->lost || self->failed)) {
        uv_process_kill(&self->process, SIGKILL);  //  its own cleanup took too long
        return;
    }
    if (!self->ready) s_lost(self, KB_ETIMEDOUT, "the sandbox did not start within %d s",
                             READY_TIMEOUT_MS / 1000);
}

static void s_start_agent(sbx_t *self)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        s_lost(self, KB_ESPAWN, "socketpair: %s", strerror(errno));
        return;
    }
    //  CONFIG
    uint8_t *buf = malloc(AP_MAX_MSG);
    if (!buf) {
        close(sv[0]);
        close(sv[1]);
        s_lost(self, KB_ENOMEM, "out of memory");
        return;
    }
    ap_writer_t w;
    ap_begin(&w, buf, AP_MAX_MSG, AP_CONFIG, 0);
    ap_put_u32(&w, APT_MODE, self->isolation == SBX_ISOLATION_NAMESPACES);
    ap_put_str(&w, APT_SBX_ID, self->id);
    ap_put_u32(&w, APT_DEBUG, klog_enabled(KLOG_DEBUG));
    ap_put_u64(&w, APT_TMP_BYTES, self->tmp_bytes);
    if (self->isolation == SBX_ISOLATION_NAMESPACES) {
        ap_put_u32(&w, APT_UID_BASE, self->uid_base);
        ap_put_str(&w, APT_STATE_DIR, self->state_dir);
        if (!template_is_host(self->tmpl)) ap_put_str(&w, APT_TMPL_DIR, template_dir(self->tmpl));
        ap_put_u32(&w, APT_INTERNET, self->internet);
        ap_put_str(&w, APT_PASTA, self->pasta);
        for (size_t i = 0; i < self->nhidden; i++) ap_put_str(&w, APT_HIDDEN, self->hidden[i]);
        const char *const *th = template_hidden(self->tmpl);
        for (size_t i = 0; th && th[i]; i++) ap_put_str(&w, APT_HIDDEN, th[i]);
    } else {
        ap_put_str(&w, APT_KERNEL_DIR, self->kernel_dir);
        ap_put_str(&w, APT_HOME, self->home);
        if (self->own_kernel_dir) ap_put_u32(&w, APT_OWN_KERNEL_DIR, 1);
    }
    if (self->cg) {
        const char *files[8];
        size_t n = cgroup_procs_files(self->cg, files, 8);
        for (size_t i = 0; i < n; i++) ap_put_str(&w, APT_CGROUP_PROCS, files[i]);
    }
    size_t len = ap_end(&w);

    char *args[] = {self->agent_path, NULL};
    char *env[] = {NULL};  //  nothing of kbridge's environment (its token) goes in
    uv_stdio_container_t stdio[4];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_IGNORE;
    if (klog_enabled(KLOG_DEBUG)) {
        stdio[2].flags = UV_INHERIT_FD;
        stdio[2].data.fd = 2;
    } else {
        stdio[2].flags = UV_IGNORE;
    }
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = sv[1];
    uv_process_options_t po = {.exit_cb = s_on_agent_exit, .file = self->agent_path,
                               .args = args, .env = env, .stdio_count = 4, .stdio = stdio};
    self->process.data = self;
    if (!len) {
        free(buf);
        close(sv[0]);
        close(sv[1]);
        s_lost(self, KB_EINVAL, "the sandbox's configuration does not fit a message");
        return;
    }
    int rc = uv_spawn(self->loop, &self->process, &po);
    close(sv[1]);
    if (rc < 0) {
        free(buf);
        close(sv[0]);
        //  uv_spawn initialised the handle even though it failed: it must be closed
        self->open_handles++;
        uv_close((uv_handle_t *) &self->process, s_on_handle_closed);
        s_lost(self, KB_ESPAWN, "cannot start %s: %s", self->agent_path, uv_strerror(rc));
        return;
    }
    self->open_handles++;
    self->process_running = true;
    self->sock = sv[0];
    fcntl(self->sock, F_SETFL, fcntl(self->sock, F_GETFL) | O_NONBLOCK);
    rc = s_sendmsg(self->sock, buf, len, NULL, 0);
    free(buf);
    if (rc < 0) {
        s_lost(self, KB_ESPAWN, "cannot configure the agent: %s", strerror(-rc));
        return;
    }
    if (uv_poll_init(self->loop, &self->poll, self->sock) < 0) {
        s_lost(self, KB_ESPAWN, "cannot watch the agent's socket");
        return;
    }
    self->open_handles++;
    self->poll.data = self;
    self->poll_on = true;
    uv_poll_start(&self->poll, UV_READABLE | UV_DISCONNECT, s_on_poll);
}

// ---------------------------------------------------------------------------------------
//  Messages from the agent

//  Copy a decoded entry into r's storage.
static int s_keep_entry(sbx_req_t *r, const ap_entry_t *e)
{
    if (r->n == LIST_MAX_ENTRIES) return KB_ETOOBIG;
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 16;
        sbx_entry_t *ne = realloc(r->entries, nc * sizeof *ne);
        if (!ne) return KB_ENOMEM;
        r->entries = ne;
        r->cap = nc;
    }
    sbx_entry_t *o = &r->entries[r->n];
    memset(o, 0, sizeof *o);
    o->name = s_arena_str(&r->arena, e->name);
    o->path = s_arena_str(&r->arena, e->path);
    o->symlink_target = s_arena_str(&r->arena, e->symlink_target);
    o->owner = s_arena_str(&r->arena, e->owner);
    o->group = s_arena_str(&r->arena, e->group);
    size_t nm = 0;
    while (e->meta[nm]) nm++;
    const char **meta = s_arena_alloc(&r->arena, (nm + 1) * sizeof *meta);
    if (!o->name || !o->path || !o->owner || !o->group || !meta) return KB_ENOMEM;
    for (size_t i = 0; i < nm; i++)
        if (!(meta[i] = s_arena_str(&r->arena, e->meta[i]))) return KB_ENOMEM;
    meta[nm] = NULL;
    o->meta = meta;
    o->type = (sbx_ftype_t) e->type;
    o->target_type = (sbx_ftype_t) e->target_type;
    o->size = e->size;
    o->mode = e->mode;
    o->uid = e->uid;
    o->gid = e->gid;
    o->mtime_ns = e->mtime_ns;
    r->n++;
    return 0;
}

static void s_entry_view(const ap_entry_t *e, sbx_entry_t *o)
{
    memset(o, 0, sizeof *o);
    o->name = e->name;
    o->path = e->path;
    o->type = (sbx_ftype_t) e->type;
    o->target_type = (sbx_ftype_t) e->target_type;
    o->symlink_target = e->symlink_target;
    o->size = e->size;
    o->mode = e->mode;
    o->uid = e->uid;
    o->gid = e->gid;
    o->owner = e->owner;
    o->group = e->group;
    o->mtime_ns = e->mtime_ns;
    o->meta = e->meta;
}

//  Finish r (already unlinked): run its callback, free it.
static void s_finish_entries(sbx_req_t *r, int err, const char *why)
{
    r->delivering = true;
    if (r->entries_cb) r->entries_cb(err, why, err ? NULL : r->entries, err ? 0 : r->n, r->arg);
    s_req_free(r);
}

static bool s_fd_is(int fd, mode_t type)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == type;
}

static void s_watch_call_end(sbx_watch_t *w, int err, const char *why)
{
    w->busy++;
    if (!w->started) {
        w->ended = true;
        if (w->ev.on_start) w->ev.on_start(w, err, why, w->arg);
    } else if (!w->ended) {
        w->ended = true;
        if (w->ev.on_end) w->ev.on_end(w, err, why, w->arg);
    }
    w->busy--;
}

static void s_watch_release(sbx_watch_t *w)
{
    if (w->dead && !w->busy) {
        sbx_t *sbx = w->sbx;
        free(w);
        sbx__unref(sbx);
    }
}

//  One message. Returns -1 if it breaks the protocol. Consumed fds are set to -1.
static int s_handle(sbx_t *self, const ap_msg_t *m, int *fds, int nfds)
{
    int err, pid;
    const char *why;
    switch (m->type) {
    case AP_AGENT_PID: {
        uint32_t p;
        if (self->isolation != SBX_ISOLATION_NAMESPACES || self->got_pid || self->ready ||
            !ap_get_u32(m, APT_PID, &p) || p == 0 || p > (1u << 22))
            return -1;
        self->got_pid = true;
        //  Sent by the first process before any sandbox code ran; still, check that the
        //  pid is its child before we trust it with anything.
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%u/stat", p);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
        if (fd >= 0) close(fd);
        buf[n > 0 ? n : 0] = '\0';
        char *rp = strrchr(buf, ')');
        int ppid = 0;
        char st;
        if (!rp || sscanf(rp + 1, " %c %d", &st, &ppid) != 2 || ppid != self->process.pid)
            return -1;
        self->pidfd = (int) syscall(SYS_pidfd_open, (pid_t) p, 0);
        snprintf(path, sizeof path, "/proc/%u/ns/net", p);
        self->netns_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (self->pidfd < 0 || self->netns_fd < 0) return -1;
        self->agent_host_pid = (int) p;
        snprintf(self->kdir_host, sizeof self->kdir_host, "/proc/%u/root/run/kbridge", p);
        return 0;
    }
    case AP_HELLO:
        if (self->ready || ap_decode_hello(m, &err, &why, &pid) < 0) return -1;
        if (err) {
            s_lost(self, err, "%s", why);
            return 0;
        }
        if (self->isolation == SBX_ISOLATION_NAMESPACES && !self->got_pid) return -1;
        self->agent_pid = pid;
        self->ready = true;
        uv_timer_stop(&self->timer);
        s_flush(self);
        klog_debug("sandbox %s: ready (agent pid %d)", self->id, self->agent_host_pid);
        if (self->ev.on_ready) self->ev.on_ready(self, 0, NULL, self->arg);
        return 0;
    default: break;
    }
    if (!self->ready) return -1;
    if (m->type == AP_ERROR && m->id == 0) {
        //  About the sandbox itself, after it said ready: its network could not be set up
        //  (the agent serves while pasta starts). It ends, as a failed start would.
        if (ap_decode_error(m, &err, &why) < 0) return -1;
        s_lost(self, err ? err : KB_EIO, "%s", why && *why ? why : "the agent gave up");
        return 0;
    }
    sbx_req_t *r = s_req_find(self, m->id);
    if (!r) return 0;  //  cancelled: drop it (the caller closes the fds)
    switch (m->type) {
    case AP_ERROR:
        if (ap_decode_error(m, &err, &why) < 0) return -1;
        s_req_unlink(self, r);
        r->delivering = true;
        switch (r->kind) {
        case REQ_ENTRIES: s_finish_entries(r, err, why); return 0;
        case REQ_OPEN:
            if (r->open_cb) r->open_cb(err, why, -1, NULL, r->arg);
            break;
        case REQ_UPLOAD: {
            sbx_upload_t *up = r->owner;
            up->req = NULL;
            if (up->cb) up->cb(up, err, why, -1, up->arg);
            break;
        }
        case REQ_PROC: proc__failed(r->owner, err, why); break;
        case REQ_WATCH: {
            sbx_watch_t *w = r->owner;
            w->req = NULL;
            s_watch_call_end(w, err, why);
            s_watch_release(w);
            break;
        }
        }
        s_req_free(r);
        return 0;
    case AP_ENTRIES: {
        if (r->kind != REQ_ENTRIES) return -1;
        uint32_t more = 0;
        ap_get_u32(m, APT_MORE, &more);
        int rc = 0;
        for (size_t i = 0; i < m->n && rc == 0; i++) {
            if (m->f[i].tag != APT_ENTRY) continue;
            ap_entry_t e;
            if (ap_decode_entry(&m->f[i], s_efields, AP_MAX_FIELDS, &e) < 0) return -1;
            rc = s_keep_entry(r, &e);
        }
        if (rc < 0 || !more) {
            s_req_unlink(self, r);
            if (rc < 0 && more) s_send_simple(self, AP_CANCEL, r->id);
            s_finish_entries(r, rc,
                             rc == KB_ETOOBIG ? "too many entries"
                             : rc             ? "out of memory"
                                              : NULL);
        }
        return 0;
    }
    case AP_FD: {
        if (nfds != 1 || !s_fd_is(fds[0], S_IFREG)) return -1;
        if (r->kind == REQ_OPEN) {
            const ap_field_t *ef = ap_get(m->f, m->n, APT_ENTRY);
            ap_entry_t e;
            if (!ef || ap_decode_entry(ef, s_efields, AP_MAX_FIELDS, &e) < 0) return -1;
            int fl = fcntl(fds[0], F_GETFL);
            if (fl < 0 || (fl & O_ACCMODE) == O_WRONLY) return -1;
            sbx_entry_t view;
            s_entry_view(&e, &view);
            s_req_unlink(self, r);
            r->delivering = true;
            int fd = fds[0];
            fds[0] = -1;
            if (r->open_cb) r->open_cb(0, NULL, fd, &view, r->arg);
            else close(fd);
            s_req_free(r);
            return 0;
        }
        if (r->kind == REQ_UPLOAD) {
            int fl = fcntl(fds[0], F_GETFL);
            if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY) return -1;
            sbx_upload_t *up = r->owner;
            s_req_unlink(self, r);
            up->req = NULL;
            up->fd = fds[0];
            fds[0] = -1;
            if (up->cb) up->cb(up, 0, NULL, up->fd, up->arg);
            s_req_free(r);
            return 0;
        }
        return -1;
    }
    case AP_SPAWNED: {
        uint32_t flags;
        int need;
        if (r->kind != REQ_PROC || ap_decode_spawned(m, &pid, &flags, &need) < 0 || nfds != need)
            return -1;
        for (int i = 0; i < nfds; i++)
            if (!s_fd_is(fds[i], (flags & APS_PTY) ? S_IFCHR : S_IFIFO)) return -1;
        int taken[AP_MAX_FDS];
        memcpy(taken, fds, sizeof(int) * (size_t) nfds);
        for (int i = 0; i < nfds; i++) fds[i] = -1;
        proc__spawned(r->owner, pid, flags, taken, nfds);
        return 0;
    }
    case AP_EXIT: {
        int status;
        if (r->kind != REQ_PROC || ap_decode_exit(m, &pid, &status) < 0) return -1;
        s_req_unlink(self, r);
        r->delivering = true;
        proc__exited(r->owner, status);
        s_req_free(r);
        return 0;
    }
    case AP_WATCH_STARTED: {
        if (r->kind != REQ_WATCH) return -1;
        sbx_watch_t *w = r->owner;
        if (w->started) return -1;
        w->started = true;
        w->busy++;
        if (w->ev.on_start) w->ev.on_start(w, 0, NULL, w->arg);
        w->busy--;
        s_watch_release(w);
        return 0;
    }
    case AP_WATCH_EVENT: {
        int type;
        const char *name;
        bool is_dir;
        if (r->kind != REQ_WATCH || ap_decode_event(m, &type, &name, &is_dir) < 0) return -1;
        sbx_watch_t *w = r->owner;
        if (!w->started || w->ended) return -1;
        w->busy++;
        if (w->ev.on_event) w->ev.on_event(w, (sbx_event_t) type, name, is_dir, w->arg);
        w->busy--;
        s_watch_release(w);
        return 0;
    }
    case AP_WATCH_END: {
        if (r->kind != REQ_WATCH || ap_decode_error(m, &err, &why) < 0) return -1;
        sbx_watch_t *w = r->owner;
        s_req_unlink(self, r);
        w->req = NULL;
        s_watch_call_end(w, err, why);
        s_req_free(r);
        s_watch_release(w);
        return 0;
    }
    default: return -1;
    }
}

static void s_receive(sbx_t *self)
{
    for (int budget = 0; budget < RX_BUDGET && self->sock >= 0 && !self->destroyed; budget++) {
        struct iovec iov = {.iov_base = s_rx, .iov_len = AP_MAX_MSG + 1};
        union {
            char buf[CMSG_SPACE(sizeof(int) * AP_MAX_FDS)];
            struct cmsghdr align;
        } ctl;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                            .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(self->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) {
            s_lost(self, KB_ECLOSED,
                   n == 0 ? "the agent closed its socket" : "the agent's socket failed");
            return;
        }
        int fds[AP_MAX_FDS], nfds = 0;
        bool too_many = false;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *p = (int *) CMSG_DATA(c);
            for (size_t i = 0; i < k; i++) {
                if (nfds < AP_MAX_FDS) fds[nfds++] = p[i];
                else {
                    close(p[i]);
                    too_many = true;
                }
            }
        }
        ap_msg_t m = {.f = s_fields, .cap = AP_MAX_FIELDS};
        int rc = (too_many || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
                     ? -1
                     : ap_parse(s_rx, (size_t)n, &m);
        sbx__ref(self);
        if (rc == 0) rc = s_handle(self, &m, fds, nfds);
        s_close_fds(fds, nfds);
        if (rc < 0)
            s_lost(self, KB_EPROTO, "the agent broke the protocol (message type %d)", m.type);
        bool stop = self->destroyed || self->lost || self->failed;
        sbx__unref(self);
        if (stop) return;
    }
}

static void s_on_poll(uv_poll_t *h, int status, int events)
{
    sbx_t *self = h->data;
    sbx__ref(self);
    if (status < 0) {
        s_lost(self, KB_ECLOSED, "the agent's socket failed: %s", uv_strerror(status));
    } else {
        if (events & UV_WRITABLE) s_flush(self);
        if (events & (UV_READABLE | UV_DISCONNECT)) s_receive(self);
    }
    sbx__unref(self);
}

// ---------------------------------------------------------------------------------------
//  Lifecycle

static void s_free(sbx_t *self)
{
    cgroup_destroy(&self->cg);
    if (self->netns_fd >= 0) close(self->netns_fd);
    if (self->host_netns_fd >= 0) close(self->host_netns_fd);
    for (size_t i = 0; i < self->nhidden; i++) free(self->hidden[i]);
    free(self->hidden);
    free(self->agent_path);
    free(self->kernel_dir);
    free(self->home);
    free(self->state_dir);
    free(self->cgroup_path);
    free(self->pasta);
    free(self);
}

static void s_maybe_free(sbx_t *self)
{
    if (self->refs > 0 || self->process_running || self->work > 0 || self->done_head) return;
    if (!self->freeing) {
        self->freeing = true;
        s_stop_agent(self);  //  closes the poll handle and the socket, if still open
        uv_close((uv_handle_t *) &self->timer, s_on_handle_closed);
        uv_close((uv_handle_t *) &self->defer, s_on_handle_closed);
        return;
    }
    if (self->open_handles == 0) s_free(self);
}

void sbx__ref(sbx_t *self)
{
    self->refs++;
}

void sbx__unref(sbx_t *self)
{
    if (--self->refs == 0) s_maybe_free(self);
}

static char *s_find_in_path(const char *name)
{
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    char full[PATH_MAX];
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t) (colon - p) : strlen(p);
        if (n) {
            snprintf(full, sizeof full, "%.*s/%s", (int) n, p, name);
            if (access(full, X_OK) == 0) return strdup(full);
        }
        if (!colon) return NULL;
        p = colon + 1;
    }
}

sbx_t *sbx_new(uv_loop_t *loop, const sbx_opts_t *opts, const sbx_events_t *events, void *arg,
               int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_EINVAL;
    if (!loop || !opts || !s_id_ok(opts->id) || !opts->agent_path) return NULL;
    bool ns = opts->isolation == SBX_ISOLATION_NAMESPACES;
    if (opts->isolation != SBX_ISOLATION_NONE && !ns) return NULL;
    if (ns && (!opts->tmpl || !s_path_ok(opts->state_dir) || opts->uid_base == 0 ||
               opts->uid_base > UINT32_MAX - 65536 || strpbrk(opts->state_dir, ",:\\\n")))
        return NULL;
    if (!ns && opts->kernel_dir && !s_path_ok(opts->kernel_dir)) return NULL;
    if (access(opts->agent_path, X_OK) < 0) {
        *err = KB_ESPAWN;
        return NULL;
    }
    *err = KB_ENOMEM;
    sbx_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->sock = self->sock_closing = self->pidfd = self->netns_fd = self->host_netns_fd = -1;
    self->loop = loop;
    snprintf(self->id, sizeof self->id, "%s", opts->id);
    self->isolation = opts->isolation;
    self->tmpl = opts->tmpl;
    self->uid_base = opts->uid_base;
    self->internet = ns && opts->internet;
    self->own_kernel_dir = !ns && opts->kernel_dir && opts->own_kernel_dir;
    self->limits.memory_bytes = opts->memory_bytes;
    self->limits.cpu_millis = opts->cpu_millis;
    self->limits.pids = opts->pids;
    self->tmp_bytes = opts->tmp_bytes ? opts->tmp_bytes
                    : opts->memory_bytes ? opts->memory_bytes / 4 : 1ull << 30;
    if (events) self->ev = *events;
    self->arg = arg;
    self->refs = 1;
    self->agent_path = strdup(opts->agent_path);
    self->kernel_dir = kb_strdup(opts->kernel_dir);
    self->home = kb_strdup(opts->home);
    self->state_dir = kb_strdup(opts->state_dir);
    self->cgroup_path = kb_strdup(opts->cgroup);
    size_t nh = 0;
    while (opts->hidden && opts->hidden[nh]) nh++;
    self->hidden = calloc(nh + 1, sizeof *self->hidden);
    bool ok = self->agent_path && self->hidden &&
              (!opts->kernel_dir || self->kernel_dir) && (!opts->home || self->home) &&
              (!opts->state_dir || self->state_dir) && (!opts->cgroup || self->cgroup_path);
    for (size_t i = 0; ok && i < nh; i++) {
        if (!(self->hidden[i] = strdup(opts->hidden[i]))) ok = false;
        else self->nhidden++;
    }
    if (ok && self->internet) {
        self->pasta = opts->pasta ? strdup(opts->pasta) : s_find_in_path("pasta");
        if (!self->pasta) {
            *err = KB_ESPAWN;  //  sbx_probe says how to fix it
            ok = false;
        }
    }
    if (!ok) {
        s_free(self);
        return NULL;
    }
    self->host_netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    uv_timer_init(loop, &self->timer);
    uv_timer_init(loop, &self->defer);
    self->timer.data = self->defer.data = self;
    self->open_handles = 2;
    //  The timers' callbacks (uv_timer_start takes them; s_schedule passes NULL-safe ones).
    uv_timer_start(&self->timer, s_on_timer, READY_TIMEOUT_MS, 0);
    if (self->cgroup_path) {
        job_t *j = calloc(1, sizeof *j);
        if (j) {
            j->sbx = self;
            j->path = strdup(self->cgroup_path);
            j->limits = self->limits;
            j->work.data = j;
        }
        if (!j || !j->path ||
            uv_queue_work(loop, &j->work, s_cg_create_work, s_cg_create_after) < 0) {
            if (j) s_job_free(j);
            s_lost(self, KB_ENOMEM, "cannot queue the cgroup's creation");
        } else {
            self->work++;
            sbx__ref(self);
        }
    } else {
        s_start_agent(self);
    }
    *err = 0;
    return self;
}

void sbx_destroy(sbx_t **self_p)
{
    sbx_t *self = *self_p;
    if (!self) return;
    *self_p = NULL;
    if (self->destroyed) return;
    self->destroyed = true;
    if (self->cg && cgroup_has_freezer(self->cg)) cgroup_freeze(self->cg, false);
    s_stop_agent(self);
    s_fail_all(self, "the sandbox was destroyed");
    if (self->cg) {
        s_cg_remove_async(self->loop, self->cg, self->cgroup_path);
        self->cg = NULL;
    }
    sbx__unref(self);
}

// ---------------------------------------------------------------------------------------
//  Accessors

const char *sbx_id(const sbx_t *self)
{
    return self->id;
}

bool sbx_ready(const sbx_t *self)
{
    return self->ready && !self->lost && !self->destroyed;
}

sbx_isolation_t sbx_isolation(const sbx_t *self)
{
    return self->isolation;
}

bool sbx__alive(const sbx_t *self)
{
    return !self->lost && !self->destroyed && !self->failed;
}

uv_loop_t *sbx__loop(const sbx_t *self)
{
    return self->loop;
}

uint64_t sbx__oom_kills(const sbx_t *self)
{
    return self->cg ? cgroup_oom_kills(self->cg) : 0;
}

int sbx_freeze(sbx_t *self)
{
    if (!self->cg || !cgroup_has_freezer(self->cg)) return KB_EINVAL;
    return cgroup_freeze(self->cg, true);
}

int sbx_thaw(sbx_t *self)
{
    if (!self->cg || !cgroup_has_freezer(self->cg)) return KB_EINVAL;
    return cgroup_freeze(self->cg, false);
}

int sbx_stats(sbx_t *self, sbx_stats_t *stats)
{
    memset(stats, 0, sizeof *stats);
    if (!self->cg) return KB_EINVAL;
    cgroup_stats_t st;
    int rc = cgroup_stats(self->cg, &st);
    stats->memory_bytes = st.memory_bytes;
    stats->memory_limit = st.memory_limit;
    stats->cpu_ns = st.cpu_ns;
    stats->pids = st.pids;
    stats->oom_kills = st.oom_kills;
    return rc;
}

int sbx_socket(sbx_t *self, int domain, int type)
{
    type |= SOCK_NONBLOCK | SOCK_CLOEXEC;
    if (self->isolation == SBX_ISOLATION_NONE) {
        int fd = socket(domain, type, 0);
        return fd >= 0 ? fd : KB_EIO;
    }
    if (!sbx_ready(self) || self->netns_fd < 0) return KB_ECLOSED;
    //  The network namespace is per thread: enter the sandbox's on this thread, make the
    //  socket, and come back, through descriptors opened beforehand.
    int back = self->host_netns_fd;
    if (back < 0) return KB_EIO;
    if (setns(self->netns_fd, CLONE_NEWNET) < 0) return KB_EIO;
    int fd = socket(domain, type, 0);
    int e = errno;
    if (setns(back, CLONE_NEWNET) < 0) {
        //  This thread would go on in the sandbox's network: never.
        klog_error("sandbox %s: cannot return to the host's network namespace", self->id);
        abort();
    }
    errno = e;
    return fd >= 0 ? fd : KB_EIO;
}

const char *sbx_kernel_dir(const sbx_t *self)
{
    if (self->isolation == SBX_ISOLATION_NONE) return self->kernel_dir;
    return self->kdir_host[0] ? self->kdir_host : NULL;
}

const char *sbx_kernel_dir_inside(const sbx_t *self)
{
    return self->isolation == SBX_ISOLATION_NONE ? self->kernel_dir : "/run/kbridge";
}

int sbx_kernel_dir_fd(const sbx_t *self)
{
    if (self->isolation == SBX_ISOLATION_NONE) {
        if (!self->kernel_dir) return KB_EINVAL;
        int fd = open(self->kernel_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        return fd >= 0 ? fd : KB_EIO;
    }
    if (!sbx_ready(self) || !self->agent_host_pid) return KB_ECLOSED;
    char root[64];
    snprintf(root, sizeof root, "/proc/%d/root", self->agent_host_pid);
    int rfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0) return KB_ECLOSED;
    struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    int fd = (int) syscall(SYS_openat2, rfd, "run/kbridge", &how, sizeof how);
    int e = errno;
    close(rfd);
    if (fd >= 0) return fd;
    return e == ENOENT ? KB_ENOTFOUND : e == ENOTDIR ? KB_ENOTDIR : KB_EIO;
}

int sbx_host_ids(const sbx_t *self, const char *user, uid_t *uid, gid_t *gid)
{
    if (user && strcmp(user, "root") != 0 && strcmp(user, "user") != 0) return KB_EINVAL;
    if (self->isolation == SBX_ISOLATION_NONE) {
        *uid = getuid();
        *gid = getgid();
        return 0;
    }
    uint32_t n = user && strcmp(user, "user") == 0 ? 1000 : 0;
    *uid = self->uid_base + n;
    *gid = self->uid_base + n;
    return 0;
}

int sbx_agent_pid(const sbx_t *self)
{
    return self->agent_pid;
}

const char *sbx_home(const sbx_t *self, const char *user)
{
    if (self->isolation == SBX_ISOLATION_NONE) return self->home;
    return user && strcmp(user, "user") == 0 ? "/home/user" : "/root";
}

// ---------------------------------------------------------------------------------------
//  proc.c's side

sbx_req_t *sbx__proc_register(sbx_t *self, proc_t *proc, uint64_t *id, int *err)
{
    if (!sbx__alive(self)) {
        *err = KB_ECLOSED;
        return NULL;
    }
    sbx_req_t *r = s_req_new(self, REQ_PROC);
    if (!r) {
        *err = KB_ENOMEM;
        return NULL;
    }
    r->owner = proc;
    *id = r->id;
    return r;
}

void sbx__proc_forget(sbx_req_t *r)
{
    if (!r) return;
    s_req_unlink(r->sbx, r);
    s_req_free(r);
}

// ---------------------------------------------------------------------------------------
//  File operations

void sbx_req_cancel(sbx_req_t *r)
{
    if (!r || r->delivering) return;
    sbx_t *self = r->sbx;
    bool pending = !r->on_done;
    s_req_unlink(self, r);
    if (pending && r->kind == REQ_ENTRIES) s_send_simple(self, AP_CANCEL, r->id);
    if (pending && r->kind == REQ_OPEN) s_send_simple(self, AP_CANCEL, r->id);
    s_req_free(r);
}

static int s_begin_req(sbx_t *self, int kind, uint8_t type, const char *user, const char *path,
                       ap_writer_t *w, uint8_t *buf, size_t cap, sbx_req_t **out)
{
    if (!sbx__alive(self)) return KB_ECLOSED;
    if (!s_path_ok(path)) return KB_EINVAL;
    if (user && strcmp(user, "root") != 0 && strcmp(user, "user") != 0) return KB_EINVAL;
    sbx_req_t *r = s_req_new(self, kind);
    if (!r) return KB_ENOMEM;
    ap_begin(w, buf, cap, type, r->id);
    ap_put_str(w, APT_USER, user);
    ap_put_str(w, APT_PATH, path);
    *out = r;
    return 0;
}

static sbx_req_t *s_send_req(sbx_t *self, sbx_req_t *r, ap_writer_t *w, const int *fds, int nfds)
{
    size_t n = ap_end(w);
    int rc = n ? sbx__send(self, w->buf, n, fds, nfds) : KB_EINVAL;
    if (rc < 0) {
        s_req_unlink(self, r);
        s_req_free(r);
        return NULL;
    }
    return r;
}

static sbx_req_t *s_entries_req(sbx_t *self, uint8_t type, const char *user, const char *path,
                                const char *path2, int depth, bool parents,
                                const char *const *pairs, sbx_entries_fn *cb, void *arg)
{
    uint8_t *buf = malloc(AP_MAX_MSG);
    if (!buf) return NULL;
    ap_writer_t w;
    sbx_req_t *r = NULL;
    if (s_begin_req(self, REQ_ENTRIES, type, user, path, &w, buf, AP_MAX_MSG, &r) < 0) {
        free(buf);
        return NULL;
    }
    r->entries_cb = cb;
    r->arg = arg;
    if (path2) ap_put_str(&w, APT_PATH2, path2);
    if (type == AP_LIST) ap_put_u32(&w, APT_DEPTH, (uint32_t) (depth < 1 ? 1 : depth));
    if (type == AP_MKDIR) ap_put_u32(&w, APT_PARENTS, parents);
    for (size_t i = 0; pairs && pairs[i]; i++) ap_put_str(&w, APT_META, pairs[i]);
    r = s_send_req(self, r, &w, NULL, 0);
    free(buf);
    return r;
}

sbx_req_t *sbx_stat(sbx_t *self, const char *user, const char *path, sbx_entries_fn *cb, void *arg)
{
    return s_entries_req(self, AP_STAT, user, path, NULL, 0, false, NULL, cb, arg);
}

sbx_req_t *sbx_list(sbx_t *self, const char *user, const char *path, int depth,
                    sbx_entries_fn *cb, void *arg)
{
    return s_entries_req(self, AP_LIST, user, path, NULL, depth, false, NULL, cb, arg);
}

sbx_req_t *sbx_mkdir(sbx_t *self, const char *user, const char *path, bool parents,
                     sbx_entries_fn *cb, void *arg)
{
    return s_entries_req(self, AP_MKDIR, user, path, NULL, 0, parents, NULL, cb, arg);
}

sbx_req_t *sbx_rename(sbx_t *self, const char *user, const char *from, const char *to,
                      sbx_entries_fn *cb, void *arg)
{
    if (!s_path_ok(to)) return NULL;
    return s_entries_req(self, AP_RENAME, user, from, to, 0, false, NULL, cb, arg);
}

sbx_req_t *sbx_remove(sbx_t *self, const char *user, const char *path, sbx_entries_fn *cb,
                      void *arg)
{
    return s_entries_req(self, AP_REMOVE, user, path, NULL, 0, false, NULL, cb, arg);
}

sbx_req_t *sbx_set_meta(sbx_t *self, const char *user, const char *path,
                        const char *const *pairs, sbx_entries_fn *cb, void *arg)
{
    size_t n = 0;
    while (pairs && pairs[n]) n++;
    if (n % 2 || n > 2 * AP_MAX_META) return NULL;
    return s_entries_req(self, AP_SETMETA, user, path, NULL, 0, false, pairs, cb, arg);
}

sbx_req_t *sbx_open_read(sbx_t *self, const char *user, const char *path, sbx_open_fn *cb,
                         void *arg)
{
    uint8_t buf[PATH_MAX + 256];
    ap_writer_t w;
    sbx_req_t *r = NULL;
    if (s_begin_req(self, REQ_OPEN, AP_OPEN, user, path, &w, buf, sizeof buf, &r) < 0) return NULL;
    r->open_cb = cb;
    r->arg = arg;
    return s_send_req(self, r, &w, NULL, 0);
}

// ---------------------------------------------------------------------------------------
//  Uploads

sbx_upload_t *sbx_upload_begin(sbx_t *self, const char *user, const char *path, bool parents,
                               sbx_upload_fn *cb, void *arg)
{
    sbx_upload_t *up = calloc(1, sizeof *up);
    if (!up) return NULL;
    uint8_t buf[PATH_MAX + 256];
    ap_writer_t w;
    sbx_req_t *r = NULL;
    if (s_begin_req(self, REQ_UPLOAD, AP_UPLOAD_BEGIN, user, path, &w, buf, sizeof buf, &r) < 0) {
        free(up);
        return NULL;
    }
    ap_put_u32(&w, APT_PARENTS, parents);
    up->sbx = self;
    up->fd = -1;
    up->cb = cb;
    up->arg = arg;
    up->begin_id = r->id;
    r->owner = up;
    if (!s_send_req(self, r, &w, NULL, 0)) {
        free(up);
        return NULL;
    }
    up->req = r;
    sbx__ref(self);
    return up;
}

static void s_upload_free(sbx_upload_t *up)
{
    if (up->req) {
        s_req_unlink(up->sbx, up->req);
        s_req_free(up->req);
        up->req = NULL;
    }
    if (up->fd >= 0) close(up->fd);
    sbx_t *sbx = up->sbx;
    free(up);
    sbx__unref(sbx);
}

void sbx_upload_commit(sbx_upload_t **up_p, sbx_entries_fn *done, void *arg)
{
    sbx_upload_t *up = *up_p;
    if (!up) return;
    *up_p = NULL;
    sbx_t *self = up->sbx;
    sbx_req_t *r = s_req_new(self, REQ_ENTRIES);
    if (!r) {
        if (done) done(KB_ENOMEM, "out of memory", NULL, 0, arg);  //  cannot defer without memory
        s_upload_free(up);
        return;
    }
    r->entries_cb = done;
    r->arg = arg;
    if (up->fd < 0 || up->req || !sbx__alive(self)) {
        s_fail_later(self, r, sbx__alive(self) ? KB_EINVAL : KB_ECLOSED,
                     up->fd < 0 ? "the upload has no file (not begun, or failed)"
                                : "the sandbox is gone");
        s_upload_free(up);
        return;
    }
    uint8_t buf[128];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, AP_UPLOAD_COMMIT, r->id);
    ap_put_u64(&w, APT_UPLOAD, up->begin_id);
    int rc = sbx__send(self, buf, ap_end(&w), &up->fd, 1);
    if (rc < 0) s_fail_later(self, r, rc, "cannot reach the agent");
    s_upload_free(up);
}

void sbx_upload_abort(sbx_upload_t **up_p)
{
    sbx_upload_t *up = *up_p;
    if (!up) return;
    *up_p = NULL;
    sbx_t *self = up->sbx;
    if (sbx__alive(self)) {
        //  With the fd the agent removes only the very file it made; without (still
        //  beginning) it stops the BEGIN and cleans up after it.
        uint8_t buf[64];
        ap_writer_t w;
        ap_begin(&w, buf, sizeof buf, AP_UPLOAD_ABORT, up->begin_id);
        sbx__send(self, buf, ap_end(&w), up->fd >= 0 ? &up->fd : NULL, up->fd >= 0 ? 1 : 0);
    }
    s_upload_free(up);
}

// ---------------------------------------------------------------------------------------
//  Watches

sbx_watch_t *sbx_watch(sbx_t *self, const char *user, const char *path, bool recursive,
                       const sbx_watch_events_t *events, void *arg, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    sbx_watch_t *w = calloc(1, sizeof *w);
    if (!w) {
        *err = KB_ENOMEM;
        return NULL;
    }
    uint8_t buf[PATH_MAX + 256];
    ap_writer_t wr;
    sbx_req_t *r = NULL;
    int rc = s_begin_req(self, REQ_WATCH, AP_WATCH, user, path, &wr, buf, sizeof buf, &r);
    if (rc < 0) {
        free(w);
        *err = rc;
        return NULL;
    }
    ap_put_u32(&wr, APT_RECURSIVE, recursive);
    w->sbx = self;
    if (events) w->ev = *events;
    w->arg = arg;
    r->owner = w;
    if (!s_send_req(self, r, &wr, NULL, 0)) {
        free(w);
        *err = KB_ECLOSED;
        return NULL;
    }
    w->req = r;
    sbx__ref(self);
    *err = 0;
    return w;
}

void sbx_watch_destroy(sbx_watch_t **self_p)
{
    sbx_watch_t *w = *self_p;
    if (!w) return;
    *self_p = NULL;
    if (w->dead) return;
    w->dead = true;
    if (w->req) {
        sbx_t *sbx = w->sbx;
        bool pending = !w->req->on_done;
        uint64_t id = w->req->id;
        s_req_unlink(sbx, w->req);
        s_req_free(w->req);
        w->req = NULL;
        if (pending) s_send_simple(sbx, AP_CANCEL, id);
    }
    s_watch_release(w);
}

// ---------------------------------------------------------------------------------------
//  Probing, state removal, stale cgroups

static int s_read_int(const char *path, long *out)
{
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    int rc = fscanf(f, "%ld", out) == 1 ? 0 : -1;
    fclose(f);
    return rc;
}

int sbx_probe(const char *agent_path, char *why, size_t size)
{
    if (geteuid() != 0) {
        snprintf(why, size, "namespaces isolation needs kbridge to run as root (it maps uid "
                            "ranges and makes idmapped mounts): run it as root, or use "
                            "isolation none");
        return KB_EINVAL;
    }
    long v;
    if (s_read_int("/proc/sys/user/max_user_namespaces", &v) == 0 && v == 0) {
        snprintf(why, size,
                 "user namespaces are disabled: sysctl -w user.max_user_namespaces=15000");
        return KB_EINVAL;
    }
    if (access("/proc/self/ns/user", F_OK) < 0) {
        snprintf(why, size, "this kernel has no user namespaces (CONFIG_USER_NS)");
        return KB_EINVAL;
    }
    FILE *f = fopen("/proc/filesystems", "re");
    bool overlay = false;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "\toverlay\n")) overlay = true;
    if (f) fclose(f);
    if (!overlay) {
        snprintf(why, size, "overlayfs is not available: modprobe overlay (CONFIG_OVERLAY_FS)");
        return KB_EINVAL;
    }
    if (!agent_path || access(agent_path, X_OK) < 0) {
        snprintf(why, size, "the agent %s is missing or not executable (build kbridge-agent)",
                 agent_path ? agent_path : "(none)");
        return KB_EINVAL;
    }
    //  The real thing, in a process of its own: a user namespace, an idmapped clone of
    //  /usr, an overlay on it.
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        snprintf(why, size, "pipe: %s", strerror(errno));
        return KB_EINVAL;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *args[] = {(char *) agent_path, "--probe", NULL};
    char *env[] = {NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, agent_path, &fa, NULL, args, env);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (rc != 0) {
        close(p[0]);
        snprintf(why, size, "cannot run %s: %s", agent_path, strerror(rc));
        return KB_EINVAL;
    }
    char out[1024];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof out - 1 &&
           ((r = read(p[0], out + n, sizeof out - 1 - n)) > 0 || (r < 0 && errno == EINTR)))
        if (r > 0) n += (size_t) r;
    out[n] = '\0';
    close(p[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char *nl = strchr(out, '\n');
        if (nl) *nl = '\0';
        snprintf(why, size, "%s", out[0] ? out : "the agent's probe failed");
        return KB_EINVAL;
    }
    char *pasta = s_find_in_path("pasta");
    if (!pasta) {
        snprintf(why, size,
                 "pasta is missing (sandboxes with internet need it): apt-get install passt");
        return KB_EINVAL;
    }
    free(pasta);
    if (why && size) why[0] = '\0';
    return 0;
}

//  rm -rf without following symlinks or crossing into other filesystems.
static int s_rm_tree(int dirfd, const char *name, dev_t dev, int depth)
{
    if (depth > 4096) return KB_EINVAL;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : KB_EIO;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return KB_EIO;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        struct stat st;
        if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (st.st_dev != dev) {
                rc = KB_EBUSY;
                continue;
            }
            int r2 = s_rm_tree(fd, de->d_name, dev, depth + 1);
            if (r2 < 0) rc = r2;
        } else if (unlinkat(fd, de->d_name, 0) < 0 && errno != ENOENT) {
            rc = KB_EIO;
        }
    }
    closedir(d);
    if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && rc == 0) rc = KB_EIO;
    return rc;
}

static void s_rm_work(uv_work_t *w)
{
    job_t *j = w->data;
    struct stat st;
    if (lstat(j->dir, &st) < 0) {
        j->err = errno == ENOENT ? 0 : KB_EIO;
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        j->err = KB_ENOTDIR;
        return;
    }
    j->err = s_rm_tree(AT_FDCWD, j->dir, st.st_dev, 0);
}

static void s_rm_after(uv_work_t *w, int status)
{
    job_t *j = w->data;
    if (j->done) j->done(status < 0 ? KB_EIO : j->err, j->arg);
    s_job_free(j);
}

void sbx_remove_state(uv_loop_t *loop, const char *state_dir, void (*done)(int err, void *arg),
                      void *arg)
{
    job_t *j = calloc(1, sizeof *j);
    if (j) j->dir = kb_strdup(state_dir);
    if (!j || !j->dir || !s_path_ok(state_dir) || strcmp(state_dir, "/") == 0) {
        if (j) s_job_free(j);
        if (done) done(!j ? KB_ENOMEM : KB_EINVAL, arg);  //  nothing was queued
        return;
    }
    j->done = done;
    j->arg = arg;
    j->work.data = j;
    if (uv_queue_work(loop, &j->work, s_rm_work, s_rm_after) < 0) {
        s_job_free(j);
        if (done) done(KB_EIO, arg);
    }
}

void sbx_reap_stale(const char *cgroup_parent)
{
    cgroup_reap_stale(cgroup_parent);
}
