"""Issue 14, operations: GET /metrics (the Prometheus text format, parsed strictly) moves
with real work, and --access-log writes one line per request without the token."""
import asyncio
import math
import re
import time
import urllib.error
import urllib.request

import websockets

from kbharness import KBridge, NativeClient, run

# ---------------------------------------------------------------------------------------
#  A strict parser of the text exposition format 0.0.4

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = r"(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|[+-]Inf|NaN)"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? ({VALUE})(?: (-?\d+))?$")
PAIR = re.compile(rf'({LABEL})="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_labels(text, line):
    labels, pos = {}, 0
    while pos < len(text):
        m = PAIR.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r} in {line!r}"
        name, value = m.group(1), m.group(2)
        assert name not in labels, f"label {name} twice in {line!r}"
        labels[name] = value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        pos = m.end()
        assert m.group(3) == "," or pos == len(text), line
    return labels


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base and types.get(base) == "histogram":
            return base
    return name


def parse(text):
    """{family: {"type", "help", "samples": [(name, labels, value)]}}; asserts every rule."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    fams, types, order, current = {}, {}, [], None
    for line in text.split("\n")[:-1]:
        assert line == line.strip() and line, f"blank or padded line {line!r}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                assert re.fullmatch(NAME, parts[2]), line
                fam = fams.setdefault(parts[2], {"type": None, "help": None, "samples": []})
                assert not fam["samples"], f"{parts[1]} after samples of {parts[2]}"
                if parts[1] == "TYPE":
                    assert fam["type"] is None, f"TYPE twice for {parts[2]}"
                    assert len(parts) == 4 and parts[3] in TYPES, line
                    fam["type"] = types[parts[2]] = parts[3]
                else:
                    assert fam["help"] is None, f"HELP twice for {parts[2]}"
                    fam["help"] = parts[3] if len(parts) == 4 else ""
                    assert "\n" not in fam["help"]
                if parts[2] != current:
                    assert parts[2] not in order, f"family {parts[2]} is not contiguous"
                    order.append(parts[2])
                    current = parts[2]
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), parse_labels(m.group(2) or "", line)
        value = float(m.group(3).replace("Inf", "inf"))
        fam_name = family_of(name, types)
        assert fam_name == current, f"{name} outside its family's block (in {current})"
        fam = fams[fam_name]
        assert fam["type"], f"{name} has no TYPE"
        key = (name, tuple(sorted(labels.items())))
        assert key not in {(n, tuple(sorted(l.items()))) for n, l, _ in fam["samples"]}, f"duplicate {line!r}"
        fam["samples"].append((name, labels, value))
    for name, fam in fams.items():
        assert name.startswith("kbridge_"), name
        if fam["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} without _total"
            assert all(v >= 0 and math.isfinite(v) for _, _, v in fam["samples"]), name
        if fam["type"] == "histogram":
            check_histogram(name, fam["samples"])
    return fams


def check_histogram(name, samples):
    series = {}
    for n, labels, v in samples:
        rest = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        s = series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if n == name + "_bucket":
            s["buckets"].append((float(labels["le"].replace("Inf", "inf")), v))
        elif n == name + "_sum":
            s["sum"] = v
        elif n == name + "_count":
            s["count"] = v
        else:
            raise AssertionError(f"{n} in histogram {name}")
    assert series, f"histogram {name} has no series"
    for rest, s in series.items():
        les = [le for le, _ in s["buckets"]]
        assert les == sorted(les) and len(set(les)) == len(les), (name, rest, les)
        assert les[-1] == math.inf, f"{name}{rest}: no +Inf bucket"
        counts = [c for _, c in s["buckets"]]
        assert counts == sorted(counts), f"{name}{rest}: buckets not cumulative {counts}"
        assert s["count"] == counts[-1], f"{name}{rest}: +Inf {counts[-1]} != _count {s['count']}"
        assert s["sum"] is not None and s["sum"] >= 0


def value(fams, family, name=None, **labels):
    for n, l, v in fams[family]["samples"]:
        if n == (name or family) and all(l.get(k) == x for k, x in labels.items()):
            return v
    return 0.0


def scrape(srv, token=True):
    req = urllib.request.Request(srv.http + "/metrics")
    if token:
        req.add_header("Authorization", f"Bearer {srv.token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers["Content-Type"]
        return parse(r.read().decode())


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---------------------------------------------------------------------------------------


def test_parser_refuses_bad_expositions():
    """The parser the test relies on is strict: each of these must fail."""
    good = "# HELP kbridge_x_total x\n# TYPE kbridge_x_total counter\nkbridge_x_total{a=\"b\"} 1\n"
    parse(good)
    bad = [
        good.rstrip("\n"),                                              # no final newline
        good.replace(" 1\n", " one\n"),                                 # value
        good.replace('{a="b"}', '{a=b}'),                               # unquoted label
        good.replace("counter", "countr"),                              # type
        good + "kbridge_x_total{a=\"b\"} 2\n",                          # duplicate series
        good.replace("kbridge_x_total counter", "kbridge_x counter"),    # counter without _total
        "# TYPE kbridge_h histogram\nkbridge_h_bucket{le=\"1\"} 2\nkbridge_h_bucket{le=\"+Inf\"} 1\n"
        "kbridge_h_sum 1\nkbridge_h_count 1\n",                         # not cumulative
        "# TYPE kbridge_h histogram\nkbridge_h_bucket{le=\"1\"} 1\nkbridge_h_bucket{le=\"+Inf\"} 2\n"
        "kbridge_h_sum 1\nkbridge_h_count 3\n",                         # +Inf != _count
        "# TYPE kbridge_h histogram\nkbridge_h_bucket{le=\"1\"} 1\nkbridge_h_sum 1\nkbridge_h_count 1\n",
    ]
    for text in bad:
        try:
            parse(text)
        except AssertionError:
            continue
        raise AssertionError(f"the parser accepted {text!r}")


def test_metrics_move_with_work(tmp_path):
    srv = KBridge(tmp_path)
    try:
        status, _ = get(srv.http + "/metrics")
        assert status == 403, "the metrics need the token"
        m0 = scrape(srv)
        for fam in ("kbridge_kernels", "kbridge_sandboxes", "kbridge_executions_total",
                    "kbridge_output_bytes_total", "kbridge_errors_total", "kbridge_pool_ready",
                    "kbridge_pool_target", "kbridge_buffered_bytes", "kbridge_buffered_bytes_limit",
                    "kbridge_execution_duration_seconds", "kbridge_http_request_duration_seconds",
                    "kbridge_session_held_bytes", "kbridge_session_events_lost_total"):
            assert fam in m0, f"{fam} missing"
        assert m0["kbridge_kernels"]["type"] == "gauge" and m0["kbridge_executions_total"]["type"] == "counter"
        assert value(m0, "kbridge_pool_ready", kind="kernel") == 0
        assert value(m0, "kbridge_pool_target", kind="sandbox") == 0
        assert value(m0, "kbridge_sandboxes", state="running") == 1  # the default sandbox
        assert value(m0, "kbridge_kernels", state="idle") == 0
        assert value(m0, "kbridge_buffered_bytes_limit") == 1 << 30

        async def cells():
            c = await NativeClient.connect(srv, sandbox_id="default")
            try:
                _, end = await c.execute("print('x' * 1000)")
                assert end["type"] == "end_of_execution"
                _, end = await c.execute("1/0")
                assert end["execution"]["error"]["name"] == "ZeroDivisionError"
                _, end = await c.execute("import time; time.sleep(30)", timeout_ms=500)
                assert end["execution"]["error"]["name"] == "TimeoutError"
                _, end = await c.execute("import sys; print('e' * 300, file=sys.stderr); 6 * 7")
                bad = await c.request(op="no_such_op")
                assert bad["type"] == "request_error" and bad["code"] == "bad_request"
                missing = await c.request(op="interrupt_kernel", kernel_id="nosuch")
                assert missing["type"] == "request_error" and missing["code"] == "not_found"
                return scrape(srv)
            finally:
                await c.close()

        m1 = run(cells())
        d = lambda fam, **l: value(m1, fam, **l) - value(m0, fam, **l)  # noqa: E731
        assert d("kbridge_executions_total", outcome="ok") == 2
        assert d("kbridge_executions_total", outcome="error") == 1
        assert d("kbridge_executions_total", outcome="timeout") == 1
        assert value(m1, "kbridge_execution_duration_seconds", "kbridge_execution_duration_seconds_count") == 4
        # the timed-out cell took at least its 500 ms
        slow = value(m1, "kbridge_execution_duration_seconds", "kbridge_execution_duration_seconds_bucket", le="0.25")
        assert slow <= 3
        assert value(m1, "kbridge_execution_duration_seconds", "kbridge_execution_duration_seconds_sum") >= 0.5
        assert d("kbridge_output_bytes_total", stream="stdout") >= 1000
        assert d("kbridge_output_bytes_total", stream="stderr") >= 300
        assert d("kbridge_output_bytes_total", stream="result") > 0
        assert d("kbridge_errors_total", code="bad_request") == 1
        assert d("kbridge_errors_total", code="not_found") == 1
        assert value(m1, "kbridge_kernels", state="idle") + value(m1, "kbridge_kernels", state="busy") == 1
        assert value(m1, "kbridge_connections") >= 1  # the scrape's own
        # the connected session keeps its replies and ends for a reconnect to replay
        assert value(m1, "kbridge_session_held_bytes") > 0
        assert value(m1, "kbridge_session_events_lost_total") == 0

        # a sandbox: created, seen running, killed, gone; errors from HTTP statuses
        status, _, sb = srv.api("POST", "/v2/sandboxes", {"templateID": "base", "timeout": 120})
        assert status == 201, sb
        m2 = scrape(srv)
        assert value(m2, "kbridge_sandboxes", state="running") == value(m1, "kbridge_sandboxes", state="running") + 1
        assert srv.api("DELETE", f"/sandboxes/{sb['sandboxID']}")[0] == 204
        assert srv.api("DELETE", f"/sandboxes/{sb['sandboxID']}")[0] == 404
        assert srv.api("GET", "/v2/sandboxes", token="wrong")[0] in (401, 403)
        m3 = scrape(srv)
        assert value(m3, "kbridge_sandboxes", state="running") == value(m1, "kbridge_sandboxes", state="running")
        assert value(m3, "kbridge_errors_total", code="not_found") - value(m2, "kbridge_errors_total", code="not_found") == 1
        assert value(m3, "kbridge_errors_total", code="unauthorized") - value(m2, "kbridge_errors_total", code="unauthorized") == 1
        h = "kbridge_http_request_duration_seconds"
        assert value(m3, h, h + "_count", api="control", status="2xx") >= 2  # create, kill
        assert value(m3, h, h + "_count", api="control", status="4xx") >= 2  # 404, the wrong token
        assert value(m3, h, h + "_count", api="native", status="1xx") >= 1   # the /ws upgrade
        assert value(m3, h, h + "_count", api="ops", status="2xx") == 3      # scrapes so far
        assert value(m3, h, h + "_count", api="ops", status="4xx") == 1      # the one without token
        # buffered bytes: the gauge reads what the server queues now (nothing is queued)
        assert value(m3, "kbridge_buffered_bytes") >= 0
        assert srv.alive()
    finally:
        srv.stop()


TOKEN = "s3cret-TOKEN-4f1e9a"


def test_access_log(tmp_path):
    srv = KBridge(tmp_path, "--access-log", token=TOKEN)
    try:
        status, body = get(srv.http + f"/api/kernels?token={TOKEN}&x=1")
        assert status == 200
        status, _ = get(srv.http + "/api/kernelspecs", headers={"Authorization": f"token {TOKEN}"})
        assert status == 200
        status, nf = get(srv.http + "/no/such/path", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 404
        status, _ = get(srv.http + "/api/kernels?token=wrong-guess")
        assert status == 403

        async def ws():
            async with websockets.connect(srv.ws_url(path="/ws", sandbox_id="default"),
                                          subprotocols=["kbridge.v1"]) as c:
                await asyncio.wait_for(c.recv(), 60)
                await asyncio.sleep(0.4)

        t0 = time.monotonic()
        run(ws())
        ws_seconds = time.monotonic() - t0

        def lines():
            return [ln for ln in srv.logs().splitlines() if "kbridge info] access " in ln]

        deadline = time.monotonic() + 30
        while not any(" websocket" in ln for ln in lines()) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = srv.logs()
        assert TOKEN not in log, "the token reached the log"
        assert "wrong-guess" not in log, "a token given in the query reached the log"
        pat = re.compile(r"access (\S+) (GET|POST|PUT|PATCH|DELETE|OPTIONS|HEAD|\S+) (\S+) (\d{3}) (\d+) (\d+)ms( websocket)?$")
        parsed = []
        for ln in lines():
            m = pat.search(ln)
            assert m, f"bad access line {ln!r}"
            parsed.append(m.groups())
        by_target = {p[2]: p for p in parsed}
        k = by_target["/api/kernels?token=...&x=1"]
        assert k[0] == "127.0.0.1" and k[1] == "GET" and k[3] == "200" and int(k[4]) == len(body)
        assert by_target["/api/kernelspecs"][3] == "200"
        n = by_target["/no/such/path"]
        assert n[3] == "404" and int(n[4]) == len(nf), n  # the body's bytes
        assert by_target["/api/kernels?token=..."][3] == "403"
        w = [p for p in parsed if p[6]]
        assert len(w) == 1, parsed
        assert w[0][1] == "GET" and w[0][2] == "/ws?sandbox_id=default&token=..." and w[0][3] == "101"
        assert int(w[0][4]) > 200, w  # the handshake and the session message
        # logged at close, with the connection's duration
        assert 400 <= int(w[0][5]) <= ws_seconds * 1000 + 1000, (w, ws_seconds)
        assert srv.alive()
    finally:
        srv.stop()
