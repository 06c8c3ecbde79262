/*  libFuzzer target: Execution aggregation of arbitrary kernel message contents.

    The input is split on 0xFF into (msg_type, content) pairs fed to one execution, which
    is then serialized; whatever a kernel sends must neither crash it nor corrupt it.
*/
#include "bridge/buf/wbuf.h"
#include "bridge/e2b/e2b_events.h"
#include "bridge/kernels/execution.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_types[] = {"status", "execute_input", "stream", "display_data",
                                "update_display_data", "execute_result", "error",
                                "clear_output", "execute_reply"};

//  Every event must be valid JSON once wrapped: a splice that is not aborts the run.
static void s_sink(execution_t *ex, const exec_event_t *ev, void *arg)
{
    (void) ex;
    (void) arg;
    const char *type = ev->type, *body = ev->body;
    size_t len = ev->len;
    //  E2B's rendering of the same event must be a valid JSON line too.
    size_t llen;
    char *line = e2b_event_line(ev, &llen);
    if (line) {
        json_t *parsed = json_loadb(line, llen, JSON_ALLOW_NUL, NULL);
        if (!parsed) abort();
        json_decref(parsed);
        wbuf_free(line);
    }
    char *text = malloc(len + strlen(type) + 16);
    int n = sprintf(text, "{\"type\":\"%s\"%s", type, len ? "," : "");
    memcpy(text + n, body, len);
    text[n + len] = '}';
    json_t *event = json_loadb(text, (size_t) n + len + 1, JSON_ALLOW_NUL, NULL);
    if (!event) abort();
    json_decref(event);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    execution_opts_t opts = {.stream_only = size & 1, .max_retained = size & 4 ? 64 : 0};
    execution_t *ex = execution_new("req", &opts, s_sink, NULL);
    const char *parent = "{\"msg_id\":\"req\"}";
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != 0xFF) continue;
        if (i > start) {
            uint8_t pick = data[start];
            const char *type = s_types[pick % (sizeof s_types / sizeof *s_types)];
            char hdr[160];
            snprintf(hdr, sizeof hdr, "{\"msg_id\":\"m\",\"msg_type\":\"%s\",\"session\":\"s\",\"date\":\"d\"}", type);
            const void *parts[4] = {hdr, parent, "{}", data + start + 1};
            size_t lens[4] = {strlen(hdr), strlen(parent), 2, i - start - 1};
            kmsg_t *msg = kmsg_new_raw(parts, lens, 0, NULL, NULL);
            if (msg) execution_on_message(ex, pick & 0x80 ? KCH_SHELL : KCH_IOPUB, msg);
            kmsg_destroy(&msg);
        }
        start = i + 1;
    }
    jbuf_t b;
    jbuf_init(&b);
    execution_write(ex, &b);
    json_t *obj = jbuf_text(&b) ? json_loadb(jbuf_text(&b), b.len, JSON_ALLOW_NUL, NULL) : NULL;
    if (jbuf_text(&b) && !obj) abort();
    json_decref(obj);
    jbuf_free(&b);
    execution_destroy(&ex);
    return 0;
}
