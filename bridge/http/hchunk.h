/*  hchunk - incremental decoder of the chunked transfer coding (RFC 9112 7.1).

    Fed the body bytes in whatever pieces they arrive, it hands back the data in place
    (spans of the input) and says when the last chunk and the trailer have been read.
    Chunk extensions and trailer fields are read and ignored, within limits. In
    passthrough use (a proxy) the caller forwards the input bytes unchanged and only
    needs to know where the body ends.
*/
#ifndef HCHUNK_H
#define HCHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int state_;
    uint64_t left_;    //  data bytes left in the current chunk
    size_t line_;      //  bytes of the current size/extension/trailer line
    int digits_;
    bool done;         //  the last chunk and the trailer are in
    bool failed;
    const char *why;   //  after a failure: what was wrong (static text)
} hchunk_t;

void hchunk_init(hchunk_t *self);

//  Decode from in[0..len). Returns the number of input bytes used (the rest belongs to
//  the next message once done is set), or -1 on malformed input (failed, why). Data
//  found is reported through on_data (a span of in), which may be NULL.
long hchunk_feed(hchunk_t *self, const char *in, size_t len,
                 void (*on_data)(const char *data, size_t len, void *arg), void *arg);

#endif
