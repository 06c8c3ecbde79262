/*  sandbox - one sandbox's lifecycle: start, clock, pause, persistence, end. */
#include "sandbox_int.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

//  Host uids of sandbox users: far above any real account, one 65536-id range per slot.
#define UID_FIRST 0x40000000u

int64_t sandbox__wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_closed(uv_handle_t *handle);

sandbox_t *sandbox__new(sandboxes_t *table, const char *id, bool is_default)
{
    sandbox_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->table = table;
    self->loop = sandboxes__loop(table);
    klist_init(&self->link);
    klist_init(&self->waiters);
    snprintf(self->id, sizeof self->id, "%s", id);
    self->is_default = is_default;
    self->state = SANDBOX_STARTING;
    self->slot = -1;
    self->metadata = json_object();
    self->env = json_object();
    self->started_at = sandbox__wall_ms();
    kb_random_hex(self->envd_token, SANDBOX_TOKEN_HEX);
    kb_random_hex(self->traffic_token, SANDBOX_TOKEN_HEX);
    if (!self->metadata || !self->env) {
        json_decref(self->metadata);
        json_decref(self->env);
        free(self);
        return NULL;
    }
    uv_timer_init(sandboxes__loop(table), &self->timer);
    self->timer.data = self;
    return self;
}

static void s_free(sandbox_t *self)
{
    json_decref(self->metadata);
    json_decref(self->env);
    free(self->template_name);
    free(self->cwd);
    free(self->dir);
    sodium_memzero(self->envd_token, sizeof self->envd_token);
    sodium_memzero(self->traffic_token, sizeof self->traffic_token);
    free(self);
}

static void s_closed(uv_handle_t *handle)
{
    sandbox_t *self = handle->data;
    self->freed_pending = true;
    if (self->pending_work == 0) s_free(self);
}

static void s_work_done(sandbox_t *self)
{
    if (--self->pending_work == 0 && self->freed_pending) s_free(self);
}

// ---------------------------------------------------------------------------------------
//  Persistence: sandbox.json, written whole to a temporary file and renamed over it.

typedef struct {
    uv_work_t work;
    sandbox_t *sandbox;
    char *dir, *text;
    bool make_dirs, host_dirs, restored;
    int err;
    char why[256];
} job_t;

static void s_job_free(job_t *j)
{
    free(j->dir);
    if (j->text) sodium_memzero(j->text, strlen(j->text));  //  it holds the tokens
    free(j->text);
    free(j);
}

static int s_mkdir(const char *path, mode_t mode, char *why, size_t size)
{
    if (mkdir(path, mode) == 0 || errno == EEXIST) return 0;
    snprintf(why, size, "cannot make %.200s: %s", path, strerror(errno));
    return errno == ENOSPC ? KB_ENOSPC : KB_EIO;
}

static void s_write_work(uv_work_t *w)
{
    job_t *j = w->data;
    char path[4096], tmp[4096];
    if (j->make_dirs) {
        j->err = s_mkdir(j->dir, 0700, j->why, sizeof j->why);
        if (!j->err && j->host_dirs) {
            snprintf(path, sizeof path, "%s/run", j->dir);
            j->err = s_mkdir(path, 0700, j->why, sizeof j->why);
            snprintf(path, sizeof path, "%s/home", j->dir);
            if (!j->err) j->err = s_mkdir(path, 0700, j->why, sizeof j->why);
        }
        if (j->err) return;
    }
    if (!j->text) return;
    snprintf(path, sizeof path, "%s/sandbox.json", j->dir);
    snprintf(tmp, sizeof tmp, "%s/.sandbox.json.tmp", j->dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        j->err = errno == ENOSPC ? KB_ENOSPC : KB_EIO;
        snprintf(j->why, sizeof j->why, "cannot write %.200s: %s", tmp, strerror(errno));
        return;
    }
    size_t len = strlen(j->text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, j->text + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        off += (size_t) n;
    }
    //  Durable before it replaces the old one: a crash leaves one or the other.
    bool ok = off == len && fsync(fd) == 0;
    int saved = errno;
    close(fd);
    if (!ok || rename(tmp, path) < 0) {
        j->err = (ok ? errno : saved) == ENOSPC ? KB_ENOSPC : KB_EIO;
        snprintf(j->why, sizeof j->why, "cannot write %.200s: %s", path, strerror(ok ? errno : saved));
        unlink(tmp);
    }
}

static void s_remove_dir(sandbox_t *self);
static void s_save(sandbox_t *self);
static void s_start_sbx(sandbox_t *self);
static void s_end(sandbox_t *self, const char *why, int err);
static void s_running(sandbox_t *self);
static void s_queue_write(sandbox_t *self, bool make_dirs);

static void s_write_after(uv_work_t *w, int status)
{
    job_t *j = w->data;
    sandbox_t *self = j->sandbox;
    bool first = j->make_dirs;
    int err = status < 0 ? KB_EIO : j->err;
    char why[300];
    snprintf(why, sizeof why, "%s", j->why);
    s_job_free(j);
    self->saving = false;
    if (err) klog_warn("sandbox %s: %s", self->id, why);
    if (self->state == SANDBOX_ENDED) {
        if (self->remove_after_save) s_remove_dir(self);
    } else if (first) {
        if (err) {
            s_end(self, why, err);
        } else {
            //  The directory exists: the agent can make its layers in it while the
            //  settings are written and made durable.
            s_start_sbx(self);
            if (self->state != SANDBOX_ENDED && !self->pooled) {
                self->first_save = true;
                s_queue_write(self, false);
                if (!self->saving) s_end(self, "out of memory", KB_ENOMEM);
            }
        }
    } else if (self->first_save) {
        self->first_save = false;
        if (err) s_end(self, why, err);
        else if (self->sbx_up) s_running(self);
        if (self->save_again && self->state != SANDBOX_ENDED) s_save(self);
    } else if (self->save_again) {
        s_save(self);
    }
    s_work_done(self);
}

static void s_queue_write(sandbox_t *self, bool make_dirs)
{
    job_t *j = calloc(1, sizeof *j);
    json_t *saved = j ? sandbox__to_json(self) : NULL;
    if (j) {
        j->sandbox = self;
        j->dir = kb_strdup(self->dir);
        //  A warm sandbox has no settings yet: a kbridge restart removes its directory.
        //  At the start the directory comes first, alone (see s_write_after).
        j->text = saved && !self->pooled && !make_dirs
                      ? json_dumps(saved, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
        j->make_dirs = make_dirs;
        j->host_dirs = self->isolation == SBX_ISOLATION_NONE;
        j->work.data = j;
    }
    json_decref(saved);
    bool empty = j && !j->text && !self->pooled && !make_dirs;
    if (!j || !j->dir || empty ||
        uv_queue_work(self->loop, &j->work, s_write_work, s_write_after) < 0) {
        if (j) s_job_free(j);
        klog_warn("sandbox %s: cannot save its settings (out of memory)", self->id);
        if (make_dirs) s_end(self, "out of memory", KB_ENOMEM);
        return;
    }
    self->saving = true;
    self->save_again = false;
    self->pending_work++;
}

static void s_save(sandbox_t *self)
{
    if (!self->dir || self->state == SANDBOX_ENDED) return;
    if (self->saving) {
        self->save_again = true;
        return;
    }
    s_queue_write(self, false);
}

static void s_removed(int err, void *arg)
{
    sandbox_t *self = arg;
    if (err) klog_warn("sandbox %s: its directory %s was not removed: %s", self->id, self->dir,
                       kb_strerror(err));
    s_work_done(self);
}

static void s_remove_dir(sandbox_t *self)
{
    if (!self->dir) return;
    if (self->saving) {
        self->remove_after_save = true;
        return;
    }
    self->remove_after_save = false;
    self->pending_work++;
    sbx_remove_state(self->loop, self->dir, s_removed, self);
}

json_t *sandbox__to_json(const sandbox_t *self)
{
    bool paused = self->state == SANDBOX_PAUSED;
    return json_pack("{s:i, s:s, s:s, s:O, s:O, s:I, s:I, s:I, s:b, s:I, s:i, s:i, s:b, s:i, s:s, "
                     "s:s, s:s}",
                     "version", 1, "id", self->id, "template", self->template_name, "metadata",
                     self->metadata, "env", self->env, "started_at", (json_int_t) self->started_at,
                     "end_at", (json_int_t) self->end_at, "remaining_ms",
                     (json_int_t) self->remaining_ms, "paused", paused, "memory_bytes",
                     (json_int_t) self->memory_bytes, "cpu_millis", (int) self->cpu_millis, "pids",
                     (int) self->pids, "internet", self->internet, "slot", self->slot, "isolation",
                     self->isolation == SBX_ISOLATION_NONE ? "none" : "namespaces", "envd_token",
                     self->envd_token, "traffic_token", self->traffic_token);
}

static bool s_strings(json_t *obj)
{
    const char *key;
    json_t *v;
    if (!json_is_object(obj)) return false;
    json_object_foreach(obj, key, v) if (!json_is_string(v)) return false;
    return true;
}

bool sandbox__from_json(sandbox_t *self, json_t *saved)
{
    const char *tmpl, *iso, *envd, *traffic;
    json_int_t started, end, remaining, memory, slot;
    int cpu, pids, paused, internet, version;
    json_t *metadata, *env;
    json_error_t error;
    if (json_unpack_ex(saved, &error, 0,
                       "{s:i, s:s, s:o, s:o, s:I, s:I, s:I, s:b, s:I, s:i, s:i, s:b, s:I, s:s, s:s, "
                       "s:s}",
                       "version", &version, "template", &tmpl, "metadata", &metadata, "env", &env,
                       "started_at", &started, "end_at", &end, "remaining_ms", &remaining, "paused",
                       &paused, "memory_bytes", &memory, "cpu_millis", &cpu, "pids", &pids,
                       "internet", &internet, "slot", &slot, "isolation", &iso, "envd_token", &envd,
                       "traffic_token", &traffic) < 0 ||
        version != 1 || !s_strings(metadata) || !s_strings(env) ||
        strlen(envd) != 2 * SANDBOX_TOKEN_HEX || strlen(traffic) != 2 * SANDBOX_TOKEN_HEX ||
        memory < 0 || cpu < 0 || pids < 0 || slot < -1 || slot > 65535)
        return false;
    free(self->template_name);
    self->template_name = kb_strdup(tmpl);
    json_object_update(self->metadata, metadata);
    json_object_update(self->env, env);
    self->started_at = started;
    self->end_at = end;
    self->remaining_ms = remaining;
    self->resume_after_start = paused;
    self->memory_bytes = (uint64_t) memory;
    self->cpu_millis = (uint32_t) cpu;
    self->pids = (uint32_t) pids;
    self->internet = internet;
    self->slot = (int) slot;
    self->isolation = strcmp(iso, "none") == 0 ? SBX_ISOLATION_NONE : SBX_ISOLATION_NAMESPACES;
    snprintf(self->envd_token, sizeof self->envd_token, "%s", envd);
    snprintf(self->traffic_token, sizeof self->traffic_token, "%s", traffic);
    return self->template_name != NULL;
}

// ---------------------------------------------------------------------------------------
//  Start and end

static void s_notify(sandbox_t *self, int err, const char *why)
{
    klist_t list;
    klist_take_all(&list, &self->waiters);
    while (!klist_empty(&list)) {
        sandbox_wait_t *w = klist_entry(klist_first(&list), sandbox_wait_t, link);
        klist_remove(&w->link);
        w->sandbox = NULL;
        w->fn(w, self, err, why);
    }
}

static void s_on_timer(uv_timer_t *timer)
{
    sandbox_t *self = timer->data;
    //  A connection holds it: its end comes when the last one lets go.
    if (self->holds) return;
    if (self->state != SANDBOX_RUNNING) return;
    s_end(self, "its timeout passed", KB_ETIMEDOUT);
}

void sandbox__arm(sandbox_t *self)
{
    if (self->is_default || self->pooled || self->state != SANDBOX_RUNNING) return;
    int64_t left = self->end_at - sandbox__wall_ms();
    uv_timer_start(&self->timer, s_on_timer, left > 0 ? (uint64_t) left : 0, 0);
}

static void s_on_ready(sbx_t *sbx, int err, const char *why, void *arg)
{
    (void) sbx;
    sandbox_t *self = arg;
    if (err) {
        char msg[400];
        snprintf(msg, sizeof msg, "it could not start: %s", why && *why ? why : kb_strerror(err));
        s_end(self, msg, err);
        return;
    }
    self->sbx_up = true;
    if (!self->first_save) s_running(self);
}

static void s_running(sandbox_t *self)
{
    self->state = SANDBOX_RUNNING;
    klog_info("sandbox %s: running (template %s%s)", self->id, self->template_name,
              self->restarted ? ", started again after a kbridge restart"
              : self->pooled  ? ", warm in the pool"
                              : "");
    sandbox__arm(self);
    s_notify(self, 0, NULL);
}

static void s_on_lost(sbx_t *sbx, const char *why, void *arg)
{
    (void) sbx;
    sandbox_t *self = arg;
    char msg[400];
    snprintf(msg, sizeof msg, "its agent went away (%s)", why ? why : "?");
    s_end(self, msg, KB_ECLOSED);
}

static void s_start_sbx(sandbox_t *self)
{
    const sandboxes_config_t *cfg = sandboxes__config(self->table);
    char state_dir[4096], kernel_dir[4096], home[4096], cgroup[128];
    sbx_opts_t o;
    memset(&o, 0, sizeof o);
    o.id = self->id;
    o.isolation = self->isolation;
    o.agent_path = cfg->agent_path;
    if (self->isolation == SBX_ISOLATION_NONE) {
        snprintf(kernel_dir, sizeof kernel_dir, "%s/run", self->dir);
        snprintf(home, sizeof home, "%s/home", self->dir);
        o.kernel_dir = kernel_dir;
        o.home = home;
    } else {
        snprintf(state_dir, sizeof state_dir, "%s/fs", self->dir);
        o.tmpl = self->tmpl;
        o.state_dir = state_dir;
        o.uid_base = UID_FIRST + (uint32_t) self->slot * 65536u;
        o.internet = self->internet;
        o.hidden = cfg->hidden;
        o.pasta = cfg->pasta;
    }
    o.memory_bytes = self->memory_bytes;
    o.cpu_millis = self->cpu_millis;
    o.pids = self->pids;
    if (cfg->cgroup_parent) {
        snprintf(cgroup, sizeof cgroup, "%s/%s", cfg->cgroup_parent, self->id);
        o.cgroup = cgroup;
    }
    sbx_events_t events = {s_on_ready, s_on_lost};
    int err = 0;
    self->sbx = sbx_new(sandboxes__loop(self->table), &o, &events, self, &err);
    self->own_sbx = true;
    if (!self->sbx) s_end(self, "its agent could not be started", err ? err : KB_ESPAWN);
}

void sandbox__start(sandbox_t *self, bool restored)
{
    self->restarted = restored;
    self->state = SANDBOX_STARTING;
    self->sbx_up = self->first_save = false;
    //  The directory and settings first: a crash from here on finds it at the next start.
    s_queue_write(self, true);
}

void sandbox__adopt(sandbox_t *self, sbx_t *host)
{
    self->sbx = host;
    self->own_sbx = false;
    self->isolation = SBX_ISOLATION_NONE;
    self->state = SANDBOX_RUNNING;
}

//  Everything but the directory: kernels, agent, timer, waiters, the table's entry.
static void s_teardown(sandbox_t *self, const char *why, int err)
{
    self->state = SANDBOX_ENDED;
    uv_timer_stop(&self->timer);
    if (self->sbx) registry_kill_in(sandboxes_registry(self->table), self->sbx);
    s_notify(self, err ? err : KB_ECLOSED, why);
    sandboxes__ended(self->table, self, why);
    if (self->own_sbx) sbx_destroy(&self->sbx);
    self->sbx = NULL;
    uv_close((uv_handle_t *) &self->timer, s_closed);
}

static void s_end(sandbox_t *self, const char *why, int err)
{
    if (self->state == SANDBOX_ENDED) return;
    klog_info("sandbox %s: ended: %s", self->id, why);
    s_teardown(self, why, err);
    s_remove_dir(self);
}

void sandbox__discard(sandbox_t *self)
{
    self->state = SANDBOX_ENDED;
    uv_close((uv_handle_t *) &self->timer, s_closed);
}

void sandbox__stop(sandbox_t *self)
{
    if (self->state == SANDBOX_ENDED) return;
    s_teardown(self, "kbridge is stopping", KB_ECLOSED);
    //  A warm one was never anybody's: nothing of it is kept for the next start.
    if (self->pooled) s_remove_dir(self);
}

void sandbox__save(sandbox_t *self)
{
    s_save(self);
}

// ---------------------------------------------------------------------------------------
//  The API

const char *sandbox_id(const sandbox_t *self)
{
    return self->id;
}

bool sandbox_is_default(const sandbox_t *self)
{
    return self->is_default;
}

sandbox_state_t sandbox_state(const sandbox_t *self)
{
    return self->state;
}

const char *sandbox_state_name(const sandbox_t *self)
{
    static const char *const names[] = {"starting", "running", "paused", "ended"};
    return names[self->state];
}

sbx_t *sandbox_sbx(const sandbox_t *self)
{
    return self->state == SANDBOX_RUNNING ? self->sbx : NULL;
}

const char *sandbox_template(const sandbox_t *self)
{
    return self->template_name;
}

json_t *sandbox_metadata(const sandbox_t *self)
{
    return self->metadata;
}

json_t *sandbox_env(const sandbox_t *self)
{
    return self->env;
}

const char *sandbox_cwd(const sandbox_t *self)
{
    return self->cwd;
}

const char *sandbox_kernel_user(const sandbox_t *self)
{
    if (self->isolation == SBX_ISOLATION_NONE) return NULL;
    return sandboxes__config(self->table)->kernel_user;
}

int64_t sandbox_now_ms(void)
{
    return sandbox__wall_ms();
}

int64_t sandbox_started_at(const sandbox_t *self)
{
    return self->started_at;
}

int64_t sandbox_end_at(const sandbox_t *self)
{
    if (self->is_default) return 0;
    if (self->state == SANDBOX_PAUSED) return sandbox__wall_ms() + self->remaining_ms;
    return self->end_at;
}

uint64_t sandbox_memory_bytes(const sandbox_t *self)
{
    return self->memory_bytes;
}

uint32_t sandbox_cpu_millis(const sandbox_t *self)
{
    return self->cpu_millis;
}

bool sandbox_internet(const sandbox_t *self)
{
    return self->internet;
}

bool sandbox_restarted(const sandbox_t *self)
{
    return self->restarted;
}

const char *sandbox_envd_token(const sandbox_t *self)
{
    return self->envd_token;
}

const char *sandbox_traffic_token(const sandbox_t *self)
{
    return self->traffic_token;
}

static bool s_token_eq(const char *mine, const char *theirs)
{
    size_t n = strlen(mine);
    return strlen(theirs) == n && sodium_memcmp(mine, theirs, n) == 0;
}

bool sandbox_token_ok(const sandbox_t *self, const char *token)
{
    if (!token || !*token) return false;
    //  Both compared, whichever matches: no early exit to time.
    bool a = s_token_eq(self->envd_token, token);
    bool b = s_token_eq(self->traffic_token, token);
    return a | b;
}

bool sandbox_traffic_token_ok(const sandbox_t *self, const char *token)
{
    return token && *token && s_token_eq(self->traffic_token, token);
}

int64_t sandbox_set_timeout(sandbox_t *self, uint64_t ms)
{
    if (self->is_default || self->state == SANDBOX_ENDED) return 0;
    uint64_t max = sandboxes_max_timeout_ms(self->table);
    if (ms > max) ms = max;
    if (self->state == SANDBOX_PAUSED) {
        self->remaining_ms = (int64_t) ms;
    } else {
        self->end_at = sandbox__wall_ms() + (int64_t) ms;
        sandbox__arm(self);
    }
    s_save(self);
    return sandbox_end_at(self);
}

int sandbox_pause(sandbox_t *self)
{
    if (self->is_default) return KB_EINVAL;
    if (self->state == SANDBOX_PAUSED) return 0;
    if (self->state != SANDBOX_RUNNING) return KB_EAGAIN;
    int rc = sbx_freeze(self->sbx);
    if (rc) return rc;
    self->remaining_ms = self->end_at - sandbox__wall_ms();
    if (self->remaining_ms < 0) self->remaining_ms = 0;
    uv_timer_stop(&self->timer);
    self->state = SANDBOX_PAUSED;
    klog_info("sandbox %s: paused", self->id);
    s_save(self);
    sandboxes__state(self->table, self);
    return 0;
}

int sandbox_resume(sandbox_t *self)
{
    if (self->state == SANDBOX_RUNNING || self->state == SANDBOX_STARTING) return 0;
    if (self->state != SANDBOX_PAUSED) return KB_ECLOSED;
    self->end_at = sandbox__wall_ms() + self->remaining_ms;
    self->remaining_ms = 0;
    if (!self->sbx) {
        //  Restored paused after a restart: nothing ran, so it starts now.
        self->resume_after_start = false;
        klog_info("sandbox %s: resuming (starting it again)", self->id);
        sandbox__start(self, true);
        sandboxes__state(self->table, self);
        return 0;
    }
    int rc = sbx_thaw(self->sbx);
    if (rc) return rc;
    self->state = SANDBOX_RUNNING;
    klog_info("sandbox %s: resumed", self->id);
    sandbox__arm(self);
    s_save(self);
    sandboxes__state(self->table, self);
    return 0;
}

void sandbox_kill(sandbox_t *self, const char *why)
{
    if (self->is_default) return;
    s_end(self, why ? why : "killed", KB_ECLOSED);
}

void sandbox_hold(sandbox_t *self)
{
    self->holds++;
}

void sandbox_release(sandbox_t *self, uint64_t keep_alive_ms)
{
    if (self->holds && --self->holds) return;
    if (self->is_default || self->state == SANDBOX_ENDED) return;
    int64_t at_least = sandbox__wall_ms() + (int64_t) keep_alive_ms;
    if (self->state == SANDBOX_PAUSED) {
        if (self->remaining_ms < (int64_t) keep_alive_ms) self->remaining_ms = (int64_t) keep_alive_ms;
    } else if (self->end_at < at_least) {
        self->end_at = at_least;
    }
    sandbox__arm(self);
    s_save(self);
}

static void s_iso(int64_t ms, char out[40])
{
    time_t secs = (time_t) (ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%03dZ", (int) (ms % 1000));
}

json_t *sandbox_model(const sandbox_t *self)
{
    char started[40], end[40];
    s_iso(self->started_at, started);
    int64_t end_at = sandbox_end_at(self);
    s_iso(end_at ? end_at : self->started_at + 100ll * 365 * 86400 * 1000, end);
    uint32_t cpus = self->cpu_millis ? (self->cpu_millis + 999) / 1000 : (uint32_t) uv_available_parallelism();
    //  Paused and starting are both "not running" to E2B's clients, which know two states.
    const char *state = self->state == SANDBOX_PAUSED ? "paused" : "running";
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:i, s:O, s:b, s:b}",
                     "sandboxID", self->id, "templateID", self->template_name, "alias",
                     self->template_name, "clientID", sandboxes__config(self->table)->node_id,
                     "envdVersion", SANDBOX_ENVD_VERSION, "startedAt", started, "endAt", end,
                     "state", state, "cpuCount", (int) cpus, "memoryMB",
                     (json_int_t) (self->memory_bytes >> 20), "diskSizeMB", 0, "metadata",
                     self->metadata, "allowInternetAccess", self->internet, "restarted",
                     self->restarted);
}

bool sandbox_wait_running(sandbox_t *self, sandbox_wait_t *wait)
{
    sandbox_unwait(wait);
    if (self->state == SANDBOX_RUNNING) return true;
    wait->sandbox = self;
    klist_init(&wait->link);
    klist_push_back(&self->waiters, &wait->link);
    return false;
}

void sandbox_unwait(sandbox_wait_t *wait)
{
    if (!wait->sandbox) return;
    klist_remove(&wait->link);
    wait->sandbox = NULL;
}

json_t *sandbox_base_env(const sandbox_t *self, const char *user)
{
    if (self->isolation == SBX_ISOLATION_NONE) return NULL;
    if (!user) user = sandbox_kernel_user(self);
    bool root = user && strcmp(user, "root") == 0;
    json_t *env = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "PATH",
                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME",
                            root ? "/root" : "/home/user", "USER", root ? "root" : "user", "LOGNAME",
                            root ? "root" : "user", "SHELL", "/bin/bash", "LANG", "C.UTF-8");
    if (env) json_object_update(env, self->env);
    return env;
}

//  Where a kernel of this sandbox starts: as its kernel user, in cwd (NULL: the
//  sandbox's), from the sandbox's environment plus env. Isolated: the sandbox's own
//  environment is the base (nothing of the host's); on the host, kbridge's environment
//  is, with the sandbox's env vars on top. *merged and *base are the caller's.
static int s_kernel_place(sandbox_t *self, const char *cwd, json_t *env, registry_place_t *place,
                          json_t **merged, json_t **base)
{
    sbx_t *sbx = sandbox_sbx(self);
    if (!sbx) return self->state == SANDBOX_ENDED ? KB_ECLOSED : KB_EAGAIN;
    *base = sandbox_base_env(self, NULL);
    *merged = *base ? json_object() : json_deep_copy(self->env);
    if (!*merged) {
        json_decref(*base);
        *base = NULL;
        return KB_ENOMEM;
    }
    if (env) json_object_update(*merged, env);
    registry_place_t p = {sbx, sandbox_kernel_user(self), cwd ? cwd : self->cwd, *merged, *base};
    *place = p;
    return KB_OK;
}

kentry_t *sandbox_start_kernel(sandbox_t *self, const char *kernel_name, const char *cwd,
                               json_t *env, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    registry_place_t place;
    json_t *merged = NULL, *base = NULL;
    *err = s_kernel_place(self, cwd, env, &place, &merged, &base);
    if (*err) return NULL;
    kentry_t *entry = registry_start(sandboxes_registry(self->table), kernel_name, &place, err);
    json_decref(merged);
    json_decref(base);
    return entry;
}

kentry_t *sandbox__prestart_kernel(sandbox_t *self, const char *kernel_name, int *err)
{
    registry_place_t place;
    json_t *merged = NULL, *base = NULL;
    *err = s_kernel_place(self, NULL, NULL, &place, &merged, &base);
    if (*err) return NULL;
    kentry_t *entry = registry_prestart(sandboxes_registry(self->table), kernel_name, &place, err);
    json_decref(merged);
    json_decref(base);
    return entry;
}

bool sandbox_has_kernel(const sandbox_t *self, const kentry_t *entry)
{
    return self->sbx && kernel_sbx(kentry_kernel(entry)) == self->sbx;
}

size_t sandbox_kernels(const sandbox_t *self, kentry_t ***entries)
{
    *entries = NULL;
    if (!self->sbx) return 0;
    return registry_list_in(sandboxes_registry(self->table), self->sbx, entries);
}
