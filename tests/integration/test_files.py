"""Files and directory watches in a sandbox on the native WebSocket API, with the real
binary: list (with depth), stat, exists, make_dir (parents; "already exists" has its own
code), write and read (text and base64; a missing parent and a directory are errors),
remove, rename, watches with their events; and bad input: `..` and symlink escapes, NUL
in a path, a watch on a directory that is then removed. Also the sandbox ops.
"""
import asyncio
import base64

import pytest

from kbharness import KBridge, NativeClient, run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = KBridge(tmp_path_factory.mktemp("files"), "--keep-alive", "30")
    yield srv
    srv.stop()


async def sh(c, cmd):
    rid = await c.send(op="process_start", cmd=cmd)
    out = ""
    while True:
        m = await c.wait_for(rid)
        if m["type"] == "process_exit":
            assert m["exit_code"] == 0, (cmd, out, m)
            return out
        if m["type"] == "request_error":
            raise AssertionError(m)
        out += m.get("text", "")


def err(m, code):
    assert m["type"] == "request_error" and m["code"] == code, m
    return m["message"]


def test_write_read_list_stat(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            m = await c.request(op="files_make_dir", path="/data")
            assert m["type"] == "file" and m["entry"]["type"] == "dir", m
            err(await c.request(op="files_make_dir", path="/data"), "already_exists")
            m = await c.request(op="files_make_dir", path="/data/a/b/c", parents=True)
            assert m["type"] == "file" and m["entry"]["path"] == "/data/a/b/c"
            err(await c.request(op="files_make_dir", path="/data/x/y"), "not_found")
            m = await c.request(op="files_write", path="/data/hello.txt", text="h\u00e9llo\n")
            assert m["type"] == "file" and m["entry"]["size"] == 7 and m["entry"]["type"] == "file", m
            e = m["entry"]
            assert e["name"] == "hello.txt" and e["owner"] == "root" and e["permissions"][0:2] == "rw"
            raw = bytes(range(256))
            m = await c.request(op="files_write", path="/data/a/bin", data=base64.b64encode(raw).decode())
            assert m["type"] == "file" and m["entry"]["size"] == 256
            m = await c.request(op="files_read", path="/data/a/bin", encoding="base64")
            assert m["type"] == "file_content" and base64.b64decode(m["data"]) == raw
            m = await c.request(op="files_read", path="/data/hello.txt")
            assert m["type"] == "file_content" and m["text"] == "h\u00e9llo\n"
            # Overwrite; relative paths are against the sandbox's cwd.
            m = await c.request(op="files_write", path="/data/hello.txt", text="v2")
            assert m["entry"]["size"] == 2
            m = await c.request(op="files_write", path="rel.txt", text="r")
            assert m["type"] == "file" and m["entry"]["path"] == c.session["sandbox"].get("cwd", "/home/user") + "/rel.txt" \
                or m["entry"]["path"].endswith("/rel.txt"), m
            # A missing parent directory is an error; so is reading a directory.
            err(await c.request(op="files_write", path="/data/nope/f.txt", text="x"), "not_found")
            err(await c.request(op="files_read", path="/data"), "is_a_directory")
            err(await c.request(op="files_read", path="/data/missing"), "not_found")
            # list, depth 1 and 3
            m = await c.request(op="files_list", path="/data")
            assert m["type"] == "files"
            names = sorted(e["name"] for e in m["entries"])
            assert names == ["a", "hello.txt"], names
            m = await c.request(op="files_list", path="/data", depth=3)
            paths = sorted(e["path"] for e in m["entries"])
            assert "/data/a/b" in paths and "/data/a/bin" in paths and "/data/a/b/c" in paths, paths
            # stat, exists, a symlink
            await sh(c, "ln -s hello.txt /data/link")
            m = await c.request(op="files_stat", path="/data/link")
            assert m["entry"]["type"] == "symlink" and m["entry"]["symlink_target"] == "hello.txt", m
            m = await c.request(op="files_exists", path="/data/hello.txt")
            assert m == {**m, "type": "exists", "exists": True}
            m = await c.request(op="files_exists", path="/data/nothing")
            assert m["type"] == "exists" and m["exists"] is False
            # rename, remove
            m = await c.request(op="files_rename", path="/data/hello.txt", new_path="/data/a/moved.txt")
            assert m["type"] == "file" and m["entry"]["path"] == "/data/a/moved.txt", m
            err(await c.request(op="files_stat", path="/data/hello.txt"), "not_found")
            m = await c.request(op="files_remove", path="/data/a")
            assert m["type"] == "ok", m
            m = await c.request(op="files_exists", path="/data/a/moved.txt")
            assert m["exists"] is False
            err(await c.request(op="files_remove", path="/data/a"), "not_found")
            # As user: no writing into /etc.
            err(await c.request(op="files_write", path="/etc/evil", text="x", user="user"), "permission_denied")
            m = await c.request(op="files_write", path="/home/user/mine", text="x", user="user")
            assert m["entry"]["owner"] == "user", m
        finally:
            await c.close()
    run(go())


def test_escapes_and_bad_paths(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            # The sandbox's root is a template's layers under its own writable layer; the
            # host's kbridge state (this sandbox's own tokens in sandbox.json) is hidden.
            # Neither .. nor symlinks (absolute, relative, /proc/1/root) reach it.
            import os
            secret = f"{server.state_dir}/sandboxes/{c.session['sandbox_id']}/sandbox.json"
            assert os.path.exists(secret)
            for p in ["/../../.." + secret, "../../../../../../.." + secret]:
                m = await c.request(op="files_read", path=p)
                assert m["type"] == "request_error" and m["code"] in ("not_found", "permission_denied"), m
            await sh(c, "mkdir -p /esc && ln -sfn / /esc/abs && ln -sfn ../../../../.. /esc/rel "
                        "&& ln -sfn /proc/1/root /esc/proc")
            for link in ["/esc/abs", "/esc/rel", "/esc/proc"]:
                m = await c.request(op="files_read", path=link + secret)
                assert m["type"] == "request_error" and m["code"] in ("not_found", "permission_denied"), m
                m = await c.request(op="files_list", path=link + "/")
                assert m["type"] in ("files", "request_error"), m
                # A write through the link lands inside (or is refused), never on the host.
                marker = f"/var/tmp/kbridge-escape-{os.getpid()}"
                await c.request(op="files_write", path=link + marker, text="x")
                assert not os.path.exists(marker), link
            # NUL in a path, empty and over-long paths.
            err(await c.request(op="files_read", path="/tmp/a\u0000b"), "bad_request")
            err(await c.request(op="files_stat", path=""), "bad_request")
            err(await c.request(op="files_stat", path="/" + "a" * 5000), "bad_request")
            err(await c.request(op="files_write", path="/tmp/x"), "bad_request")
            err(await c.request(op="files_write", path="/tmp/x", data="!!"), "bad_request")
            err(await c.request(op="files_list", path="/tmp", depth=0), "bad_request")
            err(await c.request(op="files_rename", path="/tmp/x"), "bad_request")
            err(await c.request(op="watch_stop", watch_id="w999"), "not_found")
            # Names that are not UTF-8 are listed, their bad bytes as U+FFFD.
            await sh(c, "mkdir -p /nu && touch /nu/$(printf 'a\\377\\376.txt') /nu/ok.txt "
                        "&& ln -s $(printf '\\377') /nu/badlink")
            m = await c.request(op="files_list", path="/nu")
            assert m["type"] == "files", m
            names = sorted(e["name"] for e in m["entries"])
            assert names == ["a\ufffd\ufffd.txt", "badlink", "ok.txt"], names
            link = next(e for e in m["entries"] if e["name"] == "badlink")
            assert link["symlink_target"] == "\ufffd"
            # A FIFO is never opened (nothing blocks).
            await sh(c, "mkfifo /tmp/fifo")
            err(await c.request(op="files_read", path="/tmp/fifo"), "bad_request")
            m = await c.request(op="files_stat", path="/tmp")
            assert m["type"] == "file"
        finally:
            await c.close()
    run(go())


def test_watch(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            await c.request(op="files_make_dir", path="/w")
            wid = await c.send(op="watch_start", path="/w", recursive=True)
            m = await c.wait_for(wid)
            assert m["type"] == "watch_started", m
            watch_id = m["watch_id"]
            await sh(c, "echo 1 > /w/f.txt")
            await c.request(op="files_make_dir", path="/w/sub")
            await asyncio.sleep(0.3)
            await sh(c, "echo 2 > /w/sub/g.txt; chmod 600 /w/f.txt; echo more >> /w/f.txt; "
                        "touch /w/$(printf 'n\\377')")
            await c.request(op="files_write", path="/w/up.txt", text="3")
            await c.request(op="files_rename", path="/w/f.txt", new_path="/w/h.txt")
            await c.request(op="files_remove", path="/w/h.txt")
            seen = set()
            want = {("create", "sub", "dir"), ("chmod", "f.txt", "file"), ("write", "f.txt", "file"),
                    ("remove", "h.txt", "file"), ("create", "sub/g.txt", "file"),
                    ("create", "n\ufffd", "file")}
            async def until_seen():
                while not want <= seen:
                    m = await c.wait_for(wid)
                    assert m["type"] == "watch_event" and m["watch_id"] == watch_id, m
                    seen.add((m["event"], m["name"], m["file_type"]))
            await asyncio.wait_for(until_seen(), 20)
            # files_write puts a hidden temporary file in place: a rename to its name.
            assert any(e == "rename" for e, _, _ in seen), seen
            m = await c.request(op="watch_stop", watch_id=watch_id)
            assert m["type"] == "ok" and m["watch_id"] == watch_id
            # A watch on a directory that is then removed ends by itself.
            await c.request(op="files_make_dir", path="/gone")
            wid = await c.send(op="watch_start", path="/gone")
            assert (await c.wait_for(wid))["type"] == "watch_started"
            await c.request(op="files_remove", path="/gone")
            while True:
                m = await c.wait_for(wid, timeout=20)
                if m["type"] == "watch_end":
                    break
                assert m["type"] == "watch_event", m
            assert m["reason"] == "removed", m
            # A watch on what does not exist, or is a file.
            err(await c.request(op="watch_start", path="/nonexistent"), "not_found")
            await c.request(op="files_write", path="/afile", text="x")
            err(await c.request(op="watch_start", path="/afile"), "not_a_directory")
        finally:
            await c.close()
    run(go())


def test_sandbox_ops(server):
    async def go():
        c = await NativeClient.connect(server)
        try:
            m = await c.request(op="sandbox_info")
            assert m["type"] == "sandbox" and m["sandbox"]["sandboxID"] == c.session["sandbox_id"]
            end = m["sandbox"]["endAt"]
            m = await c.request(op="sandbox_set_timeout", timeout_ms=600000)
            assert m["type"] == "sandbox" and m["sandbox"]["endAt"] > end, (end, m)
            rid = await c.send(op="process_start", cmd="sleep 60")
            assert (await c.wait_for(rid))["type"] == "process_started"
            m = await c.request(op="sandbox_kill")
            assert m["type"] == "ok" and m["sandbox_id"] == c.session["sandbox_id"]
            # Its process ends with it, then the sandbox ends and the connection closes.
            types = []
            try:
                while True:
                    m = await c.recv(timeout=20)
                    types.append(m["type"])
                    if m["type"] == "process_exit":
                        assert "sandbox" in m["error"], m
            except Exception:
                pass
            assert "sandbox_ended" in types, types
        finally:
            await c.close()
        # The default sandbox cannot be killed.
        d = await NativeClient.connect(server, sandbox_id="default")
        try:
            err(await d.request(op="sandbox_kill"), "bad_request")
            m = await d.request(op="sandbox_info")
            assert m["type"] == "sandbox"
        finally:
            await d.close()
    run(go())
