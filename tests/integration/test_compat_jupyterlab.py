"""JupyterLab compatibility: the real @jupyterlab/services client against kbridge.

Starts kbridge (kbharness.KBridge: own XDG_RUNTIME_DIR, free port, SIGTERM stop and orphan
checks) and runs the node:test suite tests/compat/jupyterlab*.test.js against it, with
KBRIDGE_URL and KBRIDGE_TOKEN in the environment. Skipped only when node or
tests/compat/node_modules (`npm ci` in tests/compat) is missing, and then only outside CI
(with $CI set it fails).
"""
import os
import pathlib
import shutil
import signal
import subprocess

import pytest

from conftest import missing_tool
from kbharness import KBridge

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPAT = ROOT / "tests" / "compat"
NODE_TIMEOUT = 900  # seconds for the whole node run; it normally takes well under a minute


# The @jupyterlab/services suites (other files in tests/compat, e.g. e2b.test.mjs, drive other
# client libraries and have their own wrappers).
def _test_files():
    return sorted(p.name for p in COMPAT.glob("jupyterlab*.test.*")
                  if p.name.endswith((".test.js", ".test.mjs")))


def test_jupyterlab_services_compat(tmp_path):
    node = shutil.which("node")
    if node is None:
        missing_tool("node is not installed: cannot run the @jupyterlab/services compatibility suite")
    if not (COMPAT / "node_modules").is_dir():
        missing_tool("tests/compat/node_modules is missing: run `npm ci` in tests/compat "
                    "to install the pinned @jupyterlab/services")
    files = _test_files()
    assert files, f"no jupyterlab*.test.js files in {COMPAT}"

    server = KBridge(tmp_path, token="compat-token")
    env = dict(os.environ)
    env["KBRIDGE_URL"] = f"{server.http}/"
    env["KBRIDGE_TOKEN"] = server.token
    env.pop("NODE_OPTIONS", None)
    # --test-force-exit: @lumino/polling leaves a poll timer armed after dispose(), which
    # would otherwise keep node alive for up to a minute after the last test.
    cmd = [node, "--test", "--test-force-exit", "--test-reporter=spec", *files]
    proc = subprocess.Popen(cmd, cwd=COMPAT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # node --test runs each file in a child process
        output, _ = proc.communicate()
        server.stop(check=False)
        pytest.fail(f"node --test did not finish within {NODE_TIMEOUT} s\n"
                    f"--- node output ---\n{output}\n--- kbridge log (tail) ---\n{server.logs()[-20000:]}")

    if proc.returncode != 0:
        logs = server.logs()
        server.stop(check=False)
        pytest.fail(f"`{' '.join(cmd[1:])}` (cwd {COMPAT}) exited with {proc.returncode}\n"
                    f"--- node output ---\n{output}\n--- kbridge log (tail) ---\n{logs[-20000:]}")

    print(output)
    # kbridge must still be healthy: clean SIGTERM exit, no orphaned kernels or files
    if not server.alive():
        logs = server.logs()
        server.stop(check=False)
        pytest.fail(f"kbridge exited during the compatibility suite\n{logs[-20000:]}")
    server.stop()
