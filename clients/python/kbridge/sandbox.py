"""Sandbox, its filesystem and its processes: the E2B SDK's API on kbridge."""
import base64
import enum
import inspect
import posixpath
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ._connection import (Connection, Deadline, Dispatcher, Forward, KBridgeError, TimeoutError,
                          _CLOSED, http, settings, ws_url)

# While a client is attached its sandbox is kept alive this long past every refresh.
_LEASE_S = 120
_REFRESH_S = 30
# kbridge writes a file under a hidden temporary name and renames it into place.
_TEMP_NAME = re.compile(r"^(?:(?P<dir>.*)/)?\.(?P<name>.+)\.kbridge-[0-9a-f]{8}$")


@dataclass
class ProcessMessage:
    """A line of a process's (or a cell's) output; str() is the line."""
    line: str
    error: bool = False
    timestamp: int = 0  # nanoseconds since the epoch, when it was received

    def __str__(self):
        return self.line


@dataclass
class ProcessOutput:
    messages: List[ProcessMessage] = field(default_factory=list)
    exit_code: Optional[int] = None
    error: Optional[str] = None  # why kbridge ended it (its timeout, the sandbox's end)

    @property
    def stdout(self) -> str:
        return "\n".join(m.line for m in self.messages if not m.error)

    @property
    def stderr(self) -> str:
        return "\n".join(m.line for m in self.messages if m.error)


def _call_exit(fn, exit_code):
    """on_exit may take the exit code or nothing."""
    try:
        params = inspect.signature(fn).parameters.values()
        takes = any(p.kind in (p.VAR_POSITIONAL,) for p in params) or any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    except (TypeError, ValueError):
        takes = False
    return fn(exit_code) if takes else fn()


class Process:
    """A process started in the sandbox. Output and exit arrive in the background."""

    def __init__(self, sandbox, cmd, on_stdout, on_stderr, on_exit):
        self._sb = sandbox
        self.cmd = cmd
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_exit = on_exit
        self.output = ProcessOutput()
        self.pid = None
        self.info = None
        self.status = None
        self.signal = None
        self._rid = None
        self._partial = {False: "", True: ""}
        self._started = threading.Event()
        self._finished = threading.Event()
        self._start_error = None

    # -- messages, on the dispatcher thread
    def _handle(self, m):
        if m is _CLOSED:
            if not self._started.is_set():
                self._start_error = KBridgeError("closed", self._sb._conn.close_reason or "connection closed")
                self._started.set()
            self._flush()
            self._finished.set()
            return
        t = m.get("type")
        if t == "process_started":
            self.info = m["process"]
            self.pid = self.info["pid"]
            self._started.set()
        elif t == "request_error":
            self._start_error = KBridgeError(m["code"], m["message"])
            self._sb._conn.release(self._rid)
            self._started.set()
            self._finished.set()
        elif t in ("process_stdout", "process_stderr", "process_pty"):
            text = m.get("text")
            if text is None:
                text = base64.b64decode(m.get("data", "")).decode("utf-8", "replace")
            self._feed(t == "process_stderr", text)
        elif t == "process_exit":
            self._flush()
            self.output.exit_code = m.get("exit_code")
            self.output.error = m.get("error")
            self.status = m.get("status")
            self.signal = m.get("signal")
            self._sb._conn.release(self._rid)
            handler = self._on_exit or self._sb._on_exit
            try:
                if handler:
                    _call_exit(handler, self.output.exit_code)
            finally:
                self._finished.set()

    def _feed(self, error, text):
        buf = self._partial[error] + text
        *lines, rest = buf.split("\n")
        self._partial[error] = rest
        for line in lines:
            self._emit(error, line)

    def _flush(self):
        for error in (False, True):
            if self._partial[error]:
                line, self._partial[error] = self._partial[error], ""
                self._emit(error, line)

    def _emit(self, error, line):
        msg = ProcessMessage(line, error, time.time_ns())
        self.output.messages.append(msg)
        if error:
            handler = self._on_stderr or self._sb._on_stderr
        else:
            handler = self._on_stdout or self._sb._on_stdout
        if handler:
            handler(msg)

    # -- the API
    @property
    def stdout(self) -> str:
        return self.output.stdout

    @property
    def stderr(self) -> str:
        return self.output.stderr

    @property
    def exit_code(self) -> Optional[int]:
        return self.output.exit_code

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: Optional[float] = None) -> ProcessOutput:
        """Until it exits (and every callback for it has run); timeout None waits as long
        as it runs."""
        if not self._finished.wait(timeout):
            raise TimeoutError("process.wait", timeout)
        return self.output

    def send_stdin(self, data: str, timeout: Optional[float] = None):
        req = {"op": "process_input", "pid": self.pid}
        if isinstance(data, (bytes, bytearray)):
            req["data"] = base64.b64encode(bytes(data)).decode()
        else:
            req["text"] = data
        self._sb._conn.call(req, "process.send_stdin", timeout)

    def close_stdin(self, timeout: Optional[float] = None):
        self._sb._conn.call({"op": "process_close_stdin", "pid": self.pid}, "process.close_stdin", timeout)

    def kill(self, timeout: Optional[float] = None, signal: str = "SIGKILL"):
        """Send it SIGKILL (or signal) and wait for its exit."""
        deadline = Deadline("process.kill", timeout)
        if not self._finished.is_set():
            try:
                self._sb._conn.call({"op": "process_signal", "pid": self.pid, "signal": signal},
                                    "process.kill", deadline.left())
            except KBridgeError:
                if not self._finished.wait(min(1.0, deadline.left())):  # else it had exited already
                    raise
        if not self._finished.wait(deadline.left()):
            raise TimeoutError("process.kill", deadline.timeout)

    def __repr__(self):
        return f"Process(pid={self.pid}, cmd={self.cmd!r}, exit_code={self.exit_code})"


class ProcessManager:
    def __init__(self, sandbox):
        self._sb = sandbox

    def start(self, cmd: str, env_vars: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
              on_stdout: Optional[Callable[[ProcessMessage], Any]] = None,
              on_stderr: Optional[Callable[[ProcessMessage], Any]] = None,
              on_exit: Optional[Callable[..., Any]] = None, timeout: Optional[float] = None,
              user: Optional[str] = None, tag: Optional[str] = None, stdin: bool = True) -> Process:
        """Start `/bin/bash -l -c cmd`. timeout: how long to wait for it to start."""
        deadline = Deadline("process.start", timeout)
        req = {"op": "process_start", "cmd": cmd, "stdin": stdin}
        if env_vars:
            req["env_vars"] = dict(env_vars)
        cwd = cwd if cwd is not None else self._sb._cwd
        if cwd:
            req["cwd"] = self._sb._path(cwd)
        if user:
            req["user"] = user
        if tag:
            req["tag"] = tag
        proc = Process(self._sb, cmd, on_stdout, on_stderr, on_exit)
        proc._rid, _ = self._sb._conn.open(req, Forward(self._sb._dispatcher, proc._handle), deadline)
        if not proc._started.wait(deadline.left()):
            raise TimeoutError("process.start", deadline.timeout)
        if proc._start_error:
            raise proc._start_error
        return proc

    def list(self, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        return self._sb._conn.call({"op": "process_list"}, "process.list", timeout)["processes"]


@dataclass
class FileInfo:
    name: str
    is_dir: bool
    path: str = ""
    type: str = "file"
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified: float = 0.0  # seconds since the epoch
    symlink_target: Optional[str] = None

    @classmethod
    def from_entry(cls, e):
        return cls(name=e["name"], is_dir=e["type"] == "dir", path=e["path"], type=e["type"],
                   size=e["size"], mode=e["mode"], permissions=e["permissions"], owner=e["owner"],
                   group=e["group"], modified=e["mtime_ms"] / 1000.0,
                   symlink_target=e.get("symlink_target"))


class FilesystemOperation(str, enum.Enum):
    Create = "Create"
    Write = "Write"
    Remove = "Remove"
    Rename = "Rename"
    Chmod = "Chmod"
    Other = "Other"


@dataclass
class FilesystemEvent:
    path: str
    name: str
    operation: FilesystemOperation
    timestamp: int  # nanoseconds since the epoch, when it was received
    is_dir: bool


class FilesystemWatcher:
    """watch_dir's watcher: add listeners, then start(); stop() ends it."""

    def __init__(self, sandbox, path, recursive=False, timeout=None):
        self._sb = sandbox
        self._timeout = timeout
        self.path = path
        self.recursive = recursive
        self._listeners = []
        self._rid = None
        self.watch_id = None
        self.ended = None  # why the server ended it (removed, overflow...)
        self._started = threading.Event()
        self._error = None
        self._renamed_into = set()

    def add_event_listener(self, listener: Callable[[FilesystemEvent], Any]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _handle(self, m):
        if m is _CLOSED:
            self._started.set()
            return
        t = m.get("type")
        if t == "watch_started":
            self.watch_id = m["watch_id"]
            self.path = m.get("path", self.path)
            self._started.set()
        elif t == "request_error":
            self._error = KBridgeError(m["code"], m["message"])
            self._sb._conn.release(self._rid)
            self._started.set()
        elif t == "watch_event":
            name = m["name"]
            temp = _TEMP_NAME.match(name)
            if temp:
                # filesystem.write's temporary file: not passed on; its rename into place
                # is the target's Create and Write.
                if m["event"] == "rename":
                    d = temp.group("dir")
                    self._renamed_into.add(posixpath.join(d, temp.group("name")) if d else temp.group("name"))
                return
            ops = [FilesystemOperation(m["event"].capitalize())]
            if m["event"] == "create" and name in self._renamed_into:
                self._renamed_into.discard(name)
                ops.append(FilesystemOperation.Write)
            for op in ops:
                ev = FilesystemEvent(path=posixpath.join(self.path, name), name=name, operation=op,
                                     timestamp=time.time_ns(), is_dir=m["file_type"] == "dir")
                for listener in list(self._listeners):
                    listener(ev)
        elif t == "watch_end":
            self.ended = m.get("reason")
            self._sb._conn.release(self._rid)

    def start(self, timeout: Optional[float] = None):
        deadline = Deadline("filesystem.watch_dir.start", self._timeout if timeout is None else timeout)
        req = {"op": "watch_start", "path": self.path}
        if self.recursive:
            req["recursive"] = True
        self._rid, _ = self._sb._conn.open(req, Forward(self._sb._dispatcher, self._handle), deadline)
        if not self._started.wait(deadline.left()):
            raise TimeoutError(deadline.call, deadline.timeout)
        if self._error:
            raise self._error

    def stop(self, timeout: Optional[float] = None):
        if self.watch_id is None or self.ended:
            return
        try:
            self._sb._conn.call({"op": "watch_stop", "watch_id": self.watch_id},
                                "filesystem.watch_dir.stop", self._timeout if timeout is None else timeout)
        finally:
            self._sb._conn.release(self._rid)
            self.ended = "stopped"


class Filesystem:
    def __init__(self, sandbox):
        self._sb = sandbox

    def _call(self, req, call, timeout):
        req["path"] = self._sb._path(req["path"])
        return self._sb._conn.call(req, call, timeout)

    def list(self, path: str, timeout: Optional[float] = None, depth: int = 1) -> List[FileInfo]:
        req = {"op": "files_list", "path": path}
        if depth != 1:
            req["depth"] = depth
        return [FileInfo.from_entry(e) for e in self._call(req, "filesystem.list", timeout)["entries"]]

    def make_dir(self, path: str, timeout: Optional[float] = None):
        """Make the directory and its parents (an existing directory is fine)."""
        try:
            self._call({"op": "files_make_dir", "path": path, "parents": True}, "filesystem.make_dir", timeout)
        except KBridgeError as e:
            if e.code != "already_exists":
                raise

    def write(self, path: str, content: str, timeout: Optional[float] = None):
        """Create or overwrite the file; a missing directory is an error."""
        self._call({"op": "files_write", "path": path, "text": content}, "filesystem.write", timeout)

    def write_bytes(self, path: str, content: bytes, timeout: Optional[float] = None):
        self._call({"op": "files_write", "path": path, "data": base64.b64encode(bytes(content)).decode()},
                   "filesystem.write_bytes", timeout)

    def read(self, path: str, timeout: Optional[float] = None) -> str:
        return self._call({"op": "files_read", "path": path}, "filesystem.read", timeout)["text"]

    def read_bytes(self, path: str, timeout: Optional[float] = None) -> bytes:
        m = self._call({"op": "files_read", "path": path, "encoding": "base64"}, "filesystem.read_bytes", timeout)
        return base64.b64decode(m["data"])

    def remove(self, path: str, timeout: Optional[float] = None):
        self._call({"op": "files_remove", "path": path}, "filesystem.remove", timeout)

    def exists(self, path: str, timeout: Optional[float] = None) -> bool:
        return self._call({"op": "files_exists", "path": path}, "filesystem.exists", timeout)["exists"]

    def stat(self, path: str, timeout: Optional[float] = None) -> FileInfo:
        return FileInfo.from_entry(self._call({"op": "files_stat", "path": path}, "filesystem.stat", timeout)["entry"])

    def rename(self, path: str, new_path: str, timeout: Optional[float] = None):
        self._call({"op": "files_rename", "path": path, "new_path": self._sb._path(new_path)},
                   "filesystem.rename", timeout)

    def watch_dir(self, path: str, timeout: Optional[float] = None, recursive: bool = False) -> FilesystemWatcher:
        """A watcher for the directory; nothing is watched until its start() (timeout: the
        default of its start and stop)."""
        watcher = FilesystemWatcher(self._sb, self._sb._path(path), recursive, timeout)
        self._sb._watchers.append(watcher)
        return watcher


@dataclass
class SandboxInfo:
    sandbox_id: str
    template_id: str
    alias: Optional[str]
    metadata: Dict[str, str]
    started_at: str
    end_at: str
    state: str
    cpu_count: int
    memory_mb: int

    @classmethod
    def from_model(cls, sb):
        return cls(sandbox_id=sb["sandboxID"], template_id=sb["templateID"], alias=sb.get("alias"),
                   metadata=dict(sb.get("metadata") or {}), started_at=sb.get("startedAt"),
                   end_at=sb.get("endAt"), state=sb.get("state"), cpu_count=sb.get("cpuCount"),
                   memory_mb=sb.get("memoryMB"))


class Sandbox:
    """A kbridge sandbox, open while this object is (a context manager). Without
    keep_alive() it is killed by close()."""

    def __init__(self, template: str = "base", cwd: Optional[str] = None,
                 env_vars: Optional[Dict[str, str]] = None, metadata: Optional[Dict[str, str]] = None,
                 timeout: Optional[float] = None,
                 on_stdout: Optional[Callable[[ProcessMessage], Any]] = None,
                 on_stderr: Optional[Callable[[ProcessMessage], Any]] = None,
                 on_exit: Optional[Callable[..., Any]] = None,
                 api_key: Optional[str] = None, url: Optional[str] = None, _sandbox_id: Optional[str] = None):
        self._base, self._token = settings(url, api_key)
        self.template = template
        self._cwd = cwd
        self.env_vars = dict(env_vars or {})
        self.metadata = dict(metadata or {})
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_exit = on_exit
        self._conn = None
        self._dispatcher = None
        self._watchers = []
        self._kept = False
        self._closed = False
        self._reconnected = _sandbox_id is not None
        self.filesystem = Filesystem(self)
        self.process = ProcessManager(self)
        deadline = Deadline("Sandbox.reconnect" if self._reconnected else "Sandbox", timeout)
        if self._reconnected:
            _, model = self._http("POST", f"/sandboxes/{_q(_sandbox_id)}/connect", {"timeout": _LEASE_S},
                                  deadline)
        else:
            body = {"templateID": template, "timeout": _LEASE_S}
            if self.metadata:
                body["metadata"] = self.metadata
            if self.env_vars:
                body["envVars"] = self.env_vars
            _, model = self._http("POST", "/sandboxes", body, deadline)
        self._model = model
        self._id = model["sandboxID"]
        self._domain = model.get("domain")
        try:
            self._dispatcher = Dispatcher()
            self._conn = Connection(ws_url(self._base, self._id, self._token), deadline)
            if cwd:
                self.filesystem.make_dir(cwd, timeout=deadline.left())
        except BaseException:
            self.close()
            raise
        self._stop_refresh = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, name="kbridge-lease", daemon=True)
        self._refresher.start()

    def _http(self, method, path, body, deadline):
        return http(self._base, self._token, method, path, body, timeout=deadline.left(), call=deadline.call,
                    total=deadline.timeout)

    def _refresh(self):
        while not self._stop_refresh.wait(_REFRESH_S):
            try:
                http(self._base, self._token, "POST", f"/sandboxes/{_q(self._id)}/connect",
                     {"timeout": _LEASE_S}, timeout=30, call="Sandbox.refresh")
            except Exception:  # noqa: BLE001 - the next refresh tries again
                pass

    def _path(self, path):
        if self._cwd and not path.startswith("/"):
            return posixpath.normpath(posixpath.join(self._cwd, path))
        return path

    # -- the API
    @property
    def id(self) -> str:
        return self._id

    @property
    def sandbox_id(self) -> str:
        return self._id

    @property
    def cwd(self) -> Optional[str]:
        return self._cwd

    @cwd.setter
    def cwd(self, value: Optional[str]):
        self._cwd = value

    def get_hostname(self, port: Optional[int] = None) -> str:
        """`<port>-<id>.<domain>` (or `<id>.<domain>`): kbridge routes it to the port in the sandbox."""
        if not self._domain:
            _, model = http(self._base, self._token, "GET", f"/sandboxes/{_q(self._id)}", call="get_hostname")
            self._domain = model.get("domain")
        host = f"{self._id}.{self._domain}"
        return f"{port}-{host}" if port else host

    def keep_alive(self, seconds: int, timeout: Optional[float] = None):
        """Keep the sandbox running for seconds (at most 3600) from now, also after close()."""
        seconds = int(seconds)
        if seconds < 1 or seconds > 3600:
            raise ValueError("keep_alive: seconds must be between 1 and 3600")
        http(self._base, self._token, "POST", f"/sandboxes/{_q(self._id)}/timeout", {"timeout": seconds},
             timeout=Deadline("keep_alive", timeout).left(), call="keep_alive")
        self._kept = True

    def set_timeout(self, seconds: int, timeout: Optional[float] = None):
        http(self._base, self._token, "POST", f"/sandboxes/{_q(self._id)}/timeout", {"timeout": int(seconds)},
             timeout=Deadline("set_timeout", timeout).left(), call="set_timeout")

    def info(self, timeout: Optional[float] = None) -> SandboxInfo:
        return SandboxInfo.from_model(self._conn.call({"op": "sandbox_info"}, "info", timeout)["sandbox"])

    def kill(self, timeout: Optional[float] = None):
        try:
            http(self._base, self._token, "DELETE", f"/sandboxes/{_q(self._id)}",
                 timeout=Deadline("kill", timeout).left(), call="kill")
        except KBridgeError as e:
            if e.status != 404:
                raise
        self.close()

    def close(self):
        """Disconnect; the sandbox is killed unless keep_alive() was called (or it was
        reconnected to, when it ends at its own timeout)."""
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_stop_refresh", None):
            self._stop_refresh.set()
        for w in self._watchers:
            try:
                if self._conn and not self._conn.closed:
                    w.stop(timeout=5)
            except Exception:  # noqa: BLE001
                pass
        if self._conn:
            self._conn.close()
        if self._dispatcher:
            self._dispatcher.stop()
        if not self._kept and not self._reconnected and getattr(self, "_id", None):
            try:
                http(self._base, self._token, "DELETE", f"/sandboxes/{_q(self._id)}", timeout=30, call="close")
            except KBridgeError as e:
                # Gone already, or kbridge is: it ends at its lease (2 minutes) anyway.
                if e.status != 404 and e.code != "unreachable":
                    raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @classmethod
    def reconnect(cls, sandbox_id: str, timeout: Optional[float] = None, **kw):
        """Attach to a running (or paused: resumed) sandbox by id."""
        return cls(_sandbox_id=sandbox_id, timeout=timeout, **kw)

    @classmethod
    def create(cls, *args, **kw):
        return cls(*args, **kw)

    @staticmethod
    def list(metadata: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
             api_key: Optional[str] = None, url: Optional[str] = None) -> List[SandboxInfo]:
        """The running sandboxes (those whose metadata has every pair given)."""
        base, token = settings(url, api_key)
        path = "/v2/sandboxes?state=running"
        if metadata:
            inner = "&".join(f"{_q(k)}={_q(v)}" for k, v in metadata.items())
            path += "&metadata=" + _q(_q(inner))
        _, items = http(base, token, "GET", path, timeout=Deadline("Sandbox.list", timeout).left(),
                        call="Sandbox.list")
        return [SandboxInfo.from_model(x) for x in items or []]

    def __repr__(self):
        return f"{type(self).__name__}(id={getattr(self, '_id', None)!r})"


def _q(s):
    return urllib.parse.quote(str(s), safe="")
