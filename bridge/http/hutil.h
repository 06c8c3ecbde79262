/*  hutil - small parsers of request text: percent-decoding, query parameters, Host and
    Origin values. Each is strict and bounded, and fuzzed (tests/fuzz/fuzz_hutil.c).
*/
#ifndef HUTIL_H
#define HUTIL_H

#include <stdbool.h>
#include <stddef.h>

//  Percent-decode in[0..len) into out (size bytes, NUL-terminated); with plus, '+' is a
//  space (query strings). Returns the decoded length, or a negative KB_ code: KB_EINVAL
//  for a malformed escape or a decoded NUL, KB_ETOOBIG when out is too small.
long hutil_decode(const char *in, size_t len, bool plus, char *out, size_t size);

//  The value of parameter name in a query string ("a=1&b=2", no '?'), decoded, into out.
//  A parameter without '=' has the value "". Returns 0, KB_ENOTFOUND, KB_EINVAL
//  (malformed escape) or KB_ETOOBIG.
int hutil_query(const char *query, const char *name, char *out, size_t size);

//  Split a Host value "name[:port]" or "[v6]:port" into name (no brackets, lowercased)
//  and port (0 when absent). Returns 0, or KB_EINVAL for something that is not a host.
int hutil_host(const char *value, char *name, size_t size, int *port);

//  Split an Origin "scheme://host[:port]" into scheme and host[:port] (lowercased).
//  Returns 0, or KB_EINVAL ("null", or not of that shape).
int hutil_origin(const char *value, char *scheme, size_t ssize, char *hostport, size_t hsize);

//  For the access log: target with the values of token-bearing query parameters
//  (token, signature) replaced by "...". Into out, truncated to fit.
void hutil_redact_target(const char *target, char *out, size_t size);

#endif
