/*  ereq - the JSON bodies of E2B's /execute and POST /contexts, parsed and checked as
    E2B's FastAPI server does (pydantic's 422s).

    Pure: nothing is started or looked up, so every body a client can send is fuzzed
    (tests/fuzz/fuzz_ereq.c).
*/
#ifndef EREQ_H
#define EREQ_H

#include <jansson.h>
#include <stddef.h>

typedef enum {
    EREQ_EXECUTE,   //  {code, context_id?, language?, env_vars?}
    EREQ_CONTEXT,   //  {language?, cwd?}
} ereq_kind_t;

typedef struct {
    json_t *doc_;        //  private: the parsed body; the fields below borrow from it
    const char *code;    //  execute: never NULL
    const char *context_id, *language, *cwd;   //  NULL when absent or null
    json_t *env_vars;    //  execute: NULL, or an object of strings with valid names
} ereq_t;

//  Parse a body of len bytes. Returns 0; or 422 with *detail set to the whole reply body,
//  FastAPI's {"detail": [{type, loc, msg, input...}]} (caller owns); or 400 with the
//  text in why. Release with ereq_free in every case.
int ereq_parse(ereq_kind_t kind, const char *body, size_t len, ereq_t *out, json_t **detail,
               char *why, size_t size);
void ereq_free(ereq_t *self);

#endif
