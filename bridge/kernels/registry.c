/*  registry - the service's kernels by id. */
#include "registry.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../metrics/metrics.h"
#include "../../base/kutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SHUTDOWN_ALL_DEADLINE_MS 8000

struct _registry_t {
    uv_loop_t *loop;
    registry_config_t config;
    char *transport, *default_kernel, *scheme;
    json_t *env;
    kentry_t **live;
    size_t nlive, cap;
    kentry_t **pool;  //  warm, unclaimed: listed by nobody, culled never
    size_t npool, pool_cap;
    size_t claimed;  //  warm kernels taken, ever
    json_t *pooled;  //  kernelspec name -> claims (an integer): the kernelspecs pools keep
    void (*pool_changed)(void *arg);
    void *pool_arg;
    uv_timer_t pool_tell;  //  the hook runs from its own turn, never inside a caller's
    kentry_t **dead;  //  shut down, to be reaped
    size_t ndead, dead_cap;
    uv_timer_t reaper, deadline, cull;
    char last_activity[32];  //  latest activity of kernels already gone
    size_t (*count_connections)(kentry_t *entry, void *arg);
    void *count_arg;
    bool closing;
    void (*all_done)(void *arg);
    void *all_done_arg;
};

static void s_reap(uv_timer_t *timer)
{
    registry_t *self = timer->data;
    for (size_t i = 0; i < self->ndead; i++) kentry_destroy(&self->dead[i]);
    self->ndead = 0;
    if (self->all_done && self->nlive == 0) {
        uv_timer_stop(&self->deadline);
        void (*done)(void *) = self->all_done;
        self->all_done = NULL;
        done(self->all_done_arg);
    }
}

static void s_pool_tell(uv_timer_t *timer)
{
    registry_t *self = timer->data;
    if (self->pool_changed && !self->closing && !self->all_done) self->pool_changed(self->pool_arg);
}

static void s_pool_changed(registry_t *self)
{
    if (self->pool_changed && !self->closing) uv_timer_start(&self->pool_tell, s_pool_tell, 0, 0);
}

static void s_on_shutdown(kentry_t *entry, void *arg)
{
    registry_t *self = arg;
    const char *seen = runner_last_activity(kentry_runner(entry));
    if (strcmp(seen, self->last_activity) > 0) snprintf(self->last_activity, sizeof self->last_activity, "%s", seen);
    for (size_t i = 0; i < self->nlive; i++) {
        if (self->live[i] != entry) continue;
        memmove(&self->live[i], &self->live[i + 1], (self->nlive - i - 1) * sizeof *self->live);
        self->nlive--;
        break;
    }
    for (size_t i = 0; i < self->npool; i++) {
        if (self->pool[i] != entry) continue;
        memmove(&self->pool[i], &self->pool[i + 1], (self->npool - i - 1) * sizeof *self->pool);
        self->npool--;
        s_pool_changed(self);
        break;
    }
    if (self->ndead == self->dead_cap) {
        size_t cap = self->dead_cap ? self->dead_cap * 2 : 8;
        kentry_t **grown = realloc(self->dead, cap * sizeof *grown);
        if (!grown) return;  //  leaks one entry rather than freeing it inside its callback
        self->dead = grown;
        self->dead_cap = cap;
    }
    self->dead[self->ndead++] = entry;
    uv_timer_start(&self->reaper, s_reap, 0, 0);
}

//  Jupyter Server's culling: a kernel idle (not busy, nothing queued) for cull_idle_ms
//  is shut down, unless clients are connected to it and cull_connected is off.
static void s_cull(uv_timer_t *timer)
{
    registry_t *self = timer->data;
    if (self->closing || self->all_done) return;
    uint64_t now = uv_now(self->loop);
    size_t n = 0;
    kentry_t **idle = self->nlive ? calloc(self->nlive, sizeof *idle) : NULL;
    if (!idle) return;
    for (size_t i = 0; i < self->nlive; i++) {
        kentry_t *e = self->live[i];
        runner_t *r = kentry_runner(e);
        if (kentry_shutting_down(e) || !kentry_ready(e) || runner_pending(r) ||
            kernel_state(kentry_kernel(e)) != KERNEL_IDLE)
            continue;
        if (now - runner_active_at(r) < self->config.cull_idle_ms) continue;
        if (!self->config.cull_connected && self->count_connections &&
            self->count_connections(e, self->count_arg))
            continue;
        idle[n++] = e;
    }
    //  Shut down after the scan: each one leaves the live list.
    for (size_t i = 0; i < n; i++) {
        klog_info("culling kernel %s: idle for %llu s (--cull-idle-timeout)", kentry_id(idle[i]),
                  (unsigned long long) ((now - runner_active_at(kentry_runner(idle[i]))) / 1000));
        kentry_shutdown(idle[i]);
    }
    free(idle);
}

void registry_set_connection_counter(registry_t *self, size_t (*count)(kentry_t *entry, void *arg),
                                     void *arg)
{
    self->count_connections = count;
    self->count_arg = arg;
}

registry_t *registry_new(uv_loop_t *loop, const registry_config_t *config)
{
    registry_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = loop;
    self->transport = kb_strdup(config->transport ? config->transport : "tcp");
    self->scheme = kb_strdup(config->signature_scheme);
    self->default_kernel = kb_strdup(config->default_kernel ? config->default_kernel : "python3");
    self->env = config->env ? json_deep_copy(config->env) : json_object();
    self->pooled = json_object();
    self->config.autorestart = config->autorestart;
    self->config.max_kernels = config->max_kernels;
    self->config.heartbeat_timeout_ms = config->heartbeat_timeout_ms;
    self->config.cull_idle_ms = config->cull_idle_ms;
    self->config.cull_connected = config->cull_connected;
    uv_timer_init(loop, &self->reaper);
    uv_timer_init(loop, &self->deadline);
    uv_timer_init(loop, &self->cull);
    uv_timer_init(loop, &self->pool_tell);
    self->reaper.data = self->deadline.data = self->cull.data = self->pool_tell.data = self;
    if (self->config.cull_idle_ms) {
        //  Checked a few times per timeout (Jupyter Server's cull_interval, scaled).
        uint64_t every = self->config.cull_idle_ms / 4;
        if (every < 500) every = 500;
        if (every > 60000) every = 60000;
        uv_timer_start(&self->cull, s_cull, every, every);
    }
    return self;
}

static void s_free_registry(uv_handle_t *handle)
{
    registry_t *self = handle->data;
    if (handle == (uv_handle_t *) &self->deadline) {
        free(self->transport);
        free(self->scheme);
        free(self->default_kernel);
        json_decref(self->env);
        json_decref(self->pooled);
        free(self->live);
        free(self->pool);
        free(self->dead);
        free(self);
    }
}

void registry_destroy(registry_t **self_p)
{
    if (!self_p || !*self_p) return;
    registry_t *self = *self_p;
    *self_p = NULL;
    self->closing = true;
    self->all_done = NULL;
    for (size_t i = 0; i < self->ndead; i++) kentry_destroy(&self->dead[i]);
    self->ndead = 0;
    while (self->nlive) {
        kentry_t *entry = self->live[--self->nlive];
        kentry_destroy(&entry);
    }
    while (self->npool) {
        kentry_t *entry = self->pool[--self->npool];
        kentry_destroy(&entry);
    }
    uv_close((uv_handle_t *) &self->cull, NULL);
    uv_close((uv_handle_t *) &self->pool_tell, NULL);
    uv_close((uv_handle_t *) &self->reaper, NULL);
    uv_close((uv_handle_t *) &self->deadline, s_free_registry);
}

static bool s_grow(kentry_t ***list, size_t n, size_t *cap)
{
    if (n < *cap) return true;
    size_t grown_cap = *cap ? *cap * 2 : 16;
    kentry_t **grown = realloc(*list, grown_cap * sizeof *grown);
    if (!grown) return false;
    *list = grown;
    *cap = grown_cap;
    return true;
}

static kentry_t *s_spawn(registry_t *self, const char *kernel_name, const registry_place_t *place,
                         int *err)
{
    kspec_t *spec = kspec_find(kernel_name ? kernel_name : self->default_kernel, err);
    if (!spec) return NULL;
    json_t *merged = json_deep_copy(self->env);
    if (place->env) json_object_update(merged, place->env);
    kernel_opts_t opts;
    memset(&opts, 0, sizeof opts);
    opts.cwd = place->cwd;
    opts.user = place->user;
    opts.env = merged;
    opts.transport = self->transport;
    opts.signature_scheme = self->scheme;
    opts.sbx = place->sbx;
    opts.base_env = place->base_env;
    opts.autorestart = self->config.autorestart;
    opts.hb_timeout_ms = self->config.heartbeat_timeout_ms;
    kentry_events_t events = {s_on_shutdown};
    kentry_t *entry = kentry_new(self->loop, spec, &opts, &events, self, err);
    kspec_destroy(&spec);
    json_decref(merged);
    return entry;
}

static bool s_same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

//  R code for the same (IRkernel): setwd, Sys.setenv, Sys.unsetenv, inside local() so that
//  nothing is left in the global environment. JSON string literals are R string literals
//  (the runner's per-execution env code relies on the same).
static char *s_move_code_r(const char *cwd, json_t *set, json_t *unset)
{
    char *code = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&code, &size);
    if (!out) return NULL;
    bool ok = true;
    fputs("invisible(local({ ", out);
    if (cwd) {
        json_t *lit = json_string(cwd);
        char *c = lit ? jx_dumps(lit, false, NULL) : NULL;
        json_decref(lit);
        ok = ok && c;
        if (c) fprintf(out, "setwd(%s); ", c);
        free(c);
    }
    const char *key;
    json_t *value;
    size_t i = 0;
    json_object_foreach(set, key, value)
    {
        json_t *k = json_string(key);
        char *kl = k ? jx_dumps(k, false, NULL) : NULL, *vl = jx_dumps(value, false, NULL);
        json_decref(k);
        ok = ok && kl && vl;
        if (kl && vl) fprintf(out, "%s%s = %s", i++ ? ", " : "do.call(Sys.setenv, as.list(c(", kl, vl);
        free(kl);
        free(vl);
    }
    if (i) fputs("))); ", out);
    if (json_array_size(unset)) {
        char *ul = jx_dumps(unset, false, NULL);  //  ["A", "B"]: the brackets become c( )
        ok = ok && ul;
        if (ul) {
            size_t n = strlen(ul);
            fprintf(out, "Sys.unsetenv(c(%.*s)); ", n >= 2 ? (int) (n - 2) : 0, ul + 1);
        }
        free(ul);
    }
    fputs("}))", out);
    if (fclose(out) != 0 || !ok) {
        free(code);
        return NULL;
    }
    return code;
}

//  Python code that moves a running kernel from its process's environment and cwd to
//  those of a fresh start at the new place: what a fresh kernel would show (os.getcwd,
//  os.environ, IPython's directory history) and nothing more (no names in the user's
//  namespace, no history: it runs silent). NULL with *ok false: no recipe; NULL with *ok
//  true: nothing to do.
static char *s_move_code(const char *language, const char *cwd, json_t *from, json_t *to, bool *ok)
{
    *ok = false;
    json_t *set = json_object(), *unset = json_array();
    if (!set || !unset) {
        json_decref(set);
        json_decref(unset);
        return NULL;
    }
    const char *key;
    json_t *value;
    json_object_foreach(to, key, value)
    {
        json_t *was = json_object_get(from, key);
        if (!was || !json_equal(was, value)) json_object_set(set, key, value);
    }
    json_object_foreach(from, key, value) if (!json_object_get(to, key))
        json_array_append_new(unset, json_string(key));
    char *code = NULL;
    if (!cwd && !json_object_size(set) && !json_array_size(unset)) {
        *ok = true;
    } else if (strcasecmp(language, "python") == 0) {
        json_t *lit_cwd = cwd ? json_string(cwd) : json_null();
        char *c = jx_dumps(lit_cwd, false, NULL), *sv = jx_dumps(set, false, NULL),
             *uv = jx_dumps(unset, false, NULL);
        json_decref(lit_cwd);
        //  JSON string literals are Python string literals (quotes, backslashes, unicode);
        //  null is spelled None below.
        //  python -m puts the start's cwd first on sys.path: a fresh start there would.
        if (c && sv && uv &&
            asprintf(&code,
                     "%s%s%s%s%s__import__('os').environ.update(%s); "
                     "[__import__('os').environ.pop(k, None) for k in %s]; "
                     "[h.__setitem__(slice(None), [__import__('os').getcwd()]) for h in "
                     "[getattr(getattr(get_ipython(), 'history_manager', None), 'dir_hist', None)] "
                     "if isinstance(h, list)] if 'get_ipython' in globals() else None",
                     cwd ? "[__import__('sys').path.__setitem__(0, " : "", cwd ? c : "",
                     cwd ? ") for p in __import__('sys').path[:1] if p == __import__('os').getcwd()]; "
                           "__import__('os').chdir("
                         : "",
                     cwd ? c : "", cwd ? "); " : "", sv, uv) < 0)
            code = NULL;
        *ok = code != NULL;
        free(c);
        free(sv);
        free(uv);
    } else if (strcasecmp(language, "r") == 0) {
        code = s_move_code_r(cwd, set, unset);
        *ok = code != NULL;
    }
    json_decref(set);
    json_decref(unset);
    return code;
}

//  A warm kernel for place, moved there: same sandbox, kernelspec and user, ready and
//  idle, and either nothing to change or a language whose cwd and environment kbridge
//  knows how to change (in an isolated sandbox only the env: its cwd is checked by a
//  process start). NULL: none fits (the caller starts one).
static kentry_t *s_claim(registry_t *self, const char *spec_name, const registry_place_t *place)
{
    const char *name = spec_name ? spec_name : self->default_kernel;
    for (size_t i = 0; i < self->npool; i++) {
        kentry_t *entry = self->pool[i];
        kernel_t *k = kentry_kernel(entry);
        if (kentry_shutting_down(entry) || !kentry_ready(entry) || kernel_sbx(k) != place->sbx ||
            kernel_state(k) != KERNEL_IDLE || !kernel_heartbeat_ok(k) ||
            strcmp(kernel_name(k), name) != 0 || !s_same(kernel_user(k), place->user) ||
            runner_pending(kentry_runner(entry))) {
            klog_debug("pool: kernel %s does not fit (ready %d, same sandbox %d, state %d, user %d)",
                       kentry_id(entry), kentry_ready(entry), kernel_sbx(k) == place->sbx, kernel_state(k),
                       s_same(kernel_user(k), place->user));
            continue;
        }
        const char *old_cwd = kernel_cwd(k);
        char *real = NULL;
        if (place->cwd && !kernel_isolated(k)) {
            real = realpath(place->cwd, NULL);
            if (!real) return NULL;  //  a fresh start reports the bad cwd
        }
        const char *new_cwd = real ? real : place->cwd;
        bool cwd_moves = !s_same(old_cwd, new_cwd);
        if (cwd_moves && (kernel_isolated(k) || !new_cwd)) {
            free(real);
            continue;
        }
        json_t *merged = json_deep_copy(self->env);
        if (merged && place->env) json_object_update(merged, place->env);
        json_t *from = kernel_process_env(k);
        json_t *to = merged ? kernel_process_env_at(k, place->base_env, merged) : NULL;
        bool ok = false;
        char *code = from && to ? s_move_code(kernel_language(k), cwd_moves ? new_cwd : NULL, from, to, &ok)
                                : NULL;
        json_decref(from);
        json_decref(to);
        free(real);
        int rc = ok ? kernel_replace_place(k, place->cwd, place->base_env, merged) : KB_EINVAL;
        json_decref(merged);
        if (rc == KB_OK) rc = kentry_claim(entry, code);
        if (ok) klog_debug("pool: kernel %s: %s", kentry_id(entry), code ? "moving it (cwd, env)" : "nothing to move");
        free(code);
        if (!ok) {
            klog_debug("pool: kernel %s cannot be moved (language %s)", kentry_id(entry), kernel_language(k));
            continue;
        }
        if (rc != KB_OK) {
            //  Half moved: it cannot go back to the pool.
            klog_warn("pool: kernel %s could not be claimed (%s); shutting it down", kentry_id(entry),
                      kb_strerror(rc));
            kentry_shutdown(entry);
            return NULL;
        }
        memmove(&self->pool[i], &self->pool[i + 1], (self->npool - i - 1) * sizeof *self->pool);
        self->npool--;
        self->claimed++;
        s_pool_changed(self);
        return entry;
    }
    return NULL;
}

kentry_t *registry_start(registry_t *self, const char *spec_name, const registry_place_t *place,
                         int *err)
{
    int dummy;
    if (!err) err = &dummy;
    if (self->closing || self->all_done) {
        *err = KB_ECLOSED;
        return NULL;
    }
    if (self->config.max_kernels && self->nlive >= self->config.max_kernels) {
        klog_limited(KLOG_WARN, "refusing to start a kernel: %zu are alive (--max-kernels %zu)",
                     self->nlive, self->config.max_kernels);
        *err = KB_ELIMIT;
        return NULL;
    }
    if (!s_grow(&self->live, self->nlive, &self->cap)) {
        *err = KB_ENOMEM;
        return NULL;
    }
    kentry_t *entry = s_claim(self, spec_name, place);
    //  A miss only where a pool is kept (its hook is set) for this kernelspec.
    const char *name = spec_name ? spec_name : self->default_kernel;
    json_t *claims = self->pool_changed ? json_object_get(self->pooled, name) : NULL;
    if (claims) {
        metrics_pool_take("kernel", entry != NULL);
        metrics_pool_kernelspec_take(name, entry != NULL);
        if (entry) json_integer_set(claims, json_integer_value(claims) + 1);
    }
    if (entry) {
        klog_info("pool: kernel %s claimed (%s, %zu left warm)", kentry_id(entry),
                  kernel_name(kentry_kernel(entry)), self->npool);
    } else {
        entry = s_spawn(self, spec_name, place, err);
        if (!entry) return NULL;
    }
    self->live[self->nlive++] = entry;
    *err = KB_OK;
    return entry;
}

static void s_on_warmed(execution_t *execution, const exec_event_t *ev, void *arg)
{
    (void) execution;
    (void) arg;
    if (ev->kind == EXEC_EV_ERROR)
        klog_warn("pool: a warm kernel's first execution failed: %s: %s", ev->ename ? ev->ename : "?",
                  ev->evalue ? ev->evalue : "");
}

//  A no-op in the language, or NULL: none known.
static const char *s_noop_code(const char *language)
{
    if (strcasecmp(language, "python") == 0) return "None";
    if (strcasecmp(language, "r") == 0) return "invisible(NULL)";
    return NULL;
}

kentry_t *registry_prestart(registry_t *self, const char *kernel_name, const registry_place_t *place,
                            int *err)
{
    int dummy;
    if (!err) err = &dummy;
    if (self->closing || self->all_done) {
        *err = KB_ECLOSED;
        return NULL;
    }
    if (!s_grow(&self->pool, self->npool, &self->pool_cap)) {
        *err = KB_ENOMEM;
        return NULL;
    }
    kentry_t *entry = s_spawn(self, kernel_name, place, err);
    if (!entry) return NULL;
    //  A kernel's first execution pays one-time costs (IPython's: ~20 ms, half the first
    //  cell on a loaded machine) that would fall on the claimer's first cell: paid here,
    //  silent (no history, no execution count, no names), before it counts as ready.
    const char *noop = s_noop_code(kernel_language(kentry_kernel(entry)));
    if (noop) {
        run_opts_t opts;
        memset(&opts, 0, sizeof opts);
        opts.silent = true;
        opts.exec.stream_only = true;
        runner_execute(kentry_runner(entry), noop, &opts, s_on_warmed, NULL, NULL);
    }
    self->pool[self->npool++] = entry;
    *err = KB_OK;
    return entry;
}

size_t registry_pooled(const registry_t *self, const sbx_t *sbx, const char *spec_name,
                       size_t *ready)
{
    const char *name = spec_name ? spec_name : self->default_kernel;
    size_t n = 0, r = 0;
    for (size_t i = 0; i < self->npool; i++) {
        kentry_t *e = self->pool[i];
        kernel_t *k = kentry_kernel(e);
        if ((sbx && kernel_sbx(k) != sbx) || kentry_shutting_down(e) || strcmp(kernel_name(k), name) != 0)
            continue;
        n++;
        if (kentry_ready(e) && !runner_pending(kentry_runner(e))) r++;
    }
    if (ready) *ready = r;
    return n;
}

void registry_pool_prune(registry_t *self)
{
    //  Dead for good (start failed, or too many restarts): no use warm.
    for (size_t i = 0; i < self->npool; i++) {
        kentry_t *e = self->pool[i];
        if (!kentry_shutting_down(e) && kernel_state(kentry_kernel(e)) == KERNEL_DEAD) {
            klog_warn("pool: kernel %s is dead (%s); dropping it", kentry_id(e),
                      kernel_exit_reason(kentry_kernel(e)));
            kentry_shutdown(e);
        }
    }
}

bool registry_working(const registry_t *self)
{
    for (size_t i = 0; i < self->nlive; i++) {
        kentry_t *e = self->live[i];
        if (kentry_shutting_down(e)) continue;
        kernel_state_t st = kernel_state(kentry_kernel(e));
        if (st == KERNEL_STARTING || st == KERNEL_RESTARTING || st == KERNEL_BUSY ||
            runner_pending(kentry_runner(e)))
            return true;
    }
    return false;
}

size_t registry_pool_claims(const registry_t *self)
{
    return self->claimed;
}

size_t registry_pool_claims_of(const registry_t *self, const char *kernel_name)
{
    return (size_t) json_integer_value(json_object_get(self->pooled, kernel_name ? kernel_name : self->default_kernel));
}

int registry_pool_keeps(registry_t *self, const char *kernel_name)
{
    const char *name = kernel_name ? kernel_name : self->default_kernel;
    if (json_object_get(self->pooled, name)) return KB_OK;
    return json_object_set_new(self->pooled, name, json_integer(0)) == 0 ? KB_OK : KB_ENOMEM;
}

void registry_set_pool_hook(registry_t *self, void (*changed)(void *arg), void *arg)
{
    self->pool_changed = changed;
    self->pool_arg = arg;
}

kentry_t *registry_find(registry_t *self, const char *kernel_id)
{
    if (!kernel_id) return NULL;
    for (size_t i = 0; i < self->nlive; i++)
        if (!kentry_shutting_down(self->live[i]) && strcmp(kentry_id(self->live[i]), kernel_id) == 0)
            return self->live[i];
    return NULL;
}

size_t registry_list(registry_t *self, kentry_t ***entries)
{
    *entries = NULL;
    if (!self->nlive) return 0;
    *entries = malloc(self->nlive * sizeof **entries);
    if (!*entries) return 0;
    size_t n = 0;
    for (size_t i = 0; i < self->nlive; i++)
        if (!kentry_shutting_down(self->live[i])) (*entries)[n++] = self->live[i];
    return n;
}

size_t registry_list_in(registry_t *self, const sbx_t *sbx, kentry_t ***entries)
{
    size_t n = registry_list(self, entries);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (kernel_sbx(kentry_kernel((*entries)[i])) == sbx) (*entries)[kept++] = (*entries)[i];
    return kept;
}

void registry_kill_in(registry_t *self, const sbx_t *sbx)
{
    for (size_t i = 0; i < self->nlive;) {
        kentry_t *entry = self->live[i];
        if (kernel_sbx(kentry_kernel(entry)) != sbx) {
            i++;
            continue;
        }
        //  At once: the sandbox's agent, which its process belongs to, goes next.
        memmove(&self->live[i], &self->live[i + 1], (self->nlive - i - 1) * sizeof *self->live);
        self->nlive--;
        kentry_destroy(&entry);
    }
    for (size_t i = 0; i < self->npool;) {
        kentry_t *entry = self->pool[i];
        if (kernel_sbx(kentry_kernel(entry)) != sbx) {
            i++;
            continue;
        }
        memmove(&self->pool[i], &self->pool[i + 1], (self->npool - i - 1) * sizeof *self->pool);
        self->npool--;
        kentry_destroy(&entry);
    }
}

size_t registry_count(const registry_t *self)
{
    return self->nlive;
}

const char *registry_last_activity(const registry_t *self)
{
    const char *latest = self->last_activity;
    for (size_t i = 0; i < self->nlive; i++) {
        const char *seen = runner_last_activity(kentry_runner(self->live[i]));
        if (strcmp(seen, latest) > 0) latest = seen;
    }
    return latest;
}

size_t registry_max_kernels(const registry_t *self)
{
    return self->config.max_kernels;
}

const char *registry_default_kernel(const registry_t *self)
{
    return self->default_kernel;
}

static void s_on_deadline(uv_timer_t *timer)
{
    registry_t *self = timer->data;
    klog_warn("%zu kernel(s) did not shut down in time; killing them", self->nlive);
    while (self->nlive) {
        kentry_t *entry = self->live[--self->nlive];
        kentry_destroy(&entry);
    }
    uv_timer_start(&self->reaper, s_reap, 0, 0);
}

void registry_shutdown_all(registry_t *self, void (*done)(void *arg), void *arg)
{
    self->all_done = done;
    self->all_done_arg = arg;
    //  Warm kernels are nobody's: nothing to save, no reason to wait for them.
    while (self->npool) {
        kentry_t *entry = self->pool[--self->npool];
        kentry_destroy(&entry);
    }
    kentry_t **entries;
    size_t n = registry_list(self, &entries);
    for (size_t i = 0; i < n; i++) kentry_shutdown(entries[i]);
    free(entries);
    uv_timer_start(&self->deadline, s_on_deadline, SHUTDOWN_ALL_DEADLINE_MS, 0);
    //  With no kernels at all, finish from the next loop turn.
    uv_timer_start(&self->reaper, s_reap, 0, 0);
}
