/*  libFuzzer target: the chunked transfer decoder (bridge/http/hchunk.c) on its own, with
    an oracle: the body decoded in one call and decoded in uneven pieces (the first byte
    sets their size) must agree - the same data, the same verdict, the same end. A
    decoder whose answer depends on how TCP split the bytes is a smuggling risk.
*/
#include "bridge/http/hchunk.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data;
    size_t len;
} acc_t;

static void s_collect(const char *data, size_t len, void *arg)
{
    acc_t *a = arg;
    memcpy(a->data + a->len, data, len);  //  never more than the input holds
    a->len += len;
}

//  Decode in[0..len) in pieces of step; returns the bytes used (-1 on failure).
static long s_decode(const char *in, size_t len, size_t step, acc_t *acc, hchunk_t *c)
{
    hchunk_init(c);
    size_t at = 0;
    while (at < len && !c->done) {
        size_t piece = len - at < step ? len - at : step;
        long used = hchunk_feed(c, in + at, piece, s_collect, acc);
        if (used < 0) return -1;
        if ((size_t) used > piece) abort();
        at += (size_t) used;
        if ((size_t) used < piece && !c->done) abort();  //  only the end leaves bytes over
    }
    return (long) at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t step = 1 + data[0] % 11;
    size_t len = size - 1;
    char *in = malloc(len ? len : 1);
    acc_t whole = {malloc(len + 1), 0}, pieces = {malloc(len + 1), 0};
    if (!in || !whole.data || !pieces.data) abort();
    memcpy(in, data + 1, len);
    hchunk_t a, b;
    long na = s_decode(in, len, len ? len : 1, &whole, &a);
    long nb = s_decode(in, len, step, &pieces, &b);
    if (na != nb || a.done != b.done || a.failed != b.failed) abort();
    if (!a.failed && (whole.len != pieces.len || memcmp(whole.data, pieces.data, whole.len) != 0))
        abort();
    if (a.failed && (!a.why || !b.why || strcmp(a.why, b.why) != 0)) abort();
    //  A done body holds less data than the coding that carried it.
    if (a.done && whole.len >= (size_t) na) abort();
    free(in);
    free(whole.data);
    free(pieces.data);
    return 0;
}
