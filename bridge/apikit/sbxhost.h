/*  sbxhost - the names a sandbox's ports are reached at, for every API that reports them
    (E2B's getHost, the control plane's `domain`, the native API, the console).

    A server listening on port P inside sandbox ID is at the host name P-ID.DOMAIN on
    kbridge's port (Host-header routing, as E2B does), and at the path
    /sandboxes/ID/ports/P/ for clients that cannot resolve such names. DOMAIN is
    --domain, else localhost:<the port the client reached kbridge on> (browsers map
    *.localhost to the loopback).
*/
#ifndef SBXHOST_H
#define SBXHOST_H

#include "../http/hreq.h"
#include "../config.h"

#include <stddef.h>

//  The domain for clients of req. out: at least 300 bytes.
void sbxhost_domain(const config_t *config, const hreq_t *req, char *out, size_t size);

#endif
