/*  wsconn - WebSocket connections with bounded buffering. */
#include "wsconn.h"
#include "wsframe.h"
#include "../buf/jbuf.h"
#include "../buf/wbuf.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

//  After our close frame, how long the client has to drain its socket and answer.
#define CLOSE_WAIT_MS 30000
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

struct _wsconn_t {
    hconn_t *conn;
    wsconn_config_t config;
    wsconn_events_t events;
    void *arg;
    char peer[64];
    wsframe_t parser;
    //  inbound reassembly
    char *in;
    size_t in_len, in_cap, in_total;
    bool in_oversize, in_binary;
    //  state
    bool closing, close_sent, close_received;
    uint64_t last_rx;
    void (*on_drain)(wsconn_t *, void *);
    void *on_drain_arg;
    void (*on_gone)(uint64_t bytes_sent, void *arg);
    void *gone_arg;
};

// ---------------------------------------------------------------------------------------
//  Handshake

int wsconn_check(const hreq_t *req, char *why, size_t size)
{
    if (hreq_method(req) != HM_GET) {
        snprintf(why, size, "a WebSocket handshake must be a GET");
        return 400;
    }
    //  RFC 6455 4.1: HTTP/1.1 at least. A 1.0 client cannot have meant an upgrade.
    if (hreq_head(req)->version_minor == 0) {
        snprintf(why, size, "a WebSocket handshake needs HTTP/1.1");
        return 400;
    }
    //  A body's bytes would otherwise be read as the first frames: what the client framed
    //  as HTTP must not be taken for WebSocket.
    if (hreq_has_body(req)) {
        snprintf(why, size, "a WebSocket handshake cannot have a body");
        return 400;
    }
    const char *version = hreq_header(req, "sec-websocket-version");
    if (!version || strcmp(version, "13") != 0) {
        snprintf(why, size, "unsupported WebSocket version %s (13 is)", version ? version : "(none)");
        return 426;
    }
    const char *key = hreq_header(req, "sec-websocket-key");
    unsigned char raw[32];
    size_t klen = key ? strlen(key) : 0;
    //  The key is 16 random bytes, base64-encoded: 24 characters.
    if (klen != 24 || EVP_DecodeBlock(raw, (const unsigned char *) key, (int) klen) != 18 ||
        key[22] != '=' || key[23] != '=') {
        snprintf(why, size, "missing or malformed Sec-WebSocket-Key");
        return 400;
    }
    return 0;
}

const char *wsconn_pick_subprotocol(const hreq_t *req, const char *const *supported)
{
    if (!supported) return NULL;
    for (size_t i = 0; supported[i]; i++)
        if (hparse_header_has_token(hreq_head(req), "sec-websocket-protocol", supported[i]))
            return supported[i];
    return NULL;
}

static void s_accept_key(const char *key, char out[32])
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "%s" WS_GUID, key);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *) buf, (size_t) n, digest);
    EVP_EncodeBlock((unsigned char *) out, digest, SHA_DIGEST_LENGTH);
}

// ---------------------------------------------------------------------------------------
//  Output

static int s_send_frame(wsconn_t *self, int opcode, char *payload, size_t len)
{
    uint8_t hdr[10];
    size_t hlen = wsframe_header(hdr, opcode, true, len);
    memcpy(payload - hlen, hdr, hlen);
    return hconn_write(self->conn, payload, payload - hlen, hlen + len);
}

static void s_send_close(wsconn_t *self, int code, const char *reason)
{
    if (self->close_sent) return;
    self->close_sent = true;
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > 123) rlen = 123;  //  a close frame holds 125 bytes including the code
    //  Never cut a UTF-8 sequence in half: the client would refuse the reason.
    while (rlen && ((unsigned char) reason[rlen] & 0xc0) == 0x80) rlen--;
    char *p = wbuf_alloc(2 + rlen);
    if (!p) return;
    p[0] = (char) (code >> 8);
    p[1] = (char) (code & 0xff);
    if (rlen) memcpy(p + 2, reason, rlen);
    klog_debug("websocket %s: closing with %d (%.*s)", self->peer, code, (int) rlen, reason ? reason : "");
    s_send_frame(self, WS_OP_CLOSE, p, 2 + rlen);
}

int wsconn_send_buf(wsconn_t *self, char *payload, size_t len, bool binary)
{
    if (self->closing) {
        wbuf_free(payload);
        return KB_ECLOSED;
    }
    //  One message larger than the limit is still sent when nothing waits before it (it
    //  cannot be split); the limit is on what piles up.
    if (hconn_queued(self->conn) && hconn_queued(self->conn) + len > self->config.max_outbound) {
        wbuf_free(payload);
        klog_warn("websocket client %s too slow: %zu bytes queued, limit %zu; disconnecting",
                  self->peer, hconn_queued(self->conn) + len, self->config.max_outbound);
        //  What is queued would only delay the close the client needs to see.
        hconn_discard_queued(self->conn);
        wsconn_close(self, 1008, "client too slow: outbound buffer limit exceeded");
        return KB_ETOOBIG;
    }
    int rc = s_send_frame(self, binary ? WS_OP_BINARY : WS_OP_TEXT, payload, len);
    if (rc == KB_OK && self->on_drain && hconn_queued(self->conn) >= 256 * 1024)
        hconn_want_drain(self->conn);
    return rc == KB_OK && self->closing ? KB_ECLOSED : rc;
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

size_t wsconn_queued(const wsconn_t *self)
{
    return hconn_queued(self->conn);
}

void wsconn_on_drain(wsconn_t *self, void (*fn)(wsconn_t *, void *), void *arg)
{
    self->on_drain = fn;
    self->on_drain_arg = arg;
    if (fn) hconn_want_drain(self->conn);
}

void wsconn_close(wsconn_t *self, int code, const char *reason)
{
    if (self->closing) return;
    self->closing = true;
    s_send_close(self, code, reason);
    if (self->close_received) {
        hconn_close(self->conn, true);
        return;
    }
    //  The closing handshake runs its course: the client answers with its own close frame
    //  and we hang up then. Closing at once risks a TCP reset that destroys the client's
    //  unread data, close frame included. A client that stopped reading has CLOSE_WAIT_MS
    //  to drain and answer.
    hconn_set_timer(self->conn, CLOSE_WAIT_MS);
}

bool wsconn_closing(const wsconn_t *self)
{
    return self->closing;
}

const char *wsconn_peer(const wsconn_t *self)
{
    return self->peer;
}

// ---------------------------------------------------------------------------------------
//  Input

static void s_deliver(wsconn_t *self, const char *data, size_t len, bool binary)
{
    if (!binary && !wsframe_utf8_valid(data, len)) {
        wsconn_close(self, 1007, "text message is not valid UTF-8");
        return;
    }
    if (self->events.on_message) self->events.on_message(self, data, len, binary, self->arg);
}

static void s_on_data(int opcode, const char *data, size_t len, bool first, bool last, void *arg)
{
    wsconn_t *self = arg;
    if (self->closing) return;  //  what the client still sends while we close is moot
    if (first) {
        self->in_len = self->in_total = 0;
        self->in_oversize = false;
        self->in_binary = opcode == WS_OP_BINARY;
        //  A whole message in one piece needs no reassembly.
        if (last && len <= self->config.max_message) {
            s_deliver(self, data, len, self->in_binary);
            return;
        }
    }
    self->in_total += len;
    if (!self->in_oversize && self->in_total > self->config.max_message) {
        self->in_oversize = true;
        free(self->in);
        self->in = NULL;
        self->in_cap = self->in_len = 0;
    }
    if (!self->in_oversize && len) {
        if (self->in_len + len > self->in_cap) {
            size_t cap = (self->in_len + len) * 2;
            if (cap > self->config.max_message) cap = self->config.max_message;
            char *grown = realloc(self->in, cap ? cap : 1);
            if (!grown) {
                wsconn_close(self, 1011, "out of memory");
                return;
            }
            self->in = grown;
            self->in_cap = cap;
        }
        memcpy(self->in + self->in_len, data, len);
        self->in_len += len;
    }
    if (!last) return;
    if (self->in_oversize) {
        if (self->events.on_too_large) self->events.on_too_large(self, self->in_total, self->arg);
    } else {
        s_deliver(self, self->in ? self->in : "", self->in_len, self->in_binary);
    }
    //  Large buffers are not kept for the life of the connection.
    if (self->in_cap > 65536) {
        free(self->in);
        self->in = NULL;
        self->in_cap = 0;
    }
    self->in_len = 0;
}

static void s_on_control(int opcode, const char *data, size_t len, void *arg)
{
    wsconn_t *self = arg;
    if (opcode == WS_OP_PING) {
        if (self->close_sent) return;
        char *p = wbuf_dup(data, len);
        if (p) s_send_frame(self, WS_OP_PONG, p, len);
    } else if (opcode == WS_OP_CLOSE) {
        self->close_received = true;
        int code = 1000;
        if (len >= 2) code = ((unsigned char) data[0] << 8) | (unsigned char) data[1];
        bool bad = len == 1 || (len >= 2 && (code < 1000 || code == 1004 || code == 1005 ||
                                            code == 1006 || code == 1015 || (code > 1014 && code < 3000) ||
                                            code > 4999)) ||
                   (len > 2 && !wsframe_utf8_valid(data + 2, len - 2));
        if (!self->closing) {
            self->closing = true;
            //  Answer with the same code (RFC 6455 5.5.1), then hang up.
            s_send_close(self, bad ? 1002 : len >= 2 ? code : 1000, bad ? "malformed close frame" : "");
        }
        hconn_close(self->conn, true);
    }
    //  Pongs only prove the peer alive, which any input does.
}

static const wsframe_events_t s_frame_events = {s_on_data, s_on_control};

static void s_arm_timer(wsconn_t *self)
{
    if (!self->closing) hconn_set_timer(self->conn, self->config.ping_interval_ms);
}

static size_t s_on_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    (void) conn;
    wsconn_t *self = arg;
    self->last_rx = kb_now_ms();
    s_arm_timer(self);
    long n = wsframe_feed(&self->parser, data, len, &s_frame_events, self);
    if (n < 0) {
        klog_warn("websocket %s: %s; closing", self->peer, self->parser.why);
        if (!self->closing) {
            self->closing = true;
            s_send_close(self, self->parser.close_code, self->parser.why);
        }
        hconn_close(self->conn, true);
        return len;
    }
    return (size_t) n;
}

static void s_on_eof(hconn_t *conn, void *arg)
{
    (void) arg;
    hconn_close(conn, false);
}

static void s_on_timer(hconn_t *conn, void *arg)
{
    wsconn_t *self = arg;
    if (self->closing) {
        hconn_close(conn, false);  //  the client never answered our close
        return;
    }
    uint64_t silent = kb_now_ms() - self->last_rx;
    if (silent >= self->config.idle_timeout_ms) {
        klog_info("websocket %s: silent for %llu ms; hanging up", self->peer, (unsigned long long) silent);
        self->closing = true;
        s_send_close(self, 1001, "no sign of life from the client");
        hconn_close(conn, true);
        return;
    }
    char *p = wbuf_alloc(0);
    if (p) s_send_frame(self, WS_OP_PING, p, 0);
    uint64_t left = self->config.idle_timeout_ms - silent;
    hconn_set_timer(conn, left < self->config.ping_interval_ms ? left : self->config.ping_interval_ms);
}

static void s_on_drain(hconn_t *conn, void *arg)
{
    (void) conn;
    wsconn_t *self = arg;
    if (self->on_drain) self->on_drain(self, self->on_drain_arg);
}

static void s_on_shed(hconn_t *conn, void *arg)
{
    (void) conn;
    wsconn_t *self = arg;
    self->closing = true;
    s_send_close(self, 1008, "server output budget exceeded: the slowest reader is dropped");
}

static void s_on_close(hconn_t *conn, void *arg)
{
    wsconn_t *self = arg;
    if (self->events.on_close) self->events.on_close(self, self->arg);
    if (self->on_gone) self->on_gone(hconn_bytes_sent(conn), self->gone_arg);
    free(self->in);
    free(self);
}

static const hconn_driver_t s_driver = {s_on_read, s_on_eof, s_on_drain, s_on_timer, s_on_close, s_on_shed};

wsconn_t *wsconn_upgrade(hreq_t *req, const char *subprotocol, const wsconn_config_t *config)
{
    wsconn_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    char accept[32];
    s_accept_key(hreq_header(req, "sec-websocket-key"), accept);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nServer: kbridge\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     subprotocol ? subprotocol : "", subprotocol ? "\r\n" : "");
    snprintf(self->peer, sizeof self->peer, "%s", hreq_peer(req));
    hconn_t *conn = hreq_detach(req);
    if (!conn) {
        free(self);
        return NULL;
    }
    self->conn = conn;
    self->config = *config;
    if (!self->config.ping_interval_ms) self->config.ping_interval_ms = 30000;
    if (!self->config.idle_timeout_ms) self->config.idle_timeout_ms = 70000;
    self->last_rx = kb_now_ms();
    wsframe_init(&self->parser);
    hconn_set_driver(conn, &s_driver, self);
    hconn_write_copy(conn, head, (size_t) n);
    s_arm_timer(self);
    return self;
}

void wsconn_set_events(wsconn_t *self, const wsconn_events_t *events, void *arg)
{
    self->events = *events;
    self->arg = arg;
}

void wsconn_on_gone(wsconn_t *self, void (*fn)(uint64_t bytes_sent, void *arg), void *arg)
{
    self->on_gone = fn;
    self->gone_arg = arg;
}

void *wsconn_clear_events(wsconn_t *self)
{
    void *arg = self->arg;
    memset(&self->events, 0, sizeof self->events);
    self->arg = NULL;
    return arg;
}
