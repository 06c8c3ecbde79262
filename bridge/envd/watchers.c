/*  envd watchers - filesystem.Filesystem's polling watcher: CreateWatcher, GetWatcherEvents,
    RemoveWatcher (unary calls; E2B's Python sync SDK watches directories with them). Each
    watcher belongs to one sandbox and keeps the events since the last poll, bounded.
*/
#include "envd_int.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WATCHERS_MAX 256        //  watchers alive at once, all sandboxes together
#define WATCHER_EVENTS_MAX 4096  //  events kept between two polls

typedef struct {
    klist_t link;  //  envd_t.watchers
    envd_t *envd;
    char id[40];
    char sandbox[64];
    sbx_watch_t *watch;
    json_t *events;     //  since the last poll
    hreq_t *creating;   //  CreateWatcher, answered once the watch runs
    bool ended;
    char code[32], message[200];  //  why it ended (Connect error code)
} watcher_t;

static void s_free(watcher_t *w)
{
    klist_remove(&w->link);
    w->envd->nwatchers--;
    sbx_watch_destroy(&w->watch);
    if (w->creating) hreq_release(&w->creating);
    json_decref(w->events);
    free(w);
}

static void s_end(watcher_t *w, const char *code, const char *message)
{
    if (w->ended) return;
    w->ended = true;
    snprintf(w->code, sizeof w->code, "%s", code);
    snprintf(w->message, sizeof w->message, "%s", message);
}

static void s_on_start(sbx_watch_t *watch, int err, const char *why, void *arg)
{
    (void) watch;
    watcher_t *w = arg;
    hreq_t *req = w->creating;
    w->creating = NULL;
    if (err) {
        if (!hreq_gone(req)) envd__rpc_error(req, envd__rpc_code(err), "%s", why ? why : kb_strerror(err));
        hreq_release(&req);
        s_free(w);
        return;
    }
    if (hreq_gone(req)) {
        hreq_release(&req);
        s_free(w);
        return;
    }
    hreq_reply_json(req, 200, json_pack("{s:s}", "watcherId", w->id));
    hreq_release(&req);
}

static void s_on_event(sbx_watch_t *watch, sbx_event_t type, const char *name, bool is_dir, void *arg)
{
    (void) watch;
    (void) is_dir;
    watcher_t *w = arg;
    static const char *const names[] = {NULL, "EVENT_TYPE_CREATE", "EVENT_TYPE_WRITE",
                                         "EVENT_TYPE_REMOVE", "EVENT_TYPE_RENAME", "EVENT_TYPE_CHMOD"};
    if (w->ended || (int) type < 1 || (int) type > 5) return;
    if (json_array_size(w->events) >= WATCHER_EVENTS_MAX) {
        //  Nobody polls: stop rather than keep events without bound.
        sbx_watch_destroy(&w->watch);
        s_end(w, "resource_exhausted", "more events than a watcher keeps between polls (4096): poll more often");
        return;
    }
    json_array_append_new(w->events, json_pack("{s:s, s:s}", "name", name, "type", names[type]));
}

static void s_on_end(sbx_watch_t *watch, int err, const char *why, void *arg)
{
    (void) watch;
    watcher_t *w = arg;
    if (w->creating) {
        s_on_start(watch, err ? err : KB_ENOTFOUND, why, w);
        return;
    }
    s_end(w, err == KB_ETOOBIG ? "resource_exhausted" : envd__rpc_code(err ? err : KB_ENOTFOUND),
          why ? why : "the watch ended");
}

static watcher_t *s_find(envd_t *self, sandbox_t *sb, json_t *body, hreq_t *req)
{
    const char *id = json_string_value(json_object_get(body, "watcherId"));
    if (!id) id = json_string_value(json_object_get(body, "watcher_id"));
    if (!id || !*id) {
        envd__rpc_error(req, "invalid_argument", "watcherId must be a non-empty string");
        return NULL;
    }
    klist_t *it;
    klist_foreach(it, &self->watchers)
    {
        watcher_t *w = klist_entry(it, watcher_t, link);
        //  Another sandbox's watcher is not found here.
        if (strcmp(w->id, id) == 0 && strcmp(w->sandbox, sandbox_id(sb)) == 0 && !w->creating) return w;
    }
    envd__rpc_error(req, "not_found", "no watcher with id '%.64s'", id);
    return NULL;
}

void envd__watchers(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method, json_t *body,
                    const char *user, const char *path)
{
    if (strcmp(method, "CreateWatcher") == 0) {
        json_t *rec = json_object_get(body, "recursive");
        if (rec && !json_is_boolean(rec) && !json_is_null(rec)) {
            envd__rpc_error(req, "invalid_argument", "recursive must be a boolean");
            return;
        }
        if (self->nwatchers >= WATCHERS_MAX) {
            envd__rpc_error(req, "resource_exhausted", "%d watchers are open: remove some (RemoveWatcher)",
                            WATCHERS_MAX);
            return;
        }
        watcher_t *w = calloc(1, sizeof *w);
        if (!w || !(w->events = json_array())) {
            free(w);
            envd__rpc_error(req, "internal", "out of memory");
            return;
        }
        unsigned char rnd[12];
        randombytes_buf(rnd, sizeof rnd);
        size_t n = (size_t) snprintf(w->id, sizeof w->id, "w");
        for (size_t i = 0; i < sizeof rnd; i++) n += (size_t) snprintf(w->id + n, sizeof w->id - n, "%02x", rnd[i]);
        snprintf(w->sandbox, sizeof w->sandbox, "%s", sandbox_id(sb));
        w->envd = self;
        klist_init(&w->link);
        klist_push_back(&self->watchers, &w->link);
        self->nwatchers++;
        hreq_hold(req);
        w->creating = req;
        static const sbx_watch_events_t events = {s_on_start, s_on_event, s_on_end};
        int err = 0;
        w->watch = sbx_watch(sandbox_sbx(sb), user, path, json_is_true(rec), &events, w, &err);
        if (!w->watch) {
            envd__rpc_error(req, envd__rpc_code(err ? err : KB_ECLOSED), "cannot watch %s", path);
            s_free(w);
        }
        return;
    }
    watcher_t *w = s_find(self, sb, body, req);
    if (!w) return;
    if (strcmp(method, "RemoveWatcher") == 0) {
        s_free(w);
        hreq_reply_json(req, 200, json_object());
        return;
    }
    //  GetWatcherEvents: what came since the last poll; once the watch has ended and its
    //  events are taken, the end.
    if (json_array_size(w->events) || !w->ended) {
        json_t *events = w->events;
        w->events = json_array();
        hreq_reply_json(req, 200, json_pack("{s:o}", "events", events));
        return;
    }
    envd__rpc_error(req, w->code, "%s", w->message);
    s_free(w);
}

bool envd__is_watcher_method(const char *method)
{
    return strcmp(method, "CreateWatcher") == 0 || strcmp(method, "GetWatcherEvents") == 0 ||
           strcmp(method, "RemoveWatcher") == 0;
}

void envd__watchers_sandbox_end(envd_t *self, sandbox_t *sb)
{
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->watchers)
    {
        watcher_t *w = klist_entry(it, watcher_t, link);
        if (strcmp(w->sandbox, sandbox_id(sb)) != 0) continue;
        if (w->creating && !hreq_gone(w->creating))
            envd__rpc_error(w->creating, "unavailable", "the sandbox ended");
        s_free(w);
    }
}

void envd__watchers_destroy(envd_t *self)
{
    while (!klist_empty(&self->watchers)) s_free(klist_entry(klist_first(&self->watchers), watcher_t, link));
}
