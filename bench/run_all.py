#!/usr/bin/python3
"""run_all.py -- kbridge vs direct ZeroMQ vs Jupyter Server, measured in one run.

Usage (from the repository root; bench/run.sh is the same):
    /usr/bin/python3 bench/run_all.py [--quick] [--lat-n 2000] [--reps 5] [--kernels 20]
        [--targets LIST] [--kbridge BIN | --no-build] [--out DIR] ...

What it does, in this order (~5-6 min with the defaults, ~1.5-2 min with --quick):
  1. builds kbridge (scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo; an
     up-to-date build is a no-op), unless --kbridge BIN or --no-build;
  2. starts one worker process per target (worker.py): each launches its own kernel
     and, where there is one, its own server (kbridge / jupyter-server on 127.0.0.1,
     random port, random token), then reports kbridge's idle RSS before any client;
  3. memory: kbridge with --kernels kernels started via start_kernel (and, for
     comparison, stock jupyter-server with as many kernels + open WebSockets);
  4. `1+1` latency (execute_request -> idle), all targets interleaved in blocks
     of --block runs after --warmup runs each, so they share the machine's noise;
  5. throughput: benchlib's four cells, --reps repetitions, interleaved (every
     rep runs every cell on every target, in a rotating order); every execution
     checks that its complete payload arrived;
  6. RSS again after the workloads; then one pass of the output cells against a
     second kbridge with its DEFAULT limits (what a user gets out of the box);
  7. prints the summary (ratios against the direct-ZeroMQ floor and against
     jupyter-server, RSS, PASS/MISS per target) and writes everything to
     bench/results/<UTC stamp>/ (results.jsonl, summary.txt, worker logs).

Targets are informational: the exit status is 0 whatever the figures are
(non-zero only when the benchmark itself could not run).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import select
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import benchlib as B  # noqa: E402

perf = time.perf_counter
ALL_TARGETS = ["zmq-c", "zmq-raw", "zmq-jupyter_client", "kbridge", "jupyter-server/legacy",
               "jupyter-server/v1", "jupyter-server+nodelay/legacy", "jupyter-server+nodelay/v1"]
QUICK_TARGETS = ["zmq-c", "zmq-raw", "kbridge", "jupyter-server/legacy", "jupyter-server+nodelay/v1"]
# kbridge closes a client that has more than --max-outbound-bytes (default 64 MiB)
# queued; a Python client reading 50 MB cells is that slow, so the measured run
# raises the limit (like jupyter-server runs with limit_rate=False). The defaults
# are exercised separately (step 6).
KBRIDGE_ARGS = "--max-outbound-bytes 1073741824"
TARGET_LAT_P50 = 1.10      # kbridge p50 <= 1.10 x direct
TARGET_TPUT = 0.90         # kbridge MB/s >= 0.9 x direct
TARGET_IDLE_RSS_MIB = 10.0
# issue 13 (the bridge's cost per cell), against the floors measured in the same run
TARGET13_CPU_US = 150.0    # kbridge's own CPU per 1+1
TARGET13_LAT_P50 = 1.03    # 1+1 p50 / direct ZeroMQ
TARGET13_TPUT = {"stdout_chunks_50x1MB": 0.90, "display_png_x200": 0.95}
TARGET13_KSTART = 1.00     # kernel start -> ready / a direct spawn polled every 10 ms


def log(*a):
    B.log(*a)


# --------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------
class Worker:
    def __init__(self, target, out_dir, kbridge=None, kbridge_args=""):
        self.target = target
        self.log_path = os.path.join(out_dir, "worker-%s.log" % target.replace("/", "_"))
        self.logf = open(self.log_path, "w")
        args = [B.PYTHON, os.path.join(HERE, "worker.py"), target]
        if target == "kbridge":
            args += ["--kbridge", kbridge, "--kbridge-args", kbridge_args, "--log-dir", out_dir]
        if target == "zmq-c":
            args += ["--zmq-floor", zmq_floor_binary(kbridge)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.logf, text=True, bufsize=1)
        self.info = {}

    def call(self, cmd, timeout=900.0, **kw):
        kw["cmd"] = cmd
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else ""
        if not line:
            raise RuntimeError("%s: no reply to %s (worker died or timed out; see %s)"
                               % (self.target, cmd, self.log_path))
        rep = json.loads(line)
        if not rep.get("ok"):
            raise RuntimeError("%s: %s failed: %s (see %s)" % (self.target, cmd, rep.get("error"),
                                                               self.log_path))
        return rep.get("res")

    def quit(self):
        if self.proc.poll() is None:
            try:
                self.call("quit", timeout=60)
            except Exception as e:
                log("quit %s: %s" % (self.target, e))
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.logf.close()


class Results:
    """All records as JSON lines (results.jsonl), same shape as the shared harness."""

    def __init__(self, path, run_id):
        self.fh = open(path, "a")
        self.run_id = run_id
        self.records = []

    def emit(self, target, bench, **fields):
        rec = {"ts": _dt.datetime.now().isoformat(timespec="seconds"), "run": self.run_id,
               "script": "run_all", "target": target, "bench": bench}
        rec.update(fields)
        self.records.append(rec)
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        return rec

    def get(self, target, bench):
        for r in self.records:
            if r["target"] == target and r["bench"] == bench:
                return r
        return None


def guard(res, w, workers, phase, fn, *args, **kw):
    """Run one worker call; if it fails, record why, drop the target from the
    remaining phases and carry on with the others (returns None)."""
    try:
        return fn(*args, **kw)
    except Exception as e:
        log("FAILED %s during %s: %s" % (w.target, phase, e))
        res.emit(w.target, "failed", phase=phase, error=str(e))
        if w in workers:
            workers.remove(w)
        return None


def to_exec_result(d) -> B.ExecResult:
    r = B.ExecResult()
    r.t_send = 0.0
    r.t_idle, r.t_reply = d["idle_s"], d["done_s"]
    r.t_first = d["first_s"]
    for k in ("payload", "wire", "msgs", "stream_msgs", "displays", "status", "stderr",
              "rate_limited", "main_text", "info"):
        setattr(r, k, d[k])
    return r


def add_cpu(tot, c):
    for k, v in c.items():
        tot[k] = round(tot.get(k, 0.0) + v, 3)
    return tot


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------
def build(a):
    if a.kbridge:
        return os.path.abspath(a.kbridge)
    if a.from_head:
        # a clean copy of the committed tree, so concurrent edits in the working
        # tree are not measured; built outside the repository
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
        src = os.path.join("/tmp", "kbridge-bench-src-" + commit)
        if not os.path.isdir(src):
            os.makedirs(src + ".tmp", exist_ok=True)
            log("exporting HEAD (%s) to %s" % (commit, src))
            subprocess.run("git archive HEAD | tar -x -C %s" % shlex.quote(src + ".tmp"), shell=True,
                           cwd=ROOT, check=True)
            os.rename(src + ".tmp", src)
        log("building kbridge %s: scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo" % commit)
        subprocess.run([os.path.join(src, "scripts", "build.sh"), "build", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                        "-DKBRIDGE_TESTS=OFF"], check=True, cwd=src, stdout=subprocess.DEVNULL)
        return os.path.join(src, "build", "kbridge")
    binary = os.path.join(ROOT, a.build_dir, "kbridge")
    if not a.no_build:
        log("building kbridge: scripts/build.sh %s -DCMAKE_BUILD_TYPE=RelWithDebInfo" % a.build_dir)
        subprocess.run([os.path.join(ROOT, "scripts", "build.sh"), a.build_dir,
                        "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    if not os.access(binary, os.X_OK):
        sys.exit("no kbridge binary at %s" % binary)
    return binary


def zmq_floor_binary(kbridge):
    """bench/zmq_floor, built by CMake next to kbridge (tests/ subdirectory)."""
    for d in ([os.path.dirname(kbridge)] if kbridge else []) + [os.path.join(ROOT, "build")]:
        for cand in (os.path.join(d, "tests", "zmq_floor"), os.path.join(d, "zmq_floor")):
            if os.access(cand, os.X_OK):
                return cand
    return os.path.join(ROOT, "build", "tests", "zmq_floor")


def phase_kstart(a, res, workers):
    """Kernel start -> ready, cold, one at a time: kbridge's start_kernel against
    zmq_floor spawning ipykernel itself and polling kernel_info every 10 ms."""
    by = {w.target: w for w in workers}
    if a.kstart_n <= 0 or "kbridge" not in by:
        return
    ms = {"zmq-c": [], "kbridge": []}
    for rnd in range(a.kstart_n):
        for t in ("zmq-c", "kbridge") if rnd % 2 == 0 else ("kbridge", "zmq-c"):
            if t in by and by[t] in workers:
                r = guard(res, by[t], workers, "kstart", by[t].call, "kstart", n=1, timeout=300)
                if r:
                    ms[t] += r["ready_ms"]
    log("kernel start -> ready, ms: %s" % "; ".join("%s %s" % kv for kv in ms.items()))
    for t, v in ms.items():
        if v:
            res.emit(t, "kernel_start_ready", ready_ms=v, ms=B.summarize(v, 1, 1))


def build_type(binary):
    cache = os.path.join(os.path.dirname(binary), "CMakeCache.txt")
    try:
        with open(cache) as f:
            for line in f:
                if line.startswith("CMAKE_BUILD_TYPE:"):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "?"


def git_state(a):
    def g(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if a.kbridge:
        return {"commit": "?", "dirty": False, "source": "given binary " + a.kbridge}
    if a.from_head:
        return {"commit": g("rev-parse", "--short", "HEAD"), "dirty": False, "source": "HEAD snapshot"}
    return {"commit": g("rev-parse", "--short", "HEAD"), "source": "working tree",
            "dirty": bool(g("status", "--porcelain", "--", ".", ":!bench"))}


def phase_latency(a, res, workers):
    log("latency: %d warm-up runs per target" % a.warmup)
    state = {}
    for w in list(workers):
        if not guard(res, w, workers, "latency", w.call, "latency", n=0, warmup=a.warmup):
            continue
        state[w.target] = {"idle": [], "done": [], "cpu": {}, "spent": 0.0}
    rnd = 0
    while True:
        todo = [w for w in workers if w.target in state and len(state[w.target]["idle"]) < a.lat_n
                and state[w.target]["spent"] < a.lat_max_s]
        if not todo:
            break
        k = rnd % len(todo)
        for w in todo[k:] + todo[:k]:
            st = state[w.target]
            n = min(a.block, a.lat_n - len(st["idle"]))
            t0 = perf()
            r = guard(res, w, workers, "latency", w.call, "latency", n=n, warmup=a.block_warmup)
            if r is None:
                state.pop(w.target)
                continue
            st["spent"] += perf() - t0
            st["idle"] += r["idle_us"]
            st["done"] += r["done_us"]
            add_cpu(st["cpu"], r["cpu"])
        rnd += 1
        log("latency: round %d: %s" % (rnd, ", ".join("%s %d" % (t, len(s["idle"])) for t, s in state.items())))
    for t, st in state.items():
        n = len(st["idle"])
        if not n:
            continue
        res.emit(t, "exec_1+1_to_idle", lat_us=B.summarize(st["idle"]),
                 to_reply_and_idle_us=B.summarize(st["done"]), warmup=a.warmup,
                 blocks_of=a.block, block_warmup=a.block_warmup, requested_n=a.lat_n,
                 max_s=a.lat_max_s, cpu_s=st["cpu"],
                 cpu_us_per_exec={k: round(v / n * 1e6, 1) for k, v in st["cpu"].items() if k != "wall"},
                 execs_per_s_serial=round(n / st["cpu"]["wall"], 1) if st["cpu"].get("wall") else None)


def phase_throughput(a, res, workers, names):
    expected = {w.target: {} for w in workers}
    if "display_png_x200" in names:
        log("throughput: PNG setup cell on every target")
        for w in list(workers):
            r = guard(res, w, workers, "throughput", w.call, "exec",
                      code=B.THROUGHPUT_WORKLOADS["display_png_x200"][0])
            if r is None:
                continue
            if r["status"] != "ok":
                raise RuntimeError("%s: PNG setup failed: %s" % (w.target, r["stderr"]))
            expected[w.target]["display_png_x200"] = B.png_expected_bytes(r["main_text"])
    runs = {w.target: {n: [] for n in names} for w in workers}
    cpu = {w.target: {n: {} for n in names} for w in workers}
    for rep in range(a.reps):
        k = rep % max(1, len(workers))
        order = workers[k:] + workers[:k]
        for name in names:
            for w in order:
                if w not in workers:
                    continue
                r = guard(res, w, workers, "throughput", w.call, "throughput", name=name)
                if r is None:
                    continue
                runs[w.target][name].append(to_exec_result(r["rec"]))
                add_cpu(cpu[w.target][name], r["cpu"])
        log("throughput: rep %d/%d done" % (rep + 1, a.reps))
    for w in workers:
        for name in names:
            rs = runs[w.target][name]
            if not rs:
                continue
            fields = B.throughput_fields(name, rs, cpu[w.target][name], None,
                                         expected=expected[w.target].get(name))
            fields["wire_bytes_per_rep"] = [r.wire for r in rs]
            fields["iopub_msgs_per_rep"] = [r.msgs for r in rs]
            infos = [r.info for r in rs if r.info]
            if infos:
                fields["info_per_rep"] = infos
            res.emit(w.target, name, **fields)


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------
def fmt_ratio(x):
    return "-" if x is None else "%.2f" % x


def mib(kb):
    return kb / 1024.0


def summary(a, res, targets, names, meta) -> str:
    L = []
    p = L.append
    floor = a.floor
    js = [t for t in targets if t.startswith("jupyter-server")]
    p("kbridge benchmark %s: kbridge from %s %s%s, %s build; %s" % (
        meta["run"], meta["git"]["source"], meta["git"]["commit"],
        " + uncommitted changes" if meta["git"]["dirty"] else "", meta["build_type"],
        meta["kbridge_banner"].split(" listening")[0]))
    m = meta["machine"]
    p("machine: %s CPUs %s, Linux %s, Python %s, loadavg at start %s; kbridge args: %s" % (
        m["cpus"], m["cpu_model"], m["kernel"], m["python"], " ".join(m["loadavg"]),
        meta["kbridge_args"] or "(defaults)"))
    p("floor = %s; ratios are kbridge / row (latency: lower is better; throughput: higher is better)" % floor)
    p("")

    # ---- latency
    lat = {t: res.get(t, "exec_1+1_to_idle") for t in targets}
    kb = lat.get("kbridge")
    p("1+1 round trip, execute_request -> idle (us)  [%d warm-up, blocks of %d interleaved]"
      % (a.warmup, a.block))
    hdr = "  %-30s %6s %8s %8s %8s   %-14s %-14s %s" % ("target", "n", "p50", "p90", "p99",
                                                      "kbridge/row p50", "p99", "CPU us/exec client/server/kernel")
    p(hdr)
    for t in targets:
        r = lat.get(t)
        if not r:
            continue
        s = r["lat_us"]
        c = r["cpu_us_per_exec"]
        rp50 = kb["lat_us"]["p50"] / s["p50"] if kb and t != "kbridge" else None
        rp99 = kb["lat_us"]["p99"] / s["p99"] if kb and t != "kbridge" else None
        p("  %-30s %6d %8.0f %8.0f %8.0f   %-14s %-14s %s" % (
            t + (" (floor)" if t == floor else ""), s["n"], s["p50"], s["p90"], s["p99"],
            fmt_ratio(rp50), fmt_ratio(rp99),
            "/".join("%.0f" % c.get(k, 0) for k in ("client", "server", "kernel"))))
    p("")

    # ---- throughput
    tp = {(t, n): res.get(t, n) for t in targets for n in names}
    if names:
        summary_throughput(a, p, targets, names, tp, floor)
    summary_rest(a, p, res, targets, names, meta, floor, kb, lat, tp, js)
    return "\n".join(L)


def summary_throughput(a, p, targets, names, tp, floor):
    p("throughput, MB/s of payload (median of %d reps [min-max]; * = payload incomplete)" % a.reps)
    w = 22
    lw = max([len("kbridge / " + t) for t in targets] + [36])
    p("  %-*s " % (lw, "target") + "".join("%-*s" % (w, n) for n in names))
    for t in targets:
        cells = []
        for n in names:
            r = tp.get((t, n))
            if not r:
                cells.append("%-*s" % (w, "-"))
                continue
            mm = r["MBps"]
            cells.append("%-*s" % (w, "%.1f [%.1f-%.1f]%s" % (mm["p50"], mm["min"], mm["max"],
                                                            "" if r["complete"] else " *")))
        p("  %-*s " % (lw, t + (" (floor)" if t == floor else "")) + "".join(cells))
    if "kbridge" in targets:
        for base in [floor] + [t for t in targets if t not in (floor, "kbridge")]:
            cells = []
            for n in names:
                k, b = tp.get(("kbridge", n)), tp.get((base, n))
                x = k["MBps"]["p50"] / b["MBps"]["p50"] if k and b and b["MBps"]["p50"] else None
                cells.append("%-*s" % (w, fmt_ratio(x)))
            p("  %-*s " % (lw, "kbridge / " + base) + "".join(cells))
        secs = []
        for n in names:
            r = tp.get(("kbridge", n))
            f = tp.get((floor, n))
            secs.append("%-*s" % (w, "%.3f s vs %.3f s" % (r["seconds"]["p50"], f["seconds"]["p50"])
                                  if r and f else "-"))
        p("  %-*s " % (lw, "seconds p50, kbridge vs floor") + "".join(secs))
        first = []
        for n in names:
            r = tp.get(("kbridge", n))
            f = tp.get((floor, n))
            ok = r and f and r.get("first_output_ms") and f.get("first_output_ms")
            first.append("%-*s" % (w, "%.0f vs %.0f ms" % (r["first_output_ms"]["p50"], f["first_output_ms"]["p50"])
                                   if ok else "-"))
        p("  %-*s " % (lw, "first output p50, kbridge vs floor") + "".join(first))
        wire = []
        for n in names:
            r = tp.get(("kbridge", n))
            f = tp.get((floor, n))
            wire.append("%-*s" % (w, "%.1f / %.1f MB" % (r["wire_bytes"] / 1e6, f["wire_bytes"] / 1e6)
                                  if r and f and r.get("wire_bytes") and f.get("wire_bytes") else "-"))
        p("  %-*s " % (lw, "bytes on the wire, kbridge / floor") + "".join(wire))
        msgs = []
        for n in names:
            r = tp.get(("kbridge", n))
            f = tp.get((floor, n))
            msgs.append("%-*s" % (w, "%d / %d" % (r["iopub_msgs"], f["iopub_msgs"]) if r and f else "-"))
        p("  %-*s " % (lw, "messages per cell, kbridge / floor") + "".join(msgs))
        cpu = []
        for n in names:
            r = tp.get(("kbridge", n))
            c = r["cpu_s_total"] if r else {}
            cpu.append("%-*s" % (w, "%.2f/%.2f/%.2f" % (c.get("client", 0), c.get("server", 0),
                                                        c.get("kernel", 0)) if r else "-"))
        p("  %-*s " % (lw, "kbridge CPU s, all reps: client/kbridge/kernel") + "".join(cpu))
    p("")


def summary_rest(a, p, res, targets, names, meta, floor, kb, lat, tp, js):
    # ---- memory
    p("memory: kbridge process only (ps -o rss; PSS from /proc/PID/smaps_rollup), MiB")
    kbinfo = meta["workers"].get("kbridge", {})
    rows = []
    if kbinfo:
        for key in ("rss_idle", "rss_idle_session", "rss_1_kernel"):
            if kbinfo.get(key):
                rows.append((kbinfo[key]["what"], kbinfo[key]))
    many = res.get("kbridge", "rss_many_kernels")
    if many:
        rows.append(("kbridge with %d kernels started via start_kernel (kernels: %d x %.1f MiB RSS)" % (
            many["kernels"], many["kernels"], mib(sorted(many["kernel_rss_kb"])[len(many["kernel_rss_kb"]) // 2])),
            many))
        if many.get("after"):
            rows.append((many["after"]["what"], many["after"]))
    after = res.get("kbridge", "rss_after_workloads")
    if after:
        rows.append((after["what"], after))
    for what, r in rows:
        p("  %-80s RSS %6.1f  (PSS %5.1f)" % (what, mib(r["rss_kb"]), mib(r["pss_kb"])))
    jsm0 = None
    for t in js:
        info = meta["workers"].get(t, {})
        if info.get("rss_idle"):
            jsm0 = (t, info["rss_idle"])
            break
    jsmany = res.get(a.js_rss_target, "rss_many_kernels")
    if jsm0:
        p("  %-80s RSS %6.1f  (PSS %5.1f)" % ("for comparison, %s: server idle, 0 kernels" % jsm0[0],
                                               mib(jsm0[1]["rss_kb"]), mib(jsm0[1]["pss_kb"])))
    if jsmany:
        p("  %-80s RSS %6.1f  (PSS %5.1f)" % ("for comparison, %s: %d kernels + %d open WS" % (
            a.js_rss_target, jsmany["kernels"], jsmany["kernels"]), mib(jsmany["rss_kb"]), mib(jsmany["pss_kb"])))
    p("")

    # ---- default limits
    dl = res.get("kbridge(default-limits)", "output_cells")
    if dl:
        p("kbridge with its DEFAULT limits (no extra args), one pass of each output cell:")
        for c in dl["cells"]:
            if c.get("closed"):
                p("  %-22s connection CLOSED by kbridge after %.2f s: %s" % (c["cell"], c["seconds_to_close"], c["closed"]))
            else:
                ok = c["payload"] == c["expected"]
                p("  %-22s %s of %s payload bytes%s, %.1f MB/s%s" % (
                    c["cell"], "{:,}".format(c["payload"]), "{:,}".format(c["expected"]),
                    "" if ok else " (INCOMPLETE)", c["payload"] / c["idle_s"] / 1e6,
                    ", Execution truncated" if (c.get("info") or {}).get("truncated") else ""))
        p("")

    fails = [r for r in res.records if r["bench"] == "failed"]
    if fails:
        p("FAILED targets (dropped from the later phases; see the worker logs):")
        for r in fails:
            p("  %s during %s: %s" % (r["target"], r["phase"], r["error"][:300]))
        p("")

    # ---- targets
    p("targets (informational, never a CI gate), against each direct-ZeroMQ client in the run:")
    floors = [floor] + [t for t in targets if t.startswith("zmq-") and t != floor]
    for f in floors:
        if kb and lat.get(f):
            x = kb["lat_us"]["p50"] / lat[f]["lat_us"]["p50"]
            x99 = kb["lat_us"]["p99"] / lat[f]["lat_us"]["p99"]
            p("  latency p50 <= %.2fx %-29s %.2fx  %s   (p99: %.2fx, no target)" % (
                TARGET_LAT_P50, f, x, "PASS" if x <= TARGET_LAT_P50 else "MISS", x99))
    for f in floors:
        for n in names:
            k, b = tp.get(("kbridge", n)), tp.get((f, n))
            if k and b:
                x = k["MBps"]["p50"] / b["MBps"]["p50"]
                ok = x >= TARGET_TPUT and k["complete"]
                p("  throughput %-20s >= %.2fx %-18s %.2fx  %s%s" % (
                    n, TARGET_TPUT, f, x, "PASS" if ok else "MISS", "" if k["complete"] else " (payload incomplete)"))
    summary_targets13(p, res, floors, kb, lat, tp)
    if kbinfo.get("rss_idle"):
        v = mib(kbinfo["rss_idle"]["rss_kb"])
        p("  idle RSS < %.0f MiB %37s %.1f MiB  %s" % (TARGET_IDLE_RSS_MIB, "", v,
                                                                  "PASS" if v < TARGET_IDLE_RSS_MIB else "MISS"))
    p("")
    p("results: %s" % meta["out"])


def summary_targets13(p, res, floors, kb, lat, tp):
    """Issue 13's rows: the bridge's cost per cell, big outputs, kernel start."""
    p("  issue 13:")
    if kb:
        c = kb["cpu_us_per_exec"].get("server")
        if c is not None:
            p("  kbridge CPU per 1+1 <= %.0f us %30s %.0f us  %s" % (
                TARGET13_CPU_US, "", c, "PASS" if c <= TARGET13_CPU_US else "MISS"))
        for f in floors:
            if lat.get(f):
                x = kb["lat_us"]["p50"] / lat[f]["lat_us"]["p50"]
                p("  latency p50 <= %.2fx %-29s %.2fx  %s" % (TARGET13_LAT_P50, f, x,
                                                             "PASS" if x <= TARGET13_LAT_P50 else "MISS"))
    for n, want in TARGET13_TPUT.items():
        for f in floors:
            k, b = tp.get(("kbridge", n)), tp.get((f, n))
            if k and b and b["MBps"]["p50"]:
                x = k["MBps"]["p50"] / b["MBps"]["p50"]
                p("  throughput %-20s >= %.2fx %-18s %.2fx  %s" % (
                    n, want, f, x, "PASS" if x >= want and k["complete"] else "MISS"))
    ks, kf = res.get("kbridge", "kernel_start_ready"), res.get("zmq-c", "kernel_start_ready")
    if ks and kf:
        x = ks["ms"]["p50"] / kf["ms"]["p50"]
        p("  kernel start -> ready p50 <= %.2fx direct spawn polled every 10 ms: %.0f vs %.0f ms "
          "(max %.0f vs %.0f) = %.2fx  %s" % (TARGET13_KSTART, ks["ms"]["p50"], kf["ms"]["p50"],
                                             ks["ms"]["max"], kf["ms"]["max"], x,
                                             "PASS" if x <= TARGET13_KSTART else "MISS"))


def resummarize(ap, d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    a = ap.parse_args(meta["argv"])
    apply_quick(a)
    res = Results(os.devnull, meta["run"])
    with open(os.path.join(d, "results.jsonl")) as f:
        res.records = [json.loads(line) for line in f if line.strip()]
    targets = (a.targets or ",".join(ALL_TARGETS)).split(",")
    print(summary(a, res, targets, workload_names(a, ap), meta))
    return 0


def workload_names(a, ap):
    if a.workloads in ("", "none"):
        return []
    names = a.workloads.split(",")
    for n in names:
        if n not in B.THROUGHPUT_WORKLOADS:
            ap.error("unknown workload %r" % n)
    return names


def apply_quick(a):
    if a.quick:
        a.lat_n, a.warmup, a.block, a.reps, a.kernels, a.lat_max_s = 300, 50, 150, 1, 5, 8.0
        a.kstart_n = min(a.kstart_n, 5)
        a.targets = a.targets or ",".join(QUICK_TARGETS)


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~2 min): 4 targets, 300 latency runs, 1 rep, 5 kernels")
    ap.add_argument("--targets", help="comma-separated, from: " + ",".join(ALL_TARGETS))
    ap.add_argument("--floor", default="zmq-raw", help="the direct-ZeroMQ baseline for the ratios")
    ap.add_argument("--lat-n", type=int, default=2000, help="timed 1+1 runs per target")
    ap.add_argument("--lat-max-s", type=float, default=20.0,
                    help="stop a target's latency loop after this many seconds (stock jupyter-server: ~44 ms/run)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed 1+1 runs per target first")
    ap.add_argument("--block", type=int, default=250, help="timed runs per target before switching")
    ap.add_argument("--block-warmup", type=int, default=10, help="untimed runs at the start of each block")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each throughput cell")
    ap.add_argument("--workloads", default=",".join(B.THROUGHPUT_WORKLOADS),
                    help="throughput cells (benchlib.THROUGHPUT_WORKLOADS)")
    ap.add_argument("--kernels", type=int, default=20, help="kernels for the RSS-with-many-kernels probe")
    ap.add_argument("--js-rss-target", default="jupyter-server/legacy",
                    help="jupyter-server target that also gets the many-kernels RSS probe ('' = none)")
    ap.add_argument("--kbridge", help="use this kbridge binary (no build)")
    ap.add_argument("--no-build", action="store_true", help="do not run scripts/build.sh")
    ap.add_argument("--from-head", action="store_true",
                    help="build a clean export of git HEAD under /tmp instead of the working tree")
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--kbridge-args", default=KBRIDGE_ARGS,
                    help="extra `kbridge serve` args for the measured kbridge (default: %(default)r)")
    ap.add_argument("--kstart-n", type=int, default=10,
                    help="cold kernel starts per target for kernel start -> ready (kbridge, zmq-c)")
    ap.add_argument("--no-default-limits", action="store_true",
                    help="skip the pass against a kbridge with default limits")
    ap.add_argument("--out", help="results directory (default bench/results/<UTC stamp>)")
    ap.add_argument("--summarize", metavar="DIR", help="only print the summary of an earlier run's results")
    ap.add_argument("--no-pool-rows", action="store_true",
                    help="skip bench/pool_bench.py (warm kernels and sandboxes against cold starts) at the end")
    ap.add_argument("--no-sandbox-rows", action="store_true",
                    help="skip bench/sandbox_rows.py (processes, files, port proxy, idle sandboxes) at the end")
    a = ap.parse_args()
    if a.summarize:
        return resummarize(ap, a.summarize)
    apply_quick(a)
    targets = (a.targets or ",".join(ALL_TARGETS)).split(",")
    for t in targets:
        if t not in ALL_TARGETS:
            ap.error("unknown target %r" % t)
    if a.floor not in targets:
        ap.error("--floor %s is not among the targets" % a.floor)
    names = workload_names(a, ap)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = a.out or os.path.join(HERE, "results", stamp)
    os.makedirs(out, exist_ok=True)
    t_start = perf()

    binary = build(a) if "kbridge" in targets else None
    meta = {"run": stamp, "out": out, "argv": sys.argv[1:], "machine": B.machine_info(),
            "git": git_state(a), "kbridge": binary, "build_type": build_type(binary) if binary else "-",
            "kbridge_args": a.kbridge_args, "workers": {}, "kbridge_banner": ""}
    res = Results(os.path.join(out, "results.jsonl"), stamp)
    res.emit("machine", "info", **meta["machine"], git=meta["git"], argv=sys.argv[1:])

    started = []          # every worker, for the cleanup
    workers = []          # the ones still healthy
    try:
        for t in targets:
            log("starting %s" % t)
            w = Worker(t, out, binary, a.kbridge_args)
            started.append(w)
            w.info = w.call("setup", timeout=180)
            workers.append(w)
            meta["workers"][t] = w.info
            res.emit(t, "setup", **w.info)
        if "kbridge" in meta["workers"]:
            meta["kbridge_banner"] = meta["workers"]["kbridge"].get("banner", "")
        by = {w.target: w for w in workers}

        for t in ("kbridge", a.js_rss_target):
            if t in by and a.kernels > 1:
                log("memory: %s with %d kernels" % (t, a.kernels))
                r = guard(res, by[t], workers, "memory", by[t].call, "many", n=a.kernels, timeout=600)
                if r:
                    res.emit(t, "rss_many_kernels", **r)

        phase_latency(a, res, workers)
        phase_throughput(a, res, workers, names)
        phase_kstart(a, res, workers)

        time.sleep(1.0)
        for w in list(workers):
            r = guard(res, w, workers, "rss", w.call, "rss", what="%s after all workloads, 1 kernel"
                      % ("kbridge" if w.target == "kbridge" else "server"))
            if r:
                res.emit(w.target, "rss_after_workloads", **r)
        if "kbridge" in by and by["kbridge"] in workers and not a.no_default_limits:
            log("kbridge with default limits: one pass of the output cells")
            r = guard(res, by["kbridge"], workers, "default limits", by["kbridge"].call, "default_limits",
                      names=names, timeout=900)
            if r:
                res.emit("kbridge(default-limits)", "output_cells", **r)
    finally:
        for w in started:
            w.quit()
    res.emit("run_all", "total_runtime", seconds=round(perf() - t_start, 1))
    text = summary(a, res, targets, names, meta)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(text)
    if binary and not a.no_sandbox_rows:   # its own section, its own kbridge (bench/sandbox_rows.py)
        subprocess.run([B.PYTHON, os.path.join(HERE, "sandbox_rows.py"), "--kbridge", binary,
                        "--json", os.path.join(out, "sandbox_rows.json")] + (["--quick"] if a.quick else []),
                       stdout=open(os.path.join(out, "sandbox_rows.txt"), "w"), stderr=sys.stderr)
        with open(os.path.join(out, "sandbox_rows.txt")) as f:
            print("\n" + f.read(), end="")
    if binary and not a.no_pool_rows:   # the warm pools against cold starts (bench/pool_bench.py)
        subprocess.run([B.PYTHON, os.path.join(HERE, "pool_bench.py"), "--kbridge", binary,
                        "-n", "5" if a.quick else "15"],
                       stdout=open(os.path.join(out, "pool_rows.txt"), "w"), stderr=sys.stderr)
        with open(os.path.join(out, "pool_rows.txt")) as f:
            print("\n" + f.read(), end="")
    log("total %.0f s" % (perf() - t_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
