/*  sbx - one sandbox: an agent process, and around it (isolation namespaces) its own
    mount, PID, IPC, UTS, user, cgroup and network namespaces, a root filesystem made of a
    template's read-only layers under a private writable layer, and cgroup limits.

    Everything that happens inside goes through the sandbox's agent (kbridge-agent, see
    sandbox/agent/): it is pid 1 of the sandbox, forks processes (proc.h), does file
    operations as the requested user with that user's permissions, and watches
    directories. Paths are therefore resolved by the sandbox's own kernel view: `..` and
    symlinks cannot lead outside it. The agent is trusted by nothing: code in the sandbox
    can take it over, so everything it sends is validated here.

    Users inside: root (uid 0) and user (uid 1000, home /home/user), mapped to host uids
    uid_base + n that own nothing outside the sandbox. Sandboxed processes never run as
    host root, run with no_new_privs, and hold no capability on the host.

    Isolation none (the default sandbox): the agent runs on the host as kbridge's user,
    without namespaces; processes run as that user in host paths. It still tracks every
    descendant (a child subreaper, and the cgroup when there is one), so nothing it
    started outlives it.

    Either way, if kbridge dies the agent sees its socket close and kills everything in
    the sandbox. Mounts live only in the sandbox's namespaces, so they vanish with it.
    The writable layer (state_dir) is kept until sbx_remove_state.
*/
#ifndef SBX_H
#define SBX_H

#include "proc.h"
#include "template.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef enum { SBX_ISOLATION_NONE = 0, SBX_ISOLATION_NAMESPACES = 1 } sbx_isolation_t;

typedef struct {
    const char *id;             //  [a-z0-9]{1,32}; the hostname inside
    sbx_isolation_t isolation;
    const char *agent_path;     //  the kbridge-agent executable
    //  isolation none
    const char *kernel_dir;     //  private directory for kernels' connection files (exists)
    //  kernel_dir is this sandbox's alone: the agent empties and removes it when it ends,
    //  which it does when kbridge goes, however (a SIGKILL included), so no key stays
    bool own_kernel_dir;
    const char *home;           //  default cwd (NULL: kbridge's cwd)
    //  isolation namespaces
    const template_t *tmpl;     //  the read-only layers (borrowed; must outlive the sandbox)
    const char *state_dir;      //  persistent: created if missing, reused if present
    uint32_t uid_base;          //  host uid (and gid) of the sandbox's uid 0; 65536 ids
    bool internet;              //  outbound network (else loopback only)
    const char *const *hidden;  //  host paths never visible inside (NULL-terminated)
    //  limits, where cgroups are available (0: none)
    uint64_t memory_bytes;
    uint32_t cpu_millis;        //  1000 = one CPU
    uint32_t pids;
    uint64_t tmp_bytes;         //  size of the sandbox's /tmp (0: a quarter of memory, or 1 GiB)
    const char *cgroup; //  cgroup path under each hierarchy, e.g. "kbridge/<id>"; NULL: none
    const char *pasta;          //  the pasta executable (internet); NULL: "pasta" from PATH
} sbx_opts_t;

typedef struct _sbx_t sbx_t;

typedef struct {
    //  The sandbox is up (err 0) or could not be made (err, why in words; destroy it).
    void (*on_ready)(sbx_t *sbx, int err, const char *why, void *arg);
    //  The agent went away unexpectedly: every process in the sandbox is gone and every
    //  pending request has failed with KB_ECLOSED. Destroy it (not from inside this call).
    void (*on_lost)(sbx_t *sbx, const char *why, void *arg);
} sbx_events_t;

//  Can this host run namespaces isolation? Returns 0, or KB_EINVAL with what is missing
//  and how to fix it in why (e.g. "user namespaces are disabled: sysctl
//  kernel.unprivileged_userns_clone=1"). Blocking (reads /proc, forks a probe): call at start.
int sbx_probe(const char *agent_path, char *why, size_t size);

//  Start a sandbox. Returns NULL with *err for bad options (KB_EINVAL) or when the agent
//  cannot be spawned (KB_ESPAWN); otherwise on_ready reports the outcome.
//  Caller owns return value and must destroy it when done.
sbx_t *sbx_new(uv_loop_t *loop, const sbx_opts_t *opts, const sbx_events_t *events, void *arg,
               int *err);
//  Kill everything in the sandbox at once, fail pending requests, remove its cgroup. The
//  state directory stays. Safe from inside any callback of this sandbox. Nullifies *self_p.
void sbx_destroy(sbx_t **self_p);

//  Remove a state directory (the writable layer) in the threadpool; done(err) after.
void sbx_remove_state(uv_loop_t *loop, const char *state_dir, void (*done)(int err, void *arg),
                      void *arg);
//  At start: kill what a previous kbridge left in cgroups under parent ("kbridge") and
//  remove them. Blocking.
void sbx_reap_stale(const char *cgroup_parent);

const char *sbx_id(const sbx_t *self);
bool sbx_ready(const sbx_t *self);
sbx_isolation_t sbx_isolation(const sbx_t *self);

//  Freeze every process (cgroup freezer) / thaw. Requests must not be sent while frozen.
//  Returns 0, KB_EINVAL (no freezer here: isolation none without cgroup) or KB_EIO.
int sbx_freeze(sbx_t *self);
int sbx_thaw(sbx_t *self);

typedef struct {
    uint64_t memory_bytes, memory_limit;
    uint64_t cpu_ns;
    uint32_t pids;
    uint64_t oom_kills;
} sbx_stats_t;
int sbx_stats(sbx_t *self, sbx_stats_t *stats);

//  A socket created in the sandbox's network namespace (SOCK_NONBLOCK | SOCK_CLOEXEC),
//  e.g. to connect to a server listening inside it. Returns the fd, or a negative KB_ code.
int sbx_socket(sbx_t *self, int domain, int type);

//  Where kernels' connection files and ipc sockets go: the host-side path (for kbridge)
//  and the same directory as processes inside see it. Only this sandbox sees it; it
//  disappears with the sandbox. Borrowed.
//  With namespaces the host-side path is /proc/<agent pid>/root/run/kbridge (NULL until
//  ready): code inside (its root, or `user`, who owns the directory) can replace parts of
//  it with symlinks, which that path would follow on the host. Never create files or
//  connect through it by path: use sbx_kernel_dir_fd.
const char *sbx_kernel_dir(const sbx_t *self);
const char *sbx_kernel_dir_inside(const sbx_t *self);
//  An O_PATH descriptor of the kernels' directory, resolved inside the sandbox's root
//  (openat2 RESOLVE_IN_ROOT: a planted symlink leads, at worst, elsewhere inside), for
//  openat(fd, name, O_CREAT | O_EXCL | O_NOFOLLOW ...) of connection files, and for ipc
//  sockets: open the socket with O_PATH | O_NOFOLLOW relative to it, check S_ISSOCK, and
//  connect to "/proc/self/fd/<that fd>" (ZeroMQ: "ipc:///proc/self/fd/<fd>", kept open
//  while connected). Caller owns the fd. Returns it, or a negative KB_ code.
int sbx_kernel_dir_fd(const sbx_t *self);
//  Host uid/gid of a sandbox user ("root", "user", NULL: the agent's), to chown files
//  kbridge writes for it. Returns 0 or KB_EINVAL.
int sbx_host_ids(const sbx_t *self, const char *user, uid_t *uid, gid_t *gid);
//  The agent's pid as processes inside see it (1 with namespaces).
int sbx_agent_pid(const sbx_t *self);
//  The user's home directory inside ("/root", "/home/user"; isolation none: opts.home).
const char *sbx_home(const sbx_t *self, const char *user);

// ---------------------------------------------------------------------------------------
//  Files. Every path is absolute in the sandbox (callers resolve relative paths against
//  their cwd first) and is acted on as user ("root", "user"; NULL: the agent's user),
//  with that user's permissions. Each call returns a request, or NULL with nothing
//  queued (KB_ENOMEM / KB_ECLOSED / KB_EINVAL for a path with NUL or longer than
//  PATH_MAX); its callback runs once, from a later loop turn, unless cancelled.

typedef enum { SBX_FILE = 1, SBX_DIR = 2, SBX_SYMLINK = 3, SBX_OTHER = 4 } sbx_ftype_t;

typedef struct {
    const char *name;            //  base name
    const char *path;            //  absolute path in the sandbox
    sbx_ftype_t type;            //  of the entry itself (lstat)
    sbx_ftype_t target_type;     //  symlinks: the target's type; 0 when the link is broken
    const char *symlink_target;  //  symlinks: the link's text; NULL otherwise
    uint64_t size;
    uint32_t mode;               //  st_mode (type and permission bits)
    uint32_t uid, gid;           //  as seen inside
    const char *owner, *group;   //  names inside, or the ids as text
    int64_t mtime_ns;            //  modification time, ns since the epoch
    //  Its user.kbridge.* extended attributes (see sbx_set_meta) as {name, value, ...,
    //  NULL}; never NULL (an empty list when there are none).
    const char *const *meta;
} sbx_entry_t;

typedef struct _sbx_req_t sbx_req_t;
//  Drop a request: its callback will not run. The operation itself may still happen.
void sbx_req_cancel(sbx_req_t *req);

//  err: 0, KB_ENOTFOUND, KB_EEXIST, KB_EACCES, KB_ENOTDIR, KB_EISDIR, KB_ENOSPC,
//  KB_EINVAL, KB_ETOOBIG (names or paths too long), KB_ECLOSED, KB_EIO; why says it in
//  words, naming the path. entries are borrowed for the call.
typedef void(sbx_entries_fn)(int err, const char *why, const sbx_entry_t *entries, size_t n,
                             void *arg);

sbx_req_t *sbx_stat(sbx_t *self, const char *user, const char *path, sbx_entries_fn *cb,
                    void *arg);
//  Entries of a directory, depth 1 = its children only; deeper levels flattened in
//  breadth-first order, directories included. Symlinks are not followed into.
sbx_req_t *sbx_list(sbx_t *self, const char *user, const char *path, int depth,
                    sbx_entries_fn *cb, void *arg);
//  Make a directory (with parents when asked); KB_EEXIST if it already exists. The entry.
sbx_req_t *sbx_mkdir(sbx_t *self, const char *user, const char *path, bool parents,
                     sbx_entries_fn *cb, void *arg);
//  Rename; the entry of the new path.
sbx_req_t *sbx_rename(sbx_t *self, const char *user, const char *from, const char *to,
                      sbx_entries_fn *cb, void *arg);
//  Remove a file, symlink or (recursively) a directory. No entries.
sbx_req_t *sbx_remove(sbx_t *self, const char *user, const char *path, sbx_entries_fn *cb,
                      void *arg);
//  Set extended attributes "user.kbridge.<name>" = value on a file (E2B's file metadata)
//  and read them back: pairs is {name, value, name, value, ..., NULL}.
sbx_req_t *sbx_set_meta(sbx_t *self, const char *user, const char *path,
                        const char *const *pairs, sbx_entries_fn *cb, void *arg);

//  Reading: an fd of a regular file, open for reading (owned by the callee: close it);
//  KB_EISDIR for a directory, KB_EINVAL for anything that is not a regular file (FIFOs,
//  devices, sockets are never opened, so nothing can block). entry is the file's.
typedef void(sbx_open_fn)(int err, const char *why, int fd, const sbx_entry_t *entry, void *arg);
sbx_req_t *sbx_open_read(sbx_t *self, const char *user, const char *path, sbx_open_fn *cb,
                         void *arg);

//  Writing: an upload writes a hidden temporary file next to path and puts it in place
//  (replacing path, keeping its mode if it existed) only at commit, so a cut-off upload
//  leaves nothing behind. parents: create missing parent directories (else KB_ENOTFOUND).
typedef struct _sbx_upload_t sbx_upload_t;
//  fd is the temporary file, open for writing (owned by the upload: do not close).
typedef void(sbx_upload_fn)(sbx_upload_t *up, int err, const char *why, int fd, void *arg);
sbx_upload_t *sbx_upload_begin(sbx_t *self, const char *user, const char *path, bool parents,
                               sbx_upload_fn *cb, void *arg);
//  Put the file in place; done gets its entry. Takes ownership of *up_p and nullifies it.
void sbx_upload_commit(sbx_upload_t **up_p, sbx_entries_fn *done, void *arg);
//  Forget the upload and remove the temporary file. Nullifies *up_p.
void sbx_upload_abort(sbx_upload_t **up_p);

// ---------------------------------------------------------------------------------------
//  Directory watches (inotify inside the sandbox, as user).

typedef enum {
    SBX_EV_CREATE = 1,
    SBX_EV_WRITE = 2,
    SBX_EV_REMOVE = 3,
    SBX_EV_RENAME = 4,
    SBX_EV_CHMOD = 5
} sbx_event_t;

typedef struct _sbx_watch_t sbx_watch_t;
typedef struct {
    //  Watching (err 0) or not: KB_ENOTFOUND, KB_ENOTDIR, KB_EACCES, KB_ELIMIT...
    void (*on_start)(sbx_watch_t *w, int err, const char *why, void *arg);
    //  name is relative to the watched directory ("sub/file.txt" when recursive).
    void (*on_event)(sbx_watch_t *w, sbx_event_t type, const char *name, bool is_dir, void *arg);
    //  No more events: the watched directory was removed (KB_ENOTFOUND), events were
    //  lost (KB_ETOOBIG), or the sandbox ended (KB_ECLOSED).
    void (*on_end)(sbx_watch_t *w, int err, const char *why, void *arg);
} sbx_watch_events_t;

//  Watch path (recursively: new subdirectories included). Returns NULL with *err if the
//  request could not be queued. Caller owns return value and must destroy it when done.
sbx_watch_t *sbx_watch(sbx_t *self, const char *user, const char *path, bool recursive,
                       const sbx_watch_events_t *events, void *arg, int *err);
void sbx_watch_destroy(sbx_watch_t **self_p);

#endif
