/*  envcheck - the one validation of environment variables that clients hand to any API
    (env_vars of an execution, a kernel, a process or a sandbox).

    Names must be non-empty, without '=' or NUL; values must be strings without NUL.
*/
#ifndef ENVCHECK_H
#define ENVCHECK_H

#include <jansson.h>
#include <stddef.h>

typedef enum {
    ENVCHECK_OK = 0,
    ENVCHECK_NOT_OBJECT,  //  env itself is not an object
    ENVCHECK_NOT_STRING,  //  a value is not a string
    ENVCHECK_BAD_NAME,    //  empty, or with '=' or NUL
    ENVCHECK_NUL_VALUE    //  a value holds NUL
} envcheck_t;

//  Check env (NULL is fine: no variables). Returns ENVCHECK_OK or the first problem, with
//  its key in *bad_key (borrowed from env) and a sentence in why.
envcheck_t envcheck(json_t *env, const char **bad_key, char *why, size_t size);

#endif
