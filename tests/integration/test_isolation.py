"""Every isolation claim of a sandbox, tried from inside one as an attacker would.

Code runs in a kernel in sandbox A (as `user`, or as root where said) and tries to reach
sandbox B, the host and kbridge itself: processes, files by every path, kbridge's
runtime and state directories and token, the host's loopback and kbridge's own port,
signals outside, the template's files; and the limits: pids (a fork bomb) and memory
(an OutOfMemoryError naming the limit, the kernel restarted, the rest unaffected).
"""
import asyncio
import os
import socket
import threading

import pytest

from kbharness import KBridge, NativeClient, run


def main_text(end):
    assert end["type"] == "end_of_execution", end
    assert end["execution"]["error"] is None, end["execution"]["error"]
    return next((r["text"] for r in end["execution"]["results"] if r["is_main_result"]), None)


def value(end):
    return eval(main_text(end))  # the repr of a Python literal


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("iso"))
    yield srv
    srv.stop()


class Pair:
    """Two sandboxes, each with a native client."""

    def __init__(self, server):
        self.server = server

    async def __aenter__(self):
        self.a = await NativeClient.connect(self.server)
        self.b = await NativeClient.connect(self.server)
        self.ida = self.a.session["sandbox_id"]
        self.idb = self.b.session["sandbox_id"]
        return self

    async def __aexit__(self, *exc):
        await self.a.close()
        await self.b.close()


def test_processes_of_others_are_invisible_and_unreachable(server):
    async def go():
        async with Pair(server) as p:
            _, end = await p.b.execute("import os, time; os.getpid()")
            _, end = await p.a.execute(
                "import os, signal\n"
                "pids = sorted(int(x) for x in os.listdir('/proc') if x.isdigit())\n"
                "cmds = [open(f'/proc/{x}/cmdline', 'rb').read().split(b'\\0')[0].decode() for x in pids]\n"
                "def kill(pid):\n"
                "    try:\n        os.kill(pid, signal.SIGKILL); return 'killed'\n"
                "    except ProcessLookupError: return 'no such process'\n"
                "    except PermissionError: return 'denied'\n"
                f"(pids, cmds, kill({server.proc.pid}), kill(1))")
            pids, cmds, kill_kbridge, kill_init = value(end)
            # Its own agent is pid 1; nothing of B's, the host's or kbridge's is there.
            assert pids[0] == 1 and len(pids) < 10, (pids, cmds)
            assert not any("kbridge serve" in c for c in cmds)
            assert kill_kbridge == "no such process" or server.proc.pid in pids
            assert kill_init in ("denied", "no such process")
            assert server.alive()
            # B is untouched.
            _, end = await p.b.execute("'B alive'")
            assert main_text(end) == "'B alive'"
    run(go())


def test_files_of_others_and_of_kbridge_are_out_of_reach(server):
    async def go():
        async with Pair(server) as p:
            _, end = await p.b.execute("open('/home/user/secret-b', 'w').write('B-SECRET'); 1")
            assert main_text(end) == "1"
            host_paths = [str(server.runtime), str(server.state_dir),
                          f"{server.state_dir}/sandboxes/{p.idb}/fs", "/var/lib/kbridge", "/etc/kbridge",
                          f"/proc/{server.proc.pid}/root", f"/proc/{server.proc.pid}/environ"]
            _, end = await p.a.execute(
                "import os, glob\n"
                "def readable(path):\n"
                "    # A masked path may exist, as an empty read-only mount: nothing in it.\n"
                "    try:\n"
                "        return bool(os.listdir(path)) if os.path.isdir(path) else bool(open(path, 'rb').read(1))\n"
                "    except OSError:\n"
                "        return False\n"
                "found = []\n"
                f"for path in {host_paths!r}:\n"
                "    found.append((path, readable(path)))\n"
                "hits = []\n"
                "for root in ['/proc', '/home', '/tmp', '/run', '/var', '/root']:\n"
                "    for dirpath, dirs, files in os.walk(root, onerror=lambda e: None):\n"
                "        if dirpath.startswith('/proc/') and dirpath.count('/') > 3: dirs[:] = []\n"
                "        for f in files:\n"
                "            if f == 'secret-b': hits.append(os.path.join(dirpath, f))\n"
                "for x in glob.glob('/proc/*/root/home/user/secret-b'): hits.append(x)\n"
                "(found, hits)")
            found, hits = value(end)
            assert not [f for f in found if f[1]], found
            assert hits == []
    run(go())


def test_the_token_and_other_keys_are_nowhere_inside(server):
    async def go():
        async with Pair(server) as p:
            # B's kernel has a connection file with a key; kbridge has a token.
            _, end = await p.b.execute("import glob; glob.glob('/run/kbridge/*.json')")
            b_files = value(end)
            assert b_files, "B's kernel has its connection file where kernels look"
            _, end = await p.a.execute(
                "import os, glob\n"
                "blobs = []\n"
                "for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline') + "
                "glob.glob('/run/kbridge/*'):\n"
                "    try: blobs.append(open(path, 'rb').read())\n"
                "    except OSError: pass\n"
                f"(any({server.token.encode()!r} in b for b in blobs), "
                f"[os.path.exists(f) for f in {b_files!r}], dict(os.environ).get('KBRIDGE_TOKEN'))")
            token_seen, b_visible, env_token = value(end)
            assert token_seen is False and env_token is None
            assert b_visible == [False] * len(b_files)
    run(go())


def test_the_hosts_loopback_and_kbridges_port_are_unreachable(server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    host_port = listener.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    t.start()

    async def go():
        async with Pair(server) as p:
            _, end = await p.a.execute(
                "import socket\n"
                "def probe(port):\n"
                "    s = socket.socket(); s.settimeout(2)\n"
                "    try: s.connect(('127.0.0.1', port)); return 'connected'\n"
                "    except OSError as e: return type(e).__name__\n"
                f"(probe({host_port}), probe({server.port}))")
            to_host, to_kbridge = value(end)
            assert to_host != "connected" and to_kbridge != "connected"
            # Both sandboxes can listen on the same port: each has its own network.
            code = ("import socket; s = socket.socket(); "
                    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                    "s.bind(('0.0.0.0', 3000)); s.listen(); keep = s; 'listening'")
            _, ea = await p.a.execute(code)
            _, eb = await p.b.execute(code)
            assert main_text(ea) == main_text(eb) == "'listening'"
    run(go())
    listener.close()
    assert accepted == []


def test_user_cannot_write_the_template_and_root_writes_only_its_own_layer(tmp_path):
    marker = "/usr/share/kbridge-isolation-test"
    assert not os.path.exists(marker)
    srv = KBridge(tmp_path, "--sandbox-kernel-user", "root")
    try:
        async def go():
            c = await NativeClient.connect(srv)
            _, end = await c.execute(
                "import os\n"
                f"open({marker!r}, 'w').write('root was here')\n"
                "(os.getuid(), open('/etc/hostname').read() if os.path.exists('/etc/hostname') else '')")
            uid, _ = value(end)
            assert uid == 0
            await c.close()
        run(go())
        assert not os.path.exists(marker), "the host's /usr was changed"
    finally:
        srv.stop()


def test_user_cannot_write_the_template(server):
    async def go():
        c = await NativeClient.connect(server)
        _, end = await c.execute(
            "import os\ntry:\n    open('/usr/share/kbtest', 'w'); r = 'wrote'\n"
            "except PermissionError: r = 'denied'\n(os.getuid(), r)")
        assert value(end) == (1000, "denied")
        await c.close()
    run(go())


def test_a_fork_bomb_hits_the_pids_limit_and_nothing_else(tmp_path):
    srv = KBridge(tmp_path, "--sandbox-pids", "64")
    try:
        async def go():
            async with Pair(srv) as p:
                _, end = await p.a.execute(
                    "import os, time\nkids, err = [], None\n"
                    "for _ in range(500):\n"
                    "    try:\n"
                    "        pid = os.fork()\n"
                    "    except OSError as e:\n"
                    "        err = type(e).__name__; break\n"
                    "    if pid == 0:\n        time.sleep(30); os._exit(0)\n"
                    "    kids.append(pid)\n"
                    "for k in kids: os.kill(k, 9)\n"
                    "for k in kids: os.waitpid(k, 0)\n"
                    "(len(kids) < 64, err)", timeout=120)
                assert value(end) == (True, "BlockingIOError")
                # The other sandbox, the same one and kbridge are fine.
                _, end = await p.b.execute("'B fine'")
                assert main_text(end) == "'B fine'"
                _, end = await p.a.execute("'A fine'")
                assert main_text(end) == "'A fine'"
        run(go())
    finally:
        srv.stop()


def test_memory_past_the_limit_is_an_out_of_memory_error(tmp_path):
    srv = KBridge(tmp_path, "--sandbox-memory", "256M")
    try:
        async def go():
            async with Pair(srv) as p:
                _, end = await p.a.execute("x = bytearray(600 * 2**20); x[::4096] = b'1' * len(x[::4096])",
                                           timeout=120)
                err = end["execution"]["error"]
                assert err["name"] == "OutOfMemoryError", end
                assert "256 MiB" in err["value"] and "restarted" in err["value"], err
                # The kernel comes back; the other sandbox never noticed.
                _, end = await p.b.execute("'B fine'")
                assert main_text(end) == "'B fine'"
                for _ in range(100):
                    _, end = await p.a.execute("'A back'", timeout=120)
                    if end["execution"]["error"] is None:
                        break
                    await asyncio.sleep(0.3)
                assert main_text(end) == "'A back'"
        run(go())
        assert srv.alive()
    finally:
        srv.stop()
