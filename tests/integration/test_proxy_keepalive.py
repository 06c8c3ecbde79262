"""Keep-alive through the port proxy, with the real binary and a scripted server inside
two sandboxes. The server numbers its connections and says, in every answer, which
connection and which request on it this is (X-Conn, X-Req), so a test sees whether two
client requests went up on one upstream connection. Covered: reuse (and its idle
timeout), answers framed by Content-Length, chunked and the close, HEAD/204/304 on a
kept-alive connection, pipelined requests answered in order, each request on a kept
connection authenticated again (a token for sandbox A does not reach sandbox B), a server
dying mid-body (the client's connection closes: no short body passes for complete), a
reused connection the server dropped (retried once), idle connections dropped when the
sandbox pauses, bytes after an answer (never served
as the next one), a hostile server (huge head, bad chunk sizes, no HTTP at all: 502 or a
closed connection, kbridge still serving), request bodies (Content-Length and chunked),
and the idle timeout of tunnels.
"""
import asyncio
import json
import socket
import time

import pytest
import websockets

from conftest import wait_until
from kbharness import KBridge, NativeClient, run

PORT = 8100
WS_PORT = 8101

SERVER = r'''
import socket, sys, threading, json, asyncio
NAME = sys.argv[2]
lock = threading.Lock()
next_id = [0]
closed = []

class Gone(Exception):
    pass

def recv_more(c, buf):
    d = c.recv(65536)
    if not d:
        raise Gone()
    return buf + d

def head(status, cid, nreq, extra=b""):
    return (b"HTTP/1.1 %s\r\nX-Conn: %d\r\nX-Req: %d\r\nX-Name: %s\r\n" % (status, cid, nreq, NAME.encode())
            + extra)

def handle(c, cid):
    buf = b""
    nreq = 0
    drop_next = False
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                buf = recv_more(c, buf)
            h, buf = buf.split(b"\r\n\r\n", 1)
            lines = h.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ")
            hdrs = {}
            for l in lines[1:]:
                k, v = l.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
            body = b""
            if "content-length" in hdrs:
                n = int(hdrs["content-length"])
                while len(buf) < n:
                    buf = recv_more(c, buf)
                body, buf = buf[:n], buf[n:]
            elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    while b"\r\n" not in buf:
                        buf = recv_more(c, buf)
                    line, buf = buf.split(b"\r\n", 1)
                    size = int(line.split(b";")[0], 16)
                    while len(buf) < size + 2:
                        buf = recv_more(c, buf)
                    body += buf[:size]
                    buf = buf[size + 2:]
                    if size == 0:
                        break
            if drop_next:
                return
            nreq += 1
            path = target.split("?")[0]
            if path == "/cl":
                b = ("%s:%d:%s" % (NAME, cid, target)).encode()
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: %d\r\n\r\n" % len(b))
                          + (b"" if method == "HEAD" else b))
            elif path == "/big":
                n = int(target.split("n=", 1)[1])
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: %d\r\n\r\n" % n))
                block = b"x" * (1 << 20)
                while n > 0:
                    c.sendall(block[:min(n, len(block))])
                    n -= min(n, len(block))
            elif path == "/headers":
                b = json.dumps(hdrs).encode()
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: %d\r\n\r\n" % len(b)) + b)
            elif path == "/chunked":
                c.sendall(head(b"200 OK", cid, nreq, b"Transfer-Encoding: chunked\r\n\r\n"))
                for part in (b"ab", b"cd" * 1000, b"ef"):
                    c.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                c.sendall(b"0\r\n\r\n")
            elif path == "/close":
                c.sendall(head(b"200 OK", cid, nreq, b"\r\n") + b"until the close")
                return
            elif path == "/204":
                c.sendall(head(b"204 No Content", cid, nreq, b"\r\n"))
            elif path == "/304":
                c.sendall(head(b"304 Not Modified", cid, nreq, b"ETag: \"v1\"\r\nContent-Length: 7\r\n\r\n"))
            elif path == "/echo":
                b = json.dumps({"len": len(body), "head": body[:8].decode(), "tail": body[-8:].decode(),
                                "te": hdrs.get("transfer-encoding"), "expect": hdrs.get("expect")}).encode()
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: %d\r\n\r\n" % len(b)) + b)
            elif path == "/die":
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: 100000\r\n\r\n") + b"x" * 1000)
                return
            elif path == "/diechunked":
                c.sendall(head(b"200 OK", cid, nreq, b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"))
                return
            elif path == "/badchunk":
                c.sendall(head(b"200 OK", cid, nreq, b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"))
            elif path == "/hugehead":
                c.sendall(head(b"200 OK", cid, nreq, b"X-Big: " + b"a" * 200000 + b"\r\n\r\nbody"))
            elif path == "/tecl":
                c.sendall(head(b"200 OK", cid, nreq, b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                               b"5\r\nhello\r\n0\r\n\r\n"))
            elif path == "/splitreason":
                c.sendall(b"HTTP/1.1 200 OK\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n0\r\n\r\n")
            elif path == "/garbage":
                c.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            elif path == "/extra":
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: 2\r\n\r\nok")
                          + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
            elif path == "/dropnext":
                drop_next = True
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: 2\r\n\r\nok"))
            elif path == "/stats":
                with lock:
                    b = json.dumps({"closed": closed, "opened": next_id[0]}).encode()
                c.sendall(head(b"200 OK", cid, nreq, b"Content-Length: %d\r\n\r\n" % len(b)) + b)
            else:
                c.sendall(head(b"404 Not Found", cid, nreq, b"Content-Length: 0\r\n\r\n"))
    except (Gone, OSError):
        pass
    finally:
        with lock:
            closed.append(cid)
        try:
            c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.close()

def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(64)
    while True:
        c, _ = s.accept()
        with lock:
            next_id[0] += 1
            cid = next_id[0]
        threading.Thread(target=handle, args=(c, cid), daemon=True).start()

def ws():
    import websockets
    async def echo(w, path=None):
        async for m in w:
            await w.send(m)
    async def serve():
        async with websockets.serve(echo, "127.0.0.1", int(sys.argv[3])):
            await asyncio.Future()
    asyncio.run(serve())

threading.Thread(target=ws, daemon=True).start()
main()
'''


def start_code(name):
    return (
        "import subprocess, sys, tempfile, os\n"
        "d = tempfile.mkdtemp()\n"
        f"open(os.path.join(d, 's.py'), 'w').write({SERVER!r})\n"
        f"p = subprocess.Popen([sys.executable, os.path.join(d, 's.py'), '{PORT}', {name!r}, '{WS_PORT}'], "
        "start_new_session=True)\n"
        "print(p.pid)\n")


async def run_in(srv, sandbox_id, code):
    c = await NativeClient.connect(srv, sandbox_id=sandbox_id)
    try:
        _, end = await c.execute(code, timeout=120)
        assert end["type"] == "end_of_execution" and not end["execution"]["error"], end
    finally:
        await c.close()


class Resp:
    def __init__(self, status, headers, body, complete):
        self.status, self.headers, self.body, self.complete = status, headers, body, complete

    def json(self):
        return json.loads(self.body)


class Client:
    """One client connection to kbridge, HTTP/1.1 by hand: requests go out as written,
    answers are read and delimited like a browser would (Content-Length, chunked, the
    close; none for HEAD, 1xx, 204 and 304)."""

    def __init__(self, srv, timeout=30):
        self.srv = srv
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def req(self, method, path, token, host=None, extra="", body=b""):
        host = host or f"127.0.0.1:{self.srv.port}"
        return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nE2B-Traffic-Access-Token: {token}\r\n{extra}\r\n"
                .encode() + body)

    def _more(self):
        if self.eof:
            return False
        d = self.sock.recv(1 << 20)
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read(self, method="GET"):
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise ConnectionError(f"closed before a whole head: {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if status // 100 == 1:
            return self.read(method)
        if method == "HEAD" or status in (204, 304):
            return Resp(status, headers, b"", True)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._more():
                        return Resp(status, headers, body, False)
                line, rest = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    if not self._more():
                        return Resp(status, headers, body, False)
                    rest = self.buf.split(b"\r\n", 1)[1]
                body += rest[:size]
                self.buf = rest[size + 2:]
                if size == 0:
                    return Resp(status, headers, body, True)
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                if not self._more():
                    body, self.buf = self.buf, b""
                    return Resp(status, headers, body, False)
            body, self.buf = self.buf[:n], self.buf[n:]
            return Resp(status, headers, body, True)
        while self._more():
            pass
        body, self.buf = self.buf, b""
        return Resp(status, headers, body, True)

    def get(self, path, token, method="GET", **kw):
        self.send(self.req(method, path, token, **kw))
        return self.read(method)

    def closed(self):
        """Whether kbridge closed the connection (EOF with nothing more)."""
        try:
            self.sock.settimeout(10)
            while self._more():
                pass
            return self.eof
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("proxyka"), "--tunnel-idle", "2")
    try:
        sbs = []
        for name in ("A", "B"):
            st, _, sb = srv.api("POST", "/v2/sandboxes", {"templateID": "base", "timeout": 600})
            assert st == 201, sb
            sbs.append(sb)
            run(run_in(srv, sb["sandboxID"], start_code(name)))
        for sb in sbs:
            def up(sb=sb):
                try:
                    with Client(srv, timeout=5) as c:
                        return c.get(f"/sandboxes/{sb['sandboxID']}/ports/{PORT}/cl",
                                     sb["trafficAccessToken"]).status == 200
                except (OSError, ConnectionError):
                    return False
            wait_until(up, timeout=60, interval=0.2, message="the server in the sandbox did not start")
        yield srv, sbs
    finally:
        srv.stop()


def base(sb):
    return f"/sandboxes/{sb['sandboxID']}/ports/{PORT}"


def test_reuse_and_framings(env):
    srv, (a, _) = env
    tok, p = a["trafficAccessToken"], base(a)
    with Client(srv) as c:
        first = c.get(p + "/cl?1", tok)
        assert first.status == 200 and first.complete and first.body.endswith(b":/cl?1")
        conn, n0 = first.headers["x-conn"], int(first.headers["x-req"])
        # The same client connection, the same upstream connection, request after request:
        # every framing and every answer without a body.
        r = c.get(p + "/chunked", tok)
        assert r.status == 200 and r.complete and r.body == b"ab" + b"cd" * 1000 + b"ef"
        assert r.headers["x-conn"] == conn and int(r.headers["x-req"]) == n0 + 1
        r = c.get(p + "/cl", tok, method="HEAD")
        assert r.status == 200 and r.body == b"" and r.headers["x-conn"] == conn
        assert r.headers["content-length"] == str(len(first.body) - 2)
        r = c.get(p + "/204", tok)
        assert r.status == 204 and r.headers["x-conn"] == conn
        r = c.get(p + "/304", tok)
        assert r.status == 304 and r.headers["x-conn"] == conn and r.headers["etag"] == '"v1"'
        r = c.get(p + "/cl?after", tok)
        assert r.status == 200 and r.complete and r.body.endswith(b":/cl?after")
        assert r.headers["x-conn"] == conn and int(r.headers["x-req"]) == n0 + 5, r.headers
        assert r.headers.get("connection", "").lower() != "close"
        # Host form on the same connection: routed the same way, the same upstream.
        r = c.get("/cl?host", tok, host=f"{PORT}-{a['sandboxID']}.localhost:{srv.port}")
        assert r.status == 200 and r.headers["x-conn"] == conn
        # An answer delimited by the server's close ends the client's connection too.
        r = c.get(p + "/close", tok)
        assert r.status == 200 and r.body == b"until the close" and r.headers["connection"] == "close"
        assert c.closed()
    # A second client gets the idle upstream connection the first one left (the close
    # one went; the one before it was kept).
    with Client(srv) as c:
        r1 = c.get(p + "/cl", tok)
        r2 = c.get(p + "/cl", tok)
        assert r1.headers["x-conn"] == r2.headers["x-conn"]


def test_pipelined_in_order(env):
    srv, (a, _) = env
    tok, p = a["trafficAccessToken"], base(a)
    with Client(srv) as c:
        c.send(c.req("GET", p + "/cl?1", tok) + c.req("GET", p + "/chunked", tok)
               + c.req("HEAD", p + "/cl?3", tok) + c.req("POST", p + "/echo", tok, extra="Content-Length: 5\r\n",
                                                         body=b"hello")
               + c.req("GET", p + "/cl?5", tok))
        r1, r2, r3, r4, r5 = c.read(), c.read(), c.read("HEAD"), c.read(), c.read()
        assert r1.body.endswith(b":/cl?1") and r1.complete
        assert r2.body == b"ab" + b"cd" * 1000 + b"ef" and r2.complete
        assert r3.status == 200 and r3.body == b""
        assert r4.json()["len"] == 5 and r4.json()["head"] == "hello"
        assert r5.body.endswith(b":/cl?5") and r5.complete
        # One upstream connection carried all five, in order.
        assert len({r.headers["x-conn"] for r in (r1, r2, r3, r4, r5)}) == 1
        assert [int(r.headers["x-req"]) for r in (r1, r2, r3, r4, r5)] == sorted(
            int(r.headers["x-req"]) for r in (r1, r2, r3, r4, r5))


def test_each_request_authenticated(env):
    srv, (a, b) = env
    with Client(srv) as c:
        r = c.get(base(a) + "/cl", a["trafficAccessToken"])
        assert r.status == 200 and r.body.startswith(b"A:")
        # Sandbox A's token on the same connection, for sandbox B: refused.
        r = c.get(base(b) + "/cl", a["trafficAccessToken"])
        assert r.status == 403, r.body
        r = c.get(f"/cl", a["trafficAccessToken"], host=f"{PORT}-{b['sandboxID']}.localhost:{srv.port}")
        assert r.status == 403, r.body
        # No token at all: refused too, even right after an authenticated one.
        r = c.get(base(a) + "/cl", "")
        assert r.status == 403, r.body
        # B's own token: B answers, on the same client connection.
        r = c.get(base(b) + "/cl", b["trafficAccessToken"])
        assert r.status == 200 and r.body.startswith(b"B:")
        # The credential is still taken out on a kept connection.
        r = c.get(base(a) + "/headers", a["trafficAccessToken"])
        assert r.status == 200 and "e2b-traffic-access-token" not in r.json()


def test_request_bodies(env):
    srv, (a, _) = env
    tok, p = a["trafficAccessToken"], base(a)
    with Client(srv) as c:
        big = b"0123456789" * 200000
        r = c.get(p + "/echo", tok, method="POST", extra=f"Content-Length: {len(big)}\r\n", body=big)
        assert r.json()["len"] == len(big) and r.json()["tail"] == "23456789"
        conn = r.headers["x-conn"]
        chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        r = c.get(p + "/echo", tok, method="POST", extra="Transfer-Encoding: chunked\r\n", body=chunked)
        assert r.json() == {"len": 11, "head": "hello wo", "tail": "lo world", "te": "chunked", "expect": None}
        assert r.headers["x-conn"] == conn
        # Expect: 100-continue is answered by kbridge; the server does not see it.
        c.send(c.req("POST", p + "/echo", tok, extra="Content-Length: 3\r\nExpect: 100-continue\r\n"))
        time.sleep(0.2)
        c.send(b"abc")
        r = c.read()
        assert r.json()["len"] == 3 and r.json()["expect"] is None and r.headers["x-conn"] == conn
    # A client that half-closes after its request and body still gets the whole answer,
    # then the close.
    with Client(srv) as c:
        c.send(c.req("POST", p + "/echo", tok, extra="Content-Length: 5\r\n", body=b"hello"))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read()
        assert r.status == 200 and r.json()["len"] == 5
        assert c.closed()


def test_upstream_dies_mid_body(env):
    srv, (a, _) = env
    tok, p = a["trafficAccessToken"], base(a)
    for path in ("/die", "/diechunked", "/badchunk"):
        with Client(srv) as c:
            assert c.get(p + "/cl", tok).status == 200  # a kept connection first
            r = c.get(p + path, tok)
            assert r.status == 200 and not r.complete, (path, r.body[:100])
            assert c.closed(), path


def test_hostile_upstream(env):
    srv, (a, _) = env
    tok, p = a["trafficAccessToken"], base(a)
    for path in ("/hugehead", "/garbage", "/splitreason"):
        with Client(srv) as c:
            r = c.get(p + path, tok)
            assert r.status == 502, (path, r.status, r.body[:200])
            assert f"port {PORT}" in r.json()["message"]
    # Transfer-Encoding and Content-Length together: the coding delimits the body, and
    # the client is not given the length to disagree with.
    with Client(srv) as c:
        r = c.get(p + "/tecl", tok)
        assert r.status == 200 and r.body == b"hello" and "content-length" not in r.headers
        r = c.get(p + "/cl", tok)
        assert r.status == 200 and r.body.endswith(b":/cl")
    # Bytes after a complete answer are not served as the next answer: that upstream
    # connection is not kept.
    with Client(srv) as c:
        r = c.get(p + "/extra", tok)
        assert r.status == 200 and r.body == b"ok"
        r2 = c.get(p + "/cl", tok)
        assert r2.status == 200 and r2.body != b"smuggled" and r2.body.endswith(b":/cl")
        assert r2.headers["x-conn"] != r.headers["x-conn"]
    # kbridge serves on.
    st, _, _ = srv.api("GET", "/api/status")
    assert st == 200


def test_dropped_kept_connection_is_retried(env):
    srv, (a, _) = env
    tok, p = a["trafficAccessToken"], base(a)
    with Client(srv) as c:
        r = c.get(p + "/dropnext", tok)
        assert r.status == 200
        # The server closes that connection when the next request arrives on it, without
        # an answer: kbridge asks again on a new one.
        r2 = c.get(p + "/cl", tok)
        assert r2.status == 200 and r2.complete, r2.body
        assert r2.headers["x-conn"] != r.headers["x-conn"]


def test_idle_upstream_times_out(env):
    srv, (a, _) = env
    tok, p = a["trafficAccessToken"], base(a)
    with Client(srv) as c:
        conn = c.get(p + "/cl", tok).headers["x-conn"]
        # Idle for a second: still kept.
        time.sleep(1)
        assert c.get(p + "/cl", tok).headers["x-conn"] == conn
        # Idle for longer than the limit (3 s): kbridge closed it (the server saw the
        # end), and the next request, on the same client connection, goes up on a new one.
        time.sleep(4.5)
        r = c.get(p + "/stats", tok)
        assert r.status == 200 and r.headers["x-conn"] != conn
        assert int(conn) in r.json()["closed"], r.json()


def test_tunnel_idle_timeout(env):
    srv, (a, _) = env
    uri = f"ws://127.0.0.1:{srv.port}/sandboxes/{a['sandboxID']}/ports/{WS_PORT}/?token={a['trafficAccessToken']}"

    async def go():
        async with websockets.connect(uri, open_timeout=10, ping_interval=None) as ws:
            # Traffic keeps it open past the limit (2 s here: --tunnel-idle 2).
            for i in range(6):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
                await asyncio.sleep(0.5)
            # Silence closes it.
            t0 = time.monotonic()
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), timeout=20)
            return time.monotonic() - t0
    waited = run(go())
    assert 1.0 < waited < 15, waited


def test_pause_drops_idle_upstreams(env):
    srv, (_, b) = env
    tok, p, sid = b["trafficAccessToken"], base(b), b["sandboxID"]
    with Client(srv) as c:
        conn = c.get(p + "/cl", tok).headers["x-conn"]
        assert c.get(p + "/cl", tok).headers["x-conn"] == conn  # kept
        assert srv.api("POST", f"/sandboxes/{sid}/pause", {})[0] == 204
        try:
            r = c.get(p + "/cl", tok)
            assert r.status == 503, r.body
        finally:
            assert srv.api("POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 600})[0] == 201
        # The kept connection went with the pause: the next request (the client's
        # connection still open) goes up on a new one, and the server saw the old one end.
        r = c.get(p + "/stats", tok)
        assert r.status == 200 and r.headers["x-conn"] != conn
        def old_closed():
            with Client(srv) as s:
                return int(conn) in s.get(p + "/stats", tok).json()["closed"]
        wait_until(old_closed, timeout=10, interval=0.2, message="the kept connection was not closed")
