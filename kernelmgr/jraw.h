/*  jraw - raw JSON fragments: locate, validate and copy values without decoding them.

    Kernel output arrives as JSON text; most of it (stream text, base64 images, HTML) is
    one long string that kbridge only has to pass on. Decoding it with jansson and
    encoding it again costs ~26 ms per MB on one core; locating it and checking it is a
    valid JSON string token costs well under 1 ms per MB. Everything structured and small
    still goes through jansson.

    The scanner trusts nothing: a span is returned only if it is a complete value, and
    jraw_string_valid() checks a string token fully (escapes, no raw control characters,
    well-formed UTF-8) before it is spliced into anything a client reads.
*/
#ifndef JRAW_H
#define JRAW_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  A value's bytes inside a larger JSON text (borrowed).
typedef struct {
    const char *p;
    size_t len;
} jraw_t;

//  The value of member key in the object text obj (top level only). Returns 0,
//  KB_ENOTFOUND if the key is absent, or KB_EPROTO if obj is not an object or malformed.
int jraw_member(jraw_t obj, const char *key, jraw_t *value);

//  The value of member key after walking the whole top level of obj (the last of duplicate
//  keys wins, as in jansson; nothing may follow the object but whitespace). Returns 0,
//  KB_ENOTFOUND, or KB_EPROTO if obj is not one well-formed object at the top level.
//  Nested values are delimited, not validated: for reading a few small fields of a
//  verified message without a jansson parse of all of it.
int jraw_member_last(jraw_t obj, const char *key, jraw_t *value);

//  Iterate the members of an object: start with *pos = 0; returns 1 with the key (raw
//  string token, quotes included) and value, 0 at the end, -1 if malformed.
int jraw_next(jraw_t obj, size_t *pos, jraw_t *key, jraw_t *value);

//  The first byte of a value: '"', '{', '[', 't', 'f', 'n', or a number's first char.
static inline char jraw_kind(jraw_t v)
{
    return v.len ? v.p[0] : '\0';
}

//  True if v is a complete, valid JSON string token: quotes, legal escapes (surrogate
//  escapes in pairs), no raw control characters, well-formed UTF-8.
bool jraw_string_valid(jraw_t v);

//  Write a valid JSON string token for a string token that is not: what is well formed is
//  kept, broken escapes, lone surrogates and bytes that are not UTF-8 become U+FFFD, raw
//  control characters are escaped. out must hold 6 * v.len + 2 bytes. Returns the length.
size_t jraw_sanitize_string(jraw_t v, char *out);

//  True if the raw key token equals key (keys with escapes are decoded to compare).
bool jraw_key_is(jraw_t key, const char *name);

//  True if v is a string token whose value is s (escaped forms are decoded to compare).
bool jraw_string_is(jraw_t v, const char *s);

//  A JSON integer token (-?(0|[1-9][0-9]*), no fraction or exponent) in int64_t range
//  into *out. Returns 0, or KB_EPROTO for anything else (jansson reads 1.0 and 1e3 as
//  reals, and refuses integers out of range).
int jraw_int(jraw_t v, int64_t *out);

//  Decode any value with jansson (for small values). Caller owns return value.
json_t *jraw_decode(jraw_t v);

//  Copy src (valid JSON text) into dst escaping every non-ASCII character as \uXXXX
//  (surrogate pairs above U+FFFF), as Python's json.dumps does by default. dst must hold
//  6 * len bytes. Returns the bytes written.
size_t jraw_to_ascii(const char *src, size_t len, char *dst);
//  Bytes jraw_to_ascii will write for src.
size_t jraw_ascii_len(const char *src, size_t len);

#endif
