/*  wbuf - wire buffers: payloads with room reserved before and after them.

    A payload is built once (an event serialized into a jbuf, a file chunk read into it)
    and then framed in place for whatever carries it - a WebSocket frame header, or an
    HTTP chunk-size line and its CRLF - without another copy. This module is the only
    one that knows how much room there is.

    Payloads are reference-counted, so one can sit in a socket's queue and in a replay
    buffer at once: wbuf_ref takes a reference, wbuf_free drops one (the memory goes with
    the last). Only a payload nobody else holds may be grown.
*/
#ifndef WBUF_H
#define WBUF_H

#include <stddef.h>

//  Bytes available before a payload: the longest WebSocket server frame header (10) and
//  the longest HTTP chunk-size line (16 hex digits + CRLF) both fit (the reference count
//  lives before them).
#define WBUF_HEADROOM 24
//  Bytes available after it: a chunk's trailing CRLF, and a NUL.
#define WBUF_TAILROOM 8

//  A payload of len bytes (contents undefined). NULL on failure.
//  Caller owns return value: free with wbuf_free, or pass it to a queue that takes it.
char *wbuf_alloc(size_t len);
//  Grow or shrink a payload nobody else holds, keeping its contents and its room. NULL on
//  failure (the old payload is still valid then).
char *wbuf_realloc(char *payload, size_t len);
//  Take one more reference to payload; returns it.
char *wbuf_ref(char *payload);
//  A payload holding a copy of data. NULL on failure.
char *wbuf_dup(const void *data, size_t len);
//  Drop a reference; the last one frees the payload.
void wbuf_free(char *payload);

#endif
