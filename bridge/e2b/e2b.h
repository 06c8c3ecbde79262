/*  e2b - the E2B code-interpreter API, so the official E2B SDKs (in debug mode, talking
    plain HTTP to localhost:49999) run code through kbridge unmodified.

    POST /execute streams NDJSON (ASCII-only JSON, one event per chunk, a keepalive after
    5 s of silence, then {"type": "end_of_execution"} and the end of the body). Contexts
    (/contexts) are kbridge kernels, visible in the other APIs. GET /health answers "OK".
    The wire contract is E2B's code-interpreter server as the official SDKs use it
    (tests/compat/e2b.test.mjs runs the real @e2b/code-interpreter against it).

    Routed by E2B's headers (E2b-Sandbox-Id, E2b-Sandbox-Port 49999: bridge/apikit/
    sbxroute.h), every path is the code interpreter of that sandbox: its contexts are its
    kernels, and its own tokens (trafficAccessToken, envdAccessToken) act on it and on
    nothing else. A sandbox that does not exist or does not run is 502. Without the
    headers, the default sandbox's, as in the SDKs' debug mode.
*/
#ifndef E2B_H
#define E2B_H

#include "../http/api.h"

//  The descriptor the server's table lists (bridge/apis.c).
extern const api_desc_t e2b_api;

#endif
