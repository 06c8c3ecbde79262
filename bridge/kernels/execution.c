/*  execution - one execute_request's iopub/shell traffic as an Execution object. */
#include "execution.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *text;  //  JSON text (a result object, or a string token for logs)
    size_t len;
    char *display_id;  //  results only
} item_t;

typedef struct {
    item_t *items;
    size_t count, cap;
} items_t;

struct _execution_t {
    char *msg_id;
    execution_opts_t opts;
    execution_fn *on_event;
    void *arg;
    items_t results, out, err;
    json_t *error;            //  {name, value, traceback} or NULL
    int64_t execution_count;  //  -1 until known
    bool got_reply, got_idle, done, muted, truncated, clear_pending;
    //  Logs and results are counted apart: a flood of prints must not cost the cell its
    //  result.
    size_t retained_logs, retained_results;
    bool logs_full, results_full;
};

// ---------------------------------------------------------------------------------------
//  Storage

static void s_items_clear(items_t *list)
{
    for (size_t i = 0; i < list->count; i++) {
        free(list->items[i].text);
        free(list->items[i].display_id);
    }
    list->count = 0;
}

static void s_items_free(items_t *list)
{
    s_items_clear(list);
    free(list->items);
    memset(list, 0, sizeof *list);
}

//  Append a copy of text (len bytes).
static item_t *s_items_add(items_t *list, const char *text, size_t len)
{
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 8;
        item_t *grown = realloc(list->items, cap * sizeof *grown);
        if (!grown) return NULL;
        list->items = grown;
        list->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy) return NULL;
    memcpy(copy, text, len);
    copy[len] = '\0';
    item_t *item = &list->items[list->count++];
    item->text = copy;
    item->len = len;
    item->display_id = NULL;
    return item;
}

execution_t *execution_new(const char *msg_id, const execution_opts_t *opts,
                           execution_fn *on_event, void *arg)
{
    execution_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->msg_id = strdup(msg_id);
    if (opts) self->opts = *opts;
    self->on_event = on_event;
    self->arg = arg;
    self->execution_count = -1;
    if (!self->msg_id) execution_destroy(&self);
    return self;
}

void execution_destroy(execution_t **self_p)
{
    if (!self_p || !*self_p) return;
    execution_t *self = *self_p;
    free(self->msg_id);
    s_items_free(&self->results);
    s_items_free(&self->out);
    s_items_free(&self->err);
    json_decref(self->error);
    free(self);
    *self_p = NULL;
}

static void s_emit(execution_t *self, exec_event_t *ev, jbuf_t *body)
{
    if (!self->on_event || self->muted) return;
    const char *text = body ? jbuf_text(body) : "";
    if (!text) return;  //  rendering ran out of memory
    ev->body = text;
    ev->len = body ? body->len : 0;
    self->on_event(self, ev, self->arg);
}

static bool s_render(const execution_t *self)
{
    return !self->opts.raw_events;
}

//  Account for n more retained bytes of logs or of results; false once that limit is
//  passed (and from then on).
static bool s_retain(execution_t *self, size_t n, bool result)
{
    size_t *retained = result ? &self->retained_results : &self->retained_logs;
    bool *full = result ? &self->results_full : &self->logs_full;
    if (self->opts.stream_only || *full) return false;
    if (self->opts.max_retained && *retained + n > self->opts.max_retained) {
        *full = self->truncated = true;
        char marker[160];
        int len = snprintf(marker, sizeof marker,
                           "\"[kbridge: %s truncated, retained-output limit of %zu bytes reached]\\n\"",
                           result ? "results" : "output", self->opts.max_retained);
        s_items_add(&self->err, marker, (size_t) len);
        return false;
    }
    *retained += n;
    return true;
}

static void s_apply_pending_clear(execution_t *self)
{
    if (!self->clear_pending) return;
    self->clear_pending = false;
    s_items_clear(&self->results);
    s_items_clear(&self->out);
    s_items_clear(&self->err);
    self->retained_logs = self->retained_results = 0;
    self->logs_full = self->results_full = false;
}

// ---------------------------------------------------------------------------------------
//  Values

//  A string token that failed validation (invalid UTF-8 from a kernel, a lone surrogate):
//  keep what is well formed, mark the rest U+FFFD.
static void s_add_sanitized_string(jbuf_t *b, jraw_t v)
{
    char *out = jbuf_space(b, 6 * v.len + 2);
    if (out) jbuf_commit(b, jraw_sanitize_string(v, out));
}

//  Add any raw value as valid JSON: strings spliced when valid, structures re-encoded by
//  jansson (they are small: application/json payloads, e2b/chart).
void execution_add_value(jbuf_t *b, jraw_t v)
{
    if (jraw_kind(v) == '"') {
        if (jraw_string_valid(v)) jbuf_add_raw(b, v);
        else s_add_sanitized_string(b, v);
        return;
    }
    json_t *decoded = jraw_decode(v);
    jbuf_add_json(b, decoded);  //  null if it did not parse
    json_decref(decoded);
}

//  A MIME value for a textual field: a string, or (nbformat allows it) a list of strings.
void execution_add_text(jbuf_t *b, jraw_t v, bool strip_quotes)
{
    if (jraw_kind(v) == '"' && !strip_quotes) {
        execution_add_value(b, v);
        return;
    }
    json_t *decoded = jraw_decode(v);
    if (json_is_array(decoded)) {
        jbuf_t joined;
        jbuf_init(&joined);
        size_t i;
        json_t *line;
        json_array_foreach(decoded, i, line) if (json_is_string(line))
            jbuf_add(&joined, json_string_value(line), json_string_length(line));
        json_decref(decoded);
        decoded = json_stringn_nocheck(jbuf_text(&joined) ? jbuf_text(&joined) : "", joined.len);
        jbuf_free(&joined);
    }
    if (strip_quotes && json_is_string(decoded)) {
        const char *s = json_string_value(decoded);
        size_t n = json_string_length(decoded);
        if (n >= 2 && ((s[0] == '\'' && s[n - 1] == '\'') || (s[0] == '"' && s[n - 1] == '"'))) {
            json_t *stripped = json_stringn_nocheck(s + 1, n - 2);
            json_decref(decoded);
            decoded = stripped;
        }
    }
    if (json_is_string(decoded)) jbuf_add_json(b, decoded);
    else if (jraw_kind(v) == '"') s_add_sanitized_string(b, v);
    else jbuf_adds(b, "null");
    json_decref(decoded);
}

//  MIME type -> result field of kbridge's own results, in E2B's wire order.
static const exec_field_t s_fields[] = {
    {"text/plain", "text", true},       {"text/html", "html", true},
    {"text/markdown", "markdown", true}, {"image/svg+xml", "svg", true},
    {"image/png", "png", true},         {"image/jpeg", "jpeg", true},
    {"application/pdf", "pdf", true},   {"text/latex", "latex", true},
    {"application/json", "json", false}, {"application/javascript", "javascript", true},
};
#define N_FIELDS (sizeof s_fields / sizeof *s_fields)

static int s_field_of(jraw_t key, const exec_field_t *fields, size_t nfields)
{
    for (size_t f = 0; f < nfields; f++)
        if (jraw_key_is(key, fields[f].mime)) return (int) f;
    return -1;
}

static bool s_is_field_name(jraw_t key, const exec_field_t *fields, size_t nfields)
{
    static const char *reserved[] = {"type", "extra", "is_main_result", "display_id", "update"};
    for (size_t f = 0; f < nfields; f++)
        if (jraw_key_is(key, fields[f].field)) return true;
    for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
        if (jraw_key_is(key, reserved[i])) return true;
    return false;
}

size_t execution_render_result(jbuf_t *b, jraw_t data, bool is_main, const exec_field_t *fields,
                               size_t nfields, bool strip_first, bool extra_top_level)
{
    //  The members are located once: walking data again per MIME field skipped every
    //  value (a 200 KB base64 PNG) a dozen times over.
    jraw_t stack_keys[32], stack_values[32];
    jraw_t *keys = stack_keys, *values = stack_values;
    size_t n = 0, cap = 32, pos;
    jraw_t key, value;
    for (pos = 0; jraw_next(data, &pos, &key, &value) == 1;) {
        if (n == cap) {
            jraw_t *k = malloc(2 * cap * sizeof *k), *v = malloc(2 * cap * sizeof *v);
            if (!k || !v) {
                free(k);
                free(v);
                break;  //  out of memory: the members so far
            }
            memcpy(k, keys, n * sizeof *k);
            memcpy(v, values, n * sizeof *v);
            if (keys != stack_keys) {
                free(keys);
                free(values);
            }
            keys = k;
            values = v;
            cap *= 2;
        }
        keys[n] = key;
        values[n] = value;
        n++;
    }
    size_t size = 0;
    bool first = true;
    for (size_t f = 0; f < nfields; f++) {
        for (size_t m = 0; m < n; m++) {
            if (!jraw_key_is(keys[m], fields[f].mime)) continue;
            if (!first) jbuf_add(b, ",", 1);
            first = false;
            jbuf_add(b, "\"", 1);
            jbuf_adds(b, fields[f].field);
            jbuf_add(b, "\":", 2);
            if (fields[f].textual) execution_add_text(b, values[m], f == 0 && strip_first);
            else execution_add_value(b, values[m]);
            size += values[m].len;
            break;
        }
    }
    //  Every other MIME type under extra (and, when asked, at the top level as well).
    for (int pass = 0; pass < (extra_top_level ? 2 : 1); pass++) {
        if (pass == 0) {
            if (!first) jbuf_add(b, ",", 1);
            jbuf_adds(b, "\"extra\":{");
        }
        bool first_extra = true;
        for (size_t m = 0; m < n; m++) {
            if (s_field_of(keys[m], fields, nfields) >= 0 || !jraw_string_valid(keys[m])) continue;
            if (pass == 1 && s_is_field_name(keys[m], fields, nfields)) continue;
            if (pass == 0 && !first_extra) jbuf_add(b, ",", 1);
            if (pass == 1) jbuf_add(b, ",", 1);
            first_extra = false;
            jbuf_add_raw(b, keys[m]);
            jbuf_add(b, ":", 1);
            execution_add_value(b, values[m]);
            if (pass == 0) size += values[m].len;
        }
        if (pass == 0) jbuf_add(b, "}", 1);
    }
    jbuf_adds(b, is_main ? ",\"is_main_result\":true" : ",\"is_main_result\":false");
    if (keys != stack_keys) {
        free(keys);
        free(values);
    }
    return size;
}

// ---------------------------------------------------------------------------------------
//  Traceback and errors

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
                while (k < n && !(s[k] >= '@' && s[k] <= '~')) k++;
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
    exec_event_t ev = {.kind = EXEC_EV_ERROR, .type = "error"};
    jx_get_str(self->error, "name", &ev.ename, false);
    jx_get_str(self->error, "value", &ev.evalue, false);
    jx_get_str(self->error, "traceback", &ev.traceback, false);
    jbuf_t body;
    jbuf_init(&body);
    if (s_render(self)) {
        const char *key;
        json_t *v;
        json_object_foreach(self->error, key, v)
        {
            if (body.len) jbuf_add(&body, ",", 1);
            jbuf_add_string(&body, key, strlen(key));
            jbuf_add(&body, ":", 1);
            jbuf_add_json(&body, v);
        }
    }
    s_emit(self, &ev, &body);
    jbuf_free(&body);
}

static void s_error_from(execution_t *self, json_t *content)
{
    const char *ename = "", *evalue = "";
    jx_get_str(content, "ename", &ename, true);
    jx_get_str(content, "evalue", &evalue, true);
    char *tb = execution_join_traceback(json_object_get(content, "traceback"));
    s_set_error(self, ename, evalue, tb ? tb : "");
    free(tb);
}

static void s_finish(execution_t *self)
{
    if (self->done) return;
    self->done = true;
    exec_event_t ev = {.kind = EXEC_EV_END, .type = "end_of_execution"};
    s_emit(self, &ev, NULL);
}

// ---------------------------------------------------------------------------------------
//  Messages

static void s_on_stream(execution_t *self, kmsg_t *msg)
{
    jraw_t content, name, text;
    content.p = kmsg_raw(msg, KMSG_CONTENT, &content.len);
    if (!content.p || jraw_member(content, "name", &name) || jraw_member(content, "text", &text) ||
        jraw_kind(text) != '"')
        return;
    bool is_err = jraw_key_is(name, "stderr");
    exec_event_t ev = {.kind = EXEC_EV_STREAM, .type = is_err ? "stderr" : "stdout",
                       .is_stderr = is_err, .text = text, .date = ""};
    if (kmsg_date(msg)) ev.date = kmsg_date(msg);
    s_apply_pending_clear(self);
    jbuf_t body;
    jbuf_init(&body);
    bool keep = !self->opts.stream_only && !self->logs_full;
    if (s_render(self) || keep) {
        jbuf_reserve(&body, text.len + 96);
        jbuf_adds(&body, "\"text\":");
        size_t token_at = body.len;
        execution_add_value(&body, text);
        size_t token_len = body.len - token_at;
        if (keep && jbuf_text(&body) && s_retain(self, token_len, false))
            s_items_add(is_err ? &self->err : &self->out, jbuf_text(&body) + token_at, token_len);
        if (s_render(self)) {
            jbuf_adds(&body, ",\"timestamp\":");
            jbuf_add_string(&body, ev.date, strlen(ev.date));
        } else {
            body.len = 0;
        }
    }
    s_emit(self, &ev, &body);
    jbuf_free(&body);
}

static void s_on_display(execution_t *self, kmsg_t *msg, bool is_main, bool update)
{
    jraw_t content, data, transient;
    content.p = kmsg_raw(msg, KMSG_CONTENT, &content.len);
    //  One walk for both members (each walk skips the whole of data).
    bool have_data = false, have_transient = false;
    jraw_t key, value;
    for (size_t pos = 0; jraw_next(content, &pos, &key, &value) == 1;) {
        if (!have_data && jraw_key_is(key, "data")) {
            data = value;
            have_data = true;
        } else if (!have_transient && jraw_key_is(key, "transient")) {
            transient = value;
            have_transient = true;
        }
    }
    if (!content.p || !have_data || jraw_kind(data) != '{') return;
    char *display_id = NULL;
    if (have_transient && jraw_kind(transient) == '{') {
        json_t *t = jraw_decode(transient);
        const char *id = NULL;
        if (jx_get_str(t, "display_id", &id, true) == 0 && id) display_id = strdup(id);
        json_decref(t);
    }
    if (update && !display_id) return;
    exec_event_t ev = {.kind = EXEC_EV_RESULT, .type = "result", .data = data, .is_main = is_main,
                       .update = update, .display_id = display_id};
    bool keep = !self->opts.stream_only;
    jbuf_t body;
    jbuf_init(&body);
    if (s_render(self) || keep) {
        jbuf_reserve(&body, data.len + 128);
        size_t size = execution_render_result(&body, data, is_main, s_fields, N_FIELDS, false, false);
        const char *members = jbuf_text(&body);
        if (members && update) {
            for (size_t i = 0; i < self->results.count; i++) {
                item_t *r = &self->results.items[i];
                if (!r->display_id || strcmp(r->display_id, display_id) != 0) continue;
                char *text = malloc(body.len + 3);
                if (!text) continue;
                text[0] = '{';
                memcpy(text + 1, members, body.len);
                text[body.len + 1] = '}';
                text[body.len + 2] = '\0';
                free(r->text);
                r->text = text;
                r->len = body.len + 2;
            }
        } else if (members) {
            s_apply_pending_clear(self);
            if (keep && s_retain(self, size, true)) {
                jbuf_t obj;
                jbuf_init(&obj);
                jbuf_add(&obj, "{", 1);
                jbuf_add(&obj, members, body.len);
                jbuf_add(&obj, "}", 1);
                item_t *r = jbuf_text(&obj) ? s_items_add(&self->results, jbuf_text(&obj), obj.len) : NULL;
                if (r && display_id) r->display_id = strdup(display_id);
                jbuf_free(&obj);
            }
        }
        if (s_render(self)) {
            if (display_id) {
                jbuf_adds(&body, ",\"display_id\":");
                jbuf_add_string(&body, display_id, strlen(display_id));
            }
            if (update) jbuf_adds(&body, ",\"update\":true");
        } else {
            body.len = 0;
        }
    } else if (!update) {
        s_apply_pending_clear(self);
    }
    s_emit(self, &ev, &body);
    jbuf_free(&body);
    free(display_id);
}

void execution_on_message(execution_t *self, kchan_type_t channel, kmsg_t *msg)
{
    if (self->got_reply && self->got_idle) return;
    const char *type = kmsg_type(msg);
    if (!type) return;
    if (channel == KCH_SHELL && strcmp(type, "execute_reply") == 0) {
        //  Status and count are read from the raw content (no jansson parse per cell); an
        //  error reply, rare, is parsed for its fields.
        jraw_t status, value;
        int rc = kmsg_content_member(msg, "status", &status);
        if (rc == KB_EPROTO) return;
        if (rc != KB_OK) status.len = 0;  //  absent: "ok"
        self->got_reply = true;
        int64_t count = -1;
        if (kmsg_content_member(msg, "execution_count", &value) == KB_OK &&
            jraw_int(value, &count) == KB_OK && count >= 0 && self->execution_count < 0)
            self->execution_count = count;
        if (!self->done && jraw_string_is(status, "error") && !self->error) {
            json_t *content = kmsg_content(msg);
            if (json_is_object(content)) s_error_from(self, content);
        } else if (!self->done && jraw_string_is(status, "aborted")) {
            s_set_error(self, "ExecutionAborted", "Execution was aborted", "");
        }
    } else if (channel != KCH_IOPUB) {
        //  Other replies and stdin requests are not part of the Execution.
    } else if (strcmp(type, "status") == 0) {
        //  Tracked even after a forced end: the queue waits for the kernel to settle.
        jraw_t state;
        if (kmsg_content_member(msg, "execution_state", &state) == KB_OK &&
            jraw_string_is(state, "idle"))
            self->got_idle = true;
    } else if (self->done) {
        //  Outputs after a forced end (timeout, requester gone) are dropped.
    } else if (strcmp(type, "stream") == 0) {
        s_on_stream(self, msg);
    } else if (strcmp(type, "display_data") == 0) {
        s_on_display(self, msg, false, false);
    } else if (strcmp(type, "update_display_data") == 0) {
        s_on_display(self, msg, false, true);
    } else if (strcmp(type, "execute_result") == 0) {
        s_on_display(self, msg, true, false);
    } else if (strcmp(type, "execute_input") == 0) {
        int64_t count = -1;
        jraw_t value;
        if (kmsg_content_member(msg, "execution_count", &value) == KB_OK &&
            jraw_int(value, &count) == KB_OK) {
            self->execution_count = count;
            exec_event_t ev = {.kind = EXEC_EV_COUNT, .type = "number_of_executions",
                               .execution_count = count};
            jbuf_t body;
            jbuf_init(&body);
            if (s_render(self)) {
                char text[64];
                int n = snprintf(text, sizeof text, "\"execution_count\":%lld", (long long) count);
                jbuf_add(&body, text, (size_t) n);
            }
            s_emit(self, &ev, &body);
            jbuf_free(&body);
        }
    } else if (strcmp(type, "clear_output") == 0) {
        bool wait = false;
        jx_get_bool(kmsg_content(msg), "wait", &wait, true);
        self->clear_pending = true;
        if (!wait) s_apply_pending_clear(self);
        exec_event_t ev = {.kind = EXEC_EV_CLEAR, .type = "clear_output", .wait = wait};
        jbuf_t body;
        jbuf_init(&body);
        if (s_render(self)) jbuf_adds(&body, wait ? "\"wait\":true" : "\"wait\":false");
        s_emit(self, &ev, &body);
        jbuf_free(&body);
    } else if (strcmp(type, "error") == 0) {
        //  Only the first kernel error is kept, as the E2B server does.
        json_t *content = kmsg_content(msg);
        if (!self->error && json_is_object(content)) s_error_from(self, content);
    }
    if (self->got_reply && self->got_idle) s_finish(self);
}

void execution_fail(execution_t *self, const char *name, const char *value)
{
    if (self->done) return;
    s_set_error(self, name, value, "");
    s_finish(self);
}

void execution_end_unreplied(execution_t *self, const char *name, const char *value)
{
    if (self->done) return;
    if (!self->error) s_set_error(self, name, value, "");
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

bool execution_idle_unreplied(const execution_t *self)
{
    return self->got_idle && !self->got_reply;
}

const char *execution_msg_id(const execution_t *self)
{
    return self->msg_id;
}

static void s_write_items(jbuf_t *b, const items_t *list)
{
    jbuf_add(b, "[", 1);
    for (size_t i = 0; i < list->count; i++) {
        if (i) jbuf_add(b, ",", 1);
        jbuf_add(b, list->items[i].text, list->items[i].len);
    }
    jbuf_add(b, "]", 1);
}

void execution_write(const execution_t *self, jbuf_t *b)
{
    jbuf_adds(b, "{\"results\":");
    s_write_items(b, &self->results);
    jbuf_adds(b, ",\"logs\":{\"stdout\":");
    s_write_items(b, &self->out);
    jbuf_adds(b, ",\"stderr\":");
    s_write_items(b, &self->err);
    jbuf_adds(b, "},\"error\":");
    jbuf_add_json(b, self->error);
    if (self->execution_count >= 0) {
        char count[40];
        snprintf(count, sizeof count, ",\"execution_count\":%lld", (long long) self->execution_count);
        jbuf_adds(b, count);
    } else {
        jbuf_adds(b, ",\"execution_count\":null");
    }
    if (self->truncated) jbuf_adds(b, ",\"truncated\":true");
    jbuf_add(b, "}", 1);
}

json_t *execution_json(const execution_t *self)
{
    jbuf_t b;
    jbuf_init(&b);
    execution_write(self, &b);
    json_t *obj = jbuf_text(&b) ? jx_loadb(jbuf_text(&b), b.len, NULL) : NULL;
    jbuf_free(&b);
    return obj;
}
