"""Idle kernels culled (--cull-idle-timeout, --cull-connected), as Jupyter Server does.

A kernel that is idle - no cell running or queued, no output - for the timeout is shut
down, in any sandbox; one that is busy is not, however long it runs; one with a Jupyter
channels connection open is not either, unless --cull-connected.
"""
import asyncio
import json
import time
import urllib.error
import urllib.request

from conftest import wait_until
from jws import Channels
from kbharness import KBridge, NativeClient, run


def main_text(end):
    assert end["type"] == "end_of_execution", end
    assert end["execution"]["error"] is None, end["execution"]["error"]
    return next((r["text"] for r in end["execution"]["results"] if r["is_main_result"]), None)


def http(srv, method, path):
    req = urllib.request.Request(f"{srv.http}{path}", method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Authorization": f"token {srv.token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def start(srv):
    status, model = http(srv, "POST", "/api/kernels")
    assert status == 201, status
    kid = model["id"]
    wait_until(lambda: http(srv, "GET", f"/api/kernels/{kid}")[1]["execution_state"] == "idle",
               timeout=60, message="the kernel did not start")
    return kid


def alive(srv, kid):
    return http(srv, "GET", f"/api/kernels/{kid}")[0] == 200


def test_idle_kernels_are_culled_busy_and_connected_ones_are_not(tmp_path):
    srv = KBridge(tmp_path, "--cull-idle-timeout", "2")
    try:
        idle, connected = start(srv), start(srv)

        async def go():
            ch = await Channels.connect(srv, connected, "v1")
            c = await NativeClient.connect(srv, sandbox_id="default")
            t0 = time.monotonic()
            # A cell that runs (silently) for longer than the timeout.
            _, end = await c.execute("import time; time.sleep(5); 'slept'")
            assert main_text(end) == "'slept'"
            assert time.monotonic() - t0 >= 5
            busy = end["kernel_id"]
            # Culled while the other one slept; the busy one and the connected one are not.
            assert not alive(srv, idle)
            assert alive(srv, busy) and alive(srv, connected)
            # Idle from now on: culled too (the native client is not a channels connection).
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_until(lambda: not alive(srv, busy), timeout=15,
                                         message="the kernel idle after its cell was not culled"))
            assert alive(srv, connected)
            await ch.close()
            await c.close()

        run(go())
        # The connection went: culled in its turn.
        wait_until(lambda: not alive(srv, connected), timeout=15,
                   message="the kernel whose connection closed was not culled")
        logs = srv.logs()
        assert logs.count("culling kernel") == 3, logs[-2000:]
        assert f"culling kernel {idle}: idle for" in logs
        assert srv.alive()
    finally:
        srv.stop()


def test_cull_connected_culls_kernels_with_connections(tmp_path):
    srv = KBridge(tmp_path, "--cull-idle-timeout", "1", "--cull-connected")
    try:
        kid = start(srv)

        async def go():
            ch = await Channels.connect(srv, kid, "v1")
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_until(lambda: not alive(srv, kid), timeout=15,
                                         message="a connected kernel was not culled"))
            await ch.close()

        run(go())
        # Culling is off by default: the same idle kernel stays on another server.
    finally:
        srv.stop()


def test_no_culling_by_default(tmp_path):
    srv = KBridge(tmp_path)
    try:
        kid = start(srv)
        time.sleep(3)
        assert alive(srv, kid)
        assert "culling" not in srv.logs()
    finally:
        srv.stop()
