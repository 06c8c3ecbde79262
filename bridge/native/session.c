/*  session - native-API session state, delivery and keep-alive. */
#include "session.h"
#include "../buf/bufq.h"
#include "../buf/wbuf.h"
#include "../buf/jbuf.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <stdlib.h>
#include <string.h>

struct _session_t {
    char id[37];
    uv_loop_t *loop;
    uint64_t keep_alive_ms;
    size_t max_backlog;
    session_events_t events;
    void *arg;
    wsconn_t *conn;
    uv_timer_t expiry;
    bufq_t backlog;  //  events for the client while no connection is attached
    uint64_t lost;
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

session_t *session_new(uv_loop_t *loop, uint64_t keep_alive_ms, size_t max_backlog,
                       const session_events_t *events, void *arg)
{
    session_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    kb_uuid4(self->id);
    self->loop = loop;
    self->keep_alive_ms = keep_alive_ms;
    self->max_backlog = max_backlog;
    if (events) self->events = *events;
    self->arg = arg;
    self->kernels = json_array();
    klist_init(&self->pending);
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
    bufq_clear(&self->backlog);
    json_decref(self->kernels);
    free(self->default_kernel);
    uv_timer_stop(&self->expiry);
    uv_close((uv_handle_t *) &self->expiry, s_free_session);
}

const char *session_id(const session_t *self)
{
    return self->id;
}

void session_attach(session_t *self, wsconn_t *conn)
{
    if (self->conn && self->conn != conn)
        wsconn_close(self->conn, 1000, "replaced by a newer connection to this session");
    self->conn = conn;
    uv_timer_stop(&self->expiry);
    if (self->lost) {
        json_t *note = json_pack("{s:s, s:I, s:s}", "type", "events_lost", "count",
                                 (json_int_t) self->lost, "message",
                                 "events were dropped while disconnected: the backlog limit was reached");
        wsconn_send_json(conn, note);
        json_decref(note);
        self->lost = 0;
    }
    size_t len;
    char *payload;
    while ((payload = bufq_pop(&self->backlog, NULL, &len, NULL)))
        if (wsconn_send_buf(conn, payload, len, false) != KB_OK) break;
    bufq_clear(&self->backlog);
}

void session_detach(session_t *self, wsconn_t *conn)
{
    if (self->conn != conn) return;
    self->conn = NULL;
    uv_timer_start(&self->expiry, s_on_expire, self->keep_alive_ms, 0);
}

wsconn_t *session_conn(const session_t *self)
{
    return self->conn;
}

void session_send(session_t *self, const json_t *message)
{
    jbuf_t b;
    jbuf_init(&b);
    jbuf_add_json(&b, message);
    size_t len;
    char *payload = jbuf_take(&b, &len);
    if (payload) session_send_buf(self, payload, len);
}

void session_send_buf(session_t *self, char *buf, size_t len)
{
    if (self->conn && !wsconn_closing(self->conn)) {
        wsconn_send_buf(self->conn, buf, len, false);
        return;
    }
    if (bufq_bytes(&self->backlog) + len > self->max_backlog) {
        wbuf_free(buf);
        self->lost++;
        return;
    }
    if (bufq_push(&self->backlog, buf, buf, len, 0) != KB_OK) self->lost++;
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
