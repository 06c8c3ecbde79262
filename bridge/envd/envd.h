/*  envd - E2B's in-sandbox daemon (envd) as the E2B SDKs reach it: requests routed to a
    sandbox by E2b-Sandbox-Id with E2b-Sandbox-Port 49983 (bridge/apikit/sbxroute.h).

    REST, as e2b-selfhost.md 4 describes it:
    - GET /health: 204 while the sandbox runs (502 when it does not, as for every route);
    - GET /envs: the sandbox's env vars as an object;
    - GET /files?path=&username=: the file's bytes, streamed from the sandbox (never held
      whole in memory), gzip-encoded when the client accepts gzip;
    - POST /files[?path=&username=]: multipart/form-data (one or several "file" parts,
      each named by its full, escaped path in filename; ?path= names the first) or a raw
      body (application/octet-stream, ?path= required), Content-Length or chunked,
      streamed into the sandbox in constant memory with backpressure. Each file appears
      only complete (a cut-off upload leaves none); no space is 507. Answers a JSON array
      of {"name", "type": "file", "path"}, one per file.
    - signed uploadUrl()/downloadUrl() URLs (/files?...&signature=v1_...), which carry no
      sandbox id: the sandbox is the one whose envd token makes the signature.
    Connect RPC with the JSON codec, unary: filesystem.Filesystem Stat, MakeDir, Move,
    ListDir (depth) and Remove, acting as the user Authorization: Basic names; EntryInfo
    and Connect errors ({"code": "not_found", ...}) as upstream; and the stream WatchDir
    (start first, events, keepalives, an end-stream frame at Connect-Timeout-Ms or when
    the watch ends). process.Process: the streams Start (the
    stream's Connect-Timeout-Ms is the process's lifetime; a dropped stream leaves it
    running) and Connect, and the unary List, SendInput, CloseStdin, SendSignal and
    Update (PTY size); output is read only as fast as the slowest stream takes it.
    Paths are resolved inside the sandbox as the user (default "user"; relative ones from
    the user's home), so `..` and symlinks cannot leave it. Errors are
    {"code": <status>, "message"} as upstream envd sends them.

    Tokens: the sandbox's envdAccessToken (X-Access-Token) acts on that sandbox only; the
    kbridge token on any. /health needs none.
*/
#ifndef ENVD_H
#define ENVD_H

#include "../http/api.h"

//  The descriptor the server's table lists (bridge/apis.c).
extern const api_desc_t envd_api;

#endif
