#!/usr/bin/python3
"""worker.py TARGET [--kbridge BIN] [--kbridge-args ARGS] -- one benchmark target in its
own process, driven by run_all.py (not meant to be run by hand).

Each target runs in a separate Python process, as in the shared harness (where
zmq_direct.py and jupyter_server_ws.py are separate scripts): the clients do not
share an interpreter, a GIL or an event loop, and jupyter_client's
BlockingKernelClient cannot nest_asyncio-patch the loop of the WebSocket clients.
run_all.py sends one JSON command per line on stdin and reads one JSON reply per
line on stdout (everything else this process prints goes to stderr), so it can
interleave the targets block by block while each one measures its own timings.

Targets (TARGETS below):
  zmq-raw             ipykernel via jupyter_client.KernelManager, pyzmq sockets +
                      a minimal HMAC codec (zmq_direct.RawZMQClient): the floor
  zmq-jupyter_client  the same kernel setup, jupyter_client.BlockingKernelClient
  jupyter-server/P, jupyter-server+nodelay/P
                      Debian's jupyter-server (limit_rate=False), its own server per
                      worker, kernels REST + channels WebSocket, framing P = legacy | v1
  kbridge             `kbridge serve` (random port and token), native API on /ws
  zmq-c               bench/zmq_floor (C: libzmq + OpenSSL, no JSON library) on a kernel
                      started as for zmq-raw: the physical floor
Commands: setup, rss, latency, exec, throughput, many, kstart, default_limits, quit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402  (first: JUPYTER_*/IPYTHONDIR/MPLCONFIGDIR under /tmp)

perf = time.perf_counter


def rec_of(r: B.ExecResult) -> dict:
    """An ExecResult as plain JSON (times relative to the send)."""
    return {"idle_s": r.t_idle - r.t_send, "done_s": max(r.t_idle, r.t_reply) - r.t_send,
            "first_s": (r.t_first - r.t_send) if r.t_first else None, "payload": r.payload,
            "wire": r.wire, "msgs": r.msgs, "stream_msgs": r.stream_msgs, "displays": r.displays,
            "status": r.status, "stderr": (r.stderr or "")[:400], "rate_limited": r.rate_limited,
            "main_text": (r.main_text or "")[:200] or None, "info": r.info}


def proc_mem(pid):
    return {"rss_kb": B.rss_kb(pid), "pss_kb": B.pss_kb(pid)} if pid else {}


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------
class Target:
    name = "?"
    server = None          # wsclient.ServerHandle, for targets with a server process
    kernel_pid = None

    def pids(self):
        p = {}
        if self.server is not None and self.server.pid:
            p["server"] = self.server.pid
        if self.kernel_pid:
            p["kernel"] = self.kernel_pid
        return p

    def kernel_pids(self):
        return self.server.kernel_pids() if self.server is not None else (
            [self.kernel_pid] if self.kernel_pid else [])

    def rss(self, what=""):
        out = {"what": what}
        if self.server is not None:
            out.update(proc_mem(self.server.pid))
        kp = self.kernel_pids()
        out["kernels"] = len(kp)
        out["kernel_rss_kb"] = [B.rss_kb(p) for p in kp]
        return out

    def exec_many(self, code, n) -> list:
        return [self.execute(code) for _ in range(n)]

    def latency(self, n, warmup):
        self.exec_many(B.LATENCY_CODE, warmup)
        cpu = B.CpuMeter(**self.pids()).start()
        res = self.exec_many(B.LATENCY_CODE, n)
        c = cpu.stop()
        bad = [r.status for r in res if r.status != "ok"]
        if bad:
            raise RuntimeError("1+1 failed: %s" % bad[:3])
        return {"idle_us": [round((r.t_idle - r.t_send) * 1e6, 1) for r in res],
                "done_us": [round((max(r.t_idle, r.t_reply) - r.t_send) * 1e6, 1) for r in res],
                "cpu": c, "machine": cpu.machine}

    def throughput(self, code):
        cpu = B.CpuMeter(**self.pids()).start()
        r = self.execute(code)
        c = cpu.stop()
        return {"rec": rec_of(r), "cpu": c, "machine": cpu.machine}

    def many(self, n):
        raise NotImplementedError("no many-kernels probe for " + self.name)

    def close(self):
        pass


class RawTarget(Target):
    name = "zmq-raw"

    def setup(self, a):
        import zmq_direct as Z
        self.km = Z.start_kernel()
        self.kernel_pid = self.km.provisioner.process.pid
        self.cl = Z.RawZMQClient(self.km.get_connection_info(session=False))
        self.cl.wait_ready()
        import jupyter_client
        import zmq
        return {"kernel_pid": self.kernel_pid, "versions": {
            "jupyter_client": jupyter_client.__version__, "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version()}}

    def execute(self, code):
        return self.cl.execute(code)

    def close(self):
        self.cl.close()
        self.km.shutdown_kernel(now=True)


class JCTarget(RawTarget):
    name = "zmq-jupyter_client"

    def setup(self, a):
        import zmq_direct as Z
        self.km = Z.start_kernel()
        self.kernel_pid = self.km.provisioner.process.pid
        self.cl = Z.JCClient(self.km)
        import jupyter_client
        return {"kernel_pid": self.kernel_pid, "versions": {"jupyter_client": jupyter_client.__version__}}


class AsyncTarget(Target):
    """WebSocket clients: one asyncio loop in a background thread (so that server
    pings are answered between commands); each command runs as one coroutine."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def execute(self, code):
        return self.run(self.aexecute(code))

    def exec_many(self, code, n):
        async def go():
            return [await self.aexecute(code) for _ in range(n)]
        return self.run(go())

    def throughput(self, code):
        async def go():
            cpu = B.CpuMeter(**self.pids()).start()
            r = await self.aexecute(code)
            c = cpu.stop()
            return {"rec": rec_of(r), "cpu": c, "machine": cpu.machine}
        return self.run(go())

    def close(self):  # subclasses set self.cl (a client) and self.server (its ServerHandle)
        try:
            self.run(self.cl.close(), 10)
        except Exception:
            pass
        self.server.stop()


class JSTarget(AsyncTarget):
    def __init__(self, name):
        super().__init__()
        self.name = name
        self.kind, self.proto = name.split("/")

    def setup(self, a):
        import jproto as P
        import wsclient as W
        self.W, self.codec = W, P.CODECS[self.proto]
        self.server = W.SERVER_TYPES[self.kind](limit_rate=False)
        time.sleep(1.0)
        idle = self.rss("server idle, 0 kernels, no WS")
        self.rest = W.KernelsREST(self.server)
        self.cl, t = self.run(W.open_kernel(self.rest, self.codec))
        kp = self.server.kernel_pids()
        self.kernel_pid = kp[0] if kp else None
        return {"pid": self.server.pid, "url": self.server.base_url, "kernel_pid": self.kernel_pid,
                "startup_s": round(self.server.startup_s, 3), "settings": self.server.settings,
                "rss_idle": idle, "kernel_open_s": {k: round(v, 3) for k, v in t.items()}}

    async def aexecute(self, code):
        return await self.cl.execute(code)

    def many(self, n):
        async def go():
            extra = []
            t0 = perf()
            for _ in range(n - 1):
                cl, _t = await self.W.open_kernel(self.rest, self.codec)
                extra.append(cl)
            t_start = perf() - t0
            await asyncio.sleep(2.0)
            out = self.rss("%d kernels, %d open WS, idle" % (n, n))
            out["kernel_pss_kb"] = [B.pss_kb(p) for p in self.kernel_pids()]
            out["start_s"] = round(t_start, 2)
            await asyncio.gather(*(c.close() for c in extra))
            await asyncio.gather(*(self.rest.adelete(c.kernel_id) for c in extra))
            await asyncio.sleep(1.0)
            out["after"] = self.rss("after deleting the %d extra kernels" % (n - 1))
            return out
        return self.run(go())



class KBTarget(AsyncTarget):
    name = "kbridge"

    def setup(self, a):
        import kbclient as K
        self.K = K
        self.binary = a.kbridge
        self.args = shlex.split(a.kbridge_args or "")
        self.log_dir = a.log_dir
        self.server = K.start_kbridge(self.binary, self.args, a.log_dir)
        time.sleep(1.0)
        idle = self.rss("kbridge idle right after start (1 s settle), 0 kernels, no client")
        self.cl = self.run(K.KBridgeClient.connect(self.server))
        time.sleep(0.5)
        idle_session = self.rss("kbridge idle, 1 WS session, 0 kernels")
        t0 = perf()
        self.kid = self.run(self.cl.start_kernel())
        t_kernel = perf() - t0
        kp = self.server.kernel_pids()
        self.kernel_pid = kp[0] if kp else None
        time.sleep(0.5)
        one = self.rss("kbridge, 1 WS session, 1 idle kernel")
        return {"pid": self.server.pid, "url": self.server.base_url, "banner": self.server.banner,
                "kernel_pid": self.kernel_pid, "startup_s": round(self.server.startup_s, 3),
                "kernel_start_s": round(t_kernel, 3), "args": self.args, "log": self.server.log_path,
                "rss_idle": idle, "rss_idle_session": idle_session, "rss_1_kernel": one}

    async def aexecute(self, code):
        return await self.cl.execute(code, self.kid)

    def many(self, n):
        async def go():
            extra = []
            t0 = perf()
            for _ in range(n - 1):
                extra.append(await self.cl.start_kernel())
            t_start = perf() - t0
            await asyncio.sleep(2.0)
            out = self.rss("%d kernels (start_kernel), 1 WS session, idle" % n)
            out["kernel_pss_kb"] = [B.pss_kb(p) for p in self.kernel_pids()]
            out["start_s"] = round(t_start, 2)
            for k in extra:
                await self.cl.shutdown_kernel(k)
            await asyncio.sleep(1.0)
            out["after"] = self.rss("after shutting down the %d extra kernels" % (n - 1))
            return out
        return self.run(go())

    def kstart(self, n):
        """n cold kernel starts through start_kernel (request -> ready reply), one at a time."""
        async def go():
            ms = []
            for _ in range(n):
                t0 = perf()
                k = await self.cl.start_kernel()
                ms.append(round((perf() - t0) * 1e3, 1))
                await self.cl.shutdown_kernel(k)
            return {"ready_ms": ms}
        return self.run(go())

    def default_limits(self, names):
        """One pass of the output cells against a second kbridge with its DEFAULT
        limits (no extra args): how much of each arrives? A fresh connection and
        kernel per cell, since kbridge may close a slow client's connection."""
        import websockets
        K = self.K
        srv = K.start_kbridge(self.binary, [], self.log_dir)
        out = []

        async def one(name):
            setup, code, expected = B.THROUGHPUT_WORKLOADS[name]
            cl = await K.KBridgeClient.connect(srv)
            kid = await cl.start_kernel()
            if setup:
                r = await cl.execute(setup, kid)
                expected = B.png_expected_bytes(r.main_text)
            r = B.ExecResult()
            r.t_send = perf()
            rec = {"cell": name, "expected": expected, "closed": None}
            # same accounting as KBridgeClient.execute, but keep what arrived if closed
            try:
                res = await cl.execute(code, kid)
                rec.update(rec_of(res))
            except websockets.ConnectionClosed as e:
                rec["closed"] = "%s %s" % (getattr(e, "code", "?"), getattr(e, "reason", ""))
                rec["seconds_to_close"] = round(perf() - r.t_send, 3)
            try:
                await cl.close()
            except Exception:
                pass
            return rec

        try:
            for name in names:
                out.append(self.run(one(name)))
        finally:
            srv.stop()
        return out



class FloorTarget(Target):
    """zmq-c: bench/zmq_floor (C, libzmq + OpenSSL, no JSON library) against a kernel
    started as for zmq-raw: the physical floor. Its CPU is the C process's, as "client"."""
    name = "zmq-c"

    def setup(self, a):
        import subprocess
        import zmq_direct as Z
        self.a_floor = a.zmq_floor
        if not a.zmq_floor or not os.path.exists(a.zmq_floor):
            raise RuntimeError("zmq_floor binary not found: %r (cmake builds it)" % a.zmq_floor)
        self.km = Z.start_kernel()
        self.kernel_pid = self.km.provisioner.process.pid
        ci = self.km.get_connection_info(session=False)
        key = ci["key"].decode() if isinstance(ci["key"], bytes) else ci["key"]
        self.proc = subprocess.Popen([a.zmq_floor, "connect", ci["ip"], str(ci["shell_port"]),
                                      str(ci["iopub_port"]), key],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        if "ready" not in (self.proc.stdout.readline() or ""):
            raise RuntimeError("zmq_floor did not get the kernel ready")
        return {"kernel_pid": self.kernel_pid, "floor_pid": self.proc.pid, "binary": a.zmq_floor}

    def pids(self):
        return {"client": self.proc.pid, "kernel": self.kernel_pid}

    def _cmd(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError("zmq_floor exited (status %s)" % self.proc.poll())
        return json.loads(out)

    def latency(self, n, warmup):
        cpu = B.CpuMeter(**self.pids()).start()
        r = self._cmd("lat %d %d" % (n, warmup))
        c = cpu.stop()
        if r.get("failed"):
            raise RuntimeError("1+1 failed %d times" % r["failed"])
        return {"idle_us": r["idle_us"], "done_us": r["idle_us"], "cpu": c, "machine": cpu.machine}

    def execute(self, code):
        d = self._cmd("exec " + code.encode().hex())
        r = B.ExecResult()
        r.t_send = 0.0
        r.t_idle, r.t_reply = d["idle_s"], d["reply_s"]
        r.t_first = d["first_s"] or None
        r.payload, r.wire, r.msgs = d["payload"], d["wire"], d["msgs"]
        r.stream_msgs, r.displays = d["stream_msgs"], d["displays"]
        r.status = "ok" if d["ok"] else "error"
        r.main_text = d["main_text"] or None
        return r

    def kstart(self, n):
        """n cold starts, spawned by zmq_floor itself and polled every 10 ms."""
        import subprocess
        out = subprocess.run([self.a_floor, "kstart", str(n), B.PYTHON], capture_output=True,
                             text=True, timeout=60 * n + 60, check=True)
        return {"ready_ms": json.loads(out.stdout)["ready_ms"]}

    def close(self):
        try:
            self._cmd("quit")
        except Exception:
            pass
        self.proc.kill()
        self.km.shutdown_kernel(now=True)


TARGETS = {
    "zmq-c": FloorTarget,
    "zmq-raw": RawTarget,
    "zmq-jupyter_client": JCTarget,
    "kbridge": KBTarget,
    "jupyter-server/legacy": lambda: JSTarget("jupyter-server/legacy"),
    "jupyter-server/v1": lambda: JSTarget("jupyter-server/v1"),
    "jupyter-server+nodelay/legacy": lambda: JSTarget("jupyter-server+nodelay/legacy"),
    "jupyter-server+nodelay/v1": lambda: JSTarget("jupyter-server+nodelay/v1"),
}


# --------------------------------------------------------------------------
# Command loop
# --------------------------------------------------------------------------
def handle(t: Target, a, cmd: dict):
    op = cmd["cmd"]
    if op == "setup":
        return t.setup(a)
    if op == "rss":
        return t.rss(cmd.get("what", ""))
    if op == "latency":
        return t.latency(cmd["n"], cmd.get("warmup", 0))
    if op == "exec":
        return rec_of(t.execute(cmd["code"]))
    if op == "throughput":
        return t.throughput(B.THROUGHPUT_WORKLOADS[cmd["name"]][1])
    if op == "many":
        return t.many(cmd["n"])
    if op == "kstart":
        return t.kstart(cmd["n"])
    if op == "default_limits":
        return {"cells": t.default_limits(cmd["names"])}
    raise ValueError("unknown command %r" % op)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("target", choices=sorted(TARGETS))
    ap.add_argument("--kbridge", help="kbridge binary")
    ap.add_argument("--kbridge-args", default="", help="extra `kbridge serve` arguments")
    ap.add_argument("--log-dir", help="where kbridge's log goes (default: its runtime dir)")
    ap.add_argument("--zmq-floor", help="bench/zmq_floor binary (target zmq-c)")
    a = ap.parse_args()
    # replies on the original stdout; anything else printed goes to stderr
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    t = TARGETS[a.target]()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            try:
                t.close()
            finally:
                out.write(json.dumps({"ok": True}) + "\n")
            break
        try:
            res = handle(t, a, cmd)
            out.write(json.dumps({"ok": True, "res": res}) + "\n")
        except Exception as e:  # report and keep serving; run_all decides
            traceback.print_exc()
            msg = "%s: %s" % (type(e).__name__, e)
            srv = getattr(t, "server", None)
            if srv is not None and srv.proc is not None and srv.proc.poll() is not None:
                msg += " [%s process exited with status %s; log: %s]" % (t.name, srv.proc.returncode,
                                                                      srv.log_path)
            out.write(json.dumps({"ok": False, "error": msg}) + "\n")


if __name__ == "__main__":
    main()
