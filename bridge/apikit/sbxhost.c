/*  sbxhost - sandbox host names. */
#include "sbxhost.h"
#include "../http/hutil.h"
#include "../../base/kberr.h"

#include <stdio.h>

void sbxhost_domain(const config_t *config, const hreq_t *req, char *out, size_t size)
{
    if (config->domain && *config->domain) {
        snprintf(out, size, "%s", config->domain);
        return;
    }
    //  The port the client used to reach us (behind a port mapping it is not ours).
    int port = config->port;
    char name[256];
    const char *host = req ? hreq_header(req, "host") : NULL;
    int hport = 0;
    if (host && hutil_host(host, name, sizeof name, &hport) == KB_OK && hport > 0) port = hport;
    snprintf(out, size, "localhost:%d", port);
}
