"""Starts the real kbridge service and talks to it: the mosquitto-style test harness.

KBridge(...) runs `kbridge serve --port 0` in its own runtime directory and reads the port
from its first line. NativeClient speaks the /ws protocol and validates every message the
server sends against schema/native.schema.json.
"""
import asyncio
import json
import os
import pathlib
import resource
import signal
import subprocess
import time
import urllib.error
import urllib.request

import jsonschema
import websockets

from conftest import assert_nothing_left, assert_no_sandbox_left, kbridge_bin

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schema"


def _load_schema(name):
    return json.loads((SCHEMA_DIR / name).read_text())


_NATIVE = _load_schema("native.schema.json")
_EXECUTION = _load_schema("execution.schema.json")
_SANDBOX = _load_schema("sandbox.schema.json")
_STORE = {_NATIVE["$id"]: _NATIVE, _EXECUTION["$id"]: _EXECUTION,
          "execution.schema.json": _EXECUTION, _SANDBOX["$id"]: _SANDBOX,
          "sandbox.schema.json": _SANDBOX}


def _resolver():
    # A new one each time: a validation that stops at its first error leaves the
    # resolver's scope pushed (the $ref generator is never finished), and the next one
    # would then resolve relative refs against the wrong document.
    return jsonschema.RefResolver(base_uri=_NATIVE["$id"], referrer=_NATIVE, store=_STORE)
_SERVER_MESSAGE = {"$ref": _NATIVE["$id"] + "#/definitions/server_message"}
_REQUEST = {"$ref": _NATIVE["$id"] + "#/definitions/request"}


def validate_server_message(msg):
    jsonschema.validate(msg, _SERVER_MESSAGE, resolver=_resolver())


def validate_request(msg):
    jsonschema.validate(msg, _REQUEST, resolver=_resolver())


def validate_execution(obj):
    jsonschema.validate(obj, _EXECUTION)


def validate_sandbox(obj):
    jsonschema.validate(obj, _SANDBOX)


def small_asan_quarantine(mb=8):
    """The env for a kbridge whose RSS a test measures: under AddressSanitizer freed memory
    waits in a quarantine (256 MiB by default) before reuse, which RSS would count as
    growth. No effect on other builds."""
    return {"ASAN_OPTIONS": ":".join(x for x in (os.environ.get("ASAN_OPTIONS"), f"quarantine_size_mb={mb}") if x)}


class KBridge:
    def __init__(self, tmp_path, *args, token="test-token", env=None, nofile=None, pools=False):
        """nofile: run it under that fd limit (soft and hard), as `ulimit -n` would.
        pools: keep kbridge's default warm pools (a kernel, and a sandbox with its kernel
        per template). Off unless asked for: the suite starts kbridge hundreds of times, and
        each pool's kernels would multiply its CPU."""
        self.runtime = tmp_path / f"run-{time.monotonic_ns()}"
        self.runtime.mkdir(mode=0o700)
        self.token = token
        full_env = dict(os.environ)
        full_env["XDG_RUNTIME_DIR"] = str(self.runtime)
        full_env.pop("KBRIDGE_TOKEN", None)
        # Each server keeps its sandboxes in its own state directory.
        self.state_dir = tmp_path / f"state-{time.monotonic_ns()}"
        full_env["KBRIDGE_STATE_DIR"] = str(self.state_dir)
        if env:
            full_env.update(env)
        cmd = [kbridge_bin(), "serve", "--port", "0"]
        if token is not None:
            cmd += ["--token", token]
        if not pools and not any(str(a).startswith("--pool-") for a in args):
            cmd += ["--pool-kernels", "0", "--pool-sandboxes", "0"]
        cmd += list(args)
        self.log_path = tmp_path / f"kbridge-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True,
                                     preexec_fn=limit if nofile else None)
        first = self.proc.stdout.readline()
        assert "listening on http://" in first, f"kbridge did not start: {first!r}\n{self.logs()}"
        self.port = int(first.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        # The banner ends with an empty line.
        self.banner = first
        while True:
            line = self.proc.stdout.readline()
            if not line.strip():
                break
            self.banner += line

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path="/ws", token=True, **query):
        if token and self.token:
            query.setdefault("token", self.token)
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ws://127.0.0.1:{self.port}{path}" + (f"?{qs}" if qs else "")

    def api(self, method, path, body=None, token=True, headers=None, timeout=60):
        """A control-plane request (X-API-Key, as E2B's SDK sends it): (status, headers, JSON
        body or None)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.http + path, data=data, method=method)
        if token is True and self.token:
            req.add_header("X-API-Key", self.token)
        elif isinstance(token, str):
            req.add_header("X-API-Key", token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw, status, hdrs = r.read(), r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            raw, status, hdrs = e.read(), e.code, dict(e.headers)
        return status, {k.lower(): v for k, v in hdrs.items()}, (json.loads(raw) if raw else None)

    def logs(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def alive(self):
        return self.proc.poll() is None

    def stop(self, check=True):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
                assert not check, f"kbridge did not stop on SIGTERM\n{self.logs()}"
        else:
            rc = self.proc.returncode
        self.proc.stdout.close()
        self.log.close()
        if check:
            assert rc == 0, f"kbridge exited with {rc}\n{self.logs()[-20000:]}"
            assert_nothing_left(self.runtime)
            assert_no_sandbox_left(self.state_dir)
        return rc


class NativeClient:
    """A /ws client. Messages are validated against the schema as they arrive."""

    def __init__(self, ws):
        self.ws = ws
        self.session = None
        self.pending = []  # messages read but not yet consumed
        self._next = 0

    @classmethod
    async def connect(cls, server, session_id=None, subprotocol=True, sandbox_id=None, **kw):
        query = {"session_id": session_id} if session_id else {}
        if sandbox_id:
            query["sandbox_id"] = sandbox_id
        ws = await websockets.connect(server.ws_url(**query),
                                      subprotocols=["kbridge.v1"] if subprotocol else None,
                                      max_size=None, **kw)
        client = cls(ws)
        client.session = await client.recv()
        assert client.session["type"] == "session"
        return client

    async def recv(self, timeout=60):
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        msg = json.loads(raw)
        validate_server_message(msg)
        return msg

    async def send(self, **request):
        if "id" not in request:
            self._next += 1
            request["id"] = f"r{self._next}"
        await self.ws.send(json.dumps(request))
        return request["id"]

    async def wait_for(self, rid, types=None, timeout=60):
        """Next message for request rid (optionally of given types); others are kept."""
        for i, m in enumerate(self.pending):
            if m.get("id") == rid and (types is None or m["type"] in types):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = await self.recv(timeout=max(0.1, deadline - time.monotonic()))
            if m.get("id") == rid and (types is None or m["type"] in types):
                return m
            self.pending.append(m)

    async def request(self, timeout=60, **request):
        rid = await self.send(**request)
        return await self.wait_for(rid, timeout=timeout)

    async def execute(self, code, timeout=120, **kw):
        """Returns (events, end) for one execution."""
        rid = await self.send(op="execute", code=code, **kw)
        events = []
        while True:
            m = await self.wait_for(rid, timeout=timeout)
            events.append(m)
            if m["type"] in ("end_of_execution", "request_error"):
                return events, m

    async def close(self):
        await self.ws.close()


def run(coro):
    return asyncio.run(coro)
