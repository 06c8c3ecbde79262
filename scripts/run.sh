#!/usr/bin/env bash
# Installs what is missing, builds, and runs kbridge. Arguments go to kbridge
# (default: a demo `exec` on the default kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo
[ $# -eq 0 ] && set -- exec "import sys; print(\"kbridge runs Python\", sys.version.split()[0])" "6 * 7"
exec build/kbridge "$@"
