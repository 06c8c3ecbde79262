/*  jbuf - a growable buffer for building JSON text in a wire buffer (wbuf.h), so the result
    can be framed and sent without another copy. Each event is serialized exactly once,
    into the memory that goes on the wire.
*/
#ifndef JBUF_H
#define JBUF_H

#include "../../kernelmgr/jraw.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

//  Fields are private to jbuf.c: use the functions. Zero-initialized (or jbuf_init) is empty.
typedef struct {
    char *text_;  //  a wbuf payload
    size_t len, cap_;
    bool failed;  //  an allocation failed; the text is incomplete
} jbuf_t;

void jbuf_init(jbuf_t *b);
void jbuf_free(jbuf_t *b);
//  The text so far (NUL-terminated), or NULL after a failed allocation.
const char *jbuf_text(const jbuf_t *b);
//  Make room for more bytes at once (avoids regrowing a large buffer step by step).
void jbuf_reserve(jbuf_t *b, size_t more);
//  Room to write up to max bytes in place (NULL after a failure); then jbuf_commit(n).
char *jbuf_space(jbuf_t *b, size_t max);
void jbuf_commit(jbuf_t *b, size_t n);
void jbuf_add(jbuf_t *b, const void *data, size_t len);
void jbuf_adds(jbuf_t *b, const char *text);
//  value serialized compactly (UTF-8), in one pass.
void jbuf_add_json(jbuf_t *b, const json_t *value);
//  A C string (len bytes) as a JSON string literal.
void jbuf_add_string(jbuf_t *b, const char *s, size_t len);
//  A raw fragment already known to be valid JSON.
void jbuf_add_raw(jbuf_t *b, jraw_t raw);
//  Take the text as a wire buffer (wbuf payload), or NULL after a failure. Caller owns
//  return value; b is left empty.
char *jbuf_take(jbuf_t *b, size_t *len);

#endif
