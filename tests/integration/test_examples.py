"""Issue 3: the examples (and the Python client they use) run end to end against the real service."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import missing_tool
from kbharness import KBridge

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
from kbridge import CodeInterpreter, KBridgeError  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("examples"))
    yield srv
    srv.stop()


def test_chart_example_saves_a_png(server, tmp_path):
    out = tmp_path / "chart.png"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "chart.py"),
                           "--url", f"ws://127.0.0.1:{server.port}/ws", "--token", server.token,
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stdout: plotting 200 points" in proc.stdout
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert out.stat().st_size > 10000


def test_client_api(server):
    """The notebook API of the kbridge package (the old single-file client's, kept)."""
    seen = []
    with CodeInterpreter(url=f"ws://127.0.0.1:{server.port}/ws", api_key=server.token) as kb:
        ex = kb.notebook.exec_cell("x = 40")
        ex = kb.notebook.exec_cell("print('hi'); x + 2", on_stdout=seen.append)
        assert ex.text == "42"
        assert ex.logs.stdout == ["hi\n"] and seen[0].line == "hi\n" and not seen[0].error
        assert ex.results[0].formats() == []
        ex = kb.notebook.exec_cell("import pandas as pd; pd.DataFrame({'a': [1]})")
        assert ex.results[0].formats() == ["html"]
        ex = kb.notebook.exec_cell("1/0")
        assert ex.error.name == "ZeroDivisionError"
        kid = kb.notebook.create_kernel(cwd="/tmp")
        assert kb.notebook.exec_cell("import os; os.getcwd()", kernel_id=kid).text == "'/tmp'"
        assert any(k["kernel_id"] == kid for k in kb.notebook.list_kernels())
        kb.notebook.restart_kernel(kid)
        kb.notebook.shutdown_kernel(kid)
        with pytest.raises(KBridgeError) as info:
            kb.notebook.exec_cell("1", kernel_id=kid)
        assert info.value.code == "not_found"
        with pytest.raises(TimeoutError) as info:
            kb.notebook.exec_cell("import time; time.sleep(10)", timeout=0.5)
        assert "notebook.exec_cell timed out" in str(info.value)


def test_e2b_sdk_example(server):
    node_modules = ROOT / "tests" / "compat" / "node_modules"
    if not shutil.which("node") or not (node_modules / "@e2b" / "code-interpreter").is_dir():
        missing_tool("node or tests/compat/node_modules missing (scripts/test.sh installs them)")
    env = dict(os.environ, NODE_PATH=str(node_modules), KBRIDGE_TOKEN=server.token, E2B_DEBUG="true",
               E2B_SANDBOX_URL=server.http)
    proc = subprocess.run(["node", str(ROOT / "examples" / "e2b_sdk.js")], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "x is 2" in out and "stdout: drawing" in out and "'png'" in out
    assert "env var: hello from E2B" in out and "context cwd: /tmp" in out
    assert "R says: [1] 6" in out and "error: ZeroDivisionError - division by zero" in out


def test_e2b_selfhost_example(server):
    node_modules = ROOT / "tests" / "compat" / "node_modules"
    if not shutil.which("node") or not (node_modules / "@e2b" / "code-interpreter").is_dir():
        missing_tool("node or tests/compat/node_modules missing (scripts/test.sh installs them)")
    env = dict(os.environ, NODE_PATH=str(node_modules), E2B_API_URL=server.http,
               E2B_SANDBOX_URL=server.http, E2B_API_KEY=server.token)
    env.pop("E2B_DEBUG", None)
    proc = subprocess.run(["node", str(ROOT / "examples" / "e2b_selfhost.js")], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "files: data.csv" in out and "command says: 3 data.csv | hello from the sandbox" in out
    assert "sum of y: 6" in out and "read back: written by the kernel" in out
    assert "running after kill: false" in out
