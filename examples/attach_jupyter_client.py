#!/usr/bin/env python3
"""Attaches jupyter_client to a kernel kbridge runs, through its connection file.

    examples/attach_jupyter_client.py --url http://127.0.0.1:49999 --token TOKEN

(or set KBRIDGE_URL / KBRIDGE_TOKEN). Starts a kernel through kbridge's native API, sets
a variable there, then reads it back with jupyter_client.BlockingKernelClient loaded
from the kernel's connection_file: one kernel, two clients. The connection file is
readable only by kbridge's user (mode 0600), so run this as that user, on that machine.
"""
import argparse
import os
import sys

from jupyter_client import BlockingKernelClient

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from kbridge import CodeInterpreter  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("KBRIDGE_URL", "http://127.0.0.1:49999"))
    ap.add_argument("--token", default=os.environ.get("KBRIDGE_TOKEN"))
    args = ap.parse_args()
    # Kernels of the default sandbox run on the host, where jupyter_client can reach them;
    # those of an isolated sandbox have no connection file outside it.
    with CodeInterpreter.reconnect("default", url=args.url, api_key=args.token) as kb:
        kid = kb.notebook.create_kernel()
        kb.notebook.exec_cell("x = 41", kernel_id=kid)
        cf = next(k["connection_file"] for k in kb.notebook.list_kernels()
                  if k["kernel_id"] == kid)
        print("connection file:", cf)
        kc = BlockingKernelClient(connection_file=cf)
        kc.load_connection_file()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=30)
            def show(msg):
                if msg["msg_type"] == "execute_result":
                    print("jupyter_client sees", msg["content"]["data"]["text/plain"])
            kc.execute_interactive("x += 1; x", timeout=30, output_hook=show)
        finally:
            kc.stop_channels()
        print("kbridge sees", kb.notebook.exec_cell("x", kernel_id=kid).text)
        kb.notebook.shutdown_kernel(kid)


if __name__ == "__main__":
    main()
