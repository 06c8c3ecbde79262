"""envd inside sandboxes, with the real binary: E2B's routing headers (E2b-Sandbox-Id,
E2b-Sandbox-Port), the REST routes (/health, /envs, GET and POST /files) as
e2b-selfhost.md 2 and 4 describe them, the tokens of each sandbox, and bad input.

Uploads: multipart with full-path escaped filenames and several files, octet-stream,
chunked, a large file streamed in bounded memory, cut-off uploads leaving nothing.
"""
import gzip
import http.client
import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from conftest import missing_tool
from kbharness import KBridge, NativeClient, run, small_asan_quarantine

COMPAT = pathlib.Path(__file__).resolve().parents[1] / "compat"

ENVD = 49983
CODE = 49999


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("envd"), "--keep-alive", "1", env=small_asan_quarantine(16))
    yield srv
    srv.stop()


def create(srv, **body):
    status, _, sb = srv.api("POST", "/v2/sandboxes", body or {"templateID": "base"})
    assert status == 201, (status, sb)
    return sb


@pytest.fixture(scope="module")
def sbx(server):
    sb = create(server, templateID="base", envVars={"FOO": "bar"})
    yield sb
    server.api("DELETE", f"/sandboxes/{sb['sandboxID']}")


@pytest.fixture(scope="module")
def other(server):
    sb = create(server)
    yield sb
    server.api("DELETE", f"/sandboxes/{sb['sandboxID']}")


def envd(srv, method, path, sb=None, token=None, body=None, headers=None, port=ENVD,
         chunked=False, sid=None, raw=False):
    """One envd request with E2B's headers: (status, headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    h = {}
    if sb is not None or sid is not None:
        h["E2b-Sandbox-Id"] = sid if sid is not None else sb["sandboxID"]
        h["E2b-Sandbox-Port"] = str(port)
    if token is None and sb is not None:
        token = sb["envdAccessToken"]
    if token:
        h["X-Access-Token"] = token
    h.update(headers or {})
    if chunked:
        conn.putrequest(method, path)
        for k, v in h.items():
            conn.putheader(k, v)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        pieces = body if isinstance(body, list) else [body]
        for p in pieces:
            if p:
                conn.send(b"%x\r\n%s\r\n" % (len(p), p))
        conn.send(b"0\r\n\r\n")
    else:
        conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    return r.status, hdrs, data


def multipart(files, boundary="----formdata-undici-012345678901"):
    """files: [(filename as sent, bytes)]; undici's layout (e2b-selfhost.md 4.3)."""
    out = b""
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def upload(srv, sb, files, query="", chunked=True, **kw):
    body, ct = multipart(files)
    return envd(srv, "POST", "/files" + query, sb, body=body, chunked=chunked,
                headers={"Content-Type": ct}, **kw)


def download(srv, sb, path, **kw):
    from urllib.parse import quote
    return envd(srv, "GET", "/files?path=" + quote(path, safe=""), sb, **kw)


def test_health_routes_per_service(server, sbx):
    # envd: 204 with no token at all; the code interpreter: "OK"; no headers: as before.
    assert envd(server, "GET", "/health", sbx, token="")[0] == 204
    st, _, body = envd(server, "GET", "/health", sbx, token="", port=CODE,
                       headers={"E2B-Traffic-Access-Token": sbx["trafficAccessToken"]})
    assert st == 200 and body == b'"OK"'
    assert envd(server, "GET", "/health")[0] == 200


def test_unknown_sandbox_is_502(server, sbx):
    for port in (ENVD, CODE):
        st, _, body = envd(server, "GET", "/health", sid="nosuchsandbox0", port=port,
                           token=server.token)
        assert st == 502, (port, st, body)
        doc = json.loads(body)
        assert doc["code"] == 502 and doc["sandboxId"] == "nosuchsandbox0"
    # Even with a token that is not kbridge's (a killed sandbox's, say).
    st, _, body = envd(server, "GET", "/files?path=/etc/hostname", sid="nosuchsandbox0",
                       token=sbx["envdAccessToken"])
    assert st == 502
    # Malformed routing headers.
    st, _, body = envd(server, "GET", "/health", headers={"E2b-Sandbox-Id": "x"})
    assert st == 400 and json.loads(body)["code"] == 400
    st, _, body = envd(server, "GET", "/health", sid="Bad-Id", token=server.token)
    assert st == 400


def test_envs(server, sbx):
    st, _, body = envd(server, "GET", "/envs", sbx)
    assert st == 200 and json.loads(body)["FOO"] == "bar"


def test_tokens(server, sbx, other):
    # Its own token, kbridge's: yes. None, a wrong one, another sandbox's: 401.
    assert envd(server, "GET", "/envs", sbx)[0] == 200
    assert envd(server, "GET", "/envs", sbx, token=server.token)[0] == 200
    for bad in ["", "wrong", other["envdAccessToken"], sbx["trafficAccessToken"]]:
        st, _, body = envd(server, "GET", "/envs", sbx, token=bad or "")
        assert st == 401, (bad, st, body)
        assert json.loads(body)["code"] == 401
    # A sandbox's token is nothing on the control plane or in the default sandbox.
    assert server.api("GET", "/v2/sandboxes", token=sbx["envdAccessToken"])[0] == 401
    st, _, _ = envd(server, "GET", "/envs", sid="default", token=sbx["envdAccessToken"])
    assert st == 401
    # The code interpreter of a sandbox takes its traffic token, not another's.
    h = {"E2B-Traffic-Access-Token": sbx["trafficAccessToken"], "Content-Type": "application/json"}
    st, _, body = envd(server, "GET", "/contexts", sbx, token="", port=CODE, headers=h)
    assert st == 200, body
    h["E2B-Traffic-Access-Token"] = other["trafficAccessToken"]
    st, _, body = envd(server, "GET", "/contexts", sbx, token="", port=CODE, headers=h)
    assert st in (401, 403), (st, body)


def test_multipart_upload_and_download(server, sbx):
    st, _, body = upload(server, sbx, [("/home/user/a.txt", "hello é".encode())],
                         query="?path=%2Fhome%2Fuser%2Fa.txt")
    assert st == 200, body
    assert json.loads(body) == [{"name": "a.txt", "type": "file", "path": "/home/user/a.txt"}]
    st, _, data = download(server, sbx, "/home/user/a.txt")
    assert st == 200 and data == "hello é".encode()
    # Relative: from the user's home. As root: root's.
    st, _, data = download(server, sbx, "a.txt")
    assert st == 200 and data == "hello é".encode()
    # Several files, full escaped paths, new directories.
    st, _, body = upload(server, sbx, [("/home/user/m1.txt", b"one"),
                                       ("/home/user/dir/sub/m2.txt", b"two"),
                                       ('/home/user/q%22uo%0Ate é.txt', b"3")])
    assert st == 200, body
    got = json.loads(body)
    assert [e["path"] for e in got] == ["/home/user/m1.txt", "/home/user/dir/sub/m2.txt",
                                        '/home/user/q"uo\nte é.txt']
    assert download(server, sbx, "/home/user/dir/sub/m2.txt")[2] == b"two"
    assert download(server, sbx, '/home/user/q"uo\nte é.txt')[2] == b"3"
    # Not chunked, and an empty file.
    st, _, body = upload(server, sbx, [("/home/user/empty", b"")], chunked=False)
    assert st == 200 and download(server, sbx, "/home/user/empty")[:3:2] == (200, b"")
    # Files of the user are the user's: root's home is not.
    st, _, body = upload(server, sbx, [("/root/x", b"no")])
    assert st == 403, body
    st, _, body = upload(server, sbx, [("/root/x", b"yes")], query="?username=root")
    assert st == 200, body
    assert download(server, sbx, "x", headers={})[0] == 404
    st, _, data = envd(server, "GET", "/files?path=x&username=root", sbx)
    assert st == 200 and data == b"yes"


def test_octet_stream_and_gzip(server, sbx):
    payload = os.urandom(300_000)
    st, _, body = envd(server, "POST", "/files?path=%2Fhome%2Fuser%2Fbin.dat", sbx,
                       body=[payload[:1000], payload[1000:]], chunked=True,
                       headers={"Content-Type": "application/octet-stream"})
    assert st == 200, body
    assert json.loads(body)[0]["path"] == "/home/user/bin.dat"
    st, h, data = download(server, sbx, "/home/user/bin.dat")
    assert st == 200 and data == payload and int(h["content-length"]) == len(payload)
    st, h, data = download(server, sbx, "/home/user/bin.dat", headers={"Accept-Encoding": "gzip, deflate"})
    assert st == 200 and h.get("content-encoding") == "gzip"
    assert gzip.decompress(data) == payload
    st, h, data = download(server, sbx, "/home/user/empty", headers={"Accept-Encoding": "gzip"})
    assert st == 200 and gzip.decompress(data) == b""
    # gzip uploads (the SDK's gzip: true), raw and multipart; 8 MiB from 8 KiB.
    st, _, body = envd(server, "POST", "/files?path=%2Fhome%2Fuser%2Fz.bin", sbx,
                       body=gzip.compress(b"z" * (8 << 20)), chunked=True,
                       headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
    assert st == 200, body
    st, _, data = download(server, sbx, "/home/user/z.bin")
    assert st == 200 and data == b"z" * (8 << 20)
    mp, ct = multipart([("/home/user/gz1", b"one"), ("/home/user/gz2", payload)])
    st, _, body = envd(server, "POST", "/files", sbx, body=gzip.compress(mp), chunked=True,
                       headers={"Content-Type": ct, "Content-Encoding": "gzip"})
    assert st == 200 and len(json.loads(body)) == 2, body
    assert download(server, sbx, "/home/user/gz2")[2] == payload
    # octet-stream without ?path=
    st, _, body = envd(server, "POST", "/files", sbx, body=b"x",
                       headers={"Content-Type": "application/octet-stream"})
    assert st == 400 and json.loads(body)["code"] == 400


def test_download_errors(server, sbx):
    st, _, body = download(server, sbx, "/home/user/nope.txt")
    assert st == 404 and "/home/user/nope.txt" in json.loads(body)["message"]
    assert download(server, sbx, "/home/user")[0] == 400
    assert envd(server, "GET", "/files", sbx)[0] == 400


def test_paths_stay_inside_the_sandbox(server, sbx, tmp_path):
    # ".." stops at the sandbox's root.
    name = f"kb-envd-{uuid.uuid4().hex}"
    st, _, body = upload(server, sbx, [(f"/home/user/../../../../../tmp/{name}", b"inside")])
    assert st == 200 and json.loads(body)[0]["path"] == f"/tmp/{name}"
    assert not os.path.exists(f"/tmp/{name}")
    assert download(server, sbx, f"/tmp/{name}")[2] == b"inside"
    # Symlinks made inside to host paths lead to the sandbox's own files.
    host_file = tmp_path / "secret"
    host_file.write_text("host secret")

    async def mklink():
        c = await NativeClient.connect(server, sandbox_id=sbx["sandboxID"])
        try:
            await c.execute(f"import os; os.symlink({str(host_file)!r}, '/home/user/link'); "
                            f"os.symlink({str(tmp_path)!r}, '/home/user/hostdir')")
        finally:
            await c.close()
    run(mklink())
    for path in ("/home/user/link", "/home/user/hostdir/secret"):
        st, _, body = download(server, sbx, path)
        assert st == 404 and b"host secret" not in body, (path, st, body)
    # Writing through them changes the sandbox, not the host.
    assert upload(server, sbx, [("/home/user/link", b"overwritten")])[0] == 200
    # (through a link to a directory the sandbox does not have: no such directory)
    assert upload(server, sbx, [("/home/user/hostdir/new", b"new")])[0] == 404
    assert host_file.read_text() == "host secret"
    assert not (tmp_path / "new").exists()


def test_sandboxes_are_separate(server, sbx, other):
    assert upload(server, sbx, [("/home/user/mine.txt", b"mine")])[0] == 200
    assert download(server, other, "/home/user/mine.txt")[0] == 404


def test_bad_multipart(server, sbx):
    def post(body, ct, **kw):
        return envd(server, "POST", "/files", sbx, body=body, headers={"Content-Type": ct}, **kw)
    cases = [
        (b"--x\r\n", "multipart/form-data"),                       # no boundary
        (b"--x\r\n", "multipart/form-data; boundary="),            # empty
        (b"--" + b"b" * 80 + b"--\r\n", "multipart/form-data; boundary=" + "b" * 80),
        (b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b--\r\n",
         "multipart/form-data; boundary=b"),                       # no filename
        (b"--b--\r\n", "multipart/form-data; boundary=b"),         # no file
        (b"garbage", "multipart/form-data; boundary=b"),           # no boundary in body
        (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/cut\"\r\n\r\nxx",
         "multipart/form-data; boundary=b"),                       # ends inside the part
        (b"--bjunk\r\n", "multipart/form-data; boundary=b"),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ]
    for body, ct in cases:
        st, _, resp = post(body, ct)
        assert st == 400, (body, ct, st, resp)
        assert json.loads(resp)["code"] == 400
    assert download(server, sbx, "/home/user/cut")[0] == 404
    # A part that is not "file" is ignored; gzip bodies are refused clearly.
    body = (b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nzz\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/ok\"\r\n\r\nok\r\n--b--")
    st, _, resp = post(body, "multipart/form-data; boundary=b")
    assert st == 200 and len(json.loads(resp)) == 1
    st, _, resp = envd(server, "POST", "/files?path=%2Fhome%2Fuser%2Fbr", sbx, body=b"x",
                       headers={"Content-Type": "application/octet-stream", "Content-Encoding": "br"})
    assert st == 415 and json.loads(resp)["code"] == 415
    # gzip that does not decompress, or is cut short: 400, and no file.
    for bad in (b"not gzip at all", gzip.compress(b"y" * 100000)[:-20]):
        st, _, resp = envd(server, "POST", "/files?path=%2Fhome%2Fuser%2Fbadgz", sbx, body=bad,
                           chunked=True, headers={"Content-Type": "application/octet-stream",
                                                  "Content-Encoding": "gzip"})
        assert st == 400 and json.loads(resp)["code"] == 400, resp
    assert download(server, sbx, "/home/user/badgz")[0] == 404
    assert server.alive()


def test_cut_off_upload_leaves_no_file(server, sbx):
    body, ct = multipart([("/home/user/partial.bin", b"x" * 2_000_000)])
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall((f"POST /files HTTP/1.1\r\nHost: 127.0.0.1\r\nE2b-Sandbox-Id: {sbx['sandboxID']}\r\n"
               f"E2b-Sandbox-Port: 49983\r\nX-Access-Token: {sbx['envdAccessToken']}\r\n"
               f"Content-Type: {ct}\r\nContent-Length: {len(body)}\r\n\r\n").encode())
    s.sendall(body[:1_000_000])
    time.sleep(0.5)
    s.close()
    time.sleep(0.5)
    assert download(server, sbx, "/home/user/partial.bin")[0] == 404
    st, _, listing = upload(server, sbx, [("/home/user/after.txt", b"fine")])
    assert st == 200
    # Nothing of it left behind in the directory either (the temporary file went).
    async def ls():
        c = await NativeClient.connect(server, sandbox_id=sbx["sandboxID"])
        try:
            _, end = await c.execute("import os; sorted(os.listdir('/home/user'))")
            return end
        finally:
            await c.close()
    end = run(ls())
    text = next(r["text"] for r in end["execution"]["results"] if r["is_main_result"])
    assert "partial" not in text, text


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_large_upload_and_download_in_bounded_memory(server, sbx):
    size = 512 * 1024 * 1024
    block = os.urandom(1 << 20)
    before = rss_kb(server.proc.pid)
    peak = before
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.putrequest("POST", "/files?path=%2Fhome%2Fuser%2Fbig.bin")
    for k, v in {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983",
                 "X-Access-Token": sbx["envdAccessToken"],
                 "Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}.items():
        conn.putheader(k, v)
    conn.endheaders()
    for i in range(size // len(block)):
        conn.send(b"%x\r\n%s\r\n" % (len(block), block))
        if i % 64 == 0:
            peak = max(peak, rss_kb(server.proc.pid))
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, body
    peak = max(peak, rss_kb(server.proc.pid))
    assert peak - before < 64 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
    # And back, read slowly at first: the server waits for the client.
    conn.request("GET", "/files?path=%2Fhome%2Fuser%2Fbig.bin",
                 headers={"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983",
                          "X-Access-Token": sbx["envdAccessToken"]})
    r = conn.getresponse()
    assert r.status == 200 and int(r.getheader("content-length")) == size
    first = r.read(len(block))
    assert first == block
    time.sleep(1)
    peak = max(peak, rss_kb(server.proc.pid))
    got = len(first)
    while True:
        piece = r.read(1 << 20)
        if not piece:
            break
        got += len(piece)
    assert got == size
    peak = max(peak, rss_kb(server.proc.pid))
    assert peak - before < 64 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
    conn.close()
    envd(server, "GET", "/health", sbx)


def test_code_interpreter_runs_in_the_routed_sandbox(server, sbx, other):
    assert upload(server, sbx, [("/home/user/ci.txt", b"written by envd")])[0] == 200

    def execute(sb, code, token=None):
        h = {"Content-Type": "application/json",
             "E2B-Traffic-Access-Token": token or sb["trafficAccessToken"]}
        st, _, body = envd(server, "POST", "/execute", sb, port=CODE, headers=h,
                           body=json.dumps({"code": code}).encode())
        lines = [json.loads(x) for x in body.splitlines() if x.strip()] if st == 200 else body
        return st, lines

    st, lines = execute(sbx, "open('/home/user/ci.txt').read()")
    assert st == 200, lines
    results = [x for x in lines if x.get("type") == "result"]
    assert results and results[0]["text"] == "written by envd", lines
    # The other sandbox has no such file; its contexts are its own.
    st, lines = execute(other, "import os; os.path.exists('/home/user/ci.txt')")
    assert [x["text"] for x in lines if x.get("type") == "result"] == ["False"], lines
    h = {"Content-Type": "application/json", "E2B-Traffic-Access-Token": sbx["trafficAccessToken"]}
    st, _, body = envd(server, "GET", "/contexts", sbx, port=CODE, headers=h)
    mine = {c["id"] for c in json.loads(body)}
    h["E2B-Traffic-Access-Token"] = other["trafficAccessToken"]
    st, _, body = envd(server, "GET", "/contexts", other, port=CODE, headers=h)
    theirs = {c["id"] for c in json.loads(body)}
    assert mine and theirs and not mine & theirs
    # A context of one sandbox is not found through another.
    ctx = sorted(mine)[0]
    st, _, body = envd(server, "POST", "/execute", other, port=CODE, headers=h,
                       body=json.dumps({"code": "1", "context_id": ctx}).encode())
    assert st == 404, body
    # The default sandbox (no headers) does not list them either.
    st, _, body = envd(server, "GET", "/contexts", headers={"X-Access-Token": server.token})
    assert st == 200 and not {c["id"] for c in json.loads(body)} & (mine | theirs)
    # Unknown paths of a routed code interpreter are its 404s, not the host's APIs.
    st, _, body = envd(server, "GET", "/api/kernels", sbx, port=CODE, headers=h)
    assert st in (403, 404)


def test_real_sdk_files_in_non_debug_mode(tmp_path):
    """e2b and @e2b/code-interpreter from npm (tests/compat), configured as a self-hosted
    E2B user would: the three variables, no debug mode."""
    if not shutil.which("node"):
        missing_tool("node is not installed (scripts/setup.sh --test installs it)")
    if not (COMPAT / "node_modules" / "e2b").is_dir():
        missing_tool("tests/compat/node_modules is missing: run `npm ci` in tests/compat")
    srv = KBridge(tmp_path)
    try:
        env = dict(os.environ, E2B_API_URL=srv.http, E2B_SANDBOX_URL=srv.http, E2B_API_KEY=srv.token)
        env.pop("E2B_DEBUG", None)
        proc = subprocess.run(["node", "--test", "--test-reporter=spec", "e2b_envd.test.mjs"],
                              cwd=COMPAT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:] + srv.logs()[-5000:]
        assert "fail 0" in proc.stdout
    finally:
        srv.stop()


def test_real_sdk_lifecycle_ports_and_tokens(tmp_path):
    """e2b 2.51: create with metadata/envs/timeout, getInfo, list by metadata and paged, a
    short setTimeout ending the sandbox, pause and connect, getHost through the port proxy,
    two sandboxes apart, a wrong and a foreign token refused."""
    if not shutil.which("node"):
        missing_tool("node is not installed (scripts/setup.sh --test installs it)")
    if not (COMPAT / "node_modules" / "e2b").is_dir():
        missing_tool("tests/compat/node_modules is missing: run `npm ci` in tests/compat")
    srv = KBridge(tmp_path)
    try:
        env = dict(os.environ, E2B_API_URL=srv.http, E2B_SANDBOX_URL=srv.http, E2B_API_KEY=srv.token)
        env.pop("E2B_DEBUG", None)
        proc = subprocess.run(["node", "--test", "--test-reporter=spec", "e2b_lifecycle.test.mjs"],
                              cwd=COMPAT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:] + srv.logs()[-5000:]
        assert "fail 0" in proc.stdout
    finally:
        srv.stop()


def test_older_sdk_paths_in_non_debug_mode(tmp_path):
    """e2b 2.50 (npm alias e2b-250): the control-plane paths without /v2 that 2.48-2.50 use
    (create, connect), next to the ones they share with 2.51."""
    if not shutil.which("node"):
        missing_tool("node is not installed (scripts/setup.sh --test installs it)")
    if not (COMPAT / "node_modules" / "e2b-250").is_dir():
        missing_tool("tests/compat/node_modules is missing: run `npm ci` in tests/compat")
    srv = KBridge(tmp_path, "--access-log")
    try:
        env = dict(os.environ, E2B_API_URL=srv.http, E2B_SANDBOX_URL=srv.http, E2B_API_KEY=srv.token)
        env.pop("E2B_DEBUG", None)
        proc = subprocess.run(["node", "--test", "--test-reporter=spec", "e2b_old_paths.test.mjs"],
                              cwd=COMPAT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:] + srv.logs()[-5000:]
        assert "fail 0" in proc.stdout
        logs = srv.logs()
        assert "POST /sandboxes " in logs and "/connect" in logs, logs[-3000:]
    finally:
        srv.stop()


def rpc(srv, sb, method, body, headers=None, raw=None):
    h = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    st, hd, data = envd(srv, "POST", f"/filesystem.Filesystem/{method}", sb,
                        body=raw if raw is not None else json.dumps(body).encode(), headers=h)
    return st, hd, (json.loads(data) if data else None)


def test_filesystem_rpc(server, sbx):
    assert upload(server, sbx, [("/home/user/rpc/f.txt", b"12345")])[0] == 200
    st, hd, doc = rpc(server, sbx, "Stat", {"path": "/home/user/rpc/f.txt"})
    assert st == 200 and hd["content-type"].startswith("application/json"), doc
    e = doc["entry"]
    assert (e["name"], e["type"], e["path"], e["size"]) == ("f.txt", "FILE_TYPE_FILE", "/home/user/rpc/f.txt", "5")
    assert e["permissions"].startswith("-rw") and e["owner"] == "user" and e["mode"] == 0o644
    assert e["modifiedTime"].endswith("Z") and "T" in e["modifiedTime"]
    # relative paths from the user's home; root through Basic auth
    st, _, doc = rpc(server, sbx, "Stat", {"path": "rpc"})
    assert st == 200 and doc["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    st, _, doc = rpc(server, sbx, "Stat", {"path": "."}, headers={"Authorization": "Basic cm9vdDo="})
    assert st == 200 and doc["entry"]["path"] == "/root"
    st, _, doc = rpc(server, sbx, "MakeDir", {"path": "/home/user/rpc/a/b"})
    assert st == 200 and doc["entry"]["path"] == "/home/user/rpc/a/b"
    st, _, doc = rpc(server, sbx, "MakeDir", {"path": "/home/user/rpc/a/b"})
    assert st == 409 and doc["code"] == "already_exists"
    st, _, doc = rpc(server, sbx, "ListDir", {"path": "/home/user/rpc", "depth": 2})
    assert st == 200
    assert sorted(x["path"] for x in doc["entries"]) == ["/home/user/rpc/a", "/home/user/rpc/a/b",
                                                          "/home/user/rpc/f.txt"]
    st, _, doc = rpc(server, sbx, "ListDir", {"path": "/home/user/rpc", "depth": "1"})
    assert st == 200 and len(doc["entries"]) == 2
    st, _, doc = rpc(server, sbx, "Move", {"source": "/home/user/rpc/f.txt", "destination": "/home/user/rpc/a/g.txt"})
    assert st == 200 and doc["entry"]["path"] == "/home/user/rpc/a/g.txt"
    st, _, doc = rpc(server, sbx, "Remove", {"path": "/home/user/rpc/a"})
    assert st == 200 and doc == {}
    st, _, doc = rpc(server, sbx, "Stat", {"path": "/home/user/rpc/a/g.txt"})
    assert st == 404 and doc["code"] == "not_found"
    st, _, doc = rpc(server, sbx, "Remove", {"path": "/home/user/rpc/a"})
    assert st == 404 and doc["code"] == "not_found"
    st, _, doc = rpc(server, sbx, "Stat", {"path": "/root"})
    assert st in (200, 403)  # listing /root as user is refused below
    st, _, doc = rpc(server, sbx, "ListDir", {"path": "/root"})
    assert st == 403 and doc["code"] == "permission_denied"


def test_filesystem_rpc_bad_input(server, sbx, other):
    cases = [
        ("Stat", None, b"{", "invalid_argument"),
        ("Stat", None, b"[1]", "invalid_argument"),
        ("Stat", {"path": 5}, None, "invalid_argument"),
        ("Stat", {}, None, "invalid_argument"),
        ("Move", {"source": "/tmp"}, None, "invalid_argument"),
        ("ListDir", {"path": "/tmp", "depth": "x" * 3}, None, None),
        ("ListDir", {"path": "/tmp", "depth": [1]}, None, "invalid_argument"),
        ("ListDir", {"path": "/tmp", "depth": -1}, None, "invalid_argument"),
        ("Nope", {}, None, "unimplemented"),
        ("WatchDir", {"path": "/tmp"}, None, "unimplemented"),
    ]
    for method, body, raw, code in cases:
        st, _, doc = rpc(server, sbx, method, body, raw=raw)
        if code:
            assert doc["code"] == code and st >= 400, (method, body, raw, st, doc)
    st, _, doc = rpc(server, sbx, "Stat", {"path": "/"}, headers={"Authorization": "Basic bm9ib2R5Og=="})
    assert st == 401 and doc["code"] == "unauthenticated"
    st, _, doc = rpc(server, sbx, "Stat", {"path": "/"}, headers={"Authorization": "Basic !!!"})
    assert st == 400
    st, _, _ = rpc(server, sbx, "Stat", {"path": "/"}, headers={"Content-Type": "text/plain"})
    assert st == 415
    st, _, _ = rpc(server, sbx, "Stat", {"path": "/"}, headers={"Content-Type": "application/proto"})
    assert st == 415
    st, _, body = envd(server, "POST", "/process.Process/StreamInput", sbx, body=b"{}",
                       headers={"Content-Type": "application/json"})
    assert st == 501 and json.loads(body)["code"] == "unimplemented"
    # Tokens hold for RPC too: another sandbox's is refused.
    st, _, _ = rpc(server, sbx, "Stat", {"path": "/"}, headers={"X-Access-Token": other["envdAccessToken"]})
    assert st == 401
    assert server.alive()


def sign(path, op, user, token, expiration=None):
    import base64
    import hashlib
    text = f"{path}:{op}:{user}:{token}" + (f":{expiration}" if expiration is not None else "")
    return "v1_" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip("=")


def test_signed_urls(server, sbx, other):
    from urllib.parse import quote
    # upstream's formula (e2b-selfhost.md 4.5)
    assert sign("/home/user/a.txt", "write", "", "envd-tok-sbx52899238b2") == \
        "v1_qQHvNxkGBWW1G954439+BUK89cBJt0NGkQ7V+okkQrY"
    tok = sbx["envdAccessToken"]
    path = "/home/user/signed.bin"
    body, ct = multipart([(path, b"signed")])
    q = f"/files?path={quote(path, safe='')}&signature={quote(sign(path, 'write', '', tok), safe='')}"
    st, _, resp = envd(server, "POST", q, body=body, headers={"Content-Type": ct}, chunked=True)
    assert st == 200, resp
    exp = int(time.time()) + 60
    q = (f"/files?path={quote(path, safe='')}&signature={quote(sign(path, 'read', '', tok, exp), safe='')}"
         f"&signature_expiration={exp}")
    st, _, data = envd(server, "GET", q)
    assert st == 200 and data == b"signed"
    assert download(server, other, path)[0] == 404
    # expired, tampered, another op, another sandbox's token, as root unsigned: 401
    old = int(time.time()) - 5
    bad = [
        ("GET", f"/files?path={quote(path, safe='')}&signature={quote(sign(path, 'read', '', tok, old), safe='')}&signature_expiration={old}"),
        ("GET", f"/files?path=%2Fetc%2Fpasswd&signature={quote(sign(path, 'read', '', tok), safe='')}"),
        ("GET", f"/files?path={quote(path, safe='')}&signature={quote(sign(path, 'write', '', tok), safe='')}"),
        ("GET", f"/files?path={quote(path, safe='')}&username=root&signature={quote(sign(path, 'read', '', tok), safe='')}"),
        ("GET", f"/files?path={quote(path, safe='')}&signature=v1_x"),
        ("GET", f"/files?path={quote(path, safe='')}&signature="),
    ]
    for method, q in bad:
        st, _, resp = envd(server, method, q)
        assert st == 401 and json.loads(resp)["code"] == 401, (q, st, resp)
    # another sandbox's token signs for that sandbox only
    q = f"/files?path={quote(path, safe='')}&signature={quote(sign(path, 'read', '', other['envdAccessToken']), safe='')}"
    assert envd(server, "GET", q)[0] == 404
    # without a signature (and without headers) /files is not envd's
    assert envd(server, "GET", f"/files?path={quote(path, safe='')}")[0] in (403, 404)


def envelopes(data):
    out, i = [], 0
    while i + 5 <= len(data):
        n = int.from_bytes(data[i + 1:i + 5], "big")
        out.append((data[i], json.loads(data[i + 5:i + 5 + n])))
        i += 5 + n
    assert i == len(data), data
    return out


def watch(srv, sb, raw, headers=None):
    h = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    return envd(srv, "POST", "/filesystem.Filesystem/WatchDir", sb, body=raw, headers=h)


def env_of(msg):
    b = json.dumps(msg).encode()
    return b"\0" + len(b).to_bytes(4, "big") + b


def test_watch_dir_stream(server, sbx):
    assert rpc(server, sbx, "MakeDir", {"path": "/home/user/wd"})[0] == 200
    # The deadline ends it: start first, keepalives at the interval, then the end-stream
    # error; the HTTP status stays 200 (a stream's status would lose the message).
    st, hd, data = watch(server, sbx, env_of({"path": "/home/user/wd"}),
                         headers={"Connect-Timeout-Ms": "2500", "Keepalive-Ping-Interval": "1"})
    assert st == 200 and hd["content-type"].startswith("application/connect+json")
    frames = envelopes(data)
    assert frames[0] == (0, {"start": {}}), frames
    assert (0, {"keepalive": {}}) in frames
    assert frames[-1][0] == 2 and frames[-1][1]["error"]["code"] == "deadline_exceeded"
    # Missing directory: 200 and an end-stream not_found.
    st, _, data = watch(server, sbx, env_of({"path": "/home/user/nowhere"}))
    assert st == 200 and envelopes(data)[-1][1]["error"]["code"] == "not_found"
    # Malformed envelopes.
    good = env_of({"path": "/home/user/wd"})
    for raw in (good[:-1], good + good, b"\x01" + good[1:], b"\0\0\0", b"\0\0\0\0\x02[]",
                env_of({"path": 3}), env_of({"path": "/tmp", "recursive": "yes"})):
        st, _, data = watch(server, sbx, raw)
        assert st == 200, (raw, st)
        assert envelopes(data) [-1][1]["error"]["code"] == "invalid_argument", (raw, data)
    st, _, _ = envd(server, "POST", "/filesystem.Filesystem/WatchDir", sbx, body=good,
                    headers={"Content-Type": "application/json"})
    assert st == 415
    # A client that leaves: its watch goes, the server carries on.
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall((f"POST /filesystem.Filesystem/WatchDir HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"E2b-Sandbox-Id: {sbx['sandboxID']}\r\nE2b-Sandbox-Port: 49983\r\n"
               f"X-Access-Token: {sbx['envdAccessToken']}\r\nContent-Type: application/connect+json\r\n"
               f"Content-Length: {len(good)}\r\n\r\n").encode() + good)
    got = b""
    while b"start" not in got:
        piece = s.recv(4096)
        assert piece, got
        got += piece
    s.close()
    assert rpc(server, sbx, "Stat", {"path": "/home/user/wd"})[0] == 200


def pcall(srv, sb, method, body, headers=None):
    h = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    st, _, data = envd(srv, "POST", f"/process.Process/{method}", sb, body=json.dumps(body).encode(), headers=h)
    return st, (json.loads(data) if data else None)


def start(srv, sb, process, headers=None, **extra):
    h = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    st, _, data = envd(srv, "POST", "/process.Process/Start", sb, body=env_of(dict(process=process, **extra)),
                       headers=h)
    return st, envelopes(data)


def test_process_rpc(server, sbx):
    import base64
    st, frames = start(server, sbx, {"cmd": "/bin/sh", "args": ["-c", "echo $A; echo e >&2; exit 4"],
                                     "envs": {"A": "b"}})
    assert st == 200
    assert "start" in frames[0][1]["event"], frames
    out = b"".join(base64.b64decode(f[1]["event"]["data"]["stdout"]) for f in frames
                   if f[0] == 0 and "data" in f[1]["event"] and "stdout" in f[1]["event"]["data"])
    assert out == b"b\n"
    end = [f[1]["event"]["end"] for f in frames if f[0] == 0 and "end" in f[1]["event"]][0]
    assert end["exitCode"] == 4 and end["status"] == "exit status 4"
    assert frames[-1] == (2, {})
    # Connect-Timeout-Ms is the process's lifetime.
    t0 = time.monotonic()
    st, frames = start(server, sbx, {"cmd": "/bin/sleep", "args": ["30"]}, headers={"Connect-Timeout-Ms": "700"})
    assert time.monotonic() - t0 < 10
    end = [f[1]["event"]["end"] for f in frames if f[0] == 0 and "end" in f[1]["event"]][0]
    assert end["status"] == "signal: killed", end
    # A dropped stream leaves the process running; Connect finds it by pid, SendSignal ends it.
    s = socket.create_connection(("127.0.0.1", server.port))
    body = env_of({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "tag": "sleeper"})
    s.sendall((f"POST /process.Process/Start HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"E2b-Sandbox-Id: {sbx['sandboxID']}\r\nE2b-Sandbox-Port: 49983\r\n"
               f"X-Access-Token: {sbx['envdAccessToken']}\r\nContent-Type: application/connect+json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    got = b""
    while b"pid" not in got:
        got += s.recv(4096)
    s.close()
    time.sleep(0.3)
    st, doc = pcall(server, sbx, "List", {})
    mine = [p for p in doc["processes"] if p.get("tag") == "sleeper"]
    assert st == 200 and len(mine) == 1 and mine[0]["config"]["cmd"] == "/bin/sleep", doc
    pid = mine[0]["pid"]
    assert pcall(server, sbx, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}) == (200, {})
    def gone():
        return not [p for p in pcall(server, sbx, "List", {})[1]["processes"] if p["pid"] == pid]
    deadline = time.monotonic() + 10
    while not gone():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # Unknown pids, bad input.
    for method, body in [("SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}),
                         ("SendInput", {"process": {"pid": 999999}, "input": {"stdin": "eA=="}}),
                         ("CloseStdin", {"process": {"pid": 999999}}),
                         ("Update", {"process": {"pid": 999999}, "pty": {"size": {"cols": 1, "rows": 1}}})]:
        st, doc = pcall(server, sbx, method, body)
        assert st == 404 and doc["code"] == "not_found", (method, doc)
    h = {"Content-Type": "application/connect+json"}
    st, _, data = envd(server, "POST", "/process.Process/Connect", sbx, body=env_of({"process": {"pid": 999999}}), headers=h)
    assert st == 200 and envelopes(data)[-1][1]["error"]["code"] == "not_found"
    for bad in ({"cmd": 5}, {"args": ["x"]}, {"cmd": "/bin/true", "args": [1]}, {"cmd": "/bin/true", "envs": {"A": 1}}):
        st, frames = start(server, sbx, bad)
        assert st == 200 and frames[-1][1]["error"]["code"] == "invalid_argument", (bad, frames)
    st, frames = start(server, sbx, {"cmd": "/no/such/binary"})
    assert st == 200 and frames[-1][0] == 2 and "error" in frames[-1][1], frames
    st, _, data = envd(server, "POST", "/process.Process/Start", sbx, body=b"\0\0\0\0\x09{}",
                       headers=h)
    assert envelopes(data)[-1][1]["error"]["code"] == "invalid_argument"
    assert pcall(server, sbx, "Nope", {})[1]["code"] == "unimplemented"
    assert server.alive()


def test_killing_a_sandbox_ends_its_streams(server):
    sb = create(server)
    h = {"Content-Type": "application/connect+json"}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/process.Process/Start", body=env_of({"process": {"cmd": "/bin/sleep", "args": ["60"]}}),
                 headers=dict(h, **{"E2b-Sandbox-Id": sb["sandboxID"], "E2b-Sandbox-Port": "49983",
                                    "X-Access-Token": sb["envdAccessToken"]}))
    r = conn.getresponse()
    assert r.status == 200
    server.api("DELETE", f"/sandboxes/{sb['sandboxID']}")
    data = r.read()
    frames = envelopes(data)
    assert frames[-1][0] == 2, frames
    conn.close()
    assert envd(server, "GET", "/health", sb, token="")[0] == 502


def test_paused_sandbox_is_502_until_resumed(server):
    sb = create(server)
    sid = sb["sandboxID"]
    st, _, _ = server.api("POST", f"/sandboxes/{sid}/pause", {})
    if st != 204:
        pytest.skip(f"no freezer here (pause: {st})")
    for port in (ENVD, CODE):
        st, _, body = envd(server, "GET", "/health", sb, token="", port=port)
        assert st == 502 and json.loads(body)["message"] == "The sandbox is paused", body
    assert envd(server, "GET", "/envs", sb)[0] == 502
    st, _, _ = server.api("POST", f"/v2/sandboxes/{sid}/connect", {})
    assert st in (200, 201)
    assert envd(server, "GET", "/health", sb, token="")[0] == 204
    assert envd(server, "GET", "/envs", sb)[0] == 200
    server.api("DELETE", f"/sandboxes/{sid}")


def test_polling_watcher(server, sbx, other):
    """CreateWatcher / GetWatcherEvents / RemoveWatcher, as E2B's Python sync SDK polls."""
    assert rpc(server, sbx, "MakeDir", {"path": "/home/user/pw"})[0] == 200
    st, _, doc = rpc(server, sbx, "CreateWatcher", {"path": "/home/user/pw", "recursive": True})
    assert st == 200 and doc["watcherId"], doc
    wid = doc["watcherId"]
    # Nothing yet: an empty list, not an error.
    st, _, doc = rpc(server, sbx, "GetWatcherEvents", {"watcherId": wid})
    assert st == 200 and doc == {"events": []}, doc
    assert rpc(server, sbx, "MakeDir", {"path": "/home/user/pw/sub"})[0] == 200
    assert upload(server, sbx, [("/home/user/pw/sub/f.txt", b"x")])[0] == 200
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e["name"].endswith("f.txt") for e in seen):
        st, _, doc = rpc(server, sbx, "GetWatcherEvents", {"watcherId": wid})
        assert st == 200, doc
        seen += doc["events"]
        time.sleep(0.1)
    assert {"name": "sub", "type": "EVENT_TYPE_CREATE"} in seen, seen
    assert any(e["name"] == "sub/f.txt" and e["type"] in ("EVENT_TYPE_CREATE", "EVENT_TYPE_RENAME")
               for e in seen), seen
    # Polled events are not given twice.
    st, _, doc = rpc(server, sbx, "GetWatcherEvents", {"watcherId": wid})
    assert st == 200 and not any(e["name"] == "sub" and e["type"] == "EVENT_TYPE_CREATE" for e in doc["events"])
    # Another sandbox does not see it, even with the right id.
    st, _, doc = rpc(server, other, "GetWatcherEvents", {"watcherId": wid})
    assert st == 404 and doc["code"] == "not_found", doc
    st, _, doc = rpc(server, sbx, "RemoveWatcher", {"watcherId": wid})
    assert st == 200 and doc == {}, doc
    st, _, doc = rpc(server, sbx, "GetWatcherEvents", {"watcherId": wid})
    assert st == 404 and doc["code"] == "not_found", doc
    # Bad input.
    assert rpc(server, sbx, "GetWatcherEvents", {})[0] == 400
    assert rpc(server, sbx, "RemoveWatcher", {"watcherId": "nope"})[0] == 404
    st, _, doc = rpc(server, sbx, "CreateWatcher", {"path": "/home/user/no-such-dir"})
    assert st == 404 and doc["code"] == "not_found", doc
    assert rpc(server, sbx, "CreateWatcher", {"path": "/home/user/pw", "recursive": "yes"})[0] == 400
