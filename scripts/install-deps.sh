#!/usr/bin/env bash
# Installs everything the project needs on Debian 12 (apt), as root or
# through sudo. Safe to run again.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
pkgs=(
  cmake make g++ pkg-config git ca-certificates clang-format curl
  clang libclang-rt-14-dev           # fuzz targets (libFuzzer and the sanitizers' runtimes)
  libtorch-dev libopenblas0-openmp   # libtorch; OpenBLAS, else matmuls are ~25x slower
  libjansson-dev libpcre2-dev        # JSON, the tokenizer's pattern
  libgraphviz-dev                    # SVG path graphs (libgvc)
  libmicrohttpd-dev libuv1-dev       # nppd: HTTP, event loop
  libsqlite3-dev                     # nppd: the durable job store
  nginx-light                        # the replicas test: nginx in front of two nppd
  python3-jsonschema python3-yaml    # server tests: responses vs api/openapi.yaml
  python3-pip python3-setuptools python3-wheel  # the Python client installs offline (a test)
  chromium                           # the web UI's end-to-end test (headless)
  python3-torch python3-numpy python3-pytest   # the independent reference (tests)
  python3-matplotlib                 # the Python client's res.plot() (a test)
  wamerican                          # word list used by tools/train_induction.py
)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all Debian packages present"
