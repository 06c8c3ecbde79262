/*  jbuf - JSON text builder in a wire buffer. */
#include "jbuf.h"
#include "wbuf.h"

#include <stdlib.h>
#include <string.h>

void jbuf_init(jbuf_t *b)
{
    memset(b, 0, sizeof *b);
}

void jbuf_free(jbuf_t *b)
{
    wbuf_free(b->text_);
    memset(b, 0, sizeof *b);
}

static bool s_reserve(jbuf_t *b, size_t more)
{
    if (b->failed) return false;
    if (b->len + more + 1 <= b->cap_) return true;
    size_t cap = b->cap_ ? b->cap_ : 256;
    while (cap < b->len + more + 1) cap *= 2;
    char *grown = wbuf_realloc(b->text_, cap);
    if (!grown) {
        b->failed = true;
        return false;
    }
    b->text_ = grown;
    b->cap_ = cap;
    return true;
}

void jbuf_reserve(jbuf_t *b, size_t more)
{
    s_reserve(b, more);
}

char *jbuf_space(jbuf_t *b, size_t max)
{
    return s_reserve(b, max) ? b->text_ + b->len : NULL;
}

void jbuf_commit(jbuf_t *b, size_t n)
{
    if (b->failed || !b->text_) return;
    b->len += n;
    b->text_[b->len] = '\0';
}

const char *jbuf_text(const jbuf_t *b)
{
    if (b->failed) return NULL;
    return b->text_ ? b->text_ : "";
}

void jbuf_add(jbuf_t *b, const void *data, size_t len)
{
    if (!s_reserve(b, len)) return;
    memcpy(b->text_ + b->len, data, len);
    b->len += len;
    b->text_[b->len] = '\0';
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
    char *text = b->text_;
    *len = b->len;
    memset(b, 0, sizeof *b);
    return text;
}
