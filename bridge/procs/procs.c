/*  procs - the table of processes (see procs.h). */
#include "sproc_int.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _procs_t {
    uv_loop_t *loop;
    sandboxes_t *sandboxes;
    procs_config_t config;
    klist_t procs;   //  sproc_t, start order
    klist_t replay;  //  splisten_t waiting for their tail
    uv_timer_t replay_timer;
    size_t tail_mem;  //  all tails together
};

static void s_on_sandbox_end(sandbox_t *sb, const char *why, void *arg)
{
    procs_t *self = arg;
    //  Each process leaves the table as it ends: restart the walk after each.
    for (;;) {
        sproc_t *found = NULL;
        klist_t *it;
        klist_foreach(it, &self->procs)
        {
            sproc_t *p = sproc__from_link(it);
            if (sproc__sandbox(p) == sb) {
                found = p;
                break;
            }
        }
        if (!found) break;
        sproc__sandbox_ended(found, why);
    }
}

procs_t *procs_new(uv_loop_t *loop, sandboxes_t *sandboxes, const procs_config_t *config)
{
    procs_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = loop;
    self->sandboxes = sandboxes;
    if (config) self->config = *config;
    if (!self->config.tail_bytes) self->config.tail_bytes = PROCS_TAIL_DEFAULT;
    if (!self->config.tail_total) self->config.tail_total = PROCS_TAIL_TOTAL;
    if (!self->config.max_per_sandbox) self->config.max_per_sandbox = PROCS_MAX_PER_SANDBOX;
    klist_init(&self->procs);
    klist_init(&self->replay);
    sandboxes_observer_t obs = {s_on_sandbox_end, NULL};
    if (sandboxes_observe(sandboxes, &obs, self)) {
        free(self);
        return NULL;
    }
    uv_timer_init(loop, &self->replay_timer);
    self->replay_timer.data = self;
    return self;
}

static void s_free_table(uv_handle_t *h)
{
    free(h->data);
}

void procs_destroy(procs_t **self_p)
{
    if (!self_p || !*self_p) return;
    procs_t *self = *self_p;
    *self_p = NULL;
    sandboxes_unobserve(self->sandboxes, self);
    while (!klist_empty(&self->procs)) sproc__abandon(sproc__from_link(klist_first(&self->procs)));
    while (!klist_empty(&self->replay)) klist_remove(klist_first(&self->replay));
    uv_close((uv_handle_t *) &self->replay_timer, s_free_table);
}

static sproc_t *s_tagged(procs_t *self, const sandbox_t *sb, const char *tag);

static size_t s_count_in(procs_t *self, const sandbox_t *sb)
{
    size_t n = 0;
    klist_t *it;
    klist_foreach(it, &self->procs) if (sproc__sandbox(sproc__from_link(it)) == sb) n++;
    return n;
}

splisten_t *procs_start(procs_t *self, sandbox_t *sb, const sproc_opts_t *opts,
                        const splisten_events_t *ev, void *arg, int *err, char *why, size_t size)
{
    int dummy;
    if (!err) err = &dummy;
    if (!opts || !sb) {
        *err = KB_EINVAL;
        snprintf(why, size, "no options");
        return NULL;
    }
    if (sandbox_state(sb) != SANDBOX_RUNNING) {
        *err = sandbox_state(sb) == SANDBOX_ENDED ? KB_ECLOSED : KB_EAGAIN;
        snprintf(why, size, "sandbox %s is %s", sandbox_id(sb), sandbox_state_name(sb));
        return NULL;
    }
    if (opts->tag && s_tagged(self, sb, opts->tag)) {
        *err = KB_EEXIST;
        snprintf(why, size, "a process with tag '%.128s' is already running", opts->tag);
        return NULL;
    }
    if (s_count_in(self, sb) >= self->config.max_per_sandbox) {
        *err = KB_ELIMIT;
        snprintf(why, size, "sandbox %s already runs %zu processes started through kbridge, the most "
                            "it may", sandbox_id(sb), self->config.max_per_sandbox);
        return NULL;
    }
    size_t tail = opts->tail_bytes ? opts->tail_bytes : self->config.tail_bytes;
    //  Once the tails together are at their limit, a new process keeps a small one.
    if (self->tail_mem >= self->config.tail_total && tail > PROCS_TAIL_MIN) tail = PROCS_TAIL_MIN;
    splisten_t *first = NULL;
    sproc_t *p = sproc__new(self, self->loop, sb, opts, tail, ev, arg, &first, err, why, size);
    if (!p) return NULL;
    klist_push_back(&self->procs, sproc__link(p));
    return first;
}

void procs__ended(procs_t *self, sproc_t *p)
{
    (void) self;
    klist_remove(sproc__link(p));
}

static void s_on_replay(uv_timer_t *t)
{
    procs_t *self = t->data;
    //  Each replay unlinks its listener; one may queue others meanwhile (they go too).
    while (!klist_empty(&self->replay)) {
        klist_t *link = klist_first(&self->replay);
        splisten_t *l = splisten__from_replay_link(link);
        klist_remove(link);
        sproc__replay(l);
    }
}

void procs__want_replay(procs_t *self, splisten_t *l)
{
    klist_t *link = splisten__replay_link(l);
    if (klist_linked(link)) return;
    klist_push_back(&self->replay, link);
    uv_timer_start(&self->replay_timer, s_on_replay, 0, 0);
}

void procs__unwant_replay(splisten_t *l)
{
    klist_remove(splisten__replay_link(l));
}

void procs__tail_mem(procs_t *self, sproc_t *p, long delta)
{
    self->tail_mem = (size_t) ((long) self->tail_mem + delta);
    //  Past the total, the process producing gives back what it holds beyond the minimum.
    if (self->tail_mem > self->config.tail_total) {
        long back = sproc__shrink_tail(p, PROCS_TAIL_MIN);
        self->tail_mem = (size_t) ((long) self->tail_mem + back);
    }
}

sproc_t *procs_find(procs_t *self, const sandbox_t *sb, int pid)
{
    if (pid <= 0) return NULL;
    klist_t *it;
    klist_foreach(it, &self->procs)
    {
        sproc_t *p = sproc__from_link(it);
        if (sproc__sandbox(p) == sb && sproc_running(p) && sproc_pid(p) == pid) return p;
    }
    return NULL;
}

//  Starting ones count too: a tag names one process from its request on.
static sproc_t *s_tagged(procs_t *self, const sandbox_t *sb, const char *tag)
{
    klist_t *it;
    klist_foreach(it, &self->procs)
    {
        sproc_t *p = sproc__from_link(it);
        if (sproc__sandbox(p) == sb && sproc_tag(p) && strcmp(sproc_tag(p), tag) == 0) return p;
    }
    return NULL;
}

sproc_t *procs_find_tag(procs_t *self, const sandbox_t *sb, const char *tag)
{
    if (!tag) return NULL;
    sproc_t *p = s_tagged(self, sb, tag);
    return p && sproc_running(p) ? p : NULL;
}

size_t procs_list(procs_t *self, const sandbox_t *sb, sproc_t ***procs)
{
    size_t n = 0, cap = 0;
    sproc_t **out = NULL;
    klist_t *it;
    klist_foreach(it, &self->procs)
    {
        sproc_t *p = sproc__from_link(it);
        if (sproc__sandbox(p) != sb || !sproc_running(p)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            sproc_t **grown = realloc(out, cap * sizeof *out);
            if (!grown) break;
            out = grown;
        }
        out[n++] = p;
    }
    *procs = out;
    return n;
}
