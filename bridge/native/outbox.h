/*  outbox - what a native session sends its client: numbered, bounded, replayable, and
    never lost without saying so.

    Every message carries "seq" (from outbox_next_seq). Messages go to the attached
    connection as its queue allows (a window, ttyd's "one buffer in flight" widened to a
    few frames); the rest wait here. A client that comes back says the last seq it
    processed (?last_seq=) and gets everything after it that is still here; what is not
    is reported exactly, first thing, as one events_lost message: how many events and
    bytes, per request id.

    Bounded: unsent messages up to the limit (past it an attached client is too slow: it
    is disconnected with 1008, and further output is dropped and counted); sent messages
    are kept for replay up to a smaller retention. Messages pushed with keep (replies,
    end_of_execution) are never dropped before they are sent, so a client never waits for
    an end that will not come; once sent they are kept until acked, the most recent 1 MiB
    of them at most (a client that never acks must not make a session grow for ever);
    one resuming from before those is told of them in events_lost.
*/
#ifndef OUTBOX_H
#define OUTBOX_H

#include "../http/wsconn.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _outbox_t outbox_t;

//  limit: unsent bytes before a client is too slow; retain: sent bytes kept for replay.
//  Caller owns return value and must destroy it when done.
outbox_t *outbox_new(size_t limit, size_t retain);
//  Detach and free everything. Nullifies *self_p.
void outbox_destroy(outbox_t **self_p);

//  The seq the next message must carry (each call gives a new one).
uint64_t outbox_next_seq(outbox_t *self);
//  Queue a frame (a wbuf payload, taken in every case) whose JSON carries "seq":seq. rid
//  is the request it answers (borrowed; NULL for none). Returns 0, or KB_ETOOBIG when the
//  frame was dropped (and counted) because the client is not reading.
int outbox_push(outbox_t *self, char *payload, size_t len, uint64_t seq, const json_t *rid, bool keep);
//  A JSON message: "seq" is added, then it is serialized and queued. value is borrowed.
int outbox_push_json(outbox_t *self, const json_t *value, const json_t *rid, bool keep);

//  Attach conn. last_seq: the last seq the client processed (replay what follows it), or
//  -1 if it did not say (what was sent counts as received). A loss report goes first.
void outbox_attach(outbox_t *self, wsconn_t *conn, int64_t last_seq);
//  The connection went away (messages not yet written wait for the next one).
void outbox_detach(outbox_t *self, wsconn_t *conn);
wsconn_t *outbox_conn(const outbox_t *self);
//  The client says it has processed everything up to seq: retained copies go.
void outbox_ack(outbox_t *self, uint64_t seq);

//  Bytes waiting to be sent; whether that is past half the limit (producers that can
//  wait, like process output, pause then); and a callback for when it falls back.
size_t outbox_unsent(const outbox_t *self);
//  Bytes held: unsent, and sent but kept for replay.
size_t outbox_held(const outbox_t *self);
bool outbox_congested(const outbox_t *self);
void outbox_on_relief(outbox_t *self, void (*fn)(outbox_t *box, void *arg), void *arg);

#endif
