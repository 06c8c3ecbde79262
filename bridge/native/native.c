/*  native - the /ws protocol: sessions, ops, execution streaming. */
#include "native.h"
#include "../buf/jbuf.h"
#include "../kernels/kentry.h"
#include "../kernels/registry.h"
#include "../metrics/metrics.h"
#include "../http/api.h"
#include "../sandboxes/sandboxes.h"
#include "nmsg.h"
#include "nsbx.h"
#include "outbox.h"
#include "session.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Executions queued on one kernel before new ones are refused with "busy".
#define MAX_QUEUED_PER_KERNEL 10000

//  Messages a connection sent before its sandbox ran, kept (bounded) until it does.
#define EARLY_MAX_MESSAGES 64
#define EARLY_MAX_BYTES (4u << 20)

//  A session and the sandbox it is on (the session's id is the sandbox's).
typedef struct sess_link_s {
    struct sess_link_s *next;
    session_t *session;
    sandbox_t *sandbox;
} sess_link_t;

typedef struct _native_t native_t;
struct _native_t {
    uv_loop_t *loop;
    registry_t *registry;
    sandboxes_t *sandboxes;
    const config_t *config;
    klist_t conns;  //  nconn_t
    sess_link_t *sessions;
    uv_timer_t reaper;
    sess_link_t *expired;  //  sessions to destroy on the next loop turn
    nsbx_t *nsbx;          //  processes, files, watches in sandboxes
};

typedef struct {
    klist_t link;
    size_t len;
    char data[];
} early_t;

//  One connection's view: which session it serves.
typedef struct {
    klist_t link;  //  in native_t.conns
    native_t *native;
    session_t *session;
    sandbox_t *sandbox;
    wsconn_t *conn;
    bool held;  //  holds its sandbox alive
    sandbox_wait_t wait;  //  until the sandbox runs
    bool attached;        //  the session message went out; ops run
    bool resumed;
    int64_t last_seq;
    klist_t early;        //  early_t
    size_t nearly, early_bytes;
} nconn_t;

//  An asynchronous request of a session.
typedef enum { NREQ_EXECUTE, NREQ_START, NREQ_RESTART, NREQ_SHUTDOWN } nreq_kind_t;

typedef struct {
    spending_t pending;  //  first: the session's tracking link
    nreq_kind_t kind;
    session_t *session;
    json_t *id;
    char kernel_id[64];
    run_t *run;
    kwait_t wait;
} nreq_t;

// ---------------------------------------------------------------------------------------
//  Replies

static void s_reply(session_t *session, const char *type, json_t *id, json_t *fields)
{
    json_t *msg = json_pack("{s:s, s:O}", "type", type, "id", id ? id : json_null());
    if (fields) json_object_update(msg, fields);
    json_decref(fields);
    //  Replies are small and a client waits for each: never dropped.
    session_send(session, msg, id, true);
    json_decref(msg);
}

static void s_error(session_t *session, json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void s_error(session_t *session, json_t *id, const char *code, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    metrics_error(code);
    s_reply(session, "request_error", id, json_pack("{s:s, s:s}", "code", code, "message", message));
}

//  Before a session exists (or outside one): straight to the connection.
static void s_conn_error(wsconn_t *conn, const char *code, const char *message)
{
    metrics_error(code);
    json_t *msg = json_pack("{s:s, s:n, s:s, s:s}", "type", "request_error", "id", "code", code,
                            "message", message);
    wsconn_send_json(conn, msg);
    json_decref(msg);
}

static const char *s_code_for(int err)
{
    switch (err) {
    case KB_ENOTFOUND: return "not_found";
    case KB_EDEAD: return "kernel_dead";
    case KB_ETOOBIG: return "too_large";
    case KB_EBUSY: return "busy";
    case KB_ETIMEDOUT: return "timeout";
    case KB_EINVAL:
    case KB_EMISSING:
    case KB_ETYPE: return "bad_request";
    default: return "internal";
    }
}

// ---------------------------------------------------------------------------------------
//  Pending requests

static void s_nreq_free(nreq_t *req)
{
    session_untrack(&req->pending);
    kentry_unwait(&req->wait);
    json_decref(req->id);
    free(req);
}

static void s_nreq_cancel(spending_t *pending)
{
    nreq_t *req = (nreq_t *) pending;
    if (req->run) {
        run_t *run = req->run;
        req->run = NULL;
        run_cancel(run);
    }
    s_nreq_free(req);
}

static nreq_t *s_nreq_new(native_t *native, session_t *session, nreq_kind_t kind, json_t *id,
                          const char *kernel_id)
{
    nreq_t *req = calloc(1, sizeof *req);
    if (!req) return NULL;
    req->kind = kind;
    req->session = session;
    req->id = json_incref(id);
    req->pending.cancel = s_nreq_cancel;
    req->wait.arg = req;
    snprintf(req->kernel_id, sizeof req->kernel_id, "%s", kernel_id ? kernel_id : "");
    session_track(session, &req->pending);
    return req;
}

// ---------------------------------------------------------------------------------------
//  Kernels

static sandbox_t *s_sandbox(native_t *self, session_t *session)
{
    for (sess_link_t *l = self->sessions; l; l = l->next)
        if (l->session == session) return l->sandbox;
    return NULL;
}

//  A kernel of the session's sandbox: a session never reaches into another sandbox.
static kentry_t *s_find(native_t *self, session_t *session, const char *kernel_id)
{
    kentry_t *entry = registry_find(self->registry, kernel_id);
    sandbox_t *sb = s_sandbox(self, session);
    return entry && sb && sandbox_has_kernel(sb, entry) ? entry : NULL;
}

//  {kernel_id, kernel_name, language, cwd, state, connection_file}. The connection file is
//  for jupyter_client and friends: null where the host cannot use it (a kernel in an
//  isolated sandbox has no host endpoints, and its file's path is the one inside).
static json_t *s_model(const kentry_t *entry)
{
    kernel_t *k = kentry_kernel(entry);
    const char *cf = kernel_endpoint(k, KCH_SHELL) ? kernel_connection_file(k) : NULL;
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s?}", "kernel_id", kernel_id(k), "kernel_name",
                     kernel_name(k), "language", kernel_language(k), "cwd", kentry_cwd(entry),
                     "state", kentry_state_name(entry), "connection_file", cf);
}

static void s_on_kernel_wait(kwait_t *wait, kentry_t *entry, kwait_result_t result)
{
    nreq_t *req = wait->arg;
    session_t *session = req->session;
    if (result == KWAIT_READY) {
        if (req->kind == NREQ_START)
            s_reply(session, "kernel", req->id, json_pack("{s:o}", "kernel", s_model(entry)));
        else
            s_reply(session, "ok", req->id, json_pack("{s:s}", "kernel_id", req->kernel_id));
    } else if (result == KWAIT_DEAD && req->kind == NREQ_START &&
               kernel_start_error(kentry_kernel(entry)) == KB_ENOTDIR) {
        //  In an isolated sandbox the cwd is only known to be bad once the agent tries it.
        s_error(session, req->id, "bad_request", "cwd '%s' is not a directory in the sandbox (%s)",
                kentry_cwd(entry), kernel_exit_reason(kentry_kernel(entry)));
        kentry_shutdown(entry);
    } else if (result == KWAIT_DEAD) {
        s_error(session, req->id, "kernel_dead", "kernel %s is dead: %s", req->kernel_id,
                kernel_exit_reason(kentry_kernel(entry)));
    } else if (req->kind == NREQ_SHUTDOWN) {
        s_reply(session, "ok", req->id, json_pack("{s:s}", "kernel_id", req->kernel_id));
    } else {
        s_error(session, req->id, "kernel_dead", "kernel %s was shut down", req->kernel_id);
    }
    s_nreq_free(req);
}

static kentry_t *s_start_kernel(native_t *self, session_t *session, json_t *id,
                                const char *name, const char *cwd, json_t *env)
{
    int err = KB_ECLOSED;
    sandbox_t *sb = s_sandbox(self, session);
    kentry_t *entry = sb ? sandbox_start_kernel(sb, name, cwd, env, &err) : NULL;
    if (!entry) {
        if (err == KB_EAGAIN || err == KB_ECLOSED)
            s_error(session, id, "sandbox_unavailable", "sandbox %s is %s", session_id(session),
                    sb ? sandbox_state_name(sb) : "gone");
        else if (err == KB_ENOTFOUND)
            s_error(session, id, "not_found", "no kernelspec named '%s'",
                    name ? name : registry_default_kernel(self->registry));
        else if (err == KB_EINVAL)
            s_error(session, id, "bad_request", "cwd '%s' is not a directory", cwd ? cwd : "");
        else if (err == KB_ELIMIT)
            s_error(session, id, "busy", "%zu kernels are running, the most this server allows "
                                        "(--max-kernels)", registry_max_kernels(self->registry));
        else
            s_error(session, id, err == KB_ESPAWN ? "kernel_dead" : "internal",
                    "the kernel could not be started: %s", kb_strerror(err));
        return NULL;
    }
    session_own_kernel(session, kentry_id(entry));
    return entry;
}

// ---------------------------------------------------------------------------------------
//  Ops

static void op_start_kernel(native_t *self, session_t *session, json_t *id, const nmsg_t *req)
{
    kentry_t *entry = s_start_kernel(self, session, id, req->kernel_name, req->cwd, req->env_vars);
    if (!entry) return;
    if (kentry_ready(entry)) {  //  a warm one, with nothing to move
        s_reply(session, "kernel", id, json_pack("{s:o}", "kernel", s_model(entry)));
        return;
    }
    nreq_t *nreq = s_nreq_new(self, session, NREQ_START, id, kentry_id(entry));
    if (!nreq) return;
    nreq->wait.fn = s_on_kernel_wait;
    kentry_wait(entry, &nreq->wait);
}

static void op_list_kernels(native_t *self, session_t *session, json_t *id)
{
    kentry_t **entries;
    sandbox_t *sb = s_sandbox(self, session);
    size_t n = sb ? sandbox_kernels(sb, &entries) : 0;
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *model = s_model(entries[i]);
        json_object_set_new(model, "owned", json_boolean(session_owns_kernel(session, kentry_id(entries[i]))));
        json_array_append_new(list, model);
    }
    free(entries);
    s_reply(session, "kernels", id, json_pack("{s:o}", "kernels", list));
}

static kentry_t *s_require_kernel(native_t *self, session_t *session, json_t *id, const nmsg_t *req)
{
    const char *kernel_id = req->kernel_id;
    kentry_t *entry = s_find(self, session, kernel_id);
    if (!entry) s_error(session, id, "not_found", "no kernel with id '%s'", kernel_id);
    return entry;
}

static void op_kernel_control(native_t *self, session_t *session, json_t *id, const nmsg_t *req,
                              const char *op)
{
    kentry_t *entry = s_require_kernel(self, session, id, req);
    if (!entry) return;
    const char *kid = kentry_id(entry);
    if (strcmp(op, "interrupt_kernel") == 0) {
        int rc = kentry_interrupt(entry);
        if (rc) s_error(session, id, s_code_for(rc), "cannot interrupt kernel %s: %s", kid, kb_strerror(rc));
        else s_reply(session, "ok", id, json_pack("{s:s}", "kernel_id", kid));
        return;
    }
    nreq_kind_t kind = strcmp(op, "restart_kernel") == 0 ? NREQ_RESTART : NREQ_SHUTDOWN;
    nreq_t *nreq = s_nreq_new(self, session, kind, id, kid);
    if (!nreq) return;
    nreq->wait.fn = s_on_kernel_wait;
    kentry_wait(entry, &nreq->wait);
    if (kind == NREQ_RESTART) {
        int rc = kentry_restart(entry);
        if (rc) {
            s_error(session, id, s_code_for(rc), "cannot restart kernel %s: %s", kid, kb_strerror(rc));
            s_nreq_free(nreq);
        }
    } else {
        session_disown_kernel(session, kid);
        kentry_shutdown(entry);
    }
}

static void s_on_exec_event(execution_t *exec, const exec_event_t *ev, void *arg)
{
    nreq_t *req = arg;
    bool end = ev->kind == EXEC_EV_END;
    const char *type = ev->type, *body = ev->body;
    size_t len = ev->len;
    //  {"type": ..., "id": ..., <body>}: the body is spliced, never re-serialized.
    jbuf_t b;
    jbuf_init(&b);
    jbuf_reserve(&b, len + 128);
    uint64_t seq = session_next_seq(req->session);
    char head[48];
    snprintf(head, sizeof head, "{\"seq\":%llu,\"type\":\"", (unsigned long long) seq);
    jbuf_adds(&b, head);
    jbuf_adds(&b, type);
    jbuf_adds(&b, "\",\"id\":");
    jbuf_add_json(&b, req->id);
    if (len) {
        jbuf_add(&b, ",", 1);
        jbuf_add(&b, body, len);
    }
    if (end) {
        jbuf_adds(&b, ",\"kernel_id\":");
        jbuf_add_string(&b, req->kernel_id, strlen(req->kernel_id));
        jbuf_adds(&b, ",\"execution\":");
        execution_write(exec, &b);
    }
    jbuf_add(&b, "}", 1);
    size_t frame_len;
    char *frame = jbuf_take(&b, &frame_len);
    //  The end of an execution is never dropped: a client must not wait for one that will
    //  not come. Its outputs may be, counted, when the client cannot take them.
    if (frame) session_send_buf(req->session, frame, frame_len, seq, req->id, end);
    if (end) {
        req->run = NULL;  //  the runner forgets the run after its end
        s_nreq_free(req);
    }
}

static void op_execute(native_t *self, session_t *session, json_t *id, const nmsg_t *req)
{
    const char *code = req->code, *kernel_id = req->kernel_id;
    json_t *env = req->env_vars;
    int64_t timeout_ms = req->timeout_ms;
    kentry_t *entry;
    if (kernel_id) {
        entry = s_find(self, session, kernel_id);
        if (!entry) {
            s_error(session, id, "not_found", "no kernel with id '%s'", kernel_id);
            return;
        }
    } else {
        entry = s_find(self, session, session_default_kernel(session));
        if (!entry) {
            entry = s_start_kernel(self, session, id, NULL, NULL, NULL);
            if (!entry) return;
            session_set_default_kernel(session, kentry_id(entry));
        }
    }
    if (runner_pending(kentry_runner(entry)) >= MAX_QUEUED_PER_KERNEL) {
        s_error(session, id, "busy", "kernel %s has %d executions queued", kentry_id(entry),
                MAX_QUEUED_PER_KERNEL);
        return;
    }
    nreq_t *nreq = s_nreq_new(self, session, NREQ_EXECUTE, id, kentry_id(entry));
    if (!nreq) return;
    run_opts_t opts;
    memset(&opts, 0, sizeof opts);
    opts.env_vars = env;
    opts.timeout_ms = (uint64_t) timeout_ms;
    opts.exec.max_retained = self->config->max_retained_output;
    int err;
    nreq->run = runner_execute(kentry_runner(entry), code, &opts, s_on_exec_event, nreq, &err);
    if (!nreq->run) {
        if (err == KB_EINVAL)
            s_error(session, id, "bad_request", "env_vars are not supported for %s kernels",
                    kernel_language(kentry_kernel(entry)));
        else
            s_error(session, id, s_code_for(err), "cannot execute on kernel %s: %s",
                    kentry_id(entry), kb_strerror(err));
        s_nreq_free(nreq);
    }
}

//  The client processed every message up to seq: their copies kept for a resume can go.
//  No reply: acks are frequent and say nothing a client waits for.
static void op_ack(session_t *session, const nmsg_t *req)
{
    session_ack(session, (uint64_t) req->seq);
}

static void op_keep_alive(native_t *self, session_t *session, json_t *id, const nmsg_t *req)
{
    int64_t seconds = req->seconds;
    uint64_t max = self->config->keep_alive_max_ms;
    //  Capped before the multiplication: a huge value must not wrap around to 0.
    uint64_t ms = (uint64_t) seconds > max / 1000u ? max : (uint64_t) seconds * 1000u;
    session_set_keep_alive(session, ms);
    s_reply(session, "ok", id, json_pack("{s:I}", "seconds", (json_int_t) (ms / 1000u)));
}

// ---------------------------------------------------------------------------------------
//  Connections

static void s_dispatch(nconn_t *nc, const char *data, size_t len, bool binary)
{
    wsconn_t *conn = nc->conn;
    session_t *session = nc->session;
    nmsg_t req;
    char why[512];
    json_t *id;
    if (nmsg_parse(data, len, binary, &req, why, sizeof why) != KB_OK) {
        if (req.id) s_error(session, req.id, "bad_request", "%s", why);
        else s_conn_error(conn, "bad_request", why);
        nmsg_free(&req);
        return;
    }
    id = req.id;
    if (nsbx_handles(req.op)) {
        nsbx_op(nc->native->nsbx, session, s_sandbox(nc->native, session), &req);
        nmsg_free(&req);
        return;
    }
    switch (req.op) {
    case NMSG_EXECUTE: op_execute(nc->native, session, id, &req); break;
    case NMSG_START_KERNEL: op_start_kernel(nc->native, session, id, &req); break;
    case NMSG_LIST_KERNELS: op_list_kernels(nc->native, session, id); break;
    case NMSG_INTERRUPT_KERNEL:
    case NMSG_RESTART_KERNEL:
    case NMSG_SHUTDOWN_KERNEL: op_kernel_control(nc->native, session, id, &req, req.op_name); break;
    case NMSG_KEEP_ALIVE: op_keep_alive(nc->native, session, id, &req); break;
    case NMSG_ACK: op_ack(session, &req); break;
    default: break;
    }
    nmsg_free(&req);
}

static void s_free_early(nconn_t *nc)
{
    while (!klist_empty(&nc->early)) {
        early_t *e = klist_entry(klist_first(&nc->early), early_t, link);
        klist_remove(&e->link);
        free(e);
    }
    nc->nearly = nc->early_bytes = 0;
}

//  Forget a connection's state (the connection itself is closed by the caller, or is
//  closing): unwait, let go of its sandbox, free.
static void s_nconn_free(nconn_t *nc)
{
    sandbox_unwait(&nc->wait);
    s_free_early(nc);
    klist_remove(&nc->link);
    if (nc->held && nc->sandbox) {
        sess_link_t *l = NULL;
        for (sess_link_t *it = nc->native->sessions; it; it = it->next)
            if (it->session == nc->session) l = it;
        //  A sandbox that ended is no longer the session's: nothing to let go of.
        if (l && l->sandbox == nc->sandbox)
            sandbox_release(nc->sandbox, session_keep_alive(nc->session));
    }
    free(nc);
}

static void s_on_message(wsconn_t *conn, const char *data, size_t len, bool binary, void *arg)
{
    nconn_t *nc = arg;
    if (nc->attached) {
        s_dispatch(nc, data, len, binary);
        return;
    }
    //  The sandbox is still starting: keep what the client sends until it runs.
    if (nc->nearly >= EARLY_MAX_MESSAGES || nc->early_bytes + len > EARLY_MAX_BYTES) {
        s_conn_error(conn, "busy", "the sandbox is still starting: wait for the session message");
        return;
    }
    early_t *e = malloc(sizeof *e + len + 1);
    if (!e) {
        s_conn_error(conn, "internal", "out of memory");
        return;
    }
    e->len = binary ? len | ((size_t) 1 << (sizeof(size_t) * 8 - 1)) : len;
    memcpy(e->data, data, len);
    klist_init(&e->link);
    klist_push_back(&nc->early, &e->link);
    nc->nearly++;
    nc->early_bytes += len;
}

static void s_on_too_large(wsconn_t *conn, size_t len, void *arg)
{
    (void) arg;
    char message[128];
    snprintf(message, sizeof message, "message of %zu bytes exceeds the limit", len);
    s_conn_error(conn, "too_large", message);
}

static sess_link_t *s_link_of(native_t *self, session_t *session)
{
    for (sess_link_t *l = self->sessions; l; l = l->next)
        if (l->session == session) return l;
    return NULL;
}

static void s_on_close(wsconn_t *conn, void *arg)
{
    nconn_t *nc = arg;
    if (nc->session && session_conn(nc->session) == conn) {
        session_detach(nc->session, conn);
        nsbx_detached(nc->native->nsbx, nc->session);
    }
    s_nconn_free(nc);
}

static session_t *s_find_session(native_t *self, const char *id)
{
    for (sess_link_t *l = self->sessions; l; l = l->next)
        if (strcmp(session_id(l->session), id) == 0) return l->session;
    return NULL;
}

static void s_destroy_session(native_t *self, session_t *session)
{
    sess_link_t *link = s_link_of(self, session);
    //  In the default sandbox, what the session started goes with it; elsewhere its
    //  kernels are the sandbox's and end with it.
    if (link && link->sandbox && sandbox_is_default(link->sandbox)) {
        json_t *kernels = json_deep_copy(session_kernels(session));
        size_t i;
        json_t *kid;
        json_array_foreach(kernels, i, kid)
        {
            kentry_t *entry = registry_find(self->registry, json_string_value(kid));
            if (entry) kentry_shutdown(entry);
        }
        json_decref(kernels);
    }
    for (sess_link_t **p = &self->sessions; *p; p = &(*p)->next) {
        if ((*p)->session != session) continue;
        sess_link_t *l = *p;
        *p = l->next;
        free(l);
        break;
    }
    //  Its connections stay open a moment while they close: they must not find us.
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->conns)
    {
        nconn_t *nc = klist_entry(it, nconn_t, link);
        if (nc->session != session) continue;
        wsconn_clear_events(nc->conn);
        s_nconn_free(nc);
    }
    session_destroy(&session);
}

static void s_reap(uv_timer_t *timer)
{
    native_t *self = timer->data;
    while (self->expired) {
        sess_link_t *l = self->expired;
        self->expired = l->next;
        session_t *s = l->session;
        free(l);
        //  It may have been reattached since it expired.
        if (s_find_session(self, session_id(s)) == s && !session_conn(s)) s_destroy_session(self, s);
    }
}

static void s_on_expire(session_t *session, void *arg)
{
    native_t *self = arg;
    sess_link_t *l = malloc(sizeof *l);
    if (!l) return;
    l->session = session;
    l->sandbox = NULL;
    l->next = self->expired;
    self->expired = l;
    uv_timer_start(&self->reaper, s_reap, 0, 0);
}

//  The sandbox runs: the session message, then what the client sent meanwhile, then the
//  backlog.
static void s_attach(nconn_t *nc)
{
    nc->attached = true;
    sandbox_t *sb = nc->sandbox;
    json_t *hello = json_pack("{s:s, s:s, s:s, s:b, s:I, s:o}", "type", "session", "session_id",
                              session_id(nc->session), "sandbox_id", sandbox_id(sb), "resumed",
                              nc->resumed, "keep_alive",
                              (json_int_t) (session_keep_alive(nc->session) / 1000u), "sandbox",
                              sandbox_model(sb));
    wsconn_send_json(nc->conn, hello);
    json_decref(hello);
    session_attach(nc->session, nc->conn, nc->resumed ? nc->last_seq : -1);
    while (!klist_empty(&nc->early) && nc->attached) {
        early_t *e = klist_entry(klist_first(&nc->early), early_t, link);
        klist_remove(&e->link);
        size_t top = (size_t) 1 << (sizeof(size_t) * 8 - 1);
        s_dispatch(nc, e->data, e->len & ~top, (e->len & top) != 0);
        free(e);
    }
    nc->nearly = nc->early_bytes = 0;
}

static void s_on_sandbox_running(sandbox_wait_t *wait, sandbox_t *sb, int err, const char *why)
{
    (void) sb;
    nconn_t *nc = wait->arg;
    if (!err) {
        s_attach(nc);
        return;
    }
    char message[400];
    snprintf(message, sizeof message, "the sandbox could not start: %s", why ? why : kb_strerror(err));
    s_conn_error(nc->conn, "internal", message);
    wsconn_t *conn = nc->conn;
    wsconn_clear_events(conn);
    nc->held = false;  //  it ended: nothing to let go of
    s_nconn_free(nc);
    wsconn_close(conn, 1011, "the sandbox could not start");
}

static void s_on_sandbox_end(sandbox_t *sb, const char *why, void *arg)
{
    native_t *self = arg;
    for (sess_link_t *l = self->sessions; l; l = l->next) {
        if (l->sandbox != sb) continue;
        l->sandbox = NULL;
        wsconn_t *conn = session_conn(l->session);
        klist_t *it, *tmp;
        klist_foreach_safe(it, tmp, &self->conns)
        {
            nconn_t *nc = klist_entry(it, nconn_t, link);
            if (nc->sandbox != sb) continue;
            nc->held = false;
            if (nc->conn != conn) {
                wsconn_t *other = nc->conn;
                wsconn_clear_events(other);
                s_nconn_free(nc);
                wsconn_close(other, 1000, "sandbox ended");
            }
        }
        if (conn) session_detach(l->session, conn);
        if (conn) {
            json_t *msg = json_pack("{s:s, s:s, s:s}", "type", "sandbox_ended", "sandbox_id",
                                    sandbox_id(sb), "reason", why ? why : "");
            wsconn_send_json(conn, msg);
            json_decref(msg);
            char reason[120];
            snprintf(reason, sizeof reason, "sandbox ended: %.100s", why ? why : "");
            wsconn_close(conn, 1000, reason);
        }
        //  The session goes on the next turn (not inside the sandbox's end).
        s_on_expire(l->session, self);
    }
}

static int s_ws_check(void *api, hreq_t *req, char *why, size_t size)
{
    native_t *self = api;
    char wanted[64];
    if (hreq_query(req, "sandbox_id", wanted, sizeof wanted) == KB_OK && *wanted) {
        if (!sandboxes_find(self->sandboxes, wanted)) {
            snprintf(why, size, "no sandbox with id '%.64s' (it ended, or never existed)", wanted);
            return 404;
        }
    } else if (hreq_query(req, "session_id", wanted, sizeof wanted) == KB_OK && *wanted) {
        if (!s_find_session(self, wanted) && !sandboxes_find(self->sandboxes, wanted)) {
            snprintf(why, size, "no session with id '%.64s' (it expired, or never existed)", wanted);
            return 404;
        }
    }
    return 0;
}

static void s_session_id(native_t *self, sandbox_t *sb, char out[SESSION_ID_MAX + 1])
{
    snprintf(out, SESSION_ID_MAX + 1, "%s", sandbox_id(sb));
    if (!sandbox_is_default(sb) && !s_find_session(self, out)) return;
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    do {
        unsigned char rnd[20];
        randombytes_buf(rnd, sizeof rnd);
        memcpy(out, "ses-", 4);
        for (size_t i = 0; i < sizeof rnd; i++) out[4 + i] = alphabet[rnd[i] % 36];
        out[4 + sizeof rnd] = '\0';
    } while (s_find_session(self, out));
}

static void s_accept(void *api, wsconn_t *conn, hreq_t *req, const char *subprotocol)
{
    (void) subprotocol;
    native_t *self = api;
    nconn_t *nc = calloc(1, sizeof *nc);
    if (!nc) {
        wsconn_close(conn, 1011, "out of memory");
        return;
    }
    nc->native = self;
    nc->conn = conn;
    nc->last_seq = -1;
    klist_init(&nc->early);
    klist_init(&nc->link);
    klist_push_back(&self->conns, &nc->link);
    nc->wait.fn = s_on_sandbox_running;
    nc->wait.arg = nc;
    //  ?sandbox_id= and ?session_id= mean the same: a sandbox's session has its id, and
    //  attaching resumes it. The default sandbox is shared: each connection gets a
    //  session of its own there (resumed by its own id).
    char wanted[64] = "";
    if (hreq_query(req, "sandbox_id", wanted, sizeof wanted) != KB_OK || !*wanted)
        if (hreq_query(req, "session_id", wanted, sizeof wanted) != KB_OK) wanted[0] = '\0';
    char last[32];
    if (hreq_query(req, "last_seq", last, sizeof last) == KB_OK) {
        char *endp;
        long long v = strtoll(last, &endp, 10);
        if (*last && !*endp && v >= 0) nc->last_seq = v;
    }
    session_t *session = NULL;
    sandbox_t *sb = NULL;
    if (*wanted) {
        session = s_find_session(self, wanted);
        sess_link_t *l = session ? s_link_of(self, session) : NULL;
        sb = l ? l->sandbox : sandboxes_find(self->sandboxes, wanted);
        nc->resumed = session != NULL;
        if (!sb) {
            char message[160];
            snprintf(message, sizeof message, "no sandbox with id '%.64s'", wanted);
            s_conn_error(conn, "not_found", message);
            wsconn_close(conn, 1008, "no such sandbox");
            s_nconn_free(nc);
            return;
        }
    } else {
        //  A connection without a sandbox gets one of its own.
        sandbox_opts_t opts;
        memset(&opts, 0, sizeof opts);
        //  Its life is the connection's, plus the keep-alive window after it.
        opts.timeout_ms = self->config->keep_alive_ms ? self->config->keep_alive_ms : 1;
        int err;
        char why[256];
        sb = sandboxes_create(self->sandboxes, &opts, &err, why, sizeof why);
        if (!sb) {
            s_conn_error(conn, err == KB_ELIMIT ? "busy" : "internal", why);
            wsconn_close(conn, err == KB_ELIMIT ? 1013 : 1011, "no sandbox");
            s_nconn_free(nc);
            return;
        }
    }
    if (!session) {
        const config_t *cfg = self->config;
        session_events_t events = {s_on_expire};
        //  A sandbox's session takes its id; the default sandbox's get ids of their own.
        char sid[SESSION_ID_MAX + 1];
        s_session_id(self, sb, sid);
        session = session_new(self->loop, sid, cfg->keep_alive_ms, cfg->max_outbound_bytes, &events,
                              self);
        sess_link_t *l = malloc(sizeof *l);
        if (!session || !l) {
            session_destroy(&session);
            free(l);
            s_nconn_free(nc);
            wsconn_close(conn, 1011, "out of memory");
            return;
        }
        l->session = session;
        l->sandbox = sb;
        l->next = self->sessions;
        self->sessions = l;
    }
    nc->session = session;
    nc->sandbox = sb;
    //  A newer connection takes over the session: the older one lets go of the sandbox.
    sandbox_hold(sb);
    nc->held = true;
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->conns)
    {
        nconn_t *onc = klist_entry(it, nconn_t, link);
        if (onc == nc || onc->session != session) continue;
        wsconn_t *old = onc->conn;
        if (session_conn(session) == old) session_detach(session, old);
        wsconn_clear_events(old);
        s_nconn_free(onc);
        wsconn_close(old, 1000, "replaced by a newer connection to this session");
    }
    wsconn_events_t events = {s_on_message, s_on_too_large, s_on_close};
    wsconn_set_events(conn, &events, nc);
    //  Attaching resumes a paused sandbox, as E2B's connect does.
    if (sandbox_state(sb) == SANDBOX_PAUSED) sandbox_resume(sb);
    if (sandbox_wait_running(sb, &nc->wait)) s_attach(nc);
}

//  What sessions hold for their clients, for the metrics (counted at a scrape).
static void s_collect(void *arg)
{
    native_t *self = arg;
    size_t held = 0;
    for (sess_link_t *l = self->sessions; l; l = l->next)
        held += outbox_held(session_outbox(l->session));
    metrics_set(MX_SESSION_BYTES, NULL, (double) held);
}

static void *s_create(const api_ctx_t *ctx)
{
    native_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = ctx->loop;
    self->registry = ctx->registry;
    self->sandboxes = ctx->sandboxes;
    self->config = ctx->config;
    klist_init(&self->conns);
    sandboxes_observer_t obs = {s_on_sandbox_end, NULL};
    self->nsbx = nsbx_new(self->loop, self->sandboxes);
    if (!self->nsbx || sandboxes_observe(self->sandboxes, &obs, self)) {
        nsbx_destroy(&self->nsbx);
        free(self);
        return NULL;
    }
    uv_timer_init(self->loop, &self->reaper);
    self->reaper.data = self;
    metrics_collect(s_collect, self);
    return self;
}

static void s_free_native(uv_handle_t *handle)
{
    free(handle->data);
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    native_t *self = *api_p;
    *api_p = NULL;
    while (self->expired) {
        sess_link_t *l = self->expired;
        self->expired = l->next;
        free(l);
    }
    metrics_uncollect(self);
    sandboxes_unobserve(self->sandboxes, self);
    while (self->sessions) s_destroy_session(self, self->sessions->session);
    nsbx_destroy(&self->nsbx);
    while (!klist_empty(&self->conns)) {
        nconn_t *nc = klist_entry(klist_first(&self->conns), nconn_t, link);
        wsconn_clear_events(nc->conn);
        s_nconn_free(nc);
    }
    uv_close((uv_handle_t *) &self->reaper, s_free_native);
}

static bool s_claims(void *api, hreq_t *req)
{
    (void) api;
    return strcmp(hreq_path(req), "/ws") == 0;
}

static void s_http(void *api, hreq_t *req)
{
    (void) api;
    hreq_reply_json(req, 400, json_pack("{s:s, s:n, s:s, s:s}", "type", "request_error", "id", "code",
                                        "bad_request", "message",
                                        "/ws is a WebSocket endpoint: send an Upgrade"));
}

static const char *const s_subprotocols[] = {"kbridge.v1", NULL};

const api_desc_t native_api = {
    .name = "native",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .http = s_http,
    .subprotocols = s_subprotocols,
    .ws_check = s_ws_check,
    .ws_accept = s_accept,
};
