"""Issue 5: the official E2B code-interpreter SDK (npm, pinned) against kbridge."""
import os
import pathlib
import shutil
import subprocess

from conftest import missing_tool
from kbharness import KBridge

COMPAT = pathlib.Path(__file__).resolve().parents[1] / "compat"


def test_e2b_sdk(tmp_path):
    if not shutil.which("node"):
        missing_tool("node is not installed (scripts/setup.sh --test installs it)")
    if not (COMPAT / "node_modules" / "@e2b" / "code-interpreter").is_dir():
        missing_tool("tests/compat/node_modules is missing: run `npm ci` in tests/compat")
    # With the default warm pools: Sandbox.create takes a warm sandbox, and its first
    # runCode the kernel already started in it.
    srv = KBridge(tmp_path, pools=True)
    try:
        env = dict(os.environ, KBRIDGE_URL=srv.http, KBRIDGE_TOKEN=srv.token)
        proc = subprocess.run(["node", "--test", "--test-reporter=spec", "e2b.test.mjs"], cwd=COMPAT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:] + srv.logs()[-5000:]
        assert "fail 0" in proc.stdout
    finally:
        srv.stop()
