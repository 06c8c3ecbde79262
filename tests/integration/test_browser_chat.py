"""Issue 14: examples/chat in headless chromium (tests/browser/chat.test.mjs), served by
python3 -m http.server from an origin of its own, against the real kbridge started with
--allow-origin for it."""
import os
import pathlib
import shutil
import subprocess
import sys

from conftest import missing_tool
from kbharness import KBridge

ROOT = pathlib.Path(__file__).resolve().parents[2]
BROWSER = ROOT / "tests" / "browser"
COMPAT = ROOT / "tests" / "compat"


def serve_static(directory):
    """python3 -m http.server on a free port of 127.0.0.1: (process, origin)."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    assert "port" in line, f"http.server did not start: {line!r}"
    port = int(line.split(" port ", 1)[1].split()[0])
    return proc, f"http://127.0.0.1:{port}"


def test_chat_example_in_a_browser(tmp_path):
    if not shutil.which("node"):
        missing_tool("node is not installed (scripts/setup.sh --test installs it)")
    if not (COMPAT / "node_modules" / "playwright-core").is_dir():
        missing_tool("tests/compat/node_modules is missing: run `npm ci` in tests/compat")
    if not any(os.path.exists(p) for p in (os.environ.get("CHROMIUM_BIN") or "", "/usr/bin/chromium",
                                           "/usr/bin/chromium-browser")):
        missing_tool("chromium is not installed (scripts/setup.sh --test installs Debian's)")
    static, origin = serve_static(ROOT / "examples" / "chat")
    srv = None
    try:
        srv = KBridge(tmp_path, "--allow-origin", origin)
        shots = tmp_path / "screenshots"
        env = dict(os.environ, KBRIDGE_URL=srv.http, KBRIDGE_TOKEN=srv.token, CHAT_URL=origin + "/",
                   SHOT_DIR=str(shots))
        proc = subprocess.run(["node", "--test", "--test-reporter=spec", "chat.test.mjs"], cwd=BROWSER,
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:] + srv.logs()[-5000:]
        assert "fail 0" in proc.stdout
        shot = shots / "chat.png"
        assert shot.is_file() and shot.stat().st_size > 10_000, "the screenshot was saved"
        if os.environ.get("KBRIDGE_SAVE_SCREENSHOTS"):
            shutil.copy(shot, os.environ["KBRIDGE_SAVE_SCREENSHOTS"])
    finally:
        if srv:
            srv.stop()
        static.terminate()
        static.wait(timeout=10)
