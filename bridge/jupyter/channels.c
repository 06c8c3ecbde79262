/*  channels - a Jupyter kernel-channels WebSocket connection. */
#include "channels.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Client messages held while the kernel is not ready.
#define MAX_HELD 10000

typedef struct {
    klist_t link;
    kmsg_t *msg;
    kchan_type_t channel;
} held_t;

struct _channels_t {
    uv_loop_t *loop;
    kentry_t *entry;
    wsconn_t *conn;
    char session_id[128];
    wsframing_proto_t proto;
    channels_events_t events;
    void *arg;
    kchan_t *chan[KCH_COUNT];  //  shell, control, stdin
    runner_listener_t listener;
    kwait_t settle;  //  a claimed warm kernel's move: what is held goes once it has run
    klist_t held_msgs;  //  held_t, oldest first
    size_t held;
    uint64_t generated;  //  counter for server-made msg_ids
    bool detached;
};

static void s_send(channels_t *self, kchan_type_t channel, kmsg_t *msg)
{
    if (!self->conn) return;
    size_t len;
    bool binary;
    char *frame = wsframing_encode(self->proto, channel, msg, &len, &binary);
    if (frame) wsconn_send_buf(self->conn, frame, len, binary);
}

static void s_on_reply(kchan_t *chan, kmsg_t *msg, void *arg)
{
    s_send(arg, kchan_type(chan), msg);
}

static void s_flush_held(channels_t *self);

static void s_on_connected(kchan_t *chan, void *arg)
{
    (void) chan;
    s_flush_held(arg);
}

//  A status message kbridge itself says on iopub, as Jupyter Server does.
static void s_send_status(channels_t *self, const char *state)
{
    //  Jupyter Server's own message ids: <session>_<server pid>_<n>.
    char id[200];
    snprintf(id, sizeof id, "%s_%d_%llu", self->session_id, (int) getpid(),
             (unsigned long long) ++self->generated);
    kmsg_t *msg = kmsg_new_id("status", self->session_id, id,
                              json_pack("{s:s}", "execution_state", state));
    if (!msg) return;
    s_send(self, KCH_IOPUB, msg);
    kmsg_destroy(&msg);
}

static void s_forward(channels_t *self, kchan_type_t channel, kmsg_t **msg_p)
{
    int rc = kchan_send(self->chan[channel], msg_p);
    if (rc != KB_OK)
        klog_warn("kernel %.8s: could not forward a client message on %s: %s",
                  kentry_id(self->entry), kchan_type_name(channel), kb_strerror(rc));
}

//  Forwarding waits for the kernel to be settled (ready, and a warm kernel's move to its
//  cwd and env done: these sockets are not the runner's, so nothing else orders a
//  client's first execute_request after it) and for this connection's own sockets to
//  be connected: a kernel routes input_request to the stdin socket of the shell
//  request's sender, and a ROUTER drops what it cannot route.
static bool s_can_forward(channels_t *self)
{
    return kentry_settled(self->entry) && kchan_connected(self->chan[KCH_SHELL]) &&
           kchan_connected(self->chan[KCH_CONTROL]) && kchan_connected(self->chan[KCH_STDIN]);
}

static void s_flush_held(channels_t *self)
{
    if (self->detached || !s_can_forward(self)) return;
    while (!klist_empty(&self->held_msgs)) {
        held_t *h = klist_entry(klist_first(&self->held_msgs), held_t, link);
        klist_remove(&h->link);
        s_forward(self, h->channel, &h->msg);
        free(h);
    }
    self->held = 0;
}

static void s_drop_held(channels_t *self)
{
    while (!klist_empty(&self->held_msgs)) {
        held_t *h = klist_entry(klist_first(&self->held_msgs), held_t, link);
        klist_remove(&h->link);
        kmsg_destroy(&h->msg);
        free(h);
    }
    self->held = 0;
}

static void s_release_kernel_side(channels_t *self)
{
    if (self->detached) return;
    self->detached = true;
    kentry_unwait(&self->settle);
    runner_unlisten(kentry_runner(self->entry), &self->listener);
    for (int c = 0; c < KCH_COUNT; c++) kchan_destroy(&self->chan[c]);
    s_drop_held(self);
}

//  This connection's shell, control and stdin sockets, with its session id as routing id.
static int s_connect(channels_t *self)
{
    kernel_t *kernel = kentry_kernel(self->entry);
    static const kchan_type_t types[] = {KCH_SHELL, KCH_CONTROL, KCH_STDIN};
    for (size_t i = 0; i < 3; i++) {
        const char *endpoint = kernel_endpoint(kernel, types[i]);
        self->chan[types[i]] =
            endpoint ? kchan_new_immediate(self->loop, types[i], endpoint, self->session_id,
                                           kernel_hmac(kernel), kentry_id(self->entry), s_on_reply,
                                           s_on_connected, self)
                     : NULL;
        if (!self->chan[types[i]]) {
            for (int c = 0; c < KCH_COUNT; c++) kchan_destroy(&self->chan[c]);
            return KB_EIO;
        }
    }
    return KB_OK;
}

static void s_on_settled(kwait_t *wait, kentry_t *entry, kwait_result_t result)
{
    (void) entry;
    if (result == KWAIT_READY) s_flush_held(wait->arg);
}

static void s_on_kernel_msg(runner_listener_t *l, kchan_type_t channel, kmsg_t *msg)
{
    if (channel == KCH_IOPUB) s_send(l->arg, KCH_IOPUB, msg);
}

static void s_on_kernel_event(runner_listener_t *l, kernel_event_t event)
{
    channels_t *self = l->arg;
    switch (event) {
    case KERNEL_EV_READY: s_flush_held(self); break;
    case KERNEL_EV_RESTARTING: s_send_status(self, "restarting"); break;
    case KERNEL_EV_DEAD: s_send_status(self, "dead"); break;
    case KERNEL_EV_ENDPOINTS:
        //  The next process listens elsewhere; what is held waits for it as before.
        for (int c = 0; c < KCH_COUNT; c++) kchan_destroy(&self->chan[c]);
        if (s_connect(self) != KB_OK) {
            s_release_kernel_side(self);
            if (self->conn) wsconn_close(self->conn, 1011, "cannot connect to the kernel");
        }
        break;
    case KERNEL_EV_SHUTDOWN:
        //  The kernel's sockets and signer go away with it.
        s_release_kernel_side(self);
        if (self->conn) wsconn_close(self->conn, 1000, "kernel shut down");
        break;
    default: break;
    }
}

static void s_on_message(wsconn_t *conn, const char *data, size_t len, bool binary, void *arg)
{
    channels_t *self = arg;
    if (self->detached) return;
    kchan_type_t channel;
    char why[200];
    kmsg_t *msg = wsframing_decode(self->proto, data, len, binary, &channel, why, sizeof why);
    if (!msg) {
        klog_warn("kernel %.8s: closing a channels connection: %s", kentry_id(self->entry), why);
        wsconn_close(conn, 1007, why);
        return;
    }
    if (klist_empty(&self->held_msgs) && s_can_forward(self)) {
        s_forward(self, channel, &msg);
        return;
    }
    if (self->held >= MAX_HELD) {
        kmsg_destroy(&msg);
        wsconn_close(conn, 1013, "kernel not ready and too many messages waiting for it");
        return;
    }
    held_t *h = malloc(sizeof *h);
    if (!h) {
        kmsg_destroy(&msg);
        return;
    }
    h->msg = msg;
    h->channel = channel;
    klist_init(&h->link);
    klist_push_back(&self->held_msgs, &h->link);
    self->held++;
}

static void s_on_too_large(wsconn_t *conn, size_t len, void *arg)
{
    (void) arg;
    char why[120];
    snprintf(why, sizeof why, "message of %zu bytes exceeds the size limit", len);
    wsconn_close(conn, 1009, why);
}

static void s_free(channels_t *self)
{
    s_release_kernel_side(self);
    free(self);
}

static void s_on_close(wsconn_t *conn, void *arg)
{
    (void) conn;
    channels_t *self = arg;
    self->conn = NULL;
    if (self->events.on_gone) self->events.on_gone(self, self->arg);
    s_free(self);
}

channels_t *channels_new(uv_loop_t *loop, kentry_t *entry, wsconn_t *conn, const char *session_id, wsframing_proto_t proto,
                   const channels_events_t *events, void *arg)
{
    channels_t *self = calloc(1, sizeof *self);
    if (!self) {
        wsconn_close(conn, 1011, "out of memory");
        return NULL;
    }
    self->loop = loop;
    self->entry = entry;
    self->conn = conn;
    self->proto = proto;
    klist_init(&self->held_msgs);
    if (events) self->events = *events;
    self->arg = arg;
    if (session_id && *session_id)
        snprintf(self->session_id, sizeof self->session_id, "%s", session_id);
    else
        kb_uuid4(self->session_id);
    if (s_connect(self) != KB_OK) {
        free(self);
        wsconn_close(conn, 1011, "cannot connect to the kernel");
        return NULL;
    }
    self->listener.on_msg = s_on_kernel_msg;
    self->listener.on_event = s_on_kernel_event;
    self->listener.arg = self;
    runner_listen(kentry_runner(entry), &self->listener);
    if (!kentry_settled(entry)) {
        self->settle.fn = s_on_settled;
        self->settle.arg = self;
        kentry_wait(entry, &self->settle);
    }
    wsconn_events_t wev = {s_on_message, s_on_too_large, s_on_close};
    wsconn_set_events(conn, &wev, self);
    return self;
}

void channels_close(channels_t *self, int code, const char *reason)
{
    if (self->conn) wsconn_close(self->conn, code, reason);
}

void channels_destroy(channels_t **self_p)
{
    if (!self_p || !*self_p) return;
    channels_t *self = *self_p;
    *self_p = NULL;
    if (self->conn) {
        wsconn_clear_events(self->conn);
        wsconn_close(self->conn, 1001, "server shutting down");
    }
    s_free(self);
}

const char *channels_session_id(const channels_t *self)
{
    return self->session_id;
}

kentry_t *channels_kentry(const channels_t *self)
{
    return self->entry;
}
