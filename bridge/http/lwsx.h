/*  lwsx - small helpers over libwebsockets' request headers, shared by HTTP requests and
    WebSocket upgrades. */
#ifndef LWSX_H
#define LWSX_H

#include <libwebsockets.h>
#include <stddef.h>

//  Query parameter value (URL-decoded) into out. 0 if present ("" without a value), -1
//  if absent or too long.
int lwsx_query(struct lws *wsi, const char *name, char *out, size_t size);
//  Header value into out. Returns its length, or -1 if absent.
int lwsx_header(struct lws *wsi, enum lws_token_indexes token, char *out, size_t size);
//  Custom header ("x-access-token:", lowercase with colon). Length or -1.
int lwsx_header_custom(struct lws *wsi, const char *name, char *out, size_t size);
//  The request path (without query) into out. Length or -1.
int lwsx_path(struct lws *wsi, char *out, size_t size);
//  Write a complete small response at once (for refusing a WebSocket upgrade).
int lwsx_write_response(struct lws *wsi, int status, const char *content_type, const char *body);

#endif
