/*  hreq - HTTP/1.1 on a connection (hserve_start) and the request/response object that
    handlers see (hreq_t).

    hserve reads request heads (hparse.h), one exchange at a time: pipelined requests
    wait until the previous response is complete. Each head that passes the parser
    becomes an hreq handed to on_request, which routes it. The handler then either reads
    the body buffered (hreq_read_body, bounded) or streams it (hreq_body_stream, with
    pause/resume: the connection stops reading while paused), and answers with a
    buffered reply or a streamed one (chunked, or of a fixed length), paced by
    hreq_on_drain. Bodies may be Content-Length or chunked.

    Deadlines: a request head must arrive complete within header_timeout (408 and close);
    an idle keep-alive connection closes after idle_timeout; a body that stalls that
    long ends with 408. A response to a request whose body was not read closes the
    connection unless the rest is small enough to skip.

    Handlers that answer later hold the request (hreq_hold/hreq_release); if the client
    goes away first, on_close tells them and writes become no-ops.
*/
#ifndef HREQ_H
#define HREQ_H

#include "hconn.h"
#include "hparse.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _hreq_t hreq_t;

typedef enum { HM_GET, HM_POST, HM_PUT, HM_PATCH, HM_DELETE, HM_OPTIONS, HM_HEAD, HM_OTHER } hmethod_t;

typedef struct {
    size_t max_head;             //  bytes of a request head (431 past it)
    uint64_t header_timeout_ms;  //  a head must be complete this long after it began
    uint64_t idle_timeout_ms;    //  idle keep-alive connections, stalled bodies
    size_t max_outbound;         //  bytes queued for one client before it is cut off
} hserve_config_t;

typedef struct {
    //  A request head arrived and parsed. The callee must answer it somehow (reply, stream,
    //  upgrade); the connection holds the request until the response is complete.
    void (*on_request)(hreq_t *req, void *arg);
    //  The exchange is complete (for the access log and metrics).
    void (*on_done)(hreq_t *req, void *arg);
    //  The connection started (true) or finished (false) waiting for a request head that
    //  has not arrived whole (for the per-peer cap on such connections).
    void (*on_pending)(hconn_t *conn, bool pending, void *arg);
    //  HTTP is done with the connection (it closed, or went to another protocol): arg is
    //  not used again for it.
    void (*on_gone)(hconn_t *conn, void *arg);
} hserve_events_t;

//  Serve HTTP/1.1 on conn (config and events are copied). The connection starts out
//  waiting for its first head.
int hserve_start(hconn_t *conn, const hserve_config_t *config, const hserve_events_t *events,
                 void *arg);

// ---------------------------------------------------------------------------------------
//  The request

hmethod_t hreq_method(const hreq_t *self);
const char *hreq_method_name(const hreq_t *self);
//  The path, percent-decoded, without the query (borrowed).
const char *hreq_path(const hreq_t *self);
//  The path as sent (still encoded), without the query (borrowed).
const char *hreq_raw_path(const hreq_t *self);
//  The query string after '?', or "" (borrowed).
const char *hreq_query_string(const hreq_t *self);
//  A query parameter, decoded, into out: 0, KB_ENOTFOUND, KB_EINVAL or KB_ETOOBIG.
int hreq_query(const hreq_t *self, const char *name, char *out, size_t size);
//  The first value of a header (name in lowercase), or NULL (borrowed).
const char *hreq_header(const hreq_t *self, const char *name);
const hhead_t *hreq_head(const hreq_t *self);
const char *hreq_peer(const hreq_t *self);
hconn_t *hreq_conn(const hreq_t *self);
//  A WebSocket upgrade request (GET, Upgrade: websocket, Connection: upgrade).
bool hreq_is_websocket(const hreq_t *self);
//  Monotonic ms when the head arrived.
uint64_t hreq_started(const hreq_t *self);

//  Whether a body follows the head, and its declared length (-1: chunked or none).
bool hreq_has_body(const hreq_t *self);
int64_t hreq_body_length(const hreq_t *self);

//  Read the whole body into memory, at most max bytes, then call done with err 0,
//  KB_ETOOBIG (over max: reply 413; the connection will close), KB_EPROTO (malformed
//  chunked coding: reply 400) or KB_ECLOSED (the client left: nothing to reply).
typedef void(hreq_body_fn)(hreq_t *req, int err, void *arg);
void hreq_read_body(hreq_t *self, size_t max, hreq_body_fn *done, void *arg);
//  The body read by hreq_read_body (borrowed, NUL-terminated), possibly empty.
const char *hreq_body(const hreq_t *self, size_t *len);

//  Stream the body instead. on_data gets each piece as it arrives (borrowed); after
//  hreq_body_pause at most 64 KiB more may still come. on_end: 0 at the end of the body,
//  KB_EPROTO (malformed; the connection closes), KB_ECLOSED (the client left),
//  KB_ETIMEDOUT (stalled).
typedef struct {
    void (*on_data)(hreq_t *req, const char *data, size_t len, void *arg);
    void (*on_end)(hreq_t *req, int err, void *arg);
} hreq_body_events_t;
void hreq_body_stream(hreq_t *self, const hreq_body_events_t *events, void *arg);
//  No more body events: the reader is gone. The rest of the body is not read, so the
//  connection closes after the response.
void hreq_body_stop(hreq_t *self);
void hreq_body_pause(hreq_t *self);
void hreq_body_resume(hreq_t *self);

// ---------------------------------------------------------------------------------------
//  The response

//  Add a response header ("location", value); a trailing ':' on the name is ignored.
void hreq_add_header(hreq_t *self, const char *name, const char *value);
//  Buffered replies. Each ends the response; later calls are ignored.
void hreq_reply(hreq_t *self, int status, const char *content_type, const void *body, size_t len);
//  body is stolen.
void hreq_reply_json(hreq_t *self, int status, json_t *body);
void hreq_reply_text(hreq_t *self, int status, const char *text);
//  Jupyter Server's error body: {"message": ..., "reason": null}.
void hreq_reply_error(hreq_t *self, int status, const char *message);

//  Streaming: the head goes out at once. begin: chunked (until-close for HTTP/1.0);
//  begin_length: exactly length bytes follow. write copies; write_buf takes a wbuf
//  payload. Both return 0, KB_ECLOSED (client gone or response ended) or KB_ETOOBIG
//  (more than max_outbound queued: the client is cut off).
void hreq_stream_begin(hreq_t *self, int status, const char *content_type);
void hreq_stream_begin_length(hreq_t *self, int status, const char *content_type, uint64_t length);
int hreq_stream_write(hreq_t *self, const void *data, size_t len);
int hreq_stream_write_buf(hreq_t *self, char *payload, size_t len);
void hreq_stream_end(hreq_t *self);
//  Bytes of this response queued and not yet taken by the socket.
size_t hreq_stream_queued(const hreq_t *self);
//  Call fn once the queue is low again (after a write left it high). Replaces any earlier.
void hreq_on_drain(hreq_t *self, void (*fn)(hreq_t *req, void *arg), void *arg);

//  Raw answers (the port proxy passing a server's response on): the caller writes the
//  status line, headers and body itself, framed as its head says. hreq_raw_begin says
//  whether the connection may stay open after this response (the client wants
//  keep-alive and its request body is settled); if not, the head written must carry
//  "Connection: close". hreq_raw_write copies and queues bytes (0, KB_ECLOSED, KB_ENOMEM
//  or KB_ETOOBIG as stream writes); it may be used before hreq_raw_begin for interim
//  (1xx) heads. hreq_raw_end completes the response; close: the connection closes after
//  it (a body delimited by the close, or one cut short), else the next request is read.
bool hreq_raw_begin(hreq_t *self, int status);
int hreq_raw_write(hreq_t *self, const void *data, size_t len);
void hreq_raw_end(hreq_t *self, bool close);

//  The client may stop sending (half-close) once its request is complete and still get
//  the answer, after which the connection closes; by default the end of a client's input
//  ends the exchange (the client left). A real disconnect still shows when a write fails.
void hreq_allow_half_close(hreq_t *self);

bool hreq_replied(const hreq_t *self);
int hreq_status(const hreq_t *self);
//  Response body bytes queued so far.
uint64_t hreq_bytes_sent(const hreq_t *self);

//  Keep the request for an asynchronous answer; balance with hreq_release.
void hreq_hold(hreq_t *self);
void hreq_release(hreq_t **self_p);
//  Called once if the client disconnects before the response completed.
void hreq_on_close(hreq_t *self, void (*fn)(hreq_t *req, void *arg), void *arg);
bool hreq_gone(const hreq_t *self);

//  Let go of the connection for another protocol (WebSocket, tunnel): no more requests
//  are read on it, and bytes that follow the head go to the next driver. The response to
//  this request is the caller's to write (raw, with hconn_write), and the caller must give
//  the connection its new driver (hconn_set_driver) before returning to the loop.
//  Returns the connection, or NULL if the client is gone.
hconn_t *hreq_detach(hreq_t *self);

//  Routing notes for the server and the API that claimed the request.
void hreq_set_note(hreq_t *self, const void *key, void *value);
void *hreq_note(const hreq_t *self, const void *key);

#endif
