/*  envd connect - Connect RPC with the JSON codec: its errors and envelopes, and
    filesystem.Filesystem (unary Stat, MakeDir, Move, ListDir, Remove; the stream WatchDir).
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

// ---------------------------------------------------------------------------------------
//  Connect RPC, JSON codec, unary: filesystem.Filesystem (e2b-selfhost.md 5.3, 5.4)

typedef enum { FS_STAT, FS_MKDIR, FS_MOVE, FS_LIST, FS_REMOVE } fs_op_t;

typedef struct {
    hreq_t *req;
    sbx_req_t *sr;
    fs_op_t op;
} rpc_t;

//  A Connect error: {"code": "<name>", "message"} with the status Connect gives it.
void envd__rpc_error(hreq_t *req, const char *code, const char *fmt, ...)
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

const char *envd__rpc_code(int err)
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
        envd__rpc_error(r->req, envd__rpc_code(err), "%s", why ? why : kb_strerror(err));
    } else if (r->op == FS_LIST) {
        json_t *list = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(list, s_entry_json(&entries[i]));
        hreq_reply_json(r->req, 200, json_pack("{s:o}", "entries", list));
    } else if (r->op == FS_REMOVE) {
        hreq_reply_json(r->req, 200, json_object());
    } else if (n) {
        hreq_reply_json(r->req, 200, json_pack("{s:o}", "entry", s_entry_json(&entries[0])));
    } else {
        envd__rpc_error(r->req, "internal", "no entry");
    }
    s_rpc_free(r);
}

//  The user of a filesystem call: Authorization: Basic base64("<user>:"), default "user".
int envd__rpc_user(hreq_t *req, sandbox_t *sb, char *user, size_t size, const char **out)
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
            envd__rpc_error(req, "invalid_argument", "malformed Basic authorization");
            return KB_EINVAL;
        }
        raw[len] = '\0';
        char *colon = strchr((char *) raw, ':');
        if (colon) *colon = '\0';
        if (strlen((char *) raw) >= size) {
            envd__rpc_error(req, "unauthenticated", "no such user");
            return KB_EINVAL;
        }
        if (*raw) memcpy(user, raw, strlen((char *) raw) + 1);
    }
    if (strcmp(user, "root") != 0 && strcmp(user, "user") != 0) {
        envd__rpc_error(req, "unauthenticated", "user '%s' does not exist", user);
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
        envd__rpc_error(req, "invalid_argument", "%s must be a non-empty string", key);
        return false;
    }
    if (envd__clean_path(home, json_string_value(v), out, size) != KB_OK) {
        envd__rpc_error(req, "invalid_argument", "%s is too long", key);
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
int envd__envelope(hreq_t *req, uint8_t flags, json_t *msg)
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
        envd__envelope(w->req, 0x02, end);
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
    if (envd__envelope(w->req, 0, json_pack("{s:{}}", "keepalive")) != KB_OK)
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
        s_wd_end(w, envd__rpc_code(err), why ? why : kb_strerror(err));
        return;
    }
    w->started = true;
    hreq_stream_begin(w->req, 200, "application/connect+json");
    if (envd__envelope(w->req, 0, json_pack("{s:{}}", "start")) != KB_OK) s_wd_end(w, NULL, NULL);
}

static void s_wd_event(sbx_watch_t *watch, sbx_event_t type, const char *name, bool is_dir, void *arg)
{
    (void) watch;
    (void) is_dir;
    wd_t *w = arg;
    static const char *const names[] = {NULL, "EVENT_TYPE_CREATE", "EVENT_TYPE_WRITE",
                                         "EVENT_TYPE_REMOVE", "EVENT_TYPE_RENAME", "EVENT_TYPE_CHMOD"};
    if (w->ended || (int) type < 1 || (int) type > 5) return;
    if (envd__envelope(w->req, 0, json_pack("{s:{s:s, s:s}}", "filesystem", "name", name, "type",
                                        names[type])) != KB_OK)
        s_wd_end(w, NULL, NULL);
}

static void s_wd_watch_end(sbx_watch_t *watch, int err, const char *why, void *arg)
{
    (void) watch;
    wd_t *w = arg;
    s_wd_end(w, err == KB_ETOOBIG ? "resource_exhausted" : envd__rpc_code(err ? err : KB_ENOTFOUND),
             why ? why : "the watch ended");
}

//  The one message of a streaming request: 00 <len:u32be> <json>. NULL if malformed.
json_t *envd__stream_message(const char *body, size_t blen, const char **why)
{
    const unsigned char *b = (const unsigned char *) body;
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
    json_t *msg = len ? jx_loadb(body + 5, len, &jerr) : json_object();
    if (!json_is_object(msg)) {
        json_decref(msg);
        *why = "the message is not a JSON object";
        return NULL;
    }
    return msg;
}

json_t *envd__stream_request(hreq_t *req, const char **why)
{
    size_t blen;
    const char *body = hreq_body(req, &blen);
    return envd__stream_message(body, blen, why);
}

//  Stream-shaped failure before anything was sent: 200 and an end-stream error (a non-200
//  status would lose the message, e2b-selfhost.md 5.2).
void envd__stream_error(hreq_t *req, const char *code, const char *message)
{
    hreq_stream_begin(req, 200, "application/connect+json");
    envd__envelope(req, 0x02, json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message));
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
    json_t *msg = envd__stream_request(req, &why);
    if (!msg) {
        envd__stream_error(req, "invalid_argument", why);
        return;
    }
    char ubuf[16], path[PATH_MAX];
    const char *user;
    //  envd__rpc_user answers unary-shaped; check the header the same way first
    if (envd__rpc_user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) {
        json_decref(msg);
        return;
    }
    json_t *p = json_object_get(msg, "path");
    json_t *rec = json_object_get(msg, "recursive");
    bool recursive = json_is_true(rec);
    if (!json_is_string(p) || !*json_string_value(p) || (rec && !json_is_boolean(rec) && !json_is_null(rec)) ||
        envd__clean_path(envd__home(sb, user), json_string_value(p), path, sizeof path) != KB_OK) {
        json_decref(msg);
        envd__stream_error(req, "invalid_argument", "path must be a non-empty string, recursive a boolean");
        return;
    }
    json_decref(msg);
    wd_t *w = calloc(1, sizeof *w);
    if (!w) {
        envd__stream_error(req, "internal", "out of memory");
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
        s_wd_end(w, envd__rpc_code(err ? err : KB_ECLOSED), "cannot watch");
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

void envd__filesystem(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method)
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
    bool watcher = envd__is_watcher_method(method);
    if (op < 0 && !watcher) {
        envd__rpc_error(req, "unimplemented", "filesystem.Filesystem/%s is not implemented", method);
        return;
    }
    if (hreq_method(req) != HM_POST) {
        hreq_add_header(req, "allow", "POST");
        envd__rpc_error(req, "unimplemented", "Connect unary calls are POST");
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
        envd__rpc_error(req, "invalid_argument", "the request is not a JSON object");
        return;
    }
    char ubuf[16], path[PATH_MAX], to[PATH_MAX];
    const char *user;
    if (envd__rpc_user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) {
        json_decref(body);
        return;
    }
    const char *home = envd__home(sb, user);
    if (watcher) {
        //  Only CreateWatcher has a path.
        bool create = strcmp(method, "CreateWatcher") == 0;
        if (!create || s_rpc_path(req, body, "path", home, path, sizeof path))
            envd__watchers(self, req, sb, method, body, user, create ? path : NULL);
        json_decref(body);
        return;
    }
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
            envd__rpc_error(req, "invalid_argument", "depth must be a whole number (1..1000)");
            ok = false;
        }
        if (depth == 0) depth = 1;
    }
    json_decref(body);
    if (!ok) return;
    rpc_t *r = calloc(1, sizeof *r);
    if (!r) {
        envd__rpc_error(req, "internal", "out of memory");
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
        envd__rpc_error(req, "unavailable", "cannot reach the sandbox");
        s_rpc_free(r);
        return;
    }
    hreq_on_close(req, s_rpc_gone, r);
}

