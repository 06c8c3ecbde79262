"""A request body that arrives after its head, or with Connection: close, as tornado's
HTTP client (Jupyter Server's gateway client) sends it.

The handler answers while the body is being fed, which can end the exchange and free the
request under the body reader's feet: under AddressSanitizer that was a
heap-use-after-free in hreq.c's s_feed_body, and kbridge died on the gateway's first
POST /api/kernels. Each case here is followed by a request on a fresh connection, so a
crash shows as a refused connection.
"""
import json
import socket
import time

import pytest

from kbharness import KBridge


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("bodysplit"))
    yield srv
    srv.stop()


def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lengths = [int(h.split(b":")[1]) for h in head.split(b"\r\n")
               if h.lower().startswith(b"content-length:")]
    length = lengths[0] if lengths else 0  # 204
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk
        rest += chunk
    return int(head.split()[1]), rest[:length], rest[length:]


def request(server, body, close, split):
    head = (f"POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: token {server.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "")
            + "\r\n").encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(30)
    if split:
        s.sendall(head)
        time.sleep(0.2)
        s.sendall(body)
    else:
        s.sendall(head + body)
    return s


@pytest.mark.parametrize("close,split", [(False, True), (True, False), (True, True)])
def test_body_after_head(server, close, split):
    s = request(server, json.dumps({"name": "python3"}).encode(), close, split)
    status, body, _ = read_response(s)
    assert status == 201, body
    kid = json.loads(body)["id"]
    if not close:
        # The connection is kept and serves the next request.
        s.sendall(f"DELETE /api/kernels/{kid} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  f"Authorization: token {server.token}\r\nContent-Length: 0\r\n\r\n".encode())
        assert read_response(s)[0] == 204
    s.close()
    assert server.alive(), server.logs()[-4000:]
    if close:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(30)
        s.sendall(f"DELETE /api/kernels/{kid} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  f"Authorization: token {server.token}\r\nConnection: close\r\n\r\n".encode())
        assert read_response(s)[0] == 204
        s.close()
