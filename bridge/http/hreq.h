/*  hreq - one HTTP request and its response, over libwebsockets.

    A handler reads the method, path, query, headers and body, then answers with a
    buffered reply (JSON, text or empty), or streams a chunked body. Handlers that answer
    later (after a kernel starts, say) hold the request and release it when done; if the
    client goes away first, on_close tells them, and writes become no-ops.

    Everything is written from lws's HTTP WRITEABLE callback. Streamed chunks are bounded
    like WebSocket frames: a client that stops reading is disconnected, not buffered for.
*/
#ifndef HREQ_H
#define HREQ_H

#include <jansson.h>
#include <libwebsockets.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct _hreq_t hreq_t;

typedef enum { HM_GET, HM_POST, HM_PUT, HM_PATCH, HM_DELETE, HM_OPTIONS, HM_HEAD, HM_OTHER } hmethod_t;

//  Start a request on wsi (at LWS_CALLBACK_HTTP; uri is its path). Returns NULL on OOM.
//  The connection holds one reference, dropped when the response completes or the
//  connection closes.
hreq_t *hreq_new(struct lws *wsi, const char *uri, size_t max_body, size_t max_outbound);

hmethod_t hreq_method(const hreq_t *self);
const char *hreq_method_name(const hreq_t *self);
//  The path, without the query string (borrowed).
const char *hreq_path(const hreq_t *self);
//  The request body (borrowed, NUL-terminated), possibly empty.
const char *hreq_body(const hreq_t *self, size_t *len);
//  Content-Length as sent, or -1 without one.
long long hreq_content_length(hreq_t *self);

//  Add a response header; name as in "location:" (lowercase, trailing colon).
void hreq_add_header(hreq_t *self, const char *name, const char *value);
//  Buffered replies. Each ends the request; later calls are ignored.
void hreq_reply(hreq_t *self, int status, const char *content_type, const void *body, size_t len);
//  body is stolen. ascii escapes non-ASCII as \uXXXX.
void hreq_reply_json(hreq_t *self, int status, json_t *body);
void hreq_reply_text(hreq_t *self, int status, const char *text);
//  Jupyter Server's error body: {"message": ..., "reason": null}.
void hreq_reply_error(hreq_t *self, int status, const char *message);

//  Streaming: headers go out at once with Transfer-Encoding: chunked; each write is one
//  chunk (copied); end sends the last chunk. write returns 0, KB_ECLOSED (client gone)
//  or KB_ETOOBIG (client too slow: the connection is being closed).
void hreq_stream_begin(hreq_t *self, int status, const char *content_type);
int hreq_stream_write(hreq_t *self, const void *data, size_t len);
void hreq_stream_end(hreq_t *self);
//  True once the reply (or the stream's end) has been queued.
bool hreq_replied(const hreq_t *self);

//  Keep the request for an asynchronous answer; balance with hreq_release.
void hreq_hold(hreq_t *self);
void hreq_release(hreq_t **self_p);
//  Called once if the client disconnects before the response completed.
void hreq_on_close(hreq_t *self, void (*fn)(hreq_t *req, void *arg), void *arg);

//  lws plumbing, for the server callback only. bind records where the connection keeps
//  its current request, so completion and close can clear it.
void hreq__bind(hreq_t *self, hreq_t **slot);
int hreq__body(hreq_t *self, const void *in, size_t len);
int hreq__writeable(hreq_t *self);
void hreq__closed(hreq_t *self);

#endif
