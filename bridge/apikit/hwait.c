/*  hwait - HTTP requests waiting for a kernel transition. */
#include "hwait.h"

#include <stdlib.h>

typedef struct {
    kwait_t wait;
    hreq_t *req;
    hwait_reply_fn *reply;
    int op;
    void *arg;
} hwait_t;

static void s_on_close(hreq_t *req, void *arg)
{
    (void) req;
    hwait_t *w = arg;
    kentry_unwait(&w->wait);
    hreq_release(&w->req);
    free(w);
}

static void s_on_transition(kwait_t *wait, kentry_t *entry, kwait_result_t result)
{
    hwait_t *w = wait->arg;
    hreq_on_close(w->req, NULL, NULL);
    w->reply(w->req, entry, result, w->op, w->arg);
    hreq_release(&w->req);
    free(w);
}

void hwait_start(hreq_t *req, kentry_t *entry, hwait_reply_fn *reply, int op, void *arg)
{
    hwait_t *w = calloc(1, sizeof *w);
    if (!w) {
        hreq_reply_error(req, 500, "out of memory");
        return;
    }
    w->req = req;
    w->reply = reply;
    w->op = op;
    w->arg = arg;
    hreq_hold(req);
    hreq_on_close(req, s_on_close, w);
    w->wait.fn = s_on_transition;
    w->wait.arg = w;
    kentry_wait(entry, &w->wait);
}
