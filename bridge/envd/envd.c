/*  envd - E2B's envd REST routes inside a sandbox: /health, /envs, /files. */
#include "envd.h"
#include "multipart.h"
#include "../apikit/sbxroute.h"
#include "../buf/wbuf.h"
#include "../sandboxes/sandboxes.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sodium.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

//  Bytes read from a file per threadpool job, and response bytes queued before waiting.
#define READ_CHUNK (64 * 1024)
#define QUEUE_HIGH (512 * 1024)
//  Uploads: the body read ahead (paused past IN_PAUSE; at most 64 KiB more come while
//  paused), and each of the two write buffers.
#define IN_CAP (512 * 1024)
#define IN_PAUSE (128 * 1024)
#define FILL_CAP (256 * 1024)

typedef struct _envd_t envd_t;

struct _envd_t {
    uv_loop_t *loop;
    sandboxes_t *sandboxes;
    klist_t transfers;  //  dl_t and up_t, by their link
    klist_t procs;      //  eproc_t: processes started with process.Process/Start
    bool observing;
};

// ---------------------------------------------------------------------------------------
//  Answers

static void s_error(hreq_t *req, int status, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    hreq_reply_json(req, status, json_pack("{s:i, s:s}", "code", status, "message", msg));
}

//  The status upstream envd answers a file error with (e2b-selfhost.md 4.1).
static int s_status_of(int err)
{
    switch (err) {
    case KB_ENOTFOUND: return 404;
    case KB_EISDIR:
    case KB_ENOTDIR:
    case KB_EINVAL:
    case KB_ETOOBIG:
    case KB_EEXIST: return 400;
    case KB_EACCES: return 403;
    case KB_ENOSPC: return 507;
    case KB_ECLOSED: return 502;
    default: return 500;
    }
}

// ---------------------------------------------------------------------------------------
//  Users and paths

//  The user a request acts as (?username=; "user" by default), into user. Returns 0, or
//  replies 400 and returns KB_EINVAL. A host sandbox has one user, kbridge's: NULL.
static int s_user(hreq_t *req, sandbox_t *sb, char *user, size_t size, const char **out)
{
    char given[64] = "";
    int rc = hreq_query(req, "username", given, sizeof given);
    if (rc != KB_OK && rc != KB_ENOTFOUND) {
        s_error(req, 400, "bad username");
        return KB_EINVAL;
    }
    if (!sandbox_kernel_user(sb)) {
        *out = NULL;
        return KB_OK;
    }
    if (!*given) snprintf(given, sizeof given, "user");
    if (strcmp(given, "root") != 0 && strcmp(given, "user") != 0) {
        s_error(req, 400, "user '%s' does not exist", given);
        return KB_EINVAL;
    }
    snprintf(user, size, "%s", given);
    *out = user;
    return KB_OK;
}

//  path made absolute (relative: from home) and lexically clean (no ".", "..", "//");
//  ".." at the root stays there. Returns 0 or KB_ETOOBIG / KB_EINVAL (empty).
static int s_clean_path(const char *home, const char *path, char *out, size_t size)
{
    if (!path || !*path) return KB_EINVAL;
    char joined[PATH_MAX * 2];
    int n = path[0] == '/' ? snprintf(joined, sizeof joined, "%s", path)
                           : snprintf(joined, sizeof joined, "%s/%s", home ? home : "/", path);
    if (n < 0 || (size_t) n >= sizeof joined) return KB_ETOOBIG;
    size_t o = 0;
    const char *p = joined;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *seg = p;
        while (*p && *p != '/') p++;
        size_t len = (size_t) (p - seg);
        if (len == 1 && seg[0] == '.') continue;
        if (len == 2 && seg[0] == '.' && seg[1] == '.') {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--;
            continue;
        }
        if (o + 1 + len + 1 > size || o + 1 + len >= PATH_MAX) return KB_ETOOBIG;
        out[o++] = '/';
        memcpy(out + o, seg, len);
        o += len;
    }
    if (o == 0) out[o++] = '/';
    out[o] = '\0';
    return KB_OK;
}

static const char *s_home(sandbox_t *sb, const char *user)
{
    const char *home = sandbox_sbx(sb) ? sbx_home(sandbox_sbx(sb), user) : NULL;
    return home ? home : sandbox_cwd(sb);
}

static bool s_accepts_gzip(hreq_t *req)
{
    const char *ae = hreq_header(req, "accept-encoding");
    if (!ae) return false;
    for (const char *p = ae; (p = strcasestr(p, "gzip")) != NULL; p += 4) {
        const char *q = p + 4;
        while (*q == ' ') q++;
        if (*q == ';') {
            const char *v = strstr(q, "q=");
            if (v && strtod(v + 2, NULL) <= 0.0) return false;
        }
        return true;
    }
    return false;
}

// ---------------------------------------------------------------------------------------
//  GET /files: a download

typedef struct {
    klist_t link;
    uv_loop_t *loop;
    hreq_t *req;
    sbx_req_t *open;  //  while opening
    int fd;
    uv_work_t work;
    bool working, gone, done;
    int busy;  //  inside one of its callbacks: freed on the way out
    //  the job's input and output
    char *chunk;     //  wbuf payload being filled
    size_t cap, len;
    int err;
    bool eof;
    bool gz;
    z_stream z;
    bool z_ready;
    char *raw;       //  gzip: the bytes read, before compression
} dl_t;

static void s_close_done(uv_fs_t *fs)
{
    uv_fs_req_cleanup(fs);
    free(fs);
}

//  Close a descriptor in the threadpool.
static void s_close_fd(uv_loop_t *loop, int fd)
{
    if (fd < 0) return;
    uv_fs_t *fs = malloc(sizeof *fs);
    if (!fs || uv_fs_close(loop, fs, fd, s_close_done) != 0) {
        free(fs);
        close(fd);
    }
}

static void s_dl_free(dl_t *dl)
{
    klist_remove(&dl->link);
    if (dl->open) sbx_req_cancel(dl->open);
    s_close_fd(dl->loop, dl->fd);
    if (dl->z_ready) deflateEnd(&dl->z);
    if (dl->chunk) wbuf_free(dl->chunk);
    free(dl->raw);
    hreq_on_close(dl->req, NULL, NULL);
    hreq_on_drain(dl->req, NULL, NULL);
    hreq_release(&dl->req);
    free(dl);
}

//  Free it once nothing is under way (the threadpool, a callback up the stack).
static void s_dl_settle(dl_t *dl)
{
    if ((dl->done || dl->gone) && !dl->working && !dl->busy) s_dl_free(dl);
}

static void s_dl_done(dl_t *dl)
{
    dl->done = true;
}

static void s_dl_gone(hreq_t *req, void *arg)
{
    (void) req;
    dl_t *dl = arg;
    dl->gone = true;
    s_dl_settle(dl);
}

//  In the threadpool: read the next piece, compress it if asked.
static void s_dl_work(uv_work_t *work)
{
    dl_t *dl = work->data;
    char *dst = dl->gz ? dl->raw : dl->chunk;
    ssize_t n;
    do n = read(dl->fd, dst, READ_CHUNK);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        dl->err = KB_EIO;
        return;
    }
    dl->eof = n == 0;
    if (!dl->gz) {
        dl->len = (size_t) n;
        return;
    }
    dl->z.next_in = (Bytef *) dl->raw;
    dl->z.avail_in = (uInt) n;
    dl->len = 0;
    for (;;) {
        if (dl->len == dl->cap) {
            char *grown = wbuf_realloc(dl->chunk, dl->cap * 2);
            if (!grown) {
                dl->err = KB_ENOMEM;
                return;
            }
            dl->chunk = grown;
            dl->cap *= 2;
        }
        dl->z.next_out = (Bytef *) dl->chunk + dl->len;
        dl->z.avail_out = (uInt) (dl->cap - dl->len);
        int rc = deflate(&dl->z, dl->eof ? Z_FINISH : Z_NO_FLUSH);
        dl->len = dl->cap - dl->z.avail_out;
        if (rc == Z_STREAM_ERROR) {
            dl->err = KB_EIO;
            return;
        }
        if (dl->eof ? rc == Z_STREAM_END : dl->z.avail_in == 0 && dl->z.avail_out > 0) break;
    }
}

static void s_dl_next(dl_t *dl);

static void s_dl_drained(hreq_t *req, void *arg)
{
    dl_t *dl = arg;
    hreq_on_drain(req, NULL, NULL);
    dl->busy++;
    s_dl_next(dl);
    dl->busy--;
    s_dl_settle(dl);
}

static void s_dl_after_(dl_t *dl, int status);

static void s_dl_after(uv_work_t *work, int status)
{
    dl_t *dl = work->data;
    dl->working = false;
    dl->busy++;
    if (!dl->gone) s_dl_after_(dl, status);
    dl->busy--;
    s_dl_settle(dl);
}

static void s_dl_after_(dl_t *dl, int status)
{
    if (status != 0 || dl->err) {
        klog_warn("envd: reading a file for download failed: %s", kb_strerror(dl->err ? dl->err : KB_EIO));
        hreq_stream_end(dl->req);  //  cut short: a fixed length closes the connection
        s_dl_done(dl);
        return;
    }
    if (dl->len) {
        char *chunk = dl->chunk;
        dl->chunk = NULL;
        if (hreq_stream_write_buf(dl->req, chunk, dl->len) != KB_OK) {
            s_dl_done(dl);
            return;
        }
    }
    if (dl->eof) {
        hreq_stream_end(dl->req);
        s_dl_done(dl);
        return;
    }
    s_dl_next(dl);
}

static void s_dl_next(dl_t *dl)
{
    if (dl->gone || dl->done) return;
    if (hreq_stream_queued(dl->req) >= QUEUE_HIGH) {
        hreq_on_drain(dl->req, s_dl_drained, dl);
        return;
    }
    dl->cap = dl->gz ? READ_CHUNK / 2 : READ_CHUNK;
    if (!dl->chunk) dl->chunk = wbuf_alloc(dl->cap);
    if (!dl->chunk) {
        hreq_stream_end(dl->req);
        s_dl_done(dl);
        return;
    }
    dl->len = 0;
    dl->err = 0;
    dl->work.data = dl;
    if (uv_queue_work(dl->loop, &dl->work, s_dl_work, s_dl_after) != 0) {
        hreq_stream_end(dl->req);
        s_dl_done(dl);
        return;
    }
    dl->working = true;
}

static void s_dl_opened_(dl_t *dl, int err, const char *why, const sbx_entry_t *entry);

static void s_dl_opened(int err, const char *why, int fd, const sbx_entry_t *entry, void *arg)
{
    dl_t *dl = arg;
    dl->open = NULL;
    dl->fd = fd;
    dl->busy++;
    s_dl_opened_(dl, err, why, entry);
    dl->busy--;
    s_dl_settle(dl);
}

static void s_dl_opened_(dl_t *dl, int err, const char *why, const sbx_entry_t *entry)
{
    if (err) {
        if (err == KB_ENOTFOUND) s_error(dl->req, 404, "%s", why ? why : "file not found");
        else if (err == KB_EISDIR) s_error(dl->req, 400, "%s", why ? why : "path is a directory");
        else s_error(dl->req, s_status_of(err), "%s", why ? why : kb_strerror(err));
        s_dl_done(dl);
        return;
    }
    if (dl->gz) {
        dl->raw = malloc(READ_CHUNK);
        if (!dl->raw || deflateInit2(&dl->z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            s_error(dl->req, 500, "out of memory");
            s_dl_done(dl);
            return;
        }
        dl->z_ready = true;
        hreq_add_header(dl->req, "content-encoding", "gzip");
        hreq_add_header(dl->req, "vary", "Accept-Encoding");
        hreq_stream_begin(dl->req, 200, "application/octet-stream");
    } else {
        hreq_stream_begin_length(dl->req, 200, "application/octet-stream", entry ? entry->size : 0);
    }
    s_dl_next(dl);
}

static void s_download(envd_t *self, hreq_t *req, sandbox_t *sb)
{
    char ubuf[16], path[PATH_MAX], given[PATH_MAX];
    const char *user;
    if (s_user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) return;
    int rc = hreq_query(req, "path", given, sizeof given);
    if (rc == KB_OK) rc = s_clean_path(s_home(sb, user), given, path, sizeof path);
    if (rc != KB_OK) {
        s_error(req, 400, rc == KB_ETOOBIG ? "path too long" : "a path is required (?path=)");
        return;
    }
    dl_t *dl = calloc(1, sizeof *dl);
    if (!dl) {
        s_error(req, 500, "out of memory");
        return;
    }
    dl->loop = self->loop;
    dl->req = req;
    dl->fd = -1;
    dl->gz = s_accepts_gzip(req);
    klist_init(&dl->link);
    klist_push_back(&self->transfers, &dl->link);
    hreq_hold(req);
    dl->open = sbx_open_read(sandbox_sbx(sb), user, path, s_dl_opened, dl);
    if (!dl->open) {
        s_error(req, 500, "cannot reach the sandbox");
        s_dl_free(dl);
        return;
    }
    hreq_on_close(req, s_dl_gone, dl);
}

// ---------------------------------------------------------------------------------------
//  POST /files: an upload of one or several files

typedef struct {
    klist_t link;
    uv_loop_t *loop;
    sandboxes_t *sandboxes;
    hreq_t *req;
    char sandbox_id[64];
    char user_buf[16];
    const char *user;
    char qpath[PATH_MAX];  //  ?path= (resolved), "" if none
    bool multipart;
    multipart_t mp;
    int raw_state;         //  octet-stream: 0 before the part, 1 in it, 2 after
    //  the body read ahead, not yet parsed
    char *in;
    size_t in_len;
    //  the file being written
    sbx_upload_t *up;
    int fd;
    char path[PATH_MAX];
    bool in_file;      //  the current part is being written
    bool opening;      //  waiting for sbx_upload_begin
    bool part_ending;  //  its data is all here: flush, then commit
    bool committing;   //  waiting for the commit
    //  writes: fill collects, flush is being written
    char *fill, *flush;
    size_t fill_len, flush_len, flush_off;
    bool writing;
    uv_fs_t wreq;
    //  progress
    bool done_parsing, body_ended, finished, gone, paused;
    //  Content-Encoding: gzip: the body as it came, inflated into in as room allows
    bool gz, gz_ready, gz_end;
    z_stream z;
    char *zin;
    size_t zin_len;
    int busy;  //  inside one of its steps: freed on the way out
    bool dying;
    uv_timer_t reaper;  //  frees it from a later loop turn
    size_t files;
    json_t *results;
} up_t;

static void s_up_pump(up_t *u);

static void s_up_closed(uv_handle_t *handle)
{
    up_t *u = handle->data;
    free(u->in);
    free(u->fill);
    free(u->flush);
    json_decref(u->results);
    if (u->gz_ready) inflateEnd(&u->z);
    free(u->zin);
    free(u);
}

static void s_up_reap(uv_timer_t *timer)
{
    up_t *u = timer->data;
    hreq_release(&u->req);
    uv_close((uv_handle_t *) &u->reaper, s_up_closed);
}

//  Once finished and idle it goes - from the next loop turn: the server may still hand
//  it the rest of the body piece it is reading (the answer does not stop that).
static void s_up_maybe_free(up_t *u)
{
    if (!u->finished || u->writing || u->committing || u->busy || u->dying) return;
    u->dying = true;
    if (u->up) sbx_upload_abort(&u->up);
    klist_remove(&u->link);
    hreq_on_close(u->req, NULL, NULL);
    uv_timer_start(&u->reaper, s_up_reap, 0, 0);
}

//  The end: answer (status 0: the client is gone, or the answer is out) and let go.
static void s_up_finish(up_t *u, int status, const char *fmt, ...)
{
    if (u->finished) return;
    u->finished = true;
    if (status && !u->gone && !hreq_replied(u->req)) {
        char msg[600];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        s_error(u->req, status, "%s", msg);
    }
    //  The file being written is dropped; one with a write in flight once it returns.
    if (u->up && !u->writing) sbx_upload_abort(&u->up);
    s_up_maybe_free(u);
}

static void s_up_wrote(uv_fs_t *fs);

static void s_up_write(up_t *u)
{
    char *t = u->flush;
    u->flush = u->fill;
    u->flush_len = u->fill_len;
    u->flush_off = 0;
    u->fill = t;
    u->fill_len = 0;
    uv_buf_t buf = uv_buf_init(u->flush, (unsigned) u->flush_len);
    u->wreq.data = u;
    int rc = uv_fs_write(u->loop, &u->wreq, u->fd, &buf, 1, -1, s_up_wrote);
    if (rc != 0) {
        s_up_finish(u, 500, "writing the file failed: %s", uv_strerror(rc));
        return;
    }
    u->writing = true;
}

static void s_up_wrote(uv_fs_t *fs)
{
    up_t *u = fs->data;
    ssize_t n = fs->result;
    uv_fs_req_cleanup(fs);
    u->writing = false;
    if (u->finished) {
        s_up_maybe_free(u);
        return;
    }
    if (n < 0) {
        if (n == UV_ENOSPC || n == -EDQUOT)
            s_up_finish(u, 507, "not enough disk space to write %s", u->path);
        else
            s_up_finish(u, 500, "writing %s failed: %s", u->path, uv_strerror((int) n));
        return;
    }
    u->flush_off += (size_t) n;
    if (u->flush_off < u->flush_len) {
        uv_buf_t buf = uv_buf_init(u->flush + u->flush_off, (unsigned) (u->flush_len - u->flush_off));
        u->wreq.data = u;
        int rc = uv_fs_write(u->loop, &u->wreq, u->fd, &buf, 1, -1, s_up_wrote);
        if (rc != 0) s_up_finish(u, 500, "writing the file failed: %s", uv_strerror(rc));
        else u->writing = true;
        return;
    }
    u->flush_len = 0;
    s_up_pump(u);
}

static void s_up_opened(sbx_upload_t *up, int err, const char *why, int fd, void *arg)
{
    (void) up;
    up_t *u = arg;
    u->opening = false;
    if (err) {
        sbx_upload_abort(&u->up);
        s_up_finish(u, s_status_of(err), "%s", why ? why : kb_strerror(err));
        return;
    }
    u->fd = fd;
    s_up_pump(u);
}

static void s_up_committed(int err, const char *why, const sbx_entry_t *entries, size_t n, void *arg)
{
    up_t *u = arg;
    u->committing = false;
    if (u->finished) {
        s_up_maybe_free(u);
        return;
    }
    if (err) {
        s_up_finish(u, s_status_of(err), "%s", why ? why : kb_strerror(err));
        return;
    }
    const char *path = n ? entries[0].path : u->path;
    const char *slash = strrchr(path, '/');
    json_array_append_new(u->results, json_pack("{s:s, s:s, s:s}", "name", slash ? slash + 1 : path,
                                                "type", "file", "path", path));
    u->files++;
    u->in_file = false;
    u->part_ending = false;
    s_up_pump(u);
}

//  A file part begins: where it goes, and the temporary file for it.
static void s_up_begin_file(up_t *u, const mp_out_t *part)
{
    sandbox_t *sb = sandboxes_find(u->sandboxes, u->sandbox_id);
    if (!sb || sandbox_state(sb) != SANDBOX_RUNNING || !sandbox_sbx(sb)) {
        s_up_finish(u, 502, "The sandbox was not found");
        return;
    }
    if (*u->qpath && u->files == 0) {
        snprintf(u->path, sizeof u->path, "%s", u->qpath);
    } else if (part && part->has_filename && *part->filename) {
        int rc = s_clean_path(s_home(sb, u->user), part->filename, u->path, sizeof u->path);
        if (rc != KB_OK) {
            s_up_finish(u, 400, "bad file name in a part: %s", kb_strerror(rc));
            return;
        }
    } else {
        s_up_finish(u, 400, "a file part without a filename (and no ?path=)");
        return;
    }
    u->up = sbx_upload_begin(sandbox_sbx(sb), u->user, u->path, true, s_up_opened, u);
    if (!u->up) {
        s_up_finish(u, 500, "cannot reach the sandbox");
        return;
    }
    u->opening = true;
    u->in_file = true;
    u->fd = -1;
}

//  The octet-stream body as one part, with multipart_next's events.
static mp_event_t s_raw_next(up_t *u, bool eof, size_t max, size_t *used, mp_out_t *out)
{
    *used = 0;
    switch (u->raw_state) {
    case 0:
        u->raw_state = 1;
        memset(out, 0, sizeof *out);
        snprintf(out->name, sizeof out->name, "file");
        return MP_PART;
    case 1:
        if (u->in_len) {
            out->data = u->in;
            out->len = u->in_len < max ? u->in_len : max;
            *used = out->len;
            return MP_DATA;
        }
        if (!eof) return MP_MORE;
        u->raw_state = 2;
        return MP_PART_END;
    default: return MP_DONE;
    }
}

//  Move things on as far as they go: parse what has arrived, write it, commit files, and
//  answer at the end. Reading of the body pauses while the next step has to wait.
static void s_up_step(up_t *u);

static void s_up_pump(up_t *u)
{
    u->busy++;
    s_up_step(u);
    u->busy--;
    s_up_maybe_free(u);
}

//  Inflate what has come of a gzip body into in, as far as there is room. Returns false
//  (and finishes) if it does not decompress.
static bool s_up_inflate(up_t *u)
{
    while (!u->gz_end && u->in_len < IN_CAP && (u->zin_len || u->body_ended)) {
        u->z.next_in = (Bytef *) u->zin;
        u->z.avail_in = (uInt) u->zin_len;
        u->z.next_out = (Bytef *) u->in + u->in_len;
        u->z.avail_out = (uInt) (IN_CAP - u->in_len);
        int rc = inflate(&u->z, Z_NO_FLUSH);
        size_t used = u->zin_len - u->z.avail_in;
        size_t made = (IN_CAP - u->in_len) - u->z.avail_out;
        memmove(u->zin, u->zin + used, u->zin_len - used);
        u->zin_len -= used;
        u->in_len += made;
        if (rc == Z_STREAM_END) {
            u->gz_end = true;
        } else if (rc == Z_BUF_ERROR || (rc == Z_OK && !used && !made)) {
            if (u->body_ended && !u->zin_len) {
                s_up_finish(u, 400, "the gzip body is cut short");
                return false;
            }
            break;
        } else if (rc != Z_OK) {
            s_up_finish(u, 400, "the body does not decompress (Content-Encoding: gzip)");
            return false;
        }
    }
    return true;
}

static void s_up_step(up_t *u)
{
    if (u->finished) return;
    for (;;) {
        if (u->gz && !s_up_inflate(u)) return;
        //  The parser sees the end once every byte of the body is in.
        bool eof = u->body_ended && (!u->gz || u->gz_end);
        if (u->opening || u->committing) break;
        if (u->in_file && u->fill_len && !u->writing) s_up_write(u);
        if (u->finished) return;
        if (u->part_ending) {
            if (u->writing || u->fill_len) break;
            u->committing = true;
            u->fd = -1;
            sbx_upload_commit(&u->up, s_up_committed, u);
            break;
        }
        if (u->done_parsing) {
            if (!eof) break;
            if (!json_array_size(u->results)) {
                s_up_finish(u, 400, "no file in the upload (multipart parts named \"file\")");
                return;
            }
            hreq_reply_json(u->req, 200, json_incref(u->results));
            s_up_finish(u, 0, NULL);
            return;
        }
        size_t room = FILL_CAP - u->fill_len;
        if (u->in_file && room == 0) break;  //  both buffers full: wait for the write
        size_t used;
        mp_out_t out;
        mp_event_t ev = u->multipart
                            ? multipart_next(&u->mp, u->in, u->in_len, eof, room ? room : 1, &used, &out)
                            : s_raw_next(u, eof, room ? room : 1, &used, &out);
        switch (ev) {
        case MP_PART:
            if (strcmp(out.name, "file") == 0) s_up_begin_file(u, u->multipart ? &out : NULL);
            break;
        case MP_DATA:
            if (u->in_file) {
                memcpy(u->fill + u->fill_len, out.data, out.len);
                u->fill_len += out.len;
            }
            break;
        case MP_PART_END:
            if (u->in_file) u->part_ending = true;
            break;
        case MP_DONE: u->done_parsing = true; break;
        case MP_ERROR:
            s_up_finish(u, 400, "malformed multipart body: %s", u->mp.why ? u->mp.why : "?");
            return;
        case MP_MORE: break;
        }
        if (used) {
            memmove(u->in, u->in + used, u->in_len - used);
            u->in_len -= used;
        }
        if (u->finished) return;
        if (ev == MP_MORE && !used) break;
    }
    //  Read on only while the steps keep up.
    bool blocked = u->opening || u->committing || u->part_ending || u->in_len >= IN_PAUSE ||
                   u->zin_len >= IN_PAUSE ||
                   (u->in_file && u->fill_len == FILL_CAP);
    if (blocked && !u->paused && !u->body_ended) {
        u->paused = true;
        hreq_body_pause(u->req);
    } else if (!blocked && u->paused) {
        u->paused = false;
        hreq_body_resume(u->req);
    }
}

static void s_up_data(hreq_t *req, const char *data, size_t len, void *arg)
{
    (void) req;
    up_t *u = arg;
    if (u->finished) return;
    char *buf = u->gz ? u->zin : u->in;
    size_t *have = u->gz ? &u->zin_len : &u->in_len;
    if (*have + len > IN_CAP) {
        s_up_finish(u, 500, "upload buffer overrun");
        return;
    }
    memcpy(buf + *have, data, len);
    *have += len;
    s_up_pump(u);
}

static void s_up_end(hreq_t *req, int err, void *arg)
{
    (void) req;
    up_t *u = arg;
    u->body_ended = true;
    if (u->finished) return;
    if (err == KB_ECLOSED) {
        u->gone = true;
        s_up_finish(u, 0, NULL);
    } else if (err == KB_ETIMEDOUT) {
        s_up_finish(u, 408, "the request body stalled");
    } else if (err) {
        s_up_finish(u, 400, "malformed request body (chunked coding)");
    } else {
        s_up_pump(u);
    }
}

static void s_up_gone(hreq_t *req, void *arg)
{
    (void) req;
    up_t *u = arg;
    u->gone = true;
    s_up_finish(u, 0, NULL);
}

static void s_upload(envd_t *self, hreq_t *req, sandbox_t *sb, const sbxroute_t *route)
{
    up_t *u = calloc(1, sizeof *u);
    if (!u) {
        s_error(req, 500, "out of memory");
        return;
    }
    if (s_user(req, sb, u->user_buf, sizeof u->user_buf, &u->user) != KB_OK) {
        free(u);
        return;
    }
    char given[PATH_MAX];
    int rc = hreq_query(req, "path", given, sizeof given);
    if (rc == KB_OK && *given) rc = s_clean_path(s_home(sb, u->user), given, u->qpath, sizeof u->qpath);
    else if (rc == KB_OK || rc == KB_ENOTFOUND) rc = KB_OK;
    const char *ct = hreq_header(req, "content-type");
    const char *ce = hreq_header(req, "content-encoding");
    const char *why = NULL;
    if (rc != KB_OK) {
        s_error(req, 400, "bad path: %s", kb_strerror(rc));
    } else if (ce && strcasecmp(ce, "identity") != 0 && strcasecmp(ce, "gzip") != 0) {
        s_error(req, 415, "Content-Encoding %s is not supported for uploads (gzip is)", ce);
    } else if (ct && strncasecmp(ct, "multipart/", 10) == 0) {
        u->multipart = true;
        if (multipart_init(&u->mp, ct, &why) != 0) s_error(req, 400, "%s", why);
    } else if (!*u->qpath) {
        s_error(req, 400, "an upload that is not multipart needs ?path=");
    }
    if (hreq_replied(req)) {
        free(u);
        return;
    }
    u->loop = self->loop;
    u->sandboxes = self->sandboxes;
    u->req = req;
    u->fd = -1;
    snprintf(u->sandbox_id, sizeof u->sandbox_id, "%s", route->id);
    u->in = malloc(IN_CAP);
    u->fill = malloc(FILL_CAP);
    u->flush = malloc(FILL_CAP);
    u->results = json_array();
    if (ce && strcasecmp(ce, "gzip") == 0) {
        u->gz = true;
        u->zin = malloc(IN_CAP);
        if (u->zin && inflateInit2(&u->z, 15 + 16) == Z_OK) u->gz_ready = true;
    }
    uv_timer_init(self->loop, &u->reaper);
    u->reaper.data = u;
    klist_init(&u->link);
    klist_push_back(&self->transfers, &u->link);
    hreq_hold(req);
    if (!u->in || !u->fill || !u->flush || !u->results || (u->gz && !u->gz_ready)) {
        s_up_finish(u, 500, "out of memory");
        return;
    }
    u->busy++;  //  the body may end at once (the client already left)
    hreq_on_close(req, s_up_gone, u);
    hreq_body_events_t events = {s_up_data, s_up_end};
    hreq_body_stream(req, &events, u);
    u->busy--;
    s_up_pump(u);
}

// ---------------------------------------------------------------------------------------
//  Connect RPC, JSON codec, unary: filesystem.Filesystem (e2b-selfhost.md 5.3, 5.4)

typedef enum { FS_STAT, FS_MKDIR, FS_MOVE, FS_LIST, FS_REMOVE } fs_op_t;

typedef struct {
    hreq_t *req;
    sbx_req_t *sr;
    fs_op_t op;
} rpc_t;

//  A Connect error: {"code": "<name>", "message"} with the status Connect gives it.
static void s_rpc_error(hreq_t *req, const char *code, const char *fmt, ...)
{
    static const struct {
        const char *code;
        int status;
    } map[] = {{"invalid_argument", 400}, {"not_found", 404},     {"already_exists", 409},
               {"permission_denied", 403}, {"resource_exhausted", 429}, {"unimplemented", 501},
               {"unauthenticated", 401},  {"unavailable", 503},   {"internal", 500}};
    int status = 500;
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strcmp(map[i].code, code) == 0) status = map[i].status;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    hreq_reply_json(req, status, json_pack("{s:s, s:s}", "code", code, "message", msg));
}

static const char *s_rpc_code(int err)
{
    switch (err) {
    case KB_ENOTFOUND: return "not_found";
    case KB_EEXIST: return "already_exists";
    case KB_EACCES: return "permission_denied";
    case KB_EINVAL:
    case KB_ENOTDIR:
    case KB_EISDIR:
    case KB_ETOOBIG: return "invalid_argument";
    case KB_ENOSPC: return "resource_exhausted";
    case KB_ECLOSED: return "unavailable";
    default: return "internal";
    }
}

static const char *s_file_type(sbx_ftype_t t)
{
    return t == SBX_FILE ? "FILE_TYPE_FILE" : t == SBX_DIR ? "FILE_TYPE_DIRECTORY"
                         : t == SBX_SYMLINK ? "FILE_TYPE_SYMLINK" : "FILE_TYPE_UNSPECIFIED";
}

//  EntryInfo as upstream envd fills it: a symlink has its target's type and symlinkTarget,
//  mode is the permission bits, permissions Go's FileMode.String().
static json_t *s_entry_json(const sbx_entry_t *e)
{
    sbx_ftype_t type = e->type == SBX_SYMLINK && e->target_type ? e->target_type : e->type;
    char perms[11];
    perms[0] = e->type == SBX_DIR ? 'd' : e->type == SBX_SYMLINK ? 'L' : e->type == SBX_OTHER ? '?' : '-';
    static const char rwx[] = "rwxrwxrwx";
    for (int i = 0; i < 9; i++) perms[1 + i] = (e->mode & (0400u >> i)) ? rwx[i] : '-';
    perms[10] = '\0';
    char size[24], mtime[64];
    snprintf(size, sizeof size, "%llu", (unsigned long long) e->size);
    time_t secs = (time_t) (e->mtime_ns / 1000000000);
    long nanos = (long) (e->mtime_ns % 1000000000);
    if (nanos < 0) {
        nanos += 1000000000;
        secs--;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(mtime, sizeof mtime, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(mtime + n, sizeof mtime - n, ".%09ldZ", nanos);
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:i, s:s, s:s, s:s, s:s}", "name", e->name, "type",
                          s_file_type(type), "path", e->path, "size", size, "mode",
                          (json_int_t) (e->mode & 07777), "permissions", perms, "owner",
                          e->owner ? e->owner : "", "group", e->group ? e->group : "",
                          "modifiedTime", mtime);
    if (j && e->symlink_target) json_object_set_new(j, "symlinkTarget", json_string(e->symlink_target));
    if (j && e->meta && e->meta[0]) {
        json_t *meta = json_object();
        for (size_t i = 0; e->meta[i] && e->meta[i + 1]; i += 2)
            json_object_set_new(meta, e->meta[i], json_string(e->meta[i + 1]));
        json_object_set_new(j, "metadata", meta);
    }
    return j;
}

static void s_rpc_free(rpc_t *r)
{
    hreq_on_close(r->req, NULL, NULL);
    hreq_release(&r->req);
    free(r);
}

static void s_rpc_gone(hreq_t *req, void *arg)
{
    (void) req;
    rpc_t *r = arg;
    if (r->sr) sbx_req_cancel(r->sr);
    s_rpc_free(r);
}

static void s_rpc_done(int err, const char *why, const sbx_entry_t *entries, size_t n, void *arg)
{
    rpc_t *r = arg;
    r->sr = NULL;
    if (err) {
        s_rpc_error(r->req, s_rpc_code(err), "%s", why ? why : kb_strerror(err));
    } else if (r->op == FS_LIST) {
        json_t *list = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(list, s_entry_json(&entries[i]));
        hreq_reply_json(r->req, 200, json_pack("{s:o}", "entries", list));
    } else if (r->op == FS_REMOVE) {
        hreq_reply_json(r->req, 200, json_object());
    } else if (n) {
        hreq_reply_json(r->req, 200, json_pack("{s:o}", "entry", s_entry_json(&entries[0])));
    } else {
        s_rpc_error(r->req, "internal", "no entry");
    }
    s_rpc_free(r);
}

//  The user of a filesystem call: Authorization: Basic base64("<user>:"), default "user".
static int s_rpc_user(hreq_t *req, sandbox_t *sb, char *user, size_t size, const char **out)
{
    *out = NULL;
    if (!sandbox_kernel_user(sb)) return KB_OK;
    snprintf(user, size, "user");
    const char *auth = hreq_header(req, "authorization");
    if (auth && strncasecmp(auth, "basic ", 6) == 0) {
        unsigned char raw[128];
        size_t len = 0;
        const char *b64 = auth + 6;
        while (*b64 == ' ') b64++;
        if (sodium_base642bin(raw, sizeof raw - 1, b64, strlen(b64), NULL, &len, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0) {
            s_rpc_error(req, "invalid_argument", "malformed Basic authorization");
            return KB_EINVAL;
        }
        raw[len] = '\0';
        char *colon = strchr((char *) raw, ':');
        if (colon) *colon = '\0';
        if (strlen((char *) raw) >= size) {
            s_rpc_error(req, "unauthenticated", "no such user");
            return KB_EINVAL;
        }
        if (*raw) memcpy(user, raw, strlen((char *) raw) + 1);
    }
    if (strcmp(user, "root") != 0 && strcmp(user, "user") != 0) {
        s_rpc_error(req, "unauthenticated", "user '%s' does not exist", user);
        return KB_EINVAL;
    }
    *out = user;
    return KB_OK;
}

//  A string field of the request made an absolute, clean path (replies if it cannot be).
static bool s_rpc_path(hreq_t *req, json_t *body, const char *key, const char *home, char *out,
                       size_t size)
{
    json_t *v = json_object_get(body, key);
    if (!json_is_string(v) || !*json_string_value(v)) {
        s_rpc_error(req, "invalid_argument", "%s must be a non-empty string", key);
        return false;
    }
    if (s_clean_path(home, json_string_value(v), out, size) != KB_OK) {
        s_rpc_error(req, "invalid_argument", "%s is too long", key);
        return false;
    }
    return true;
}

// ---------------------------------------------------------------------------------------
//  Connect streaming: filesystem.Filesystem/WatchDir

typedef struct {
    hreq_t *req;
    sbx_watch_t *watch;
    uv_loop_t *loop;
    uv_timer_t keepalive, deadline;
    bool started, ended;
    int handles;  //  timers still open
} wd_t;

//  One Connect envelope (flags, big-endian length, JSON). Returns 0 or the write's error.
static int s_envelope(hreq_t *req, uint8_t flags, json_t *msg)
{
    size_t len = 0;
    char *text = jx_dumps(msg, false, &len);
    json_decref(msg);
    if (!text) return KB_ENOMEM;
    char *buf = wbuf_alloc(len + 5);
    if (!buf) {
        free(text);
        return KB_ENOMEM;
    }
    buf[0] = (char) flags;
    buf[1] = (char) (len >> 24);
    buf[2] = (char) (len >> 16);
    buf[3] = (char) (len >> 8);
    buf[4] = (char) len;
    memcpy(buf + 5, text, len);
    free(text);
    return hreq_stream_write_buf(req, buf, len + 5);
}

static void s_wd_closed(uv_handle_t *handle)
{
    wd_t *w = handle->data;
    if (--w->handles == 0) free(w);
}

//  End the stream (code NULL: success) and let go.
static void s_wd_end(wd_t *w, const char *code, const char *message)
{
    if (w->ended) return;
    w->ended = true;
    sbx_watch_destroy(&w->watch);
    if (!hreq_gone(w->req)) {
        if (!w->started) hreq_stream_begin(w->req, 200, "application/connect+json");
        json_t *end = code ? json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message)
                           : json_object();
        s_envelope(w->req, 0x02, end);
        hreq_stream_end(w->req);
    }
    hreq_on_close(w->req, NULL, NULL);
    hreq_release(&w->req);
    uv_timer_stop(&w->keepalive);
    uv_timer_stop(&w->deadline);
    uv_close((uv_handle_t *) &w->keepalive, s_wd_closed);
    uv_close((uv_handle_t *) &w->deadline, s_wd_closed);
}

static void s_wd_gone(hreq_t *req, void *arg)
{
    (void) req;
    s_wd_end(arg, NULL, NULL);
}

static void s_wd_keepalive(uv_timer_t *t)
{
    wd_t *w = t->data;
    if (s_envelope(w->req, 0, json_pack("{s:{}}", "keepalive")) != KB_OK)
        s_wd_end(w, NULL, NULL);
}

static void s_wd_deadline(uv_timer_t *t)
{
    s_wd_end(t->data, "deadline_exceeded", "the watch reached its Connect-Timeout-Ms");
}

static void s_wd_start(sbx_watch_t *watch, int err, const char *why, void *arg)
{
    (void) watch;
    wd_t *w = arg;
    if (err) {
        s_wd_end(w, s_rpc_code(err), why ? why : kb_strerror(err));
        return;
    }
    w->started = true;
    hreq_stream_begin(w->req, 200, "application/connect+json");
    if (s_envelope(w->req, 0, json_pack("{s:{}}", "start")) != KB_OK) s_wd_end(w, NULL, NULL);
}

static void s_wd_event(sbx_watch_t *watch, sbx_event_t type, const char *name, bool is_dir, void *arg)
{
    (void) watch;
    (void) is_dir;
    wd_t *w = arg;
    static const char *const names[] = {NULL, "EVENT_TYPE_CREATE", "EVENT_TYPE_WRITE",
                                         "EVENT_TYPE_REMOVE", "EVENT_TYPE_RENAME", "EVENT_TYPE_CHMOD"};
    if (w->ended || (int) type < 1 || (int) type > 5) return;
    if (s_envelope(w->req, 0, json_pack("{s:{s:s, s:s}}", "filesystem", "name", name, "type",
                                        names[type])) != KB_OK)
        s_wd_end(w, NULL, NULL);
}

static void s_wd_watch_end(sbx_watch_t *watch, int err, const char *why, void *arg)
{
    (void) watch;
    wd_t *w = arg;
    s_wd_end(w, err == KB_ETOOBIG ? "resource_exhausted" : s_rpc_code(err ? err : KB_ENOTFOUND),
             why ? why : "the watch ended");
}

//  The one message of a streaming request: 00 <len:u32be> <json>. NULL if malformed.
static json_t *s_stream_request(hreq_t *req, const char **why)
{
    size_t blen;
    const unsigned char *b = (const unsigned char *) hreq_body(req, &blen);
    if (blen < 5) {
        *why = "the request is not one Connect envelope";
        return NULL;
    }
    if (b[0] != 0) {
        *why = "envelope flags must be 0 (no compression)";
        return NULL;
    }
    size_t len = (size_t) b[1] << 24 | (size_t) b[2] << 16 | (size_t) b[3] << 8 | b[4];
    if (len != blen - 5) {
        *why = len > blen - 5 ? "the envelope's length runs past the body"
                              : "a unary request holds more than one message";
        return NULL;
    }
    json_error_t jerr;
    json_t *msg = len ? jx_loadb((const char *) b + 5, len, &jerr) : json_object();
    if (!json_is_object(msg)) {
        json_decref(msg);
        *why = "the message is not a JSON object";
        return NULL;
    }
    return msg;
}

//  Stream-shaped failure before anything was sent: 200 and an end-stream error (a non-200
//  status would lose the message, e2b-selfhost.md 5.2).
static void s_stream_error(hreq_t *req, const char *code, const char *message)
{
    hreq_stream_begin(req, 200, "application/connect+json");
    s_envelope(req, 0x02, json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message));
    hreq_stream_end(req);
}

static void s_watch_dir(envd_t *self, hreq_t *req, sandbox_t *sb)
{
    const char *ct = hreq_header(req, "content-type");
    if (!ct || strncasecmp(ct, "application/connect+json", 24) != 0) {
        hreq_reply_json(req, 415, json_pack("{s:s, s:s}", "code", "unimplemented", "message",
                                            "WatchDir is a stream: application/connect+json"));
        return;
    }
    const char *why = NULL;
    json_t *msg = s_stream_request(req, &why);
    if (!msg) {
        s_stream_error(req, "invalid_argument", why);
        return;
    }
    char ubuf[16], path[PATH_MAX];
    const char *user;
    //  s_rpc_user answers unary-shaped; check the header the same way first
    if (s_rpc_user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) {
        json_decref(msg);
        return;
    }
    json_t *p = json_object_get(msg, "path");
    json_t *rec = json_object_get(msg, "recursive");
    bool recursive = json_is_true(rec);
    if (!json_is_string(p) || !*json_string_value(p) || (rec && !json_is_boolean(rec) && !json_is_null(rec)) ||
        s_clean_path(s_home(sb, user), json_string_value(p), path, sizeof path) != KB_OK) {
        json_decref(msg);
        s_stream_error(req, "invalid_argument", "path must be a non-empty string, recursive a boolean");
        return;
    }
    json_decref(msg);
    wd_t *w = calloc(1, sizeof *w);
    if (!w) {
        s_stream_error(req, "internal", "out of memory");
        return;
    }
    w->req = req;
    w->loop = self->loop;
    hreq_hold(req);
    uv_timer_init(self->loop, &w->keepalive);
    uv_timer_init(self->loop, &w->deadline);
    w->keepalive.data = w->deadline.data = w;
    w->handles = 2;
    static const sbx_watch_events_t events = {s_wd_start, s_wd_event, s_wd_watch_end};
    int err = 0;
    w->watch = sbx_watch(sandbox_sbx(sb), user, path, recursive, &events, w, &err);
    if (!w->watch) {
        s_wd_end(w, s_rpc_code(err ? err : KB_ECLOSED), "cannot watch");
        return;
    }
    hreq_on_close(req, s_wd_gone, w);
    const char *ka = hreq_header(req, "keepalive-ping-interval");
    long secs = ka ? strtol(ka, NULL, 10) : 90;
    if (secs < 1 || secs > 3600) secs = 90;
    uv_timer_start(&w->keepalive, s_wd_keepalive, (uint64_t) secs * 1000, (uint64_t) secs * 1000);
    const char *to = hreq_header(req, "connect-timeout-ms");
    long long ms = to ? strtoll(to, NULL, 10) : 0;
    if (ms > 0) uv_timer_start(&w->deadline, s_wd_deadline, (uint64_t) ms, 0);
}

static void s_filesystem(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method)
{
    static const struct {
        const char *name;
        fs_op_t op;
    } methods[] = {{"Stat", FS_STAT}, {"MakeDir", FS_MKDIR}, {"Move", FS_MOVE},
                   {"ListDir", FS_LIST}, {"Remove", FS_REMOVE}};
    int op = -1;
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        if (strcmp(methods[i].name, method) == 0) op = (int) methods[i].op;
    if (op < 0 && strcmp(method, "WatchDir") == 0 && hreq_method(req) == HM_POST) {
        s_watch_dir(self, req, sb);
        return;
    }
    if (op < 0) {
        s_rpc_error(req, "unimplemented", "filesystem.Filesystem/%s is not implemented", method);
        return;
    }
    if (hreq_method(req) != HM_POST) {
        hreq_add_header(req, "allow", "POST");
        s_rpc_error(req, "unimplemented", "Connect unary calls are POST");
        return;
    }
    const char *ct = hreq_header(req, "content-type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        hreq_add_header(req, "accept-post", "application/json");
        hreq_reply_json(req, 415, json_pack("{s:s, s:s}", "code", "unimplemented", "message",
                                            "only the Connect JSON codec (application/json) is served"));
        return;
    }
    size_t blen;
    const char *text = hreq_body(req, &blen);
    json_error_t jerr;
    json_t *body = blen ? jx_loadb(text, blen, &jerr) : json_object();
    if (!json_is_object(body)) {
        json_decref(body);
        s_rpc_error(req, "invalid_argument", "the request is not a JSON object");
        return;
    }
    char ubuf[16], path[PATH_MAX], to[PATH_MAX];
    const char *user;
    if (s_rpc_user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) {
        json_decref(body);
        return;
    }
    const char *home = s_home(sb, user);
    bool ok = s_rpc_path(req, body, op == FS_MOVE ? "source" : "path", home, path, sizeof path);
    if (ok && op == FS_MOVE) ok = s_rpc_path(req, body, "destination", home, to, sizeof to);
    int64_t depth = 1;
    json_t *d = json_object_get(body, "depth");
    if (ok && op == FS_LIST && d && !json_is_null(d)) {
        //  proto3 JSON: a uint32 as a number or a string
        if (json_is_integer(d)) depth = json_integer_value(d);
        else if (json_is_string(d)) depth = strtoll(json_string_value(d), NULL, 10);
        else ok = false;
        if (!ok || depth < 0 || depth > 1000) {
            s_rpc_error(req, "invalid_argument", "depth must be a whole number (1..1000)");
            ok = false;
        }
        if (depth == 0) depth = 1;
    }
    json_decref(body);
    if (!ok) return;
    rpc_t *r = calloc(1, sizeof *r);
    if (!r) {
        s_rpc_error(req, "internal", "out of memory");
        return;
    }
    r->req = req;
    r->op = (fs_op_t) op;
    hreq_hold(req);
    sbx_t *sbx = sandbox_sbx(sb);
    switch (r->op) {
    case FS_STAT: r->sr = sbx_stat(sbx, user, path, s_rpc_done, r); break;
    case FS_MKDIR: r->sr = sbx_mkdir(sbx, user, path, true, s_rpc_done, r); break;
    case FS_MOVE: r->sr = sbx_rename(sbx, user, path, to, s_rpc_done, r); break;
    case FS_LIST: r->sr = sbx_list(sbx, user, path, (int) depth, s_rpc_done, r); break;
    case FS_REMOVE: r->sr = sbx_remove(sbx, user, path, s_rpc_done, r); break;
    }
    if (!r->sr) {
        s_rpc_error(req, "unavailable", "cannot reach the sandbox");
        s_rpc_free(r);
        return;
    }
    hreq_on_close(req, s_rpc_gone, r);
}

// ---------------------------------------------------------------------------------------
//  Connect: process.Process (e2b-selfhost.md 5.6, 5.7)

#define PROC_QUEUE_HIGH (512 * 1024)

typedef struct _eproc_t eproc_t;

//  One stream of a process's events (Start's, or a Connect's).
typedef struct {
    klist_t link;
    eproc_t *p;
    hreq_t *req;
    uv_timer_t keepalive;
} pstream_t;

struct _eproc_t {
    klist_t link;
    envd_t *envd;
    char sandbox_id[64];
    proc_t *proc;
    int pid;
    json_t *config;  //  {"cmd", "args", "envs", "cwd"?}
    char *tag;
    bool started, paused;
    klist_t streams;  //  pstream_t
    uv_timer_t deadline;  //  Connect-Timeout-Ms of Start: the process's lifetime
    bool deadline_closed;
};

static void s_ps_closed(uv_handle_t *h)
{
    free(h->data);
}

//  End one stream: an end-stream frame (code NULL: success), the body's end.
static void s_ps_end(pstream_t *ps, const char *code, const char *message)
{
    klist_remove(&ps->link);
    if (!hreq_gone(ps->req)) {
        json_t *end = code ? json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message)
                           : json_object();
        s_envelope(ps->req, 0x02, end);
        hreq_stream_end(ps->req);
    }
    hreq_on_close(ps->req, NULL, NULL);
    hreq_on_drain(ps->req, NULL, NULL);
    hreq_release(&ps->req);
    uv_timer_stop(&ps->keepalive);
    uv_close((uv_handle_t *) &ps->keepalive, s_ps_closed);
}

static void s_ep_deadline_closed(uv_handle_t *h)
{
    eproc_t *p = h->data;
    json_decref(p->config);
    free(p->tag);
    free(p);
}

//  Forget a process: its streams end (with code, or success), it is killed if it runs.
static void s_ep_free(eproc_t *p, const char *code, const char *message)
{
    while (!klist_empty(&p->streams))
        s_ps_end(klist_entry(klist_first(&p->streams), pstream_t, link), code, message);
    klist_remove(&p->link);
    proc_destroy(&p->proc);
    uv_timer_stop(&p->deadline);
    uv_close((uv_handle_t *) &p->deadline, s_ep_deadline_closed);
}

//  Send one event to every stream of p; pause the output while any is behind.
static void s_ep_send(eproc_t *p, json_t *event)
{
    klist_t *it, *tmp;
    bool behind = false;
    klist_foreach_safe(it, tmp, &p->streams)
    {
        pstream_t *ps = klist_entry(it, pstream_t, link);
        if (s_envelope(ps->req, 0, json_pack("{s:O}", "event", event)) != KB_OK) {
            s_ps_end(ps, NULL, NULL);
            continue;
        }
        uv_timer_again(&ps->keepalive);
        if (hreq_stream_queued(ps->req) >= PROC_QUEUE_HIGH) behind = true;
    }
    json_decref(event);
    if (behind && !p->paused && p->proc) {
        p->paused = true;
        proc_pause_output(p->proc);
    }
}

static void s_ps_drained(hreq_t *req, void *arg)
{
    (void) req;
    pstream_t *ps = arg;
    eproc_t *p = ps->p;
    if (!p->paused) return;
    klist_t *it;
    klist_foreach(it, &p->streams)
    {
        pstream_t *q = klist_entry(it, pstream_t, link);
        if (hreq_stream_queued(q->req) >= PROC_QUEUE_HIGH) return;
    }
    p->paused = false;
    if (p->proc) proc_resume_output(p->proc);
}

static void s_ps_gone(hreq_t *req, void *arg)
{
    (void) req;
    //  A dropped stream leaves the process running (upstream does the same).
    s_ps_end(arg, NULL, NULL);
}

static void s_ps_keepalive(uv_timer_t *t)
{
    pstream_t *ps = t->data;
    if (s_envelope(ps->req, 0, json_pack("{s:{s:{}}}", "event", "keepalive")) != KB_OK)
        s_ps_end(ps, NULL, NULL);
}

//  A new stream on req for p (the head goes out now; the start event when p has started).
static pstream_t *s_ps_new(eproc_t *p, hreq_t *req)
{
    pstream_t *ps = calloc(1, sizeof *ps);
    if (!ps) return NULL;
    ps->p = p;
    ps->req = req;
    hreq_hold(req);
    uv_timer_init(p->envd->loop, &ps->keepalive);
    ps->keepalive.data = ps;
    klist_init(&ps->link);
    klist_push_back(&p->streams, &ps->link);
    hreq_on_close(req, s_ps_gone, ps);
    hreq_on_drain(req, s_ps_drained, ps);
    const char *ka = hreq_header(req, "keepalive-ping-interval");
    long secs = ka ? strtol(ka, NULL, 10) : 90;
    if (secs < 1 || secs > 3600) secs = 90;
    uv_timer_start(&ps->keepalive, s_ps_keepalive, (uint64_t) secs * 1000, (uint64_t) secs * 1000);
    hreq_stream_begin(req, 200, "application/connect+json");
    return ps;
}

static void s_ep_on_start(proc_t *proc, int err, const char *why, void *arg)
{
    (void) proc;
    eproc_t *p = arg;
    if (err) {
        s_ep_free(p, err == KB_ENOTFOUND || err == KB_ENOTDIR ? "invalid_argument" : s_rpc_code(err),
                  why ? why : kb_strerror(err));
        return;
    }
    p->started = true;
    p->pid = proc_pid(p->proc);
    s_ep_send(p, json_pack("{s:{s:i}}", "start", "pid", p->pid));
}

static void s_ep_on_output(proc_t *proc, proc_stream_t stream, const char *data, size_t len, void *arg)
{
    (void) proc;
    eproc_t *p = arg;
    size_t cap = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(cap);
    if (!b64) return;
    sodium_bin2base64(b64, cap, (const unsigned char *) data, len, sodium_base64_VARIANT_ORIGINAL);
    const char *key = stream == PROC_STDOUT ? "stdout" : stream == PROC_STDERR ? "stderr" : "pty";
    s_ep_send(p, json_pack("{s:{s:s}}", "data", key, b64));
    free(b64);
}

static const char *s_signal_name(int sig)
{
    switch (sig) {
    case SIGKILL: return "killed";
    case SIGTERM: return "terminated";
    case SIGINT: return "interrupt";
    case SIGHUP: return "hangup";
    case SIGSEGV: return "segmentation fault";
    case SIGABRT: return "aborted";
    case SIGPIPE: return "broken pipe";
    default: return NULL;
    }
}

static void s_ep_on_exit(proc_t *proc, const proc_exit_t *ex, void *arg)
{
    (void) proc;
    eproc_t *p = arg;
    char status[64];
    json_t *end;
    if (ex->exited) {
        snprintf(status, sizeof status, "exit status %lld", (long long) ex->code);
        end = json_pack("{s:I, s:b, s:s}", "exitCode", (json_int_t) ex->code, "exited", 1, "status", status);
        if (ex->code != 0) json_object_set_new(end, "error", json_string(status));
    } else {
        const char *name = s_signal_name(ex->signal);
        if (name) snprintf(status, sizeof status, "signal: %s", name);
        else snprintf(status, sizeof status, "signal: %d", ex->signal);
        end = json_pack("{s:i, s:b, s:s, s:s}", "exitCode", -1, "exited", 0, "status", status, "error",
                        status);
    }
    s_ep_send(p, json_pack("{s:o}", "end", end));
    s_ep_free(p, NULL, NULL);
}

static void s_ep_deadline(uv_timer_t *t)
{
    eproc_t *p = t->data;
    if (p->proc) proc_signal(p->proc, SIGKILL);
}

static eproc_t *s_ep_find(envd_t *self, const char *sandbox_id, json_t *selector)
{
    json_t *pid = json_object_get(selector, "pid");
    const char *tag = json_string_value(json_object_get(selector, "tag"));
    long long want = json_is_integer(pid) ? json_integer_value(pid)
                     : json_is_string(pid) ? strtoll(json_string_value(pid), NULL, 10)
                                           : -1;
    klist_t *it;
    klist_foreach(it, &self->procs)
    {
        eproc_t *p = klist_entry(it, eproc_t, link);
        if (strcmp(p->sandbox_id, sandbox_id) != 0 || !p->started) continue;
        if ((want >= 0 && p->pid == want) || (want < 0 && tag && p->tag && strcmp(p->tag, tag) == 0))
            return p;
    }
    return NULL;
}

//  "K=V" strings of an object of strings (NULL-terminated; free with free()).
static char **s_env_strings(json_t *env)
{
    size_t n = json_object_size(env), i = 0;
    char **out = calloc(n + 1, sizeof *out);
    if (!out) return NULL;
    const char *k;
    json_t *v;
    json_object_foreach(env, k, v)
    {
        if (!json_is_string(v)) continue;
        size_t len = strlen(k) + strlen(json_string_value(v)) + 2;
        out[i] = malloc(len);
        if (out[i]) snprintf(out[i++], len, "%s=%s", k, json_string_value(v));
    }
    return out;
}

static void s_strings_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++) free(v[i]);
    free(v);
}

static void s_proc_start(envd_t *self, hreq_t *req, sandbox_t *sb)
{
    const char *why = NULL;
    json_t *msg = s_stream_request(req, &why);
    if (!msg) {
        s_stream_error(req, "invalid_argument", why);
        return;
    }
    char ubuf[16];
    const char *user;
    if (s_rpc_user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) {
        json_decref(msg);
        return;
    }
    json_t *proc = json_object_get(msg, "process");
    json_t *cmd = json_object_get(proc, "cmd");
    json_t *args = json_object_get(proc, "args");
    json_t *envs = json_object_get(proc, "envs");
    json_t *cwd = json_object_get(proc, "cwd");
    json_t *pty = json_object_get(msg, "pty");
    json_t *size = json_object_get(pty, "size");
    json_t *tag = json_object_get(msg, "tag");
    bool bad = !json_is_object(proc) || !json_is_string(cmd) || !*json_string_value(cmd) ||
               (args && !json_is_array(args) && !json_is_null(args)) ||
               (envs && !json_is_object(envs) && !json_is_null(envs)) ||
               (cwd && !json_is_string(cwd) && !json_is_null(cwd)) ||
               (tag && !json_is_string(tag) && !json_is_null(tag));
    size_t i;
    json_t *a;
    json_array_foreach(args, i, a) if (!json_is_string(a)) bad = true;
    const char *k;
    json_object_foreach(envs, k, a) if (!json_is_string(a)) bad = true;
    if (bad) {
        json_decref(msg);
        s_stream_error(req, "invalid_argument",
                       "process needs cmd (a string), args (strings), envs (an object of strings), cwd");
        return;
    }
    char cwdbuf[PATH_MAX];
    const char *cwd_path = NULL;
    if (json_is_string(cwd) && *json_string_value(cwd)) {
        if (s_clean_path(s_home(sb, user), json_string_value(cwd), cwdbuf, sizeof cwdbuf) != KB_OK) {
            json_decref(msg);
            s_stream_error(req, "invalid_argument", "cwd is too long");
            return;
        }
        cwd_path = cwdbuf;
    }
    //  envd's order: PATH, HOME, USER, LOGNAME, ..., the sandbox's envs, the process's
    json_t *env = sandbox_base_env(sb, user);
    if (!env) {
        //  a host sandbox: kbridge's environment is the base
        env = json_object();
        extern char **environ;
        for (char **e = environ; e && *e; e++) {
            const char *eq = strchr(*e, '=');
            if (!eq) continue;
            char key[256];
            size_t kl = (size_t) (eq - *e);
            if (kl >= sizeof key) continue;
            memcpy(key, *e, kl);
            key[kl] = '\0';
            json_object_set_new(env, key, json_string(eq + 1));
        }
        json_object_update(env, sandbox_env(sb));
    }
    if (json_is_object(envs)) json_object_update(env, envs);
    char **envv = s_env_strings(env);
    size_t nargs = json_array_size(args);
    const char **argv = calloc(nargs + 2, sizeof *argv);
    eproc_t *p = calloc(1, sizeof *p);
    if (!envv || !argv || !p) {
        s_strings_free(envv);
        free(argv);
        free(p);
        json_decref(env);
        json_decref(msg);
        s_stream_error(req, "internal", "out of memory");
        return;
    }
    argv[0] = json_string_value(cmd);
    json_array_foreach(args, i, a) argv[i + 1] = json_string_value(a);
    p->envd = self;
    snprintf(p->sandbox_id, sizeof p->sandbox_id, "%s", sandbox_id(sb));
    p->config = json_pack("{s:O, s:o, s:o}", "cmd", cmd, "args",
                          json_is_array(args) ? json_incref(args) : json_array(), "envs",
                          json_is_object(envs) ? json_incref(envs) : json_object());
    if (cwd_path) json_object_set_new(p->config, "cwd", json_string(cwd_path));
    if (json_is_string(tag)) p->tag = strdup(json_string_value(tag));
    klist_init(&p->link);
    klist_init(&p->streams);
    uv_timer_init(self->loop, &p->deadline);
    p->deadline.data = p;
    klist_push_back(&self->procs, &p->link);
    proc_opts_t opts = {0};
    opts.argv = argv;
    opts.env = (const char *const *) envv;
    opts.cwd = cwd_path;
    opts.user = user;
    opts.stdin_pipe = json_is_true(json_object_get(msg, "stdin")) || json_is_object(pty);
    opts.pty = json_is_object(pty);
    json_t *cols = json_object_get(size, "cols"), *rows = json_object_get(size, "rows");
    opts.cols = json_is_integer(cols) ? (uint16_t) json_integer_value(cols) : 0;
    opts.rows = json_is_integer(rows) ? (uint16_t) json_integer_value(rows) : 0;
    static const proc_events_t events = {s_ep_on_start, s_ep_on_output, s_ep_on_exit};
    int err = 0;
    s_ps_new(p, req);
    p->proc = proc_spawn(sandbox_sbx(sb), &opts, &events, p, &err);
    s_strings_free(envv);
    free(argv);
    json_decref(env);
    json_decref(msg);
    if (!p->proc) {
        s_ep_free(p, s_rpc_code(err), kb_strerror(err));
        return;
    }
    //  The stream's deadline is the process's lifetime, as upstream envd has it.
    const char *to = hreq_header(req, "connect-timeout-ms");
    long long ms = to ? strtoll(to, NULL, 10) : 0;
    if (ms > 0) uv_timer_start(&p->deadline, s_ep_deadline, (uint64_t) ms, 0);
}

static void s_proc_connect(envd_t *self, hreq_t *req, sandbox_t *sb)
{
    const char *why = NULL;
    json_t *msg = s_stream_request(req, &why);
    if (!msg) {
        s_stream_error(req, "invalid_argument", why);
        return;
    }
    eproc_t *p = s_ep_find(self, sandbox_id(sb), json_object_get(msg, "process"));
    json_decref(msg);
    if (!p) {
        s_stream_error(req, "not_found", "process not found");
        return;
    }
    pstream_t *ps = s_ps_new(p, req);
    if (ps) s_envelope(req, 0, json_pack("{s:{s:{s:i}}}", "event", "start", "pid", p->pid));
}

//  The unary calls: List, SendInput, CloseStdin, SendSignal, Update.
static void s_proc_unary(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method)
{
    static const char *const known[] = {"List", "SendInput", "CloseStdin", "SendSignal", "Update"};
    bool found = false;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) found |= strcmp(known[i], method) == 0;
    if (!found) {
        s_rpc_error(req, "unimplemented", "process.Process/%s is not implemented", method);
        return;
    }
    const char *ct = hreq_header(req, "content-type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        hreq_reply_json(req, 415, json_pack("{s:s, s:s}", "code", "unimplemented", "message",
                                            "only the Connect JSON codec (application/json) is served"));
        return;
    }
    size_t blen;
    const char *text = hreq_body(req, &blen);
    json_error_t jerr;
    json_t *body = blen ? jx_loadb(text, blen, &jerr) : json_object();
    if (!json_is_object(body)) {
        json_decref(body);
        s_rpc_error(req, "invalid_argument", "the request is not a JSON object");
        return;
    }
    if (strcmp(method, "List") == 0) {
        json_t *list = json_array();
        klist_t *it;
        klist_foreach(it, &self->procs)
        {
            eproc_t *p = klist_entry(it, eproc_t, link);
            if (strcmp(p->sandbox_id, sandbox_id(sb)) != 0 || !p->started) continue;
            json_t *e = json_pack("{s:O, s:i}", "config", p->config, "pid", p->pid);
            if (p->tag) json_object_set_new(e, "tag", json_string(p->tag));
            json_array_append_new(list, e);
        }
        hreq_reply_json(req, 200, json_pack("{s:o}", "processes", list));
        json_decref(body);
        return;
    }
    eproc_t *p = s_ep_find(self, sandbox_id(sb), json_object_get(body, "process"));
    int rc = KB_OK;
    if (!p) {
        s_rpc_error(req, "not_found", "process not found");
    } else if (strcmp(method, "SendInput") == 0) {
        json_t *input = json_object_get(body, "input");
        json_t *data = json_object_get(input, "stdin");
        if (!data) data = json_object_get(input, "pty");
        unsigned char *raw = NULL;
        size_t len = 0;
        const char *b64 = json_string_value(data);
        if (b64) {
            size_t cap = strlen(b64) / 4 * 3 + 3;
            raw = malloc(cap + 1);
            if (raw && sodium_base642bin(raw, cap, b64, strlen(b64), "\n\r ", &len, NULL,
                                         sodium_base64_VARIANT_ORIGINAL) != 0 &&
                sodium_base642bin(raw, cap, b64, strlen(b64), "\n\r ", &len, NULL,
                                  sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0) {
                free(raw);
                raw = NULL;
            }
        }
        if (!raw) s_rpc_error(req, "invalid_argument", "input.stdin or input.pty must be base64");
        else if ((rc = proc_write(p->proc, raw, len)) != KB_OK)
            s_rpc_error(req, rc == KB_ETOOBIG ? "resource_exhausted" : "failed_precondition", "%s",
                        rc == KB_EINVAL ? "the process has no stdin" : kb_strerror(rc));
        else hreq_reply_json(req, 200, json_object());
        free(raw);
    } else if (strcmp(method, "CloseStdin") == 0) {
        if (proc_close_stdin(p->proc) != KB_OK) s_rpc_error(req, "failed_precondition", "the process has no stdin");
        else hreq_reply_json(req, 200, json_object());
    } else if (strcmp(method, "SendSignal") == 0) {
        const char *sig = json_string_value(json_object_get(body, "signal"));
        json_t *num = json_object_get(body, "signal");
        int signo = sig && strcmp(sig, "SIGNAL_SIGKILL") == 0 ? SIGKILL
                    : sig && strcmp(sig, "SIGNAL_SIGTERM") == 0 ? SIGTERM
                    : json_is_integer(num) && (json_integer_value(num) == 9 || json_integer_value(num) == 15)
                        ? (int) json_integer_value(num)
                        : 0;
        if (!signo) s_rpc_error(req, "invalid_argument", "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM");
        else {
            proc_signal(p->proc, signo);
            hreq_reply_json(req, 200, json_object());
        }
    } else if (strcmp(method, "Update") == 0) {
        json_t *size = json_object_get(json_object_get(body, "pty"), "size");
        json_t *cols = json_object_get(size, "cols"), *rows = json_object_get(size, "rows");
        if (!json_is_integer(cols) || !json_is_integer(rows) || json_integer_value(cols) < 1 ||
            json_integer_value(rows) < 1 || json_integer_value(cols) > 65535 || json_integer_value(rows) > 65535)
            s_rpc_error(req, "invalid_argument", "pty.size needs cols and rows (1..65535)");
        else if (proc_resize(p->proc, (uint16_t) json_integer_value(cols), (uint16_t) json_integer_value(rows)) != KB_OK)
            s_rpc_error(req, "failed_precondition", "the process has no pty");
        else hreq_reply_json(req, 200, json_object());
    } else {
        s_rpc_error(req, "unimplemented", "process.Process/%s is not implemented", method);
    }
    json_decref(body);
}

static void s_process(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method)
{
    if (hreq_method(req) != HM_POST) {
        s_rpc_error(req, "unimplemented", "Connect calls are POST");
        return;
    }
    bool stream = strcmp(method, "Start") == 0 || strcmp(method, "Connect") == 0;
    if (stream) {
        const char *ct = hreq_header(req, "content-type");
        if (!ct || strncasecmp(ct, "application/connect+json", 24) != 0) {
            hreq_reply_json(req, 415, json_pack("{s:s, s:s}", "code", "unimplemented", "message",
                                                "a stream: application/connect+json"));
            return;
        }
        if (strcmp(method, "Start") == 0) s_proc_start(self, req, sb);
        else s_proc_connect(self, req, sb);
        return;
    }
    s_proc_unary(self, req, sb, method);
}

static void s_on_sandbox_end(sandbox_t *sb, const char *why, void *arg)
{
    (void) why;
    envd_t *self = arg;
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->procs)
    {
        eproc_t *p = klist_entry(it, eproc_t, link);
        if (strcmp(p->sandbox_id, sandbox_id(sb)) == 0) s_ep_free(p, "unavailable", "the sandbox ended");
    }
}

// ---------------------------------------------------------------------------------------
//  Signed URLs: uploadUrl()/downloadUrl() carry no sandbox id, only a signature made with
//  the sandbox's envd token (e2b-selfhost.md 4.5)

//  Whether req is /files with a signature (and no routing headers).
static bool s_is_signed(hreq_t *req)
{
    char sig[8];
    int rc = hreq_query(req, "signature", sig, sizeof sig);
    return strcmp(hreq_path(req), "/files") == 0 && (rc == KB_OK || rc == KB_ETOOBIG);
}

//  "v1_" + base64(SHA-256("<path>:<op>:<user>:<token>[:<expiration>]")), unpadded.
static void s_signature(const char *path, const char *op, const char *user, const char *token,
                        const char *expiration, char *out, size_t size)
{
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    const char *parts[] = {path, ":", op, ":", user, ":", token};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        crypto_hash_sha256_update(&st, (const unsigned char *) parts[i], strlen(parts[i]));
    if (expiration && *expiration) {
        crypto_hash_sha256_update(&st, (const unsigned char *) ":", 1);
        crypto_hash_sha256_update(&st, (const unsigned char *) expiration, strlen(expiration));
    }
    unsigned char hash[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, hash);
    char b64[64];
    sodium_bin2base64(b64, sizeof b64, hash, sizeof hash, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    snprintf(out, size, "v1_%s", b64);
}

//  The running sandbox whose token made the request's signature, or NULL (replied).
static sandbox_t *s_signed_sandbox(envd_t *self, hreq_t *req)
{
    char sig[128], path[PATH_MAX] = "", user[64] = "", exp[32] = "";
    if (hreq_query(req, "signature", sig, sizeof sig) != KB_OK) {
        s_error(req, 401, "invalid signature");
        return NULL;
    }
    int rc = hreq_query(req, "path", path, sizeof path);
    if (rc != KB_OK && rc != KB_ENOTFOUND) {
        s_error(req, 400, "bad path");
        return NULL;
    }
    hreq_query(req, "username", user, sizeof user);
    if (hreq_query(req, "signature_expiration", exp, sizeof exp) == KB_OK && *exp) {
        char *end;
        long long when = strtoll(exp, &end, 10);
        if (*end || when < sandbox_now_ms() / 1000) {
            s_error(req, 401, "the signature has expired");
            return NULL;
        }
    }
    const char *op = hreq_method(req) == HM_POST ? "write" : "read";
    sandbox_t **all;
    size_t n = sandboxes_list(self->sandboxes, &all);
    sandbox_t *found = NULL;
    for (size_t i = 0; i < n; i++) {
        char want[128];
        s_signature(path, op, user, sandbox_envd_token(all[i]), exp, want, sizeof want);
        //  every sandbox compared, whichever matches: no early exit to time
        if (sbxroute_token_eq(want, sig) && !found) found = all[i];
    }
    free(all);
    if (!found) {
        s_error(req, 401, "invalid signature");
        return NULL;
    }
    if (sandbox_state(found) != SANDBOX_RUNNING || !sandbox_sbx(found)) {
        sbxroute_reply_gone(req, sandbox_id(found), found);
        return NULL;
    }
    return found;
}

// ---------------------------------------------------------------------------------------
//  Routing

static bool s_claims(void *api, hreq_t *req)
{
    (void) api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    //  Bad routing headers are answered here, for every service.
    return route.kind == SBXROUTE_ENVD || route.kind == SBXROUTE_BAD ||
           (route.kind == SBXROUTE_NONE && s_is_signed(req));
}

static bool s_is_public(void *api, hreq_t *req)
{
    (void) api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    //  A signed URL is its own credential (checked when served).
    return route.kind == SBXROUTE_BAD || strcmp(hreq_path(req), "/health") == 0 ||
           (route.kind == SBXROUTE_NONE && s_is_signed(req));
}

static bool s_authorize(void *api, hreq_t *req, const char *token)
{
    envd_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    sandbox_t *sb = sbxroute_sandbox(&route, self->sandboxes);
    return sb && !sandbox_is_default(sb) && sbxroute_token_eq(sandbox_envd_token(sb), token);
}

static void s_refuse(void *api, hreq_t *req)
{
    envd_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    sandbox_t *sb = sbxroute_sandbox(&route, self->sandboxes);
    //  A sandbox that is gone is gone whatever the token: the SDKs read 502 so.
    if (!sb || sandbox_state(sb) != SANDBOX_RUNNING) sbxroute_reply_gone(req, route.id, sb);
    else s_error(req, 401, "invalid access token (X-Access-Token: the sandbox's envdAccessToken)");
}

static bool s_streams_body(void *api, hreq_t *req)
{
    (void) api;
    return strcmp(hreq_path(req), "/files") == 0 && hreq_method(req) == HM_POST;
}

static void s_http(void *api, hreq_t *req)
{
    envd_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    sandbox_t *sb = route.kind == SBXROUTE_NONE ? s_signed_sandbox(self, req)
                                                : sbxroute_resolve(req, self->sandboxes, &route);
    if (!sb) return;
    if (route.kind == SBXROUTE_NONE) snprintf(route.id, sizeof route.id, "%s", sandbox_id(sb));
    const char *path = hreq_path(req);
    hmethod_t m = hreq_method(req);
    if (route.kind == SBXROUTE_NONE && strcmp(path, "/files") != 0) {
        s_error(req, 404, "not found");
    } else if (strcmp(path, "/health") == 0) {
        hreq_reply(req, 204, NULL, NULL, 0);
    } else if (strcmp(path, "/envs") == 0 && m == HM_GET) {
        hreq_reply_json(req, 200, json_deep_copy(sandbox_env(sb)));
    } else if (strcmp(path, "/files") == 0 && m == HM_GET) {
        s_download(self, req, sb);
    } else if (strcmp(path, "/files") == 0 && m == HM_POST) {
        s_upload(self, req, sb, &route);
    } else if (strncmp(path, "/filesystem.Filesystem/", 23) == 0) {
        s_filesystem(self, req, sb, path + 23);
    } else if (strncmp(path, "/process.Process/", 17) == 0) {
        s_process(self, req, sb, path + 17);
    } else if (strcmp(path, "/files") == 0 || strcmp(path, "/envs") == 0) {
        s_error(req, 405, "method not allowed");
    } else {
        s_error(req, 404, "no such envd route: %s", path);
    }
}

static void *s_create(const api_ctx_t *ctx)
{
    envd_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = ctx->loop;
    self->sandboxes = ctx->sandboxes;
    klist_init(&self->transfers);
    klist_init(&self->procs);
    sandboxes_observer_t obs = {s_on_sandbox_end, NULL};
    if (sandboxes_observe(self->sandboxes, &obs, self) != KB_OK) {
        free(self);
        return NULL;
    }
    self->observing = true;
    return self;
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    envd_t *self = *api_p;
    *api_p = NULL;
    //  Transfers still running end with their connections; what is in the threadpool
    //  finishes first. Here they are only unlinked from the table.
    while (!klist_empty(&self->transfers)) klist_remove(klist_first(&self->transfers));
    while (!klist_empty(&self->procs))
        s_ep_free(klist_entry(klist_first(&self->procs), eproc_t, link), "unavailable", "kbridge is stopping");
    if (self->observing) sandboxes_unobserve(self->sandboxes, self);
    free(self);
}

const api_desc_t envd_api = {
    .name = "envd",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .is_public = s_is_public,
    .authorize = s_authorize,
    .refuse = s_refuse,
    .streams_body = s_streams_body,
    .http = s_http,
};
