"""kbridge as a benchmark target: launcher + native-API client. Not a script.

  * start_kbridge()  -- runs `kbridge serve --port 0 --token <random>` with its own
                        runtime dir under /tmp and reads the port from the banner
                        (first stdout line); returns a wsclient.ServerHandle.
  * KBridgeClient    -- asyncio + websockets client of the native API at
                        /ws?token=... (subprotocol kbridge.v1, JSON text frames;
                        contract: schema/native.schema.json). execute() returns a
                        benchlib.ExecResult filled by the same rules as the ZeroMQ
                        and Jupyter Server clients, so the payload checks are the same.

Event -> Jupyter message mapping used for the payload accounting (benchlib.payload_bytes):
  number_of_executions -> execute_input (counted as a message, no payload)
  stdout / stderr      -> stream {name, text}
  result               -> execute_result (is_main_result) / display_data / update_display_data,
                          data = the result's MIME fields (text, png, ... and `extra`)
  end_of_execution     -> both execute_reply and status: idle. kbridge sends it once it
                          has both, so t_idle = t_reply = its arrival (the ZeroMQ and
                          Jupyter Server clients stop at status: idle, which may come
                          slightly before the reply).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time

import websockets

import benchlib as B
from wsclient import ServerHandle

perf = time.perf_counter
SUBPROTOCOL = "kbridge.v1"
# result fields that carry a MIME type (execution.schema.json), in kbridge's naming
RESULT_FIELDS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json",
                 "javascript", "data", "chart")


class KBridgeHandle(ServerHandle):
    def __init__(self, *a, banner="", **kw):
        super().__init__(*a, **kw)
        self.banner = banner



def start_kbridge(binary: str, extra_args=(), log_dir=None) -> KBridgeHandle:
    """log_dir: where kbridge's stderr log goes (default: its runtime dir, removed at stop)."""
    token = secrets.token_hex(24)
    wd = tempfile.mkdtemp(prefix="bench-kbridge-", dir="/tmp")
    os.chmod(wd, 0o700)
    env = dict(os.environ)
    env.update(XDG_RUNTIME_DIR=wd, PATH="/usr/bin:/bin")   # kernels: Debian python only
    env.pop("KBRIDGE_TOKEN", None)
    args = [binary, "serve", "--port", "0", "--token", token] + list(extra_args)
    # A private state dir: with the shared default (/var/lib/kbridge) another kbridge
    # starting on the machine takes this one's sandboxes for expired ones and removes them
    # (the kernels die with "the agent closed its socket").
    if "--state-dir" not in args:
        args += ["--state-dir", os.path.join(wd, "state")]
    log_path = os.path.join(log_dir or wd, "kbridge-%s.log" % os.path.basename(wd))
    logf = open(log_path, "w")
    t0 = perf()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=logf, env=env, cwd=wd, text=True,
                            start_new_session=True)
    banner = proc.stdout.readline()
    if "listening on http://" not in banner:
        proc.kill()
        raise RuntimeError("kbridge did not start: %r (log: %s)" % (banner, log_path))
    startup = perf() - t0
    # the rest of stdout is not needed; keep the pipe drained so kbridge never blocks
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    hostport = banner.split("http://", 1)[1].split("/", 1)[0]
    h = KBridgeHandle("kbridge", "http://" + hostport, token, pid=proc.pid, proc=proc, workdir=wd,
                      log_path=log_path, startup_s=startup, banner=banner.strip(),
                      settings={"version": banner.split()[1] if banner.startswith("kbridge ") else "?",
                                "binary": binary, "extra_args": list(extra_args)})
    return h


class KBridgeError(RuntimeError):
    pass


class KBridgeClient:
    """One WebSocket connection (= one kbridge session)."""

    def __init__(self, ws, hello):
        self.ws = ws
        self.session_id = hello.get("session_id")
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, server: ServerHandle, session_id=None):
        url = server.base_url.replace("http://", "ws://", 1) + "/ws?token=" + server.token
        if session_id:
            url += "&session_id=" + session_id
        ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL], compression=None, max_size=None,
                                      max_queue=64, ping_interval=None, open_timeout=60, close_timeout=5)
        hello = json.loads(await ws.recv())
        if hello.get("type") != "session":
            raise KBridgeError("expected a session message, got %r" % hello)
        return cls(ws, hello)

    async def call(self, req: dict, timeout=120.0) -> dict:
        """Send a request, return the reply with its id (request_error raises)."""
        rid = next(self._ids)
        req = dict(req, id=rid)
        await self.ws.send(json.dumps(req))
        async with asyncio.timeout(timeout):
            while True:
                m = json.loads(await self.ws.recv())
                if m.get("id") != rid:
                    continue
                if m.get("type") == "request_error":
                    raise KBridgeError("%s: %s" % (m.get("code"), m.get("message")))
                return m

    async def start_kernel(self, timeout=120.0) -> str:
        m = await self.call({"op": "start_kernel"}, timeout)
        return m["kernel"]["kernel_id"]

    async def shutdown_kernel(self, kernel_id, timeout=60.0):
        await self.call({"op": "shutdown_kernel", "kernel_id": kernel_id}, timeout)

    async def execute(self, code, kernel_id=None, timeout=300.0) -> B.ExecResult:
        r = B.ExecResult()
        rid = next(self._ids)
        req = {"op": "execute", "id": rid, "code": code}
        if kernel_id:
            req["kernel_id"] = kernel_id
        loads = json.loads
        recv = self.ws.recv
        r.t_send = perf()
        await self.ws.send(json.dumps(req))
        async with asyncio.timeout(timeout):          # one timer, not one per message
            while True:
                frame = await recv()
                m = loads(frame)
                if m.get("id") != rid:
                    continue
                r.wire += len(frame)
                t = m.get("type")
                if t == "stdout" or t == "stderr":
                    r.account_iopub("stream", {"name": t, "text": m.get("text", "")})
                elif t == "result":
                    data = {k: m[k] for k in RESULT_FIELDS if k in m}
                    data.update(m.get("extra") or {})
                    if m.get("update"):
                        mt = "update_display_data"
                    else:
                        mt = "execute_result" if m.get("is_main_result") else "display_data"
                    # kbridge names text/plain "text"; account_iopub reads text/plain
                    if mt == "execute_result" and "text" in data:
                        data["text/plain"] = data.pop("text")
                    r.account_iopub(mt, {"data": data})
                elif t == "number_of_executions":
                    r.account_iopub("execute_input", {})
                elif t == "error":
                    r.account_iopub("error", {})
                elif t == "end_of_execution":
                    r.t_idle = r.t_reply = perf()
                    ex = m.get("execution") or {}
                    r.status = "error" if ex.get("error") else "ok"
                    if ex.get("error") and not r.stderr:
                        r.stderr = "%s: %s" % (ex["error"].get("name"), ex["error"].get("value"))
                    r.info = {"end_frame_bytes": len(frame), "truncated": bool(ex.get("truncated"))}
                    return r
                elif t == "request_error":
                    raise KBridgeError("%s: %s" % (m.get("code"), m.get("message")))

    async def close(self):
        await self.ws.close()
