/*  nsetup - the namespaces and the root filesystem of a sandbox (isolation namespaces).

    The process kbridge spawned (host root, single-threaded, freshly exec'd) does this:

      1. A user namespace mapping 0..65535 to uid_base..: a child (uid_base, so that
         user owns the namespace and pasta can join it as that user) unshares it and
         waits while we write its maps, and we keep a descriptor of it.
      2. A private mount namespace, still in the host's user namespace. Read-only lowers
         are cloned (open_tree) and idmapped to the new user namespace, so host root's
         files belong to the sandbox's root; each gets an overlay whose upper and work
         directories live in state_dir. Host template: a persistent root directory of
         its own with overlays of /usr, /etc, /opt, /var; directory template: one
         overlay. Hidden paths are masked here, by host root, so that once we enter the
         user namespace and make a mount namespace of its own, the kernel locks them:
         nothing inside can unmount them to look underneath.
      3. With internet: a launcher that will run pasta (outside the sandbox, as uid_base).
      4. setns into the user namespace, become its root, and unshare mount, PID, IPC, UTS,
         network and cgroup namespaces. fork: the child is pid 1 of the sandbox. It mounts
         /proc, /sys, /dev, /tmp and /run, pivots into the root, writes the sanitized
         account files on first boot, drops capabilities to a container-like set, and
         returns to serve (agent.c).

    The first process stays behind, outside the sandbox's PID namespace, as a supervisor:
    it reports the host pid of pid 1 to kbridge, hands pasta the namespaces, and when pid
    1 ends (or kbridge dies: parent-death signal) kills pasta and exits. Nothing in the
    sandbox can see it.
*/
#include "agent.h"
#include "base/kberr.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

//  Messages may be cut short on purpose; paths are checked to fit (s_path_ok) first.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

#define ERR(...)                                                                           \
    do {                                                                                   \
        snprintf(why, size, __VA_ARGS__);                                                  \
        return -1;                                                                         \
    } while (0)
#define ERRNO(what, ...)                                                                   \
    do {                                                                                   \
        int e_ = errno;                                                                    \
        char w_[512];                                                                      \
        snprintf(w_, sizeof w_, what, __VA_ARGS__);                                        \
        snprintf(why, size, "%s: %s", w_, strerror(e_));                                   \
        return -1;                                                                         \
    } while (0)

//  What pid 1 writes on first boot (the upper layer lacks them).
enum { NEED_PASSWD = 1, NEED_GROUP = 2, NEED_SHADOW = 4, NEED_GSHADOW = 8, NEED_PROFILE = 16 };

static const char *const s_layers[] = {"usr", "etc", "opt", "var"};
static const char *const s_builtin_hidden[] = {"/etc/shadow-", "/etc/gshadow-", "/etc/ssl/private",
                                               NULL};

static int s_openat2(int dirfd, const char *path, int flags, uint64_t resolve)
{
    struct open_how how = {.flags = (uint64_t) flags, .mode = 0, .resolve = resolve};
    return (int) syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

static const char *s_fdpath(int fd, char buf[32])
{
    snprintf(buf, 32, "/proc/self/fd/%d", fd);
    return buf;
}

//  mkdir parent/name if missing (owned uid:gid, mode), and open it (never via a symlink).
static int s_dir_at(int parent, const char *name, mode_t mode, uid_t uid, gid_t gid)
{
    if (mkdirat(parent, name, mode) == 0) {
        if (fchownat(parent, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0) return -1;
        if (fchmodat(parent, name, mode, 0) < 0) return -1;
    } else if (errno != EEXIST) {
        return -1;
    }
    return openat(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

static int s_write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        s += w;
        n -= (size_t) w;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
//  1. The user namespace

static int s_make_userns(char *why, size_t size)
{
    uint32_t ub = g_cfg.uid_base;
    int ready[2], release[2];
    if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(release, O_CLOEXEC) < 0) ERRNO("pipe%s", "");
    pid_t x = fork();
    if (x < 0) ERRNO("fork%s", "");
    if (x == 0) {
        close(ready[0]);
        close(release[1]);
        if (setresgid(ub, ub, ub) < 0 || setresuid(ub, ub, ub) < 0) _exit(1);
        if (unshare(CLONE_NEWUSER) < 0) _exit(2);
        char c = 'x';
        if (write(ready[1], &c, 1) != 1) _exit(3);
        ssize_t r = read(release[0], &c, 1);
        (void) r;
        _exit(0);
    }
    close(ready[1]);
    close(release[0]);
    char c;
    ssize_t r = read(ready[0], &c, 1);
    close(ready[0]);
    int ufd = -1;
    char path[64], map[64];
    int rc = 0;
    if (r != 1) {
        snprintf(why, size, "cannot create a user namespace (are user namespaces enabled? "
                            "sysctl user.max_user_namespaces)");
        rc = -1;
    }
    snprintf(map, sizeof map, "0 %u 65536\n", ub);
    if (rc == 0) {
        snprintf(path, sizeof path, "/proc/%d/uid_map", x);
        int e = agent_write_file(path, map, strlen(map));
        snprintf(path, sizeof path, "/proc/%d/setgroups", x);
        if (!e) e = agent_write_file(path, "allow", 5);
        snprintf(path, sizeof path, "/proc/%d/gid_map", x);
        if (!e) e = agent_write_file(path, map, strlen(map));
        snprintf(path, sizeof path, "/proc/%d/ns/user", x);
        if (!e) ufd = open(path, O_RDONLY | O_CLOEXEC);
        if (e || ufd < 0) {
            snprintf(why, size, "cannot map uids %u..%u into the user namespace: %s", ub,
                     ub + 65535, strerror(e ? -e : errno));
            rc = -1;
        }
    }
    close(release[1]);
    int st;
    while (waitpid(x, &st, 0) < 0 && errno == EINTR) {
    }
    return rc < 0 ? -1 : ufd;
}

// ---------------------------------------------------------------------------------------
//  2. Layers

//  A detached, idmapped, read-only clone of host directory src.
static int s_idmapped_clone(const char *src, int ufd, char *why, size_t size)
{
    int fd = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (fd < 0) ERRNO("open_tree %s", src);
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY |
                                          MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                              .userns_fd = (uint64_t) ufd};
    if (mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) == 0) return fd;
    //  A submount whose filesystem cannot be idmapped: do without submounts.
    close(fd);
    fd = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (fd < 0) ERRNO("open_tree %s", src);
    if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        ERRNO("idmapped mount of %s (does its filesystem support idmapped mounts?)", src);
    }
    return fd;
}

static int s_overlay(const char *target, const char *lower, const char *upper, const char *work,
                     char *why, size_t size)
{
    char opts[3 * PATH_MAX + 128];
    //  redirect_dir=nofollow, metacopy=off: what the sandbox left in its upper layer must
    //  never make a lower file show up at another path (a masked one, say).
    snprintf(opts, sizeof opts,
             "lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=nofollow,metacopy=off,index=off,"
             "xino=off",
             lower, upper, work);
    if (mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, opts) < 0)
        ERRNO("overlay mount of %s", lower);
    return 0;
}

//  Mask path (absolute, resolved inside root) with something empty.
static void s_mask(int rootfd, const char *path, const char *empty_file)
{
    while (*path == '/') path++;
    if (!*path) return;
    int fd = s_openat2(rootfd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC,
                       RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
    if (fd < 0) return;
    struct stat st;
    char t[32];
    if (fstat(fd, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            if (mount("tmpfs", s_fdpath(fd, t), "tmpfs",
                      MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "mode=000,size=4k,nr_inodes=1") < 0)
                agent_log("agent: cannot mask /%s: %s", path, strerror(errno));
        } else if (!S_ISLNK(st.st_mode)) {
            //  A read-only bind of an empty file (made read-only before it is attached).
            int m = open_tree(AT_FDCWD, empty_file, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
            struct mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID |
                                                  MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC};
            if (m < 0 || mount_setattr(m, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0 ||
                move_mount(m, "", fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
                agent_log("agent: cannot mask /%s: %s", path, strerror(errno));
            if (m >= 0) close(m);
        }
    }
    close(fd);
}

static void s_mask_all(int rootfd, const char *empty_file)
{
    for (size_t i = 0; i < g_cfg.nhidden; i++) s_mask(rootfd, g_cfg.hidden[i], empty_file);
    for (size_t i = 0; s_builtin_hidden[i]; i++) s_mask(rootfd, s_builtin_hidden[i], empty_file);
    s_mask(rootfd, g_cfg.state_dir, empty_file);
    //  ssh host keys: /etc/ssh/ssh_host_*_key
    int dfd = s_openat2(rootfd, "etc/ssh", O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0) close(dfd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (strncmp(de->d_name, "ssh_host_", 9) == 0 && n > 4 &&
            strcmp(de->d_name + n - 4, "_key") == 0) {
            char p[300];
            snprintf(p, sizeof p, "/etc/ssh/%s", de->d_name);
            s_mask(rootfd, p, empty_file);
        }
    }
    closedir(d);
}

static int s_need_flags(int etc_upper)
{
    static const char *const files[] = {"passwd", "group", "shadow", "gshadow", "profile"};
    int flags = 0;
    for (int i = 0; i < 5; i++) {
        int fd = s_openat2(etc_upper, files[i], O_PATH | O_NOFOLLOW | O_CLOEXEC,
                           RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS);
        if (fd >= 0) close(fd);
        else if (errno == ENOENT) flags |= 1 << i;
    }
    return flags;
}

// ---------------------------------------------------------------------------------------
//  Inside: pid 1 of the new namespaces

static int s_mount_at(int rootfd, const char *rel, const char *src, const char *type,
                      unsigned long flags, const char *data, char *why, size_t size)
{
    int fd = s_openat2(rootfd, rel, O_PATH | O_DIRECTORY | O_CLOEXEC,
                       RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
    if (fd < 0) ERRNO("/%s", rel);
    char t[32];
    int rc = mount(src, s_fdpath(fd, t), type, flags, data);
    int e = errno;
    close(fd);
    errno = e;
    if (rc < 0) ERRNO("mount %s on /%s", type ? type : src, rel);
    return 0;
}

static int s_setup_dev(int rootfd, char *why, size_t size)
{
    char tmpsz[64];
    if (s_mount_at(rootfd, "dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC,
                   "mode=755,size=65536,nr_inodes=256", why, size) < 0)
        return -1;
    int dfd = s_openat2(rootfd, "dev", O_PATH | O_DIRECTORY | O_CLOEXEC,
                        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
    if (dfd < 0) ERRNO("/dev%s", "");
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        //  No mknod in a user namespace: bind the host's device nodes onto empty files.
        int f = openat(dfd, nodes[i], O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (f < 0) ERRNO("/dev/%s", nodes[i]);
        close(f);
        char src[32], dst[PATH_MAX];
        snprintf(src, sizeof src, "/dev/%s", nodes[i]);
        snprintf(dst, sizeof dst, "dev/%s", nodes[i]);
        int tfd = s_openat2(rootfd, dst, O_PATH | O_NOFOLLOW | O_CLOEXEC,
                            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
        char t[32];
        if (tfd < 0 || mount(src, s_fdpath(tfd, t), NULL, MS_BIND, NULL) < 0) ERRNO("bind %s", src);
        close(tfd);
    }
    if (mkdirat(dfd, "pts", 0755) < 0 || mkdirat(dfd, "shm", 01777) < 0) ERRNO("/dev%s", "");
    if (s_mount_at(rootfd, "dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620,gid=5", why, size) < 0)
        return -1;
    snprintf(tmpsz, sizeof tmpsz, "mode=1777,size=%llu",
             (unsigned long long) (g_cfg.tmp_bytes ? g_cfg.tmp_bytes : 1ull << 30));
    if (s_mount_at(rootfd, "dev/shm", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, tmpsz, why, size) < 0)
        return -1;
    static const char *const links[][2] = {{"pts/ptmx", "ptmx"},
                                           {"/proc/self/fd", "fd"},
                                           {"/proc/self/fd/0", "stdin"},
                                           {"/proc/self/fd/1", "stdout"},
                                           {"/proc/self/fd/2", "stderr"}};
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlinkat(links[i][0], dfd, links[i][1]) < 0) ERRNO("/dev/%s", links[i][1]);
    close(dfd);
    return 0;
}

static void s_loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
}

//  Read a whole small file. Caller frees.
static char *s_slurp(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return strdup("");
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (4 << 20)) {
        close(fd);
        return strdup("");
    }
    char *buf = malloc((size_t) st.st_size + 1);
    ssize_t n = buf ? read(fd, buf, (size_t) st.st_size) : -1;
    close(fd);
    if (n < 0) {
        free(buf);
        return strdup("");
    }
    buf[n] = '\0';
    return buf;
}

//  Replace path with data (a temporary file renamed over it: nothing of the old content,
//  the host's, is ever copied up into the sandbox's layer).
static int s_replace_file(const char *path, const char *data, mode_t mode, gid_t gid)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.kbridge-new", path);
    unlink(tmp);
    int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) return -1;
    int rc = s_write_all(fd, data, strlen(data));
    if (fchown(fd, 0, gid) < 0 || fchmod(fd, mode) < 0) rc = -1;
    close(fd);
    if (rc == 0) rc = rename(tmp, path);
    if (rc < 0) unlink(tmp);
    return rc;
}

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf_t;

static void s_add(sbuf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t nc = (b->len + n + 1) * 2;
        char *nb = realloc(b->buf, nc);
        if (!nb) return;
        b->buf = nb;
        b->cap = nc;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void s_adds(sbuf_t *b, const char *s)
{
    s_add(b, s, strlen(s));
}

//  Field i (0-based) of a colon-separated line, as [start, len).
static bool s_field(const char *line, int i, const char **start, size_t *len)
{
    const char *p = line;
    for (int k = 0; k < i; k++) {
        p = strchr(p, ':');
        if (!p) return false;
        p++;
    }
    const char *e = strchr(p, ':');
    *start = p;
    *len = e ? (size_t) (e - p) : strlen(p);
    return true;
}

static bool s_name_in(const char *name, size_t n, char **names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (strlen(names[i]) == n && strncmp(names[i], name, n) == 0) return true;
    return false;
}

//  /etc/passwd, group, shadow and gshadow with root and `user` (1000, /home/user) as
//  the sandbox's: every other uid-1000 name and every password hash of the host gone.
static void s_first_boot(int need)
{
    char *passwd = s_slurp("/etc/passwd"), *group = s_slurp("/etc/group");
    sbuf_t np = {0}, ng = {0}, ns = {0}, ngs = {0};
    char *dropped[64];
    size_t ndropped = 0;
    char *users[4096];
    size_t nusers = 0;
    for (char *line = passwd, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        const char *name, *uid;
        size_t nn, un;
        if (!s_field(line, 0, &name, &nn) || !s_field(line, 2, &uid, &un) || nn == 0) continue;
        bool is1000 = un == 4 && strncmp(uid, "1000", 4) == 0;
        bool is_user = nn == 4 && strncmp(name, "user", 4) == 0;
        if (is1000 || is_user) {
            if (ndropped < 64) dropped[ndropped++] = strndup(name, nn);
            continue;
        }
        s_adds(&np, line);
        s_adds(&np, "\n");
        if (nusers < 4096) users[nusers++] = strndup(name, nn);
    }
    s_adds(&np, "user:x:1000:1000:user:/home/user:/bin/bash\n");
    users[nusers++] = strdup("user");
    gid_t shadow_gid = 0;
    char *gnames[4096];
    size_t ngn = 0;
    for (char *line = group, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        const char *name, *gid, *members;
        size_t nn, gn, mn;
        if (!s_field(line, 0, &name, &nn) || !s_field(line, 2, &gid, &gn) || nn == 0) continue;
        if ((gn == 4 && strncmp(gid, "1000", 4) == 0) || (nn == 4 && strncmp(name, "user", 4) == 0))
            continue;
        if (nn == 6 && strncmp(name, "shadow", 6) == 0) shadow_gid = (gid_t) atoi(gid);
        if (!s_field(line, 3, &members, &mn)) {
            s_adds(&ng, line);
            s_adds(&ng, "\n");
        } else {
            s_add(&ng, line, (size_t) (members - line));
            bool first = true;
            for (const char *m = members; m < members + mn;) {
                const char *comma = memchr(m, ',', (size_t) (members + mn - m));
                size_t ml = comma ? (size_t) (comma - m) : (size_t) (members + mn - m);
                if (ml && !s_name_in(m, ml, dropped, ndropped)) {
                    if (!first) s_adds(&ng, ",");
                    s_add(&ng, m, ml);
                    first = false;
                }
                m += ml + (comma ? 1 : 0);
            }
            s_adds(&ng, "\n");
        }
        if (ngn < 4096) gnames[ngn++] = strndup(name, nn);
    }
    s_adds(&ng, "user:x:1000:\n");
    gnames[ngn++] = strdup("user");
    for (size_t i = 0; i < nusers; i++) {
        if (!users[i]) continue;
        s_adds(&ns, users[i]);
        s_adds(&ns, ":*:20000:0:99999:7:::\n");
    }
    for (size_t i = 0; i < ngn; i++) {
        if (!gnames[i]) continue;
        s_adds(&ngs, gnames[i]);
        s_adds(&ngs, ":*::\n");
    }
    if ((need & NEED_PASSWD) && np.buf) s_replace_file("/etc/passwd", np.buf, 0644, 0);
    if ((need & NEED_GROUP) && ng.buf) s_replace_file("/etc/group", ng.buf, 0644, 0);
    if ((need & NEED_SHADOW) && ns.buf) s_replace_file("/etc/shadow", ns.buf, 0640, shadow_gid);
    if ((need & NEED_GSHADOW) && ngs.buf) s_replace_file("/etc/gshadow", ngs.buf, 0640, shadow_gid);
    for (size_t i = 0; i < nusers; i++) free(users[i]);
    for (size_t i = 0; i < ngn; i++) free(gnames[i]);
    for (size_t i = 0; i < ndropped; i++) free(dropped[i]);
    free(np.buf);
    free(ng.buf);
    free(ns.buf);
    free(ngs.buf);
    free(passwd);
    free(group);
}

//  Every E2B command is `bash -l -c CMD`, and Debian's /etc/profile (so the host template's)
//  picks PATH with `"$(id -u)"`: a fork and an exec of id (libselinux, libpcre2), about as
//  much as bash's own start. bash always has EUID, so `"${EUID:-$(id -u)}"` gives the same
//  PATH without the fork, and sh (no EUID) still runs id. Written on first boot into the
//  upper layer, only when the template's profile has that text; nothing else changes.
static void s_fast_profile(void)
{
    static const char from[] = "\"$(id -u)\"", to[] = "\"${EUID:-$(id -u)}\"";
    char *text = s_slurp("/etc/profile");
    if (!text || !strstr(text, from)) {
        free(text);
        return;
    }
    sbuf_t b = {0};
    const char *p = text;
    for (const char *hit; (hit = strstr(p, from)); p = hit + sizeof from - 1) {
        s_add(&b, p, (size_t) (hit - p));
        s_adds(&b, to);
    }
    s_adds(&b, p);
    if (b.buf && s_replace_file("/etc/profile", b.buf, 0644, 0) < 0)
        agent_log("agent: /etc/profile not rewritten: %s", strerror(errno));
    free(b.buf);
    free(text);
}

//  Capabilities a container's root usually has (Docker's default set).
static const int s_keep_caps[] = {
    CAP_CHOWN,   CAP_DAC_OVERRIDE, CAP_FSETID,           CAP_FOWNER,
    CAP_MKNOD,   CAP_NET_RAW,      CAP_SETGID,           CAP_SETUID,
    CAP_SETFCAP, CAP_SETPCAP,      CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT,
    CAP_KILL,    CAP_AUDIT_WRITE};

static int s_drop_caps(char *why, size_t size)
{
    uint64_t keep = 0;
    for (size_t i = 0; i < sizeof s_keep_caps / sizeof s_keep_caps[0]; i++)
        keep |= 1ull << s_keep_caps[i];
    int last = 40;
    char *s = s_slurp("/proc/sys/kernel/cap_last_cap");
    if (s && *s) last = atoi(s);
    free(s);
    for (int c = 0; c <= last && c < 64; c++)
        if (!(keep & (1ull << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
            ERRNO("drop capability %d", c);
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = (uint32_t) keep;
    data[1].effective = data[1].permitted = (uint32_t) (keep >> 32);
    if (syscall(SYS_capset, &hdr, data) < 0) ERRNO("capset%s", "");
    return 0;
}

static int s_inside(int need, int netfd, char *why, size_t size)
{
    const char *root = "the sandbox's root";
    if (sethostname(g_cfg.id, strlen(g_cfg.id)) < 0) ERRNO("sethostname%s", "");
    s_loopback_up();
    int rootfd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) ERRNO("%s", root);
    if (s_mount_at(rootfd, "proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, why,
                   size) < 0)
        return -1;
    if (s_mount_at(rootfd, "sys", "sysfs", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   NULL, why, size) < 0) {
        agent_log("agent: %s (the sandbox has an empty /sys)", why);
        why[0] = '\0';
    }
    if (s_setup_dev(rootfd, why, size) < 0) return -1;
    char tmpsz[64];
    snprintf(tmpsz, sizeof tmpsz, "mode=1777,size=%llu",
             (unsigned long long) (g_cfg.tmp_bytes ? g_cfg.tmp_bytes : 1ull << 30));
    if (s_mount_at(rootfd, "tmp", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, tmpsz, why, size) < 0)
        return -1;
    if (s_mount_at(rootfd, "run", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64m", why,
                   size) < 0)
        return -1;
    //  pivot_root refuses a new root that is locked (as every mount that came from the
    //  host's namespace is), so pivot into a recursive copy made here: its own root is
    //  not locked, the masks under it stay locked.
    int tree =
        open_tree(rootfd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
    if (tree < 0) ERRNO("clone %s", root);
    if (move_mount(tree, "", rootfd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        ERRNO("attach %s", root);
    if (fchdir(tree) < 0) ERRNO("chdir %s", root);
    close(tree);
    if (syscall(SYS_pivot_root, ".", ".") < 0) ERRNO("pivot_root %s", root);
    if (umount2(".", MNT_DETACH) < 0) ERRNO("detach the old root%s", "");
    if (chdir("/") < 0) ERRNO("chdir /%s", "");
    close(rootfd);
    //  The kernels' directory (connection files, ipc sockets): only `user` and root.
    if (mkdir("/run/kbridge", 0700) < 0 || chown("/run/kbridge", 1000, 1000) < 0)
        ERRNO("/run/kbridge%s", "");
    if (need & (NEED_PASSWD | NEED_GROUP | NEED_SHADOW | NEED_GSHADOW)) s_first_boot(need);
    if (need & NEED_PROFILE) s_fast_profile();
    if (mkdir("/root", 0700) < 0 && errno != EEXIST) ERRNO("/root%s", "");
    mkdir("/home", 0755);
    if (mkdir("/home/user", 0755) == 0) {
        if (chown("/home/user", 1000, 1000) < 0) ERRNO("/home/user%s", "");
    } else if (errno != EEXIST) {
        ERRNO("/home/user%s", "");
    }
    //  pasta takes ~50 ms to start (its socket and pipe pools), more than everything
    //  above: we serve without waiting for it, and the loop (agent.c) holds processes
    //  back until the supervisor says it is done, so none ever runs without its network.
    g_netfd = netfd;
    //  Once code in the sandbox runs, nothing it can do to us (ptrace, /proc/1/mem) may
    //  need more than the capabilities its own root has. pasta (uid_base) must still open
    //  our namespaces, so with internet this waits until it has (agent.c, s_net_done):
    //  no process is started before that.
    if (netfd < 0) prctl(PR_SET_DUMPABLE, 0);
    if (s_drop_caps(why, size) < 0) return -1;
    return 0;
}

// ---------------------------------------------------------------------------------------
//  3. pasta

typedef struct {
    pid_t launcher;
    int go;      //  write B's pid here to start pasta
    int pidfd;   //  pasta writes its daemon's pid here
    int errfd;   //  pasta's stderr
} pasta_t;

static int s_pasta_launcher(pasta_t *p, const char *stage, char *why, size_t size)
{
    int go[2], pidp[2], errp[2];
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(pidp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
        ERRNO("pipe%s", "");
    pid_t pid = fork();
    if (pid < 0) ERRNO("fork%s", "");
    if (pid == 0) {
        //  Host root, in a mount namespace of its own: pasta must open /dev/net/tun after
        //  it dropped to uid_base, and hosts often make it 0600 root. A node of our own,
        //  0666, only in this namespace, does it without changing the host.
        close(go[1]);
        close(pidp[0]);
        close(errp[0]);
        if (unshare(CLONE_NEWNS) < 0 ||
            mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0700,size=4k") < 0)
            _exit(10);
        char tun[PATH_MAX];
        snprintf(tun, sizeof tun, "%s/tun", stage);
        if (mknod(tun, S_IFCHR | 0666, makedev(10, 200)) < 0 || chmod(tun, 0666) < 0) _exit(11);
        if (mount(tun, "/dev/net/tun", NULL, MS_BIND, NULL) < 0) _exit(12);
        pid_t target = 0;
        if (read(go[0], &target, sizeof target) != sizeof target || target <= 0) _exit(13);
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(errp[1], 2) < 0) _exit(14);
        //  Not CLOEXEC: pasta opens it as /proc/self/fd/N, after it became uid_base.
        int keep = fcntl(pidp[1], F_DUPFD, 3);
        if (keep < 0 || fchown(keep, g_cfg.uid_base, g_cfg.uid_base) < 0) _exit(15);
        if (keep > 3) close_range(3, (unsigned) keep - 1, 0);
        close_range((unsigned) keep + 1, ~0U, 0);
        char runas[32], pidf[32], tgt[16];
        snprintf(runas, sizeof runas, "%u:%u", g_cfg.uid_base, g_cfg.uid_base);
        snprintf(pidf, sizeof pidf, "/proc/self/fd/%d", keep);
        snprintf(tgt, sizeof tgt, "%d", (int) target);
        //  No port forwarding either way (-t/-u/-T/-U none): nothing outside reaches in,
        //  and the sandbox cannot reach the host's loopback. --no-map-gw: the gateway
        //  address is not the host either.
        const char *argv[] = {g_cfg.pasta, "--config-net", "--no-map-gw", "-t", "none", "-u",
                              "none",      "-T",           "none",        "-U", "none", "-q",
                              "--runas",   runas,          "-P",          pidf, tgt,    NULL};
        char *envp[] = {NULL};
        sigset_t none;
        sigemptyset(&none);
        for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(g_cfg.pasta, (char *const *) argv, envp);
        _exit(16);
    }
    close(go[0]);
    close(pidp[1]);
    close(errp[1]);
    p->launcher = pid;
    p->go = go[1];
    p->pidfd = pidp[0];
    p->errfd = errp[0];
    return 0;
}

static void s_pasta_error(pasta_t *p, int status, char *msg, size_t size)
{
    char buf[4096];
    ssize_t n = read(p->errfd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    //  The last line that is not pasta's complaint about syslog.
    char *best = NULL;
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (*line && !strstr(line, "syslog")) best = line;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) >= 10 && WEXITSTATUS(status) <= 16)
        snprintf(msg, size, "cannot start pasta (%s, step %d)", g_cfg.pasta, WEXITSTATUS(status));
    else
        snprintf(msg, size, "pasta could not connect the sandbox's network: %s",
                 best ? best : "no reason given");
}

// ---------------------------------------------------------------------------------------
//  4. The supervisor (the first process, after pid 1 exists)

static void s_send_agent_pid(pid_t b)
{
    uint8_t buf[64];
    ap_writer_t w;
    ap_begin(&w, buf, sizeof buf, AP_AGENT_PID, 0);
    ap_put_u32(&w, APT_PID, (uint32_t) b);
    agent_send_blocking(buf, ap_end(&w), NULL, 0);
}

__attribute__((noreturn)) static void s_supervise(pid_t b, pasta_t *pasta, int netw)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pid_t daemon = 0;
    bool b_done = false;
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig < 0) continue;
        if (sig != SIGCHLD) {
            kill(b, SIGKILL);
            if (pasta && pasta->launcher > 0) kill(pasta->launcher, SIGKILL);
            if (daemon > 0) kill(daemon, SIGKILL);
        }
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
            if (pid == b) {
                b_done = true;
            } else if (pasta && pid == pasta->launcher) {
                pasta->launcher = 0;
                char msg[512] = "ok";
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
                    char num[32];
                    ssize_t n = read(pasta->pidfd, num, sizeof num - 1);
                    num[n > 0 ? n : 0] = '\0';
                    daemon = (pid_t) atoi(num);
                    if (daemon <= 0) snprintf(msg, sizeof msg, "pasta did not say its pid");
                } else {
                    s_pasta_error(pasta, st, msg, sizeof msg);
                }
                if (netw >= 0) {
                    ssize_t w = write(netw, msg, strlen(msg));
                    (void) w;
                    close(netw);
                    netw = -1;
                }
            } else if (pid == daemon) {
                daemon = 0;
            }
        }
        if (b_done) {
            if (pasta && pasta->launcher > 0) kill(pasta->launcher, SIGKILL);
            if (daemon > 0) kill(daemon, SIGKILL);
            while (waitpid(-1, &st, 0) > 0 || errno == EINTR) {
            }
            _exit(0);
        }
    }
}

// ---------------------------------------------------------------------------------------

static bool s_path_ok(const char *p)
{
    return p && p[0] == '/' && !strpbrk(p, ",:\\\n") && strlen(p) < PATH_MAX - 64;
}

int ns_setup(pid_t joiner, char *why, size_t size)
{
    const char *sd = g_cfg.state_dir;
    uint32_t ub = g_cfg.uid_base;
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (geteuid() != 0) ERR("namespaces isolation needs kbridge to run as root");
    if (!s_path_ok(sd)) ERR("bad state directory %s (absolute, without , : or \\)", sd ? sd : "");
    if (g_cfg.tmpl_dir && !s_path_ok(g_cfg.tmpl_dir))
        ERR("bad template directory %s", g_cfg.tmpl_dir);
    if (g_cfg.internet && (!g_cfg.pasta || access(g_cfg.pasta, X_OK) < 0))
        ERR("internet access needs pasta (Debian: apt-get install passt)");
    if (ub == 0 || ub > UINT32_MAX - 65536) ERR("bad uid base %u", ub);

    //  state_dir and its fixed subdirectories: ours (root), never through a symlink.
    if (mkdir(sd, 0700) < 0 && errno != EEXIST) ERRNO("mkdir %s", sd);
    int sdfd = open(sd, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sdfd < 0) ERRNO("%s", sd);
    bool host = g_cfg.tmpl_dir == NULL;
    int upfd = s_dir_at(sdfd, "upper", host ? 0755 : 0755, host ? 0 : ub, host ? 0 : ub);
    int wkfd = s_dir_at(sdfd, "work", 0700, 0, 0);
    int stfd = s_dir_at(sdfd, "stage", 0700, 0, 0);
    int rtfd = s_dir_at(sdfd, host ? "root" : "mnt", 0755, host ? ub : 0, host ? ub : 0);
    if (upfd < 0 || wkfd < 0 || stfd < 0 || rtfd < 0) ERRNO("state directory %s", sd);
    char stage[PATH_MAX], root[PATH_MAX];
    snprintf(stage, sizeof stage, "%s/stage", sd);
    snprintf(root, sizeof root, "%s/%s", sd, host ? "root" : "mnt");

    int ufd = s_make_userns(why, size);
    if (ufd < 0) return -1;
    if (unshare(CLONE_NEWNS) < 0) ERRNO("unshare mount namespace%s", "");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) ERRNO("make / private%s", "");

    //  Clone the lowers before anything is mounted below state_dir, so they cannot
    //  contain our own staging.
    int lowers[4] = {-1, -1, -1, -1};
    if (host) {
        for (int i = 0; i < 4; i++) {
            char src[16];
            struct stat st;
            snprintf(src, sizeof src, "/%s", s_layers[i]);
            if (lstat(src, &st) < 0 || !S_ISDIR(st.st_mode)) continue;
            if ((lowers[i] = s_idmapped_clone(src, ufd, why, size)) < 0) return -1;
        }
    } else {
        if ((lowers[0] = s_idmapped_clone(g_cfg.tmpl_dir, ufd, why, size)) < 0) return -1;
    }
    if (mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=1m") < 0)
        ERRNO("mount tmpfs on %s", stage);
    close(stfd);
    stfd = open(stage, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int ef = openat(stfd, "empty", O_CREAT | O_WRONLY | O_CLOEXEC, 0);
    if (stfd < 0 || ef < 0) ERRNO("%s", stage);
    close(ef);
    char empty_file[PATH_MAX];
    snprintf(empty_file, sizeof empty_file, "%s/empty", stage);

    int etc_upper = -1;
    if (host) {
        //  The persistent root: a mount of its own (pivot_root needs one).
        if (mount(root, root, NULL, MS_BIND, NULL) < 0 ||
            mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL) < 0)
            ERRNO("bind %s", root);
        close(rtfd);
        rtfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (rtfd < 0) ERRNO("%s", root);
        //  The host's top-level symlinks (/bin -> usr/bin on merged /usr).
        DIR *d = opendir("/");
        struct dirent *de;
        while (d && (de = readdir(d))) {
            char src[300], target[PATH_MAX];
            snprintf(src, sizeof src, "/%s", de->d_name);
            ssize_t n = readlink(src, target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = '\0';
            if (symlinkat(target, rtfd, de->d_name) == 0)
                fchownat(rtfd, de->d_name, ub, ub, AT_SYMLINK_NOFOLLOW);
        }
        if (d) closedir(d);
        static const char *const dirs[] = {"usr", "etc", "opt", "var", "home", "srv", "mnt",
                                           "media", "tmp", "run", "proc", "sys", "dev"};
        for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
            int fd = s_dir_at(rtfd, dirs[i], strcmp(dirs[i], "tmp") ? 0755 : 01777, ub, ub);
            if (fd < 0) ERRNO("%s/%s", root, dirs[i]);
            close(fd);
        }
        int fd = s_dir_at(rtfd, "root", 0700, ub, ub);
        if (fd < 0) ERRNO("%s/root", root);
        close(fd);
        for (int i = 0; i < 4; i++) {
            if (lowers[i] < 0) continue;
            const char *l = s_layers[i];
            int lu = s_dir_at(upfd, l, 0755, ub, ub), lw = s_dir_at(wkfd, l, 0700, 0, 0);
            int ls = s_dir_at(stfd, l, 0700, 0, 0);
            int lt = openat(rtfd, l, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (lu < 0 || lw < 0 || ls < 0 || lt < 0) ERRNO("layer %s", l);
            if (move_mount(lowers[i], "", ls, "",
                           MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
                ERRNO("attach the lower of /%s", l);
            char lower[PATH_MAX], upper[PATH_MAX], work[PATH_MAX], t[32];
            snprintf(lower, sizeof lower, "%s/%s", stage, l);
            snprintf(upper, sizeof upper, "%s/upper/%s", sd, l);
            snprintf(work, sizeof work, "%s/work/%s", sd, l);
            if (s_overlay(s_fdpath(lt, t), lower, upper, work, why, size) < 0) return -1;
            if (i == 1) etc_upper = dup(lu);
            close(lu);
            close(lw);
            close(ls);
            close(lt);
            close(lowers[i]);
        }
    } else {
        int ls = s_dir_at(stfd, "lower", 0700, 0, 0);
        if (ls < 0) ERRNO("%s/lower", stage);
        if (move_mount(lowers[0], "", ls, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) <
            0)
            ERRNO("attach the template %s", g_cfg.tmpl_dir);
        char lower[PATH_MAX], upper[PATH_MAX], work[PATH_MAX];
        snprintf(lower, sizeof lower, "%s/lower", stage);
        snprintf(upper, sizeof upper, "%s/upper", sd);
        snprintf(work, sizeof work, "%s/work", sd);
        if (s_overlay(root, lower, upper, work, why, size) < 0) return -1;
        close(ls);
        close(lowers[0]);
        close(rtfd);
        rtfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (rtfd < 0) ERRNO("%s", root);
        static const char *const dirs[] = {"proc", "sys", "dev", "tmp", "run", "etc"};
        for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
            int fd = s_dir_at(rtfd, dirs[i], strcmp(dirs[i], "tmp") ? 0755 : 01777, ub, ub);
            if (fd < 0) ERRNO("%s/%s in the template", root, dirs[i]);
            close(fd);
        }
        etc_upper = s_dir_at(upfd, "etc", 0755, ub, ub);
    }
    int need = etc_upper >= 0 ? s_need_flags(etc_upper) : 0;
    if (etc_upper >= 0) close(etc_upper);
    s_mask_all(rtfd, empty_file);

    //  From here on every process forked must be in the sandbox's cgroups.
    if (agent_wait_joiner(joiner, why, size) < 0) return -1;
    pasta_t pasta = {.launcher = -1, .go = -1, .pidfd = -1, .errfd = -1};
    if (g_cfg.internet && s_pasta_launcher(&pasta, stage, why, size) < 0) return -1;
    if (umount2(stage, MNT_DETACH) < 0) ERRNO("detach %s", stage);

    //  The root, as our cwd: unshare() carries cwd over to the new mount namespace, and
    //  pid 1 (uid_base on the host) could not walk state_dir's path itself.
    if (fchdir(rtfd) < 0) ERRNO("chdir %s", root);
    //  Into the user namespace, as its root: from here on we hold no host privilege.
    if (setns(ufd, CLONE_NEWUSER) < 0) ERRNO("enter the user namespace%s", "");
    if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
        ERRNO("become root of the user namespace%s", "");
    close(ufd);
    if (unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET |
                CLONE_NEWCGROUP) < 0)
        ERRNO("unshare namespaces%s", "");
    //  The credential change cleared these.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    //  pasta (uid_base, no capability on the host) must be able to open pid 1's ns files.
    prctl(PR_SET_DUMPABLE, 1);
    int netp[2] = {-1, -1};
    if (g_cfg.internet && pipe2(netp, O_CLOEXEC) < 0) ERRNO("pipe%s", "");
    pid_t b = fork();
    if (b < 0) ERRNO("fork pid 1%s", "");
    if (b == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (g_cfg.internet) {
            close(netp[1]);
            close(pasta.go);
            close(pasta.pidfd);
            close(pasta.errfd);
        }
        close(sdfd);
        close(upfd);
        close(wkfd);
        close(stfd);
        close(rtfd);
        //  A mount namespace of pid 1's own: its pivot_root must not move the
        //  supervisor's root.
        if (unshare(CLONE_NEWNS) < 0) ERRNO("unshare mount namespace%s", "");
        return s_inside(need, netp[0], why, size);
    }
    s_send_agent_pid(b);
    close(g_sock);
    if (g_cfg.internet) {
        close(netp[0]);
        ssize_t w = write(pasta.go, &b, sizeof b);
        (void) w;
        close(pasta.go);
    }
    s_supervise(b, g_cfg.internet ? &pasta : NULL, netp[1]);
}

// ---------------------------------------------------------------------------------------
//  --probe: can this host do what ns_setup does? One line on stdout, exit 0 if so.

int ns_probe(void)
{
    char why[512] = "";
    size_t size = sizeof why;
    int rc = 0;
    if (geteuid() != 0) {
        printf("namespaces isolation needs root\n");
        return 1;
    }
    g_cfg.uid_base = 3000000000u;  //  a range nothing uses; the probe owns nothing in it
    int ufd = s_make_userns(why, size);
    if (ufd < 0) {
        printf("%s\n", why);
        return 1;
    }
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        printf("cannot make a mount namespace: %s\n", strerror(errno));
        return 1;
    }
    if (mount("tmpfs", "/tmp", "tmpfs", 0, "mode=0700,size=1m") < 0) {
        printf("cannot mount tmpfs: %s\n", strerror(errno));
        return 1;
    }
    static const char *const dirs[] = {"/tmp/l", "/tmp/u", "/tmp/w", "/tmp/m"};
    for (int i = 0; i < 4; i++) mkdir(dirs[i], 0700);
    int fd = open_tree(AT_FDCWD, "/usr", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
                              .userns_fd = (uint64_t) ufd};
    if (fd < 0 || mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
        printf("idmapped mounts are not available for /usr (%s): Linux >= 5.12 and a "
               "filesystem that supports them (ext4, xfs, btrfs...) are needed\n",
               strerror(errno));
        return 1;
    }
    if (move_mount(fd, "", AT_FDCWD, "/tmp/l", MOVE_MOUNT_F_EMPTY_PATH) < 0) {
        printf("move_mount: %s\n", strerror(errno));
        return 1;
    }
    if (s_overlay("/tmp/m", "/tmp/l", "/tmp/u", "/tmp/w", why, size) < 0) {
        printf("overlayfs over an idmapped lower layer does not work here (%s): Linux >= 5.19 "
               "is needed\n",
               why);
        rc = 1;
    } else {
        printf("ok\n");
    }
    return rc;
}
