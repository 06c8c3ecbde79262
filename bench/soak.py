#!/usr/bin/python3
"""bench/soak.py - many native clients for a long while, checking that no output is lost,
duplicated or reordered, that kbridge's memory stays flat, and how a bystander fares.

    /usr/bin/python3 bench/soak.py [--clients 32] [--cells 1000] [--kbridge build/kbridge]
                                   [--kills 3] [--seed 1] [--json FILE]

Starts kbridge itself (or uses --port/--token/--pid of a running one), then runs, all at
once, --clients native clients (one session and one kernel each) that send --cells cells
one after another, and a canary: a client of its own in a separate process, on its own
kernel, running `1+1` the whole time. Not a test (it prints a report and exits 1 if
anything was lost); tests/integration/test_soak.py runs a 32 x 50 version in CI.

The cells, mixed by a seeded random choice per client:
  print       numbered lines "c<C>i<I> <n>" on stdout, some on stderr, a few to 40
  burst       2,000 lines in one write
  display     up to 5 displays, PNG (with a numbered text/plain) or HTML, then a result
  error       numbered lines, then a ValueError naming the cell
  interrupt   200 lines 10 ms apart; the client sends interrupt_kernel after 3 of them
  kill        the cell prints its kernel's pid, then lines 10 ms apart; after 3 the
              client kill -9s that pid from outside (--kills per client, at least 20 s
              apart so autorestart is not exhausted)
  disconnect  30 lines 10 ms apart; after 5 the client drops its connection (an abort or a
              close), waits, and resumes with ?session_id=&last_seq=
Half the clients ack every 16 messages, half never do (as the simplest clients).

What is checked, per cell: every numbered line arrives once and in order (stdout and
stderr each); displays arrive once, in order; the error is the cell's own; the
end_of_execution's Execution agrees with what was streamed; and per session, seq numbers
only go up by one (a gap is a loss unless an events_lost message accounts for it).
Interrupted and killed cells are the one exception: they end with KeyboardInterrupt /
KernelDied (or complete, if the signal came late), and their lines must be a gap-free
prefix - never a hole, a duplicate or a swap. kbridge's RSS is sampled from /proc every
second; the canary's round trips give p50/p99.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import signal
import shutil
import statistics
import sys
import tempfile
import time

import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
# A 4x4 PNG (valid, 75 bytes), base64.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAEklEQVR4nGP4z8AAQQwMDEAKAFXbAfnKQ+ZH"
       "AAAAAElFTkSuQmCC")
KILL_SPACING_S = 20.0
CELL_TIMEOUT_S = 180.0


class Tally:
    """Counters for the report; the bad ones must end at 0."""

    BAD = ("lost", "duplicated", "reordered", "misrouted", "seq_duplicates", "seq_regressions",
           "unexplained_seq_gaps", "missing_ends", "wrong_errors", "summary_mismatches",
           "display_problems", "request_errors")

    def __init__(self):
        self.c = dict.fromkeys(self.BAD + (
            "cells", "lines", "displays", "interrupted", "killed", "kills", "resumes",
            "events_lost", "seq_gaps", "interrupts_late", "kills_late", "messages", "kernel_lines"), 0)
        self.notes = []

    def add(self, key, n=1):
        self.c[key] += n

    def note(self, text):
        if len(self.notes) < 40:
            self.notes.append(text)


# ---------------------------------------------------------------------------------------
#  Cells

def plan(rng, c, i, kill_ok, mix):
    tag = f"c{c}i{i}"
    kinds = list(mix)
    kind = rng.choices(kinds, weights=[mix[k] for k in kinds])[0]
    if kind == "kill" and not kill_ok:
        kind = "print"
    cell = {"kind": kind, "tag": tag, "out": 0, "err": 0, "displays": []}
    if kind == "print":
        n = rng.randint(1, 40)
        lines = []
        for j in range(n):
            to_err = rng.random() < 0.2
            lines.append(f"print('{tag} {cell['err' if to_err else 'out']}'"
                         f"{', file=sys.stderr' if to_err else ''})")
            cell["err" if to_err else "out"] += 1
        cell["code"] = "import sys\n" + "\n".join(lines)
    elif kind == "burst":
        cell["out"] = 2000
        cell["code"] = f"print('\\n'.join('{tag} %d' % j for j in range(2000)))"
    elif kind == "display":
        k = rng.randint(1, 5)
        lines = ["from IPython.display import display, HTML"]
        for d in range(k):
            if rng.random() < 0.5:
                lines.append(f"display({{'image/png': '{PNG}', 'text/plain': '{tag} d{d}'}}, raw=True)")
                cell["displays"].append(("png", f"{tag} d{d}"))
            else:
                lines.append(f"display(HTML('<p>{tag} d{d}</p>'))")
                cell["displays"].append(("html", f"<p>{tag} d{d}</p>"))
        lines.append(f"'{tag} end'")
        cell["code"] = "\n".join(lines)
    elif kind == "error":
        n = rng.randint(0, 10)
        cell["out"] = n
        cell["code"] = (f"for j in range({n}):\n    print('{tag}', j)\n"
                        f"raise ValueError('{tag}')")
    elif kind in ("interrupt", "kill", "disconnect"):
        n = 30 if kind == "disconnect" else 200
        cell["out"] = n
        head = "import os, time\nprint('PID', os.getpid(), flush=True)\n" if kind == "kill" else "import time\n"
        cell["code"] = head + (f"for j in range({n}):\n    print('{tag}', j, flush=True)\n"
                               f"    time.sleep(0.01)")
    return cell


LINE = re.compile(r"^(c\d+i\d+) (\d+)$")


def check_stream(tally, cell, name, text, expected, prefix_ok):
    """Numbered lines of one stream: each once, in order, none missing (prefix_ok: a
    gap-free prefix is enough). A numbered line of another cell is misrouted; anything
    else is the kernel's own (an interrupt's traceback on stderr): counted, not judged."""
    seen, top = set(), -1
    for line in text.splitlines():
        if line.startswith("PID "):
            continue
        m = LINE.match(line)
        if not m:
            tally.add("kernel_lines")
            if not prefix_ok:
                tally.note(f"{cell['tag']} {name}: kernel line {line[:80]!r}")
            continue
        if m.group(1) != cell["tag"]:
            tally.add("misrouted")
            tally.note(f"{cell['tag']} {name}: line of another cell {line[:80]!r}")
            continue
        parts = line.split(" ")
        j = int(parts[1])
        if j in seen:
            tally.add("duplicated")
            tally.note(f"{cell['tag']} {name}: line {j} twice")
            continue
        if j < top:
            tally.add("reordered")
            tally.note(f"{cell['tag']} {name}: line {j} after {top}")
        seen.add(j)
        top = max(top, j)
    tally.add("lines", len(seen))
    want = range(top + 1) if prefix_ok else range(expected)
    missing = [j for j in want if j not in seen]
    if missing:
        tally.add("lost", len(missing))
        tally.note(f"{cell['tag']} {name}: {len(missing)} lines missing, first {missing[0]}")


# ---------------------------------------------------------------------------------------
#  A client

class Client:
    def __init__(self, soak, index):
        self.soak = soak
        self.index = index
        self.rng = random.Random(soak.seed * 100003 + index)
        self.ack_every = 16 if index % 2 == 0 else 0
        self.ws = None
        self.session_id = None
        self.last_seq = 0
        self.acked = 0
        self.kernel_id = None
        self.next_id = 0
        self.kills_left = soak.kills
        self.last_kill = 0.0
        self.stash = []

    def url(self, resume=False):
        # The default sandbox: the kill cells signal their kernel's pid from the host, which
        # is only that kernel's pid there (an isolated sandbox has pids of its own).
        q = f"token={self.soak.token}"
        if resume:
            q += f"&session_id={self.session_id}&last_seq={self.last_seq}"
        else:
            q += "&sandbox_id=default"
        return f"ws://127.0.0.1:{self.soak.port}/ws?{q}"

    async def connect(self, resume=False):
        self.ws = await websockets.connect(self.url(resume), subprotocols=["kbridge.v1"],
                                           max_size=None, ping_interval=None, compression=None,
                                           open_timeout=60)
        hello = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
        assert hello["type"] == "session", hello
        if resume and not hello["resumed"]:
            self.soak.tally.add("missing_ends")
            self.soak.tally.note(f"client {self.index}: session not resumed")
        self.session_id = hello["session_id"]

    async def send(self, **req):
        self.next_id += 1
        req["id"] = f"{self.index}-{self.next_id}"
        await self.ws.send(json.dumps(req))
        return req["id"]

    async def recv(self, timeout=CELL_TIMEOUT_S):
        """The next new message (duplicates by seq are counted and skipped)."""
        t = self.soak.tally
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            t.add("messages")
            if msg.get("type") == "events_lost":
                t.add("events_lost", msg["count"])
                t.note(f"client {self.index}: events_lost {msg['count']}")
                self.explained = getattr(self, "explained", 0) + msg["count"]
                continue
            seq = msg.get("seq")
            if seq is None:
                return msg
            if seq <= self.last_seq:
                t.add("seq_duplicates" if seq > self.acked else "seq_regressions")
                t.note(f"client {self.index}: seq {seq} again (at {self.last_seq})")
                continue
            if seq != self.last_seq + 1:
                gap = seq - self.last_seq - 1
                t.add("seq_gaps", gap)
                explained = getattr(self, "explained", 0)
                if gap > explained:
                    t.add("unexplained_seq_gaps", gap - explained)
                    t.note(f"client {self.index}: seq jumped {self.last_seq} -> {seq}")
                self.explained = max(0, explained - gap)
            self.last_seq = seq
            if self.ack_every and self.last_seq - self.acked >= self.ack_every:
                self.acked = self.last_seq
                await self.ws.send(json.dumps({"op": "ack", "id": "ack", "seq": self.acked}))
            return msg

    async def request(self, **req):
        rid = await self.send(**req)
        while True:
            m = await self.recv()
            if m.get("id") == rid:
                return m
            self.stash.append(m)

    async def run(self):
        t = self.soak.tally
        await self.connect()
        r = await self.request(op="start_kernel")
        if r["type"] != "kernel":
            t.add("request_errors")
            t.note(f"client {self.index}: start_kernel {r}")
            return
        self.kernel_id = r["kernel"]["kernel_id"]
        self.soak.ready += 1
        for i in range(self.soak.cells):
            kill_ok = self.kills_left > 0 and time.monotonic() - self.last_kill >= KILL_SPACING_S
            cell = plan(self.rng, self.index, i, kill_ok, self.soak.mix)
            try:
                await asyncio.wait_for(self.run_cell(cell), CELL_TIMEOUT_S)
            except asyncio.TimeoutError:
                t.add("missing_ends")
                t.note(f"{cell['tag']} ({cell['kind']}): no end_of_execution in {CELL_TIMEOUT_S:.0f} s")
                return
            t.add("cells")
            self.soak.done += 1
        if self.soak.first_finish is None:
            self.soak.first_finish = time.monotonic() - self.soak.t0
        await self.request(op="shutdown_kernel", kernel_id=self.kernel_id)
        await self.ws.close()

    async def run_cell(self, cell):
        t = self.soak.tally
        rid = await self.send(op="execute", code=cell["code"], kernel_id=self.kernel_id)
        out, err, results, error, end = [], [], [], None, None
        pid, acted, interrupt_id, interrupt_answered = None, False, None, False
        while end is None:
            if self.stash:
                m = self.stash.pop(0)
            else:
                try:
                    m = await self.recv()
                except websockets.ConnectionClosed:
                    # Only our own drop closes the connection.
                    t.add("missing_ends")
                    t.note(f"{cell['tag']}: connection closed by the server")
                    raise asyncio.TimeoutError from None
            if interrupt_id and m.get("id") == interrupt_id:
                interrupt_answered = True
                if m["type"] == "request_error":
                    t.add("request_errors")
                    t.note(f"{cell['tag']}: interrupt {m}")
                continue
            if m.get("id") != rid:
                if m.get("type") == "request_error":
                    t.add("request_errors")
                    t.note(f"{cell['tag']}: {m}")
                continue
            kind = m["type"]
            if kind == "stdout":
                out.append(m["text"])
                if cell["kind"] == "kill" and pid is None and "PID " in "".join(out):
                    pid = int("".join(out).split("PID ", 1)[1].split()[0])
            elif kind == "stderr":
                err.append(m["text"])
            elif kind == "result":
                results.append(m)
            elif kind == "error":
                error = m
            elif kind == "end_of_execution":
                end = m
            elif kind == "request_error":
                t.add("request_errors")
                t.note(f"{cell['tag']}: {m}")
                return
            lines = "".join(out).count("\n")
            if not acted and cell["kind"] == "interrupt" and lines >= 3:
                acted = True
                interrupt_id = await self.send(op="interrupt_kernel", kernel_id=self.kernel_id)
            elif not acted and cell["kind"] == "kill" and pid and lines >= 4:
                acted = True
                try:
                    os.kill(pid, signal.SIGKILL)
                    t.add("kills")
                except ProcessLookupError:
                    pass
                self.kills_left -= 1
                self.last_kill = time.monotonic()
            elif not acted and cell["kind"] == "disconnect" and lines >= 5:
                acted = True
                if self.rng.random() < 0.5:
                    self.ws.transport.abort()
                else:
                    await self.ws.close()
                await asyncio.sleep(self.rng.uniform(0.05, 0.5))
                await self.connect(resume=True)
                t.add("resumes")
        # An interrupt's answer may still be on its way: take it before the next cell.
        while interrupt_id and not interrupt_answered:
            m = await self.recv()
            if m.get("id") == interrupt_id:
                interrupt_answered = True
            else:
                self.stash.append(m)
        self.check(cell, "".join(out), "".join(err), results, error, end)

    def check(self, cell, out, err, results, error, end):
        t = self.soak.tally
        kind, tag = cell["kind"], cell["tag"]
        ex = end.get("execution", {})
        name = error["name"] if error else None
        prefix_ok = False
        if kind == "interrupt":
            if name in ("KeyboardInterrupt", "KernelError"):
                t.add("interrupted")
                prefix_ok = True
            elif name is None:
                t.add("interrupts_late")
            else:
                t.add("wrong_errors")
                t.note(f"{tag}: interrupt ended with {name}: {error.get('value')}")
        elif kind == "kill":
            if name == "KernelDied":
                t.add("killed")
                prefix_ok = True
            elif name is None:
                t.add("kills_late")
            else:
                t.add("wrong_errors")
                t.note(f"{tag}: kill ended with {name}: {error.get('value')}")
        elif kind == "error":
            if name != "ValueError" or error.get("value") != tag:
                t.add("wrong_errors")
                t.note(f"{tag}: error {name} {error and error.get('value')!r}")
        elif name is not None:
            t.add("wrong_errors")
            t.note(f"{tag} ({kind}): unexpected {name}: {error.get('value')}")
        check_stream(t, cell, "stdout", out, cell["out"], prefix_ok)
        check_stream(t, cell, "stderr", err, cell["err"], prefix_ok)
        displays = [r for r in results if not r.get("is_main_result")]
        want = cell["displays"]
        got = [("png", r.get("text")) if "png" in r else ("html", r.get("html")) for r in displays]
        if got != want or any("png" in r and r["png"] != PNG for r in displays):
            t.add("display_problems")
            t.note(f"{tag}: displays {got} != {want}")
        t.add("displays", len(displays))
        if kind == "display":
            main = [r for r in results if r.get("is_main_result")]
            if len(main) != 1 or main[0].get("text") != f"'{tag} end'":
                t.add("display_problems")
                t.note(f"{tag}: main result {main}")
        # The Execution object is a summary of the same stream.
        if not ex.get("truncated"):
            logs = ex.get("logs", {})
            if "".join(logs.get("stdout", [])) != out or "".join(logs.get("stderr", [])) != err:
                t.add("summary_mismatches")
                t.note(f"{tag}: Execution logs differ from the stream")
            if len(ex.get("results", [])) != len(results) and kind != "kill":
                t.add("summary_mismatches")
                t.note(f"{tag}: Execution has {len(ex.get('results', []))} results, stream {len(results)}")


# ---------------------------------------------------------------------------------------
#  Canary and RSS

def _canary(port, token, stop, queue):
    async def go():
        lat, failures = [], []
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}&sandbox_id=default",
                                      subprotocols=["kbridge.v1"], max_size=None, ping_interval=None)
        await ws.recv()
        await ws.send(json.dumps({"op": "start_kernel", "id": "k"}))
        while True:
            m = json.loads(await ws.recv())
            if m.get("id") == "k":
                break
        kid = m["kernel"]["kernel_id"]
        queue.put(("ready", None))
        n = 0
        while not stop.is_set():
            n += 1
            t0 = time.perf_counter()
            await ws.send(json.dumps({"op": "execute", "id": n, "code": "1+1", "kernel_id": kid}))
            try:
                while True:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if m.get("id") == n and m["type"] in ("end_of_execution", "request_error"):
                        break
                dt = time.perf_counter() - t0
                res = m.get("execution", {}).get("results", [])
                if m["type"] != "end_of_execution" or not res or res[0].get("text") != "2":
                    failures.append(str(m)[:200])
                else:
                    lat.append(dt)
            except asyncio.TimeoutError:
                failures.append("no answer in 60 s")
            await asyncio.sleep(0.05)
        await ws.send(json.dumps({"op": "shutdown_kernel", "id": "bye", "kernel_id": kid}))
        while json.loads(await ws.recv()).get("id") != "bye":
            pass
        await ws.close()
        queue.put(("done", (lat, failures)))
    try:
        asyncio.run(go())
    except Exception as e:  # noqa: BLE001
        queue.put(("done", ([], [f"canary crashed: {type(e).__name__}: {e}"])))


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Soak:
    MIX = {"print": 50, "burst": 5, "display": 15, "error": 10, "interrupt": 8, "kill": 4,
           "disconnect": 8}

    def __init__(self, port, token, pid, clients=32, cells=1000, kills=3, seed=1, mix=None,
                 log=print):
        self.port, self.token, self.pid = port, token, pid
        self.clients, self.cells, self.kills, self.seed = clients, cells, kills, seed
        self.mix = dict(mix or self.MIX)
        self.tally = Tally()
        self.done = 0
        self.ready = 0
        self.first_finish = None  # seconds: when the first client was through
        self.samples = []  # (seconds, rss KiB, cells done)
        self.log = log

    async def _sample(self, t0, stop):
        while not stop.is_set():
            r = rss_kib(self.pid)
            if r is not None:
                self.samples.append((time.monotonic() - t0, r, self.done))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def _progress(self, t0, stop):
        total = self.clients * self.cells
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 30)
            except asyncio.TimeoutError:
                r = rss_kib(self.pid) or 0
                self.log(f"  {time.monotonic() - t0:6.0f} s: {self.done}/{total} cells, "
                         f"rss {r / 1024:.1f} MiB, bad {sum(self.tally.c[k] for k in Tally.BAD)}")

    async def _run(self):
        t0 = self.t0 = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self._sample(t0, stop))
        progress = asyncio.create_task(self._progress(t0, stop))
        clients = [Client(self, i) for i in range(self.clients)]
        results = await asyncio.gather(*(c.run() for c in clients), return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, Exception):
                self.tally.add("missing_ends")
                self.tally.note(f"client {i} failed: {type(r).__name__}: {r}")
        self.elapsed = time.monotonic() - t0
        # After the clients: their sessions and kernels are gone; memory should come back.
        await asyncio.sleep(6)
        stop.set()
        await sampler
        await progress
        self.rss_after = rss_kib(self.pid)

    def run(self):
        ctx = multiprocessing.get_context("fork")
        stop, queue = ctx.Event(), ctx.Queue()
        canary = ctx.Process(target=_canary, args=(self.port, self.token, stop, queue), daemon=True)
        canary.start()
        first = queue.get(timeout=120)
        assert first[0] in ("ready", "done"), first
        self.rss_start = rss_kib(self.pid)
        try:
            asyncio.run(self._run())
        finally:
            stop.set()
            _, (self.canary_lat, self.canary_failures) = queue.get(timeout=120) if first[0] == "ready" \
                else first
            canary.join(30)
        return self.report()

    def report(self):
        c = self.tally.c
        s = self.samples
        total = self.clients * self.cells
        # RSS after warm-up (a fifth of the cells): every session and kernel exists, every
        # buffer has had its first use. Growth and slope are measured from there to the
        # moment the first client is through.
        warm = next((x for x in s if x[2] >= total * 0.2), s[0] if s else (0, 0, 0))
        # While every client is still at it: from the first one done, sessions and kernels
        # start going away and take their memory with them.
        until = self.first_finish if self.first_finish is not None else self.elapsed
        running = [x for x in s if x[0] <= until] or s
        during = [x for x in running if x[2] >= warm[2]] or running
        end = during[-1] if during else warm
        slope = 0.0
        if len(during) > 2 and during[-1][2] > during[0][2]:
            xs = [x[2] for x in during]
            ys = [x[1] for x in during]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            den = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 1000 if den else 0.0
        lat = sorted(self.canary_lat)

        def pct(p):
            return lat[min(len(lat) - 1, int(len(lat) * p))] * 1000 if lat else float("nan")
        rep = {
            "clients": self.clients, "cells_per_client": self.cells, "elapsed_s": round(self.elapsed, 1),
            "counts": dict(c),
            "bad": {k: c[k] for k in Tally.BAD},
            "rss_kib": {"start": self.rss_start, "warm": warm[1], "end": end[1],
                        "max": max((x[1] for x in running), default=0), "after_clients": self.rss_after},
            "rss_growth_kib": end[1] - warm[1],
            "rss_slope_kib_per_1000_cells": round(slope, 1),
            "rss_samples": [(round(x[0], 1), x[1], x[2]) for x in s],
            "canary": {"answers": len(lat), "p50_ms": round(pct(0.5), 2), "p99_ms": round(pct(0.99), 2),
                       "max_ms": round(lat[-1] * 1000, 2) if lat else None,
                       "failures": self.canary_failures},
            "notes": self.tally.notes,
        }
        rep["ok"] = not any(rep["bad"].values()) and not self.canary_failures
        return rep


def print_report(rep, out=print):
    c = rep["counts"]
    out(f"soak: {rep['clients']} clients x {rep['cells_per_client']} cells in {rep['elapsed_s']:.0f} s")
    out(f"  cells {c['cells']}: {c['interrupted']} interrupted ({c['interrupts_late']} interrupts too late), "
        f"{c['killed']} killed by {c['kills']} kill -9 ({c['kills_late']} too late), {c['resumes']} resumes")
    out(f"  outputs: {c['lines']} numbered lines, {c['displays']} displays, {c['messages']} messages, "
        f"{c['kernel_lines']} lines of the kernel's own; events_lost {c['events_lost']}, seq gaps {c['seq_gaps']}")
    bad = rep["bad"]
    out("  lost {lost}, duplicated {duplicated}, reordered {reordered}, misrouted {misrouted}; "
        "seq duplicates {seq_duplicates}, regressions {seq_regressions}, unexplained gaps "
        "{unexplained_seq_gaps}; missing ends {missing_ends}, wrong errors {wrong_errors}, "
        "summary mismatches {summary_mismatches}, display problems {display_problems}, "
        "request errors {request_errors}".format(**bad))
    r = rep["rss_kib"]
    mib = lambda k: f"{(k or 0) / 1024:.1f}"  # noqa: E731
    out(f"  kbridge RSS (MiB): start {mib(r['start'])}, after warm-up {mib(r['warm'])}, max {mib(r['max'])}, "
        f"when the first client was through {mib(r['end'])}, after all left {mib(r['after_clients'])}; growth "
        f"{rep['rss_growth_kib'] / 1024:+.1f} MiB, slope {rep['rss_slope_kib_per_1000_cells']:+.1f} KiB "
        f"per 1000 cells")
    s = rep["rss_samples"]
    if s:
        step = max(1, len(s) // 10)
        out("  RSS over time: " + ", ".join(f"{x[0]:.0f}s {x[1] / 1024:.1f}" for x in s[::step]))
    k = rep["canary"]
    out(f"  canary 1+1: {k['answers']} answers, p50 {k['p50_ms']} ms, p99 {k['p99_ms']} ms, "
        f"max {k['max_ms']} ms, failures {len(k['failures'])}")
    for n in rep["notes"]:
        out(f"    note: {n}")
    for f in k["failures"][:10]:
        out(f"    canary: {f}")
    out("  verdict: " + ("OK" if rep["ok"] else "FAILED"))


def kernel_config_dir():
    """An IPYTHONDIR for the kernels without the history database: dozens of kernels on one
    sqlite file print "database is locked" from a thread, into the cells' output."""
    d = tempfile.mkdtemp(prefix="soak-ipython-")
    os.makedirs(os.path.join(d, "profile_default"))
    with open(os.path.join(d, "profile_default", "ipython_kernel_config.py"), "w") as f:
        f.write("c.HistoryManager.enabled = False\n")
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=3, help="kill -9s per client (>= 20 s apart)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kbridge", default=os.path.join(HERE, "..", "build", "kbridge"))
    ap.add_argument("--port", type=int, help="use a running kbridge (with --token, --pid)")
    ap.add_argument("--token")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--json", help="write the whole report (RSS samples included) here")
    args = ap.parse_args()
    server = None
    if args.port:
        port, token, pid = args.port, args.token, args.pid
    else:
        sys.path.insert(0, HERE)
        from kbclient import start_kbridge
        ipydir = kernel_config_dir()
        server = start_kbridge(os.path.abspath(args.kbridge), ["--max-kernels", str(args.clients + 8),
                                                               "--env", f"IPYTHONDIR={ipydir}"])
        port = int(server.base_url.rsplit(":", 1)[1])
        token, pid = server.token, server.pid
        print(f"kbridge {server.banner.split()[1]} pid {pid} port {port} (log {server.log_path})")
    try:
        soak = Soak(port, token, pid, clients=args.clients, cells=args.cells, kills=args.kills,
                    seed=args.seed)
        rep = soak.run()
    finally:
        if server:
            server.stop()
            shutil.rmtree(ipydir, ignore_errors=True)
    print_report(rep)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
    sys.exit(0 if rep["ok"] else 1)


if __name__ == "__main__":
    main()
