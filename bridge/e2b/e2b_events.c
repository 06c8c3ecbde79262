/*  e2b_events - E2B's rendering of execution events. */
#include "e2b_events.h"

#include "../buf/wbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  E2B's result fields, in its wire order.
static const exec_field_t s_fields[] = {
    {"text/plain", "text", true},       {"text/html", "html", true},
    {"text/markdown", "markdown", true}, {"image/svg+xml", "svg", true},
    {"image/png", "png", true},         {"image/jpeg", "jpeg", true},
    {"application/pdf", "pdf", true},   {"text/latex", "latex", true},
    {"application/json", "json", false}, {"application/javascript", "javascript", true},
    {"e2b/data", "data", false},        {"e2b/chart", "chart", false},
};

static void s_timestamp(jbuf_t *b, const char *date)
{
    size_t n = strlen(date);
    //  Jupyter dates end in "Z"; E2B's server re-serializes them as "+00:00".
    if (n && date[n - 1] == 'Z') {
        char fixed[64];
        int len = snprintf(fixed, sizeof fixed, "%.*s+00:00", (int) (n - 1), date);
        jbuf_add_string(b, fixed, (size_t) len);
    } else {
        jbuf_add_string(b, date, n);
    }
}

char *e2b_event_line(const exec_event_t *ev, size_t *len)
{
    jbuf_t b;
    jbuf_init(&b);
    switch (ev->kind) {
    case EXEC_EV_COUNT: {
        char text[96];
        int n = snprintf(text, sizeof text, "{\"type\":\"number_of_executions\",\"execution_count\":%lld}",
                         (long long) ev->execution_count);
        jbuf_add(&b, text, (size_t) n);
        break;
    }
    case EXEC_EV_STREAM:
        jbuf_reserve(&b, ev->text.len + 96);
        jbuf_adds(&b, ev->is_stderr ? "{\"type\":\"stderr\",\"text\":" : "{\"type\":\"stdout\",\"text\":");
        execution_add_value(&b, ev->text);
        jbuf_adds(&b, ",\"timestamp\":");
        s_timestamp(&b, ev->date);
        jbuf_add(&b, "}", 1);
        break;
    case EXEC_EV_RESULT:
        if (ev->update) return NULL;
        jbuf_reserve(&b, ev->data.len + 128);
        jbuf_adds(&b, "{\"type\":\"result\",");
        execution_render_result(&b, ev->data, ev->is_main, s_fields, sizeof s_fields / sizeof *s_fields,
                                true, true);
        jbuf_add(&b, "}", 1);
        break;
    case EXEC_EV_ERROR:
        jbuf_adds(&b, "{\"type\":\"error\",\"name\":");
        jbuf_add_string(&b, ev->ename, strlen(ev->ename));
        jbuf_adds(&b, ",\"value\":");
        jbuf_add_string(&b, ev->evalue, strlen(ev->evalue));
        jbuf_adds(&b, ",\"traceback\":");
        jbuf_add_string(&b, ev->traceback, strlen(ev->traceback));
        jbuf_add(&b, "}", 1);
        break;
    case EXEC_EV_END:
        //  Byte for byte what E2B's server sends.
        jbuf_adds(&b, "{\"type\": \"end_of_execution\"}");
        break;
    default: return NULL;
    }
    const char *text = jbuf_text(&b);
    if (!text) {
        jbuf_free(&b);
        return NULL;
    }
    size_t n = jraw_ascii_len(text, b.len);
    char *line = wbuf_alloc(n + 1);
    if (line) {
        jraw_to_ascii(text, b.len, line);
        line[n] = '\n';
        *len = n + 1;
    }
    jbuf_free(&b);
    return line;
}
