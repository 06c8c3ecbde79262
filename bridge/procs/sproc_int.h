/*  sproc_int - what the process table and one process share; nobody else includes it. */
#ifndef SPROC_INT_H
#define SPROC_INT_H

#include "procs.h"
#include "../../base/klist.h"

//  The table's side, for sproc.c.
//  A process ended (its listeners have had their last event): unlink it.
void procs__ended(procs_t *self, sproc_t *p);
//  A listener needs its tail replayed from a later loop turn.
void procs__want_replay(procs_t *self, splisten_t *l);
void procs__unwant_replay(splisten_t *l);
//  The tail's memory changed by delta; the process may have to give some back.
void procs__tail_mem(procs_t *self, sproc_t *p, long delta);

//  sproc.c, for the table.
//  A process of sb (started: on_start comes to the first listener, which is returned).
//  NULL with *err and why. The table links it on success.
sproc_t *sproc__new(procs_t *table, uv_loop_t *loop, sandbox_t *sb, const sproc_opts_t *opts,
                    size_t tail_bytes, const splisten_events_t *ev, void *arg,
                    splisten_t **first, int *err, char *why, size_t size);
klist_t *sproc__link(sproc_t *self);
sproc_t *sproc__from_link(klist_t *link);
const sandbox_t *sproc__sandbox(const sproc_t *self);
//  Its sandbox ended: kill it and tell its listeners why. It leaves the table.
void sproc__sandbox_ended(sproc_t *self, const char *why);
//  The table goes: kill it, tell nobody, free what can be freed.
void sproc__abandon(sproc_t *self);
//  Replay the tail to a listener waiting for it, then make it live.
void sproc__replay(splisten_t *l);
klist_t *splisten__replay_link(splisten_t *l);
splisten_t *splisten__from_replay_link(klist_t *link);
//  Give memory back: shrink the tail to at most limit bytes. Returns the change.
long sproc__shrink_tail(sproc_t *self, size_t limit);

#endif
