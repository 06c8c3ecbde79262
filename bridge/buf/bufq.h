/*  bufq - a FIFO of outgoing wire buffers and the bytes they hold.

    The one queue behind every bounded output path: bytes waiting for a socket (hconn),
    a detached session's backlog (session). Each item is a wbuf payload (owned by the
    queue) and the span of it that goes on the wire, which may start in the payload's
    headroom once a frame header has been put there. Owners check bufq_bytes() against
    their own limits before pushing; only this module touches the items.
*/
#ifndef BUFQ_H
#define BUFQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _bufq_item_t bufq_item_t;

//  Zero-initialized is empty.
typedef struct {
    bufq_item_t *head, *tail;
    size_t bytes;  //  wire bytes not yet consumed
    size_t count;
} bufq_t;

//  Append the wire span [data, data + len) of payload (a wbuf; data points into it or its
//  headroom). Takes ownership of payload in every case. tag is the owner's (e.g. a frame
//  kind). Returns 0 or KB_ENOMEM (payload freed).
int bufq_push(bufq_t *q, char *payload, const char *data, size_t len, uint32_t tag);
//  The oldest item's unconsumed wire bytes and tag; false when empty.
bool bufq_peek(const bufq_t *q, const char **data, size_t *len, uint32_t *tag);
//  Up to max spans of unconsumed bytes, oldest first, for a gathered write. Returns how
//  many were filled.
size_t bufq_spans(const bufq_t *q, const char **data, size_t *lens, size_t max);
//  Mark n wire bytes as written: fully written items are freed.
void bufq_consume(bufq_t *q, size_t n);
//  Remove the oldest item, handing its payload and span to the caller (who then owns the
//  payload). Returns NULL when empty.
char *bufq_pop(bufq_t *q, const char **data, size_t *len, uint32_t *tag);
//  Free everything after the first keep unconsumed bytes (an item that straddles that
//  point is kept whole). Returns the bytes freed.
size_t bufq_keep(bufq_t *q, size_t keep);
//  Free everything queued.
void bufq_clear(bufq_t *q);

static inline size_t bufq_bytes(const bufq_t *q)
{
    return q->bytes;
}

static inline bool bufq_empty(const bufq_t *q)
{
    return q->head == NULL;
}

#endif
