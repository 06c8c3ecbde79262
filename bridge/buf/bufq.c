/*  bufq - a FIFO of outgoing wire buffers. */
#include "bufq.h"
#include "../../base/kberr.h"
#include "../http/wsconn.h"

#include <stdlib.h>

int bufq_push(bufq_t *q, char *payload, size_t len, bool binary)
{
    bufq_item_t *item = malloc(sizeof *item);
    if (!item) {
        wsconn_buf_free(payload);
        return KB_ENOMEM;
    }
    item->next = NULL;
    item->payload = payload;
    item->len = len;
    item->binary = binary;
    if (q->tail) q->tail->next = item;
    else q->head = item;
    q->tail = item;
    q->bytes += len;
    return KB_OK;
}

char *bufq_pop(bufq_t *q, size_t *len)
{
    bufq_item_t *item = q->head;
    if (!item) return NULL;
    q->head = item->next;
    if (!q->head) q->tail = NULL;
    q->bytes -= item->len;
    char *payload = item->payload;
    if (len) *len = item->len;
    free(item);
    return payload;
}

void bufq_drop_head(bufq_t *q)
{
    wsconn_buf_free(bufq_pop(q, NULL));
}

void bufq_clear(bufq_t *q)
{
    while (q->head) bufq_drop_head(q);
}
