/*  outbox - numbered, bounded, replayable delivery to a native client. */
#include "outbox.h"
#include "../metrics/metrics.h"
#include "../buf/jbuf.h"
#include "../buf/wbuf.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Bytes handed to the connection at once: enough to keep the socket busy, little enough
//  that what a dropped connection loses stays in reach of a replay.
#define WINDOW (1u << 20)
//  Replies and ends already sent, kept for a client that has not acked them: at most this
//  many bytes of them per session (the most recent).
#define KEPT_RETAIN (1u << 20)
//  Sent messages whose copies were let go, remembered (seq, size, request) so that a
//  client coming back after them is told exactly what it missed.
#define EVICTED_MAX 65536

typedef struct {
    klist_t link;
    uint64_t seq;
    char *payload;
    size_t len;
    json_t *rid;
    bool keep, sent;
} item_t;

typedef struct {
    uint64_t seq;
    size_t bytes;
    json_t *rid;
} evicted_t;

struct _outbox_t {
    size_t limit, retain, window;
    klist_t items;  //  in seq order: the sent ones first
    //  The first unsent item, NULL when all are sent. The sent ones before it are kept
    //  for resume (thousands of them in a long session): finding it by walking them on
    //  every push was a sixth of kbridge's CPU per cell.
    item_t *next_unsent;
    size_t unsent_bytes, sent_bytes;  //  sent_bytes: what may be let go (not kept ones)
    size_t kept_bytes;  //  sent, kept until the client has them: replies and ends
    uint64_t seq;
    wsconn_t *conn;
    json_t *lost;  //  not yet reported: rid key -> {id, events, bytes}
    uint64_t lost_events, lost_bytes;
    evicted_t *evicted;  //  a ring
    size_t ev_start, ev_count;
    bool congested;
    void (*on_relief)(outbox_t *, void *);
    void *relief_arg;
};

static void s_pump(outbox_t *self);

outbox_t *outbox_new(size_t limit, size_t retain)
{
    outbox_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->limit = limit;
    self->retain = retain;
    //  The connection's own limit is the same: stay well under it.
    self->window = limit / 2 < WINDOW ? limit / 2 : WINDOW;
    klist_init(&self->items);
    self->lost = json_object();
    self->evicted = calloc(EVICTED_MAX, sizeof *self->evicted);
    if (!self->lost || !self->evicted) outbox_destroy(&self);
    return self;
}

static void s_free_item(item_t *item)
{
    klist_remove(&item->link);
    wbuf_free(item->payload);
    json_decref(item->rid);
    free(item);
}

static void s_clear_evicted(outbox_t *self)
{
    for (size_t i = 0; i < self->ev_count; i++)
        json_decref(self->evicted[(self->ev_start + i) % EVICTED_MAX].rid);
    self->ev_start = self->ev_count = 0;
}

void outbox_destroy(outbox_t **self_p)
{
    if (!self_p || !*self_p) return;
    outbox_t *self = *self_p;
    *self_p = NULL;
    if (self->conn) wsconn_on_drain(self->conn, NULL, NULL);
    while (!klist_empty(&self->items)) s_free_item(klist_entry(klist_first(&self->items), item_t, link));
    if (self->evicted) s_clear_evicted(self);
    free(self->evicted);
    json_decref(self->lost);
    free(self);
}

uint64_t outbox_next_seq(outbox_t *self)
{
    return ++self->seq;
}

//  Count events of a request as lost.
static void s_lost(outbox_t *self, const json_t *rid, uint64_t events, uint64_t bytes)
{
    char *key = rid ? json_dumps(rid, JSON_ENCODE_ANY | JSON_COMPACT) : strdup("null");
    if (!key) return;
    json_t *entry = json_object_get(self->lost, key);
    if (!entry) {
        entry = json_pack("{s:O, s:I, s:I}", "id", rid ? rid : json_null(), "events", (json_int_t) 0,
                          "bytes", (json_int_t) 0);
        json_object_set_new(self->lost, key, entry);
    }
    free(key);
    if (!entry) return;
    json_object_set_new(entry, "events",
                        json_integer(json_integer_value(json_object_get(entry, "events")) + (json_int_t) events));
    json_object_set_new(entry, "bytes",
                        json_integer(json_integer_value(json_object_get(entry, "bytes")) + (json_int_t) bytes));
    self->lost_events += events;
    self->lost_bytes += bytes;
    metrics_add(MX_EVENTS_LOST, NULL, (double) events);
}

//  Which count of sent bytes an item is in.
static size_t *s_sent(outbox_t *self, const item_t *item)
{
    return item->keep ? &self->kept_bytes : &self->sent_bytes;
}

static item_t *s_scan_unsent(outbox_t *self)
{
    klist_t *it;
    klist_foreach(it, &self->items)
    {
        item_t *item = klist_entry(it, item_t, link);
        if (!item->sent) return item;
    }
    return NULL;
}

//  Let go of the copies of sent messages past the retention, oldest first, remembering
//  what they were.
static void s_trim(outbox_t *self)
{
    size_t kept_retain = self->retain < KEPT_RETAIN ? self->retain : KEPT_RETAIN;
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->items)
    {
        if (self->sent_bytes <= self->retain && self->kept_bytes <= kept_retain) break;
        item_t *item = klist_entry(it, item_t, link);
        if (!item->sent) break;
        //  A reply or an end is held until the client acks it, but not for the session's
        //  whole life: a client that never acks (the simplest ones do not) would make
        //  every end it was ever sent stay here. Past their own retention the oldest go
        //  too, recorded like the rest, so a resume from before them reports them exactly.
        if (item->keep ? self->kept_bytes <= kept_retain : self->sent_bytes <= self->retain) continue;
        if (self->ev_count == EVICTED_MAX) {
            //  The oldest record falls off: what it was can no longer be told apart.
            evicted_t *old = &self->evicted[self->ev_start];
            json_decref(old->rid);
            self->ev_start = (self->ev_start + 1) % EVICTED_MAX;
            self->ev_count--;
        }
        evicted_t *ev = &self->evicted[(self->ev_start + self->ev_count++) % EVICTED_MAX];
        ev->seq = item->seq;
        ev->bytes = item->len;
        ev->rid = json_incref(item->rid);
        *s_sent(self, item) -= item->len;
        s_free_item(item);
    }
}

static void s_check_relief(outbox_t *self)
{
    bool congested = outbox_congested(self);
    if (self->congested && !congested && self->on_relief) {
        self->congested = false;
        self->on_relief(self, self->relief_arg);
        return;
    }
    self->congested = congested;
}

static void s_on_drain(wsconn_t *conn, void *arg)
{
    (void) conn;
    s_pump(arg);
}

static void s_pump(outbox_t *self)
{
    wsconn_t *conn = self->conn;
    if (conn && !wsconn_closing(conn)) {
        item_t *item = self->next_unsent;
        while (item && wsconn_queued(conn) < self->window) {
            if (wsconn_send_buf(conn, wbuf_ref(item->payload), item->len, false) != KB_OK) break;
            item->sent = true;
            self->unsent_bytes -= item->len;
            *s_sent(self, item) += item->len;
            klist_t *next = item->link.next;
            item = next == &self->items ? NULL : klist_entry(next, item_t, link);
        }
        self->next_unsent = item;
        wsconn_on_drain(conn, item ? s_on_drain : NULL, item ? self : NULL);
    }
    s_trim(self);
    s_check_relief(self);
}

int outbox_push(outbox_t *self, char *payload, size_t len, uint64_t seq, const json_t *rid, bool keep)
{
    if (!keep && self->unsent_bytes && self->unsent_bytes + len > self->limit) {
        if (self->conn && !wsconn_closing(self->conn)) {
            klog_warn("websocket client %s too slow: %zu bytes waiting, limit %zu; disconnecting",
                      wsconn_peer(self->conn), self->unsent_bytes + len, self->limit);
            wsconn_close(self->conn, 1008, "client too slow: outbound buffer limit exceeded");
        }
        s_lost(self, rid, 1, len);
        wbuf_free(payload);
        return KB_ETOOBIG;
    }
    item_t *item = calloc(1, sizeof *item);
    json_t *copy = rid ? json_deep_copy(rid) : NULL;
    if (!item || (rid && !copy)) {
        free(item);
        json_decref(copy);
        s_lost(self, rid, 1, len);
        wbuf_free(payload);
        return KB_ENOMEM;
    }
    klist_init(&item->link);
    item->seq = seq;
    item->payload = payload;
    item->len = len;
    item->rid = copy;
    item->keep = keep;
    klist_push_back(&self->items, &item->link);
    if (!self->next_unsent) self->next_unsent = item;
    self->unsent_bytes += len;
    s_pump(self);
    return KB_OK;
}

int outbox_push_json(outbox_t *self, const json_t *value, const json_t *rid, bool keep)
{
    json_t *msg = json_deep_copy(value);
    if (!msg) return KB_ENOMEM;
    uint64_t seq = outbox_next_seq(self);
    json_object_set_new(msg, "seq", json_integer((json_int_t) seq));
    jbuf_t b;
    jbuf_init(&b);
    jbuf_add_json(&b, msg);
    json_decref(msg);
    size_t len;
    char *payload = jbuf_take(&b, &len);
    if (!payload) return KB_ENOMEM;
    return outbox_push(self, payload, len, seq, rid, keep);
}

static void s_report_lost(outbox_t *self)
{
    if (!self->lost_events) return;
    json_t *requests = json_array();
    const char *key;
    json_t *entry;
    json_object_foreach(self->lost, key, entry) json_array_append(requests, entry);
    char message[200];
    snprintf(message, sizeof message,
             "%llu events (%llu bytes) were dropped while this client could not take them: the "
             "outbound limit was reached",
             (unsigned long long) self->lost_events, (unsigned long long) self->lost_bytes);
    json_t *note = json_pack("{s:s, s:I, s:I, s:o, s:s}", "type", "events_lost", "count",
                             (json_int_t) self->lost_events, "bytes", (json_int_t) self->lost_bytes,
                             "requests", requests, "message", message);
    //  Not numbered: it is about this connection, not something to replay.
    if (note) wsconn_send_json(self->conn, note);
    json_decref(note);
    json_object_clear(self->lost);
    self->lost_events = self->lost_bytes = 0;
}

void outbox_attach(outbox_t *self, wsconn_t *conn, int64_t last_seq)
{
    if (self->conn && self->conn != conn) wsconn_on_drain(self->conn, NULL, NULL);
    self->conn = conn;
    klist_t *it, *tmp;
    if (last_seq >= 0) {
        //  What was let go after last_seq never reached the client.
        for (size_t i = 0; i < self->ev_count; i++) {
            evicted_t *ev = &self->evicted[(self->ev_start + i) % EVICTED_MAX];
            if (ev->seq > (uint64_t) last_seq) s_lost(self, ev->rid, 1, ev->bytes);
        }
        //  What it has, goes; what it does not, is sent again.
        klist_foreach_safe(it, tmp, &self->items)
        {
            item_t *item = klist_entry(it, item_t, link);
            if (!item->sent) break;
            if (item->seq <= (uint64_t) last_seq) {
                *s_sent(self, item) -= item->len;
                s_free_item(item);
            } else {
                item->sent = false;
                *s_sent(self, item) -= item->len;
                self->unsent_bytes += item->len;
            }
        }
    } else {
        //  The client did not say: what was sent counts as received.
        klist_foreach_safe(it, tmp, &self->items)
        {
            item_t *item = klist_entry(it, item_t, link);
            if (!item->sent) break;
            *s_sent(self, item) -= item->len;
            s_free_item(item);
        }
    }
    self->next_unsent = s_scan_unsent(self);  //  what is sent again starts before it
    s_clear_evicted(self);
    s_report_lost(self);
    s_pump(self);
}

void outbox_detach(outbox_t *self, wsconn_t *conn)
{
    if (self->conn != conn) return;
    self->conn = NULL;
}

wsconn_t *outbox_conn(const outbox_t *self)
{
    return self->conn;
}

void outbox_ack(outbox_t *self, uint64_t seq)
{
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->items)
    {
        item_t *item = klist_entry(it, item_t, link);
        if (!item->sent || item->seq > seq) break;
        *s_sent(self, item) -= item->len;
        s_free_item(item);
    }
    while (self->ev_count && self->evicted[self->ev_start].seq <= seq) {
        json_decref(self->evicted[self->ev_start].rid);
        self->ev_start = (self->ev_start + 1) % EVICTED_MAX;
        self->ev_count--;
    }
}

size_t outbox_unsent(const outbox_t *self)
{
    return self->unsent_bytes;
}

size_t outbox_held(const outbox_t *self)
{
    return self->unsent_bytes + self->sent_bytes + self->kept_bytes;
}

bool outbox_congested(const outbox_t *self)
{
    return self->unsent_bytes > self->limit / 2;
}

void outbox_on_relief(outbox_t *self, void (*fn)(outbox_t *box, void *arg), void *arg)
{
    self->on_relief = fn;
    self->relief_arg = arg;
    self->congested = outbox_congested(self);
}
