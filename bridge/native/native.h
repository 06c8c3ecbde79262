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

#include "../http/api.h"

//  The descriptor the server's table lists (bridge/apis.c).
extern const api_desc_t native_api;

#endif
