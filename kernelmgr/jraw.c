/*  jraw - locate, validate and copy JSON values without decoding them. */
#include "jraw.h"
#include "../base/kberr.h"

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

static const char *s_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

//  p at an opening quote: returns one past the closing quote, or NULL.
static const char *s_skip_string(const char *p, const char *end)
{
    p++;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t) (end - p));
        if (!q) return NULL;
        //  The quote closes the string unless preceded by an odd number of backslashes.
        const char *b = q;
        while (b > p && b[-1] == '\\') b--;
        if (((q - b) & 1) == 0) return q + 1;
        p = q + 1;
    }
    return NULL;
}

//  One past the end of the value starting at p, or NULL.
static const char *s_skip_value(const char *p, const char *end)
{
    if (p >= end) return NULL;
    if (*p == '"') return s_skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            char c = *p;
            if (c == '"') {
                p = s_skip_string(p, end);
                if (!p) return NULL;
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    const char *start = p;
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' &&
           *p != '\r' && *p != '\t')
        p++;
    return p > start ? p : NULL;
}

int jraw_next(jraw_t obj, size_t *pos, jraw_t *key, jraw_t *value)
{
    const char *end = obj.p + obj.len;
    const char *p = obj.p + *pos;
    if (*pos == 0) {
        p = s_ws(p, end);
        if (p >= end || *p != '{') return -1;
        p++;
    }
    p = s_ws(p, end);
    if (p < end && *p == ',') p = s_ws(p + 1, end);
    if (p < end && *p == '}') {
        *pos = (size_t) (p + 1 - obj.p);
        return 0;
    }
    if (p >= end || *p != '"') return -1;
    const char *kend = s_skip_string(p, end);
    if (!kend) return -1;
    key->p = p;
    key->len = (size_t) (kend - p);
    p = s_ws(kend, end);
    if (p >= end || *p != ':') return -1;
    p = s_ws(p + 1, end);
    const char *vend = s_skip_value(p, end);
    if (!vend) return -1;
    value->p = p;
    value->len = (size_t) (vend - p);
    p = s_ws(vend, end);
    if (p >= end || (*p != ',' && *p != '}')) return -1;
    *pos = (size_t) (p - obj.p);
    return 1;
}

bool jraw_key_is(jraw_t key, const char *name)
{
    size_t n = strlen(name);
    if (key.len == n + 2 && memcmp(key.p + 1, name, n) == 0) return true;
    if (!memchr(key.p, '\\', key.len)) return false;
    json_t *k = jraw_decode(key);
    bool same = json_is_string(k) && json_string_length(k) == n && memcmp(json_string_value(k), name, n) == 0;
    json_decref(k);
    return same;
}

int jraw_member(jraw_t obj, const char *key, jraw_t *value)
{
    size_t pos = 0;
    jraw_t k, v;
    int rc;
    while ((rc = jraw_next(obj, &pos, &k, &v)) == 1)
        if (jraw_key_is(k, key)) {
            *value = v;
            return KB_OK;
        }
    return rc < 0 ? KB_EPROTO : KB_ENOTFOUND;
}

int jraw_member_last(jraw_t obj, const char *key, jraw_t *value)
{
    size_t pos = 0;
    jraw_t k, v;
    int rc;
    bool found = false;
    while ((rc = jraw_next(obj, &pos, &k, &v)) == 1)
        if (jraw_key_is(k, key)) {
            *value = v;
            found = true;
        }
    if (rc < 0) return KB_EPROTO;
    if (s_ws(obj.p + pos, obj.p + obj.len) != obj.p + obj.len) return KB_EPROTO;
    return found ? KB_OK : KB_ENOTFOUND;
}

bool jraw_string_is(jraw_t v, const char *s)
{
    //  s_skip_value delimits a token that starts with a quote at its closing quote.
    return v.len >= 2 && v.p[0] == '"' && v.p[v.len - 1] == '"' && jraw_key_is(v, s);
}

int jraw_int(jraw_t v, int64_t *out)
{
    const char *p = v.p, *end = v.p + v.len;
    bool neg = p < end && *p == '-';
    if (neg) p++;
    if (p >= end || *p < '0' || *p > '9' || (*p == '0' && end - p > 1)) return KB_EPROTO;
    //  Accumulated as a negative number so INT64_MIN fits.
    int64_t n = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return KB_EPROTO;
        int d = *p - '0';
        if (n < (INT64_MIN + d) / 10) return KB_EPROTO;
        n = n * 10 - d;
    }
    if (!neg && n == INT64_MIN) return KB_EPROTO;
    *out = neg ? n : -n;
    return KB_OK;
}

static int s_hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

//  The code unit of a \uXXXX escape at p, or -1 if there is none.
static int s_unit(const unsigned char *p, const unsigned char *end)
{
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return -1;
    int v = 0;
    for (int i = 2; i < 6; i++) {
        int h = s_hexval((char) p[i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

//  True if none of the 8 bytes needs a closer look: all in 0x20..0x7F except '"' and '\\'.
static inline bool s_plain8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t control = (w - ones * 0x20) & ~w;  //  bytes below 0x20 (or >= 0x80, caught below)
    uint64_t quote = w ^ (ones * '"'), slash = w ^ (ones * '\\');
    uint64_t zero_quote = (quote - ones) & ~quote, zero_slash = (slash - ones) & ~slash;
    return ((control | zero_quote | zero_slash | w) & high) == 0;
}

#ifdef __SSE2__
//  True if none of the 32 bytes needs a closer look (as s_plain8). Signed compares: bytes
//  from 0x80 count as below 0x20, and UTF-8 does need the closer look.
static inline bool s_plain32(const unsigned char *p)
{
    const __m128i space = _mm_set1_epi8(0x20), quote = _mm_set1_epi8('"'),
                  slash = _mm_set1_epi8('\\');
    __m128i a = _mm_loadu_si128((const __m128i *) p), b = _mm_loadu_si128((const __m128i *) (p + 16));
    __m128i bad = _mm_or_si128(
        _mm_or_si128(_mm_cmplt_epi8(a, space), _mm_cmplt_epi8(b, space)),
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(b, quote)),
                     _mm_or_si128(_mm_cmpeq_epi8(a, slash), _mm_cmpeq_epi8(b, slash))));
    return _mm_movemask_epi8(bad) == 0;
}
#endif

bool jraw_string_valid(jraw_t v)
{
    const unsigned char *p = (const unsigned char *) v.p, *end = p + v.len;
    if (v.len < 2 || p[0] != '"' || end[-1] != '"') return false;
    p++;
    end--;
    while (p < end) {
        //  Most text is plain ASCII (base64 images all of it): take it 32 bytes at a time
        //  where SSE2 is there (x86-64 always), then eight.
#ifdef __SSE2__
        while (end - p >= 32 && s_plain32(p)) p += 32;
#endif
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (!s_plain8(w)) break;
            p += 8;
        }
        if (p >= end) break;
        unsigned char c = *p;
        if (c >= 0x20 && c < 0x80 && c != '\\' && c != '"') {
            p++;
        } else if (c == '\\') {
            if (p + 1 >= end) return false;
            char e = (char) p[1];
            if (e == 'u') {
                int unit = s_unit(p, end);
                if (unit < 0) return false;
                //  Surrogates must pair: a lone one is legal syntax that strict parsers
                //  (jansson among them) refuse.
                if (unit >= 0xDC00 && unit <= 0xDFFF) return false;
                if (unit >= 0xD800 && unit <= 0xDBFF) {
                    int low = s_unit(p + 6, end);
                    if (low < 0xDC00 || low > 0xDFFF) return false;
                    p += 6;
                }
                p += 6;
            } else if (e && strchr("\"\\/bfnrt", e)) {
                p += 2;
            } else {
                return false;
            }
        } else if (c < 0x20 || c == '"') {
            return false;  //  raw control character, or a quote that should have ended it
        } else {
            //  UTF-8: lead byte, then 1-3 continuation bytes; no overlongs or surrogates.
            int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : -1;
            if (n < 0 || c > 0xF4 || p + n >= end) return false;
            for (int i = 1; i <= n; i++)
                if ((p[i] & 0xC0) != 0x80) return false;
            if (c == 0xE0 && p[1] < 0xA0) return false;
            if (c == 0xED && p[1] >= 0xA0) return false;
            if (c == 0xF0 && p[1] < 0x90) return false;
            if (c == 0xF4 && p[1] >= 0x90) return false;
            p += n + 1;
        }
    }
    return true;
}

//  Length of the UTF-8 sequence at p if it is well formed, else 0.
static int s_utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : -1;
    if (n < 0 || c > 0xF4 || p + n >= end) return 0;
    for (int i = 1; i <= n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0) || (c == 0xF0 && p[1] < 0x90) ||
        (c == 0xF4 && p[1] >= 0x90))
        return 0;
    return n + 1;
}

size_t jraw_sanitize_string(jraw_t v, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *) v.p, *end = p + v.len;
    char *o = out;
    if (v.len >= 2 && p[0] == '"' && end[-1] == '"') {
        p++;
        end--;
    }
    *o++ = '"';
    while (p < end) {
        unsigned char c = *p;
        if (c == '\\') {
            int unit = s_unit(p, end);
            if (unit >= 0xD800 && unit <= 0xDBFF) {
                int low = s_unit(p + 6, end);
                if (low >= 0xDC00 && low <= 0xDFFF) {
                    memcpy(o, p, 12);
                    o += 12;
                    p += 12;
                    continue;
                }
            }
            if (unit >= 0 && !(unit >= 0xD800 && unit <= 0xDFFF)) {
                memcpy(o, p, 6);
                o += 6;
                p += 6;
            } else if (unit >= 0) {
                memcpy(o, "\\ufffd", 6);
                o += 6;
                p += 6;
            } else if (p + 1 < end && p[1] && strchr("\"\\/bfnrt", (char) p[1])) {
                memcpy(o, p, 2);
                o += 2;
                p += 2;
            } else {
                //  A broken escape: only the backslash is lost, what follows is text.
                memcpy(o, "\\ufffd", 6);
                o += 6;
                p++;
            }
        } else if (c == '"' || c < 0x20) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 0xF];
            p++;
        } else if (c < 0x80) {
            *o++ = (char) c;
            p++;
        } else {
            int n = s_utf8_len(p, end);
            if (n) {
                memcpy(o, p, (size_t) n);
                o += n;
                p += n;
            } else {
                memcpy(o, "\\ufffd", 6);
                o += 6;
                p++;
            }
        }
    }
    *o++ = '"';
    return (size_t) (o - out);
}

json_t *jraw_decode(jraw_t v)
{
    return json_loadb(v.p, v.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

static unsigned s_codepoint(const unsigned char *p, int *n)
{
    unsigned c = p[0];
    if (c < 0xE0) {
        *n = 2;
        return ((c & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (c < 0xF0) {
        *n = 3;
        return ((c & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *n = 4;
    return ((c & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

size_t jraw_ascii_len(const char *src, size_t len)
{
    const unsigned char *p = (const unsigned char *) src, *end = p + len;
    size_t out = 0;
    while (p < end) {
        if (*p < 0x80) {
            out++;
            p++;
            continue;
        }
        int n;
        unsigned cp = s_codepoint(p, &n);
        out += cp >= 0x10000 ? 12 : 6;
        p += n;
    }
    return out;
}

size_t jraw_to_ascii(const char *src, size_t len, char *dst)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *) src, *end = p + len;
    char *o = dst;
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && *p < 0x80) p++;
        memcpy(o, run, (size_t) (p - run));
        o += p - run;
        if (p >= end) break;
        int n;
        unsigned cp = s_codepoint(p, &n);
        p += n;
        unsigned units[2];
        int count = 1;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            units[0] = 0xD800 + (cp >> 10);
            units[1] = 0xDC00 + (cp & 0x3FF);
            count = 2;
        } else {
            units[0] = cp;
        }
        for (int i = 0; i < count; i++) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = hex[(units[i] >> 12) & 0xF];
            *o++ = hex[(units[i] >> 8) & 0xF];
            *o++ = hex[(units[i] >> 4) & 0xF];
            *o++ = hex[units[i] & 0xF];
        }
    }
    return (size_t) (o - dst);
}
