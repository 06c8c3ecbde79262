"""CodeInterpreter: a Sandbox with Jupyter kernels (`.notebook`), as E2B's code interpreter."""
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ._connection import Deadline, KBridgeError, TimeoutError
from .sandbox import ProcessMessage, Sandbox

_FORMATS = ["html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript",
            "data", "chart"]


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
    def __init__(self, sandbox):
        self._sb = sandbox

    def exec_cell(self, code: str, kernel_id: Optional[str] = None,
                  on_stdout: Optional[Callable[[ProcessMessage], Any]] = None,
                  on_stderr: Optional[Callable[[ProcessMessage], Any]] = None,
                  on_result: Optional[Callable[[Result], Any]] = None,
                  timeout: Optional[float] = None,
                  env_vars: Optional[Dict[str, str]] = None) -> Execution:
        """Run code (in kernel_id, or the default kernel) and return its Execution.
        Callbacks run, in this thread, as output arrives. timeout (default 60 s): the
        kernel is interrupted then and a TimeoutError raised."""
        deadline = Deadline("notebook.exec_cell", timeout)
        req = {"op": "execute", "code": code, "timeout_ms": max(1, int(deadline.timeout * 1000))}
        if kernel_id:
            req["kernel_id"] = kernel_id
        if env_vars:
            req["env_vars"] = dict(env_vars)
        conn = self._sb._conn
        rid, q = conn.open(req, deadline=deadline)
        # The server interrupts the cell at the deadline and ends it; a little grace for
        # that answer, then the client stops waiting by itself.
        deadline.end += 10
        try:
            while True:
                try:
                    m = conn.next(q, deadline)
                except TimeoutError:
                    raise TimeoutError("notebook.exec_cell", deadline.timeout) from None
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
                    ex = Execution.from_json(m["execution"])
                    if (ex.error and ex.error.name == "TimeoutError"
                            and ex.error.value.startswith("Execution timed out after")):
                        raise TimeoutError("notebook.exec_cell", deadline.timeout)
                    return ex
        finally:
            conn.release(rid)

    def create_kernel(self, cwd: Optional[str] = None, kernel_name: Optional[str] = None,
                      env_vars: Optional[Dict[str, str]] = None, timeout: Optional[float] = None) -> str:
        """Start a kernel (python3 unless kernel_name) and return its id."""
        req = {"op": "start_kernel"}
        if cwd:
            req["cwd"] = self._sb._path(cwd)
        if kernel_name:
            req["kernel_name"] = kernel_name
        if env_vars:
            req["env_vars"] = dict(env_vars)
        return self._sb._conn.call(req, "notebook.create_kernel", timeout)["kernel"]["kernel_id"]

    def list_kernels(self, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        return self._sb._conn.call({"op": "list_kernels"}, "notebook.list_kernels", timeout)["kernels"]

    def interrupt_kernel(self, kernel_id: str, timeout: Optional[float] = None):
        self._sb._conn.call({"op": "interrupt_kernel", "kernel_id": kernel_id}, "notebook.interrupt_kernel", timeout)

    def restart_kernel(self, kernel_id: Optional[str] = None, timeout: Optional[float] = None):
        req = {"op": "restart_kernel", "kernel_id": kernel_id or self._default_kernel(timeout)}
        self._sb._conn.call(req, "notebook.restart_kernel", timeout)

    def shutdown_kernel(self, kernel_id: str, timeout: Optional[float] = None):
        self._sb._conn.call({"op": "shutdown_kernel", "kernel_id": kernel_id}, "notebook.shutdown_kernel", timeout)

    def _default_kernel(self, timeout):
        conn = self._sb._conn
        deadline = Deadline("notebook.restart_kernel", timeout)
        rid, q = conn.open({"op": "execute", "code": ""}, deadline=deadline)
        try:
            while True:
                m = conn.next(q, deadline)
                if m["type"] == "request_error":
                    raise KBridgeError(m["code"], m["message"])
                if m["type"] == "end_of_execution":
                    return m["kernel_id"]
        finally:
            conn.release(rid)


class CodeInterpreter(Sandbox):
    """A Sandbox with `.notebook`: Jupyter kernels run inside the sandbox."""

    def __init__(self, template: str = "base", *args, **kw):
        super().__init__(template, *args, **kw)
        self.notebook = Notebook(self)
