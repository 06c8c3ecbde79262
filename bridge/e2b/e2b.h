/*  e2b - the E2B code-interpreter API, so the official E2B SDKs (in debug mode, talking
    plain HTTP to localhost:49999) run code through kbridge unmodified.

    POST /execute streams NDJSON (ASCII-only JSON, one event per chunk, a keepalive after
    5 s of silence, then {"type": "end_of_execution"} and the end of the body). Contexts
    (/contexts) are kbridge kernels, visible in the other APIs. GET /health answers "OK".
    The wire contract is ../shared/reference/e2b.md as captured from the real SDKs.
*/
#ifndef E2B_H
#define E2B_H

#include "../http/hreq.h"

typedef struct _server_t server_t;
typedef struct _e2b_t e2b_t;

//  Caller owns return value and must destroy it when done.
e2b_t *e2b_new(server_t *server);
//  Cancel streaming executions and forget default contexts. Nullifies *self_p.
void e2b_destroy(e2b_t **self_p);

//  True if path is one of the E2B routes (/execute, /contexts..., /health).
bool e2b_route(const char *path);
void e2b_http(e2b_t *self, hreq_t *req);

#endif
