/*  libFuzzer target: the multipart/form-data reader (bridge/envd/multipart.c), with an
    oracle: the body read whole and read in uneven pieces, as the upload path reads it
    (the unconsumed tail kept and appended to; the first byte sets the piece size and the
    data limit), must give the same transcript - the same parts, the same bytes, the same
    verdict. Also: nothing is consumed past the input, the tail kept stays bounded, and
    at the end of the body the reader never asks for more without consuming.

    Input: byte 0 the step, then the Content-Type up to the first '\n', then the body.
*/
#include "bridge/envd/multipart.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data;
    size_t len, cap;
} tr_t;

static void s_put(tr_t *t, const char *data, size_t len)
{
    if (t->len + len > t->cap) {
        t->cap = (t->len + len) * 2 + 64;
        t->data = realloc(t->data, t->cap);
        if (!t->data) abort();
    }
    memcpy(t->data + t->len, data, len);
    t->len += len;
}

static void s_event(tr_t *t, mp_event_t ev, const mp_out_t *out, const multipart_t *mp)
{
    char line[8192];
    int n = 0;
    switch (ev) {
    case MP_PART:
        n = snprintf(line, sizeof line, "\nP[%s][%d][%s][%s]\n", out->name, out->has_filename,
                     out->filename, out->content_type);
        break;
    case MP_DATA: s_put(t, out->data, out->len); return;  //  splits do not show
    case MP_PART_END: n = snprintf(line, sizeof line, "\nE\n"); break;
    case MP_DONE: n = snprintf(line, sizeof line, "\nD\n"); break;
    case MP_ERROR: n = snprintf(line, sizeof line, "\nX[%s]\n", mp->why ? mp->why : "?"); break;
    default: return;
    }
    s_put(t, line, (size_t) n);
}

//  Read body[0..len) delivered step bytes at a time (step 0: all at once).
static void s_read(const char *ct, const char *body, size_t len, size_t step, size_t max_data, tr_t *t)
{
    multipart_t mp;
    const char *why = NULL;
    if (multipart_init(&mp, ct, &why) != 0) {
        if (!why) abort();
        s_put(t, "init-fail", 9);
        return;
    }
    char *buf = malloc(len + 1);
    if (!buf) abort();
    size_t have = 0, fed = 0;
    for (;;) {
        size_t piece = step && len - fed > step ? step : len - fed;
        memcpy(buf + have, body + fed, piece);
        have += piece;
        fed += piece;
        bool eof = fed == len;
        for (;;) {
            size_t used;
            mp_out_t out;
            mp_event_t ev = multipart_next(&mp, buf, have, eof, max_data, &used, &out);
            if (used > have) abort();
            if (ev == MP_DATA && (out.len == 0 || out.len > max_data || out.data != buf || out.len != used))
                abort();
            s_event(t, ev, &out, &mp);
            memmove(buf, buf + used, have - used);
            have -= used;
            if (ev == MP_ERROR || ev == MP_DONE) goto out;
            if (ev == MP_MORE && !used) {
                if (eof) abort();  //  at the end it must decide
                break;
            }
        }
        //  What is kept back: a part head (16 KiB) or a possible delimiter, plus a piece.
        if (have > 16 * 1024 + 100 + piece) abort();
    }
out:
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t step = 1 + data[0] % 13;
    const char *rest = (const char *) data + 1;
    size_t rlen = size - 1;
    const char *nl = memchr(rest, '\n', rlen < 300 ? rlen : 300);
    if (!nl) return 0;
    char ct[301];
    memcpy(ct, rest, (size_t) (nl - rest));
    ct[nl - rest] = '\0';
    const char *body = nl + 1;
    size_t blen = rlen - (size_t) (nl - rest) - 1;
    tr_t whole = {0}, pieces = {0};
    s_read(ct, body, blen, 0, 1 << 20, &whole);
    s_read(ct, body, blen, step, step + 3, &pieces);
    if (whole.len != pieces.len || (whole.len && memcmp(whole.data, pieces.data, whole.len) != 0)) abort();
    free(whole.data);
    free(pieces.data);
    return 0;
}
