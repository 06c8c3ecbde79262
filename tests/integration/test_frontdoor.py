"""The front door as a new user (or a hostile one) meets it: the command line, the banner,
the HTTP/1.1 layer (framing, deadlines, pipelining) and the WebSocket handshake."""
import json
import re
import socket
import struct
import subprocess
import time

import pytest

from conftest import kbridge_bin
from kbharness import KBridge


def run_kbridge(*args, timeout=20, env=None):
    return subprocess.run([kbridge_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _read_response(s):
    """One whole response with a Content-Length from socket s."""
    out = b""
    while b"\r\n\r\n" not in out:
        out += s.recv(4096)
    head, _, rest = out.partition(b"\r\n\r\n")
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    while length and len(rest) < length[0]:
        rest += s.recv(4096)
    return head + b"\r\n\r\n" + rest


def raw(server, data, read_timeout=5.0, until_close=False):
    """Send bytes, return what came back (until the server closes, or a pause)."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(read_timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if not until_close and b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n")
                          if l.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
                # 204 and 304 end with their head (no Content-Length, no body): waiting for
                # a pause would only cost read_timeout.
                if head.split(b" ", 2)[1:2] in ([b"204"], [b"304"]):
                    break
    except socket.timeout:
        pass
    s.close()
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("frontdoor"), "--header-timeout", "2")
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------
#  Command line

def test_version_and_help():
    for flag in ("--version", "-V"):
        r = run_kbridge(flag)
        assert r.returncode == 0 and r.stdout.startswith("kbridge ")
    r = run_kbridge("serve", "--help")
    assert r.returncode == 0
    for option, env in (("--port", "KBRIDGE_PORT"), ("--token-file", "KBRIDGE_TOKEN_FILE"),
                        ("--max-kernels", "KBRIDGE_MAX_KERNELS"),
                        ("--header-timeout", "KBRIDGE_HEADER_TIMEOUT")):
        line = [l for l in r.stdout.splitlines() if l.strip().startswith(option + " ")]
        assert line and "$" + env in line[0], (option, r.stdout)
    assert "default 49999" in r.stdout
    r = run_kbridge("exec", "--help")
    assert r.returncode == 0 and "exit status" in r.stdout and "130" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--port", "abc"], "--port: bad value 'abc' (wanted an integer from 0 to 65535)"),
    (["--port", "99999"], "--port: bad value '99999'"),
    (["--port", "-1"], "--port: bad value '-1'"),
    (["--keep-alive", "-5"], "--keep-alive: bad value '-5'"),
    (["--max-body-bytes", "12XB"], "--max-body-bytes: bad value '12XB'"),
    (["--log-level", "verbose"], "one of debug, info, warn, error"),
    (["--kernel-transport", "udp"], "--kernel-transport: bad value 'udp' (one of tcp, ipc)"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--port"], "--port needs a value"),
])
def test_bad_options_are_usage_errors(args, needle):
    r = run_kbridge("serve", *args)
    assert r.returncode == 2, r
    assert needle in r.stderr, r.stderr
    assert "listening" not in r.stdout


def test_bad_environment_value_names_the_variable():
    import os
    r = run_kbridge("serve", env=dict(os.environ, KBRIDGE_PORT="http"))
    assert r.returncode == 2 and "$KBRIDGE_PORT (--port): bad value 'http'" in r.stderr


def test_unknown_default_kernel_lists_installed_ones():
    r = run_kbridge("serve", "--default-kernel", "nope", "--port", "0")
    assert r.returncode == 1
    assert "'nope' is not installed" in r.stderr and "python3" in r.stderr


def test_port_in_use_exits_with_one_line(server):
    r = run_kbridge("serve", "--port", str(server.port))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"kbridge serve: port {server.port} is in use: another kbridge? pass --port")
    assert r.stdout == ""  # no banner, no token
    r = run_kbridge("serve", "--ip", "192.0.2.7", "--port", "0")
    assert r.returncode == 1 and "--ip 192.0.2.7 is not an address of this machine" in r.stderr
    r = run_kbridge("serve", "--ip", "not-an-ip", "--port", "0")
    assert r.returncode == 1 and "is not an IP address" in r.stderr


def test_options_without_command_serve(tmp_path):
    srv = KBridge.__new__(KBridge)
    proc = subprocess.Popen([kbridge_bin(), "--port", "0", "--token", "x"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        assert "listening on http://" in first
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        proc.stdout.close()
    del srv


def test_banner_names_every_api(server):
    b = server.banner
    port = server.port
    assert f"ws://127.0.0.1:{port}/ws?token={server.token}" in b
    assert f"http://127.0.0.1:{port}/api/kernels?token={server.token}" in b
    assert f"E2B_SANDBOX_URL=http://127.0.0.1:{port}" in b
    assert f"export KBRIDGE_TOKEN={server.token}" in b
    # The console's URL comes first, on the first line.
    assert b.splitlines()[0].split(" listening on ", 1)[1].startswith(
        f"http://127.0.0.1:{port}/#token={server.token} ")


def test_token_file_and_environment_are_not_inherited(tmp_path):
    tf = tmp_path / "token"
    tf.write_text("from-a-file\n")
    tf.chmod(0o600)
    srv = KBridge(tmp_path, "--token-file", str(tf), token=None, env={"KBRIDGE_TOKEN": "from-env"})
    try:
        srv.token = "from-a-file"
        from test_native import NativeClient, run  # noqa: F401  (same harness)
        async def go():
            c = await NativeClient.connect(srv)
            _, end = await c.execute("import os; sorted(k for k in os.environ if k.startswith('KBRIDGE'))")
            await c.close()
            return end
        end = run(go())
        assert end["execution"]["results"][0]["text"] == "[]"
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------
#  HTTP/1.1

def test_root_is_html_for_browsers_json_for_programs(server):
    out = raw(server, b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html,*/*\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"text/html" in out and b"<title>kbridge console</title>" in out
    assert b"content-security-policy: default-src 'none'; script-src 'self';" in out.lower()
    out = raw(server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"application/json" in out and b'"name":"kbridge"' in out


def test_chunked_bodies_are_read(server):
    body = b'{"name": "python3"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 5]), body[i:i + 5]) for i in range(0, len(body), 5))
    req = (b"POST /api/kernels?token=" + server.token.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
           b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n" + chunks + b"0\r\n\r\n")
    out = raw(server, req)
    assert out.startswith(b"HTTP/1.1 201"), out
    kid = json.loads(out.split(b"\r\n\r\n", 1)[1])["id"]
    out = raw(server, b"DELETE /api/kernels/" + kid.encode() + b"?token=" + server.token.encode() +
              b" HTTP/1.1\r\nHost: localhost\r\n\r\n", read_timeout=20)
    assert out.startswith(b"HTTP/1.1 204")


@pytest.mark.parametrize("framing,status", [
    (b"Content-Length: -5", b"400"),
    (b"Content-Length: abc", b"400"),
    (b"Content-Length: 5\r\nContent-Length: 6", b"400"),
    (b"Content-Length: 3\r\nTransfer-Encoding: chunked", b"400"),
    (b"Transfer-Encoding: gzip", b"501"),
])
def test_bad_body_framing_is_refused_and_closes(server, framing, status):
    # A pipelined second request must not be read as part of (or after) the bad one.
    req = (b"POST /api/kernels?token=" + server.token.encode() + b" HTTP/1.1\r\nHost: localhost\r\n" +
           framing + b"\r\n\r\nGET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
    out = raw(server, req, until_close=True)
    assert out.startswith(b"HTTP/1.1 " + status), out
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", out)) == 1 and b"Connection: close" in out


@pytest.mark.parametrize("framing,body", [
    (b"Content-Length: 11", [b'{"name": 5}']),
    (b"Transfer-Encoding: chunked", [b"b\r\n", b'{"name": 5}\r\n', b"0\r\n\r\n"]),
    (b"Transfer-Encoding: chunked", [b"zz\r\n"]),
])
def test_body_in_later_reads_than_the_head(server, framing, body):
    # A body that arrives after its head (as most clients send it) ends while the handler
    # holds the request: answering and releasing it then must not free it under the
    # reader (a use-after-free the hreq fuzz target found).
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(10)
    s.sendall(b"POST /api/kernels?token=" + server.token.encode() + b" HTTP/1.1\r\nHost: localhost\r\n" +
              framing + b"\r\n\r\n")
    for piece in body:
        time.sleep(0.2)
        s.sendall(piece)
    assert _read_response(s).startswith(b"HTTP/1.1 400")
    s.close()
    assert server.alive()
    assert raw(server, b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_malformed_chunked_body_is_400(server):
    req = (b"POST /api/kernels?token=" + server.token.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
           b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    assert raw(server, req, until_close=True).startswith(b"HTTP/1.1 400")


def test_pipelined_requests_are_answered_in_order(server):
    req = b"".join(b"GET /api HTTP/1.1\r\nHost: localhost\r\nX-N: %d\r\n\r\n" % i for i in range(5))
    req += b"GET /nope?token=" + server.token.encode() + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    out = raw(server, req, until_close=True)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == [b"200"] * 5 + [b"404"]


def test_expect_100_continue(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(5)
    body = b'{"name": 5}'
    s.sendall(b"POST /api/kernels?token=" + server.token.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
              b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
    s.sendall(body)
    assert s.recv(4096).startswith(b"HTTP/1.1 400")
    s.close()


def test_incomplete_head_times_out_with_408(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(10)
    t0 = time.monotonic()
    s.sendall(b"GET /api HTTP/1.1\r\nHost: loc")
    out = s.recv(4096)
    assert out.startswith(b"HTTP/1.1 408"), out
    assert 1.5 < time.monotonic() - t0 < 6
    s.close()


def test_half_open_headers_starve_nobody(server):
    # 200 sockets that each send half a head, reopening as they are dropped: a client with
    # a complete request still gets served at once, and existing connections keep working.
    keep = socket.create_connection(("127.0.0.1", server.port))
    keep.settimeout(5)
    keep.sendall(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert _read_response(keep).startswith(b"HTTP/1.1 200")
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"GET /api HTTP/1.1\r\nHo")
        socks.append(s)
    try:
        t0 = time.monotonic()
        out = raw(server, b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200") and time.monotonic() - t0 < 2
        keep.sendall(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _read_response(keep).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
        keep.close()


def test_request_head_too_large_is_431(server):
    out = raw(server, b"GET /api HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
              until_close=True)
    assert out.startswith(b"HTTP/1.1 431")


# ---------------------------------------------------------------------------------------
#  WebSocket handshake and frames

def ws_handshake(server, version=b"13", key=b"dGhlIHNhbXBsZSBub25jZQ==", path=b"/ws"):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(5)
    s.sendall(b"GET " + path + b"?token=" + server.token.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
              b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
              b"\r\nSec-WebSocket-Version: " + version + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: what follows the head belongs to the frames
        if not chunk:
            break
        head += chunk
    return s, head


def test_handshake_refusals_have_a_status_line(server):
    s, head = ws_handshake(server, version=b"8")
    assert head.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in head.replace(b"sec-websocket-version", b"Sec-WebSocket-Version")
    s.close()
    s, head = ws_handshake(server, key=b"short")
    assert head.startswith(b"HTTP/1.1 400")
    s.close()
    s, head = ws_handshake(server, path=b"/api/kernels/00000000-0000-4000-8000-000000000000/channels")
    assert head.startswith(b"HTTP/1.1 404")
    s.close()
    s, head = ws_handshake(server)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    s.close()


def _read_frame(s):
    data = b""
    while len(data) < 2:
        data += s.recv(2 - len(data))
    n = data[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", s.recv(2))[0]
    payload = b""
    while len(payload) < n:
        payload += s.recv(n - len(payload))
    return data[0] & 0x0F, payload


def test_unmasked_client_frame_closes_with_1002(server):
    s, head = ws_handshake(server)
    assert head.startswith(b"HTTP/1.1 101")
    op, payload = _read_frame(s)  # the session message
    assert op == 1 and b'"session"' in payload
    s.sendall(bytes([0x81, 2]) + b"{}")  # not masked
    op, payload = _read_frame(s)
    assert op == 8 and struct.unpack(">H", payload[:2])[0] == 1002
    s.close()
