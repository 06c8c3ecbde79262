/*  htunnel - two connections joined: what each one sends goes to the other as it is (an
    upgraded connection - a WebSocket - that a proxy passes through after the 101).

    Backpressure both ways, ttyd's rule: a side is not read while the other has more
    than 256 KiB queued, and reading resumes once that queue drains, so a reader that
    stops makes its writer stop too and nothing piles up. Ends: the client (a) stopping
    to send half-closes the server's connection (b gets end of stream after its queued
    bytes; b's answer still flows to a); b's end of stream or any error closes both after
    their queued bytes; when either closes, so does the other; no bytes either way for
    the idle timeout (HTUNNEL_IDLE_MS, an hour, unless set) closes both. The tunnel frees
    itself once both are closed.
*/
#ifndef HTUNNEL_H
#define HTUNNEL_H

#include "hconn.h"

typedef struct _htunnel_t htunnel_t;

//  Join a (the client) and b (the server): the tunnel becomes the driver of both (bytes
//  already read and left over on either are passed on first). Returns NULL if memory ran
//  out; a and b are then untouched. The connections own the return value: it is freed
//  after both close.
htunnel_t *htunnel_new(hconn_t *a, hconn_t *b);

//  No bytes either way for this long closes the tunnel (0: never). Set by htunnel_new.
#define HTUNNEL_IDLE_MS (3600 * 1000ULL)
void htunnel_set_idle_timeout(htunnel_t *self, uint64_t ms);

//  Tunnels open now (for tests and the log).
size_t htunnel_count(void);

#endif
