/*  zwatch - ZeroMQ sockets on a libuv loop, edge-triggering handled in one place. */
#include "zwatch.h"

#include <sys/eventfd.h>
#include <sys/resource.h>
#include "../base/kberr.h"
#include "../base/klog.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct _hub_t hub_t;

typedef struct {
    zwatch_t *head, *tail;
} wlist_t;

struct _zwatch_t {
    hub_t *hub;
    zsock_t *sock;
    zwatch_fn *on_msg;
    zwatch_frames_fn *on_frames;
    //  on_frames' receive array, kept from message to message
    zframe_t **frames;
    size_t frames_cap;
    void *arg;
    uv_poll_t poll;
    zwatch_writable_fn *on_writable;
    bool writable;
    wlist_t *list;  //  the dirty list this watcher is on, or NULL
    zwatch_t *prev, *next;
    int in_callback;
    int dead;
};

//  Per-loop machinery shared by all watchers on that loop; freed with the last watcher.
struct _hub_t {
    uv_loop_t *loop;
    uv_check_t check;
    uv_idle_t idle;
    wlist_t dirty;
    size_t watchers;
    int closing;  //  handles still to close before the hub can be freed
    hub_t *next;
};

static hub_t *s_hubs;

static void s_list_remove(zwatch_t *w)
{
    wlist_t *list = w->list;
    if (!list) return;
    if (w->prev) w->prev->next = w->next;
    else list->head = w->next;
    if (w->next) w->next->prev = w->prev;
    else list->tail = w->prev;
    w->prev = w->next = NULL;
    w->list = NULL;
}

static void s_list_push(wlist_t *list, zwatch_t *w)
{
    w->prev = list->tail;
    w->next = NULL;
    if (list->tail) list->tail->next = w;
    else list->head = w;
    list->tail = w;
    w->list = list;
}

static void s_idle_noop(uv_idle_t *idle)
{
    (void) idle;
}

static void s_mark_dirty(zwatch_t *w)
{
    if (w->dead || w->list == &w->hub->dirty) return;
    s_list_remove(w);  //  it may sit on the list being flushed; it runs again next turn
    s_list_push(&w->hub->dirty, w);
    if (!uv_is_active((uv_handle_t *) &w->hub->idle)) uv_idle_start(&w->hub->idle, s_idle_noop);
}

static void s_on_poll(uv_poll_t *poll, int status, int events)
{
    (void) status;
    (void) events;
    s_mark_dirty(poll->data);
}

static void s_watch_closed(uv_handle_t *handle)
{
    zwatch_t *w = handle->data;
    free(w->frames);
    free(w);
}

static void s_hub_closed(uv_handle_t *handle)
{
    hub_t *hub = handle->data;
    if (--hub->closing == 0) free(hub);
}

void zwatch_socket_destroy(zsock_t **sock_p);

static void s_release(zwatch_t *w)
{
    //  The poll handle must stop watching the fd before libzmq closes it.
    uv_poll_stop(&w->poll);
    zwatch_socket_destroy(&w->sock);
    uv_close((uv_handle_t *) &w->poll, s_watch_closed);
    hub_t *hub = w->hub;
    if (--hub->watchers == 0) {
        hub_t **p = &s_hubs;
        while (*p != hub) p = &(*p)->next;
        *p = hub->next;
        hub->closing = 2;
        uv_close((uv_handle_t *) &hub->check, s_hub_closed);
        uv_close((uv_handle_t *) &hub->idle, s_hub_closed);
    }
}

//  Note POLLOUT transitions; report false -> true to the owner.
static void s_track_writable(zwatch_t *w, int events)
{
    bool writable = (events & ZMQ_POLLOUT) != 0;
    if (writable == w->writable) return;
    w->writable = writable;
    if (writable && w->on_writable) {
        w->in_callback = 1;
        w->on_writable(w, w->arg);
        w->in_callback = 0;
    }
}

//  Receive one message's frames into w->frames. Returns how many, 0 when nothing is
//  there (or on failure: what was received of the message is dropped).
static size_t s_recv_frames(zwatch_t *w, size_t *bytes)
{
    size_t n = 0;
    bool lost = false;
    for (;;) {
        zframe_t *frame = zframe_recv(w->sock);
        if (!frame) {
            lost = n > 0;
            break;
        }
        *bytes += zframe_size(frame);
        bool more = zframe_more(frame);
        if (n == w->frames_cap) {
            size_t cap = w->frames_cap ? w->frames_cap * 2 : 16;
            zframe_t **grown = realloc(w->frames, cap * sizeof *grown);
            if (grown) {
                w->frames = grown;
                w->frames_cap = cap;
            }
        }
        if (n < w->frames_cap && !lost) w->frames[n++] = frame;
        else {
            //  Out of memory: the rest of the message is read and dropped with it.
            zframe_destroy(&frame);
            lost = true;
        }
        if (!more) break;
    }
    if (lost) {
        for (size_t i = 0; i < n; i++) zframe_destroy(&w->frames[i]);
        return 0;
    }
    return n;
}

static void s_drain(zwatch_t *w)
{
    size_t bytes = 0;
    if (w->on_frames) {
        for (int budget = ZWATCH_BUDGET; budget > 0 && bytes < ZWATCH_BYTE_BUDGET; budget--) {
            size_t n = s_recv_frames(w, &bytes);
            if (!n) break;
            w->in_callback = 1;
            w->on_frames(w, w->frames, n, w->arg);
            w->in_callback = 0;
            for (size_t i = 0; i < n; i++) zframe_destroy(&w->frames[i]);
            if (w->dead) return;
        }
        int events = zsock_events(w->sock);
        s_track_writable(w, events);
        if (!w->dead && (events & ZMQ_POLLIN)) s_mark_dirty(w);
        return;
    }
    //  A nonblocking receive processes libzmq's command mailbox itself (throttled), so
    //  ZMQ_EVENTS - a getpid, a poll and a read of the mailbox each time - is read once,
    //  after the last receive: that read is what re-arms the fd's edge.
    for (int budget = ZWATCH_BUDGET; budget > 0 && bytes < ZWATCH_BYTE_BUDGET; budget--) {
        zmsg_t *msg = zmsg_recv(w->sock);
        if (!msg) break;  //  EAGAIN, or EINTR from command processing: see below
        bytes += zmsg_content_size(msg);
        if (w->on_msg) {
            w->in_callback = 1;
            w->on_msg(w, &msg, w->arg);
            w->in_callback = 0;
        }
        zmsg_destroy(&msg);
        if (w->dead) return;
    }
    int events = zsock_events(w->sock);
    s_track_writable(w, events);
    //  Input left (budget spent, or an interrupted receive whose edge is spent): come back
    //  next turn, after other handles had theirs.
    if (!w->dead && (events & ZMQ_POLLIN)) s_mark_dirty(w);
}

static void s_on_check(uv_check_t *check)
{
    hub_t *hub = check->data;
    wlist_t current = hub->dirty;
    hub->dirty.head = hub->dirty.tail = NULL;
    for (zwatch_t *w = current.head; w; w = w->next) w->list = &current;
    zwatch_t *w;
    while ((w = current.head)) {
        s_list_remove(w);
        s_drain(w);
        if (w->dead) s_release(w);
    }
    if (!hub->dirty.head && uv_is_active((uv_handle_t *) &hub->idle)) uv_idle_stop(&hub->idle);
}

static hub_t *s_hub_for(uv_loop_t *loop)
{
    for (hub_t *hub = s_hubs; hub; hub = hub->next)
        if (hub->loop == loop) return hub;
    hub_t *hub = calloc(1, sizeof *hub);
    if (!hub) return NULL;
    hub->loop = loop;
    uv_check_init(loop, &hub->check);
    uv_idle_init(loop, &hub->idle);
    hub->check.data = hub->idle.data = hub;
    //  Neither handle keeps the loop alive on its own: the watchers' poll handles do.
    uv_unref((uv_handle_t *) &hub->check);
    uv_unref((uv_handle_t *) &hub->idle);
    uv_check_start(&hub->check, s_on_check);
    hub->next = s_hubs;
    s_hubs = hub;
    return hub;
}

//  Sockets kbridge holds, against libzmq's cap (raised once from its default of 1023).
//  A margin stays free for libzmq's own needs and the sockets a closing one still holds
//  until its reaper thread lets go of it.
#define SOCKET_MARGIN 16
static size_t s_sockets, s_sockets_max;

static void s_configure_sockets(void)
{
    if (s_sockets_max) return;
    //  The cap can only change before the context exists (the first socket).
    struct rlimit nofile;
    size_t want = 4096;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY &&
        nofile.rlim_cur < want)
        want = nofile.rlim_cur;
    size_t limit = (size_t) zsys_socket_limit();
    if (limit && want > limit) want = limit;
    if (want < 64) want = 64;
    zsys_set_max_sockets(want);
    s_sockets_max = want;
}

//  Descriptors that must stay free after a socket is made. Each socket takes one at once
//  (its mailbox) and one later, when libzmq's I/O thread connects it; that thread retries
//  a connect that failed for want of a descriptor every 100 ms, and so takes whatever is
//  freed - the accept path's spare among it, which then cannot even refuse connections.
//  With this much headroom kept, the I/O thread always finds its descriptor at once and
//  the accept path has room to answer.
#define FD_HEADROOM 16

int zwatch_socket_room(size_t n)
{
    s_configure_sockets();
    if (s_sockets + n + SOCKET_MARGIN > s_sockets_max) {
        klog_limited(KLOG_WARN, "refusing a ZeroMQ socket: %zu of %zu in use", s_sockets, s_sockets_max);
        return KB_ELIMIT;
    }
    enum { MAX_PROBE = FD_HEADROOM + 3 * 8 };
    size_t want = FD_HEADROOM + 2 * n;
    if (want > MAX_PROBE) want = MAX_PROBE;
    int probe[MAX_PROBE];
    size_t got = 0;
    for (; got < want; got++)
        if ((probe[got] = eventfd(0, EFD_CLOEXEC)) < 0) break;
    int saved = errno;
    for (size_t i = 0; i < got; i++) close(probe[i]);
    if (got < want) {
        klog_limited(KLOG_WARN, "refusing a ZeroMQ socket: out of file descriptors (%s; %zu kept free)",
                     strerror(saved), (size_t) FD_HEADROOM);
        return KB_ELIMIT;
    }
    return KB_OK;
}

zsock_t *zwatch_socket(int type, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    if ((*err = zwatch_socket_room(1)) != KB_OK) return NULL;
    zsock_t *sock = zsock_new(type);
    if (sock) s_sockets++;
    *err = sock ? KB_OK : KB_ENOMEM;
    return sock;
}

void zwatch_socket_destroy(zsock_t **sock_p)
{
    if (!sock_p || !*sock_p) return;
    zsock_destroy(sock_p);
    s_sockets--;
}

size_t zwatch_sockets_in_use(void)
{
    return s_sockets;
}

size_t zwatch_sockets_max(void)
{
    s_configure_sockets();
    return s_sockets_max;
}

static zwatch_t *s_new(uv_loop_t *loop, zsock_t **sock_p, zwatch_fn *on_msg,
                       zwatch_frames_fn *on_frames, void *arg);

zwatch_t *zwatch_new(uv_loop_t *loop, zsock_t **sock_p, zwatch_fn *on_msg, void *arg)
{
    return s_new(loop, sock_p, on_msg, NULL, arg);
}

zwatch_t *zwatch_new_frames(uv_loop_t *loop, zsock_t **sock_p, zwatch_frames_fn *on_frames,
                            void *arg)
{
    return s_new(loop, sock_p, NULL, on_frames, arg);
}

static zwatch_t *s_new(uv_loop_t *loop, zsock_t **sock_p, zwatch_fn *on_msg,
                       zwatch_frames_fn *on_frames, void *arg)
{
    zsock_t *sock = *sock_p;
    *sock_p = NULL;
    zwatch_t *self = calloc(1, sizeof *self);
    hub_t *hub = self ? s_hub_for(loop) : NULL;
    if (!sock || !hub) {
        free(self);
        zwatch_socket_destroy(&sock);
        return NULL;
    }
    zsock_set_rcvtimeo(sock, 0);
    zsock_set_sndtimeo(sock, 0);
    self->hub = hub;
    self->sock = sock;
    self->on_msg = on_msg;
    self->on_frames = on_frames;
    self->arg = arg;
    if (uv_poll_init(loop, &self->poll, zsock_fd(sock)) != 0) {
        zwatch_socket_destroy(&self->sock);
        free(self);
        return NULL;
    }
    hub->watchers++;
    self->poll.data = self;
    uv_poll_start(&self->poll, UV_READABLE, s_on_poll);
    //  Messages may already be queued, and their edge may have fired before we watched.
    s_mark_dirty(self);
    return self;
}

void zwatch_destroy(zwatch_t **self_p)
{
    if (!self_p || !*self_p) return;
    zwatch_t *self = *self_p;
    *self_p = NULL;
    if (self->dead) return;
    self->dead = 1;
    s_list_remove(self);
    //  Inside its own callback the drain loop still holds the socket; it releases it.
    if (!self->in_callback) s_release(self);
}

int zwatch_send(zwatch_t *self, zmsg_t **msg_p)
{
    if (self->dead) {
        zmsg_destroy(msg_p);
        return KB_ECLOSED;
    }
    int rc = zmsg_send(msg_p, self->sock);
    int saved = errno;
    //  czmq 4.2 keeps the message when the send fails; the contract here is "always taken".
    zmsg_destroy(msg_p);
    //  A send may consume the fd edge that announced an incoming message: look now rather
    //  than spend a loop turn (and an idle handle) on a drain that usually finds nothing.
    //  Inside this watcher's own drain, the drain's final check does it.
    if (!self->in_callback) {
        //  A change of writability is the drain's to report (never from inside a send).
        int events = zsock_events(self->sock);
        if ((events & ZMQ_POLLIN) || ((events & ZMQ_POLLOUT) != 0) != self->writable)
            s_mark_dirty(self);
    } else {
        s_mark_dirty(self);
    }
    if (rc == 0) return KB_OK;
    return saved == EAGAIN ? KB_EAGAIN : KB_EIO;
}

zsock_t *zwatch_sock(zwatch_t *self)
{
    return self->sock;
}

void zwatch_set_on_writable(zwatch_t *self, zwatch_writable_fn *on_writable)
{
    self->on_writable = on_writable;
}

bool zwatch_writable(const zwatch_t *self)
{
    return self->writable;
}
