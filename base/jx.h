/*  jx - typed accessors over jansson objects, used at every JSON boundary.

    In the manner of mosquitto's json_get_string(): each accessor looks up key in obj and
    returns KB_OK with *out set, KB_EMISSING if the key is absent (or JSON null) and not
    optional, or KB_ETYPE if it has the wrong type. An absent optional key returns KB_OK
    and leaves *out untouched, so callers preset defaults. All returned pointers are
    borrowed from obj and live as long as obj does.
*/
#ifndef JX_H
#define JX_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

int jx_get_str(json_t *obj, const char *key, const char **out, bool optional);
//  As jx_get_str, also returning the byte length (strings may hold NUL).
int jx_get_strn(json_t *obj, const char *key, const char **out, size_t *len, bool optional);
int jx_get_int(json_t *obj, const char *key, int64_t *out, bool optional);
int jx_get_bool(json_t *obj, const char *key, bool *out, bool optional);
int jx_get_obj(json_t *obj, const char *key, json_t **out, bool optional);
int jx_get_arr(json_t *obj, const char *key, json_t **out, bool optional);

//  Formats "field 'key' is required" / "field 'key' must be a <type>" for err into buf.
//  Returns buf.
const char *jx_describe(int err, const char *key, const char *type, char *buf, size_t size);

//  Parse a JSON document from bytes. Embedded \u0000 is accepted (kernel output may hold
//  it); integers beyond int64 are decoded as reals rather than failing. Returns NULL on
//  error with a message in *error if error is not NULL.
//  Caller owns return value.
json_t *jx_loadb(const char *data, size_t len, json_error_t *error);

//  Serialize compactly. ascii=true escapes everything above 0x7F as \uXXXX, as Python's
//  json.dumps does. Caller owns return value (free()).
char *jx_dumps(const json_t *value, bool ascii, size_t *len);

#endif
