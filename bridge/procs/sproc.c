/*  sproc - one process of the table: its proc_t, its tail, its listeners.

    Lifetime: the table holds the process until it ends; each listener holds it until the
    listener is destroyed. Callbacks into listeners run with busy raised, so a listener
    destroyed meanwhile (its own or another's callback) is only marked, and unlinked and
    freed once the walk is over; the process itself goes when nothing holds it.
*/
#include "sproc_int.h"
#include "ptail.h"
#include "../apikit/envcheck.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern char **environ;

#define TAG_MAX 256

enum { SP_STARTING, SP_RUNNING, SP_ENDED };

struct _splisten_t {
    klist_t link;         //  in the process's listeners
    klist_t replay_link;  //  in the table's replay queue
    sproc_t *proc;
    splisten_events_t ev;
    void *arg;
    bool first;           //  the starter: gets on_start
    bool replay_pending;
    uint64_t since;
    bool congested;
    bool destroyed;
};

struct _sproc_t {
    procs_t *table;
    klist_t link;  //  in the table
    bool in_table;
    uv_loop_t *loop;
    sandbox_t *sandbox;  //  NULL once it ended
    proc_t *proc;
    int state;
    int pid;
    char **argv;
    json_t *env;
    char *cwd, *user, *tag;
    bool has_stdin, pty;
    uint16_t cols, rows;
    uint64_t lifetime_ms;
    uv_timer_t timer;
    bool timer_open, timed_out;
    ptail_t *tail;
    klist_t listeners;
    int nlisteners;  //  not destroyed
    int congested;
    bool paused;
    int busy, handles;
};

static void s_try_free(sproc_t *self);

// ---------------------------------------------------------------------------------------
//  Listeners

//  Unlink and free listeners destroyed during a walk, once no walk is running.
static void s_sweep(sproc_t *self)
{
    if (self->busy) return;
    klist_t *it, *tmp;
    klist_foreach_safe(it, tmp, &self->listeners)
    {
        splisten_t *l = klist_entry(it, splisten_t, link);
        if (!l->destroyed) continue;
        klist_remove(&l->link);
        free(l);
    }
}

static void s_update_flow(sproc_t *self)
{
    if (!self->proc || self->state == SP_ENDED) return;
    bool pause = self->congested > 0;
    if (pause == self->paused) return;
    self->paused = pause;
    if (pause) proc_pause_output(self->proc);
    else proc_resume_output(self->proc);
}

static splisten_t *s_listener_new(sproc_t *self, const splisten_events_t *ev, void *arg)
{
    splisten_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    klist_init(&l->link);
    klist_init(&l->replay_link);
    l->proc = self;
    if (ev) l->ev = *ev;
    l->arg = arg;
    klist_push_back(&self->listeners, &l->link);
    self->nlisteners++;
    return l;
}

splisten_t *sproc_attach(sproc_t *self, uint64_t since, const splisten_events_t *ev, void *arg)
{
    if (!self || self->state != SP_RUNNING) return NULL;
    splisten_t *l = s_listener_new(self, ev, arg);
    if (!l) return NULL;
    //  Nothing to replay: live from now.
    if (since < ptail_end(self->tail)) {
        l->replay_pending = true;
        l->since = since;
        procs__want_replay(self->table, l);
    }
    return l;
}

void splisten_destroy(splisten_t **self_p)
{
    if (!self_p || !*self_p) return;
    splisten_t *l = *self_p;
    *self_p = NULL;
    if (l->destroyed) return;
    l->destroyed = true;
    procs__unwant_replay(l);
    sproc_t *p = l->proc;
    if (l->congested) {
        l->congested = false;
        p->congested--;
        s_update_flow(p);
    }
    p->nlisteners--;
    s_sweep(p);
    s_try_free(p);
}

sproc_t *splisten_proc(const splisten_t *self)
{
    return self->proc;
}

void splisten_set_congested(splisten_t *self, bool congested)
{
    if (self->destroyed || self->congested == congested) return;
    self->congested = congested;
    self->proc->congested += congested ? 1 : -1;
    s_update_flow(self->proc);
}

klist_t *splisten__replay_link(splisten_t *l)
{
    return &l->replay_link;
}

splisten_t *splisten__from_replay_link(klist_t *link)
{
    return klist_entry(link, splisten_t, replay_link);
}

typedef struct {
    splisten_t *l;
} replay_ctx_t;

static bool s_replay_chunk(proc_stream_t stream, const char *data, size_t len, uint64_t offset,
                           void *arg)
{
    replay_ctx_t *ctx = arg;
    splisten_t *l = ctx->l;
    if (l->destroyed) return false;
    if (l->ev.on_output) l->ev.on_output(l, stream, data, len, offset, true, l->arg);
    return !l->destroyed;
}

void sproc__replay(splisten_t *l)
{
    if (!l->replay_pending || l->destroyed) return;
    l->replay_pending = false;
    procs__unwant_replay(l);
    sproc_t *p = l->proc;
    replay_ctx_t ctx = {l};
    p->busy++;
    ptail_each(p->tail, l->since, s_replay_chunk, &ctx);
    p->busy--;
    s_sweep(p);
    s_try_free(p);
}

// ---------------------------------------------------------------------------------------
//  Freeing

static void s_on_timer_closed(uv_handle_t *h)
{
    sproc_t *self = h->data;
    self->handles--;
    s_try_free(self);
}

static void s_close_timer(sproc_t *self)
{
    if (!self->timer_open) return;
    self->timer_open = false;
    uv_timer_stop(&self->timer);
    uv_close((uv_handle_t *) &self->timer, s_on_timer_closed);
}

static void s_free(sproc_t *self)
{
    if (self->argv)
        for (char **a = self->argv; *a; a++) free(*a);
    free(self->argv);
    json_decref(self->env);
    free(self->cwd);
    free(self->user);
    free(self->tag);
    ptail_destroy(&self->tail);
    free(self);
}

static void s_try_free(sproc_t *self)
{
    if (self->in_table || self->nlisteners || self->busy || self->handles || self->proc) return;
    //  Listeners marked destroyed but not yet swept (none when busy is 0).
    s_sweep(self);
    s_free(self);
}

//  It ended: no more events. Leaves the table; the proc goes (from inside its own
//  callback is fine: proc.h says so).
static void s_end(sproc_t *self)
{
    self->state = SP_ENDED;
    self->sandbox = NULL;
    s_close_timer(self);
    proc_destroy(&self->proc);
    if (self->in_table) {
        self->in_table = false;
        procs__ended(self->table, self);
    }
    klist_t *it;
    klist_foreach(it, &self->listeners)
    {
        splisten_t *l = klist_entry(it, splisten_t, link);
        procs__unwant_replay(l);
    }
}

// ---------------------------------------------------------------------------------------
//  Events from the process

//  After the last event nobody can be replayed anything: the tail's memory goes (its
//  offsets stay).
static void s_release_tail(sproc_t *self)
{
    long delta = ptail_set_limit(self->tail, 0);
    if (self->table) procs__tail_mem(self->table, self, delta);
}

static void s_deliver_exit(sproc_t *self, const sproc_exit_t *ex)
{
    self->busy++;
    klist_t *it;
    for (it = self->listeners.next; it != &self->listeners; it = it->next) {
        splisten_t *l = klist_entry(it, splisten_t, link);
        if (l->destroyed) continue;
        sproc__replay(l);
        if (!l->destroyed && l->ev.on_exit) l->ev.on_exit(l, ex, l->arg);
    }
    self->busy--;
    s_sweep(self);
    s_release_tail(self);
}

static void s_on_start(proc_t *proc, int err, const char *why, void *arg)
{
    (void) proc;
    sproc_t *self = arg;
    self->busy++;
    if (!err) {
        self->state = SP_RUNNING;
        self->pid = proc_pid(self->proc);
    } else {
        s_end(self);
    }
    klist_t *it;
    for (it = self->listeners.next; it != &self->listeners; it = it->next) {
        splisten_t *l = klist_entry(it, splisten_t, link);
        if (l->destroyed || !l->first) continue;
        if (l->ev.on_start) l->ev.on_start(l, err, why, l->arg);
    }
    self->busy--;
    s_sweep(self);
    s_try_free(self);
}

static void s_on_output(proc_t *proc, proc_stream_t stream, const char *data, size_t len, void *arg)
{
    (void) proc;
    sproc_t *self = arg;
    uint64_t offset = ptail_end(self->tail);
    long delta = ptail_append(self->tail, stream, data, len);
    procs__tail_mem(self->table, self, delta);
    self->busy++;
    klist_t *it;
    for (it = self->listeners.next; it != &self->listeners; it = it->next) {
        splisten_t *l = klist_entry(it, splisten_t, link);
        if (l->destroyed) continue;
        if (l->replay_pending) {
            //  The tail holds this output too: the replay brings it.
            sproc__replay(l);
            continue;
        }
        if (l->ev.on_output) l->ev.on_output(l, stream, data, len, offset, false, l->arg);
    }
    self->busy--;
    s_sweep(self);
}

//  Go's names for signals (syscall.Signal.String), which envd's status text uses:
//  glibc's descriptions with a lowercase first letter.
static void s_status(const proc_exit_t *px, char *out, size_t size)
{
    if (px->exited) {
        snprintf(out, size, "exit status %lld", (long long) px->code);
        return;
    }
    const char *d = sigdescr_np(px->signal);
    char name[64];
    if (d) snprintf(name, sizeof name, "%s", d);
    else snprintf(name, sizeof name, "signal %d", px->signal);
    name[0] = (char) tolower((unsigned char) name[0]);
    snprintf(out, size, "signal: %s", name);
}

static void s_on_exit(proc_t *proc, const proc_exit_t *px, void *arg)
{
    (void) proc;
    sproc_t *self = arg;
    char status[96], error[160];
    s_status(px, status, sizeof status);
    sproc_exit_t ex = {.pid = self->pid, .exited = px->exited, .code = px->exited ? (int) px->code : -1,
                       .signal = px->exited ? 0 : px->signal, .status = status,
                       .oom_killed = px->oom_killed};
    if (self->timed_out && !px->exited) {
        ex.timed_out = true;
        snprintf(error, sizeof error, "killed after its timeout of %llu ms",
                 (unsigned long long) self->lifetime_ms);
        ex.error = error;
    } else if (px->oom_killed) {
        snprintf(error, sizeof error, "killed by the sandbox's memory limit (out of memory)");
        ex.error = error;
    }
    self->busy++;
    s_end(self);
    s_deliver_exit(self, &ex);
    self->busy--;
    s_sweep(self);
    s_try_free(self);
}

static void s_on_lifetime(uv_timer_t *t)
{
    sproc_t *self = t->data;
    if (self->state != SP_RUNNING || !self->proc) return;
    self->timed_out = true;
    klog_info("process %d (%s) killed: its timeout of %llu ms ran out", self->pid, self->argv[0],
              (unsigned long long) self->lifetime_ms);
    proc_signal(self->proc, SIGKILL);
}

// ---------------------------------------------------------------------------------------
//  Creation

static char *s_resolve_cwd(const char *base, const char *cwd)
{
    if (!cwd || !*cwd) return strdup(base);
    if (cwd[0] == '/') return strdup(cwd);
    size_t n = strlen(base) + strlen(cwd) + 2;
    char *out = malloc(n);
    if (out) snprintf(out, n, "%s%s%s", base, base[strlen(base) - 1] == '/' ? "" : "/", cwd);
    return out;
}

//  The whole environment: the base, the sandbox's vars, the process's vars (last wins).
static char **s_environment(sandbox_t *sb, const char *user, json_t *env)
{
    json_t *all = sandbox_base_env(sb, user);
    if (!all) {
        //  The host: kbridge's own environment, then the sandbox's vars.
        all = json_object();
        for (char **e = environ; all && e && *e; e++) {
            const char *eq = strchr(*e, '=');
            if (!eq || eq == *e) continue;
            char name[256];
            size_t nl = (size_t) (eq - *e);
            if (nl >= sizeof name) continue;
            memcpy(name, *e, nl);
            name[nl] = '\0';
            json_t *v = json_string(eq + 1);
            if (v) json_object_set_new(all, name, v);
        }
        if (all) json_object_update(all, sandbox_env(sb));
    }
    if (!all) return NULL;
    if (env) json_object_update(all, env);
    size_t n = json_object_size(all), i = 0;
    char **out = calloc(n + 1, sizeof *out);
    const char *key;
    json_t *value;
    json_object_foreach(all, key, value)
    {
        if (!out) break;
        const char *v = json_string_value(value);
        size_t len = strlen(key) + strlen(v ? v : "") + 2;
        out[i] = malloc(len);
        if (!out[i]) break;
        snprintf(out[i++], len, "%s=%s", key, v ? v : "");
    }
    json_decref(all);
    if (out && i < n) {
        for (size_t k = 0; k < i; k++) free(out[k]);
        free(out);
        return NULL;
    }
    return out;
}

static void s_free_strv(char **v)
{
    if (!v) return;
    for (char **a = v; *a; a++) free(*a);
    free(v);
}

sproc_t *sproc__new(procs_t *table, uv_loop_t *loop, sandbox_t *sb, const sproc_opts_t *opts,
                    size_t tail_bytes, const splisten_events_t *ev, void *arg,
                    splisten_t **first, int *err, char *why, size_t size)
{
    *first = NULL;
    *err = KB_EINVAL;
    if (!opts->argv || !opts->argv[0] || !opts->argv[0][0]) {
        snprintf(why, size, "no command: argv[0] is empty");
        return NULL;
    }
    const char *user = opts->user ? opts->user : "root";
    if (strcmp(user, "root") != 0 && strcmp(user, "user") != 0) {
        snprintf(why, size, "user must be 'root' or 'user', not '%.64s'", user);
        return NULL;
    }
    const char *bad;
    if (envcheck(opts->env, &bad, why, size) != ENVCHECK_OK) return NULL;
    if (opts->tag && (!*opts->tag || strlen(opts->tag) >= TAG_MAX)) {
        snprintf(why, size, "a tag must be 1 to %d bytes", TAG_MAX - 1);
        return NULL;
    }
    if (opts->cwd && strlen(opts->cwd) >= 4096) {
        *err = KB_EINVAL;
        snprintf(why, size, "cwd is longer than PATH_MAX");
        return NULL;
    }
    sbx_t *sbx = sandbox_sbx(sb);
    if (!sbx) {
        *err = sandbox_state(sb) == SANDBOX_ENDED ? KB_ECLOSED : KB_EAGAIN;
        snprintf(why, size, "sandbox %s is %s", sandbox_id(sb), sandbox_state_name(sb));
        return NULL;
    }
    sproc_t *self = calloc(1, sizeof *self);
    size_t argc = 0;
    while (opts->argv[argc]) argc++;
    if (self) self->argv = calloc(argc + 1, sizeof *self->argv);
    char **envv = NULL;
    if (!self || !self->argv) goto nomem;
    for (size_t i = 0; i < argc; i++)
        if (!(self->argv[i] = strdup(opts->argv[i]))) goto nomem;
    self->table = table;
    self->loop = loop;
    self->sandbox = sb;
    klist_init(&self->link);
    klist_init(&self->listeners);
    self->env = opts->env ? json_deep_copy(opts->env) : json_object();
    self->cwd = s_resolve_cwd(sandbox_cwd(sb), opts->cwd);
    self->user = strdup(user);
    self->tag = opts->tag ? strdup(opts->tag) : NULL;
    self->tail = ptail_new(tail_bytes);
    envv = s_environment(sb, user, opts->env);
    if (!self->env || !self->cwd || !self->user || (opts->tag && !self->tag) || !self->tail || !envv)
        goto nomem;
    self->pty = opts->pty;
    self->has_stdin = opts->stdin_pipe || opts->pty;
    self->cols = opts->cols ? opts->cols : 80;
    self->rows = opts->rows ? opts->rows : 24;
    self->lifetime_ms = opts->lifetime_ms;
    self->state = SP_STARTING;

    splisten_t *l = s_listener_new(self, ev, arg);
    if (!l) goto nomem;
    l->first = true;
    proc_opts_t po = {
        .argv = (const char *const *) self->argv,
        .env = (const char *const *) envv,
        .cwd = self->cwd,
        .user = user,  //  the host's agent runs everything as kbridge's user
        .stdin_pipe = self->has_stdin,
        .pty = self->pty,
        .cols = self->cols,
        .rows = self->rows,
        .label = self->argv[0],
    };
    proc_events_t pev = {s_on_start, s_on_output, s_on_exit};
    self->proc = proc_spawn(sbx, &po, &pev, self, err);
    s_free_strv(envv);
    envv = NULL;
    if (!self->proc) {
        snprintf(why, size, "%s", *err == KB_ECLOSED ? "the sandbox is gone"
                                  : *err == KB_EINVAL ? "the process cannot be started with these options "
                                                        "(argv, env or cwd too large, or cwd not absolute)"
                                                      : kb_strerror(*err));
        klist_remove(&l->link);
        free(l);
        s_free(self);
        return NULL;
    }
    if (self->lifetime_ms) {
        uv_timer_init(loop, &self->timer);
        self->timer.data = self;
        self->timer_open = true;
        self->handles++;
        //  Counted from the request: a process slow to start uses its time too.
        uv_timer_start(&self->timer, s_on_lifetime, self->lifetime_ms, 0);
    }
    self->in_table = true;
    *first = l;
    *err = 0;
    return self;
nomem:
    s_free_strv(envv);
    if (self) {
        while (!klist_empty(&self->listeners)) {
            splisten_t *x = klist_entry(klist_first(&self->listeners), splisten_t, link);
            klist_remove(&x->link);
            free(x);
        }
        s_free(self);
    }
    *err = KB_ENOMEM;
    snprintf(why, size, "out of memory");
    return NULL;
}

klist_t *sproc__link(sproc_t *self)
{
    return &self->link;
}

sproc_t *sproc__from_link(klist_t *link)
{
    return klist_entry(link, sproc_t, link);
}

const sandbox_t *sproc__sandbox(const sproc_t *self)
{
    return self->sandbox;
}

void sproc__sandbox_ended(sproc_t *self, const char *why)
{
    if (self->state == SP_ENDED) return;
    bool starting = self->state == SP_STARTING;
    char error[256];
    snprintf(error, sizeof error, "the sandbox ended: %s", why && *why ? why : "killed");
    self->busy++;
    s_end(self);
    if (starting) {
        klist_t *it;
        for (it = self->listeners.next; it != &self->listeners; it = it->next) {
            splisten_t *l = klist_entry(it, splisten_t, link);
            if (!l->destroyed && l->first && l->ev.on_start)
                l->ev.on_start(l, KB_ECLOSED, error, l->arg);
        }
    } else {
        sproc_exit_t ex = {.pid = self->pid, .exited = false, .code = -1, .signal = SIGKILL,
                           .status = "signal: killed", .error = error, .sandbox_ended = true};
        s_deliver_exit(self, &ex);
    }
    self->busy--;
    s_sweep(self);
    s_try_free(self);
}

void sproc__abandon(sproc_t *self)
{
    self->state = SP_ENDED;
    self->sandbox = NULL;
    s_close_timer(self);
    proc_destroy(&self->proc);
    self->in_table = false;
    self->table = NULL;  //  it is going: no more accounting
    klist_remove(&self->link);
    klist_t *it;
    klist_foreach(it, &self->listeners)
    {
        splisten_t *l = klist_entry(it, splisten_t, link);
        procs__unwant_replay(l);
    }
    s_try_free(self);
}

long sproc__shrink_tail(sproc_t *self, size_t limit)
{
    if (self->state == SP_ENDED || ptail_limit(self->tail) <= limit) return 0;
    return ptail_set_limit(self->tail, limit);
}

// ---------------------------------------------------------------------------------------
//  Control

int sproc_write(sproc_t *self, const void *data, size_t len)
{
    if (!self->has_stdin) return KB_EINVAL;
    if (self->state == SP_STARTING) return KB_EAGAIN;
    if (self->state == SP_ENDED || !self->proc) return KB_EDEAD;
    return proc_write(self->proc, data, len);
}

int sproc_close_stdin(sproc_t *self)
{
    if (!self->has_stdin || self->pty) return KB_EINVAL;
    if (self->state == SP_STARTING) return KB_EAGAIN;
    if (self->state == SP_ENDED || !self->proc) return KB_EDEAD;
    return proc_close_stdin(self->proc);
}

int sproc_signal(sproc_t *self, int signo)
{
    if (signo < 1 || signo > 64) return KB_EINVAL;
    if (self->state != SP_RUNNING || !self->proc) return KB_EDEAD;
    return proc_signal(self->proc, signo);
}

int sproc_resize(sproc_t *self, uint16_t cols, uint16_t rows)
{
    if (!self->pty || !cols || !rows) return KB_EINVAL;
    if (self->state != SP_RUNNING || !self->proc) return KB_EDEAD;
    int rc = proc_resize(self->proc, cols, rows);
    if (rc == 0) {
        self->cols = cols;
        self->rows = rows;
    }
    return rc;
}

// ---------------------------------------------------------------------------------------
//  Accessors

int sproc_pid(const sproc_t *self)
{
    return self->pid;
}

bool sproc_running(const sproc_t *self)
{
    return self->state == SP_RUNNING;
}

const char *sproc_tag(const sproc_t *self)
{
    return self->tag;
}

const char *const *sproc_argv(const sproc_t *self)
{
    return (const char *const *) self->argv;
}

json_t *sproc_env(const sproc_t *self)
{
    return self->env;
}

const char *sproc_cwd(const sproc_t *self)
{
    return self->cwd;
}

const char *sproc_user(const sproc_t *self)
{
    return self->user;
}

bool sproc_has_stdin(const sproc_t *self)
{
    return self->has_stdin;
}

bool sproc_pty(const sproc_t *self, uint16_t *cols, uint16_t *rows)
{
    if (cols) *cols = self->cols;
    if (rows) *rows = self->rows;
    return self->pty;
}

uint64_t sproc_offset(const sproc_t *self)
{
    return ptail_end(self->tail);
}

json_t *sproc_info(const sproc_t *self)
{
    json_t *args = json_array();
    for (size_t i = 1; self->argv[i]; i++) json_array_append_new(args, json_string(self->argv[i]));
    json_t *pty = self->pty ? json_pack("{s:i, s:i}", "cols", self->cols, "rows", self->rows) : json_null();
    return json_pack("{s:i, s:s?, s:s, s:o, s:O, s:s, s:s, s:b, s:o}", "pid", self->pid, "tag",
                     self->tag, "cmd", self->argv[0], "args", args, "env", self->env, "cwd",
                     self->cwd, "user", self->user, "stdin", self->has_stdin, "pty", pty);
}

int sproc_signo(const char *name)
{
    if (!name || !*name) return 0;
    if (isdigit((unsigned char) name[0])) {
        char *end;
        long v = strtol(name, &end, 10);
        return *end || v < 1 || v > 64 ? 0 : (int) v;
    }
    if (strncasecmp(name, "SIG", 3) == 0) name += 3;
    for (int s = 1; s < 65; s++) {
        const char *abbrev = sigabbrev_np(s);
        if (abbrev && strcasecmp(abbrev, name) == 0) return s;
    }
    return 0;
}
