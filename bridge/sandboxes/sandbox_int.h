/*  sandbox_int - what the sandboxes table and one sandbox share; nobody else includes it. */
#ifndef SANDBOX_INT_H
#define SANDBOX_INT_H

#include "sandboxes.h"
#include "../../sandbox/template.h"

#include <uv.h>

#define SANDBOX_ID_MAX 32
#define SANDBOX_TOKEN_HEX 24  //  bytes of randomness in each token (48 hex digits)

struct _sandbox_t {
    sandboxes_t *table;  //  not to be used by threadpool completions: they may outlive it
    uv_loop_t *loop;
    klist_t link;  //  in the table, creation order
    char id[SANDBOX_ID_MAX + 1];
    bool is_default, restarted, internet;
    bool own_sbx;  //  not the host's, which the command owns
    bool pooled;   //  warm in the pool: in no list, no end, no settings saved
    sandbox_state_t state;
    sbx_t *sbx;
    char *template_name;
    const template_t *tmpl;  //  borrowed from the table; NULL: the host (isolation none)
    sbx_isolation_t isolation;
    json_t *metadata, *env;
    char *cwd;
    int64_t started_at, end_at;  //  wall clock, ms
    int64_t remaining_ms;        //  while paused
    uint64_t memory_bytes;
    uint32_t cpu_millis, pids;
    int slot;  //  uid range; -1: none (the host)
    char envd_token[2 * SANDBOX_TOKEN_HEX + 1];
    char traffic_token[2 * SANDBOX_TOKEN_HEX + 1];
    unsigned holds;
    uv_timer_t timer;  //  the end
    char *dir;         //  <state_dir>/sandboxes/<id>; NULL for the default sandbox
    bool resume_after_start;  //  restored paused: started on resume
    klist_t waiters;   //  sandbox_wait_t
    //  persistence: one write in flight, another asked for meanwhile
    bool saving, save_again, remove_after_save;
    //  start: the settings' first save (an fsync, ~4 ms) runs while the sbx starts; the
    //  sandbox runs once both are done, so a 201 always names a sandbox a restart finds
    bool first_save, sbx_up;
    int pending_work;  //  threadpool jobs holding this struct
    bool freed_pending;
};

//  The table's side, for sandbox.c.
uv_loop_t *sandboxes__loop(const sandboxes_t *self);
const sandboxes_config_t *sandboxes__config(const sandboxes_t *self);
//  A sandbox ended: unlink it, tell the observers, give its slot back.
void sandboxes__ended(sandboxes_t *self, sandbox_t *sb, const char *why);
//  A warm sandbox for the pool (its state starting; the pool waits for it), template
//  name / tmpl, the server's default limits. NULL with *err.
sandbox_t *sandboxes__make_pooled(sandboxes_t *self, const char *name, const template_t *tmpl,
                                  int *err);
//  A sandbox paused or resumed.
void sandboxes__state(sandboxes_t *self, sandbox_t *sb);

//  sandbox.c, for the table.
//  A sandbox in memory (state starting), from settings already checked. Caller (the
//  table) links it.
sandbox_t *sandbox__new(sandboxes_t *table, const char *id, bool is_default);
//  Start its sbx (after making its directory and saving its settings, unless restored).
void sandbox__start(sandbox_t *self, bool restored);
//  The default sandbox on the host's sbx (running at once).
void sandbox__adopt(sandbox_t *self, sbx_t *host);
//  Arm the end timer from end_at (running sandboxes).
void sandbox__arm(sandbox_t *self);
//  Its settings as saved, and back (restore: false if unusable).
json_t *sandbox__to_json(const sandbox_t *self);
bool sandbox__from_json(sandbox_t *self, json_t *saved);
//  Kill at once without removing its directory (kbridge stops). Frees it later.
void sandbox__stop(sandbox_t *self);
int64_t sandbox__wall_ms(void);
//  Save its settings again (in the background).
void sandbox__save(sandbox_t *self);
//  Start a warm kernel of kernel_name (NULL: the default kernelspec) in it, at its
//  defaults (registry_prestart).
kentry_t *sandbox__prestart_kernel(sandbox_t *self, const char *kernel_name, int *err);
//  Forget a sandbox that never started (nothing runs, its directory stays). Frees it later.
void sandbox__discard(sandbox_t *self);

#endif
