/*  libFuzzer target: HTTP/1.1 exchanges on a connection (bridge/http/hreq.c) - heads,
    pipelining, request bodies (Content-Length and chunked; buffered, streamed with
    pause/resume, skipped, refused), 100-continue, deadlines, replies buffered and
    streamed, asynchronous answers, a client that leaves, a handover to another protocol.

    hreq runs over an in-memory connection defined here in place of bridge/http/hconn.c
    (the linker then never pulls that one in), driven by a small simulated loop: bytes
    arrive in pieces, paused reads wait, held requests are answered a turn later, the
    deadline fires when nothing else can happen, then the peer hangs up.

    Input: byte 0 sets the piece size, byte 1 how many script bytes follow; each script
    byte is what the handler does with one request, in turn; the rest is what the client
    sends. Checked on the way: every request is done exactly once, every body callback
    comes once, and whatever is written starts as an HTTP/1.x response.
*/
#include "bridge/buf/wbuf.h"
#include "bridge/http/hconn.h"
#include "bridge/http/hreq.h"
#include "bridge/http/wsconn.h"
#include "base/kberr.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
//  An in-memory hconn

#define RBUF_MAX (256 * 1024)
#define OUT_KEEP 64

struct _hconn_t {
    hconn_driver_t driver;
    void *arg;
    char *rbuf;
    size_t rlen;
    bool paused, closing, eof, want_drain;
    uint64_t timer_ms;
    size_t queued;
    char out[OUT_KEEP];  //  the first bytes ever written
    size_t out_len;
};

static void s_keep_output(hconn_t *self, const char *data, size_t len)
{
    size_t n = len < OUT_KEEP - self->out_len ? len : OUT_KEEP - self->out_len;
    memcpy(self->out + self->out_len, data, n);
    self->out_len += n;
}

void hconn_set_driver(hconn_t *self, const hconn_driver_t *driver, void *arg)
{
    self->driver = *driver;
    self->arg = arg;
    self->paused = false;
}

void *hconn_driver_arg(const hconn_t *self)
{
    return self->arg;
}

int hconn_write(hconn_t *self, char *payload, const char *data, size_t len)
{
    if (self->closing) {
        wbuf_free(payload);
        return KB_ECLOSED;
    }
    s_keep_output(self, data, len);
    self->queued += len;
    wbuf_free(payload);
    return 0;
}

int hconn_write_copy(hconn_t *self, const void *data, size_t len)
{
    if (self->closing) return KB_ECLOSED;
    s_keep_output(self, data, len);
    self->queued += len;
    return 0;
}

size_t hconn_queued(const hconn_t *self)
{
    return self->queued;
}

void hconn_want_drain(hconn_t *self)
{
    self->want_drain = true;
}

void hconn_discard_queued(hconn_t *self)
{
    self->queued = 0;
}

void hconn_pause_read(hconn_t *self)
{
    self->paused = true;
}

void hconn_resume_read(hconn_t *self)
{
    self->paused = false;
}

size_t hconn_buffered(const hconn_t *self)
{
    return self->rlen;
}

void hconn_set_timer(hconn_t *self, uint64_t ms)
{
    self->timer_ms = ms;
}

void hconn_close(hconn_t *self, bool flush)
{
    (void) flush;
    self->closing = true;
}

bool hconn_closing(const hconn_t *self)
{
    return self->closing;
}

const char *hconn_peer(const hconn_t *self)
{
    (void) self;
    return "fuzz";
}

uint64_t hconn_id(const hconn_t *self)
{
    (void) self;
    return 1;
}

uint64_t hconn_bytes_sent(const hconn_t *self)
{
    (void) self;
    return 0;
}

// ---------------------------------------------------------------------------------------
//  The handler

#define MAX_REQS 64

typedef struct {
    const uint8_t *script;
    size_t nscript, next;
    hreq_t *held[MAX_REQS];  //  answered on the next turn
    size_t nheld;
    hreq_t *paused;          //  a streamed body paused until the next turn
    int started, done;
} handler_t;

static handler_t s_h;

static void s_hold(hreq_t *req)
{
    if (s_h.nheld == MAX_REQS) {
        hreq_reply_text(req, 503, "busy");
        return;
    }
    hreq_hold(req);
    s_h.held[s_h.nheld++] = req;
}

static void s_on_body(hreq_t *req, int err, void *arg)
{
    int *calls = arg;
    if (++*calls != 1) abort();
    size_t len;
    hreq_body(req, &len);
    hreq_reply_text(req, err == 0 ? 200 : err == KB_ETOOBIG ? 413 : 400, err == 0 ? "ok" : "bad body");
    hreq_release(&req);
    free(calls);
}

static void s_on_data(hreq_t *req, const char *data, size_t len, void *arg)
{
    (void) arg;
    volatile char x = 0;
    for (size_t i = 0; i < len; i++) x ^= data[i];
    (void) x;
    if (!s_h.paused && len > 3) {
        hreq_body_pause(req);
        hreq_hold(req);
        s_h.paused = req;
    }
}

static void s_on_end(hreq_t *req, int err, void *arg)
{
    (void) arg;
    if (err == KB_OK || err == KB_EPROTO) {
        if (!hreq_replied(req)) hreq_reply_text(req, err ? 400 : 200, "streamed");
    }
    hreq_release(&req);  //  the reference taken when streaming began
}

static void s_on_gone(hreq_t *req, void *arg)
{
    (void) req;
    (void) arg;
}

static size_t s_sink_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    (void) conn;
    (void) data;
    (void) arg;
    return len;
}

static void s_sink_eof(hconn_t *conn, void *arg)
{
    (void) arg;
    hconn_close(conn, false);
}

static const hconn_driver_t s_sink = {s_sink_read, s_sink_eof, NULL, NULL, NULL, NULL};

static void s_on_request(hreq_t *req, void *arg)
{
    (void) arg;
    s_h.started++;
    uint8_t what = s_h.nscript ? s_h.script[s_h.next++ % s_h.nscript] : 0;
    //  What the server and the APIs ask of every request.
    char value[64], why[200];
    static const char *const subprotocols[] = {"kbridge.v1", "v1.kernel.websocket.jupyter.org", NULL};
    hreq_query(req, "token", value, sizeof value);
    hreq_header(req, "host");
    hreq_body_length(req);
    if (hreq_is_websocket(req)) {
        wsconn_check(req, why, sizeof why);
        wsconn_pick_subprotocol(req, subprotocols);
    }
    switch (what % 10) {
    case 0:
        hreq_reply_error(req, 404, "Not Found");
        break;
    case 1:
    case 2: {
        int *calls = calloc(1, sizeof *calls);
        if (!calls) {
            hreq_reply_text(req, 503, "oom");
            break;
        }
        hreq_hold(req);
        hreq_read_body(req, what % 10 == 1 ? 64 : 4096, s_on_body, calls);
        break;
    }
    case 3: {
        hreq_body_events_t ev = {s_on_data, s_on_end};
        hreq_hold(req);
        hreq_body_stream(req, &ev, NULL);
        break;
    }
    case 4:
        hreq_add_header(req, "x-test:", "1");
        hreq_stream_begin(req, 200, "application/x-ndjson");
        hreq_stream_write(req, "{}\n", 3);
        hreq_stream_write(req, "", 0);
        hreq_stream_end(req);
        break;
    case 5:
        s_hold(req);
        break;
    case 6:
        //  A fixed-length body cut short: only a close can tell the client.
        hreq_stream_begin_length(req, 200, "text/plain", 10);
        hreq_stream_write(req, "abc", 3);
        hreq_stream_end(req);
        break;
    case 7:
        if (hreq_is_websocket(req) || what & 0x10) {
            hconn_t *conn = hreq_detach(req);
            if (conn) {
                hconn_write_copy(conn, "HTTP/1.1 101 Switching Protocols\r\n\r\n", 36);
                hconn_set_driver(conn, &s_sink, NULL);
            }
        } else {
            hreq_reply(req, 204, NULL, NULL, 0);
        }
        break;
    case 8:
        hreq_on_close(req, s_on_gone, NULL);
        s_hold(req);
        break;
    default:
        hreq_reply_json(req, 201, json_pack("{s:s}", "id", hreq_path(req)));
        break;
    }
}

static void s_on_done(hreq_t *req, void *arg)
{
    (void) req;
    (void) arg;
    s_h.done++;
    if (s_h.done > s_h.started) abort();
}

//  The asynchronous half of the handler: held requests are answered, paused bodies
//  resume. Returns whether anything happened.
static bool s_turn(void)
{
    bool any = s_h.nheld || s_h.paused;
    size_t n = s_h.nheld;
    s_h.nheld = 0;
    for (size_t i = 0; i < n; i++) {
        hreq_t *req = s_h.held[i];
        hreq_reply_text(req, 200, "later");
        hreq_release(&req);
    }
    if (s_h.paused) {
        hreq_t *req = s_h.paused;
        s_h.paused = NULL;
        hreq_body_resume(req);
        hreq_release(&req);
    }
    return any;
}

// ---------------------------------------------------------------------------------------
//  The loop

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t step = 1 + data[0] % 97;
    if (data[0] & 0x80) step *= 53;
    size_t nscript = data[1] % 8;
    if (size < 2 + nscript) return 0;
    memset(&s_h, 0, sizeof s_h);
    s_h.script = data + 2;
    s_h.nscript = nscript;
    const char *in = (const char *) data + 2 + nscript;
    size_t len = size - 2 - nscript, at = 0;

    hconn_t *conn = calloc(1, sizeof *conn);
    conn->rbuf = malloc(RBUF_MAX);
    hserve_config_t config = {4096, 1000, 5000, 1 << 20};
    hserve_events_t events = {s_on_request, s_on_done, NULL, NULL};
    if (!conn->rbuf || hserve_start(conn, &config, &events, NULL) != 0) abort();
    int idle_turns = 0;
    for (int turn = 0; turn < 10000 && !conn->closing; turn++) {
        bool progress = false;
        //  New bytes arrive while reading is on and the buffer has room.
        if (!conn->paused && at < len && conn->rlen < RBUF_MAX) {
            size_t n = len - at < step ? len - at : step;
            if (n > RBUF_MAX - conn->rlen) n = RBUF_MAX - conn->rlen;
            memcpy(conn->rbuf + conn->rlen, in + at, n);
            conn->rlen += n;
            at += n;
            progress = true;
        }
        if (!conn->paused && conn->rlen && conn->driver.on_read) {
            //  A copy of exactly what is buffered: ASan sees reads past it.
            char *view = malloc(conn->rlen);
            memcpy(view, conn->rbuf, conn->rlen);
            size_t used = conn->driver.on_read(conn, view, conn->rlen, conn->arg);
            if (used > conn->rlen) abort();
            memmove(conn->rbuf, conn->rbuf + used, conn->rlen - used);
            conn->rlen -= used;
            free(view);
            if (used) progress = true;
        }
        conn->queued = 0;  //  the socket took everything
        if (conn->want_drain && conn->driver.on_drain && !conn->closing) {
            conn->want_drain = false;
            conn->driver.on_drain(conn, conn->arg);
        }
        if (s_turn()) progress = true;
        if (progress) {
            idle_turns = 0;
            continue;
        }
        //  Nothing moves: first the deadline, then the peer hangs up.
        if (++idle_turns == 1 && conn->timer_ms && conn->driver.on_timer) {
            conn->timer_ms = 0;
            conn->driver.on_timer(conn, conn->arg);
        } else if (!conn->eof && at == len) {
            conn->eof = true;
            if (conn->driver.on_eof) conn->driver.on_eof(conn, conn->arg);
        } else if (idle_turns > 3) {
            break;
        }
    }
    //  The connection goes; on_close comes from a later loop turn, as hconn does it.
    conn->closing = true;
    if (conn->driver.on_close) conn->driver.on_close(conn, conn->arg);
    s_turn();
    if (s_h.done != s_h.started) abort();
    if (conn->out_len >= 7 && memcmp(conn->out, "HTTP/1.", 7) != 0) abort();
    free(conn->rbuf);
    free(conn);
    return 0;
}
