/*  sandboxes - the table: ids, templates, limits, restore, observers. */
#include "sandbox_int.h"
#include "pool.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../metrics/metrics.h"
#include "../../base/kutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <sodium.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

//  Slots give each sandbox its own 65536 host uids above UID_FIRST (sandbox.c).
#define SLOTS 49150
#define DEFAULT_TIMEOUT_MS (300u * 1000u)
//  Metadata: what a label needs, not a database.
#define METADATA_MAX_KEYS 64
#define METADATA_MAX_BYTES 8192
#define ENV_MAX_KEYS 1024
#define ENV_MAX_BYTES (256u << 10)

typedef struct {
    char *name;
    template_t *tmpl;  //  NULL for the aliases of the host template
    const template_t *ref;
} tmpl_entry_t;

typedef struct {
    sandboxes_observer_t fns;
    void *arg;
} observer_t;

struct _sandboxes_t {
    uv_loop_t *loop;
    sandboxes_config_t config;
    registry_t *registry;
    char *state_dir, *node_id, *kernel_user, *agent_path, *host_home, *pasta, *cgroup_parent;
    char **hidden;  //  NULL-terminated: config's plus the state directory
    tmpl_entry_t *templates;
    size_t ntemplates;
    klist_t all;  //  sandbox_t.link, the default one excluded
    size_t count;
    sandbox_t *def;
    unsigned char *slots;
    int slot_start;  //  where this instance's search for a free slot begins
    observer_t *observers;
    size_t nobservers;
    pool_t *pool;
    bool closing;
};

uv_loop_t *sandboxes__loop(const sandboxes_t *self)
{
    return self->loop;
}

const sandboxes_config_t *sandboxes__config(const sandboxes_t *self)
{
    return &self->config;
}

registry_t *sandboxes_registry(const sandboxes_t *self)
{
    return self->registry;
}

uint64_t sandboxes_max_timeout_ms(const sandboxes_t *self)
{
    return self->config.max_timeout_ms;
}

static const template_t *s_template(const sandboxes_t *self, const char *name)
{
    for (size_t i = 0; i < self->ntemplates; i++)
        if (strcmp(self->templates[i].name, name) == 0) return self->templates[i].ref;
    return NULL;
}

bool sandboxes_has_template(const sandboxes_t *self, const char *name)
{
    return name && s_template(self, name) != NULL;
}

static int s_add_template(sandboxes_t *self, const char *name, template_t *owned, const template_t *ref)
{
    tmpl_entry_t *grown = realloc(self->templates, (self->ntemplates + 1) * sizeof *grown);
    if (!grown) return KB_ENOMEM;
    self->templates = grown;
    tmpl_entry_t *t = &self->templates[self->ntemplates];
    t->name = kb_strdup(name);
    t->tmpl = owned;
    t->ref = ref;
    if (!t->name) return KB_ENOMEM;
    self->ntemplates++;
    return 0;
}

static void s_slot_take(sandboxes_t *self, int slot)
{
    if (slot >= 0 && slot < SLOTS) self->slots[slot] = 1;
}

static int s_slot_new(sandboxes_t *self)
{
    for (int k = 0; k < SLOTS; k++) {
        int i = (self->slot_start + k) % SLOTS;
        if (!self->slots[i]) {
            self->slots[i] = 1;
            return i;
        }
    }
    return -1;
}

static void s_gen_id(const sandboxes_t *self, char out[SANDBOX_ID_MAX + 1])
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char rnd[20];
    for (;;) {
        randombytes_buf(rnd, sizeof rnd);
        size_t n = (size_t) snprintf(out, SANDBOX_ID_MAX + 1, "%s", self->node_id);
        for (size_t i = 0; i < sizeof rnd && n < 20; i++) out[n++] = alphabet[rnd[i] % 36];
        out[n] = '\0';
        if (!sandboxes_find((sandboxes_t *) self, out)) return;
    }
}

static bool s_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > SANDBOX_ID_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9'))) return false;
    return true;
}

//  Fill a sandbox's per-isolation settings: slot, directory, cwd.
static int s_place(sandboxes_t *self, sandbox_t *sb)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/sandboxes/%s", self->state_dir, sb->id);
    sb->dir = kb_strdup(dir);
    if (sb->isolation == SBX_ISOLATION_NAMESPACES) {
        if (sb->slot < 0) sb->slot = s_slot_new(self);
        if (sb->slot < 0) return KB_ELIMIT;
        free(sb->cwd);
        sb->cwd = kb_strdup(strcmp(self->kernel_user, "root") == 0 ? "/root" : "/home/user");
    } else {
        char home[PATH_MAX + 8];
        snprintf(home, sizeof home, "%s/home", dir);
        free(sb->cwd);
        sb->cwd = kb_strdup(home);
    }
    return sb->dir && sb->cwd ? 0 : KB_ENOMEM;
}

static void s_link(sandboxes_t *self, sandbox_t *sb)
{
    klist_push_back(&self->all, &sb->link);
    self->count++;
}

// ---------------------------------------------------------------------------------------
//  Restore

static void s_restore(sandboxes_t *self)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/sandboxes", self->state_dir);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *de;
    int64_t now = sandbox__wall_ms();
    size_t restored = 0, removed = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, "default") == 0) continue;
        char file[PATH_MAX + 300];
        snprintf(file, sizeof file, "%s/%s/sandbox.json", path, de->d_name);
        json_error_t error;
        json_t *saved = s_id_ok(de->d_name) ? json_load_file(file, 0, &error) : NULL;
        const char *id = NULL;
        sandbox_t *sb = NULL;
        bool usable = saved && json_unpack(saved, "{s:s}", "id", &id) == 0 && strcmp(id, de->d_name) == 0;
        if (usable) sb = sandbox__new(self, de->d_name, false);
        if (sb) usable = sandbox__from_json(sb, saved);
        if (usable && sb) {
            sb->tmpl = s_template(self, sb->template_name);
            bool expired = !sb->resume_after_start && sb->end_at <= now;
            usable = sb->tmpl && !expired && sb->slot < SLOTS &&
                     (sb->isolation == SBX_ISOLATION_NONE || sb->slot >= 0);
            if (!sb->tmpl) klog_warn("sandbox %s: template %s is gone", de->d_name, sb->template_name);
        }
        json_decref(saved);
        if (usable && sb && s_place(self, sb) == 0) {
            s_slot_take(self, sb->slot);
            s_link(self, sb);
            restored++;
            if (sb->resume_after_start) {
                //  It was paused: it stays so, and starts again when resumed.
                sb->restarted = true;
                sb->state = SANDBOX_PAUSED;
            } else {
                sandbox__start(sb, true);
            }
            continue;
        }
        //  Expired, unreadable or no longer possible: its files go.
        if (sb) sandbox__discard(sb);
        char dir[PATH_MAX + 300];
        snprintf(dir, sizeof dir, "%s/%s", path, de->d_name);
        sbx_remove_state(self->loop, dir, NULL, NULL);
        removed++;
    }
    closedir(d);
    if (restored || removed)
        klog_info("sandboxes: %zu restored from %s, %zu expired and removed", restored, path, removed);
}

// ---------------------------------------------------------------------------------------
//  The table

static int s_mkdirs(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
    return chmod(buf, mode);
}

int sandboxes_lock_state_dir(const char *state_dir, char *why, size_t why_len)
{
    if (s_mkdirs(state_dir, 0700) < 0) {
        snprintf(why, why_len, "cannot create the state directory %s: %s", state_dir, strerror(errno));
        return -1;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/lock", state_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        snprintf(why, why_len,
                 "the state directory %s is in use by another kbridge%s%s%s; give each one its "
                 "own --state-dir", state_dir, *pid ? " (pid " : "", pid, *pid ? ")" : "");
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long) getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t) n, 0) != n)
        klog_debug("sandboxes: cannot write the pid to %s", path);
    return fd;
}

void sandboxes_cgroup_parent(const char *state_dir, char *out, size_t size)
{
    unsigned char hash[8];
    crypto_generichash(hash, sizeof hash, (const unsigned char *) state_dir, strlen(state_dir), NULL, 0);
    snprintf(out, size, "kbridge/%02x%02x%02x%02x%02x%02x%02x%02x", hash[0], hash[1], hash[2], hash[3],
             hash[4], hash[5], hash[6], hash[7]);
}

sandboxes_t *sandboxes_new(uv_loop_t *loop, const sandboxes_config_t *config, registry_t *registry,
                           char *why, size_t size)
{
    sandboxes_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(why, size, "out of memory");
        return NULL;
    }
    self->loop = loop;
    self->config = *config;
    self->registry = registry;
    klist_init(&self->all);
    self->state_dir = kb_strdup(config->state_dir);
    self->node_id = kb_strdup(config->node_id ? config->node_id : "kb");
    self->kernel_user = kb_strdup(config->kernel_user ? config->kernel_user : "user");
    self->agent_path = kb_strdup(config->agent_path);
    self->host_home = config->host_home ? kb_strdup(config->host_home) : NULL;
    self->pasta = config->pasta ? kb_strdup(config->pasta) : NULL;
    self->cgroup_parent = config->cgroup_parent ? kb_strdup(config->cgroup_parent) : NULL;
    self->slots = calloc(SLOTS, 1);
    //  Each instance (state directory) starts from a place of its own, so that two
    //  kbridges on one host do not hand the same host uids to their sandboxes.
    if (config->state_dir) {
        unsigned char h[4];
        crypto_generichash(h, sizeof h, (const unsigned char *) config->state_dir,
                           strlen(config->state_dir), NULL, 0);
        self->slot_start = (int) (((uint32_t) h[0] << 24 | (uint32_t) h[1] << 16 | (uint32_t) h[2] << 8 | h[3]) %
                                  SLOTS);
    }
    size_t nhidden = 0;
    while (config->hidden && config->hidden[nhidden]) nhidden++;
    self->hidden = calloc(nhidden + 2, sizeof *self->hidden);
    if (!self->state_dir || !self->node_id || !self->kernel_user || !self->agent_path ||
        !self->slots || !self->hidden) {
        snprintf(why, size, "out of memory");
        sandboxes_destroy(&self);
        return NULL;
    }
    for (size_t i = 0; i < nhidden; i++) self->hidden[i] = kb_strdup(config->hidden[i]);
    self->hidden[nhidden] = kb_strdup(self->state_dir);
    self->config.state_dir = self->state_dir;
    self->config.node_id = self->node_id;
    self->config.kernel_user = self->kernel_user;
    self->config.agent_path = self->agent_path;
    self->config.host_home = self->host_home;
    self->config.pasta = self->pasta;
    self->config.cgroup_parent = self->cgroup_parent;
    self->config.hidden = (const char *const *) self->hidden;
    self->config.templates = NULL;
    self->config.ntemplates = 0;
    if (!self->config.max_timeout_ms) self->config.max_timeout_ms = 24ull * 3600 * 1000;
    if (strlen(self->state_dir) > 1024 || self->state_dir[0] != '/') {
        snprintf(why, size, "the state directory must be an absolute path of at most 1024 bytes");
        sandboxes_destroy(&self);
        return NULL;
    }
    if (s_mkdirs(self->state_dir, 0700) < 0) {
        snprintf(why, size, "cannot make the state directory %s: %s (pass --state-dir)",
                 self->state_dir, strerror(errno));
        sandboxes_destroy(&self);
        return NULL;
    }
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/sandboxes", self->state_dir);
    if (mkdir(sub, 0700) < 0 && errno != EEXIST) {
        snprintf(why, size, "cannot make %s: %s", sub, strerror(errno));
        sandboxes_destroy(&self);
        return NULL;
    }
    //  Templates: the host's system under its names, then the configured directories.
    int err = 0;
    template_t *host = template_new_host("base", self->config.hidden, &err);
    if (!host || s_add_template(self, "base", host, host) || s_add_template(self, "code-interpreter-v1", NULL, host) ||
        s_add_template(self, "code-interpreter-beta", NULL, host) || s_add_template(self, "default", NULL, host)) {
        if (host && (!self->ntemplates || self->templates[0].tmpl != host)) template_destroy(&host);
        snprintf(why, size, "cannot set up the base template: %s", kb_strerror(err ? err : KB_ENOMEM));
        sandboxes_destroy(&self);
        return NULL;
    }
    for (size_t i = 0; i < config->ntemplates; i++) {
        const sandboxes_template_t *t = &config->templates[i];
        char twhy[256] = "";
        template_t *tmpl = template_new_dir(t->name, t->dir, twhy, sizeof twhy, &err);
        if (!tmpl || s_add_template(self, t->name, tmpl, tmpl)) {
            snprintf(why, size, "--template %s=%s: %s", t->name, t->dir, tmpl ? "out of memory" : twhy);
            template_destroy(&tmpl);
            sandboxes_destroy(&self);
            return NULL;
        }
    }
    //  The default sandbox.
    self->def = sandbox__new(self, "default", true);
    if (!self->def) {
        snprintf(why, size, "out of memory");
        sandboxes_destroy(&self);
        return NULL;
    }
    self->def->template_name = kb_strdup("base");
    self->def->tmpl = s_template(self, "base");
    if (config->isolate_default) {
        self->def->isolation = SBX_ISOLATION_NAMESPACES;
        self->def->internet = true;
        self->def->memory_bytes = config->memory_bytes;
        self->def->cpu_millis = config->cpu_millis;
        self->def->pids = config->pids;
        if (s_place(self, self->def)) {
            snprintf(why, size, "out of memory");
            sandboxes_destroy(&self);
            return NULL;
        }
        sandbox__start(self->def, false);
    } else {
        char cwd[PATH_MAX];
        self->def->cwd = kb_strdup(self->host_home ? self->host_home : getcwd(cwd, sizeof cwd) ? cwd : "/");
        sandbox__adopt(self->def, config->host);
    }
    s_restore(self);
    self->pool = pool_new(self, config->pool_kernels, config->pool_sandboxes);
    if (!self->pool) {
        snprintf(why, size, "out of memory");
        sandboxes_destroy(&self);
        return NULL;
    }
    const char *spec;
    json_t *count;
    json_object_foreach(config->pool_kernelspecs, spec, count)
    {
        if (pool_add_kernels(self->pool, spec, (size_t) json_integer_value(count)) != KB_OK) {
            snprintf(why, size, "out of memory");
            sandboxes_destroy(&self);
            return NULL;
        }
    }
    for (size_t i = 0; i < self->ntemplates; i++)
        if (pool_add_template(self->pool, self->templates[i].name, self->templates[i].ref)) {
            snprintf(why, size, "out of memory");
            sandboxes_destroy(&self);
            return NULL;
        }
    pool_start(self->pool);
    return self;
}

void sandboxes_destroy(sandboxes_t **self_p)
{
    if (!self_p || !*self_p) return;
    sandboxes_t *self = *self_p;
    *self_p = NULL;
    self->closing = true;
    pool_destroy(&self->pool);
    while (!klist_empty(&self->all)) {
        sandbox_t *sb = klist_entry(klist_first(&self->all), sandbox_t, link);
        if (sb->state == SANDBOX_PAUSED && !sb->sbx) {
            //  Never started: nothing runs; just forget it.
            klist_remove(&sb->link);
            sandbox__discard(sb);
            continue;
        }
        sandbox__stop(sb);
    }
    if (self->def) {
        if (self->def->state != SANDBOX_ENDED) sandbox__stop(self->def);
        self->def = NULL;
    }
    for (size_t i = 0; i < self->ntemplates; i++) {
        free(self->templates[i].name);
        template_destroy(&self->templates[i].tmpl);
    }
    free(self->templates);
    for (size_t i = 0; self->hidden && self->hidden[i]; i++) free(self->hidden[i]);
    free(self->hidden);
    free(self->observers);
    free(self->slots);
    free(self->state_dir);
    free(self->node_id);
    free(self->kernel_user);
    free(self->agent_path);
    free(self->host_home);
    free(self->pasta);
    free(self->cgroup_parent);
    free(self);
}

static int s_check_strings(json_t *obj, const char *what, size_t max_keys, size_t max_bytes,
                           char *why, size_t size)
{
    if (!obj) return 0;
    if (!json_is_object(obj)) {
        snprintf(why, size, "%s must be an object of strings", what);
        return KB_EINVAL;
    }
    if (json_object_size(obj) > max_keys) {
        snprintf(why, size, "%s has %zu keys; at most %zu", what, json_object_size(obj), max_keys);
        return KB_EINVAL;
    }
    size_t bytes = 0;
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        if (!json_is_string(v)) {
            snprintf(why, size, "%s.%s must be a string", what, key);
            return KB_EINVAL;
        }
        if (!*key) {
            snprintf(why, size, "%s has an empty key", what);
            return KB_EINVAL;
        }
        bytes += strlen(key) + json_string_length(v);
        if (memchr(json_string_value(v), '\0', json_string_length(v))) {
            snprintf(why, size, "%s.%s holds a NUL character", what, key);
            return KB_EINVAL;
        }
    }
    if (bytes > max_bytes) {
        snprintf(why, size, "%s is %zu bytes; at most %zu", what, bytes, max_bytes);
        return KB_EINVAL;
    }
    return 0;
}

static uint64_t s_timeout(const sandboxes_t *self, const sandbox_opts_t *opts)
{
    uint64_t timeout = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    return timeout > self->config.max_timeout_ms ? self->config.max_timeout_ms : timeout;
}

//  A warm sandbox becomes the one asked for: from now on it is like a fresh one (its
//  clock starts now, its settings are saved, it is listed, it ends on time).
static void s_adopt_warm(sandboxes_t *self, sandbox_t *sb, const char *name, const sandbox_opts_t *opts)
{
    char *tname = kb_strdup(name);
    if (tname) {
        free(sb->template_name);
        sb->template_name = tname;
    }
    if (opts->metadata) json_object_update(sb->metadata, opts->metadata);
    if (opts->env) json_object_update(sb->env, opts->env);
    uint64_t timeout = s_timeout(self, opts);
    sb->started_at = sandbox__wall_ms();
    sb->end_at = sb->started_at + (int64_t) timeout;
    sb->holds = opts->held ? 1 : 0;
    sb->pooled = false;
    s_link(self, sb);
    klog_info("sandbox %s: taken from the pool (template %s, timeout %llus)", sb->id, name,
              (unsigned long long) (timeout / 1000));
    sandbox__arm(sb);
    sandbox__save(sb);
}

sandbox_t *sandboxes__make_pooled(sandboxes_t *self, const char *name, const template_t *tmpl, int *err)
{
    *err = KB_ECLOSED;
    if (self->closing) return NULL;
    char id[SANDBOX_ID_MAX + 1];
    s_gen_id(self, id);
    sandbox_t *sb = sandbox__new(self, id, false);
    *err = KB_ENOMEM;
    if (!sb) return NULL;
    sb->pooled = true;
    sb->template_name = kb_strdup(name);
    sb->tmpl = tmpl;
    sb->isolation = self->config.isolation;
    sb->internet = true;
    sb->memory_bytes = self->config.memory_bytes;
    sb->cpu_millis = self->config.cpu_millis;
    sb->pids = self->config.pids;
    int rc = sb->template_name ? s_place(self, sb) : KB_ENOMEM;
    if (rc) {
        *err = rc;
        if (sb->slot >= 0) self->slots[sb->slot] = 0;
        sandbox__discard(sb);
        return NULL;
    }
    klog_info("sandbox %s: starting warm for the pool (template %s)", sb->id, name);
    sandbox__start(sb, false);
    *err = KB_OK;
    return sb;
}

json_t *sandboxes_pool_status(const sandboxes_t *self)
{
    return pool_status(self->pool);
}

sandbox_t *sandboxes_create(sandboxes_t *self, const sandbox_opts_t *opts, int *err, char *why,
                            size_t size)
{
    int dummy;
    if (!err) err = &dummy;
    const char *name = opts->template_id ? opts->template_id : "base";
    const template_t *tmpl = s_template(self, name);
    *err = KB_OK;
    if (self->closing) {
        *err = KB_ECLOSED;
        snprintf(why, size, "kbridge is shutting down");
    } else if (!tmpl) {
        *err = KB_ENOTFOUND;
        snprintf(why, size, "template '%s' not found", name);
    } else if ((*err = s_check_strings(opts->metadata, "metadata", METADATA_MAX_KEYS,
                                       METADATA_MAX_BYTES, why, size)) ||
               (*err = s_check_strings(opts->env, "envVars", ENV_MAX_KEYS, ENV_MAX_BYTES, why, size))) {
    } else if (opts->memory_bytes > self->config.memory_bytes && self->config.memory_bytes) {
        *err = KB_ELIMIT;
        snprintf(why, size, "memory %llu MiB is over this server's limit of %llu MiB (--sandbox-memory)",
                 (unsigned long long) (opts->memory_bytes >> 20),
                 (unsigned long long) (self->config.memory_bytes >> 20));
    } else if (self->config.cpu_millis && opts->cpu_millis > self->config.cpu_millis) {
        *err = KB_ELIMIT;
        snprintf(why, size, "%u CPUs is over this server's limit of %u (--sandbox-cpus)",
                 opts->cpu_millis / 1000, self->config.cpu_millis / 1000);
    } else if (self->config.max_sandboxes && self->count >= self->config.max_sandboxes) {
        *err = KB_ELIMIT;
        snprintf(why, size, "%zu sandboxes are running, the most this server allows (--max-sandboxes)",
                 self->count);
    }
    if (*err) return NULL;
    //  A warm one when it has what was asked for: the limits it was started with.
    bool fits = !opts->no_internet && (!opts->memory_bytes || opts->memory_bytes == self->config.memory_bytes) &&
                (!opts->cpu_millis || opts->cpu_millis == self->config.cpu_millis);
    sandbox_t *warm = fits ? pool_take(self->pool, tmpl) : NULL;
    if (self->pool && pool_targets_sandboxes(self->pool)) metrics_pool_take("sandbox", warm != NULL);
    if (warm) {
        s_adopt_warm(self, warm, name, opts);
        return warm;
    }
    char id[SANDBOX_ID_MAX + 1];
    s_gen_id(self, id);
    sandbox_t *sb = sandbox__new(self, id, false);
    if (!sb) {
        *err = KB_ENOMEM;
        snprintf(why, size, "out of memory");
        return NULL;
    }
    sb->template_name = kb_strdup(name);
    sb->tmpl = tmpl;
    sb->isolation = self->config.isolation;
    if (opts->metadata) json_object_update(sb->metadata, opts->metadata);
    if (opts->env) json_object_update(sb->env, opts->env);
    uint64_t timeout = s_timeout(self, opts);
    sb->end_at = sb->started_at + (int64_t) timeout;
    sb->internet = !opts->no_internet;
    sb->memory_bytes = opts->memory_bytes ? opts->memory_bytes : self->config.memory_bytes;
    sb->cpu_millis = opts->cpu_millis ? opts->cpu_millis : self->config.cpu_millis;
    sb->pids = self->config.pids;
    sb->holds = opts->held ? 1 : 0;
    int rc = sb->template_name ? s_place(self, sb) : KB_ENOMEM;
    if (rc) {
        *err = rc;
        snprintf(why, size, rc == KB_ELIMIT ? "no free uid range for another sandbox" : "out of memory");
        if (sb->slot >= 0) self->slots[sb->slot] = 0;
        sandbox__discard(sb);
        return NULL;
    }
    s_link(self, sb);
    klog_info("sandbox %s: creating (template %s, timeout %llus%s)", sb->id, name,
              (unsigned long long) (timeout / 1000), sb->internet ? "" : ", no internet");
    sandbox__start(sb, false);
    return sb;
}

sandbox_t *sandboxes_find(sandboxes_t *self, const char *id)
{
    if (!id) return NULL;
    if (self->def && strcmp(id, "default") == 0) return self->def;
    klist_t *it;
    klist_foreach(it, &self->all)
    {
        sandbox_t *sb = klist_entry(it, sandbox_t, link);
        if (strcmp(sb->id, id) == 0) return sb;
    }
    return NULL;
}

sandbox_t *sandboxes_default(sandboxes_t *self)
{
    return self->def;
}

size_t sandboxes_list(sandboxes_t *self, sandbox_t ***out)
{
    *out = NULL;
    if (!self->count) return 0;
    *out = malloc(self->count * sizeof **out);
    if (!*out) return 0;
    size_t n = 0;
    klist_t *it;
    klist_foreach(it, &self->all)(*out)[n++] = klist_entry(it, sandbox_t, link);
    return n;
}

size_t sandboxes_count(const sandboxes_t *self)
{
    return self->count;
}

int sandboxes_observe(sandboxes_t *self, const sandboxes_observer_t *observer, void *arg)
{
    observer_t *grown = realloc(self->observers, (self->nobservers + 1) * sizeof *grown);
    if (!grown) return KB_ENOMEM;
    self->observers = grown;
    self->observers[self->nobservers].fns = *observer;
    self->observers[self->nobservers].arg = arg;
    self->nobservers++;
    return 0;
}

void sandboxes_unobserve(sandboxes_t *self, void *arg)
{
    for (size_t i = 0; i < self->nobservers;) {
        if (self->observers[i].arg == arg) {
            memmove(&self->observers[i], &self->observers[i + 1],
                    (self->nobservers - i - 1) * sizeof *self->observers);
            self->nobservers--;
        } else {
            i++;
        }
    }
}

void sandboxes__ended(sandboxes_t *self, sandbox_t *sb, const char *why)
{
    if (sb->pooled) {
        //  Nobody's: no observer knows it.
        if (sb->slot >= 0 && sb->slot < SLOTS) self->slots[sb->slot] = 0;
        pool_forget(self->pool, sb);
        return;
    }
    if (sb != self->def) {
        klist_remove(&sb->link);
        self->count--;
        if (sb->slot >= 0 && sb->slot < SLOTS) self->slots[sb->slot] = 0;
    }
    //  Observers may unobserve themselves while told: walk a copy.
    size_t n = self->nobservers;
    observer_t copy[16];
    if (n > 16) n = 16;
    if (n) memcpy(copy, self->observers, n * sizeof *copy);
    for (size_t i = 0; i < n; i++)
        if (copy[i].fns.on_end) copy[i].fns.on_end(sb, why, copy[i].arg);
}

void sandboxes__state(sandboxes_t *self, sandbox_t *sb)
{
    size_t n = self->nobservers;
    observer_t copy[16];
    if (n > 16) n = 16;
    if (n) memcpy(copy, self->observers, n * sizeof *copy);
    for (size_t i = 0; i < n; i++)
        if (copy[i].fns.on_state) copy[i].fns.on_state(sb, copy[i].arg);
}
