/*  envcheck - environment variables from clients. */
#include "envcheck.h"

#include <stdio.h>
#include <string.h>

envcheck_t envcheck(json_t *env, const char **bad_key, char *why, size_t size)
{
    *bad_key = NULL;
    if (!env) return ENVCHECK_OK;
    if (!json_is_object(env)) {
        snprintf(why, size, "environment variables must be an object of strings");
        return ENVCHECK_NOT_OBJECT;
    }
    const char *key;
    json_t *value;
    json_object_foreach(env, key, value)
    {
        *bad_key = key;
        if (!json_is_string(value)) {
            snprintf(why, size, "env_vars['%.64s'] must be a string", key);
            return ENVCHECK_NOT_STRING;
        }
        if (!*key || strchr(key, '=')) {
            snprintf(why, size, "env_vars['%.64s']: names must be non-empty, without '='", key);
            return ENVCHECK_BAD_NAME;
        }
        if (memchr(json_string_value(value), '\0', json_string_length(value))) {
            snprintf(why, size, "env_vars['%.64s']: values cannot hold NUL", key);
            return ENVCHECK_NUL_VALUE;
        }
    }
    *bad_key = NULL;
    return ENVCHECK_OK;
}
