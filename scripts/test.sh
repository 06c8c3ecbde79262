#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test twice: on a normal build, then on
# an AddressSanitizer + UndefinedBehaviorSanitizer build; then runs each libFuzzer target
# for a short while from its seed corpus. Two tests at a time (CI machines have 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
if [ -f tests/compat/package.json ]; then
  (cd tests/compat && npm ci --no-audit --no-fund --loglevel=error)
fi

scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo
(cd build && ctest -j2 --output-on-failure)

scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DKBRIDGE_ASAN=ON -DKBRIDGE_UBSAN=ON
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest -j2 --output-on-failure)
CC=clang scripts/build.sh build-fuzz -DCMAKE_BUILD_TYPE=Debug -DKBRIDGE_FUZZ=ON
(cd build-fuzz && ctest -j2 --output-on-failure)
echo "all tests passed (normal and ASan+UBSan builds, fuzz targets)"
