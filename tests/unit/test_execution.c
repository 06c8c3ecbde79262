/*  Unit tests: Execution aggregation from synthetic kernel messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bridge/e2b/e2b_events.h"
#include "bridge/buf/wbuf.h"
#include "bridge/kernels/execution.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    json_t *events;
} rec_t;

//  Events arrive as a type and JSON members; rebuilding {"type":..., members} and parsing
//  it checks that what kbridge splices together is valid JSON.
static void s_record(execution_t *ex, const exec_event_t *ev, void *arg)
{
    (void) ex;
    rec_t *r = arg;
    const char *type = ev->type, *body = ev->body;
    size_t len = ev->len;
    char *text = NULL;
    assert_true(asprintf(&text, "{\"type\":\"%s\"%s%.*s}", type, len ? "," : "", (int) len, body) > 0);
    json_error_t err;
    json_t *event = json_loads(text, JSON_ALLOW_NUL, &err);
    if (!event) fprintf(stderr, "invalid event JSON: %s (%s)\n", text, err.text);
    assert_non_null(event);
    free(text);
    json_array_append_new(r->events, event);
}

static kmsg_t *s_msg(const char *type, const char *parent, json_t *content)
{
    char header[256], par[128];
    snprintf(header, sizeof header,
             "{\"msg_id\":\"k-%s\",\"msg_type\":\"%s\",\"session\":\"s\",\"username\":\"u\","
             "\"version\":\"5.3\",\"date\":\"2026-01-01T00:00:00.000001Z\"}",
             type, type);
    snprintf(par, sizeof par, "{\"msg_id\":\"%s\"}", parent);
    char *body = json_dumps(content, JSON_COMPACT);
    json_decref(content);
    const void *parts[4] = {header, par, "{}", body};
    size_t lens[4] = {strlen(header), strlen(par), 2, strlen(body)};
    kmsg_t *m = kmsg_new_raw(parts, lens, 0, NULL, NULL);
    free(body);
    return m;
}

static void s_feed(execution_t *ex, kchan_type_t ch, const char *type, json_t *content)
{
    kmsg_t *m = s_msg(type, "req", content);
    execution_on_message(ex, ch, m);
    kmsg_destroy(&m);
}

static const char *s_type(rec_t *r, size_t i)
{
    return json_string_value(json_object_get(json_array_get(r->events, i), "type"));
}

static void test_done_needs_reply_and_idle(void **state)
{
    (void) state;
    rec_t r = {json_array()};
    execution_t *ex = execution_new("req", NULL, s_record, &r);
    s_feed(ex, KCH_IOPUB, "status", json_pack("{s:s}", "execution_state", "busy"));
    s_feed(ex, KCH_IOPUB, "execute_input", json_pack("{s:s, s:i}", "code", "x", "execution_count", 7));
    //  The reply can overtake the outputs.
    s_feed(ex, KCH_SHELL, "execute_reply", json_pack("{s:s, s:i}", "status", "ok", "execution_count", 7));
    assert_false(execution_done(ex));
    s_feed(ex, KCH_IOPUB, "stream", json_pack("{s:s, s:s}", "name", "stdout", "text", "a\n"));
    s_feed(ex, KCH_IOPUB, "execute_result",
           json_pack("{s:{s:s}, s:{}, s:i}", "data", "text/plain", "2", "metadata", "execution_count", 7));
    assert_false(execution_done(ex));
    s_feed(ex, KCH_IOPUB, "status", json_pack("{s:s}", "execution_state", "idle"));
    assert_true(execution_done(ex));
    assert_true(execution_settled(ex));
    assert_int_equal(json_array_size(r.events), 4);
    assert_string_equal(s_type(&r, 0), "number_of_executions");
    assert_string_equal(s_type(&r, 1), "stdout");
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.events, 1), "timestamp")),
                        "2026-01-01T00:00:00.000001Z");
    assert_string_equal(s_type(&r, 2), "result");
    assert_string_equal(s_type(&r, 3), "end_of_execution");
    json_t *obj = execution_json(ex);
    assert_int_equal(json_integer_value(json_object_get(obj, "execution_count")), 7);
    assert_true(json_is_null(json_object_get(obj, "error")));
    json_decref(obj);
    //  Late messages are ignored.
    s_feed(ex, KCH_IOPUB, "stream", json_pack("{s:s, s:s}", "name", "stdout", "text", "late"));
    assert_int_equal(json_array_size(r.events), 4);
    execution_destroy(&ex);
    assert_null(ex);
    json_decref(r.events);
}

static json_t *s_result_of(execution_opts_t *opts, json_t *data, char **raw_event)
{
    rec_t r = {json_array()};
    execution_t *ex = execution_new("req", opts, s_record, &r);
    s_feed(ex, KCH_IOPUB, "execute_result", json_pack("{s:O, s:{}, s:i}", "data", data, "metadata", "execution_count", 1));
    json_t *event = json_incref(json_array_get(r.events, 0));
    *raw_event = json_dumps(event, JSON_COMPACT | JSON_PRESERVE_ORDER);
    execution_destroy(&ex);
    json_decref(r.events);
    return event;
}

//  The same result as E2B's /execute renders it.
static void s_line(execution_t *ex, const exec_event_t *ev, void *arg)
{
    (void) ex;
    size_t len;
    char *line = e2b_event_line(ev, &len);
    if (line && ev->kind == EXEC_EV_RESULT) {
        json_t **out = arg;
        assert_true(len > 0 && line[len - 1] == '\n');
        for (size_t i = 0; i < len; i++) assert_true((unsigned char) line[i] < 0x80);
        *out = json_loadb(line, len, 0, NULL);
        assert_non_null(*out);
    }
    wbuf_free(line);
}

static json_t *s_e2b_result_of(json_t *data, char **raw_event)
{
    json_t *event = NULL;
    execution_opts_t opts = {.stream_only = true, .raw_events = true};
    execution_t *ex = execution_new("req", &opts, s_line, &event);
    s_feed(ex, KCH_IOPUB, "execute_result", json_pack("{s:O, s:{}, s:i}", "data", data, "metadata", "execution_count", 1));
    execution_destroy(&ex);
    assert_non_null(event);
    *raw_event = json_dumps(event, JSON_COMPACT | JSON_PRESERVE_ORDER);
    return event;
}

static void test_result_fields_order_and_e2b_conventions(void **state)
{
    (void) state;
    json_t *data = json_pack("{s:s, s:s, s:s, s:{s:i}, s:{s:i}, s:[s, s]}", "image/png", "iVBOR",
                             "text/plain", "'bar'", "text/html", "<b>", "application/json", "a", 1,
                             "application/x-custom", "z", 2, "text/markdown", "# a", "b");
    char *s;
    json_t *plain = s_result_of(NULL, data, &s);
    assert_string_equal(json_string_value(json_object_get(plain, "text")), "'bar'");
    assert_string_equal(json_string_value(json_object_get(plain, "markdown")), "# ab");  //  a list of lines
    assert_non_null(json_object_get(json_object_get(plain, "extra"), "application/x-custom"));
    assert_null(json_object_get(plain, "application/x-custom"));
    //  Field order follows the E2B wire: text, html, markdown, png, json, extra, is_main_result.
    assert_true(strstr(s, "\"text\"") < strstr(s, "\"html\""));
    assert_true(strstr(s, "\"html\"") < strstr(s, "\"markdown\""));
    assert_true(strstr(s, "\"markdown\"") < strstr(s, "\"png\""));
    assert_true(strstr(s, "\"png\"") < strstr(s, "\"json\""));
    assert_true(strstr(s, "\"json\"") < strstr(s, "\"extra\""));
    assert_true(strstr(s, "\"extra\"") < strstr(s, "\"is_main_result\""));
    free(s);
    json_t *conv = s_e2b_result_of(data, &s);
    assert_string_equal(json_string_value(json_object_get(conv, "text")), "bar");
    assert_non_null(json_object_get(conv, "application/x-custom"));
    assert_true(json_is_true(json_object_get(conv, "is_main_result")));
    assert_true(strstr(s, "\"application/x-custom\"") < strstr(s, "\"is_main_result\""));
    free(s);
    json_decref(plain);
    json_decref(conv);
    json_decref(data);
}

static void test_splices_are_valid_json(void **state)
{
    (void) state;
    rec_t r = {json_array()};
    execution_t *ex = execution_new("req", NULL, s_record, &r);
    //  Escapes, unicode, NUL and invalid UTF-8 from a kernel all come out as valid JSON.
    const char *header = "{\"msg_id\":\"k\",\"msg_type\":\"stream\",\"date\":\"d\"}";
    const char *parent = "{\"msg_id\":\"req\"}";
    const char *contents[] = {
        "{\"name\":\"stdout\",\"text\":\"a\\\"b\\\\c\\n\\u0000\\ud83d\\ude00 \xc3\xa9\"}",
        "{\"name\":\"stdout\",\"text\":\"bad \xff\xfe utf8\"}",
        "{\"name\":\"stderr\",\"text\":\"raw\ncontrol\"}",
        "{ \"text\" : \"spaced\" , \"name\" : \"stdout\" }",
    };
    for (size_t i = 0; i < sizeof contents / sizeof *contents; i++) {
        const void *parts[4] = {header, parent, "{}", contents[i]};
        size_t lens[4] = {strlen(header), strlen(parent), 2, strlen(contents[i])};
        kmsg_t *m = kmsg_new_raw(parts, lens, 0, NULL, NULL);
        execution_on_message(ex, KCH_IOPUB, m);
        kmsg_destroy(&m);
    }
    assert_int_equal(json_array_size(r.events), 4);  //  s_record asserted each is valid
    const char *first = json_string_value(json_object_get(json_array_get(r.events, 0), "text"));
    assert_memory_equal(first, "a\"b\\c\n\0\xf0\x9f\x98\x80 \xc3\xa9", 15);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.events, 3), "text")), "spaced");
    json_t *obj = execution_json(ex);
    assert_non_null(obj);
    assert_int_equal(json_array_size(json_object_get(json_object_get(obj, "logs"), "stdout")), 3);
    json_decref(obj);
    execution_destroy(&ex);
    json_decref(r.events);
}

static void test_errors_first_wins_and_abort(void **state)
{
    (void) state;
    rec_t r = {json_array()};
    execution_t *ex = execution_new("req", NULL, s_record, &r);
    s_feed(ex, KCH_IOPUB, "error",
           json_pack("{s:s, s:s, s:[s, s]}", "ename", "ValueError", "evalue", "bad", "traceback",
                     "\x1b[0;31mTraceback\x1b[0m", "ValueError: bad"));
    s_feed(ex, KCH_IOPUB, "error", json_pack("{s:s, s:s, s:[]}", "ename", "Second", "evalue", "x", "traceback"));
    s_feed(ex, KCH_SHELL, "execute_reply", json_pack("{s:s, s:s, s:s, s:[]}", "status", "error", "ename",
                                                      "ValueError", "evalue", "bad", "traceback"));
    s_feed(ex, KCH_IOPUB, "status", json_pack("{s:s}", "execution_state", "idle"));
    json_t *obj = execution_json(ex);
    json_t *err = json_object_get(obj, "error");
    assert_string_equal(json_string_value(json_object_get(err, "name")), "ValueError");
    assert_string_equal(json_string_value(json_object_get(err, "traceback")), "Traceback\nValueError: bad");
    assert_int_equal(json_array_size(r.events), 2);  //  one error, one end
    json_decref(obj);
    execution_destroy(&ex);
    json_array_clear(r.events);

    ex = execution_new("req", NULL, s_record, &r);
    s_feed(ex, KCH_SHELL, "execute_reply", json_pack("{s:s}", "status", "aborted"));
    s_feed(ex, KCH_IOPUB, "status", json_pack("{s:s}", "execution_state", "idle"));
    obj = execution_json(ex);
    assert_string_equal(json_string_value(json_object_get(json_object_get(obj, "error"), "name")),
                        "ExecutionAborted");
    json_decref(obj);
    execution_destroy(&ex);
    json_decref(r.events);
}

static void test_fail_and_settle_separately(void **state)
{
    (void) state;
    rec_t r = {json_array()};
    execution_t *ex = execution_new("req", NULL, s_record, &r);
    execution_fail(ex, "TimeoutError", "too slow");
    assert_true(execution_done(ex));
    assert_false(execution_settled(ex));
    //  The kernel's own end still counts toward settling, its outputs do not.
    s_feed(ex, KCH_IOPUB, "error", json_pack("{s:s, s:s, s:[]}", "ename", "KeyboardInterrupt", "evalue", "", "traceback"));
    s_feed(ex, KCH_SHELL, "execute_reply", json_pack("{s:s}", "status", "error"));
    s_feed(ex, KCH_IOPUB, "status", json_pack("{s:s}", "execution_state", "idle"));
    assert_true(execution_settled(ex));
    assert_int_equal(json_array_size(r.events), 2);
    json_t *obj = execution_json(ex);
    assert_string_equal(json_string_value(json_object_get(json_object_get(obj, "error"), "name")), "TimeoutError");
    json_decref(obj);
    execution_destroy(&ex);
    json_decref(r.events);
}

static void test_display_update_clear_and_limit(void **state)
{
    (void) state;
    rec_t r = {json_array()};
    execution_opts_t opts = {.max_retained = 100};
    execution_t *ex = execution_new("req", &opts, s_record, &r);
    s_feed(ex, KCH_IOPUB, "display_data",
           json_pack("{s:{s:s}, s:{}, s:{s:s}}", "data", "text/plain", "v1", "metadata", "transient", "display_id", "d1"));
    s_feed(ex, KCH_IOPUB, "update_display_data",
           json_pack("{s:{s:s}, s:{}, s:{s:s}}", "data", "text/plain", "v2", "metadata", "transient", "display_id", "d1"));
    json_t *obj = execution_json(ex);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(obj, "results"), 0), "text")), "v2");
    json_decref(obj);
    assert_true(json_is_true(json_object_get(json_array_get(r.events, 1), "update")));
    s_feed(ex, KCH_IOPUB, "stream", json_pack("{s:s, s:s}", "name", "stdout", "text", "before"));
    s_feed(ex, KCH_IOPUB, "clear_output", json_pack("{s:b}", "wait", 1));
    obj = execution_json(ex);  //  wait=true: still there until the next output
    assert_int_equal(json_array_size(json_object_get(json_object_get(obj, "logs"), "stdout")), 1);
    json_decref(obj);
    s_feed(ex, KCH_IOPUB, "stream", json_pack("{s:s, s:s}", "name", "stdout", "text", "after"));
    obj = execution_json(ex);
    assert_int_equal(json_array_size(json_object_get(obj, "results")), 0);
    assert_string_equal(json_string_value(json_array_get(json_object_get(json_object_get(obj, "logs"), "stdout"), 0)), "after");
    json_decref(obj);
    //  Past the retained-output limit: marked, and still streamed.
    char big[200];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    size_t before = json_array_size(r.events);
    s_feed(ex, KCH_IOPUB, "stream", json_pack("{s:s, s:s}", "name", "stdout", "text", big));
    assert_int_equal(json_array_size(r.events), before + 1);
    obj = execution_json(ex);
    assert_true(json_is_true(json_object_get(obj, "truncated")));
    assert_int_equal(json_array_size(json_object_get(json_object_get(obj, "logs"), "stdout")), 1);
    assert_non_null(strstr(json_string_value(json_array_get(json_object_get(json_object_get(obj, "logs"), "stderr"), 0)),
                           "truncated"));
    json_decref(obj);
    execution_destroy(&ex);
    json_decref(r.events);
}

static void test_malformed_contents_are_ignored(void **state)
{
    (void) state;
    rec_t r = {json_array()};
    execution_t *ex = execution_new("req", NULL, s_record, &r);
    s_feed(ex, KCH_IOPUB, "stream", json_pack("{s:i}", "name", 3));
    s_feed(ex, KCH_IOPUB, "display_data", json_pack("{s:s}", "data", "not an object"));
    s_feed(ex, KCH_IOPUB, "execute_input", json_pack("{s:s}", "execution_count", "seven"));
    s_feed(ex, KCH_IOPUB, "error", json_pack("{s:i, s:i}", "ename", 1, "traceback", 2));
    s_feed(ex, KCH_SHELL, "execute_reply", json_pack("{s:i}", "status", 5));
    s_feed(ex, KCH_IOPUB, "status", json_pack("{s:s}", "execution_state", "idle"));
    assert_true(execution_done(ex));
    execution_destroy(&ex);
    json_decref(r.events);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_done_needs_reply_and_idle),
        cmocka_unit_test(test_result_fields_order_and_e2b_conventions),
        cmocka_unit_test(test_splices_are_valid_json),
        cmocka_unit_test(test_errors_first_wins_and_abort),
        cmocka_unit_test(test_fail_and_settle_separately),
        cmocka_unit_test(test_display_update_clear_and_limit),
        cmocka_unit_test(test_malformed_contents_are_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
