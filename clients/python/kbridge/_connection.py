"""The transport: kbridge's HTTP control plane (urllib) and one native WebSocket per
sandbox, read by an asyncio loop in a background thread.

Every request gets an id; the reader thread hands each message carrying that id to the
request's route (a queue the caller blocks on, or a forwarder that queues work for the
sandbox's callback thread). Callers never touch the loop: they block on queues, with a
deadline, and a missed deadline is a TimeoutError naming the call.
"""
import asyncio
import builtins
import concurrent.futures
import itertools
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import websockets

DEFAULT_URL = "http://127.0.0.1:49999"
DEFAULT_TIMEOUT = 60.0


class KBridgeError(Exception):
    """A request the server refused. `.code` is the server's code (a native API code such
    as "not_found", or an HTTP status for the control plane), `.message` its message."""

    def __init__(self, code, message, status=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class TimeoutError(builtins.TimeoutError):
    """The client stopped waiting for a call (`.call`) after `.timeout` seconds."""

    def __init__(self, call, timeout):
        super().__init__(f"{call} timed out after {timeout:g} s")
        self.call = call
        self.timeout = timeout


class ConnectionClosed(KBridgeError):
    def __init__(self, message="the connection to kbridge is closed"):
        super().__init__("closed", message)


_CLOSED = object()  # put on every route when the connection goes


def settings(url=None, token=None):
    url = (url or os.environ.get("KBRIDGE_URL") or DEFAULT_URL).rstrip("/")
    if url.startswith("ws://"):
        url = "http://" + url[5:]
    elif url.startswith("wss://"):
        url = "https://" + url[6:]
    if url.endswith("/ws"):
        url = url[:-3]
    if token is None:
        token = os.environ.get("KBRIDGE_TOKEN")
    return url, token


def _timeout(value):
    return DEFAULT_TIMEOUT if value is None else float(value)


def http(base, token, method, path, body=None, timeout=DEFAULT_TIMEOUT, call="request", total=None):
    """A control-plane request: (status, JSON or None). Errors raise KBridgeError; no
    answer within timeout, TimeoutError naming call (and total, the call's whole timeout)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if token:
        req.add_header("X-API-Key", token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            err = json.loads(raw)
        except ValueError:
            err = {}
        if not isinstance(err, dict):
            err = {}
        raise KBridgeError(err.get("code", e.code), err.get("message") or raw.decode("utf-8", "replace")
                           or e.reason, status=e.code) from None
    except (TimeoutError, builtins.TimeoutError) as e:
        raise TimeoutError(call, total or timeout) from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, builtins.TimeoutError):
            raise TimeoutError(call, total or timeout) from e
        raise KBridgeError("unreachable", f"kbridge at {base}: {e.reason}") from e
    except ConnectionError as e:
        raise KBridgeError("unreachable", f"kbridge at {base}: {e}") from e
    return status, (json.loads(raw) if raw else None)


class Deadline:
    def __init__(self, call, timeout):
        self.call = call
        self.timeout = _timeout(timeout)
        self.end = time.monotonic() + self.timeout

    def left(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(self.call, self.timeout)
        return left


class Connection:
    """One /ws connection (a session on one sandbox)."""

    # Debugging and test hooks: called with every request sent / message received.
    on_request = None
    on_message = None

    def __init__(self, ws_url, deadline):
        self._routes = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closed = False
        self.close_reason = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kbridge-ws", daemon=True)
        self._thread.start()
        self._ws = None
        fut = asyncio.run_coroutine_threadsafe(self._connect(ws_url), self._loop)
        try:
            self.session = fut.result(deadline.left())
        except concurrent.futures.TimeoutError:
            fut.cancel()
            self._stop_loop()
            raise TimeoutError(deadline.call, deadline.timeout) from None
        except BaseException:
            self._stop_loop()
            raise

    async def _connect(self, url):
        self._ws = await websockets.connect(url, subprotocols=["kbridge.v1"], max_size=None,
                                            open_timeout=None, ping_interval=20, ping_timeout=60,
                                            close_timeout=5)
        hello = json.loads(await self._ws.recv())
        self._reader = self._loop.create_task(self._read())
        return hello

    async def _read(self):
        try:
            async for raw in self._ws:
                m = json.loads(raw)
                if Connection.on_message:
                    Connection.on_message(m)
                rid = m.get("id")
                route = self._routes.get(rid) if rid is not None else None
                if route is not None:
                    route.put(m)
                elif m.get("type") == "sandbox_ended":
                    self.close_reason = f"sandbox {m.get('sandbox_id')} ended: {m.get('reason')}"
        except websockets.ConnectionClosed as e:
            if not self.close_reason:
                self.close_reason = f"connection closed ({e.code} {e.reason})".strip()
        except Exception as e:  # noqa: BLE001 - the reader must end the routes whatever happens
            self.close_reason = f"connection failed: {e!r}"
        finally:
            self.closed = True
            with self._lock:
                routes = list(self._routes.values())
            for r in routes:
                r.put(_CLOSED)

    def open(self, req, route=None, deadline=None):
        """Send req with a fresh id; its messages go to route (a new queue by default).
        Returns (id, route)."""
        if self.closed:
            raise ConnectionClosed(self.close_reason or "the connection to kbridge is closed")
        rid = f"c{next(self._ids)}"
        req = dict(req, id=rid)
        if Connection.on_request:
            Connection.on_request(req)
        route = route if route is not None else queue.Queue()
        with self._lock:
            self._routes[rid] = route
        fut = asyncio.run_coroutine_threadsafe(self._ws.send(json.dumps(req)), self._loop)
        try:
            fut.result(deadline.left() if deadline else DEFAULT_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self.release(rid)
            raise TimeoutError(deadline.call if deadline else req["op"],
                               deadline.timeout if deadline else DEFAULT_TIMEOUT) from None
        except websockets.ConnectionClosed:
            self.release(rid)
            raise ConnectionClosed(self.close_reason or "the connection to kbridge is closed") from None
        return rid, route

    def release(self, rid):
        with self._lock:
            self._routes.pop(rid, None)

    def next(self, q, deadline):
        """The next message on queue q, by the deadline."""
        try:
            m = q.get(timeout=deadline.left())
        except queue.Empty:
            raise TimeoutError(deadline.call, deadline.timeout) from None
        if m is _CLOSED:
            raise ConnectionClosed(self.close_reason or "the connection to kbridge is closed")
        return m

    def call(self, req, call, timeout=None):
        """One request, one reply: the reply, or KBridgeError for a request_error."""
        deadline = Deadline(call, timeout)
        rid, q = self.open(req, deadline=deadline)
        try:
            m = self.next(q, deadline)
        finally:
            self.release(rid)
        if m.get("type") == "request_error":
            raise KBridgeError(m["code"], m["message"])
        return m

    def _stop_loop(self):
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def close(self):
        if self._ws is not None and not self._loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop)
            try:
                fut.result(10)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            reader = getattr(self, "_reader", None)
            if reader is not None:
                fut = asyncio.run_coroutine_threadsafe(asyncio.wait([reader], timeout=5), self._loop)
                try:
                    fut.result(10)
                except Exception:  # noqa: BLE001
                    pass
        self.closed = True
        if not self._loop.is_closed():
            self._stop_loop()


def ws_url(base, sandbox_id, token):
    q = {"sandbox_id": sandbox_id}
    if token:
        q["token"] = token
    scheme = "wss" if base.startswith("https://") else "ws"
    return f"{scheme}://{base.split('://', 1)[1]}/ws?{urllib.parse.urlencode(q)}"


class Dispatcher:
    """The thread that runs a sandbox's callbacks (process output and exits, watch
    events), in the order their messages arrived, so that a slow callback never stalls
    the connection and a callback may call the client."""

    def __init__(self):
        self._q = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="kbridge-callbacks", daemon=True)
        self._thread.start()

    def submit(self, fn, *args):
        self._q.put((fn, args))

    def _run(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a failing user callback must not stop the others
                import traceback
                traceback.print_exc()

    def stop(self):
        self._q.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)


class Forward:
    """A route that hands each message to fn on the dispatcher thread."""

    def __init__(self, dispatcher, fn):
        self._d = dispatcher
        self._fn = fn

    def put(self, m):
        self._d.submit(self._fn, m)
