/*  ptail - a process's last output, bounded by memory. */
#include "ptail.h"
#include "../../base/klist.h"

#include <stdlib.h>
#include <string.h>

//  A new chunk starts with room for this much, and grows (doubling) up to CHUNK_MAX while
//  the same stream keeps writing; a chunk that will not grow again is shrunk to fit, so
//  only the newest chunk ever holds unused room.
#define CHUNK_MIN 1024
#define CHUNK_MAX (64u << 10)
#define CHUNK_OVERHEAD 64  //  what a chunk costs besides its data (header, malloc)

typedef struct {
    klist_t link;
    proc_stream_t stream;
    uint64_t offset;  //  of data[0]
    size_t len, cap;
    char *data;
} chunk_t;

struct _ptail_t {
    size_t limit, mem;
    uint64_t end;
    klist_t chunks;  //  oldest first
};

ptail_t *ptail_new(size_t limit)
{
    ptail_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->limit = limit;
    klist_init(&self->chunks);
    return self;
}

static size_t s_cost(const chunk_t *c)
{
    return c->cap + CHUNK_OVERHEAD;
}

static void s_drop(ptail_t *self, chunk_t *c)
{
    klist_remove(&c->link);
    self->mem -= s_cost(c);
    free(c->data);
    free(c);
}

void ptail_destroy(ptail_t **self_p)
{
    if (!self_p || !*self_p) return;
    ptail_t *self = *self_p;
    *self_p = NULL;
    while (!klist_empty(&self->chunks)) s_drop(self, klist_entry(klist_first(&self->chunks), chunk_t, link));
    free(self);
}

static chunk_t *s_last(ptail_t *self)
{
    return klist_empty(&self->chunks) ? NULL : klist_entry(self->chunks.prev, chunk_t, link);
}

//  Oldest chunks go until the memory fits; the newest is never dropped here (the caller
//  sized it to fit on its own).
static void s_fit(ptail_t *self)
{
    while (self->mem > self->limit && !klist_empty(&self->chunks)) {
        chunk_t *first = klist_entry(klist_first(&self->chunks), chunk_t, link);
        if (first == s_last(self)) break;
        s_drop(self, first);
    }
}

//  Shrink a chunk's room to its data (it will not grow again).
static void s_seal(ptail_t *self, chunk_t *c)
{
    if (c->cap == c->len || c->len == 0) return;
    char *data = realloc(c->data, c->len);
    if (!data) return;
    self->mem -= c->cap - c->len;
    c->data = data;
    c->cap = c->len;
}

long ptail_append(ptail_t *self, proc_stream_t stream, const char *data, size_t len)
{
    size_t before = self->mem;
    uint64_t offset = self->end;
    self->end += len;
    if (len == 0) return 0;
    //  What a single chunk may take: never more than the whole tail.
    size_t room = self->limit > CHUNK_OVERHEAD ? self->limit - CHUNK_OVERHEAD : 0;
    if (len > room) {
        data += len - room;
        offset += len - room;
        len = room;
        if (len == 0) return (long) self->mem - (long) before;
    }
    size_t chunk_max = CHUNK_MAX < room ? CHUNK_MAX : room;
    chunk_t *last = s_last(self);
    if (last && last->stream == stream && last->offset + last->len == offset && last->len < chunk_max) {
        size_t fits = chunk_max - last->len < len ? chunk_max - last->len : len;
        if (last->len + fits > last->cap) {
            size_t cap = last->cap * 2;
            while (cap < last->len + fits) cap *= 2;
            if (cap > chunk_max) cap = chunk_max;
            char *grown = realloc(last->data, cap);
            if (grown) {
                self->mem += cap - last->cap;
                last->data = grown;
                last->cap = cap;
            } else {
                fits = 0;
            }
        }
        memcpy(last->data + last->len, data, fits);
        last->len += fits;
        data += fits;
        offset += fits;
        len -= fits;
    }
    if (len) {
        if (last) s_seal(self, last);
        chunk_t *c = calloc(1, sizeof *c);
        size_t cap = len < CHUNK_MIN ? CHUNK_MIN : len;
        if (cap > room) cap = len;
        if (c) c->data = malloc(cap);
        if (!c || !c->data) {
            free(c);
            s_fit(self);
            return (long) self->mem - (long) before;
        }
        klist_init(&c->link);
        c->stream = stream;
        c->offset = offset;
        c->len = len;
        c->cap = cap;
        memcpy(c->data, data, len);
        klist_push_back(&self->chunks, &c->link);
        self->mem += s_cost(c);
    }
    s_fit(self);
    //  The newest chunk alone may still be over a small limit by its unused room.
    if (self->mem > self->limit) s_seal(self, s_last(self));
    return (long) self->mem - (long) before;
}

long ptail_set_limit(ptail_t *self, size_t limit)
{
    size_t before = self->mem;
    self->limit = limit;
    chunk_t *last = s_last(self);
    if (last) s_seal(self, last);
    s_fit(self);
    //  The newest chunk alone over the limit: keep its end.
    last = s_last(self);
    if (last && self->mem > limit) {
        size_t room = limit > CHUNK_OVERHEAD ? limit - CHUNK_OVERHEAD : 0;
        if (room < last->len) {
            size_t cut = last->len - room;
            memmove(last->data, last->data + cut, room);
            last->offset += cut;
            last->len = room;
            s_seal(self, last);
            if (last->len == 0) s_drop(self, last);
        }
    }
    return (long) self->mem - (long) before;
}

size_t ptail_limit(const ptail_t *self)
{
    return self->limit;
}

size_t ptail_mem(const ptail_t *self)
{
    return self->mem;
}

uint64_t ptail_end(const ptail_t *self)
{
    return self->end;
}

uint64_t ptail_start(const ptail_t *self)
{
    if (klist_empty(&self->chunks)) return self->end;
    return klist_entry(klist_first(&self->chunks), chunk_t, link)->offset;
}

void ptail_each(const ptail_t *self, uint64_t since, ptail_fn *fn, void *arg)
{
    const klist_t *it;
    for (it = self->chunks.next; it != &self->chunks; it = it->next) {
        const chunk_t *c = klist_entry(it, chunk_t, link);
        if (c->offset + c->len <= since) continue;
        size_t skip = since > c->offset ? (size_t) (since - c->offset) : 0;
        if (!fn(c->stream, c->data + skip, c->len - skip, c->offset + skip, arg)) return;
    }
}
