/*  bufq - a FIFO of outgoing wire buffers and the bytes they hold.

    The one queue behind every bounded output path: WebSocket frames waiting for the
    socket (wsconn), a detached session's backlog (session) and HTTP body chunks (hreq).
    Each owner checks bufq_bytes() against its own limit before pushing. Payloads come
    from wsconn_buf_alloc (LWS_PRE headroom before the pointer) and are freed with
    wsconn_buf_free.
*/
#ifndef BUFQ_H
#define BUFQ_H

#include <stdbool.h>
#include <stddef.h>

typedef struct bufq_item_s {
    struct bufq_item_s *next;
    char *payload;
    size_t len;
    bool binary;
} bufq_item_t;

//  Zero-initialized is empty.
typedef struct {
    bufq_item_t *head, *tail;
    size_t bytes;
} bufq_t;

//  Append payload (len bytes); takes ownership of it in every case. Returns 0 or
//  KB_ENOMEM (payload freed).
int bufq_push(bufq_t *q, char *payload, size_t len, bool binary);
//  Remove the oldest buffer; the caller owns the payload it returns (NULL when empty).
char *bufq_pop(bufq_t *q, size_t *len);
//  Remove and free the oldest buffer, if any.
void bufq_drop_head(bufq_t *q);
//  Free everything queued.
void bufq_clear(bufq_t *q);

static inline size_t bufq_bytes(const bufq_t *q)
{
    return q->bytes;
}

#endif
