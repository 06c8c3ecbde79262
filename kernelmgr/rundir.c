/*  rundir - per-instance runtime directory, with stale-instance cleanup. */
#include "rundir.h"
#include "../base/kberr.h"
#include "../base/klog.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct _rundir_t {
    char *path;
};

static void s_remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char child[PATH_MAX];
            if (snprintf(child, sizeof child, "%s/%s", path, e->d_name) < (int) sizeof child)
                unlink(child);
        }
        closedir(d);
    }
    rmdir(path);
}

static int s_mkdir_private(const char *path)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) return KB_EIO;
    struct stat st;
    //  A pre-existing directory must be ours and private, or someone else could read keys.
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid()) return KB_EACCES;
    if ((st.st_mode & 077) != 0 && chmod(path, 0700) != 0) return KB_EIO;
    return KB_OK;
}

rundir_t *rundir_new(const char *base)
{
    char parent[PATH_MAX];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (base)
        snprintf(parent, sizeof parent, "%s", base);
    else if (xdg && *xdg && access(xdg, W_OK) == 0)
        snprintf(parent, sizeof parent, "%s/kbridge", xdg);
    else
        snprintf(parent, sizeof parent, "/tmp/kbridge-%d", (int) getuid());
    if (s_mkdir_private(parent) != 0) {
        klog_error("cannot use runtime directory %s: %s", parent, strerror(errno));
        return NULL;
    }
    DIR *d = opendir(parent);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            if (*end || pid <= 0 || pid == getpid()) continue;
            if (kill((pid_t) pid, 0) == 0 || errno != ESRCH) continue;
            char stale[PATH_MAX];
            if (snprintf(stale, sizeof stale, "%s/%s", parent, e->d_name) >= (int) sizeof stale)
                continue;
            klog_info("removing runtime files of exited kbridge %ld", pid);
            s_remove_tree(stale);
        }
        closedir(d);
    }
    rundir_t *self = calloc(1, sizeof *self);
    if (!self || asprintf(&self->path, "%s/%d", parent, (int) getpid()) < 0) {
        free(self);
        return NULL;
    }
    if (s_mkdir_private(self->path) != 0) {
        klog_error("cannot create %s: %s", self->path, strerror(errno));
        free(self->path);
        free(self);
        return NULL;
    }
    return self;
}

void rundir_destroy(rundir_t **self_p)
{
    if (!self_p || !*self_p) return;
    rundir_t *self = *self_p;
    s_remove_tree(self->path);
    free(self->path);
    free(self);
    *self_p = NULL;
}

const char *rundir_path(const rundir_t *self)
{
    return self->path;
}
