/*  wbuf - payloads with framing room before and after. */
#include "wbuf.h"

#include <stdlib.h>
#include <string.h>

char *wbuf_alloc(size_t len)
{
    if (len > (size_t) -1 - WBUF_HEADROOM - WBUF_TAILROOM) return NULL;
    char *raw = malloc(WBUF_HEADROOM + len + WBUF_TAILROOM);
    return raw ? raw + WBUF_HEADROOM : NULL;
}

char *wbuf_realloc(char *payload, size_t len)
{
    if (!payload) return wbuf_alloc(len);
    if (len > (size_t) -1 - WBUF_HEADROOM - WBUF_TAILROOM) return NULL;
    char *raw = realloc(payload - WBUF_HEADROOM, WBUF_HEADROOM + len + WBUF_TAILROOM);
    return raw ? raw + WBUF_HEADROOM : NULL;
}

char *wbuf_dup(const void *data, size_t len)
{
    char *p = wbuf_alloc(len);
    if (p && len) memcpy(p, data, len);
    return p;
}

void wbuf_free(char *payload)
{
    if (payload) free(payload - WBUF_HEADROOM);
}
