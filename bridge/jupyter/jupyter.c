/*  jupyter - Jupyter Server REST kernels/sessions API and channels WebSockets. */
#include "jupyter.h"
#include "../sandboxes/sandboxes.h"
#include "../apikit/hwait.h"
#include "channels.h"
#include "jreq.h"
#include "../kernels/kentry.h"
#include "../kernels/registry.h"
#include "../http/api.h"
#include "../../base/jx.h"
#include "../../base/klist.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"
#include "../../kernelmgr/zwatch.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

//  The Jupyter Server REST API version these routes follow.
#define JUPYTER_API_VERSION "2.0.0"

typedef struct {
    klist_t link;
    char id[37];
    char kernel_id[64];
    json_t *model;  //  {path, name, type}
} jsess_t;

typedef struct {
    klist_t link;
    channels_t *conn;
} jlink_t;

typedef struct _jupyter_t jupyter_t;
struct _jupyter_t {
    uv_loop_t *loop;
    registry_t *registry;
    sandboxes_t *sandboxes;
    const config_t *config;
    char started[32];
    char last_request[32];
    klist_t sessions;  //  jsess_t
    klist_t conns;     //  jlink_t
    int nconns;
};

static registry_t *s_registry(jupyter_t *self)
{
    return self->registry;
}

//  Jupyter clients see the default sandbox's kernels: the others have no channels.
static kentry_t *s_kernel(jupyter_t *self, const char *id)
{
    kentry_t *entry = registry_find(s_registry(self), id);
    return entry && sandbox_has_kernel(sandboxes_default(self->sandboxes), entry) ? entry : NULL;
}

static size_t s_count_channels(jupyter_t *self, kentry_t *entry);

//  Jupyter Server's kernel model: {id, name, last_activity, execution_state, connections}.
//  Jupyter Server has no state for a kernel whose heartbeat stopped; "unknown" is one
//  that JupyterLab's Kernel.Status has.
static json_t *s_model(jupyter_t *self, kentry_t *entry)
{
    kernel_t *k = kentry_kernel(entry);
    const char *state = kentry_state_name(entry);
    if (strcmp(state, "unresponsive") == 0) state = "unknown";
    return json_pack("{s:s, s:s, s:s, s:s, s:i}", "id", kernel_id(k), "name", kernel_name(k),
                     "last_activity", kentry_last_activity(entry), "execution_state", state,
                     "connections", (int) s_count_channels(self, entry));
}

// ---------------------------------------------------------------------------------------
//  Kernelspecs

static json_t *s_spec_model(const kspec_t *spec)
{
    json_t *resources = json_object();
    const char *key;
    json_t *file;
    json_object_foreach(kspec_resources(spec), key, file)
    {
        char url[512];
        snprintf(url, sizeof url, "/kernelspecs/%s/%s", kspec_name(spec), json_string_value(file));
        json_object_set_new(resources, key, json_string(url));
    }
    return json_pack("{s:s, s:O, s:o}", "name", kspec_name(spec), "spec", kspec_json(spec),
                     "resources", resources);
}

static void s_kernelspecs(jupyter_t *self, hreq_t *req)
{
    kspec_t **specs;
    size_t n = kspec_list(&specs);
    json_t *all = json_object();
    for (size_t i = 0; i < n; i++) json_object_set_new(all, kspec_name(specs[i]), s_spec_model(specs[i]));
    kspec_list_destroy(&specs, n);
    hreq_reply_json(req, 200, json_pack("{s:s, s:o}", "default", registry_default_kernel(s_registry(self)),
                                        "kernelspecs", all));
}

//  /kernelspecs/{name}/{file}: only files the spec lists as resources are served.
static void s_kernelspec_file(hreq_t *req, const char *rest)
{
    char name[256];
    const char *slash = strchr(rest, '/');
    if (!slash || (size_t) (slash - rest) >= sizeof name) {
        hreq_reply_error(req, 404, "Not Found");
        return;
    }
    snprintf(name, sizeof name, "%.*s", (int) (slash - rest), rest);
    const char *file = slash + 1;
    kspec_t *spec = kspec_find(name, NULL);
    bool listed = false;
    const char *key;
    json_t *value;
    if (spec)
        json_object_foreach(kspec_resources(spec), key, value) listed |= strcmp(json_string_value(value), file) == 0;
    if (!listed) {
        kspec_destroy(&spec);
        hreq_reply_error(req, 404, "Not Found");
        return;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", kspec_resource_dir(spec), file);
    kspec_destroy(&spec);
    FILE *f = fopen(path, "rb");
    if (!f) {
        hreq_reply_error(req, 404, "Not Found");
        return;
    }
    char *data = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[8192];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && len < (4u << 20)) {
        if (len + n > cap) {
            cap = (len + n) * 2;
            char *grown = realloc(data, cap);
            if (!grown) break;
            data = grown;
        }
        memcpy(data + len, chunk, n);
        len += n;
    }
    fclose(f);
    const char *dot = strrchr(file, '.');
    const char *type = !dot ? "application/octet-stream"
                     : strcmp(dot, ".png") == 0 ? "image/png"
                     : strcmp(dot, ".svg") == 0 ? "image/svg+xml"
                     : strcmp(dot, ".js") == 0 ? "application/javascript"
                     : strcmp(dot, ".css") == 0 ? "text/css" : "application/octet-stream";
    hreq_reply(req, 200, type, data ? data : "", len);
    free(data);
}

// ---------------------------------------------------------------------------------------
//  Kernels

static void s_reply_not_found(hreq_t *req, const char *what, const char *id)
{
    char message[256];
    snprintf(message, sizeof message, "%s does not exist: %.100s", what, id);
    hreq_reply_error(req, 404, message);
}

//  The cwd for a kernel started for a notebook path: the path's directory under ours.
static int s_cwd_for_path(const char *path, char *cwd, size_t size)
{
    if (!path || !*path) return 0;
    if (path[0] == '/' || strstr(path, "..")) return -1;
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    struct stat st;
    if (stat(buf, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(cwd, size, "%s", buf);
        return 1;
    }
    char *dir = dirname(buf);
    if (strcmp(dir, ".") != 0 && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(cwd, size, "%s", dir);
        return 1;
    }
    return 0;
}

//  The request's body as kind (jreq.h); on failure the 400 is sent and false returned.
static bool s_parse_body(hreq_t *req, jreq_kind_t kind, jreq_t *out)
{
    char why[256];
    size_t len;
    const char *body = hreq_body(req, &len);
    if (jreq_parse(kind, body, len, out, why, sizeof why) == 0) return true;
    hreq_reply_error(req, 400, why);
    jreq_free(out);
    return false;
}

//  session_name: the notebook path a session's kernel serves, given to it as
//  JPY_SESSION_NAME as Jupyter Server does (NULL for a bare kernel).
static kentry_t *s_start(jupyter_t *self, hreq_t *req, const char *name, const char *path,
                         const char *session_name)
{
    char cwd[PATH_MAX];
    int has_cwd = s_cwd_for_path(path, cwd, sizeof cwd);
    if (has_cwd < 0) {
        hreq_reply_error(req, 400, "path must be relative to the server's directory");
        return NULL;
    }
    int err;
    json_t *env = session_name && *session_name ? json_pack("{s:s}", "JPY_SESSION_NAME", session_name) : NULL;
    kentry_t *entry = sandbox_start_kernel(sandboxes_default(self->sandboxes), name,
                                           has_cwd ? cwd : NULL, env, &err);
    json_decref(env);
    if (!entry) {
        char message[256];
        if (err == KB_ENOTFOUND) {
            snprintf(message, sizeof message, "No such kernel named %.64s", name ? name : "(default)");
            hreq_reply_error(req, 404, message);
        } else if (err == KB_ELIMIT) {
            snprintf(message, sizeof message, "%zu kernels are running, the most this server allows "
                     "(--max-kernels)", registry_max_kernels(s_registry(self)));
            hreq_add_header(req, "retry-after", "5");
            hreq_reply_error(req, 503, message);
        } else {
            snprintf(message, sizeof message, "Kernel failed to start: %s", kb_strerror(err));
            hreq_reply_error(req, 500, message);
        }
    }
    return entry;
}

static void s_kernels_post(jupyter_t *self, hreq_t *req)
{
    jreq_t body;
    if (!s_parse_body(req, JREQ_KERNEL_POST, &body)) return;
    kentry_t *entry = s_start(self, req, body.name, body.path, NULL);
    jreq_free(&body);
    if (!entry) return;
    char location[128];
    snprintf(location, sizeof location, "/api/kernels/%s", kentry_id(entry));
    hreq_add_header(req, "location:", location);
    hreq_reply_json(req, 201, s_model(self, entry));
}

enum { WAIT_RESTART, WAIT_DELETE };

static void s_reply_transition(hreq_t *req, kentry_t *entry, kwait_result_t result, int op, void *arg)
{
    jupyter_t *self = arg;
    if (op == WAIT_DELETE) {
        hreq_reply(req, 204, NULL, NULL, 0);
    } else if (result == KWAIT_READY) {
        hreq_reply_json(req, 200, s_model(self, entry));
    } else {
        char message[256];
        snprintf(message, sizeof message, "Kernel restart failed: %s", kernel_exit_reason(kentry_kernel(entry)));
        hreq_reply_error(req, 500, message);
    }
}

static void s_kernels(jupyter_t *self, hreq_t *req, const char *rest)
{
    hmethod_t m = hreq_method(req);
    if (*rest == '\0') {
        if (m == HM_GET) {
            kentry_t **entries;
            size_t n = sandbox_kernels(sandboxes_default(self->sandboxes), &entries);
            json_t *list = json_array();
            for (size_t i = 0; i < n; i++)
                json_array_append_new(list, s_model(self, entries[i]));
            free(entries);
            hreq_reply_json(req, 200, list);
        } else if (m == HM_POST) {
            s_kernels_post(self, req);
        } else {
            hreq_reply_error(req, 405, "Method Not Allowed");
        }
        return;
    }
    char id[128];
    const char *slash = strchr(rest, '/');
    size_t idlen = slash ? (size_t) (slash - rest) : strlen(rest);
    snprintf(id, sizeof id, "%.*s", (int) (idlen < sizeof id ? idlen : sizeof id - 1), rest);
    const char *action = slash ? slash + 1 : "";
    kentry_t *entry = kb_is_kernel_id(id) ? s_kernel(self, id) : NULL;
    if (!entry) {
        s_reply_not_found(req, "Kernel", id);
        return;
    }
    if (*action == '\0' && m == HM_GET) {
        hreq_reply_json(req, 200, s_model(self, entry));
    } else if (*action == '\0' && m == HM_DELETE) {
        hwait_start(req, entry, s_reply_transition, WAIT_DELETE, self);
        kentry_shutdown(entry);
    } else if (strcmp(action, "interrupt") == 0 && m == HM_POST) {
        int rc = kentry_interrupt(entry);
        if (rc) hreq_reply_error(req, 500, kb_strerror(rc));
        else hreq_reply(req, 204, NULL, NULL, 0);
    } else if (strcmp(action, "restart") == 0 && m == HM_POST) {
        hwait_start(req, entry, s_reply_transition, WAIT_RESTART, self);
        //  Refused only while shutting down; the waiter then hears of the shutdown.
        kentry_restart(entry);
    } else if (strcmp(action, "channels") == 0) {
        hreq_reply_error(req, 400, "channels is a WebSocket endpoint: send an Upgrade");
    } else if (*action == '\0' || strcmp(action, "interrupt") == 0 || strcmp(action, "restart") == 0) {
        hreq_reply_error(req, 405, "Method Not Allowed");
    } else {
        hreq_reply_error(req, 404, "Not Found");
    }
}

// ---------------------------------------------------------------------------------------
//  Sessions

static void s_prune_sessions(jupyter_t *self)
{
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->sessions)
    {
        jsess_t *gone = klist_entry(it, jsess_t, link);
        if (s_kernel(self, gone->kernel_id)) continue;
        klist_remove(&gone->link);
        json_decref(gone->model);
        free(gone);
    }
}

static json_t *s_session_model(jupyter_t *self, jsess_t *s)
{
    json_t *model = json_deep_copy(s->model);
    json_object_set_new(model, "id", json_string(s->id));
    kentry_t *entry = s_kernel(self, s->kernel_id);
    json_object_set_new(model, "kernel", entry ? s_model(self, entry) : json_null());
    const char *type = json_string_value(json_object_get(s->model, "type"));
    if (type && strcmp(type, "notebook") == 0)
        json_object_set_new(model, "notebook", json_pack("{s:O, s:O}", "path", json_object_get(s->model, "path"),
                                                         "name", json_object_get(s->model, "name")));
    return model;
}

static jsess_t *s_find_session(jupyter_t *self, const char *id)
{
    klist_t *it;
    klist_foreach(it, &self->sessions)
    {
        jsess_t *s = klist_entry(it, jsess_t, link);
        if (strcmp(s->id, id) == 0) return s;
    }
    return NULL;
}

//  Pick the kernel for a session from {"kernel": {"id"} or {"name"}}: attach or start.
static kentry_t *s_session_kernel(jupyter_t *self, hreq_t *req, const jreq_t *body, const char *path)
{
    if (body->kernel_why) {
        hreq_reply_error(req, 400, body->kernel_why);
        return NULL;
    }
    const char *kid = body->kernel_id, *name = body->kernel_name;
    if (kid) {
        kentry_t *entry = s_kernel(self, kid);
        if (!entry) s_reply_not_found(req, "Kernel", kid);
        return entry;
    }
    return s_start(self, req, name, path, path);
}

static void s_sessions_post(jupyter_t *self, hreq_t *req)
{
    jreq_t body;
    if (!s_parse_body(req, JREQ_SESSION_POST, &body)) return;
    const char *path = body.path, *name = body.name, *type = body.type;
    s_prune_sessions(self);
    //  As Jupyter Server: a session for a path that already has one is that session.
    jsess_t *s = NULL;
    klist_t *it;
    klist_foreach(it, &self->sessions)
    {
        jsess_t *other = klist_entry(it, jsess_t, link);
        const char *p = json_string_value(json_object_get(other->model, "path"));
        if (path && p && strcmp(p, path) == 0) s = other;
    }
    if (!s) {
        kentry_t *entry = s_session_kernel(self, req, &body, path);
        if (!entry) {
            jreq_free(&body);
            return;
        }
        s = calloc(1, sizeof *s);
        if (!s) {
            jreq_free(&body);
            hreq_reply_error(req, 500, "out of memory");
            return;
        }
        kb_uuid4(s->id);
        snprintf(s->kernel_id, sizeof s->kernel_id, "%s", kentry_id(entry));
        s->model = json_pack("{s:s, s:s, s:s}", "path", path ? path : "", "name", name ? name : "",
                             "type", type);
        klist_init(&s->link);
        klist_push_front(&self->sessions, &s->link);
    }
    jreq_free(&body);
    char location[128];
    snprintf(location, sizeof location, "/api/sessions/%s", s->id);
    hreq_add_header(req, "location:", location);
    hreq_reply_json(req, 201, s_session_model(self, s));
}

static void s_sessions(jupyter_t *self, hreq_t *req, const char *rest)
{
    hmethod_t m = hreq_method(req);
    s_prune_sessions(self);
    if (*rest == '\0') {
        if (m == HM_GET) {
            json_t *list = json_array();
            klist_t *it;
            klist_foreach(it, &self->sessions)
            {
                json_array_append_new(list, s_session_model(self, klist_entry(it, jsess_t, link)));
            }
            hreq_reply_json(req, 200, list);
        } else if (m == HM_POST) {
            s_sessions_post(self, req);
        } else {
            hreq_reply_error(req, 405, "Method Not Allowed");
        }
        return;
    }
    jsess_t *s = s_find_session(self, rest);
    if (!s) {
        s_reply_not_found(req, "Session", rest);
        return;
    }
    if (m == HM_GET) {
        hreq_reply_json(req, 200, s_session_model(self, s));
    } else if (m == HM_PATCH) {
        jreq_t body;
        if (!s_parse_body(req, JREQ_SESSION_PATCH, &body)) return;
        json_object_update(s->model, body.patch);
        if (body.has_kernel) {
            //  A new kernel replaces the old one, which is shut down (as Jupyter Server).
            kentry_t *old = s_kernel(self, s->kernel_id);
            kentry_t *entry = s_session_kernel(self, req, &body, json_string_value(json_object_get(s->model, "path")));
            if (!entry) {
                jreq_free(&body);
                return;
            }
            snprintf(s->kernel_id, sizeof s->kernel_id, "%s", kentry_id(entry));
            if (old && old != entry) kentry_shutdown(old);
        }
        jreq_free(&body);
        hreq_reply_json(req, 200, s_session_model(self, s));
    } else if (m == HM_DELETE) {
        kentry_t *entry = s_kernel(self, s->kernel_id);
        klist_remove(&s->link);
        json_decref(s->model);
        free(s);
        if (entry) {
            hwait_start(req, entry, s_reply_transition, WAIT_DELETE, self);
            kentry_shutdown(entry);
        } else {
            hreq_reply(req, 204, NULL, NULL, 0);
        }
    } else {
        hreq_reply_error(req, 405, "Method Not Allowed");
    }
}

// ---------------------------------------------------------------------------------------
//  Routing

static void s_http(void *api, hreq_t *req)
{
    jupyter_t *self = api;
    const char *path = hreq_path(req);
    if (strcmp(path, "/api/status") != 0) kb_now_iso(self->last_request);
    hmethod_t m = hreq_method(req);
    //  Trailing slashes are tolerated, as Tornado does.
    char clean[1024];
    snprintf(clean, sizeof clean, "%s", path);
    size_t n = strlen(clean);
    while (n > 1 && clean[n - 1] == '/') clean[--n] = '\0';
    if (strcmp(clean, "/api") == 0 && m == HM_GET) {
        hreq_reply_json(req, 200, json_pack("{s:s, s:s}", "version", JUPYTER_API_VERSION, "kbridge", PROJECT_VERSION));
    } else if (strcmp(clean, "/api/status") == 0 && m == HM_GET) {
        //  As Jupyter Server: the latest of API activity and kernel activity, which stays
        //  when the kernels are gone (idle culling reads it).
        const char *last = self->last_request;
        const char *kernels = registry_last_activity(s_registry(self));
        if (strcmp(kernels, last) > 0) last = kernels;
        json_t *status = json_pack("{s:i, s:i, s:s, s:s, s:o}", "connections", self->nconns, "kernels",
                                   (int) registry_count(s_registry(self)), "last_activity", last,
                                   "started", self->started, "pool",
                                   sandboxes_pool_status(self->sandboxes));
        hreq_reply_json(req, 200, status);
    } else if (strcmp(clean, "/api/kernelspecs") == 0 && m == HM_GET) {
        s_kernelspecs(self, req);
    } else if (strncmp(clean, "/api/kernelspecs/", 17) == 0 && m == HM_GET) {
        kspec_t *spec = kspec_find(clean + 17, NULL);
        if (!spec) s_reply_not_found(req, "Kernel spec", clean + 17);
        else hreq_reply_json(req, 200, s_spec_model(spec));
        kspec_destroy(&spec);
    } else if (strncmp(clean, "/kernelspecs/", 13) == 0 && m == HM_GET) {
        s_kernelspec_file(req, clean + 13);
    } else if (strcmp(clean, "/api/kernels") == 0 || strncmp(clean, "/api/kernels/", 13) == 0) {
        s_kernels(self, req, clean[12] == '/' ? clean + 13 : "");
    } else if (strcmp(clean, "/api/sessions") == 0 || strncmp(clean, "/api/sessions/", 14) == 0) {
        s_sessions(self, req, clean[13] == '/' ? clean + 14 : "");
    } else {
        hreq_reply_error(req, 404, "Not Found");
    }
}

//  If path is /api/kernels/{id}/channels, copy the id into kernel_id and return true.
static bool s_channels_path(const char *path, char *kernel_id, size_t size)
{
    if (strncmp(path, "/api/kernels/", 13) != 0) return false;
    const char *id = path + 13;
    const char *slash = strchr(id, '/');
    if (!slash || strcmp(slash, "/channels") != 0) return false;
    size_t n = (size_t) (slash - id);
    if (n == 0 || n >= size) return false;
    snprintf(kernel_id, size, "%.*s", (int) n, id);
    return true;
}

static size_t s_count_channels(jupyter_t *self, kentry_t *entry)
{
    size_t n = 0;
    klist_t *it;
    klist_foreach(it, &self->conns)
    {
        if (channels_kentry(klist_entry(it, jlink_t, link)->conn) == entry) n++;
    }
    return n;
}

static size_t s_count_connections(kentry_t *entry, void *arg)
{
    return s_count_channels(arg, entry);
}

static int s_ws_check(void *api, hreq_t *req, char *why, size_t size)
{
    jupyter_t *self = api;
    char kernel_id[128];
    if (!s_channels_path(hreq_path(req), kernel_id, sizeof kernel_id)) {
        snprintf(why, size, "No WebSocket endpoint here");
        return 404;
    }
    if (!kb_is_kernel_id(kernel_id) || !s_kernel(self, kernel_id)) {
        snprintf(why, size, "Kernel does not exist: %.64s", kernel_id);
        return 404;
    }
    if (self->config->max_channels_per_kernel &&
        s_count_channels(self, s_kernel(self, kernel_id)) >= self->config->max_channels_per_kernel) {
        snprintf(why, size, "kernel %.64s has %zu channels connections (--max-channels-per-kernel)",
                 kernel_id, self->config->max_channels_per_kernel);
        return 503;
    }
    //  Its three sockets (shell, control, stdin): refused now, while a status can be said.
    if (zwatch_socket_room(3) != KB_OK) {
        snprintf(why, size, "out of ZeroMQ sockets or file descriptors for a channels connection "
                            "(raise ulimit -n, or lower --max-connections)");
        return 503;
    }
    return 0;
}

static void s_on_conn_gone(channels_t *conn, void *arg)
{
    jupyter_t *self = arg;
    klist_t *it;
    klist_foreach(it, &self->conns)
    {
        jlink_t *l = klist_entry(it, jlink_t, link);
        if (l->conn != conn) continue;
        klist_remove(&l->link);
        free(l);
        self->nconns--;
        return;
    }
}

static void s_ws_accept(void *api, wsconn_t *conn, hreq_t *req, const char *subprotocol)
{
    jupyter_t *self = api;
    wsframing_proto_t proto = subprotocol ? WSFRAMING_V1 : WSFRAMING_LEGACY;
    char kernel_id[128], session_id[128];
    kentry_t *entry = NULL;
    if (s_channels_path(hreq_path(req), kernel_id, sizeof kernel_id)) entry = s_kernel(self, kernel_id);
    if (!entry) {
        wsconn_close(conn, 1011, "kernel gone");
        return;
    }
    if (hreq_query(req, "session_id", session_id, sizeof session_id) != KB_OK) session_id[0] = '\0';
    //  One connection per (kernel, session_id): two DEALERs with one routing id collide.
    klist_t *it;
    klist_foreach(it, &self->conns)
    {
        jlink_t *l = klist_entry(it, jlink_t, link);
        if (*session_id && channels_kentry(l->conn) == entry &&
            strcmp(channels_session_id(l->conn), session_id) == 0) {
            klog_info("kernel %.8s: replacing stale connection for session %s", kernel_id, session_id);
            channels_close(l->conn, 1000, "replaced by a newer connection with the same session_id");
        }
    }
    jlink_t *link = malloc(sizeof *link);
    if (!link) {
        wsconn_close(conn, 1011, "out of memory");
        return;
    }
    channels_events_t events = {s_on_conn_gone};
    //  On failure channels_new has closed the connection with a reason.
    channels_t *jc = channels_new(self->loop, entry, conn, session_id, proto, &events, self);
    if (!jc) {
        free(link);
        return;
    }
    link->conn = jc;
    klist_init(&link->link);
    klist_push_front(&self->conns, &link->link);
    self->nconns++;
}

static void *s_create(const api_ctx_t *ctx)
{
    jupyter_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = ctx->loop;
    self->registry = ctx->registry;
    self->sandboxes = ctx->sandboxes;
    self->config = ctx->config;
    klist_init(&self->sessions);
    klist_init(&self->conns);
    kb_now_iso(self->started);
    snprintf(self->last_request, sizeof self->last_request, "%s", self->started);
    //  (The registry goes before the APIs at shutdown, and stops culling when it does.)
    registry_set_connection_counter(self->registry, s_count_connections, self);
    return self;
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    jupyter_t *self = *api_p;
    *api_p = NULL;
    while (!klist_empty(&self->conns)) {
        jlink_t *l = klist_entry(klist_first(&self->conns), jlink_t, link);
        klist_remove(&l->link);
        channels_destroy(&l->conn);
        free(l);
    }
    while (!klist_empty(&self->sessions)) {
        jsess_t *s = klist_entry(klist_first(&self->sessions), jsess_t, link);
        klist_remove(&s->link);
        json_decref(s->model);
        free(s);
    }
    free(self);
}

static bool s_claims(void *api, hreq_t *req)
{
    (void) api;
    const char *path = hreq_path(req);
    return (strncmp(path, "/api", 4) == 0 && (path[4] == '\0' || path[4] == '/')) ||
           strncmp(path, "/kernelspecs/", 13) == 0;
}

static bool s_is_public(void *api, hreq_t *req)
{
    (void) api;
    //  As Jupyter Server: the API version is no secret.
    const char *path = hreq_path(req);
    return hreq_method(req) == HM_GET && (strcmp(path, "/api") == 0 || strcmp(path, "/api/") == 0);
}

static const char *const s_subprotocols[] = {"v1.kernel.websocket.jupyter.org", NULL};

const api_desc_t jupyter_api = {
    .name = "jupyter",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .is_public = s_is_public,
    .http = s_http,
    .subprotocols = s_subprotocols,
    .ws_check = s_ws_check,
    .ws_accept = s_ws_accept,
};
