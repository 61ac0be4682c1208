#!/usr/bin/env bash
# Configure and build atom (Release, Ninja) into ./build, or $ATOM_BUILD_DIR. Extra arguments go
# to CMake, e.g. scripts/build.sh -DATOM_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${ATOM_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
ninja -C "$build"
