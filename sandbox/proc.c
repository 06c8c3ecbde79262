/*  proc - a process in a sandbox, over its agent (see proc.h).

    The agent forks and execs it, then hands us the parent ends of its stdio; from then on
    its output is ours to read, so pausing is simply not reading (the pipe fills and the
    process blocks: memory stays flat whatever it writes). Signals go through the agent,
    which knows whether the pid is still the process's (it reaps it).

    on_exit needs both the exit (AP_EXIT) and EOF on every output fd, in either order.
    Freeing waits for every libuv handle to close and for no callback to be running.
*/
#include "proc.h"
#include "sbx.h"
#include "sbx_int.h"
#include "agentproto.h"
#include "base/kberr.h"
#include "base/klog.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define STDIN_LIMIT (4u << 20)  //  bytes proc_write may leave pending
#define LINE_MAX_LOG 2048

enum { P_PENDING, P_RUNNING, P_FAILED, P_DONE };

typedef struct {
    uv_pipe_t pipe;
    proc_t *proc;
    proc_stream_t stream;
    bool open, reading, eof;
    char line[LINE_MAX_LOG];
    size_t line_len;
} pstream_t;

struct _proc_t {
    sbx_t *sbx;
    sbx_req_t *req;
    uint64_t id;
    proc_events_t ev;
    void *arg;
    char label[64];
    bool log_output, want_pty, want_stdin;
    int state;
    int pid;
    pstream_t out[2];       //  stdout, stderr; or out[0] is the pty master (read and write)
    int nout;
    uv_pipe_t in;           //  stdin pipe
    bool in_open, in_closed;
    bool is_pty;
    size_t pending;
    bool paused;
    bool exited;            //  the exit status is known
    int status;
    bool exit_delivered;
    bool start_err_pending; //  on_start(err) to deliver from a later turn
    int start_err;
    char start_why[256];
    uv_timer_t timer;       //  terminate's SIGKILL, and deferred on_start errors
    bool timer_open;
    uint64_t oom_base;
    int handles;
    int busy;
    bool destroyed;
};

static void s_try_free(proc_t *self);

// ---------------------------------------------------------------------------------------
//  Handles and freeing

static void s_on_closed(uv_handle_t *h)
{
    proc_t *self = h->data;
    self->handles--;
    s_try_free(self);
}

static void s_try_free(proc_t *self)
{
    if (!self->destroyed || self->busy || self->handles) return;
    sbx_t *sbx = self->sbx;
    free(self);
    sbx__unref(sbx);
}

static void s_on_stream_closed(uv_handle_t *h)
{
    pstream_t *s = h->data;  //  output pipes carry their stream, not the proc
    s->proc->handles--;
    s_try_free(s->proc);
}

static void s_close_stream(pstream_t *s)
{
    if (!s->open) return;
    s->open = false;
    uv_read_stop((uv_stream_t *) &s->pipe);
    uv_close((uv_handle_t *) &s->pipe, s_on_stream_closed);
}

static void s_close_stdin(proc_t *self)
{
    if (!self->in_open) return;
    self->in_open = false;
    uv_close((uv_handle_t *) &self->in, s_on_closed);
}

// ---------------------------------------------------------------------------------------
//  The end

static bool s_outputs_done(const proc_t *self)
{
    for (int i = 0; i < self->nout; i++)
        if (!self->out[i].eof) return false;
    return true;
}

static void s_maybe_exit(proc_t *self)
{
    //  Logged output (kernels) is the log's: a grandchild that keeps the pipe open must
    //  not hide the death of the process itself.
    if (self->destroyed || self->exit_delivered || !self->exited ||
        (!self->log_output && !s_outputs_done(self)))
        return;
    self->exit_delivered = true;
    self->state = P_DONE;
    if (self->timer_open) uv_timer_stop(&self->timer);
    proc_exit_t ex = {.pid = self->pid};
    int st = self->status;
    if (WIFEXITED(st)) {
        ex.exited = true;
        ex.code = WEXITSTATUS(st);
    } else {
        ex.signal = WTERMSIG(st);
        //  Killed, and the memory cgroup counted one more OOM kill since we started.
        ex.oom_killed = ex.signal == SIGKILL && sbx__oom_kills(self->sbx) > self->oom_base;
    }
    self->busy++;
    if (self->ev.on_exit) self->ev.on_exit(self, &ex, self->arg);
    self->busy--;
    s_try_free(self);
}

// ---------------------------------------------------------------------------------------
//  Output

static void s_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void) h;
    (void) suggested;
    static char slab[65536];  //  one thread, and reads never overlap
    *buf = uv_buf_init(slab, sizeof slab);
}

static void s_log_line(pstream_t *s, const char *line, size_t len)
{
    klog_info("%s %s: %.*s", s->proc->label, s->stream == PROC_STDERR ? "stderr" : "stdout",
              (int) len, line);
}

static void s_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    pstream_t *s = stream->data;
    proc_t *self = s->proc;
    if (nread == 0) return;
    if (nread < 0) {
        //  EOF, or EIO from a pty master once the last slave is closed: the end either way
        if (self->log_output && s->line_len) s_log_line(s, s->line, s->line_len);
        s->line_len = 0;
        s->eof = true;
        s_close_stream(s);
        if (self->is_pty) self->in_closed = true;
        self->busy++;
        s_maybe_exit(self);
        self->busy--;
        s_try_free(self);
        return;
    }
    if (self->log_output) {
        for (ssize_t i = 0; i < nread; i++) {
            char c = buf->base[i];
            if (c == '\n' || s->line_len == LINE_MAX_LOG) {
                s_log_line(s, s->line, s->line_len);
                s->line_len = 0;
                if (c == '\n') continue;
            }
            s->line[s->line_len++] = c;
        }
        return;
    }
    if (self->destroyed || !self->ev.on_output) return;
    self->busy++;
    self->ev.on_output(self, s->stream, buf->base, (size_t) nread, self->arg);
    self->busy--;
    s_try_free(self);
}

static void s_start_reading(proc_t *self)
{
    for (int i = 0; i < self->nout; i++) {
        pstream_t *s = &self->out[i];
        if (s->open && !s->eof && !s->reading) {
            s->reading = true;
            uv_read_start((uv_stream_t *) &s->pipe, s_alloc, s_on_read);
        }
    }
}

static void s_stop_reading(proc_t *self)
{
    for (int i = 0; i < self->nout; i++) {
        pstream_t *s = &self->out[i];
        if (s->open && s->reading) {
            s->reading = false;
            uv_read_stop((uv_stream_t *) &s->pipe);
        }
    }
}

// ---------------------------------------------------------------------------------------
//  From sbx.c

static int s_open_pipe(proc_t *self, uv_pipe_t *p, int fd)
{
    if (uv_pipe_init(sbx__loop(self->sbx), p, 0) < 0) return -1;
    p->data = self;
    self->handles++;
    if (uv_pipe_open(p, fd) < 0) {
        uv_close((uv_handle_t *) p, s_on_closed);
        return -1;
    }
    return 0;
}

void proc__spawned(proc_t *self, int pid, uint32_t flags, int *fds, int nfds)
{
    self->pid = pid;
    self->state = P_RUNNING;
    self->is_pty = (flags & APS_PTY) != 0;
    bool ok = true;
    int k = 0;
    if (self->is_pty) {
        pstream_t *s = &self->out[0];
        s->proc = self;
        s->stream = PROC_PTY;
        ok = s_open_pipe(self, &s->pipe, fds[k]) == 0;
        if (ok) {
            s->pipe.data = s;
            s->open = true;
            fds[k] = -1;
        }
        k++;
        self->nout = 1;
    } else {
        if (flags & APS_STDIN) {
            ok = s_open_pipe(self, &self->in, fds[k]) == 0;
            if (ok) {
                self->in_open = true;
                fds[k] = -1;
            }
            k++;
        }
        for (int i = 0; i < 2 && ok; i++, k++) {
            pstream_t *s = &self->out[i];
            s->proc = self;
            s->stream = i == 0 ? PROC_STDOUT : PROC_STDERR;
            ok = s_open_pipe(self, &s->pipe, fds[k]) == 0;
            if (ok) {
                s->pipe.data = s;
                s->open = true;
                fds[k] = -1;
            }
        }
        self->nout = 2;
    }
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0) close(fds[i]);
    if (!ok) {
        //  We cannot read it: kill it, and let it end as killed.
        klog_warn("%s: cannot watch the process's output", self->label);
        sbx__kill(self->sbx, self->id, SIGKILL, AK_GROUP);
        for (int i = 0; i < self->nout; i++)
            if (!self->out[i].open) self->out[i].eof = true;
    }
    if (!self->paused) s_start_reading(self);
    self->busy++;
    if (self->ev.on_start && !self->destroyed) self->ev.on_start(self, 0, NULL, self->arg);
    self->busy--;
    s_try_free(self);
}

void proc__failed(proc_t *self, int err, const char *why)
{
    self->req = NULL;
    self->state = P_FAILED;
    self->busy++;
    if (self->ev.on_start && !self->destroyed) self->ev.on_start(self, err, why, self->arg);
    self->busy--;
    s_try_free(self);
}

void proc__exited(proc_t *self, int status)
{
    self->req = NULL;
    self->exited = true;
    self->status = status;
    self->busy++;
    s_maybe_exit(self);
    self->busy--;
    s_try_free(self);
}

void proc__lost(proc_t *self)
{
    self->req = NULL;
    if (self->state == P_PENDING) {
        proc__failed(self, KB_ECLOSED, "the sandbox is gone");
        return;
    }
    if (!self->exited) {
        //  Everything in the sandbox was killed with it; the outputs reach EOF.
        self->exited = true;
        self->status = SIGKILL;  //  a wait status: killed by SIGKILL
    }
    self->busy++;
    s_maybe_exit(self);
    self->busy--;
    s_try_free(self);
}

// ---------------------------------------------------------------------------------------
//  API

static void s_on_timer(uv_timer_t *t)
{
    proc_t *self = t->data;
    if (self->start_err_pending) {
        self->start_err_pending = false;
        self->state = P_FAILED;
        self->busy++;
        if (self->ev.on_start && !self->destroyed)
            self->ev.on_start(self, self->start_err, self->start_why, self->arg);
        self->busy--;
        s_try_free(self);
        return;
    }
    if (!self->exited) proc_signal(self, SIGKILL);
}

proc_t *proc_spawn(sbx_t *sbx, const proc_opts_t *opts, const proc_events_t *events, void *arg,
                   int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_EINVAL;
    if (!sbx || !opts || !opts->argv || !opts->argv[0] || !opts->argv[0][0]) return NULL;
    if (opts->user && strcmp(opts->user, "root") != 0 && strcmp(opts->user, "user") != 0)
        return NULL;
    if (opts->cwd && opts->cwd[0] != '/') return NULL;
    if (!sbx__alive(sbx)) {
        *err = KB_ECLOSED;
        return NULL;
    }
    proc_t *self = calloc(1, sizeof *self);
    uint8_t *buf = malloc(AP_MAX_MSG);
    if (!self || !buf) {
        free(self);
        free(buf);
        *err = KB_ENOMEM;
        return NULL;
    }
    self->sbx = sbx;
    if (events) self->ev = *events;
    self->arg = arg;
    self->log_output = opts->log_output;
    self->want_pty = opts->pty;
    self->want_stdin = opts->stdin_pipe || opts->pty;
    snprintf(self->label, sizeof self->label, "%s", opts->label ? opts->label : opts->argv[0]);
    self->req = sbx__proc_register(sbx, self, &self->id, err);
    if (!self->req) {
        free(self);
        free(buf);
        return NULL;
    }
    ap_writer_t w;
    ap_begin(&w, buf, AP_MAX_MSG, AP_SPAWN, self->id);
    for (size_t i = 0; opts->argv[i]; i++) ap_put_str(&w, APT_ARGV, opts->argv[i]);
    for (size_t i = 0; opts->env && opts->env[i]; i++) ap_put_str(&w, APT_ENV, opts->env[i]);
    ap_put_str(&w, APT_CWD, opts->cwd);
    ap_put_str(&w, APT_USER, opts->user);
    ap_put_u32(&w, APT_FLAGS, (self->want_stdin ? APS_STDIN : 0) | (opts->pty ? APS_PTY : 0));
    ap_put_u32(&w, APT_COLS, opts->cols ? opts->cols : 80);
    ap_put_u32(&w, APT_ROWS, opts->rows ? opts->rows : 24);
    size_t n = ap_end(&w);
    int rc = n ? sbx__send(sbx, buf, n, NULL, 0) : KB_ETOOBIG;
    free(buf);
    if (rc < 0) {
        sbx__proc_forget(self->req);
        free(self);
        *err = rc == KB_ETOOBIG ? KB_EINVAL : rc;
        return NULL;
    }
    uv_timer_init(sbx__loop(sbx), &self->timer);
    self->timer.data = self;
    self->timer_open = true;
    self->handles++;
    self->oom_base = sbx__oom_kills(sbx);
    sbx__ref(sbx);
    *err = 0;
    return self;
}

void proc_destroy(proc_t **self_p)
{
    proc_t *self = *self_p;
    if (!self) return;
    *self_p = NULL;
    if (self->destroyed) return;
    self->destroyed = true;
    if ((self->state == P_PENDING || self->state == P_RUNNING) && !self->exited &&
        sbx__alive(self->sbx))
        sbx__kill(self->sbx, self->id, SIGKILL, AK_GROUP);
    if (self->req) {
        sbx__proc_forget(self->req);
        self->req = NULL;
    }
    for (int i = 0; i < self->nout; i++) s_close_stream(&self->out[i]);
    s_close_stdin(self);
    if (self->timer_open) {
        self->timer_open = false;
        uv_close((uv_handle_t *) &self->timer, s_on_closed);
    }
    s_try_free(self);
}

static bool s_signo_ok(int signo)
{
    return signo >= 1 && signo < 65;
}

int proc_signal(proc_t *self, int signo)
{
    if (!s_signo_ok(signo)) return KB_EINVAL;
    if (self->exited || self->state == P_FAILED || self->state == P_DONE) return KB_EDEAD;
    return sbx__kill(self->sbx, self->id, signo, AK_GROUP) < 0 ? KB_EDEAD : 0;
}

int proc_signal_again_if_asleep(proc_t *self, int signo)
{
    if (!s_signo_ok(signo)) return KB_EINVAL;
    if (self->exited || self->state == P_FAILED || self->state == P_DONE) return KB_EDEAD;
    return sbx__kill(self->sbx, self->id, signo, AK_MAIN_IF_ASLEEP) < 0 ? KB_EDEAD : 0;
}

void proc_terminate(proc_t *self, uint64_t grace_ms)
{
    if (proc_signal(self, SIGTERM) < 0) return;
    if (self->timer_open && !self->start_err_pending)
        uv_timer_start(&self->timer, s_on_timer, grace_ms, 0);
}

typedef struct {
    uv_write_t req;
    proc_t *proc;
    size_t len;
    char data[];
} wreq_t;

static void s_on_written(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *) req;
    proc_t *self = w->proc;
    self->pending -= w->len;
    free(w);
    if (status < 0 && status != UV_ECANCELED) self->in_closed = true;  //  EPIPE: it stopped reading
}

int proc_write(proc_t *self, const void *data, size_t len)
{
    if (self->state == P_PENDING && self->want_stdin) return KB_EAGAIN;  //  before on_start
    uv_stream_t *s = self->is_pty ? (uv_stream_t *) &self->out[0].pipe : (uv_stream_t *) &self->in;
    bool open = self->is_pty ? self->out[0].open : self->in_open;
    if (!self->want_stdin) return KB_EINVAL;
    if (!open || self->in_closed || self->exited) return KB_EDEAD;
    if (len == 0) return 0;
    if (self->pending + len > STDIN_LIMIT) return KB_ETOOBIG;
    wreq_t *w = malloc(sizeof *w + len);
    if (!w) return KB_ETOOBIG;
    w->proc = self;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned) len);
    if (uv_write(&w->req, s, &b, 1, s_on_written) < 0) {
        free(w);
        self->in_closed = true;
        return KB_EDEAD;
    }
    self->pending += len;
    return 0;
}

size_t proc_write_pending(const proc_t *self)
{
    return self->pending;
}

static void s_on_shutdown(uv_shutdown_t *req, int status)
{
    proc_t *self = req->data;
    (void) status;
    free(req);
    s_close_stdin(self);
}

int proc_close_stdin(proc_t *self)
{
    if (!self->want_stdin || self->want_pty) return KB_EINVAL;
    if (self->in_closed || !self->in_open) return 0;
    self->in_closed = true;
    //  After what is pending has been written.
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req) {
        req->data = self;
        if (uv_shutdown(req, (uv_stream_t *) &self->in, s_on_shutdown) == 0) return 0;
        free(req);
    }
    s_close_stdin(self);
    return 0;
}

int proc_resize(proc_t *self, uint16_t cols, uint16_t rows)
{
    if (!self->want_pty || !cols || !rows) return KB_EINVAL;
    if (!self->is_pty || !self->out[0].open) return KB_EDEAD;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *) &self->out[0].pipe, &fd) < 0) return KB_EDEAD;
    struct winsize ws = {.ws_row = rows, .ws_col = cols};
    return ioctl(fd, TIOCSWINSZ, &ws) < 0 ? KB_EIO : 0;
}

void proc_pause_output(proc_t *self)
{
    self->paused = true;
    s_stop_reading(self);
}

void proc_resume_output(proc_t *self)
{
    self->paused = false;
    s_start_reading(self);
}

int proc_pid(const proc_t *self)
{
    return self->pid;
}

bool proc_running(const proc_t *self)
{
    return self->state == P_RUNNING && !self->exited;
}

sbx_t *proc_sbx(const proc_t *self)
{
    return self->sbx;
}
