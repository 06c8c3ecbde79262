"""Kernels that misbehave without dying: a heartbeat that stops, ports taken by others.

Each test drives the real service and a real ipykernel, and makes the fault happen from
outside (SIGSTOP, a socket bound on the kernel's port), as a stuck or unlucky kernel
would.
"""
import asyncio
import json
import os
import signal
import socket
import time
import urllib.request

from conftest import processes_mentioning
from kbharness import KBridge, NativeClient, run


def kernel_pid(kernel_id, timeout=10):
    """The kernel process: the one whose command line names its connection file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = processes_mentioning(f"kernel-{kernel_id}.json")
        if len(procs) == 1:
            return procs[0][0]
        time.sleep(0.05)
    raise AssertionError(f"no single process for kernel {kernel_id}: {procs}")


def get_json(srv, path):
    req = urllib.request.Request(srv.http + path, headers={"Authorization": f"token {srv.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def native_state(c, kernel_id):
    reply = await c.request(op="list_kernels")
    return next(k["state"] for k in reply["kernels"] if k["kernel_id"] == kernel_id)


async def wait_state(c, kernel_id, pred, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        state = await native_state(c, kernel_id)
        if pred(state):
            return state
        assert time.monotonic() < deadline, f"kernel state stayed {state}"
        await asyncio.sleep(0.1)


def test_heartbeat_loss_is_a_state_and_ends_runs(tmp_path):
    srv = KBridge(tmp_path, "--heartbeat-timeout", "2")
    try:
        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            kid = (await c.request(op="start_kernel"))["kernel"]["kernel_id"]
            pid = kernel_pid(kid)
            rid = await c.send(op="execute", code="import time\ntime.sleep(60)\n'slept'",
                               kernel_id=kid)
            await c.wait_for(rid, types=["number_of_executions"])
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                assert await wait_state(c, kid, lambda s: s != "busy") == "unresponsive"
                # The same kernel in the other two APIs.
                assert get_json(srv, f"/api/kernels/{kid}")["execution_state"] == "unknown"
                ctx = next(x for x in get_json(srv, "/contexts") if x["id"] == kid)
                assert ctx["state"] == "unresponsive"
                # What ran ends with an error saying why, after --heartbeat-timeout.
                while True:
                    m = await c.wait_for(rid, timeout=30)
                    if m["type"] == "end_of_execution":
                        break
                took = time.monotonic() - stopped
                err = m["execution"]["error"]
                assert err["name"] == "KernelNotResponding", err
                assert "stopped answering" in err["value"] and "2 s" in err["value"]
                assert 1.0 < took < 10, took
                # Anything sent meanwhile ends the same way at once.
                t0 = time.monotonic()
                _, end = await c.execute("'queued'", kernel_id=kid, timeout=10)
                assert end["execution"]["error"]["name"] == "KernelNotResponding"
                assert time.monotonic() - t0 < 2
                assert await native_state(c, kid) == "unresponsive"
            finally:
                os.kill(pid, signal.SIGCONT)
            # It answers again: the state recovers and the kernel runs cells.
            assert await wait_state(c, kid, lambda s: s != "unresponsive") in ("idle", "busy")
            _, end = await c.execute("1+1", kernel_id=kid, timeout=30)
            assert end["execution"]["error"] is None
            assert end["execution"]["results"][0]["text"] == "2"
            assert get_json(srv, f"/api/kernels/{kid}")["execution_state"] == "idle"
            await c.close()

        run(go())
        assert "heartbeat lost" in srv.logs() and "heartbeat is back" in srv.logs()
    finally:
        srv.stop()


def connection_ports(srv, kernel_id):
    path = next(srv.runtime.rglob(f"kernel-{kernel_id}.json"))
    info = json.loads(path.read_text())
    return [info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]


def occupy(ports, timeout=10):
    """Listen on every port (as soon as the dead kernel has let go of it)."""
    held, deadline = [], time.monotonic() + timeout
    for port in ports:
        while True:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen(16)
                held.append(s)
                break
            except OSError:
                s.close()
                assert time.monotonic() < deadline, f"port {port} never came free"
                time.sleep(0.02)
    return held


def test_autorestart_after_address_in_use_gets_fresh_ports(tmp_path):
    from jws import Channels
    srv = KBridge(tmp_path)
    held = []
    try:
        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            kid = (await c.request(op="start_kernel"))["kernel"]["kernel_id"]
            ch = await Channels.connect(srv, kid)
            reply, _ = await ch.execute("1+1")
            assert reply["content"]["status"] == "ok"
            before = connection_ports(srv, kid)
            pid = kernel_pid(kid)
            # kbridge is held still while the kernel dies and someone else takes its ports,
            # so its automatic restart meets them taken ("Address already in use").
            os.kill(srv.proc.pid, signal.SIGSTOP)
            try:
                os.kill(pid, signal.SIGKILL)
                held.extend(occupy(before))
            finally:
                os.kill(srv.proc.pid, signal.SIGCONT)
            state = await wait_state(c, kid, lambda s: s in ("idle", "dead"), timeout=90)
            assert state == "idle", srv.logs()[-4000:]
            after = connection_ports(srv, kid)
            assert not set(after) & set(before), (before, after)
            _, end = await c.execute("1+1", kernel_id=kid, timeout=30)
            assert end["execution"]["results"][0]["text"] == "2"
            # A Jupyter channels connection opened before follows the kernel to its new ports.
            reply, iopub = await ch.execute("6*7")
            assert reply["content"]["status"] == "ok"
            assert any(m["header"]["msg_type"] == "execute_result" and
                       m["content"]["data"]["text/plain"] == "42" for m in iopub)
            await ch.close()
            await c.close()

        run(go())
        assert "fresh ports" in srv.logs()
    finally:
        for s in held:
            s.close()
        srv.stop()
