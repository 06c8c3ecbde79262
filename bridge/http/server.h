/*  server - the HTTP and WebSocket front door: libwebsockets as a guest on our libuv loop.

    One listener serves every API: the native WebSocket API (/ws), the Jupyter Server
    kernels API (/api/...) and the E2B code-interpreter API (/execute, /contexts,
    /health). The server checks, for every request and upgrade, that the Host is this
    server (DNS rebinding), that a browser Origin is not foreign, and the token; then it
    routes to the API modules.
*/
#ifndef SERVER_H
#define SERVER_H

#include "../kernels/registry.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct {
    const char *ip;             //  listen address (default 127.0.0.1)
    int port;                   //  0 picks a free port
    const char *token;          //  "" disables auth
    json_t *allowed_hosts;      //  extra Host names (array of strings; "*" any)
    json_t *allowed_origins;    //  extra Origins ("*" any)
    size_t max_message_bytes;   //  largest WebSocket message accepted
    size_t max_body_bytes;      //  largest HTTP request body accepted
    size_t max_outbound_bytes;  //  bytes queued to a slow client before it is dropped
    size_t max_retained_output; //  bytes of output kept in one Execution object
    uint64_t keep_alive_ms;     //  how long a disconnected session lives by default
    uint64_t keep_alive_max_ms; //  the most a client may ask for
} server_config_t;

typedef struct _server_t server_t;

//  Listen on config's address with registry's kernels. Returns NULL if the listener
//  could not be set up (logged). Caller owns return value and must destroy it when done;
//  config and registry must outlive it.
server_t *server_new(uv_loop_t *loop, const server_config_t *config, registry_t *registry);
//  Close every connection and the listener. libwebsockets finishes closing its handles as
//  the loop runs; destroy the server after that.
void server_close(server_t *self);
//  Free the server (closing it first if needed), once the loop has run after
//  server_close. Nullifies *self_p.
void server_destroy(server_t **self_p);

//  The port actually listened on.
int server_port(const server_t *self);
const server_config_t *server_config(const server_t *self);
registry_t *server_registry(const server_t *self);
uv_loop_t *server_loop(const server_t *self);

#endif
