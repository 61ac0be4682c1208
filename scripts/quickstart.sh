#!/usr/bin/env bash
# The README's first command: install dependencies, build atom, fetch the default model
# (SmolLM2-135M-Instruct) and serve it: the OpenAI-compatible server on http://localhost:8000.
# Any arguments replace that and go to `atom` as they are, e.g.
#   scripts/quickstart.sh generate --prompt "Once upon a time" --max-tokens 64
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >&2
scripts/build.sh >&2
scripts/fetch-model.sh >/dev/null
if [ $# -eq 0 ]; then
  set -- serve
fi
exec "${ATOM_BUILD_DIR:-build}/atom" "$@"
