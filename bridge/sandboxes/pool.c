/*  pool - warm kernels and sandboxes, refilled one at a time in the background. */
#include "pool.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"
#include "../metrics/metrics.h"

#include <stdlib.h>
#include <string.h>

//  After a claim, or between two refills: long enough for the request that took an entry
//  to be answered and its first cell to run before a new start takes the CPU.
#define REFILL_DELAY_MS 100
#define BACKOFF_MAX_MS 30000
//  A refill waits while kernels in use start or run, but not for ever (a cell that never
//  ends would starve the pool).
#define QUIET_WAIT_MS 100
#define QUIET_MAX_MS 5000

typedef struct {
    char *name;
    const template_t *tmpl;
} target_t;

//  Warm kernels of one kernelspec in the default sandbox, each with its own backoff: a
//  kernelspec that cannot start does not hold the others' refills back.
typedef struct {
    char *name;
    size_t n;
    unsigned failures;
    uint64_t retry_at;  //  uv_now before which it is not tried again
} ktarget_t;

struct _pool_t {
    sandboxes_t *table;
    uv_loop_t *loop;
    size_t per_template;
    ktarget_t *ktargets;  //  the default kernelspec first
    size_t nktargets;
    target_t *targets;
    size_t ntargets;
    sandbox_t **warm;  //  pooled sandboxes, starting or running
    size_t nwarm, warm_cap;
    uv_timer_t timer;
    //  The one refill in flight: a kernel until ready, or a sandbox until running.
    bool busy;
    int refilling;  //  the ktarget being refilled, -1: a warm sandbox's kernel
    kwait_t kwait;
    sandbox_wait_t swait;
    unsigned failures;
    uint64_t waiting_since;  //  uv_now when a due refill first found the service working
    size_t sandboxes_claimed;
    bool closing;
};

static void s_tick(uv_timer_t *timer);
static void s_collect(void *arg);

static void s_schedule(pool_t *self, uint64_t ms)
{
    if (self->closing) return;
    uv_timer_start(&self->timer, s_tick, ms, 0);
}

static uint64_t s_backoff(unsigned failures)
{
    if (!failures) return REFILL_DELAY_MS;
    uint64_t ms = 1000ull << (failures > 5 ? 5 : failures - 1);
    return ms > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms;
}

static uint64_t s_delay(const pool_t *self)
{
    return s_backoff(self->failures);
}

static void s_on_kernel(kwait_t *wait, kentry_t *entry, kwait_result_t result)
{
    pool_t *self = wait->arg;
    self->busy = false;
    ktarget_t *kt = self->refilling >= 0 ? &self->ktargets[self->refilling] : NULL;
    unsigned *failures = kt ? &kt->failures : &self->failures;
    if (result == KWAIT_READY) {
        *failures = 0;
        klog_info("pool: kernel %s warm (%s)", kentry_id(entry), kernel_name(kentry_kernel(entry)));
    } else if (result == KWAIT_DEAD && !self->closing) {
        //  (KWAIT_SHUTDOWN: put down on purpose, with its sandbox or at shutdown.)
        (*failures)++;
        klog_warn("pool: a warm %s kernel did not start (%s); next try in %llu ms",
                  kernel_name(kentry_kernel(entry)), kernel_exit_reason(kentry_kernel(entry)),
                  (unsigned long long) s_backoff(*failures));
    }
    if (kt) {
        kt->retry_at = uv_now(self->loop) + s_backoff(kt->failures);
        s_schedule(self, REFILL_DELAY_MS);
    } else {
        s_schedule(self, s_delay(self));
    }
}

static void s_on_sandbox(sandbox_wait_t *wait, sandbox_t *sb, int err, const char *why)
{
    pool_t *self = wait->arg;
    (void) sb;
    self->busy = false;
    if (err && !self->closing) {
        self->failures++;
        klog_warn("pool: a warm sandbox did not start (%s); next try in %llu ms",
                  why ? why : kb_strerror(err), (unsigned long long) s_delay(self));
    } else {
        self->failures = 0;
    }
    s_schedule(self, s_delay(self));
}

static void s_wait_kernel(pool_t *self, kentry_t *entry)
{
    self->busy = true;
    self->kwait.fn = s_on_kernel;
    self->kwait.arg = self;
    kentry_wait(entry, &self->kwait);
}

//  kt: a kernelspec of the default sandbox; NULL: sb's default kernelspec.
static void s_refill_kernel(pool_t *self, sandbox_t *sb, ktarget_t *kt)
{
    int err = 0;
    kentry_t *entry = sandbox__prestart_kernel(sb, kt ? kt->name : NULL, &err);
    if (!entry) {
        klog_warn("pool: cannot start a warm %s kernel in sandbox %s: %s", kt ? kt->name : "default",
                  sandbox_id(sb), kb_strerror(err));
        if (kt) {
            kt->failures++;
            kt->retry_at = uv_now(self->loop) + s_backoff(kt->failures);
            s_schedule(self, REFILL_DELAY_MS);
        } else {
            self->failures++;
            s_schedule(self, s_delay(self));
        }
        return;
    }
    self->refilling = kt ? (int) (kt - self->ktargets) : -1;
    s_wait_kernel(self, entry);
}

static size_t s_warm_of(const pool_t *self, const template_t *tmpl)
{
    size_t n = 0;
    for (size_t i = 0; i < self->nwarm; i++)
        if (self->warm[i]->tmpl == tmpl) n++;
    return n;
}

//  Whether a due refill may start now; if not, it is looked at again shortly.
static bool s_quiet(pool_t *self)
{
    uint64_t now = uv_now(self->loop);
    if (registry_working(sandboxes_registry(self->table))) {
        if (!self->waiting_since) self->waiting_since = now;
        if (now - self->waiting_since < QUIET_MAX_MS) {
            s_schedule(self, QUIET_WAIT_MS);
            return false;
        }
    }
    self->waiting_since = 0;
    return true;
}

static void s_tick(uv_timer_t *timer)
{
    pool_t *self = timer->data;
    if (self->closing || self->busy) return;
    registry_t *reg = sandboxes_registry(self->table);
    registry_pool_prune(reg);

    //  Kernels of the default sandbox first: the Jupyter and native APIs' default, then
    //  the other kernelspecs asked for; one backing off is passed over, looked at again
    //  when it may be retried.
    sandbox_t *def = sandboxes_default(self->table);
    sbx_t *dsbx = def ? sandbox_sbx(def) : NULL;
    uint64_t now = uv_now(self->loop), retry = 0;
    for (size_t i = 0; dsbx && i < self->nktargets; i++) {
        ktarget_t *kt = &self->ktargets[i];
        if (!kt->n || registry_pooled(reg, dsbx, kt->name, NULL) >= kt->n) continue;
        if (kt->retry_at > now) {
            if (!retry || kt->retry_at < retry) retry = kt->retry_at;
            continue;
        }
        if (s_quiet(self)) s_refill_kernel(self, def, kt);
        return;
    }
    if (retry) s_schedule(self, retry - now);
    //  Then each warm sandbox's kernel, then the sandboxes.
    for (size_t i = 0; i < self->nwarm; i++) {
        sandbox_t *sb = self->warm[i];
        if (sandbox_state(sb) != SANDBOX_RUNNING) continue;
        if (registry_pooled(reg, sandbox_sbx(sb), NULL, NULL) == 0) {
            if (s_quiet(self)) s_refill_kernel(self, sb, NULL);
            return;
        }
    }
    for (size_t t = 0; t < self->ntargets; t++) {
        if (s_warm_of(self, self->targets[t].tmpl) >= self->per_template) continue;
        if (!s_quiet(self)) return;
        if (self->nwarm == self->warm_cap) {
            size_t cap = self->warm_cap ? self->warm_cap * 2 : 4;
            sandbox_t **grown = realloc(self->warm, cap * sizeof *grown);
            if (!grown) return;
            self->warm = grown;
            self->warm_cap = cap;
        }
        int err = 0;
        sandbox_t *sb = sandboxes__make_pooled(self->table, self->targets[t].name, self->targets[t].tmpl, &err);
        if (!sb) {
            self->failures++;
            klog_warn("pool: cannot make a warm %s sandbox: %s", self->targets[t].name, kb_strerror(err));
            s_schedule(self, s_delay(self));
            return;
        }
        self->warm[self->nwarm++] = sb;
        self->busy = true;
        self->swait.fn = s_on_sandbox;
        self->swait.arg = self;
        if (sandbox_wait_running(sb, &self->swait)) {
            self->busy = false;
            s_schedule(self, REFILL_DELAY_MS);
        }
        return;
    }
}

static void s_on_registry_pool(void *arg)
{
    pool_kick(arg);
}

pool_t *pool_new(sandboxes_t *table, size_t kernels, size_t sandboxes)
{
    pool_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->table = table;
    self->loop = sandboxes__loop(table);
    self->per_template = sandboxes;
    self->refilling = -1;
    if (pool_add_kernels(self, NULL, kernels) != KB_OK) {
        free(self);
        return NULL;
    }
    uv_timer_init(self->loop, &self->timer);
    self->timer.data = self;
    registry_set_pool_hook(sandboxes_registry(table), s_on_registry_pool, self);
    if (metrics_collect(s_collect, self) != 0) klog_debug("pool: no room for its metrics collector");
    return self;
}

//  The pools' figures for /metrics, counted at each scrape: what waits to be taken.
static void s_collect(void *arg)
{
    pool_t *self = arg;
    registry_t *reg = sandboxes_registry(self->table);
    sandbox_t *def = sandboxes_default(self->table);
    size_t kready = 0, ktarget = 0;
    for (size_t i = 0; i < self->nktargets; i++) {
        size_t r = 0;
        if (def) registry_pooled(reg, sandbox_sbx(def), self->ktargets[i].name, &r);
        metrics_pool_kernelspec_set(self->ktargets[i].name, r, self->ktargets[i].n);
        kready += r;
        ktarget += self->ktargets[i].n;
    }
    size_t sready = 0;
    for (size_t i = 0; i < self->nwarm; i++) {
        size_t r = 0;
        if (sandbox_state(self->warm[i]) == SANDBOX_RUNNING) registry_pooled(reg, sandbox_sbx(self->warm[i]), NULL, &r);
        if (r) sready++;
    }
    metrics_pool_set("kernel", kready, ktarget);
    metrics_pool_set("sandbox", sready, self->per_template * self->ntargets);
}

static void s_free(uv_handle_t *handle)
{
    free(handle->data);
}

void pool_destroy(pool_t **self_p)
{
    if (!self_p || !*self_p) return;
    pool_t *self = *self_p;
    *self_p = NULL;
    self->closing = true;
    metrics_uncollect(self);
    metrics_pool_set("kernel", 0, 0);
    metrics_pool_set("sandbox", 0, 0);
    registry_set_pool_hook(sandboxes_registry(self->table), NULL, NULL);
    kentry_unwait(&self->kwait);
    sandbox_unwait(&self->swait);
    //  sandbox__stop tells the table, which forgets it here: walk a copy.
    sandbox_t **warm = self->warm;
    size_t n = self->nwarm;
    self->warm = NULL;
    self->nwarm = self->warm_cap = 0;
    for (size_t i = 0; i < n; i++) sandbox__stop(warm[i]);
    free(warm);
    for (size_t t = 0; t < self->ntargets; t++) free(self->targets[t].name);
    free(self->targets);
    for (size_t i = 0; i < self->nktargets; i++) free(self->ktargets[i].name);
    free(self->ktargets);
    uv_close((uv_handle_t *) &self->timer, s_free);
}

int pool_add_template(pool_t *self, const char *name, const template_t *tmpl)
{
    for (size_t t = 0; t < self->ntargets; t++)
        if (self->targets[t].tmpl == tmpl) return KB_OK;
    target_t *grown = realloc(self->targets, (self->ntargets + 1) * sizeof *grown);
    if (!grown) return KB_ENOMEM;
    self->targets = grown;
    self->targets[self->ntargets].name = kb_strdup(name);
    self->targets[self->ntargets].tmpl = tmpl;
    if (!self->targets[self->ntargets].name) return KB_ENOMEM;
    self->ntargets++;
    return KB_OK;
}

int pool_add_kernels(pool_t *self, const char *kernelspec, size_t n)
{
    const char *name = kernelspec ? kernelspec : registry_default_kernel(sandboxes_registry(self->table));
    for (size_t i = 0; i < self->nktargets; i++)
        if (strcmp(self->ktargets[i].name, name) == 0) {
            self->ktargets[i].n = n;
            return KB_OK;
        }
    ktarget_t *grown = realloc(self->ktargets, (self->nktargets + 1) * sizeof *grown);
    if (!grown) return KB_ENOMEM;
    self->ktargets = grown;
    memset(&self->ktargets[self->nktargets], 0, sizeof *grown);
    self->ktargets[self->nktargets].name = kb_strdup(name);
    self->ktargets[self->nktargets].n = n;
    if (!self->ktargets[self->nktargets].name) return KB_ENOMEM;
    self->nktargets++;
    return n ? registry_pool_keeps(sandboxes_registry(self->table), name) : KB_OK;
}

void pool_start(pool_t *self)
{
    size_t kernels = 0;
    char list[512] = "";
    size_t at = 0;
    for (size_t i = 0; i < self->nktargets; i++) {
        if (!self->ktargets[i].n) continue;
        kernels += self->ktargets[i].n;
        if (at < sizeof list)
            at += (size_t) snprintf(list + at, sizeof list - at, "%s%s=%zu", at ? ", " : "",
                                    self->ktargets[i].name, self->ktargets[i].n);
    }
    if (kernels || self->per_template) {
        klog_info("pool: keeping %zu warm kernel(s) (%s) and %zu warm sandbox(es) per template "
                  "(--pool-kernels, --pool-sandboxes)", kernels, kernels ? list : "none", self->per_template);
        s_schedule(self, 0);
    }
}

void pool_kick(pool_t *self)
{
    if (!self || self->closing || self->busy) return;
    //  From now, even if a tick was due sooner: a take is the start of a request whose
    //  next steps (an E2B SDK's first runCode, ~10-20 ms after its create) a refill
    //  starting now would slow down.
    s_schedule(self, s_delay(self));
}

static void s_remove(pool_t *self, size_t i)
{
    memmove(&self->warm[i], &self->warm[i + 1], (self->nwarm - i - 1) * sizeof *self->warm);
    self->nwarm--;
}

sandbox_t *pool_take(pool_t *self, const template_t *tmpl)
{
    if (!self) return NULL;
    registry_t *reg = sandboxes_registry(self->table);
    size_t best = self->nwarm;
    for (size_t i = 0; i < self->nwarm; i++) {
        sandbox_t *sb = self->warm[i];
        if (sb->tmpl != tmpl || sandbox_state(sb) != SANDBOX_RUNNING) continue;
        size_t ready = 0;
        registry_pooled(reg, sandbox_sbx(sb), NULL, &ready);
        if (ready) {
            best = i;
            break;
        }
        if (best == self->nwarm) best = i;
    }
    if (best == self->nwarm) return NULL;
    sandbox_t *sb = self->warm[best];
    s_remove(self, best);
    self->sandboxes_claimed++;
    pool_kick(self);
    return sb;
}

void pool_forget(pool_t *self, sandbox_t *sb)
{
    if (!self) return;
    for (size_t i = 0; i < self->nwarm; i++)
        if (self->warm[i] == sb) {
            s_remove(self, i);
            pool_kick(self);
            return;
        }
}

bool pool_targets_sandboxes(const pool_t *self)
{
    return self && self->per_template > 0;
}

json_t *pool_status(const pool_t *self)
{
    registry_t *reg = sandboxes_registry(self->table);
    sandbox_t *def = sandboxes_default(self->table);
    sbx_t *dsbx = def ? sandbox_sbx(def) : NULL;
    size_t kready = 0, kwarm = dsbx ? registry_pooled(reg, dsbx, NULL, &kready) : 0;
    json_t *specs = json_object();
    for (size_t i = 0; i < self->nktargets; i++) {
        const ktarget_t *kt = &self->ktargets[i];
        size_t ready = 0, warm = dsbx ? registry_pooled(reg, dsbx, kt->name, &ready) : 0;
        json_object_set_new(specs, kt->name,
                            json_pack("{s:I, s:I, s:I, s:I}", "target", (json_int_t) kt->n, "warm",
                                      (json_int_t) warm, "ready", (json_int_t) ready, "claimed",
                                      (json_int_t) registry_pool_claims_of(reg, kt->name)));
    }
    json_t *templates = json_object();
    for (size_t t = 0; t < self->ntargets; t++) {
        size_t warm = 0, ready = 0;
        for (size_t i = 0; i < self->nwarm; i++) {
            sandbox_t *sb = self->warm[i];
            if (sb->tmpl != self->targets[t].tmpl) continue;
            warm++;
            size_t r = 0;
            if (sandbox_state(sb) == SANDBOX_RUNNING) registry_pooled(reg, sandbox_sbx(sb), NULL, &r);
            if (r) ready++;
        }
        json_object_set_new(templates, self->targets[t].name,
                            json_pack("{s:I, s:I}", "warm", (json_int_t) warm, "ready", (json_int_t) ready));
    }
    return json_pack("{s:{s:s, s:I, s:I, s:I, s:I}, s:o, s:{s:I, s:o, s:I}, s:b}", "kernels", "kernelspec",
                     registry_default_kernel(reg), "target", (json_int_t) self->ktargets[0].n, "warm",
                     (json_int_t) kwarm, "ready", (json_int_t) kready, "claimed",
                     (json_int_t) registry_pool_claims(reg), "kernelspecs", specs, "sandboxes", "target",
                     (json_int_t) self->per_template, "templates", templates, "claimed",
                     (json_int_t) self->sandboxes_claimed, "refilling", self->busy);
}
