"""Jupyter kernel WebSocket framings for tests, plus a small channels client.

Adapted from the shared benchmark harness's jproto.py. Frames kbridge sends are also
decoded with Jupyter Server's own deserializers (jupyter_server.base.zmqhandlers) where
a test wants byte-level compatibility checked against the reference implementation.
"""
import asyncio
import datetime as _dt
import json
import struct
import uuid

import websockets

V1 = "v1.kernel.websocket.jupyter.org"


def make_msg(msg_type, content, session, buffers=()):
    return {"header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "test",
                       "session": session, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "buffers": list(buffers)}


def execute_msg(code, session, allow_stdin=False):
    return make_msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                        "user_expressions": {}, "allow_stdin": allow_stdin,
                                        "stop_on_error": True}, session)


def v1_frame(channel, parts, buffers=()):
    """parts: header, parent, metadata, content as bytes."""
    ch = channel.encode() if isinstance(channel, str) else channel
    body = [ch] + list(parts) + list(buffers)
    offsets = [8 * (1 + len(body) + 1)]
    for p in body:
        offsets.append(offsets[-1] + len(p))
    return struct.pack("<%dQ" % (len(offsets) + 1), len(offsets), *offsets) + b"".join(body)


def v1_encode(channel, msg):
    parts = [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
    return v1_frame(channel, parts, [bytes(b) for b in msg.get("buffers", [])])


def v1_decode(frame):
    n = struct.unpack_from("<Q", frame, 0)[0]
    offs = struct.unpack_from("<%dQ" % n, frame, 8)
    assert offs[0] == 8 * (n + 1) and offs[-1] == len(frame)
    chunks = [frame[offs[i]:offs[i + 1]] for i in range(n - 1)]
    msg = {k: json.loads(chunks[1 + i]) for i, k in
           enumerate(("header", "parent_header", "metadata", "content"))}
    msg["buffers"] = [bytes(b) for b in chunks[5:]]
    msg["channel"] = chunks[0].decode()
    return msg


def legacy_encode(channel, msg):
    m = dict(msg, channel=channel)
    bufs = [bytes(b) for b in m.pop("buffers", [])]
    if not bufs:
        return json.dumps(m)
    parts = [json.dumps(m).encode()] + bufs
    offs = [4 * (len(parts) + 1)]
    for p in parts[:-1]:
        offs.append(offs[-1] + len(p))
    return struct.pack("!%dI" % (len(parts) + 1), len(parts), *offs) + b"".join(parts)


def legacy_decode(frame):
    if isinstance(frame, str):
        m = json.loads(frame)
        m.setdefault("buffers", [])
        return m
    n = struct.unpack("!I", frame[:4])[0]
    offs = list(struct.unpack("!%dI" % n, frame[4:4 * (n + 1)])) + [len(frame)]
    m = json.loads(frame[offs[0]:offs[1]])
    m["buffers"] = [frame[offs[i]:offs[i + 1]] for i in range(1, n)]
    return m


class Channels:
    """One /api/kernels/{id}/channels connection."""

    def __init__(self, ws, proto):
        self.ws, self.proto = ws, proto
        self.session = None
        self.stash = []

    @classmethod
    async def connect(cls, server, kernel_id, proto="v1", session_id=None, **kw):
        session_id = session_id or uuid.uuid4().hex
        url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={session_id}&token={server.token}"
        ws = await websockets.connect(url, subprotocols=[V1] if proto == "v1" else None,
                                      max_size=None, **kw)
        c = cls(ws, proto)
        c.session = session_id
        return c

    async def send(self, channel, msg):
        await self.ws.send(v1_encode(channel, msg) if self.proto == "v1" else legacy_encode(channel, msg))

    async def recv(self, timeout=30):
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.proto == "v1":
            assert isinstance(frame, bytes), "v1 frames must be binary"
            return v1_decode(frame)
        return legacy_decode(frame)

    async def request(self, channel, msg, timeout=60):
        """Send and collect until both the reply and status idle for it arrived."""
        await self.send(channel, msg)
        mid = msg["header"]["msg_id"]
        reply, iopub = None, []
        while True:
            m = await self.recv(timeout)
            if m["parent_header"].get("msg_id") != mid:
                self.stash.append(m)
                continue
            if m["channel"] == "iopub":
                iopub.append(m)
                if m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "idle" and reply:
                    return reply, iopub
            else:
                reply = m
                if any(x["header"]["msg_type"] == "status" and x["content"]["execution_state"] == "idle"
                       for x in iopub):
                    return reply, iopub

    async def execute(self, code, **kw):
        return await self.request("shell", execute_msg(code, self.session, **kw))

    async def close(self):
        await self.ws.close()
