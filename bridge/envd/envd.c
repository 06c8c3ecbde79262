/*  envd - E2B's envd inside sandboxes: routing, tokens, the shared answers and paths;
    the routes themselves are in files.c (REST /files), connect.c (filesystem RPC) and
    process.c (process RPC).
*/
#include "envd_int.h"
#include "../buf/wbuf.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"
#include "../../base/klist.h"
#include "../../base/klog.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------
//  Answers

void envd__error(hreq_t *req, int status, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    hreq_reply_json(req, status, json_pack("{s:i, s:s}", "code", status, "message", msg));
}

//  The status upstream envd answers a file error with (e2b-selfhost.md 4.1).
int envd__status_of(int err)
{
    switch (err) {
    case KB_ENOTFOUND: return 404;
    case KB_EISDIR:
    case KB_ENOTDIR:
    case KB_EINVAL:
    case KB_ETOOBIG:
    case KB_EEXIST: return 400;
    case KB_EACCES: return 403;
    case KB_ENOSPC: return 507;
    case KB_ECLOSED: return 502;
    default: return 500;
    }
}

// ---------------------------------------------------------------------------------------
//  Users and paths

//  The user a request acts as (?username=; "user" by default), into user. Returns 0, or
//  replies 400 and returns KB_EINVAL. A host sandbox has one user, kbridge's: NULL.
int envd__user(hreq_t *req, sandbox_t *sb, char *user, size_t size, const char **out)
{
    char given[64] = "";
    int rc = hreq_query(req, "username", given, sizeof given);
    if (rc != KB_OK && rc != KB_ENOTFOUND) {
        envd__error(req, 400, "bad username");
        return KB_EINVAL;
    }
    if (!sandbox_kernel_user(sb)) {
        *out = NULL;
        return KB_OK;
    }
    if (!*given) snprintf(given, sizeof given, "user");
    if (strcmp(given, "root") != 0 && strcmp(given, "user") != 0) {
        envd__error(req, 400, "user '%s' does not exist", given);
        return KB_EINVAL;
    }
    snprintf(user, size, "%s", given);
    *out = user;
    return KB_OK;
}

//  path made absolute (relative: from home) and lexically clean (no ".", "..", "//");
//  ".." at the root stays there. Returns 0 or KB_ETOOBIG / KB_EINVAL (empty).
int envd__clean_path(const char *home, const char *path, char *out, size_t size)
{
    if (!path || !*path) return KB_EINVAL;
    char joined[PATH_MAX * 2];
    int n = path[0] == '/' ? snprintf(joined, sizeof joined, "%s", path)
                           : snprintf(joined, sizeof joined, "%s/%s", home ? home : "/", path);
    if (n < 0 || (size_t) n >= sizeof joined) return KB_ETOOBIG;
    size_t o = 0;
    const char *p = joined;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *seg = p;
        while (*p && *p != '/') p++;
        size_t len = (size_t) (p - seg);
        if (len == 1 && seg[0] == '.') continue;
        if (len == 2 && seg[0] == '.' && seg[1] == '.') {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--;
            continue;
        }
        if (o + 1 + len + 1 > size || o + 1 + len >= PATH_MAX) return KB_ETOOBIG;
        out[o++] = '/';
        memcpy(out + o, seg, len);
        o += len;
    }
    if (o == 0) out[o++] = '/';
    out[o] = '\0';
    return KB_OK;
}

const char *envd__home(sandbox_t *sb, const char *user)
{
    const char *home = sandbox_sbx(sb) ? sbx_home(sandbox_sbx(sb), user) : NULL;
    return home ? home : sandbox_cwd(sb);
}

// ---------------------------------------------------------------------------------------
//  Signed URLs: uploadUrl()/downloadUrl() carry no sandbox id, only a signature made with
//  the sandbox's envd token (e2b-selfhost.md 4.5)

//  Whether req is /files with a signature (and no routing headers).
static bool s_is_signed(hreq_t *req)
{
    char sig[8];
    int rc = hreq_query(req, "signature", sig, sizeof sig);
    return strcmp(hreq_path(req), "/files") == 0 && (rc == KB_OK || rc == KB_ETOOBIG);
}

//  "v1_" + base64(SHA-256("<path>:<op>:<user>:<token>[:<expiration>]")), unpadded.
static void s_signature(const char *path, const char *op, const char *user, const char *token,
                        const char *expiration, char *out, size_t size)
{
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    const char *parts[] = {path, ":", op, ":", user, ":", token};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        crypto_hash_sha256_update(&st, (const unsigned char *) parts[i], strlen(parts[i]));
    if (expiration && *expiration) {
        crypto_hash_sha256_update(&st, (const unsigned char *) ":", 1);
        crypto_hash_sha256_update(&st, (const unsigned char *) expiration, strlen(expiration));
    }
    unsigned char hash[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, hash);
    char b64[64];
    sodium_bin2base64(b64, sizeof b64, hash, sizeof hash, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    snprintf(out, size, "v1_%s", b64);
}

//  The running sandbox whose token made the request's signature, or NULL (replied).
static sandbox_t *s_signed_sandbox(envd_t *self, hreq_t *req)
{
    char sig[128], path[PATH_MAX] = "", user[64] = "", exp[32] = "";
    if (hreq_query(req, "signature", sig, sizeof sig) != KB_OK) {
        envd__error(req, 401, "invalid signature");
        return NULL;
    }
    int rc = hreq_query(req, "path", path, sizeof path);
    if (rc != KB_OK && rc != KB_ENOTFOUND) {
        envd__error(req, 400, "bad path");
        return NULL;
    }
    hreq_query(req, "username", user, sizeof user);
    if (hreq_query(req, "signature_expiration", exp, sizeof exp) == KB_OK && *exp) {
        char *end;
        long long when = strtoll(exp, &end, 10);
        if (*end || when < sandbox_now_ms() / 1000) {
            envd__error(req, 401, "the signature has expired");
            return NULL;
        }
    }
    const char *op = hreq_method(req) == HM_POST ? "write" : "read";
    sandbox_t **all;
    size_t n = sandboxes_list(self->sandboxes, &all);
    sandbox_t *found = NULL;
    for (size_t i = 0; i < n; i++) {
        char want[128];
        s_signature(path, op, user, sandbox_envd_token(all[i]), exp, want, sizeof want);
        //  every sandbox compared, whichever matches: no early exit to time
        if (sbxroute_token_eq(want, sig) && !found) found = all[i];
    }
    free(all);
    if (!found) {
        envd__error(req, 401, "invalid signature");
        return NULL;
    }
    if (sandbox_state(found) != SANDBOX_RUNNING || !sandbox_sbx(found)) {
        sbxroute_reply_gone(req, sandbox_id(found), found);
        return NULL;
    }
    return found;
}

// ---------------------------------------------------------------------------------------
//  Routing

static bool s_claims(void *api, hreq_t *req)
{
    (void) api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    //  Bad routing headers are answered here, for every service.
    return route.kind == SBXROUTE_ENVD || route.kind == SBXROUTE_BAD ||
           (route.kind == SBXROUTE_NONE && s_is_signed(req));
}

static bool s_is_public(void *api, hreq_t *req)
{
    (void) api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    //  A signed URL is its own credential (checked when served).
    return route.kind == SBXROUTE_BAD || strcmp(hreq_path(req), "/health") == 0 ||
           (route.kind == SBXROUTE_NONE && s_is_signed(req));
}

static bool s_authorize(void *api, hreq_t *req, const char *token)
{
    envd_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    sandbox_t *sb = sbxroute_sandbox(&route, self->sandboxes);
    return sb && !sandbox_is_default(sb) && sbxroute_token_eq(sandbox_envd_token(sb), token);
}

static void s_refuse(void *api, hreq_t *req)
{
    envd_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    sandbox_t *sb = sbxroute_sandbox(&route, self->sandboxes);
    //  A sandbox that is gone is gone whatever the token: the SDKs read 502 so.
    if (!sb || sandbox_state(sb) != SANDBOX_RUNNING) sbxroute_reply_gone(req, route.id, sb);
    else envd__error(req, 401, "invalid access token (X-Access-Token: the sandbox's envdAccessToken)");
}

static bool s_streams_body(void *api, hreq_t *req)
{
    (void) api;
    return strcmp(hreq_path(req), "/files") == 0 && hreq_method(req) == HM_POST;
}

static void s_http(void *api, hreq_t *req)
{
    envd_t *self = api;
    sbxroute_t route;
    sbxroute_parse(req, &route);
    sandbox_t *sb = route.kind == SBXROUTE_NONE ? s_signed_sandbox(self, req)
                                                : sbxroute_resolve(req, self->sandboxes, &route);
    if (!sb) return;
    if (route.kind == SBXROUTE_NONE) snprintf(route.id, sizeof route.id, "%s", sandbox_id(sb));
    const char *path = hreq_path(req);
    hmethod_t m = hreq_method(req);
    if (route.kind == SBXROUTE_NONE && strcmp(path, "/files") != 0) {
        envd__error(req, 404, "not found");
    } else if (strcmp(path, "/health") == 0) {
        hreq_reply(req, 204, NULL, NULL, 0);
    } else if (strcmp(path, "/envs") == 0 && m == HM_GET) {
        hreq_reply_json(req, 200, json_deep_copy(sandbox_env(sb)));
    } else if (strcmp(path, "/files") == 0 && m == HM_GET) {
        envd__download(self, req, sb);
    } else if (strcmp(path, "/files") == 0 && m == HM_POST) {
        envd__upload(self, req, sb, &route);
    } else if (strncmp(path, "/filesystem.Filesystem/", 23) == 0) {
        envd__filesystem(self, req, sb, path + 23);
    } else if (strncmp(path, "/process.Process/", 17) == 0) {
        envd__process(self, req, sb, path + 17);
    } else if (strcmp(path, "/files") == 0 || strcmp(path, "/envs") == 0) {
        envd__error(req, 405, "method not allowed");
    } else {
        envd__error(req, 404, "no such envd route: %s", path);
    }
}

static void *s_create(const api_ctx_t *ctx)
{
    envd_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->loop = ctx->loop;
    self->sandboxes = ctx->sandboxes;
    klist_init(&self->transfers);
    klist_init(&self->procs);
    klist_init(&self->watchers);
    sandboxes_observer_t obs = {envd__on_sandbox_end, NULL};
    if (sandboxes_observe(self->sandboxes, &obs, self) != KB_OK) {
        free(self);
        return NULL;
    }
    self->observing = true;
    return self;
}

static void s_destroy(void **api_p)
{
    if (!api_p || !*api_p) return;
    envd_t *self = *api_p;
    *api_p = NULL;
    //  Transfers still running end with their connections; what is in the threadpool
    //  finishes first. Here they are only unlinked from the table.
    while (!klist_empty(&self->transfers)) klist_remove(klist_first(&self->transfers));
    envd__procs_destroy(self);
    envd__watchers_destroy(self);
    if (self->observing) sandboxes_unobserve(self->sandboxes, self);
    free(self);
}

const api_desc_t envd_api = {
    .name = "envd",
    .create = s_create,
    .destroy = s_destroy,
    .claims = s_claims,
    .is_public = s_is_public,
    .authorize = s_authorize,
    .refuse = s_refuse,
    .streams_body = s_streams_body,
    .http = s_http,
};
