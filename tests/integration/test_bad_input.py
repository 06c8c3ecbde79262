"""The bad-input catalogue: every case in bad_inputs.py, sent to one running kbridge, must
get exactly the answer written there (HTTP status and body, native request_error code,
WebSocket close code) - never a crash, a hang, a 500 for a client's mistake, or a
connection dropped without a status line.

Throughout, a canary client on its own kernel keeps getting `1+1` answered (a thread of
its own, one cell after another); each case waits until the canary has answered once
more after it, and at the end the canary never failed and the service is still up.

One runner per kind of case (see bad_inputs.py for the fields):
  http      raw bytes on a TCP connection (one write, or several a moment apart)
  rest      a request built from method, path, headers and body (the token added)
  native    JSON (or other) messages on a /ws connection
  ws        a WebSocket handshake by hand, then frames built from specs (unmasked,
            reserved bits, bad lengths...)
  channels  frames on a Jupyter channels connection of a live kernel
"""
import asyncio
import json
import re
import socket
import struct
import threading
import time
import urllib.request
import uuid

import pytest
import websockets

import jws
from bad_inputs import CASES
from kbharness import KBridge, NativeClient, validate_server_message

ROOT_OPTIONS = ("--max-message-bytes", "65536", "--max-body-bytes", "65536", "--header-timeout", "2")


# ---------------------------------------------------------------------------------------
#  The canary

class Canary(threading.Thread):
    """A native client on its own kernel running `1+1` over and over."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.ok = 0
        self.failures = []
        self.latencies = []
        self.ready = threading.Event()
        self.stopping = False
        self.cond = threading.Condition()

    def run(self):
        asyncio.run(self._main())

    async def _main(self):
        while not self.stopping:
            try:
                c = await NativeClient.connect(self.server)
                r = await c.request(op="start_kernel", timeout=120)
                assert r["type"] == "kernel", r
                kid = r["kernel"]["kernel_id"]
                self.ready.set()
                while not self.stopping:
                    t0 = time.monotonic()
                    _, end = await c.execute("1+1", kernel_id=kid, timeout=30)
                    dt = time.monotonic() - t0
                    res = end.get("execution", {}).get("results", [])
                    if end["type"] != "end_of_execution" or not res or res[0].get("text") != "2":
                        raise AssertionError(f"canary got {end}")
                    with self.cond:
                        self.ok += 1
                        self.latencies.append(dt)
                        self.cond.notify_all()
                    await asyncio.sleep(0.02)
                await c.request(op="shutdown_kernel", kernel_id=kid, timeout=60)
                await c.close()
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                if self.stopping:
                    return
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
                self.ready.set()
                await asyncio.sleep(0.5)

    def answered_since(self, count, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.ok <= count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


# ---------------------------------------------------------------------------------------
#  The service under test

class Env:
    pass


def _http_json(srv, method, path, body=None):
    req = urllib.request.Request(f"{srv.http}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"token {srv.token}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("bad-input"), *ROOT_OPTIONS)
    e = Env()
    e.srv = srv
    e.canary = Canary(srv)
    e.canary.start()
    assert e.canary.ready.wait(120) and not e.canary.failures, e.canary.failures
    # A kernel and a session for the cases that need live ids (Jupyter, E2B, channels).
    e.kid = _http_json(srv, "POST", "/api/kernels", {"name": "python3"})["id"]
    e.jsid = _http_json(srv, "POST", "/api/sessions",
                        {"path": "catalogue.ipynb", "type": "notebook", "kernel": {"id": e.kid}})["id"]
    e.subst = {"{token}": srv.token, "{port}": str(srv.port), "{kid}": e.kid, "{jsid}": e.jsid}
    yield e
    e.canary.stopping = True
    e.canary.join(60)
    lat = sorted(e.canary.latencies)
    print(f"\ncanary: {e.canary.ok} answers, p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
          f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms" if lat else "\ncanary: no answers")
    assert not e.canary.failures, e.canary.failures
    assert srv.alive(), srv.logs()[-5000:]
    srv.stop()


def _fill(value, subst):
    """Placeholders ({token}, {kid}, ...) replaced in strings, bytes, lists and dicts."""
    if isinstance(value, bytes):
        for k, v in subst.items():
            value = value.replace(k.encode(), v.encode())
        return value
    if isinstance(value, str):
        for k, v in subst.items():
            value = value.replace(k, v)
        return value
    if isinstance(value, list):
        return [_fill(v, subst) for v in value]
    if isinstance(value, dict):
        return {_fill(k, subst): _fill(v, subst) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------
#  HTTP

def _recv_exact(f, n):
    data = f.read(n)
    if data is None or len(data) < n:
        raise EOFError("connection closed mid-body")
    return data


def _read_response(f):
    """One response from a buffered socket file: (status, headers, body), or None at EOF."""
    line = f.readline()
    if not line:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    assert m, f"not a status line: {line!r}"
    status = int(m.group(1))
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if status // 100 == 1:
        return status, headers, body
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b""):
                    pass
                break
            body += _recv_exact(f, size)
            f.readline()
    elif "content-length" in headers:
        body = _recv_exact(f, int(headers["content-length"]))
    elif status not in (204, 304):
        body = f.read()
    return status, headers, body


def _closed_soon(s, f, timeout=3.0):
    s.settimeout(timeout)
    try:
        return f.read(1) == b""
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionError:
        return True


def run_http(env, case):
    pieces = case["send"] if isinstance(case["send"], list) else [case["send"]]
    pieces = [_fill(p, env.subst) for p in pieces]
    s = socket.create_connection(("127.0.0.1", env.srv.port))
    s.settimeout(case.get("timeout", 15))
    try:
        for i, p in enumerate(pieces):
            if i:
                time.sleep(0.15)
            try:
                s.sendall(p)
            except ConnectionError:
                break  # the server may answer and close before it has everything
        f = s.makefile("rb")
        try:
            first = _read_response(f)
        except ConnectionError:
            first = None
        if first is None:
            return {"status": None, "dropped": True}
        status, headers, body = first
        out = {"status": status, "headers": headers, "body": body}
        ex = case["expect"]
        while status == 100:
            status, headers, body = _read_response(f)
            out.update(status=status, headers=headers, body=body, continued=True)
        if "responses" in ex or ex.get("closes"):
            count = 1
            while True:
                try:
                    more = _read_response(f)
                except (ConnectionError, socket.timeout, TimeoutError):
                    more = None
                if more is None:
                    break
                count += 1
            out["responses"] = count
            out["closes"] = True
        elif "closes" in ex:
            # Still usable and in step: a second request on it is answered.
            s.sendall(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
            nxt = _read_response(f)
            out["closes"] = nxt is None
            out["then"] = nxt[0] if nxt else None
        return out
    finally:
        s.close()


def run_rest(env, case):
    body = case.get("body", b"")
    if isinstance(body, (dict, list)) and not case.get("raw_body"):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    body = _fill(body, env.subst)
    headers = {"Host": "localhost", "Content-Type": "application/json"}
    token = case.get("token", "header")
    if token == "header":
        headers["Authorization"] = "token {token}"
    elif token == "x-access-token":
        headers["X-Access-Token"] = "{token}"
    headers.update(case.get("headers", {}))
    if case.get("chunked"):
        headers["Transfer-Encoding"] = "chunked"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                           for i in range(0, len(body), 7)) + b"0\r\n\r\n"
    else:
        if body or case.get("method", "GET") in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        payload = body
    head = f"{case.get('method', 'GET')} {case['path']} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items() if v is not None) + "\r\n"
    c = dict(case, send=[_fill(head.encode(), env.subst) + payload])
    return run_http(env, c)


def check_http(ex, got, logs):
    assert not got.get("dropped"), f"connection dropped without a status line\n{logs()}"
    assert got["status"] == ex["status"], got
    body = got.get("body", b"")
    doc = None
    if any(k in ex for k in ("json", "message", "message_has", "detail")):
        doc = json.loads(body)
    if "json" in ex:
        _match(ex["json"], doc)
    if "message" in ex:
        assert doc["message"] == ex["message"], doc
    if "message_has" in ex:
        assert ex["message_has"] in doc["message"], doc
    if "detail" in ex:
        # FastAPI's 422: {"detail": [{type, loc, msg, input...}]}
        assert list(doc) == ["detail"] and len(doc["detail"]) == 1, doc
        _match(ex["detail"], doc["detail"][0])
    if "text" in ex:
        assert body.decode() == ex["text"], body
    if "body_has" in ex:
        assert ex["body_has"].encode() in body, body
    for k, v in ex.get("headers", {}).items():
        assert got["headers"].get(k) == v, got["headers"]
    if "closes" in ex:
        assert got["closes"] == ex["closes"], got
        if not ex["closes"]:
            assert got["then"] == 200, got
    if "responses" in ex:
        assert got["responses"] == ex["responses"], got
    if "continued" in ex:
        assert bool(got.get("continued")) == ex["continued"], got


def _match(expected, actual, path="$"):
    """expected is a subset of actual: dicts by key, lists item by item, the rest equal."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is not an object"
        for k, v in expected.items():
            assert k in actual, f"{path}.{k} missing in {actual!r}"
            _match(v, actual[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            _match(e, a, f"{path}[{i}]")
    else:
        assert expected == actual, f"{path}: {actual!r} != {expected!r}"


# ---------------------------------------------------------------------------------------
#  Native messages

def run_native(env, case):
    async def go():
        query = _fill(case.get("query", {}), env.subst)
        url = env.srv.ws_url(**query)
        ws = await websockets.connect(url, subprotocols=["kbridge.v1"], max_size=None)
        out = {"replies": [], "close": None}
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            validate_server_message(hello)
            out["session"] = hello
            for m in _fill(case.get("send", []), env.subst):
                if isinstance(m, (dict, list)) or m is None or isinstance(m, (int, float)):
                    m = json.dumps(m)
                await ws.send(m)
            for _ in range(len(case["expect"].get("replies", []))):
                raw = await asyncio.wait_for(ws.recv(), 30)
                msg = json.loads(raw)
                validate_server_message(msg)
                out["replies"].append(msg)
            # Still up and in step: a list_kernels is answered next.
            await ws.send(json.dumps({"op": "list_kernels", "id": "still-here"}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg.get("id") == "still-here":
                    out["alive"] = msg["type"] == "kernels"
                    break
                out.setdefault("extra", []).append(msg)
        except websockets.ConnectionClosed as e:
            out["close"] = e.rcvd.code if e.rcvd else None
            out["alive"] = False
        finally:
            await ws.close()
        return out
    return asyncio.run(go())


def check_native(ex, got, logs):
    if "session" in ex:
        _match(ex["session"], got["session"])
    assert len(got["replies"]) == len(ex.get("replies", [])), got
    for e, a in zip(ex.get("replies", []), got["replies"]):
        e = dict(e)
        has = e.pop("message_has", None)
        _match(e, a)
        if has:
            assert has in a["message"], a
    assert got.get("alive"), f"the connection did not stay up: {got}"
    assert not got.get("extra"), f"unexpected messages: {got['extra']}"


# ---------------------------------------------------------------------------------------
#  WebSocket by hand

def build_frame(spec):
    data = spec.get("data", b"")
    if isinstance(data, str):
        data = data.encode()
    b0 = (0x80 if spec.get("fin", True) else 0) | (spec.get("rsv", 0) << 4) | spec.get("op", 1)
    n = spec.get("declared", len(data))
    mask = spec.get("mask", True)
    form = spec.get("len") or ("7" if n < 126 else "16" if n < 65536 else "64")
    mbit = 0x80 if mask else 0
    if form == "7":
        head = bytes([b0, mbit | n])
    elif form == "16":
        head = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + data
    key = b"\x11\x22\x33\x44"
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(data))


def _read_frame(f):
    h = f.read(2)
    if len(h) < 2:
        return None
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", f.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", f.read(8))[0]
    return h[0] & 0x0F, _recv_exact(f, n)


def run_ws(env, case):
    if "request" in case:
        req = _fill(case["request"], env.subst)
    else:
        headers = {"Host": "localhost", "Upgrade": "websocket", "Connection": "Upgrade",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
        headers.update(case.get("headers", {}))
        path = case.get("path", "/ws?token={token}")
        req = (f"{case.get('method', 'GET')} {path} HTTP/{case.get('version', '1.1')}\r\n" +
               "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v is not None) + "\r\n").encode()
        req = _fill(req, env.subst)
    s = socket.create_connection(("127.0.0.1", env.srv.port))
    s.settimeout(15)
    f = s.makefile("rb")
    out = {}
    try:
        s.sendall(req)
        try:
            resp = _read_response(f)
        except ConnectionError:
            resp = None
        if resp is None:
            return {"status": None, "dropped": True}
        out["status"], out["headers"], out["body"] = resp
        if out["status"] != 101:
            return out
        texts = []
        # The native API greets first; read that before sending anything.
        if case.get("greeting", True):
            fr = _read_frame(f)
            texts.append(fr[1].decode() if fr else None)
        for spec in case.get("frames", []):
            s.sendall(build_frame(_fill(spec, env.subst)) if isinstance(spec, dict) else spec)
        if case["expect"].get("open"):
            # Still up: a valid request is answered.
            s.sendall(build_frame({"op": 1, "data": case["expect"].get(
                "probe", '{"op": "list_kernels", "id": "still-here"}')}))
        out["close"] = None
        while True:
            try:
                fr = _read_frame(f)
            except (socket.timeout, TimeoutError):
                out["timeout"] = True
                break
            except ConnectionError:
                fr = None
            if fr is None:
                out["eof"] = True
                break
            op, payload = fr
            if op == 8:
                out["close"] = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                out["reason"] = payload[2:].decode("utf-8", "replace")
                break
            if op == 1:
                texts.append(payload.decode())
                if case["expect"].get("open") and "still-here" in payload.decode():
                    out["open"] = True
                    break
        out["texts"] = texts
        return out
    finally:
        s.close()


def check_ws(ex, got, logs):
    assert not got.get("dropped"), f"handshake dropped without a status line\n{logs()}"
    assert got["status"] == ex["status"], got
    for k, v in ex.get("headers", {}).items():
        assert got["headers"].get(k) == v, got["headers"]
    if "message" in ex:
        assert json.loads(got["body"])["message"] == ex["message"], got["body"]
    if "json" in ex:
        _match(ex["json"], json.loads(got["body"]))
    if "close" in ex:
        assert got.get("close") == ex["close"], got
    if "reason_has" in ex:
        assert ex["reason_has"] in got.get("reason", ""), got
    if "text_has" in ex:
        assert any(t and ex["text_has"] in t for t in got["texts"]), got
    if ex.get("open"):
        assert got.get("open"), got


# ---------------------------------------------------------------------------------------
#  Jupyter channels

def run_channels(env, case):
    async def go():
        sid = uuid.uuid4().hex
        url = (f"ws://127.0.0.1:{env.srv.port}/api/kernels/{env.kid}/channels"
               f"?session_id={sid}&token={env.srv.token}")
        proto = case.get("proto", "v1")
        ws = await websockets.connect(url, subprotocols=["v1.kernel.websocket.jupyter.org"]
                                      if proto == "v1" else None, max_size=None)
        out = {"close": None}
        try:
            for m in _fill(case["send"], env.subst):
                await ws.send(m)
            if case["expect"].get("open"):
                # Still up, and the kernel still answers: a kernel_info_request gets its reply.
                probe = jws.make_msg("kernel_info_request", {}, sid)
                await ws.send(jws.v1_encode("shell", probe) if proto == "v1" else
                              jws.legacy_encode("shell", probe))
                while True:
                    frame = await asyncio.wait_for(ws.recv(), 30)
                    m = jws.v1_decode(frame) if proto == "v1" else jws.legacy_decode(frame)
                    if m["parent_header"].get("msg_id") == probe["header"]["msg_id"] and \
                            m["header"]["msg_type"] == "kernel_info_reply":
                        out["open"] = True
                        return out
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        except websockets.ConnectionClosed as e:
            out["close"] = e.rcvd.code if e.rcvd else None
            out["reason"] = e.rcvd.reason if e.rcvd else ""
        except asyncio.TimeoutError:
            out["timeout"] = True
        finally:
            await ws.close()
        return out
    return asyncio.run(go())


def check_channels(ex, got, logs):
    if ex.get("open"):
        assert got.get("open"), got
        return
    assert got.get("close") == ex["close"], got
    if "reason_has" in ex:
        assert ex["reason_has"] in got["reason"], got


RUNNERS = {"http": (run_http, check_http), "rest": (run_rest, check_http),
           "native": (run_native, check_native), "ws": (run_ws, check_ws),
           "channels": (run_channels, check_channels)}


def test_catalogue_is_large_and_unique():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 150, len(CASES)
    kinds = {c["kind"] for c in CASES}
    assert kinds == set(RUNNERS), kinds


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(env, case):
    before = env.canary.ok
    run, check = RUNNERS[case["kind"]]
    got = run(env, case)
    check(case["expect"], got, lambda: env.srv.logs()[-4000:])
    assert env.srv.alive(), env.srv.logs()[-8000:]
    assert env.canary.answered_since(before), f"the canary stalled: {env.canary.failures}"
    assert not env.canary.failures, env.canary.failures
