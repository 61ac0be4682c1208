#!/usr/bin/env bash
# Pack the Debian packages atom builds against into ./.deps, for a GPU host that reaches no
# package registry (copy .deps along with the tree; scripts/gpu-check.sh picks it up), and the
# wheels of the end-to-end tests' Python packages into ./.deps/wheels for that host's Python
# (GPU_PYTHON_VERSION, default 3.12): ATOM_WHEELHOUSE=.deps/wheels scripts/e2e.sh installs them
# there without an index.
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/tools/pack-deps.sh \
  nlohmann-json3-dev libcpp-httplib-dev libcpp-httplib0.11 libcli11-dev libfmt-dev libfmt9 \
  libspdlog-dev libspdlog1.10 libxxhash-dev libxxhash0 libpcre2-dev libpcre2-8-0 libpcre2-16-0 \
  libpcre2-32-0 libpcre2-posix3 libgtest-dev libgmock-dev googletest libcurl4-openssl-dev \
  libcurl4 libboost1.74-dev zlib1g-dev
# Boost's headers are ~150 MB, more than a GPU host's copy allows: keep the ones the server
# includes (Asio, Beast and what they pull in), found by asking the compiler, and Boost's CMake
# package files.
inc=.deps/usr/include
keep=$(mktemp)
c++ -std=c++20 -M -MT x -Isrc -I"$inc" src/atom/server/http_server.cpp \
  | tr ' \\' '\n\n' | sed -n "s|^$inc/||p" | grep '^boost/' | sort -u >"$keep"
(cd "$inc" && find boost -type f | sort) | comm -23 - "$keep" | (cd "$inc" && xargs rm -f)
find "$inc/boost" -type d -empty -delete
rm -f "$keep"
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform linux_x86_64 \
  -r requirements-test.txt -d .deps/wheels
du -sh .deps
