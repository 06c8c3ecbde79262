/*  libFuzzer target: HTTP/1.1 heads from clients (and from upstream servers, for the port
    proxy). The first byte picks request or response; the rest is the bytes as they came
    off the socket, fed through head detection, parsing and body framing, then the
    chunked decoder over whatever follows the head.
*/
#include "bridge/http/hchunk.h"
#include "bridge/http/hparse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void s_sink(const char *data, size_t len, void *arg)
{
    //  Touch every byte so ASan sees a read past the span.
    volatile char x = 0;
    for (size_t i = 0; i < len; i++) x ^= data[i];
    (void) x;
    (void) arg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    bool response = data[0] & 1;
    const char *in = (const char *) data + 1;
    size_t len = size - 1;
    size_t scanned = 0;
    //  Detection in two steps, as bytes trickle in.
    long n = hparse_head_length(in, len / 2, 65536, &scanned);
    if (n == 0) n = hparse_head_length(in, len, 65536, &scanned);
    if (n <= 0) return 0;
    hhead_t head;
    char why[200];
    hbody_t framing;
    uint64_t length;
    if (response) {
        if (hparse_response(in, (size_t) n, &head, why, sizeof why) == 0)
            hparse_response_body(&head, "GET", &framing, &length);
        else
            framing = HBODY_NONE;
    } else {
        if (hparse_request(in, (size_t) n, &head, why, sizeof why) == 0 &&
            hparse_request_body(&head, &framing, &length, why, sizeof why) == 0) {
            hparse_keep_alive(&head);
            hparse_header(&head, "host");
            hparse_header_has_token(&head, "connection", "upgrade");
        } else {
            framing = HBODY_NONE;
        }
    }
    hparse_free(&head);
    if (framing == HBODY_CHUNKED) {
        hchunk_t chunk;
        hchunk_init(&chunk);
        const char *body = in + n;
        size_t left = len - (size_t) n;
        //  In uneven pieces, to exercise every state boundary.
        size_t step = 1 + (data[0] >> 1) % 7;
        while (left && !chunk.done && !chunk.failed) {
            size_t piece = left < step ? left : step;
            long used = hchunk_feed(&chunk, body, piece, s_sink, NULL);
            if (used < 0) break;
            body += used;
            left -= (size_t) used;
            if ((size_t) used < piece && !chunk.done) break;
        }
    }
    return 0;
}
