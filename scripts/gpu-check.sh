#!/usr/bin/env bash
# One command for a GPU host: configure with CUDA (sm_90a), build, run every GPU test (kernels
# against their CPU twins, the runner against the CPU engine, atom against HF transformers),
# compute-sanitizer over the op tests, the benchmarks, the end-to-end server tests against
# `atom serve` on the GPU (scripts/gpu-e2e.sh) when the default model is on the host, and print a
# short summary table last. Build dependencies come from ./.deps when present (packed Debian
# packages and wheels, scripts/pack-gpu-deps.sh), else from the system.
#   scripts/gpu-check.sh [extra ctest args]
# ATOM_CHECK_CPU_ORACLES=1 also builds and runs the CPU op suites the kernels are checked
# against (CI runs them on every change); ATOM_CHECK_SANITIZER=0 skips the compute-sanitizer
# pass, ATOM_CHECK_BENCH_8B=0 the benchmarks on the Llama-3.1-8B shape, ATOM_CHECK_E2E=0 the
# server tests; ATOM_MODEL_PARTS=DIR gives the default model in pieces (see gpu-e2e.sh). Each
# skip shows in the table.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${ATOM_BUILD_DIR:-build-gpu}
prefix=()
[ -d .deps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.deps/usr")
# shellcheck source=scripts/gpu-deps-env.sh
. scripts/gpu-deps-env.sh
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none found}"

status_build=ok
# ATOM_HTTP_TESTS=OFF: the mock-Hub and serving-benchmark suites need cpp-httplib's OpenSSL,
# zlib and brotli headers, which the packed dependencies leave out; CI runs them.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATOM_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DATOM_HTTP_TESTS=OFF "${prefix[@]}" >"$build.configure.log" 2>&1 || status_build=FAILED
# The GPU tests, the atom binary (for the benchmark) and the CPU ops the kernels are checked
# against.
cpu_oracles=${ATOM_CHECK_CPU_ORACLES:-0}
targets=(test_cuda atom)
[ "$cpu_oracles" = 0 ] || targets+=(test_cpu test_quants)
targets+=(test_hf_parity)  # the HF parity tests (see their section below)
# ATOM_CHECK_TARGETS="atom": build only these and stop (e.g. before scripts/gpu-e2e.sh).
if [ -n "${ATOM_CHECK_TARGETS:-}" ]; then
  read -r -a targets <<<"$ATOM_CHECK_TARGETS"
fi
[ "$status_build" = ok ] && {
  ninja -C "$build" "${targets[@]}" >"$build.build.log" 2>&1 || status_build=FAILED
}
if [ "$status_build" = ok ] && [ -n "${ATOM_CHECK_TARGETS:-}" ]; then
  echo "built: ${targets[*]}"
  exit 0
fi
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
cpu_line="not run (CI runs them; ATOM_CHECK_CPU_ORACLES=1 here)"
if [ "$cpu_oracles" != 0 ]; then
  cpu_line=$(summary cpu -L '^(cpu|quants)$' -j 8 "$@") || rc=1
fi
# The runner tests' figures (worst logit error, greedy tokens matched), which ctest keeps quiet.
"$build/tests/test_cuda" --gtest_filter='*CudaRunner*' 2>&1 | grep -E "^\[cuda runner" || true

# --- HF parity (tests/hf_parity, scripts/hf_reference.py) ---
# atom against transformers on random-weight checkpoints made here (tiny Llama, tiny Qwen3, a
# Llama-3.1-8B-shaped model): the gpu tests above ran them after their ctest fixture made the
# checkpoints; each test keeps its figures (worst logit errors, greedy tokens matched, near-ties,
# timings) in parity.txt beside the data, since ctest keeps passing output quiet.
hf_parity_dir=$(sed -n 's/^ATOM_HF_PARITY_DIR:PATH=//p' "$build/CMakeCache.txt")
hf_parity_line=""
for m in llama-tiny qwen3-tiny llama-8b; do
  f="$hf_parity_dir/$m/parity.txt"
  if [ ! -f "$f" ]; then
    hf_parity_line+="$m not run; "
    continue
  fi
  cat "$f"
  if grep -q "FAILED" "$f"; then
    hf_parity_line+="$m FAILED; "
  else
    hf_parity_line+="$m ok ($(grep -o "transformers' [0-9]* of [0-9]*" "$f" |
      sed "s/transformers' //") tokens equal); "
  fi
done

# compute-sanitizer (memcheck) over the op tests: every kernel's out-of-bounds and misaligned
# accesses, on the same awkward sizes. The runner suites are left out (slow under the tool).
sanitizer_line="not run (compute-sanitizer not found)"
if [ "${ATOM_CHECK_SANITIZER:-1}" = 0 ]; then
  sanitizer_line="skipped (ATOM_CHECK_SANITIZER=0)"
elif command -v compute-sanitizer >/dev/null; then
  # Everything in test_cuda but the runner suites, the profiler's (CUPTI and the sanitizer
  # both hook the driver) and the multi-GPU ones (NCCL's peer-to-peer traffic).
  ops_filter='-*CudaRunner*:*Profil*:*Cupti*:*Trace*:*Parity*:*TpRunner*:*NcclComm*'
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 \
    "$build/tests/test_cuda" --gtest_filter="$ops_filter" >"$build.sanitizer.log" 2>&1
  status=$?
  if [ $status -eq 0 ]; then
    sanitizer_line="clean: $(grep -E "ERROR SUMMARY" "$build.sanitizer.log" | tail -1)"
    sanitizer_line="$sanitizer_line, $(grep -E "tests from .* ran" "$build.sanitizer.log" | tail -1)"
  else
    rc=1
    sanitizer_line="FAILED (exit $status$([ $status = 124 ] && echo ": timed out")):"
    sanitizer_line="$sanitizer_line $(grep -E "ERROR SUMMARY" "$build.sanitizer.log" | tail -1)"
    grep -E "Invalid|ERROR|FAILED" "$build.sanitizer.log" | head -20
  fi
fi

# Benchmarks of the CUDA runner end to end with dummy weights and the test tokenizer, each with
# CUDA graphs and with --enforce-eager in the same run (the baseline).
#  - throughput: `atom bench throughput` on a small Llama shape (head_dim 64);
#  - decode at batch 1 on the Llama-3.1-8B shape: one 128-token prompt, 256 new tokens.
tok_files=(tests/data/hf_models/llama-tiny/tokenizer.json
           tests/data/hf_models/llama-tiny/tokenizer_config.json)
bench_model="$build/bench-llama"
mkdir -p "$bench_model"
cp "${tok_files[@]}" "$bench_model/"
cat >"$bench_model/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
 "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8,
 "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
 "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
 "tie_word_embeddings": false, "vocab_size": 1508, "bos_token_id": 1502, "eos_token_id": 1503}
JSON
llama8b="$build/bench-llama-8b"
mkdir -p "$llama8b"
cp "${tok_files[@]}" "$llama8b/"
cat >"$llama8b/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
 "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
 "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
 "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
 "tie_word_embeddings": false, "vocab_size": 128256, "bos_token_id": 1502, "eos_token_id": 1503}
JSON
bench() {  # name, atom bench throughput args...: prints "<name>: <throughput line>"
  local name=$1; shift
  local log="$build.bench-$name.log"
  local cmd=("$build/atom" bench throughput --load-format dummy --device cuda "$@")
  echo "bench $name: ${cmd[*]}" >&2
  if timeout 400 "${cmd[@]}" >"$log" 2>&1; then
    grep -E "GPU memory budget|cudagraph capture|warm-up|weights uploaded" "$log" | sed 's/^/  /' >&2
    echo "$(grep -E "^throughput:" "$log" | sed 's/^throughput: //')"
  else
    grep -E "rror" "$log" | tail -3 >&2
    echo "FAILED"
    return 1
  fi
}
small=(--model "$bench_model" --num-seqs 128 --input-len-range 64,256 --output-len-range 64,128
       --max-model-len 512)
b1_8b=(--model "$llama8b" --num-seqs 1 --input-len-range 128,128 --output-len-range 256,256
       --max-model-len 1024 --max-num-seqs 16)
bench_small=$(bench small-graphs "${small[@]}") || rc=1
bench_small_eager=$(bench small-eager "${small[@]}" --enforce-eager) || rc=1
bench_8b="skipped (ATOM_CHECK_BENCH_8B=0)"
bench_8b_eager=$bench_8b
if [ "${ATOM_CHECK_BENCH_8B:-1}" != 0 ]; then
  bench_8b=$(bench 8b-b1-graphs "${b1_8b[@]}") || rc=1
  bench_8b_eager=$(bench 8b-b1-eager "${b1_8b[@]}" --enforce-eager) || rc=1
fi
# The end-to-end server tests against `atom serve` on this GPU, when the default model is here.
e2e_line="skipped (ATOM_CHECK_E2E=0)"
if [ "${ATOM_CHECK_E2E:-1}" != 0 ]; then
  model_file="${ATOM_CACHE_DIR:-$HOME/.cache/atom}/models/$(sed -n 's/^GGUF_NAME=//p' scripts/fetch-model.sh)"
  if [ -n "${ATOM_MODEL_PARTS:-}" ] || [ -f "$model_file" ]; then
    ATOM_BUILD_DIR="$build" timeout 450 scripts/gpu-e2e.sh -q -p no:cacheprovider \
      >"$build.e2e.log" 2>&1 || rc=1
    e2e_line=$(grep -E "[0-9]+ (passed|failed)" "$build.e2e.log" | tail -1)
    grep -E "^FAILED" "$build.e2e.log" | head -10
  else
    e2e_line="NOT RUN: the default model is not on this host (ATOM_MODEL_PARTS=DIR of its pieces)"
  fi
fi
echo
echo "| step | result |"
echo "|---|---|"
echo "| GPU | ${gpu:-none} |"
echo "| build | ok |"
echo "| gpu tests | ${gpu_line#gpu: } |"
echo "| cpu tests | ${cpu_line#cpu: } |"
echo "| hf parity (vs transformers, same weights) | ${hf_parity_line%; } |"
echo "| compute-sanitizer memcheck (op tests) | ${sanitizer_line} |"
echo "| bench throughput, dummy 8x1024 Llama, 128 seqs: graphs | ${bench_small} |"
echo "| same, --enforce-eager | ${bench_small_eager} |"
echo "| batch-1 decode, Llama-3.1-8B shape, 128 in / 256 out: graphs | ${bench_8b} |"
echo "| same, --enforce-eager | ${bench_8b_eager} |"
echo "| e2e server tests (atom serve on the GPU) | ${e2e_line:-FAILED} |"
exit $rc
