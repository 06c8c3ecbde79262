"""Issue 5: the E2B code-interpreter API on the wire, raw.

The official SDK is exercised in test_compat_e2b.py; here the NDJSON stream is read
chunk by chunk off a socket to check what the SDKs rely on (headers at once, ASCII-only
JSON, one whole line per chunk, no blank lines, keepalives, the body ending after
end_of_execution), and every kind of bad input is sent.
"""
import json
import socket
import threading
import time
import urllib.request

import pytest

from kbharness import KBridge


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("e2b"), "--env", "KB_GLOBAL=from-server")
    yield srv
    srv.stop()


class RawResponse:
    def __init__(self, status, headers, chunks, header_time):
        self.status, self.headers, self.chunks, self.header_time = status, headers, chunks, header_time

    @property
    def body(self):
        return b"".join(self.chunks)

    def lines(self):
        return [json.loads(l) for l in self.body.decode("ascii").split("\n") if l]


def raw_post(server, path, body, headers=None, token_header="E2B-Traffic-Access-Token", read=True):
    """POST over a raw socket; returns status, headers and the body's chunks as sent."""
    data = body.encode() if isinstance(body, str) else body
    hdrs = {"Host": f"localhost:{server.port}", "Content-Type": "application/json",
            "Content-Length": str(len(data))}
    if token_header:
        hdrs[token_header] = server.token
    hdrs.update(headers or {})
    s = socket.create_connection(("127.0.0.1", server.port))
    t0 = time.monotonic()
    s.sendall((f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
               + "\r\n").encode() + data)
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    header_time = time.monotonic() - t0
    headers = {}
    while True:
        line = f.readline().decode().strip()
        if not line:
            break
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if not read:
        return s, f, status, headers
    chunks = []
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int(f.readline().strip(), 16)
            if size == 0:
                f.readline()
                break
            chunks.append(f.read(size))
            assert f.read(2) == b"\r\n"
    else:
        chunks.append(f.read(int(headers.get("content-length", 0))))
    s.close()
    return RawResponse(status, headers, chunks, header_time)


def read_chunk(f):
    """The next chunk of a chunked body as sent (one NDJSON line), or None at its end."""
    size = int(f.readline().strip(), 16)
    if size == 0:
        f.readline()
        return None
    data = f.read(size)
    assert f.read(2) == b"\r\n"
    return data


def execute(server, code, **fields):
    r = raw_post(server, "/execute", json.dumps(dict(code=code, **fields)))
    assert r.status == 200, r.body
    return r.lines()


def test_health_needs_no_token(server):
    with urllib.request.urlopen(server.http + "/health", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == "OK"


def test_stream_format(server):
    code = ("import sys\nprint('h\\u00e9llo \\u2028 line\\x0bsep')\nprint('e', file=sys.stderr)\n"
            "from IPython.display import display\ndisplay({'text/plain': \"'q'\", 'text/html': '<b>h</b>'}, raw=True)\n"
            "'main'")
    r = raw_post(server, "/execute", json.dumps({"code": code, "context_id": None, "language": None,
                                                  "env_vars": None}))
    assert r.status == 200
    assert "content-type" not in r.headers and r.headers["transfer-encoding"] == "chunked"
    for chunk in r.chunks:  # one whole line per chunk, ASCII only, no blank lines
        assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1 and chunk.strip()
        assert all(b < 0x80 for b in chunk)
    # A keepalive may come first when the context's kernel takes over 5 s to start (a
    # loaded machine); it is part of the format, checked below, but not of this cell.
    keepalives = [l for l in r.lines() if l["type"] == "keepalive"]
    assert all(l == {"type": "keepalive"} for l in keepalives)
    lines = [l for l in r.lines() if l["type"] != "keepalive"]
    assert [l["type"] for l in lines] == ["number_of_executions", "stdout", "stderr", "result", "result",
                                          "end_of_execution"]
    assert lines[-1] == {"type": "end_of_execution"}
    assert r.chunks[-1] == b'{"type": "end_of_execution"}\n'
    out = lines[1]
    assert list(out) == ["type", "text", "timestamp"]
    assert out["text"] == "h\u00e9llo \u2028 line\x0bsep\n"
    assert out["timestamp"].endswith("+00:00")
    shown = lines[3]
    assert list(shown) == ["type", "text", "html", "extra", "is_main_result"]
    assert shown == {"type": "result", "text": "q", "html": "<b>h</b>", "extra": {}, "is_main_result": False}
    assert lines[4]["text"] == "main" and lines[4]["is_main_result"] is True
    assert lines[0] == {"type": "number_of_executions", "execution_count": lines[0]["execution_count"]}


def test_error_event(server):
    lines = execute(server, "1/0")
    err = [l for l in lines if l["type"] == "error"]
    assert len(err) == 1 and list(err[0]) == ["type", "name", "value", "traceback"]
    assert err[0]["name"] == "ZeroDivisionError" and isinstance(err[0]["traceback"], str)


def test_keepalive_after_five_silent_seconds(server):
    lines = execute(server, "import time; time.sleep(6.5); 'done'")
    assert {"type": "keepalive"} in lines
    assert lines[-2]["text"] == "done" and lines[-1] == {"type": "end_of_execution"}


def test_headers_at_once_while_queued(server):
    ctx = raw_post(server, "/contexts", "{}").lines()[0]
    s, f, status, _ = raw_post(server, "/execute", json.dumps(
        {"code": "import time; time.sleep(2); 'first'", "context_id": ctx["id"]}), read=False)
    assert status == 200
    # The first run is executing (its output is small: it waits in the socket meanwhile).
    assert json.loads(read_chunk(f))["type"] == "number_of_executions"
    r = raw_post(server, "/execute", json.dumps({"code": "'second'", "context_id": ctx["id"]}))
    first = [json.loads(c) for c in iter(lambda: read_chunk(f), None)]
    f.close()
    s.close()
    assert r.header_time < 0.5, "200 and headers come before the queued run starts"
    assert r.lines()[-2]["text"] == "second" and first[-2]["text"] == "first"


def test_client_gone_interrupts_and_next_run_is_clean(server):
    ctx = raw_post(server, "/contexts", "{}").lines()[0]
    s, f, status, _ = raw_post(server, "/execute", json.dumps(
        {"code": "import time\nprint('running', flush=True)\nfor i in range(600): time.sleep(0.1)",
         "context_id": ctx["id"]}), read=False)
    assert status == 200
    # The cell's own code is running (an interrupt right after execute_input could land in
    # IPython's history writing instead, and spoil the next run with its error message).
    while json.loads(read_chunk(f))["type"] != "stdout":
        pass
    f.close()  # the SDK's timeoutMs aborts like this (makefile() holds the socket open)
    s.close()
    t0 = time.monotonic()
    lines = execute(server, "'clean'", context_id=ctx["id"])
    assert time.monotonic() - t0 < 5
    assert [l for l in lines if l["type"] == "error"] == []
    assert lines[-2]["text"] == "clean"


def test_client_gone_while_ipykernel_swallows_the_interrupt(server):
    # The interrupt lands in ipykernel's own code (see SLOW_AFTER_INPUT in test_native):
    # no execute_reply ever comes, and the next run must still start promptly.
    from test_native import SLOW_AFTER_INPUT
    ctx = raw_post(server, "/contexts", "{}").lines()[0]
    assert [l for l in execute(server, SLOW_AFTER_INPUT, context_id=ctx["id"]) if l["type"] == "error"] == []
    s, f, status, _ = raw_post(server, "/execute", json.dumps(
        {"code": "'slow to start'", "context_id": ctx["id"]}), read=False)
    assert status == 200
    # execute_input is out: ipykernel is now in _slow, for 3 s, before the cell's code.
    assert json.loads(read_chunk(f))["type"] == "number_of_executions"
    f.close()
    s.close()
    t0 = time.monotonic()
    lines = execute(server, "'next'", context_id=ctx["id"])
    # ipykernel itself takes 3 s in _slow for this run too; without a reply the queue
    # used to wait out the whole 10 s drain deadline.
    assert time.monotonic() - t0 < 8.5
    assert [l for l in lines if l["type"] == "error"] == []
    assert lines[-2]["text"] == "next"


def test_env_vars_and_global_env(server):
    lines = execute(server, "import os; (os.environ['A'], os.environ['KB_GLOBAL'])",
                    env_vars={"A": "x'\"\\\n\u2713", "KB_GLOBAL": "overridden"})
    assert eval(lines[-2]["text"]) == ("x'\"\\\n\u2713", "overridden")
    lines = execute(server, "import os; (os.getenv('A', 'unset'), os.environ['KB_GLOBAL'])")
    assert eval(lines[-2]["text"]) == ("unset", "from-server")


def test_contexts_api(server, tmp_path):
    r = raw_post(server, "/contexts", json.dumps({"language": "python", "cwd": str(tmp_path)}))
    assert r.status == 200
    ctx = r.lines()[0]
    assert list(ctx) == ["id", "language", "cwd"] and ctx["cwd"] == str(tmp_path)
    with urllib.request.urlopen(urllib.request.Request(
            server.http + "/contexts", headers={"E2B-Traffic-Access-Token": server.token}), timeout=10) as resp:
        listed = json.loads(resp.read())
    assert ctx["id"] in [c["id"] for c in listed]
    # The context is a kbridge kernel: the Jupyter API sees it.
    with urllib.request.urlopen(urllib.request.Request(
            server.http + f"/api/kernels/{ctx['id']}", headers={"Authorization": f"token {server.token}"}),
            timeout=10) as resp:
        assert json.loads(resp.read())["id"] == ctx["id"]
    execute(server, "v = 1", context_id=ctx["id"])
    r = raw_post(server, f"/contexts/{ctx['id']}/restart", b"")
    assert r.status == 200 and r.body == b"null"
    assert execute(server, "v", context_id=ctx["id"])[-2]["name"] == "NameError"
    req = urllib.request.Request(server.http + f"/contexts/{ctx['id']}", method="DELETE",
                                 headers={"E2B-Traffic-Access-Token": server.token})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200 and resp.read() == b"null"
    r = raw_post(server, f"/contexts/{ctx['id']}/restart", b"")
    assert r.status == 404 and r.body == f"Context {ctx['id']} not found".encode()
    assert raw_post(server, "/contexts", json.dumps({"language": "cobol"})).status == 500
    assert raw_post(server, "/contexts", json.dumps({"cwd": "/no/such/dir"})).status == 500


def test_bad_input(server):
    r = raw_post(server, "/execute", "{not json")
    assert r.status == 422 and json.loads(r.body)["detail"][0]["type"] == "json_invalid"
    r = raw_post(server, "/execute", "{}")
    assert r.status == 422
    assert json.loads(r.body)["detail"][0] == {"type": "missing", "loc": ["body", "code"], "msg": "Field required",
                                              "input": {}}
    r = raw_post(server, "/execute", json.dumps({"code": 5}))
    assert r.status == 422 and json.loads(r.body)["detail"][0]["loc"] == ["body", "code"]
    r = raw_post(server, "/execute", json.dumps({"code": "1", "env_vars": {"A": 1}}))
    assert r.status == 422 and json.loads(r.body)["detail"][0]["loc"] == ["body", "env_vars", "A"]
    r = raw_post(server, "/execute", json.dumps({"code": "1", "env_vars": [1]}))
    assert r.status == 422
    r = raw_post(server, "/execute", json.dumps([1, 2]))
    assert r.status == 422
    r = raw_post(server, "/execute", json.dumps({"code": "1", "context_id": "x", "language": "python"}))
    assert r.status == 400 and r.body == b"Only one of context_id or language can be provided"
    r = raw_post(server, "/execute", json.dumps({"code": "1", "context_id": "nope"}))
    assert r.status == 404 and r.body == b"Context nope not found"
    r = raw_post(server, "/execute", json.dumps({"code": "1", "language": "brainfuck"}))
    assert r.status == 500
    r = raw_post(server, "/execute", json.dumps({"code": "x" * (17 << 20)}))
    assert r.status == 413
    for header in (None, "X-Access-Token"):
        r = raw_post(server, "/execute", json.dumps({"code": "1"}), token_header=None,
                     headers={header: "wrong"} if header else None)
        assert r.status == 403
    r = raw_post(server, "/execute", json.dumps({"code": "'via x-access-token'"}), token_header="X-Access-Token")
    assert r.status == 200 and r.lines()[-2]["text"] == "via x-access-token"
    # Still serving, and other contexts unaffected.
    assert execute(server, "1 + 1")[-2]["text"] == "2"


def test_concurrent_contexts_unaffected_by_bad_input(server):
    a = raw_post(server, "/contexts", "{}").lines()[0]
    out = {}

    def worker():
        out["lines"] = execute(server, "for i in range(50000): print(i)", context_id=a["id"])
    t = threading.Thread(target=worker)
    t.start()
    for _ in range(20):
        assert raw_post(server, "/execute", "garbage").status == 422
    t.join()
    text = "".join(l["text"] for l in out["lines"] if l["type"] == "stdout")
    assert text.split() == [str(i) for i in range(50000)]
