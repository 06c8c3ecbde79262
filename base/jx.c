/*  jx - typed jansson accessors. */
#include "jx.h"
#include "kberr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_lookup(json_t *obj, const char *key, json_t **value, bool optional)
{
    *value = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (*value == NULL || json_is_null(*value)) {
        *value = NULL;
        return optional ? KB_OK : KB_EMISSING;
    }
    return KB_OK;
}

int jx_get_str(json_t *obj, const char *key, const char **out, bool optional)
{
    json_t *v;
    int rc = s_lookup(obj, key, &v, optional);
    if (rc || !v) return rc;
    if (!json_is_string(v)) return KB_ETYPE;
    *out = json_string_value(v);
    return KB_OK;
}

int jx_get_strn(json_t *obj, const char *key, const char **out, size_t *len, bool optional)
{
    json_t *v;
    int rc = s_lookup(obj, key, &v, optional);
    if (rc || !v) return rc;
    if (!json_is_string(v)) return KB_ETYPE;
    *out = json_string_value(v);
    *len = json_string_length(v);
    return KB_OK;
}

int jx_get_int(json_t *obj, const char *key, int64_t *out, bool optional)
{
    json_t *v;
    int rc = s_lookup(obj, key, &v, optional);
    if (rc || !v) return rc;
    if (!json_is_integer(v)) return KB_ETYPE;
    *out = (int64_t) json_integer_value(v);
    return KB_OK;
}

int jx_get_bool(json_t *obj, const char *key, bool *out, bool optional)
{
    json_t *v;
    int rc = s_lookup(obj, key, &v, optional);
    if (rc || !v) return rc;
    if (!json_is_boolean(v)) return KB_ETYPE;
    *out = json_is_true(v);
    return KB_OK;
}

int jx_get_obj(json_t *obj, const char *key, json_t **out, bool optional)
{
    json_t *v;
    int rc = s_lookup(obj, key, &v, optional);
    if (rc || !v) return rc;
    if (!json_is_object(v)) return KB_ETYPE;
    *out = v;
    return KB_OK;
}

int jx_get_arr(json_t *obj, const char *key, json_t **out, bool optional)
{
    json_t *v;
    int rc = s_lookup(obj, key, &v, optional);
    if (rc || !v) return rc;
    if (!json_is_array(v)) return KB_ETYPE;
    *out = v;
    return KB_OK;
}

const char *jx_describe(int err, const char *key, const char *type, char *buf, size_t size)
{
    if (err == KB_EMISSING)
        snprintf(buf, size, "field '%s' is required", key);
    else if (err == KB_ETYPE)
        snprintf(buf, size, "field '%s' must be %s", key, type);
    else
        snprintf(buf, size, "field '%s': %s", key, kb_strerror(err));
    return buf;
}

json_t *jx_loadb(const char *data, size_t len, json_error_t *error)
{
    json_error_t local;
    if (!error) error = &local;
    //  A raw NUL byte is never JSON (inside a string it must be written \u0000), but
    //  jansson skips one right after a number or a literal: `{"n":1<NUL>}` would load, and
    //  kbridge's own scanner (jraw), which refuses it, would disagree with it.
    const char *nul = data ? memchr(data, '\0', len) : NULL;
    if (nul) {
        snprintf(error->text, sizeof error->text, "a NUL byte outside a string escape");
        error->position = (int) (nul - data);
        return NULL;
    }
    json_t *value = json_loadb(data, len, JSON_ALLOW_NUL, error);
    //  jansson refuses integers beyond int64; Python emits them freely. Retry once with
    //  them decoded as reals rather than losing the whole message.
    if (!value && strstr(error->text, "too big"))
        value = json_loadb(data, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
    //  jansson quotes the bytes it stopped at ("near '...'"), cut at its buffer's end:
    //  invalid or truncated UTF-8 there would make the reason itself unfit for a JSON
    //  reply (json_pack refuses it, and the reply was lost). Non-ASCII bytes become '?'.
    if (!value)
        for (char *c = error->text; *c; c++)
            if ((unsigned char) *c >= 0x80 || (unsigned char) *c < 0x20) *c = '?';
    return value;
}

char *jx_dumps(const json_t *value, bool ascii, size_t *len)
{
    size_t flags = JSON_COMPACT | JSON_ENCODE_ANY | (ascii ? JSON_ENSURE_ASCII : 0);
    size_t need = json_dumpb(value, NULL, 0, flags);
    if (need == 0) return NULL;
    char *out = malloc(need + 1);
    if (!out) return NULL;
    json_dumpb(value, out, need, flags);
    out[need] = '\0';
    if (len) *len = need;
    return out;
}
