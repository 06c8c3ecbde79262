/*  cgroup - v1 and v2 control groups for sandboxes (see cgroup.h). */
#include "cgroup.h"
#include "base/kberr.h"
#include "base/klog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

//  Paths here are a mount point plus a checked relative path of at most 200 bytes.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

//  v1 hierarchies we use, by controller.
enum { H_MEMORY, H_CPU, H_CPUACCT, H_PIDS, H_FREEZER, H_COUNT };
static const char *const s_ctl[H_COUNT] = {"memory", "cpu", "cpuacct", "pids", "freezer"};

struct _cgroup_t {
    bool v2;
    char *dir[H_COUNT];      //  v1: the group's directory in each hierarchy (NULL: none)
    char *unified;           //  v2: the group's directory
    char *procs[H_COUNT];    //  distinct cgroup.procs files to join
    size_t nprocs;
};

//  Mount points: v1 per controller, or the v2 root.
typedef struct {
    bool v2;
    char v2root[PATH_MAX];
    char v1[H_COUNT][PATH_MAX];
} mounts_t;

static void s_find_mounts(mounts_t *m)
{
    memset(m, 0, sizeof *m);
    struct statfs sf;
    //  Tests on a hybrid host point this at its cgroup2 mount (no controllers there, but
    //  joining, freezing, killing and removing are the v2 code paths).
    const char *forced = getenv("KBRIDGE_CGROUP2_ROOT");
    if (forced && statfs(forced, &sf) == 0 && sf.f_type == CGROUP2_SUPER_MAGIC) {
        m->v2 = true;
        snprintf(m->v2root, sizeof m->v2root, "%s", forced);
        return;
    }
    if (statfs("/sys/fs/cgroup", &sf) == 0 && sf.f_type == CGROUP2_SUPER_MAGIC) {
        m->v2 = true;
        snprintf(m->v2root, sizeof m->v2root, "/sys/fs/cgroup");
        return;
    }
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f) return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        //  id parent maj:min root mountpoint options [optional...] - fstype source superopts
        char *sep = strstr(line, " - ");
        if (!sep) continue;
        char mp[PATH_MAX], fstype[64], source[256], super[1024];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1) continue;
        if (sscanf(sep + 3, "%63s %255s %1023s", fstype, source, super) != 3) continue;
        if (strcmp(fstype, "cgroup") != 0) continue;
        for (int h = 0; h < H_COUNT; h++) {
            char opts[1024], *save = NULL;
            bool has = false;
            snprintf(opts, sizeof opts, "%s", super);
            for (char *tok = strtok_r(opts, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
                if (strcmp(tok, s_ctl[h]) == 0) has = true;
            if (has && !m->v1[h][0]) snprintf(m->v1[h], sizeof m->v1[h], "%s", mp);
        }
    }
    fclose(f);
}

static int s_write(const char *dir, const char *file, const char *value)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, value, strlen(value));
    int e = n < 0 ? errno : 0;
    close(fd);
    return -e;
}

static int s_read(const char *dir, const char *file, char *buf, size_t size)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = read(fd, buf, size - 1);
    int e = n < 0 ? errno : 0;
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return -e;
}

static uint64_t s_read_u64(const char *dir, const char *file)
{
    char buf[64];
    if (!dir || s_read(dir, file, buf, sizeof buf) < 0) return 0;
    return strtoull(buf, NULL, 10);
}

//  "key value" lines (memory.events, memory.oom_control, cpu.stat).
static uint64_t s_read_key(const char *dir, const char *file, const char *key)
{
    char buf[4096];
    if (!dir || s_read(dir, file, buf, sizeof buf) < 0) return 0;
    size_t kl = strlen(key);
    for (char *line = buf; line && *line;) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ')
            return strtoull(line + kl + 1, NULL, 10);
        line = strchr(line, '\n');
        if (line) line++;
    }
    return 0;
}

static int s_mkdirs(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -errno;
        *p = c;
        if (!c) return 0;
    }
}

static bool s_path_ok(const char *p)
{
    if (!p || !*p || *p == '/' || strlen(p) > 200) return false;
    for (const char *s = p; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '/' || *s == '-' || *s == '_' || *s == '.'))
            return false;
    return !strstr(p, "..") && !strstr(p, "//");
}

static void s_add_procs(cgroup_t *self, const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    for (size_t i = 0; i < self->nprocs; i++)
        if (strcmp(self->procs[i], path) == 0) return;
    self->procs[self->nprocs] = strdup(path);
    if (self->procs[self->nprocs]) self->nprocs++;
}

static void s_set_limits(cgroup_t *self, const cgroup_limits_t *l)
{
    char v[64];
    if (self->v2) {
        const char *d = self->unified;
        if (l->memory_bytes) snprintf(v, sizeof v, "%llu", (unsigned long long) l->memory_bytes);
        else snprintf(v, sizeof v, "max");
        s_write(d, "memory.max", v);
        s_write(d, "memory.swap.max", l->memory_bytes ? "0" : "max");
        if (l->pids) snprintf(v, sizeof v, "%u", l->pids);
        else snprintf(v, sizeof v, "max");
        s_write(d, "pids.max", v);
        if (l->cpu_millis) snprintf(v, sizeof v, "%u 100000", l->cpu_millis * 100);
        else snprintf(v, sizeof v, "max 100000");
        s_write(d, "cpu.max", v);
        return;
    }
    if (self->dir[H_MEMORY]) {
        const char *d = self->dir[H_MEMORY];
        snprintf(v, sizeof v, "%lld", l->memory_bytes ? (long long) l->memory_bytes : -1LL);
        //  memsw must stay >= the limit: raise memsw first when growing, after when
        //  shrinking; doing both orders covers either.
        s_write(d, "memory.memsw.limit_in_bytes", "-1");
        s_write(d, "memory.limit_in_bytes", v);
        s_write(d, "memory.memsw.limit_in_bytes", v);  //  no swap beyond the limit
        s_write(d, "memory.oom_control", "0");
    }
    if (self->dir[H_PIDS]) {
        if (l->pids) snprintf(v, sizeof v, "%u", l->pids);
        else snprintf(v, sizeof v, "max");
        s_write(self->dir[H_PIDS], "pids.max", v);
    }
    if (self->dir[H_CPU]) {
        s_write(self->dir[H_CPU], "cpu.cfs_period_us", "100000");
        snprintf(v, sizeof v, "%lld", l->cpu_millis ? (long long) l->cpu_millis * 100 : -1LL);
        s_write(self->dir[H_CPU], "cpu.cfs_quota_us", v);
    }
}

cgroup_t *cgroup_new(const char *path, const cgroup_limits_t *limits, char *why, size_t size,
                     int *err)
{
    if (!s_path_ok(path)) {
        snprintf(why, size, "bad cgroup path \"%s\"", path ? path : "");
        *err = KB_EINVAL;
        return NULL;
    }
    mounts_t m;
    s_find_mounts(&m);
    cgroup_t *self = calloc(1, sizeof *self);
    if (!self) {
        *err = KB_ENOMEM;
        return NULL;
    }
    self->v2 = m.v2;
    char dir[PATH_MAX];
    if (m.v2) {
        //  Enable the controllers on every level above the group.
        char avail[256] = "";
        s_read(m.v2root, "cgroup.controllers", avail, sizeof avail);
        char enable[128] = "";
        const char *want[] = {"memory", "cpu", "pids"};
        for (int i = 0; i < 3; i++)
            if (strstr(avail, want[i])) {
                strcat(enable, enable[0] ? " +" : "+");
                strcat(enable, want[i]);
            }
        snprintf(dir, sizeof dir, "%s", m.v2root);
        char copy[256], *save = NULL;
        snprintf(copy, sizeof copy, "%s", path);
        for (char *tok = strtok_r(copy, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
            if (enable[0]) s_write(dir, "cgroup.subtree_control", enable);
            size_t n = strlen(dir);
            snprintf(dir + n, sizeof dir - n, "/%s", tok);
            if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
                snprintf(why, size, "cannot make cgroup %s: %s", dir, strerror(errno));
                cgroup_destroy(&self);
                *err = KB_EIO;
                return NULL;
            }
        }
        self->unified = strdup(dir);
        if (self->unified) s_add_procs(self, dir);
    } else {
        for (int h = 0; h < H_COUNT; h++) {
            if (!m.v1[h][0]) continue;
            snprintf(dir, sizeof dir, "%s/%s", m.v1[h], path);
            int rc = s_mkdirs(dir);
            if (rc < 0) {
                snprintf(why, size, "cannot make cgroup %s: %s", dir, strerror(-rc));
                cgroup_destroy(&self);
                *err = KB_EIO;
                return NULL;
            }
            self->dir[h] = strdup(dir);
            if (self->dir[h]) s_add_procs(self, dir);
        }
    }
    if (self->nprocs == 0) {
        snprintf(why, size, "no cgroup filesystem with memory, cpu or pids controllers");
        cgroup_destroy(&self);
        *err = KB_EINVAL;
        return NULL;
    }
    s_set_limits(self, limits);
    return self;
}

void cgroup_destroy(cgroup_t **self_p)
{
    cgroup_t *self = *self_p;
    if (!self) return;
    for (int h = 0; h < H_COUNT; h++) free(self->dir[h]);
    for (size_t i = 0; i < self->nprocs; i++) free(self->procs[i]);
    free(self->unified);
    free(self);
    *self_p = NULL;
}

size_t cgroup_procs_files(const cgroup_t *self, const char **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < self->nprocs && n < cap; i++) out[n++] = self->procs[i];
    return n;
}

bool cgroup_has_freezer(const cgroup_t *self)
{
    return self->v2 || self->dir[H_FREEZER] != NULL;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool s_is_frozen(const cgroup_t *self)
{
    char buf[256];
    if (self->v2) return s_read_key(self->unified, "cgroup.events", "frozen") == 1;
    if (s_read(self->dir[H_FREEZER], "freezer.state", buf, sizeof buf) < 0) return false;
    return strncmp(buf, "FROZEN", 6) == 0;
}

int cgroup_freeze(cgroup_t *self, bool frozen)
{
    if (!cgroup_has_freezer(self)) return KB_EINVAL;
    int rc = self->v2
                 ? s_write(self->unified, "cgroup.freeze", frozen ? "1" : "0")
                 : s_write(self->dir[H_FREEZER], "freezer.state", frozen ? "FROZEN" : "THAWED");
    if (rc < 0) return KB_EIO;
    if (!frozen) return 0;
    //  Freezing is asynchronous; it normally completes at once. Wait a little, not more
    //  (this is on the loop): on a loaded machine it finishes on its own shortly after,
    //  and the request to freeze was taken.
    for (int i = 0; i < 100; i++) {
        if (s_is_frozen(self)) return 0;
        s_sleep_ms(1);
    }
    return 0;
}

uint64_t cgroup_oom_kills(const cgroup_t *self)
{
    if (self->v2) return s_read_key(self->unified, "memory.events", "oom_kill");
    return s_read_key(self->dir[H_MEMORY], "memory.oom_control", "oom_kill");
}

int cgroup_stats(const cgroup_t *self, cgroup_stats_t *st)
{
    memset(st, 0, sizeof *st);
    if (self->v2) {
        const char *d = self->unified;
        st->memory_bytes = s_read_u64(d, "memory.current");
        char buf[64];
        if (s_read(d, "memory.max", buf, sizeof buf) == 0 && strncmp(buf, "max", 3) != 0)
            st->memory_limit = strtoull(buf, NULL, 10);
        st->cpu_ns = s_read_key(d, "cpu.stat", "usage_usec") * 1000;
        st->pids = (uint32_t) s_read_u64(d, "pids.current");
    } else {
        st->memory_bytes = s_read_u64(self->dir[H_MEMORY], "memory.usage_in_bytes");
        uint64_t lim = s_read_u64(self->dir[H_MEMORY], "memory.limit_in_bytes");
        st->memory_limit = lim >= (1ull << 62) ? 0 : lim;
        st->cpu_ns = s_read_u64(self->dir[H_CPUACCT], "cpuacct.usage");
        st->pids = (uint32_t) s_read_u64(self->dir[H_PIDS], "pids.current");
    }
    st->oom_kills = cgroup_oom_kills(self);
    return 0;
}

//  SIGKILL every pid listed in dir/cgroup.procs. Returns how many were listed.
static int s_kill_listed(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    int n = 0, pid;
    while (fscanf(f, "%d", &pid) == 1) {
        if (pid > 0) kill(pid, SIGKILL);
        n++;
    }
    fclose(f);
    return n;
}

static int s_count_listed(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    int n = 0, pid;
    while (fscanf(f, "%d", &pid) == 1) n++;
    fclose(f);
    return n;
}

static int s_kill_dirs(const char *unified, const char *procs_dir, const char *freezer, bool v2,
                       int timeout_ms)
{
    for (int waited = 0;; waited += 2) {
        if (v2) {
            if (s_write(unified, "cgroup.kill", "1") < 0) s_kill_listed(unified);
            if (s_count_listed(unified) == 0) return 0;
        } else {
            //  Frozen, nothing can fork between reading cgroup.procs and the kills.
            if (freezer) s_write(freezer, "freezer.state", "FROZEN");
            int n = s_kill_listed(procs_dir);
            if (freezer) s_write(freezer, "freezer.state", "THAWED");
            if (n == 0 && s_count_listed(procs_dir) == 0) return 0;
        }
        if (waited >= timeout_ms) return KB_ETIMEDOUT;
        s_sleep_ms(2);
    }
}

int cgroup_kill_all(cgroup_t *self, int timeout_ms)
{
    if (self->v2) {
        s_write(self->unified, "cgroup.freeze", "0");
        return s_kill_dirs(self->unified, NULL, NULL, true, timeout_ms);
    }
    const char *procs = NULL;
    for (int h = 0; h < H_COUNT && !procs; h++) procs = self->dir[h];
    if (!procs) return 0;
    return s_kill_dirs(NULL, procs, self->dir[H_FREEZER], false, timeout_ms);
}

static int s_rmdir_wait(const char *dir)
{
    for (int i = 0; i < 500; i++) {
        if (rmdir(dir) == 0 || errno == ENOENT) return 0;
        if (errno != EBUSY) return KB_EIO;
        s_sleep_ms(2);  //  the last zombies are being reaped
    }
    return KB_EBUSY;
}

int cgroup_remove(cgroup_t *self)
{
    int rc = 0;
    if (self->v2) return s_rmdir_wait(self->unified);
    for (int h = 0; h < H_COUNT; h++) {
        if (!self->dir[h]) continue;
        if (h == H_FREEZER) s_write(self->dir[h], "freezer.state", "THAWED");
        int r = s_rmdir_wait(self->dir[h]);
        if (r < 0) rc = r;
    }
    return rc;
}

void cgroup_reap_stale(const char *parent)
{
    if (!s_path_ok(parent)) return;
    mounts_t m;
    s_find_mounts(&m);
    char base[PATH_MAX];
    int roots = m.v2 ? 1 : H_COUNT;
    for (int h = 0; h < roots; h++) {
        const char *mp = m.v2 ? m.v2root : m.v1[h];
        if (!mp[0]) continue;
        snprintf(base, sizeof base, "%s/%s", mp, parent);
        DIR *d = opendir(base);
        if (!d) continue;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.' || de->d_type != DT_DIR) continue;
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s/%s", base, de->d_name);
            int rc;
            if (m.v2) {
                rc = s_kill_dirs(dir, NULL, NULL, true, 2000);
            } else {
                char fz[PATH_MAX];
                snprintf(fz, sizeof fz, "%s/%s/%s", m.v1[H_FREEZER], parent, de->d_name);
                bool has_fz = m.v1[H_FREEZER][0] && access(fz, F_OK) == 0;
                rc = s_kill_dirs(NULL, dir, has_fz ? fz : NULL, false, 2000);
                if (h == H_FREEZER) s_write(dir, "freezer.state", "THAWED");
            }
            if (rc == 0) s_rmdir_wait(dir);
            klog_info("cgroup: removed stale %s", dir);
        }
        closedir(d);
    }
}
