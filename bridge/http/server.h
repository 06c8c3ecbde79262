/*  server - the front door: one listening socket for every API.

    For each connection it enforces the connection caps (all connections; connections of
    one peer address that have not finished sending a request head - the oldest of those
    is dropped past the cap, so a client holding sockets half-open starves nobody but
    itself), and serves HTTP/1.1 on it (hreq.h). For each request it checks that the Host
    is this server (DNS rebinding), that a browser Origin is not foreign (CORS for allowed
    ones), and the token; then the API that claims the request (api.h) serves it, over
    HTTP or, after the opening handshake, as a WebSocket.
*/
#ifndef SERVER_H
#define SERVER_H

#include "api.h"
#include "../config.h"

#include <stdbool.h>
#include <uv.h>

typedef struct _server_t server_t;

//  Listen on config's address and create every API. Returns NULL with a one-line reason
//  in why (e.g. "port 49999 is in use: another kbridge? pass --port"). Caller owns
//  return value and must destroy it when done; config and ctx's objects must outlive it.
server_t *server_new(const api_ctx_t *ctx, char *why, size_t size);
//  Stop listening, destroy the APIs (closing their connections) and close every other
//  connection. Handles finish closing as the loop runs.
void server_close(server_t *self);
//  Free the server (closing it first if needed). Nullifies *self_p.
void server_destroy(server_t **self_p);

//  The port actually listened on.
int server_port(const server_t *self);

#endif
