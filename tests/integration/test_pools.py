"""Issue 13: warm pools (--pool-kernels, --pool-sandboxes).

A kernel or sandbox taken from a pool must be what a fresh start would have made: the
same cwd and environment, execution count 1, nothing left of its time in the pool, and
never given to two requesters. Unclaimed entries are nobody's: no API lists them, and
they are gone at shutdown (KBridge.stop checks the runtime and state directories)."""
import json
import os
import subprocess
import time

from conftest import kbridge_bin, wait_until
from kbharness import KBridge, NativeClient, run
from test_metrics import scrape as metrics_scrape, value as metrics_value

# What a cell can see of its kernel: run as the first cell of each kernel compared.
PROBE = r"""
import os as _p_os, sys as _p_sys, json as _p_json
_p_json.dumps({
    "cwd": _p_os.getcwd(),
    "env": dict(_p_os.environ),
    "names": sorted(k for k in globals() if not k.startswith("_")),
    "in": len(In), "out": len(Out),
    "dh": [str(d) for d in _dh],
    "modules": sorted(_p_sys.modules),
    "path": _p_sys.path,
})
"""

# Loaded lazily by a kernel's own threads some time after it started (IPython's history
# saver, the heartbeat...): a kernel warm for a while may have them and a fresh one not yet.
LATE_MODULES = {"sqlite3", "_sqlite3", "sqlite3.dbapi2"}


def status(server):
    st, _, body = server.api("GET", "/api/status")
    assert st == 200
    return body


def pool_ready(server, kernels=1, sandboxes=1):
    def ok():
        p = status(server)["pool"]
        return (p["kernels"]["ready"] >= kernels and
                all(t["ready"] >= sandboxes for t in p["sandboxes"]["templates"].values()))
    wait_until(ok, timeout=90, message="the warm pools to fill")


def main_text(execution):
    for r in execution["results"]:
        if r.get("is_main_result"):
            return r.get("text")
    return None


async def probe(c, kid):
    _, end = await c.execute(PROBE, kernel_id=kid)
    ex = end["execution"]
    assert ex["error"] is None, ex["error"]
    seen = json.loads(eval(main_text(ex)))
    seen["execution_count"] = ex["execution_count"]
    return seen


def assert_same(pooled, fresh):
    for key in ("cwd", "env", "names", "in", "out", "dh", "path", "execution_count"):
        assert pooled[key] == fresh[key], f"{key}: pooled {pooled[key]!r} != fresh {fresh[key]!r}"
    assert pooled["execution_count"] == 1
    extra = set(pooled["modules"]) - set(fresh["modules"]) - LATE_MODULES
    missing = set(fresh["modules"]) - set(pooled["modules"]) - LATE_MODULES
    assert not extra and not missing, f"modules: pooled has {sorted(extra)}, lacks {sorted(missing)}"


def test_pooled_kernel_is_a_fresh_kernel(tmp_path):
    """Default sandbox: a claim moves the warm kernel to the asked cwd and env."""
    work = tmp_path / "work dir 'q'"
    work.mkdir()
    srv = KBridge(tmp_path, "--env", "KB_POOL_GLOBAL=g", pools=True)
    try:
        pool_ready(srv)
        # Warm entries are nobody's: listed by no API.
        assert status(srv)["kernels"] == 0
        st, _, kernels = srv.api("GET", "/api/kernels")
        assert st == 200 and kernels == []
        st, _, sandboxes = srv.api("GET", "/sandboxes")
        assert st == 200 and sandboxes == []

        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            r = await c.request(op="list_kernels")
            assert r["kernels"] == []
            env = {"KB_POOL_VAR": "a \"quoted\" value\nwith a newline", "HOME": str(tmp_path)}
            before = status(srv)["pool"]["kernels"]["claimed"]
            t0 = time.monotonic()
            r = await c.request(op="start_kernel", cwd=str(work), env_vars=env)
            claim_ms = (time.monotonic() - t0) * 1000
            assert r["type"] == "kernel", r
            pooled_id = r["kernel"]["kernel_id"]
            assert r["kernel"]["cwd"] == str(work)
            assert status(srv)["pool"]["kernels"]["claimed"] == before + 1
            # Started at once, before the refill (which waits, then takes ~1 s): fresh.
            r = await c.request(op="start_kernel", cwd=str(work), env_vars=env)
            assert r["type"] == "kernel", r
            fresh_id = r["kernel"]["kernel_id"]
            assert status(srv)["pool"]["kernels"]["claimed"] == before + 1
            pooled = await probe(c, pooled_id)
            fresh = await probe(c, fresh_id)
            assert pooled["cwd"] == str(work) and pooled["env"]["KB_POOL_VAR"] == env["KB_POOL_VAR"]
            assert pooled["env"]["KB_POOL_GLOBAL"] == "g" and pooled["env"]["HOME"] == str(tmp_path)
            assert_same(pooled, fresh)
            _, end = await c.execute("leak = 'from the first claim'", kernel_id=pooled_id)
            assert end["execution"]["execution_count"] == 2

            # Restarted, a claimed kernel starts where it was moved to.
            r = await c.request(op="restart_kernel", kernel_id=pooled_id)
            assert r["type"] == "ok", r
            _, end = await c.execute("import os; (os.getcwd(), os.environ['KB_POOL_VAR'], 'leak' in globals())",
                                     kernel_id=pooled_id)
            assert eval(main_text(end["execution"])) == (str(work), env["KB_POOL_VAR"], False)

            # Never shared: the next claim is another kernel, with nothing of the first.
            pool_ready(srv, sandboxes=0)
            r = await c.request(op="start_kernel")
            second = r["kernel"]["kernel_id"]
            assert second not in (pooled_id, fresh_id)
            assert status(srv)["pool"]["kernels"]["claimed"] == before + 2
            _, end = await c.execute("import os; ('leak' in globals(), os.getcwd(), 'KB_POOL_VAR' in os.environ)",
                                     kernel_id=second)
            assert eval(main_text(end["execution"])) == (False, os.getcwd(), False)
            assert end["execution"]["execution_count"] == 1
            r = await c.request(op="list_kernels")
            assert sorted(k["kernel_id"] for k in r["kernels"]) == sorted([pooled_id, fresh_id, second])
            await c.close()
            return claim_ms

        claim_ms = run(go())
        print(f"claim -> ready (cwd and env applied): {claim_ms:.1f} ms")
        assert "pool: kernel" in srv.logs() and "claimed" in srv.logs()
    finally:
        srv.stop()


def test_pooled_sandbox_and_its_kernel(tmp_path):
    """A sandbox from the pool gets the asked settings; its warm kernel gets its env."""
    srv = KBridge(tmp_path, pools=True)
    try:
        pool_ready(srv)
        before = status(srv)["pool"]["sandboxes"]["claimed"]
        t0 = time.monotonic()
        st, _, sb = srv.api("POST", "/sandboxes", {"templateID": "code-interpreter-v1",
                                                    "metadata": {"who": "pool-test"},
                                                    "envVars": {"SBX_VAR": "from the create"},
                                                    "timeout": 120})
        create_ms = (time.monotonic() - t0) * 1000
        assert st == 201, sb
        assert status(srv)["pool"]["sandboxes"]["claimed"] == before + 1
        # /metrics tells the same: one take served warm, and the pool's figures.
        fams = metrics_scrape(srv)
        assert metrics_value(fams, "kbridge_pool_takes_total", result="sandbox_hit") == 1
        assert metrics_value(fams, "kbridge_pool_target", kind="sandbox") >= 1
        assert metrics_value(fams, "kbridge_pool_target", kind="kernel") == 1
        assert metrics_value(fams, "kbridge_pool_ready", kind="kernel") == 1
        assert sb["templateID"] == "code-interpreter-v1" and sb["metadata"] == {"who": "pool-test"}
        st, _, listed = srv.api("GET", "/sandboxes")
        assert [x["sandboxID"] for x in listed] == [sb["sandboxID"]]
        # Its clock started at the claim, not when it was warmed.
        st, _, got = srv.api("GET", f"/sandboxes/{sb['sandboxID']}")
        assert st == 200 and got["metadata"] == {"who": "pool-test"}

        async def go():
            c = await NativeClient.connect(srv, sandbox_id=sb["sandboxID"])
            r = await c.request(op="list_kernels")
            assert r["kernels"] == []  # the warm kernel is nobody's yet
            kclaimed = status(srv)["pool"]["kernels"]["claimed"]
            r = await c.request(op="start_kernel", env_vars={"K_VAR": "k"})
            assert r["type"] == "kernel", r
            pooled_id = r["kernel"]["kernel_id"]
            assert status(srv)["pool"]["kernels"]["claimed"] == kclaimed + 1
            r = await c.request(op="start_kernel", env_vars={"K_VAR": "k"})
            fresh_id = r["kernel"]["kernel_id"]
            assert status(srv)["pool"]["kernels"]["claimed"] == kclaimed + 1
            pooled = await probe(c, pooled_id)
            fresh = await probe(c, fresh_id)
            assert pooled["env"]["SBX_VAR"] == "from the create" and pooled["env"]["K_VAR"] == "k"
            assert_same(pooled, fresh)
            await c.close()

        run(go())
        print(f"sandbox create -> running, from the pool: {create_ms:.1f} ms")
        # Killed as a fresh one is; the pool refills with another.
        st, _, _ = srv.api("DELETE", f"/sandboxes/{sb['sandboxID']}")
        assert st == 204
        pool_ready(srv)
        st, _, listed = srv.api("GET", "/sandboxes")
        assert listed == []
        # A sandbox asking for limits other than the warm ones' is started fresh.
        st, _, other = srv.api("POST", "/sandboxes", {"allow_internet_access": False})
        assert st == 201
        assert status(srv)["pool"]["sandboxes"]["claimed"] == before + 1
        srv.api("DELETE", f"/sandboxes/{other['sandboxID']}")
    finally:
        srv.stop()


def test_no_pools_when_asked(tmp_path):
    srv = KBridge(tmp_path)  # the harness passes --pool-kernels 0 --pool-sandboxes 0
    try:
        p = status(srv)["pool"]
        assert p["kernels"]["target"] == 0 and p["kernels"]["warm"] == 0
        assert p["sandboxes"]["target"] == 0 and p["refilling"] is False
        assert "pool:" not in srv.logs()
    finally:
        srv.stop()


def test_warm_entries_leave_nothing_at_shutdown(tmp_path):
    srv = KBridge(tmp_path, pools=True)
    pool_ready(srv)
    warm = [p.name for p in (srv.state_dir / "sandboxes").iterdir()]
    assert len(warm) == 1, warm  # the warm sandbox, unlisted, and nothing saved for a restart
    assert not (srv.state_dir / "sandboxes" / warm[0] / "sandbox.json").exists()
    st, _, listed = srv.api("GET", "/sandboxes")
    assert listed == []
    srv.stop()  # checks: no runtime files, no process of any sandbox in the state dir
    assert not (srv.state_dir / "sandboxes" / warm[0]).exists()
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        assert warm[0] not in dirs, f"cgroup of the warm sandbox left in {root}"
        if root.count("/") > 6:
            dirs[:] = []
    assert "pool: kernel" in srv.logs() and "warm in the pool" in srv.logs()


def test_first_cells_after_a_claim_see_the_move(tmp_path):
    """A claimed kernel is ready at once; its move to the asked cwd and env runs first on
    its queue, so the first cell of every API sees them, as execution 1. An interrupt
    racing the move may fail it: then the kernel is restarted there and what waited
    fails with KernelRestarted, never runs where the pool left it."""
    from jws import Channels
    from test_e2b import raw_post
    work = tmp_path / "work"
    work.mkdir()
    srv = KBridge(tmp_path, "--max-kernels", "16", pools=True)
    try:
        async def native():
            c = await NativeClient.connect(srv, sandbox_id="default")
            outcomes = []
            for i in range(4):
                pool_ready(srv, sandboxes=0)
                before = status(srv)["pool"]["kernels"]["claimed"]
                r = await c.request(op="start_kernel", cwd=str(work), env_vars={"KB_FIRST": str(i)})
                assert r["type"] == "kernel", r
                assert status(srv)["pool"]["kernels"]["claimed"] == before + 1
                kid = r["kernel"]["kernel_id"]
                if i % 2:  # races the move: it may or may not land in it
                    r = await c.request(op="interrupt_kernel", kernel_id=kid)
                    assert r["type"] == "ok", r
                _, end = await c.execute("import os; (os.getcwd(), os.environ.get('KB_FIRST'))", kernel_id=kid)
                ex = end["execution"]
                if ex["error"] is not None:
                    assert i % 2 and ex["error"]["name"] == "KernelRestarted", ex["error"]
                    outcomes.append("restarted")
                    _, end = await c.execute("import os; (os.getcwd(), os.environ.get('KB_FIRST'))",
                                             kernel_id=kid)
                    ex = end["execution"]
                    assert ex["error"] is None, ex["error"]
                else:
                    outcomes.append("moved")
                assert eval(main_text(ex)) == (str(work), str(i))
                assert ex["execution_count"] == 1
                await c.request(op="shutdown_kernel", kernel_id=kid)
            await c.close()
            return outcomes

        print("native, interrupts racing the move:", run(native()))

        # Jupyter: the channels' own sockets bypass the run queue; a client's first
        # execute_request waits for the move (a session's kernel gets JPY_SESSION_NAME).
        pool_ready(srv, sandboxes=0)
        before = status(srv)["pool"]["kernels"]["claimed"]
        st, _, s = srv.api("POST", "/api/sessions", {"path": "first.ipynb", "name": "first.ipynb",
                                                     "type": "notebook", "kernel": {"name": "python3"}})
        assert st == 201, s
        assert status(srv)["pool"]["kernels"]["claimed"] == before + 1

        async def jupyter():
            ch = await Channels.connect(srv, s["kernel"]["id"])
            reply, iopub = await ch.execute("import os; os.environ.get('JPY_SESSION_NAME')")
            assert reply["content"]["status"] == "ok", reply["content"]
            assert reply["content"]["execution_count"] == 1
            res = [m for m in iopub if m["header"]["msg_type"] == "execute_result"]
            assert res and res[0]["content"]["data"]["text/plain"] == "'first.ipynb'"
            await ch.close()
        run(jupyter())
        assert srv.api("DELETE", f"/api/sessions/{s['id']}")[0] == 204

        # E2B: a sandbox from the pool with envVars; /execute's default context is its
        # warm kernel, moved to them.
        pool_ready(srv)
        st, _, sb = srv.api("POST", "/sandboxes", {"envVars": {"SBX_FIRST": "yes"}, "timeout": 120})
        assert st == 201, sb
        kbefore = status(srv)["pool"]["kernels"]["claimed"]
        r = raw_post(srv, "/execute", json.dumps({"code": "import os; os.environ.get('SBX_FIRST')"}),
                     headers={"E2b-Sandbox-Id": sb["sandboxID"], "E2b-Sandbox-Port": "49999"})
        assert r.status == 200, r.body
        lines = r.lines()
        assert [l for l in lines if l["type"] == "error"] == [], lines
        result = [l for l in lines if l["type"] == "result"]
        assert result and result[0]["text"] == "yes", lines
        counts = [l for l in lines if l["type"] == "number_of_executions"]
        assert counts and counts[0]["execution_count"] == 1, lines
        assert status(srv)["pool"]["kernels"]["claimed"] == kbefore + 1
        srv.api("DELETE", f"/sandboxes/{sb['sandboxID']}")
    finally:
        srv.stop()


def test_pools_per_kernelspec(tmp_path):
    """--pool-kernels N,NAME=N: an R kernel (ir) is kept warm beside the default one, and
    a start of it takes it, moved to the asked cwd and env by R code (setwd, Sys.setenv)."""
    work = tmp_path / "r work"
    work.mkdir()
    srv = KBridge(tmp_path, "--pool-kernels", "1,ir=1", "--pool-sandboxes", "0", pools=True)
    try:
        def specs_ready():
            k = status(srv)["pool"]["kernelspecs"]
            return k["python3"]["ready"] >= 1 and k["ir"]["ready"] >= 1
        wait_until(specs_ready, timeout=120, message="the python3 and ir pools to fill")
        p = status(srv)["pool"]
        assert p["kernels"]["kernelspec"] == "python3" and p["kernels"]["target"] == 1
        assert p["kernelspecs"]["ir"]["target"] == 1 and p["kernelspecs"]["ir"]["claimed"] == 0
        assert p["kernelspecs"]["python3"]["target"] == 1
        fams = metrics_scrape(srv)
        assert metrics_value(fams, "kbridge_pool_kernelspec_ready", kernelspec="ir") == 1
        assert metrics_value(fams, "kbridge_pool_kernelspec_target", kernelspec="ir") == 1
        assert metrics_value(fams, "kbridge_pool_kernelspec_target", kernelspec="python3") == 1
        assert metrics_value(fams, "kbridge_pool_target", kind="kernel") == 2

        async def go():
            c = await NativeClient.connect(srv, sandbox_id="default")
            # Nothing to move.
            r = await c.request(op="start_kernel", kernel_name="ir")
            assert r["type"] == "kernel", r
            assert r["kernel"]["kernel_name"] == "ir" and r["kernel"]["language"] == "R"
            warm = r["kernel"]["kernel_id"]
            assert status(srv)["pool"]["kernelspecs"]["ir"]["claimed"] == 1
            assert status(srv)["pool"]["kernelspecs"]["python3"]["claimed"] == 0
            _, end = await c.execute("Sys.getenv('KB_R_VAR', 'unset')", kernel_id=warm)
            ex = end["execution"]
            assert ex["error"] is None and ex["execution_count"] == 1, ex
            # IRkernel shows values as display_data (no main result).
            assert ex["results"] and "unset" in ex["results"][0]["text"], ex
            # A cwd and an environment to apply: the next warm one, moved.
            wait_until(lambda: status(srv)["pool"]["kernelspecs"]["ir"]["ready"] >= 1, timeout=120,
                       message="the ir pool to refill")
            env = {"KB_R_VAR": 'a "quoted" value'}
            r = await c.request(op="start_kernel", kernel_name="ir", cwd=str(work), env_vars=env)
            assert r["type"] == "kernel", r
            moved = r["kernel"]["kernel_id"]
            assert moved != warm and status(srv)["pool"]["kernelspecs"]["ir"]["claimed"] == 2
            _, end = await c.execute("cat(getwd(), Sys.getenv('KB_R_VAR'), length(ls()), sep = '|')", kernel_id=moved)
            ex = end["execution"]
            assert ex["error"] is None and ex["execution_count"] == 1, ex
            assert "".join(ex["logs"]["stdout"]) == f"{work}|{env['KB_R_VAR']}|0", ex
            await c.close()

        run(go())
        fams = metrics_scrape(srv)
        assert metrics_value(fams, "kbridge_pool_kernelspec_takes_total", kernelspec="ir", result="hit") == 2
        assert metrics_value(fams, "kbridge_pool_kernelspec_takes_total", kernelspec="ir", result="miss") == 0
        assert "pool: keeping 2 warm kernel(s) (python3=1, ir=1)" in srv.logs()
    finally:
        srv.stop()


def test_pool_kernels_bad_values(tmp_path):
    for arg, why in [("x", "is not N or NAME=N"), ("nope=1", "no kernelspec named 'nope'"),
                     ("1,python3=2", "'python3' is given twice"), ("ir=65", "from 0 to 64"),
                     ("1,,ir=1", "comma-separated")]:
        out = subprocess.run([kbridge_bin(), "serve", "--port", "0", "--pool-kernels", arg],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (arg, out.returncode, out.stderr)
        assert why in out.stderr, (arg, out.stderr)
