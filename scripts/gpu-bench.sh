#!/usr/bin/env bash
# [F2]'s benchmarks in one go on a GPU host, after scripts/gpu-check.sh built build-gpu (or with
# ATOM_CHECK_TARGETS=atom scripts/gpu-check.sh): the card's ceilings (copy bandwidth, bf16 GEMM
# rate) measured first, then on dummy weights at real shapes
#   1. batch-1 decode, Llama-3.1-8B shape, 128-token prompt, 256 new tokens (atom bench latency)
#   2. prefill, 8B shape: one 4096-token prompt; 16 prompts of 1024 (atom bench latency)
#   3. offline throughput, Qwen3-0.6B shape, 256 seqs, lengths uniform in 100..1024, seed 0
#   4. serving, 8B shape: atom serve + atom bench serve, random 1024/1024, ratio 1.0, ignore-eos,
#      concurrency 1, 16, 64, 256 with 4x as many prompts (at least 32)
#   5. start-up to ready of that server, and of one reading an 8B safetensors checkpoint that
#      scripts/hf_baseline.py saved (in the page cache)
#   timeline: one profiled decode run at batch 1 and 64, summarised kernel by kernel
#   6. transformers on the same random-weight shape (scripts/hf_baseline.py), and the previous
#      run's figures (docs/bench-results.json, committed with each recorded run)
# and prints one table: figure, target, roofline from the measured ceilings, baselines
# (scripts/bench_table.py). Results go to $ATOM_BUILD_DIR/bench-results/; the new summary to
# bench-results/summary.json (copy it over docs/bench-results.json when recording a run).
#   scripts/gpu-bench.sh [only...]    e.g. scripts/gpu-bench.sh decode prefill
# ATOM_BENCH_CONCURRENCY="64 256" serves only these concurrencies (default: 1 16 64 256);
# ATOM_BENCH_SERVE_C<c>="flags" replaces the server flags of concurrency c (see serve_flags).
# ATOM_BENCH_DRY=1 runs every step on the CPU with a tiny model and tiny lengths: it checks this
# script and the table, not the engine's speed (no ceilings, no transformers baseline).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${ATOM_BUILD_DIR:-build-gpu}
atom="$build/atom"
out="$build/bench-results"
mkdir -p "$out"
# shellcheck source=scripts/gpu-deps-env.sh
. scripts/gpu-deps-env.sh
[ -x "$atom" ] || { echo "gpu-bench: $atom not built (scripts/gpu-check.sh builds it)" >&2; exit 1; }
dry=${ATOM_BENCH_DRY:-0}
only=" $* "
want() { [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; }
rc=0

tok_files=(tests/data/hf_models/llama-tiny/tokenizer.json
           tests/data/hf_models/llama-tiny/tokenizer_config.json)
# model_dir NAME CONFIG_JSON: a folder with the config and the test tokenizer (dummy weights).
model_dir() {
  mkdir -p "$out/$1"
  cp "${tok_files[@]}" "$out/$1/"
  printf '%s\n' "$2" >"$out/$1/config.json"
  echo "$out/$1"
}
if [ "$dry" = 1 ]; then
  device=(--device cpu)
  tiny='{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": false,
  "vocab_size": 1508, "bos_token_id": 1502, "eos_token_id": 1503}'
  llama8b=$(model_dir dry-llama "$tiny")
  qwen06=$llama8b
  scale=16  # lengths divided by this
else
  device=(--device cuda)
  llama8b=$(model_dir llama-3.1-8b '{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "dtype": "bfloat16", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
  "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
  "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "tie_word_embeddings": false,
  "vocab_size": 128256, "bos_token_id": 1502, "eos_token_id": 1503}')
  qwen06=$(model_dir qwen3-0.6b '{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
  "dtype": "bfloat16", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
  "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
  "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "tie_word_embeddings": true, "attention_bias": false, "vocab_size": 151936,
  "bos_token_id": 1502, "eos_token_id": 1503}')
  scale=1
fi
len() { echo $(( $1 / scale > 0 ? $1 / scale : 1 )); }
dummy=(--load-format dummy "${device[@]}")

step() {  # name, command...: runs it with its log in $out/<name>.log
  local name=$1; shift
  echo "== $name: $*" >&2
  if ! "$@" >"$out/$name.log" 2>&1; then
    echo "   FAILED (see $out/$name.log):" >&2
    tail -n 5 "$out/$name.log" >&2
    rc=1
    return 1
  fi
}

if want ceilings && [ "$dry" != 1 ]; then
  step ceilings "$atom" bench ceilings --output-json "$out/ceilings.json"
fi
if want decode; then
  step decode "$atom" bench latency --model "$llama8b" "${dummy[@]}" --batch-size 1 \
    --input-len "$(len 128)" --output-len "$(len 256)" --num-iters-warmup 2 --num-iters 5 \
    --max-model-len 1024 --max-num-seqs 16 --output-json "$out/decode.json"
fi
if want prefill; then
  step prefill-1x4096 "$atom" bench latency --model "$llama8b" "${dummy[@]}" --batch-size 1 \
    --input-len "$(len 4096)" --output-len 1 --num-iters-warmup 2 --num-iters 5 \
    --max-model-len 4608 --max-num-seqs 16 --max-num-batched-tokens 16384 \
    --output-json "$out/prefill-1x4096.json"
  step prefill-16x1024 "$atom" bench latency --model "$llama8b" "${dummy[@]}" --batch-size 16 \
    --input-len "$(len 1024)" --output-len 1 --num-iters-warmup 2 --num-iters 5 \
    --max-model-len 1536 --max-num-seqs 16 --max-num-batched-tokens 16384 \
    --output-json "$out/prefill-16x1024.json"
fi
if want timeline; then
  # One profiled decode run at batch 1 and at batch 64 (8B shape): the kernel-by-kernel
  # breakdown of a decode step (scripts/trace_summary.py) that the roofline gap is read from.
  for b in 1 64; do
    rm -rf "$out/trace-b$b"
    step "timeline-b$b" "$atom" bench latency --model "$llama8b" "${dummy[@]}" --batch-size "$b" \
      --input-len "$(len 128)" --output-len "$(len 128)" --num-iters-warmup 1 --num-iters 1 \
      --max-model-len 1024 --max-num-seqs 64 --profile --torch-profiler-dir "$out/trace-b$b" &&
      python3 scripts/trace_summary.py "$(ls "$out/trace-b$b"/rank_0/*.pt.trace.json.gz)" \
        --json "$out/timeline-b$b.json" | tee "$out/timeline-b$b.txt" >&2
  done
fi
if want throughput; then
  n=256
  [ "$dry" = 1 ] && n=16
  step throughput "$atom" bench throughput --model "$qwen06" "${dummy[@]}" --num-seqs "$n" \
    --input-len-range "$(len 100),$(len 1024)" --output-len-range "$(len 100),$(len 1024)" \
    --seed 0 --max-model-len 2048
  # The same with an fp8 e4m3 KV cache: at 256 sequences the step is mostly KV reads.
  if [ "$dry" != 1 ]; then
    step throughput-fp8kv "$atom" bench throughput --model "$qwen06" "${dummy[@]}" \
      --num-seqs "$n" --input-len-range 100,1024 --output-len-range 100,1024 --seed 0 \
      --max-model-len 2048 --kv_cache_dtype fp8
  fi
fi
# start_server MODEL_DIR LOG [flags...]: starts `atom serve` in the background ($server, $port)
# and waits for /health; $ready is the seconds from launch to ready, empty if it never was.
start_server() {
  local model=$1 log=$2
  shift 2
  port=$((20000 + RANDOM % 20000))
  local t0
  t0=$(date +%s.%N)
  "$atom" serve --model "$model" "${device[@]}" --host 127.0.0.1 --server-port "$port" "$@" \
    >"$log" 2>&1 &
  server=$!
  ready=""
  for _ in $(seq 1 1200); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
      ready=$(python3 -c "import time; print(time.time() - $t0)")
      return 0
    fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  echo "   serve: the server never became ready (see $log)" >&2
  tail -n 5 "$log" >&2
  rc=1
  return 1
}
stop_server() {
  kill -INT "$server" 2>/dev/null
  wait "$server" 2>/dev/null
}

# serve_flags CONCURRENCY: the server flags that concurrency is measured with (ATOM_BENCH_SERVE_C<c>
# overrides them). Throughput (c = 1, 64, 256): steps of up to 16384 tokens and an fp8 e4m3 KV
# cache, which halves the KV bytes every decode step reads (at c=256 they are most of the step).
# c=16's TTFT: steps of up to 4096 tokens, so requests that arrive together get their first
# tokens a few at a time instead of all after one long step (with a single 16384-token step the
# first wave's 16 prompts all wait for the whole wave).
serve_flags() {
  local var="ATOM_BENCH_SERVE_C$1"
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  if [ "$1" = 16 ]; then echo "--max-num-batched-tokens 4096"; return; fi
  # The CPU has no fp8 KV cache.
  echo "--max-num-batched-tokens 16384$([ "$dry" = 1 ] || echo " --kv_cache_dtype fp8")"
}
if want serve; then
  # One server per concurrency (start-up is seconds), each with its own flags, the first one's
  # start-up to ready timed.
  timed=""
  for c in ${ATOM_BENCH_CONCURRENCY:-1 16 64 256}; do
    read -r -a flags <<<"$(serve_flags "$c")"
    echo "== serve c=$c: atom serve --model $llama8b --load-format dummy ${flags[*]}" >&2
    start_server "$llama8b" "$out/serve-c$c-server.log" --load-format dummy \
      --max-model-len 4096 "${flags[@]}" || continue
    [ -n "$timed" ] || printf '{"startup_seconds": %s}\n' "$ready" >"$out/startup.json"
    timed=1
    printf '%s\n' "${flags[*]}" >"$out/serve-c$c.flags"
    prompts=$(( 4 * c < 32 ? 32 : 4 * c ))
    [ "$dry" = 1 ] && prompts=$(( c < 8 ? 8 : c ))
    step "serve-c$c" "$atom" bench serve --backend vllm --port "$port" \
      --model "$llama8b" --tokenizer "$llama8b" --dataset-name random \
      --random-input-len "$(len 1024)" --random-output-len "$(len 1024)" \
      --random-range-ratio 1.0 --ignore-eos --max-concurrency "$c" --num-prompts "$prompts" \
      --save-result --result-dir "$out" --result-filename "serve-c$c.json" || true
    stop_server
  done
fi
if want hf && [ "$dry" = 1 ]; then
  # No transformers here: time the start-up from the test's tiny safetensors checkpoint.
  if start_server tests/data/hf_models/llama-tiny "$out/startup-safetensors.log"; then
    printf '{"startup_seconds": %s}\n' "$ready" >"$out/startup-safetensors.json"
    stop_server
  fi
elif want hf; then
  # Also saves the random model as safetensors: atom's start-up from a real checkpoint (in the
  # page cache, just written) is timed from it.
  saved="$out/llama-3.1-8b-safetensors"
  rm -rf "$saved"
  step hf-baseline python3 scripts/hf_baseline.py --config "$llama8b/config.json" \
    --output-json "$out/hf-baseline.json" --save-dir "$saved" &&
    cp "${tok_files[@]}" "$saved/" &&
    if start_server "$saved" "$out/startup-safetensors.log" --max-model-len 4096; then
      printf '{"startup_seconds": %s}\n' "$ready" >"$out/startup-safetensors.json"
      stop_server
    fi
  rm -rf "$saved"
fi

python3 scripts/bench_table.py --results "$out" --previous docs/bench-results.json \
  --config-8b "$llama8b/config.json" --config-0.6b "$qwen06/config.json" \
  --summary "$out/summary.json" $([ "$dry" = 1 ] && echo --dry) \
  --commit "${ATOM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" || rc=1
exit $rc
