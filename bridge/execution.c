/*  execution - one execute_request's iopub/shell traffic as an Execution object. */
#include "execution.h"
#include "../kernelmgr/jx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _execution_t {
    char *msg_id;
    execution_opts_t opts;
    execution_fn *on_event;
    void *arg;
    json_t *results;  //  array of result objects (without "type")
    json_t *display_ids;  //  array parallel to results: display_id string or null
    json_t *stdout_logs, *stderr_logs;
    json_t *error;  //  {name, value, traceback} or NULL
    int64_t execution_count;  //  -1 until known
    bool got_reply, got_idle, done, muted, truncated, clear_pending;
    size_t retained;
};

execution_t *execution_new(const char *msg_id, const execution_opts_t *opts,
                           execution_fn *on_event, void *arg)
{
    execution_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->msg_id = strdup(msg_id);
    if (opts) self->opts = *opts;
    self->on_event = on_event;
    self->arg = arg;
    self->results = json_array();
    self->display_ids = json_array();
    self->stdout_logs = json_array();
    self->stderr_logs = json_array();
    self->execution_count = -1;
    if (!self->msg_id || !self->results || !self->display_ids || !self->stdout_logs ||
        !self->stderr_logs)
        execution_destroy(&self);
    return self;
}

void execution_destroy(execution_t **self_p)
{
    if (!self_p || !*self_p) return;
    execution_t *self = *self_p;
    free(self->msg_id);
    json_decref(self->results);
    json_decref(self->display_ids);
    json_decref(self->stdout_logs);
    json_decref(self->stderr_logs);
    json_decref(self->error);
    free(self);
    *self_p = NULL;
}

//  Emits event (stolen).
static void s_emit(execution_t *self, json_t *event)
{
    if (event && self->on_event && !self->muted) self->on_event(self, event, self->arg);
    json_decref(event);
}

//  Account for n more retained bytes; false once the limit is passed.
static bool s_retain(execution_t *self, size_t n)
{
    if (self->opts.stream_only || self->truncated) return false;
    if (self->opts.max_retained && self->retained + n > self->opts.max_retained) {
        self->truncated = true;
        char marker[160];
        snprintf(marker, sizeof marker,
                 "[kbridge: output truncated, retained-output limit of %zu bytes reached]\n",
                 self->opts.max_retained);
        json_array_append_new(self->stderr_logs, json_string(marker));
        return false;
    }
    self->retained += n;
    return true;
}

static void s_apply_pending_clear(execution_t *self)
{
    if (!self->clear_pending) return;
    self->clear_pending = false;
    json_array_clear(self->results);
    json_array_clear(self->display_ids);
    json_array_clear(self->stdout_logs);
    json_array_clear(self->stderr_logs);
    self->retained = 0;
}

static size_t s_bundle_size(json_t *data)
{
    size_t n = 0;
    const char *key;
    json_t *value;
    json_object_foreach(data, key, value)
    {
        n += strlen(key);
        n += json_is_string(value) ? json_string_length(value) : 64;
    }
    return n;
}

//  MIME type -> result field, in the E2B wire order.
static const struct {
    const char *mime, *field;
} s_fields[] = {
    {"text/plain", "text"},       {"text/html", "html"},       {"text/markdown", "markdown"},
    {"image/svg+xml", "svg"},     {"image/png", "png"},        {"image/jpeg", "jpeg"},
    {"application/pdf", "pdf"},   {"text/latex", "latex"},     {"application/json", "json"},
    {"application/javascript", "javascript"}, {"e2b/data", "data"}, {"e2b/chart", "chart"},
};
#define N_FIELDS (sizeof s_fields / sizeof *s_fields)

static json_t *s_text_value(json_t *value, bool strip)
{
    //  Jupyter allows a MIME value to be a list of lines.
    if (json_is_array(value)) {
        size_t i, total = 0;
        json_t *line;
        json_array_foreach(value, i, line) total += json_string_length(line);
        char *buf = malloc(total + 1);
        if (!buf) return json_null();
        size_t at = 0;
        json_array_foreach(value, i, line)
        {
            size_t n = json_string_length(line);
            if (n) memcpy(buf + at, json_string_value(line), n);
            at += n;
        }
        json_t *joined = json_stringn_nocheck(buf, at);
        free(buf);
        value = joined;
    } else {
        json_incref(value);
    }
    if (strip && json_is_string(value)) {
        const char *s = json_string_value(value);
        size_t n = json_string_length(value);
        if (n >= 2 && ((s[0] == '\'' && s[n - 1] == '\'') || (s[0] == '"' && s[n - 1] == '"'))) {
            json_t *stripped = json_stringn_nocheck(s + 1, n - 2);
            json_decref(value);
            value = stripped;
        }
    }
    return value;
}

json_t *execution_result_from_bundle(json_t *data, bool is_main, const execution_opts_t *opts)
{
    json_t *result = json_object();
    json_t *extra = json_object();
    if (!result || !extra) {
        json_decref(result);
        json_decref(extra);
        return NULL;
    }
    for (size_t f = 0; f < N_FIELDS; f++) {
        json_t *value = json_object_get(data, s_fields[f].mime);
        if (!value) continue;
        bool textual = !(strcmp(s_fields[f].field, "json") == 0 ||
                         strcmp(s_fields[f].field, "data") == 0 ||
                         strcmp(s_fields[f].field, "chart") == 0);
        if (textual)
            json_object_set_new(result, s_fields[f].field,
                                s_text_value(value, f == 0 && opts && opts->strip_text_quotes));
        else
            json_object_set(result, s_fields[f].field, value);
    }
    const char *mime;
    json_t *value;
    json_object_foreach(data, mime, value)
    {
        bool known = false;
        for (size_t f = 0; f < N_FIELDS && !known; f++) known = strcmp(mime, s_fields[f].mime) == 0;
        if (known) continue;
        json_object_set(extra, mime, value);
    }
    json_object_set_new(result, "extra", extra);
    //  The JS SDK collects unknown *top-level* keys into formats(); Python reads extra.
    if (opts && opts->mime_top_level) json_object_update_missing(result, extra);
    json_object_set_new(result, "is_main_result", json_boolean(is_main));
    return result;
}

char *execution_join_traceback(json_t *traceback)
{
    if (json_is_string(traceback)) return strdup(json_string_value(traceback));
    size_t total = 1, i;
    json_t *line;
    json_array_foreach(traceback, i, line) total += json_string_length(line) + 1;
    char *out = malloc(total);
    if (!out) return NULL;
    size_t at = 0;
    json_array_foreach(traceback, i, line)
    {
        if (!json_is_string(line)) continue;
        //  IPython entries are not newline-terminated, so "".join() (upstream E2B) runs
        //  them together; a newline is added only where an entry does not end with one.
        if (at && out[at - 1] != '\n') out[at++] = '\n';
        //  Terminal colour codes (ESC [ ... letter) are dropped: an Execution is read as
        //  plain text, and E2B's kernels run with colors=NoColor.
        const char *s = json_string_value(line);
        size_t n = json_string_length(line);
        for (size_t k = 0; k < n; k++) {
            if (s[k] == '\x1b' && k + 1 < n && s[k + 1] == '[') {
                k += 2;
                while (k < n && !((s[k] >= '@' && s[k] <= '~'))) k++;
                continue;
            }
            out[at++] = s[k];
        }
    }
    out[at] = '\0';
    return out;
}

static void s_set_error(execution_t *self, const char *name, const char *value,
                        const char *traceback)
{
    json_decref(self->error);
    self->error = json_pack("{s:s, s:s, s:s}", "name", name ? name : "", "value",
                            value ? value : "", "traceback", traceback ? traceback : "");
    json_t *event = json_pack("{s:s, s:s, s:s, s:s}", "type", "error", "name", name ? name : "",
                              "value", value ? value : "", "traceback",
                              traceback ? traceback : "");
    s_emit(self, event);
}

static void s_finish(execution_t *self)
{
    if (self->done) return;
    self->done = true;
    s_emit(self, json_pack("{s:s}", "type", "end_of_execution"));
}

static void s_on_stream(execution_t *self, jmsg_t *msg)
{
    json_t *content = jmsg_content(msg);
    const char *name = NULL, *text = NULL, *date = "";
    size_t len = 0;
    if (jx_get_str(content, "name", &name, false) || jx_get_strn(content, "text", &text, &len, false))
        return;
    jx_get_str(jmsg_header(msg), "date", &date, true);
    bool is_err = strcmp(name, "stderr") == 0;
    s_apply_pending_clear(self);
    if (s_retain(self, len))
        json_array_append_new(is_err ? self->stderr_logs : self->stdout_logs,
                              json_stringn_nocheck(text, len));
    json_t *event = json_object();
    json_object_set_new(event, "type", json_string(is_err ? "stderr" : "stdout"));
    json_object_set_new(event, "text", json_stringn_nocheck(text, len));
    json_object_set_new(event, "timestamp", json_string(date));
    s_emit(self, event);
}

static void s_on_display(execution_t *self, jmsg_t *msg, bool is_main, bool update)
{
    json_t *content = jmsg_content(msg);
    json_t *data = NULL, *transient = NULL;
    if (jx_get_obj(content, "data", &data, false)) return;
    jx_get_obj(content, "transient", &transient, true);
    const char *display_id = NULL;
    jx_get_str(transient, "display_id", &display_id, true);
    json_t *result = execution_result_from_bundle(data, is_main, &self->opts);
    if (!result) return;
    if (update) {
        if (!display_id) {
            json_decref(result);
            return;
        }
        size_t i;
        json_t *id;
        json_array_foreach(self->display_ids, i, id)
        {
            if (json_is_string(id) && strcmp(json_string_value(id), display_id) == 0)
                json_array_set(self->results, i, result);
        }
    } else {
        s_apply_pending_clear(self);
        if (s_retain(self, s_bundle_size(data))) {
            json_array_append(self->results, result);
            json_array_append_new(self->display_ids,
                                  display_id ? json_string(display_id) : json_null());
        }
    }
    json_t *event = json_pack("{s:s}", "type", "result");
    json_object_update(event, result);
    json_decref(result);
    if (display_id) json_object_set_new(event, "display_id", json_string(display_id));
    if (update) json_object_set_new(event, "update", json_true());
    s_emit(self, event);
}

void execution_on_message(execution_t *self, kchan_type_t channel, jmsg_t *msg)
{
    if (self->got_reply && self->got_idle) return;
    const char *type = jmsg_type(msg);
    json_t *content = jmsg_content(msg);
    if (!type || !json_is_object(content)) return;
    if (channel == KCH_SHELL && strcmp(type, "execute_reply") == 0) {
        self->got_reply = true;
        const char *status = "ok";
        jx_get_str(content, "status", &status, true);
        int64_t count = -1;
        if (jx_get_int(content, "execution_count", &count, true) == 0 && count >= 0 &&
            self->execution_count < 0)
            self->execution_count = count;
        if (!self->done && strcmp(status, "error") == 0 && !self->error) {
            const char *ename = "", *evalue = "";
            jx_get_str(content, "ename", &ename, true);
            jx_get_str(content, "evalue", &evalue, true);
            char *tb = execution_join_traceback(json_object_get(content, "traceback"));
            s_set_error(self, ename, evalue, tb ? tb : "");
            free(tb);
        } else if (!self->done && strcmp(status, "aborted") == 0) {
            s_set_error(self, "ExecutionAborted", "Execution was aborted", "");
        }
    } else if (channel != KCH_IOPUB) {
        //  Other replies and stdin requests are not part of the Execution.
    } else if (strcmp(type, "status") == 0) {
        //  Tracked even after a forced end: the queue waits for the kernel to settle.
        const char *state = NULL;
        jx_get_str(content, "execution_state", &state, true);
        if (state && strcmp(state, "idle") == 0) self->got_idle = true;
    } else if (self->done) {
        //  Outputs after a forced end (timeout, requester gone) are dropped.
    } else if (strcmp(type, "execute_input") == 0) {
        int64_t count = -1;
        if (jx_get_int(content, "execution_count", &count, true) == 0) {
            self->execution_count = count;
            s_emit(self, json_pack("{s:s, s:I}", "type", "number_of_executions",
                                   "execution_count", (json_int_t) count));
        }
    } else if (strcmp(type, "stream") == 0) {
        s_on_stream(self, msg);
    } else if (strcmp(type, "display_data") == 0) {
        s_on_display(self, msg, false, false);
    } else if (strcmp(type, "update_display_data") == 0) {
        s_on_display(self, msg, false, true);
    } else if (strcmp(type, "execute_result") == 0) {
        s_on_display(self, msg, true, false);
    } else if (strcmp(type, "clear_output") == 0) {
        bool wait = false;
        jx_get_bool(content, "wait", &wait, true);
        self->clear_pending = true;
        if (!wait) s_apply_pending_clear(self);
        s_emit(self, json_pack("{s:s, s:b}", "type", "clear_output", "wait", wait));
    } else if (strcmp(type, "error") == 0) {
        //  Only the first kernel error is kept, as the E2B server does.
        if (!self->error) {
            const char *ename = "", *evalue = "";
            jx_get_str(content, "ename", &ename, true);
            jx_get_str(content, "evalue", &evalue, true);
            char *tb = execution_join_traceback(json_object_get(content, "traceback"));
            s_set_error(self, ename, evalue, tb ? tb : "");
            free(tb);
        }
    }
    if (self->got_reply && self->got_idle) s_finish(self);
}

void execution_fail(execution_t *self, const char *name, const char *value)
{
    if (self->done) return;
    s_set_error(self, name, value, "");
    s_finish(self);
}

void execution_mute(execution_t *self)
{
    self->muted = true;
}

bool execution_done(const execution_t *self)
{
    return self->done;
}

bool execution_settled(const execution_t *self)
{
    return self->got_reply && self->got_idle;
}

const char *execution_msg_id(const execution_t *self)
{
    return self->msg_id;
}

json_t *execution_json(const execution_t *self)
{
    json_t *out = json_pack("{s:O, s:{s:O, s:O}, s:O}", "results", self->results, "logs",
                            "stdout", self->stdout_logs, "stderr", self->stderr_logs, "error",
                            self->error ? self->error : json_null());
    if (!out) return NULL;
    json_object_set_new(out, "execution_count", self->execution_count >= 0
                                                    ? json_integer(self->execution_count)
                                                    : json_null());
    if (self->truncated) json_object_set_new(out, "truncated", json_true());
    return out;
}
