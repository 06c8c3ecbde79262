/*  wbuf - payloads with framing room before and after. */
#include "wbuf.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

//  The reference count sits in front of the headroom the framers use.
#define REF_ROOM 8

char *wbuf_alloc(size_t len)
{
    if (len > (size_t) -1 - REF_ROOM - WBUF_HEADROOM - WBUF_TAILROOM) return NULL;
    char *raw = malloc(REF_ROOM + WBUF_HEADROOM + len + WBUF_TAILROOM);
    if (!raw) return NULL;
    *(uint32_t *) raw = 1;
    return raw + REF_ROOM + WBUF_HEADROOM;
}

char *wbuf_realloc(char *payload, size_t len)
{
    if (!payload) return wbuf_alloc(len);
    if (len > (size_t) -1 - REF_ROOM - WBUF_HEADROOM - WBUF_TAILROOM) return NULL;
    char *raw = payload - WBUF_HEADROOM - REF_ROOM;
    assert(*(uint32_t *) raw == 1);
    raw = realloc(raw, REF_ROOM + WBUF_HEADROOM + len + WBUF_TAILROOM);
    return raw ? raw + REF_ROOM + WBUF_HEADROOM : NULL;
}

char *wbuf_ref(char *payload)
{
    if (payload) (*(uint32_t *) (payload - WBUF_HEADROOM - REF_ROOM))++;
    return payload;
}

char *wbuf_dup(const void *data, size_t len)
{
    char *p = wbuf_alloc(len);
    if (p && len) memcpy(p, data, len);
    return p;
}

void wbuf_free(char *payload)
{
    if (!payload) return;
    char *raw = payload - WBUF_HEADROOM - REF_ROOM;
    if (--*(uint32_t *) raw == 0) free(raw);
}
