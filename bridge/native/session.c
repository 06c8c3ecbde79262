/*  session - native-API session state, delivery and keep-alive. */
#include "session.h"
#include "outbox.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _session_t {
    char id[64];
    uv_loop_t *loop;
    uint64_t keep_alive_ms;
    size_t max_backlog;
    session_events_t events;
    void *arg;
    wsconn_t *conn;
    uv_timer_t expiry;
    outbox_t *out;  //  everything the client is sent, numbered
    klist_t pending;  //  spending_t
    json_t *kernels;
    char *default_kernel;
};

static void s_on_expire(uv_timer_t *timer)
{
    session_t *self = timer->data;
    klog_info("session %.8s: keep-alive window ended; closing it", self->id);
    if (self->events.on_expire) self->events.on_expire(self, self->arg);
}

session_t *session_new(uv_loop_t *loop, const char *id, uint64_t keep_alive_ms, size_t max_backlog,
                       const session_events_t *events, void *arg)
{
    session_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    snprintf(self->id, sizeof self->id, "%s", id);
    self->loop = loop;
    self->keep_alive_ms = keep_alive_ms;
    self->max_backlog = max_backlog;
    if (events) self->events = *events;
    self->arg = arg;
    self->kernels = json_array();
    klist_init(&self->pending);
    //  Sent messages are kept for a resume up to a few MiB (or the limit, if smaller).
    self->out = outbox_new(max_backlog, max_backlog < (4u << 20) ? max_backlog : 4u << 20);
    if (!self->out || !self->kernels) {
        outbox_destroy(&self->out);
        json_decref(self->kernels);
        free(self);
        return NULL;
    }
    uv_timer_init(loop, &self->expiry);
    self->expiry.data = self;
    return self;
}

static void s_free_session(uv_handle_t *handle)
{
    free(handle->data);
}

void session_destroy(session_t **self_p)
{
    if (!self_p || !*self_p) return;
    session_t *self = *self_p;
    *self_p = NULL;
    while (!klist_empty(&self->pending)) {
        spending_t *p = klist_entry(klist_first(&self->pending), spending_t, link);
        session_untrack(p);
        p->cancel(p);
    }
    if (self->conn) wsconn_close(self->conn, 1000, "session closed");
    self->conn = NULL;
    outbox_destroy(&self->out);
    json_decref(self->kernels);
    free(self->default_kernel);
    uv_timer_stop(&self->expiry);
    uv_close((uv_handle_t *) &self->expiry, s_free_session);
}

const char *session_id(const session_t *self)
{
    return self->id;
}

void session_attach(session_t *self, wsconn_t *conn, int64_t last_seq)
{
    if (self->conn && self->conn != conn)
        wsconn_close(self->conn, 1000, "replaced by a newer connection to this session");
    self->conn = conn;
    uv_timer_stop(&self->expiry);
    outbox_attach(self->out, conn, last_seq);
}

void session_detach(session_t *self, wsconn_t *conn)
{
    if (self->conn != conn) return;
    self->conn = NULL;
    outbox_detach(self->out, conn);
    uv_timer_start(&self->expiry, s_on_expire, self->keep_alive_ms, 0);
}

wsconn_t *session_conn(const session_t *self)
{
    return self->conn;
}

void session_send(session_t *self, const json_t *message, const json_t *rid, bool keep)
{
    outbox_push_json(self->out, message, rid, keep);
}

uint64_t session_next_seq(session_t *self)
{
    return outbox_next_seq(self->out);
}

void session_send_buf(session_t *self, char *buf, size_t len, uint64_t seq, const json_t *rid, bool keep)
{
    outbox_push(self->out, buf, len, seq, rid, keep);
}

void session_ack(session_t *self, uint64_t seq)
{
    outbox_ack(self->out, seq);
}

outbox_t *session_outbox(session_t *self)
{
    return self->out;
}

void session_set_keep_alive(session_t *self, uint64_t ms)
{
    self->keep_alive_ms = ms;
    if (!self->conn) uv_timer_start(&self->expiry, s_on_expire, ms, 0);
}

uint64_t session_keep_alive(const session_t *self)
{
    return self->keep_alive_ms;
}

void session_track(session_t *self, spending_t *pending)
{
    pending->session = self;
    klist_init(&pending->link);
    klist_push_front(&self->pending, &pending->link);
}

void session_untrack(spending_t *pending)
{
    session_t *self = pending->session;
    if (!self) return;
    klist_remove(&pending->link);
    pending->session = NULL;
}

json_t *session_kernels(session_t *self)
{
    return self->kernels;
}

void session_own_kernel(session_t *self, const char *kernel_id)
{
    if (!session_owns_kernel(self, kernel_id))
        json_array_append_new(self->kernels, json_string(kernel_id));
}

void session_disown_kernel(session_t *self, const char *kernel_id)
{
    size_t i;
    json_t *id;
    json_array_foreach(self->kernels, i, id) if (strcmp(json_string_value(id), kernel_id) == 0)
    {
        json_array_remove(self->kernels, i);
        break;
    }
    if (self->default_kernel && strcmp(self->default_kernel, kernel_id) == 0) {
        free(self->default_kernel);
        self->default_kernel = NULL;
    }
}

bool session_owns_kernel(session_t *self, const char *kernel_id)
{
    size_t i;
    json_t *id;
    json_array_foreach(self->kernels, i, id) if (strcmp(json_string_value(id), kernel_id) == 0) return true;
    return false;
}

const char *session_default_kernel(const session_t *self)
{
    return self->default_kernel;
}

void session_set_default_kernel(session_t *self, const char *kernel_id)
{
    free(self->default_kernel);
    self->default_kernel = kb_strdup(kernel_id);
}
