/*  kernel - a Jupyter kernel process, its channels and its lifecycle. */
#include "kernel.h"
#include "../sandbox/proc.h"
#include "connfile.h"
#include "../base/jx.h"
#include "../base/kberr.h"
#include "../base/klog.h"
#include "../base/kutil.h"
#include "zwatch.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

#define NUDGE_INTERVAL_MS 500
#define NUDGE_AGAIN_MS 10  //  after a reply that came without iopub
#define HB_INTERVAL_MS 3000
#define HB_TIMEOUT_MS 30000
//  The heartbeat ticks at least this often relative to the timeout, so that a loss
//  (HB_MISSES_DEAD ticks without an answer) is seen before the timeout ends what runs.
#define HB_TICKS_PER_TIMEOUT 4
#define HB_MIN_INTERVAL_MS 50
//  An interrupt can be handled and still not end the cell: a SIGINT that lands after
//  CPython's last check for signals and before its blocking call (time.sleep after it let
//  go of the GIL, where the thread it wakes often preempts it) sets Python's flag, and the
//  call then sleeps its whole length. Under load that lost 2 interrupts in 6 here, and 6
//  in 12 through jupyter_client, which signals the same way. While the kernel shows no
//  sign of the interrupt (still busy, no error, no idle), its main thread is looked at
//  this often, and SIGINT is repeated to it, once, only when it has slept in one call
//  since the last look: a second SIGINT while ipykernel is still handling the first
//  (formatting its traceback, slow under load) would raise inside that handling, where
//  it loses the error message or ends the kernel.
#define INTERRUPT_CHECK_MS 500
#define INTERRUPT_CHECKS 20
#define HB_MISSES_DEAD 3
//  A start is complete when the heartbeat has answered too. Ports are chosen by binding to
//  port 0 and letting go, and the kernel binds them seconds later (tens of seconds under
//  load): any bind(0) meanwhile, on the whole machine, may be handed one of them - another
//  kernel's own, a kernel of another server. On shell, iopub, stdin or control ipykernel
//  then fails to start, but on the heartbeat only its heartbeat thread dies: the process
//  answers kernel_info_request, runs cells, and is declared unresponsive a little later,
//  for good (1 restart in 26 under the soak). Its heartbeat thread is running long
//  before its shell answers, so this long after shell and iopub are proven, a silent
//  heartbeat is a start that failed: it is retried on fresh ports, as a death would be.
#define HB_READY_GRACE_MS 10000
#define SHUTDOWN_WAIT_MS 2500   //  jupyter_client: shutdown_wait_time / 2, per stage
#define KILL_WAIT_MS 5000
#define STABLE_START_MS 10000   //  a kernel that lived this long resets the restart count
//  In an isolated sandbox the kernel's ipc sockets appear once it has bound them; they
//  are looked for this often.
#define SOCKET_POLL_MS 5

struct _kernel_t {
    uv_loop_t *loop;
    char id[64];
    char label[16];  //  short id for logs
    char session[37];
    kspec_t *spec;
    char *cwd;
    json_t *env, *base_env;
    int start_err;  //  of the last process start
    sbx_t *sbx;
    bool isolated;  //  sockets reached by fd, per process (see s_connect_isolated)
    char *user;
    bool autorestart;
    int restart_limit;
    int ready_timeout_ms;
    int hb_interval_ms;
    int hb_timeout_ms;
    kernel_events_t events;
    void *arg;

    connfile_t *conn;
    hmac_t *hmac;
    kchan_t *chan[KCH_COUNT];  //  KCH_HB slot unused: see hb
    zwatch_t *hb;

    proc_t *proc;
    bool proc_started, proc_exited;
    int pid;
    int sock_fds[KCH_COUNT];  //  isolated: O_PATH fds of this process's sockets (-1)
    bool chans_up;            //  the channels of the current process are connected
    bool oom_killed;
    kernel_state_t state;
    int generation;
    json_t *info;
    char language[64];
    char exit_reason[160];

    //  readiness: a kernel_info_reply and an iopub message from the same kernel session
    //  (the process's own id), so stale messages of a previous process do not count
    bool got_reply, got_iopub;
    char reply_session[128], iopub_session[128];
    char epoch[32];  //  when this readiness cycle began (ISO-8601, comparable as text)
    uint64_t ready_at;
    //  the start's steps (kb_now_ms; 0: not yet), for the debug log at ready
    uint64_t t_spawn, t_started, t_reply, t_iopub, t_hb;
    int nudges;
    bool got_hb;             //  an answer to a ping of this readiness cycle
    uint64_t hb_cycle_seq;   //  the last ping sent before this cycle began
    uint64_t hb_wait_since;  //  shell and iopub proven, the heartbeat not yet (kb_now_ms)
    bool was_ready;          //  the current (or last) process became ready
    //  why kbridge ended a start itself (the exit's own reason would say "signal 9")
    char start_failure[160];
    //  shutdown / restart
    bool shutting_down, restart_pending, shutdown_done;
    int kill_stage;
    int restart_count;
    //  heartbeat
    uint64_t hb_seq, hb_acked;
    int hb_misses;
    uint64_t hb_ok_at;     //  when the heartbeat last answered (or the kernel got ready)
    bool hb_lost;          //  HB_MISSES_DEAD pings in a row unanswered (KERNEL_EV_HB_LOST)
    bool hb_expired;       //  and for hb_timeout_ms (KERNEL_EV_HB_TIMEOUT)

    //  interrupt follow-up (signal mode)
    bool interrupt_landed;
    int interrupt_checks;

    uv_timer_t nudge_timer, deadline_timer, kill_timer, hb_timer, defer_timer, interrupt_timer,
        sock_timer;
    int open_timers;
    bool destroyed;
};

const char *kernel_state_name(kernel_state_t state)
{
    switch (state) {
    case KERNEL_STARTING: return "starting";
    case KERNEL_IDLE: return "idle";
    case KERNEL_BUSY: return "busy";
    case KERNEL_RESTARTING: return "restarting";
    default: return "dead";
    }
}

static void s_emit(kernel_t *self, kernel_event_t event)
{
    if (!self->destroyed && self->events.on_event) self->events.on_event(self, event, self->arg);
}

// ---------------------------------------------------------------------------------------
//  Process

static void s_on_proc_start(proc_t *proc, int err, const char *why, void *arg);
static void s_on_proc_exit(proc_t *proc, const proc_exit_t *exit, void *arg);
static void s_finish_shutdown(kernel_t *self);
static void s_request_exit(kernel_t *self, bool restart);

//  Executable lookup as execvp would do it, so a missing kernel binary on the host is
//  reported at once instead of as a process that exits 127.
static int s_find_executable(const char *file)
{
    if (strchr(file, '/')) return access(file, X_OK) == 0;
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    char *copy = strdup(path), *save = NULL;
    int found = 0;
    for (char *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir && !found;
         dir = strtok_r(NULL, ":", &save)) {
        char full[PATH_MAX];
        snprintf(full, sizeof full, "%s/%s", *dir ? dir : ".", file);
        found = access(full, X_OK) == 0;
    }
    free(copy);
    return found;
}

//  The environment for the kernel: the base (ours, or the sandbox's), then the
//  kernelspec's env, then the caller's.
static json_t *s_env_json(const kernel_t *self, json_t *base_env, json_t *extra)
{
    json_t *env = json_object();
    if (!env) return NULL;
    if (base_env) {
        json_object_update(env, base_env);
    } else {
        for (char **e = environ; *e; e++) {
            const char *eq = strchr(*e, '=');
            if (!eq) continue;
            char key[512];
            snprintf(key, sizeof key, "%.*s", (int) (eq - *e), *e);
            json_object_set_new(env, key, json_string(eq + 1));
        }
    }
    json_t *spec_env = kspec_env(self->spec);
    json_object_update(env, spec_env);
    json_decref(spec_env);
    const char *key;
    json_t *value;
    json_object_foreach(extra, key, value) if (json_is_string(value))
        json_object_set(env, key, value);
    //  ipykernel exits when its parent is gone: it polls getppid() for 1, unless its parent
    //  *is* pid 1 (the agent of an isolated sandbox), which JPY_PARENT_PID=1 says.
    char ppid[24];
    snprintf(ppid, sizeof ppid, "%d", self->isolated ? 1 : sbx_agent_pid(self->sbx));
    json_object_set_new(env, "JPY_PARENT_PID", json_string(ppid));
    const char *lang = kspec_language(self->spec);
    if (lang && strcasecmp(lang, "python") == 0) json_object_del(env, "PYTHONEXECUTABLE");
    return env;
}

static char **s_build_env(kernel_t *self)
{
    json_t *env = s_env_json(self, self->base_env, self->env);
    if (!env) return NULL;
    const char *key;
    json_t *value;
    size_t n = json_object_size(env), i = 0;
    char **envp = calloc(n + 1, sizeof *envp);
    if (envp)
        json_object_foreach(env, key, value)
        {
            if (asprintf(&envp[i], "%s=%s", key, json_string_value(value)) < 0) envp[i] = NULL;
            if (envp[i]) i++;
        }
    json_decref(env);
    return envp;
}

static int s_spawn(kernel_t *self)
{
    uv_timer_stop(&self->interrupt_timer);  //  it was for the previous process
    if (self->isolated) connfile_remove_sockets(self->conn);
    char **argv = kspec_format_argv(self->spec, connfile_path(self->conn));
    if (!argv) return KB_ENOMEM;
    if (!self->isolated && !s_find_executable(argv[0])) {
        snprintf(self->exit_reason, sizeof self->exit_reason, "kernel executable '%s' not found",
                 argv[0]);
        klog_error("kernel %s: %s", self->label, self->exit_reason);
        kspec_argv_free(argv);
        return KB_ESPAWN;
    }
    char **envp = s_build_env(self);
    if (!envp) {
        kspec_argv_free(argv);
        return KB_ENOMEM;
    }
    proc_opts_t popts;
    memset(&popts, 0, sizeof popts);
    popts.argv = (const char *const *) argv;
    popts.env = (const char *const *) envp;
    popts.cwd = self->cwd;
    popts.user = self->user;
    popts.log_output = true;  //  ipykernel's own warnings: the kernel's log, not cell output
    popts.label = self->label;
    proc_events_t pev = {s_on_proc_start, NULL, s_on_proc_exit};
    int err;
    self->t_spawn = kb_now_ms();
    self->t_started = self->t_reply = self->t_iopub = self->t_hb = 0;
    self->nudges = 0;
    self->proc = proc_spawn(self->sbx, &popts, &pev, self, &err);
    kspec_argv_free(argv);
    kspec_argv_free(envp);
    if (!self->proc) {
        snprintf(self->exit_reason, sizeof self->exit_reason, "cannot start kernel: %s",
                 kb_strerror(err));
        klog_error("kernel %s: %s", self->label, self->exit_reason);
        return err == KB_ENOMEM ? KB_ENOMEM : KB_ESPAWN;
    }
    self->proc_started = self->proc_exited = false;
    self->pid = 0;
    self->oom_killed = false;
    self->was_ready = false;
    self->start_failure[0] = '\0';
    self->generation++;
    self->exit_reason[0] = '\0';
    return KB_OK;
}

static bool s_proc_alive(const kernel_t *self)
{
    return self->proc && self->proc_started && !self->proc_exited;
}

static void s_signal_group(kernel_t *self, int signo)
{
    if (s_proc_alive(self)) proc_signal(self->proc, signo);
}

static void s_drop_chans(kernel_t *self);

//  Let go of the current process: whatever is left of its process group (children the
//  kernel spawned) is killed.
static void s_release_proc(kernel_t *self)
{
    proc_destroy(&self->proc);
    self->proc_started = false;
    self->pid = 0;
    if (self->isolated) s_drop_chans(self);
}

// ---------------------------------------------------------------------------------------
//  Channels

static void s_on_channel(kchan_t *chan, kmsg_t *msg, void *arg);
static void s_on_heartbeat(zwatch_t *watch, zmsg_t **msg_p, void *arg);
static void s_start_readiness(kernel_t *self);

static void s_drop_chans(kernel_t *self)
{
    for (int c = 0; c < KCH_COUNT; c++) kchan_destroy(&self->chan[c]);
    zwatch_destroy(&self->hb);
    //  The sockets are gone with the ZeroMQ sockets that used them, so the fds (whose
    //  numbers a reconnect would otherwise look up) can go too.
    for (int c = 0; c < KCH_COUNT; c++)
        if (self->sock_fds[c] >= 0) {
            close(self->sock_fds[c]);
            self->sock_fds[c] = -1;
        }
    self->chans_up = false;
}

//  Connect every channel to its endpoint (kchan for four, a raw DEALER for the heartbeat).
static int s_connect_chans(kernel_t *self, char endpoints[KCH_COUNT][64], const char *const *plain)
{
    for (int c = 0; c < KCH_COUNT; c++) {
        const char *ep = plain ? plain[c] : endpoints[c];
        if (c == KCH_HB) {
            zsock_t *hb = zwatch_socket(ZMQ_DEALER, NULL);
            if (!hb) return KB_ELIMIT;
            zsock_set_linger(hb, 0);
            zsock_set_reconnect_ivl(hb, KCHAN_RECONNECT_IVL_MS);
            if (zsock_connect(hb, "%s", ep) != 0) {
                zwatch_socket_destroy(&hb);
                return KB_EIO;
            }
            self->hb = zwatch_new(self->loop, &hb, s_on_heartbeat, self);
            if (!self->hb) return KB_EIO;
            continue;
        }
        //  shell and stdin share a routing id: input_request goes to the shell sender's id.
        self->chan[c] = kchan_new(self->loop, (kchan_type_t) c, ep, c == KCH_IOPUB ? NULL : self->session,
                                  self->hmac, self->label, s_on_channel, self);
        if (!self->chan[c]) return KB_ELIMIT;
    }
    self->chans_up = true;
    return KB_OK;
}

//  Isolated sandboxes: the kernel binds its ipc sockets in the sandbox's kernel
//  directory, which code inside can tamper with. kbridge never follows a path there:
//  each socket is opened (O_PATH, no symlinks) relative to the directory's fd, checked to
//  be a socket, and connected through /proc/self/fd - once all five exist.
static void s_on_sock_timer(uv_timer_t *timer)
{
    kernel_t *self = timer->data;
    if (!s_proc_alive(self) || self->chans_up) {
        uv_timer_stop(timer);
        return;
    }
    int dirfd = sbx_kernel_dir_fd(self->sbx);
    if (dirfd < 0) return;
    int fds[KCH_COUNT];
    int n = 0;
    for (; n < KCH_COUNT; n++) {
        fds[n] = openat(dirfd, connfile_socket_name(self->conn, (kchan_type_t) n),
                        O_PATH | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (fds[n] < 0 || fstat(fds[n], &st) != 0 || !S_ISSOCK(st.st_mode)) {
            if (fds[n] >= 0) close(fds[n]);
            break;
        }
    }
    close(dirfd);
    if (n < KCH_COUNT) {
        for (int i = 0; i < n; i++) close(fds[i]);
        return;  //  not bound yet: look again
    }
    uv_timer_stop(timer);
    char endpoints[KCH_COUNT][64];
    for (int c = 0; c < KCH_COUNT; c++) {
        self->sock_fds[c] = fds[c];
        snprintf(endpoints[c], sizeof endpoints[c], "ipc:///proc/self/fd/%d", fds[c]);
    }
    int rc = s_connect_chans(self, endpoints, NULL);
    if (rc != KB_OK) {
        snprintf(self->exit_reason, sizeof self->exit_reason, "cannot connect to the kernel: %s",
                 kb_strerror(rc));
        klog_error("kernel %s: %s", self->label, self->exit_reason);
        s_drop_chans(self);
        proc_signal(self->proc, SIGKILL);
        return;
    }
    s_start_readiness(self);
}

static void s_on_proc_start(proc_t *proc, int err, const char *why, void *arg)
{
    (void) proc;
    kernel_t *self = arg;
    self->start_err = err;
    if (err) {
        snprintf(self->exit_reason, sizeof self->exit_reason, "cannot start kernel: %s",
                 why && *why ? why : kb_strerror(err));
        klog_error("kernel %s: %s", self->label, self->exit_reason);
        s_release_proc(self);
        uv_timer_stop(&self->deadline_timer);
        uv_timer_stop(&self->nudge_timer);
        if (self->shutting_down) {
            s_finish_shutdown(self);
            return;
        }
        self->restart_pending = false;
        self->state = KERNEL_DEAD;
        s_emit(self, KERNEL_EV_DEAD);
        return;
    }
    self->proc_started = true;
    self->t_started = kb_now_ms();
    self->pid = proc_pid(self->proc);
    klog_info("kernel %s: started %s (pid %d) in %s", self->label, kspec_name(self->spec),
              self->pid, self->cwd ? self->cwd : sbx_home(self->sbx, self->user) ? sbx_home(self->sbx, self->user) : ".");
    if (self->shutting_down || self->restart_pending) {
        //  A shutdown or restart asked for while the process was on its way.
        s_request_exit(self, self->restart_pending);
        return;
    }
    if (self->isolated) uv_timer_start(&self->sock_timer, s_on_sock_timer, 0, SOCKET_POLL_MS);
    else s_start_readiness(self);
}

// ---------------------------------------------------------------------------------------
//  Readiness and heartbeat

static void s_send_kernel_info(kernel_t *self)
{
    kmsg_t *msg = kernel_msg_new(self, "kernel_info_request", NULL);
    if (msg) kernel_send(self, KCH_SHELL, &msg);
}

static void s_send_ping(kernel_t *self)
{
    if (!self->hb) return;
    char ping[32];
    int n = snprintf(ping, sizeof ping, "ping %llu", (unsigned long long) ++self->hb_seq);
    //  An empty delimiter frame first, as a REQ socket would send: kernels whose heartbeat
    //  is a REP socket (IRkernel) need it, and ipykernel's ROUTER echo returns it as is.
    zmsg_t *msg = zmsg_new();
    if (msg && zmsg_addmem(msg, "", 0) == 0 && zmsg_addmem(msg, ping, (size_t) n) == 0)
        zwatch_send(self->hb, &msg);
    zmsg_destroy(&msg);
}

static void s_fail_start(kernel_t *self, const char *why);

static void s_on_nudge(uv_timer_t *timer)
{
    kernel_t *self = timer->data;
    if (self->hb_wait_since) {
        //  Shell and iopub are proven; only the heartbeat is awaited.
        int grace = self->hb_timeout_ms < HB_READY_GRACE_MS ? self->hb_timeout_ms : HB_READY_GRACE_MS;
        if (kb_now_ms() - self->hb_wait_since >= (uint64_t) grace) {
            char why[160];
            snprintf(why, sizeof why, "its heartbeat did not answer (port %s taken by another "
                     "process before the kernel could bind it?)",
                     self->conn && connfile_endpoint(self->conn, KCH_HB) ? connfile_endpoint(self->conn, KCH_HB) : "?");
            s_fail_start(self, why);
            return;
        }
    } else {
        //  Every retry is a new message: kernels silently drop a repeated signature.
        s_send_kernel_info(self);
        self->nudges++;
    }
    if (!self->got_hb) s_send_ping(self);
}

static void s_start_readiness(kernel_t *self)
{
    self->got_reply = self->got_iopub = false;
    self->reply_session[0] = self->iopub_session[0] = '\0';
    kb_now_iso(self->epoch);
    self->ready_at = 0;
    self->got_hb = false;
    self->hb_cycle_seq = self->hb_seq;
    self->hb_wait_since = 0;
    uv_timer_start(&self->nudge_timer, s_on_nudge, 0, NUDGE_INTERVAL_MS);
}

static void s_on_heartbeat_timer(uv_timer_t *timer)
{
    kernel_t *self = timer->data;
    if (!s_proc_alive(self) || !self->hb) return;
    if (self->hb_seq && self->hb_acked != self->hb_seq) {
        self->hb_misses++;
        uint64_t silent = kb_now_ms() - self->hb_ok_at;
        if (self->hb_misses >= HB_MISSES_DEAD && !self->hb_lost) {
            self->hb_lost = true;
            klog_warn("kernel %s: heartbeat lost (%d pings unanswered); runs end after %d s of "
                      "silence", self->label, self->hb_misses, self->hb_timeout_ms / 1000);
            s_emit(self, KERNEL_EV_HB_LOST);
            if (self->destroyed || !s_proc_alive(self)) return;
        }
        if (self->hb_lost && !self->hb_expired && silent >= (uint64_t) self->hb_timeout_ms) {
            self->hb_expired = true;
            klog_warn("kernel %s: no heartbeat for %llu ms (--heartbeat-timeout): ending its runs",
                      self->label, (unsigned long long) silent);
            s_emit(self, KERNEL_EV_HB_TIMEOUT);
            if (self->destroyed || !s_proc_alive(self)) return;
        }
    }
    s_send_ping(self);
}

static void s_check_ready(kernel_t *self);

static void s_on_heartbeat(zwatch_t *watch, zmsg_t **msg_p, void *arg)
{
    (void) watch;
    kernel_t *self = arg;
    zframe_t *frame = zmsg_first(*msg_p);
    if (frame && zframe_size(frame) == 0) frame = zmsg_next(*msg_p);  //  the delimiter
    unsigned long long seq = 0;
    char buf[32];
    if (frame && zframe_size(frame) < sizeof buf) {
        memcpy(buf, zframe_data(frame), zframe_size(frame));
        buf[zframe_size(frame)] = '\0';
        sscanf(buf, "ping %llu", &seq);
    }
    if (self->state == KERNEL_STARTING || self->state == KERNEL_RESTARTING) {
        //  Any ping of this readiness cycle proves the heartbeat of this process.
        if (!self->got_hb && seq > self->hb_cycle_seq && seq <= self->hb_seq && s_proc_alive(self)) {
            self->got_hb = true;
            if (!self->t_hb) self->t_hb = kb_now_ms();
            s_check_ready(self);
        }
        return;
    }
    //  Only the latest ping counts: a kernel that was stopped answers the backlog at once.
    if (seq != self->hb_seq) return;
    self->hb_acked = seq;
    self->hb_misses = 0;
    self->hb_ok_at = kb_now_ms();
    if (self->hb_lost) {
        self->hb_lost = self->hb_expired = false;
        klog_info("kernel %s: heartbeat is back", self->label);
        s_emit(self, KERNEL_EV_HB_BACK);
    }
}

static void s_check_ready(kernel_t *self)
{
    if ((self->state != KERNEL_STARTING && self->state != KERNEL_RESTARTING) ||
        !self->got_reply || !self->got_iopub || self->shutting_down || self->restart_pending)
        return;
    if (strcmp(self->reply_session, self->iopub_session) != 0) return;
    if (!self->got_hb) {
        if (!self->hb_wait_since) self->hb_wait_since = kb_now_ms();
        return;
    }
    uv_timer_stop(&self->nudge_timer);
    uv_timer_stop(&self->deadline_timer);
    self->state = KERNEL_IDLE;
    self->ready_at = kb_now_ms();
    self->was_ready = true;
    self->hb_wait_since = 0;
    //  Pings of the readiness cycle may still come back: they are not the next one's.
    self->hb_acked = self->hb_seq;
    self->hb_misses = 0;
    self->hb_ok_at = self->ready_at;
    self->hb_lost = self->hb_expired = false;
    uv_timer_start(&self->hb_timer, s_on_heartbeat_timer, (uint64_t) self->hb_interval_ms,
                   (uint64_t) self->hb_interval_ms);
    klog_info("kernel %s: ready (%s)", self->label, self->language);
    if (self->t_spawn) {
        //  Where a start's time goes: the process (spawned -> started), then the three
        //  proofs of readiness (from the spawn request).
#define KB_SINCE(t) (t ? (long long) (t - self->t_spawn) : -1ll)
        klog_debug("kernel %s: ready %lld ms after its spawn: started +%lld, kernel_info_reply "
                   "+%lld, iopub +%lld, heartbeat +%lld ms; %d kernel_info_request(s)",
                   self->label, KB_SINCE(self->ready_at), KB_SINCE(self->t_started), KB_SINCE(self->t_reply),
                   KB_SINCE(self->t_iopub), KB_SINCE(self->t_hb), self->nudges);
#undef KB_SINCE
    }
    s_emit(self, KERNEL_EV_READY);
}

// ---------------------------------------------------------------------------------------
//  Messages

static void s_on_channel(kchan_t *chan, kmsg_t *msg, void *arg)
{
    kernel_t *self = arg;
    kchan_type_t type = kchan_type(chan);
    const char *msg_type = kmsg_type(msg);
    const char *session = kmsg_session(msg) ? kmsg_session(msg) : "";
    if (type == KCH_IOPUB) {
        self->got_iopub = true;
        if (!self->t_iopub && (self->state == KERNEL_STARTING || self->state == KERNEL_RESTARTING))
            self->t_iopub = kb_now_ms();
        if (strcmp(session, self->reply_session) == 0 || !self->got_reply)
            snprintf(self->iopub_session, sizeof self->iopub_session, "%s", session);
        if (strcmp(msg_type, "error") == 0) self->interrupt_landed = true;
        if (strcmp(msg_type, "status") == 0) {
            //  Read from the raw content: a jansson parse per status message cost more
            //  than the rest of its handling.
            jraw_t state = {NULL, 0};
            if (kmsg_content_member(msg, "execution_state", &state) != KB_OK) state.len = 0;
            bool idle = jraw_string_is(state, "idle");
            if (idle) self->interrupt_landed = true;
            kernel_state_t next = self->state;
            if (jraw_string_is(state, "busy")) next = KERNEL_BUSY;
            if (idle) next = KERNEL_IDLE;
            if ((self->state == KERNEL_IDLE || self->state == KERNEL_BUSY) && next != self->state) {
                self->state = next;
                s_emit(self, KERNEL_EV_STATUS);
            }
        }
    } else if (type == KCH_SHELL && strcmp(msg_type, "kernel_info_reply") == 0) {
        json_t *content = kmsg_content(msg);
        if (json_is_object(content)) {
            json_decref(self->info);
            self->info = json_incref(content);
            const char *lang = NULL;
            json_t *li = NULL;
            jx_get_obj(content, "language_info", &li, true);
            jx_get_str(li, "name", &lang, true);
            if (lang) snprintf(self->language, sizeof self->language, "%s", lang);
        }
        //  A reply to a nudge of this cycle (our requests carry their send time) decides
        //  which process is the live one; iopub from another session does not count.
        const char *asked = kmsg_parent_date(msg) ? kmsg_parent_date(msg) : "";
        if (!self->got_reply && strcmp(asked, self->epoch) >= 0) {
            snprintf(self->reply_session, sizeof self->reply_session, "%s", session);
            self->got_reply = true;
            if (!self->t_reply) self->t_reply = kb_now_ms();
        }
        //  A reply of this cycle without its iopub: the status was published before our SUB
        //  had joined (PUB drops what no subscriber holds yet). Ask again soon rather than
        //  at the next regular nudge; one request is out at a time, so this cannot flood.
        if (self->got_reply && strcmp(asked, self->epoch) >= 0 &&
            (self->state == KERNEL_STARTING || self->state == KERNEL_RESTARTING) &&
            (!self->got_iopub || strcmp(self->iopub_session, self->reply_session) != 0))
            uv_timer_start(&self->nudge_timer, s_on_nudge, NUDGE_AGAIN_MS, NUDGE_INTERVAL_MS);
    }
    if (!self->destroyed && self->events.on_msg) self->events.on_msg(self, type, msg, self->arg);
    if (!self->destroyed) s_check_ready(self);
}

// ---------------------------------------------------------------------------------------
//  Lifecycle

static void s_finish_shutdown(kernel_t *self)
{
    if (self->shutdown_done) return;
    self->shutdown_done = true;
    uv_timer_stop(&self->kill_timer);
    uv_timer_stop(&self->nudge_timer);
    uv_timer_stop(&self->deadline_timer);
    uv_timer_stop(&self->hb_timer);
    uv_timer_stop(&self->sock_timer);
    s_release_proc(self);
    connfile_destroy(&self->conn, true);
    self->state = KERNEL_SHUTDOWN;
    klog_info("kernel %s: shut down", self->label);
    s_emit(self, KERNEL_EV_SHUTDOWN);
}

static void s_on_kill_timer(uv_timer_t *timer)
{
    kernel_t *self = timer->data;
    if (!s_proc_alive(self)) return;
    if (self->kill_stage == 0) {
        klog_warn("kernel %s: no exit %d ms after shutdown_request; sending SIGTERM",
                  self->label, SHUTDOWN_WAIT_MS);
        s_signal_group(self, SIGTERM);
        self->kill_stage = 1;
        uv_timer_start(&self->kill_timer, s_on_kill_timer, SHUTDOWN_WAIT_MS, 0);
    } else if (self->kill_stage == 1) {
        klog_warn("kernel %s: still alive after SIGTERM; sending SIGKILL", self->label);
        s_signal_group(self, SIGKILL);
        self->kill_stage = 2;
        uv_timer_start(&self->kill_timer, s_on_kill_timer, KILL_WAIT_MS, 0);
    } else {
        //  Unkillable (stuck in the kernel): stop waiting for it.
        klog_error("kernel %s: pid %d did not exit after SIGKILL", self->label, self->pid);
        s_release_proc(self);
        if (self->shutting_down) {
            s_finish_shutdown(self);
        } else if (self->start_failure[0] && !self->restart_pending) {
            snprintf(self->exit_reason, sizeof self->exit_reason, "%s", self->start_failure);
            self->state = KERNEL_DEAD;
            s_emit(self, KERNEL_EV_DEAD);
        }
    }
}

//  Ask the running process to exit, escalating on a timer. Its exit callback continues.
static void s_request_exit(kernel_t *self, bool restart)
{
    uv_timer_stop(&self->nudge_timer);
    uv_timer_stop(&self->deadline_timer);
    uv_timer_stop(&self->hb_timer);
    if (!self->proc_started) return;  //  s_on_proc_start asks once the process is there
    if (kspec_interrupt_mode(self->spec) == KSPEC_INTERRUPT_SIGNAL) s_signal_group(self, SIGINT);
    kmsg_t *msg = kernel_msg_new(self, "shutdown_request", json_pack("{s:b}", "restart", restart));
    if (msg) kernel_send(self, KCH_CONTROL, &msg);
    self->kill_stage = 0;
    uv_timer_start(&self->kill_timer, s_on_kill_timer, SHUTDOWN_WAIT_MS, 0);
}

static void s_on_deadline(uv_timer_t *timer);

//  Start the next process for this kernel (restart or automatic restart).
static void s_respawn(kernel_t *self)
{
    self->restart_pending = false;
    self->state = KERNEL_RESTARTING;
    if (s_spawn(self) != KB_OK) {
        self->state = KERNEL_DEAD;
        s_emit(self, KERNEL_EV_DEAD);
        return;
    }
    //  Readiness starts when the process does (s_on_proc_start); the deadline covers both.
    uv_timer_start(&self->deadline_timer, s_on_deadline, (uint64_t) self->ready_timeout_ms, 0);
}

//  End a start that will not complete: the process is killed and its exit goes on as a
//  death would (an automatic restart on fresh ports, within the restart limit), with why.
static void s_fail_start(kernel_t *self, const char *why)
{
    snprintf(self->start_failure, sizeof self->start_failure, "%s", why);
    klog_warn("kernel %s: start failed: %s; killing pid %d", self->label, why, self->pid);
    uv_timer_stop(&self->nudge_timer);
    uv_timer_stop(&self->deadline_timer);
    uv_timer_stop(&self->sock_timer);
    self->hb_wait_since = 0;
    s_signal_group(self, SIGKILL);
    self->kill_stage = 2;
    uv_timer_start(&self->kill_timer, s_on_kill_timer, KILL_WAIT_MS, 0);
}

static void s_on_deadline(uv_timer_t *timer)
{
    kernel_t *self = timer->data;
    char why[160];
    snprintf(why, sizeof why, "kernel did not become ready within %d ms", self->ready_timeout_ms);
    //  A process that is there but never got ready (one that met a port taken may hang
    //  instead of exiting) is retried like a death, if deaths are.
    if (self->autorestart && self->restart_count < self->restart_limit && s_proc_alive(self) &&
        !self->shutting_down && !self->restart_pending) {
        s_fail_start(self, why);
        return;
    }
    snprintf(self->exit_reason, sizeof self->exit_reason, "%s", why);
    klog_error("kernel %s: %s", self->label, self->exit_reason);
    uv_timer_stop(&self->nudge_timer);
    uv_timer_stop(&self->sock_timer);
    s_release_proc(self);
    self->state = KERNEL_DEAD;
    s_emit(self, KERNEL_EV_DEAD);
}

//  An automatic restart runs on fresh ports: the dead process's may have been taken since
//  (or been the reason it died: "Address already in use" on the same ports again would
//  use up every restart). Returns false if the kernel cannot be reached any more.
static bool s_fresh_ports(kernel_t *self)
{
    if (self->isolated || connfile_new_ports(self->conn) != KB_OK) return true;
    s_drop_chans(self);
    const char *eps[KCH_COUNT];
    for (int c = 0; c < KCH_COUNT; c++) eps[c] = connfile_endpoint(self->conn, (kchan_type_t) c);
    int rc = s_connect_chans(self, NULL, eps);
    if (rc != KB_OK) {
        snprintf(self->exit_reason, sizeof self->exit_reason, "cannot connect to the kernel: %s",
                 kb_strerror(rc));
        klog_error("kernel %s: %s", self->label, self->exit_reason);
        s_drop_chans(self);
        return false;
    }
    klog_info("kernel %s: restarting on fresh ports (%s ...)", self->label, eps[KCH_SHELL]);
    s_emit(self, KERNEL_EV_ENDPOINTS);
    return true;
}

static void s_on_proc_exit(proc_t *proc, const proc_exit_t *exit, void *arg)
{
    (void) proc;
    kernel_t *self = arg;
    self->proc_exited = true;
    self->oom_killed = exit->oom_killed;
    sbx_stats_t st;
    if (exit->oom_killed && sbx_stats(self->sbx, &st) == 0 && st.memory_limit)
        snprintf(self->exit_reason, sizeof self->exit_reason,
                 "killed: out of memory (the sandbox's memory limit of %llu MiB was reached)",
                 (unsigned long long) (st.memory_limit >> 20));
    else if (exit->oom_killed)
        snprintf(self->exit_reason, sizeof self->exit_reason,
                 "killed: out of memory (the sandbox's memory limit)");
    else if (!exit->exited)
        snprintf(self->exit_reason, sizeof self->exit_reason, "killed by signal %d (%s)", exit->signal,
                 strsignal(exit->signal));
    else
        snprintf(self->exit_reason, sizeof self->exit_reason, "exited with code %lld",
                 (long long) exit->code);
    klog_info("kernel %s: process %d %s", self->label, exit->pid, self->exit_reason);
    if (self->start_failure[0])
        snprintf(self->exit_reason, sizeof self->exit_reason, "%s", self->start_failure);
    s_release_proc(self);
    uv_timer_stop(&self->kill_timer);
    uv_timer_stop(&self->hb_timer);
    uv_timer_stop(&self->nudge_timer);
    uv_timer_stop(&self->deadline_timer);
    uv_timer_stop(&self->sock_timer);

    if (self->shutting_down) {
        s_finish_shutdown(self);
        return;
    }
    if (self->restart_pending) {
        s_respawn(self);
        return;
    }
    //  Unexpected death.
    bool was_stable = self->ready_at && kb_now_ms() - self->ready_at >= STABLE_START_MS;
    if (was_stable) self->restart_count = 0;
    self->state = KERNEL_DEAD;
    if (self->was_ready)
        klog_warn("kernel %s: died (%s)", self->label, self->exit_reason);
    else
        klog_warn("kernel %s: died before it was ready (%s)", self->label, self->exit_reason);
    s_emit(self, KERNEL_EV_DIED);
    if (self->destroyed || self->shutting_down || self->proc) return;  //  owner acted
    if (self->autorestart && self->restart_count < self->restart_limit) {
        self->restart_count++;
        klog_info("kernel %s: restarting automatically (%d of %d)", self->label,
                  self->restart_count, self->restart_limit);
        self->state = KERNEL_RESTARTING;
        s_emit(self, KERNEL_EV_RESTARTING);
        if (self->destroyed || self->shutting_down || self->proc) return;
        if (!s_fresh_ports(self)) {
            self->state = KERNEL_DEAD;
            s_emit(self, KERNEL_EV_DEAD);
            return;
        }
        if (!self->destroyed && !self->shutting_down && !self->proc) s_respawn(self);
    } else if (self->autorestart) {
        klog_error("kernel %s: giving up after %d restarts", self->label, self->restart_count);
        s_emit(self, KERNEL_EV_DEAD);
    } else {
        s_emit(self, KERNEL_EV_DEAD);
    }
}

static void s_on_deferred_shutdown(uv_timer_t *timer)
{
    s_finish_shutdown(timer->data);
}

static void s_timer_closed(uv_handle_t *handle)
{
    kernel_t *self = handle->data;
    if (--self->open_timers == 0) {
        json_decref(self->info);
        json_decref(self->env);
        json_decref(self->base_env);
        kspec_destroy(&self->spec);
        hmac_destroy(&self->hmac);
        free(self->cwd);
        free(self->user);
        free(self);
    }
}

kernel_t *kernel_new(uv_loop_t *loop, const kspec_t *spec, const kernel_opts_t *opts,
                     const kernel_events_t *events, void *arg, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_EINVAL;
    if (!opts || !opts->sbx) return NULL;
    if (!sbx_ready(opts->sbx)) {
        *err = KB_ECLOSED;
        return NULL;
    }
    bool isolated = sbx_isolation(opts->sbx) == SBX_ISOLATION_NAMESPACES;
    //  A cwd on the host is checked here; in a sandbox the process's start says.
    if (opts->cwd && !isolated) {
        struct stat st;
        if (stat(opts->cwd, &st) != 0 || !S_ISDIR(st.st_mode)) {
            klog_error("kernel cwd %s is not a directory", opts->cwd);
            return NULL;
        }
    }
    *err = KB_ENOMEM;
    kernel_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = loop;
    self->sbx = opts->sbx;
    self->isolated = isolated;
    for (int c = 0; c < KCH_COUNT; c++) self->sock_fds[c] = -1;
    if (opts->id)
        snprintf(self->id, sizeof self->id, "%s", opts->id);
    else
        kb_uuid4(self->id);
    snprintf(self->label, sizeof self->label, "%.8s", self->id);
    kb_uuid4(self->session);
    self->spec = kspec_dup(spec);
    self->cwd = !opts->cwd ? NULL : isolated ? strdup(opts->cwd) : realpath(opts->cwd, NULL);
    self->user = kb_strdup(opts->user);
    self->env = opts->env ? json_deep_copy(opts->env) : json_object();
    self->base_env = opts->base_env ? json_deep_copy(opts->base_env) : NULL;
    self->autorestart = opts->autorestart;
    self->restart_limit = opts->restart_limit > 0 ? opts->restart_limit : 5;
    self->ready_timeout_ms = opts->ready_timeout_ms > 0 ? opts->ready_timeout_ms : 60000;
    self->hb_timeout_ms = opts->hb_timeout_ms > 0 ? opts->hb_timeout_ms : HB_TIMEOUT_MS;
    if (opts->hb_interval_ms > 0) {
        self->hb_interval_ms = opts->hb_interval_ms;
    } else {
        self->hb_interval_ms = self->hb_timeout_ms / HB_TICKS_PER_TIMEOUT;
        if (self->hb_interval_ms > HB_INTERVAL_MS) self->hb_interval_ms = HB_INTERVAL_MS;
        if (self->hb_interval_ms < HB_MIN_INTERVAL_MS) self->hb_interval_ms = HB_MIN_INTERVAL_MS;
    }
    if (events) self->events = *events;
    self->arg = arg;
    snprintf(self->language, sizeof self->language, "%s", kspec_language(spec));
    uv_timer_t *timers[] = {&self->nudge_timer, &self->deadline_timer, &self->kill_timer,
                            &self->hb_timer,    &self->defer_timer,    &self->interrupt_timer,
                            &self->sock_timer};
    for (size_t i = 0; i < sizeof timers / sizeof *timers; i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = self;
        self->open_timers++;
    }
    if (!self->spec || !self->env || (opts->cwd && !self->cwd) || (opts->user && !self->user) ||
        (opts->base_env && !self->base_env))
        goto fail;
    connfile_opts_t copts = {self->id, kspec_name(spec), isolated ? "ipc" : opts->transport,
                             isolated ? NULL : opts->ip, opts->signature_scheme, NULL, -1, NULL,
                             (uid_t) -1, (gid_t) -1};
    int dirfd = -1;
    if (isolated) {
        dirfd = sbx_kernel_dir_fd(self->sbx);
        if (dirfd < 0) {
            *err = KB_ECLOSED;
            goto fail;
        }
        copts.dirfd = dirfd;
        copts.dir_inside = sbx_kernel_dir_inside(self->sbx);
        uid_t uid;
        gid_t gid;
        if (sbx_host_ids(self->sbx, self->user, &uid, &gid) == KB_OK) {
            copts.uid = uid;
            copts.gid = gid;
        }
    } else {
        copts.dir = sbx_kernel_dir(self->sbx);
    }
    self->conn = connfile_new(&copts, err);
    if (dirfd >= 0) close(dirfd);
    if (!self->conn) goto fail;
    const char *key = connfile_key(self->conn);
    self->hmac = hmac_new(connfile_scheme(self->conn), key, strlen(key), err);
    if (!self->hmac) goto fail;
    if (!isolated) {
        //  On the host the endpoints stay for restarts asked for; automatic restarts after a
        //  death choose fresh ports (s_fresh_ports).
        const char *eps[KCH_COUNT];
        for (int c = 0; c < KCH_COUNT; c++) eps[c] = connfile_endpoint(self->conn, (kchan_type_t) c);
        if ((*err = s_connect_chans(self, NULL, eps)) != KB_OK) goto fail;
    }
    self->state = KERNEL_STARTING;
    if ((*err = s_spawn(self)) != KB_OK) goto fail;
    uv_timer_start(&self->deadline_timer, s_on_deadline, (uint64_t) self->ready_timeout_ms, 0);
    *err = KB_OK;
    return self;
fail:
    kernel_destroy(&self);
    return NULL;
}

void kernel_destroy(kernel_t **self_p)
{
    if (!self_p || !*self_p) return;
    kernel_t *self = *self_p;
    *self_p = NULL;
    if (self->destroyed) return;
    self->destroyed = true;
    s_release_proc(self);
    connfile_destroy(&self->conn, true);
    s_drop_chans(self);
    //  The struct is freed once every timer handle has closed, after this loop turn, so
    //  callers up the stack that still hold it stay safe.
    uv_timer_t *timers[] = {&self->nudge_timer, &self->deadline_timer, &self->kill_timer,
                            &self->hb_timer,    &self->defer_timer,    &self->interrupt_timer,
                            &self->sock_timer};
    for (size_t i = 0; i < sizeof timers / sizeof *timers; i++)
        uv_close((uv_handle_t *) timers[i], s_timer_closed);
}

int kernel_send(kernel_t *self, kchan_type_t channel, kmsg_t **msg_p)
{
    if (self->destroyed || self->shutdown_done) {
        kmsg_destroy(msg_p);
        return KB_ECLOSED;
    }
    if (channel == KCH_IOPUB || channel == KCH_HB || (unsigned) channel >= KCH_COUNT ||
        !self->chan[channel]) {
        kmsg_destroy(msg_p);
        return KB_EINVAL;
    }
    if (self->state == KERNEL_DEAD) {
        kmsg_destroy(msg_p);
        return KB_EDEAD;
    }
    return kchan_send(self->chan[channel], msg_p);
}

static void s_on_interrupt_timer(uv_timer_t *timer)
{
    kernel_t *self = timer->data;
    if (self->interrupt_landed || self->state != KERNEL_BUSY || !s_proc_alive(self) ||
        self->interrupt_checks >= INTERRUPT_CHECKS) {
        uv_timer_stop(timer);
        return;
    }
    self->interrupt_checks++;
    if (self->interrupt_checks == 2)
        klog_info("kernel %s: no sign of the interrupt after %d ms; repeating it to its main "
                  "thread if that sleeps through", self->label, 2 * INTERRUPT_CHECK_MS);
    //  The agent measures on the first look and compares on the later ones. If the first
    //  signal set Python's flag and the call just never woke, the two make one
    //  KeyboardInterrupt.
    if (proc_signal_again_if_asleep(self->proc, SIGINT) != KB_OK) uv_timer_stop(timer);
}

int kernel_interrupt(kernel_t *self)
{
    //  A process still being started (or restarted) runs no code yet: nothing to interrupt.
    if (!self->shutting_down && !self->destroyed &&
        (self->restart_pending || (self->proc && !self->proc_started && !self->proc_exited)))
        return KB_OK;
    if (!s_proc_alive(self)) return KB_EDEAD;
    if (kspec_interrupt_mode(self->spec) == KSPEC_INTERRUPT_MESSAGE) {
        kmsg_t *msg = kernel_msg_new(self, "interrupt_request", NULL);
        return msg ? kernel_send(self, KCH_CONTROL, &msg) : KB_ENOMEM;
    }
    if (proc_signal(self->proc, SIGINT) != KB_OK) return KB_EDEAD;
    self->interrupt_landed = false;
    self->interrupt_checks = 0;
    uv_timer_start(&self->interrupt_timer, s_on_interrupt_timer, INTERRUPT_CHECK_MS,
                   INTERRUPT_CHECK_MS);
    return KB_OK;
}

int kernel_restart(kernel_t *self)
{
    if (self->shutting_down || self->destroyed) return KB_ECLOSED;
    if (self->restart_pending) return KB_OK;
    self->restart_count = 0;
    if (self->proc && !self->proc_exited) {
        self->restart_pending = true;
        self->state = KERNEL_RESTARTING;
        klog_info("kernel %s: restarting", self->label);
        s_request_exit(self, true);
    } else {
        s_respawn(self);
    }
    return KB_OK;
}

void kernel_shutdown(kernel_t *self)
{
    if (self->shutting_down || self->destroyed) return;
    self->shutting_down = true;
    self->restart_pending = false;
    self->state = KERNEL_SHUTDOWN;
    if (self->proc && !self->proc_exited)
        s_request_exit(self, false);
    else
        uv_timer_start(&self->defer_timer, s_on_deferred_shutdown, 0, 0);
}

kmsg_t *kernel_msg_new(kernel_t *self, const char *msg_type, json_t *content)
{
    return kmsg_new(msg_type, self->session, content);
}

kmsg_t *kernel_msg_new_text(kernel_t *self, const char *msg_type, const char *content, size_t len)
{
    return kmsg_new_text(msg_type, self->session, content, len);
}

const char *kernel_id(const kernel_t *self)
{
    return self->id;
}

const char *kernel_name(const kernel_t *self)
{
    return kspec_name(self->spec);
}

const kspec_t *kernel_spec(const kernel_t *self)
{
    return self->spec;
}

const char *kernel_session(const kernel_t *self)
{
    return self->session;
}

kernel_state_t kernel_state(const kernel_t *self)
{
    return self->state;
}

const char *kernel_language(const kernel_t *self)
{
    return self->language;
}

json_t *kernel_info(const kernel_t *self)
{
    return self->info;
}

json_t *kernel_process_env(const kernel_t *self)
{
    return s_env_json(self, self->base_env, self->env);
}

json_t *kernel_process_env_at(const kernel_t *self, json_t *base_env, json_t *env)
{
    return s_env_json(self, base_env, env);
}

int kernel_replace_place(kernel_t *self, const char *cwd, json_t *base_env, json_t *env)
{
    char *new_cwd = NULL;
    if (cwd) {
        if (!self->isolated) {
            struct stat st;
            if (stat(cwd, &st) != 0 || !S_ISDIR(st.st_mode)) return KB_EINVAL;
        }
        new_cwd = self->isolated ? strdup(cwd) : realpath(cwd, NULL);
        if (!new_cwd) return self->isolated ? KB_ENOMEM : KB_EINVAL;
    }
    json_t *new_env = env ? json_deep_copy(env) : json_object();
    json_t *new_base = base_env ? json_deep_copy(base_env) : NULL;
    if (!new_env || (base_env && !new_base)) {
        free(new_cwd);
        json_decref(new_env);
        json_decref(new_base);
        return KB_ENOMEM;
    }
    free(self->cwd);
    self->cwd = new_cwd;
    json_decref(self->env);
    self->env = new_env;
    json_decref(self->base_env);
    self->base_env = new_base;
    return KB_OK;
}

bool kernel_isolated(const kernel_t *self)
{
    return self->isolated;
}

const char *kernel_user(const kernel_t *self)
{
    return self->user;
}

const char *kernel_cwd(const kernel_t *self)
{
    return self->cwd;
}

int kernel_start_error(const kernel_t *self)
{
    return self->start_err;
}

const char *kernel_exit_reason(const kernel_t *self)
{
    return self->exit_reason;
}

const char *kernel_endpoint(const kernel_t *self, kchan_type_t channel)
{
    return self->conn && !self->isolated ? connfile_endpoint(self->conn, channel) : NULL;
}

hmac_t *kernel_hmac(const kernel_t *self)
{
    return self->hmac;
}

const char *kernel_connection_file(const kernel_t *self)
{
    return self->conn ? connfile_path(self->conn) : NULL;
}

int kernel_pid(const kernel_t *self)
{
    return s_proc_alive(self) ? self->pid : 0;
}

sbx_t *kernel_sbx(const kernel_t *self)
{
    return self->sbx;
}

bool kernel_oom_killed(const kernel_t *self)
{
    return self->oom_killed;
}

bool kernel_process_was_ready(const kernel_t *self)
{
    return self->was_ready;
}

bool kernel_heartbeat_ok(const kernel_t *self)
{
    return !self->hb_lost;
}

bool kernel_heartbeat_expired(const kernel_t *self)
{
    return self->hb_expired;
}

int kernel_heartbeat_timeout_ms(const kernel_t *self)
{
    return self->hb_timeout_ms;
}

int kernel_generation(const kernel_t *self)
{
    return self->generation;
}
