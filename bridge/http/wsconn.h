/*  wsconn - one WebSocket connection: reassembled inbound messages and a bounded
    outbound queue.

    Frames are written only from lws's WRITEABLE callback, as many as the socket takes
    without choking, and the queue is re-armed when frames remain (ttyd, mosquitto).
    Kernels cannot be paused, so a client too slow for its output is not buffered
    without bound: once the bytes queued for it pass max_outbound, the connection is
    closed with 1008 and a reason saying so (redis's client output limits).

    Inbound messages are reassembled from fragments up to max_message bytes; a larger
    one is discarded whole and reported through on_too_large, leaving the connection up.
*/
#ifndef WSCONN_H
#define WSCONN_H

#include <jansson.h>
#include <libwebsockets.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct _wsconn_t wsconn_t;

typedef struct {
    //  A complete message (data borrowed for the call).
    void (*on_message)(wsconn_t *conn, const char *data, size_t len, bool binary, void *arg);
    //  A message over max_message was discarded; len is how much had arrived.
    void (*on_too_large)(wsconn_t *conn, size_t len, void *arg);
    //  The connection is gone. The owner must forget conn: it is freed after this call.
    void (*on_close)(wsconn_t *conn, void *arg);
} wsconn_events_t;

//  Wrap an established WebSocket. Caller (the server callback) owns return value; it is
//  freed by wsconn__closed().
wsconn_t *wsconn_new(struct lws *wsi, size_t max_message, size_t max_outbound);
void wsconn_set_events(wsconn_t *self, const wsconn_events_t *events, void *arg);
//  Stop delivering events (the owner is going away first); returns the old arg.
void *wsconn_clear_events(wsconn_t *self);

//  A buffer for a frame of len bytes, with LWS_PRE headroom before the returned
//  pointer. Pass it to wsconn_send_buf or free it with wsconn_buf_free.
char *wsconn_buf_alloc(size_t len);
void wsconn_buf_free(char *payload);

//  Queue a frame; takes ownership of payload (from wsconn_buf_alloc) in every case.
//  Returns 0, KB_ECLOSED (closing: dropped), or KB_ETOOBIG (over the outbound limit:
//  dropped, and the connection is being closed with a reason).
int wsconn_send_buf(wsconn_t *self, char *payload, size_t len, bool binary);
//  Serialize compactly (UTF-8) and queue as a text frame. value is borrowed.
int wsconn_send_json(wsconn_t *self, const json_t *value);

//  Close with a status code and reason, after the frames already queued are written.
void wsconn_close(wsconn_t *self, int code, const char *reason);
bool wsconn_closing(const wsconn_t *self);

//  lws plumbing, for the server callback only.
int wsconn__receive(wsconn_t *self, const void *in, size_t len);
int wsconn__writeable(wsconn_t *self);
void wsconn__closed(wsconn_t *self);

#endif
