#!/usr/bin/python3
"""Sandboxes through the real service: create -> ready, kill, and a kernel in one, next to
a kernel on the host (the default sandbox), all measured in one run.

    /usr/bin/python3 bench/sandbox_api.py [--kbridge build/kbridge] [-n 20] [--no-kernels]

Each figure is the median (min-max) of N cold runs. create: POST /sandboxes until its 201
(answered once the sandbox runs). kill: DELETE until the sandbox's cgroup, processes and
writable layer are gone. kernel: start_kernel on /ws?sandbox_id=ID until the kernel answers,
then `1+1`. The baseline, in the same run, is the same kernel start on the default sandbox
(host processes), and the ratios are against it. Not a test: nothing is asserted on time.
Needs root (namespaces, cgroups).
"""
import argparse
import asyncio
import glob
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from kbharness import KBridge, NativeClient  # noqa: E402


def median(xs):
    return f"{statistics.median(xs) * 1000:7.1f} ms ({min(xs) * 1000:.1f}-{max(xs) * 1000:.1f})"


def gone(srv, sid):
    """The sandbox left nothing: its state directory and cgroup are removed. The cgroup is
    <hierarchy>/kbridge/<hash of the state dir>/<id> (v1) or kbridge/<hash>/<id> (v2): a
    glob, not a walk of /sys/fs/cgroup, which took longer than the removal itself."""
    if (srv.state_dir / "sandboxes" / sid).exists():
        return False
    return not (glob.glob(f"/sys/fs/cgroup/*/kbridge/*/{sid}") or glob.glob(f"/sys/fs/cgroup/kbridge/*/{sid}"))


async def kernel_start(srv, sandbox_id):
    c = await NativeClient.connect(srv, sandbox_id=sandbox_id)
    t0 = time.perf_counter()
    rid = await c.send(op="start_kernel")
    reply = await c.wait_for(rid, types=["kernel"])
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    _, end = await c.execute("1+1", kernel_id=reply["kernel"]["kernel_id"])
    first = time.perf_counter() - t1
    await c.request(op="shutdown_kernel", kernel_id=reply["kernel"]["kernel_id"])
    await c.close()
    return started, first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbridge", default=str(ROOT / "build" / "kbridge"))
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--no-kernels", action="store_true",
                    help="create and kill only (no kernel starts): the sandbox rows in a minute")
    args = ap.parse_args()
    os.environ["KBRIDGE_BIN"] = args.kbridge
    with tempfile.TemporaryDirectory() as tmp:
        srv = KBridge(pathlib.Path(tmp), "--max-kernels", "64")
        try:
            create, kill, k_sbx, x_sbx, k_host, x_host = [], [], [], [], [], []
            for i in range(args.n):
                t0 = time.perf_counter()
                status, _, model = srv.api("POST", "/sandboxes", {"timeout": 300})
                create.append(time.perf_counter() - t0)
                assert status == 201, (status, model)
                sid = model["sandboxID"]
                if not args.no_kernels:
                    s, f = asyncio.run(kernel_start(srv, sid))
                    k_sbx.append(s)
                    x_sbx.append(f)
                t0 = time.perf_counter()
                status, _, _ = srv.api("DELETE", f"/sandboxes/{sid}")
                assert status == 204, status
                while not gone(srv, sid):
                    time.sleep(0.002)
                kill.append(time.perf_counter() - t0)
                if not args.no_kernels:
                    s, f = asyncio.run(kernel_start(srv, "default"))
                    k_host.append(s)
                    x_host.append(f)
            print(f"kbridge sandboxes, {args.n} cold runs each (median, min-max), one run:")
            if args.no_kernels:
                print(f"  sandbox create -> ready     {median(create)}")
                print(f"  sandbox kill -> all gone    {median(kill)}")
                return
            base = statistics.median(k_host)
            print(f"  sandbox create -> ready     {median(create)}   "
                  f"{statistics.median(create) / base:.2f}x a host kernel start")
            print(f"  sandbox kill -> all gone    {median(kill)}   "
                  f"{statistics.median(kill) / base:.2f}x a host kernel start")
            print(f"  kernel start in a sandbox   {median(k_sbx)}   "
                  f"{statistics.median(k_sbx) / base:.2f}x a host kernel start")
            print(f"  kernel start on the host    {median(k_host)}   1.00x (baseline)")
            print(f"  first 1+1, sandbox / host   {median(x_sbx)} / {median(x_host)}")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
