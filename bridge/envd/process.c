/*  envd process - process.Process over Connect: the streams Start and Connect, the unary
    List, SendInput, CloseStdin, SendSignal, Update.
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
        envd__envelope(ps->req, 0x02, end);
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
        if (envd__envelope(ps->req, 0, json_pack("{s:O}", "event", event)) != KB_OK) {
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
    if (envd__envelope(ps->req, 0, json_pack("{s:{s:{}}}", "event", "keepalive")) != KB_OK)
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
        s_ep_free(p, err == KB_ENOTFOUND || err == KB_ENOTDIR ? "invalid_argument" : envd__rpc_code(err),
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
    json_t *msg = envd__stream_request(req, &why);
    if (!msg) {
        envd__stream_error(req, "invalid_argument", why);
        return;
    }
    char ubuf[16];
    const char *user;
    if (envd__rpc_user(req, sb, ubuf, sizeof ubuf, &user) != KB_OK) {
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
        envd__stream_error(req, "invalid_argument",
                       "process needs cmd (a string), args (strings), envs (an object of strings), cwd");
        return;
    }
    char cwdbuf[PATH_MAX];
    const char *cwd_path = NULL;
    if (json_is_string(cwd) && *json_string_value(cwd)) {
        if (envd__clean_path(envd__home(sb, user), json_string_value(cwd), cwdbuf, sizeof cwdbuf) != KB_OK) {
            json_decref(msg);
            envd__stream_error(req, "invalid_argument", "cwd is too long");
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
        envd__stream_error(req, "internal", "out of memory");
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
        s_ep_free(p, envd__rpc_code(err), kb_strerror(err));
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
    json_t *msg = envd__stream_request(req, &why);
    if (!msg) {
        envd__stream_error(req, "invalid_argument", why);
        return;
    }
    eproc_t *p = s_ep_find(self, sandbox_id(sb), json_object_get(msg, "process"));
    json_decref(msg);
    if (!p) {
        envd__stream_error(req, "not_found", "process not found");
        return;
    }
    pstream_t *ps = s_ps_new(p, req);
    if (ps) envd__envelope(req, 0, json_pack("{s:{s:{s:i}}}", "event", "start", "pid", p->pid));
}

//  The unary calls: List, SendInput, CloseStdin, SendSignal, Update.
static void s_proc_unary(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method)
{
    static const char *const known[] = {"List", "SendInput", "CloseStdin", "SendSignal", "Update"};
    bool found = false;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) found |= strcmp(known[i], method) == 0;
    if (!found) {
        envd__rpc_error(req, "unimplemented", "process.Process/%s is not implemented", method);
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
        envd__rpc_error(req, "invalid_argument", "the request is not a JSON object");
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
        envd__rpc_error(req, "not_found", "process not found");
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
        if (!raw) envd__rpc_error(req, "invalid_argument", "input.stdin or input.pty must be base64");
        else if ((rc = proc_write(p->proc, raw, len)) != KB_OK)
            envd__rpc_error(req, rc == KB_ETOOBIG ? "resource_exhausted" : "failed_precondition", "%s",
                        rc == KB_EINVAL ? "the process has no stdin" : kb_strerror(rc));
        else hreq_reply_json(req, 200, json_object());
        free(raw);
    } else if (strcmp(method, "CloseStdin") == 0) {
        if (proc_close_stdin(p->proc) != KB_OK) envd__rpc_error(req, "failed_precondition", "the process has no stdin");
        else hreq_reply_json(req, 200, json_object());
    } else if (strcmp(method, "SendSignal") == 0) {
        const char *sig = json_string_value(json_object_get(body, "signal"));
        json_t *num = json_object_get(body, "signal");
        int signo = sig && strcmp(sig, "SIGNAL_SIGKILL") == 0 ? SIGKILL
                    : sig && strcmp(sig, "SIGNAL_SIGTERM") == 0 ? SIGTERM
                    : json_is_integer(num) && (json_integer_value(num) == 9 || json_integer_value(num) == 15)
                        ? (int) json_integer_value(num)
                        : 0;
        if (!signo) envd__rpc_error(req, "invalid_argument", "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM");
        else {
            proc_signal(p->proc, signo);
            hreq_reply_json(req, 200, json_object());
        }
    } else if (strcmp(method, "Update") == 0) {
        json_t *size = json_object_get(json_object_get(body, "pty"), "size");
        json_t *cols = json_object_get(size, "cols"), *rows = json_object_get(size, "rows");
        if (!json_is_integer(cols) || !json_is_integer(rows) || json_integer_value(cols) < 1 ||
            json_integer_value(rows) < 1 || json_integer_value(cols) > 65535 || json_integer_value(rows) > 65535)
            envd__rpc_error(req, "invalid_argument", "pty.size needs cols and rows (1..65535)");
        else if (proc_resize(p->proc, (uint16_t) json_integer_value(cols), (uint16_t) json_integer_value(rows)) != KB_OK)
            envd__rpc_error(req, "failed_precondition", "the process has no pty");
        else hreq_reply_json(req, 200, json_object());
    } else {
        envd__rpc_error(req, "unimplemented", "process.Process/%s is not implemented", method);
    }
    json_decref(body);
}

void envd__process(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method)
{
    if (hreq_method(req) != HM_POST) {
        envd__rpc_error(req, "unimplemented", "Connect calls are POST");
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

void envd__on_sandbox_end(sandbox_t *sb, const char *why, void *arg)
{
    (void) why;
    envd_t *self = arg;
    envd__watchers_sandbox_end(self, sb);
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->procs)
    {
        eproc_t *p = klist_entry(it, eproc_t, link);
        if (strcmp(p->sandbox_id, sandbox_id(sb)) == 0) s_ep_free(p, "unavailable", "the sandbox ended");
    }
}

void envd__procs_destroy(envd_t *self)
{
    while (!klist_empty(&self->procs))
        s_ep_free(klist_entry(klist_first(&self->procs), eproc_t, link), "unavailable", "kbridge is stopping");
}

