"""Issue 11: the Python client (clients/python/kbridge) with the real binary.

Every Python example of the product documents' filesystem, process, env, cwd, URL,
timeouts, reconnect and code execution pages (examples/docs/, as written with only the
import line changed) runs in its own interpreter against kbridge; then the client's
behaviours: server errors raise with the server's code, timeouts raise a TimeoutError
naming the call, reconnect, list with metadata, watches, stdin, kill, kernels.
"""
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import pytest

from kbharness import KBridge, validate_request, validate_server_message

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
DOCS = ROOT / "examples" / "docs"
sys.path.insert(0, str(CLIENT))
import kbridge  # noqa: E402
from kbridge import CodeInterpreter, KBridgeError, Sandbox  # noqa: E402


@pytest.fixture(autouse=True)
def schema_checked():
    """Every request the client sends and every message it gets, against the schema."""
    from kbridge._connection import Connection
    bad = []

    def check(validate):
        def hook(m):
            try:
                validate(m)
            except Exception as e:  # noqa: BLE001 - reported below, never in the reader
                bad.append((m, str(e).splitlines()[0]))
        return hook
    Connection.on_request = check(validate_request)
    Connection.on_message = check(validate_server_message)
    yield
    Connection.on_request = Connection.on_message = None
    assert not bad, bad[:3]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("pyclient"))
    old = {k: os.environ.get(k) for k in ("KBRIDGE_URL", "KBRIDGE_TOKEN")}
    os.environ["KBRIDGE_URL"] = srv.http
    os.environ["KBRIDGE_TOKEN"] = srv.token
    yield srv
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert srv.alive(), srv.logs()[-5000:]
    srv.stop()


def running(server):
    return [x["sandboxID"] for x in server.api("GET", "/v2/sandboxes")[2]]


# Loaded by the example's interpreter: its requests and messages checked against the schema.
SITECUSTOMIZE = f"""
import sys
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
from kbharness import validate_request, validate_server_message
from kbridge._connection import Connection

def _check(validate):
    def hook(m):
        try:
            validate(m)
        except Exception as e:
            print("SCHEMA VIOLATION", m, str(e).splitlines()[0], file=sys.stderr)
    return hook

Connection.on_request = _check(validate_request)
Connection.on_message = _check(validate_server_message)
"""


def run_doc(server, tmp_path, name, timeout=240):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, KBRIDGE_URL=server.http, KBRIDGE_TOKEN=server.token,
               PYTHONPATH=f"{CLIENT}:{site}", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(DOCS / name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "SCHEMA VIOLATION" not in proc.stderr, proc.stderr
    return proc.stdout


def only_import_changed(name):
    src = (DOCS / name).read_text()
    imports = [ln for ln in src.splitlines() if "import" in ln and ("kbridge" in ln or "e2b" in ln)]
    assert imports and all(ln.startswith("from kbridge import ") for ln in imports), imports


# -- the documents' examples, each with what its page says it prints ------------------

DOC_EXPECTS = {
    "env_global.py": [],
    "env_per_process.py": [r"^Hello World!$"],
    "filesystem_list.py": [r"^Is 'etc' directory\? True$", r"^Is 'tmp' directory\? True$"],
    "filesystem_make_dir.py": [],
    "filesystem_write.py": [],
    "filesystem_read.py": [r"^127\.0\.0\.1\s+localhost"],
    "filesystem_write_bytes.py": [r"^Hello world$"],
    "filesystem_read_bytes.py": [r"^b'127\.0\.0\.1[ \\t]+localhost"],
    "process_start.py": [r"\"name\": "],
    "process_stop.py": [],
    "process_stdout.py": [r"^sandbox Hello World!$", r"^process Hello World!$"],
    "process_stderr.py": [r"^\[sandbox\] /bin/bash: line 1: go: command not found$",
                          r"^\[process\] /bin/bash: line 1: go: command not found$"],
    "process_on_exit.py": [r"^\[sandbox\] process ended$", r"^\[process\] process ended$"],
    "process_send_stdin.py": [],
    "cwd_sandbox.py": [],
    "cwd_filesystem.py": [r"^Welcome to E2B!$", r"^We hope you have a great day!$"],
    "cwd_process.py": [r"^/code$", r"^/home$"],
    "url_hostname.py": [r"^https://kb[a-z0-9]+\.localhost:\d+$"],
    "url_port.py": [r"^https://3000-kb[a-z0-9]+\.localhost:\d+$"],
    "timeouts_sandbox.py": [],
    "timeouts_process.py": [],
    "timeouts_filesystem.py": [r"FileInfo\(name='test.txt', is_dir=False", r"^Hello World$"],
    "reconnect_keep_alive.py": [r"^Hello World!$"],
    "code_execution_exec_cell.py": [],
    "code_execution_results_to_llm.py": [r"^There was an error during execution: SyntaxError: "],
    "code_interpreter_shared_context.py": [r"^2$"],
    "code_interpreter_charts.py": [],
    "code_interpreter_streaming.py": [r"^hello$", r"^\s+A\s+B$", r"^0\s+1\s+2$", r"^world$"],
    "filesystem_watch_dir.py": [],
}


def test_every_document_example_is_here():
    assert sorted(p.name for p in DOCS.glob("*.py")) == sorted(DOC_EXPECTS)


@pytest.mark.parametrize("name", sorted(DOC_EXPECTS))
def test_document_example(server, tmp_path, name):
    only_import_changed(name)
    before = set(running(server))
    out = run_doc(server, tmp_path, name)
    for pattern in DOC_EXPECTS[name]:
        assert re.search(pattern, out, re.M), f"{name}: {pattern!r} not in\n{out}"
    if name == "process_on_exit.py":  # the sandbox's handler only where the process has none
        assert out.count("process ended") == 2, out
    if name == "process_stdout.py":
        assert "sandbox Hello World!" in out and out.count("Hello World!") == 2, out
    if name == "filesystem_read_bytes.py":
        assert b"localhost" in (tmp_path / "hosts.txt").read_bytes()
    if name == "filesystem_watch_dir.py":
        for i in range(10):
            f = f"/home/file{i}.txt"
            assert f"path='{f}', name='file{i}.txt', operation=<FilesystemOperation.Create: 'Create'>" in out, out
            assert f"path='{f}', name='file{i}.txt', operation=<FilesystemOperation.Write: 'Write'>" in out, out
        assert ".kbridge-" not in out
    if name == "reconnect_keep_alive.py":  # kept alive: it is still there, until killed
        left = set(running(server)) - before
        assert len(left) == 1, left
        assert server.api("DELETE", f"/sandboxes/{left.pop()}")[0] == 204
    elif not name.startswith("code_execution_"):  # those two never close theirs
        assert set(running(server)) <= before, "close() left the sandbox running"


def test_pip_install_shows_pip_output(server):
    with CodeInterpreter() as sandbox:
        execution = sandbox.notebook.exec_cell("!pip install matplotlib")
        out = "".join(execution.logs.stdout)
        # Installed already, or refused (no network needed either way): pip's own words.
        assert re.search(r"Requirement already satisfied|externally-managed-environment|pip", out), \
            execution.logs
        assert execution.error is None


# -- behaviours -------------------------------------------------------------------------

def test_server_errors_raise_with_code(server):
    with Sandbox(template="base") as sb:
        with pytest.raises(KBridgeError) as info:
            sb.filesystem.write("/no/such/dir/hello.txt", "x")
        assert info.value.code == "not_found" and "/no/such/dir" in info.value.message
        with pytest.raises(KBridgeError) as info:
            sb.filesystem.read("/etc")
        assert info.value.code == "is_a_directory"
        with pytest.raises(KBridgeError) as info:
            sb.filesystem.list("/etc/hostname")
        assert info.value.code == "not_a_directory"
        with pytest.raises(KBridgeError) as info:
            sb.process.start("true", cwd="/no/such/dir")
        assert info.value.code == "bad_request"
        w = sb.filesystem.watch_dir("/no/such/dir")
        with pytest.raises(KBridgeError) as info:
            w.start()
        assert info.value.code == "not_found"
        # The connection is fine afterwards.
        sb.filesystem.make_dir("/a/b/c")
        sb.filesystem.make_dir("/a/b/c")  # already there: fine, as mkdir -p
        assert [f.name for f in sb.filesystem.list("/a/b")] == ["c"]
    with pytest.raises(KBridgeError) as info:
        Sandbox(template="nope")
    assert info.value.code == 400 and "template 'nope' not found" in info.value.message
    with pytest.raises(KBridgeError) as info:
        Sandbox.reconnect("kbnosuch")
    assert info.value.code == 404 and "not found" in info.value.message
    with pytest.raises(KBridgeError) as info:
        Sandbox(api_key="wrong")
    assert info.value.code == 401
    import socket
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(KBridgeError) as info:
        Sandbox(url=f"http://127.0.0.1:{port}")
    assert info.value.code == "unreachable" and str(port) in info.value.message


def test_timeouts_raise_naming_the_call(server):
    with CodeInterpreter() as sb:
        t = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            sb.notebook.exec_cell("import time; time.sleep(30)", timeout=1)
        assert isinstance(info.value, kbridge.TimeoutError) and info.value.call == "notebook.exec_cell"
        assert "notebook.exec_cell timed out after 1 s" in str(info.value)
        assert time.monotonic() - t < 15
        # The kernel was interrupted: the next cell runs at once.
        assert sb.notebook.exec_cell("1 + 1", timeout=30).text == "2"
        proc = sb.process.start("sleep 30")
        with pytest.raises(TimeoutError) as info:
            proc.wait(timeout=0.5)
        assert "process.wait timed out after 0.5 s" in str(info.value)
        proc.kill()
        assert proc.exit_code is None and proc.finished
        # A call whose answer cannot come in time: 8 MiB to write in 1 ms.
        with pytest.raises(TimeoutError) as info:
            sb.filesystem.write_bytes("/tmp/big", os.urandom(8 << 20), timeout=0.001)
        assert "filesystem.write_bytes timed out after 0.001 s" in str(info.value)
        # The connection goes on (the late answer is dropped); the write ends meanwhile.
        deadline = time.monotonic() + 60
        while not sb.filesystem.exists("/tmp/big") and time.monotonic() < deadline:  # written atomically
            time.sleep(0.1)
        assert sb.filesystem.stat("/tmp/big").size == 8 << 20
        # A paused sandbox answers at once, with its code.
        status = server.api("POST", f"/sandboxes/{sb.id}/pause", {})[0]
        if status == 204:
            with pytest.raises(KBridgeError) as info:
                sb.filesystem.read("/etc/hostname", timeout=5)
            assert info.value.code == "sandbox_unavailable" and "paused" in info.value.message
            assert server.api("POST", f"/sandboxes/{sb.id}/connect", {"timeout": 60})[0] == 201
        else:
            assert status == 501  # no cgroup freezer here
        assert sb.filesystem.read("/etc/hostname", timeout=10)
    # Opening: a server that never answers.
    import socket
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    try:
        with pytest.raises(TimeoutError) as info:
            Sandbox(template="base", timeout=0.5, url=f"http://127.0.0.1:{lsock.getsockname()[1]}")
        assert "Sandbox timed out after 0.5 s" in str(info.value)
    finally:
        lsock.close()


def test_reconnect_and_list_with_metadata(server):
    tag = f"t{time.monotonic_ns()}"
    sb = Sandbox(template="base", metadata={"user": "alice", "job": tag, "odd key": "a&b=c"})
    sid = sb.id
    sb.filesystem.write("/keep.txt", "kept")
    listed = Sandbox.list(metadata={"job": tag})
    assert [x.sandbox_id for x in listed] == [sid]
    assert listed[0].metadata == {"user": "alice", "job": tag, "odd key": "a&b=c"}
    assert listed[0].template_id == "base" and listed[0].state == "running"
    assert [x.sandbox_id for x in Sandbox.list(metadata={"odd key": "a&b=c", "job": tag})] == [sid]
    assert Sandbox.list(metadata={"job": tag, "user": "bob"}) == []
    assert sid in [x.sandbox_id for x in Sandbox.list()]
    sb.keep_alive(120)
    with pytest.raises(ValueError):
        sb.keep_alive(3601)
    sb.close()
    assert sid in running(server)
    with Sandbox.reconnect(sid) as again:
        assert again.id == sid and again.filesystem.read("/keep.txt") == "kept"
        assert again.get_hostname(8080) == f"8080-{sid}.localhost:{server.port}"
    again.kill()
    assert sid not in running(server)
    # Without keep_alive, close() ends it.
    sb = Sandbox()
    sid = sb.id
    sb.close()
    assert sid not in running(server)


def test_processes(server):
    seen, exits = [], []
    with Sandbox(template="base", env_vars={"A": "sandbox"}, on_exit=exits.append) as sb:
        proc = sb.process.start("echo $A $B; echo oops >&2; printf 'no newline'; exit 3",
                                env_vars={"B": "proc"}, on_stdout=seen.append)
        out = proc.wait()
        assert out is proc.output and proc.exit_code == 3 and exits == [3]
        assert proc.stdout == "sandbox proc\nno newline" and proc.stderr == "oops"
        assert [m.line for m in seen] == ["sandbox proc", "no newline"]
        assert str(seen[0]) == "sandbox proc" and not seen[0].error and seen[0].timestamp > 0
        assert proc.pid > 0
        # stdin, echoed back line by line; kill ends it.
        lines = []
        got = threading.Event()
        cat = sb.process.start("cat", on_stdout=lambda m: (lines.append(m.line), got.set()))
        cat.send_stdin("hello\n")
        assert got.wait(10) and lines == ["hello"]
        cat.kill()
        assert cat.finished and cat.exit_code is None and cat.signal == 9
        cat.kill()  # already gone: fine
        # Relative paths and process cwd follow sandbox.cwd.
        sb.filesystem.make_dir("/work/sub")
        sb.cwd = "/work"
        sb.filesystem.write("sub/f.txt", "rel")
        assert sb.filesystem.read("/work/sub/f.txt") == "rel"
        p = sb.process.start("pwd; cat sub/f.txt")
        p.wait()
        assert p.stdout == "/work\nrel"
        sb.filesystem.write_bytes("bin.dat", bytes(range(256)))
        assert sb.filesystem.read_bytes("/work/bin.dat") == bytes(range(256))
        # Many lines, split across reads, arrive whole and in order.
        p = sb.process.start("seq 1 20000")
        p.wait()
        assert p.stdout.split("\n") == [str(i) for i in range(1, 20001)]


def test_watch_events_and_stop(server):
    events = []
    with Sandbox() as sb:
        sb.filesystem.make_dir("/w")
        watcher = sb.filesystem.watch_dir("/w")
        watcher.add_event_listener(events.append)
        watcher.start()
        sb.filesystem.write("/w/a.txt", "1")
        sb.process.start("chmod 600 /w/a.txt; mv /w/a.txt /w/b.txt; rm /w/b.txt; mkdir /w/d").wait()
        deadline = time.monotonic() + 10
        want = {("a.txt", "Create"), ("a.txt", "Write"), ("a.txt", "Chmod"), ("b.txt", "Remove"), ("d", "Create")}
        while time.monotonic() < deadline and not want <= {(e.name, e.operation.value) for e in events}:
            time.sleep(0.1)
        got = {(e.name, e.operation.value) for e in events}
        assert want <= got, events
        assert any(e.operation == kbridge.FilesystemOperation.Rename for e in events)
        assert [e.is_dir for e in events if e.name == "d"] == [True]
        watcher.stop()
        n = len(events)
        sb.filesystem.write("/w/after.txt", "x")
        time.sleep(0.5)
        assert len(events) == n


def test_kernels(server):
    with CodeInterpreter.create() as sb:
        out, results = [], []
        ex = sb.notebook.exec_cell("print('hi'); 6 * 7", on_stdout=out.append, on_result=results.append)
        assert ex.text == "42" and ex.logs.stdout == ["hi\n"] and out[0].line == "hi\n"
        assert results and results[0].is_main_result
        assert sb.notebook.exec_cell("open('/tmp/in-sandbox', 'w').write('k')").error is None
        assert sb.filesystem.read("/tmp/in-sandbox") == "k"  # the kernel runs in the sandbox
        kid = sb.notebook.create_kernel(cwd="/tmp")
        assert sb.notebook.exec_cell("import os; os.getcwd()", kernel_id=kid).text == "'/tmp'"
        assert kid in [k["kernel_id"] for k in sb.notebook.list_kernels()]
        sb.notebook.exec_cell("y = 5", kernel_id=kid)
        sb.notebook.restart_kernel(kid)
        assert sb.notebook.exec_cell("y", kernel_id=kid).error.name == "NameError"
        sb.notebook.shutdown_kernel(kid)
        with pytest.raises(KBridgeError) as info:
            sb.notebook.exec_cell("1", kernel_id=kid)
        assert info.value.code == "not_found"
        assert sb.notebook.exec_cell("1/0").error.name == "ZeroDivisionError"


def test_installs_with_pip(tmp_path):
    """`pip install --no-build-isolation ./clients/python` (Debian's setuptools, no index) in a
    venv that sees Debian's packages (Debian's own python refuses pip installs: PEP 668);
    from a copy, so the source tree gets no build/ or egg-info."""
    import shutil
    src = tmp_path / "src"
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-build-isolation", "--no-index", str(src)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import kbridge, websockets; print(kbridge.Sandbox.__name__, kbridge.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"Sandbox {venv}/lib/"), check.stdout


def test_hostname_uses_the_servers_domain(tmp_path):
    srv = KBridge(tmp_path, "--domain", "sbx.example.test")
    try:
        with Sandbox(url=srv.http, api_key=srv.token) as sb:
            assert sb.get_hostname() == f"{sb.id}.sbx.example.test"
            assert sb.get_hostname(3000) == f"3000-{sb.id}.sbx.example.test"
            sb._domain = None  # as if the create had not said: asked of GET /sandboxes/ID
            assert sb.get_hostname(80) == f"80-{sb.id}.sbx.example.test"
    finally:
        srv.stop()


def test_callbacks_may_call_the_client_and_calls_run_side_by_side(server):
    with CodeInterpreter() as sb:
        done = threading.Event()

        def on_exit(code):  # a callback using the client
            sb.filesystem.write("/tmp/exit-code", str(code))
            done.set()
        ticks = []
        proc = sb.process.start("for i in $(seq 1 20); do echo tick $i; sleep 0.05; done; exit 7",
                                on_stdout=lambda m: ticks.append(m.line), on_exit=on_exit)
        # Meanwhile, from this thread and another: a cell and file calls.
        errors = []

        def other():
            try:
                for i in range(20):
                    sb.filesystem.write(f"/tmp/t{i}", str(i))
                    assert sb.filesystem.read(f"/tmp/t{i}") == str(i)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        t = threading.Thread(target=other)
        t.start()
        assert sb.notebook.exec_cell("import time; time.sleep(0.5); 3 * 3").text == "9"
        t.join(60)
        assert not errors, errors
        proc.wait(timeout=60)
        assert done.wait(10) and sb.filesystem.read("/tmp/exit-code") == "7"
        assert ticks == [f"tick {i}" for i in range(1, 21)]
