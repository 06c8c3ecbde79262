/*  ptail - the last output of a process, bounded: what a client that attaches late is
    replayed. Output is kept as it was read, in chunks tagged with their stream and their
    offset in the process's output (all streams counted together); the oldest chunks go
    once the memory they take passes the limit.
*/
#ifndef PTAIL_H
#define PTAIL_H

#include "../../sandbox/proc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _ptail_t ptail_t;

//  A tail holding at most limit bytes of memory (data and bookkeeping together).
//  Caller owns return value and must destroy it when done.
ptail_t *ptail_new(size_t limit);
void ptail_destroy(ptail_t **self_p);

//  Append output. The offset always advances by len, even when memory runs short (the
//  tail then simply holds less). Returns the change in memory held (may be negative).
long ptail_append(ptail_t *self, proc_stream_t stream, const char *data, size_t len);
//  Keep at most limit bytes of memory from now on (dropping the oldest now). Returns the
//  change in memory held (<= 0).
long ptail_set_limit(ptail_t *self, size_t limit);
size_t ptail_limit(const ptail_t *self);
//  Memory held now.
size_t ptail_mem(const ptail_t *self);
//  Offset of the next byte (everything ever appended), and of the oldest byte held.
uint64_t ptail_end(const ptail_t *self);
uint64_t ptail_start(const ptail_t *self);

//  Call fn for what is held from offset since on, oldest first (chunks may be cut at
//  since). Stops early if fn returns false.
typedef bool(ptail_fn)(proc_stream_t stream, const char *data, size_t len, uint64_t offset,
                       void *arg);
void ptail_each(const ptail_t *self, uint64_t since, ptail_fn *fn, void *arg);

#endif
