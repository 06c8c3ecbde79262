/*  server - the listener, connection caps, request checks and routing. */
#include "server.h"
#include "hutil.h"
#include "../metrics/metrics.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

//  Connections accepted per loop turn: a flood of connects cannot starve the rest.
#define ACCEPT_BATCH 64
//  Out of descriptors with none to spare: stop accepting this long, doubling to the max.
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000

//  A connection that has not finished a request head, for the per-peer cap.
typedef struct {
    klist_t link;
    hconn_t *conn;
    char peer[64];
} pending_t;

struct _server_t {
    uv_loop_t *loop;
    const config_t *config;
    api_ctx_t ctx;
    //  The listening socket is ours, watched with a poll handle: libuv's own accept loop
    //  retries an accept that fails with EMFILE at once, for ever, when its spare
    //  descriptor was taken by another thread (libzmq's), which pinned the loop at 100%.
    int listen_fd;
    uv_poll_t listener;
    uv_timer_t backoff;
    uint64_t backoff_ms;
    int spare_fd;  //  given up to answer connections when out of descriptors (-1: none)
    klog_limit_t shed_log;
    size_t shed_unreported;  //  connections refused that no log line has counted yet
    int open_handles;
    bool listening, closed;
    int port;
    bool auth;
    unsigned char token_hash[crypto_generichash_BYTES];
    void **apis;  //  one instance per descriptor, in table order
    klist_t pending;
    size_t served;  //  connections whose HTTP side still refers to us
    bool listener_closed, destroyed;
    hserve_config_t hconfig;
    wsconn_config_t wsconfig;
};

// ---------------------------------------------------------------------------------------
//  Checks: host, origin, token

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

static bool s_is_ip_literal(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

//  DNS rebinding defence: a browser tricked into calling us through a hostname that
//  resolves to our address still sends that hostname as Host. Names under the sandbox
//  domain (3000-<id>.localhost) are ours too.
static bool s_host_allowed(server_t *self, hreq_t *req)
{
    char host[256];
    int port;
    if (hutil_host(hreq_header(req, "host"), host, sizeof host, &port) != 0) return false;
    if (strcmp(host, "localhost") == 0 || strcmp(host, "127.0.0.1") == 0 || strcmp(host, "::1") == 0)
        return true;
    size_t hl = strlen(host);
    if (hl > 10 && strcmp(host + hl - 10, ".localhost") == 0) return true;
    const char *ip = self->config->ip ? self->config->ip : "127.0.0.1";
    if (strcmp(host, ip) == 0) return true;
    bool wildcard = strcmp(ip, "0.0.0.0") == 0 || strcmp(ip, "::") == 0;
    if (wildcard && s_is_ip_literal(host)) return true;
    if (self->config->domain) {
        char dhost[256];
        int dport;
        if (hutil_host(self->config->domain, dhost, sizeof dhost, &dport) == 0) {
            size_t dl = strlen(dhost);
            if (strcmp(host, dhost) == 0 ||
                (hl > dl + 1 && host[hl - dl - 1] == '.' && strcmp(host + hl - dl, dhost) == 0))
                return true;
        }
    }
    return s_listed(self->config->allowed_hosts, host);
}

//  1 if there is no Origin or it is this server, 2 if it is an allowed foreign origin
//  (CORS applies), 0 if it is refused.
static int s_origin_check(server_t *self, hreq_t *req)
{
    const char *origin = hreq_header(req, "origin");
    if (!origin) return 1;
    char scheme[16], hostport[256];
    const char *host = hreq_header(req, "host");
    if (hutil_origin(origin, scheme, sizeof scheme, hostport, sizeof hostport) == 0 && host &&
        strcasecmp(hostport, host) == 0)
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

//  Every place a client may put a token, as the clients of each API do.
static size_t s_tokens(hreq_t *req, char tokens[][512], size_t max)
{
    size_t n = 0;
    if (n < max && hreq_query(req, "token", tokens[n], 512) == KB_OK && *tokens[n]) n++;
    const char *auth = hreq_header(req, "authorization");
    if (auth && n < max) {
        const char *v = NULL;
        if (strncasecmp(auth, "token ", 6) == 0) v = auth + 6;
        else if (strncasecmp(auth, "bearer ", 7) == 0) v = auth + 7;
        while (v && *v == ' ') v++;
        if (v && *v && strlen(v) < 512) snprintf(tokens[n++], 512, "%s", v);
    }
    //  X-Access-Token (E2B's envd and /execute), E2B-Traffic-Access-Token (the slot the
    //  E2B SDK fills on every code-interpreter call), X-API-Key (E2B's control plane).
    static const char *headers[] = {"x-access-token", "e2b-traffic-access-token", "x-api-key"};
    for (size_t i = 0; i < 3 && n < max; i++) {
        const char *v = hreq_header(req, headers[i]);
        if (v && *v && strlen(v) < 512) snprintf(tokens[n++], 512, "%s", v);
    }
    return n;
}

static bool s_authorized(server_t *self, const api_desc_t *desc, void *api, hreq_t *req)
{
    if (!self->auth) return true;
    char tokens[5][512];
    size_t n = s_tokens(req, tokens, 5);
    for (size_t i = 0; i < n; i++)
        if (s_token_matches(self, tokens[i])) return true;
    if (desc && desc->authorize)
        for (size_t i = 0; i < n; i++)
            if (desc->authorize(api, req, tokens[i])) return true;
    return false;
}

// ---------------------------------------------------------------------------------------
//  Requests

//  A note on requests our WebSocket routes upgrade: their access-log line is written when
//  the connection closes, with its duration.
static const char s_ws_note = 0;

//  What the access log says a request was: the target with its secrets redacted
//  (token=..., signature=...). Authorization and the other headers are never logged.
static void s_access_target(hreq_t *req, char *target, size_t size)
{
    char raw[1024];
    snprintf(raw, sizeof raw, "%s%s%s", hreq_raw_path(req) ? hreq_raw_path(req) : "?",
             *hreq_query_string(req) ? "?" : "", hreq_query_string(req));
    hutil_redact_target(raw, target, size);
}

typedef struct {
    uint64_t started;
    char line[700];  //  "PEER METHOD TARGET"
} ws_log_t;

static void s_ws_gone(uint64_t bytes_sent, void *arg)
{
    ws_log_t *log = arg;
    klog_info("access %s 101 %llu %llums websocket", log->line, (unsigned long long) bytes_sent,
              (unsigned long long) (kb_now_ms() - log->started));
    free(log);
}

static void s_add_cors(hreq_t *req)
{
    hreq_add_header(req, "access-control-allow-origin", hreq_header(req, "origin"));
    hreq_add_header(req, "vary", "Origin");
}

static void s_on_body(hreq_t *req, int err, void *arg)
{
    server_t *self = arg;
    const api_desc_t *desc = hreq_note(req, &kb_apis);
    void *api = hreq_note(req, self);
    if (err == KB_ETOOBIG) {
        hreq_reply_error(req, 413, "Request body too large");
    } else if (err == KB_EPROTO) {
        hreq_reply_error(req, 400, "Malformed request body (chunked coding)");
    } else if (err == KB_ETIMEDOUT) {
        hreq_reply_error(req, 408, "The request body stalled");
    } else if (err == KB_ENOMEM) {
        hreq_reply_error(req, 503, "Out of memory reading the request body");
    } else if (err == KB_OK && desc && !self->closed) {
        desc->http(api, req);
    }
    hreq_release(&req);
}

static void s_websocket(server_t *self, const api_desc_t *desc, void *api, hreq_t *req)
{
    char why[200];
    if (!desc->ws_accept) {
        hreq_reply_error(req, 404, "No WebSocket endpoint here");
        return;
    }
    int status = wsconn_check(req, why, sizeof why);
    if (status) {
        if (status == 426) hreq_add_header(req, "sec-websocket-version", "13");
        klog_limited(KLOG_WARN, "refused WebSocket %s from %s: %s", hreq_path(req), hreq_peer(req), why);
        hreq_reply_error(req, status, why);
        return;
    }
    if (desc->ws_check && (status = desc->ws_check(api, req, why, sizeof why)) != 0) {
        hreq_reply_error(req, status, why);
        return;
    }
    const char *sub = wsconn_pick_subprotocol(req, desc->subprotocols);
    hreq_set_note(req, &s_ws_note, (void *) &s_ws_note);
    wsconn_t *conn = wsconn_upgrade(req, sub, &self->wsconfig);
    if (conn && self->config->access_log) {
        ws_log_t *log = malloc(sizeof *log);
        if (log) {
            char target[512];
            s_access_target(req, target, sizeof target);
            log->started = hreq_started(req);
            snprintf(log->line, sizeof log->line, "%s %s %s", hreq_peer(req), hreq_method_name(req), target);
            wsconn_on_gone(conn, s_ws_gone, log);
        }
    }
    if (conn) desc->ws_accept(api, conn, req, sub);
}

static void s_on_request(hreq_t *req, void *arg)
{
    server_t *self = arg;
    if (self->closed) {
        hreq_reply_error(req, 503, "The server is shutting down");
        return;
    }
    if (!s_host_allowed(self, req)) {
        klog_limited(KLOG_WARN, "refused %s %s from %s: Host %s not allowed", hreq_method_name(req),
                     hreq_path(req), hreq_peer(req), hreq_header(req, "host") ? hreq_header(req, "host") : "");
        hreq_reply_error(req, 403, "Host not allowed (use --allow-host to permit it)");
        return;
    }
    int origin = s_origin_check(self, req);
    if (!origin) {
        klog_limited(KLOG_WARN, "refused %s %s: foreign Origin %s", hreq_method_name(req),
                     hreq_path(req), hreq_header(req, "origin"));
        hreq_reply_error(req, 403, "Origin not allowed (use --allow-origin to permit it)");
        return;
    }
    if (origin == 2) s_add_cors(req);
    if (hreq_method(req) == HM_OPTIONS && hreq_header(req, "access-control-request-method")) {
        hreq_add_header(req, "access-control-allow-methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS");
        const char *want = hreq_header(req, "access-control-request-headers");
        if (want) hreq_add_header(req, "access-control-allow-headers", want);
        hreq_add_header(req, "access-control-max-age", "600");
        hreq_reply(req, 204, NULL, NULL, 0);
        return;
    }
    const api_desc_t *desc = NULL;
    void *api = NULL;
    for (size_t i = 0; i < kb_napis && !desc; i++)
        if (kb_apis[i]->claims(self->apis[i], req)) {
            desc = kb_apis[i];
            api = self->apis[i];
        }
    hreq_set_note(req, &kb_apis, (void *) desc);  //  the request metrics' api label
    bool public = desc && desc->is_public && desc->is_public(api, req);
    if (!public && !s_authorized(self, desc, api, req)) {
        if (desc && desc->refuse) desc->refuse(api, req);
        else hreq_reply_error(req, 403, "Forbidden: a valid token is required");
        return;
    }
    if (!desc) {
        hreq_reply_error(req, 404, "Not Found");
        return;
    }
    if (desc->proxies) {
        desc->http(api, req);
        return;
    }
    if (hreq_is_websocket(req)) {
        s_websocket(self, desc, api, req);
        return;
    }
    if (desc->streams_body && desc->streams_body(api, req)) {
        desc->http(api, req);
        return;
    }
    hreq_set_note(req, &kb_apis, (void *) desc);
    hreq_set_note(req, self, api);
    hreq_hold(req);
    hreq_read_body(req, self->config->max_body_bytes, s_on_body, self);
}

static void s_on_done(hreq_t *req, void *arg)
{
    server_t *self = arg;
    const api_desc_t *desc = hreq_note(req, &kb_apis);
    bool upgraded = hreq_note(req, &s_ws_note) != NULL;
    int status = hreq_status(req);
    if (upgraded && !status) status = 101;
    double seconds = (double) (kb_now_ms() - hreq_started(req)) / 1000.0;
    metrics_http_request(desc ? desc->name : NULL, status, seconds);
    const char *code = metrics_status_code(status);
    if (code) metrics_error(code);
    if (!self->config->access_log || upgraded) return;
    char target[512];
    s_access_target(req, target, sizeof target);
    klog_info("access %s %s %s %d %llu %llums", hreq_peer(req), hreq_method_name(req), target,
              hreq_status(req), (unsigned long long) hreq_bytes_sent(req),
              (unsigned long long) (kb_now_ms() - hreq_started(req)));
}

// ---------------------------------------------------------------------------------------
//  Connections

static pending_t *s_find_pending(server_t *self, hconn_t *conn)
{
    klist_t *it;
    klist_foreach(it, &self->pending)
    {
        pending_t *p = klist_entry(it, pending_t, link);
        if (p->conn == conn) return p;
    }
    return NULL;
}

static void s_free_server(server_t *self);

static void s_on_gone(hconn_t *conn, void *arg)
{
    (void) conn;
    server_t *self = arg;
    self->served--;
    if (self->listener_closed && self->destroyed && !self->served) s_free_server(self);
}

static void s_on_pending(hconn_t *conn, bool pending, void *arg)
{
    server_t *self = arg;
    if (!pending) {
        pending_t *p = s_find_pending(self, conn);
        if (p) {
            klist_remove(&p->link);
            free(p);
        }
        return;
    }
    pending_t *p = calloc(1, sizeof *p);
    if (!p) return;
    klist_init(&p->link);
    p->conn = conn;
    snprintf(p->peer, sizeof p->peer, "%s", hconn_peer(conn));
    //  Past the per-peer cap the oldest such connection of that peer goes: a client that
    //  keeps sockets half-open only ever starves itself.
    size_t same = 0;
    pending_t *oldest = NULL;
    klist_t *it;
    klist_foreach(it, &self->pending)
    {
        pending_t *q = klist_entry(it, pending_t, link);
        if (strcmp(q->peer, p->peer) != 0) continue;
        if (!oldest) oldest = q;
        same++;
    }
    klist_push_back(&self->pending, &p->link);
    if (self->config->max_pending_per_peer && same >= self->config->max_pending_per_peer && oldest) {
        klog_limited(KLOG_WARN, "%s has %zu connections still sending a request head (limit %zu): "
                                "dropping its oldest",
                     p->peer, same + 1, self->config->max_pending_per_peer);
        hconn_t *victim = oldest->conn;
        klist_remove(&oldest->link);
        free(oldest);
        hconn_close(victim, false);
    }
}

static void s_refuse_connection(hconn_t *conn, const char *why)
{
    char body[256], head[256];
    int blen = snprintf(body, sizeof body, "{\"message\":\"%s\",\"reason\":null}", why);
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 503 Service Unavailable\r\nServer: kbridge\r\nContent-Type: "
                      "application/json\r\nContent-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n",
                      blen);
    hconn_write_copy(conn, head, (size_t) hn);
    hconn_write_copy(conn, body, (size_t) blen);
    hconn_close(conn, true);
}

static size_t s_ignore_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    (void) conn;
    (void) data;
    (void) arg;
    return len;
}

static void s_on_accepted(server_t *self, int fd)
{
    int err;
    hconn_t *conn = hconn_adopt(self->loop, fd, &err);
    if (!conn) {
        klog_limited(KLOG_ERROR, "accepting a connection failed: %s", uv_strerror(err));
        return;
    }
    if (self->closed) {
        hconn_close(conn, false);
        return;
    }
    if (self->config->max_connections && hconn_count() > self->config->max_connections) {
        klog_limited(KLOG_WARN, "refusing a connection from %s: %zu connections open "
                                "(--max-connections %zu)",
                     hconn_peer(conn), hconn_count() - 1, self->config->max_connections);
        static const hconn_driver_t drain = {s_ignore_read, NULL, NULL, NULL, NULL, NULL};
        hconn_set_driver(conn, &drain, NULL);
        s_refuse_connection(conn, "too many connections (--max-connections)");
        return;
    }
    hserve_events_t events = {s_on_request, s_on_done, s_on_pending, s_on_gone};
    if (hserve_start(conn, &self->hconfig, &events, self) != KB_OK) hconn_close(conn, false);
    else self->served++;
}

static void s_on_listener(uv_poll_t *poll, int status, int events);

static void s_on_backoff(uv_timer_t *timer)
{
    server_t *self = timer->data;
    if (!self->closed) uv_poll_start(&self->listener, UV_READABLE, s_on_listener);
}

//  Out of descriptors: the spare one is given up to take the waiting connections one by
//  one and answer each with a 503 (a best effort: its request is not read), then taken
//  back. Without a spare (another thread took the slot), accepting pauses, backing off.
static void s_shed(server_t *self, int why)
{
    static const char body[] =
        "{\"message\":\"the server is out of file descriptors (ulimit -n); try later\",\"reason\":null}";
    char reply[512];
    int rn = snprintf(reply, sizeof reply,
                      "HTTP/1.1 503 Service Unavailable\r\nServer: kbridge\r\nContent-Type: "
                      "application/json\r\nContent-Length: %zu\r\nConnection: close\r\n"
                      "Retry-After: 1\r\n\r\n%s",
                      sizeof body - 1, body);
    if (self->spare_fd >= 0) {
        close(self->spare_fd);
        self->spare_fd = -1;
    }
    size_t refused = 0;
    int err = why;
    for (;;) {
        int fd = accept4(self->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            err = errno;
            if (err == EINTR || err == ECONNABORTED) continue;
            break;
        }
        //  What the client sent is read first, so that closing does not reset the
        //  connection before the answer is seen (when it all arrived already).
        char scratch[4096];
        ssize_t n = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
        n = send(fd, reply, (size_t) rn, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void) n;
        shutdown(fd, SHUT_WR);
        close(fd);
        refused++;
    }
    self->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    bool drained = err == EAGAIN || err == EWOULDBLOCK;
    self->shed_unreported += refused;
    if (drained && self->spare_fd >= 0) {
        self->backoff_ms = 0;
        //  One line a second at most, counting every refusal since the last one.
        uint64_t dropped;
        if (self->shed_unreported && klog_enabled(KLOG_ERROR) && klog_limit_pass(&self->shed_log, &dropped)) {
            klog(KLOG_ERROR, "out of file descriptors: refused %zu connection(s) with 503 since the "
                             "last report (%zu open; raise ulimit -n or lower --max-connections)",
                 self->shed_unreported, hconn_count());
            self->shed_unreported = 0;
        }
        return;
    }
    self->backoff_ms = self->backoff_ms ? self->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (self->backoff_ms > BACKOFF_MAX_MS) self->backoff_ms = BACKOFF_MAX_MS;
    klog_limited(KLOG_ERROR, "out of file descriptors (%s; %zu connections open): not accepting "
                             "for %llu ms (raise ulimit -n or lower --max-connections)",
                 strerror(drained ? EMFILE : err), hconn_count(),
                 (unsigned long long) self->backoff_ms);
    uv_poll_stop(&self->listener);
    uv_timer_start(&self->backoff, s_on_backoff, self->backoff_ms, 0);
}

static void s_on_listener(uv_poll_t *poll, int status, int events)
{
    (void) events;
    server_t *self = poll->data;
    if (status < 0) {
        klog_limited(KLOG_ERROR, "the listening socket failed: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH && !self->closed; i++) {
        int fd = accept4(self->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            s_on_accepted(self, fd);
            continue;
        }
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if (err == EINTR || err == ECONNABORTED) continue;
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
            s_shed(self, err);
            return;
        }
        klog_limited(KLOG_ERROR, "accepting a connection failed: %s", strerror(err));
        return;
    }
}

// ---------------------------------------------------------------------------------------
//  Lifecycle

static int s_listen(server_t *self, char *why, size_t size)
{
    const char *ip = self->config->ip ? self->config->ip : "127.0.0.1";
    struct sockaddr_storage addr;
    int rc = strchr(ip, ':') ? uv_ip6_addr(ip, self->config->port, (struct sockaddr_in6 *) &addr)
                             : uv_ip4_addr(ip, self->config->port, (struct sockaddr_in *) &addr);
    if (rc != 0) {
        snprintf(why, size, "--ip %s is not an IP address", ip);
        return -1;
    }
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    rc = fd < 0 ? -errno : 0;
    if (rc == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0) rc = -errno;
    socklen_t alen = addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (rc == 0 && bind(fd, (struct sockaddr *) &addr, alen) != 0) rc = -errno;
    if (rc == 0 && listen(fd, 511) != 0) rc = -errno;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (rc == 0 && getsockname(fd, (struct sockaddr *) &bound, &blen) != 0) rc = -errno;
    if (rc != 0 && fd >= 0) close(fd);
    if (rc == -EADDRINUSE) {
        snprintf(why, size, "port %d is in use: another kbridge? pass --port", self->config->port);
        return -1;
    }
    if (rc == -EADDRNOTAVAIL) {
        snprintf(why, size, "--ip %s is not an address of this machine", ip);
        return -1;
    }
    if (rc == -EACCES) {
        snprintf(why, size, "no permission to listen on port %d (ports below 1024 need root)",
                 self->config->port);
        return -1;
    }
    if (rc != 0) {
        snprintf(why, size, "cannot listen on %s:%d: %s", ip, self->config->port, strerror(-rc));
        return -1;
    }
    self->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *) &bound)->sin6_port)
                                             : ntohs(((struct sockaddr_in *) &bound)->sin_port);
    if ((rc = uv_poll_init_socket(self->loop, &self->listener, fd)) != 0) {
        close(fd);
        snprintf(why, size, "cannot watch the listening socket: %s", uv_strerror(rc));
        return -1;
    }
    self->listen_fd = fd;
    self->listener.data = self;
    uv_timer_init(self->loop, &self->backoff);
    self->backoff.data = self;
    self->open_handles = 2;
    self->listening = true;
    self->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    uv_poll_start(&self->listener, UV_READABLE, s_on_listener);
    return 0;
}

static void s_free_server(server_t *self)
{
    free(self->apis);
    free(self);
}

//  The server is freed once its listener has closed and no connection refers to it.
static void s_listener_closed(uv_handle_t *handle)
{
    server_t *self = handle->data;
    if (--self->open_handles > 0) return;
    close(self->listen_fd);  //  only now: the poll handle watched it
    self->listen_fd = -1;
    self->listener_closed = true;
    if (self->destroyed && !self->served) s_free_server(self);
}

static void s_close_listener(server_t *self)
{
    if (self->spare_fd >= 0) close(self->spare_fd);
    self->spare_fd = -1;
    uv_close((uv_handle_t *) &self->listener, s_listener_closed);
    uv_close((uv_handle_t *) &self->backoff, s_listener_closed);
}

server_t *server_new(const api_ctx_t *ctx, char *why, size_t size)
{
    server_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(why, size, "out of memory");
        return NULL;
    }
    self->loop = ctx->loop;
    self->config = ctx->config;
    self->ctx = *ctx;
    klist_init(&self->pending);
    const config_t *cfg = ctx->config;
    self->auth = cfg->token && *cfg->token;
    if (self->auth)
        crypto_generichash(self->token_hash, sizeof self->token_hash, (const unsigned char *) cfg->token,
                           strlen(cfg->token), NULL, 0);
    self->hconfig.max_head = 65536;
    self->hconfig.header_timeout_ms = cfg->header_timeout_ms ? cfg->header_timeout_ms : 10000;
    self->hconfig.idle_timeout_ms = cfg->idle_timeout_ms ? cfg->idle_timeout_ms : 75000;
    self->hconfig.max_outbound = cfg->max_outbound_bytes;
    self->wsconfig.max_message = cfg->max_message_bytes;
    self->wsconfig.max_outbound = cfg->max_outbound_bytes;
    hconn_budget_set(cfg->max_buffered_bytes);
    self->apis = calloc(kb_napis, sizeof *self->apis);
    if (!self->apis) {
        free(self);
        snprintf(why, size, "out of memory");
        return NULL;
    }
    self->listen_fd = self->spare_fd = -1;
    if (s_listen(self, why, size) != 0) {
        free(self->apis);
        free(self);
        return NULL;
    }
    for (size_t i = 0; i < kb_napis; i++) {
        self->apis[i] = kb_apis[i]->create(&self->ctx);
        if (!self->apis[i]) {
            snprintf(why, size, "the %s API could not be set up", kb_apis[i]->name);
            server_destroy(&self);
            return NULL;
        }
    }
    return self;
}

void server_close(server_t *self)
{
    if (self->closed) return;
    self->closed = true;
    for (size_t i = kb_napis; i-- > 0;)
        if (self->apis[i]) kb_apis[i]->destroy(&self->apis[i]);
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->pending)
    {
        pending_t *p = klist_entry(it, pending_t, link);
        klist_remove(&p->link);
        free(p);
    }
    hconn_close_all();
    if (self->listening) s_close_listener(self);
    else self->listener_closed = true;
}

void server_destroy(server_t **self_p)
{
    if (!self_p || !*self_p) return;
    server_t *self = *self_p;
    *self_p = NULL;
    server_close(self);
    //  Freed once the listener has closed and no connection refers to it.
    self->destroyed = true;
    if (self->listener_closed && !self->served) s_free_server(self);
}

int server_port(const server_t *self)
{
    return self->port;
}
