/*  hconn - one TCP connection: reads handed to whichever protocol drives it (HTTP/1.1,
    then perhaps a WebSocket or a raw tunnel), and a bounded queue of outgoing bytes.

    Reading: the driver's on_read gets the bytes that arrived and says how many it used.
    What it leaves stays buffered (bounded) and reading stops until the driver calls
    hconn_resume_read(): that is how request bodies and proxied streams get
    backpressure. Writing: bytes are written at once when nothing is queued (one write
    in flight at most, ttyd's rule), the rest queued as wire buffers; on_drain tells the
    driver when the queue has fallen low again. Every connection counts its queued
    bytes against one server-wide budget (hconn_budget_*): past it, the connection with
    the most queued output is dropped with a reason (redis's client output limits,
    applied to the whole server).

    A connection is freed after on_close, from libuv's close callback: never inside
    another callback of its own.
*/
#ifndef HCONN_H
#define HCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct _hconn_t hconn_t;

typedef struct {
    //  Bytes arrived (borrowed, writable: a WebSocket unmasks in place). Returns how many
    //  were used; the rest is offered again after hconn_resume_read().
    size_t (*on_read)(hconn_t *conn, char *data, size_t len, void *arg);
    //  The peer stopped sending (EOF or a read error).
    void (*on_eof)(hconn_t *conn, void *arg);
    //  The outgoing queue fell below the low-water mark after hconn_want_drain().
    void (*on_drain)(hconn_t *conn, void *arg);
    //  The deadline set with hconn_set_timer passed.
    void (*on_timer)(hconn_t *conn, void *arg);
    //  The connection is closed; conn is freed right after this call.
    void (*on_close)(hconn_t *conn, void *arg);
    //  The server-wide output budget is exceeded and this connection has the most queued:
    //  its queue has been discarded and it is about to be closed (flushed); the driver may
    //  queue a last word (e.g. a close frame with the reason). May be NULL.
    void (*on_shed)(hconn_t *conn, void *arg);
} hconn_driver_t;

//  Take an accepted, non-blocking TCP socket (TCP_NODELAY set). Returns NULL with *err (a
//  libuv error code) if it could not be set up; the fd is closed then. Reading starts
//  once a driver is set. Caller owns return value: it is freed after on_close.
hconn_t *hconn_adopt(uv_loop_t *loop, int fd, int *err);
//  Connect to addr through fd, a nonblocking TCP socket made elsewhere (sbx_socket: inside
//  a sandbox's network namespace), taken in every case. cb runs once, from the loop,
//  unless the connection is closed first: status 0 (connected: give it a driver now), or
//  a libuv error (UV_ECONNREFUSED; UV_ETIMEDOUT after timeout_ms, 0 for none), after which
//  the connection closes and frees itself. Outgoing connections count in the output
//  budget, not in hconn_count (the clients). Returns NULL with *err (a libuv error code).
//  Caller owns return value: it is freed after on_close.
typedef void(hconn_connect_fn)(hconn_t *conn, int status, void *arg);
hconn_t *hconn_connect(uv_loop_t *loop, int fd, const struct sockaddr *addr, uint64_t timeout_ms,
                       hconn_connect_fn *cb, void *arg, int *err);
//  Hand the connection to a driver (replacing the previous one); reading starts or goes on.
void hconn_set_driver(hconn_t *self, const hconn_driver_t *driver, void *arg);
void *hconn_driver_arg(const hconn_t *self);

//  Queue the wire span [data, data + len) of payload (a wbuf; taken in every case) and
//  write it as soon as the socket takes it. Returns 0, KB_ECLOSED (closing: dropped) or
//  KB_ENOMEM.
int hconn_write(hconn_t *self, char *payload, const char *data, size_t len);
//  Copy len bytes and queue them.
int hconn_write_copy(hconn_t *self, const void *data, size_t len);
//  Bytes queued and not yet taken by the socket.
size_t hconn_queued(const hconn_t *self);
//  Bytes the socket has taken, since the connection was accepted.
uint64_t hconn_bytes_sent(const hconn_t *self);
//  Ask for on_drain once the queue falls below the low-water mark (at once if it is).
void hconn_want_drain(hconn_t *self);
//  Drop everything queued and not yet in flight (a slow client being cut off).
void hconn_discard_queued(hconn_t *self);

//  Stop / resume reading. Resuming offers the bytes left over first, from the next loop
//  turn. Idempotent.
void hconn_pause_read(hconn_t *self);
void hconn_resume_read(hconn_t *self);
//  Bytes left over (read but not used).
size_t hconn_buffered(const hconn_t *self);

//  One deadline per connection: on_timer after ms (0 cancels).
void hconn_set_timer(hconn_t *self, uint64_t ms);

//  Close: after the queued bytes are written (flush), or at once. Idempotent; on_close
//  follows from a later loop turn.
void hconn_close(hconn_t *self, bool flush);
bool hconn_closing(const hconn_t *self);
//  Half-close: once the queued bytes are written the peer gets end of stream (FIN);
//  reading goes on until the connection is closed. Idempotent; no-op while closing.
void hconn_shutdown(hconn_t *self);

const char *hconn_peer(const hconn_t *self);
uint64_t hconn_id(const hconn_t *self);

//  The server-wide budget for queued output, in bytes (0: unlimited), and what is queued
//  across all connections now.
void hconn_budget_set(size_t max_bytes);
size_t hconn_budget_used(void);
//  Client connections open now (accepted ones, not hconn_connect's).
size_t hconn_count(void);
//  Close every connection at once (shutting down).
void hconn_close_all(void);

#endif
