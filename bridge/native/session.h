/*  session - a native-API client's session on one sandbox (the session id is the
    sandbox's id): the kernels started through it, its default kernel, and delivery of
    its events to whichever connection it has.

    A session outlives its connections: everything it sends goes through its outbox
    (outbox.h: numbered, bounded, replayed to a client that comes back with ?last_seq=,
    losses reported exactly), and while detached it lives for its keep-alive window,
    after which it is destroyed and its kernels shut down. A new connection with the same
    session id takes over from an older one.
*/
#ifndef SESSION_H
#define SESSION_H

#include "../http/wsconn.h"
#include "../../base/klist.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct _session_t session_t;

//  Something asynchronous the session is waiting on (an execution, a kernel start...).
//  Embed it; session_destroy calls cancel for each still tracked.
typedef struct _spending_t spending_t;
struct _spending_t {
    void (*cancel)(spending_t *pending);
    klist_t link;
    session_t *session;  //  set while tracked
};

typedef struct {
    //  The keep-alive window ran out: the owner must destroy the session (not inside this
    //  call's caller stack; the call comes from a timer).
    void (*on_expire)(session_t *session, void *arg);
} session_events_t;

#define SESSION_ID_MAX 63

//  A session with this id (copied; at most SESSION_ID_MAX characters).
//  Caller owns return value and must destroy it when done.
session_t *session_new(uv_loop_t *loop, const char *id, uint64_t keep_alive_ms, size_t max_backlog,
                       const session_events_t *events, void *arg);
//  Cancel what is pending, detach, free. Kernels are the owner's business (see
//  session_kernels). Nullifies *self_p.
void session_destroy(session_t **self_p);

const char *session_id(const session_t *self);

//  Attach conn (replacing and closing any previous connection); last_seq as in
//  outbox_attach.
void session_attach(session_t *self, wsconn_t *conn, int64_t last_seq);
//  The connection went away; the keep-alive window starts.
void session_detach(session_t *self, wsconn_t *conn);
wsconn_t *session_conn(const session_t *self);

//  Deliver a message (borrowed; "seq" is added) now or, while detached, later. rid is the
//  request it answers (NULL: none); keep: never dropped (replies, ends of executions).
void session_send(session_t *self, const json_t *message, const json_t *rid, bool keep);
//  The same for a frame already serialized into a wbuf carrying "seq":seq from
//  session_next_seq; takes ownership.
uint64_t session_next_seq(session_t *self);
void session_send_buf(session_t *self, char *payload, size_t len, uint64_t seq, const json_t *rid,
                      bool keep);
//  The client processed everything up to seq.
void session_ack(session_t *self, uint64_t seq);
typedef struct _outbox_t outbox_t;
outbox_t *session_outbox(session_t *self);

void session_set_keep_alive(session_t *self, uint64_t ms);
uint64_t session_keep_alive(const session_t *self);

void session_track(session_t *self, spending_t *pending);
void session_untrack(spending_t *pending);

//  Kernel ids started through this session (borrowed array of strings).
json_t *session_kernels(session_t *self);
void session_own_kernel(session_t *self, const char *kernel_id);
void session_disown_kernel(session_t *self, const char *kernel_id);
bool session_owns_kernel(session_t *self, const char *kernel_id);
//  The default kernel id, or NULL.
const char *session_default_kernel(const session_t *self);
void session_set_default_kernel(session_t *self, const char *kernel_id);

#endif
