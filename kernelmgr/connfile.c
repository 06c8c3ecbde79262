/*  connfile - choose ports, write and remove the kernel connection file. */
#include "connfile.h"
#include "../base/jx.h"
#include "../base/kberr.h"
#include "../base/klog.h"
#include "../base/kutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/fsuid.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

struct _connfile_t {
    char *path;        //  as the kernel sees it
    char *host_path;   //  where kbridge wrote it (NULL: in dirfd)
    char *dir;         //  the directory it is in (NULL: dirfd)
    char *name;        //  its name in the directory
    int dirfd;         //  -1, or the directory it is in (owned)
    char *sock_prefix; //  ipc sockets in the directory: their names' prefix there
    char *transport;
    char *scheme;
    char *kernel_name;
    char *ip;
    char key[37];
    int ports[KCH_COUNT];
    bool ports_held;  //  marked taken in s_ports_taken until destroyed
    char *endpoints[KCH_COUNT];
    char *sock_names[KCH_COUNT];
};

//  Ports handed to kernels that still hold them. The OS may give a port we just released
//  to the next bind(0) while the kernel it was chosen for is still starting (and has not
//  bound it yet): with 20 kernels starting at once that happened in tests. Nobody else in
//  this process picks ports, so a bitmap is enough (jupyter_client keeps a LocalPortCache
//  for the same reason).
static uint8_t s_ports_taken[65536 / 8];

static bool s_port_taken(int port)
{
    return s_ports_taken[port >> 3] & (1u << (port & 7));
}

static void s_port_mark(int port, bool taken)
{
    if (port <= 0 || port > 65535) return;
    if (taken) s_ports_taken[port >> 3] |= (uint8_t) (1u << (port & 7));
    else s_ports_taken[port >> 3] &= (uint8_t) ~(1u << (port & 7));
}

//  Bind sockets to port 0 until KCH_COUNT distinct ports not already handed to another
//  kernel are held, all open together so they differ from each other too.
static int s_pick_tcp_ports(const char *ip, int ports[KCH_COUNT])
{
    enum { MAX_TRIES = KCH_COUNT + 64 };
    int fds[MAX_TRIES];
    int rc = KB_OK, opened = 0, found = 0;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1) return KB_EINVAL;
    while (found < KCH_COUNT) {
        if (opened == MAX_TRIES) {
            errno = EADDRINUSE;
            rc = KB_EIO;
            break;
        }
        fds[opened] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        socklen_t len = sizeof addr;
        addr.sin_port = 0;
        if (fds[opened] < 0 || bind(fds[opened], (struct sockaddr *) &addr, sizeof addr) != 0 ||
            getsockname(fds[opened], (struct sockaddr *) &addr, &len) != 0) {
            if (fds[opened] >= 0) close(fds[opened]);
            rc = KB_EIO;
            break;
        }
        int port = ntohs(addr.sin_port);
        opened++;
        //  A taken port stays bound here until the end, so the next bind(0) differs.
        if (!s_port_taken(port)) ports[found++] = port;
    }
    for (int i = 0; i < opened; i++) close(fds[i]);
    if (rc == KB_OK)
        for (int i = 0; i < KCH_COUNT; i++) s_port_mark(ports[i], true);
    return rc;
}

//  The endpoint strings for the ports chosen (and the ipc socket names).
static int s_make_endpoints(connfile_t *self, bool ipc)
{
    for (int i = 0; i < KCH_COUNT; i++) {
        free(self->endpoints[i]);
        int n = ipc ? asprintf(&self->endpoints[i], "ipc://%s-%d", self->ip, self->ports[i])
                    : asprintf(&self->endpoints[i], "tcp://%s:%d", self->ip, self->ports[i]);
        if (n < 0) {
            self->endpoints[i] = NULL;
            return KB_ENOMEM;
        }
        if (self->sock_prefix && !self->sock_names[i] &&
            asprintf(&self->sock_names[i], "%s-%d", self->sock_prefix, self->ports[i]) < 0) {
            self->sock_names[i] = NULL;
            return KB_ENOMEM;
        }
    }
    return KB_OK;
}

//  Write the file as name in its directory: created 0600 (the key must never be readable
//  by anyone else, even briefly), never over anything that is there.
static int s_write(connfile_t *self, const char *name, uid_t uid, gid_t gid)
{
    json_t *doc = json_pack("{s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:s, s:s, s:s}", "shell_port",
                            self->ports[KCH_SHELL], "iopub_port", self->ports[KCH_IOPUB],
                            "stdin_port", self->ports[KCH_STDIN], "control_port",
                            self->ports[KCH_CONTROL], "hb_port", self->ports[KCH_HB], "ip",
                            self->ip, "key", self->key, "transport", self->transport,
                            "signature_scheme", self->scheme, "kernel_name", self->kernel_name);
    size_t len = 0;
    char *text = doc ? jx_dumps(doc, false, &len) : NULL;
    json_decref(doc);
    if (!text) return KB_ENOMEM;
    char *host_path = NULL;
    if (self->dirfd < 0 && asprintf(&host_path, "%s/%s", self->dir, name) < 0) {
        free(text);
        return KB_ENOMEM;
    }
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW;
    //  Created as its owner: a sandbox's filesystems belong to its user namespace, where
    //  kbridge's own uid means nothing (creating a file as it fails with EOVERFLOW).
    //  It is created as the directory's owner (the sandbox's user, whom the directory lets
    //  in) and then given to its owner (who may be the sandbox's root).
    bool as_owner = uid != (uid_t) -1 && geteuid() == 0;
    struct stat dst;
    uid_t cuid = uid;
    gid_t cgid = gid;
    if (as_owner && self->dirfd >= 0 && fstat(self->dirfd, &dst) == 0) {
        cuid = dst.st_uid;
        cgid = dst.st_gid;
    }
    int old_gid = as_owner ? setfsgid(cgid) : 0, old_uid = as_owner ? setfsuid(cuid) : 0;
    int fd = self->dirfd >= 0 ? openat(self->dirfd, name, flags, 0600) : open(host_path, flags, 0600);
    int saved = errno;
    if (as_owner) {
        setfsuid((uid_t) old_uid);
        setfsgid((gid_t) old_gid);
    }
    errno = saved;
    ssize_t written = fd >= 0 ? write(fd, text, len) : -1;
    free(text);
    bool owned = fd >= 0 && (uid == (uid_t) -1 || (as_owner && cuid == uid && cgid == gid) ||
                             fchown(fd, uid, gid) == 0);
    int rc = KB_OK;
    if (fd < 0 || written != (ssize_t) len || !owned) {
        klog_error("cannot write connection file %s: %s", self->path, strerror(errno));
        if (fd >= 0) {
            if (self->dirfd >= 0) unlinkat(self->dirfd, name, 0);
            else unlink(host_path);
        }
        rc = KB_EIO;
    }
    if (fd >= 0) close(fd);
    free(host_path);
    return rc;
}

connfile_t *connfile_new(const connfile_opts_t *opts, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_ENOMEM;
    const char *transport = opts->transport ? opts->transport : "tcp";
    const char *scheme = opts->scheme ? opts->scheme : "hmac-sha256";
    if (strcmp(scheme, "hmac-sha256") != 0 && strcmp(scheme, "hmac-sha512") != 0) {
        *err = KB_ESCHEME;
        return NULL;
    }
    bool ipc = strcmp(transport, "ipc") == 0;
    if (!ipc && strcmp(transport, "tcp") != 0) {
        *err = KB_EINVAL;
        return NULL;
    }
    const char *inside = opts->dir_inside ? opts->dir_inside : opts->dir;
    if (!inside || (opts->dirfd < 0 && !opts->dir)) {
        *err = KB_EINVAL;
        return NULL;
    }
    connfile_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->dirfd = -1;
    self->transport = strdup(transport);
    self->scheme = strdup(scheme);
    self->kernel_name = strdup(opts->kernel_name ? opts->kernel_name : "");
    self->dir = opts->dir ? strdup(opts->dir) : NULL;
    if (asprintf(&self->name, "kernel-%s.json", opts->kernel_id) < 0) self->name = NULL;
    if (asprintf(&self->path, "%s/%s", inside, self->name ? self->name : "") < 0) self->path = NULL;
    if (opts->dirfd < 0 && asprintf(&self->host_path, "%s/%s", opts->dir, self->name ? self->name : "") < 0)
        self->host_path = NULL;
    if (opts->ip) {
        self->ip = strdup(opts->ip);
    } else if (ipc) {
        //  Short names: a unix socket path holds 107 bytes.
        if (asprintf(&self->sock_prefix, "k%.8s", opts->kernel_id) < 0) self->sock_prefix = NULL;
        if (asprintf(&self->ip, "%s/%s", inside, self->sock_prefix ? self->sock_prefix : "") < 0)
            self->ip = NULL;
    } else {
        self->ip = strdup("127.0.0.1");
    }
    if (!self->transport || !self->scheme || !self->kernel_name || !self->name || !self->path ||
        !self->ip || (opts->dir && !self->dir) ||
        (opts->dirfd < 0 && !self->host_path) || (ipc && !opts->ip && !self->sock_prefix))
        goto fail;
    if (opts->dirfd >= 0 && (self->dirfd = fcntl(opts->dirfd, F_DUPFD_CLOEXEC, 3)) < 0) {
        *err = KB_EIO;
        goto fail;
    }
    kb_uuid4(self->key);

    if (ipc) {
        for (int i = 0; i < KCH_COUNT; i++) self->ports[i] = i + 1;
    } else if ((*err = s_pick_tcp_ports(self->ip, self->ports)) != KB_OK) {
        klog_error("cannot choose ports on %s: %s", self->ip, strerror(errno));
        goto fail;
    } else
        self->ports_held = true;
    if ((*err = s_make_endpoints(self, ipc)) != KB_OK) goto fail;
    if ((*err = s_write(self, self->name, opts->uid, opts->gid)) != KB_OK) goto fail;
    *err = KB_OK;
    return self;
fail:
    connfile_destroy(&self, false);
    return NULL;
}

void connfile_destroy(connfile_t **self_p, bool remove_files)
{
    if (!self_p || !*self_p) return;
    connfile_t *self = *self_p;
    if (remove_files && self->name) {
        if (self->dirfd >= 0) {
            unlinkat(self->dirfd, self->name, 0);
            for (int i = 0; i < KCH_COUNT; i++)
                if (self->sock_names[i]) unlinkat(self->dirfd, self->sock_names[i], 0);
        } else {
            if (self->host_path) unlink(self->host_path);
            if (self->transport && strcmp(self->transport, "ipc") == 0)
                for (int i = 0; i < KCH_COUNT; i++) {
                    char file[4096];
                    snprintf(file, sizeof file, "%s-%d", self->ip, self->ports[i]);
                    unlink(file);
                }
        }
    }
    if (self->dirfd >= 0) close(self->dirfd);
    for (int i = 0; i < KCH_COUNT; i++) free(self->sock_names[i]);
    free(self->host_path);
    free(self->name);
    free(self->sock_prefix);
    if (self->ports_held)
        for (int i = 0; i < KCH_COUNT; i++) s_port_mark(self->ports[i], false);
    for (int i = 0; i < KCH_COUNT; i++) free(self->endpoints[i]);
    free(self->path);
    free(self->transport);
    free(self->scheme);
    free(self->kernel_name);
    free(self->dir);
    free(self->ip);
    sodium_memzero(self->key, sizeof self->key);
    free(self);
    *self_p = NULL;
}

int connfile_new_ports(connfile_t *self)
{
    if (strcmp(self->transport, "tcp") != 0 || self->dirfd >= 0) return KB_EINVAL;
    int old[KCH_COUNT];
    memcpy(old, self->ports, sizeof old);
    //  The old ports are still marked taken, so none of them comes back.
    int rc = s_pick_tcp_ports(self->ip, self->ports);
    if (rc != KB_OK) {
        klog_error("cannot choose ports on %s: %s", self->ip, strerror(errno));
        memcpy(self->ports, old, sizeof old);
        return rc;
    }
    //  Written aside and renamed over: the file is never missing or half written.
    char *tmp = NULL;
    if (asprintf(&tmp, ".%s.new", self->name) < 0) tmp = NULL;
    char *tmp_path = NULL;
    if (tmp && asprintf(&tmp_path, "%s/%s", self->dir, tmp) < 0) tmp_path = NULL;
    if (tmp_path) unlink(tmp_path);
    rc = !tmp_path ? KB_ENOMEM : s_write(self, tmp, (uid_t) -1, (gid_t) -1);
    if (rc == KB_OK && rename(tmp_path, self->host_path) != 0) {
        klog_error("cannot replace connection file %s: %s", self->path, strerror(errno));
        unlink(tmp_path);
        rc = KB_EIO;
    }
    if (rc == KB_OK) rc = s_make_endpoints(self, false);
    free(tmp);
    free(tmp_path);
    int *release = rc == KB_OK ? old : self->ports;
    for (int i = 0; i < KCH_COUNT; i++) s_port_mark(release[i], false);
    if (rc != KB_OK) {
        memcpy(self->ports, old, sizeof old);
        s_make_endpoints(self, false);
    }
    return rc;
}

const char *connfile_path(const connfile_t *self)
{
    return self->path;
}

const char *connfile_key(const connfile_t *self)
{
    return self->key;
}

const char *connfile_scheme(const connfile_t *self)
{
    return self->scheme;
}

const char *connfile_endpoint(const connfile_t *self, kchan_type_t channel)
{
    return (unsigned) channel < KCH_COUNT ? self->endpoints[channel] : NULL;
}

void connfile_remove_sockets(connfile_t *self)
{
    if (self->dirfd < 0) return;
    for (int i = 0; i < KCH_COUNT; i++)
        if (self->sock_names[i]) unlinkat(self->dirfd, self->sock_names[i], 0);
}

const char *connfile_socket_name(const connfile_t *self, kchan_type_t channel)
{
    return (unsigned) channel < KCH_COUNT ? self->sock_names[channel] : NULL;
}
