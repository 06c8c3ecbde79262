/*  console - the web console at `/` and its files under /console/ (built into the binary:
    bridge/console/assets.h). Everything here is public: the page holds no secret, and the
    token it needs comes from the URL's fragment, which the browser never sends.
*/
#include "console.h"
#include "assets.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const config_t *config;
} console_t;

#define PREFIX "/console/"

//  The console's own pages: its scripts are its files alone (no inline script, no eval),
//  it talks only to this server, and results' HTML goes to frames of frame.html.
//  'unsafe-inline' styles: xterm.js sizes its rows with a <style> it writes.
static const char s_console_csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

//  A result's HTML and JavaScript: sandboxed even when opened on its own (an opaque origin:
//  no storage, no cookies, nothing of the console's), inline script allowed (that is what
//  results are), and no network, so what it shows cannot be sent anywhere.
static const char s_frame_csp[] =
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; media-src data: blob:";

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
    const char *path = hreq_path(req);
    return strcmp(path, "/") == 0 || strncmp(path, PREFIX, strlen(PREFIX)) == 0;
}

static bool s_is_public(void *api, hreq_t *req)
{
    (void) api;
    (void) req;
    return true;
}

static const console_asset_t *s_asset(const char *name)
{
    for (size_t i = 0; i < console_nassets; i++)
        if (strcmp(console_assets[i].name, name) == 0) return &console_assets[i];
    return NULL;
}

static const char *s_type(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return "application/octet-stream";
    if (strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (strcmp(dot, ".js") == 0 || strcmp(dot, ".mjs") == 0) return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    return "application/octet-stream";
}

static void s_serve(hreq_t *req, const console_asset_t *asset)
{
    bool frame = strcmp(asset->name, "frame.html") == 0;
    hreq_add_header(req, "content-security-policy", frame ? s_frame_csp : s_console_csp);
    hreq_add_header(req, "x-content-type-options", "nosniff");
    hreq_add_header(req, "referrer-policy", "no-referrer");
    //  A kbridge upgrade changes the files: the browser asks again (a 200 of a few hundred KiB
    //  from loopback) rather than mixing versions.
    hreq_add_header(req, "cache-control", "no-cache");
    hreq_reply(req, 200, s_type(asset->name), asset->data, asset->len);
}

static void s_http(void *api, hreq_t *req)
{
    (void) api;
    if (hreq_method(req) != HM_GET && hreq_method(req) != HM_HEAD) {
        hreq_reply_error(req, 405, "Method Not Allowed");
        return;
    }
    const char *path = hreq_path(req);
    if (strcmp(path, "/") != 0) {
        const console_asset_t *asset = s_asset(path + strlen(PREFIX));
        if (!asset) {
            hreq_reply_error(req, 404, "no such console file");
            return;
        }
        s_serve(req, asset);
        return;
    }
    //  Browsers ask for text/html first; programs (and curl) get JSON.
    const char *accept = hreq_header(req, "accept");
    if (accept && strstr(accept, "text/html")) {
        s_serve(req, s_asset("index.html"));
        return;
    }
    hreq_reply_json(req, 200, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "name", "kbridge", "version",
                                        PROJECT_VERSION, "websocket", "/ws", "jupyter", "/api",
                                        "e2b", "/execute", "console", "/"));
}

const api_desc_t console_api = {
    .name = "console",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .is_public = s_is_public,
    .http = s_http,
};
