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
import sys
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


# A kernelspec whose process takes one of its own ports before it becomes ipykernel (the
# socket is inherited), on one start of the kernel only: what a bind(0) anywhere on the
# machine does when it is handed a port kbridge chose and let go of, in the seconds before
# the kernel binds it.
PORT_TAKER = r'''
import json, os, socket, sys
conn, channel, counter, on_start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
with open(counter, "w") as f:
    f.write(str(n))
if n == on_start:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", json.load(open(conn))[channel + "_port"]))
    s.listen(1)
    os.set_inheritable(s.fileno(), True)
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", conn])
'''


def port_taker_spec(tmp_path, channel, on_start):
    """JUPYTER_PATH with a kernelspec 'taker' whose start number on_start finds the port
    of channel taken."""
    jp = tmp_path / "jp"
    spec = jp / "kernels" / "taker"
    spec.mkdir(parents=True)
    (tmp_path / "taker.py").write_text(PORT_TAKER)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(tmp_path / "taker.py"), "{connection_file}", channel,
                 str(tmp_path / f"starts-{channel}"), str(on_start)],
        "display_name": "taker", "language": "python"}))
    return str(jp)


async def kill_and_wait_restart(c, kid):
    """kill -9 from outside, and wait until kbridge has seen it (so that what is sent next
    is queued for the restarted process, not sent to the dead one)."""
    os.kill(kernel_pid(kid), signal.SIGKILL)
    await wait_state(c, kid, lambda s: s in ("restarting", "starting"), timeout=20)


async def start_then_queue_across_a_restart(c, timeout):
    """Start the port-taking kernel, run a cell, kill -9 it, and queue `6*7` for the
    restart: it must run on the (retried) start, without an error."""
    kid = (await c.request(op="start_kernel", kernel_name="taker", timeout=90))["kernel"]["kernel_id"]
    _, end = await c.execute("1+1", kernel_id=kid, timeout=60)
    assert end["execution"]["results"][0]["text"] == "2"
    await kill_and_wait_restart(c, kid)
    _, end = await c.execute("6*7", kernel_id=kid, timeout=timeout)
    assert end["execution"]["error"] is None, end
    assert end["execution"]["results"][0]["text"] == "42"
    return kid


def test_restart_whose_heartbeat_port_was_taken_is_retried(tmp_path):
    # ipykernel only logs that its heartbeat thread could not bind: the process answers
    # everything else. It used to become ready, run cells for a moment, and then be
    # unresponsive for good (KernelNotResponding for every cell after --heartbeat-timeout).
    srv = KBridge(tmp_path, "--heartbeat-timeout", "3",
                  env={"JUPYTER_PATH": port_taker_spec(tmp_path, "hb", 2)})
    try:
        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            # Queued while the restart meets its heartbeat port taken: it runs on the retry.
            kid = await start_then_queue_across_a_restart(c, timeout=120)
            # And the kernel stays answerable past the heartbeat timeout.
            await asyncio.sleep(4.5)
            assert await native_state(c, kid) == "idle"
            _, end = await c.execute("2+2", kernel_id=kid, timeout=30)
            assert end["execution"]["error"] is None, end
            assert end["execution"]["results"][0]["text"] == "4"
            await c.close()

        run(go())
        logs = srv.logs()
        assert "Exception in thread Heartbeat" in logs  # the fault did happen
        assert "its heartbeat did not answer" in logs and logs.count("fresh ports") >= 2, logs[-4000:]
        assert "heartbeat lost" not in logs
    finally:
        srv.stop()


def test_restart_whose_shell_port_was_taken_keeps_the_queue(tmp_path):
    # That start exits ("Address already in use") before it was ready: it ran nothing of
    # what waits for the kernel, which used to end with KernelDied all the same.
    srv = KBridge(tmp_path, env={"JUPYTER_PATH": port_taker_spec(tmp_path, "shell", 2)})
    try:
        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            await start_then_queue_across_a_restart(c, timeout=150)
            await c.close()

        run(go())
        logs = srv.logs()
        assert "Address already in use" in logs and "died before it was ready" in logs, logs[-4000:]
    finally:
        srv.stop()
