/*  ops - what the people who run kbridge read: GET /metrics, the metrics registry
    (bridge/metrics/) in the Prometheus text format, with the gauges that are counted
    rather than recorded (kernels and sandboxes by state, connections, queued output)
    refreshed at each scrape. Token-protected like every API.
*/
#ifndef OPS_H
#define OPS_H

#include "../http/api.h"

//  The descriptor the server's table lists (bridge/apis.c).
extern const api_desc_t ops_api;

#endif
