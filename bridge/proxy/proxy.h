/*  proxy - the port proxy: a server listening on port P inside a sandbox, reached
    through kbridge's port, as E2B's edge proxy does.

    Two forms name the port: the Host "P-<sandbox id>.<domain>" (any path), and the path
    "/sandboxes/<sandbox id>/ports/P/..." (the prefix is stripped: the server sees "/...").
    The host form wins when both match (apikit/portaddr.h has the formats).

    Every request is authenticated like any other route: kbridge's token, or the target
    sandbox's own traffic token, in any of the usual places (WebSocket upgrades
    included). The credential that let the request in is taken out of what the server in
    the sandbox sees (a ?token= parameter, Authorization, X-Access-Token,
    E2B-Traffic-Access-Token or X-API-Key holding it); everything else goes as sent.

    Once the head is checked kbridge connects to 127.0.0.1:P (then [::1]:P) from inside
    the sandbox's network namespace (sbx_socket) and, once connected, hands the client's
    connection over to a byte tunnel (http/htunnel.h): the rewritten head, then whatever
    each side sends, both ways, with backpressure. An ordinary request goes up with
    "Connection: close", so the server ends the exchange and the client's connection ends
    with it (the next request comes on a new connection and is checked again); an upgrade
    (WebSocket) keeps "Connection: Upgrade" and the tunnel lasts as long as both sides do.

    Answers of its own: 404 (no such sandbox), 503 (the sandbox is not running: paused or
    starting), 502 naming the port and the sandbox (nothing listens there, or the connect
    failed or timed out after 10 s).
*/
#ifndef PROXY_H
#define PROXY_H

#include "../http/api.h"

extern const api_desc_t proxy_api;

#endif
