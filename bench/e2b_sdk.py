#!/usr/bin/python3
"""Starts kbridge (build/kbridge unless --kbridge) and runs bench/e2b_sdk_bench.mjs with
the three E2B variables pointing at it. Needs root (sandboxes), node and tests/compat's
npm packages (`npm ci` there)."""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from kbharness import KBridge  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbridge", default=str(ROOT / "build" / "kbridge"))
    ap.add_argument("-n", type=int, default=10)
    args = ap.parse_args()
    os.environ["KBRIDGE_BIN"] = args.kbridge
    with tempfile.TemporaryDirectory() as tmp:
        srv = KBridge(pathlib.Path(tmp))
        try:
            env = dict(os.environ, E2B_API_URL=srv.http, E2B_SANDBOX_URL=srv.http,
                       E2B_API_KEY=srv.token, N=str(args.n))
            env.pop("E2B_DEBUG", None)
            sys.exit(subprocess.run(["node", str(ROOT / "bench" / "e2b_sdk_bench.mjs")], env=env).returncode)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
