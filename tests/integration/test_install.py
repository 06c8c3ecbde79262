"""`cmake --install` puts in place everything kbridge needs at run time, and what it
installs works: the binary finds its installed agent, the token helper makes a private
token, the systemd unit is well-formed, and its ExecStart, run by hand under the unit's
hardening (tests/integration/unitsandbox.py: systemd is not init here), serves.
"""
import json
import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import assert_nothing_left
from kbharness import KBridge, NativeClient, run

HERE = pathlib.Path(__file__).resolve().parent
PY = "/usr/bin/python3"
UNIT_REL = "lib/systemd/system/kbridge.service"
TOKEN = "/etc/kbridge/token"


def build_dir():
    d = os.environ.get("KBRIDGE_BUILD_DIR")
    if not d and os.environ.get("KBRIDGE_BIN"):
        d = os.path.dirname(os.environ["KBRIDGE_BIN"])
    assert d and os.path.isfile(os.path.join(d, "CMakeCache.txt")), \
        "set KBRIDGE_BUILD_DIR to a configured build (ctest does)"
    return d


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    p = tmp_path_factory.mktemp("prefix")
    out = subprocess.run(["cmake", "--install", build_dir(), "--prefix", str(p)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return p


def parse_unit(text):
    sys.path.insert(0, str(HERE))
    from unitsandbox import parse_unit as parse
    return parse(text)


@pytest.fixture(scope="module")
def unit(prefix):
    return parse_unit((prefix / UNIT_REL).read_text())


def clean_env(runtime):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBRIDGE_")}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env.pop("JUPYTER_PATH", None)
    return env


def make_token(prefix, path):
    out = subprocess.run([str(prefix / "lib/kbridge/kbridge-token"), str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return path.read_text().strip()


class Served(KBridge):
    """kbridge started from an arbitrary command line (the installed binary, the unit's
    ExecStart), with the KBridge harness's helpers and checks (stop() checks that nothing
    is left in runtime)."""

    def __init__(self, tmp_path, argv, token, runtime, state_dir):
        self.runtime = runtime
        self.state_dir = state_dir
        self.token = token
        self.log_path = tmp_path / f"kbridge-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, env=clean_env(runtime), cwd=str(tmp_path),
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        first = self.proc.stdout.readline()
        assert "listening on http://" in first, f"kbridge did not start: {first!r}\n{self.logs()}"
        self.port = int(first.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self.banner = first
        while True:
            line = self.proc.stdout.readline()
            if not line.strip():
                break
            self.banner += line


def new_runtime(tmp_path):
    d = tmp_path / f"run-{time.monotonic_ns()}"
    d.mkdir(mode=0o700)
    return d


def get(server, path, token=None):
    req = urllib.request.Request(server.http + path)
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def children_exes(pid):
    exes = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                try:
                    exes.append(os.readlink(f"/proc/{child}/exe"))
                except OSError:
                    pass
    return exes


def check_serves(server, prefix):
    """GET /api, the token, the installed agent, and 1+1 over the native WebSocket."""
    status, body = get(server, "/api")
    assert status == 200 and body["version"], body
    assert get(server, "/api/kernels")[0] in (401, 403)
    assert get(server, "/api/kernels", server.token) == (200, [])
    # The host sandbox's agent is the installed one, found from the binary's own path.
    agent = str(prefix / "lib/kbridge/kbridge-agent")
    assert agent in children_exes(server.proc.pid), children_exes(server.proc.pid)

    async def go():
        # An isolated sandbox of its own, with the installed agent in it.
        s = await NativeClient.connect(server)
        _, end = await s.execute("import socket; socket.gethostname()")
        assert end["execution"]["results"][0]["text"] == repr(s.session["sandbox_id"]), end
        await s.close()
        # The default sandbox, on the host: its kernels have connection files there.
        c = await NativeClient.connect(server, sandbox_id="default")
        events, end = await c.execute("1+1")
        assert end["type"] == "end_of_execution", end
        results = end["execution"]["results"]
        assert [r["text"] for r in results if r["is_main_result"]] == ["2"]
        kernels = await c.request(op="list_kernels")
        await c.close()
        return kernels["kernels"]

    kernels = run(go())
    # The kernel's connection file lives in $XDG_RUNTIME_DIR/kbridge/<pid>/.
    assert len(kernels) == 1
    cf = kernels[0]["connection_file"]
    assert cf.startswith(f"{server.runtime}/kbridge/{server.proc.pid}/"), cf
    assert stat.S_IMODE(os.stat(cf).st_mode) == 0o600


# --- the files ------------------------------------------------------------------------

def test_installed_files(prefix):
    files = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*") if not p.is_dir())
    assert files == ["bin/kbridge", "lib/kbridge/kbridge-agent", "lib/kbridge/kbridge-token",
                     UNIT_REL, "share/doc/kbridge/README.md"]
    for exe in ("bin/kbridge", "lib/kbridge/kbridge-agent", "lib/kbridge/kbridge-token"):
        assert os.access(prefix / exe, os.X_OK), exe
    assert stat.S_IMODE((prefix / UNIT_REL).stat().st_mode) == 0o644
    # The install manifest lists the same files (what a packager or `xargs rm` uses).
    manifest = pathlib.Path(build_dir(), "install_manifest.txt").read_text().split()
    assert sorted(manifest) == [str(prefix / f) for f in files]


def test_unit_dir_is_configurable_and_destdir_staging_works(tmp_path):
    """A packager's layout: prefix /usr, units where Debian keeps them, DESTDIR staging;
    the unit is its own component, so this needs no build."""
    build = tmp_path / "b"
    cfg = subprocess.run(["cmake", "-S", str(HERE.parents[1]), "-B", str(build),
                          "-DKBRIDGE_TESTS=OFF", "-DCMAKE_INSTALL_PREFIX=/usr",
                          "-DKBRIDGE_SYSTEMD_UNIT_DIR=/lib/systemd/system"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stderr
    stage = tmp_path / "stage"
    out = subprocess.run(["cmake", "--install", str(build), "--component", "systemd"],
                         env=dict(os.environ, DESTDIR=str(stage)), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    files = [str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()]
    assert files == ["lib/systemd/system/kbridge.service"]
    unit = parse_unit((stage / files[0]).read_text())["Service"]
    assert unit["ExecStart"][-1].startswith("/usr/bin/kbridge serve ")
    assert unit["ExecStartPre"] == ["/usr/lib/kbridge/kbridge-token /etc/kbridge/token"]


# --- the token helper -----------------------------------------------------------------

def test_token_helper(prefix, tmp_path):
    path = tmp_path / "etc" / "kbridge" / "token"
    token = make_token(prefix, path)
    assert re.fullmatch(r"[0-9a-f]{48}", token)
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # An existing token is kept (restarts keep clients working) ...
    assert make_token(prefix, path) == token
    # ... but never left readable by others,
    path.chmod(0o644)
    assert make_token(prefix, path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # and an empty file is not a token (kbridge would run without authentication).
    path.write_text("")
    new = make_token(prefix, path)
    assert re.fullmatch(r"[0-9a-f]{48}", new) and new != token
    assert make_token(prefix, tmp_path / "t2") != new
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary left


# --- the unit -------------------------------------------------------------------------

def test_unit_contents(prefix, unit):
    s = {k: v[-1] for k, v in unit["Service"].items()}
    assert s["Type"] == "simple" and s["User"] == "root"
    assert s["ExecStart"] == (f"{prefix}/bin/kbridge serve --ip 127.0.0.1 --port 49999 "
                              f"--token-file {TOKEN} --state-dir /var/lib/kbridge")
    assert s["ExecStartPre"] == f"{prefix}/lib/kbridge/kbridge-token {TOKEN}"
    assert s["ConfigurationDirectory"] == "kbridge" and s["ConfigurationDirectoryMode"] == "0700"
    assert s["StateDirectory"] == "kbridge" and s["StateDirectoryMode"] == "0700"
    assert s["RuntimeDirectory"] == "kbridge" and s["RuntimeDirectoryMode"] == "0700"
    assert s["Environment"] == "XDG_RUNTIME_DIR=/run/kbridge"
    assert s["Restart"] == "on-failure"
    assert s["KillMode"] == "mixed"
    assert s["StandardOutput"] == "null"  # the banner carries the token
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # What would break namespaces, cgroups or pasta is not set.
    for key in ("PrivateUsers", "ProtectKernelTunables", "ProtectControlGroups",
                "RestrictNamespaces", "PrivateDevices", "ProtectClock", "ProtectHostname",
                "ProtectKernelLogs", "ProtectProc", "ProcSubset", "DevicePolicy",
                "DeviceAllow", "DynamicUser", "PrivateNetwork"):
        assert key not in s, key
    assert not any(v.startswith("@system-service") for v in unit["Service"].get("SystemCallFilter", []))


def test_unit_uses_only_real_options(prefix, unit):
    helptext = subprocess.run([str(prefix / "bin/kbridge"), "serve", "--help"],
                              capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"^  (--[a-z-]+)", helptext, re.M))
    argv = shlex.split(unit["Service"]["ExecStart"][-1])
    used = {a for a in argv if a.startswith("--")}
    assert used and used <= known, used - known


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_unit_verifies(prefix):
    out = subprocess.run(["systemd-analyze", "verify", str(prefix / UNIT_REL)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


# --- what was installed runs ----------------------------------------------------------

def test_installed_kbridge_serves(prefix, tmp_path):
    token_file = tmp_path / "token"
    token = make_token(prefix, token_file)
    state = tmp_path / "state"
    server = Served(tmp_path, [str(prefix / "bin/kbridge"), "serve", "--port", "0",
                               "--token-file", str(token_file), "--state-dir", str(state)],
                    token, new_runtime(tmp_path), state)
    try:
        assert token not in server.logs()
        check_serves(server, prefix)
    finally:
        server.stop()


def test_installed_agent_is_required(prefix, tmp_path):
    """Without its agent the installed kbridge says so, rather than half-starting."""
    copy = tmp_path / "bin"
    copy.mkdir()
    shutil.copy2(prefix / "bin/kbridge", copy / "kbridge")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    out = subprocess.run([str(copy / "kbridge"), "serve", "--port", "0", "--token", ""],
                         env=clean_env(runtime), capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "kbridge-agent not found" in out.stderr
    assert_nothing_left(runtime)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare")
                    or not shutil.which("systemd-analyze"),
                    reason="needs root, unshare and systemd-analyze")
def test_unit_execstart_under_its_hardening(prefix, unit, tmp_path):
    """The unit's ExecStartPre and ExecStart, run by hand under the unit's hardening, with
    the token path and port changed (the real ones belong to the machine)."""
    svc = unit["Service"]
    token_file = tmp_path / "etc-kbridge" / "token"
    runtime = new_runtime(tmp_path)
    emulate = ["unshare", "--mount", "--propagation", "slave", PY, str(HERE / "unitsandbox.py"),
               str(prefix / UNIT_REL), "--setenv", f"XDG_RUNTIME_DIR={runtime}", "--"]
    pre = shlex.split(svc["ExecStartPre"][-1].replace(TOKEN, str(token_file)))
    subprocess.run(emulate + pre, check=True, timeout=30)
    token = token_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{48}", token)
    argv = shlex.split(svc["ExecStart"][-1].replace(TOKEN, str(token_file)))
    argv[argv.index("--port") + 1] = "0"
    state = tmp_path / "state"  # the machine's /var/lib/kbridge is not the test's
    argv[argv.index("--state-dir") + 1] = str(state)
    server = Served(tmp_path, emulate + argv, token, runtime, state)
    try:
        with open(f"/proc/{server.proc.pid}/status") as f:
            status = f.read()
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        assert re.search(r"^Seccomp:\s+2$", status, re.M)
        check_serves(server, prefix)
    finally:
        server.stop()


SANDBOX_TESTS = ["test_sbx_isolation", "test_sbx_net", "test_sbx_limits", "test_sbx_files",
                 "test_sbx_proc", "test_sbx_life", "test_sbx_owner"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare")
                    or not shutil.which("systemd-analyze"),
                    reason="needs root, unshare and systemd-analyze")
@pytest.mark.parametrize("name", SANDBOX_TESTS)
def test_sandboxes_work_under_the_units_hardening(prefix, name):
    """The sandbox suites (namespaces, cgroups, pasta, pty, files) pass under the unit's
    hardening: what the unit sets does not break what kbridge's sandboxes need."""
    binary = pathlib.Path(build_dir(), "tests", name)
    if not binary.exists():
        pytest.skip(f"{binary} not built")
    agent = pathlib.Path(build_dir(), "kbridge-agent")
    stage = None
    if str(binary.resolve()).startswith(("/tmp/", "/var/tmp/")):
        # PrivateTmp hides a build tree under /tmp (a CI clone there): run copies from /run.
        import tempfile
        stage = pathlib.Path(tempfile.mkdtemp(prefix="kbridge-unit-", dir="/run"))
        binary = pathlib.Path(shutil.copy2(binary, stage))
        agent = pathlib.Path(shutil.copy2(agent, stage))
    env = dict(os.environ, KBRIDGE_AGENT=str(agent))

    def suite():
        out = subprocess.run(["unshare", "--mount", "--propagation", "slave", PY,
                              str(HERE / "unitsandbox.py"), str(prefix / UNIT_REL),
                              "--private-tmp", "--", str(binary)], cwd=str(binary.parent),
                             env=env, capture_output=True, text=True, timeout=600)
        text = out.stdout + out.stderr
        ok = (out.returncode == 0 and re.search(r"^\[  PASSED  \] [1-9]", text, re.M)
              and "[  FAILED  ]" not in text)
        return ok, text

    # One rerun: test_sbx_isolation's `ps | sort | tr` check races the shell's fork of tr
    # (it fails about 1 run in 12 without any hardening too).
    try:
        ok, first = suite()
        if not ok:
            ok, second = suite()
            assert ok, first[-4000:] + "\n--- rerun ---\n" + second[-4000:]
    finally:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)
