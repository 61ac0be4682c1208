#!/usr/bin/env bash
# Pack the Debian packages atom builds against into ./.deps, for a GPU host that reaches no
# package registry (copy .deps along with the tree; scripts/gpu-check.sh picks it up).
set -euo pipefail
cd "$(dirname "$0")/.."
exec ../shared/tools/pack-deps.sh \
  nlohmann-json3-dev libcpp-httplib-dev libcpp-httplib0.11 libcli11-dev libfmt-dev libfmt9 \
  libspdlog-dev libspdlog1.10 libxxhash-dev libxxhash0 libpcre2-dev libpcre2-8-0 libpcre2-16-0 \
  libpcre2-32-0 libpcre2-posix3 libgtest-dev libgmock-dev googletest libcurl4-openssl-dev \
  libcurl4
