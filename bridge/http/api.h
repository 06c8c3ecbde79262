/*  api - what every API served on kbridge's port provides to the server, and what it is
    given.

    Each API (native WebSocket, Jupyter Server, E2B...) is created with an api_ctx_t and
    exports one api_desc_t. The server walks the descriptor table (bridge/apis.c) in
    order for every request: the first API that claims a request serves it. The server
    itself checks Host, Origin and the token; an API only says which of its routes are
    public and which other tokens (a sandbox's own) it accepts for a request. Nothing
    here knows any API, and no API knows another.
*/
#ifndef API_H
#define API_H

#include "hreq.h"
#include "wsconn.h"
#include "../config.h"

#include <stdbool.h>
#include <uv.h>

typedef struct _registry_t registry_t;
typedef struct _sandboxes_t sandboxes_t;

typedef struct {
    uv_loop_t *loop;
    registry_t *registry;    //  every kernel
    sandboxes_t *sandboxes;  //  every sandbox (bridge/sandboxes/sandboxes.h)
    const config_t *config;
} api_ctx_t;

typedef struct {
    const char *name;
    //  Create the API's state (NULL on failure).
    void *(*create)(const api_ctx_t *ctx);
    //  Close its connections, cancel its streams, free it. Nullifies *api_p.
    void (*destroy)(void **api_p);
    //  Whether this API serves req (routing only: no side effects).
    bool (*claims)(void *api, hreq_t *req);
    //  req needs no token. NULL: every route needs one.
    bool (*is_public)(void *api, hreq_t *req);
    //  Accept a token other than kbridge's (a sandbox's own) for req. NULL: none.
    bool (*authorize)(void *api, hreq_t *req, const char *token);
    //  Refuse a request without a valid token in the API's own error shape. NULL: the
    //  server's 403 {"message", "reason"}.
    void (*refuse)(void *api, hreq_t *req);
    //  Serve an HTTP request. With streams_body false (or NULL) the body has been read
    //  (bounded by max_body_bytes) before this is called; with true the handler reads it.
    bool (*streams_body)(void *api, hreq_t *req);
    void (*http)(void *api, hreq_t *req);
    //  A proxy: http() gets every request the API claims as it came - WebSocket (and any
    //  other) upgrades included, unanswered - with the body unread, as with streams_body.
    //  It answers it (an error) or takes the connection over (hreq_detach).
    bool proxies;
    //  WebSocket routes: the subprotocols spoken (NULL-terminated, or NULL), a check
    //  before the handshake is answered (0, or an HTTP status to refuse with and why),
    //  and the accept. NULL ws_accept: no WebSocket routes.
    const char *const *subprotocols;
    int (*ws_check)(void *api, hreq_t *req, char *why, size_t size);
    void (*ws_accept)(void *api, wsconn_t *conn, hreq_t *req, const char *subprotocol);
} api_desc_t;

//  The table, in routing order (bridge/apis.c).
extern const api_desc_t *const kb_apis[];
extern const size_t kb_napis;

#endif
