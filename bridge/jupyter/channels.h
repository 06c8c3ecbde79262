/*  channels - one Jupyter kernel-channels WebSocket (/api/kernels/{id}/channels).

    Like jupyter_server, each connection has its own shell, control and stdin DEALERs
    whose ZeroMQ routing id is the client's session_id, so replies (and stdin's
    input_request) reach only the connection that asked. iopub comes from the kernel's
    one SUB, already proven live when the kernel became ready, and is fanned out to every
    connection of the kernel. Client messages that arrive while the kernel is not ready
    (starting, restarting), or before the connection's own sockets are connected, wait:
    the first kernel_info never hangs, and an input_request always has a route back.

    The connection hears of automatic restarts and death through the runner and sends
    the status messages Jupyter Server would: "restarting", then "dead" when the
    restarts ran out.
*/
#ifndef CHANNELS_H
#define CHANNELS_H

#include "wsframing.h"
#include "../kernels/kentry.h"
#include "../http/wsconn.h"

typedef struct _channels_t channels_t;

typedef struct {
    //  The connection is gone (the client closed it, or it was closed for it); the owner
    //  drops it from its lists. channels frees itself after this call.
    void (*on_gone)(channels_t *conn, void *arg);
} channels_events_t;

//  Serve conn for entry's kernel. session_id is the client's (NULL: one is made up).
//  Returns NULL if the kernel's sockets could not be set up (conn is then closed).
channels_t *channels_new(uv_loop_t *loop, kentry_t *entry, wsconn_t *conn, const char *session_id, wsframing_proto_t proto,
                   const channels_events_t *events, void *arg);

//  Close with a code and reason (e.g. a newer connection with the same session id).
void channels_close(channels_t *self, int code, const char *reason);
//  The owner is going away first: detach from everything, close the WebSocket, free.
void channels_destroy(channels_t **self_p);

const char *channels_session_id(const channels_t *self);
kentry_t *channels_kentry(const channels_t *self);

#endif
