/*  e2b - /execute, /contexts and /health as the E2B code interpreter serves them. */
#include "e2b.h"
#include "../sandboxes/sandboxes.h"
#include "../apikit/envcheck.h"
#include "../apikit/hwait.h"
#include "../apikit/sbxroute.h"
#include "../buf/jbuf.h"
#include "e2b_events.h"
#include "ereq.h"
#include "../buf/wbuf.h"
#include "../kernels/execution.h"
#include "../kernels/kentry.h"
#include "../kernels/registry.h"
#include "../http/api.h"
#include "../../base/jx.h"
#include "../../base/klist.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KEEPALIVE_MS 5000

typedef struct _e2b_t e2b_t;

//  A streaming /execute.
typedef struct {
    klist_t link;
    e2b_t *e2b;
    hreq_t *req;
    run_t *run;
    uv_timer_t keepalive;
    bool ended;
} stream_t;


struct _e2b_t {
    uv_loop_t *loop;
    registry_t *registry;
    sandboxes_t *sandboxes;
    const config_t *config;
    klist_t streams;  //  stream_t
    json_t *contexts;
};

static registry_t *s_registry(e2b_t *self)
{
    return self->registry;
}

// ---------------------------------------------------------------------------------------
//  Languages and contexts

//  E2B's normalization: lower-case, trimmed, js -> javascript, ts -> typescript.
static void s_normalize_language(const char *in, char *out, size_t size)
{
    while (*in && isspace((unsigned char) *in)) in++;
    size_t n = strlen(in);
    while (n && isspace((unsigned char) in[n - 1])) n--;
    if (n >= size) n = size - 1;
    for (size_t i = 0; i < n; i++) out[i] = (char) tolower((unsigned char) in[i]);
    out[n] = '\0';
    if (strcmp(out, "js") == 0) snprintf(out, size, "javascript");
    if (strcmp(out, "ts") == 0) snprintf(out, size, "typescript");
}

//  The kernelspec for an E2B language: the default kernel for python, otherwise the first
//  installed spec whose language matches (typescript runs on the javascript kernel).
static char *s_kernel_for_language(e2b_t *self, const char *language)
{
    const char *want = strcmp(language, "typescript") == 0 ? "javascript" : language;
    kspec_t *def = kspec_find(registry_default_kernel(s_registry(self)), NULL);
    char *name = NULL;
    if (def && strcasecmp(kspec_language(def), want) == 0) name = strdup(kspec_name(def));
    kspec_destroy(&def);
    if (name) return name;
    kspec_t **specs;
    size_t n = kspec_list(&specs);
    for (size_t i = 0; i < n && !name; i++)
        if (strcasecmp(kspec_language(specs[i]), want) == 0) name = strdup(kspec_name(specs[i]));
    kspec_list_destroy(&specs, n);
    return name;
}

//  What E2B knows of its contexts: kernel id -> {"language", "default"}. Kernels are
//  everyone's; a context's language and whether it is a language's default context are
//  this API's own. Entries of kernels that are gone are dropped as they are met.
static json_t *s_context_info(e2b_t *self, kentry_t *entry)
{
    return json_object_get(self->contexts, kentry_id(entry));
}

static void s_prune_contexts(e2b_t *self)
{
    const char *id;
    json_t *info;
    void *tmp;
    json_object_foreach_safe(self->contexts, tmp, id, info) if (!registry_find(self->registry, id))
        json_object_del(self->contexts, id);
}

static const char *s_context_language(e2b_t *self, kentry_t *entry)
{
    const char *tag = json_string_value(json_object_get(s_context_info(self, entry), "language"));
    return tag ? tag : kernel_language(kentry_kernel(entry));
}

static json_t *s_context_model(e2b_t *self, kentry_t *entry)
{
    char language[64];
    s_normalize_language(s_context_language(self, entry), language, sizeof language);
    return json_pack("{s:s, s:s, s:s}", "id", kentry_id(entry), "language", language, "cwd",
                     kentry_cwd(entry));
}

//  A context of the sandbox sb.
static kentry_t *s_live(e2b_t *self, sandbox_t *sb, const char *id)
{
    kentry_t *entry = id ? registry_find(s_registry(self), id) : NULL;
    return entry && sandbox_has_kernel(sb, entry) ? entry : NULL;
}

//  Start a context for language in cwd. On failure, *why says what went wrong.
static kentry_t *s_create_context(e2b_t *self, sandbox_t *sb, const char *language, const char *cwd,
                                  bool is_default, char *why, size_t size)
{
    char *kernel = s_kernel_for_language(self, language);
    if (!kernel) {
        snprintf(why, size, "No kernel is installed for language '%s'", language);
        return NULL;
    }
    int err;
    kentry_t *entry = sandbox_start_kernel(sb, kernel, cwd, NULL, &err);
    if (!entry)
        snprintf(why, size, "Failed to start the %s kernel for language '%s': %s", kernel, language,
                 err == KB_EINVAL ? "cwd is not a directory"
                 : err == KB_ELIMIT ? "the server runs as many kernels as it allows (--max-kernels)"
                                    : kb_strerror(err));
    free(kernel);
    if (entry) {
        s_prune_contexts(self);
        json_object_set_new(self->contexts, kentry_id(entry),
                            json_pack("{s:s, s:b, s:s}", "language", language, "default", is_default,
                                      "sandbox", sandbox_id(sb)));
    }
    return entry;
}

//  The default context of a language in sandbox sb, created on first use.
static kentry_t *s_default_context(e2b_t *self, sandbox_t *sb, const char *language, char *why,
                                   size_t size)
{
    const char *id;
    json_t *info;
    json_object_foreach(self->contexts, id, info)
    {
        const char *lang = json_string_value(json_object_get(info, "language"));
        kentry_t *entry = json_is_true(json_object_get(info, "default")) && lang &&
                                  strcmp(lang, language) == 0
                              ? s_live(self, sb, id)
                              : NULL;
        if (entry) return entry;
    }
    return s_create_context(self, sb, language, NULL, true, why, size);
}

// ---------------------------------------------------------------------------------------
//  /execute

//  One NDJSON line, sent as one chunk: everything non-ASCII escaped as \uXXXX, as
//  Python's json.dumps does, so no line holds a byte a client could split inside a
//  character or read as a line break.
static void s_write_text(stream_t *st, const char *text, size_t len)
{
    size_t n = jraw_ascii_len(text, len);
    char *line = malloc(n + 1);
    if (!line) return;
    jraw_to_ascii(text, len, line);
    line[n] = '\n';
    if (hreq_stream_write(st->req, line, n + 1) == KB_OK) uv_timer_again(&st->keepalive);
    free(line);
}

static void s_write_literal(stream_t *st, const char *line)
{
    s_write_text(st, line, strlen(line));
}

static void s_stream_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void s_stream_free(stream_t *st)
{
    klist_remove(&st->link);
    hreq_on_close(st->req, NULL, NULL);
    hreq_release(&st->req);
    uv_timer_stop(&st->keepalive);
    uv_close((uv_handle_t *) &st->keepalive, s_stream_closed);
}

static void s_on_keepalive(uv_timer_t *timer)
{
    s_write_literal(timer->data, "{\"type\": \"keepalive\"}");
}

//  The client went away (its timeout, an abort): interrupt what it was running. The run
//  queue waits for the interrupted request to settle before the next run is sent.
static void s_on_client_gone(hreq_t *req, void *arg)
{
    (void) req;
    stream_t *st = arg;
    if (st->run) {
        run_t *run = st->run;
        st->run = NULL;
        klog_info("e2b: client left mid-execution; interrupting");
        run_cancel(run);
    }
    s_stream_free(st);
}

static void s_on_exec_event(execution_t *exec, const exec_event_t *ev, void *arg)
{
    (void) exec;
    stream_t *st = arg;
    size_t len;
    char *line = e2b_event_line(ev, &len);
    if (line && hreq_stream_write_buf(st->req, line, len) == KB_OK) uv_timer_again(&st->keepalive);
    if (ev->kind == EXEC_EV_END) {
        st->run = NULL;
        hreq_stream_end(st->req);
        s_stream_free(st);
    }
}

//  Check the body as E2B's FastAPI server does; on failure the reply is sent and false
//  returned.
static bool s_parse_body(hreq_t *req, ereq_kind_t kind, ereq_t *out)
{
    size_t blen;
    const char *body = hreq_body(req, &blen);
    json_t *detail;
    char why[200];
    int status = ereq_parse(kind, body, blen, out, &detail, why, sizeof why);
    if (status == 0) return true;
    if (detail) hreq_reply_json(req, status, detail);
    else hreq_reply_text(req, status, why);
    ereq_free(out);
    return false;
}

static void s_execute(e2b_t *self, sandbox_t *sb, hreq_t *req)
{
    ereq_t doc;
    if (!s_parse_body(req, EREQ_EXECUTE, &doc)) return;
    const char *code = doc.code, *context_id = doc.context_id, *language = doc.language;
    json_t *env = doc.env_vars;
    kentry_t *entry;
    stream_t *st = NULL;
    char why[300];
    if (context_id) {
        entry = s_live(self, sb, context_id);
        if (!entry) {
            snprintf(why, sizeof why, "Context %.200s not found", context_id);
            hreq_reply_text(req, 404, why);
            goto done;
        }
    } else {
        char lang[64];
        s_normalize_language(language ? language : "python", lang, sizeof lang);
        entry = s_default_context(self, sb, lang, why, sizeof why);
        if (!entry) {
            hreq_reply_text(req, 500, why);
            goto done;
        }
    }
    st = calloc(1, sizeof *st);
    if (!st) {
        hreq_reply_text(req, 500, "out of memory");
        goto done;
    }
    st->e2b = self;
    st->req = req;
    hreq_hold(req);
    uv_timer_init(self->loop, &st->keepalive);
    st->keepalive.data = st;
    klist_init(&st->link);
    klist_push_front(&self->streams, &st->link);
    //  Headers at once, before waiting for the context: the SDK's request timeout only
    //  covers the wait for them.
    hreq_stream_begin(req, 200, NULL);
    hreq_on_close(req, s_on_client_gone, st);
    uv_timer_start(&st->keepalive, s_on_keepalive, KEEPALIVE_MS, KEEPALIVE_MS);
    run_opts_t opts;
    memset(&opts, 0, sizeof opts);
    opts.env_vars = env;
    opts.exec.stream_only = true;
    opts.exec.raw_events = true;  //  rendered by e2b_events
    int err;
    st->run = runner_execute(kentry_runner(entry), code, &opts, s_on_exec_event, st, &err);
    if (!st->run) {
        json_t *e = json_pack("{s:s, s:s, s:s, s:s}", "type", "error", "name",
                              err == KB_EINVAL ? "ValueError" : "ContextError", "value",
                              err == KB_EINVAL ? "env_vars are not supported for this context's language"
                                               : kb_strerror(err),
                              "traceback", "");
        char *text = jx_dumps(e, true, NULL);
        json_decref(e);
        if (text) s_write_literal(st, text);
        free(text);
        s_write_literal(st, "{\"type\": \"end_of_execution\"}");
        hreq_stream_end(req);
        s_stream_free(st);
    }
done:
    ereq_free(&doc);
}

// ---------------------------------------------------------------------------------------
//  /contexts

typedef enum { CTX_CREATE, CTX_RESTART, CTX_DELETE } ctx_op_t;
static void s_reply_after(e2b_t *self, hreq_t *req, kentry_t *entry, ctx_op_t op);

static void s_contexts_post(e2b_t *self, sandbox_t *sb, hreq_t *req)
{
    ereq_t doc;
    if (!s_parse_body(req, EREQ_CONTEXT, &doc)) return;
    char language[64], why[300];
    s_normalize_language(doc.language ? doc.language : "python", language, sizeof language);
    kentry_t *entry = s_create_context(self, sb, language, doc.cwd, false, why, sizeof why);
    ereq_free(&doc);
    if (!entry) {
        hreq_reply_text(req, 500, why);
        return;
    }
    //  Ready when answered, as upstream's context creation is.
    if (kentry_ready(entry)) hreq_reply_json(req, 200, s_context_model(self, entry));
    else s_reply_after(self, req, entry, CTX_CREATE);
}

static void s_reply_transition(hreq_t *req, kentry_t *entry, kwait_result_t result, int op, void *arg)
{
    e2b_t *self = arg;
    char why[300];
    if (op == CTX_DELETE) {
        hreq_reply(req, 200, "application/json", "null", 4);
    } else if (result != KWAIT_READY) {
        snprintf(why, sizeof why, "Failed to %s context %s: %s", op == CTX_CREATE ? "create" : "restart",
                 kentry_id(entry), kernel_exit_reason(kentry_kernel(entry)));
        hreq_reply_text(req, 500, why);
        if (op == CTX_CREATE) kentry_shutdown(entry);
    } else if (op == CTX_CREATE) {
        hreq_reply_json(req, 200, s_context_model(self, entry));
    } else {
        hreq_reply(req, 200, "application/json", "null", 4);
    }
}

//  Answer req once entry has gone through its next transition.
static void s_reply_after(e2b_t *self, hreq_t *req, kentry_t *entry, ctx_op_t op)
{
    hwait_start(req, entry, s_reply_transition, (int) op, self);
}

static void s_context(e2b_t *self, sandbox_t *sb, hreq_t *req, const char *id, const char *action)
{
    kentry_t *entry = s_live(self, sb, id);
    if (!entry) {
        char why[300];
        snprintf(why, sizeof why, "Context %.200s not found", id);
        hreq_reply_text(req, 404, why);
        return;
    }
    bool restart = strcmp(action, "restart") == 0 && hreq_method(req) == HM_POST;
    bool remove = *action == '\0' && hreq_method(req) == HM_DELETE;
    if (!restart && !remove) {
        hreq_reply_text(req, 405, "Method Not Allowed");
        return;
    }
    s_reply_after(self, req, entry, restart ? CTX_RESTART : CTX_DELETE);
    if (restart) kentry_restart(entry);
    else kentry_shutdown(entry);
}

// ---------------------------------------------------------------------------------------
//  Routing

//  Requests routed to a sandbox's code interpreter (E2b-Sandbox-Port 49999), whatever the
//  path; without routing headers, the paths of the default sandbox's.
static bool s_claims(void *api, hreq_t *req)
{
    (void) api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    if (route.kind == SBXROUTE_CODE) return true;
    if (route.kind != SBXROUTE_NONE) return false;
    const char *path = hreq_path(req);
    return strcmp(path, "/execute") == 0 || strcmp(path, "/health") == 0 ||
           strcmp(path, "/contexts") == 0 || strncmp(path, "/contexts/", 10) == 0;
}

static void s_http(void *api, hreq_t *req)
{
    e2b_t *self = api;
    sbxroute_t route;
    sandbox_t *sb = sbxroute_resolve(req, self->sandboxes, &route);
    if (!sb) return;
    const char *path = hreq_path(req);
    hmethod_t m = hreq_method(req);
    if (strcmp(path, "/health") == 0) {
        hreq_reply(req, 200, "application/json", "\"OK\"", 4);
    } else if (strcmp(path, "/execute") == 0) {
        if (m == HM_POST) s_execute(self, sb, req);
        else hreq_reply_text(req, 405, "Method Not Allowed");
    } else if (strcmp(path, "/contexts") == 0) {
        if (m == HM_POST) {
            s_contexts_post(self, sb, req);
        } else if (m == HM_GET) {
            kentry_t **entries;
            size_t n = sandbox_kernels(sb, &entries);
            json_t *list = json_array();
            //  The listing also says each context's state (E2B's model has none; its SDKs
            //  ignore the field): "unresponsive" is how a stopped kernel shows.
            for (size_t i = 0; i < n; i++) {
                json_t *model = s_context_model(self, entries[i]);
                json_object_set_new(model, "state", json_string(kentry_state_name(entries[i])));
                json_array_append_new(list, model);
            }
            free(entries);
            hreq_reply_json(req, 200, list);
        } else {
            hreq_reply_text(req, 405, "Method Not Allowed");
        }
    } else if (strcmp(path, "/contexts") != 0 && strncmp(path, "/contexts/", 10) != 0) {
        hreq_reply_text(req, 404, "Not Found");
    } else {
        char id[128];
        const char *rest = path + 10;
        const char *slash = strchr(rest, '/');
        size_t n = slash ? (size_t) (slash - rest) : strlen(rest);
        snprintf(id, sizeof id, "%.*s", (int) (n < sizeof id ? n : sizeof id - 1), rest);
        s_context(self, sb, req, id, slash ? slash + 1 : "");
    }
}

static void *s_create(const api_ctx_t *ctx)
{
    e2b_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = ctx->loop;
    self->registry = ctx->registry;
    self->sandboxes = ctx->sandboxes;
    self->config = ctx->config;
    klist_init(&self->streams);
    self->contexts = json_object();
    if (!self->contexts) {
        free(self);
        return NULL;
    }
    return self;
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    e2b_t *self = *api_p;
    *api_p = NULL;
    while (!klist_empty(&self->streams)) {
        stream_t *st = klist_entry(klist_first(&self->streams), stream_t, link);
        if (st->run) run_cancel(st->run);
        st->run = NULL;
        s_stream_free(st);
    }
    json_decref(self->contexts);
    free(self);
}

static bool s_is_public(void *api, hreq_t *req)
{
    (void) api;
    return strcmp(hreq_path(req), "/health") == 0;
}

//  A sandbox's own tokens (the SDKs send the traffic token on every call, the envd token
//  on /execute too) act on that sandbox's code interpreter only.
static bool s_authorize(void *api, hreq_t *req, const char *token)
{
    e2b_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    if (route.kind != SBXROUTE_CODE) return false;
    sandbox_t *sb = sbxroute_sandbox(&route, self->sandboxes);
    return sb && !sandbox_is_default(sb) && sandbox_token_ok(sb, token);
}

static void s_refuse(void *api, hreq_t *req)
{
    e2b_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    sandbox_t *sb = route.kind == SBXROUTE_CODE ? sbxroute_sandbox(&route, self->sandboxes) : NULL;
    if (route.kind == SBXROUTE_CODE && (!sb || sandbox_state(sb) != SANDBOX_RUNNING))
        sbxroute_reply_gone(req, route.id, sb);
    else
        hreq_reply_error(req, 403, "Forbidden: a valid token is required");
}

const api_desc_t e2b_api = {
    .name = "e2b",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .is_public = s_is_public,
    .authorize = s_authorize,
    .refuse = s_refuse,
    .http = s_http,
};
