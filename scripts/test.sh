#!/usr/bin/env bash
# The README's test command: install dependencies, fetch the default model, build, run every
# test that needs no GPU (ctest -LE gpu), then the end-to-end tests of `atom serve` (pytest with
# the openai SDK from PyPI, scripts/e2e.sh). GPU tests run on a GPU host (see docs and GPU.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/fetch-model.sh >/dev/null
scripts/build.sh "$@"
cd "${ATOM_BUILD_DIR:-build}"
ctest -LE gpu --output-on-failure -j "$(nproc)"
cd "$OLDPWD"
ATOM_BUILD_DIR="${ATOM_BUILD_DIR:-build}" scripts/e2e.sh
