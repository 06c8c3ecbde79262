"""Shared helpers for the kernel-bridge benchmarks.

Not a script: imported by run_all.py, worker.py, kbclient.py and zmq_direct.py
(they put this directory on sys.path automatically when run as
`/usr/bin/python3 bench/<script>.py`).

Copied from the shared harness (../shared/bench/benchlib.py). The workload
cells and payload rule are unchanged. Local changes, marked "kbridge bench":
  * ExecResult keeps the main result's text/plain (`main_text`) and a free
    `info` dict for target-specific extras (e.g. kbridge's end_of_execution size);
  * the PNG payload check is exact: the setup cell returns len(base64 PNG), so the
    expected payload is known before the run (png_expected_bytes), instead of
    "whatever arrived, if there were 200 displays";
  * throughput_fields() accepts that expected size.

Contents:
  * workloads   -- the cell code every target runs, plus the expected output
                   sizes, so all targets measure exactly the same thing
  * stats       -- percentiles / summaries
  * Reporter    -- results as JSON lines on stdout (+ optional file) and a
                   human-readable table at the end
  * process     -- RSS/PSS and CPU-time probes for server / kernel / client

Units: latency in microseconds (us), sizes in bytes, MB = 10**6 bytes.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

PYTHON = "/usr/bin/python3"          # Debian python; never the pyenv one on PATH
CLK_TCK = os.sysconf("SC_CLK_TCK")
# ipykernel imports debugpy, which prints a 4-line "frozen modules" warning to
# stderr in every process (ours and each kernel). Silence it; no perf effect.
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# Keep every file the clients, servers and kernels write (connection files,
# IPython history, matplotlib font cache, ...) under /tmp, not in $HOME.
BENCH_HOME = os.path.join(tempfile.gettempdir(), "bench-jupyter-home")
for _var, _sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                   ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
    os.environ.setdefault(_var, os.path.join(BENCH_HOME, _sub))
    os.makedirs(os.environ[_var], exist_ok=True)


def log(*a):
    """Progress messages go to stderr so stdout stays JSON lines + table."""
    print("[%s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Workloads: the cells every target executes.
# --------------------------------------------------------------------------
LATENCY_CODE = "1+1"

# 500_000 lines x 100 bytes (99 chars + '\n') = 50_000_000 bytes of stdout,
# one print() per line (kernel-side OutStream batches it every 0.2 s).
STDOUT_LINES_N = 500_000
STDOUT_LINES_CODE = (
    "_l = 'x' * 99\n"
    "for _i in range(%d):\n"
    "    print(_l)\n" % STDOUT_LINES_N
)
STDOUT_LINES_BYTES = STDOUT_LINES_N * 100

# Same 50 MB, but written as 50 x 1 MB blocks (10_000 lines of 100 chars each)
# with an explicit flush after each block -> 50 stream messages of 1 MB. This
# takes the kernel's per-print() cost out and stresses the transport.
STDOUT_CHUNKS_N = 50
STDOUT_CHUNKS_CODE = (
    "import sys as _sys\n"
    "_c = ('x' * 99 + '\\n') * 10_000\n"
    "for _i in range(%d):\n"
    "    _sys.stdout.write(_c); _sys.stdout.flush()\n" % STDOUT_CHUNKS_N
)
STDOUT_CHUNKS_BYTES = STDOUT_CHUNKS_N * 1_000_000

# The brief's "many small outputs" cell, verbatim.
MANY_SMALL_N = 100_000
MANY_SMALL_CODE = "for i in range(%d): print(i)" % MANY_SMALL_N
MANY_SMALL_BYTES = sum(len(str(i)) + 1 for i in range(MANY_SMALL_N))  # 588_890

# display_data: one real matplotlib PNG is rendered once (setup cell), then the
# measured cell publishes it 200 times as display_data (base64 'image/png' +
# 'text/plain'), so we time the transport, not matplotlib's renderer.
PNG_SETUP_CODE = r"""
import base64 as _b64, io as _io
import matplotlib as _mpl
_mpl.use('agg')
import matplotlib.pyplot as _plt
import numpy as _np
from IPython.display import display as _display
_rng = _np.random.default_rng(0)
_fig, _ax = _plt.subplots(figsize=(8, 5), dpi=100)
_ax.plot(_rng.standard_normal(3000).cumsum(), lw=0.8)
_ax.scatter(_rng.uniform(0, 3000, 2000), _rng.standard_normal(2000) * 20, s=3, c=_rng.uniform(size=2000))
_buf = _io.BytesIO(); _fig.savefig(_buf, format='png'); _plt.close(_fig)
_png_b64 = _b64.b64encode(_buf.getvalue()).decode('ascii')
len(_png_b64)
"""
PNG_N = 200
PNG_CODE = (
    "for _i in range(%d):\n"
    "    _display({'image/png': _png_b64, 'text/plain': '<Figure size 800x500 with 1 Axes>'}, raw=True)\n"
    % PNG_N
)

PNG_TEXT_PLAIN = '<Figure size 800x500 with 1 Axes>'


def png_expected_bytes(setup_main_text) -> int | None:
    """kbridge bench: exact payload of PNG_CODE, from the setup cell's result
    (len of the base64 PNG): PNG_N x (base64 length + text/plain length)."""
    try:
        return PNG_N * (int(str(setup_main_text).strip()) + len(PNG_TEXT_PLAIN))
    except (TypeError, ValueError):
        return None


# name -> (setup code or None, code, expected payload bytes or None)
# expected None = computed at run time (PNG size depends on matplotlib version)
THROUGHPUT_WORKLOADS = {
    "stdout_lines_50MB": (None, STDOUT_LINES_CODE, STDOUT_LINES_BYTES),
    "stdout_chunks_50x1MB": (None, STDOUT_CHUNKS_CODE, STDOUT_CHUNKS_BYTES),
    "display_png_x200": (PNG_SETUP_CODE, PNG_CODE, None),
    "print_100k_small": (None, MANY_SMALL_CODE, MANY_SMALL_BYTES),
}


def payload_bytes(msg_type: str, content: dict) -> int:
    """Bytes of *user payload* in an iopub message (same rule for every target):
    stream -> UTF-8 length of text; display_data/execute_result -> sum of the
    lengths of the string values in content['data'] (base64 for images)."""
    if msg_type == "stream":
        t = content.get("text", "")
        return len(t) if t.isascii() else len(t.encode("utf-8"))
    if msg_type in ("display_data", "update_display_data", "execute_result"):
        n = 0
        for v in content.get("data", {}).values():
            if isinstance(v, str):
                n += len(v) if v.isascii() else len(v.encode("utf-8"))
        return n
    return 0


class ExecResult:
    """Outcome of one execute_request, filled by every client implementation."""
    __slots__ = ("t_send", "t_reply", "t_idle", "t_first", "payload", "wire", "msgs",
                 "stream_msgs", "displays", "status", "stderr", "rate_limited",
                 "main_text", "info")  # kbridge bench: main_text, info

    def __init__(self):
        self.t_send = self.t_reply = self.t_idle = None
        self.t_first = None       # arrival of the first payload-bearing message
        self.payload = 0          # user payload bytes (see payload_bytes)
        self.wire = 0             # bytes on the wire, where the client can see them
        self.msgs = 0             # iopub messages for this request
        self.stream_msgs = 0
        self.displays = 0
        self.status = None        # execute_reply status
        self.stderr = ""          # first stderr text seen (e.g. rate-limit notice)
        self.rate_limited = False
        self.main_text = None     # kbridge bench: text/plain of the execute_result
        self.info = None          # kbridge bench: target-specific extras (dict)

    @property
    def idle_s(self):
        return self.t_idle - self.t_send

    @property
    def done_s(self):
        return max(self.t_idle, self.t_reply) - self.t_send

    def account_iopub(self, msg_type: str, content: dict):
        """Count one iopub message (status messages are handled by the caller)."""
        self.msgs += 1
        if msg_type == "stream":
            self.stream_msgs += 1
            if content.get("name") == "stderr":
                txt = content.get("text", "")
                if "rate exceeded" in txt:
                    self.rate_limited = True
                if len(self.stderr) < 400:
                    self.stderr += txt[:400]
                return      # stderr is not counted as payload
        elif msg_type == "display_data":
            self.displays += 1
        elif msg_type == "execute_result":       # kbridge bench
            t = content.get("data", {}).get("text/plain")
            self.main_text = "".join(t) if isinstance(t, list) else t
        n = payload_bytes(msg_type, content)
        if n and self.t_first is None:
            self.t_first = time.perf_counter()
        self.payload += n


# --------------------------------------------------------------------------
# Stats
# --------------------------------------------------------------------------
def percentile(sorted_vals, p):
    """Linear-interpolated percentile (same as numpy's default) of a sorted list."""
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    f, c = math.floor(k), math.ceil(k)
    if f == c:
        return sorted_vals[int(k)]
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


def summarize(values, scale=1.0, digits=1):
    v = sorted(x * scale for x in values)
    r = lambda x: round(x, digits)
    return {
        "n": len(v),
        "min": r(v[0]), "p50": r(percentile(v, 50)), "p90": r(percentile(v, 90)),
        "p99": r(percentile(v, 99)), "max": r(v[-1]),
        "mean": r(statistics.fmean(v)),
        "stdev": r(statistics.pstdev(v)) if len(v) > 1 else 0.0,
    }


# --------------------------------------------------------------------------
# Process probes (Linux /proc + ps)
# --------------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    """RSS in KiB as reported by `ps -o rss=` (what the brief asks for)."""
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout
    return int(out.strip() or 0)


def pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split between sharers), KiB."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def stop_server(proc, timeout: float = 20.0):
    """SIGTERM a server (it shuts its kernels down), then SIGKILL it and its children."""
    if proc.poll() is not None:
        return
    kids = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for k in set(kids) | set(children(proc.pid)):
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(5)


def cpu_s(pid: int) -> float:
    """utime+stime of a process in seconds (0.0 if it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def sys_cpu_ticks():
    """Machine-wide jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v


def sys_cpu_pct(t0, t1) -> dict:
    """% of total machine capacity (all CPUs) between two sys_cpu_ticks()."""
    d = [b - a for a, b in zip(t0, t1)]
    tot = sum(d) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = d
    return {"user": round(100 * (user + nice) / tot, 1), "system": round(100 * system / tot, 1),
            "softirq": round(100 * (irq + softirq) / tot, 1), "iowait": round(100 * iowait / tot, 1),
            "idle": round(100 * idle / tot, 1), "steal": round(100 * steal / tot, 1)}


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU seconds used by the client (this process) and by given pids between
    start() and stop()."""

    def __init__(self, **pids):
        self.pids = {k: v for k, v in pids.items() if v}

    def start(self):
        self.t0 = time.perf_counter()
        self.c0 = self_cpu_s()
        self.p0 = {k: cpu_s(v) for k, v in self.pids.items()}
        self.s0 = sys_cpu_ticks()
        return self

    def stop(self) -> dict:
        """{client, <pid names>: CPU seconds, wall: s, machine: % split of all CPUs}"""
        wall = time.perf_counter() - self.t0
        out = {"client": round(self_cpu_s() - self.c0, 3)}
        for k, v in self.pids.items():
            out[k] = round(cpu_s(v) - self.p0[k], 3)
        out["wall"] = round(wall, 3)
        self.machine = sys_cpu_pct(self.s0, sys_cpu_ticks())
        return out


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def machine_info() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        model = "?"
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    except OSError:
        load = []
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg": load}


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------
class Reporter:
    """Every result is one JSON object per line on stdout (and appended to
    --jsonl FILE if given); table() prints a human summary at the end."""

    def __init__(self, script: str, jsonl_path: str | None = None, run_id: str | None = None):
        self.script = script
        self.run_id = run_id or _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        self.records = []
        self.fh = open(jsonl_path, "a") if jsonl_path else None

    def emit(self, target: str, bench: str, **fields):
        rec = {"ts": _dt.datetime.now().isoformat(timespec="seconds"), "run": self.run_id,
               "script": self.script, "target": target, "bench": bench}
        rec.update(fields)
        self.records.append(rec)
        line = json.dumps(rec, sort_keys=False)
        print(line, flush=True)
        if self.fh:
            self.fh.write(line + "\n")
            self.fh.flush()
        return rec

    def table(self):
        rows = []
        for r in self.records:
            b = r["bench"]
            if "execs_per_s" in r:
                l = r.get("lat_us") or {"p50": float("nan"), "p99": float("nan")}
                cpu = r.get("cpu_pct_of_one_core", {})
                val = "%8.1f exec/s  p50 %7.0f  p99 %7.0f us" % (r["execs_per_s"], l["p50"], l["p99"])
                extra = "N=%s cpu%%: %s" % (r.get("clients"), " ".join("%s=%.0f" % kv for kv in cpu.items()))
            elif "lat_us" in r:
                s = r["lat_us"]
                val = "p50 %8.0f  p90 %8.0f  p99 %8.0f us" % (s["p50"], s["p90"], s["p99"])
                extra = "n=%d" % s["n"]
            elif "start_ms" in r:
                s = r["start_ms"]
                val = "p50 %8.1f  p90 %8.1f  max %8.1f ms" % (s["p50"], s["p90"], s["max"])
                extra = "n=%d" % s["n"]
            elif "MBps" in r:
                m = r["MBps"]
                val = "%8.1f MB/s (min %.1f max %.1f)" % (m["p50"], m["min"], m["max"])
                extra = "%.2fs %s" % (r["seconds"]["p50"], "" if r.get("complete", True) else "INCOMPLETE")
            elif "rss_kb" in r:
                val = "RSS %8.1f MiB  PSS %8.1f MiB" % (r["rss_kb"] / 1024, r.get("pss_kb", 0) / 1024)
                extra = r.get("what", "")
                if r.get("kernel_rss_kb"):
                    extra += " | kernels: %d x RSS p50 %.1f MiB, sum %.0f MiB" % (
                        r["kernels"], r["kernel_rss_kb"]["p50"] / 1024, r["kernel_rss_sum_kb"] / 1024)
            else:
                continue
            rows.append((r["target"], b, val, extra))
        if not rows:
            return
        w0 = max(len(x[0]) for x in rows)
        w1 = max(len(x[1]) for x in rows)
        print()
        print("%-*s  %-*s  %s" % (w0, "target", w1, "bench", "result"))
        print("-" * (w0 + w1 + 60))
        for t, b, v, e in rows:
            print("%-*s  %-*s  %s  %s" % (w0, t, w1, b, v, e))
        print()


# --------------------------------------------------------------------------
# Record builders shared by all targets (same JSON schema everywhere)
# --------------------------------------------------------------------------
def latency_fields(results, warmup, cpu, machine=None) -> dict:
    """results: list of ExecResult for LATENCY_CODE; cpu: CpuMeter.stop() dict;
    machine: CpuMeter.machine (whole-machine CPU split, %)."""
    n = len(results)
    for r in results:
        assert r.status == "ok", r.status
    return {
        "lat_us": summarize([r.idle_s for r in results], 1e6),
        "to_reply_and_idle_us": summarize([r.done_s for r in results], 1e6),
        "warmup": warmup,
        "execs_per_s_serial": round(n / cpu["wall"], 1),
        "cpu_s": cpu,
        "cpu_us_per_exec": {k: round(v / n * 1e6, 1) for k, v in cpu.items() if k != "wall"},
        "machine_cpu_pct": machine,
    }


def throughput_fields(name, results, cpu, machine=None, expected=None) -> dict:
    """results: list of ExecResult of one workload (reps); cpu: CpuMeter.stop();
    machine: CpuMeter.machine; expected: payload bytes (kbridge bench: given for
    the PNG cell, see png_expected_bytes)."""
    res = results[-1]
    if expected is None:
        expected = THROUGHPUT_WORKLOADS[name][2]
    if expected is None:            # PNG: must get PNG_N displays of identical size
        expected = res.payload if res.displays == PNG_N else -1
    secs = [r.idle_s for r in results]
    mbps = [r.payload / r.idle_s / 1e6 for r in results]
    first = [r.t_first - r.t_send for r in results if r.t_first]
    complete = all(r.payload == expected for r in results)
    if name == "display_png_x200":   # kbridge bench: and exactly PNG_N displays each time
        complete = complete and all(r.displays == PNG_N for r in results)
    if not complete:
        log("WARNING %s: got %s payload bytes, expected %s" % (name, [r.payload for r in results], expected))
    return {
        "MBps": summarize(mbps, 1, 2), "seconds": summarize(secs, 1, 3),
        "first_output_ms": summarize(first, 1e3, 1) if first else None,
        "payload_bytes": res.payload, "expected_bytes": expected, "complete": complete,
        "wire_bytes": res.wire or None, "iopub_msgs": res.msgs, "displays": res.displays,
        "rate_limited": any(r.rate_limited for r in results),
        "stderr_sample": res.stderr[:200] or None,
        "reps": len(results), "cpu_s_total": cpu, "machine_cpu_pct": machine,
    }


def add_common_args(ap):
    ap.add_argument("--jsonl", help="also append JSON lines to this file")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    return ap
