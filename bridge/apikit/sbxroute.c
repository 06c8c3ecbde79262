/*  sbxroute - sandbox routing headers. */
#include "sbxroute.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool s_alias_of_default(const char *id)
{
    return strcmp(id, "default") == 0 || strcmp(id, "debug_sandbox_id") == 0 ||
           strcmp(id, "kbridge") == 0;
}

static bool s_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 32) return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9'))) return false;
    return true;
}

void sbxroute_parse(const hreq_t *req, sbxroute_t *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "default");
    const char *id = hreq_header(req, "e2b-sandbox-id");
    const char *port = hreq_header(req, "e2b-sandbox-port");
    if (!id && !port) return;
    out->kind = SBXROUTE_BAD;
    if (!id || !port) {
        out->why = "E2b-Sandbox-Id and E2b-Sandbox-Port go together";
        return;
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p < 1 || p > 65535) {
        out->why = "E2b-Sandbox-Port must be a port number";
        return;
    }
    out->port = (int) p;
    if (s_alias_of_default(id)) {
        snprintf(out->id, sizeof out->id, "default");
    } else if (s_id_ok(id)) {
        snprintf(out->id, sizeof out->id, "%s", id);
    } else {
        out->why = "E2b-Sandbox-Id must be a sandbox id ([a-z0-9], at most 32)";
        return;
    }
    out->kind = p == SBXROUTE_ENVD_PORT ? SBXROUTE_ENVD
                : p == SBXROUTE_CODE_PORT ? SBXROUTE_CODE
                                          : SBXROUTE_PORT;
}

sandbox_t *sbxroute_sandbox(const sbxroute_t *route, sandboxes_t *sandboxes)
{
    if (route->kind == SBXROUTE_BAD) return NULL;
    return sandboxes_find(sandboxes, route->id);
}

void sbxroute_reply_gone(hreq_t *req, const char *id, const sandbox_t *sb)
{
    const char *message = !sb                                    ? "The sandbox was not found"
                          : sandbox_state(sb) == SANDBOX_PAUSED ? "The sandbox is paused"
                                                                 : "The sandbox is not running yet";
    hreq_reply_json(req, 502, json_pack("{s:s, s:s, s:i}", "sandboxId", id, "message", message,
                                        "code", 502));
}

void sbxroute_reply_bad(hreq_t *req, const sbxroute_t *route)
{
    hreq_reply_json(req, 400, json_pack("{s:i, s:s}", "code", 400, "message",
                                        route->why ? route->why : "bad sandbox routing headers"));
}

sandbox_t *sbxroute_resolve(hreq_t *req, sandboxes_t *sandboxes, sbxroute_t *route)
{
    sbxroute_parse(req, route);
    if (route->kind == SBXROUTE_BAD) {
        sbxroute_reply_bad(req, route);
        return NULL;
    }
    sandbox_t *sb = sbxroute_sandbox(route, sandboxes);
    if (!sb || sandbox_state(sb) != SANDBOX_RUNNING || !sandbox_sbx(sb)) {
        sbxroute_reply_gone(req, route->id, sb);
        return NULL;
    }
    return sb;
}

bool sbxroute_token_eq(const char *mine, const char *given)
{
    if (!mine || !given || !*mine) return false;
    size_t n = strlen(mine);
    return strlen(given) == n && sodium_memcmp(mine, given, n) == 0;
}
