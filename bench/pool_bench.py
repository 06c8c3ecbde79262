#!/usr/bin/python3
"""Warm pools (--pool-kernels, --pool-sandboxes) against cold starts, in one run.

    /usr/bin/python3 bench/pool_bench.py [--kbridge build/kbridge] [-n 5]

Two servers, one after the other: one without pools (the cold figures) and one with the
default pools (one warm kernel, one warm sandbox with its kernel per template). Each pool
figure waits for the pools to be full again first (GET /api/status), so every sample is
a claim, never a cold start in disguise.

  kernel -> ready, cwd and env applied: native start_kernel on the default sandbox, with
      a cwd and env vars, until the kernel reply (a claimed kernel is answered ready at
      once: the silent execution that moves it there is first on its run queue).
  kernel -> first cell: the same start, then a first cell that reads the cwd and the env
      var, until its end (the move included).
  sandbox create -> ready (REST): POST /sandboxes until its 201 (answered once running).
  E2B Sandbox.create -> first runCode result: the official SDK (tests/compat's), '1 + 1'.

The anchor, in the same run, is the cold host kernel start; the pool rows are also shown
against their own cold rows. Medians (min-max) of N. Not a test: nothing asserted on time.
Needs root (namespaces, cgroups); the E2B row needs node and tests/compat's packages.
"""
import argparse
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from kbharness import KBridge, NativeClient  # noqa: E402


def fmt(xs):
    return f"{statistics.median(xs) * 1000:8.1f} ms ({min(xs) * 1000:.1f}-{max(xs) * 1000:.1f})"


def pool_full(srv, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, st = srv.api("GET", "/api/status")
        p = st["pool"]
        if (p["kernels"]["ready"] >= p["kernels"]["target"] and not p["refilling"] and
                all(t["ready"] >= p["sandboxes"]["target"] for t in p["sandboxes"]["templates"].values())):
            return
        time.sleep(0.05)
    raise RuntimeError("the warm pools did not fill")


async def kernel_ready(srv, cwd, pooled):
    c = await NativeClient.connect(srv, sandbox_id="default")
    if pooled:
        pool_full(srv)
    t0 = time.perf_counter()
    reply = await c.request(op="start_kernel", cwd=cwd, env_vars={"BENCH_VAR": "x"})
    took = time.perf_counter() - t0
    assert reply["type"] == "kernel", reply
    kid = reply["kernel"]["kernel_id"]
    _, end = await c.execute("import os; (os.getcwd(), os.environ['BENCH_VAR'])", kernel_id=kid)
    first = time.perf_counter() - t0
    ex = end["execution"]
    assert ex["error"] is None and ex["execution_count"] == 1, ex
    await c.request(op="shutdown_kernel", kernel_id=kid)
    await c.close()
    return took, first


def sandbox_create(srv, pooled):
    if pooled:
        pool_full(srv)
    t0 = time.perf_counter()
    st, _, model = srv.api("POST", "/sandboxes", {"timeout": 300})
    took = time.perf_counter() - t0
    assert st == 201, (st, model)
    srv.api("DELETE", f"/sandboxes/{model['sandboxID']}")
    return took


def e2b_first(srv, n, pooled):
    if not shutil.which("node") or not (ROOT / "tests/compat/node_modules/@e2b/code-interpreter").is_dir():
        return None
    env = dict(os.environ, E2B_API_URL=srv.http, E2B_SANDBOX_URL=srv.http, E2B_API_KEY=srv.token,
               N=str(n), POOL="1" if pooled else "0")
    env.pop("E2B_DEBUG", None)
    out = subprocess.run(["node", str(ROOT / "bench" / "pool_e2b.mjs")], env=env, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(tmp, n, pooled, cwd):
    srv = KBridge(tmp, "--max-kernels", "64", pools=pooled)
    try:
        if pooled:
            pool_full(srv)
        kernel = [asyncio.run(kernel_ready(srv, cwd, pooled)) for _ in range(n)]
        first = [k[1] for k in kernel]
        kernel = [k[0] for k in kernel]
        create = [sandbox_create(srv, pooled) for _ in range(n)]
        e2b = e2b_first(srv, n, pooled)
        return kernel, first, create, e2b
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbridge", default=str(ROOT / "build" / "kbridge"))
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    os.environ["KBRIDGE_BIN"] = args.kbridge
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        cwd = tmp / "work"
        cwd.mkdir()
        k_cold, f_cold, c_cold, e_cold = measure(tmp, args.n, False, str(cwd))
        k_pool, f_pool, c_pool, e_pool = measure(tmp, args.n, True, str(cwd))
    anchor = statistics.median(k_cold)

    def row(name, xs, cold=None, target=None):
        m = statistics.median(xs)
        vs = f"{m / anchor:6.3f}x host kernel start"
        if cold:
            vs += f", {m / statistics.median(cold):6.3f}x cold"
        print(f"  {name:<44} {fmt(xs)}   {vs}" + (f"   (target {target})" if target else ""))

    print(f"kbridge warm pools, {args.n} runs each (median, min-max), one run:")
    row("host kernel start -> ready, cold (anchor)", k_cold)
    row("kernel from the pool -> ready (cwd, env)", k_pool, k_cold, "<= 5 ms")
    row("kernel from the pool -> first cell's end", f_pool, f_cold)
    row("sandbox create -> ready (REST), cold", c_cold, None, "<= 30 ms")
    row("sandbox create -> ready (REST), pool", c_pool, c_cold, "<= 5 ms")
    if e_cold and e_pool:
        row("E2B Sandbox.create -> first runCode, cold", e_cold["first"])
        row("E2B Sandbox.create -> first runCode, pool", e_pool["first"], e_cold["first"], "<= 25 ms")
        row("E2B Sandbox.create alone, pool", e_pool["create"], e_cold["create"])
    else:
        print("  E2B rows skipped: node or tests/compat's node_modules missing (or the SDK failed)")


if __name__ == "__main__":
    main()
