#!/usr/bin/env bash
# bench/run.sh [ARGS...] -- the one benchmark command: builds kbridge if needed, starts
# kbridge and jupyter-server itself, runs every target and prints the summary.
# Arguments go to bench/run_all.py (see --help; --quick for a ~2 min smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/run_all.py "$@"
