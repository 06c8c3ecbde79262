/*  cgroup - one sandbox's control group, on cgroup v1 (a hierarchy per controller, as
    on hybrid systems) or v2 (one unified hierarchy with controllers).

    Every function here is blocking (cgroupfs reads and writes, kill loops): sbx.c calls
    the slow ones (create, kill, remove) in the libuv threadpool, and only the quick reads
    (stats, the OOM-kill counter) and the freezer switch on the loop.

    Controllers used: memory (limit, usage, OOM kills), cpu (CFS quota), cpuacct (v1
    usage), pids (limit), freezer (v1; v2: cgroup.freeze). A missing controller only
    means that feature is missing; a missing cgroup filesystem means no cgroup at all.
*/
#ifndef CGROUP_H
#define CGROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _cgroup_t cgroup_t;

typedef struct {
    uint64_t memory_bytes;  //  0: no limit
    uint32_t cpu_millis;    //  1000 = one CPU; 0: no limit
    uint32_t pids;          //  0: no limit
} cgroup_limits_t;

typedef struct {
    uint64_t memory_bytes, memory_limit;
    uint64_t cpu_ns;
    uint32_t pids;
    uint64_t oom_kills;
} cgroup_stats_t;

//  Make (or reuse) the group path ("kbridge/<id>", relative to each hierarchy's root) and
//  set its limits. Returns NULL with *err (KB_EINVAL: no cgroup filesystem, bad path;
//  KB_EIO) and why. Caller owns return value and must destroy it when done.
cgroup_t *cgroup_new(const char *path, const cgroup_limits_t *limits, char *why, size_t size,
                     int *err);
//  Free the object; the group itself stays (see cgroup_remove).
void cgroup_destroy(cgroup_t **self_p);

//  The cgroup.procs files a process writes "0" into to join the group (borrowed).
size_t cgroup_procs_files(const cgroup_t *self, const char **out, size_t cap);
bool cgroup_has_freezer(const cgroup_t *self);
//  Freeze (waits up to 100 ms until frozen; past that it completes on its own) or thaw.
//  0, KB_EINVAL (no freezer) or KB_EIO (the request was refused).
int cgroup_freeze(cgroup_t *self, bool frozen);
int cgroup_stats(const cgroup_t *self, cgroup_stats_t *stats);
//  The memory controller's OOM-kill count (0 when unknown).
uint64_t cgroup_oom_kills(const cgroup_t *self);
//  SIGKILL everything in the group until it is empty (v2: cgroup.kill; v1: freeze, kill
//  each of cgroup.procs, thaw, again), for at most timeout_ms. 0 or KB_ETIMEDOUT.
int cgroup_kill_all(cgroup_t *self, int timeout_ms);
//  Remove the (empty) group from every hierarchy. 0 or KB_EBUSY/KB_EIO.
int cgroup_remove(cgroup_t *self);
//  Kill and remove every group directly below parent ("kbridge") in every hierarchy.
void cgroup_reap_stale(const char *parent);

#endif
