/*  hresp - where one HTTP/1.1 response from an upstream server (a proxy's) ends: its head
    is parsed and its body delimited as the bytes pass through, without copying or
    decoding them. The server is not trusted: a head is bounded (max_head bytes), must
    parse strictly (hparse.h), and a chunked body that breaks the coding is an error.

    Interim 1xx answers (100 Continue, 103 Early Hints) come as heads of their own before
    the final one; 101 (an upgrade nobody asked for here) is an error. A body that is
    neither chunked nor of a known length runs until the server closes (hresp_eof says
    whether the close ended it cleanly).

    No I/O and no buffering: the caller keeps bytes not yet used (an incomplete head) and
    offers them again with more.
*/
#ifndef HRESP_H
#define HRESP_H

#include "hparse.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _hresp_t hresp_t;

typedef enum {
    HRESP_MORE,   //  nothing used: the head is not complete (offer it again with more)
    HRESP_HEAD,   //  a head was used (hresp_head); interim if hresp_interim
    HRESP_BODY,   //  body bytes as sent (chunk framing included)
    HRESP_ERROR,  //  malformed or too large (hresp_why); nothing more is read
} hresp_event_t;

//  max_head: the most bytes a head may take. Caller owns return value.
hresp_t *hresp_new(size_t max_head);
void hresp_destroy(hresp_t **self_p);

//  Expect the response to a request with method (HEAD responses have no body).
void hresp_start(hresp_t *self, const char *method);

//  Read from data[0..len): returns how many bytes were used and what they were (*ev).
//  After a head or the last body bytes, hresp_done says whether the response is over.
size_t hresp_next(hresp_t *self, const char *data, size_t len, hresp_event_t *ev);

//  The last head read (interim or final), until the next hresp_next or hresp_start.
const hhead_t *hresp_head(const hresp_t *self);
bool hresp_interim(const hresp_t *self);
//  The final head's framing (HBODY_UNTIL_CLOSE: until the server closes).
hbody_t hresp_framing(const hresp_t *self);
//  The whole response (final head and body) has been read.
bool hresp_done(const hresp_t *self);
//  The server closed: returns true if that ends the response (a body until close).
bool hresp_eof(hresp_t *self);
//  What was wrong after HRESP_ERROR (static text).
const char *hresp_why(const hresp_t *self);

#endif
