/*  wsconn - one WebSocket connection (RFC 6455) over an hconn: the opening handshake,
    reassembled inbound messages, and bounded outbound frames.

    Frames are written at once when the socket takes them, queued otherwise; a client too
    slow for its output is not buffered without bound: once the bytes queued for it pass
    max_outbound the queue is dropped and the connection closed with 1008 and a reason
    (redis's client output limits). Inbound messages are reassembled up to max_message
    bytes; a larger one is discarded whole and reported through on_too_large, leaving
    the connection up. Text messages must be UTF-8 (1007 otherwise); protocol errors
    (unmasked frames, reserved bits...) close with 1002. Idle connections are pinged,
    and closed when they stay silent.
*/
#ifndef WSCONN_H
#define WSCONN_H

#include "hreq.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _wsconn_t wsconn_t;

typedef struct {
    size_t max_message;
    size_t max_outbound;
    uint64_t ping_interval_ms;  //  ping after this much silence (0: 30 s)
    uint64_t idle_timeout_ms;   //  close after this much silence (0: 70 s)
} wsconn_config_t;

typedef struct {
    //  A complete message (data borrowed for the call; not NUL-terminated).
    void (*on_message)(wsconn_t *conn, const char *data, size_t len, bool binary, void *arg);
    //  A message over max_message was discarded; len is how much had arrived.
    void (*on_too_large)(wsconn_t *conn, size_t len, void *arg);
    //  The connection is gone. The owner must forget conn: it is freed after this call.
    void (*on_close)(wsconn_t *conn, void *arg);
} wsconn_events_t;

//  Whether req is an acceptable opening handshake. Returns 0, or the status to refuse it
//  with: 400 (malformed: key, method, version, headers, a body) or 426 (a version other than 13; the
//  reply must carry Sec-WebSocket-Version: 13), with why.
int wsconn_check(const hreq_t *req, char *why, size_t size);
//  The subprotocol to select from the client's offer: the first of supported (NULL-
//  terminated) that the client lists, or NULL.
const char *wsconn_pick_subprotocol(const hreq_t *req, const char *const *supported);

//  Answer the handshake (101, with subprotocol when not NULL) and take over req's
//  connection. Returns NULL if the client is gone or memory ran out.
//  The connection owns the return value; it is freed after on_close.
wsconn_t *wsconn_upgrade(hreq_t *req, const char *subprotocol, const wsconn_config_t *config);

void wsconn_set_events(wsconn_t *self, const wsconn_events_t *events, void *arg);
//  fn(bytes_sent, arg) once the connection is gone, after on_close, with the bytes the
//  socket took (the handshake included): the server's access log. Independent of the
//  events, which the API sets.
void wsconn_on_gone(wsconn_t *self, void (*fn)(uint64_t bytes_sent, void *arg), void *arg);
//  Stop delivering events (the owner is going away first); returns the old arg.
void *wsconn_clear_events(wsconn_t *self);

//  Queue a message; takes ownership of payload (a wbuf) in every case. Returns 0,
//  KB_ECLOSED (closing: dropped), or KB_ETOOBIG (over the outbound limit: dropped, and
//  the connection is being closed with a reason).
int wsconn_send_buf(wsconn_t *self, char *payload, size_t len, bool binary);
//  Serialize compactly (UTF-8) and queue as a text message. value is borrowed.
int wsconn_send_json(wsconn_t *self, const json_t *value);
//  Bytes queued and not yet taken by the socket.
size_t wsconn_queued(const wsconn_t *self);
//  Call fn once the queue is low again; replaces any earlier.
void wsconn_on_drain(wsconn_t *self, void (*fn)(wsconn_t *conn, void *arg), void *arg);

//  Close with a status code and reason, after the frames already queued are written.
void wsconn_close(wsconn_t *self, int code, const char *reason);
bool wsconn_closing(const wsconn_t *self);
const char *wsconn_peer(const wsconn_t *self);

#endif
