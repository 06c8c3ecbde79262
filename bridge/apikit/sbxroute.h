/*  sbxroute - which sandbox, and which of its services, a request is for: the decision
    E2B's edge proxy makes (e2b-selfhost.md 2.2), shared by every API that serves inside a
    sandbox (envd, the code interpreter, the port proxy).

    The E2B SDKs name the sandbox in E2b-Sandbox-Id and the service in E2b-Sandbox-Port:
    49983 is envd, 49999 the code interpreter, anything else a port of the sandbox.
    Without the headers a request is for the default sandbox, as before sandboxes had ids
    (the SDKs' debug mode). The debug-mode ids ("debug_sandbox_id", which the SDKs send in
    debug mode, and "kbridge", the id kbridge's own examples give) and "default" name the
    default sandbox too.
*/
#ifndef SBXROUTE_H
#define SBXROUTE_H

#include "../http/hreq.h"
#include "../sandboxes/sandboxes.h"

#include <stdbool.h>

#define SBXROUTE_ENVD_PORT 49983
#define SBXROUTE_CODE_PORT 49999

typedef enum {
    SBXROUTE_NONE = 0,  //  no sandbox headers: the default sandbox, service by path
    SBXROUTE_ENVD,      //  envd of the sandbox named
    SBXROUTE_CODE,      //  its code interpreter
    SBXROUTE_PORT,      //  another port of it
    SBXROUTE_BAD        //  the headers are there but malformed (why says how)
} sbxroute_kind_t;

typedef struct {
    sbxroute_kind_t kind;
    char id[64];         //  the sandbox id ("default" for the aliases and NONE)
    int port;
    const char *why;     //  SBXROUTE_BAD: static text
} sbxroute_t;

//  Read the routing headers of req.
void sbxroute_parse(const hreq_t *req, sbxroute_t *out);

//  The sandbox route names, if it exists and has not ended (NULL otherwise).
sandbox_t *sbxroute_sandbox(const sbxroute_t *route, sandboxes_t *sandboxes);

//  Answer for a sandbox that does not exist, or does not run (paused, starting): 502 with
//  {"sandboxId", "message", "code": 502}, as E2B's proxy does; the SDKs read it as "the
//  sandbox is gone" (isRunning() false, TimeoutError, SandboxNotFoundError on streams).
void sbxroute_reply_gone(hreq_t *req, const char *id, const sandbox_t *sb);

//  Malformed routing headers: 400 {"code": 400, "message"}.
void sbxroute_reply_bad(hreq_t *req, const sbxroute_t *route);

//  The running sandbox req is for (route filled): the one its headers name, or the
//  default sandbox without them. Otherwise the answer is sent (400 for bad headers, 502
//  for a sandbox that does not exist or does not run) and NULL returned.
sandbox_t *sbxroute_resolve(hreq_t *req, sandboxes_t *sandboxes, sbxroute_t *route);

//  Whether given is the token mine (constant time for equal lengths).
bool sbxroute_token_eq(const char *mine, const char *given);

#endif
