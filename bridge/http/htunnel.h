/*  htunnel - two connections joined: what each one sends goes to the other as it is (an
    upgraded connection - a WebSocket - that a proxy passes through after the 101).

    Backpressure both ways, ttyd's rule: a side is not read while the other has more
    than 256 KiB queued, and reading resumes once that queue drains, so a reader that
    stops makes its writer stop too and nothing piles up. When one side ends (EOF or an
    error) both are closed after their queued bytes; when either closes, so does the
    other. The tunnel frees itself once both are closed.
*/
#ifndef HTUNNEL_H
#define HTUNNEL_H

#include "hconn.h"

typedef struct _htunnel_t htunnel_t;

//  Join a and b: the tunnel becomes the driver of both (bytes already read and left over
//  on either are passed on first). Returns NULL if memory ran out; a and b are then
//  untouched. The connections own the return value: it is freed after both close.
htunnel_t *htunnel_new(hconn_t *a, hconn_t *b);

//  Tunnels open now (for tests and the log).
size_t htunnel_count(void);

#endif
