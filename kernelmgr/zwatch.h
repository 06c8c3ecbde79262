/*  zwatch - watches one ZeroMQ socket on the libuv loop. The only code in kbridge that
    sends or receives on ZeroMQ.

    ZMQ_FD is edge-triggered, and ZMQ_EVENTS must be re-read after every send and receive
    (zmq_getsockopt(3)): a send can swallow the edge of an incoming message, and a socket
    can stay readable after its fd stops reporting it. So:
      - an fd wake-up, a registration and every send only mark the watcher dirty;
      - one uv_check handle per loop drains dirty watchers after each poll phase, each
        with a budget, re-reading ZMQ_EVENTS before every receive;
      - while anything is still dirty a uv_idle handle keeps the loop from sleeping.
    This is redis's "pending data + don't sleep" pattern applied to libzmq.
*/
#ifndef ZWATCH_H
#define ZWATCH_H

#include <czmq.h>
#include <stdbool.h>
#include <uv.h>

typedef struct _zwatch_t zwatch_t;

//  Called once per received message. The callee takes ownership of *msg_p (it may leave
//  it in place to have it destroyed after the call). The callee may destroy the watcher.
typedef void(zwatch_fn)(zwatch_t *watch, zmsg_t **msg_p, void *arg);

//  The same, with the message's frames: frames[0..n-1], borrowed for the call. The callee
//  may take any of them by setting its entry to NULL; the rest are destroyed after the
//  call. This is the receive path without a zmsg_t (its list costs an allocation and a
//  few calls per frame; a cell is ~40 frames). The callee may destroy the watcher.
typedef void(zwatch_frames_fn)(zwatch_t *watch, zframe_t **frames, size_t n, void *arg);

//  A new ZeroMQ socket of type, or NULL with *err = KB_ELIMIT and the reason logged when
//  creating it would fail: czmq aborts the process when libzmq refuses a socket (its
//  socket cap, or no file descriptor for the socket's mailbox), so every socket kbridge
//  makes comes from here, which checks both first and keeps a margin. Destroy it with
//  zwatch_socket_destroy, or hand it to zwatch_new (which destroys it).
zsock_t *zwatch_socket(int type, int *err);
//  KB_OK if n more sockets can be made now (under the cap, with their descriptors and a
//  headroom of free ones to spare), else KB_ELIMIT with the reason logged: for callers
//  that need several at once and would rather refuse than get half of them.
int zwatch_socket_room(size_t n);
void zwatch_socket_destroy(zsock_t **sock_p);
//  Sockets made with zwatch_socket and not yet destroyed; and the most that may be. The
//  first call of either zwatch_socket or zwatch_sockets_max sets libzmq's cap, which
//  libzmq allows only while no socket exists: a program making sockets of its own calls
//  zwatch_sockets_max() first.
size_t zwatch_sockets_in_use(void);
size_t zwatch_sockets_max(void);

//  Start watching *sock_p on loop, taking ownership of the socket (its send and receive
//  timeouts are forced to 0 so nothing ever blocks). on_msg may be NULL for send-only
//  sockets, whose input is then discarded. Returns NULL on failure (the socket is then
//  destroyed). Caller owns return value and must destroy it when done.
zwatch_t *zwatch_new(uv_loop_t *loop, zsock_t **sock_p, zwatch_fn *on_msg, void *arg);

//  The same, delivering each message as its frames (zwatch_frames_fn).
zwatch_t *zwatch_new_frames(uv_loop_t *loop, zsock_t **sock_p, zwatch_frames_fn *on_frames,
                            void *arg);

//  Stop watching and close the socket. Safe to call from inside any zwatch callback,
//  including this watcher's own. Nullifies *self_p.
void zwatch_destroy(zwatch_t **self_p);

//  Send a message; takes ownership of *msg_p and nullifies it, even on failure. Returns
//  0, or KB_EAGAIN if the socket is at its high-water mark (the message is dropped: the
//  caller reports it, the loop never blocks), or KB_EIO.
int zwatch_send(zwatch_t *self, zmsg_t **msg_p);

//  The watched socket (borrowed), for socket options.
zsock_t *zwatch_sock(zwatch_t *self);

//  Called when the socket becomes writable (ZMQ_POLLOUT turns on). With ZMQ_IMMEDIATE a
//  DEALER is writable only once a connection to its peer is complete, so this tells
//  when messages can no longer be lost for want of a route back.
typedef void(zwatch_writable_fn)(zwatch_t *watch, void *arg);
void zwatch_set_on_writable(zwatch_t *self, zwatch_writable_fn *on_writable);
//  The last POLLOUT state seen.
bool zwatch_writable(const zwatch_t *self);

//  Messages, and bytes, handled per watcher per loop turn before yielding to other work:
//  a kernel producing faster than clients read must not keep the loop from writing (or
//  from serving other kernels) until its whole burst is in memory.
#define ZWATCH_BUDGET 256
#define ZWATCH_BYTE_BUDGET (1u << 20)

#endif
