/*  hparse - HTTP/1.1 message heads: find where a head ends, parse a request or response
    head, and decide how its body is framed.

    Strict where a lenient parser would let two readers disagree about where a message
    ends (request smuggling): lines end in CRLF; header names are RFC 9110 tokens
    (underscores included: E2B's SDK sends lang_version); folded lines, a
    Content-Length that is not plain digits, two different Content-Lengths, and
    Transfer-Encoding together with Content-Length are errors; the only transfer coding
    accepted is chunked (anything else is 501). Nothing is allocated per header: the
    parsed head is one copy of the bytes, split in place.
*/
#ifndef HPARSE_H
#define HPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HPARSE_MAX_HEADERS 128

typedef struct {
    const char *name;  //  lowercased
    const char *value; //  surrounding whitespace trimmed
} hheader_t;

typedef struct {
    char *copy_;       //  private: the head's bytes, split in place
    //  request heads
    const char *method;
    const char *target;  //  as sent (origin-form "/path?query", or "*")
    //  response heads
    int status;
    const char *reason;
    int version_minor;   //  HTTP/1.<minor>: 0 or 1
    hheader_t headers[HPARSE_MAX_HEADERS];
    size_t nheaders;
} hhead_t;

typedef enum { HBODY_NONE = 0, HBODY_LENGTH = 1, HBODY_CHUNKED = 2, HBODY_UNTIL_CLOSE = 3 } hbody_t;

//  The length of the head at the start of data (through the empty line), 0 if it is not
//  complete yet, or -1 if max bytes went by without an end (431). scanned (may be NULL;
//  start at 0) remembers how far earlier calls on the same growing data looked.
long hparse_head_length(const char *data, size_t len, size_t max, size_t *scanned);

//  Parse a request head of len bytes (as measured by hparse_head_length). Returns 0, or
//  the HTTP status to refuse it with (400, 414, 431, 501, 505), a reason in why.
//  Release with hparse_free.
int hparse_request(const char *data, size_t len, hhead_t *head, char *why, size_t size);
//  Parse a response head (from an upstream server). Returns 0 or -1, a reason in why.
int hparse_response(const char *data, size_t len, hhead_t *head, char *why, size_t size);
void hparse_free(hhead_t *head);

//  The first value of header name (lowercase), or NULL. Borrowed from head.
const char *hparse_header(const hhead_t *head, const char *name);
//  True if a comma-separated header (Connection, Upgrade...) lists token, any case.
bool hparse_header_has_token(const hhead_t *head, const char *name, const char *token);

//  How a request's body is framed: *length is set for HBODY_LENGTH. Returns 0, or the
//  status to refuse with (400 malformed or conflicting lengths, 501 a transfer coding
//  other than chunked), a reason in why.
int hparse_request_body(const hhead_t *head, hbody_t *framing, uint64_t *length, char *why,
                        size_t size);
//  The same for a response to a request with method (HEAD and 1xx/204/304 have none).
int hparse_response_body(const hhead_t *head, const char *method, hbody_t *framing,
                         uint64_t *length);

//  Whether the connection stays open after this exchange (HTTP/1.1 unless "close";
//  HTTP/1.0 only with "keep-alive").
bool hparse_keep_alive(const hhead_t *head);

//  The standard reason phrase of a status ("Not Found"); "" if unknown.
const char *hparse_reason(int status);

#endif
