/*  registry - the service's kernels by id. */
#include "registry.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHUTDOWN_ALL_DEADLINE_MS 8000

struct _registry_t {
    uv_loop_t *loop;
    registry_config_t config;
    char *transport, *default_kernel, *scheme;
    json_t *env;
    kentry_t **live;
    size_t nlive, cap;
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
    self->config.autorestart = config->autorestart;
    self->config.max_kernels = config->max_kernels;
    self->config.heartbeat_timeout_ms = config->heartbeat_timeout_ms;
    self->config.cull_idle_ms = config->cull_idle_ms;
    self->config.cull_connected = config->cull_connected;
    uv_timer_init(loop, &self->reaper);
    uv_timer_init(loop, &self->deadline);
    uv_timer_init(loop, &self->cull);
    self->reaper.data = self->deadline.data = self->cull.data = self;
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
        free(self->live);
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
    uv_close((uv_handle_t *) &self->cull, NULL);
    uv_close((uv_handle_t *) &self->reaper, NULL);
    uv_close((uv_handle_t *) &self->deadline, s_free_registry);
}

kentry_t *registry_start(registry_t *self, const char *kernel_name, const registry_place_t *place,
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
    if (!entry) return NULL;
    if (self->nlive == self->cap) {
        size_t cap = self->cap ? self->cap * 2 : 16;
        kentry_t **grown = realloc(self->live, cap * sizeof *grown);
        if (!grown) {
            kentry_destroy(&entry);
            *err = KB_ENOMEM;
            return NULL;
        }
        self->live = grown;
        self->cap = cap;
    }
    self->live[self->nlive++] = entry;
    *err = KB_OK;
    return entry;
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
    kentry_t **entries;
    size_t n = registry_list(self, &entries);
    for (size_t i = 0; i < n; i++) kentry_shutdown(entries[i]);
    free(entries);
    uv_timer_start(&self->deadline, s_on_deadline, SHUTDOWN_ALL_DEADLINE_MS, 0);
    //  With no kernels at all, finish from the next loop turn.
    uv_timer_start(&self->reaper, s_reap, 0, 0);
}
