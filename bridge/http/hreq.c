/*  hreq - HTTP request/response over libwebsockets, buffered or chunked. */
#include "hreq.h"
#include "../buf/bufq.h"
#include "wsconn.h"
#include "lwsx.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WRITE_SLICE 65536

struct _hreq_t {
    struct lws *wsi;
    int refs;
    hmethod_t method;
    char *path;
    size_t max_body, max_outbound;
    char *body;
    size_t body_len;
    bool body_too_big;
    json_t *headers;  //  extra response headers, name -> value
    //  response state
    bool replied, headers_sent, streaming, stream_ended, abort, gone;
    hreq_t **slot;  //  the connection's pointer to its current request
    int status;
    char *content_type;
    unsigned char *reply_body;  //  buffered reply, with LWS_PRE headroom
    size_t reply_len, reply_sent;
    bufq_t chunks;  //  streamed body, framed as HTTP/1.1 chunks, not yet written
    void (*on_close)(hreq_t *, void *);
    void *on_close_arg;
};

static const struct {
    enum lws_token_indexes token;
    hmethod_t method;
    const char *name;
} s_methods[] = {
    {WSI_TOKEN_GET_URI, HM_GET, "GET"},         {WSI_TOKEN_POST_URI, HM_POST, "POST"},
    {WSI_TOKEN_PUT_URI, HM_PUT, "PUT"},         {WSI_TOKEN_PATCH_URI, HM_PATCH, "PATCH"},
    {WSI_TOKEN_DELETE_URI, HM_DELETE, "DELETE"}, {WSI_TOKEN_OPTIONS_URI, HM_OPTIONS, "OPTIONS"},
    {WSI_TOKEN_HEAD_URI, HM_HEAD, "HEAD"},
};

hreq_t *hreq_new(struct lws *wsi, const char *uri, size_t max_body, size_t max_outbound)
{
    hreq_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->wsi = wsi;
    self->refs = 1;
    self->max_body = max_body;
    self->max_outbound = max_outbound;
    self->method = HM_OTHER;
    for (size_t i = 0; i < sizeof s_methods / sizeof *s_methods; i++)
        if (lws_hdr_total_length(wsi, s_methods[i].token) > 0) {
            self->method = s_methods[i].method;
            break;
        }
    self->path = strdup(uri ? uri : "/");
    self->headers = json_object();
    self->body = malloc(1);
    if (!self->path || !self->headers || !self->body) {
        hreq__closed(self);
        return NULL;
    }
    self->body[0] = '\0';
    return self;
}

hmethod_t hreq_method(const hreq_t *self)
{
    return self->method;
}

const char *hreq_method_name(const hreq_t *self)
{
    for (size_t i = 0; i < sizeof s_methods / sizeof *s_methods; i++)
        if (s_methods[i].method == self->method) return s_methods[i].name;
    return "?";
}

const char *hreq_path(const hreq_t *self)
{
    return self->path;
}

const char *hreq_body(const hreq_t *self, size_t *len)
{
    if (len) *len = self->body_len;
    return self->body;
}

long long hreq_content_length(hreq_t *self)
{
    char buf[32];
    if (lwsx_header(self->wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, buf, sizeof buf) < 0) return -1;
    return atoll(buf);
}

int hreq__body(hreq_t *self, const void *in, size_t len)
{
    if (self->body_too_big) return KB_ETOOBIG;
    if (len == 0) return KB_OK;  //  lws may announce an empty chunk with a NULL pointer
    if (self->body_len + len > self->max_body) {
        self->body_too_big = true;
        return KB_ETOOBIG;
    }
    char *grown = realloc(self->body, self->body_len + len + 1);
    if (!grown) return KB_ENOMEM;
    self->body = grown;
    memcpy(self->body + self->body_len, in, len);
    self->body_len += len;
    self->body[self->body_len] = '\0';
    return KB_OK;
}

void hreq_add_header(hreq_t *self, const char *name, const char *value)
{
    json_object_set_new(self->headers, name, json_string(value));
}

static void s_want_write(hreq_t *self)
{
    if (!self->gone) lws_callback_on_writable(self->wsi);
}

void hreq_reply(hreq_t *self, int status, const char *content_type, const void *body, size_t len)
{
    if (self->replied || self->gone) return;
    self->replied = true;
    self->status = status;
    self->content_type = content_type ? strdup(content_type) : NULL;
    self->reply_body = malloc(LWS_PRE + len + 1);
    if (self->reply_body) {
        if (len) memcpy(self->reply_body + LWS_PRE, body, len);
        self->reply_len = len;
    }
    s_want_write(self);
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
    self->content_type = content_type ? strdup(content_type) : NULL;
    s_want_write(self);
}

static int s_queue_chunk(hreq_t *self, const void *data, size_t len, bool last)
{
    char head[24];
    int hn = last ? snprintf(head, sizeof head, "0\r\n\r\n")
                  : snprintf(head, sizeof head, "%zx\r\n", len);
    size_t total = (size_t) hn + (last ? 0 : len + 2);
    char *buf = wsconn_buf_alloc(total);
    if (!buf) return KB_ENOMEM;
    memcpy(buf, head, (size_t) hn);
    if (!last) {
        memcpy(buf + hn, data, len);
        memcpy(buf + hn + len, "\r\n", 2);
    }
    int rc = bufq_push(&self->chunks, buf, total, false);
    if (rc == KB_OK) s_want_write(self);
    return rc;
}

int hreq_stream_write(hreq_t *self, const void *data, size_t len)
{
    if (self->gone || self->stream_ended || !self->streaming) return KB_ECLOSED;
    if (len == 0) return KB_OK;  //  an empty chunk would end the body
    if (bufq_bytes(&self->chunks) + len > self->max_outbound) {
        klog_warn("http client too slow: %zu bytes queued, limit %zu; disconnecting",
                  bufq_bytes(&self->chunks) + len, self->max_outbound);
        bufq_clear(&self->chunks);
        self->stream_ended = true;
        self->abort = true;  //  the writeable callback closes the connection
        s_want_write(self);
        return KB_ETOOBIG;
    }
    return s_queue_chunk(self, data, len, false);
}

void hreq_stream_end(hreq_t *self)
{
    if (self->gone || self->stream_ended || !self->streaming) return;
    self->stream_ended = true;
    s_queue_chunk(self, NULL, 0, true);
}

bool hreq_replied(const hreq_t *self)
{
    return self->replied;
}

void hreq_hold(hreq_t *self)
{
    self->refs++;
}

static void s_free(hreq_t *self)
{
    bufq_clear(&self->chunks);
    free(self->path);
    free(self->body);
    free(self->content_type);
    free(self->reply_body);
    json_decref(self->headers);
    free(self);
}

void hreq_release(hreq_t **self_p)
{
    if (!self_p || !*self_p) return;
    hreq_t *self = *self_p;
    *self_p = NULL;
    if (--self->refs == 0) s_free(self);
}

void hreq_on_close(hreq_t *self, void (*fn)(hreq_t *, void *), void *arg)
{
    self->on_close = fn;
    self->on_close_arg = arg;
}

static int s_write_headers(hreq_t *self)
{
    unsigned char buf[LWS_PRE + 4096];
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;
    if (lws_add_http_header_status(self->wsi, (unsigned) self->status, &p, end)) return -1;
    if (self->content_type &&
        lws_add_http_header_by_token(self->wsi, WSI_TOKEN_HTTP_CONTENT_TYPE,
                                     (unsigned char *) self->content_type,
                                     (int) strlen(self->content_type), &p, end))
        return -1;
    if (self->streaming) {
        if (lws_add_http_header_by_token(self->wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING,
                                         (unsigned char *) "chunked", 7, &p, end))
            return -1;
    } else if (self->status != 204 && self->status != 304 &&
               lws_add_http_header_content_length(self->wsi, self->reply_len, &p, end)) {
        return -1;
    }
    const char *name;
    json_t *value;
    json_object_foreach(self->headers, name, value)
    {
        if (lws_add_http_header_by_name(self->wsi, (const unsigned char *) name,
                                        (const unsigned char *) json_string_value(value),
                                        (int) json_string_length(value), &p, end))
            return -1;
    }
    if (lws_finalize_write_http_header(self->wsi, start, &p, end)) return -1;
    self->headers_sent = true;
    return 0;
}

int hreq__writeable(hreq_t *self)
{
    if (self->abort) return -1;
    if (!self->replied || self->gone) return 0;
    if (!self->headers_sent && s_write_headers(self) != 0) return -1;
    if (!self->streaming) {
        size_t left = self->reply_len - self->reply_sent;
        if (left > 0 && self->method != HM_HEAD) {
            size_t n = left > WRITE_SLICE ? WRITE_SLICE : left;
            bool final = n == left;
            //  The LWS_PRE bytes before each slice are already-sent body: lws may use them.
            if (lws_write(self->wsi, self->reply_body + LWS_PRE + self->reply_sent, n,
                          final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) < (int) n)
                return -1;
            self->reply_sent += n;
            if (!final) {
                s_want_write(self);
                return 0;
            }
        }
    } else {
        while (self->chunks.head && !lws_send_pipe_choked(self->wsi)) {
            bufq_item_t *c = self->chunks.head;
            if (lws_write(self->wsi, (unsigned char *) c->payload, c->len, LWS_WRITE_HTTP) <
                (int) c->len)
                return -1;
            bufq_drop_head(&self->chunks);
        }
        if (self->chunks.head) {
            s_want_write(self);
            return 0;
        }
        if (!self->stream_ended) return 0;
    }
    //  Response complete: the connection waits for its next request (keep-alive) or
    //  closes. Its reference to this request goes now; the next one gets a new hreq.
    self->gone = true;
    if (self->slot) *self->slot = NULL;
    int close = lws_http_transaction_completed(self->wsi);
    hreq_release(&self);
    return close ? -1 : 0;
}

void hreq__closed(hreq_t *self)
{
    if (self->slot) *self->slot = NULL;
    if (!self->gone) {
        self->gone = true;
        if (self->on_close) {
            void (*fn)(hreq_t *, void *) = self->on_close;
            self->on_close = NULL;
            fn(self, self->on_close_arg);
        }
    }
    hreq_release(&self);
}

void hreq__bind(hreq_t *self, hreq_t **slot)
{
    self->slot = slot;
    *slot = self;
}
