/*  jupyter - the Jupyter Server kernels API, so Jupyter clients (JupyterLab's
    @jupyterlab/services among them) can use kbridge in place of Jupyter Server.

    REST: /api, /api/status, /api/kernelspecs (and /kernelspecs/{name}/{file}),
    /api/kernels (list, start, get, delete, interrupt, restart), /api/sessions (list,
    create, get, patch, delete). WebSocket: /api/kernels/{id}/channels, v1 or legacy.
    Kernels are the service's kernels: the native and E2B APIs see the same ones.
*/
#ifndef JUPYTER_H
#define JUPYTER_H

#include "../http/hreq.h"
#include "wsframing.h"
#include "../http/wsconn.h"

#include <libwebsockets.h>

typedef struct _server_t server_t;
typedef struct _jupyter_t jupyter_t;

//  Caller owns return value and must destroy it when done.
jupyter_t *jupyter_new(server_t *server);
//  Close every channels connection and forget the sessions. Nullifies *self_p.
void jupyter_destroy(jupyter_t **self_p);

//  Handle a request whose path starts with /api or /kernelspecs.
void jupyter_http(jupyter_t *self, hreq_t *req);
//  If path is /api/kernels/{id}/channels, copy the id into kernel_id and return true.
bool jupyter_channels_path(const char *path, char *kernel_id, size_t size);
//  True if a kernel with this id exists (for refusing upgrades with 404).
bool jupyter_kernel_exists(jupyter_t *self, const char *kernel_id);
//  Take over an established channels WebSocket.
void jupyter_accept(jupyter_t *self, wsconn_t *conn, struct lws *wsi, wsframing_proto_t proto);

#endif
