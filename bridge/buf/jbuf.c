/*  jbuf - JSON text builder with LWS_PRE headroom. */
#include "jbuf.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

void jbuf_init(jbuf_t *b)
{
    memset(b, 0, sizeof *b);
}

void jbuf_free(jbuf_t *b)
{
    free(b->raw);
    memset(b, 0, sizeof *b);
}

static bool s_reserve(jbuf_t *b, size_t more)
{
    if (b->failed) return false;
    if (b->len + more + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1) cap *= 2;
    char *grown = realloc(b->raw, LWS_PRE + cap);
    if (!grown) {
        b->failed = true;
        return false;
    }
    b->raw = grown;
    b->cap = cap;
    return true;
}

void jbuf_reserve(jbuf_t *b, size_t more)
{
    s_reserve(b, more);
}

const char *jbuf_text(const jbuf_t *b)
{
    if (b->failed) return NULL;
    return b->raw ? b->raw + LWS_PRE : "";
}

void jbuf_add(jbuf_t *b, const void *data, size_t len)
{
    if (!s_reserve(b, len)) return;
    memcpy(b->raw + LWS_PRE + b->len, data, len);
    b->len += len;
    b->raw[LWS_PRE + b->len] = '\0';
}

void jbuf_adds(jbuf_t *b, const char *text)
{
    jbuf_add(b, text, strlen(text));
}

static int s_dump_cb(const char *data, size_t size, void *arg)
{
    jbuf_add(arg, data, size);
    return ((jbuf_t *) arg)->failed ? -1 : 0;
}

void jbuf_add_json(jbuf_t *b, const json_t *value)
{
    if (!value) {
        jbuf_adds(b, "null");
        return;
    }
    if (json_dump_callback(value, s_dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY) != 0) b->failed = true;
}

void jbuf_add_string(jbuf_t *b, const char *s, size_t len)
{
    json_t *str = json_stringn_nocheck(s ? s : "", s ? len : 0);
    jbuf_add_json(b, str);
    json_decref(str);
}

void jbuf_add_raw(jbuf_t *b, jraw_t raw)
{
    jbuf_add(b, raw.p, raw.len);
}

char *jbuf_take(jbuf_t *b, size_t *len)
{
    if (b->failed || !s_reserve(b, 0)) {
        jbuf_free(b);
        return NULL;
    }
    char *text = b->raw + LWS_PRE;
    *len = b->len;
    memset(b, 0, sizeof *b);
    return text;
}
