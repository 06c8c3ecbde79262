/*  nsbx - native ops inside the attached sandbox: processes, files, watches, the sandbox. */
#include "nsbx.h"
#include "outbox.h"
#include "../metrics/metrics.h"
#include "../procs/procs.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  files_read answers with the whole file in one message: larger ones are refused.
#define READ_MAX (16u << 20)

struct _nsbx_t {
    uv_loop_t *loop;
    procs_t *procs;
    klist_t listeners;  //  plisten_t
    klist_t watches;    //  nwatch_t
    uint64_t next_watch;
};

// ---------------------------------------------------------------------------------------
//  Replies

static void s_reply(session_t *session, const char *type, json_t *id, json_t *fields, bool keep)
{
    json_t *msg = json_pack("{s:s, s:O}", "type", type, "id", id ? id : json_null());
    if (msg && fields) json_object_update(msg, fields);
    json_decref(fields);
    if (msg) session_send(session, msg, id, keep);
    json_decref(msg);
}

static json_t *s_jname(const char *name);

static void s_error(session_t *session, json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void s_error(session_t *session, json_t *id, const char *code, const char *fmt, ...)
{
    char message[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    metrics_error(code);
    s_reply(session, "request_error", id, json_pack("{s:s, s:o}", "code", code, "message", s_jname(message)),
            true);
}

static const char *s_code(int err)
{
    switch (err) {
    case KB_ENOTFOUND: return "not_found";
    case KB_EEXIST: return "already_exists";
    case KB_EACCES: return "permission_denied";
    case KB_ENOTDIR: return "not_a_directory";
    case KB_EISDIR: return "is_a_directory";
    case KB_ENOSPC: return "no_space";
    case KB_ETOOBIG: return "too_large";
    case KB_ELIMIT: return "busy";
    case KB_EAGAIN:
    case KB_ECLOSED: return "sandbox_unavailable";
    case KB_EINVAL:
    case KB_EMISSING:
    case KB_ETYPE: return "bad_request";
    default: return "internal";
    }
}

// ---------------------------------------------------------------------------------------
//  UTF-8: text output never splits a character across events, and is always valid (a
//  byte that starts no valid sequence becomes U+FFFD). Output in base64 is bytes-exact.

//  The length of the valid sequence at s (n bytes there): 1 to 4; 0 when it is cut short
//  by the end of the data but may be completed; -1 when invalid.
static int s_u8len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c == 0xE0) need = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 3;
    else if (c == 0xED) need = 3, hi = 0x9F;
    else if (c == 0xF0) need = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) need = 4;
    else if (c == 0xF4) need = 4, hi = 0x8F;
    else return -1;
    for (int i = 1; i < need; i++) {
        if ((size_t) i >= n) return 0;
        unsigned char b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return -1;
    }
    return need;
}

//  carry (ncarry bytes, < 4) then data, as valid UTF-8 into a new buffer; an incomplete
//  sequence at the end goes back to carry unless final. Returns the buffer (caller frees)
//  with its length in *out_len, or NULL.
static char *s_u8clean(unsigned char carry[4], uint8_t *ncarry, const char *data, size_t len,
                       bool final, size_t *out_len)
{
    size_t n = *ncarry + len;
    unsigned char *in = malloc(n ? n : 1);
    char *out = malloc(n * 3 + 1);
    if (!in || !out) {
        free(in);
        free(out);
        return NULL;
    }
    memcpy(in, carry, *ncarry);
    if (len) memcpy(in + *ncarry, data, len);
    *ncarry = 0;
    size_t i = 0, o = 0;
    while (i < n) {
        int r = s_u8len(in + i, n - i);
        if (r > 0) {
            memcpy(out + o, in + i, (size_t) r);
            o += (size_t) r;
            i += (size_t) r;
        } else if (r == 0 && !final) {
            *ncarry = (uint8_t) (n - i);
            memcpy(carry, in + i, n - i);
            break;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    free(in);
    *out_len = o;
    return out;
}

//  {"data": base64} or {"text": text}.
static json_t *s_content(const char *data, size_t len, bool base64)
{
    if (base64) {
        size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
        char *b = malloc(cap);
        if (!b) return NULL;
        sodium_bin2base64(b, cap, (const unsigned char *) data, len, sodium_base64_VARIANT_ORIGINAL);
        json_t *o = json_pack("{s:o}", "data", json_stringn_nocheck(b, strlen(b)));
        free(b);
        return o;
    }
    unsigned char carry[4];
    uint8_t nc = 0;
    size_t olen;
    char *t = s_u8clean(carry, &nc, data, len, true, &olen);
    if (!t) return NULL;
    json_t *o = json_pack("{s:o}", "text", json_stringn_nocheck(t, olen));
    free(t);
    return o;
}

// ---------------------------------------------------------------------------------------
//  Processes

//  A session's view of one process, from process_start or process_connect to its exit.
typedef struct {
    spending_t pending;  //  first: the session's tracking link
    klist_t link;        //  in nsbx_t.listeners
    nsbx_t *owner;
    session_t *session;
    json_t *id;
    splisten_t *l;
    int pid;
    bool base64, congested;
    unsigned char carry[4][4];  //  per stream: a character cut at the end of a read
    uint8_t ncarry[4];
} plisten_t;

static void s_pl_free(plisten_t *pl)
{
    session_untrack(&pl->pending);
    klist_remove(&pl->link);
    splisten_destroy(&pl->l);
    json_decref(pl->id);
    free(pl);
}

static void s_pl_cancel(spending_t *pending)
{
    s_pl_free((plisten_t *) pending);
}

static plisten_t *s_pl_new(nsbx_t *self, session_t *session, json_t *id, bool base64)
{
    plisten_t *pl = calloc(1, sizeof *pl);
    if (!pl) return NULL;
    pl->owner = self;
    pl->session = session;
    pl->id = json_incref(id);
    pl->base64 = base64;
    pl->pending.cancel = s_pl_cancel;
    klist_init(&pl->link);
    klist_push_back(&self->listeners, &pl->link);
    session_track(session, &pl->pending);
    return pl;
}

static void s_set_congested(nsbx_t *self, session_t *session, bool congested)
{
    klist_t *it;
    klist_foreach(it, &self->listeners)
    {
        plisten_t *pl = klist_entry(it, plisten_t, link);
        if (pl->session != session || pl->congested == congested || !pl->l) continue;
        pl->congested = congested;
        splisten_set_congested(pl->l, congested);
    }
}

static void s_on_relief(outbox_t *box, void *arg)
{
    nsbx_t *self = arg;
    klist_t *it;
    klist_foreach(it, &self->listeners)
    {
        plisten_t *pl = klist_entry(it, plisten_t, link);
        if (pl->congested && pl->l && session_outbox(pl->session) == box) {
            pl->congested = false;
            splisten_set_congested(pl->l, false);
        }
    }
}

static const char *s_stream_event(proc_stream_t stream)
{
    return stream == PROC_STDERR ? "process_stderr" : stream == PROC_PTY ? "process_pty" : "process_stdout";
}

static void s_send_output(plisten_t *pl, proc_stream_t stream, const char *data, size_t len,
                          bool final)
{
    json_t *content;
    if (pl->base64) {
        content = s_content(data, len, true);
    } else {
        size_t olen;
        char *t = s_u8clean(pl->carry[stream & 3], &pl->ncarry[stream & 3], data, len, final, &olen);
        if (!t) return;
        content = olen ? json_pack("{s:o}", "text", json_stringn_nocheck(t, olen)) : NULL;
        free(t);
    }
    if (!content) return;
    json_object_set_new(content, "pid", json_integer(pl->pid));
    s_reply(pl->session, s_stream_event(stream), pl->id, content, false);
}

static void s_on_proc_output(splisten_t *l, proc_stream_t stream, const char *data, size_t len,
                             uint64_t offset, bool replay, void *arg)
{
    (void) l;
    (void) offset;
    (void) replay;
    plisten_t *pl = arg;
    s_send_output(pl, stream, data, len, false);
    //  Backpressure only towards a client that is there to drain it.
    outbox_t *box = session_outbox(pl->session);
    if (session_conn(pl->session) && outbox_congested(box)) {
        s_set_congested(pl->owner, pl->session, true);
        outbox_on_relief(box, s_on_relief, pl->owner);
    }
}

static void s_on_proc_exit(splisten_t *l, const sproc_exit_t *ex, void *arg)
{
    (void) l;
    plisten_t *pl = arg;
    for (int s = 1; s < 4; s++)
        if (pl->ncarry[s]) s_send_output(pl, (proc_stream_t) s, NULL, 0, true);
    json_t *fields = json_pack("{s:i, s:o, s:o, s:s, s:s?, s:b}", "pid", ex->pid, "exit_code",
                               ex->exited ? json_integer(ex->code) : json_null(), "signal",
                               ex->signal ? json_integer(ex->signal) : json_null(), "status",
                               ex->status ? ex->status : "", "error", ex->error, "timed_out",
                               ex->timed_out);
    if (fields && !ex->error) json_object_set_new(fields, "error", json_null());
    s_reply(pl->session, "process_exit", pl->id, fields, true);
    s_pl_free(pl);
}

static void s_on_proc_start(splisten_t *l, int err, const char *why, void *arg)
{
    plisten_t *pl = arg;
    if (err) {
        const char *code = err == KB_ENOTFOUND || err == KB_ENOTDIR || err == KB_EACCES ? "bad_request"
                                                                                       : s_code(err);
        s_error(pl->session, pl->id, code, "the process could not be started: %s",
                why ? why : kb_strerror(err));
        s_pl_free(pl);
        return;
    }
    sproc_t *p = splisten_proc(l);
    pl->pid = sproc_pid(p);
    s_reply(pl->session, "process_started", pl->id, json_pack("{s:o}", "process", sproc_info(p)), true);
}

static const splisten_events_t s_pl_events = {s_on_proc_start, s_on_proc_output, s_on_proc_exit};

static void op_process_start(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    plisten_t *pl = s_pl_new(self, session, req->id, req->base64);
    if (!pl) {
        s_error(session, req->id, "internal", "out of memory");
        return;
    }
    sproc_opts_t opts;
    memset(&opts, 0, sizeof opts);
    opts.argv = req->argv;
    opts.env = req->env_vars;
    opts.cwd = req->cwd;
    opts.user = req->user;
    opts.stdin_pipe = req->stdin_on;
    opts.pty = req->pty;
    opts.cols = (uint16_t) req->cols;
    opts.rows = (uint16_t) req->rows;
    opts.tag = req->tag;
    opts.lifetime_ms = (uint64_t) req->timeout_ms;
    int err;
    char why[400];
    pl->l = procs_start(self->procs, sb, &opts, &s_pl_events, pl, &err, why, sizeof why);
    if (!pl->l) {
        s_error(session, req->id, err == KB_EEXIST ? "already_exists" : s_code(err), "%s", why);
        s_pl_free(pl);
    }
}

static sproc_t *s_target(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    sproc_t *p = req->pid ? procs_find(self->procs, sb, (int) req->pid) : procs_find_tag(self->procs, sb, req->tag);
    if (p && req->pid && req->tag && (!sproc_tag(p) || strcmp(sproc_tag(p), req->tag) != 0)) p = NULL;
    if (!p) {
        if (req->pid)
            s_error(session, req->id, "not_found", "no running process with pid %lld in this sandbox",
                    (long long) req->pid);
        else
            s_error(session, req->id, "not_found", "no running process with tag '%.200s' in this sandbox",
                    req->tag);
    }
    return p;
}

static void op_process_connect(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    sproc_t *p = s_target(self, session, sb, req);
    if (!p) return;
    plisten_t *pl = s_pl_new(self, session, req->id, req->base64);
    if (!pl) {
        s_error(session, req->id, "internal", "out of memory");
        return;
    }
    pl->pid = sproc_pid(p);
    //  The tail first (from a later turn), then what comes.
    pl->l = sproc_attach(p, 0, &s_pl_events, pl);
    if (!pl->l) {
        s_error(session, req->id, "internal", "cannot attach to process %d", pl->pid);
        s_pl_free(pl);
        return;
    }
    s_reply(session, "process_connected", req->id, json_pack("{s:o}", "process", sproc_info(p)), true);
}

static void s_ok_pid(session_t *session, json_t *id, sproc_t *p)
{
    s_reply(session, "ok", id, json_pack("{s:i}", "pid", sproc_pid(p)), true);
}

static void op_process_control(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    sproc_t *p = s_target(self, session, sb, req);
    if (!p) return;
    int pid = sproc_pid(p), rc;
    switch (req->op) {
    case NMSG_PROCESS_INPUT:
        rc = sproc_write(p, req->bytes, req->bytes_len);
        if (rc == KB_EINVAL)
            s_error(session, req->id, "bad_request", "process %d was started without stdin "
                                                     "(start it with \"stdin\": true)", pid);
        else if (rc == KB_EDEAD)
            s_error(session, req->id, "bad_request", "process %d: its stdin is closed", pid);
        else if (rc == KB_ETOOBIG)
            s_error(session, req->id, "busy", "process %d is not reading its stdin (4 MiB pending)", pid);
        else if (rc)
            s_error(session, req->id, s_code(rc), "process %d: %s", pid, kb_strerror(rc));
        else
            s_ok_pid(session, req->id, p);
        return;
    case NMSG_PROCESS_CLOSE_STDIN:
        rc = sproc_close_stdin(p);
        if (rc == KB_EINVAL)
            s_error(session, req->id, "bad_request",
                    "process %d has no stdin pipe to close (%s)", pid,
                    sproc_pty(p, NULL, NULL) ? "a pty: send ^D (\\u0004) as input" : "started without stdin");
        else if (rc)
            s_error(session, req->id, s_code(rc), "process %d: %s", pid, kb_strerror(rc));
        else
            s_ok_pid(session, req->id, p);
        return;
    case NMSG_PROCESS_SIGNAL:
        rc = sproc_signal(p, req->signo);
        if (rc == KB_EDEAD)
            s_error(session, req->id, "not_found", "process %d has exited", pid);
        else if (rc)
            s_error(session, req->id, s_code(rc), "process %d: %s", pid, kb_strerror(rc));
        else
            s_ok_pid(session, req->id, p);
        return;
    case NMSG_PROCESS_RESIZE:
        rc = sproc_resize(p, (uint16_t) req->cols, (uint16_t) req->rows);
        if (rc == KB_EINVAL)
            s_error(session, req->id, "bad_request", "process %d has no pty to resize", pid);
        else if (rc)
            s_error(session, req->id, s_code(rc), "process %d: %s", pid, kb_strerror(rc));
        else
            s_ok_pid(session, req->id, p);
        return;
    default: return;
    }
}

static void op_process_list(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    sproc_t **procs = NULL;
    size_t n = procs_list(self->procs, sb, &procs);
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(list, sproc_info(procs[i]));
    free(procs);
    s_reply(session, "processes", req->id, json_pack("{s:o}", "processes", list), true);
}

// ---------------------------------------------------------------------------------------
//  Files

static const char *s_type_name(sbx_ftype_t t)
{
    switch (t) {
    case SBX_FILE: return "file";
    case SBX_DIR: return "dir";
    case SBX_SYMLINK: return "symlink";
    default: return "other";
    }
}

//  A name from the file system as a JSON string: bytes that are not UTF-8 (names are
//  any bytes but / and NUL) become U+FFFD, so such files are listed, not dropped.
static json_t *s_jname(const char *name)
{
    if (!name) return json_string("");
    json_t *v = json_string(name);
    if (v) return v;
    unsigned char carry[4];
    uint8_t nc = 0;
    size_t len;
    char *t = s_u8clean(carry, &nc, name, strlen(name), true, &len);
    v = t ? json_stringn_nocheck(t, len) : NULL;
    free(t);
    return v;
}

static json_t *s_entry(const sbx_entry_t *e)
{
    char perms[10];
    for (int i = 0; i < 9; i++) perms[i] = (e->mode >> (8 - i)) & 1 ? "rwxrwxrwx"[i] : '-';
    perms[9] = '\0';
    json_t *o = json_pack("{s:o, s:o, s:s, s:I, s:i, s:s, s:o, s:o, s:I}", "name", s_jname(e->name),
                          "path", s_jname(e->path), "type", s_type_name(e->type), "size",
                          (json_int_t) e->size, "mode", (int) (e->mode & 07777), "permissions", perms,
                          "owner", s_jname(e->owner), "group", s_jname(e->group),
                          "mtime_ms", (json_int_t) (e->mtime_ns / 1000000));
    if (!o) return NULL;
    json_object_set_new(o, "symlink_target",
                        e->symlink_target ? s_jname(e->symlink_target) : json_null());
    return o;
}

typedef struct {
    spending_t pending;  //  first
    session_t *session;
    json_t *id;
    nmsg_op_t op;
    char *path;
    sbx_req_t *req;
    sbx_upload_t *up;
    //  write / read in the threadpool
    uv_fs_t fs;
    uv_loop_t *loop;
    bool in_fs, committing, cancelled, base64;
    int fd;
    char *buf;
    size_t len, done;
} freq_t;

static void s_freq_free(freq_t *f)
{
    session_untrack(&f->pending);
    if (f->req) sbx_req_cancel(f->req);
    sbx_upload_abort(&f->up);
    if (f->fd >= 0 && f->op == NMSG_FILES_READ) close(f->fd);
    json_decref(f->id);
    free(f->path);
    free(f->buf);
    free(f);
}

static void s_freq_cancel(spending_t *pending)
{
    freq_t *f = (freq_t *) pending;
    if (f->in_fs || f->committing) {
        //  The threadpool or the agent still has it: freed when it comes back.
        session_untrack(&f->pending);
        f->cancelled = true;
        if (f->in_fs) uv_cancel((uv_req_t *) &f->fs);
        return;
    }
    s_freq_free(f);
}

static freq_t *s_freq_new(session_t *session, const nmsg_t *req, const char *path)
{
    freq_t *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return NULL;
    }
    f->session = session;
    f->id = json_incref(req->id);
    f->op = req->op;
    f->fd = -1;
    f->base64 = req->base64;
    f->pending.cancel = s_freq_cancel;
    session_track(session, &f->pending);
    return f;
}

static void s_file_error(freq_t *f, int err, const char *why)
{
    s_error(f->session, f->id, s_code(err), "%s", why && *why ? why : kb_strerror(err));
}

static void s_on_entries(int err, const char *why, const sbx_entry_t *entries, size_t n, void *arg)
{
    freq_t *f = arg;
    f->req = NULL;
    f->committing = false;
    if (f->cancelled) {
        s_freq_free(f);
        return;
    }
    if (f->op == NMSG_FILES_EXISTS && (err == KB_ENOTFOUND || err == KB_ENOTDIR)) {
        s_reply(f->session, "exists", f->id, json_pack("{s:b, s:s}", "exists", 0, "path", f->path), true);
    } else if (err) {
        s_file_error(f, err, why);
    } else if (f->op == NMSG_FILES_EXISTS) {
        s_reply(f->session, "exists", f->id, json_pack("{s:b, s:s}", "exists", 1, "path", f->path), true);
    } else if (f->op == NMSG_FILES_LIST) {
        json_t *list = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(list, s_entry(&entries[i]));
        s_reply(f->session, "files", f->id, json_pack("{s:o}", "entries", list), true);
    } else if (f->op == NMSG_FILES_REMOVE) {
        s_reply(f->session, "ok", f->id, json_pack("{s:s}", "path", f->path), true);
    } else if (n >= 1) {
        s_reply(f->session, "file", f->id, json_pack("{s:o}", "entry", s_entry(&entries[0])), true);
    } else {
        s_error(f->session, f->id, "internal", "no entry came back for %s", f->path);
    }
    s_freq_free(f);
}

static void s_write_next(freq_t *f);

static void s_on_fs_write(uv_fs_t *fs)
{
    freq_t *f = fs->data;
    ssize_t r = fs->result;
    uv_fs_req_cleanup(fs);
    f->in_fs = false;
    if (f->cancelled) {
        s_freq_free(f);
        return;
    }
    if (r < 0) {
        char why[300];
        snprintf(why, sizeof why, "cannot write %s: %s", f->path, uv_strerror((int) r));
        s_file_error(f, r == UV_ENOSPC || r == -EDQUOT ? KB_ENOSPC : KB_EIO, why);
        s_freq_free(f);
        return;
    }
    f->done += (size_t) r;
    s_write_next(f);
}

static void s_write_next(freq_t *f)
{
    if (f->done >= f->len) {
        sbx_upload_t *up = f->up;
        f->up = NULL;
        f->fd = -1;
        f->committing = true;
        sbx_upload_commit(&up, s_on_entries, f);
        return;
    }
    uv_buf_t b = uv_buf_init(f->buf + f->done, (unsigned) (f->len - f->done));
    f->fs.data = f;
    if (uv_fs_write(f->loop, &f->fs, f->fd, &b, 1,
                    (int64_t) f->done, s_on_fs_write) == 0) {
        f->in_fs = true;
        return;
    }
    s_file_error(f, KB_EIO, "cannot queue the write");
    s_freq_free(f);
}

static void s_on_upload(sbx_upload_t *up, int err, const char *why, int fd, void *arg)
{
    freq_t *f = arg;
    f->up = up;
    if (err) {
        s_file_error(f, err, why);
        s_freq_free(f);
        return;
    }
    f->fd = fd;
    f->done = 0;
    s_write_next(f);
}

static void s_on_fs_read(uv_fs_t *fs)
{
    freq_t *f = fs->data;
    ssize_t r = fs->result;
    uv_fs_req_cleanup(fs);
    f->in_fs = false;
    if (f->cancelled) {
        s_freq_free(f);
        return;
    }
    if (r < 0) {
        char why[300];
        snprintf(why, sizeof why, "cannot read %s: %s", f->path, uv_strerror((int) r));
        s_file_error(f, KB_EIO, why);
        s_freq_free(f);
        return;
    }
    f->done += (size_t) r;
    //  Sizes can be wrong (files in /proc say 0, a file may grow): read on to the limit,
    //  with room for a good read each time.
    if (r > 0 && f->len - f->done < 65536 && f->len < READ_MAX + 1) {
        size_t cap = f->len * 2 > f->done + 65536 ? f->len * 2 : f->done + 65536;
        if (cap > READ_MAX + 1) cap = READ_MAX + 1;
        char *grown = realloc(f->buf, cap);
        if (grown) {
            f->buf = grown;
            f->len = cap;
        }
    }
    if (r > 0 && f->done < f->len) {
        uv_buf_t b = uv_buf_init(f->buf + f->done, (unsigned) (f->len - f->done));
        if (uv_fs_read(f->loop, &f->fs, f->fd, &b, 1, (int64_t) f->done, s_on_fs_read) == 0) {
            f->in_fs = true;
            return;
        }
    }
    if (f->done > READ_MAX) {
        s_error(f->session, f->id, "too_large", "%s is larger than %u bytes: read it over HTTP",
                f->path, READ_MAX);
    } else {
        json_t *fields = s_content(f->buf, f->done, f->base64);
        if (fields) json_object_set_new(fields, "path", json_string(f->path));
        s_reply(f->session, "file_content", f->id, fields, true);
    }
    s_freq_free(f);
}

static void s_on_open(int err, const char *why, int fd, const sbx_entry_t *entry, void *arg)
{
    freq_t *f = arg;
    f->req = NULL;
    if (err) {
        s_file_error(f, err, why);
        s_freq_free(f);
        return;
    }
    f->fd = fd;
    f->fs.data = f;
    if (entry->size > READ_MAX) {
        s_error(f->session, f->id, "too_large", "%s is %llu bytes, more than the %u files_read "
                                                "answers with", f->path, (unsigned long long) entry->size,
                READ_MAX);
        s_freq_free(f);
        return;
    }
    //  One byte more than the limit: a file that grows while read is caught.
    f->len = READ_MAX + 1;
    if (entry->size + 1 < f->len) f->len = (size_t) entry->size + 4096;
    f->buf = malloc(f->len);
    uv_buf_t b = uv_buf_init(f->buf, (unsigned) f->len);
    if (!f->buf || uv_fs_read(f->loop, &f->fs, fd, &b, 1, 0, s_on_fs_read) != 0) {
        s_error(f->session, f->id, "internal", "cannot read %s: out of memory", f->path);
        s_freq_free(f);
        return;
    }
    f->in_fs = true;
}

//  A path in the sandbox: absolute, or relative to its cwd.
static char *s_abs(sandbox_t *sb, const char *path)
{
    if (path[0] == '/') return strdup(path);
    const char *cwd = sandbox_cwd(sb);
    size_t n = strlen(cwd) + strlen(path) + 2;
    char *out = malloc(n);
    if (out) snprintf(out, n, "%s%s%s", cwd, cwd[0] && cwd[strlen(cwd) - 1] == '/' ? "" : "/", path);
    return out;
}

static void op_files(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    sbx_t *sbx = sandbox_sbx(sb);
    if (!sbx) {
        s_error(session, req->id, "sandbox_unavailable", "sandbox %s is %s", sandbox_id(sb),
                sandbox_state_name(sb));
        return;
    }
    char *path = s_abs(sb, req->path), *to = req->new_path ? s_abs(sb, req->new_path) : NULL;
    freq_t *f = path && (!req->new_path || to) ? s_freq_new(session, req, path) : NULL;
    free(path);
    if (!f) {
        free(to);
        s_error(session, req->id, "internal", "out of memory");
        return;
    }
    path = f->path;
    f->loop = self->loop;
    if (strlen(path) > PATH_MAX - 1 || (to && strlen(to) > PATH_MAX - 1)) {
        s_error(session, req->id, "too_large", "the path is longer than PATH_MAX (%d)", PATH_MAX);
        goto done;
    }
    const char *user = req->user ? req->user : "root";
    switch (req->op) {
    case NMSG_FILES_LIST: f->req = sbx_list(sbx, user, path, (int) req->depth, s_on_entries, f); break;
    case NMSG_FILES_STAT:
    case NMSG_FILES_EXISTS: f->req = sbx_stat(sbx, user, path, s_on_entries, f); break;
    case NMSG_FILES_MAKE_DIR: f->req = sbx_mkdir(sbx, user, path, req->parents, s_on_entries, f); break;
    case NMSG_FILES_REMOVE: f->req = sbx_remove(sbx, user, path, s_on_entries, f); break;
    case NMSG_FILES_RENAME: f->req = sbx_rename(sbx, user, path, to, s_on_entries, f); break;
    case NMSG_FILES_READ: f->req = sbx_open_read(sbx, user, path, s_on_open, f); break;
    case NMSG_FILES_WRITE:
        f->len = req->bytes_len;
        f->buf = malloc(f->len ? f->len : 1);
        if (!f->buf) break;
        if (f->len) memcpy(f->buf, req->bytes, f->len);
        //  On the native API a missing parent directory is an error.
        f->up = sbx_upload_begin(sbx, user, path, false, s_on_upload, f);
        if (f->up) {
            free(to);
            return;
        }
        break;
    default: break;
    }
    if (f->req) {
        free(to);
        return;
    }
    s_error(session, req->id, "bad_request", "cannot act on %s (the sandbox refused the request)", path);
done:
    free(to);
    s_freq_free(f);
}

// ---------------------------------------------------------------------------------------
//  Watches

typedef struct {
    spending_t pending;  //  first
    klist_t link;        //  in nsbx_t.watches
    session_t *session;
    json_t *id;
    char watch_id[32];
    char *path;
    sbx_watch_t *w;
} nwatch_t;

static void s_nw_free(nwatch_t *nw)
{
    session_untrack(&nw->pending);
    klist_remove(&nw->link);
    sbx_watch_destroy(&nw->w);
    json_decref(nw->id);
    free(nw->path);
    free(nw);
}

static void s_nw_cancel(spending_t *pending)
{
    s_nw_free((nwatch_t *) pending);
}

static void s_on_watch_start(sbx_watch_t *w, int err, const char *why, void *arg)
{
    (void) w;
    nwatch_t *nw = arg;
    if (err) {
        s_error(nw->session, nw->id, s_code(err), "cannot watch %s: %s", nw->path,
                why && *why ? why : kb_strerror(err));
        s_nw_free(nw);
        return;
    }
    s_reply(nw->session, "watch_started", nw->id, json_pack("{s:s, s:s}", "watch_id", nw->watch_id,
                                                            "path", nw->path), true);
}

static void s_on_watch_event(sbx_watch_t *w, sbx_event_t type, const char *name, bool is_dir, void *arg)
{
    (void) w;
    nwatch_t *nw = arg;
    static const char *const names[] = {"", "create", "write", "remove", "rename", "chmod"};
    const char *ev = type >= SBX_EV_CREATE && type <= SBX_EV_CHMOD ? names[type] : "other";
    s_reply(nw->session, "watch_event", nw->id,
            json_pack("{s:s, s:s, s:o, s:s}", "watch_id", nw->watch_id, "event", ev, "name",
                      s_jname(name), "file_type", is_dir ? "dir" : "file"), false);
}

static void s_on_watch_end(sbx_watch_t *w, int err, const char *why, void *arg)
{
    (void) w;
    nwatch_t *nw = arg;
    const char *reason = err == KB_ENOTFOUND ? "removed" : err == KB_ETOOBIG ? "overflow"
                         : err == KB_ECLOSED ? "sandbox_ended" : "error";
    s_reply(nw->session, "watch_end", nw->id,
            json_pack("{s:s, s:s, s:s}", "watch_id", nw->watch_id, "reason", reason, "message",
                      why && *why ? why : kb_strerror(err)), true);
    s_nw_free(nw);
}

static void op_watch_start(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    sbx_t *sbx = sandbox_sbx(sb);
    if (!sbx) {
        s_error(session, req->id, "sandbox_unavailable", "sandbox %s is %s", sandbox_id(sb),
                sandbox_state_name(sb));
        return;
    }
    nwatch_t *nw = calloc(1, sizeof *nw);
    if (nw) nw->path = s_abs(sb, req->path);
    if (!nw || !nw->path) {
        free(nw);
        s_error(session, req->id, "internal", "out of memory");
        return;
    }
    nw->session = session;
    nw->id = json_incref(req->id);
    snprintf(nw->watch_id, sizeof nw->watch_id, "w%llu", (unsigned long long) ++self->next_watch);
    nw->pending.cancel = s_nw_cancel;
    klist_init(&nw->link);
    klist_push_back(&self->watches, &nw->link);
    session_track(session, &nw->pending);
    sbx_watch_events_t ev = {s_on_watch_start, s_on_watch_event, s_on_watch_end};
    int err;
    nw->w = sbx_watch(sbx, req->user ? req->user : "root", nw->path, req->recursive, &ev, nw, &err);
    if (!nw->w) {
        s_error(session, req->id, s_code(err), "cannot watch %s: %s", nw->path, kb_strerror(err));
        s_nw_free(nw);
    }
}

static void op_watch_stop(nsbx_t *self, session_t *session, const nmsg_t *req)
{
    klist_t *it;
    klist_foreach(it, &self->watches)
    {
        nwatch_t *nw = klist_entry(it, nwatch_t, link);
        if (nw->session != session || strcmp(nw->watch_id, req->watch_id) != 0) continue;
        s_nw_free(nw);
        s_reply(session, "ok", req->id, json_pack("{s:s}", "watch_id", req->watch_id), true);
        return;
    }
    s_error(session, req->id, "not_found", "no watch '%.64s' in this session", req->watch_id);
}

// ---------------------------------------------------------------------------------------
//  The sandbox

static void op_sandbox(session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    if (req->op == NMSG_SANDBOX_KILL) {
        if (sandbox_is_default(sb)) {
            s_error(session, req->id, "bad_request", "the default sandbox cannot be killed");
            return;
        }
        s_reply(session, "ok", req->id, json_pack("{s:s}", "sandbox_id", sandbox_id(sb)), true);
        sandbox_kill(sb, "killed by its client (sandbox_kill)");
        return;
    }
    if (req->op == NMSG_SANDBOX_SET_TIMEOUT) {
        if (sandbox_is_default(sb)) {
            s_error(session, req->id, "bad_request", "the default sandbox never ends: it has no timeout");
            return;
        }
        sandbox_set_timeout(sb, (uint64_t) req->timeout_ms);
    }
    s_reply(session, "sandbox", req->id, json_pack("{s:o}", "sandbox", sandbox_model(sb)), true);
}

// ---------------------------------------------------------------------------------------

nsbx_t *nsbx_new(uv_loop_t *loop, sandboxes_t *sandboxes)
{
    nsbx_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = loop;
    klist_init(&self->listeners);
    klist_init(&self->watches);
    self->procs = procs_new(loop, sandboxes, NULL);
    if (!self->procs) {
        free(self);
        return NULL;
    }
    return self;
}

void nsbx_destroy(nsbx_t **self_p)
{
    if (!self_p || !*self_p) return;
    nsbx_t *self = *self_p;
    *self_p = NULL;
    while (!klist_empty(&self->listeners))
        s_pl_free(klist_entry(klist_first(&self->listeners), plisten_t, link));
    while (!klist_empty(&self->watches)) s_nw_free(klist_entry(klist_first(&self->watches), nwatch_t, link));
    procs_destroy(&self->procs);
    free(self);
}

bool nsbx_handles(nmsg_op_t op)
{
    return op >= NMSG_PROCESS_START && op <= NMSG_SANDBOX_KILL;
}

void nsbx_op(nsbx_t *self, session_t *session, sandbox_t *sb, const nmsg_t *req)
{
    if (!sb) {
        s_error(session, req->id, "sandbox_unavailable", "this session's sandbox has ended");
        return;
    }
    switch (req->op) {
    case NMSG_PROCESS_START: op_process_start(self, session, sb, req); break;
    case NMSG_PROCESS_CONNECT: op_process_connect(self, session, sb, req); break;
    case NMSG_PROCESS_INPUT:
    case NMSG_PROCESS_CLOSE_STDIN:
    case NMSG_PROCESS_SIGNAL:
    case NMSG_PROCESS_RESIZE: op_process_control(self, session, sb, req); break;
    case NMSG_PROCESS_LIST: op_process_list(self, session, sb, req); break;
    case NMSG_WATCH_START: op_watch_start(self, session, sb, req); break;
    case NMSG_WATCH_STOP: op_watch_stop(self, session, req); break;
    case NMSG_SANDBOX_INFO:
    case NMSG_SANDBOX_SET_TIMEOUT:
    case NMSG_SANDBOX_KILL: op_sandbox(session, sb, req); break;
    default: op_files(self, session, sb, req); break;
    }
}

void nsbx_detached(nsbx_t *self, session_t *session)
{
    s_set_congested(self, session, false);
}
