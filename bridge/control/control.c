/*  control - the sandbox REST API (E2B's control plane shape). */
#include "control.h"
#include "../apikit/sbxhost.h"
#include "../http/hutil.h"
#include "../sandboxes/sandboxes.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LIST_LIMIT_MAX 100
#define ID_MAX 64

typedef struct {
    sandboxes_t *sandboxes;
    const config_t *config;
    klist_t waits;  //  wait_t: requests answered once a sandbox runs
} control_t;

typedef struct {
    klist_t link;
    sandbox_wait_t wait;
    control_t *control;
    hreq_t *req;
    int status;  //  of the answer once running (201 created or resumed, 200 connected)
} wait_t;

// ---------------------------------------------------------------------------------------
//  Answers

static void s_error(hreq_t *req, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void s_error(hreq_t *req, int status, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (status == 429) hreq_add_header(req, "retry-after", "5");
    hreq_reply_json(req, status, json_pack("{s:i, s:s}", "code", status, "message", message));
}

static void s_not_found(hreq_t *req, const char *id)
{
    s_error(req, 404, "sandbox %.64s not found", id);
}

//  The model, with what only its creator (or whoever connects) learns: its tokens and the
//  domain its ports are reached at.
static json_t *s_full_model(control_t *self, hreq_t *req, sandbox_t *sb)
{
    json_t *model = sandbox_model(sb);
    char domain[320];
    sbxhost_domain(self->config, req, domain, sizeof domain);
    json_object_set_new(model, "envdAccessToken", json_string(sandbox_envd_token(sb)));
    json_object_set_new(model, "trafficAccessToken", json_string(sandbox_traffic_token(sb)));
    json_object_set_new(model, "domain", json_string(domain));
    return model;
}

// ---------------------------------------------------------------------------------------
//  Waiting for a sandbox to run

static void s_wait_free(wait_t *w)
{
    sandbox_unwait(&w->wait);
    klist_remove(&w->link);
    hreq_on_close(w->req, NULL, NULL);
    hreq_release(&w->req);
    free(w);
}

static void s_on_client_gone(hreq_t *req, void *arg)
{
    (void) req;
    //  The sandbox goes on: it ends at its end time, as E2B's do.
    s_wait_free(arg);
}

static void s_on_running(sandbox_wait_t *wait, sandbox_t *sb, int err, const char *why)
{
    wait_t *w = wait->arg;
    if (err)
        s_error(w->req, 500, "sandbox %s could not start: %s", sandbox_id(sb), why ? why : kb_strerror(err));
    else
        hreq_reply_json(w->req, w->status, s_full_model(w->control, w->req, sb));
    s_wait_free(w);
}

//  Answer status with the full model once sb runs (at once if it does).
static void s_answer_when_running(control_t *self, hreq_t *req, sandbox_t *sb, int status)
{
    wait_t *w = calloc(1, sizeof *w);
    if (!w) {
        s_error(req, 500, "out of memory");
        return;
    }
    w->control = self;
    w->req = req;
    w->status = status;
    w->wait.fn = s_on_running;
    w->wait.arg = w;
    klist_init(&w->link);
    if (sandbox_wait_running(sb, &w->wait)) {
        free(w);
        hreq_reply_json(req, status, s_full_model(self, req, sb));
        return;
    }
    klist_push_back(&self->waits, &w->link);
    hreq_hold(req);
    hreq_on_close(req, s_on_client_gone, w);
}

// ---------------------------------------------------------------------------------------
//  Bodies

//  The JSON object body (an empty body is {}); NULL after answering 400.
static json_t *s_body(hreq_t *req)
{
    size_t len = 0;
    const char *text = hreq_body(req, &len);
    if (!text || len == 0) return json_object();
    json_error_t jerr;
    json_t *body = jx_loadb(text, len, &jerr);
    if (!body) {
        s_error(req, 400, "the body is not JSON: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        s_error(req, 400, "the body must be a JSON object");
        return NULL;
    }
    return body;
}

//  A whole number of seconds >= 1 at key (absent: *out untouched). false after a 400.
static bool s_seconds(hreq_t *req, json_t *body, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) return true;
    if (!json_is_integer(v)) {
        s_error(req, 400, "%s must be a whole number of seconds", key);
        return false;
    }
    json_int_t n = json_integer_value(v);
    if (n < 1) {
        s_error(req, 400, "%s must be at least 1 second (got %lld)", key, (long long) n);
        return false;
    }
    //  Capped here, so that the multiplication cannot wrap; the table caps it further.
    uint64_t max_s = UINT64_MAX / 1000u;
    *out = ((uint64_t) n > max_s ? max_s : (uint64_t) n) * 1000u;
    return true;
}

static bool s_positive(hreq_t *req, json_t *body, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) return true;
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        s_error(req, 400, "%s must be a positive whole number", key);
        return false;
    }
    *out = (uint64_t) json_integer_value(v);
    return true;
}

// ---------------------------------------------------------------------------------------
//  Routes

static void s_create(control_t *self, hreq_t *req)
{
    json_t *body = s_body(req);
    if (!body) return;
    sandbox_opts_t opts;
    memset(&opts, 0, sizeof opts);
    json_t *v;
    uint64_t memory_mb = 0, cpus = 0;
    bool ok = true;
    if ((v = json_object_get(body, "templateID")) && !json_is_null(v)) {
        if (!json_is_string(v) || !*json_string_value(v)) {
            s_error(req, 400, "templateID must be a non-empty string");
            ok = false;
        } else {
            opts.template_id = json_string_value(v);
        }
    }
    if (ok && (v = json_object_get(body, "metadata")) && !json_is_null(v)) opts.metadata = v;
    if (ok && (v = json_object_get(body, "envVars")) && !json_is_null(v)) opts.env = v;
    if (ok && (v = json_object_get(body, "allow_internet_access")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            s_error(req, 400, "allow_internet_access must be true or false");
            ok = false;
        } else {
            opts.no_internet = !json_is_true(v);
        }
    }
    if (ok && (v = json_object_get(body, "volumeMounts")) && json_array_size(v) > 0) {
        s_error(req, 400, "volume mounts are not supported by kbridge");
        ok = false;
    }
    ok = ok && s_seconds(req, body, "timeout", &opts.timeout_ms) &&
         s_positive(req, body, "memoryMB", &memory_mb) && s_positive(req, body, "cpuCount", &cpus);
    if (!ok) {
        json_decref(body);
        return;
    }
    if (memory_mb > (UINT64_MAX >> 20)) memory_mb = UINT64_MAX >> 20;
    opts.memory_bytes = memory_mb << 20;
    opts.cpu_millis = cpus > 4096 ? UINT32_MAX : (uint32_t) (cpus * 1000u);
    int err;
    char why[512];
    sandbox_t *sb = sandboxes_create(self->sandboxes, &opts, &err, why, sizeof why);
    json_decref(body);
    if (!sb) {
        //  Too many sandboxes is "try later"; a limit asked for past the server's is the
        //  request's fault.
        bool busy = err == KB_ELIMIT && strstr(why, "--max-sandboxes");
        s_error(req, err == KB_ENOTFOUND ? 400 : busy ? 429 : err == KB_ECLOSED ? 503
                     : err == KB_ENOMEM ? 500 : 400, "%s", why);
        return;
    }
    s_answer_when_running(self, req, sb, 201);
}

//  Decode a list filter's metadata the way E2B's parseFilters does: the parameter once
//  more as a whole, then each key and value. false if it is malformed.
static bool s_metadata_filter(const char *param, json_t *out)
{
    size_t n = strlen(param);
    char *whole = malloc(n + 1);
    if (!whole) return false;
    bool ok = hutil_decode(param, n, false, whole, n + 1) >= 0;
    char *save = NULL;
    for (char *pair = ok ? strtok_r(whole, "&", &save) : NULL; pair && ok; pair = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(pair, '=');
        if (!eq) {
            ok = false;
            break;
        }
        *eq = '\0';
        char key[512], value[2048];
        if (hutil_decode(pair, strlen(pair), false, key, sizeof key) < 0 ||
            hutil_decode(eq + 1, strlen(eq + 1), false, value, sizeof value) < 0) {
            ok = false;
            break;
        }
        json_object_set_new(out, key, json_string(value));
    }
    free(whole);
    return ok;
}

static bool s_matches(sandbox_t *sb, json_t *metadata, bool want_running, bool want_paused,
                      const char *template_id)
{
    sandbox_state_t st = sandbox_state(sb);
    bool paused = st == SANDBOX_PAUSED;
    if (paused ? !want_paused : !want_running) return false;
    if (template_id && strcmp(template_id, sandbox_template(sb)) != 0) return false;
    const char *key;
    json_t *value;
    json_t *have = sandbox_metadata(sb);
    json_object_foreach(metadata, key, value)
    {
        const char *mine = json_string_value(json_object_get(have, key));
        if (!mine || strcmp(mine, json_string_value(value)) != 0) return false;
    }
    return true;
}

static int s_by_start(const void *a, const void *b)
{
    sandbox_t *x = *(sandbox_t *const *) a, *y = *(sandbox_t *const *) b;
    int64_t d = sandbox_started_at(x) - sandbox_started_at(y);
    return d < 0 ? -1 : d > 0 ? 1 : strcmp(sandbox_id(x), sandbox_id(y));
}

static void s_list(control_t *self, hreq_t *req)
{
    char param[4096];
    json_t *metadata = json_object();
    int rc = hreq_query(req, "metadata", param, sizeof param);
    if (rc == KB_ETOOBIG || rc == KB_EINVAL || (rc == KB_OK && !s_metadata_filter(param, metadata))) {
        json_decref(metadata);
        s_error(req, 400, "metadata must be key=value pairs joined with &, URL-encoded");
        return;
    }
    bool running = true, paused = true;
    if (hreq_query(req, "state", param, sizeof param) == KB_OK && *param) {
        running = paused = false;
        char *save = NULL;
        for (char *s = strtok_r(param, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
            if (strcmp(s, "running") == 0) running = true;
            else if (strcmp(s, "paused") == 0) paused = true;
            else {
                json_decref(metadata);
                s_error(req, 400, "unknown state '%.32s': running or paused", s);
                return;
            }
        }
    }
    char template_id[256];
    bool by_template = hreq_query(req, "template", template_id, sizeof template_id) == KB_OK;
    char order[8] = "asc";
    if (hreq_query(req, "order", order, sizeof order) == KB_OK && strcmp(order, "asc") != 0 &&
        strcmp(order, "desc") != 0) {
        json_decref(metadata);
        s_error(req, 400, "order must be asc or desc");
        return;
    }
    long limit = LIST_LIMIT_MAX;
    if (hreq_query(req, "limit", param, sizeof param) == KB_OK) {
        char *end;
        limit = strtol(param, &end, 10);
        if (!*param || *end || limit < 1 || limit > LIST_LIMIT_MAX) {
            json_decref(metadata);
            s_error(req, 400, "limit must be a whole number from 1 to %d", LIST_LIMIT_MAX);
            return;
        }
    }
    //  The token is the position after the last one sent: "<started at>.<id>".
    char next[128] = "";
    hreq_query(req, "nextToken", next, sizeof next);
    long long after_ms = 0;
    char after_id[ID_MAX] = "";
    if (*next && sscanf(next, "%lld.%63[a-z0-9]", &after_ms, after_id) != 2) {
        json_decref(metadata);
        s_error(req, 400, "nextToken is not one this server gave");
        return;
    }
    sandbox_t **all;
    size_t n = sandboxes_list(self->sandboxes, &all);
    if (n > 1) qsort(all, n, sizeof *all, s_by_start);  //  all is NULL when there are none
    bool desc = strcmp(order, "desc") == 0;
    json_t *out = json_array();
    sandbox_t *last = NULL;
    bool more = false;
    for (size_t k = 0; k < n; k++) {
        sandbox_t *sb = all[desc ? n - 1 - k : k];
        if (!s_matches(sb, metadata, running, paused, by_template ? template_id : NULL)) continue;
        if (*next) {
            int64_t t = sandbox_started_at(sb);
            int c = t < after_ms ? -1 : t > after_ms ? 1 : strcmp(sandbox_id(sb), after_id);
            if (desc ? c >= 0 : c <= 0) continue;
        }
        if ((long) json_array_size(out) == limit) {
            more = true;
            break;
        }
        json_array_append_new(out, sandbox_model(sb));
        last = sb;
    }
    free(all);
    json_decref(metadata);
    if (more && last) {
        char token[128];
        snprintf(token, sizeof token, "%lld.%s", (long long) sandbox_started_at(last), sandbox_id(last));
        hreq_add_header(req, "x-next-token", token);
    }
    hreq_reply_json(req, 200, out);
}

static void s_timeout(control_t *self, hreq_t *req, sandbox_t *sb)
{
    (void) self;
    json_t *body = s_body(req);
    if (!body) return;
    uint64_t ms = 0;
    bool given = json_object_get(body, "timeout") != NULL;
    bool ok = s_seconds(req, body, "timeout", &ms);
    json_decref(body);
    if (!ok) return;
    if (!given) {
        s_error(req, 400, "timeout is required (seconds)");
        return;
    }
    if (sandbox_is_default(sb)) {
        s_error(req, 400, "the default sandbox never ends");
        return;
    }
    sandbox_set_timeout(sb, ms);
    hreq_reply(req, 204, NULL, NULL, 0);
}

static void s_pause(control_t *self, hreq_t *req, sandbox_t *sb)
{
    (void) self;
    if (sandbox_is_default(sb)) {
        s_error(req, 400, "the default sandbox cannot be paused");
        return;
    }
    if (sandbox_state(sb) == SANDBOX_PAUSED) {
        s_error(req, 409, "sandbox %s is already paused", sandbox_id(sb));
        return;
    }
    int rc = sandbox_pause(sb);
    if (rc == KB_EAGAIN)
        s_error(req, 409, "sandbox %s is still starting", sandbox_id(sb));
    else if (rc == KB_EINVAL)
        s_error(req, 501, "this host has no cgroup freezer: sandboxes cannot be paused");
    else if (rc)
        s_error(req, 500, "sandbox %s could not be paused: %s", sandbox_id(sb), kb_strerror(rc));
    else
        hreq_reply(req, 204, NULL, NULL, 0);
}

static void s_connect(control_t *self, hreq_t *req, sandbox_t *sb)
{
    json_t *body = s_body(req);
    if (!body) return;
    uint64_t ms = 0;
    bool ok = s_seconds(req, body, "timeout", &ms);
    json_decref(body);
    if (!ok) return;
    bool resumed = false;
    if (sandbox_state(sb) == SANDBOX_PAUSED) {
        int rc = sandbox_resume(sb);
        if (rc) {
            s_error(req, 500, "sandbox %s could not be resumed: %s", sandbox_id(sb), kb_strerror(rc));
            return;
        }
        resumed = true;
    }
    //  A connect extends the sandbox's life, never shortens it.
    if (ms && !sandbox_is_default(sb) && sandbox_end_at(sb) < sandbox_now_ms() + (int64_t) ms)
        sandbox_set_timeout(sb, ms);
    s_answer_when_running(self, req, sb, resumed ? 201 : 200);
}

static void s_metrics(control_t *self, hreq_t *req, sandbox_t *sb)
{
    (void) self;
    sbx_stats_t st;
    memset(&st, 0, sizeof st);
    sbx_t *sbx = sandbox_sbx(sb);
    if (sbx) sbx_stats(sbx, &st);
    int64_t now = sandbox_now_ms();
    char stamp[40];
    time_t secs = (time_t) (now / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *model = sandbox_model(sb);
    json_t *sample = json_pack("{s:s, s:I, s:O, s:f, s:I, s:I, s:I, s:I, s:I}", "timestamp", stamp,
                               "timestampUnix", (json_int_t) secs, "cpuCount",
                               json_object_get(model, "cpuCount"), "cpuUsedPct", 0.0, "memUsed",
                               (json_int_t) st.memory_bytes, "memTotal",
                               (json_int_t) (st.memory_limit ? st.memory_limit : sandbox_memory_bytes(sb)),
                               "memCache", (json_int_t) 0, "diskUsed", (json_int_t) 0, "diskTotal",
                               (json_int_t) 0);
    json_decref(model);
    hreq_reply_json(req, 200, json_pack("[o]", sample));
}

static void s_http(void *api, hreq_t *req)
{
    control_t *self = api;
    const char *path = hreq_path(req);
    if (strncmp(path, "/v2", 3) == 0) path += 3;
    hmethod_t m = hreq_method(req);
    const char *rest = path + strlen("/sandboxes");
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (m == HM_POST) s_create(self, req);
        else if (m == HM_GET) s_list(self, req);
        else s_error(req, 405, "method not allowed on /sandboxes");
        return;
    }
    rest++;  //  past '/'
    char id[ID_MAX];
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t) (slash - rest) : strlen(rest);
    if (n >= sizeof id) n = sizeof id - 1;
    snprintf(id, sizeof id, "%.*s", (int) n, rest);
    const char *action = slash ? slash + 1 : "";
    sandbox_t *sb = sandboxes_find(self->sandboxes, id);
    if (!sb) {
        s_not_found(req, id);
        return;
    }
    if (*action == '\0') {
        if (m == HM_GET) {
            json_t *model = sandbox_model(sb);
            char domain[320];
            sbxhost_domain(self->config, req, domain, sizeof domain);
            json_object_set_new(model, "domain", json_string(domain));
            hreq_reply_json(req, 200, model);
        } else if (m == HM_DELETE) {
            if (sandbox_is_default(sb)) {
                s_error(req, 400, "the default sandbox cannot be killed");
                return;
            }
            sandbox_kill(sb, "killed through the API");
            hreq_reply(req, 204, NULL, NULL, 0);
        } else {
            s_error(req, 405, "method not allowed on a sandbox");
        }
    } else if (strcmp(action, "timeout") == 0 && m == HM_POST) {
        s_timeout(self, req, sb);
    } else if (strcmp(action, "pause") == 0 && m == HM_POST) {
        s_pause(self, req, sb);
    } else if ((strcmp(action, "connect") == 0 || strcmp(action, "resume") == 0) && m == HM_POST) {
        s_connect(self, req, sb);
    } else if (strcmp(action, "metrics") == 0 && m == HM_GET) {
        s_metrics(self, req, sb);
    } else {
        s_error(req, 404, "no such route: %s %.200s", hreq_method_name(req), hreq_path(req));
    }
}

static bool s_claims(void *api, hreq_t *req)
{
    (void) api;
    //  A request for inside a sandbox (envd, the code interpreter) names it in a header.
    if (hreq_header(req, "e2b-sandbox-id")) return false;
    const char *path = hreq_path(req);
    if (strncmp(path, "/v2", 3) == 0) path += 3;
    return strncmp(path, "/sandboxes", 10) == 0 && (path[10] == '\0' || path[10] == '/');
}

static void s_refuse(void *api, hreq_t *req)
{
    (void) api;
    s_error(req, 401, "a valid API key is required (X-API-Key: the kbridge token)");
}

static void *s_create_api(const api_ctx_t *ctx)
{
    control_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->sandboxes = ctx->sandboxes;
    self->config = ctx->config;
    klist_init(&self->waits);
    return self;
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    control_t *self = *api_p;
    *api_p = NULL;
    while (!klist_empty(&self->waits)) {
        wait_t *w = klist_entry(klist_first(&self->waits), wait_t, link);
        s_error(w->req, 503, "kbridge is shutting down");
        s_wait_free(w);
    }
    free(self);
}

const api_desc_t control_api = {
    .name = "control",
    .create = s_create_api,
    .destroy = s_destroy,
    .claims = s_claims,
    .refuse = s_refuse,
    .http = s_http,
};
