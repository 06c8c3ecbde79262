/*  libFuzzer target: WebSocket frames from clients, fed in uneven pieces; complete text
    messages are checked for UTF-8 as wsconn does.
*/
#include "bridge/http/wsframe.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char msg[1 << 16];
    size_t len;
    bool over;
} acc_t;

static void s_on_data(int opcode, const char *data, size_t len, bool first, bool last, void *arg)
{
    acc_t *a = arg;
    (void) opcode;
    if (first) {
        a->len = 0;
        a->over = false;
    }
    if (a->len + len > sizeof a->msg) a->over = true;
    else {
        memcpy(a->msg + a->len, data, len);
        a->len += len;
    }
    if (last && !a->over) wsframe_utf8_valid(a->msg, a->len);
}

static void s_on_control(int opcode, const char *data, size_t len, void *arg)
{
    (void) opcode;
    (void) arg;
    if (len > 2) wsframe_utf8_valid(data + 2, len - 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static acc_t acc;
    wsframe_t parser;
    wsframe_init(&parser);
    wsframe_events_t events = {s_on_data, s_on_control};
    char *copy = malloc(size);
    if (!copy) return 0;
    memcpy(copy, data + 1, size - 1);
    size_t step = 1 + data[0] % 13, at = 0;
    while (at < size - 1) {
        size_t piece = size - 1 - at < step ? size - 1 - at : step;
        long used = wsframe_feed(&parser, copy + at, piece, &events, &acc);
        if (used < 0) break;
        at += (size_t) used;
    }
    uint8_t hdr[10];
    wsframe_header(hdr, WS_OP_TEXT, true, size);
    free(copy);
    return 0;
}
