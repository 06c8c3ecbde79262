"""Ports: a server started inside a sandbox, reached through kbridge's port, with the real
binary. Host form (Host: P-<id>.localhost:<port>) and path form
(/sandboxes/<id>/ports/P/, prefix stripped), HTTP and WebSocket, large transfers both
ways with kbridge's memory bounded, authentication (kbridge's token or the sandbox's own
traffic token, never another sandbox's), a closed port (502 naming it), an unknown sandbox
(404), and two sandboxes with a server on the same port reached separately.
"""
import asyncio
import http.client
import json
import os
import socket
import threading
import time

import pytest
import websockets

from conftest import wait_until
from kbharness import KBridge, NativeClient, run, small_asan_quarantine, validate_sandbox

HTTP_PORT = 8000
WS_PORT = 8001
MB = 1024 * 1024

# The servers each sandbox runs: an HTTP server that says who it is and what it was
# sent, streams n bytes (/big?n=), counts an upload; a WebSocket echo server.
HTTP_SERVER = r'''
import http.server, socketserver, sys, json
NAME = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.startswith("/big?n="):
            n = int(self.path.split("=", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * 65536
            while n > 0:
                k = min(n, len(chunk))
                self.wfile.write(chunk[:k])
                n -= k
            return
        body = json.dumps({"name": NAME, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers["Content-Length"])
        got = 0
        while got < n:
            b = self.rfile.read(min(65536, n - got))
            if not b:
                break
            got += len(b)
        body = json.dumps({"name": NAME, "received": got}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''

WS_SERVER = r'''
import asyncio, sys, websockets
NAME = sys.argv[2]
async def echo(ws, path):
    async for m in ws:
        await ws.send(m if isinstance(m, bytes) else NAME + ":" + m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=None):
        await asyncio.Future()
asyncio.run(main())
'''


def start_servers_code(name):
    """Code for a kernel inside the sandbox: write both servers and start them."""
    return (
        "import subprocess, sys, tempfile, os\n"
        f"d = tempfile.mkdtemp()\n"
        f"open(os.path.join(d, 'h.py'), 'w').write({HTTP_SERVER!r})\n"
        f"open(os.path.join(d, 'w.py'), 'w').write({WS_SERVER!r})\n"
        f"ph = subprocess.Popen([sys.executable, os.path.join(d, 'h.py'), '{HTTP_PORT}', {name!r}], "
        "start_new_session=True)\n"
        f"pw = subprocess.Popen([sys.executable, os.path.join(d, 'w.py'), '{WS_PORT}', {name!r}], "
        "start_new_session=True)\n"
        "print(ph.pid, pw.pid)\n")


async def run_in(srv, sandbox_id, code, timeout=120):
    c = await NativeClient.connect(srv, sandbox_id=sandbox_id)
    try:
        _, end = await c.execute(code, timeout=timeout)
        assert end["type"] == "end_of_execution" and not end["execution"]["error"], end
        return end
    finally:
        await c.close()


def create(srv):
    status, _, sb = srv.api("POST", "/v2/sandboxes", {"templateID": "base", "timeout": 600})
    assert status == 201, (status, sb)
    validate_sandbox(sb)
    return sb


def request(srv, method, path, host=None, headers=None, body=None, timeout=60):
    """(status, headers, body bytes) of one request to kbridge."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        h = dict(headers or {})
        if host:
            h["Host"] = host
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def host_of(srv, sid, port):
    return f"{port}-{sid}.localhost:{srv.port}"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sock = None
    srv = KBridge(tmp_path_factory.mktemp("ports"), "--keep-alive", "1", env=small_asan_quarantine(8))
    try:
        sbs = [create(srv), create(srv)]
        for i, sb in enumerate(sbs):
            run(run_in(srv, sb["sandboxID"], start_servers_code(f"sandbox{i}")))
        for sb in sbs:
            sid = sb["sandboxID"]
            def up(sid=sid):
                try:
                    st, _, _ = request(srv, "GET", f"/sandboxes/{sid}/ports/{HTTP_PORT}/",
                                       headers={"X-Access-Token": srv.token}, timeout=5)
                except OSError:
                    return False
                return st == 200
            wait_until(up, timeout=60, interval=0.2, message=f"the server in {sid} did not start")
            async def ws_up(sid=sid):
                uri = f"ws://127.0.0.1:{srv.port}/sandboxes/{sid}/ports/{WS_PORT}/?token={srv.token}"
                for _ in range(300):
                    try:
                        async with websockets.connect(uri, open_timeout=5):
                            return
                    except (OSError, websockets.exceptions.InvalidStatusCode):
                        await asyncio.sleep(0.2)
                raise AssertionError(f"the WebSocket server in {sid} did not start")
            run(ws_up())
        yield srv, sbs
        # kbridge stops cleanly with a tunnel still open (a WebSocket, upgraded).
        sid = sbs[0]["sandboxID"]
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host_of(srv, sid, WS_PORT)}\r\n"
                     f"X-Access-Token: {srv.token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     .encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 101"), data
    finally:
        srv.stop()
        if sock:
            sock.close()


def test_http_host_and_path_forms(env):
    srv, sbs = env
    sid = sbs[0]["sandboxID"]
    # Host form: any path, as sent; the token in a header, taken out on the way.
    st, _, body = request(srv, "GET", "/some/path?x=1", host=host_of(srv, sid, HTTP_PORT),
                          headers={"X-Access-Token": srv.token, "X-Other": "kept"})
    assert st == 200, body
    seen = json.loads(body)
    assert seen["name"] == "sandbox0" and seen["path"] == "/some/path?x=1"
    assert "x-access-token" not in seen["headers"] and seen["headers"]["x-other"] == "kept"
    assert seen["headers"]["host"] == host_of(srv, sid, HTTP_PORT)
    # Path form: the prefix stripped, ?token= taken out, the rest of the query kept.
    st, _, body = request(srv, "GET", f"/sandboxes/{sid}/ports/{HTTP_PORT}/a/b?x=1&token={srv.token}&y=2")
    assert st == 200, body
    seen = json.loads(body)
    assert seen["name"] == "sandbox0" and seen["path"] == "/a/b?x=1&y=2"
    # Without the trailing slash: the server's root.
    st, _, body = request(srv, "GET", f"/sandboxes/{sid}/ports/{HTTP_PORT}",
                          headers={"Authorization": f"Bearer {srv.token}"})
    assert st == 200 and json.loads(body)["path"] == "/"
    assert "authorization" not in json.loads(body)["headers"]
    # Keep-alive client: several requests, each answered.
    for i in range(3):
        st, _, body = request(srv, "GET", f"/n{i}", host=host_of(srv, sid, HTTP_PORT),
                              headers={"X-Access-Token": srv.token, "Connection": "keep-alive"})
        assert st == 200 and json.loads(body)["path"] == f"/n{i}"
    # A client that half-closes after its request still gets the whole answer.
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    sock.sendall(f"GET /half HTTP/1.1\r\nHost: {host_of(srv, sid, HTTP_PORT)}\r\n"
                 f"X-Access-Token: {srv.token}\r\n\r\n".encode())
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        b = sock.recv(65536)
        if not b:
            break
        data += b
    sock.close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert b" 200 " in head.split(b"\r\n")[0] and json.loads(body)["path"] == "/half", data
    # A body in the same packet as the head (read with it, before the tunnel): not lost.
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    sock.sendall(f"POST /small HTTP/1.1\r\nHost: {host_of(srv, sid, HTTP_PORT)}\r\n"
                 f"X-Access-Token: {srv.token}\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
                 "hello world".encode())
    data = b""
    while True:
        b = sock.recv(65536)
        if not b:
            break
        data += b
    sock.close()
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {"name": "sandbox0", "received": 11}, data
    # E2B's header routing: E2b-Sandbox-Id and E2b-Sandbox-Port, any Host and path.
    st, _, body = request(srv, "GET", "/execute", headers={
        "X-Access-Token": srv.token, "E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(HTTP_PORT)})
    assert st == 200 and json.loads(body)["path"] == "/execute", body
    # The other APIs are untouched.
    st, _, body = request(srv, "GET", "/api/status", headers={"X-Access-Token": srv.token})
    assert st == 200


def test_two_sandboxes_same_port(env):
    srv, sbs = env
    names = []
    for sb in sbs:
        sid = sb["sandboxID"]
        st, _, body = request(srv, "GET", "/", host=host_of(srv, sid, HTTP_PORT),
                              headers={"X-Access-Token": srv.token})
        assert st == 200
        names.append(json.loads(body)["name"])
        st, _, body = request(srv, "GET", f"/sandboxes/{sid}/ports/{HTTP_PORT}/",
                              headers={"X-Access-Token": srv.token})
        assert st == 200
        names.append(json.loads(body)["name"])
    assert names == ["sandbox0", "sandbox0", "sandbox1", "sandbox1"]


def test_auth(env):
    srv, sbs = env
    sid, other = sbs[0]["sandboxID"], sbs[1]["sandboxID"]
    own, others = sbs[0]["trafficAccessToken"], sbs[1]["trafficAccessToken"]
    for host, path in ((host_of(srv, sid, HTTP_PORT), "/"), (None, f"/sandboxes/{sid}/ports/{HTTP_PORT}/")):
        st, _, body = request(srv, "GET", path, host=host)
        assert st == 403, body
        st, _, body = request(srv, "GET", path, host=host, headers={"X-Access-Token": "wrong"})
        assert st == 403, body
        # Another sandbox's traffic token does not open this one.
        st, _, body = request(srv, "GET", path, host=host, headers={"E2B-Traffic-Access-Token": others})
        assert st == 403, body
        # Its own does, and is not passed on.
        st, _, body = request(srv, "GET", path, host=host, headers={"E2B-Traffic-Access-Token": own})
        assert st == 200, body
        assert "e2b-traffic-access-token" not in json.loads(body)["headers"]
    # Its own in ?token= too.
    st, _, body = request(srv, "GET", f"/sandboxes/{sid}/ports/{HTTP_PORT}/?token={own}")
    assert st == 200 and json.loads(body)["path"] == "/"
    # The other sandbox's token works for the other sandbox.
    st, _, body = request(srv, "GET", f"/sandboxes/{other}/ports/{HTTP_PORT}/?token={others}")
    assert st == 200 and json.loads(body)["name"] == "sandbox1"

    # WebSocket upgrades are checked too.
    async def ws_refused(uri, **kw):
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            async with websockets.connect(uri, open_timeout=10, **kw):
                pass
        return e.value.status_code
    base = f"ws://127.0.0.1:{srv.port}/sandboxes/{sid}/ports/{WS_PORT}/"
    assert run(ws_refused(base)) == 403
    assert run(ws_refused(base + f"?token={others}")) == 403
    assert run(ws_refused(f"ws://{host_of(srv, sid, WS_PORT)}/", host="127.0.0.1", port=srv.port)) == 403


def test_websocket_both_forms(env):
    srv, sbs = env

    async def talk(uri, name, **kw):
        async with websockets.connect(uri, open_timeout=10, max_size=None, **kw) as ws:
            for i in range(20):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 10) == f"{name}:m{i}"
            big = os.urandom(4 * MB)
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), 30) == big

    for i, sb in enumerate(sbs):
        sid = sb["sandboxID"]
        run(talk(f"ws://127.0.0.1:{srv.port}/sandboxes/{sid}/ports/{WS_PORT}/?token={srv.token}",
                 f"sandbox{i}"))
        run(talk(f"ws://{host_of(srv, sid, WS_PORT)}/", f"sandbox{i}", host="127.0.0.1",
                 port=srv.port, extra_headers={"X-Access-Token": srv.token}))
        run(talk(f"ws://{host_of(srv, sid, WS_PORT)}/", f"sandbox{i}", host="127.0.0.1",
                 port=srv.port, extra_headers={"X-Access-Token": sb["trafficAccessToken"]}))


def test_closed_port_and_unknown_sandbox(env):
    srv, sbs = env
    sid = sbs[0]["sandboxID"]
    for host, path in ((host_of(srv, sid, 8999), "/x"), (None, f"/sandboxes/{sid}/ports/8999/x")):
        st, _, body = request(srv, "GET", path, host=host, headers={"X-Access-Token": srv.token})
        assert st == 502, body
        msg = json.loads(body)["message"]
        assert "8999" in msg and sid in msg, msg
    for host, path in ((host_of(srv, "kbnosuchsandbox", HTTP_PORT), "/"),
                       (None, f"/sandboxes/kbnosuchsandbox/ports/{HTTP_PORT}/")):
        st, _, body = request(srv, "GET", path, host=host, headers={"X-Access-Token": srv.token})
        assert st == 404, body
        assert "kbnosuchsandbox" in json.loads(body)["message"]
    # The service is fine afterwards.
    st, _, _ = request(srv, "GET", f"/sandboxes/{sid}/ports/{HTTP_PORT}/", headers={"X-Access-Token": srv.token})
    assert st == 200


class RssWatch:
    """Samples kbridge's RSS while a transfer runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.base = rss_kb(pid)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.02)

    def growth_mb(self):
        self.stop = True
        self.thread.join()
        return (self.peak - self.base) / 1024


def test_large_download_and_upload_bounded(env):
    srv, sbs = env
    sid = sbs[0]["sandboxID"]
    size = 50 * MB
    # Warm up (first allocations of buffers) before the baseline.
    request(srv, "GET", f"/sandboxes/{sid}/ports/{HTTP_PORT}/big?n={MB}", headers={"X-Access-Token": srv.token})
    watch = RssWatch(srv.proc.pid)
    # Download: a reader that waits first (the queue fills, reading the server stops),
    # then reads everything.
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    sock.sendall(f"GET /big?n={size} HTTP/1.1\r\nHost: {host_of(srv, sid, HTTP_PORT)}\r\n"
                 f"X-Access-Token: {srv.token}\r\nConnection: close\r\n\r\n".encode())
    time.sleep(2)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, got = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    total = len(got)
    while True:
        b = sock.recv(1 << 20)
        if not b:
            break
        total += len(b)
    sock.close()
    assert total == size
    # Upload, streamed by the client.
    def chunks():
        block = b"y" * (1 << 20)
        for _ in range(size // len(block)):
            yield block
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    conn.putrequest("POST", f"/sandboxes/{sid}/ports/{HTTP_PORT}/upload")
    conn.putheader("X-Access-Token", srv.token)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for c in chunks():
        conn.send(c)
    r = conn.getresponse()
    assert r.status == 200
    assert json.loads(r.read()) == {"name": "sandbox0", "received": size}
    conn.close()
    growth = watch.growth_mb()
    print(f"kbridge RSS growth: {growth:.1f} MB")
    assert growth < 16, f"kbridge grew by {growth:.1f} MB moving 2 x 50 MB"


def test_paused_sandbox_is_503_and_resumes(env):
    srv, sbs = env
    sid = sbs[1]["sandboxID"]
    assert "/sandboxes/SANDBOXID/ports/PORT/" in srv.banner
    assert srv.api("POST", f"/sandboxes/{sid}/pause", {})[0] == 204
    try:
        st, _, body = request(srv, "GET", "/", host=host_of(srv, sid, HTTP_PORT),
                              headers={"X-Access-Token": srv.token})
        assert st == 503 and "paused" in json.loads(body)["message"], body
    finally:
        assert srv.api("POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 600})[0] == 201
    st, _, body = request(srv, "GET", "/", host=host_of(srv, sid, HTTP_PORT),
                          headers={"X-Access-Token": srv.token})
    assert st == 200 and json.loads(body)["name"] == "sandbox1"


def test_default_sandbox_is_the_host(env, tmp_path):
    """The default sandbox (isolation none here: the host) reaches servers on the host."""
    srv, _ = env
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]

    def serve():
        c, _ = s.accept()
        d = b""
        while b"\r\n\r\n" not in d:
            d += c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nhost")
        c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    st, _, body = request(srv, "GET", f"/sandboxes/default/ports/{port}/", headers={"X-Access-Token": srv.token})
    t.join(10)
    s.close()
    assert st == 200 and body == b"host"


def test_custom_domain(tmp_path):
    """--domain: P-ID.<domain> routes (and P-ID.localhost still does)."""
    srv = KBridge(tmp_path, "--domain", "sbx.example.test")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]

    def serve():
        for _ in range(2):
            c, _ = s.accept()
            d = b""
            while b"\r\n\r\n" not in d:
                d += c.recv(4096)
            host = [l for l in d.split(b"\r\n") if l.lower().startswith(b"host:")][0][5:].strip()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(host), host))
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        for host in (f"{port}-default.sbx.example.test", f"{port}-default.localhost:{srv.port}"):
            st, _, body = request(srv, "GET", "/", host=host, headers={"X-Access-Token": srv.token})
            assert st == 200 and body == host.encode(), (st, body)
        # A name under no domain of ours is not a port (and not an allowed Host either).
        st, _, _ = request(srv, "GET", "/", host=f"{port}-default.elsewhere.test",
                           headers={"X-Access-Token": srv.token})
        assert st == 403
    finally:
        t.join(10)
        s.close()
        srv.stop()
