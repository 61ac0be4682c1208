#!/usr/bin/env bash
# End-to-end tests of `atom serve`: set up the Python environment (scripts/setup-python.sh), then
# run pytest on tests/e2e with it. Extra arguments go to pytest (e.g. -k chat, -x). The tests
# start ${ATOM_BUILD_DIR:-build}/atom themselves; build it first (scripts/build.sh) and fetch the
# default model (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh
# All of tests/e2e unless the arguments name test files (scripts/e2e.sh tests/e2e/test_dp.py).
paths=(tests/e2e)
for a in "$@"; do case $a in tests/*) paths=() ;; esac; done
exec "${ATOM_VENV:-.venv}/bin/python" -m pytest "${paths[@]}" "$@"
