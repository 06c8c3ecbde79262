/*  control - the sandbox REST API: the shape of E2B's control plane (the official SDK's
    Sandbox.create, list, getInfo, setTimeout, kill, pause, connect), over the sandboxes
    table (bridge/sandboxes/).

    Routes, with and without the /v2 prefix where E2B has both (e2b 2.51 uses /v2 for
    create, list and connect; 2.48-2.50 do not):
      POST   /sandboxes                   create; 201 once the sandbox runs
      GET    /sandboxes                   list (metadata AND-filter, state, template,
                                          order, limit + nextToken / X-Next-Token)
      GET    /sandboxes/{id}              detail
      DELETE /sandboxes/{id}              kill; 204
      POST   /sandboxes/{id}/timeout      {"timeout": s}; 204
      POST   /sandboxes/{id}/pause        204; 409 if already paused
      POST   /sandboxes/{id}/connect      200 (was running) or 201 (resumed), as create
      POST   /sandboxes/{id}/resume       the same (older SDKs)
      GET    /sandboxes/{id}/metrics      [{timestamp, cpuUsedPct, memUsed, ...}]
    Errors are {"code": <status>, "message": ...}; the SDK reads `code` from the body.
    Requests naming a sandbox in E2b-Sandbox-Id are envd's or the code interpreter's,
    not this API's. The token: the kbridge token (X-API-Key, as the SDK sends it, or any
    other accepted form).
*/
#ifndef CONTROL_H
#define CONTROL_H

#include "../http/api.h"

extern const api_desc_t control_api;

#endif
