"""Shared fixtures: the real kbridge binary, isolated runtime dirs, and orphan checks.

Every test gets its own XDG_RUNTIME_DIR, so every kernel it starts has its connection
file (and therefore its command line) under that directory. After the test, no process
may still mention it and no file may be left in it: nothing orphaned.
"""
import os
import pathlib
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def kbridge_bin():
    path = os.environ.get("KBRIDGE_BIN") or str(ROOT / "build" / "kbridge")
    assert os.access(path, os.X_OK), f"kbridge binary not found at {path}; build first"
    return path


def in_ci():
    """True when the environment variable CI is set (to anything but "", "0" or "false")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def missing_tool(message):
    """A test cannot run for want of a tool (node, npm packages...): skipped locally, but a
    failure under CI, where everything must be installed and a skip would hide that the
    test never ran."""
    if in_ci():
        pytest.fail(f"{message} (CI is set: a missing tool fails the run instead of skipping it)",
                    pytrace=False)
    pytest.skip(message)


def wait_until(predicate, timeout=10.0, interval=0.05, message=None):
    """Poll predicate() until it returns something truthy, which is returned; fail with
    message (or the predicate's name) after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"timed out after {timeout} s waiting for "
                                 f"{getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


async def async_wait_until(predicate, timeout=10.0, interval=0.05, message=None):
    """wait_until for coroutines: predicate may be a plain function or a coroutine function."""
    import asyncio
    import inspect
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"timed out after {timeout} s waiting for "
                                 f"{getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)


def processes_mentioning(text):
    """PIDs of live processes whose command line contains text."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry), cmdline))
    return found


def assert_nothing_left(runtime_dir, timeout=10.0):
    runtime_dir = str(runtime_dir)
    deadline = time.time() + timeout
    while time.time() < deadline:
        procs = processes_mentioning(runtime_dir)
        files = [str(p) for p in pathlib.Path(runtime_dir).rglob("*") if p.is_file()]
        if not procs and not files:
            return
        time.sleep(0.1)
    assert not procs, f"orphaned kernel processes: {procs}"
    assert not files, f"connection files left behind: {files}"


def sandbox_processes(sandbox_id):
    """PIDs of live processes in a sandbox's cgroup (kbridge/<instance>/<id>)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                groups = f.read()
        except OSError:
            continue
        # kbridge/<instance>/<id>, and below it
        if any("/kbridge/" in line and (line.endswith(f"/{sandbox_id}") or f"/{sandbox_id}/" in line)
               for line in groups.splitlines()):
            found.append(int(entry))
    return found


def assert_no_sandbox_left(state_dir, timeout=10.0):
    """No process of any sandbox a server kept in state_dir still runs."""
    base = pathlib.Path(state_dir) / "sandboxes"
    ids = [p.name for p in base.iterdir()] if base.is_dir() else []
    deadline = time.time() + timeout
    left = []
    while time.time() < deadline:
        left = [(i, sandbox_processes(i)) for i in ids]
        left = [x for x in left if x[1]]
        if not left:
            return
        time.sleep(0.1)
    assert not left, f"sandbox processes left behind: {left}"


@pytest.fixture
def runtime_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    yield d
    assert_nothing_left(d)


@pytest.fixture
def kenv(runtime_dir):
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    env.pop("JUPYTER_PATH", None)
    return env
