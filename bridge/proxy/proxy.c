/*  proxy - the port proxy: requests for a sandbox's port, tunnelled to it. */
#include "proxy.h"
#include "../apikit/portaddr.h"
#include "../http/hconn.h"
#include "../http/hreq.h"
#include "../http/hresp.h"
#include "../http/htunnel.h"
#include "../http/hutil.h"
#include "../buf/wbuf.h"
#include "../sandboxes/sandboxes.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

//  How long a connect to a port inside a sandbox may take.
#define CONNECT_TIMEOUT_MS 10000

//  Idle upstream connections kept for reuse: per (sandbox, port), across the server, and
//  how long one may sit unused (a server's own keep-alive timeout is usually 5 s or more).
#define IDLE_PER_TARGET 4
#define IDLE_MAX 32
#define IDLE_MS 3000
//  The longest response head a server in a sandbox may send (502 past it).
#define MAX_RESPONSE_HEAD 65536
//  A side is not read while the other has this much queued (htunnel's rule).
#define HIGH_WATER (256 * 1024)

typedef struct _proxy_t proxy_t;

//  Where a request goes.
typedef struct {
    int port;
    char id[PORTADDR_ID_MAX + 1];
    const char *rest;  //  path form: the path the server sees ("" or "/..."); NULL: host form
} target_t;

//  One request on its way: connecting (or reusing an idle connection), its head and
//  body going up, the answer coming back. Upgrades only connect, then become a tunnel.
typedef struct {
    klist_t link;
    proxy_t *proxy;
    hreq_t *req;   //  held
    hconn_t *up;   //  connecting or connected; NULL once let go
    target_t target;
    sbx_t *sbx;    //  the sandbox's when the request came (to park the connection under)
    bool upgrade;
    bool connected, reused, retried;
    bool tried_v6;
    int first_err;  //  the IPv4 attempt's error
    char *head;     //  the head to send up
    size_t head_len;
    char method[16];
    //  the request body going up
    bool has_body, chunked, body_started, body_done;
    //  the answer
    hresp_t *resp;
    bool answered;    //  bytes of the answer went to the client
    bool keep_client; //  the client's connection stays open after this answer
    bool up_paused;   //  not reading the server: the client's queue is full
    //  Calls into hreq and hconn can end the exchange from inside (the client leaving):
    //  it is freed once the outermost callback of ours returns.
    int busy;
    bool ended;
} xchg_t;

//  An idle upstream connection.
typedef struct {
    klist_t link;
    proxy_t *proxy;
    hconn_t *conn;
    char id[PORTADDR_ID_MAX + 1];
    int port;
    sbx_t *sbx;
} idle_t;

struct _proxy_t {
    uv_loop_t *loop;
    const config_t *config;
    sandboxes_t *sandboxes;
    bool auth;
    unsigned char token_hash[crypto_generichash_BYTES];
    klist_t xchgs;   //  xchg_t
    klist_t idle;    //  idle_t, oldest first
    size_t nidle;
    uint64_t upstream_connects, upstream_reuses;  //  for the log
    uint64_t tunnel_idle_ms;
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
    //  Expect is answered by kbridge itself (100 Continue when the body is read), so the
    //  server does not answer it a second time.
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                      "trailer", "x-forwarded-for", "expect", NULL};
    for (size_t i = 0; i < head->nheaders; i++) {
        const hheader_t *h = &head->headers[i];
        bool skip = !upgrade && strcmp(h->name, "upgrade") == 0;
        for (size_t k = 0; hop[k] && !skip; k++) skip = strcmp(h->name, hop[k]) == 0;
        if (skip || s_credential_header(self, sb, h)) continue;
        s_header(&b, h->name, h->value);
    }
    s_header(&b, "x-forwarded-for", hreq_peer(req));
    s_header(&b, "x-forwarded-proto", "http");
    //  HTTP/1.1 requests keep the server's connection open for the next one; HTTP/1.0
    //  ones cannot be told apart from close-delimited answers on reuse, so they close.
    if (upgrade) s_header(&b, "connection", "Upgrade");
    else if (head->version_minor == 0) s_header(&b, "connection", "close");
    s_put(&b, "\r\n", 2);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    *len = b.len;
    return b.data;
}

// ---------------------------------------------------------------------------------------
//  Idle upstream connections

static void s_idle_free(idle_t *i)
{
    klist_remove(&i->link);
    i->proxy->nidle--;
    free(i);
}

//  An idle connection has nothing to say: bytes, its end, its timeout or an error all
//  mean it cannot be used again.
static size_t s_idle_on_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    (void) data;
    (void) arg;
    hconn_close(conn, false);
    return len;
}

static void s_idle_on_eof(hconn_t *conn, void *arg)
{
    (void) arg;
    hconn_close(conn, false);
}

static void s_idle_on_close(hconn_t *conn, void *arg)
{
    (void) conn;
    s_idle_free(arg);
}

static const hconn_driver_t s_idle_driver = {s_idle_on_read, s_idle_on_eof, NULL, s_idle_on_eof,
                                             s_idle_on_close, NULL};

//  A connection nobody drives any more, closing.
static size_t s_dead_on_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    (void) conn;
    (void) data;
    (void) arg;
    return len;
}

static const hconn_driver_t s_dead_driver = {s_dead_on_read, NULL, NULL, NULL, NULL, NULL};

static void s_drop(hconn_t *conn)
{
    hconn_set_driver(conn, &s_dead_driver, NULL);
    hconn_close(conn, false);
}

static bool s_idle_matches(const idle_t *i, const char *id, int port)
{
    return i->port == port && strcmp(i->id, id) == 0;
}

//  Keep conn (a server's, answer complete) for the next request to the same port.
static void s_park(proxy_t *self, hconn_t *conn, const target_t *t, sbx_t *sbx)
{
    size_t same = 0;
    klist_t *it;
    klist_foreach(it, &self->idle) same += s_idle_matches(klist_entry(it, idle_t, link), t->id, t->port);
    idle_t *i = same < IDLE_PER_TARGET ? calloc(1, sizeof *i) : NULL;
    if (!i) {
        s_drop(conn);
        return;
    }
    if (self->nidle >= IDLE_MAX) {  //  the oldest goes
        idle_t *old = klist_entry(klist_first(&self->idle), idle_t, link);
        s_drop(old->conn);
        s_idle_free(old);
    }
    i->proxy = self;
    i->conn = conn;
    i->port = t->port;
    i->sbx = sbx;
    memcpy(i->id, t->id, sizeof i->id);
    klist_push_back(&self->idle, &i->link);
    self->nidle++;
    hconn_set_driver(conn, &s_idle_driver, i);
    hconn_set_timer(conn, IDLE_MS);
}

//  The newest idle connection to t in sbx, taken out of the pool; NULL if none.
static hconn_t *s_unpark(proxy_t *self, const target_t *t, sbx_t *sbx)
{
    klist_t *it;
    for (it = self->idle.prev; it != &self->idle; it = it->prev) {
        idle_t *i = klist_entry(it, idle_t, link);
        if (!s_idle_matches(i, t->id, t->port) || i->sbx != sbx || hconn_closing(i->conn)) continue;
        hconn_t *conn = i->conn;
        hconn_set_timer(conn, 0);
        hconn_set_driver(conn, &s_dead_driver, NULL);
        s_idle_free(i);
        return conn;
    }
    return NULL;
}

//  Close the idle connections into a sandbox (it ended, or was paused or resumed).
static void s_unpark_sandbox(proxy_t *self, const char *id)
{
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->idle) {
        idle_t *i = klist_entry(it, idle_t, link);
        if (strcmp(i->id, id) != 0) continue;
        s_drop(i->conn);
        s_idle_free(i);
    }
}

static void s_on_sandbox_end(sandbox_t *sb, const char *why, void *arg)
{
    (void) why;
    s_unpark_sandbox(arg, sandbox_id(sb));
}

static void s_on_sandbox_state(sandbox_t *sb, void *arg)
{
    s_unpark_sandbox(arg, sandbox_id(sb));
}

// ---------------------------------------------------------------------------------------
//  An exchange

static void s_xchg_destroy(xchg_t *x)
{
    hreq_release(&x->req);
    hresp_destroy(&x->resp);
    free(x->head);
    free(x);
}

//  The exchange is over for us: nothing of it is called back again.
static void s_xchg_end(xchg_t *x)
{
    if (x->ended) return;
    x->ended = true;
    klist_remove(&x->link);
    if (x->up) {
        s_drop(x->up);
        x->up = NULL;
    }
    hreq_on_close(x->req, NULL, NULL);
    hreq_on_drain(x->req, NULL, NULL);
    hreq_body_stop(x->req);
    if (!x->busy) s_xchg_destroy(x);
}

static void s_enter(xchg_t *x)
{
    x->busy++;
}

//  Returns false if the exchange ended (and x is gone).
static bool s_leave(xchg_t *x)
{
    if (--x->busy == 0 && x->ended) {
        s_xchg_destroy(x);
        return false;
    }
    return !x->ended;
}

static void s_on_client_gone(hreq_t *req, void *arg)
{
    (void) req;
    s_xchg_end(arg);
}

static void s_bad_gateway(xchg_t *x, int err)
{
    char why[300];
    if (err == UV_ECONNREFUSED)
        snprintf(why, sizeof why, "nothing is listening on port %d in sandbox %s (connection refused)",
                 x->target.port, x->target.id);
    else if (err == UV_ETIMEDOUT)
        snprintf(why, sizeof why, "port %d in sandbox %s did not answer within %d s", x->target.port,
                 x->target.id, CONNECT_TIMEOUT_MS / 1000);
    else
        snprintf(why, sizeof why, "cannot connect to port %d in sandbox %s: %s", x->target.port,
                 x->target.id, err ? uv_strerror(err) : "the sandbox is not running");
    hreq_reply_error(x->req, 502, why);
}

//  The server failed the exchange (closed, broke the framing): a 502 if nothing of the
//  answer went to the client yet, else the client's connection closes after what it got
//  (a body cut short must not pass for a complete one).
static void s_fail(xchg_t *x, const char *why)
{
    if (x->ended) return;
    klog_debug("proxy: port %d of sandbox %s: %s", x->target.port, x->target.id, why);
    s_enter(x);
    if (!x->answered) {
        char msg[300];
        snprintf(msg, sizeof msg, "port %d in sandbox %s: %s", x->target.port, x->target.id, why);
        hreq_reply_error(x->req, 502, msg);
    } else {
        hreq_raw_end(x->req, true);
    }
    s_xchg_end(x);
    s_leave(x);
}

static int s_connect(xchg_t *x, bool v6);
static int s_connect_any(xchg_t *x);

//  A kept connection the server closed while it sat idle (or that broke on the first
//  write) gets one more try on a new connection, if nothing of the request's body or of
//  the answer went yet; otherwise the exchange fails.
static void s_retry_or_fail(xchg_t *x, const char *why)
{
    if (!(x->reused && !x->retried && !x->answered && !x->body_started)) {
        s_fail(x, why);
        return;
    }
    if (x->up) {
        s_drop(x->up);
        x->up = NULL;
    }
    x->retried = true;
    x->reused = x->connected = x->tried_v6 = false;
    x->first_err = 0;
    int err = s_connect_any(x);
    if (!err) return;
    s_enter(x);
    s_bad_gateway(x, err == UV_ESRCH ? 0 : err);
    s_xchg_end(x);
    s_leave(x);
}

//  The answer is complete: the server's connection goes back to the pool if it can carry
//  another exchange, the client's stays open if it can.
static void s_done(xchg_t *x, bool leftover)
{
    const hhead_t *h = hresp_head(x->resp);
    bool until_close = hresp_framing(x->resp) == HBODY_UNTIL_CLOSE;
    bool reuse = !leftover && x->body_done && !until_close && hparse_keep_alive(h) && !hconn_closing(x->up);
    hconn_t *up = x->up;
    x->up = NULL;
    if (reuse) s_park(x->proxy, up, &x->target, x->sbx);
    else s_drop(up);
    s_enter(x);
    hreq_raw_end(x->req, !x->keep_client || until_close);
    s_xchg_end(x);
    s_leave(x);
}

//  The final head as the client gets it: hop-by-hop headers replaced by kbridge's own;
//  the first body bytes (body_len, read with the head) go in the same write.
static int s_write_head(xchg_t *x, const char *body, size_t body_len)
{
    const hhead_t *h = hresp_head(x->resp);
    x->keep_client = hreq_raw_begin(x->req, h->status);
    if (hresp_framing(x->resp) == HBODY_UNTIL_CLOSE) x->keep_client = false;
    sbuf_t b = {0};
    char line[64];
    snprintf(line, sizeof line, "HTTP/1.1 %d ", h->status);
    s_puts(&b, line);
    s_puts(&b, h->reason);
    s_put(&b, "\r\n", 2);
    //  With Transfer-Encoding the length is the coding's (or the close's): a
    //  Content-Length beside it would let the client delimit the body differently.
    bool te = hparse_header(h, "transfer-encoding") != NULL;
    for (size_t i = 0; i < h->nheaders; i++) {
        const char *n = h->headers[i].name;
        if (strcmp(n, "connection") == 0 || strcmp(n, "keep-alive") == 0 || strcmp(n, "proxy-connection") == 0 ||
            (te && strcmp(n, "content-length") == 0))
            continue;
        s_header(&b, n, h->headers[i].value);
    }
    if (!x->keep_client) s_header(&b, "connection", "close");
    else if (hreq_head(x->req)->version_minor == 0) s_header(&b, "connection", "keep-alive");
    s_put(&b, "\r\n", 2);
    s_put(&b, body, body_len);
    x->answered = true;
    int rc = b.failed ? KB_ENOMEM : hreq_raw_write(x->req, b.data, b.len);
    free(b.data);
    return rc;
}

static void s_on_client_drain(hreq_t *req, void *arg)
{
    (void) req;
    xchg_t *x = arg;
    if (x->up_paused && x->up) {
        x->up_paused = false;
        hconn_resume_read(x->up);
    }
}

static size_t s_up_on_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    xchg_t *x = arg;
    s_enter(x);
    size_t used = 0;
    while (used < len && !x->ended) {
        hresp_event_t ev;
        size_t n = hresp_next(x->resp, data + used, len - used, &ev);
        if (ev == HRESP_ERROR) {
            s_fail(x, hresp_why(x->resp));
            break;
        }
        if (ev == HRESP_MORE) break;  //  the head is not complete: hconn keeps the bytes
        bool interim = ev == HRESP_HEAD && hresp_interim(x->resp);
        int rc = KB_OK;
        if (interim) {
            //  1xx (Early Hints...) go on as sent; HTTP/1.0 clients never get them.
            if (hreq_head(x->req)->version_minor >= 1) rc = hreq_raw_write(x->req, data + used, n);
        } else if (ev == HRESP_HEAD) {
            //  The body bytes that came with the head go out with it: one write, not two.
            size_t bn = 0;
            hresp_event_t bev = HRESP_MORE;
            if (!hresp_done(x->resp) && used + n < len) bn = hresp_next(x->resp, data + used + n, len - used - n, &bev);
            if (bev != HRESP_BODY) bn = 0;
            rc = s_write_head(x, data + used + n, bn);
            n += bn;
            if (bev == HRESP_ERROR && rc == KB_OK) {
                s_fail(x, hresp_why(x->resp));
                break;
            }
        } else if (n) {
            rc = hreq_raw_write(x->req, data + used, n);
        }
        used += n;
        if (x->ended) break;
        if (rc != KB_OK) {  //  the client is gone or too slow: nothing more to pass on
            s_enter(x);
            hreq_raw_end(x->req, true);
            s_xchg_end(x);
            s_leave(x);
            break;
        }
        if (!interim && hresp_done(x->resp)) {
            s_done(x, used < len);
            break;
        }
    }
    if (!s_leave(x)) return len;
    hconn_t *client = hreq_conn(x->req);
    if (client && hconn_queued(client) >= HIGH_WATER) {
        x->up_paused = true;
        hconn_pause_read(conn);
        hreq_on_drain(x->req, s_on_client_drain, x);
    }
    return used;
}

static void s_up_on_eof(hconn_t *conn, void *arg)
{
    (void) conn;
    xchg_t *x = arg;
    if (hresp_eof(x->resp)) {  //  a body delimited by the close: complete
        s_done(x, false);
        return;
    }
    s_retry_or_fail(x, x->answered ? "the server closed the connection in the middle of its answer"
                                   : "the server closed the connection without answering");
}

static void s_up_on_drain(hconn_t *conn, void *arg)
{
    (void) conn;
    xchg_t *x = arg;
    if (!x->body_done) hreq_body_resume(x->req);
}

static void s_up_on_close(hconn_t *conn, void *arg)
{
    xchg_t *x = arg;
    if (x->up != conn) return;
    x->up = NULL;
    s_fail(x, "the connection to the server failed");
}

static const hconn_driver_t s_up_driver = {s_up_on_read, s_up_on_eof, s_up_on_drain, NULL, s_up_on_close,
                                           NULL};

//  The request body, as it comes, goes up (chunked again if it came chunked: hreq hands
//  over the data decoded), in one write per piece.
static void s_body_data(hreq_t *req, const char *data, size_t len, void *arg)
{
    xchg_t *x = arg;
    if (x->ended || !x->up) return;
    char line[24];
    int hn = x->chunked ? snprintf(line, sizeof line, "%zx\r\n", len) : 0;
    size_t wire = (size_t) hn + len + (x->chunked ? 2 : 0);
    char *p = wbuf_alloc(wire);
    if (!p) {
        s_fail(x, "out of memory");
        return;
    }
    memcpy(p, line, (size_t) hn);
    memcpy(p + hn, data, len);
    if (x->chunked) memcpy(p + hn + len, "\r\n", 2);
    s_enter(x);
    int rc = hconn_write(x->up, p, p, wire);
    if (s_leave(x) && rc == KB_OK && x->up && hconn_queued(x->up) >= HIGH_WATER) {
        hreq_body_pause(req);
        hconn_want_drain(x->up);
    }
}

static void s_body_end(hreq_t *req, int err, void *arg)
{
    (void) req;
    xchg_t *x = arg;
    if (x->ended) return;
    if (err) {  //  the client's body broke off (hreq answers it): the server's connection goes
        s_xchg_end(x);
        return;
    }
    x->body_done = true;
    if (x->chunked && x->up) hconn_write_copy(x->up, "0\r\n\r\n", 5);
}

static const hreq_body_events_t s_body_events = {s_body_data, s_body_end};

//  Connected (or reusing): the head goes up, then the body as it comes. The write comes
//  before the driver so that a connection that broke is seen here, not from inside it.
static void s_start(xchg_t *x)
{
    x->connected = true;
    hresp_start(x->resp, x->method);
    if (hconn_write_copy(x->up, x->head, x->head_len) != KB_OK) {
        s_retry_or_fail(x, "cannot write to the server");
        return;
    }
    hconn_set_driver(x->up, &s_up_driver, x);
    if (!x->has_body) {
        x->body_done = true;
        return;
    }
    if (x->body_started) return;
    x->body_started = true;
    s_enter(x);
    hreq_body_stream(x->req, &s_body_events, x);
    s_leave(x);
}

static void s_tunnel(xchg_t *x, hconn_t *conn)
{
    hreq_on_close(x->req, NULL, NULL);
    hconn_t *client = hreq_detach(x->req);
    if (!client) {
        hconn_close(conn, false);
        s_xchg_end(x);
        return;
    }
    klog_debug("proxy: %s -> port %d of sandbox %s (tunnel)", hconn_peer(client), x->target.port, x->target.id);
    htunnel_t *tunnel = hconn_write_copy(conn, x->head, x->head_len) == KB_OK ? htunnel_new(client, conn) : NULL;
    if (!tunnel) {
        hconn_close(conn, false);
        hconn_close(client, false);
    } else {
        htunnel_set_idle_timeout(tunnel, x->proxy->tunnel_idle_ms);
    }
    s_xchg_end(x);
}

static void s_on_connect(hconn_t *conn, int status, void *arg);

//  Connect to the port from inside the sandbox, over IPv4 or IPv6 loopback. Returns 0 or
//  a libuv error (nothing is pending then).
static int s_connect(xchg_t *x, bool v6)
{
    sandbox_t *sb = sandboxes_find(x->proxy->sandboxes, x->target.id);
    sbx_t *sbx = sb && sandbox_state(sb) == SANDBOX_RUNNING ? sandbox_sbx(sb) : NULL;
    if (!sbx) return UV_ESRCH;
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    if (v6) uv_ip6_addr("::1", x->target.port, (struct sockaddr_in6 *) &addr);
    else uv_ip4_addr("127.0.0.1", x->target.port, (struct sockaddr_in *) &addr);
    int fd = sbx_socket(sbx, v6 ? AF_INET6 : AF_INET, SOCK_STREAM);
    if (fd < 0) return UV_EIO;
    int err = 0;
    x->up = hconn_connect(x->proxy->loop, fd, (struct sockaddr *) &addr, CONNECT_TIMEOUT_MS,
                          s_on_connect, x, &err);
    if (x->up) x->proxy->upstream_connects++;
    return x->up ? 0 : err;
}

//  IPv4 first, then IPv6 if refused. Returns 0 or the error to answer with.
static int s_connect_any(xchg_t *x)
{
    int err = s_connect(x, false);
    if (err == UV_ECONNREFUSED) {
        x->tried_v6 = true;
        x->first_err = err;
        err = s_connect(x, true);
        if (err) err = x->first_err;
    }
    return err;
}

static void s_on_connect(hconn_t *conn, int status, void *arg)
{
    xchg_t *x = arg;
    if (status < 0) {
        x->up = NULL;  //  closes itself
        if (!x->tried_v6 && status == UV_ECONNREFUSED) {
            x->tried_v6 = true;
            x->first_err = status;
            if (s_connect(x, true) == 0) return;
        }
        s_enter(x);
        s_bad_gateway(x, x->first_err ? x->first_err : status);
        s_xchg_end(x);
        s_leave(x);
        return;
    }
    if (x->upgrade) {
        x->up = NULL;
        s_tunnel(x, conn);
        return;
    }
    s_start(x);
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
    xchg_t *x = calloc(1, sizeof *x);
    if (x) {
        x->head = s_head(self, sb, req, &t, &x->head_len);
        x->resp = hresp_new(MAX_RESPONSE_HEAD);
    }
    if (!x || !x->head || !x->resp) {
        if (x) {
            free(x->head);
            hresp_destroy(&x->resp);
        }
        free(x);
        hreq_reply_error(req, 503, "out of memory");
        return;
    }
    klist_init(&x->link);
    x->proxy = self;
    x->target = t;
    x->target.rest = NULL;  //  points into req: not needed past the head
    x->sbx = sandbox_sbx(sb);
    x->upgrade = s_is_upgrade(req);
    x->has_body = hreq_has_body(req);
    x->chunked = x->has_body && hreq_header(req, "transfer-encoding") != NULL;
    snprintf(x->method, sizeof x->method, "%s", hreq_method_name(req));
    hreq_hold(req);
    x->req = req;
    klist_push_back(&self->xchgs, &x->link);
    hreq_on_close(req, s_on_client_gone, x);
    if (!x->upgrade) hreq_allow_half_close(req);
    if (!x->upgrade && (x->up = s_unpark(self, &t, x->sbx))) {
        x->reused = true;
        self->upstream_reuses++;
        s_start(x);
        return;
    }
    int err = s_connect_any(x);
    if (err) {
        s_enter(x);
        s_bad_gateway(x, err == UV_ESRCH ? 0 : err);
        s_xchg_end(x);
        s_leave(x);
    }
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
    self->tunnel_idle_ms = ctx->config->tunnel_idle_ms;
    klist_init(&self->xchgs);
    klist_init(&self->idle);
    static const sandboxes_observer_t observer = {s_on_sandbox_end, s_on_sandbox_state};
    if (self->sandboxes) sandboxes_observe(self->sandboxes, &observer, self);
    return self;
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    proxy_t *self = *api_p;
    *api_p = NULL;
    klist_t *it, *tmp;
    if (self->sandboxes) sandboxes_unobserve(self->sandboxes, self);
    klist_foreach_safe(it, tmp, &self->xchgs) s_xchg_end(klist_entry(it, xchg_t, link));
    klist_foreach_safe(it, tmp, &self->idle) {
        idle_t *i = klist_entry(it, idle_t, link);
        s_drop(i->conn);
        s_idle_free(i);
    }
    klog_debug("proxy: %llu connections to servers in sandboxes, %llu reuses",
               (unsigned long long) self->upstream_connects, (unsigned long long) self->upstream_reuses);
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
