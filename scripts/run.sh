#!/usr/bin/env bash
# Installs what is missing, builds kbridge (not its tests), and runs it. Arguments go to
# kbridge (default: `serve`, the service on its default kernel; options without a command
# are serve's: `scripts/run.sh --port 50123`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Its own build directory, without the tests (they need what `setup.sh --test` installs):
# scripts/test.sh's build/ and build-asan/ are left alone.
scripts/build.sh build-run -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKBRIDGE_TESTS=OFF
[ $# -eq 0 ] && set -- serve
exec build-run/kbridge "$@"
