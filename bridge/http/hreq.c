/*  hreq - HTTP/1.1 exchanges on a connection, and the request object. */
#include "hreq.h"
#include "hchunk.h"
#include "hutil.h"
#include "../buf/wbuf.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

//  After a response, up to this much unread request body is read and dropped so the
//  connection can stay open; a longer rest closes it.
#define DISCARD_MAX 65536
//  Pipelined bytes read ahead of the current exchange before reading pauses.
#define AHEAD_MAX 65536
//  Body bytes handed to a streaming consumer per call, so a pause takes effect soon.
#define BODY_SLICE 65536
#define MAX_NOTES 4

typedef struct _hserve_t hserve_t;

typedef enum { BODY_UNCLAIMED, BODY_BUFFER, BODY_STREAM, BODY_DISCARD, BODY_DONE } body_mode_t;

struct _hreq_t {
    hserve_t *hs;    //  NULL once the exchange is over for the connection
    hconn_t *conn;   //  valid while hs is
    char peer[64];
    int refs;
    hhead_t head;
    hmethod_t method;
    char *path, *raw_path;
    const char *query;
    uint64_t started;
    //  body
    hbody_t framing;
    uint64_t body_left;  //  HBODY_LENGTH: bytes still to come
    hchunk_t chunk;
    body_mode_t body_mode;
    bool body_paused, body_failed, sent_continue;
    char *body;
    size_t body_len, body_max;
    hreq_body_fn *body_done;
    hreq_body_events_t body_events;
    void *body_arg;
    int body_err;  //  set while a chunk feed fails
    //  response
    bool replied, response_done, streaming, chunked, fixed, close_after, gone, raw, half_close_ok;
    uint64_t fixed_left;  //  begin_length: bytes still to send
    int status;
    json_t *headers;  //  extra response headers, name -> value
    uint64_t bytes_sent;
    void (*on_close)(hreq_t *, void *);
    void *on_close_arg;
    void (*on_drain)(hreq_t *, void *);
    void *on_drain_arg;
    const void *note_keys[MAX_NOTES];
    void *note_values[MAX_NOTES];
};

struct _hserve_t {
    hconn_t *conn;
    hserve_config_t config;
    hserve_events_t events;
    void *arg;
    hreq_t *cur;
    size_t scanned;
    bool pending;     //  a head has begun (or the connection is new) and is not complete
    bool idle;        //  between exchanges, nothing of the next head yet
    bool detached;    //  handed to another protocol: freed after the current read
    bool in_read;
};

static const struct {
    const char *name;
    hmethod_t method;
} s_methods[] = {
    {"GET", HM_GET},     {"POST", HM_POST},       {"PUT", HM_PUT},   {"PATCH", HM_PATCH},
    {"DELETE", HM_DELETE}, {"OPTIONS", HM_OPTIONS}, {"HEAD", HM_HEAD},
};

static void s_finish_exchange(hserve_t *hs);
static void s_reply_and_close(hserve_t *hs, int status, const char *why);

// ---------------------------------------------------------------------------------------
//  The request object

static void s_free(hreq_t *self)
{
    hparse_free(&self->head);
    free(self->path);
    free(self->raw_path);
    free(self->body);
    json_decref(self->headers);
    free(self);
}

void hreq_hold(hreq_t *self)
{
    self->refs++;
}

void hreq_release(hreq_t **self_p)
{
    if (!self_p || !*self_p) return;
    hreq_t *self = *self_p;
    *self_p = NULL;
    if (--self->refs == 0) s_free(self);
}

static void s_gone(hreq_t *self)
{
    if (self->gone) return;
    self->gone = true;
    if (self->on_close) {
        void (*fn)(hreq_t *, void *) = self->on_close;
        self->on_close = NULL;
        fn(self, self->on_close_arg);
    }
}

hmethod_t hreq_method(const hreq_t *self)
{
    return self->method;
}

const char *hreq_method_name(const hreq_t *self)
{
    return self->head.method ? self->head.method : "?";
}

const char *hreq_path(const hreq_t *self)
{
    return self->path;
}

const char *hreq_raw_path(const hreq_t *self)
{
    return self->raw_path;
}

const char *hreq_query_string(const hreq_t *self)
{
    return self->query ? self->query : "";
}

int hreq_query(const hreq_t *self, const char *name, char *out, size_t size)
{
    return hutil_query(self->query, name, out, size);
}

const char *hreq_header(const hreq_t *self, const char *name)
{
    return hparse_header(&self->head, name);
}

const hhead_t *hreq_head(const hreq_t *self)
{
    return &self->head;
}

const char *hreq_peer(const hreq_t *self)
{
    return self->peer;
}

hconn_t *hreq_conn(const hreq_t *self)
{
    return self->hs ? self->conn : NULL;
}

bool hreq_is_websocket(const hreq_t *self)
{
    return self->method == HM_GET && hparse_header_has_token(&self->head, "upgrade", "websocket") &&
           hparse_header_has_token(&self->head, "connection", "upgrade");
}

uint64_t hreq_started(const hreq_t *self)
{
    return self->started;
}

bool hreq_has_body(const hreq_t *self)
{
    return self->framing != HBODY_NONE;
}

int64_t hreq_body_length(const hreq_t *self)
{
    if (self->framing == HBODY_LENGTH) {
        uint64_t n;
        const char *v = hparse_header(&self->head, "content-length");
        n = v ? strtoull(v, NULL, 10) : 0;
        return (int64_t) n;
    }
    return self->framing == HBODY_NONE ? 0 : -1;
}

void hreq_set_note(hreq_t *self, const void *key, void *value)
{
    for (int i = 0; i < MAX_NOTES; i++)
        if (!self->note_keys[i] || self->note_keys[i] == key) {
            self->note_keys[i] = key;
            self->note_values[i] = value;
            return;
        }
}

void *hreq_note(const hreq_t *self, const void *key)
{
    for (int i = 0; i < MAX_NOTES; i++)
        if (self->note_keys[i] == key) return self->note_values[i];
    return NULL;
}

// ---------------------------------------------------------------------------------------
//  Body

static void s_send_continue(hreq_t *self)
{
    if (self->sent_continue || self->replied || !self->hs) return;
    self->sent_continue = true;
    const char *expect = hparse_header(&self->head, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && self->framing != HBODY_NONE)
        hconn_write_copy(self->conn, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

//  Deliver a piece of body to whoever wants it.
static void s_body_piece(const char *data, size_t len, void *arg)
{
    hreq_t *self = arg;
    if (!len) return;
    switch (self->body_mode) {
    case BODY_BUFFER: {
        if (self->body_failed) return;
        if (self->body_len + len > self->body_max) {
            self->body_failed = true;
            self->body_err = KB_ETOOBIG;
            return;
        }
        char *grown = realloc(self->body, self->body_len + len + 1);
        if (!grown) {
            self->body_failed = true;
            self->body_err = KB_ENOMEM;
            return;
        }
        self->body = grown;
        memcpy(self->body + self->body_len, data, len);
        self->body_len += len;
        self->body[self->body_len] = '\0';
        break;
    }
    case BODY_STREAM:
        if (self->body_events.on_data) self->body_events.on_data(self, data, len, self->body_arg);
        break;
    default: break;
    }
}

//  The body ended (err 0) or failed: tell whoever reads it, once.
static void s_body_end(hreq_t *self, int err)
{
    body_mode_t mode = self->body_mode;
    self->body_mode = BODY_DONE;
    if (mode == BODY_BUFFER) {
        if (!err && self->body_failed) err = self->body_err;
        hreq_body_fn *done = self->body_done;
        self->body_done = NULL;
        if (done) done(self, err, self->body_arg);
    } else if (mode == BODY_STREAM) {
        void (*end)(hreq_t *, int, void *) = self->body_events.on_end;
        self->body_events.on_end = NULL;
        if (end) end(self, err, self->body_arg);
    }
}

//  Feed body bytes from the connection. Returns how many were used, or -1 when the
//  coding is malformed (the connection is being closed).
static long s_feed_body(hreq_t *self, char *data, size_t len)
{
    if (self->body_mode == BODY_DONE || self->body_mode == BODY_UNCLAIMED) return 0;
    if (self->body_mode == BODY_STREAM && self->body_paused) return 0;
    size_t slice = self->body_mode == BODY_STREAM && len > BODY_SLICE ? BODY_SLICE : len;
    size_t used = 0;
    if (self->framing == HBODY_LENGTH) {
        size_t n = slice;
        if ((uint64_t) n > self->body_left) n = (size_t) self->body_left;
        s_body_piece(data, n, self);
        self->body_left -= n;
        used = n;
        if (self->body_left == 0) s_body_end(self, 0);
    } else if (self->framing == HBODY_CHUNKED) {
        long n = hchunk_feed(&self->chunk, data, slice, s_body_piece, self);
        if (n < 0) {
            klog_debug("request body: %s", self->chunk.why);
            s_body_end(self, KB_EPROTO);
            return -1;
        }
        used = (size_t) n;
        if (self->chunk.done) s_body_end(self, 0);
    } else {
        s_body_end(self, 0);
    }
    //  Buffered bodies over their limit end at once: the rest is never read.
    if (self->body_mode == BODY_BUFFER && self->body_failed) s_body_end(self, self->body_err);
    return (long) used;
}

static void s_start_body(hreq_t *self)
{
    s_send_continue(self);
    if (self->framing == HBODY_NONE) {
        s_body_end(self, 0);
        return;
    }
    if (self->hs) {
        hconn_set_timer(self->conn, self->hs->config.idle_timeout_ms);
        hconn_resume_read(self->conn);
    }
}

void hreq_read_body(hreq_t *self, size_t max, hreq_body_fn *done, void *arg)
{
    if (self->body_mode != BODY_UNCLAIMED) {
        if (done) done(self, KB_EINVAL, arg);
        return;
    }
    self->body_mode = BODY_BUFFER;
    self->body_max = max;
    self->body_done = done;
    self->body_arg = arg;
    if (self->framing == HBODY_LENGTH && self->body_left > max) {
        //  Known to be too large: no need to read it.
        self->body_mode = BODY_DONE;
        if (done) done(self, KB_ETOOBIG, arg);
        return;
    }
    if (!self->body) {
        self->body = malloc(1);
        if (self->body) self->body[0] = '\0';
    }
    if (!self->hs && self->framing != HBODY_NONE) {
        s_body_end(self, KB_ECLOSED);
        return;
    }
    s_start_body(self);
}

const char *hreq_body(const hreq_t *self, size_t *len)
{
    if (len) *len = self->body_len;
    return self->body ? self->body : "";
}

void hreq_body_stream(hreq_t *self, const hreq_body_events_t *events, void *arg)
{
    if (self->body_mode != BODY_UNCLAIMED) return;
    self->body_mode = BODY_STREAM;
    self->body_events = *events;
    self->body_arg = arg;
    if (!self->hs && self->framing != HBODY_NONE) {
        s_body_end(self, KB_ECLOSED);
        return;
    }
    s_start_body(self);
}

void hreq_body_stop(hreq_t *self)
{
    if (self->body_mode != BODY_STREAM) return;
    memset(&self->body_events, 0, sizeof self->body_events);
    self->close_after = true;
}

void hreq_body_pause(hreq_t *self)
{
    if (self->body_mode != BODY_STREAM) return;
    self->body_paused = true;
    if (self->hs) hconn_pause_read(self->conn);
}

void hreq_body_resume(hreq_t *self)
{
    if (!self->body_paused) return;
    self->body_paused = false;
    if (self->hs) hconn_resume_read(self->conn);
}

// ---------------------------------------------------------------------------------------
//  Response

void hreq_add_header(hreq_t *self, const char *name, const char *value)
{
    char clean[128];
    size_t n = strlen(name);
    if (n && name[n - 1] == ':') n--;
    if (n >= sizeof clean) return;
    for (size_t i = 0; i < n; i++) clean[i] = name[i];
    clean[n] = '\0';
    json_object_set_new(self->headers, clean, json_string(value ? value : ""));
}

//  Whether the connection can be reused after this response.
static bool s_keep_alive(hreq_t *self)
{
    if (self->close_after || !self->hs) return false;
    if (!hparse_keep_alive(&self->head)) return false;
    switch (self->body_mode) {
    case BODY_DONE: return true;
    case BODY_UNCLAIMED:
    case BODY_DISCARD:
        //  The rest of an unread body is skipped if it is short and its length known.
        return self->framing == HBODY_NONE ||
               (self->framing == HBODY_LENGTH && self->body_left <= DISCARD_MAX);
    default: return false;
    }
}

//  The status line and headers. length < 0: no Content-Length (chunked or until close).
static int s_write_head(hreq_t *self, int status, const char *content_type, int64_t length,
                        bool chunked, const void *body, size_t body_len)
{
    if (!self->hs) return KB_ECLOSED;
    bool keep = s_keep_alive(self);
    if (!keep) self->close_after = true;
    size_t cap = 512;
    const char *name;
    json_t *value;
    json_object_foreach(self->headers, name, value) cap += strlen(name) + json_string_length(value) + 4;
    if (content_type) cap += strlen(content_type);
    //  A buffered body goes out in the same buffer as the head: one write, one segment.
    char *buf = wbuf_alloc(cap + body_len);
    if (!buf) return KB_ENOMEM;
    const char *reason = hparse_reason(status);
    int n = snprintf(buf, cap, "HTTP/1.%d %d %s\r\nServer: kbridge\r\n",
                     self->head.version_minor == 0 ? 0 : 1, status, *reason ? reason : "Status");
    size_t at = (size_t) n;
    if (content_type)
        at += (size_t) snprintf(buf + at, cap - at, "Content-Type: %s\r\n", content_type);
    if (chunked)
        at += (size_t) snprintf(buf + at, cap - at, "Transfer-Encoding: chunked\r\n");
    else if (length >= 0 && status != 204 && status != 304 && status / 100 != 1)
        at += (size_t) snprintf(buf + at, cap - at, "Content-Length: %lld\r\n", (long long) length);
    json_object_foreach(self->headers, name, value)
        at += (size_t) snprintf(buf + at, cap - at, "%s: %s\r\n", name, json_string_value(value));
    if (!keep)
        at += (size_t) snprintf(buf + at, cap - at, "Connection: close\r\n");
    else if (self->head.version_minor == 0)
        at += (size_t) snprintf(buf + at, cap - at, "Connection: keep-alive\r\n");
    at += (size_t) snprintf(buf + at, cap - at, "\r\n");
    if (body_len) {
        memcpy(buf + at, body, body_len);
        at += body_len;
    }
    return hconn_write(self->conn, buf, buf, at);
}

//  The response is complete: the exchange ends once the body is settled too.
static void s_response_done(hreq_t *self)
{
    self->response_done = true;
    hserve_t *hs = self->hs;
    if (hs && hs->cur == self) s_finish_exchange(hs);
}

void hreq_reply(hreq_t *self, int status, const char *content_type, const void *body, size_t len)
{
    if (self->replied || self->gone) return;
    self->replied = true;
    self->status = status;
    if (!self->hs) return;
    bool with_body = len && self->method != HM_HEAD && status != 204 && status != 304;
    if (s_write_head(self, status, content_type, (int64_t) len, false, with_body ? body : NULL,
                     with_body ? len : 0) == KB_OK && with_body)
        self->bytes_sent += len;
    s_response_done(self);
}

void hreq_reply_json(hreq_t *self, int status, json_t *body)
{
    size_t len = 0;
    char *text = body ? jx_dumps(body, false, &len) : NULL;
    json_decref(body);
    hreq_reply(self, status, "application/json", text ? text : "null", text ? len : 4);
    free(text);
}

void hreq_reply_text(hreq_t *self, int status, const char *text)
{
    hreq_reply(self, status, "text/plain; charset=utf-8", text, strlen(text));
}

void hreq_reply_error(hreq_t *self, int status, const char *message)
{
    hreq_reply_json(self, status, json_pack("{s:s, s:n}", "message", message, "reason"));
}

void hreq_stream_begin(hreq_t *self, int status, const char *content_type)
{
    if (self->replied || self->gone) return;
    self->replied = self->streaming = true;
    self->status = status;
    self->chunked = self->head.version_minor >= 1;
    if (!self->chunked) self->close_after = true;  //  HTTP/1.0: the end is the close
    s_write_head(self, status, content_type, -1, self->chunked, NULL, 0);
}

void hreq_stream_begin_length(hreq_t *self, int status, const char *content_type, uint64_t length)
{
    if (self->replied || self->gone) return;
    self->replied = self->streaming = self->fixed = true;
    self->status = status;
    self->fixed_left = length;
    s_write_head(self, status, content_type, (int64_t) length, false, NULL, 0);
    if (self->method == HM_HEAD) self->fixed_left = 0;
}

static int s_too_slow(hreq_t *self)
{
    klog_warn("http client %s too slow: %zu bytes queued, limit %zu; disconnecting",
              hconn_peer(self->conn), hconn_queued(self->conn), self->hs->config.max_outbound);
    self->close_after = true;
    hconn_discard_queued(self->conn);
    hconn_close(self->conn, false);
    return KB_ETOOBIG;
}

int hreq_stream_write_buf(hreq_t *self, char *payload, size_t len)
{
    if (!self->hs || self->gone || !self->streaming || self->response_done) {
        wbuf_free(payload);
        return KB_ECLOSED;
    }
    if (len == 0 || self->method == HM_HEAD) {
        wbuf_free(payload);
        return KB_OK;
    }
    if (hconn_queued(self->conn) + len > self->hs->config.max_outbound) {
        wbuf_free(payload);
        return s_too_slow(self);
    }
    const char *data = payload;
    size_t wire = len;
    if (self->chunked) {
        //  The chunk-size line goes in the headroom, the CRLF in the tailroom.
        char head[24];
        int hn = snprintf(head, sizeof head, "%zx\r\n", len);
        memcpy(payload - hn, head, (size_t) hn);
        memcpy(payload + len, "\r\n", 2);
        data = payload - hn;
        wire = (size_t) hn + len + 2;
    } else if (self->fixed) {
        if ((uint64_t) len > self->fixed_left) len = wire = (size_t) self->fixed_left;
        self->fixed_left -= len;
        if (len == 0) {
            wbuf_free(payload);
            return KB_OK;
        }
    }
    self->bytes_sent += len;
    int rc = hconn_write(self->conn, payload, data, wire);
    if (rc == KB_OK && self->on_drain && hconn_queued(self->conn) >= 256 * 1024)
        hconn_want_drain(self->conn);
    return rc;
}

int hreq_stream_write(hreq_t *self, const void *data, size_t len)
{
    if (len == 0) return KB_OK;  //  an empty chunk would end the body
    char *p = wbuf_dup(data, len);
    if (!p) return KB_ENOMEM;
    return hreq_stream_write_buf(self, p, len);
}

void hreq_stream_end(hreq_t *self)
{
    if (!self->streaming || self->response_done) return;
    if (self->hs && !self->gone && self->chunked && self->method != HM_HEAD)
        hconn_write_copy(self->conn, "0\r\n\r\n", 5);
    //  A fixed-length body cut short leaves the client waiting for the rest: only closing
    //  tells it.
    if (self->fixed && self->fixed_left) self->close_after = true;
    s_response_done(self);
}

bool hreq_raw_begin(hreq_t *self, int status)
{
    if (self->replied || self->gone) return false;
    self->replied = self->streaming = self->raw = true;
    self->status = status;
    bool keep = s_keep_alive(self);
    if (!keep) self->close_after = true;
    return keep;
}

int hreq_raw_write(hreq_t *self, const void *data, size_t len)
{
    if (!self->hs || self->gone || self->response_done) return KB_ECLOSED;
    if (!len) return KB_OK;
    if (hconn_queued(self->conn) + len > self->hs->config.max_outbound) return s_too_slow(self);
    self->bytes_sent += len;
    return hconn_write_copy(self->conn, data, len);
}

void hreq_allow_half_close(hreq_t *self)
{
    self->half_close_ok = true;
}

void hreq_raw_end(hreq_t *self, bool close)
{
    if (!self->raw || self->response_done) return;
    if (close) self->close_after = true;
    s_response_done(self);
}

size_t hreq_stream_queued(const hreq_t *self)
{
    return self->hs ? hconn_queued(self->conn) : 0;
}

void hreq_on_drain(hreq_t *self, void (*fn)(hreq_t *req, void *arg), void *arg)
{
    self->on_drain = fn;
    self->on_drain_arg = arg;
    if (fn && self->hs) hconn_want_drain(self->conn);
}

bool hreq_replied(const hreq_t *self)
{
    return self->replied;
}

int hreq_status(const hreq_t *self)
{
    return self->status;
}

uint64_t hreq_bytes_sent(const hreq_t *self)
{
    return self->bytes_sent;
}

void hreq_on_close(hreq_t *self, void (*fn)(hreq_t *, void *), void *arg)
{
    self->on_close = fn;
    self->on_close_arg = arg;
}

bool hreq_gone(const hreq_t *self)
{
    return self->gone;
}

// ---------------------------------------------------------------------------------------
//  The connection's HTTP side

static void s_set_pending(hserve_t *hs, bool pending)
{
    if (hs->pending == pending) return;
    hs->pending = pending;
    if (hs->events.on_pending) hs->events.on_pending(hs->conn, pending, hs->arg);
}

static void s_wait_head(hserve_t *hs, bool fresh)
{
    hs->scanned = 0;
    hs->idle = !fresh;
    //  A new connection owes a head at once; an idle kept-alive one only once it starts.
    s_set_pending(hs, fresh);
    hconn_set_timer(hs->conn, fresh ? hs->config.header_timeout_ms : hs->config.idle_timeout_ms);
}

//  The current exchange is over if both its response and its body are.
static void s_finish_exchange(hserve_t *hs)
{
    hreq_t *req = hs->cur;
    if (!req || !req->response_done) return;
    if (req->body_mode != BODY_DONE) {
        if (s_keep_alive(req) && !req->close_after) {
            req->body_mode = BODY_DISCARD;
            if (req->framing == HBODY_NONE || req->body_left == 0) req->body_mode = BODY_DONE;
            else {
                hconn_resume_read(hs->conn);
                return;  //  finished when the rest has been skipped
            }
        } else {
            req->close_after = true;
        }
    }
    hs->cur = NULL;
    req->hs = NULL;
    if (hs->events.on_done) hs->events.on_done(req, hs->arg);
    bool close = req->close_after;
    hreq_release(&req);
    if (close) {
        hconn_close(hs->conn, true);
        return;
    }
    s_wait_head(hs, false);
    //  Pipelined bytes already here are parsed from the next loop turn.
    hconn_resume_read(hs->conn);
}

static void s_reply_and_close(hserve_t *hs, int status, const char *why)
{
    char body[512], clean[256];
    size_t k = 0;
    for (; why[k] && k + 1 < sizeof clean; k++) clean[k] = why[k] == '"' || why[k] == '\\' ? '\'' : why[k];
    clean[k] = '\0';
    why = clean;
    const char *reason = hparse_reason(status);
    int blen = snprintf(body, sizeof body, "{\"message\":\"%s\",\"reason\":null}", why);
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nServer: kbridge\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n",
                      status, reason, blen);
    hconn_write_copy(hs->conn, head, (size_t) hn);
    hconn_write_copy(hs->conn, body, (size_t) blen);
    hconn_close(hs->conn, true);
}

static hmethod_t s_method(const char *name)
{
    for (size_t i = 0; i < sizeof s_methods / sizeof *s_methods; i++)
        if (strcmp(s_methods[i].name, name) == 0) return s_methods[i].method;
    return HM_OTHER;
}

//  A complete head of n bytes: parse it and hand it over. Returns false if the
//  connection is being closed.
static bool s_on_head(hserve_t *hs, const char *data, size_t n)
{
    char why[200];
    hreq_t *req = calloc(1, sizeof *req);
    if (!req) {
        s_reply_and_close(hs, 503, "out of memory");
        return false;
    }
    req->refs = 1;
    req->conn = hs->conn;
    snprintf(req->peer, sizeof req->peer, "%s", hconn_peer(hs->conn));
    req->started = kb_now_ms();
    req->headers = json_object();
    int status = hparse_request(data, n, &req->head, why, sizeof why);
    if (!status) status = hparse_request_body(&req->head, &req->framing, &req->body_left, why, sizeof why);
    if (!status && req->head.method) {
        const char *target = req->head.target;
        const char *q = strchr(target, '?');
        size_t plen = q ? (size_t) (q - target) : strlen(target);
        req->query = q ? q + 1 : NULL;
        req->raw_path = strndup(target, plen);
        req->path = malloc(plen + 1);
        if (!req->raw_path || !req->path || !req->headers) {
            status = 503;
            snprintf(why, sizeof why, "out of memory");
        } else if (hutil_decode(target, plen, false, req->path, plen + 1) < 0) {
            status = 400;
            snprintf(why, sizeof why, "malformed percent-encoding in the path");
        }
    }
    if (status) {
        klog_debug("connection %s: refusing a request: %d %s", hconn_peer(hs->conn), status, why);
        s_free(req);
        s_reply_and_close(hs, status, why);
        return false;
    }
    req->method = s_method(req->head.method);
    if (req->framing == HBODY_CHUNKED) hchunk_init(&req->chunk);
    req->hs = hs;
    hs->cur = req;
    hs->idle = false;
    s_set_pending(hs, false);
    hconn_set_timer(hs->conn, 0);
    //  Nothing more is read until the handler claims the body (or the exchange ends).
    hconn_pause_read(hs->conn);
    hreq_hold(req);
    if (hs->events.on_request) hs->events.on_request(req, hs->arg);
    if (req->hs && !req->replied && req->body_mode == BODY_UNCLAIMED && req->framing == HBODY_NONE)
        req->body_mode = BODY_DONE;  //  nothing to claim
    bool alive = !hconn_closing(hs->conn);
    hreq_release(&req);
    return alive;
}

static size_t s_serve(hserve_t *hs, char *data, size_t len);

static size_t s_on_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    (void) conn;
    hserve_t *hs = arg;
    hs->in_read = true;
    size_t used = s_serve(hs, data, len);
    hs->in_read = false;
    if (hs->detached) free(hs);
    return used;
}

static size_t s_serve(hserve_t *hs, char *data, size_t len)
{
    size_t used = 0;
    while (used < len && !hs->detached && !hconn_closing(hs->conn)) {
        hreq_t *req = hs->cur;
        if (req) {
            if (req->body_mode == BODY_DISCARD) {
                size_t n = len - used;
                if ((uint64_t) n > req->body_left) n = (size_t) req->body_left;
                req->body_left -= n;
                used += n;
                if (req->body_left == 0) {
                    req->body_mode = BODY_DONE;
                    s_finish_exchange(hs);
                }
                continue;
            }
            if (req->body_mode == BODY_BUFFER || req->body_mode == BODY_STREAM) {
                hconn_set_timer(hs->conn, hs->config.idle_timeout_ms);
                //  The body's end may answer the request and finish the exchange, which
                //  drops the last references to req: hold one until we are done with it.
                hreq_hold(req);
                long n = s_feed_body(req, data + used, len - used);
                if (n < 0) {
                    if (!req->replied) {
                        req->close_after = true;
                        hreq_reply_error(req, 400, "malformed chunked request body");
                    }
                    hreq_release(&req);
                    hconn_close(hs->conn, true);
                    return len;
                }
                bool finish = req->body_mode == BODY_DONE && hs->cur == req;
                hreq_release(&req);
                used += (size_t) n;
                if (finish) {
                    hconn_set_timer(hs->conn, 0);
                    s_finish_exchange(hs);
                }
                if (n == 0) break;  //  paused
                continue;
            }
            //  The body is unclaimed, or done and the response is still under way: what
            //  follows waits, and reading stops once enough of it has piled up.
            if (len - used >= AHEAD_MAX || req->body_mode == BODY_UNCLAIMED) hconn_pause_read(hs->conn);
            break;
        }
        //  Between requests, stray CRLFs are skipped (RFC 9112 2.2).
        while (used < len && hs->scanned == 0 && (data[used] == '\r' || data[used] == '\n')) used++;
        if (used == len) break;
        if (hs->idle) {
            hs->idle = false;
            s_set_pending(hs, true);
            hconn_set_timer(hs->conn, hs->config.header_timeout_ms);
        }
        long n = hparse_head_length(data + used, len - used, hs->config.max_head, &hs->scanned);
        if (n == 0) break;
        if (n < 0) {
            s_reply_and_close(hs, 431, "the request head is too large");
            return len;
        }
        hs->scanned = 0;
        size_t head_at = used;
        used += (size_t) n;
        if (!s_on_head(hs, data + head_at, (size_t) n)) return len;
    }
    return used;
}

static void s_on_eof(hconn_t *conn, void *arg)
{
    hserve_t *hs = arg;
    hreq_t *req = hs->cur;
    if (req && req->half_close_ok && req->body_mode == BODY_DONE && !req->response_done) {
        req->close_after = true;  //  the answer still goes; hconn's close ends it otherwise
        return;
    }
    if (req) {
        if (req->body_mode == BODY_BUFFER || req->body_mode == BODY_STREAM)
            s_body_end(req, KB_ECLOSED);
        if (!req->response_done) s_gone(req);
    }
    hconn_close(conn, true);
}

static void s_on_timer(hconn_t *conn, void *arg)
{
    hserve_t *hs = arg;
    hreq_t *req = hs->cur;
    if (!req) {
        if (hs->idle) {
            hconn_close(conn, false);
        } else {
            klog_debug("connection %s: no complete request head in %llu ms", hconn_peer(conn),
                       (unsigned long long) hs->config.header_timeout_ms);
            s_reply_and_close(hs, 408, "the request head did not arrive in time");
        }
        return;
    }
    //  A body that stalled.
    if (req->body_mode == BODY_BUFFER || req->body_mode == BODY_STREAM) {
        req->close_after = true;
        //  The handler may let go of the request when told its body ended: hold it.
        hreq_hold(req);
        s_body_end(req, KB_ETIMEDOUT);
        if (!req->replied) hreq_reply_error(req, 408, "the request body stalled");
        hreq_release(&req);
        hconn_close(conn, true);
    }
}

static void s_on_close(hconn_t *conn, void *arg)
{
    (void) conn;
    hserve_t *hs = arg;
    s_set_pending(hs, false);
    hreq_t *req = hs->cur;
    hs->cur = NULL;
    if (req) {
        req->hs = NULL;
        if (req->body_mode == BODY_BUFFER || req->body_mode == BODY_STREAM)
            s_body_end(req, KB_ECLOSED);
        if (!req->response_done) s_gone(req);
        if (hs->events.on_done) hs->events.on_done(req, hs->arg);
        hreq_release(&req);
    }
    if (hs->events.on_gone) hs->events.on_gone(hs->conn, hs->arg);
    free(hs);
}

static void s_on_drain(hconn_t *conn, void *arg)
{
    (void) conn;
    hserve_t *hs = arg;
    hreq_t *req = hs->cur;
    if (req && req->on_drain) req->on_drain(req, req->on_drain_arg);
}

static const hconn_driver_t s_driver = {s_on_read, s_on_eof, s_on_drain, s_on_timer, s_on_close, NULL};

int hserve_start(hconn_t *conn, const hserve_config_t *config, const hserve_events_t *events,
                 void *arg)
{
    hserve_t *hs = calloc(1, sizeof *hs);
    if (!hs) return KB_ENOMEM;
    hs->conn = conn;
    hs->config = *config;
    if (events) hs->events = *events;
    hs->arg = arg;
    hconn_set_driver(conn, &s_driver, hs);
    s_wait_head(hs, true);
    return KB_OK;
}

hconn_t *hreq_detach(hreq_t *self)
{
    hserve_t *hs = self->hs;
    if (!hs) return NULL;
    hconn_t *conn = hs->conn;
    hs->detached = true;
    hs->cur = NULL;
    self->hs = NULL;
    self->replied = self->response_done = true;
    self->body_mode = BODY_DONE;
    if (hs->events.on_done) hs->events.on_done(self, hs->arg);
    hreq_release(&self);  //  the connection's reference
    hconn_set_timer(conn, 0);
    s_set_pending(hs, false);
    if (hs->events.on_gone) hs->events.on_gone(conn, hs->arg);
    if (!hs->in_read) free(hs);
    return conn;
}
