#!/usr/bin/env python3
"""Draws a matplotlib chart in a kbridge kernel and saves the PNG it sends back.

    examples/chart.py --url http://127.0.0.1:49999 --token TOKEN --out chart.png

(or set KBRIDGE_URL / KBRIDGE_TOKEN). Prints the cell's stdout as it streams. The kernel
runs in a sandbox of its own (the kbridge package's CodeInterpreter, clients/python).
"""
import argparse
import base64
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from kbridge import CodeInterpreter  # noqa: E402

CODE = """
import numpy as np
import matplotlib.pyplot as plt

x = np.linspace(0, 2 * np.pi, 200)
print("plotting", len(x), "points")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(x, np.sin(x), label="sin")
ax.plot(x, np.cos(x), label="cos")
ax.set_title("kbridge chart")
ax.legend()
plt.show()
print("done")
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("KBRIDGE_URL", "http://127.0.0.1:49999"))
    ap.add_argument("--token", default=os.environ.get("KBRIDGE_TOKEN"))
    ap.add_argument("--out", default="chart.png")
    args = ap.parse_args()
    with CodeInterpreter(url=args.url, api_key=args.token) as sandbox:
        execution = sandbox.notebook.exec_cell(
            CODE, on_stdout=lambda m: print("stdout:", m.line, end=""),
            on_result=lambda r: print("result with formats", r.formats()))
        if execution.error:
            print(f"{execution.error.name}: {execution.error.value}\n{execution.error.traceback}")
            return 1
        pngs = [r for r in execution.results if r.png]
        if not pngs:
            print("no chart came back")
            return 1
        with open(args.out, "wb") as f:
            f.write(base64.b64decode(pngs[0].png))
        print(f"saved {args.out} ({os.path.getsize(args.out)} bytes); stdout was {execution.logs.stdout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
