#!/usr/bin/env bash
# Create or update the Python virtual environment of the end-to-end tests at ${ATOM_VENV:-.venv}
# (relative to the repo root) from requirements-test.txt. Idempotent: when the environment was
# already built from the same requirements by the same interpreter, it returns at once without
# running pip. The interpreter is ${PYTHON:-python3}; it needs the venv and ensurepip modules,
# which Debian ships in the package python3-venv. With ATOM_WHEELHOUSE=DIR the packages come
# from the wheels in DIR and no package index is contacted (hosts without network access; see
# scripts/pack-gpu-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${ATOM_VENV:-.venv}
requirements=requirements-test.txt

command -v "$python" >/dev/null || {
  echo "setup-python: $python not found; install python3 (Debian: apt-get install python3)" >&2
  exit 1
}
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "setup-python: $python cannot create virtual environments (no venv/ensurepip module);" \
    "on Debian install the package python3-venv: apt-get install python3-venv" >&2
  exit 1
fi

# The stamp ties the environment to the interpreter and to the exact requirements text.
want="$("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])') $(sha256sum "$requirements" | cut -d' ' -f1)"
stamp=$venv/.atom-requirements
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
  "$venv/bin/python" -c 'from importlib.metadata import version; version("openai"); version("pytest")' \
    >/dev/null 2>&1; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  echo "setup-python: creating $venv" >&2
  "$python" -m venv "$venv"
fi
echo "setup-python: installing $requirements into $venv" >&2
source_args=()
if [ -n "${ATOM_WHEELHOUSE:-}" ]; then
  source_args=(--no-index --find-links "$ATOM_WHEELHOUSE")
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${source_args[@]}" \
  -r "$requirements" >&2
echo "$want" >"$stamp"
