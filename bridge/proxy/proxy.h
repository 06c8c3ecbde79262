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

    Ordinary requests (keep-alive): once the head is checked kbridge takes an idle
    connection to the port from its pool, or connects to 127.0.0.1:P (then [::1]:P) from
    inside the sandbox's network namespace (sbx_socket), and sends the rewritten head, then
    the body as it comes (chunked again if it came chunked; Expect is answered by kbridge).
    The answer is read with hresp (http/hresp.h): its head rewritten (Connection and
    Keep-Alive replaced by kbridge's own, no Content-Length beside Transfer-Encoding), its
    body passed on as it is, delimited by Content-Length, the chunked coding or the
    server's close (none after HEAD, 1xx, 204, 304), with backpressure both ways (a side is
    not read while the other has 256 KiB queued). Then the client's connection reads its
    next request (pipelined ones wait their turn), which is routed and authenticated again
    like the first: it may name another sandbox or port, and a credential good for one
    sandbox does not carry over to another. The server's connection goes back to the pool
    if the answer was delimited and the server did not say close: at most 4 idle per
    (sandbox, port) and 32 in all, each closed after 3 s unused, when its sandbox ends or
    is paused or resumed, or when the server sends anything or closes. A pooled connection
    the server closed before answering is retried once on a new one if no byte of the
    request body went yet. The client's connection closes after an answer delimited by the
    close, an HTTP/1.0 exchange without keep-alive, or a server failure in the middle of an
    answer (a body cut short is never passed off as complete); a server that sends no HTTP,
    a head over 64 KiB, a bad chunk size or a control character in its status line gets the
    client a 502 if nothing of the answer went yet, else the close.

    Upgrades (WebSocket) connect a new connection with "Connection: Upgrade" and hand the
    client's connection to a byte tunnel (http/htunnel.h): the rewritten head, then whatever
    each side sends, both ways, with backpressure, as long as both sides last and bytes pass
    one way or the other at least once per --tunnel-idle (config tunnel_idle_ms; an hour by
    default, 0: no limit).

    Answers of its own: 404 (no such sandbox), 503 (the sandbox is not running: paused or
    starting), 502 naming the port and the sandbox (nothing listens there, or the connect
    failed or timed out after 10 s).
*/
#ifndef PROXY_H
#define PROXY_H

#include "../http/api.h"

extern const api_desc_t proxy_api;

#endif
