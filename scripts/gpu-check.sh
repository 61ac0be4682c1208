#!/usr/bin/env bash
# One command for a GPU host: configure with CUDA (sm_90a), build, run every GPU test and the CPU
# op tests they are checked against, and print a short summary table last. Build dependencies come from ./.deps when present
# (packed Debian packages, see the README), else from the system.
#   scripts/gpu-check.sh [extra ctest args]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${ATOM_BUILD_DIR:-build-gpu}
prefix=()
if [ -d .deps/usr ]; then
  prefix=(-DCMAKE_PREFIX_PATH="$PWD/.deps/usr")
  export LD_LIBRARY_PATH="$PWD/.deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  export PKG_CONFIG_PATH="$PWD/.deps/usr/lib/x86_64-linux-gnu/pkgconfig:$PWD/.deps/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none found}"

status_build=ok
# ATOM_HTTP_TESTS=OFF: the mock-Hub and serving-benchmark suites need cpp-httplib's OpenSSL,
# zlib and brotli headers, which the packed dependencies leave out; CI runs them.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATOM_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DATOM_HTTP_TESTS=OFF "${prefix[@]}" >"$build.configure.log" 2>&1 || status_build=FAILED
# The GPU tests and the CPU ops they are checked against. (The atom binary also links libcurl,
# whose own dependencies a bare GPU host lacks; it joins here with the CUDA runner.)
[ "$status_build" = ok ] && {
  ninja -C "$build" test_cuda test_cpu test_quants >"$build.build.log" 2>&1 || status_build=FAILED
}
if [ "$status_build" != ok ]; then
  tail -n 40 "$build.configure.log" "$build.build.log" 2>/dev/null || true
  echo "| step | result |"; echo "|---|---|"; echo "| build | FAILED |"
  exit 1
fi

summary() {  # label, ctest args...
  local label=$1; shift
  local log="$build.$label.log"
  (cd "$build" && ctest --output-on-failure "$@") >"$log" 2>&1
  local rc=$?
  grep -E "tests passed|tests failed" "$log" | tail -1 | sed "s/^/$label: /"
  [ $rc -eq 0 ] || grep -E "^\s+[0-9]+ - .*(Failed|Exception|Timeout)" "$log" | head -20
  return $rc
}
rc=0
gpu_line=$(summary gpu -L gpu "$@") || rc=1
# The CPU oracles of the kernels (ops and quants); model tests need the default model, which
# GPU hosts do not have.
cpu_line=$(summary cpu -L '^(cpu|quants)$' -j 8 "$@") || rc=1
echo
echo "| step | result |"
echo "|---|---|"
echo "| GPU | ${gpu:-none} |"
echo "| build | ok |"
echo "| gpu tests | ${gpu_line#gpu: } |"
echo "| cpu tests | ${cpu_line#cpu: } |"
exit $rc
