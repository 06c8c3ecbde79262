/*  libFuzzer target: the upstream response reader (bridge/http/hresp.c), which the port
    proxy runs on whatever a server inside a sandbox sends. The input is a stream of
    responses on one kept-alive connection; the first byte picks the request method (HEAD
    or GET) and the size of the pieces the bytes arrive in. Oracle: read whole and read in
    pieces (unused bytes kept and offered again with the next piece, as hconn does) must
    give the same responses, the same body bytes and the same verdict - a reader whose
    answer depends on how TCP split the bytes is a smuggling risk (up to a failure, the body
    bytes passed on before it may differ) - and nothing may use
    more than it was given or hold a head past its limit.
*/
#include "bridge/http/hresp.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 1024

typedef struct {
    size_t heads, finals, body, ends;
    bool failed, eof_clean;
    size_t at;  //  bytes used
} trace_t;

static void s_read(const char *in, size_t len, size_t step, const char *method, trace_t *t)
{
    memset(t, 0, sizeof *t);
    hresp_t *r = hresp_new(MAX_HEAD);
    if (!r) abort();
    hresp_start(r, method);
    size_t avail = 0;  //  bytes arrived so far: in[t->at .. avail) is buffered
    while (!t->failed) {
        if (t->at == avail) {
            if (avail == len) break;
            avail = len - avail < step ? len : avail + step;
        }
        hresp_event_t ev;
        size_t n = hresp_next(r, in + t->at, avail - t->at, &ev);
        if (n > avail - t->at) abort();
        if (ev == HRESP_ERROR) {
            t->failed = true;
            break;
        }
        if (ev == HRESP_MORE) {
            if (n) abort();
            if (avail - t->at > MAX_HEAD) abort();  //  past the limit must have failed
            if (avail == len) break;
            avail = len - avail < step ? len : avail + step;
            continue;
        }
        t->at += n;
        if (ev == HRESP_HEAD) {
            t->heads++;
            if (!hresp_interim(r)) t->finals++;
        } else if (ev == HRESP_BODY) {
            t->body += n;
            if (!n && !hresp_done(r)) abort();  //  no progress without an end
        }
        if (hresp_done(r)) {
            t->ends++;
            hresp_start(r, method);
        }
    }
    if (!t->failed) t->eof_clean = hresp_eof(r);
    hresp_destroy(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *method = data[0] & 0x80 ? "HEAD" : "GET";
    size_t step = (data[0] & 0x7f) + 1;
    const char *in = (const char *) data + 1;
    size_t len = size - 1;
    trace_t whole, pieces;
    s_read(in, len, len ? len : 1, method, &whole);
    s_read(in, len, step, method, &pieces);
    //  Body bytes before a failure may differ: a piece passed on before the bad bytes came.
    if (whole.failed != pieces.failed || whole.heads != pieces.heads || whole.finals != pieces.finals ||
        whole.ends != pieces.ends)
        abort();
    if (!whole.failed && (whole.body != pieces.body || whole.at != pieces.at || whole.eof_clean != pieces.eof_clean))
        abort();
    return 0;
}
