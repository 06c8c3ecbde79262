/*  jupyter - the Jupyter Server kernels API, so Jupyter clients (JupyterLab's
    @jupyterlab/services among them) can use kbridge in place of Jupyter Server.

    REST: /api, /api/status, /api/kernelspecs (and /kernelspecs/{name}/{file}),
    /api/kernels (list, start, get, delete, interrupt, restart), /api/sessions (list,
    create, get, patch, delete). WebSocket: /api/kernels/{id}/channels, v1 or legacy.
    Kernels are the service's kernels: the native and E2B APIs see the same ones.
*/
#ifndef JUPYTER_H
#define JUPYTER_H

#include "../http/api.h"

//  The descriptor the server's table lists (bridge/apis.c).
extern const api_desc_t jupyter_api;

#endif
