/*  envd files - GET and POST /files: downloads streamed from sbx_open_read, uploads
    streamed into sbx_upload (multipart or raw, gzip or not), in constant memory.
*/
#include "envd_int.h"
#include "../buf/wbuf.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include "multipart.h"

#include <zlib.h>

//  Bytes read from a file per threadpool job (gzip: what deflate takes at once), and
//  response bytes queued before waiting. Each job is a round trip through the threadpool
//  (two futex wake-ups and a loop turn): at 64 KiB per job a 100 MB download spent more
//  on those than on the copies, so plain downloads read 1 MiB at a time.
#define READ_CHUNK (1024 * 1024)
#define GZ_CHUNK (64 * 1024)
#define QUEUE_HIGH (2 * 1024 * 1024)
//  Uploads: the body read ahead (paused past IN_PAUSE; at most 64 KiB more come while
//  paused), and each of the two write buffers (one write to the file per threadpool job,
//  as above).
#define IN_CAP (1024 * 1024)
#define IN_PAUSE (512 * 1024)
#define FILL_CAP (1024 * 1024)

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
    do n = read(dl->fd, dst, dl->gz ? GZ_CHUNK : READ_CHUNK);
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
    dl->cap = dl->gz ? GZ_CHUNK / 2 : READ_CHUNK;
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
        if (err == KB_ENOTFOUND) envd__error(dl->req, 404, "%s", why ? why : "file not found");
        else if (err == KB_EISDIR) envd__error(dl->req, 400, "%s", why ? why : "path is a directory");
        else envd__error(dl->req, envd__status_of(err), "%s", why ? why : kb_strerror(err));
        s_dl_done(dl);
        return;
    }
    if (dl->gz) {
        dl->raw = malloc(GZ_CHUNK);
        if (!dl->raw || deflateInit2(&dl->z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            envd__error(dl->req, 500, "out of memory");
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

void envd__download(envd_t *self, hreq_t *req, sandbox_t *sb)
{
    char ubuf[16], path[PATH_MAX], given[PATH_MAX];
    const char *user;
    if (envd__user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) return;
    int rc = hreq_query(req, "path", given, sizeof given);
    if (rc == KB_OK) rc = envd__clean_path(envd__home(sb, user), given, path, sizeof path);
    if (rc != KB_OK) {
        envd__error(req, 400, rc == KB_ETOOBIG ? "path too long" : "a path is required (?path=)");
        return;
    }
    dl_t *dl = calloc(1, sizeof *dl);
    if (!dl) {
        envd__error(req, 500, "out of memory");
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
        envd__error(req, 500, "cannot reach the sandbox");
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
        envd__error(u->req, status, "%s", msg);
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
        s_up_finish(u, envd__status_of(err), "%s", why ? why : kb_strerror(err));
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
        s_up_finish(u, envd__status_of(err), "%s", why ? why : kb_strerror(err));
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
        int rc = envd__clean_path(envd__home(sb, u->user), part->filename, u->path, sizeof u->path);
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
    //  A plain upload's bytes go straight into the write buffer when nothing is ahead of
    //  them: one copy of the body less (it was a fifth of the upload's CPU).
    if (!u->multipart && !u->gz && u->raw_state == 1 && u->in_file && !u->opening && !u->part_ending &&
        u->in_len == 0 && u->fill_len < FILL_CAP) {
        size_t n = FILL_CAP - u->fill_len < len ? FILL_CAP - u->fill_len : len;
        memcpy(u->fill + u->fill_len, data, n);
        u->fill_len += n;
        data += n;
        len -= n;
    }
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

void envd__upload(envd_t *self, hreq_t *req, sandbox_t *sb, const sbxroute_t *route)
{
    up_t *u = calloc(1, sizeof *u);
    if (!u) {
        envd__error(req, 500, "out of memory");
        return;
    }
    if (envd__user(req, sb, u->user_buf, sizeof u->user_buf, &u->user) != KB_OK) {
        free(u);
        return;
    }
    char given[PATH_MAX];
    int rc = hreq_query(req, "path", given, sizeof given);
    if (rc == KB_OK && *given) rc = envd__clean_path(envd__home(sb, u->user), given, u->qpath, sizeof u->qpath);
    else if (rc == KB_OK || rc == KB_ENOTFOUND) rc = KB_OK;
    const char *ct = hreq_header(req, "content-type");
    const char *ce = hreq_header(req, "content-encoding");
    const char *why = NULL;
    if (rc != KB_OK) {
        envd__error(req, 400, "bad path: %s", kb_strerror(rc));
    } else if (ce && strcasecmp(ce, "identity") != 0 && strcasecmp(ce, "gzip") != 0) {
        envd__error(req, 415, "Content-Encoding %s is not supported for uploads (gzip is)", ce);
    } else if (ct && strncasecmp(ct, "multipart/", 10) == 0) {
        u->multipart = true;
        if (multipart_init(&u->mp, ct, &why) != 0) envd__error(req, 400, "%s", why);
    } else if (!*u->qpath) {
        envd__error(req, 400, "an upload that is not multipart needs ?path=");
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

