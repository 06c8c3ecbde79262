/*  kchan - a verified, decoding socket on one kernel channel. */
#include "kchan.h"
#include "../base/kberr.h"
#include "../base/klog.h"
#include "zwatch.h"

#include <stdlib.h>
#include <string.h>

struct _kchan_t {
    kchan_type_t type;
    kchan_connected_fn *on_connected;
    zwatch_t *watch;
    hmac_t *hmac;
    char *label;
    kchan_fn *on_msg;
    void *arg;
    uint64_t rejected;
};

static const char *s_names[KCH_COUNT] = {"shell", "iopub", "stdin", "control", "hb"};

const char *kchan_type_name(kchan_type_t type)
{
    return (unsigned) type < KCH_COUNT ? s_names[type] : "unknown";
}

int kchan_type_parse(const char *name, size_t len)
{
    for (int i = 0; i < KCH_COUNT; i++)
        if (strlen(s_names[i]) == len && memcmp(s_names[i], name, len) == 0) return i;
    return -1;
}

static void s_on_frames(zwatch_t *watch, zframe_t **frames, size_t n, void *arg)
{
    (void) watch;
    kchan_t *self = arg;
    int err;
    kmsg_t *msg = kmsg_decode_frames(frames, n, self->hmac, &err);
    if (!msg) {
        self->rejected++;
        //  Logged sparingly: a peer sending garbage must not flood the log either.
        if (self->rejected <= 10 || self->rejected % 1000 == 0)
            klog_warn("kernel %s: dropped message on %s (%s; %llu dropped so far)",
                      self->label, s_names[self->type], kb_strerror(err),
                      (unsigned long long) self->rejected);
        return;
    }
    if (self->on_msg) self->on_msg(self, msg, self->arg);
    kmsg_destroy(&msg);
}

static void s_on_writable(zwatch_t *watch, void *arg)
{
    (void) watch;
    kchan_t *self = arg;
    if (self->on_connected) self->on_connected(self, self->arg);
}

static kchan_t *s_new(uv_loop_t *loop, kchan_type_t type, const char *endpoint,
                      const char *routing_id, hmac_t *hmac, const char *label, kchan_fn *on_msg,
                      kchan_connected_fn *on_connected, bool immediate, void *arg)
{
    if (type == KCH_HB || (unsigned) type >= KCH_COUNT) return NULL;
    kchan_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->type = type;
    self->hmac = hmac;
    self->label = strdup(label ? label : "?");
    self->on_msg = on_msg;
    self->arg = arg;
    zsock_t *sock = self->label ? zwatch_socket(type == KCH_IOPUB ? ZMQ_SUB : ZMQ_DEALER, NULL) : NULL;
    if (!sock) goto fail;
    zsock_set_linger(sock, 0);
    //  The kernel binds its ports a few hundred ms after it is spawned and libzmq retries a
    //  refused connect every 100 ms by default: up to 100 ms of a start lost waiting.
    zsock_set_reconnect_ivl(sock, KCHAN_RECONNECT_IVL_MS);
    if (type == KCH_IOPUB) {
        zsock_set_subscribe(sock, "");
        //  iopub cannot be paused: the kernel's PUB drops at its own high-water mark. Take
        //  what arrives promptly and apply limits per client, not here.
        zsock_set_rcvhwm(sock, 100000);
    } else {
        zsock_set_sndhwm(sock, 10000);
        zsock_set_rcvhwm(sock, 10000);
        if (routing_id) zsock_set_identity(sock, routing_id);
        if (immediate) zsock_set_immediate(sock, 1);
    }
    if (zsock_connect(sock, "%s", endpoint) != 0) {
        klog_error("kernel %s: cannot connect %s to %s", self->label, s_names[type], endpoint);
        zwatch_socket_destroy(&sock);
        goto fail;
    }
    self->watch = zwatch_new_frames(loop, &sock, s_on_frames, self);
    if (!self->watch) goto fail;
    self->on_connected = on_connected;
    if (immediate) zwatch_set_on_writable(self->watch, s_on_writable);
    return self;
fail:
    free(self->label);
    free(self);
    return NULL;
}

kchan_t *kchan_new(uv_loop_t *loop, kchan_type_t type, const char *endpoint,
                   const char *routing_id, hmac_t *hmac, const char *label, kchan_fn *on_msg,
                   void *arg)
{
    return s_new(loop, type, endpoint, routing_id, hmac, label, on_msg, NULL, false, arg);
}

kchan_t *kchan_new_immediate(uv_loop_t *loop, kchan_type_t type, const char *endpoint,
                             const char *routing_id, hmac_t *hmac, const char *label,
                             kchan_fn *on_msg, kchan_connected_fn *on_connected, void *arg)
{
    return s_new(loop, type, endpoint, routing_id, hmac, label, on_msg, on_connected,
                 type != KCH_IOPUB, arg);
}

bool kchan_connected(const kchan_t *self)
{
    return zwatch_writable(self->watch);
}

void kchan_destroy(kchan_t **self_p)
{
    if (!self_p || !*self_p) return;
    kchan_t *self = *self_p;
    //  Safe inside our own callback: zwatch defers closing the socket, and s_on_zmsg does
    //  not touch self after on_msg returns.
    zwatch_destroy(&self->watch);
    free(self->label);
    free(self);
    *self_p = NULL;
}

int kchan_send(kchan_t *self, kmsg_t **msg_p)
{
    if (self->type == KCH_IOPUB) {
        kmsg_destroy(msg_p);
        return KB_EINVAL;
    }
    zmsg_t *zmsg = kmsg_encode(msg_p, self->hmac);
    if (!zmsg) return KB_EINVAL;
    return zwatch_send(self->watch, &zmsg);
}

kchan_type_t kchan_type(const kchan_t *self)
{
    return self->type;
}

uint64_t kchan_rejected(const kchan_t *self)
{
    return self->rejected;
}
