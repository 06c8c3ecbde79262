"""Sandboxes: the control-plane REST API and their lifecycle, with the real binary.

Create (answered once the sandbox runs), list with E2B's metadata filter and paging,
detail, kill, timeouts that end everything in a sandbox, pause that freezes it and
connect that resumes it, persistence across a kbridge restart and a SIGKILL, and every
bad input with its exact answer.
"""
import asyncio
import os
import subprocess
import time
import urllib.parse

import pytest

from conftest import kbridge_bin, sandbox_processes, wait_until
from kbharness import KBridge, NativeClient, _SANDBOX, run, validate_sandbox

CREATED = dict(_SANDBOX)  # what create and connect answer: the model and its tokens


def main_text(end):
    assert end["type"] == "end_of_execution", end
    return next((r["text"] for r in end["execution"]["results"] if r["is_main_result"]), None)


def create(srv, **body):
    status, headers, sb = srv.api("POST", "/v2/sandboxes", body)
    assert status == 201, (status, sb)
    validate_sandbox(sb)
    return sb


def sandbox_dirs(srv):
    base = srv.state_dir / "sandboxes"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


async def run_in(srv, sandbox_id, code, timeout=120):
    c = await NativeClient.connect(srv, sandbox_id=sandbox_id)
    try:
        _, end = await c.execute(code, timeout=timeout)
        return end
    finally:
        await c.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("sandboxes"), "--keep-alive", "1")
    yield srv
    srv.stop()


def test_create_get_list_kill(server):
    sb = create(server, templateID="base", metadata={"user": "alice", "app name": "x&y=z"},
                envVars={"FOO": "bar"}, timeout=120)
    sid = sb["sandboxID"]
    assert sb["templateID"] == "base" and sb["state"] == "running" and sb["envdVersion"]
    assert sb["metadata"] == {"user": "alice", "app name": "x&y=z"}
    assert sb["envdAccessToken"] and sb["trafficAccessToken"] and sb["domain"]
    assert sb["envdAccessToken"] != sb["trafficAccessToken"] != server.token
    assert sid.startswith("kb") and len(sid) <= 32
    # Its end: 120 s after its start.
    start = time.mktime(time.strptime(sb["startedAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    end = time.mktime(time.strptime(sb["endAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 119 <= end - start <= 121
    status, _, detail = server.api("GET", f"/sandboxes/{sid}")
    assert status == 200 and detail["sandboxID"] == sid and "envdAccessToken" not in detail
    # The env vars reach its kernels.
    assert main_text(run(run_in(server, sid, "import os; os.environ['FOO']"))) == "'bar'"
    # E2B's triple-encoded metadata filter (e2b-selfhost.md 3.5), AND of every pair.
    q = "metadata=app%252520name%3Dx%252526y%25253Dz&state=running"
    status, _, listed = server.api("GET", f"/v2/sandboxes?{q}")
    assert status == 200 and [x["sandboxID"] for x in listed] == [sid]
    q = "metadata=" + urllib.parse.quote(urllib.parse.quote("user=alice&app name=nope"))
    assert server.api("GET", f"/v2/sandboxes?{q}")[2] == []
    assert server.api("GET", "/v2/sandboxes?state=paused")[2] == []
    # Kill: 204, then not found (E2B's SDK reads code 404 as "already gone").
    status, _, _ = server.api("DELETE", f"/sandboxes/{sid}")
    assert status == 204
    status, _, err = server.api("GET", f"/sandboxes/{sid}")
    assert status == 404 and err == {"code": 404, "message": f"sandbox {sid} not found"}
    assert server.api("DELETE", f"/sandboxes/{sid}")[0] == 404
    wait_until(lambda: not sandbox_processes(sid), timeout=5, message="processes left after kill")
    wait_until(lambda: sid not in sandbox_dirs(server), timeout=5, message="directory left after kill")
    assert f"sandbox {sid}: ended: killed through the API" in server.logs()


def test_list_pages_with_next_token(server):
    made = [create(server, metadata={"batch": "paging"})["sandboxID"] for _ in range(3)]
    seen, token = [], None
    while True:
        q = "metadata=" + urllib.parse.quote(urllib.parse.quote("batch=paging")) + "&limit=1"
        if token:
            q += "&nextToken=" + urllib.parse.quote(token)
        status, headers, page = server.api("GET", f"/v2/sandboxes?{q}")
        assert status == 200 and len(page) <= 1
        seen += [x["sandboxID"] for x in page]
        token = headers.get("x-next-token")
        if not token:
            break
    assert seen == made  # oldest first, each once
    desc = server.api("GET", "/v2/sandboxes?order=desc&metadata=" +
                      urllib.parse.quote(urllib.parse.quote("batch=paging")))[2]
    assert [x["sandboxID"] for x in desc] == made[::-1]
    for sid in made:
        assert server.api("DELETE", f"/sandboxes/{sid}")[0] == 204


BAD_CREATES = [
    ({"templateID": "nope"}, 400, "template 'nope' not found"),
    ({"templateID": 5}, 400, "templateID must be a non-empty string"),
    ({"timeout": 0}, 400, "timeout must be at least 1 second (got 0)"),
    ({"timeout": -5}, 400, "timeout must be at least 1 second (got -5)"),
    ({"timeout": "soon"}, 400, "timeout must be a whole number of seconds"),
    ({"timeout": 1.5}, 400, "timeout must be a whole number of seconds"),
    ({"metadata": {"a": 1}}, 400, "metadata.a must be a string"),
    ({"metadata": ["a"]}, 400, "metadata must be an object of strings"),
    ({"metadata": {f"k{i}": "v" for i in range(65)}}, 400, "metadata has 65 keys; at most 64"),
    ({"metadata": {"k": "v" * 9000}}, 400, "metadata is 9001 bytes; at most 8192"),
    ({"envVars": {"A": 1}}, 400, "envVars.A must be a string"),
    ({"memoryMB": 10 ** 7}, 400, "over this server's limit"),
    ({"memoryMB": 0}, 400, "memoryMB must be a positive whole number"),
    ({"cpuCount": 100000}, 400, "over this server's limit"),
    ({"cpuCount": "two"}, 400, "cpuCount must be a positive whole number"),
    ({"allow_internet_access": "yes"}, 400, "allow_internet_access must be true or false"),
    ({"volumeMounts": [{"name": "v", "path": "/mnt"}]}, 400, "volume mounts are not supported"),
]


@pytest.mark.parametrize("body,status,message", BAD_CREATES)
def test_bad_create_is_refused_and_nothing_is_left(server, body, status, message):
    before = sandbox_dirs(server)
    got, _, err = server.api("POST", "/v2/sandboxes", body)
    assert got == status and err["code"] == status and message in err["message"], err
    # Nothing new (an earlier test's sandbox may still be going away meanwhile).
    assert set(sandbox_dirs(server)) <= set(before)


def test_bad_bodies_and_routes(server):
    for raw in (b"{", b"[1]", b"\xff\xfe"):
        status, _, err = server.api("POST", "/v2/sandboxes", raw)
        assert status == 400 and err["code"] == 400, err
    status, _, err = server.api("POST", "/v2/sandboxes", {}, token="wrong")
    assert status == 401 and err["code"] == 401
    assert server.api("GET", "/v2/sandboxes", token=False)[0] == 401
    assert server.api("GET", "/v2/sandboxes?state=sleeping")[0] == 400
    assert server.api("GET", "/v2/sandboxes?limit=0")[0] == 400
    assert server.api("GET", "/v2/sandboxes?limit=101")[0] == 400
    assert server.api("GET", "/v2/sandboxes?nextToken=garbage")[0] == 400
    assert server.api("GET", "/v2/sandboxes?order=up")[0] == 400
    assert server.api("POST", "/sandboxes/nosuch/timeout", {"timeout": 5})[2]["code"] == 404
    assert server.api("POST", "/sandboxes/nosuch/pause", {})[0] == 404
    assert server.api("POST", "/v2/sandboxes/nosuch/connect", {})[0] == 404
    assert server.api("DELETE", "/sandboxes/default")[0] == 400
    assert server.api("POST", "/sandboxes/default/pause", {})[0] == 400
    # A huge timeout is capped at --sandbox-max-timeout (24 h by default).
    sb = create(server, timeout=10 ** 12)
    start = time.mktime(time.strptime(sb["startedAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    end = time.mktime(time.strptime(sb["endAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs((end - start) - 86400) <= 2
    sid = sb["sandboxID"]
    for body in ({"timeout": 0}, {"timeout": "x"}, {}):
        assert server.api("POST", f"/sandboxes/{sid}/timeout", body)[0] == 400
    assert server.api("DELETE", f"/sandboxes/{sid}")[0] == 204


def test_max_sandboxes_is_429_and_nothing_half_made(tmp_path):
    srv = KBridge(tmp_path, "--max-sandboxes", "2")
    try:
        a, b = create(srv), create(srv)
        status, headers, err = srv.api("POST", "/v2/sandboxes", {})
        assert status == 429 and err["code"] == 429 and "--max-sandboxes" in err["message"]
        assert headers.get("retry-after")
        assert len(srv.api("GET", "/v2/sandboxes")[2]) == 2 and len(sandbox_dirs(srv)) == 2
        assert srv.api("DELETE", f"/sandboxes/{a['sandboxID']}")[0] == 204
        c = create(srv)  # room again
        for x in (b, c):
            assert srv.api("DELETE", f"/sandboxes/{x['sandboxID']}")[0] == 204
    finally:
        srv.stop()


def test_timeout_ends_the_sandbox_and_everything_in_it(server):
    sid = create(server, timeout=4)["sandboxID"]
    code = ("import subprocess; subprocess.Popen(['sleep', '1000'], start_new_session=True); "
            "open('/home/user/f', 'w').write('x'); 'ok'")
    assert main_text(run(run_in(server, sid, code))) == "'ok'"
    assert sandbox_processes(sid)
    wait_until(lambda: server.api("GET", f"/sandboxes/{sid}")[0] == 404, timeout=15,
               message="the sandbox outlived its timeout")
    wait_until(lambda: not sandbox_processes(sid), timeout=2, message="processes outlived the sandbox")
    wait_until(lambda: sid not in sandbox_dirs(server), timeout=5, message="its files outlived it")
    assert f"sandbox {sid}: ended: its timeout passed" in server.logs()


def test_set_timeout_extends(server):
    sid = create(server, timeout=2)["sandboxID"]
    assert server.api("POST", f"/sandboxes/{sid}/timeout", {"timeout": 30})[0] == 204
    time.sleep(3)
    status, _, detail = server.api("GET", f"/sandboxes/{sid}")
    assert status == 200 and detail["state"] == "running"
    assert server.api("DELETE", f"/sandboxes/{sid}")[0] == 204


def test_pause_freezes_and_connect_resumes(server):
    sid = create(server, timeout=120)["sandboxID"]

    async def go():
        c = await NativeClient.connect(server, sandbox_id=sid)
        _, end = await c.execute(
            "import threading, time\nn = [0]\n"
            "def tick():\n    while True:\n        n[0] += 1\n        time.sleep(0.05)\n"
            "threading.Thread(target=tick, daemon=True).start()\ntime.sleep(0.5)\nn[0]")
        assert int(main_text(end)) > 0
        _, end = await c.execute("n[0]")
        before = int(main_text(end))
        status, _, _ = server.api("POST", f"/sandboxes/{sid}/pause", {})
        assert status == 204
        assert server.api("GET", f"/sandboxes/{sid}")[2]["state"] == "paused"
        assert server.api("POST", f"/sandboxes/{sid}/pause", {})[0] == 409  # already
        listed = server.api("GET", "/v2/sandboxes?state=paused")[2]
        assert sid in [x["sandboxID"] for x in listed]
        await asyncio.sleep(2)  # 40 ticks if it were running
        status, _, sb = server.api("POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 60})
        assert status == 201 and sb["sandboxID"] == sid and sb["envdAccessToken"]
        _, end = await c.execute("n[0]")
        after = int(main_text(end))
        assert after - before < 20, (before, after)  # frozen: the counter stopped
        # Connecting to a running sandbox is 200.
        assert server.api("POST", f"/v2/sandboxes/{sid}/connect", {})[0] == 200
        await c.close()
    run(go())
    assert server.api("DELETE", f"/sandboxes/{sid}")[0] == 204


def test_a_sandbox_survives_a_restart(tmp_path):
    state = tmp_path / "state"
    env = {"KBRIDGE_STATE_DIR": str(state)}
    srv = KBridge(tmp_path, env=env)
    srv.state_dir = state
    sb = create(srv, metadata={"keep": "me"}, envVars={"FOO": "kept"}, timeout=600)
    sid = sb["sandboxID"]
    assert main_text(run(run_in(srv, sid, "open('/home/user/keep.txt', 'w').write('files too'); 1"))) == "1"
    srv.stop()
    assert not sandbox_processes(sid)
    srv = KBridge(tmp_path, env=env)
    srv.state_dir = state
    try:
        wait_until(lambda: srv.api("GET", f"/sandboxes/{sid}")[0] == 200, timeout=10,
                   message="the sandbox was not restored")
        detail = srv.api("GET", f"/sandboxes/{sid}")[2]
        assert detail["restarted"] is True and detail["metadata"] == {"keep": "me"}
        assert detail["endAt"] == sb["endAt"] and detail["startedAt"] == sb["startedAt"]
        end = run(run_in(srv, sid, "import os; (open('/home/user/keep.txt').read(), os.environ['FOO'])"))
        assert main_text(end) == "('files too', 'kept')"
        # Its tokens are the same: an SDK client that holds them keeps working.
        status, _, again = srv.api("POST", f"/v2/sandboxes/{sid}/connect", {})
        assert status == 200 and again["envdAccessToken"] == sb["envdAccessToken"]
        assert "sandboxes: 1 restored" in srv.logs()
        assert srv.api("DELETE", f"/sandboxes/{sid}")[0] == 204
    finally:
        srv.stop()


def test_sigkill_of_kbridge_leaves_nothing_running(tmp_path):
    state = tmp_path / "state"
    env = {"KBRIDGE_STATE_DIR": str(state)}
    srv = KBridge(tmp_path, env=env)
    srv.state_dir = state
    sid = create(srv, timeout=600)["sandboxID"]
    code = "import subprocess; subprocess.Popen(['sleep', '1000'], start_new_session=True); 1"
    assert main_text(run(run_in(srv, sid, code))) == "1"
    assert sandbox_processes(sid)
    srv.proc.kill()
    srv.proc.wait()
    # Its agent sees kbridge's socket close and takes everything with it.
    wait_until(lambda: not sandbox_processes(sid), timeout=10, message="processes outlived kbridge")
    srv.stop(check=False)
    srv = KBridge(tmp_path, env=env)
    srv.state_dir = state
    try:
        wait_until(lambda: srv.api("GET", f"/sandboxes/{sid}")[0] == 200, timeout=10,
                   message="the sandbox was not restored")
        assert srv.api("DELETE", f"/sandboxes/{sid}")[0] == 204
        wait_until(lambda: sid not in sandbox_dirs(srv), timeout=5, message="directory left")
        with open("/proc/self/mountinfo") as f:
            assert str(state) not in f.read()
    finally:
        srv.stop()


def test_a_second_kbridge_on_the_same_state_dir_is_refused(tmp_path):
    # It would reap the first one's sandboxes as stale: it must not start at all.
    state = tmp_path / "state"
    env = {"KBRIDGE_STATE_DIR": str(state)}
    srv = KBridge(tmp_path, env=env)
    srv.state_dir = state
    try:
        sid = create(srv, timeout=600)["sandboxID"]
        assert main_text(run(run_in(srv, sid, "1"))) == "1"
        second = subprocess.run([kbridge_bin(), "serve", "--port", "0", "--token", "t"],
                                env={**os.environ, **env}, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1
        assert f"in use by another kbridge (pid {srv.proc.pid})" in second.stderr
        assert sandbox_processes(sid), "the refused kbridge touched the first one's sandbox"
        assert main_text(run(run_in(srv, sid, "2"))) == "2"
        assert srv.api("DELETE", f"/sandboxes/{sid}")[0] == 204
    finally:
        srv.stop()


def test_bad_templates_stop_the_start(tmp_path):
    for arg, words in ((f"nope={tmp_path}/missing", "--template nope="),
                       (f"empty={tmp_path}", "not a root filesystem")):
        proc = subprocess.run([kbridge_bin(), "serve", "--port", "0", "--template", arg,
                               "--state-dir", str(tmp_path / "st")],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and words in proc.stderr, proc.stderr
    proc = subprocess.run([kbridge_bin(), "serve", "--port", "0", "--node-id", "BAD!"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "--node-id" in proc.stderr


MINI_ROOTFS = r"""set -e; T=$1; mkdir -p $T/usr/bin $T/etc $T/lib64
cp /bin/dash $T/usr/bin/sh; ln -s usr/bin $T/bin
for l in $(ldd /bin/dash | grep -o '/lib[^ ]*' | sort -u); do
  mkdir -p $(dirname $T/usr$l); cp -L $l $T/usr$l; done
ln -sf usr/lib $T/lib; cp -L /lib64/ld-linux-x86-64.so.2 $T/lib64/
echo mine > $T/etc/kbridge-template-marker
"""


def test_a_directory_template_makes_sandboxes(tmp_path):
    # A minimal root filesystem, as debootstrap would make a bigger one.
    root = tmp_path / "rootfs"
    subprocess.run(["sh", "-c", MINI_ROOTFS, "sh", str(root)], check=True)
    srv = KBridge(tmp_path, "--template", f"mine={root}")
    try:
        sb = create(srv, templateID="mine")
        assert sb["templateID"] == "mine"
        listed = srv.api("GET", "/v2/sandboxes")[2]
        assert [x["templateID"] for x in listed] == ["mine"]
        # Kernels need Python, which this template lacks: starting one fails clearly.
        c_end = run(run_in(srv, sb["sandboxID"], "1"))
        err = c_end["execution"]["error"]
        assert err["name"] == "KernelDead" and "no such executable" in err["value"], c_end
        assert srv.api("DELETE", f"/sandboxes/{sb['sandboxID']}")[0] == 204
        # The template itself is never changed.
        assert sorted(os.listdir(root)) == ["bin", "etc", "lib", "lib64", "usr"]
    finally:
        srv.stop()
