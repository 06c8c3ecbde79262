"""Nothing of kbridge outlives it: no kernel, no daemon a cell started, no key on disk.

kbridge is stopped the polite way (SIGTERM) and the rude way (SIGKILL, which it cannot
see); either way every process its kernels started, however they detached (setsid, a
double fork), is gone within seconds, and so is every connection file with its key.
"""
import os
import signal
import time

from conftest import processes_mentioning
from kbharness import KBridge, NativeClient, run


def files_with_keys(root):
    # os.walk, not rglob: the directories go away while we look, which rglob raises for.
    found = []
    for d, _, names in os.walk(root):
        for name in names:
            path = os.path.join(d, name)
            try:
                with open(path, "rb") as f:
                    if b'"key"' in f.read():
                        found.append(path)
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
        c = await NativeClient.connect(srv, sandbox_id="default")
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


DAEMONS = r'''
import os, subprocess, sys
mark = {mark!r}
sleeper = [sys.executable, "-c", "import time; time.sleep(1000)"]
quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
# A child in a session of its own.
subprocess.Popen(sleeper + [mark + "-session"], start_new_session=True, **quiet)
# `setsid cmd &` from a shell that exits at once.
subprocess.run(["/bin/sh", "-c", "setsid \"$@\" &", "sh"] + sleeper + [mark + "-shell"], **quiet)
# The classic daemon: fork, setsid, fork again, the middle one exits.
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, sleeper + [mark + "-daemon"])
    os._exit(0)
os.waitpid(pid, 0)
'''


def _escapees_die_with(tmp_path, how):
    srv = KBridge(tmp_path)
    mark = f"kbescapee-{os.getpid()}-{time.monotonic_ns()}"
    try:
        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            _, end = await c.execute(DAEMONS.format(mark=mark))
            assert end["execution"]["error"] is None, end
            await c.close()
        run(go())
        assert wait_until(lambda: len(processes_mentioning(mark)) == 3, 10), processes_mentioning(mark)
        for pid, _ in processes_mentioning(mark):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            assert int(fields[3]) != os.getsid(srv.proc.pid)  # they did leave kbridge's session
        if how == "SIGTERM":
            assert srv.stop() == 0
        else:
            sigkill(srv)
        assert wait_until(lambda: not processes_mentioning(mark), 10), processes_mentioning(mark)
        assert wait_until(lambda: not processes_mentioning(str(srv.runtime)), 5)
    finally:
        if srv.alive():
            srv.stop(check=False)
        for pid, _ in processes_mentioning(mark):
            os.kill(pid, signal.SIGKILL)


def test_detached_descendants_die_with_sigterm(tmp_path):
    _escapees_die_with(tmp_path, "SIGTERM")


def test_detached_descendants_die_with_sigkill(tmp_path):
    _escapees_die_with(tmp_path, "SIGKILL")


RUNNER = r'''
import os, time
# A fork runner: every generation forks and exits at once, so no pid lives long enough
# to be found and killed by a scan, in a session of its own. Bounded, so that a failure
# of this test leaves nothing running for long.
if os.fork() == 0:
    os.setsid()
    end = time.time() + 30
    last = 0
    while time.time() < end:
        if time.time() - last > 0.05:
            last = time.time()
            with open({beat!r}, "a") as f:
                f.write(".")
        if os.fork() != 0:
            os._exit(0)
    os._exit(0)
'''


def test_fork_runner_dies_with_sigkill(tmp_path):
    beat = tmp_path / "beat"
    beat.write_text("")
    srv = KBridge(tmp_path)
    try:
        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            _, end = await c.execute(RUNNER.format(beat=str(beat)))
            assert end["execution"]["error"] is None, end
            await c.close()
        run(go())
        assert wait_until(lambda: beat.stat().st_size > 5, 10), "the runner did not run"
        sigkill(srv)
        time.sleep(1)  # the agent's cleanup
        size = beat.stat().st_size
        time.sleep(1.5)
        assert beat.stat().st_size == size, "a fork runner survived kbridge"
    finally:
        if srv.alive():
            srv.stop(check=False)
