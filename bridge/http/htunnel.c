/*  htunnel - bytes both ways between two connections, with backpressure. */
#include "htunnel.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <stdbool.h>
#include <stdlib.h>

//  A side is not read while the other has this much queued.
#define HIGH_WATER (256 * 1024)

typedef struct {
    htunnel_t *tunnel;
    hconn_t *conn;
    bool closed;
} side_t;

struct _htunnel_t {
    side_t side[2];
    uint64_t idle_ms;    //  0: no limit
    uint64_t last;       //  monotonic ms of the last bytes either way
};

static size_t s_count;

static side_t *s_other(side_t *s)
{
    htunnel_t *t = s->tunnel;
    return s == &t->side[0] ? &t->side[1] : &t->side[0];
}

static void s_end(side_t *s)
{
    side_t *o = s_other(s);
    if (!s->closed) hconn_close(s->conn, true);
    if (!o->closed) hconn_close(o->conn, true);
}

static size_t s_on_read(hconn_t *conn, char *data, size_t len, void *arg)
{
    (void) conn;
    side_t *s = arg;
    side_t *o = s_other(s);
    s->tunnel->last = kb_now_ms();
    if (o->closed || hconn_closing(o->conn)) return len;
    if (hconn_write_copy(o->conn, data, len) != KB_OK) {
        s_end(s);
        return len;
    }
    if (hconn_queued(o->conn) >= HIGH_WATER) {
        hconn_pause_read(s->conn);
        hconn_want_drain(o->conn);
    }
    return len;
}

//  The client (side 0) stopped sending: the server gets end of stream after what is
//  queued for it, and its answer still flows back. The server's end ends both.
static void s_on_eof(hconn_t *conn, void *arg)
{
    (void) conn;
    side_t *s = arg;
    side_t *o = s_other(s);
    if (s == &s->tunnel->side[0] && !o->closed && !hconn_closing(conn)) {
        hconn_shutdown(o->conn);
        return;
    }
    s_end(s);
}

//  o's queue fell low: read its peer again.
static void s_on_drain(hconn_t *conn, void *arg)
{
    (void) conn;
    side_t *o = s_other(arg);
    if (!o->closed) hconn_resume_read(o->conn);
}

//  Side 0's timer watches for idleness: it is re-armed for what is left of the limit
//  rather than on every read, so busy tunnels do not touch it.
static void s_on_timer(hconn_t *conn, void *arg)
{
    side_t *s = arg;
    htunnel_t *t = s->tunnel;
    uint64_t now = kb_now_ms(), idle = now - t->last;
    if (idle < t->idle_ms) {
        hconn_set_timer(conn, t->idle_ms - idle);
        return;
    }
    klog_debug("tunnel %s: no bytes either way for %llu ms; closing", hconn_peer(t->side[0].conn),
               (unsigned long long) idle);
    s_end(s);
}

static void s_on_close(hconn_t *conn, void *arg)
{
    (void) conn;
    side_t *s = arg;
    side_t *o = s_other(s);
    s->closed = true;
    if (!o->closed) {
        hconn_close(o->conn, true);
        return;
    }
    free(s->tunnel);
    s_count--;
}

static const hconn_driver_t s_driver = {s_on_read, s_on_eof, s_on_drain, s_on_timer, s_on_close, NULL};

htunnel_t *htunnel_new(hconn_t *a, hconn_t *b)
{
    htunnel_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->side[0] = (side_t){self, a, false};
    self->side[1] = (side_t){self, b, false};
    self->last = kb_now_ms();
    s_count++;
    hconn_set_driver(a, &s_driver, &self->side[0]);
    hconn_set_driver(b, &s_driver, &self->side[1]);
    htunnel_set_idle_timeout(self, HTUNNEL_IDLE_MS);
    return self;
}

void htunnel_set_idle_timeout(htunnel_t *self, uint64_t ms)
{
    self->idle_ms = ms;
    self->last = kb_now_ms();
    hconn_set_timer(self->side[0].conn, ms);
}

size_t htunnel_count(void)
{
    return s_count;
}
