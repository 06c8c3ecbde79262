/*  kbridge-agent internals: the configuration, the socket to kbridge, and the parts
    (namespace setup, processes, file operations) that agent.c's loop ties together.

    The agent is libc only and single-threaded: it forks freely (workers, processes) and
    is the only thing that ever changes namespaces, so none of that happens in kbridge.
*/
#ifndef AGENT_H
#define AGENT_H

#include "sandbox/agentproto.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

//  The socket to kbridge: fd 3 as kbridge spawns us.
#define AGENT_SOCK_FD 3

typedef struct {
    int mode;             //  0 isolation none, 1 namespaces
    char id[40];
    uint32_t uid_base;
    const char *state_dir, *tmpl_dir, *kernel_dir, *home, *pasta;
    const char *hidden[256];
    size_t nhidden;
    const char *cgprocs[16];
    size_t ncg;
    uint64_t tmp_bytes;
    bool internet, debug;
    bool own_kernel_dir;  //  empty and remove kernel_dir on the way out
} agent_config_t;

extern agent_config_t g_cfg;
extern int g_sock;
//  Namespaces with internet, in pid 1: the pipe on which the supervisor says whether pasta
//  configured the network ("ok" or why not). The agent serves before that (files need no
//  network) but holds processes back until it has said ok; -1 once it has, or without
//  internet.
extern int g_netfd;

//  A sandbox user as the agent acts for it.
typedef struct {
    bool switch_ids;  //  false: stay the agent's own user (isolation none, or NULL user)
    uid_t uid;
    gid_t gid;
    const char *home;
} agent_user_t;

//  "root", "user" or NULL. Returns 0 or a negative KB_ code.
int agent_user(const char *name, agent_user_t *out);
//  Become u for good (workers and processes): groups, gid, uid. 0 or -errno.
int agent_become(const agent_user_t *u);

//  Send one message (blocking; workers and setup). 0 or -errno.
int agent_send_blocking(const void *buf, size_t len, const int *fds, int nfds);
//  Send from the main loop: never blocks, queues instead (agent.c). fds are closed once
//  sent. Returns 0, or -1 if the queue is full (the agent then gives up).
int agent_send(const void *buf, size_t len, const int *fds, int nfds);
//  An AP_ERROR for request id, blocking (workers) or queued (main loop).
void agent_error(bool blocking, uint64_t id, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
//  errno -> KB_ code.
int agent_errno_kb(int e);
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

//  nsetup.c: build the namespaces and the root filesystem. Runs as host root in the
//  process kbridge spawned; returns 0 in the sandbox's pid 1 (which then serves), or
//  -1 with why filled (in that first process, which reports it). The first process
//  otherwise never returns: it stays behind as a supervisor (see nsetup.c).
//  joiner: the pid of a child moving us into the sandbox's cgroups (agent.c), or 0;
//  ns_setup waits for it before it forks anything that must be in them.
int ns_setup(pid_t joiner, char *why, size_t size);
//  agent.c: wait for the cgroup joiner; 0, or -1 with why filled.
int agent_wait_joiner(pid_t joiner, char *why, size_t size);
//  kbridge-agent --probe (sbx_probe): try the namespace setup's key steps. Exit code.
int ns_probe(void);

//  spawn.c: processes.
void spawn_request(const ap_msg_t *m);
void spawn_kill(const ap_msg_t *m);
//  The exec-status pipe of a pending spawn is readable (or the child was reaped).
void spawn_exec_status(int fd);
//  fds to poll: pending spawns' exec-status pipes. Returns how many were written.
size_t spawn_poll_fds(int *out, size_t cap);
//  A child was reaped: true if it was a spawned process (its EXIT was sent).
bool spawn_reaped(pid_t pid, int status);
//  Kill every process the agent started (isolation none, on the way out).
void spawn_kill_all(void);

//  fileops.c: file operations and watches, each in a forked worker.
void fileop_request(const ap_msg_t *m, int *fds, int nfds);
void fileop_cancel(uint64_t id);
bool fileop_reaped(pid_t pid, int status);
//  The worker body (in the forked child): does the operation, replies, returns.
void fileop_worker(const ap_msg_t *m, const int *fds, int nfds, const agent_user_t *u,
                   const char *tmpname, const char *target);

//  Small helpers.
int agent_write_file(const char *path, const char *data, size_t len);

#endif
