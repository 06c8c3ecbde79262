/*  hconn - a TCP connection with bounded buffering both ways. */
#include "hconn.h"
#include "../buf/bufq.h"
#include "../buf/wbuf.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

//  Reads land in a shared slab while nothing is left over, so an idle connection holds no
//  read buffer; leftovers are kept per connection, up to RBUF_MAX (then reading stops).
#define SLAB_SIZE 65536
#define RBUF_MAX (256 * 1024)
//  on_drain fires once the queue is below this.
#define LOW_WATER (256 * 1024)
#define MAX_SPANS 16
//  After a flushed close, how long to wait for the peer's FIN before closing anyway:
//  closing with unread input would reset the connection and could destroy a response
//  the peer has not read yet.
#define LINGER_MS 2000

struct _hconn_t {
    uv_tcp_t tcp;
    uv_timer_t timer, kick;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    uv_connect_t creq;
    int open_handles;
    //  outgoing (hconn_connect): not a client; cb while connecting
    bool outgoing, connecting;
    hconn_connect_fn *connect_cb;
    void *connect_arg;
    uint64_t id;
    char peer[64];
    hconn_driver_t driver;
    void *arg;
    //  reading
    char *rbuf;
    size_t rlen, rcap;
    bool reading, paused, eof, in_read, rekick;
    //  writing
    bufq_t outq;
    size_t in_flight;
    bool writing, want_drain;
    uint64_t sent;  //  bytes the socket took
    //  half-closing (hconn_shutdown): wanted, and the FIN's shutdown is under way or done
    bool wshut_wanted, wshut;
    //  closing
    bool closing, flush_close, shut, closed;
    hconn_t *prev, *next;
};

static char s_slab[SLAB_SIZE];
static bool s_slab_busy;
static hconn_t *s_all;
static size_t s_count;
static size_t s_budget_max, s_budget_used;
static uint64_t s_next_id = 1;

static void s_start_close(hconn_t *self);
static void s_flush(hconn_t *self);

// ---------------------------------------------------------------------------------------
//  Lifecycle

static void s_handle_closed(uv_handle_t *handle)
{
    hconn_t *self = handle->data;
    if (--self->open_handles > 0) return;
    if (self->driver.on_close) self->driver.on_close(self, self->arg);
    s_budget_used -= bufq_bytes(&self->outq);
    bufq_clear(&self->outq);
    free(self->rbuf);
    if (self->prev) self->prev->next = self->next;
    else s_all = self->next;
    if (self->next) self->next->prev = self->prev;
    if (!self->outgoing) s_count--;
    free(self);
}

static void s_start_close(hconn_t *self)
{
    if (self->closed) return;
    self->closed = self->closing = true;
    uv_close((uv_handle_t *) &self->tcp, s_handle_closed);
    uv_close((uv_handle_t *) &self->timer, s_handle_closed);
    uv_close((uv_handle_t *) &self->kick, s_handle_closed);
}

static void s_on_timer(uv_timer_t *timer)
{
    hconn_t *self = timer->data;
    if (self->connecting) {
        self->connecting = false;
        self->connect_cb(self, UV_ETIMEDOUT, self->connect_arg);
        s_start_close(self);
        return;
    }
    if (self->shut) {  //  the linger after a flushed close ran out
        s_start_close(self);
        return;
    }
    if (self->driver.on_timer && !self->closing) self->driver.on_timer(self, self->arg);
}

static void s_peer_name(uv_tcp_t *tcp, char *out, size_t size)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(out, size, "?");
    if (uv_tcp_getpeername(tcp, (struct sockaddr *) &ss, &len) != 0) return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *) &ss, out, size);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *) &ss, out, size);
}

static void s_free_unaccepted(uv_handle_t *handle)
{
    free(handle->data);
}

hconn_t *hconn_adopt(uv_loop_t *loop, int fd, int *err)
{
    hconn_t *self = calloc(1, sizeof *self);
    if (!self) {
        close(fd);
        *err = UV_ENOMEM;
        return NULL;
    }
    uv_tcp_init(loop, &self->tcp);
    self->tcp.data = self;
    *err = uv_tcp_open(&self->tcp, fd);
    if (*err != 0) {
        close(fd);
        uv_close((uv_handle_t *) &self->tcp, s_free_unaccepted);
        return NULL;
    }
    uv_tcp_nodelay(&self->tcp, 1);
    uv_timer_init(loop, &self->timer);
    uv_timer_init(loop, &self->kick);
    self->timer.data = self->kick.data = self;
    self->open_handles = 3;
    self->id = s_next_id++;
    s_peer_name(&self->tcp, self->peer, sizeof self->peer);
    self->next = s_all;
    if (s_all) s_all->prev = self;
    s_all = self;
    s_count++;
    return self;
}

static void s_on_connect(uv_connect_t *req, int status)
{
    hconn_t *self = req->data;
    if (self->closed || !self->connecting) return;  //  closed first (UV_ECANCELED)
    self->connecting = false;
    uv_timer_stop(&self->timer);
    if (status == 0) s_peer_name(&self->tcp, self->peer, sizeof self->peer);
    self->connect_cb(self, status, self->connect_arg);
    if (status < 0) s_start_close(self);
}

hconn_t *hconn_connect(uv_loop_t *loop, int fd, const struct sockaddr *addr, uint64_t timeout_ms,
                       hconn_connect_fn *cb, void *arg, int *err)
{
    hconn_t *self = calloc(1, sizeof *self);
    if (!self) {
        close(fd);
        *err = UV_ENOMEM;
        return NULL;
    }
    uv_tcp_init(loop, &self->tcp);
    self->tcp.data = self;
    *err = uv_tcp_open(&self->tcp, fd);
    if (*err != 0) {
        close(fd);
        uv_close((uv_handle_t *) &self->tcp, s_free_unaccepted);
        return NULL;
    }
    uv_tcp_nodelay(&self->tcp, 1);
    uv_timer_init(loop, &self->timer);
    uv_timer_init(loop, &self->kick);
    self->timer.data = self->kick.data = self;
    self->open_handles = 3;
    self->id = s_next_id++;
    self->outgoing = true;
    self->connect_cb = cb;
    self->connect_arg = arg;
    snprintf(self->peer, sizeof self->peer, "upstream");
    self->next = s_all;
    if (s_all) s_all->prev = self;
    s_all = self;
    self->creq.data = self;
    *err = uv_tcp_connect(&self->creq, &self->tcp, addr, s_on_connect);
    if (*err != 0) {
        s_start_close(self);
        return NULL;
    }
    self->connecting = true;
    if (timeout_ms) uv_timer_start(&self->timer, s_on_timer, timeout_ms, 0);
    return self;
}

// ---------------------------------------------------------------------------------------
//  Reading

static void s_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void) suggested;
    hconn_t *self = handle->data;
    if (self->rlen == 0 && !s_slab_busy) {
        s_slab_busy = true;
        *buf = uv_buf_init(s_slab, SLAB_SIZE);
        return;
    }
    size_t want = self->rlen + 16384;
    if (want > RBUF_MAX) want = RBUF_MAX;
    if (self->rcap < want) {
        size_t cap = self->rcap ? self->rcap : 16384;
        while (cap < want) cap *= 2;
        if (cap > RBUF_MAX) cap = RBUF_MAX;
        char *grown = realloc(self->rbuf, cap);
        if (!grown) {
            *buf = uv_buf_init(NULL, 0);  //  libuv reports UV_ENOBUFS
            return;
        }
        self->rbuf = grown;
        self->rcap = cap;
    }
    *buf = uv_buf_init(self->rbuf + self->rlen, (unsigned) (self->rcap - self->rlen));
}

static void s_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void s_on_kick(uv_timer_t *timer);

static void s_update_reading(hconn_t *self)
{
    //  While lingering after a flushed close, input is read and dropped whatever the
    //  driver wanted, so a peer still sending (a body we refused) gets to read our answer.
    bool want = !self->eof && !self->closed &&
                (self->shut || (!self->paused && !self->closing && self->rlen < RBUF_MAX));
    if (want && !self->reading) {
        if (uv_read_start((uv_stream_t *) &self->tcp, s_alloc, s_on_read) == 0) self->reading = true;
    } else if (!want && self->reading) {
        uv_read_stop((uv_stream_t *) &self->tcp);
        self->reading = false;
    }
}

//  Offer the buffered bytes to the driver; keep what it leaves.
static void s_deliver(hconn_t *self, char *data, size_t len, bool from_slab)
{
    size_t used = 0;
    if (self->driver.on_read && !self->closing) {
        self->in_read = true;
        self->rekick = false;
        used = self->driver.on_read(self, data, len, self->arg);
        self->in_read = false;
        if (used > len) used = len;
    } else if (self->shut) {
        used = len;  //  draining input while lingering
    }
    size_t left = len - used;
    if (from_slab) {
        if (left) {
            if (self->rcap < left) {
                char *grown = realloc(self->rbuf, left > 16384 ? left : 16384);
                if (!grown) {
                    klog_warn("connection %llu: out of memory buffering input; closing",
                              (unsigned long long) self->id);
                    s_start_close(self);
                    return;
                }
                self->rbuf = grown;
                self->rcap = left > 16384 ? left : 16384;
            }
            memcpy(self->rbuf, data + used, left);
        }
        self->rlen = left;
    } else {
        if (used && left) memmove(self->rbuf, self->rbuf + used, left);
        self->rlen = left;
        //  Large buffers go back once drained.
        if (!left && self->rcap > 65536) {
            free(self->rbuf);
            self->rbuf = NULL;
            self->rcap = 0;
        }
    }
    //  A new driver took over inside on_read: what is left is its to read.
    if (self->rekick && self->rlen && !self->closed) uv_timer_start(&self->kick, s_on_kick, 0, 0);
}

static void s_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    hconn_t *self = stream->data;
    bool from_slab = buf->base == s_slab;
    if (from_slab) s_slab_busy = false;
    if (self->shut && nread > 0) {
        if (!from_slab) self->rlen = 0;
        return;
    }
    if (nread < 0) {
        self->eof = true;
        s_update_reading(self);
        if (self->shut) {
            s_start_close(self);
            return;
        }
        //  A paused driver still has bytes to take: it hears of the end after them.
        if (self->paused && self->rlen) return;
        if (self->driver.on_eof && !self->closing) self->driver.on_eof(self, self->arg);
        return;
    }
    if (nread == 0) return;
    if (from_slab)
        s_deliver(self, s_slab, (size_t) nread, true);
    else {
        self->rlen += (size_t) nread;
        s_deliver(self, self->rbuf, self->rlen, false);
    }
    s_update_reading(self);
}

static void s_on_kick(uv_timer_t *timer)
{
    hconn_t *self = timer->data;
    if (self->closing || self->paused) return;
    if (self->rlen) s_deliver(self, self->rbuf, self->rlen, false);
    if (self->eof && !self->rlen && self->driver.on_eof && !self->closing) {
        self->driver.on_eof(self, self->arg);
        return;
    }
    s_update_reading(self);
}

void hconn_set_driver(hconn_t *self, const hconn_driver_t *driver, void *arg)
{
    self->driver = *driver;
    self->arg = arg;
    self->paused = false;
    if (self->closed) return;
    if (self->in_read) self->rekick = true;
    //  Bytes that arrived for the next protocol (after a WebSocket handshake, say) are
    //  offered to it from the next loop turn.
    if (self->rlen) uv_timer_start(&self->kick, s_on_kick, 0, 0);
    s_update_reading(self);
}

void *hconn_driver_arg(const hconn_t *self)
{
    return self->arg;
}

void hconn_pause_read(hconn_t *self)
{
    self->paused = true;
    if (!self->in_read) s_update_reading(self);
}

void hconn_resume_read(hconn_t *self)
{
    if (self->closed) return;
    //  Not paused, but the driver left bytes over (a pipelined request read with the body
    //  before it): they are offered again now, not only when more arrive.
    if (!self->paused) {
        if (self->rlen && !self->closing) uv_timer_start(&self->kick, s_on_kick, 0, 0);
        return;
    }
    self->paused = false;
    if (self->rlen || self->eof) uv_timer_start(&self->kick, s_on_kick, 0, 0);
    else s_update_reading(self);
}

size_t hconn_buffered(const hconn_t *self)
{
    return self->rlen;
}

// ---------------------------------------------------------------------------------------
//  Writing

static void s_shed(void)
{
    static bool shedding;  //  on_shed writes a last word: no shedding inside shedding
    if (shedding) return;
    hconn_t *worst = NULL;
    for (hconn_t *c = s_all; c; c = c->next)
        if (!c->closing && (!worst || bufq_bytes(&c->outq) > bufq_bytes(&worst->outq))) worst = c;
    if (!worst) return;
    klog_warn("output budget of %zu bytes exceeded (%zu queued); dropping the slowest reader "
              "%s (connection %llu, %zu bytes queued)",
              s_budget_max, s_budget_used, worst->peer, (unsigned long long) worst->id,
              bufq_bytes(&worst->outq));
    shedding = true;
    hconn_discard_queued(worst);
    if (worst->driver.on_shed) worst->driver.on_shed(worst, worst->arg);
    hconn_close(worst, true);
    shedding = false;
}

static void s_on_written(uv_write_t *req, int status)
{
    hconn_t *self = req->data;
    self->writing = false;
    size_t n = self->in_flight;
    self->in_flight = 0;
    if (self->closed) return;
    if (status < 0) {
        klog_debug("connection %llu: write failed: %s", (unsigned long long) self->id,
                   uv_strerror(status));
        s_budget_used -= bufq_bytes(&self->outq);
        bufq_clear(&self->outq);
        if (self->driver.on_eof && !self->closing) self->driver.on_eof(self, self->arg);
        s_start_close(self);
        return;
    }
    s_budget_used -= n;
    self->sent += n;
    bufq_consume(&self->outq, n);
    s_flush(self);
}

static void s_on_shutdown(uv_shutdown_t *req, int status)
{
    hconn_t *self = req->data;
    if (self->closed) return;
    if (status < 0 || self->eof) {
        s_start_close(self);
        return;
    }
    uv_timer_start(&self->timer, s_on_timer, LINGER_MS, 0);
    s_update_reading(self);
}

static void s_on_half_shutdown(uv_shutdown_t *req, int status)
{
    //  Nothing to do: reading goes on, and a failure shows there (or in the next write).
    (void) req;
    (void) status;
}

static void s_flush(hconn_t *self)
{
    if (self->writing || self->closed) return;
    while (!bufq_empty(&self->outq)) {
        const char *data[MAX_SPANS];
        size_t lens[MAX_SPANS];
        size_t n = bufq_spans(&self->outq, data, lens, MAX_SPANS);
        uv_buf_t bufs[MAX_SPANS];
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
            bufs[i] = uv_buf_init((char *) data[i], (unsigned) lens[i]);
            total += lens[i];
        }
        int w = uv_try_write((uv_stream_t *) &self->tcp, bufs, (unsigned) n);
        if (w > 0) {
            s_budget_used -= (size_t) w;
            self->sent += (uint64_t) w;
            bufq_consume(&self->outq, (size_t) w);
            if ((size_t) w == total) continue;
            //  Partial: the rest of these spans goes out with uv_write.
            n = bufq_spans(&self->outq, data, lens, MAX_SPANS);
            total = 0;
            for (size_t i = 0; i < n; i++) {
                bufs[i] = uv_buf_init((char *) data[i], (unsigned) lens[i]);
                total += lens[i];
            }
        } else if (w != UV_EAGAIN) {
            s_budget_used -= bufq_bytes(&self->outq);
            bufq_clear(&self->outq);
            if (self->driver.on_eof && !self->closing) self->driver.on_eof(self, self->arg);
            s_start_close(self);
            return;
        }
        self->wreq.data = self;
        if (uv_write(&self->wreq, (uv_stream_t *) &self->tcp, bufs, (unsigned) n, s_on_written) != 0) {
            s_start_close(self);
            return;
        }
        self->writing = true;
        self->in_flight = total;
        break;
    }
    if (self->want_drain && bufq_bytes(&self->outq) < LOW_WATER && !self->closing) {
        self->want_drain = false;
        if (self->driver.on_drain) self->driver.on_drain(self, self->arg);
    }
    if (!bufq_empty(&self->outq) || self->writing) return;
    if (self->flush_close && !self->shut) {
        self->shut = true;
        if (self->wshut) {  //  the FIN went already (hconn_shutdown): linger
            if (self->eof) {
                s_start_close(self);
                return;
            }
            uv_timer_start(&self->timer, s_on_timer, LINGER_MS, 0);
            s_update_reading(self);
            return;
        }
        self->wshut = true;
        self->sreq.data = self;
        if (uv_shutdown(&self->sreq, (uv_stream_t *) &self->tcp, s_on_shutdown) != 0)
            s_start_close(self);
    } else if (self->wshut_wanted && !self->wshut && !self->closing) {
        self->wshut = true;
        self->sreq.data = self;
        if (uv_shutdown(&self->sreq, (uv_stream_t *) &self->tcp, s_on_half_shutdown) != 0)
            s_start_close(self);
    }
}

int hconn_write(hconn_t *self, char *payload, const char *data, size_t len)
{
    if (self->closing) {
        wbuf_free(payload);
        return KB_ECLOSED;
    }
    int rc = bufq_push(&self->outq, payload, data, len, 0);
    if (rc != KB_OK) return rc;
    s_budget_used += len;
    s_flush(self);
    if (s_budget_max && s_budget_used > s_budget_max) s_shed();
    return self->closing ? KB_ECLOSED : KB_OK;
}

int hconn_write_copy(hconn_t *self, const void *data, size_t len)
{
    char *p = wbuf_dup(data, len);
    if (!p) return KB_ENOMEM;
    return hconn_write(self, p, p, len);
}

uint64_t hconn_bytes_sent(const hconn_t *self)
{
    return self->sent;
}

size_t hconn_queued(const hconn_t *self)
{
    return bufq_bytes(&self->outq);
}

void hconn_want_drain(hconn_t *self)
{
    self->want_drain = true;
    if (!self->writing) s_flush(self);
}

void hconn_discard_queued(hconn_t *self)
{
    size_t freed = bufq_keep(&self->outq, self->in_flight);
    s_budget_used -= freed;
}

// ---------------------------------------------------------------------------------------
//  Timers, closing, accessors

void hconn_set_timer(hconn_t *self, uint64_t ms)
{
    if (self->closed || self->shut) return;
    if (ms) uv_timer_start(&self->timer, s_on_timer, ms, 0);
    else uv_timer_stop(&self->timer);
}

void hconn_close(hconn_t *self, bool flush)
{
    if (self->closed) return;
    if (!flush) {
        s_start_close(self);
        return;
    }
    if (self->closing) return;
    self->closing = true;
    self->flush_close = true;
    uv_timer_stop(&self->timer);
    s_update_reading(self);
    s_flush(self);
}

void hconn_shutdown(hconn_t *self)
{
    if (self->closed || self->closing || self->wshut_wanted) return;
    self->wshut_wanted = true;
    s_flush(self);
}

bool hconn_closing(const hconn_t *self)
{
    return self->closing;
}

const char *hconn_peer(const hconn_t *self)
{
    return self->peer;
}

uint64_t hconn_id(const hconn_t *self)
{
    return self->id;
}

void hconn_budget_set(size_t max_bytes)
{
    s_budget_max = max_bytes;
}

size_t hconn_budget_used(void)
{
    return s_budget_used;
}

size_t hconn_count(void)
{
    return s_count;
}

void hconn_close_all(void)
{
    for (hconn_t *c = s_all; c; c = c->next) s_start_close(c);
}
