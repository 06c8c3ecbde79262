/*  hutil - percent-decoding, query strings, Host and Origin. */
#include "hutil.h"
#include "../../base/kberr.h"

#include <ctype.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int s_hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long hutil_decode(const char *in, size_t len, bool plus, char *out, size_t size)
{
    if (size == 0) return KB_ETOOBIG;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= len) return KB_EINVAL;
            int h = s_hexval(in[i + 1]), l = s_hexval(in[i + 2]);
            if (h < 0 || l < 0) return KB_EINVAL;
            c = (char) (h * 16 + l);
            if (c == '\0') return KB_EINVAL;
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        } else if (c == '\0') {
            return KB_EINVAL;
        }
        if (o + 1 >= size) return KB_ETOOBIG;
        out[o++] = c;
    }
    out[o] = '\0';
    return (long) o;
}

int hutil_query(const char *query, const char *name, char *out, size_t size)
{
    if (!query) return KB_ENOTFOUND;
    size_t nlen = strlen(name);
    const char *p = query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t) (amp - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t) (eq - p) : plen;
        char key[256];
        long k = klen < sizeof key ? hutil_decode(p, klen, true, key, sizeof key) : KB_ETOOBIG;
        if (k >= 0 && (size_t) k == nlen && memcmp(key, name, nlen) == 0) {
            if (!eq) {
                if (size == 0) return KB_ETOOBIG;
                out[0] = '\0';
                return KB_OK;
            }
            long v = hutil_decode(eq + 1, plen - klen - 1, true, out, size);
            return v < 0 ? (int) v : KB_OK;
        }
        if (!amp) break;
        p = amp + 1;
    }
    return KB_ENOTFOUND;
}

int hutil_host(const char *value, char *name, size_t size, int *port)
{
    *port = 0;
    if (!value || !*value || size == 0) return KB_EINVAL;
    const char *end;
    const char *start = value;
    if (value[0] == '[') {
        end = strchr(value, ']');
        if (!end || end == value + 1) return KB_EINVAL;
        start = value + 1;
        for (const char *c = start; c < end; c++)
            if (!isxdigit((unsigned char) *c) && *c != ':' && *c != '.') return KB_EINVAL;
        const char *after = end + 1;
        if (*after == ':') {
            after++;
        } else if (*after) {
            return KB_EINVAL;
        } else {
            after = NULL;
        }
        if (after) {
            if (!*after || strlen(after) > 5) return KB_EINVAL;
            for (const char *c = after; *c; c++)
                if (!isdigit((unsigned char) *c)) return KB_EINVAL;
            *port = atoi(after);
            if (*port > 65535) return KB_EINVAL;
        }
    } else {
        const char *colon = strchr(value, ':');
        if (colon && strchr(colon + 1, ':')) return KB_EINVAL;  //  a bare IPv6 literal
        end = colon ? colon : value + strlen(value);
        if (colon) {
            const char *p = colon + 1;
            if (!*p || strlen(p) > 5) return KB_EINVAL;
            for (const char *c = p; *c; c++)
                if (!isdigit((unsigned char) *c)) return KB_EINVAL;
            *port = atoi(p);
            if (*port > 65535) return KB_EINVAL;
        }
        if (end == value) return KB_EINVAL;
        for (const char *c = value; c < end; c++)
            if (!isalnum((unsigned char) *c) && *c != '-' && *c != '.' && *c != '_') return KB_EINVAL;
    }
    size_t n = (size_t) (end - start);
    if (n >= size) return KB_EINVAL;
    for (size_t i = 0; i < n; i++) name[i] = (char) tolower((unsigned char) start[i]);
    name[n] = '\0';
    return KB_OK;
}

int hutil_origin(const char *value, char *scheme, size_t ssize, char *hostport, size_t hsize)
{
    const char *sep = value ? strstr(value, "://") : NULL;
    if (!sep || sep == value) return KB_EINVAL;
    size_t sl = (size_t) (sep - value);
    const char *hp = sep + 3;
    size_t hl = strlen(hp);
    if (sl >= ssize || hl == 0 || hl >= hsize || strchr(hp, '/')) return KB_EINVAL;
    for (size_t i = 0; i < sl; i++) {
        if (!isalnum((unsigned char) value[i]) && value[i] != '+' && value[i] != '-' && value[i] != '.')
            return KB_EINVAL;
        scheme[i] = (char) tolower((unsigned char) value[i]);
    }
    scheme[sl] = '\0';
    for (size_t i = 0; i < hl; i++) hostport[i] = (char) tolower((unsigned char) hp[i]);
    hostport[hl] = '\0';
    return KB_OK;
}

void hutil_redact_target(const char *target, char *out, size_t size)
{
    if (size == 0) return;
    const char *q = strchr(target, '?');
    if (!q) {
        snprintf(out, size, "%s", target);
        return;
    }
    size_t o = 0;
    int n = snprintf(out, size, "%.*s?", (int) (q - target), target);
    if (n < 0 || (size_t) n >= size) return;
    o = (size_t) n;
    const char *p = q + 1;
    bool first = true;
    while (*p && o + 1 < size) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t) (amp - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t) (eq - p) : plen;
        bool secret = (klen == 5 && strncasecmp(p, "token", 5) == 0) ||
                      (klen == 9 && strncasecmp(p, "signature", 9) == 0);
        n = secret ? snprintf(out + o, size - o, "%s%.*s=...", first ? "" : "&", (int) klen, p)
                   : snprintf(out + o, size - o, "%s%.*s", first ? "" : "&", (int) plen, p);
        if (n < 0 || o + (size_t) n >= size) break;
        o += (size_t) n;
        first = false;
        if (!amp) break;
        p = amp + 1;
    }
}
