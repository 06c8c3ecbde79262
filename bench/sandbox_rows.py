#!/usr/bin/python3
"""Processes, files, the port proxy and idle memory: issue 13's sandbox rows, each against
an anchor measured in the same run.

    /usr/bin/python3 bench/sandbox_rows.py [--quick] [--kbridge build/kbridge] [--only procs,files,proxy,idle]

Rows (medians; ratios against the anchor of the same run; nothing is asserted on time):
  procs  process start -> exit of `true`: native API (`process_start` with `args: ["true"]`
         and with `cmd: "true"`, which is `bash -l -c true`) in an isolated sandbox and in
         the default (host) sandbox, and the E2B SDK's `commands.run('true')` (node, the
         pinned e2b package). Anchors: os.posix_spawn + waitpid of `true` from this process,
         `subprocess.run(['true'])`, and `bash -l -c true` spawned directly; plus the
         native API's own round trip (`sandbox_info`) as the transport floor.
  files  100 MB write then read over envd's `/files` (octet-stream POST, GET with
         Content-Length) against `cp` of the same file on the same file system, and
         Jupyter Server's contents API (PUT/GET /api/contents, base64 in JSON).
  proxy  a server inside a sandbox (bench/sandbox_rows_server.py) through
         `/sandboxes/<id>/ports/P/` and the `P-<id>.<domain>` host form, against the same
         server on the host reached directly: 100 MB HTTP download, per-request latency of a
         small GET (direct with keep-alive, direct with a new connection each time, proxy),
         WebSocket 1 MiB-frame throughput and echo round trip.
  idle   N sandboxes (100; --quick 10), each with an idle Python kernel: kbridge's own RSS,
         against Jupyter Server's RSS with --js-kernels (20) idle kernels.
Needs root (sandboxes). Prints the summary; --json FILE also writes the figures.
"""
import argparse
import asyncio
import base64
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import websockets

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

perf = time.perf_counter
MB = 10 ** 6
MIB = 1 << 20


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def cpu_s(pid):
    """utime + stime of a process, all its threads (the threadpool's included)."""
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def child_cpu_s():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------
#  kbridge and its APIs, with lean clients (no schema validation in the timed path)

class Server:
    def __init__(self, binary, tmp, *args):
        from kbharness import KBridge
        os.environ["KBRIDGE_BIN"] = binary
        self.k = KBridge(pathlib.Path(tmp), *args, token="bench-" + os.urandom(8).hex())
        self.port, self.token, self.pid = self.k.port, self.k.token, self.k.proc.pid

    def api(self, method, path, body=None):
        return self.k.api(method, path, body)

    def create_sandbox(self, timeout=3600):   # the idle row may take 10+ min on a loaded machine
        status, _, model = self.api("POST", "/sandboxes", {"timeout": timeout})
        assert status == 201, (status, model)
        return model

    def kill_sandbox(self, sid):
        self.api("DELETE", f"/sandboxes/{sid}")

    def stop(self):
        self.k.stop(check=False)


class Native:
    """The /ws API with no validation: requests by id, events kept per id."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    @classmethod
    async def connect(cls, srv, sandbox_id):
        ws = await websockets.connect(f"ws://127.0.0.1:{srv.port}/ws?token={srv.token}&sandbox_id={sandbox_id}",
                                      subprotocols=["kbridge.v1"], max_size=None, compression=None)
        first = json.loads(await ws.recv())
        assert first["type"] == "session", first
        return cls(ws)

    async def send(self, **req):
        self.n += 1
        req["id"] = self.n
        await self.ws.send(json.dumps(req))
        return self.n

    async def until(self, rid, types):
        while True:
            m = json.loads(await self.ws.recv())
            if m.get("id") == rid and m["type"] in types:
                return m
            if m.get("id") == rid and m["type"] == "request_error":
                raise RuntimeError(m)

    async def call(self, types, **req):
        return await self.until(await self.send(**req), types)

    async def close(self):
        await self.ws.close()


def http(port, method, path, body=b"", headers=(), read_into=None):
    """One HTTP/1.1 request on a new connection: (status, headers dict, body length, body or
    None). The body is read with recv_into a reusable buffer when read_into is given."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return http_on(s, method, path, body, headers, read_into)
    finally:
        s.close()


def http_on(s, method, path, body=b"", headers=(), read_into=None, host="127.0.0.1"):
    hdrs = {"Host": host, "Content-Length": str(len(body))}
    hdrs.update(headers)
    s.sendall((f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
               + "\r\n").encode())
    if body:
        s.sendall(body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = s.recv(65536)
        if not got:
            raise RuntimeError("connection closed before the answer's head")
        buf += got
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    h = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    n = int(h.get("content-length", "-1"))
    if n < 0:
        raise RuntimeError(f"no Content-Length: {lines[0]} {h}")
    if read_into is None:
        while len(rest) < n:
            got = s.recv(max(65536, n - len(rest)))
            if not got:
                break
            rest += got
        return status, h, len(rest), rest
    mv = memoryview(read_into)
    have = len(rest)
    mv[:have] = rest
    while have < n:
        got = s.recv_into(mv[have:], min(n - have, 4 * MIB))
        if not got:
            break
        have += got
    return status, h, have, None


# ---------------------------------------------------------------------------------------
#  procs

def anchor_spawn(n):
    true = shutil.which("true", path="/usr/bin:/bin")
    out = {}
    for _ in range(20):
        subprocess.run([true])
        os.waitpid(os.posix_spawn(true, [true], {}), 0)
    ts = []
    for _ in range(n):
        t0 = perf()
        pid = os.posix_spawn(true, [true], {})
        os.waitpid(pid, 0)
        ts.append(perf() - t0)
    out["posix_spawn+waitpid"] = ts
    ts = []
    for _ in range(n):
        t0 = perf()
        subprocess.run([true])
        ts.append(perf() - t0)
    out["subprocess.run(['true'])"] = ts
    ts = []
    for _ in range(5):
        t0 = perf()
        subprocess.run(["/bin/bash", "-l", "-c", "true"])
        ts.append(perf() - t0)
    out["subprocess.run(bash -l -c true) on the host"] = ts
    return out


CPU = {}   # (sandbox, label) -> kbridge CPU seconds per process


async def native_procs(srv, sid, n, with_bash=True):
    c = await Native.connect(srv, sid)
    out = {}
    try:
        for _ in range(20):
            await c.call(["sandbox"], op="sandbox_info")
        ts = []
        for _ in range(n):
            t0 = perf()
            await c.call(["sandbox"], op="sandbox_info")
            ts.append(perf() - t0)
        out["sandbox_info round trip"] = ts
        runs = [("process_start args=[true]", {"args": ["true"]}, n)]
        if with_bash:   # the host's own bash -l may take a second: only in the isolated sandbox
            runs.append(("process_start cmd=true (bash -l -c)", {"cmd": "true"}, max(5, n // 4)))
        for label, req, k in runs:
            for _ in range(5):
                await c.call(["process_exit"], op="process_start", **req)
            ts = []
            c0 = cpu_s(srv.pid)
            for _ in range(k):
                t0 = perf()
                m = await c.call(["process_exit"], op="process_start", **req)
                ts.append(perf() - t0)
                assert m["exit_code"] == 0, m
            out[label] = ts
            CPU[(sid, label)] = (cpu_s(srv.pid) - c0) / k
    finally:
        await c.close()
    return out


def e2b_procs(srv, n):
    env = dict(os.environ, E2B_API_URL=f"http://127.0.0.1:{srv.port}", E2B_SANDBOX_URL=f"http://127.0.0.1:{srv.port}",
               E2B_API_KEY=srv.token, N=str(n))
    env.pop("E2B_DEBUG", None)
    if not (ROOT / "tests" / "compat" / "node_modules" / "e2b").exists() or not shutil.which("node"):
        return None, "no node or tests/compat/node_modules"
    r = subprocess.run(["node", str(HERE / "sandbox_rows_e2b.mjs")], env=env, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        return None, "node failed: " + r.stderr[-400:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["run_true_exit"] == 0, d
    return d["run_true_ms"], ""


BASH_IN_SANDBOX = """
import subprocess, time, statistics
ts = []
for i in range(%d):
    t0 = time.perf_counter()
    subprocess.run(["/bin/bash", "-l", "-c", "true"])
    ts.append(time.perf_counter() - t0)
print("%%.3f" %% (statistics.median(ts[3:]) * 1000))
"""


async def bash_in_sandbox(srv, sid, n):
    """bash -l -c true spawned directly inside the sandbox, as user (E2B's default)."""
    c = await Native.connect(srv, sid)
    try:
        rid = await c.send(op="process_start", args=["/usr/bin/python3", "-c", BASH_IN_SANDBOX % (n + 3)], user="user")
        text = ""
        while True:
            m = json.loads(await c.ws.recv())
            if m.get("id") != rid:
                continue
            if m["type"] == "process_stdout":
                text += m["text"]
            if m["type"] in ("process_exit", "request_error"):
                break
        return float(text.strip()) / 1000
    finally:
        await c.close()


def row_procs(a, srv, res, lines):
    n = 50 if a.quick else 300
    anchors = anchor_spawn(n)
    model = srv.create_sandbox()
    try:
        iso = asyncio.run(native_procs(srv, model["sandboxID"], n))
        bash_sbx = asyncio.run(bash_in_sandbox(srv, model["sandboxID"], 10 if a.quick else 30))
    finally:
        srv.kill_sandbox(model["sandboxID"])
    host = asyncio.run(native_procs(srv, "default", n, with_bash=False))
    e2b, why = e2b_procs(srv, 30 if a.quick else 100)
    sub = med(anchors["subprocess.run(['true'])"])
    lines.append("process start -> exit of `true` (ms; ratio to subprocess.run(['true']) from this process; "
                 "kbridge CPU us per process)")
    lines.append(f"  {'':58s} {'p50':>7s} {'p90':>7s} {'x subp':>7s} {'CPU us':>7s}")

    def row(label, ts, target=None, cpu=None, vs=None):
        p50 = med(ts) * 1000
        t = f"  target <= {target} ms: {'PASS' if p50 <= target else 'MISS'}" if target is not None else ""
        if vs:
            t += f"  ({med(ts) / vs[1]:.2f}x {vs[0]})"
        c = f"{cpu * 1e6:7.0f}" if cpu is not None else " " * 7
        lines.append(f"  {label:58s} {p50:7.2f} {pct(ts, 0.9) * 1000:7.2f} {med(ts) / sub:7.2f} {c}{t}")
        res[label] = {"p50_ms": round(p50, 3), "p90_ms": round(pct(ts, 0.9) * 1000, 3), "n": len(ts)}
        if cpu is not None:
            res[label]["kbridge_cpu_us"] = round(cpu * 1e6, 1)

    for k, v in anchors.items():
        row("anchor: " + k, v)
    row("anchor: bash -l -c true spawned inside the sandbox (as user)", [bash_sbx])
    for where, sid, d in (("isolated sandbox", model["sandboxID"], iso), ("default (host) sandbox", "default", host)):
        for k, v in d.items():
            target = 3 if k.startswith("process_start args") else None
            vs = ("bash -l in the sandbox", bash_sbx) if "bash" in k and where.startswith("isolated") else None
            row(f"native, {where}: {k}", v, target, CPU.get((sid, k)), vs)
    if e2b:
        row("E2B SDK commands.run('true') = bash -l -c true, isolated", [x / 1000 for x in e2b], 5,
            vs=("bash -l in the sandbox", bash_sbx))
    else:
        lines.append(f"  E2B SDK commands.run('true'): not measured ({why})")


# ---------------------------------------------------------------------------------------
#  files

def row_files(a, srv, res, lines, tmp):
    size = (20 if a.quick else 100) * MB
    reps = 3 if a.quick else 5
    data = os.urandom(size)
    src, dst = os.path.join(tmp, "cp-src"), os.path.join(tmp, "cp-dst")
    with open(src, "wb") as f:
        f.write(data)
    model = srv.create_sandbox()
    sid = model["sandboxID"]
    hdr = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983", "X-Access-Token": model["envdAccessToken"]}
    buf = bytearray(size)
    cp, w, r = [], [], []
    cpu = {"cp": 0.0, "w": 0.0, "r": 0.0}
    try:
        # interleaved, so that page-cache writeback hits cp and envd alike
        for i in range(reps):
            t0, c0 = perf(), child_cpu_s()
            subprocess.run(["cp", src, dst], check=True)
            cp.append(perf() - t0)
            cpu["cp"] += child_cpu_s() - c0
            os.unlink(dst)
            t0, c0 = perf(), cpu_s(srv.pid)
            st, _, _, body = http(srv.port, "POST", "/files?path=/home/user/blob",
                                  data, dict(hdr, **{"Content-Type": "application/octet-stream"}))
            w.append(perf() - t0)
            cpu["w"] += cpu_s(srv.pid) - c0
            assert st == 200, (st, body)
            t0, c0 = perf(), cpu_s(srv.pid)
            st, _, n, _ = http(srv.port, "GET", "/files?path=/home/user/blob", b"", hdr, read_into=buf)
            r.append(perf() - t0)
            cpu["r"] += cpu_s(srv.pid) - c0
            assert st == 200 and n == size, (st, n)
        assert bytes(buf[:4096]) == data[:4096] and bytes(buf[-4096:]) == data[-4096:]
    finally:
        srv.kill_sandbox(sid)
        os.unlink(src)
    js_w, js_r, js_why = jupyter_contents(data, 1 if a.quick else 2)   # ~10 MB/s: slow
    mbps = lambda t: size / MB / t  # noqa: E731
    c = mbps(med(cp))
    per100 = lambda k: cpu[k] / reps * 1000 * (100 * MB / size)  # noqa: E731
    lines.append(f"{size // MB} MB file write then read over HTTP (MB/s, median of {reps}; ratio to cp; "
                 f"CPU ms per 100 MB of cp / of kbridge)")
    lines.append(f"  anchor: cp on the same file system        {c:8.0f}            {per100('cp'):6.0f} ms CPU")
    for label, ts, target, k in (("envd POST /files (octet-stream)", w, 0.5, "w"), ("envd GET /files", r, 0.5, "r")):
        x = mbps(med(ts))
        lines.append(f"  {label:42s} {x:8.0f}   {x / c:.2f}x cp  {per100(k):6.0f} ms CPU  target >= {target}x: "
                     f"{'PASS' if x / c >= target else 'MISS'}")
        res[label] = {"MBps": round(x, 1), "x_cp": round(x / c, 3), "kbridge_cpu_ms_per_100MB": round(per100(k), 1)}
    tot = mbps(med(w) + med(r)) * 2
    lines.append(f"  {'envd write + read (200 MB moved)':42s} {tot / 2:8.0f}   {tot / 2 / c:.2f}x cp (both ways, per 100 MB)")
    res["cp"] = {"MBps": round(c, 1)}
    if js_w:
        for label, ts in (("Jupyter Server PUT /api/contents (base64)", js_w),
                          ("Jupyter Server GET /api/contents (base64)", js_r)):
            x = mbps(med(ts))
            lines.append(f"  {label:42s} {x:8.0f}   {x / c:.2f}x cp")
            res[label] = {"MBps": round(x, 1), "x_cp": round(x / c, 3)}
    else:
        lines.append(f"  Jupyter Server contents API: not measured ({js_why})")


def start_js():
    import wsclient
    return wsclient.start_jupyter_server()


def jupyter_contents(data, reps):
    try:
        js = start_js()
    except Exception as e:  # noqa: BLE001
        return None, None, str(e)
    port = int(js.base_url.rsplit(":", 1)[1])
    hdr = {"Authorization": f"token {js.token}", "Content-Type": "application/json"}
    w, r = [], []
    try:
        for _ in range(reps):
            t0 = perf()
            body = json.dumps({"type": "file", "format": "base64", "name": "blob", "path": "blob",
                               "content": base64.b64encode(data).decode()}).encode()
            st, _, _, ans = http(port, "PUT", "/api/contents/blob", body, hdr)
            w.append(perf() - t0)
            assert st in (200, 201), (st, ans[:300])
            t0 = perf()
            st, _, _, ans = http(port, "GET", "/api/contents/blob?type=file&format=base64&content=1", b"", hdr)
            got = base64.b64decode(json.loads(ans)["content"])
            r.append(perf() - t0)
            assert st == 200 and len(got) == len(data), st
    finally:
        js.stop()
    return w, r, ""


# ---------------------------------------------------------------------------------------
#  proxy

async def ws_measure(url, n_echo, n_big, headers=None):
    async with websockets.connect(url, max_size=None, compression=None, extra_headers=headers or {}) as ws:
        for _ in range(20):
            await ws.send("x" * 64)
            await ws.recv()
        ts = []
        for _ in range(n_echo):
            t0 = perf()
            await ws.send("x" * 64)
            await ws.recv()
            ts.append(perf() - t0)
        t0 = perf()
        await ws.send(f"big {n_big}")
        got = 0
        while True:
            m = await ws.recv()
            if m == "done":
                break
            got += len(m)
        big = perf() - t0
        assert got == n_big * MIB, got
    return ts, big


def proxy_http(port, prefix, host, n_lat, big, buf, hdr, keep=False):
    """(per-request seconds, download seconds) against a server at 127.0.0.1:port under
    prefix; a new connection per request unless keep."""
    lat = []
    s = None
    cpu = {}
    c0 = cpu_s(SRV_PID) if SRV_PID else 0
    for i in range(n_lat + 20):
        if s is None:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = perf()
        st, h, n, _ = http_on(s, "GET", prefix + "/small", b"", hdr, host=host)
        dt = perf() - t0
        assert st == 200 and n == 2, (st, h)
        if i >= 20:
            lat.append(dt)
        if not keep or h.get("connection", "").lower() == "close":
            s.close()
            s = None
    if s:
        s.close()
    cpu["req_us"] = (cpu_s(SRV_PID) - c0) / (n_lat + 20) * 1e6 if SRV_PID else 0
    t0, c0 = perf(), (cpu_s(SRV_PID) if SRV_PID else 0)
    st, h, n, _ = _http_host(port, f"{prefix}/big?n={big}", hdr, host, buf)
    dt = perf() - t0
    cpu["ms_per_100MB"] = (cpu_s(SRV_PID) - c0) * 1000 * (100 * MB / big) if SRV_PID else 0
    assert st == 200 and n == big, (st, n, h)
    return lat, dt, cpu


SRV_PID = 0   # the process whose CPU the proxy row charges (kbridge, or 0 for the direct runs)


def _http_host(port, path, hdr, host, buf):
    s = socket.create_connection(("127.0.0.1", port))
    try:
        return http_on(s, "GET", path, b"", hdr, read_into=buf, host=host)
    finally:
        s.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


async def start_in_sandbox(srv, sid, script, hport, wport):
    c = await Native.connect(srv, sid)
    await c.call(["file"], op="files_write", path="/tmp/sandbox_rows_server.py", text=script)
    rid = await c.send(op="process_start", args=["/usr/bin/python3", "/tmp/sandbox_rows_server.py", str(hport),
                                                  str(wport)])
    while True:
        m = json.loads(await c.ws.recv())
        if m.get("id") != rid:
            continue
        if m["type"] == "process_stdout" and "ready" in m.get("text", ""):
            return c
        if m["type"] in ("process_exit", "request_error"):
            raise RuntimeError(f"the server in the sandbox did not start: {m}")


def row_proxy(a, srv, res, lines):
    n_lat = 200 if a.quick else 1000
    big = (20 if a.quick else 100) * MIB
    n_ws = 20 if a.quick else 100
    buf = bytearray(big)
    script = (HERE / "sandbox_rows_server.py").read_text()
    hport, wport = 8000, 8001
    # the anchor: the same server on the host
    dh, dw = free_port(), free_port()
    host_srv = subprocess.Popen(["/usr/bin/python3", str(HERE / "sandbox_rows_server.py"), str(dh), str(dw)],
                                stdout=subprocess.PIPE, text=True)
    assert host_srv.stdout.readline().strip() == "ready"
    model = srv.create_sandbox()
    sid = model["sandboxID"]
    c = None
    loop = asyncio.new_event_loop()
    try:
        c = loop.run_until_complete(start_in_sandbox(srv, sid, script, hport, wport))
        tok = {"X-Access-Token": srv.token}
        out = {}
        global SRV_PID
        SRV_PID = 0
        out["direct, keep-alive"] = proxy_http(dh, "", "127.0.0.1", n_lat, big, buf, {}, keep=True)
        out["direct, new connection each"] = proxy_http(dh, "", "127.0.0.1", n_lat, big, buf, {})
        SRV_PID = srv.pid
        out["proxy, path form"] = proxy_http(srv.port, f"/sandboxes/{sid}/ports/{hport}", "127.0.0.1", n_lat, big,
                                             buf, tok, keep=True)
        out["proxy, host form"] = proxy_http(srv.port, "", f"{hport}-{sid}.localhost:{srv.port}", n_lat, big,
                                             buf, tok, keep=True)
        wsd = loop.run_until_complete(ws_measure(f"ws://127.0.0.1:{dw}/", n_lat, n_ws))
        wsp = loop.run_until_complete(ws_measure(
            f"ws://127.0.0.1:{srv.port}/sandboxes/{sid}/ports/{wport}/?token={srv.token}", n_lat, n_ws))
    finally:
        if c:
            loop.run_until_complete(c.close())
        loop.close()
        srv.kill_sandbox(sid)
        host_srv.kill()
        host_srv.wait()
    lat0 = med(out["direct, keep-alive"][0])
    thr0 = big / MB / out["direct, keep-alive"][1]
    lines.append(f"port proxy (server in a sandbox vs the same server on the host; {n_lat} small GETs, "
                 f"{big // MIB} MiB download, {n_ws} x 1 MiB WebSocket frames)")
    lines.append(f"  {'HTTP':34s} {'GET p50 us':>10s} {'p90':>7s} {'+us vs direct':>13s} {'MB/s':>7s} {'x direct':>8s}"
                 f"  kbridge CPU us/req, ms/100MB")
    for k, (lat, dt, cpu) in out.items():
        thr = big / MB / dt
        d_us = (med(lat) - lat0) * 1e6
        t = ""
        if k.startswith("proxy"):
            t = (f"  target <= +100 us: {'PASS' if d_us <= 100 else 'MISS'}, >= 0.8x: "
                 f"{'PASS' if thr / thr0 >= 0.8 else 'MISS'}")
        c = f"  {cpu['req_us']:5.0f} {cpu['ms_per_100MB']:5.0f}" if k.startswith("proxy") else " " * 13
        lines.append(f"  {k:34s} {med(lat) * 1e6:10.0f} {pct(lat, 0.9) * 1e6:7.0f} {d_us:+13.0f} {thr:7.0f} "
                     f"{thr / thr0:8.2f}{c}{t}")
        res["http " + k] = {"p50_us": round(med(lat) * 1e6, 1), "MBps": round(thr, 1), **cpu}
    lines.append(f"  {'WebSocket':34s} {'echo p50 us':>10s} {'p90':>7s} {'+us vs direct':>13s} {'MB/s':>7s} {'x direct':>8s}")
    wthr0 = n_ws * MIB / MB / wsd[1]
    for k, (lat, dt) in (("direct", wsd), ("proxy, path form", wsp)):
        thr = n_ws * MIB / MB / dt
        d_us = (med(lat) - med(wsd[0])) * 1e6
        t = ""
        if k.startswith("proxy"):
            t = (f"  target <= +100 us: {'PASS' if d_us <= 100 else 'MISS'}, >= 0.8x: "
                 f"{'PASS' if thr / wthr0 >= 0.8 else 'MISS'}")
        lines.append(f"  {k:34s} {med(lat) * 1e6:10.0f} {pct(lat, 0.9) * 1e6:7.0f} {d_us:+13.0f} {thr:7.0f} "
                     f"{thr / wthr0:8.2f}{t}")
        res["ws " + k] = {"p50_us": round(med(lat) * 1e6, 1), "MBps": round(thr, 1)}


# ---------------------------------------------------------------------------------------
#  idle

async def kernel_in(srv, sid):
    c = await Native.connect(srv, sid)
    try:
        k = await c.call(["kernel"], op="start_kernel")
        end = await c.call(["end_of_execution"], op="execute", code="1+1", kernel_id=k["kernel"]["kernel_id"])
        assert end["execution"]["results"], end
    finally:
        await c.close()


async def kernels_in(srv, sids, par=2):
    sem = asyncio.Semaphore(par)

    async def one(sid):
        async with sem:
            try:
                await kernel_in(srv, sid)
            except RuntimeError:   # on a loaded machine a start may pass kbridge's 60 s: once more
                await kernel_in(srv, sid)
            done.append(sid)
            if len(done) % 10 == 0:
                print(f"[sandbox_rows] idle: {len(done)} kernels, kbridge RSS {rss_kib(srv.pid) / 1024:.1f} MiB",
                      file=sys.stderr, flush=True)
    done = []
    await asyncio.gather(*(one(s) for s in sids))


def row_idle(a, srv, res, lines):
    n = a.idle_sandboxes or (10 if a.quick else 100)
    time.sleep(1)
    r0 = rss_kib(srv.pid)
    sids = []
    t0 = perf()
    try:
        for _ in range(n):
            sids.append(srv.create_sandbox()["sandboxID"])
        asyncio.run(kernels_in(srv, sids))
        took = perf() - t0
        time.sleep(3)
        r1 = rss_kib(srv.pid)
    finally:
        for s in sids:
            srv.kill_sandbox(s)
    nk = a.js_kernels or (5 if a.quick else 20)
    js_rss, js0 = jupyter_idle(nk)
    lines.append(f"{n} idle sandboxes, each with an idle Python kernel (RSS of the server process only, MiB)")
    lines.append(f"  kbridge, before any sandbox             {r0 / 1024:7.1f}")
    lines.append(f"  kbridge, {n:3d} sandboxes + kernels       {r1 / 1024:7.1f}   target < 50 MiB: "
                 f"{'PASS' if r1 / 1024 < 50 else 'MISS'}   ({(r1 - r0) / n:.0f} KiB per sandbox; "
                 f"made in {took:.0f} s)")
    res["kbridge idle"] = {"rss_mib": round(r0 / 1024, 1)}
    res[f"kbridge {n} sandboxes"] = {"rss_mib": round(r1 / 1024, 1), "kib_per_sandbox": round((r1 - r0) / n, 1)}
    if js_rss:
        lines.append(f"  anchor: Jupyter Server, idle / {nk} kernels {js0 / 1024:7.1f} / {js_rss / 1024:.1f}   "
                     f"({(js_rss - js0) / nk:.0f} KiB per kernel)")
        res[f"jupyter-server {nk} kernels"] = {"rss_mib": round(js_rss / 1024, 1), "idle_mib": round(js0 / 1024, 1)}


def jupyter_idle(n):
    try:
        js = start_js()
    except Exception:  # noqa: BLE001
        return None, None
    try:
        import wsclient
        rest = wsclient.KernelsREST(js)
        time.sleep(1)
        r0 = rss_kib(js.pid)
        ids = [rest.create() for _ in range(n)]
        time.sleep(3)
        r1 = rss_kib(js.pid)
        for k in ids:
            rest.delete(k)
        return r1, r0
    finally:
        js.stop()


# ---------------------------------------------------------------------------------------

ROWS = {"procs": row_procs, "files": row_files, "proxy": row_proxy, "idle": row_idle}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kbridge", default=str(ROOT / "build" / "kbridge"))
    ap.add_argument("--quick", action="store_true", help="fewer runs, 20 MB files, 10 idle sandboxes")
    ap.add_argument("--only", default=",".join(ROWS), help="comma-separated, from: " + ",".join(ROWS))
    ap.add_argument("--idle-sandboxes", type=int, default=0, help="sandboxes for the idle row (100; --quick 10)")
    ap.add_argument("--js-kernels", type=int, default=0, help="Jupyter Server kernels for its anchor (20; --quick 5)")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("sandbox rows: not measured (needs root for sandboxes)")
        return 0
    lines = [f"== sandbox rows (bench/sandbox_rows.py{' --quick' if a.quick else ''}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) =="]
    allres = {}
    t_start = perf()
    with tempfile.TemporaryDirectory(prefix="bench-rows-", dir="/tmp") as tmp:
        n_idle = a.idle_sandboxes or (10 if a.quick else 100)
        srv = Server(a.kbridge, tmp, "--max-kernels", str(n_idle + 64), "--max-sandboxes", str(n_idle + 16))
        try:
            for name in a.only.split(","):
                t0 = perf()
                res = allres.setdefault(name, {})
                try:
                    ROWS[name](a, srv, res, lines, tmp) if name == "files" else ROWS[name](a, srv, res, lines)
                except Exception as e:  # noqa: BLE001 -- one row failing leaves the others
                    lines.append(f"{name}: FAILED: {type(e).__name__}: {e}")
                    res["error"] = str(e)
                print(f"[sandbox_rows] {name} took {perf() - t0:.0f} s", file=sys.stderr, flush=True)
        finally:
            srv.stop()
    lines.append(f"(sandbox rows took {perf() - t_start:.0f} s)")
    text = "\n".join(lines)
    print(text, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(allres, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
