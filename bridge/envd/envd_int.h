/*  envd_int - what the files of the envd API share (not part of any API): the state, the
    answers and path rules every route uses, the Connect codec's helpers, and each
    group of routes' entry points.
*/
#ifndef ENVD_INT_H
#define ENVD_INT_H

#include "envd.h"
#include "../apikit/sbxroute.h"
#include "../sandboxes/sandboxes.h"
#include "../../base/klist.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct _envd_t envd_t;

struct _envd_t {
    uv_loop_t *loop;
    sandboxes_t *sandboxes;
    klist_t transfers;  //  downloads and uploads under way (files.c)
    klist_t procs;      //  processes started with process.Process/Start (process.c)
    klist_t watchers;   //  polling watchers (watchers.c)
    size_t nwatchers;
    bool observing;
};

// ---------------------------------------------------------------------------------------
//  envd.c: answers, users, paths

//  {"code": status, "message"} as upstream envd's REST errors.
void envd__error(hreq_t *req, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
//  The REST status of a file error (KB_ENOTFOUND 404, KB_ENOSPC 507...).
int envd__status_of(int err);
//  The user a REST request acts as (?username=; "user" by default; NULL in a host
//  sandbox), in user. Returns 0, or replies 400 and returns KB_EINVAL.
int envd__user(hreq_t *req, sandbox_t *sb, char *user, size_t size, const char **out);
//  path made absolute (relative: from home) and lexically clean; ".." at the root stays
//  there. Returns 0, KB_ETOOBIG or KB_EINVAL (empty). Fuzzed: tests/fuzz/fuzz_envd.c.
int envd__clean_path(const char *home, const char *path, char *out, size_t size);
//  The home of user in sb (relative paths start there).
const char *envd__home(sandbox_t *sb, const char *user);

// ---------------------------------------------------------------------------------------
//  connect.c: the Connect protocol, JSON codec

//  A unary error {"code": "<name>", "message"} with the HTTP status Connect gives it.
void envd__rpc_error(hreq_t *req, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
//  The Connect code of a KB_ error.
const char *envd__rpc_code(int err);
//  The user of an RPC (Authorization: Basic base64("<user>:"), default "user"). Returns
//  0, or replies and returns KB_EINVAL.
int envd__rpc_user(hreq_t *req, sandbox_t *sb, char *user, size_t size, const char **out);
//  Write one envelope (flags, big-endian length, msg as JSON; msg is stolen).
int envd__envelope(hreq_t *req, uint8_t flags, json_t *msg);
//  The one message of a streaming request's body (00 <len:u32be> <JSON object>, nothing
//  after it), or NULL with why. Caller owns return value. Fuzzed: tests/fuzz/fuzz_envd.c.
json_t *envd__stream_message(const char *body, size_t len, const char **why);
json_t *envd__stream_request(hreq_t *req, const char **why);
//  200, then an end-stream error frame (a stream's status would lose the message).
void envd__stream_error(hreq_t *req, const char *code, const char *message);
//  /filesystem.Filesystem/<method>.
void envd__filesystem(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method);

// ---------------------------------------------------------------------------------------
//  files.c, process.c

void envd__download(envd_t *self, hreq_t *req, sandbox_t *sb);
void envd__upload(envd_t *self, hreq_t *req, sandbox_t *sb, const sbxroute_t *route);
//  /process.Process/<method>.
void envd__process(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method);
//  A sandbox ended: its processes' streams end, they are forgotten.
void envd__on_sandbox_end(sandbox_t *sb, const char *why, void *arg);
//  Kill and forget every process (at the API's destroy).
void envd__procs_destroy(envd_t *self);

// ---------------------------------------------------------------------------------------
//  watchers.c: CreateWatcher, GetWatcherEvents, RemoveWatcher

bool envd__is_watcher_method(const char *method);
//  A parsed unary call (body borrowed) for user at path (CreateWatcher's, resolved).
void envd__watchers(envd_t *self, hreq_t *req, sandbox_t *sb, const char *method, json_t *body,
                    const char *user, const char *path);
void envd__watchers_sandbox_end(envd_t *self, sandbox_t *sb);
void envd__watchers_destroy(envd_t *self);

#endif
