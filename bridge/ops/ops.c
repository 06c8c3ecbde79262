/*  ops - GET /metrics. */
#include "ops.h"
#include "../http/hconn.h"
#include "../kernels/kentry.h"
#include "../kernels/registry.h"
#include "../metrics/metrics.h"
#include "../sandboxes/sandbox.h"
#include "../sandboxes/sandboxes.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    api_ctx_t ctx;
} ops_t;

static void *s_create(const api_ctx_t *ctx)
{
    ops_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->ctx = *ctx;
    metrics_set(MX_START_TIME, NULL, (double) time(NULL));
    return self;
}

static void s_destroy(void **api_p)
{
    free(*api_p);
    *api_p = NULL;
}

static bool s_claims(void *api, hreq_t *req)
{
    (void) api;
    return strcmp(hreq_path(req), "/metrics") == 0;
}

//  Gauges that are cheaper to count at a scrape than to keep up to date at every change.
static void s_count(ops_t *self)
{
    metrics_reset(MX_KERNELS);
    kentry_t **kernels = NULL;
    size_t n = registry_list(self->ctx.registry, &kernels);
    for (size_t i = 0; i < n; i++) metrics_add(MX_KERNELS, kentry_state_name(kernels[i]), 1);
    free(kernels);
    metrics_reset(MX_SANDBOXES);
    sandbox_t **sandboxes = NULL;
    n = sandboxes_list(self->ctx.sandboxes, &sandboxes);
    for (size_t i = 0; i < n; i++) metrics_add(MX_SANDBOXES, sandbox_state_name(sandboxes[i]), 1);
    free(sandboxes);
    sandbox_t *def = sandboxes_default(self->ctx.sandboxes);
    if (def) metrics_add(MX_SANDBOXES, sandbox_state_name(def), 1);
    metrics_set(MX_CONNECTIONS, NULL, (double) hconn_count());
    metrics_set(MX_CONNECTIONS_LIMIT, NULL, (double) self->ctx.config->max_connections);
    metrics_set(MX_KERNELS_LIMIT, NULL, (double) registry_max_kernels(self->ctx.registry));
    metrics_set(MX_BUFFERED_BYTES, NULL, (double) hconn_budget_used());
    metrics_set(MX_BUFFERED_LIMIT, NULL, (double) self->ctx.config->max_buffered_bytes);
}

static void s_http(void *api, hreq_t *req)
{
    ops_t *self = api;
    if (hreq_method(req) != HM_GET && hreq_method(req) != HM_HEAD) {
        hreq_add_header(req, "allow", "GET, HEAD");
        hreq_reply_error(req, 405, "GET /metrics");
        return;
    }
    s_count(self);
    metrics_run_collectors();
    size_t len = 0;
    char *text = metrics_render(&len);
    if (!text) {
        hreq_reply_error(req, 503, "out of memory rendering the metrics");
        return;
    }
    hreq_add_header(req, "cache-control", "no-store");
    hreq_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

const api_desc_t ops_api = {
    .name = "ops",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .http = s_http,
};
