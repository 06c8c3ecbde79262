/*  wsconn - a WebSocket connection with bounded outbound buffering. */
#include "wsconn.h"
#include "../buf/bufq.h"
#include "../buf/jbuf.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <stdlib.h>
#include <string.h>

#define CLOSE_FLUSH_SECS 30

struct _wsconn_t {
    struct lws *wsi;
    size_t max_message, max_outbound;
    wsconn_events_t events;
    void *arg;
    //  inbound reassembly
    char *in;
    size_t in_len, in_cap;
    bool in_oversize;
    //  outbound
    bufq_t out;  //  frames not yet handed to the socket
    bool closing, close_sent;
    int close_code;
    char close_reason[124];  //  a close frame holds 125 bytes including the code
};

wsconn_t *wsconn_new(struct lws *wsi, size_t max_message, size_t max_outbound)
{
    wsconn_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->wsi = wsi;
    self->max_message = max_message;
    self->max_outbound = max_outbound;
    return self;
}

void wsconn_set_events(wsconn_t *self, const wsconn_events_t *events, void *arg)
{
    self->events = *events;
    self->arg = arg;
}

void *wsconn_clear_events(wsconn_t *self)
{
    void *arg = self->arg;
    memset(&self->events, 0, sizeof self->events);
    self->arg = NULL;
    return arg;
}

char *wsconn_buf_alloc(size_t len)
{
    char *raw = malloc(LWS_PRE + len + 1);
    return raw ? raw + LWS_PRE : NULL;
}

void wsconn_buf_free(char *payload)
{
    if (payload) free(payload - LWS_PRE);
}

static void s_request_write(wsconn_t *self)
{
    lws_callback_on_writable(self->wsi);
}

int wsconn_send_buf(wsconn_t *self, char *payload, size_t len, bool binary)
{
    if (self->closing) {
        wsconn_buf_free(payload);
        return KB_ECLOSED;
    }
    if (bufq_bytes(&self->out) + len > self->max_outbound) {
        wsconn_buf_free(payload);
        klog_warn("websocket client too slow: %zu bytes queued, limit %zu; disconnecting",
                  bufq_bytes(&self->out) + len, self->max_outbound);
        //  What is queued would only delay the close the client needs to see.
        bufq_clear(&self->out);
        wsconn_close(self, LWS_CLOSE_STATUS_POLICY_VIOLATION,
                     "client too slow: outbound buffer limit exceeded");
        return KB_ETOOBIG;
    }
    int rc = bufq_push(&self->out, payload, len, binary);
    if (rc == KB_OK) s_request_write(self);
    return rc;
}

int wsconn_send_json(wsconn_t *self, const json_t *value)
{
    jbuf_t b;
    jbuf_init(&b);
    jbuf_add_json(&b, value);
    size_t len;
    char *buf = jbuf_take(&b, &len);
    return buf ? wsconn_send_buf(self, buf, len, false) : KB_ENOMEM;
}

void wsconn_close(wsconn_t *self, int code, const char *reason)
{
    if (self->closing) return;
    self->closing = true;
    self->close_code = code;
    snprintf(self->close_reason, sizeof self->close_reason, "%s", reason ? reason : "");
    s_request_write(self);
}

bool wsconn_closing(const wsconn_t *self)
{
    return self->closing;
}

int wsconn__receive(wsconn_t *self, const void *in, size_t len)
{
    if (self->close_sent) return 0;  //  closing: what the client still sends is moot
    if (lws_is_first_fragment(self->wsi)) {
        self->in_len = 0;
        self->in_oversize = false;
    }
    if (!self->in_oversize) {
        if (self->in_len + len > self->max_message) {
            self->in_oversize = true;
            free(self->in);
            self->in = NULL;
            self->in_cap = 0;
        } else {
            if (self->in_len + len + 1 > self->in_cap) {
                size_t cap = (self->in_len + len + 1) * 2;
                if (cap > self->max_message + 1) cap = self->max_message + 1;
                char *grown = realloc(self->in, cap);
                if (!grown) return -1;
                self->in = grown;
                self->in_cap = cap;
            }
            memcpy(self->in + self->in_len, in, len);
        }
    }
    self->in_len += len;
    if (!lws_is_final_fragment(self->wsi) || lws_remaining_packet_payload(self->wsi)) return 0;
    if (self->in_oversize) {
        if (self->events.on_too_large) self->events.on_too_large(self, self->in_len, self->arg);
    } else if (self->events.on_message) {
        self->in[self->in_len] = '\0';
        self->events.on_message(self, self->in, self->in_len,
                                lws_frame_is_binary(self->wsi), self->arg);
    }
    //  Large buffers are not kept around for the life of the connection.
    if (self->in_cap > 65536) {
        free(self->in);
        self->in = NULL;
        self->in_cap = 0;
    }
    self->in_len = 0;
    return 0;
}

int wsconn__writeable(wsconn_t *self)
{
    while (self->out.head && !lws_send_pipe_choked(self->wsi)) {
        bufq_item_t *f = self->out.head;
        int n = lws_write(self->wsi, (unsigned char *) f->payload, f->len,
                          f->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
        bufq_drop_head(&self->out);
        if (n < 0) return -1;
    }
    if (self->out.head) {
        s_request_write(self);
        return 0;
    }
    if (self->closing && !self->close_sent) {
        //  lws 4.1's libuv path drops the socket without sending the close frame it was
        //  asked for, so the frame is written here. Then the closing handshake runs its
        //  course: the client answers with its own close frame and lws closes the
        //  connection. Closing at once instead risks a TCP reset that destroys the
        //  client's unread data, close frame included. A client that stopped reading has
        //  CLOSE_FLUSH_SECS to drain its socket and answer; our own queue is gone by then,
        //  so waiting holds no more than the kernel's socket buffer.
        klog_debug("websocket: closing with %d (%s)", self->close_code, self->close_reason);
        unsigned char frame[LWS_PRE + 2 + sizeof self->close_reason];
        size_t rlen = strlen(self->close_reason);
        frame[LWS_PRE] = (unsigned char) (self->close_code >> 8);
        frame[LWS_PRE + 1] = (unsigned char) (self->close_code & 0xff);
        memcpy(frame + LWS_PRE + 2, self->close_reason, rlen);
        self->close_sent = true;
        //  LWS_WRITE_CLOSE (4) is private in lws 4.1's headers; lws_write handles it.
        if (lws_write(self->wsi, frame + LWS_PRE, 2 + rlen, (enum lws_write_protocol) 4) < 0)
            return -1;
        lws_set_timeout(self->wsi, PENDING_TIMEOUT_CLOSE_SEND, CLOSE_FLUSH_SECS);
    }
    return 0;
}

void wsconn__closed(wsconn_t *self)
{
    if (self->events.on_close) self->events.on_close(self, self->arg);
    bufq_clear(&self->out);
    free(self->in);
    free(self);
}
