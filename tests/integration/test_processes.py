"""Processes in a sandbox on the native WebSocket API, with the real binary.

Start (a bash command or an argv) with env vars over the sandbox's, cwd, user, stdin and a
pty; output streamed as text (never splitting a character) or base64; stdin, signals, pty
resize; list; the exit with its code, signal, status and error; a lifetime; connecting
again by pid or tag after the starting connection went away, with the tail replayed first;
flow control (a slow client stops the pipe being read, kbridge's memory stays flat); and
bad input, each with its answer.
"""
import asyncio
import base64
import os
import time

import pytest

from kbharness import KBridge, NativeClient, run, small_asan_quarantine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("processes"), "--keep-alive", "30",
                  "--max-outbound-bytes", "4M", env=small_asan_quarantine(4))
    yield srv
    srv.stop()


async def start(c, **req):
    rid = await c.send(op="process_start", **req)
    m = await c.wait_for(rid)
    assert m["type"] == "process_started", m
    return rid, m["process"]


async def collect(c, rid, timeout=60):
    """Output and exit of the process started (or connected) by request rid."""
    out = {"process_stdout": b"", "process_stderr": b"", "process_pty": b""}
    while True:
        m = await c.wait_for(rid, timeout=timeout)
        if m["type"] == "process_exit":
            return out, m
        assert m["type"] in out, m
        out[m["type"]] += base64.b64decode(m["data"]) if "data" in m else m["text"].encode()


def test_start_env_cwd_user_exit(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            rid, p = await start(c, cmd="echo $FOO; pwd; id -u; echo err >&2; exit 3",
                                 env_vars={"FOO": "bar baz"}, cwd="/tmp", tag="t1")
            assert p["cmd"] == "/bin/bash" and p["args"] == ["-l", "-c", p["args"][2]]
            assert p["tag"] == "t1" and p["cwd"] == "/tmp" and p["env"] == {"FOO": "bar baz"}
            assert p["pid"] > 0 and p["user"] == "root" and p["stdin"] is False and p["pty"] is None
            out, ex = await collect(c, rid)
            assert out["process_stdout"] == b"bar baz\n/tmp\n0\n"
            assert out["process_stderr"] == b"err\n"
            assert ex["exit_code"] == 3 and ex["signal"] is None and ex["status"] == "exit status 3"
            assert ex["error"] is None and ex["pid"] == p["pid"]
            # As user, an argv, relative cwd (against the sandbox's cwd).
            rid, p = await start(c, args=["/bin/sh", "-c", "id -un; pwd"], user="user")
            out, ex = await collect(c, rid)
            assert out["process_stdout"].split(b"\n")[0] == b"user" and ex["exit_code"] == 0
            # A missing program is an error of the start.
            m = await c.request(op="process_start", args=["/no/such/program"])
            assert m["type"] == "request_error" and m["code"] == "bad_request", m
            m = await c.request(op="process_start", cmd="true", cwd="/no/such/dir")
            assert m["type"] == "request_error" and m["code"] == "bad_request", m
        finally:
            await c.close()
    run(go())


def test_default_sandbox(server):
    """The default sandbox (the host, as kbridge's user) runs processes the same way."""
    async def go():
        c = await NativeClient.connect(server, sandbox_id="default")
        try:
            rid, p = await start(c, cmd="echo $KB_X", env_vars={"KB_X": "on the host"}, cwd="/")
            out, ex = await collect(c, rid)
            assert out["process_stdout"] == b"on the host\n" and ex["exit_code"] == 0
            # Files there are the host's, as kbridge's user.
            path = f"/tmp/kbridge-default-{os.getpid()}.txt"
            try:
                m = await c.request(op="files_write", path=path, text="on the host")
                assert m["type"] == "file", m
                assert open(path).read() == "on the host"
                m = await c.request(op="files_read", path=path)
                assert m["type"] == "file_content" and m["text"] == "on the host"
                # A file whose size says 0 is still read whole.
                m = await c.request(op="files_read", path=f"/proc/{server.proc.pid}/smaps")
                assert m["type"] == "file_content" and len(m["text"]) > 8192, m
                assert m["text"].endswith("\n") and "VmFlags" in m["text"].splitlines()[-1]
            finally:
                if os.path.exists(path):
                    os.unlink(path)
        finally:
            await c.close()
    run(go())


def test_utf8_never_split_and_base64_exact(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            # A euro sign written one byte at a time, with pauses: three reads.
            cmd = "printf '\\342'; sleep 0.2; printf '\\202'; sleep 0.2; printf '\\254 ok\\n'; printf '\\377\\n'"
            rid, _ = await start(c, cmd=cmd)
            texts = []
            while True:
                m = await c.wait_for(rid)
                if m["type"] == "process_exit":
                    break
                texts.append(m["text"])
            assert "".join(texts) == "\u20ac ok\n\ufffd\n"
            assert all("\ufffd" not in t for t in texts[:-1]) or texts[-1].endswith("\ufffd\n")
            # base64: bytes exact, even invalid UTF-8 and NUL.
            rid, _ = await start(c, cmd="printf 'a\\000b\\377\\342'", encoding="base64")
            out, ex = await collect(c, rid)
            assert out["process_stdout"] == b"a\x00b\xff\xe2" and ex["exit_code"] == 0
        finally:
            await c.close()
    run(go())


def test_stdin_signal_pty_list(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            rid, p = await start(c, args=["/bin/cat"], stdin=True, tag="cat")
            pid = p["pid"]
            m = await c.request(op="process_input", pid=pid, text="hello \u20ac\n")
            assert m["type"] == "ok" and m["pid"] == pid, m
            m = await c.request(op="process_input", tag="cat", data=base64.b64encode(b"\x01\x02\n").decode())
            assert m["type"] == "ok", m
            m = await c.request(op="process_list")
            assert m["type"] == "processes"
            listed = [x for x in m["processes"] if x["pid"] == pid]
            assert listed and listed[0]["tag"] == "cat" and listed[0]["cmd"] == "/bin/cat"
            assert listed[0]["stdin"] is True and "env" in listed[0] and listed[0]["cwd"]
            m = await c.request(op="process_close_stdin", pid=pid)
            assert m["type"] == "ok", m
            out, ex = await collect(c, rid)
            assert out["process_stdout"] == "hello \u20ac\n".encode() + b"\x01\x02\n"
            assert ex["exit_code"] == 0
            # Not listed any more; signals to it are not_found.
            m = await c.request(op="process_list")
            assert all(x["pid"] != pid for x in m["processes"])
            m = await c.request(op="process_signal", pid=pid, signal="SIGTERM")
            assert m["type"] == "request_error" and m["code"] == "not_found", m
            # Signals by name and number; the exit says which.
            rid, p = await start(c, cmd="sleep 60")
            m = await c.request(op="process_signal", pid=p["pid"], signal="TERM")
            assert m["type"] == "ok", m
            _, ex = await collect(c, rid)
            assert ex["exit_code"] is None and ex["signal"] == 15 and ex["status"] == "signal: terminated"
            # stdin to a process without stdin; close_stdin too.
            rid, p = await start(c, cmd="sleep 60")
            m = await c.request(op="process_input", pid=p["pid"], text="x")
            assert m["type"] == "request_error" and m["code"] == "bad_request" and "stdin" in m["message"]
            m = await c.request(op="process_close_stdin", pid=p["pid"])
            assert m["type"] == "request_error" and m["code"] == "bad_request"
            # A pty: it is a terminal of the size asked, resizable, not to 0x0.
            m = await c.request(op="process_resize", pid=p["pid"], cols=10, rows=10)
            assert m["type"] == "request_error" and m["code"] == "bad_request" and "pty" in m["message"]
            m = await c.request(op="process_signal", pid=p["pid"], signal=9)
            assert m["type"] == "ok"
            _, ex = await collect(c, rid)
            assert ex["signal"] == 9 and ex["status"] == "signal: killed"
            rid, p = await start(c, cmd="stty size; read x; stty size", pty={"cols": 100, "rows": 30})
            assert p["pty"] == {"cols": 100, "rows": 30} and p["stdin"] is True
            m = await c.wait_for(rid)
            assert m["type"] == "process_pty" and "30 100" in m["text"], m
            m = await c.request(op="process_resize", pid=p["pid"], cols=0, rows=0)
            assert m["type"] == "request_error" and m["code"] == "bad_request", m
            m = await c.request(op="process_resize", pid=p["pid"], cols=120, rows=40)
            assert m["type"] == "ok", m
            m = await c.request(op="process_input", pid=p["pid"], text="\n")
            assert m["type"] == "ok", m
            out, ex = await collect(c, rid)
            assert b"40 120" in out["process_pty"] and ex["exit_code"] == 0
        finally:
            await c.close()
    run(go())


def test_timeout_kills(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            t0 = time.monotonic()
            rid, _ = await start(c, cmd="sleep 30", timeout_ms=500)
            _, ex = await collect(c, rid)
            assert time.monotonic() - t0 < 10
            assert ex["signal"] == 9 and ex["timed_out"] is True and "timeout" in ex["error"]
            # Left running with its timer and a listener: kbridge's shutdown ends it, and
            # frees everything (the sanitizer build checks), as it does a pty and a stdin.
            await start(c, cmd="sleep 300", timeout_ms=600000, stdin=True)
            await start(c, cmd="sleep 300", pty={"cols": 80, "rows": 24}, tag="left")
        finally:
            await c.close()
    run(go())


def test_outlives_connection_connect_replays_tail(server):
    async def go():
        c = await NativeClient.connect(server)
        sid = c.session["session_id"]
        sandbox = c.session["sandbox_id"]
        rid, p = await start(c, cmd="for i in 1 2 3; do echo line$i; done; read x; echo after $x",
                             stdin=True, tag="srv")
        m = await c.wait_for(rid)
        assert m["type"] == "process_stdout"
        await c.close()
        await asyncio.sleep(0.5)
        # A second connection to the same sandbox (it resumes the sandbox's session, whose
        # first listener is still there: ids of its own): by tag, the tail replayed first.
        c2 = await NativeClient.connect(server, sandbox_id=sandbox)
        c2._next = 100
        try:
            rid2 = await c2.send(op="process_connect", tag="srv")
            m = await c2.wait_for(rid2)
            assert m["type"] == "process_connected" and m["process"]["pid"] == p["pid"], m
            seen = b""
            while b"line3\n" not in seen:
                m = await c2.wait_for(rid2)
                assert m["type"] == "process_stdout", m
                seen += m["text"].encode()
            assert seen == b"line1\nline2\nline3\n"
            m = await c2.request(op="process_input", pid=p["pid"], text="yes\n")
            assert m["type"] == "ok"
            out, ex = await collect(c2, rid2)
            assert out["process_stdout"] == b"after yes\n" and ex["exit_code"] == 0
            # Unknown pid and tag.
            m = await c2.request(op="process_connect", pid=999999)
            assert m["type"] == "request_error" and m["code"] == "not_found"
            m = await c2.request(op="process_connect", tag="nope")
            assert m["type"] == "request_error" and m["code"] == "not_found"
            m = await c2.request(op="process_signal", pid=999999, signal="KILL")
            assert m["type"] == "request_error" and m["code"] == "not_found"
        finally:
            await c2.close()
        assert sid
    run(go())


def test_tag_taken_and_bad_requests(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            rid, p = await start(c, cmd="sleep 60", tag="dup")
            m = await c.request(op="process_start", cmd="true", tag="dup")
            assert m["type"] == "request_error" and m["code"] == "already_exists", m
            await c.request(op="process_signal", tag="dup", signal="KILL")
            await collect(c, rid)
            for bad in [dict(), dict(cmd="x", args=["y"]), dict(args=[]), dict(cmd="a\u0000b"),
                        dict(cmd="x", user="admin"), dict(cmd="x", pty={"cols": 0, "rows": 0}),
                        dict(cmd="x", env_vars={"A": 1}), dict(cmd="x", timeout_ms=-1),
                        dict(cmd="x", encoding="hex"), dict(args=[1])]:
                m = await c.request(op="process_start", **bad)
                assert m["type"] == "request_error" and m["code"] == "bad_request", (bad, m)
            for op, bad in [("process_input", dict(pid=1)), ("process_input", dict(text="x")),
                            ("process_input", dict(pid=1, data="@@@")),
                            ("process_signal", dict(pid=1, signal="SIGNOPE")),
                            ("process_signal", dict(pid=1, signal=0)),
                            ("process_resize", dict(pid=1, cols=0, rows=0)),
                            ("process_connect", dict(pid=-1))]:
                m = await c.request(op=op, **bad)
                assert m["type"] == "request_error" and m["code"] == "bad_request", (op, bad, m)
        finally:
            await c.close()
    run(go())


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def test_flow_control_yes_complete_rss_flat(server):
    """200 MB of `yes` through one process: all of it arrives, in order, while a slow
    client reads it; kbridge's memory stays flat (the pipe is not read while the client's
    outbox is congested)."""
    total = 200 * 1000 * 1000

    async def go():
        c = await NativeClient.connect(server)
        try:
            rid, _ = await start(c, cmd=f"yes | head -c {total}", encoding="base64")
            base = _rss_kib(server.proc.pid)
            peak = base
            got = 0
            n = 0
            while True:
                m = await c.wait_for(rid, timeout=120)
                if m["type"] == "process_exit":
                    break
                assert m["type"] == "process_stdout", m
                chunk = base64.b64decode(m["data"])
                # In order: "y\n" repeated, so every chunk continues at the right parity.
                if chunk:
                    assert chunk[0:1] == (b"y" if got % 2 == 0 else b"\n")
                got += len(chunk)
                n += 1
                if got < 20 * 1000 * 1000:
                    base = _rss_kib(server.proc.pid)  # after the warm-up
                elif n % 200 == 0:
                    peak = max(peak, _rss_kib(server.proc.pid))
                if n < 400 and n % 50 == 0:
                    await asyncio.sleep(0.2)  # slow at first: the outbox congests
            print("rss base/peak KiB", base, peak)
            assert got == total and m["exit_code"] == 0
            assert peak - base < 32 * 1024, (base, peak)
        finally:
            await c.close()
    run(go())


def test_no_backpressure_without_a_connection(server):
    """With nobody attached the process is read at full speed (its output goes to the
    session's bounded queue and the tail): it finishes, it does not block."""
    async def go():
        c = await NativeClient.connect(server)
        sandbox = c.session["sandbox_id"]
        rid, p = await start(c, cmd="yes | head -c 50000000; echo done", tag="bulk")
        await c.close()
        c2 = await NativeClient.connect(server, sandbox_id=sandbox)
        c2._next = 100  # the session is resumed: its first client's ids are in use
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                m = await c2.request(op="process_list")
                if all(x["pid"] != p["pid"] for x in m["processes"]):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the process blocked with no client attached")
        finally:
            await c2.close()
    run(go())


def test_requests_match_the_schema():
    from kbharness import validate_request
    import jsonschema
    good = [
        {"op": "process_start", "id": 1, "cmd": "ls", "env_vars": {"A": "b"}, "cwd": "/", "user": "user",
         "stdin": True, "pty": {"cols": 80, "rows": 24}, "tag": "t", "timeout_ms": 5, "encoding": "base64"},
        {"op": "process_start", "id": 1, "args": ["/bin/ls", "-l"]},
        {"op": "process_connect", "id": 1, "pid": 3},
        {"op": "process_input", "id": 1, "tag": "t", "text": "x"},
        {"op": "process_input", "id": 1, "pid": 3, "data": "eA=="},
        {"op": "process_close_stdin", "id": 1, "pid": 3},
        {"op": "process_signal", "id": 1, "pid": 3, "signal": "SIGINT"},
        {"op": "process_resize", "id": 1, "pid": 3, "cols": 1, "rows": 1},
        {"op": "process_list", "id": 1},
        {"op": "files_list", "id": 1, "path": "/", "depth": 2},
        {"op": "files_write", "id": 1, "path": "/a", "data": "eA=="},
        {"op": "files_read", "id": 1, "path": "/a", "encoding": "text"},
        {"op": "files_rename", "id": 1, "path": "/a", "new_path": "/b"},
        {"op": "files_make_dir", "id": 1, "path": "/d", "parents": True},
        {"op": "watch_start", "id": 1, "path": "/d", "recursive": True},
        {"op": "watch_stop", "id": 1, "watch_id": "w1"},
        {"op": "sandbox_set_timeout", "id": 1, "timeout_ms": 1000},
        {"op": "sandbox_kill", "id": 1},
    ]
    for r in good:
        validate_request(r)
    bad = [
        {"op": "process_start", "id": 1},
        {"op": "process_start", "id": 1, "cmd": "x", "args": ["y"]},
        {"op": "process_input", "id": 1, "text": "x"},
        {"op": "process_resize", "id": 1, "pid": 3, "cols": 0, "rows": 0},
        {"op": "files_rename", "id": 1, "path": "/a"},
        {"op": "files_write", "id": 1, "path": "/a"},
    ]
    for r in bad:
        with pytest.raises(jsonschema.ValidationError):
            validate_request(r)


def test_tail_is_bounded_to_the_last_mib(server):
    async def go():
        c = await NativeClient.connect(server)
        sandbox = c.session["sandbox_id"]
        rid, p = await start(c, cmd="seq 1 400000; cat >/dev/null", stdin=True, tag="tail")
        got = b""
        while not got.endswith(b"400000\n"):
            m = await c.wait_for(rid)
            got += m["text"].encode()
        await c.close()
        c2 = await NativeClient.connect(server, sandbox_id=sandbox)
        c2._next = 100
        try:
            rid2 = await c2.send(op="process_connect", tag="tail", encoding="base64")
            assert (await c2.wait_for(rid2))["type"] == "process_connected"
            await c2.request(op="process_close_stdin", tag="tail")
            out, ex = await collect(c2, rid2)
            tail = out["process_stdout"]
            assert 512 * 1024 < len(tail) <= 1024 * 1024, len(tail)
            assert got.endswith(tail) and ex["exit_code"] == 0
        finally:
            await c2.close()
    run(go())


def test_two_thousand_at_once_pids_limit(server):
    """2,000 processes asked for at once: the sandbox's pids limit answers the rest with
    busy; kbridge and other sandboxes carry on."""
    async def go():
        c = await NativeClient.connect(server)
        other = await NativeClient.connect(server)
        try:
            ids = [await c.send(op="process_start", cmd="sleep 60") for _ in range(2000)]
            started, refused = [], 0
            for rid in ids:
                m = await c.wait_for(rid, types=["process_started", "request_error"], timeout=300)
                if m["type"] == "process_started":
                    started.append(m["process"]["pid"])
                else:
                    assert m["code"] == "busy" and "limit" in m["message"], m
                    refused += 1
            assert started and started[0] > 0 and len(started) + refused == 2000
            rid, _ = await start(other, cmd="echo fine")
            out, ex = await collect(other, rid)
            assert out["process_stdout"] == b"fine\n" and ex["exit_code"] == 0
            m = await c.request(op="sandbox_kill")
            assert m["type"] == "ok"
        finally:
            await c.close()
            await other.close()
        assert server.alive()
    run(go())
