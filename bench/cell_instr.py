#!/usr/bin/env python3
"""Instructions kbridge executes per cell, by callgrind: the load-independent cost figure.

  /usr/bin/python3 bench/cell_instr.py [--kbridge BIN] [-n 600] [--warmup 5]
                                       [--code '1+1' | --workload NAME] [--keep DIR]

Runs `kbridge serve --isolation none --pool-kernels 0 --pool-sandboxes 0` under `valgrind --tool=callgrind` (all of kbridge's
threads, libzmq's I/O thread included; the kernel is a child and is not traced), starts one
kernel over the native API (/ws), runs the warm-up cells, zeroes the counters
(callgrind_control -z), runs N cells one after the other, dumps (callgrind_control -d) and
prints the instructions of the dump divided by N. Instruction counts do not move with the
machine's load, unlike CPU time, so two binaries can be compared on a busy machine.

--workload takes a cell of benchlib.THROUGHPUT_WORKLOADS (its setup cell runs first, once):
`--workload display_png_x200 -n 3 --warmup 1` is the 200-PNG row's cell.

With --keep DIR the dump stays there for `callgrind_annotate DIR/callgrind.out.*`.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from kbclient import KBridgeClient  # noqa: E402
from wsclient import ServerHandle  # noqa: E402


def start(binary, workdir, isolation, extra):
    token = secrets.token_hex(24)
    env = dict(os.environ, XDG_RUNTIME_DIR=workdir, PATH="/usr/bin:/bin")
    env.pop("KBRIDGE_TOKEN", None)
    out = os.path.join(workdir, "callgrind.out.%p")
    args = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, binary, "serve",
            "--port", "0", "--token", token, "--isolation", isolation,
            "--state-dir", os.path.join(workdir, "state"),
            #  A warm pool refilling (a kernel starting) would land in the measured cells.
            "--pool-kernels", "0", "--pool-sandboxes", "0"] + list(extra)
    log = open(os.path.join(workdir, "kbridge.log"), "w")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env, cwd=workdir,
                            text=True, start_new_session=True)
    banner = proc.stdout.readline()
    if "listening on http://" not in banner:
        proc.kill()
        raise RuntimeError("kbridge did not start: %r (log in %s)" % (banner, workdir))
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    hostport = banner.split("http://", 1)[1].split("/", 1)[0]
    return ServerHandle("kbridge", "http://" + hostport, token, pid=proc.pid, proc=proc,
                        workdir=workdir)


def control(pid, flag):
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, stdout=subprocess.DEVNULL,
                   timeout=120)


def dump_totals(workdir, pid, before):
    """Ir of the newest dump written after `before` (the set of earlier dump files)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        new = sorted(set(glob.glob(os.path.join(workdir, "callgrind.out.%d*" % pid))) - before)
        for path in new:
            with open(path) as f:
                text = f.read()
            m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
            if m:
                return int(m.group(1)), path
        time.sleep(0.2)
    raise RuntimeError("no callgrind dump appeared in %s" % workdir)


async def run(a, server):
    c = await KBridgeClient.connect(server)
    kid = await c.start_kernel(timeout=300)
    if a.setup:
        r = await c.execute(a.setup, kid)
        if r.status != "ok":
            raise RuntimeError("setup cell failed: %s" % r.stderr)
    for _ in range(a.warmup):
        r = await c.execute(a.code, kid)
        if r.status != "ok":
            raise RuntimeError("warm-up cell failed: %s" % r.stderr)
    before = set(glob.glob(os.path.join(server.workdir, "callgrind.out.*")))
    control(server.pid, "-z")
    t0 = time.perf_counter()
    for _ in range(a.n):
        r = await c.execute(a.code, kid)
        if r.status != "ok":
            raise RuntimeError("cell failed: %s" % r.stderr)
    wall = time.perf_counter() - t0
    control(server.pid, "-d")
    ir, path = dump_totals(server.workdir, server.pid, before)
    await c.close()
    return ir, path, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kbridge", default=os.path.join(HERE, "..", "build", "kbridge"))
    ap.add_argument("-n", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--code", default="1+1")
    ap.add_argument("--workload", help="a cell of benchlib.THROUGHPUT_WORKLOADS instead of --code")
    ap.add_argument("--isolation", default="none")
    ap.add_argument("--keep", help="directory to keep the callgrind dump in")
    ap.add_argument("extra", nargs="*", help="more kbridge serve arguments (after --)")
    a = ap.parse_args()
    a.setup = None
    if a.workload:
        import benchlib
        a.setup, a.code, _ = benchlib.THROUGHPUT_WORKLOADS[a.workload]
    workdir = tempfile.mkdtemp(prefix="cell-instr-", dir="/tmp")
    os.chmod(workdir, 0o700)
    server = start(os.path.abspath(a.kbridge), workdir, a.isolation, a.extra)
    try:
        ir, path, wall = asyncio.run(run(a, server))
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    print("instructions per cell: %d (%d cells of %r after %d warm-up, %.1f s under callgrind)"
          % (ir // a.n, a.n, a.workload or a.code, a.warmup, wall))
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        shutil.copy(path, a.keep)
        print("dump: %s" % os.path.join(a.keep, os.path.basename(path)))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
