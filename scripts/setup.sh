#!/usr/bin/env bash
# Installs what kbridge needs on Debian 12, idempotently: only missing packages are
# installed, and nothing is done when everything is present.
#   scripts/setup.sh          build + run dependencies (and the default kernels)
#   scripts/setup.sh --test   also what the tests need
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

build_pkgs=(build-essential cmake pkg-config
  libzmq3-dev libczmq-dev libsodium-dev libjansson-dev libssl-dev libuv1-dev zlib1g-dev
  passt  # passt: pasta, the outbound network of sandboxes with internet
  nodejs npm)  # npm: the web console's xterm.js (bridge/console/web), built into the binary
# The default kernel (IPython with charts and tables out of the box), and R for E2B's
# language "r".
kernel_pkgs=(python3-ipykernel python3-matplotlib python3-pandas python3-numpy r-cran-irkernel)
test_pkgs=(libcmocka-dev python3-pytest python3-websockets python3-jsonschema
  python3-jupyter-client jupyter-server clang libclang-rt-14-dev
  chromium)  # chromium: the browser tests (tests/browser, driven by playwright-core)

pkgs=("${build_pkgs[@]}" "${kernel_pkgs[@]}")
[ "$want_test" = 1 ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node from another source (e.g. nodesource) satisfies the node requirement.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [ "$p" = nodejs ] || [ "$p" = npm ] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

# Debian's r-cran-irkernel ships its kernelspec; register it if a system lacks it.
if [ ! -f /usr/share/jupyter/kernels/ir/kernel.json ] && [ -d /usr/lib/R/site-library/IRkernel/kernelspec ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO mkdir -p /usr/share/jupyter/kernels/ir
  $SUDO cp /usr/lib/R/site-library/IRkernel/kernelspec/* /usr/share/jupyter/kernels/ir/
fi

# The web console's front-end libraries (xterm.js), pinned by its package-lock.json; the
# build turns them into C arrays, so kbridge needs none of this at run time.
console_web="$(dirname "$0")/../bridge/console/web"
if [ ! -f "$console_web/node_modules/@xterm/xterm/lib/xterm.mjs" ] ||
   [ ! -f "$console_web/node_modules/@xterm/addon-fit/lib/addon-fit.mjs" ]; then
  echo "setup: npm ci in bridge/console/web (xterm.js for the console)"
  (cd "$console_web" && npm ci --no-audit --no-fund --loglevel=error)
fi
