#!/usr/bin/env bash
# The end-to-end server tests (tests/e2e) against `atom serve` on a GPU host, where atom's
# default device is cuda. Run after scripts/gpu-check.sh (it uses its build, build-gpu).
# A GPU host reaches no registry, so:
#   - the Python packages come from the wheels scripts/pack-gpu-deps.sh put in .deps/wheels;
#   - the default model must be in the model cache, or its pieces (in order of name) in
#     ATOM_MODEL_PARTS=DIR, which are joined and checked against the model's SHA-256 there.
# Every server takes a small share of the GPU (several run at once in some tests).
#   scripts/gpu-e2e.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/gpu-deps-env.sh
. scripts/gpu-deps-env.sh
if [ -n "${ATOM_MODEL_PARTS:-}" ]; then
  name=$(sed -n 's/^GGUF_NAME=//p' scripts/fetch-model.sh)
  dest="${ATOM_CACHE_DIR:-$HOME/.cache/atom}/models"
  mkdir -p "$dest"
  cat "$ATOM_MODEL_PARTS"/* >"$dest/$name"
fi
scripts/fetch-model.sh >/dev/null  # verifies the file (and would fetch it with network access)
export ATOM_WHEELHOUSE=${ATOM_WHEELHOUSE:-$PWD/.deps/wheels}
export ATOM_BUILD_DIR=${ATOM_BUILD_DIR:-build-gpu}
export ATOM_E2E_SERVE_ARGS=${ATOM_E2E_SERVE_ARGS:---gpu-memory-utilization 0.04}
export ATOM_E2E_DEVICE=cuda
exec scripts/e2e.sh "$@"
