#!/usr/bin/env bash
# [H] on a host with 2 or 4 GPUs, one command: build (scripts/gpu-check.sh's configuration), run
# test_cuda whole (its multi-GPU suites: NCCL collectives, inside CUDA graphs too, the custom
# all-reduce against NCCL, the TP runner against one GPU on tiny models with awkward shapes),
# make the HF parity checkpoints (scripts/hf_reference.py: tiny Llama, tiny Qwen3, the
# Llama-3.1-8B shape) and run test_hf_parity (one GPU against transformers, and -tp 2 / -tp 4,
# fused all-reduce or not, eager or graphs, against one GPU), the data-parallel end-to-end tests
# with a rank per GPU, then scripts/gpu-bench-multi.sh with the given steps. A table last.
#   scripts/gpu-check-multi.sh [tp] [tp70] [serve] [dp]    (no step: no benchmarks)
# ATOM_CHECK_HF_MODELS="llama-tiny qwen3-tiny" limits the parity checkpoints (default: all three;
# empty: no parity run);
# ATOM_CHECK_MULTI_TESTS=0 skips test_cuda and the parity tests (the e2e tests and benchmarks run).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${ATOM_BUILD_DIR:-build-gpu}
export NCCL_NVLS_ENABLE=0  # never NVLink multicast (../shared/GPU.md)
ATOM_BUILD_DIR="$build" ATOM_CHECK_TARGETS="atom test_cuda test_hf_parity" scripts/gpu-check.sh ||
  { echo "| build | FAILED |"; exit 1; }
# shellcheck source=scripts/gpu-deps-env.sh
. scripts/gpu-deps-env.sh
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | sed 's/^ *//')
rc=0

gtest_line() {  # LOG: gtest's passed / failed / skipped counts
  local p f s
  p=$(grep -oE "^\[  PASSED  \] [0-9]+" "$1" | grep -oE "[0-9]+$")
  f=$(grep -oE "^\[  FAILED  \] [0-9]+ tests?," "$1" | grep -oE "[0-9]+")
  s=$(grep -oE "^\[  SKIPPED \] [0-9]+" "$1" | grep -oE "[0-9]+$")
  echo "${p:-0} passed, ${f:-0} failed, ${s:-0} skipped"
}
cuda_line="skipped (ATOM_CHECK_MULTI_TESTS=0)"
parity_line=$cuda_line
models=${ATOM_CHECK_HF_MODELS-llama-tiny qwen3-tiny llama-8b}
if [ "${ATOM_CHECK_MULTI_TESTS:-1}" != 0 ]; then
  echo "== test_cuda" >&2
  timeout 900 "$build/tests/test_cuda" >"$build.multi-cuda.log" 2>&1 || rc=1
  cuda_line=$(gtest_line "$build.multi-cuda.log")
  grep -E "^\[  FAILED  \] [A-Za-z]|^\[  SKIPPED \] [A-Za-z]" "$build.multi-cuda.log" | sort -u | head -30

  [ -n "$models" ] || parity_line="skipped (ATOM_CHECK_HF_MODELS empty)"
fi
if [ "${ATOM_CHECK_MULTI_TESTS:-1}" != 0 ] && [ -n "$models" ]; then
  hf_dir=$(sed -n 's/^ATOM_HF_PARITY_DIR:PATH=//p' "$build/CMakeCache.txt")
  only=()
  for m in $models; do only+=(--only "$m"); done
  filter=""
  for m in $models; do filter+="*/${m//-/_}:"; done
  echo "== hf reference ($models)" >&2
  parity_line="not run"
  if timeout 900 python3 scripts/hf_reference.py "$hf_dir" "${only[@]}" >"$build.multi-hfref.log" 2>&1; then
    echo "== test_hf_parity" >&2
    timeout 1200 "$build/tests/test_hf_parity" --gtest_filter="${filter%:}" \
      >"$build.multi-parity.log" 2>&1 || rc=1
    parity_line=$(gtest_line "$build.multi-parity.log")
    grep -E "^\[  FAILED  \] [A-Za-z]|Failure|near-tie|instead of" "$build.multi-parity.log" | head -30
    cat "$hf_dir"/*/parity_tp.txt 2>/dev/null
  else
    rc=1
    parity_line="FAILED: hf_reference.py ($(tail -n 1 "$build.multi-hfref.log"))"
  fi
  python3 scripts/hf_reference.py --remove-weights "$hf_dir" >/dev/null 2>&1
fi

# The data-parallel end-to-end tests (tests/e2e/test_dp.py: ranks as separate processes with
# ATOM_DP_* set, or one `atom serve -dp 2`, behind rank 0's front end; a rank killed mid-run)
# with every rank on its own GPU (atom's default device here is cuda, rank r on GPU r).
echo "== e2e: tests/e2e/test_dp.py on the GPUs" >&2
ATOM_WHEELHOUSE=${ATOM_WHEELHOUSE:-$PWD/.deps/wheels} ATOM_BUILD_DIR="$build" ATOM_E2E_DEVICE=cuda \
  timeout 600 scripts/e2e.sh tests/e2e/test_dp.py -q -p no:cacheprovider \
  >"$build.multi-dp-e2e.log" 2>&1 || rc=1
dp_line=$(grep -E "[0-9]+ (passed|failed)" "$build.multi-dp-e2e.log" | tail -1)
grep -E "^FAILED|^ERROR" "$build.multi-dp-e2e.log" | head -10

bench_line="not asked"
if [ $# -gt 0 ]; then
  if ATOM_BUILD_DIR="$build" scripts/gpu-bench-multi.sh "$@"; then bench_line="ok"; else
    bench_line="FAILED (see above)"; rc=1; fi
fi
echo
echo "| step | result |"
echo "|---|---|"
echo "| GPUs | ${gpus//$'\n'/; } |"
echo "| test_cuda (multi-GPU suites included) | $cuda_line |"
echo "| hf parity, one GPU and -tp 2/4 ($models) | $parity_line |"
echo "| e2e tests/e2e/test_dp.py (ranks on GPUs 0 and 1) | ${dp_line:-FAILED} |"
echo "| benchmarks ($*) | $bench_line |"
exit $rc
