#!/usr/bin/env bash
# Installs what is missing, builds, and runs kbridge. Arguments go to kbridge
# (default: `serve`, the service on its default kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo
[ $# -eq 0 ] && set -- serve
exec build/kbridge "$@"
