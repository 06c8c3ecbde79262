/*  server - libwebsockets on the libuv loop; request checks and routing. */
#include "server.h"
#include "../e2b/e2b.h"
#include "hreq.h"
#include "../jupyter/jupyter.h"
#include "lwsx.h"
#include "../native/native.h"
#include "wsconn.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <strings.h>

#define NATIVE_SUBPROTOCOL "kbridge.v1"
#define JUPYTER_SUBPROTOCOL "v1.kernel.websocket.jupyter.org"

struct _server_t {
    uv_loop_t *loop;
    const server_config_t *config;
    registry_t *registry;
    struct lws_context *context;
    struct lws_vhost *vhost;
    int port;
    bool auth;
    unsigned char token_hash[crypto_generichash_BYTES];
    native_t *native;
    jupyter_t *jupyter;
    e2b_t *e2b;
    bool closed;
};

//  Per-connection data lws allocates (zeroed) for every wsi.
typedef struct {
    hreq_t *req;
    wsconn_t *ws;
} pss_t;

// ---------------------------------------------------------------------------------------
//  Checks: host, origin, token

static bool s_is_ip_literal(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

//  Split "host[:port]" or "[v6]:port" into host (without brackets).
static void s_host_part(const char *hostport, char *host, size_t size)
{
    if (hostport[0] == '[') {
        const char *end = strchr(hostport, ']');
        size_t n = end ? (size_t) (end - hostport - 1) : strlen(hostport + 1);
        snprintf(host, size, "%.*s", (int) n, hostport + 1);
        return;
    }
    const char *colon = strchr(hostport, ':');
    if (colon && strchr(colon + 1, ':')) colon = NULL;  //  a bare IPv6 address
    size_t n = colon ? (size_t) (colon - hostport) : strlen(hostport);
    snprintf(host, size, "%.*s", (int) n, hostport);
}

static bool s_listed(json_t *list, const char *value)
{
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item)
    {
        const char *s = json_string_value(item);
        if (s && (strcmp(s, "*") == 0 || strcasecmp(s, value) == 0)) return true;
    }
    return false;
}

//  DNS rebinding defence: a browser tricked into calling us through a hostname that
//  resolves to our address still sends that hostname as Host.
static bool s_host_allowed(server_t *self, struct lws *wsi)
{
    char hostport[256], host[256];
    if (lwsx_header(wsi, WSI_TOKEN_HOST, hostport, sizeof hostport) < 0) return false;
    s_host_part(hostport, host, sizeof host);
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "127.0.0.1") == 0 ||
        strcmp(host, "::1") == 0)
        return true;
    const char *ip = self->config->ip ? self->config->ip : "127.0.0.1";
    if (strcmp(host, ip) == 0) return true;
    bool wildcard = strcmp(ip, "0.0.0.0") == 0 || strcmp(ip, "::") == 0;
    if (wildcard && s_is_ip_literal(host)) return true;
    return s_listed(self->config->allowed_hosts, host);
}

//  Returns 1 if there is no Origin or it is this server, 2 if it is an allowed foreign
//  origin (CORS applies), 0 if it is refused.
static int s_origin_check(server_t *self, struct lws *wsi, char *origin, size_t size)
{
    if (lwsx_header(wsi, WSI_TOKEN_ORIGIN, origin, size) < 0) return 1;
    char hostport[256];
    const char *scheme_end = strstr(origin, "://");
    if (scheme_end && lwsx_header(wsi, WSI_TOKEN_HOST, hostport, sizeof hostport) >= 0 &&
        strcasecmp(scheme_end + 3, hostport) == 0)
        return 1;
    return s_listed(self->config->allowed_origins, origin) ? 2 : 0;
}

static bool s_token_matches(server_t *self, const char *given)
{
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *) given, strlen(given), NULL, 0);
    //  Hashes have equal lengths, so the comparison leaks neither content nor length.
    return sodium_memcmp(hash, self->token_hash, sizeof hash) == 0;
}

static bool s_authorized(server_t *self, struct lws *wsi)
{
    if (!self->auth) return true;
    char value[1024];
    if (lwsx_query(wsi, "token", value, sizeof value) == 0 && s_token_matches(self, value))
        return true;
    if (lwsx_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, value, sizeof value) >= 0) {
        const char *v = value;
        if (strncasecmp(v, "token ", 6) == 0) v += 6;
        else if (strncasecmp(v, "bearer ", 7) == 0) v += 7;
        else v = NULL;
        while (v && *v == ' ') v++;
        if (v && s_token_matches(self, v)) return true;
    }
    //  X-Access-Token (E2B's /execute, and generic clients); E2B-Traffic-Access-Token is
    //  the one slot the unmodified E2B SDK fills on every request.
    if (lwsx_header_custom(wsi, "x-access-token:", value, sizeof value) >= 0 &&
        s_token_matches(self, value))
        return true;
    if (lwsx_header_custom(wsi, "e2b-traffic-access-token:", value, sizeof value) >= 0 &&
        s_token_matches(self, value))
        return true;
    return false;
}

// ---------------------------------------------------------------------------------------
//  HTTP

static bool s_public_route(hreq_t *req)
{
    const char *path = hreq_path(req);
    return strcmp(path, "/") == 0 || (hreq_method(req) == HM_GET && strcmp(path, "/api") == 0) ||
           strcmp(path, "/health") == 0;
}

static void s_dispatch(server_t *self, hreq_t *req)
{
    const char *path = hreq_path(req);
    if (strcmp(path, "/") == 0) {
        hreq_reply_json(req, 200, json_pack("{s:s, s:s, s:s, s:s}", "name", "kbridge",
                                            "version", PROJECT_VERSION, "websocket", "/ws",
                                            "jupyter", "/api"));
    } else if (strncmp(path, "/api", 4) == 0 || strncmp(path, "/kernelspecs/", 13) == 0) {
        jupyter_http(self->jupyter, req);
    } else if (e2b_route(path)) {
        e2b_http(self->e2b, req);
    } else if (strcmp(path, "/ws") == 0) {
        hreq_reply_json(req, 400, json_pack("{s:s, s:s, s:s}", "type", "request_error", "code",
                                            "bad_request", "message",
                                            "/ws is a WebSocket endpoint: send an Upgrade"));
    } else {
        hreq_reply_error(req, 404, "Not Found");
    }
}

static void s_add_cors(hreq_t *req, const char *origin)
{
    hreq_add_header(req, "access-control-allow-origin:", origin);
    hreq_add_header(req, "vary:", "Origin");
}

static int s_on_http(server_t *self, struct lws *wsi, pss_t *pss, const char *uri)
{
    hreq_t *req = hreq_new(wsi, uri, self->config->max_body_bytes, self->config->max_outbound_bytes);
    if (!req) return -1;
    hreq__bind(req, &pss->req);
    char origin[512];
    int origin_ok = s_origin_check(self, wsi, origin, sizeof origin);
    if (!s_host_allowed(self, wsi)) {
        klog_warn("refused %s %s: Host not allowed", hreq_method_name(req), uri);
        hreq_reply_error(req, 403, "Host not allowed (use --allow-host to permit it)");
        return 0;
    }
    if (!origin_ok) {
        klog_warn("refused %s %s: foreign Origin %s", hreq_method_name(req), uri, origin);
        hreq_reply_error(req, 403, "Origin not allowed (use --allow-origin to permit it)");
        return 0;
    }
    if (origin_ok == 2) s_add_cors(req, origin);
    if (hreq_method(req) == HM_OPTIONS) {
        char want[512];
        hreq_add_header(req, "access-control-allow-methods:", "GET, POST, PUT, PATCH, DELETE, OPTIONS");
        if (lwsx_header(wsi, WSI_TOKEN_HTTP_AC_REQUEST_HEADERS, want, sizeof want) >= 0)
            hreq_add_header(req, "access-control-allow-headers:", want);
        hreq_add_header(req, "access-control-max-age:", "600");
        hreq_reply(req, 204, NULL, NULL, 0);
        return 0;
    }
    if (!s_public_route(req) && !s_authorized(self, wsi)) {
        hreq_reply_error(req, 403, "Forbidden: a valid token is required");
        return 0;
    }
    long long length = hreq_content_length(req);
    if (length > (long long) self->config->max_body_bytes) {
        hreq_reply_error(req, 413, "Request body too large");
        return 0;
    }
    char te[64];
    bool chunked = lwsx_header(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING, te, sizeof te) >= 0;
    if (length > 0 || chunked) return 0;  //  dispatched at HTTP_BODY_COMPLETION
    s_dispatch(self, req);
    return 0;
}

// ---------------------------------------------------------------------------------------
//  WebSocket

typedef enum { ROUTE_NONE, ROUTE_NATIVE, ROUTE_JUPYTER } ws_route_t;

static ws_route_t s_ws_route(const char *path)
{
    char kernel_id[128];
    if (strcmp(path, "/ws") == 0) return ROUTE_NATIVE;
    if (jupyter_channels_path(path, kernel_id, sizeof kernel_id)) return ROUTE_JUPYTER;
    return ROUTE_NONE;
}

static int s_refuse_upgrade(struct lws *wsi, int status, const char *code, const char *message)
{
    json_t *body = json_pack("{s:s, s:n, s:s, s:s}", "message", message, "id", "type",
                             "request_error", "code", code);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    lwsx_write_response(wsi, status, "application/json", text ? text : "{}");
    free(text);
    return 1;
}

static int s_confirm_upgrade(server_t *self, struct lws *wsi)
{
    char path[512], origin[512];
    if (lwsx_path(wsi, path, sizeof path) < 0) return s_refuse_upgrade(wsi, 400, "bad_request", "no path");
    if (!s_host_allowed(self, wsi))
        return s_refuse_upgrade(wsi, 403, "unauthorized", "Host not allowed (--allow-host)");
    if (!s_origin_check(self, wsi, origin, sizeof origin)) {
        klog_warn("refused WebSocket %s: foreign Origin %s", path, origin);
        return s_refuse_upgrade(wsi, 403, "unauthorized", "Origin not allowed (--allow-origin)");
    }
    if (!s_authorized(self, wsi))
        return s_refuse_upgrade(wsi, 403, "unauthorized", "a valid token is required");
    ws_route_t route = s_ws_route(path);
    if (route == ROUTE_NONE)
        return s_refuse_upgrade(wsi, 404, "not_found", "no WebSocket endpoint here");
    char kernel_id[128];
    if (route == ROUTE_JUPYTER && (!jupyter_channels_path(path, kernel_id, sizeof kernel_id) ||
                                   !jupyter_kernel_exists(self->jupyter, kernel_id)))
        return s_refuse_upgrade(wsi, 404, "not_found", "Kernel does not exist");
    return 0;
}

static int s_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                      size_t len)
{
    //  lws calls some reasons (CLOSED_HTTP among them) on connections that never got
    //  per-session storage; those carry nothing of ours.
    static pss_t none;
    pss_t *pss = user ? user : &none;
    struct lws_context *context = lws_get_context(wsi);
    server_t *self = context ? lws_context_user(context) : NULL;
    if (!user && (reason == LWS_CALLBACK_HTTP || reason == LWS_CALLBACK_ESTABLISHED)) return -1;
    switch (reason) {
    case LWS_CALLBACK_HTTP: return s_on_http(self, wsi, pss, in);
    case LWS_CALLBACK_HTTP_BODY:
        if (pss->req && !hreq_replied(pss->req) && hreq__body(pss->req, in, len) == KB_ETOOBIG)
            hreq_reply_error(pss->req, 413, "Request body too large");
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (pss->req && !hreq_replied(pss->req)) s_dispatch(self, pss->req);
        return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE: return pss->req ? hreq__writeable(pss->req) : 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss->req) hreq__closed(pss->req);
        return 0;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: return s_confirm_upgrade(self, wsi);
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        //  The subprotocol lws bound must belong to the endpoint.
        char path[512];
        if (lwsx_path(wsi, path, sizeof path) < 0) return 1;
        const char *proto = lws_get_protocol(wsi)->name;
        ws_route_t route = s_ws_route(path);
        if (route == ROUTE_NATIVE)
            return strcmp(proto, "http") == 0 || strcmp(proto, NATIVE_SUBPROTOCOL) == 0 ? 0 : 1;
        if (route == ROUTE_JUPYTER)
            return strcmp(proto, "http") == 0 || strcmp(proto, JUPYTER_SUBPROTOCOL) == 0 ? 0 : 1;
        return 1;
    }
    case LWS_CALLBACK_ESTABLISHED: {
        char path[512];
        lwsx_path(wsi, path, sizeof path);
        pss->ws = wsconn_new(wsi, self->config->max_message_bytes, self->config->max_outbound_bytes);
        if (!pss->ws) return -1;
        ws_route_t route = s_ws_route(path);
        if (route == ROUTE_NATIVE)
            native_accept(self->native, pss->ws, wsi);
        else if (route == ROUTE_JUPYTER)
            jupyter_accept(self->jupyter, pss->ws, wsi,
                           strcmp(lws_get_protocol(wsi)->name, JUPYTER_SUBPROTOCOL) == 0 ? WSFRAMING_V1
                                                                                        : WSFRAMING_LEGACY);
        else
            wsconn_close(pss->ws, 1011, "no endpoint");
        return 0;
    }
    case LWS_CALLBACK_RECEIVE: return pss->ws ? wsconn__receive(pss->ws, in, len) : 0;
    case LWS_CALLBACK_SERVER_WRITEABLE: return pss->ws ? wsconn__writeable(pss->ws) : 0;
    case LWS_CALLBACK_CLOSED:
        if (pss->ws) {
            wsconn__closed(pss->ws);
            pss->ws = NULL;
        }
        return 0;
    default: return 0;
    }
}

static const struct lws_protocols s_protocols[] = {
    //  [0] answers HTTP and WebSockets that offer no subprotocol.
    {"http", s_callback, sizeof(pss_t), 65536, 0, NULL, 0},
    {JUPYTER_SUBPROTOCOL, s_callback, sizeof(pss_t), 65536, 0, NULL, 0},
    {NATIVE_SUBPROTOCOL, s_callback, sizeof(pss_t), 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

static void s_lws_log(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
    klog(level == LLL_ERR ? KLOG_ERROR : KLOG_DEBUG, "lws: %.*s", (int) n, line);
}

server_t *server_new(uv_loop_t *loop, const server_config_t *config, registry_t *registry)
{
    server_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = loop;
    self->config = config;
    self->registry = registry;
    self->auth = config->token && *config->token;
    if (self->auth)
        crypto_generichash(self->token_hash, sizeof self->token_hash,
                           (const unsigned char *) config->token, strlen(config->token), NULL, 0);
    self->native = native_new(self);
    self->jupyter = jupyter_new(self);
    self->e2b = e2b_new(self);
    if (!self->native || !self->jupyter || !self->e2b) {
        native_destroy(&self->native);
        jupyter_destroy(&self->jupyter);
        e2b_destroy(&self->e2b);
        free(self);
        return NULL;
    }
    lws_set_log_level(LLL_ERR | (klog_enabled(KLOG_DEBUG) ? LLL_WARN | LLL_NOTICE : 0), s_lws_log);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    void *foreign_loops[1] = {loop};
    info.port = config->port;
    info.iface = config->ip ? config->ip : "127.0.0.1";
    info.protocols = s_protocols;
    //  IPv6 stays off for IPv4 addresses: with it on, lws 4.1 binds an IPv4 interface
    //  address as "*" (every interface).
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_VALIDATE_UTF8 |
                   LWS_SERVER_OPTION_DISABLE_IPV6 * (strchr(info.iface, ':') == NULL);
    info.foreign_loops = foreign_loops;
    info.user = self;
    //  With a foreign libuv loop, destruction completes asynchronously; lws NULLs this
    //  pointer once it has (see server_close and server_destroy).
    info.pcontext = &self->context;
    info.server_string = "kbridge";
    info.max_http_header_data = 16384;
    info.max_http_header_pool = 64;
    info.keepalive_timeout = 75;
    info.timeout_secs = 60;
    //  Ping idle WebSockets so vanished clients are noticed; hang up if they stay silent.
    static const lws_retry_bo_t retry = {.secs_since_valid_ping = 30, .secs_since_valid_hangup = 70};
    info.retry_and_idle_policy = &retry;
    info.pt_serv_buf_size = 65536;
    self->context = lws_create_context(&info);
    if (!self->context) {
        klog_error("cannot listen on %s:%d", info.iface, config->port);
        native_destroy(&self->native);
        jupyter_destroy(&self->jupyter);
        e2b_destroy(&self->e2b);
        free(self);
        return NULL;
    }
    self->vhost = lws_get_vhost_by_name(self->context, "default");
    self->port = self->vhost ? lws_get_vhost_listen_port(self->vhost) : config->port;
    return self;
}

void server_close(server_t *self)
{
    if (self->closed) return;
    self->closed = true;
    native_destroy(&self->native);
    jupyter_destroy(&self->jupyter);
    e2b_destroy(&self->e2b);
    lws_context_destroy(self->context);  //  completes as the loop runs; NULLs self->context
}

void server_destroy(server_t **self_p)
{
    if (!self_p || !*self_p) return;
    server_t *self = *self_p;
    *self_p = NULL;
    server_close(self);
    if (self->context) lws_context_destroy(self->context);
    free(self);
}

int server_port(const server_t *self)
{
    return self->port;
}

const server_config_t *server_config(const server_t *self)
{
    return self->config;
}

registry_t *server_registry(const server_t *self)
{
    return self->registry;
}

uv_loop_t *server_loop(const server_t *self)
{
    return self->loop;
}

