#!/usr/bin/python3
"""The server bench/sandbox_rows.py reaches through the port proxy and directly: the same
script runs inside a sandbox and on the host (the anchor).

    sandbox_rows_server.py HTTP_PORT WS_PORT

HTTP/1.1 on HTTP_PORT, one thread per connection, blocking sockets (so the server is
not what limits throughput): `GET /big?n=BYTES` answers BYTES bytes from memory, any
other path `ok`; keep-alive unless the request says `Connection: close`. WebSocket on
WS_PORT (websockets, asyncio): a text frame is echoed; `big N` is answered with N binary
frames of 1 MiB then `done`. Prints `ready` once both listen.
"""
import asyncio
import socket
import sys
import threading

import websockets

MIB = 1 << 20
BIG = memoryview(bytes(range(256)) * (MIB // 256) * 128)   # 128 MiB


def serve_conn(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                got = c.recv(65536)
                if not got:
                    return
                buf += got
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            path = lines[0].split(b" ")[1]
            close = any(h.lower().startswith(b"connection:") and b"close" in h.lower() for h in lines[1:])
            if path.startswith(b"/big"):
                n = int(path.split(b"n=", 1)[1]) if b"n=" in path else 100 * MIB
                body = BIG[:n]
            else:
                body = b"ok"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n"
                      % (len(body), b"Connection: close\r\n" if close else b""))
            c.sendall(body)
            if close:
                return
    except OSError:
        pass
    finally:
        c.close()


def http_main(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_conn, args=(c,), daemon=True).start()


async def ws_handler(ws, path=None):
    async for m in ws:
        if isinstance(m, str) and m.startswith("big "):
            chunk = bytes(BIG[:MIB])
            for _ in range(int(m[4:])):
                await ws.send(chunk)
            await ws.send("done")
        else:
            await ws.send(m)


async def ws_main(port):
    async with websockets.serve(ws_handler, "127.0.0.1", port, max_size=None, compression=None):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", int(sys.argv[1])))
    ls.listen(512)
    threading.Thread(target=http_main, args=(ls,), daemon=True).start()
    asyncio.run(ws_main(int(sys.argv[2])))
