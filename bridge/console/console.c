/*  console - the page at `/`. */
#include "console.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const config_t *config;
} console_t;

static const char s_page[] =
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<title>kbridge</title>"
    "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:46em;margin:3em auto;padding:0 1em;"
    "color:#222}code{background:#f2f2f2;padding:.1em .3em;border-radius:3px}"
    "td{padding:.2em 1em .2em 0;vertical-align:top}</style></head><body>\n"
    "<h1>kbridge " PROJECT_VERSION "</h1>\n"
    "<p>A Jupyter-kernel bridge and code sandbox service. This port serves three APIs over "
    "the same kernels:</p>\n<table>\n"
    "<tr><td>Native WebSocket API</td><td><code>ws://HOST/ws?token=&hellip;</code></td></tr>\n"
    "<tr><td>Jupyter Server kernels API</td><td><code>/api/kernels</code>, "
    "<code>/api/sessions</code>, <code>/api/kernelspecs</code></td></tr>\n"
    "<tr><td>E2B code interpreter</td><td><code>POST /execute</code>, <code>/contexts</code></td></tr>\n"
    "</table>\n<p>Every API needs the token kbridge printed when it started "
    "(<code>KBRIDGE_TOKEN</code> in the examples). The README describes each API.</p>\n"
    "</body></html>\n";

static void *s_create(const api_ctx_t *ctx)
{
    console_t *self = calloc(1, sizeof *self);
    if (self) self->config = ctx->config;
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
    return strcmp(hreq_path(req), "/") == 0;
}

static bool s_is_public(void *api, hreq_t *req)
{
    (void) api;
    (void) req;
    return true;
}

static void s_http(void *api, hreq_t *req)
{
    (void) api;
    if (hreq_method(req) != HM_GET && hreq_method(req) != HM_HEAD) {
        hreq_reply_error(req, 405, "Method Not Allowed");
        return;
    }
    //  Browsers ask for text/html first; programs (and curl) get JSON.
    const char *accept = hreq_header(req, "accept");
    if (accept && strstr(accept, "text/html")) {
        hreq_add_header(req, "content-security-policy", "default-src 'none'; style-src 'unsafe-inline'");
        hreq_reply(req, 200, "text/html; charset=utf-8", s_page, sizeof s_page - 1);
        return;
    }
    hreq_reply_json(req, 200, json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", "kbridge", "version",
                                        PROJECT_VERSION, "websocket", "/ws", "jupyter", "/api",
                                        "e2b", "/execute"));
}

const api_desc_t console_api = {
    .name = "console",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .is_public = s_is_public,
    .http = s_http,
};
