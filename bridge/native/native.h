/*  native - kbridge's own WebSocket API at /ws (subprotocol kbridge.v1).

    JSON text frames. On connect the server sends {"type":"session","session_id"}. Each
    request carries "op" and a client-chosen "id", echoed in every reply and event:
    start_kernel, list_kernels, interrupt_kernel, restart_kernel, shutdown_kernel,
    execute (streams E2B-shaped events, then end_of_execution with the Execution), and
    keep_alive. Failures are {"type":"request_error","id","code","message"}.
    schema/native.schema.json is the contract.
*/
#ifndef NATIVE_H
#define NATIVE_H

#include "../http/wsconn.h"

#include <libwebsockets.h>

typedef struct _server_t server_t;
typedef struct _native_t native_t;

//  Caller owns return value and must destroy it when done.
native_t *native_new(server_t *server);
//  Destroy every session (their kernels are shut down). Nullifies *self_p.
void native_destroy(native_t **self_p);

//  Take over a newly established /ws connection (reads ?session_id= from wsi).
void native_accept(native_t *self, wsconn_t *conn, struct lws *wsi);

#endif
