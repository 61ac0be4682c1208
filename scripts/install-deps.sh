#!/usr/bin/env bash
# Install everything atom builds and tests with, from Debian packages. Safe to re-run: when every
# package is already installed it does nothing (no apt-get update).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl python3 python3-pip python3-venv
  nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libfmt-dev libspdlog-dev
  libxxhash-dev libpcre2-dev libgtest-dev libgmock-dev libcurl4-openssl-dev libboost-dev
  zlib1g-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3/pip may come from elsewhere (pyenv, a venv): accept any working ones.
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  filtered=()
  for p in "${missing[@]}"; do
    [[ "$p" == python3 || "$p" == python3-pip ]] && continue
    # python3-venv: only what the end-to-end tests' virtual environment needs.
    [[ "$p" == python3-venv ]] && python3 -c 'import venv, ensurepip' >/dev/null 2>&1 && continue
    filtered+=("$p")
  done
  missing=("${filtered[@]}")
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
