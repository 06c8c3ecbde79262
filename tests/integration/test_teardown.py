"""Nothing of kbridge outlives it: no kernel, no daemon a cell started, no key on disk.

kbridge is stopped the polite way (SIGTERM) and the rude way (SIGKILL, which it cannot
see); either way every process its kernels started, however they detached (setsid, a
double fork), is gone within seconds, and so is every connection file with its key.
"""
import asyncio
import os
import pathlib
import signal
import time

from conftest import processes_mentioning
from kbharness import KBridge, NativeClient, run


def files_with_keys(root):
    found = []
    for p in pathlib.Path(root).rglob("*"):
        try:
            if p.is_file() and b'"key"' in p.read_bytes():
                found.append(str(p))
        except OSError:
            pass
    return found


def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def sigkill(srv):
    srv.proc.kill()
    srv.proc.wait(timeout=10)
    srv.stop(check=False)


def start_kernels(srv, n=1):
    async def go():
        c = await NativeClient.connect(srv)
        kids = []
        for _ in range(n):
            kids.append((await c.request(op="start_kernel"))["kernel"]["kernel_id"])
        _, end = await c.execute("1+1", kernel_id=kids[0])
        assert end["execution"]["results"][0]["text"] == "2"
        await c.close()
        return kids
    return run(go())


def test_sigkill_leaves_no_connection_file_and_no_kernel(tmp_path):
    srv = KBridge(tmp_path)
    kids = start_kernels(srv, 2)
    assert len(files_with_keys(srv.runtime)) == 2
    kernels = [p for k in kids for p in processes_mentioning(f"kernel-{k}.json")]
    assert len(kernels) == 2
    sigkill(srv)
    # Within a few seconds, not at the next start.
    assert wait_until(lambda: not files_with_keys(srv.runtime), 5), files_with_keys(srv.runtime)
    assert wait_until(lambda: not processes_mentioning(str(srv.runtime)), 5), \
        processes_mentioning(str(srv.runtime))
    for pid, _ in kernels:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1][:3]
