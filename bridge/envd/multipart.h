/*  multipart - an incremental reader of multipart/form-data bodies (RFC 7578, RFC 2046),
    for uploads that stream to disk in constant memory.

    Pull-style: the caller offers the bytes it has not yet had consumed, and each call
    consumes some of them and reports one event - a part's head, a span of its data (a
    slice of the input, never copied), its end, the end of the body - or asks for more.
    Bytes that might begin a delimiter are left unconsumed until the next call can tell,
    so the caller keeps its unconsumed tail and appends to it (at most the boundary's
    length plus a few bytes stay behind).

    File names are kept whole, directories included (E2B's SDKs put the full path there)
    and the three escapes browsers and undici use are decoded: %22 ("), %0A and %0D.
    Limits: a part head of 16 KiB, a preamble of 1 MiB, a boundary of 70 bytes (RFC 2046).
    Fuzzed: tests/fuzz/fuzz_multipart.c.
*/
#ifndef MULTIPART_H
#define MULTIPART_H

#include <stdbool.h>
#include <stddef.h>

#define MULTIPART_NAME_MAX 128
#define MULTIPART_FILENAME_MAX 4096

typedef enum {
    MP_MORE,      //  more input is needed (some may have been consumed)
    MP_PART,      //  a part begins: its head is in the part fields
    MP_DATA,      //  data of the current part: data, len (a span of the input)
    MP_PART_END,  //  the current part is complete
    MP_DONE,      //  the closing delimiter: the body is complete
    MP_ERROR      //  malformed: why says what (the reader stays failed)
} mp_event_t;

typedef struct {
    //  MP_PART
    char name[MULTIPART_NAME_MAX];          //  the form field's name ("" if none)
    bool has_filename;
    char filename[MULTIPART_FILENAME_MAX];  //  decoded
    char content_type[128];                 //  "" if none
    //  MP_DATA
    const char *data;
    size_t len;
} mp_out_t;

//  Fields are private to multipart.c.
typedef struct {
    char delim_[80];    //  "\r\n--" boundary
    size_t dlen_;
    int state_;
    size_t preamble_;
    const char *why;    //  after MP_ERROR: static text
} multipart_t;

//  Start reading a body whose Content-Type header is content_type. Returns 0, or -1 when
//  it is not multipart/form-data with a usable boundary (why says so).
int multipart_init(multipart_t *mp, const char *content_type, const char **why);

//  Read from in[0..len), which starts with the first byte not yet consumed; eof: nothing
//  more will come. At most max_data bytes of data are reported at once (> 0). Sets
//  *used (bytes consumed) and returns the event (out filled for MP_PART and MP_DATA).
mp_event_t multipart_next(multipart_t *mp, const char *in, size_t len, bool eof, size_t max_data,
                          size_t *used, mp_out_t *out);

#endif
