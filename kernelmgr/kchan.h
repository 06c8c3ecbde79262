/*  kchan - one client-side socket on one of a kernel's channels.

    shell, control and stdin are DEALERs (optionally with a routing id: stdin must share
    the shell socket's id for input_request to reach it); iopub is a SUB subscribed to
    everything. Received messages are verified with the kernel's hmac and decoded before
    the callback sees them; anything that fails is dropped, counted and logged, never
    passed on. The heartbeat channel is not a kchan: it carries raw bytes, not messages.
*/
#ifndef KCHAN_H
#define KCHAN_H

//  libzmq's retry interval for a refused connect (its default is 100 ms).
#define KCHAN_RECONNECT_IVL_MS 10

#include "hmac.h"
#include "kmsg.h"

#include <stdint.h>
#include <uv.h>

typedef enum {
    KCH_SHELL = 0,
    KCH_IOPUB = 1,
    KCH_STDIN = 2,
    KCH_CONTROL = 3,
    KCH_HB = 4,
    KCH_COUNT = 5
} kchan_type_t;

//  "shell", "iopub", "stdin", "control", "hb".
const char *kchan_type_name(kchan_type_t type);
//  Inverse of kchan_type_name; -1 for an unknown name.
int kchan_type_parse(const char *name, size_t len);

typedef struct _kchan_t kchan_t;

//  Called for each verified message. msg is borrowed for the duration of the call.
typedef void(kchan_fn)(kchan_t *chan, kmsg_t *msg, void *arg);

//  Connect a socket for channel type (not KCH_HB) to endpoint. routing_id may be NULL
//  (libzmq picks one). hmac is borrowed and must outlive the channel. label names the
//  kernel in logs. Returns NULL on failure.
//  Caller owns return value and must destroy it when done.
kchan_t *kchan_new(uv_loop_t *loop, kchan_type_t type, const char *endpoint,
                   const char *routing_id, hmac_t *hmac, const char *label, kchan_fn *on_msg,
                   void *arg);

//  As kchan_new, for a DEALER that must not queue before it is connected (ZMQ_IMMEDIATE):
//  sends fail with KB_EAGAIN until the connection is up, kchan_connected() says when it
//  is, and on_connected runs each time it comes up.
typedef void(kchan_connected_fn)(kchan_t *chan, void *arg);
kchan_t *kchan_new_immediate(uv_loop_t *loop, kchan_type_t type, const char *endpoint,
                             const char *routing_id, hmac_t *hmac, const char *label,
                             kchan_fn *on_msg, kchan_connected_fn *on_connected, void *arg);
bool kchan_connected(const kchan_t *self);

//  Close the socket. Safe from inside the channel's own callback. Nullifies *self_p.
void kchan_destroy(kchan_t **self_p);

//  Sign and send a message. Takes ownership of *msg_p and nullifies it. Returns 0,
//  KB_EAGAIN (high-water mark: the message was dropped), KB_EINVAL or KB_EIO.
int kchan_send(kchan_t *self, kmsg_t **msg_p);

kchan_type_t kchan_type(const kchan_t *self);
//  Messages dropped on receive because they failed verification or decoding.
uint64_t kchan_rejected(const kchan_t *self);

#endif
