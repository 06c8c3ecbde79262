/*  kutil - small helpers shared by kernelmgr and bridge: ids, clocks, strings. */
#ifndef KUTIL_H
#define KUTIL_H

#include <stddef.h>
#include <stdint.h>

//  Write a random (version 4) UUID, lowercase, into out (37 bytes with NUL).
void kb_uuid4(char out[37]);
//  Write the current UTC time as ISO-8601 with microseconds and 'Z' (as Python's
//  jupyter_client does) into out (32 bytes).
void kb_now_iso(char out[32]);
//  Monotonic milliseconds.
uint64_t kb_now_ms(void);
//  Random lowercase hex string of nbytes random bytes into out (2*nbytes+1).
void kb_random_hex(char *out, size_t nbytes);
//  strdup that returns NULL for NULL. Caller owns return value.
char *kb_strdup(const char *s);
//  True if s looks like a kernel id as Jupyter Server accepts it (\w+-\w+-\w+-\w+-\w+).
int kb_is_kernel_id(const char *s);

#endif
