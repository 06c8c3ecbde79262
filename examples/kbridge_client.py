"""A small Python client for kbridge's native WebSocket API.

It mirrors the notebook API people know from E2B's code interpreter:

    from kbridge_client import KBridge
    with KBridge("ws://127.0.0.1:49999/ws", token="...") as kb:
        execution = kb.notebook.exec_cell("1 + 1", on_stdout=print)
        print(execution.text)            # "2"
        for result in execution.results:
            print(result.formats())      # e.g. ["png"]

Only Debian's python3-websockets is needed. The client is synchronous: each call runs
the connection's asyncio loop until its answer arrives.
"""
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import websockets

_FORMATS = ["html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript",
            "data", "chart"]


class KBridgeError(Exception):
    """A request the server refused: .code is one of the API's stable codes."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class ProcessMessage:
    line: str
    error: bool
    timestamp: int  # nanoseconds since the epoch, when it was received

    def __str__(self):
        return self.line


@dataclass
class Result:
    is_main_result: bool
    raw: Dict[str, Any]
    text: Optional[str] = None
    html: Optional[str] = None
    markdown: Optional[str] = None
    svg: Optional[str] = None
    png: Optional[str] = None
    jpeg: Optional[str] = None
    pdf: Optional[str] = None
    latex: Optional[str] = None
    json: Optional[Any] = None
    javascript: Optional[str] = None
    data: Optional[Any] = None
    chart: Optional[Any] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_event(cls, event):
        fields = {k: event.get(k) for k in ["text"] + _FORMATS}
        return cls(is_main_result=event.get("is_main_result", False), raw=dict(event),
                   extra=dict(event.get("extra") or {}), **fields)

    def formats(self) -> List[str]:
        """The formats this result has besides text (and every MIME type under extra)."""
        return [f for f in _FORMATS if getattr(self, f) is not None] + list(self.extra)

    def __getitem__(self, key):
        if key in self.extra:
            return self.extra[key]
        return getattr(self, key)


@dataclass
class Logs:
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


@dataclass
class Error:
    name: str
    value: str
    traceback: str


@dataclass
class Execution:
    results: List[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: Optional[Error] = None
    execution_count: Optional[int] = None
    truncated: bool = False

    @property
    def text(self) -> Optional[str]:
        """text of the main result (the cell's value), if there is one."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None

    @classmethod
    def from_json(cls, obj):
        err = obj.get("error")
        return cls(results=[Result.from_event(r) for r in obj.get("results", [])],
                   logs=Logs(list(obj["logs"]["stdout"]), list(obj["logs"]["stderr"])),
                   error=Error(err["name"], err["value"], err["traceback"]) if err else None,
                   execution_count=obj.get("execution_count"),
                   truncated=bool(obj.get("truncated")))


class Notebook:
    def __init__(self, client):
        self._c = client

    def exec_cell(self, code: str, kernel_id: Optional[str] = None,
                  on_stdout: Optional[Callable[[ProcessMessage], Any]] = None,
                  on_stderr: Optional[Callable[[ProcessMessage], Any]] = None,
                  on_result: Optional[Callable[[Result], Any]] = None,
                  timeout: Optional[float] = None,
                  env_vars: Optional[Dict[str, str]] = None) -> Execution:
        """Run code (in kernel_id, or this session's default kernel) and return its
        Execution. Callbacks fire as output arrives. timeout (seconds) interrupts the
        cell on the server and ends it with a TimeoutError."""
        req = {"op": "execute", "code": code}
        if kernel_id:
            req["kernel_id"] = kernel_id
        if env_vars:
            req["env_vars"] = env_vars
        if timeout:
            req["timeout_ms"] = int(timeout * 1000)
        rid = self._c._send(req)
        while True:
            m = self._c._wait(rid)
            t = m["type"]
            if t == "request_error":
                raise KBridgeError(m["code"], m["message"])
            if t in ("stdout", "stderr"):
                cb = on_stdout if t == "stdout" else on_stderr
                if cb:
                    cb(ProcessMessage(m["text"], t == "stderr", time.time_ns()))
            elif t == "result" and on_result and not m.get("update"):
                on_result(Result.from_event(m))
            elif t == "end_of_execution":
                return Execution.from_json(m["execution"])

    def create_kernel(self, cwd: Optional[str] = None, kernel_name: Optional[str] = None,
                      env_vars: Optional[Dict[str, str]] = None) -> str:
        req = {"op": "start_kernel"}
        if cwd:
            req["cwd"] = cwd
        if kernel_name:
            req["kernel_name"] = kernel_name
        if env_vars:
            req["env_vars"] = env_vars
        return self._c._call(req)["kernel"]["kernel_id"]

    def list_kernels(self) -> List[Dict[str, Any]]:
        return self._c._call({"op": "list_kernels"})["kernels"]

    def interrupt_kernel(self, kernel_id: str):
        self._c._call({"op": "interrupt_kernel", "kernel_id": kernel_id})

    def restart_kernel(self, kernel_id: str):
        self._c._call({"op": "restart_kernel", "kernel_id": kernel_id})

    def shutdown_kernel(self, kernel_id: str):
        self._c._call({"op": "shutdown_kernel", "kernel_id": kernel_id})


class KBridge:
    """A connection (and session) to a kbridge server."""

    def __init__(self, url: str = "ws://127.0.0.1:49999/ws", token: Optional[str] = None,
                 session_id: Optional[str] = None):
        query = []
        if token:
            query.append(f"token={token}")
        if session_id:
            query.append(f"session_id={session_id}")
        if query:
            url += ("&" if "?" in url else "?") + "&".join(query)
        self._loop = asyncio.new_event_loop()

        async def connect():
            # websockets binds connect() to the loop running when it is created.
            return await websockets.connect(url, subprotocols=["kbridge.v1"], max_size=None)

        self._ws = self._loop.run_until_complete(connect())
        hello = json.loads(self._loop.run_until_complete(self._ws.recv()))
        self.session_id = hello["session_id"]
        self._next = 0
        self._stash = []
        self.notebook = Notebook(self)

    def _send(self, req):
        self._next += 1
        req["id"] = self._next
        self._loop.run_until_complete(self._ws.send(json.dumps(req)))
        return self._next

    def _wait(self, rid):
        for i, m in enumerate(self._stash):
            if m.get("id") == rid:
                return self._stash.pop(i)
        while True:
            m = json.loads(self._loop.run_until_complete(self._ws.recv()))
            if m.get("id") == rid:
                return m
            self._stash.append(m)

    def _call(self, req):
        m = self._wait(self._send(req))
        if m["type"] == "request_error":
            raise KBridgeError(m["code"], m["message"])
        return m

    def close(self):
        self._loop.run_until_complete(self._ws.close())
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
