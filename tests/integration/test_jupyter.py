"""Issue 4: the Jupyter Server kernels API — REST and channels WebSocket, raw.

The real JupyterLab client library is exercised in test_compat_jupyterlab.py; here the
protocol is driven by hand, including every kind of bad input, and kbridge's frames are
also decoded with Jupyter Server's own deserializers.
"""
import asyncio
import json
import os
import struct
import urllib.request

import pytest
import websockets

from conftest import async_wait_until, wait_until
from jws import Channels, V1, execute_msg, make_msg, v1_frame
from kbharness import KBridge, NativeClient, run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # With the default warm pools: the kernels these tests start are mostly warm ones.
    srv = KBridge(tmp_path_factory.mktemp("jupyter"), pools=True)
    yield srv
    srv.stop()


def http(server, method, path, body=None, headers=None, token=True):
    hdrs = dict(headers or {})
    if token:
        hdrs.setdefault("Authorization", f"token {server.token}")
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(server.http + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, r.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw
        return e.code, e.headers, payload


def start_kernel(server, **body):
    status, headers, model = http(server, "POST", "/api/kernels?1795784141253",
                                  json.dumps(body or {"name": "python3"}),
                                  {"Content-Type": "text/plain;charset=UTF-8"})
    assert status == 201, model
    assert headers["Location"] == f"/api/kernels/{model['id']}"
    return model


def test_rest_basics(server):
    status, _, body = http(server, "GET", "/api", token=False)
    assert status == 200 and "version" in body
    status, _, body = http(server, "GET", "/api/status")
    assert status == 200 and {"connections", "kernels", "last_activity", "started"} <= set(body)
    status, _, specs = http(server, "GET", "/api/kernelspecs?123")
    assert status == 200 and specs["default"] == "python3"
    py = specs["kernelspecs"]["python3"]
    assert py["name"] == "python3" and py["spec"]["language"] == "python"
    assert isinstance(py["spec"]["argv"], list) and py["spec"]["display_name"]
    assert isinstance(py["resources"], dict)
    assert py["resources"], "the Debian python3 kernelspec ships logos"
    for url in py["resources"].values():  # every advertised resource is served
        req = urllib.request.Request(server.http + url, headers={"Authorization": f"token {server.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
            assert data.startswith(b"\x89PNG") if url.endswith(".png") else b"<svg" in data
    assert http(server, "GET", "/kernelspecs/python3/../../../etc/passwd")[0] == 404
    assert http(server, "GET", "/api/kernelspecs/python3")[2]["name"] == "python3"


def test_kernel_lifecycle_over_rest(server):
    model = start_kernel(server)
    kid = model["id"]
    assert set(model) >= {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["name"] == "python3"
    status, _, listed = http(server, "GET", "/api/kernels")
    assert status == 200 and kid in [k["id"] for k in listed]
    assert http(server, "GET", f"/api/kernels/{kid}")[2]["id"] == kid
    # POST returns while the kernel is still starting; an interrupt then kills it (see
    # test_interrupt_while_starting_keeps_the_kernel): interrupt the started kernel here.
    wait_until(lambda: http(server, "GET", f"/api/kernels/{kid}")[2]["execution_state"] != "starting",
               timeout=30, message="the kernel did not finish starting")
    assert http(server, "POST", f"/api/kernels/{kid}/interrupt", b"")[0] == 204
    status, _, restarted = http(server, "POST", f"/api/kernels/{kid}/restart", b"",
                                {"Content-Type": "application/json"})
    assert status == 200 and restarted["id"] == kid
    assert restarted["execution_state"] in ("idle", "busy")
    assert http(server, "DELETE", f"/api/kernels/{kid}")[0] == 204
    status, _, err = http(server, "GET", f"/api/kernels/{kid}")
    assert status == 404 and err["message"].startswith("Kernel does not exist") and err["reason"] is None
    assert kid not in [k["id"] for k in http(server, "GET", "/api/kernels")[2]]


def test_interrupt_while_starting_keeps_the_kernel(tmp_path):
    # KNOWN BUG (reported, not fixed here): a signal-mode interrupt that arrives while the
    # kernel process is still starting (POST /api/kernels has already answered) lands
    # before Python installs its SIGINT handler and kills the process: the interrupt gets
    # 500 "kernel is dead" and the kernel is restarted. Skipped unless
    # KBRIDGE_TEST_KNOWN_BUGS is set.
    if not os.environ.get("KBRIDGE_TEST_KNOWN_BUGS"):
        pytest.skip("known bug: an interrupt during kernel start kills the kernel")
    srv = KBridge(tmp_path)
    try:
        for _ in range(5):
            kid = start_kernel(srv)["id"]
            assert http(srv, "POST", f"/api/kernels/{kid}/interrupt", b"")[0] == 204
            wait_until(lambda: http(srv, "GET", f"/api/kernels/{kid}")[2]["execution_state"] == "idle",
                       timeout=30)
            assert http(srv, "DELETE", f"/api/kernels/{kid}")[0] == 204
        assert "killed by signal 2" not in srv.logs()
    finally:
        srv.stop()


def test_rest_bad_input(server):
    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path in (("GET", f"/api/kernels/{unknown}"), ("DELETE", f"/api/kernels/{unknown}"),
                         ("POST", f"/api/kernels/{unknown}/interrupt"),
                         ("POST", f"/api/kernels/{unknown}/restart"), ("GET", "/api/kernels/not-a-uuid"),
                         ("GET", f"/api/sessions/{unknown}")):
        status, _, err = http(server, method, path, b"" if method == "POST" else None)
        assert status == 404 and "message" in err, (method, path, status, err)
    assert http(server, "POST", "/api/kernels", "{not json")[0] == 400
    assert http(server, "POST", "/api/kernels", "[1]")[0] == 400
    assert http(server, "POST", "/api/kernels", '{"name": 5}')[0] == 400
    status, _, err = http(server, "POST", "/api/kernels", '{"name": "no-such-kernel"}')
    assert status == 404 and "no-such-kernel" in err["message"]
    assert http(server, "GET", "/api/kernels", token=False)[0] == 403
    assert http(server, "GET", "/api/kernels", headers={"Authorization": "token wrong"})[0] == 403
    assert http(server, "PUT", "/api/kernels", "{}")[0] == 405
    assert http(server, "GET", "/api/nothing")[0] == 404
    status, _, body = http(server, "POST", "/api/kernels", "x" * (17 << 20))
    assert status == 413


def test_sessions(server, tmp_path):
    body = {"path": "a.ipynb", "name": "a.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    status, headers, s = http(server, "POST", "/api/sessions", json.dumps(body))
    assert status == 201 and headers["Location"] == f"/api/sessions/{s['id']}"
    assert s["path"] == "a.ipynb" and s["type"] == "notebook" and s["notebook"]["path"] == "a.ipynb"
    kid = s["kernel"]["id"]
    # The same path gives the same session.
    status, _, again = http(server, "POST", "/api/sessions", json.dumps(body))
    assert again["id"] == s["id"]
    assert s["id"] in [x["id"] for x in http(server, "GET", "/api/sessions")[2]]
    status, _, patched = http(server, "PATCH", f"/api/sessions/{s['id']}", json.dumps({"path": "b.ipynb"}))
    assert status == 200 and patched["path"] == "b.ipynb" and patched["kernel"]["id"] == kid
    # Attaching to an existing kernel by id.
    other = start_kernel(server)
    status, _, attached = http(server, "POST", "/api/sessions", json.dumps(
        {"path": "c.ipynb", "type": "console", "name": "", "kernel": {"id": other["id"]}}))
    assert status == 201 and attached["kernel"]["id"] == other["id"]
    # Switching a session's kernel shuts the old one down.
    status, _, switched = http(server, "PATCH", f"/api/sessions/{s['id']}",
                               json.dumps({"kernel": {"name": "python3"}}))
    assert status == 200 and switched["kernel"]["id"] != kid
    assert http(server, "GET", f"/api/kernels/{kid}")[0] == 404
    for sid in (s["id"], attached["id"]):
        assert http(server, "DELETE", f"/api/sessions/{sid}")[0] == 204
    assert http(server, "GET", f"/api/kernels/{other['id']}")[0] == 404
    assert http(server, "POST", "/api/sessions", json.dumps({"kernel": "python3"}))[0] == 400


@pytest.mark.parametrize("proto", ["v1", "legacy"])
def test_channels_execute_and_reference_deserializers(server, proto):
    from jupyter_server.base.zmqhandlers import deserialize_msg_from_ws_v1
    kid = start_kernel(server)["id"]

    async def go():
        c = await Channels.connect(server, kid, proto)
        assert c.ws.subprotocol == (V1 if proto == "v1" else None)
        reply, iopub = await c.request("shell", make_msg("kernel_info_request", {}, c.session))
        assert reply["channel"] == "shell" and reply["header"]["msg_type"] == "kernel_info_reply"
        assert reply["content"]["status"] == "ok"
        reply, iopub = await c.execute("print('hi'); 1+1")
        types = [m["header"]["msg_type"] for m in iopub]
        assert types == ["status", "execute_input", "stream", "execute_result", "status"]
        assert reply["content"]["status"] == "ok"
        # A raw frame, decoded by Jupyter Server's own code.
        await c.send("shell", execute_msg("'x'", c.session))
        frame = await c.ws.recv()
        if proto == "v1":
            channel, parts = deserialize_msg_from_ws_v1(frame)
            assert channel in ("iopub", "shell") and json.loads(parts[0])["msg_type"]
        else:
            assert isinstance(frame, str)
            m = json.loads(frame)
            assert set(m) >= {"header", "msg_id", "msg_type", "parent_header", "metadata", "content",
                              "buffers", "channel"}
        await c.close()
    run(go())
    assert http(server, "DELETE", f"/api/kernels/{kid}")[0] == 204


@pytest.mark.parametrize("proto", ["v1", "legacy"])
def test_channels_buffers_both_ways(server, proto):
    from jupyter_server.base.zmqhandlers import deserialize_binary_message, deserialize_msg_from_ws_v1
    kid = start_kernel(server)["id"]
    setup = ("def _kb_target(comm, msg):\n"
             "    @comm.on_msg\n"
             "    def _r(m):\n"
             "        comm.send({'got': m['content']['data']}, buffers=[bytes(b)[::-1] for b in m['buffers']] + [b'\\x00\\x01\\x02'])\n"
             "get_ipython().kernel.comm_manager.register_target('kb_echo', _kb_target)")

    async def go():
        c = await Channels.connect(server, kid, proto)
        reply, _ = await c.execute(setup)
        assert reply["content"]["status"] == "ok"
        comm_id = "c0ffee"
        await c.send("shell", make_msg("comm_open", {"comm_id": comm_id, "target_name": "kb_echo", "data": {}}, c.session))
        msg = make_msg("comm_msg", {"comm_id": comm_id, "data": {"n": 7}}, c.session,
                       buffers=[b"ABC", b"\x00\xff" * 1000])
        await c.send("shell", msg)
        while True:
            frame = await c.ws.recv()
            if proto == "v1":
                channel, parts = deserialize_msg_from_ws_v1(frame)
                header, content, buffers = json.loads(parts[0]), json.loads(parts[3]), parts[4:]
            else:
                if isinstance(frame, str):
                    continue
                m = deserialize_binary_message(frame)
                header, content, buffers, channel = m["header"], m["content"], m["buffers"], m["channel"]
            if header["msg_type"] == "comm_msg":
                break
        assert channel == "iopub" and content["data"] == {"got": {"n": 7}}
        assert [bytes(b) for b in buffers] == [b"CBA", (b"\x00\xff" * 1000)[::-1], b"\x00\x01\x02"]
        await c.close()
    run(go())
    assert http(server, "DELETE", f"/api/kernels/{kid}")[0] == 204


def test_stdin_round_trip_and_reply_routing(server):
    kid = start_kernel(server)["id"]

    async def go():
        a = await Channels.connect(server, kid, "v1")
        b = await Channels.connect(server, kid, "legacy")
        msg = execute_msg("name = input('who? '); name.upper()", a.session, allow_stdin=True)
        await a.send("shell", msg)
        while True:
            m = await a.recv()
            if m["channel"] == "stdin":
                assert m["header"]["msg_type"] == "input_request" and m["content"]["prompt"] == "who? "
                break
        reply = make_msg("input_reply", {"status": "ok", "value": "kbridge"}, a.session)
        reply["parent_header"] = m["header"]
        await a.send("stdin", reply)
        result = None
        while result is None:
            m = await a.recv()
            if m["header"]["msg_type"] == "execute_result":
                result = m["content"]["data"]["text/plain"]
        assert result == "'KBRIDGE'"
        # b saw the iopub traffic of a's request (fan-out) but never a's replies.
        seen = []
        try:
            while True:
                seen.append(await b.recv(timeout=1))
        except asyncio.TimeoutError:
            pass
        parents = [m for m in seen if m["parent_header"].get("msg_id") == msg["header"]["msg_id"]]
        assert any(m["header"]["msg_type"] == "execute_result" for m in parents)
        assert all(m["channel"] == "iopub" for m in parents)
        await a.close()
        await b.close()
    run(go())
    assert http(server, "DELETE", f"/api/kernels/{kid}")[0] == 204


def test_channels_bad_input(server):
    kid = start_kernel(server)["id"]

    async def closed_with(frame, proto="v1"):
        c = await Channels.connect(server, kid, proto)
        await c.ws.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await c.recv(timeout=10)
        return info.value

    async def go():
        good = make_msg("kernel_info_request", {}, "s")
        parts = [json.dumps(good[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
        frame = v1_frame("shell", parts)
        n = struct.unpack_from("<Q", frame)[0]
        bad_frames = {
            "offsets out of range": frame[:8 + 8 * (n - 1)] + struct.pack("<Q", len(frame) + 100) + frame[8 + 8 * n:],
            "wrong count": struct.pack("<Q", 3) + frame[8:],
            "huge count": struct.pack("<Q", 1 << 40) + frame[8:],
            "short": b"\x01\x02",
            "non-ASCII channel": v1_frame("sh\xe9ll".encode("latin-1"), parts),
            "unknown channel": v1_frame("bogus", parts),
            "iopub from client": v1_frame("iopub", parts),
            "text on v1": "hello",
        }
        for what, bad in bad_frames.items():
            closed = await closed_with(bad)
            assert closed.code == 1007, (what, closed)
            assert closed.reason, what
        for bad in ("{not json", json.dumps({"channel": "bogus", "header": {}, "content": {}}),
                    json.dumps({"header": [], "channel": "shell"}),
                    struct.pack("!I", 9) + b"{}"):
            closed = await closed_with(bad, "legacy")
            assert closed.code == 1007, (bad, closed)
        # The kernel and other connections are fine.
        c = await Channels.connect(server, kid, "v1")
        reply, _ = await c.execute("'still fine'")
        assert reply["content"]["status"] == "ok"
        await c.close()
    run(go())

    async def refused():
        for path, status in ((f"/api/kernels/{kid}/channels?token=wrong", 403),
                             ("/api/kernels/00000000-0000-4000-8000-000000000000/channels?token=" + server.token, 404),
                             ("/api/kernels/nope/channels?token=" + server.token, 404)):
            with pytest.raises(websockets.InvalidStatusCode) as info:
                await websockets.connect(f"ws://127.0.0.1:{server.port}{path}", subprotocols=[V1])
            assert info.value.status_code == status
    run(refused())
    assert http(server, "DELETE", f"/api/kernels/{kid}")[0] == 204


def test_oversized_client_message(tmp_path):
    srv = KBridge(tmp_path, "--max-message-bytes", "200000")
    try:
        kid = start_kernel(srv)["id"]

        async def go():
            c = await Channels.connect(srv, kid, "v1")
            msg = make_msg("comm_msg", {"comm_id": "x", "data": {}}, c.session, buffers=[b"\0" * 300000])
            await c.send("shell", msg)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await c.recv(timeout=10)
            assert info.value.code == 1009
            c2 = await Channels.connect(srv, kid, "v1")
            reply, _ = await c2.execute("1")
            assert reply["content"]["status"] == "ok"
            await c2.close()
        run(go())
    finally:
        srv.stop()


def test_duplicate_session_id_replaces_older(server):
    kid = start_kernel(server)["id"]

    async def go():
        a = await Channels.connect(server, kid, "v1", session_id="same-session")
        b = await Channels.connect(server, kid, "v1", session_id="same-session")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await a.recv(timeout=10)
        reply, _ = await b.execute("'b works'")
        assert reply["content"]["status"] == "ok"
        await b.close()
    run(go())
    assert http(server, "DELETE", f"/api/kernels/{kid}")[0] == 204


def test_autorestart_status_messages_and_dead(server, tmp_path):
    kid = start_kernel(server)["id"]

    async def go():
        c = await Channels.connect(server, kid, "v1")
        sess_before = None
        reply, iopub = await c.execute("import os; os.getpid()")
        sess_before = reply["header"]["session"]
        await c.send("shell", execute_msg("import os; os.kill(os.getpid(), 9)", c.session))
        states = []
        while "restarting" not in states:
            m = await c.recv(timeout=10)
            if m["header"]["msg_type"] == "status":
                states.append(m["content"]["execution_state"])
                assert m["header"]["session"] and m["header"]["username"] and m["header"]["version"]
        # The kernel comes back with a new kernel session, and works.
        await async_wait_until(
            lambda: http(server, "GET", f"/api/kernels/{kid}")[2]["execution_state"] == "idle",
            timeout=10, interval=0.1, message="the kernel did not come back after the crash")
        reply, _ = await c.execute("'back'")
        assert reply["content"]["status"] == "ok" and reply["header"]["session"] != sess_before
        await c.close()
    run(go())
    assert http(server, "DELETE", f"/api/kernels/{kid}")[0] == 204


def test_dead_after_restarts_run_out(tmp_path):
    spec = tmp_path / "jp" / "kernels" / "crashy"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["/usr/bin/python3", "-c", "import time, sys; time.sleep(0.5); sys.exit(1)", "{connection_file}"],
        "display_name": "crashy", "language": "python"}))
    srv = KBridge(tmp_path, env={"JUPYTER_PATH": str(tmp_path / "jp")})
    try:
        kid = start_kernel(srv, name="crashy")["id"]

        async def go():
            c = await Channels.connect(srv, kid, "v1")
            states = []
            while "dead" not in states:
                m = await c.recv(timeout=30)
                if m["header"]["msg_type"] == "status":
                    states.append(m["content"]["execution_state"])
            assert states.count("restarting") == 5
            await c.close()
        run(go())
        assert http(srv, "GET", f"/api/kernels/{kid}")[2]["execution_state"] == "dead"
        assert http(srv, "DELETE", f"/api/kernels/{kid}")[0] == 204
    finally:
        srv.stop()


def test_native_and_jupyter_share_kernels(server):
    async def go():
        # Jupyter's kernels are the default sandbox's: a native client attached to it
        # shares them; one on a sandbox of its own does not see them.
        other = await NativeClient.connect(server)
        n = await NativeClient.connect(server, sandbox_id="default")
        assert n.session["sandbox_id"] == "default"
        kid = (await n.request(op="start_kernel"))["kernel"]["kernel_id"]
        await n.execute("shared = 'from native'", kernel_id=kid)
        assert kid in [k["id"] for k in http(server, "GET", "/api/kernels")[2]]
        c = await Channels.connect(server, kid, "v1")
        reply, iopub = await c.execute("shared")
        assert [m for m in iopub if m["header"]["msg_type"] == "execute_result"][0]["content"]["data"]["text/plain"] == "'from native'"
        await c.close()
        jk = start_kernel(server)["id"]
        r = await n.request(op="list_kernels")
        assert jk in [k["kernel_id"] for k in r["kernels"]]
        _, end = await n.execute("40 + 2", kernel_id=jk)
        assert end["execution"]["results"][0]["text"] == "42"
        r = await other.request(op="list_kernels")
        assert jk not in [k["kernel_id"] for k in r["kernels"]]
        m = await other.request(op="execute", code="1", kernel_id=jk)
        assert m["type"] == "request_error" and m["code"] == "not_found"
        await other.close()
        await n.request(op="shutdown_kernel", kernel_id=kid)
        await n.close()
        assert http(server, "DELETE", f"/api/kernels/{jk}")[0] == 204
    run(go())
