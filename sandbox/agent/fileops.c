/*  fileops - file operations and directory watches, each in a forked worker.

    A worker switches to the requested user (setgroups, setresgid, setresuid) before it
    touches a path, so every operation has exactly that user's permissions, and the
    sandbox's own kernel view resolves `..` and symlinks. It replies on the shared
    seqpacket socket itself (a datagram is atomic, so workers and the loop never
    interleave) and exits; a stuck operation (a hung FUSE mount, a full pipe) blocks only
    its worker, never the agent. A watch is a worker that lives until stopped.

    Owner and group names come from the sandbox's own /etc/passwd and /etc/group, read as
    plain files: the agent never calls NSS, which would load the sandbox's libraries.
*/
#include "agent.h"
#include "base/kberr.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MAX_WORKERS 256
#define MAX_UPLOADS 1024
#define LIST_MAX_ENTRIES 100000
#define LIST_MAX_DEPTH 64
#define META_PREFIX "user.kbridge."
#define META_BYTES_MAX (48 * 1024)  //  per entry, so one entry always fits a message
#define WATCH_MAX 8192

typedef struct {
    uint64_t id;
    pid_t pid;
    bool watch;
    bool cancelled;
    bool noreply;
    bool upload;  //  an upload's BEGIN (the upload has the same id): cleanup on cancel
} worker_t;

typedef struct {
    bool used;
    uint64_t id;
    char user[8];
    bool has_user;
    char *tmpname;
    char *path;     //  the upload's target (normalized)
    bool orphaned;  //  its BEGIN was cancelled: remove the temporary file
} upload_t;

static worker_t s_workers[MAX_WORKERS];
static size_t s_nworkers;
static upload_t s_uploads[MAX_UPLOADS];

// ---------------------------------------------------------------------------------------
//  Helpers

static void s_normalize(const char *in, char *out, size_t size)
{
    size_t n = 0;
    for (const char *p = in; *p && n + 1 < size; p++) {
        if (*p == '/' && n > 0 && out[n - 1] == '/') continue;
        out[n++] = *p;
    }
    if (n > 1 && out[n - 1] == '/') n--;
    out[n] = '\0';
}

static const char *s_base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void s_dirname(const char *path, char *out, size_t size)
{
    const char *s = strrchr(path, '/');
    if (!s || s == path) snprintf(out, size, "/");
    else snprintf(out, size, "%.*s", (int) (s - path), path);
}

static char *s_join(const char *dir, const char *name, char *out, size_t size)
{
    int n = strcmp(dir, "/") == 0 ? snprintf(out, size, "/%s", name)
                                  : snprintf(out, size, "%s/%s", dir, name);
    return n > 0 && (size_t) n < size ? out : NULL;
}

static bool s_path_valid(const char *p)
{
    return p && p[0] == '/' && strlen(p) < PATH_MAX;
}

// ---------------------------------------------------------------------------------------
//  Names of users and groups (the sandbox's own files)

typedef struct {
    uint32_t id;
    char name[33];
} idname_t;

static idname_t *s_users, *s_groups;
static size_t s_nusers, s_ngroups;
static bool s_names_loaded;

static size_t s_load_ids(const char *file, idname_t **out)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return 0;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 20)) {
        close(fd);
        return 0;
    }
    char *buf = malloc((size_t) st.st_size + 1);
    ssize_t n = buf ? read(fd, buf, (size_t) st.st_size) : -1;
    close(fd);
    if (n <= 0) {
        free(buf);
        return 0;
    }
    buf[n] = '\0';
    size_t cap = 0, count = 0;
    idname_t *v = NULL;
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || c1 - line > 32 || c1 == line) continue;
        char *end;
        unsigned long id = strtoul(c2 + 1, &end, 10);
        if (end == c2 + 1 || *end != ':') continue;
        if (count == cap) {
            size_t nc = cap ? cap * 2 : 64;
            idname_t *nv = realloc(v, nc * sizeof *nv);
            if (!nv) break;
            v = nv;
            cap = nc;
        }
        v[count].id = (uint32_t) id;
        snprintf(v[count].name, sizeof v[count].name, "%.*s", (int) (c1 - line), line);
        count++;
    }
    free(buf);
    *out = v;
    return count;
}

static const char *s_name(idname_t *v, size_t n, uint32_t id, char *tmp, size_t size)
{
    for (size_t i = 0; i < n; i++)
        if (v[i].id == id) return v[i].name;
    snprintf(tmp, size, "%u", id);
    return tmp;
}

static void s_load_names(void)
{
    if (s_names_loaded) return;
    s_names_loaded = true;
    s_nusers = s_load_ids("/etc/passwd", &s_users);
    s_ngroups = s_load_ids("/etc/group", &s_groups);
}

// ---------------------------------------------------------------------------------------
//  Entries

static uint32_t s_ftype(mode_t m)
{
    if (S_ISREG(m)) return 1;
    if (S_ISDIR(m)) return 2;
    if (S_ISLNK(m)) return 3;
    return 4;
}

static void s_put_meta(ap_writer_t *w, const char *path)
{
    char names[8192];
    ssize_t n = llistxattr(path, names, sizeof names);
    if (n <= 0) return;
    size_t used = 0, count = 0;
    for (char *p = names; p < names + n && count < AP_MAX_META; p += strlen(p) + 1) {
        size_t plen = strlen(META_PREFIX);
        if (strncmp(p, META_PREFIX, plen) != 0 || !p[plen] || strlen(p + plen) > AP_MAX_META_NAME)
            continue;
        char value[AP_MAX_META_VALUE + 1];
        ssize_t vn = lgetxattr(path, p, value, AP_MAX_META_VALUE);
        if (vn < 0) continue;
        value[vn] = '\0';
        size_t vlen = strlen(value);
        if (used + strlen(p + plen) + vlen > META_BYTES_MAX) break;
        used += strlen(p + plen) + vlen;
        ap_put_str(w, APE_META, p + plen);
        ap_put_str(w, APE_META, value);
        count++;
    }
}

//  One APT_ENTRY for path (already lstat'ed into st). dirfd/name: how to reach it cheaply.
static void s_put_entry(ap_writer_t *w, const char *path, const char *name, const struct stat *st)
{
    s_load_names();
    size_t mark = ap_nest_begin(w, APT_ENTRY);
    ap_put_str(w, APE_NAME, name);
    ap_put_str(w, APE_PATH, path);
    ap_put_u32(w, APE_TYPE, s_ftype(st->st_mode));
    if (S_ISLNK(st->st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = '\0';
        ap_put_str(w, APE_TARGET, target);
        struct stat ts;
        ap_put_u32(w, APE_TTYPE, stat(path, &ts) == 0 ? s_ftype(ts.st_mode) : 0);
    }
    ap_put_u64(w, APE_SIZE, (uint64_t) st->st_size);
    ap_put_u32(w, APE_MODE, st->st_mode);
    ap_put_u32(w, APE_UID, st->st_uid);
    ap_put_u32(w, APE_GID, st->st_gid);
    char t1[16], t2[16];
    ap_put_str(w, APE_OWNER, s_name(s_users, s_nusers, st->st_uid, t1, sizeof t1));
    ap_put_str(w, APE_GROUP, s_name(s_groups, s_ngroups, st->st_gid, t2, sizeof t2));
    ap_put_u64(w, APE_MTIME,
               (uint64_t) ((int64_t) st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec));
    if (S_ISREG(st->st_mode) || S_ISDIR(st->st_mode)) s_put_meta(w, path);
    ap_nest_end(w, mark);
}

static uint8_t s_out[AP_MAX_MSG];

static void s_reply_entry(uint64_t id, const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        agent_error(true, id, agent_errno_kb(errno), "%s: %s", path, strerror(errno));
        return;
    }
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_ENTRIES, id);
    s_put_entry(&w, path, strcmp(path, "/") ? s_base(path) : "", &st);
    ap_put_u32(&w, APT_MORE, 0);
    size_t n = ap_end(&w);
    if (n) agent_send_blocking(s_out, n, NULL, 0);
    else agent_error(true, id, KB_ETOOBIG, "%s: entry too large", path);
}

static void s_reply_none(uint64_t id)
{
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_ENTRIES, id);
    ap_put_u32(&w, APT_MORE, 0);
    agent_send_blocking(s_out, ap_end(&w), NULL, 0);
}

#define FAIL(id, e, ...)                                                                   \
    do {                                                                                   \
        agent_error(true, (id), (e), __VA_ARGS__);                                         \
        return;                                                                            \
    } while (0)
#define FAIL_ERRNO(id, what, path)                                                         \
    FAIL(id, agent_errno_kb(errno), "%s %s: %s", what, path, strerror(errno))

// ---------------------------------------------------------------------------------------
//  Operations

static void s_op_stat(uint64_t id, const char *path)
{
    s_reply_entry(id, path);
}

typedef struct {
    char *path;
    int level;
} qent_t;

static int s_cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

static void s_op_list(uint64_t id, const char *path, int depth)
{
    if (depth < 1) depth = 1;
    if (depth > LIST_MAX_DEPTH) depth = LIST_MAX_DEPTH;
    int top = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK);
    if (top < 0) FAIL_ERRNO(id, "list", path);
    size_t qcap = 64, qhead = 0, qtail = 0, total = 0;
    qent_t *q = malloc(qcap * sizeof *q);
    char *p0 = strdup(path);
    if (!q || !p0) {
        free(q);
        free(p0);
        close(top);
        FAIL(id, KB_ENOMEM, "list %s: out of memory", path);
    }
    q[qtail++] = (qent_t){p0, 1};
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_ENTRIES, id);
    int err = 0;
    while (qhead < qtail && !err) {
        qent_t cur = q[qhead++];
        int dfd = qhead == 1 ? top
                             : open(cur.path,
                                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
        if (!d) {
            if (dfd >= 0) close(dfd);
            free(cur.path);
            continue;  //  an unreadable subdirectory: listed, not entered
        }
        char **names = NULL;
        size_t nn = 0, ncap = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            if (total + nn >= LIST_MAX_ENTRIES) {
                err = KB_ETOOBIG;
                break;
            }
            if (nn == ncap) {
                ncap = ncap ? ncap * 2 : 64;
                char **nv = realloc(names, ncap * sizeof *nv);
                if (!nv) {
                    err = KB_ENOMEM;
                    break;
                }
                names = nv;
            }
            names[nn] = strdup(de->d_name);
            if (!names[nn]) {
                err = KB_ENOMEM;
                break;
            }
            nn++;
        }
        if (nn > 1) qsort(names, nn, sizeof *names, s_cmp_names);
        for (size_t i = 0; i < nn && !err; i++) {
            char full[PATH_MAX];
            struct stat st;
            if (!s_join(cur.path, names[i], full, sizeof full) ||
                fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
                continue;
            size_t mark = ap_mark(&w);
            s_put_entry(&w, full, names[i], &st);
            if (w.overflow) {
                ap_rewind(&w, mark);
                ap_put_u32(&w, APT_MORE, 1);
                if (agent_send_blocking(s_out, ap_end(&w), NULL, 0) < 0) _exit(0);
                ap_begin(&w, s_out, sizeof s_out, AP_ENTRIES, id);
                s_put_entry(&w, full, names[i], &st);
            }
            total++;
            if (S_ISDIR(st.st_mode) && cur.level < depth) {
                if (qtail == qcap) {
                    qent_t *nq = realloc(q, 2 * qcap * sizeof *q);
                    if (!nq) {
                        err = KB_ENOMEM;
                        break;
                    }
                    q = nq;
                    qcap *= 2;
                }
                char *dup = strdup(full);
                if (!dup) {
                    err = KB_ENOMEM;
                    break;
                }
                q[qtail++] = (qent_t){dup, cur.level + 1};
            }
        }
        for (size_t i = 0; i < nn; i++) free(names[i]);
        free(names);
        closedir(d);
        free(cur.path);
    }
    while (qhead < qtail) free(q[qhead++].path);
    free(q);
    if (err) FAIL(id, err, "list %s: %s", path,
                  err == KB_ETOOBIG ? "more than 100000 entries" : "out of memory");
    ap_put_u32(&w, APT_MORE, 0);
    agent_send_blocking(s_out, ap_end(&w), NULL, 0);
}

//  mkdir -p of path's components (path itself included). 0 or -errno.
static int s_mkdirs(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -errno;
        if (errno == EEXIST) {
            struct stat st;
            if (stat(buf, &st) < 0) return -errno;
            if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
        }
        *p = c;
        if (!c) return 0;
    }
}

static void s_op_mkdir(uint64_t id, const char *path, bool parents)
{
    if (strcmp(path, "/") == 0) FAIL(id, KB_EEXIST, "mkdir /: exists");
    if (parents) {
        char dir[PATH_MAX];
        s_dirname(path, dir, sizeof dir);
        int rc = s_mkdirs(dir);
        if (rc < 0) FAIL(id, agent_errno_kb(-rc), "mkdir %s: %s", dir, strerror(-rc));
    }
    if (mkdir(path, 0755) < 0) FAIL_ERRNO(id, "mkdir", path);
    s_reply_entry(id, path);
}

static void s_op_rename(uint64_t id, const char *from, const char *to)
{
    if (rename(from, to) < 0) {
        if (errno == EXDEV)
            FAIL(id, KB_EINVAL, "rename %s to %s: cannot move across filesystems", from, to);
        FAIL(id, agent_errno_kb(errno), "rename %s to %s: %s", from, to, strerror(errno));
    }
    s_reply_entry(id, to);
}

//  rm -r below dirfd/name: never follows symlinks, never crosses into another mount.
static int s_rm_tree(int dirfd, const char *name, dev_t dev, int depth)
{
    if (depth > 4096) return -ELOOP;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return -e;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) && rc == 0) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        struct stat st;
        if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (st.st_dev != dev) rc = -EBUSY;
            else rc = s_rm_tree(fd, de->d_name, dev, depth + 1);
        } else if (unlinkat(fd, de->d_name, 0) < 0 && errno != ENOENT) {
            rc = -errno;
        }
    }
    closedir(d);
    if (rc == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) < 0) {
        rc = -errno;
        //  something was created meanwhile: one more pass
        if (rc == -ENOTEMPTY) return s_rm_tree(dirfd, name, dev, depth + 1);
    }
    return rc;
}

static void s_op_remove(uint64_t id, const char *path)
{
    struct stat st;
    if (strcmp(path, "/") == 0) FAIL(id, KB_EINVAL, "remove /: refused");
    if (lstat(path, &st) < 0) FAIL_ERRNO(id, "remove", path);
    if (S_ISDIR(st.st_mode)) {
        int rc = s_rm_tree(AT_FDCWD, path, st.st_dev, 0);
        if (rc < 0) FAIL(id, agent_errno_kb(-rc), "remove %s: %s", path, strerror(-rc));
    } else if (unlink(path) < 0) {
        FAIL_ERRNO(id, "remove", path);
    }
    s_reply_none(id);
}

static bool s_meta_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AP_MAX_META_NAME) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return false;
    return true;
}

static void s_op_setmeta(const ap_msg_t *m, const char *path)
{
    const char *pairs[2 * AP_MAX_META];
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (m->f[i].tag != APT_META) continue;
        const char *s = ap_str(&m->f[i]);
        if (!s || n == 2 * AP_MAX_META) FAIL(m->id, KB_EINVAL, "set metadata %s: too many", path);
        pairs[n++] = s;
    }
    if (n % 2) FAIL(m->id, KB_EINVAL, "set metadata %s: a name without a value", path);
    for (size_t i = 0; i < n; i += 2) {
        if (!s_meta_name_ok(pairs[i]))
            FAIL(m->id, KB_EINVAL, "set metadata %s: bad name \"%s\"", path, pairs[i]);
        if (strlen(pairs[i + 1]) > AP_MAX_META_VALUE)
            FAIL(m->id, KB_ETOOBIG, "set metadata %s: value of %s too long", path, pairs[i]);
        char name[256];
        snprintf(name, sizeof name, META_PREFIX "%s", pairs[i]);
        if (setxattr(path, name, pairs[i + 1], strlen(pairs[i + 1]), 0) < 0) {
            if (errno == ENOTSUP)
                FAIL(m->id, KB_EINVAL, "set metadata %s: not supported here", path);
            FAIL_ERRNO(m->id, "set metadata", path);
        }
    }
    s_reply_entry(m->id, path);
}

//  Open a regular file for reading without ever opening anything else: O_PATH first (it
//  opens nothing, so a FIFO or a device cannot block or react), then reopen the very
//  same inode through /proc/self/fd, which checks the user's permissions.
static void s_op_open(uint64_t id, const char *path)
{
    int pfd = open(path, O_PATH | O_CLOEXEC);
    if (pfd < 0) FAIL_ERRNO(id, "open", path);
    struct stat st;
    if (fstat(pfd, &st) < 0) {
        close(pfd);
        FAIL_ERRNO(id, "open", path);
    }
    if (S_ISDIR(st.st_mode)) {
        close(pfd);
        FAIL(id, KB_EISDIR, "open %s: is a directory", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(pfd);
        FAIL(id, KB_EINVAL, "open %s: not a regular file", path);
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", pfd);
    int fd = open(proc, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    close(pfd);
    if (fd < 0) FAIL_ERRNO(id, "open", path);
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_FD, id);
    s_put_entry(&w, path, s_base(path), &st);
    size_t n = ap_end(&w);
    agent_send_blocking(s_out, n, &fd, 1);
    close(fd);
}

static void s_op_upload_begin(uint64_t id, const char *path, bool parents, const char *tmpname)
{
    char dir[PATH_MAX];
    s_dirname(path, dir, sizeof dir);
    if (strcmp(path, "/") == 0) FAIL(id, KB_EISDIR, "write /: is a directory");
    if (parents) {
        int rc = s_mkdirs(dir);
        if (rc < 0) FAIL(id, agent_errno_kb(-rc), "mkdir %s: %s", dir, strerror(-rc));
    }
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        FAIL(id, KB_EISDIR, "write %s: is a directory", path);
    int fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL))
        fd = open(tmpname, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (errno == ENOENT) FAIL(id, KB_ENOTFOUND, "write %s: no directory %s", path, dir);
        FAIL_ERRNO(id, "write", path);
    }
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_FD, id);
    agent_send_blocking(s_out, ap_end(&w), &fd, 1);
    close(fd);
}

static bool s_same_file(int fd, const char *path)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && lstat(path, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

static void s_op_upload_commit(uint64_t id, const char *path, int fd, const char *tmpname)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        FAIL(id, KB_EINVAL, "write %s: no upload file", path);
    if (st.st_nlink == 0) {
        //  O_TMPFILE: give it the temporary name first (linkat through /proc needs no
        //  capability, unlike AT_EMPTY_PATH).
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        if (linkat(AT_FDCWD, proc, AT_FDCWD, tmpname, AT_SYMLINK_FOLLOW) < 0)
            FAIL_ERRNO(id, "write", path);
    } else if (!s_same_file(fd, tmpname)) {
        FAIL(id, KB_EIO, "write %s: the temporary file is gone", path);
    }
    struct stat old;
    //  The file replaced is held open across the rename and let go after the answer: the
    //  kernel frees its blocks and page cache (tens of ms for 100 MB) when the last
    //  reference goes, and the client need not wait for that.
    int oldfd = -1;
    if (stat(path, &old) == 0 && S_ISREG(old.st_mode)) {
        fchmod(fd, old.st_mode & 07777);
        oldfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    }
    if (rename(tmpname, path) < 0) {
        int e = errno;
        unlink(tmpname);
        if (oldfd >= 0) close(oldfd);
        errno = e;
        FAIL_ERRNO(id, "write", path);
    }
    s_reply_entry(id, path);
    if (oldfd >= 0) close(oldfd);
}

static void s_op_upload_abort(int fd, const char *tmpname)
{
    if (fd >= 0 && s_same_file(fd, tmpname)) unlink(tmpname);
    else if (fd < 0) unlink(tmpname);  //  cancelled before kbridge had the fd
}

// ---------------------------------------------------------------------------------------
//  Watches

typedef struct {
    int wd;
    char *rel;  //  "" for the watched directory itself
} wmap_t;

static wmap_t s_wmap[WATCH_MAX];
static size_t s_nwmap;
static int s_ifd = -1;
static const uint32_t WATCH_MASK = IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM |
                                   IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF |
                                   IN_DONT_FOLLOW | IN_ONLYDIR | IN_EXCL_UNLINK;

static void s_watch_end(uint64_t id, int err, const char *why)
{
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_WATCH_END, id);
    ap_put_u32(&w, APT_ERR, (uint32_t) err);
    ap_put_str(&w, APT_WHY, why);
    agent_send_blocking(s_out, ap_end(&w), NULL, 0);
    _exit(0);
}

static const char *s_wrel(int wd)
{
    for (size_t i = 0; i < s_nwmap; i++)
        if (s_wmap[i].wd == wd) return s_wmap[i].rel;
    return NULL;
}

//  Watch root/rel and (recursive) every directory below it. 0, or a KB_ code.
static int s_watch_add(const char *root, const char *rel, bool recursive)
{
    char full[PATH_MAX];
    if (*rel) {
        if (!s_join(root, rel, full, sizeof full)) return 0;
    } else {
        snprintf(full, sizeof full, "%s", root);
    }
    int wd = inotify_add_watch(s_ifd, full, WATCH_MASK);
    if (wd < 0) {
        if (!*rel) return errno == ENOSPC ? KB_ELIMIT : agent_errno_kb(errno);
        return errno == ENOSPC ? KB_ELIMIT : 0;  //  a subdirectory that went away: fine
    }
    if (!s_wrel(wd)) {
        if (s_nwmap == WATCH_MAX) return KB_ELIMIT;
        s_wmap[s_nwmap].wd = wd;
        s_wmap[s_nwmap].rel = strdup(rel);
        if (!s_wmap[s_nwmap].rel) return KB_ENOMEM;
        s_nwmap++;
    }
    if (!recursive) return 0;
    DIR *d = opendir(full);
    if (!d) return 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) && rc == 0) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
            continue;
        char sub[PATH_MAX];
        int n = *rel ? snprintf(sub, sizeof sub, "%s/%s", rel, de->d_name)
                     : snprintf(sub, sizeof sub, "%s", de->d_name);
        if (n > 0 && (size_t) n < sizeof sub) rc = s_watch_add(root, sub, true);
    }
    closedir(d);
    return rc;
}

static void s_send_event(uint64_t id, int type, const char *name, bool is_dir)
{
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_WATCH_EVENT, id);
    ap_put_u32(&w, APT_EVTYPE, (uint32_t) type);
    ap_put_str(&w, APT_NAME, name);
    ap_put_u32(&w, APT_ISDIR, is_dir);
    size_t n = ap_end(&w);
    if (n && agent_send_blocking(s_out, n, NULL, 0) < 0) _exit(0);  //  kbridge is gone
}

static void s_op_watch(uint64_t id, const char *path, bool recursive)
{
    struct stat st;
    if (stat(path, &st) < 0) FAIL_ERRNO(id, "watch", path);
    if (!S_ISDIR(st.st_mode)) FAIL(id, KB_ENOTDIR, "watch %s: not a directory", path);
    s_ifd = inotify_init1(IN_CLOEXEC);
    if (s_ifd < 0)
        FAIL(id, errno == EMFILE ? KB_ELIMIT : KB_EIO, "watch %s: %s", path, strerror(errno));
    int rc = s_watch_add(path, "", recursive);
    if (rc < 0)
        FAIL(id, rc, "watch %s: %s", path,
             rc == KB_ELIMIT ? "too many watches" : "cannot watch it");
    ap_writer_t w;
    ap_begin(&w, s_out, sizeof s_out, AP_WATCH_STARTED, id);
    if (agent_send_blocking(s_out, ap_end(&w), NULL, 0) < 0) _exit(0);
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    int root_wd = s_wmap[0].wd;
    for (;;) {
        ssize_t n = read(s_ifd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) s_watch_end(id, KB_EIO, "the watch failed");
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *) p;
            p += sizeof *ev + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) s_watch_end(id, KB_ETOOBIG, "events were lost");
            if (ev->wd == root_wd && (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)))
                s_watch_end(id, KB_ENOTFOUND, "the watched directory was removed");
            if (ev->mask & IN_IGNORED) {
                for (size_t i = 0; i < s_nwmap; i++)
                    if (s_wmap[i].wd == ev->wd) {
                        free(s_wmap[i].rel);
                        s_wmap[i] = s_wmap[--s_nwmap];
                        break;
                    }
                continue;
            }
            const char *rel = s_wrel(ev->wd);
            if (!rel || !ev->len || !ev->name[0]) continue;
            char name[PATH_MAX];
            int nl = *rel ? snprintf(name, sizeof name, "%s/%s", rel, ev->name)
                          : snprintf(name, sizeof name, "%s", ev->name);
            if (nl <= 0 || (size_t) nl >= sizeof name) continue;
            bool is_dir = (ev->mask & IN_ISDIR) != 0;
            int type = 0;
            if (ev->mask & (IN_CREATE | IN_MOVED_TO)) type = 1;
            else if (ev->mask & IN_MODIFY) type = 2;
            else if (ev->mask & IN_DELETE) type = 3;
            else if (ev->mask & IN_MOVED_FROM) type = 4;
            else if (ev->mask & IN_ATTRIB) type = 5;
            if (!type) continue;
            s_send_event(id, type, name, is_dir);
            if (recursive && is_dir && type == 1) {
                rc = s_watch_add(path, name, true);
                if (rc == KB_ELIMIT) s_watch_end(id, KB_ELIMIT, "too many watches");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
//  Worker bodies

void fileop_worker(const ap_msg_t *m, const int *fds, int nfds, const agent_user_t *u,
                   const char *tmpname, const char *target)
{
    (void) u;
    char path[PATH_MAX], path2[PATH_MAX];
    if (m->type == AP_UPLOAD_ABORT) {  //  no reply, no path needed
        s_op_upload_abort(nfds > 0 ? fds[0] : -1, tmpname);
        return;
    }
    if (m->type == AP_UPLOAD_COMMIT) {  //  the path is the BEGIN's
        s_op_upload_commit(m->id, target, nfds > 0 ? fds[0] : -1, tmpname);
        return;
    }
    const char *p = ap_get_str(m, APT_PATH);
    if (!s_path_valid(p)) FAIL(m->id, KB_EINVAL, "not an absolute path");
    s_normalize(p, path, sizeof path);
    uint32_t v = 0;
    switch (m->type) {
    case AP_STAT: s_op_stat(m->id, path); break;
    case AP_LIST:
        v = 1;
        ap_get_u32(m, APT_DEPTH, &v);
        s_op_list(m->id, path, (int) (v > LIST_MAX_DEPTH ? LIST_MAX_DEPTH : v));
        break;
    case AP_MKDIR:
        ap_get_u32(m, APT_PARENTS, &v);
        s_op_mkdir(m->id, path, v != 0);
        break;
    case AP_RENAME: {
        const char *to = ap_get_str(m, APT_PATH2);
        if (!s_path_valid(to)) FAIL(m->id, KB_EINVAL, "rename: not an absolute path");
        s_normalize(to, path2, sizeof path2);
        s_op_rename(m->id, path, path2);
        break;
    }
    case AP_REMOVE: s_op_remove(m->id, path); break;
    case AP_SETMETA: s_op_setmeta(m, path); break;
    case AP_OPEN: s_op_open(m->id, path); break;
    case AP_UPLOAD_BEGIN:
        ap_get_u32(m, APT_PARENTS, &v);
        s_op_upload_begin(m->id, path, v != 0, tmpname);
        break;
    case AP_WATCH:
        ap_get_u32(m, APT_RECURSIVE, &v);
        s_op_watch(m->id, path, v != 0);
        break;
    default: break;
    }
}

// ---------------------------------------------------------------------------------------
//  The agent's side: fork workers, track them, clean up after cancelled uploads.

static worker_t *s_find_worker_id(uint64_t id)
{
    for (size_t i = 0; i < s_nworkers; i++)
        if (s_workers[i].id == id) return &s_workers[i];
    return NULL;
}

static upload_t *s_find_upload(uint64_t id)
{
    for (size_t i = 0; i < MAX_UPLOADS; i++)
        if (s_uploads[i].used && s_uploads[i].id == id) return &s_uploads[i];
    return NULL;
}

static void s_free_upload(upload_t *up)
{
    free(up->tmpname);
    free(up->path);
    memset(up, 0, sizeof *up);
}

//  Close everything but the socket and keep[] (in the worker: other processes' pipe ends
//  must not live on in a long-lived watch).
static void s_close_others(const int *keep, int nkeep)
{
    int top = -1;
    for (;;) {
        int next = -1;
        for (int i = 0; i < nkeep; i++)
            if (keep[i] > top && (next < 0 || keep[i] < next)) next = keep[i];
        if (g_sock > top && (next < 0 || g_sock < next)) next = g_sock;
        unsigned lo = (unsigned) (top < 2 ? 3 : top + 1);
        if (next < 0) {
            close_range(lo, ~0U, 0);
            return;
        }
        if ((unsigned) next > lo) close_range(lo, (unsigned) next - 1, 0);
        top = next;
    }
}

static pid_t s_fork_worker(const ap_msg_t *m, const int *fds, int nfds, const char *user,
                           const char *tmpname, const char *target, bool noreply, bool watch,
                           bool upload)
{
    agent_user_t u;
    if (s_nworkers == MAX_WORKERS) {
        if (!noreply) agent_error(false, m->id, KB_ELIMIT, "too many file operations at once");
        return -1;
    }
    if (agent_user(user, &u) < 0) {
        if (!noreply) agent_error(false, m->id, KB_EINVAL, "unknown user");
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        s_close_others(fds, nfds);
        int rc = agent_become(&u);
        if (rc < 0) {
            if (!noreply)
                agent_error(true, m->id, KB_EIO, "cannot become %s: %s", user ? user : "agent",
                            strerror(-rc));
            _exit(0);
        }
        if (g_cfg.mode == 0) prctl(PR_SET_PDEATHSIG, SIGKILL);
        umask(022);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        fileop_worker(m, fds, nfds, &u, tmpname, target);
        _exit(0);
    }
    if (pid < 0) {
        if (!noreply)
            agent_error(false, m->id, errno == EAGAIN ? KB_ELIMIT : KB_EIO,
                        "cannot fork a worker: %s", strerror(errno));
        return -1;
    }
    worker_t *w = &s_workers[s_nworkers++];
    memset(w, 0, sizeof *w);
    w->id = m->id;
    w->pid = pid;
    w->watch = watch;
    w->noreply = noreply;
    w->upload = upload;
    return pid;
}

void fileop_request(const ap_msg_t *m, int *fds, int nfds)
{
    const char *user = ap_get_str(m, APT_USER);
    const char *path = ap_get_str(m, APT_PATH);
    if (m->type == AP_UPLOAD_BEGIN) {
        size_t slot = MAX_UPLOADS;
        for (size_t i = 0; i < MAX_UPLOADS && slot == MAX_UPLOADS; i++)
            if (!s_uploads[i].used) slot = i;
        if (slot == MAX_UPLOADS || !s_path_valid(path) || strlen(path) > PATH_MAX - 64) {
            agent_error(false, m->id, slot == MAX_UPLOADS ? KB_ELIMIT : KB_EINVAL,
                        "cannot start an upload to %s", path ? path : "(none)");
        } else {
            char norm[PATH_MAX], dir[PATH_MAX], tmp[PATH_MAX + 200], rnd[9];
            s_normalize(path, norm, sizeof norm);
            s_dirname(norm, dir, sizeof dir);
            unsigned r = 0;
            int ufd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
            if (ufd >= 0) {
                if (read(ufd, &r, sizeof r) < 0) r = 0;
                close(ufd);
            }
            r ^= (unsigned) getpid() ^ (unsigned) m->id;
            snprintf(rnd, sizeof rnd, "%08x", r);
            snprintf(tmp, sizeof tmp, "%s%s.%.160s.kbridge-%s", dir, strcmp(dir, "/") ? "/" : "",
                     s_base(norm), rnd);
            upload_t *up = &s_uploads[slot];
            up->tmpname = strdup(tmp);
            up->path = strdup(norm);
            if (up->tmpname && up->path) {
                up->used = true;
                up->id = m->id;
                up->has_user = user != NULL;
                snprintf(up->user, sizeof up->user, "%s", user ? user : "");
                if (s_fork_worker(m, NULL, 0, user, up->tmpname, NULL, false, false, true) < 0)
                    s_free_upload(up);
            } else {
                s_free_upload(up);
                agent_error(false, m->id, KB_ENOMEM, "out of memory");
            }
        }
    } else if (m->type == AP_UPLOAD_COMMIT || m->type == AP_UPLOAD_ABORT) {
        uint64_t uid = m->id;
        if (m->type == AP_UPLOAD_COMMIT) ap_u64(ap_get(m->f, m->n, APT_UPLOAD), &uid);
        upload_t *up = s_find_upload(uid);
        //  A COMMIT, or an ABORT with the fd, means kbridge has the file: the BEGIN is over
        //  even if its worker is not reaped yet. An ABORT without it stops a BEGIN that
        //  may still run; cleanup follows when it is reaped.
        worker_t *begin = up && nfds == 0 ? s_find_worker_id(uid) : NULL;
        if (begin && m->type == AP_UPLOAD_ABORT) {
            fileop_cancel(uid);
        } else if (!up) {
            if (m->type == AP_UPLOAD_COMMIT) agent_error(false, m->id, KB_EINVAL, "no such upload");
        } else {
            s_fork_worker(m, fds, nfds, up->has_user ? up->user : NULL, up->tmpname, up->path,
                          m->type == AP_UPLOAD_ABORT, false, false);
            s_free_upload(up);
        }
    } else {
        s_fork_worker(m, NULL, 0, user, NULL, NULL, false, m->type == AP_WATCH, false);
    }
    for (int i = 0; i < nfds; i++) close(fds[i]);
}

void fileop_cancel(uint64_t id)
{
    worker_t *w = s_find_worker_id(id);
    if (!w) return;
    w->cancelled = true;
    kill(w->pid, SIGKILL);
    upload_t *up = w->upload ? s_find_upload(id) : NULL;
    if (up) up->orphaned = true;
}

bool fileop_reaped(pid_t pid, int status)
{
    for (size_t i = 0; i < s_nworkers; i++) {
        worker_t w = s_workers[i];
        if (w.pid != pid) continue;
        s_workers[i] = s_workers[--s_nworkers];
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!clean && !w.cancelled && !w.noreply) {
            if (w.watch) {
                uint8_t buf[256];
                ap_writer_t wr;
                ap_begin(&wr, buf, sizeof buf, AP_WATCH_END, w.id);
                ap_put_u32(&wr, APT_ERR, (uint32_t) KB_EIO);
                ap_put_str(&wr, APT_WHY, "the watch ended unexpectedly");
                agent_send(buf, ap_end(&wr), NULL, 0);
            } else {
                agent_error(false, w.id, KB_EIO, "the file operation's worker died");
            }
        }
        upload_t *up = w.upload ? s_find_upload(w.id) : NULL;
        if (up) {
            if (up->orphaned) {
                //  The BEGIN was cancelled: the fd never reached kbridge, so nothing will
                //  commit or abort. Remove a named temporary file, if one was made.
                uint8_t buf[PATH_MAX + 256];
                ap_writer_t wr;
                ap_begin(&wr, buf, sizeof buf, AP_UPLOAD_ABORT, up->id);
                ap_msg_t am;
                ap_field_t f[4];
                am.f = f;
                am.cap = 4;
                size_t n = ap_end(&wr);
                if (n && ap_parse(buf, n, &am) == 0)
                    s_fork_worker(&am, NULL, 0, up->has_user ? up->user : NULL, up->tmpname,
                                  NULL, true, false, false);
                s_free_upload(up);
            }
        }
        return true;
    }
    return false;
}
