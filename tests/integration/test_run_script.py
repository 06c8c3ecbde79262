"""scripts/run.sh builds kbridge without its tests, in a build directory of its own, and
passes its arguments to kbridge (options without a command are serve's).

It runs on a copy of the source tree, so that the checkout's own build directories are
never touched by the test.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    dst = tmp_path_factory.mktemp("tree") / "kbridge"
    shutil.copytree(ROOT, dst, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "build-*", "node_modules",
                                                  "__pycache__", ".pytest_cache"))
    return dst


def clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBRIDGE_")}
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(run)
    # Not the machine's /var/lib/kbridge: a kbridge running there holds its lock.
    env["KBRIDGE_STATE_DIR"] = str(tmp_path / "state")
    return env


def test_run_sh_builds_without_tests_and_serves(tree, tmp_path):
    proc = subprocess.Popen([str(tree / "scripts/run.sh"), "--port", "0", "--token", "T"],
                            cwd=str(tmp_path), env=clean_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "listening on http://" in line:
                break
        else:
            pytest.fail("run.sh ended without serving:\n" + "".join(lines[-60:]))
        port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=10) as r:
            assert r.status == 200 and "version" in json.loads(r.read())
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/kernels",
                                     headers={"Authorization": "token T"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read()) == []
        # run.sh exec'd kbridge: the process is the service, and stops like it.
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0].endswith(b"build-run/kbridge")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    cache = (tree / "build-run/CMakeCache.txt").read_text()
    assert "KBRIDGE_TESTS:BOOL=OFF" in cache
    # No test was configured or built, and scripts/test.sh's directories were not made.
    assert not (tree / "build-run/tests").exists()
    assert not list((tree / "build-run").glob("test_*"))
    assert not (tree / "build").exists() and not (tree / "build-asan").exists()
    assert (tree / "build-run/kbridge-agent").exists()


def test_run_sh_passes_arguments(tree, tmp_path):
    # The build from the first test is reused; arguments go to kbridge as they are.
    out = subprocess.run([str(tree / "scripts/run.sh"), "--version"], cwd=str(tmp_path),
                         env=clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("kbridge ")
    out = subprocess.run([str(tree / "scripts/run.sh"), "exec", "6 * 7"], cwd=str(tmp_path),
                         env=clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    execution = json.loads(out.stdout.splitlines()[-1])
    assert execution["results"][0]["text"] == "42"
