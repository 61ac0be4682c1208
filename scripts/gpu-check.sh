#!/usr/bin/env bash
# One command for a GPU host: configure with CUDA (sm_90a), build, run every GPU test and the CPU
# op tests they are checked against, benchmark the CUDA runner on a tiny dummy model, and print a
# short summary table last. Build dependencies come from ./.deps when present
# (packed Debian packages, see the README), else from the system.
#   scripts/gpu-check.sh [extra ctest args]
# ATOM_CHECK_CPU_ORACLES=0 skips building and running the CPU op suites (a quicker GPU-only run).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${ATOM_BUILD_DIR:-build-gpu}
prefix=()
if [ -d .deps/usr ]; then
  prefix=(-DCMAKE_PREFIX_PATH="$PWD/.deps/usr")
  export LD_LIBRARY_PATH="$PWD/.deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  export PKG_CONFIG_PATH="$PWD/.deps/usr/lib/x86_64-linux-gnu/pkgconfig:$PWD/.deps/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
fi
# The packed libcurl needs libssh2 and OpenLDAP, which a bare GPU host lacks, so nothing that
# links it (the atom binary, every suite over the engine) would link or load. Where it cannot load
# and the host has a libcurl of its own, use the host's: the packed headers declare the same ABI.
deps_lib=.deps/usr/lib/x86_64-linux-gnu
if [ -e "$deps_lib/libcurl.so.4" ] && ldd "$deps_lib/libcurl.so.4" | grep -q "not found" &&
   [ -e /usr/lib/x86_64-linux-gnu/libcurl.so.4 ]; then
  echo "packed libcurl cannot load here: using the host's /usr/lib/x86_64-linux-gnu/libcurl.so.4"
  rm -f "$deps_lib"/libcurl.so*
  ln -s /usr/lib/x86_64-linux-gnu/libcurl.so.4 "$deps_lib/libcurl.so"
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none found}"

status_build=ok
# ATOM_HTTP_TESTS=OFF: the mock-Hub and serving-benchmark suites need cpp-httplib's OpenSSL,
# zlib and brotli headers, which the packed dependencies leave out; CI runs them.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATOM_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DATOM_HTTP_TESTS=OFF "${prefix[@]}" >"$build.configure.log" 2>&1 || status_build=FAILED
# The GPU tests, the atom binary (for the benchmark) and the CPU ops the kernels are checked
# against.
cpu_oracles=${ATOM_CHECK_CPU_ORACLES:-1}
targets=(test_cuda atom)
[ "$cpu_oracles" = 0 ] || targets+=(test_cpu test_quants)
[ "$status_build" = ok ] && {
  ninja -C "$build" "${targets[@]}" >"$build.build.log" 2>&1 || status_build=FAILED
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
cpu_line="skipped (ATOM_CHECK_CPU_ORACLES=0)"
if [ "$cpu_oracles" != 0 ]; then
  cpu_line=$(summary cpu -L '^(cpu|quants)$' -j 8 "$@") || rc=1
fi
# The runner tests' figures (worst logit error, greedy tokens matched), which ctest keeps quiet.
"$build/tests/test_cuda" --gtest_filter='*CudaRunner*' 2>&1 | grep -E "^\[cuda runner" || true

# The CUDA runner end to end: `atom bench throughput` on a small Llama shape with dummy weights
# (head_dim 64) and the test tokenizer. Baseline: the same command on --device cpu is far too
# slow to run here; compare with earlier runs of this line on the same GPU.
bench_model="$build/bench-llama"
mkdir -p "$bench_model"
cp tests/data/hf_models/llama-tiny/tokenizer.json tests/data/hf_models/llama-tiny/tokenizer_config.json \
  "$bench_model/"
cat >"$bench_model/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
 "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8,
 "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
 "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
 "tie_word_embeddings": false, "vocab_size": 1508, "bos_token_id": 1502, "eos_token_id": 1503}
JSON
bench_cmd=("$build/atom" bench throughput --model "$bench_model" --load-format dummy --device cuda
           --num-seqs 128 --input-len-range 64,256 --output-len-range 64,128 --max-model-len 512)
echo "bench: ${bench_cmd[*]}"
bench_line="FAILED"
if timeout 300 "${bench_cmd[@]}" >"$build.bench.log" 2>&1; then
  bench_line=$(grep -E "^throughput:" "$build.bench.log" | sed 's/^throughput: //')
else
  rc=1
fi
grep -E "GPU memory budget|^requests:|^throughput:|rror" "$build.bench.log" | tail -5
echo
echo "| step | result |"
echo "|---|---|"
echo "| GPU | ${gpu:-none} |"
echo "| build | ok |"
echo "| gpu tests | ${gpu_line#gpu: } |"
echo "| cpu tests | ${cpu_line#cpu: } |"
echo "| bench throughput (cuda, dummy 8x1024 Llama, 128 seqs) | ${bench_line} |"
exit $rc
