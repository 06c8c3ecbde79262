/*  proxy - the port proxy: requests for a sandbox's port, tunnelled to it. */
#include "proxy.h"
#include "../apikit/portaddr.h"
#include "../http/hconn.h"
#include "../http/htunnel.h"
#include "../http/hutil.h"
#include "../sandboxes/sandboxes.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"

#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

//  How long a connect to a port inside a sandbox may take.
#define CONNECT_TIMEOUT_MS 10000

typedef struct _proxy_t proxy_t;

//  Where a request goes.
typedef struct {
    int port;
    char id[PORTADDR_ID_MAX + 1];
    const char *rest;  //  path form: the path the server sees ("" or "/..."); NULL: host form
} target_t;

//  A request whose upstream connection is being made.
typedef struct {
    klist_t link;
    proxy_t *proxy;
    hreq_t *req;   //  held
    hconn_t *up;   //  connecting; NULL once its callback ran
    target_t target;
    bool tried_v6;
    int first_err;  //  the IPv4 attempt's error
    char *head;     //  the head to send up
    size_t head_len;
} pending_t;

struct _proxy_t {
    uv_loop_t *loop;
    const config_t *config;
    sandboxes_t *sandboxes;
    bool auth;
    unsigned char token_hash[crypto_generichash_BYTES];
    klist_t pending;
};

// ---------------------------------------------------------------------------------------
//  Routing and credentials

//  envd's and the code interpreter's ports: kbridge serves those itself (the E2B APIs).
static bool s_reserved(int port)
{
    return port == 49983 || port == 49999;
}

static bool s_target(proxy_t *self, hreq_t *req, target_t *t)
{
    memset(t, 0, sizeof *t);
    //  E2B's header routing (e2b-selfhost.md 2.2): E2b-Sandbox-Id and E2b-Sandbox-Port.
    const char *hid = hreq_header(req, "e2b-sandbox-id"), *hport = hreq_header(req, "e2b-sandbox-port");
    if (hid && hport) {
        char *end;
        long port = strtol(hport, &end, 10);
        size_t n = strlen(hid);
        bool id_ok = n > 0 && n <= PORTADDR_ID_MAX && strspn(hid, "abcdefghijklmnopqrstuvwxyz0123456789") == n;
        if (*end || end == hport || port < 1 || port > 65535 || !id_ok || s_reserved((int) port)) return false;
        t->port = (int) port;
        memcpy(t->id, hid, n + 1);
        return true;
    }
    if (portaddr_parse_host(self->config, hreq_header(req, "host"), &t->port, t->id, sizeof t->id))
        return !s_reserved(t->port);
    return portaddr_parse_path(hreq_raw_path(req), &t->port, t->id, sizeof t->id, &t->rest);
}

//  Whether value is a credential that lets a request to sb in (constant time).
static bool s_credential(proxy_t *self, sandbox_t *sb, const char *value)
{
    if (!value || !*value) return false;
    bool ours = false;
    if (self->auth) {
        unsigned char hash[crypto_generichash_BYTES];
        crypto_generichash(hash, sizeof hash, (const unsigned char *) value, strlen(value), NULL, 0);
        ours = sodium_memcmp(hash, self->token_hash, sizeof hash) == 0;
    }
    bool theirs = sb && sandbox_traffic_token_ok(sb, value);
    return ours | theirs;
}

// ---------------------------------------------------------------------------------------
//  The head sent up

typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} sbuf_t;

static void s_put(sbuf_t *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void s_puts(sbuf_t *b, const char *s)
{
    s_put(b, s, strlen(s));
}

static void s_header(sbuf_t *b, const char *name, const char *value)
{
    s_puts(b, name);
    s_put(b, ": ", 2);
    s_puts(b, value);
    s_put(b, "\r\n", 2);
}

//  The query without a token= parameter that is a credential.
static void s_query(proxy_t *self, sandbox_t *sb, const char *query, sbuf_t *b)
{
    bool first = true;
    const char *p = query;
    while (p && *p) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t) (amp - p) : strlen(p);
        bool drop = false;
        if (n > 6 && strncmp(p, "token=", 6) == 0) {
            char value[512];
            long vn = hutil_decode(p + 6, n - 6, true, value, sizeof value);
            drop = vn > 0 && s_credential(self, sb, value);
        }
        if (!drop && n) {
            s_put(b, first ? "?" : "&", 1);
            s_put(b, p, n);
            first = false;
        }
        p = amp ? amp + 1 : NULL;
    }
}

//  Whether a header carries a credential of ours (and so is not passed on).
static bool s_credential_header(proxy_t *self, sandbox_t *sb, const hheader_t *h)
{
    if (strcmp(h->name, "authorization") == 0) {
        const char *v = NULL;
        if (strncasecmp(h->value, "token ", 6) == 0) v = h->value + 6;
        else if (strncasecmp(h->value, "bearer ", 7) == 0) v = h->value + 7;
        while (v && *v == ' ') v++;
        return v && s_credential(self, sb, v);
    }
    if (strcmp(h->name, "x-access-token") == 0 || strcmp(h->name, "e2b-traffic-access-token") == 0 ||
        strcmp(h->name, "x-api-key") == 0)
        return s_credential(self, sb, h->value);
    return false;
}

static bool s_is_upgrade(hreq_t *req)
{
    return hreq_header(req, "upgrade") && hparse_header_has_token(hreq_head(req), "connection", "upgrade");
}

//  The request head as the server in the sandbox gets it. NULL if memory ran out.
static char *s_head(proxy_t *self, sandbox_t *sb, hreq_t *req, const target_t *t, size_t *len)
{
    const hhead_t *head = hreq_head(req);
    bool upgrade = s_is_upgrade(req);
    sbuf_t b = {0};
    s_puts(&b, head->method);
    s_put(&b, " ", 1);
    if (t->rest) s_puts(&b, *t->rest ? t->rest : "/");
    else s_puts(&b, hreq_raw_path(req));
    s_query(self, sb, *hreq_query_string(req) ? hreq_query_string(req) : NULL, &b);
    s_puts(&b, head->version_minor >= 1 ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n");
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                      "trailer", "x-forwarded-for", NULL};
    for (size_t i = 0; i < head->nheaders; i++) {
        const hheader_t *h = &head->headers[i];
        bool skip = !upgrade && strcmp(h->name, "upgrade") == 0;
        for (size_t k = 0; hop[k] && !skip; k++) skip = strcmp(h->name, hop[k]) == 0;
        if (skip || s_credential_header(self, sb, h)) continue;
        s_header(&b, h->name, h->value);
    }
    s_header(&b, "x-forwarded-for", hreq_peer(req));
    s_header(&b, "x-forwarded-proto", "http");
    s_header(&b, "connection", upgrade ? "Upgrade" : "close");
    s_put(&b, "\r\n", 2);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    *len = b.len;
    return b.data;
}

// ---------------------------------------------------------------------------------------
//  Connecting

static void s_pending_free(pending_t *p)
{
    klist_remove(&p->link);
    if (p->up) hconn_close(p->up, false);
    hreq_on_close(p->req, NULL, NULL);
    hreq_release(&p->req);
    free(p->head);
    free(p);
}

static void s_on_client_gone(hreq_t *req, void *arg)
{
    (void) req;
    s_pending_free(arg);
}

static void s_bad_gateway(pending_t *p, int err)
{
    char why[300];
    if (err == UV_ECONNREFUSED)
        snprintf(why, sizeof why, "nothing is listening on port %d in sandbox %s (connection refused)",
                 p->target.port, p->target.id);
    else if (err == UV_ETIMEDOUT)
        snprintf(why, sizeof why, "port %d in sandbox %s did not answer within %d s", p->target.port,
                 p->target.id, CONNECT_TIMEOUT_MS / 1000);
    else
        snprintf(why, sizeof why, "cannot connect to port %d in sandbox %s: %s", p->target.port,
                 p->target.id, err ? uv_strerror(err) : "the sandbox is not running");
    hreq_reply_error(p->req, 502, why);
}

static void s_on_connect(hconn_t *conn, int status, void *arg);

//  Connect to the port from inside the sandbox, over IPv4 or IPv6 loopback. Returns 0 or
//  a libuv error (nothing is pending then).
static int s_connect(pending_t *p, bool v6)
{
    sandbox_t *sb = sandboxes_find(p->proxy->sandboxes, p->target.id);
    sbx_t *sbx = sb && sandbox_state(sb) == SANDBOX_RUNNING ? sandbox_sbx(sb) : NULL;
    if (!sbx) return UV_ESRCH;
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    if (v6) uv_ip6_addr("::1", p->target.port, (struct sockaddr_in6 *) &addr);
    else uv_ip4_addr("127.0.0.1", p->target.port, (struct sockaddr_in *) &addr);
    int fd = sbx_socket(sbx, v6 ? AF_INET6 : AF_INET, SOCK_STREAM);
    if (fd < 0) return UV_EIO;
    int err = 0;
    p->up = hconn_connect(p->proxy->loop, fd, (struct sockaddr *) &addr, CONNECT_TIMEOUT_MS,
                          s_on_connect, p, &err);
    return p->up ? 0 : err;
}

static void s_on_connect(hconn_t *conn, int status, void *arg)
{
    pending_t *p = arg;
    p->up = NULL;  //  closes itself on failure; ours (then the tunnel's) on success
    if (status < 0) {
        if (!p->tried_v6 && status == UV_ECONNREFUSED) {
            p->tried_v6 = true;
            p->first_err = status;
            if (s_connect(p, true) == 0) return;
        }
        s_bad_gateway(p, p->first_err ? p->first_err : status);
        s_pending_free(p);
        return;
    }
    hreq_on_close(p->req, NULL, NULL);
    hconn_t *client = hreq_detach(p->req);
    if (!client) {
        hconn_close(conn, false);
        s_pending_free(p);
        return;
    }
    klog_debug("proxy: %s -> port %d of sandbox %s", hconn_peer(client), p->target.port, p->target.id);
    htunnel_t *tunnel = hconn_write_copy(conn, p->head, p->head_len) == KB_OK ? htunnel_new(client, conn) : NULL;
    if (!tunnel) {
        hconn_close(conn, false);
        hconn_close(client, false);
    }
    s_pending_free(p);
}

// ---------------------------------------------------------------------------------------
//  The API

static void s_http(void *api, hreq_t *req)
{
    proxy_t *self = api;
    target_t t;
    if (!s_target(self, req, &t)) {
        hreq_reply_error(req, 404, "Not Found");
        return;
    }
    char why[300];
    sandbox_t *sb = sandboxes_find(self->sandboxes, t.id);
    if (!sb) {
        snprintf(why, sizeof why, "sandbox %s not found", t.id);
        hreq_reply_error(req, 404, why);
        return;
    }
    if (sandbox_state(sb) != SANDBOX_RUNNING || !sandbox_sbx(sb)) {
        snprintf(why, sizeof why, "sandbox %s is %s: port %d cannot be reached now", t.id,
                 sandbox_state_name(sb), t.port);
        hreq_reply_error(req, 503, why);
        return;
    }
    pending_t *p = calloc(1, sizeof *p);
    if (p) p->head = s_head(self, sb, req, &t, &p->head_len);
    if (!p || !p->head) {
        free(p);
        hreq_reply_error(req, 503, "out of memory");
        return;
    }
    klist_init(&p->link);
    p->proxy = self;
    p->target = t;
    p->target.rest = NULL;  //  points into req: not needed past the head
    int err = s_connect(p, false);
    if (err == UV_ECONNREFUSED) {
        p->tried_v6 = true;
        p->first_err = err;
        err = s_connect(p, true);
        if (err) err = p->first_err;
    }
    if (err) {
        p->req = req;
        s_bad_gateway(p, err == UV_ESRCH ? 0 : err);
        free(p->head);
        free(p);
        return;
    }
    hreq_hold(req);
    p->req = req;
    klist_push_back(&self->pending, &p->link);
    hreq_on_close(req, s_on_client_gone, p);
}

static bool s_claims(void *api, hreq_t *req)
{
    target_t t;
    return s_target(api, req, &t);
}

static bool s_authorize(void *api, hreq_t *req, const char *token)
{
    proxy_t *self = api;
    target_t t;
    if (!s_target(self, req, &t)) return false;
    sandbox_t *sb = sandboxes_find(self->sandboxes, t.id);
    return sb && sandbox_traffic_token_ok(sb, token);
}

static void *s_create(const api_ctx_t *ctx)
{
    proxy_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = ctx->loop;
    self->config = ctx->config;
    self->sandboxes = ctx->sandboxes;
    self->auth = ctx->config->token && *ctx->config->token;
    if (self->auth)
        crypto_generichash(self->token_hash, sizeof self->token_hash,
                           (const unsigned char *) ctx->config->token, strlen(ctx->config->token), NULL, 0);
    klist_init(&self->pending);
    return self;
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    proxy_t *self = *api_p;
    *api_p = NULL;
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->pending) s_pending_free(klist_entry(it, pending_t, link));
    free(self);
}

const api_desc_t proxy_api = {
    .name = "proxy",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .authorize = s_authorize,
    .http = s_http,
    .proxies = true,
};
