/*  htunnel - bytes both ways between two connections, with backpressure. */
#include "htunnel.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

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

static const hconn_driver_t s_driver = {s_on_read, s_on_eof, s_on_drain, NULL, s_on_close, NULL};

htunnel_t *htunnel_new(hconn_t *a, hconn_t *b)
{
    htunnel_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->side[0] = (side_t){self, a, false};
    self->side[1] = (side_t){self, b, false};
    s_count++;
    hconn_set_driver(a, &s_driver, &self->side[0]);
    hconn_set_driver(b, &s_driver, &self->side[1]);
    return self;
}

size_t htunnel_count(void)
{
    return s_count;
}
