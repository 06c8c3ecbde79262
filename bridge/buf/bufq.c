/*  bufq - a FIFO of outgoing wire buffers. */
#include "bufq.h"
#include "wbuf.h"
#include "../../base/kberr.h"

#include <stdlib.h>

struct _bufq_item_t {
    bufq_item_t *next;
    char *payload;
    const char *data;
    size_t len, sent;
    uint32_t tag;
};

int bufq_push(bufq_t *q, char *payload, const char *data, size_t len, uint32_t tag)
{
    bufq_item_t *item = malloc(sizeof *item);
    if (!item) {
        wbuf_free(payload);
        return KB_ENOMEM;
    }
    item->next = NULL;
    item->payload = payload;
    item->data = data;
    item->len = len;
    item->sent = 0;
    item->tag = tag;
    if (q->tail) q->tail->next = item;
    else q->head = item;
    q->tail = item;
    q->bytes += len;
    q->count++;
    return KB_OK;
}

bool bufq_peek(const bufq_t *q, const char **data, size_t *len, uint32_t *tag)
{
    const bufq_item_t *item = q->head;
    if (!item) return false;
    if (data) *data = item->data + item->sent;
    if (len) *len = item->len - item->sent;
    if (tag) *tag = item->tag;
    return true;
}

size_t bufq_spans(const bufq_t *q, const char **data, size_t *lens, size_t max)
{
    size_t n = 0;
    for (const bufq_item_t *item = q->head; item && n < max; item = item->next, n++) {
        data[n] = item->data + item->sent;
        lens[n] = item->len - item->sent;
    }
    return n;
}

static void s_drop_head(bufq_t *q)
{
    bufq_item_t *item = q->head;
    q->head = item->next;
    if (!q->head) q->tail = NULL;
    q->bytes -= item->len - item->sent;
    q->count--;
    wbuf_free(item->payload);
    free(item);
}

void bufq_consume(bufq_t *q, size_t n)
{
    while (n && q->head) {
        bufq_item_t *item = q->head;
        size_t left = item->len - item->sent;
        if (n < left) {
            item->sent += n;
            q->bytes -= n;
            return;
        }
        n -= left;
        s_drop_head(q);
    }
    //  Zero-length items are consumed as soon as they reach the head.
    while (q->head && q->head->len == q->head->sent) s_drop_head(q);
}

char *bufq_pop(bufq_t *q, const char **data, size_t *len, uint32_t *tag)
{
    bufq_item_t *item = q->head;
    if (!item) return NULL;
    q->head = item->next;
    if (!q->head) q->tail = NULL;
    q->bytes -= item->len - item->sent;
    q->count--;
    char *payload = item->payload;
    if (data) *data = item->data + item->sent;
    if (len) *len = item->len - item->sent;
    if (tag) *tag = item->tag;
    free(item);
    return payload;
}

size_t bufq_keep(bufq_t *q, size_t keep)
{
    size_t seen = 0;
    bufq_item_t *last = NULL, *item = q->head;
    while (item && seen < keep) {
        seen += item->len - item->sent;
        last = item;
        item = item->next;
    }
    size_t freed = 0;
    while (item) {
        bufq_item_t *next = item->next;
        freed += item->len - item->sent;
        wbuf_free(item->payload);
        free(item);
        q->count--;
        item = next;
    }
    if (last) last->next = NULL;
    else q->head = NULL;
    q->tail = last;
    q->bytes -= freed;
    return freed;
}

void bufq_clear(bufq_t *q)
{
    while (q->head) s_drop_head(q);
}
