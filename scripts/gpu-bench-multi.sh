#!/usr/bin/env bash
# [H]'s benchmarks on a host with 2 or 4 GPUs, after scripts/gpu-check.sh built build-gpu (or
# ATOM_CHECK_TARGETS=atom scripts/gpu-check.sh), dummy weights at real shapes:
#   tp      batch-1 decode TPOT (atom bench latency, 128 in / 256 out) with -tp 1, 2 and 4 (as
#           many as there are GPUs) on the Llama-3.1-8B shape, with
#           ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION=1 and =0
#   tp70    the same at -tp 4 on a Llama-3.1-70B shape (4 GPUs)
#   serve   serving throughput, random 1024/1024, concurrency 64, 256 prompts, for each -tp
#   serve70 the same at -tp 4 on the Llama-3.1-70B shape (4 GPUs; on 2 GPUs at -tp 2, which
#           needs cards of more than 80 GB: the weights are 70.5 GB a rank)
#   dp      serving at concurrency 256 and 512 (ATOM_BENCH_DP_CONCURRENCY; 1024/1024, at least
#           1024 prompts): -dp 1 against -dp 2, each replica on its own GPU (target >= 1.9x)
# Results go to $ATOM_BUILD_DIR/bench-multi/ (one JSON or log per run); a table at the end.
#   scripts/gpu-bench-multi.sh [tp] [tp70] [serve] [serve70] [dp]
# ATOM_BENCH_DRY=1 runs the dp step on the CPU with a tiny model and tiny lengths (it checks the
# script, not the speed); tp needs CUDA and is skipped there.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${ATOM_BUILD_DIR:-build-gpu}
atom="$build/atom"
out="$build/bench-multi"
mkdir -p "$out"
# shellcheck source=scripts/gpu-deps-env.sh
. scripts/gpu-deps-env.sh
export NCCL_NVLS_ENABLE=0  # never NVLink multicast (see ../shared/GPU.md)
[ -x "$atom" ] || { echo "gpu-bench-multi: $atom not built" >&2; exit 1; }
dry=${ATOM_BENCH_DRY:-0}
only=" $* "
want() { [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; }
rc=0
gpus=0
if [ "$dry" != 1 ]; then
  gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
fi
echo "gpu-bench-multi: $gpus GPU(s)$([ "$dry" = 1 ] && echo ', dry run on the CPU')" >&2

tok_files=(tests/data/hf_models/llama-tiny/tokenizer.json
           tests/data/hf_models/llama-tiny/tokenizer_config.json)
model_dir() {  # NAME CONFIG_JSON: a folder with the config and the test tokenizer
  mkdir -p "$out/$1"
  cp "${tok_files[@]}" "$out/$1/"
  printf '%s\n' "$2" >"$out/$1/config.json"
  echo "$out/$1"
}
llama() {  # NAME HIDDEN INTER LAYERS HEADS KV_HEADS: a Llama-3.1 shaped config
  model_dir "$1" "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\",
  \"dtype\": \"bfloat16\", \"hidden_size\": $2, \"intermediate_size\": $3,
  \"num_hidden_layers\": $4, \"num_attention_heads\": $5, \"num_key_value_heads\": $6,
  \"head_dim\": $(($2 / $5)), \"hidden_act\": \"silu\", \"max_position_embeddings\": 131072,
  \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 8.0,
  \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192,
  \"rope_type\": \"llama3\"}, \"tie_word_embeddings\": false, \"vocab_size\": 128256,
  \"bos_token_id\": 1502, \"eos_token_id\": 1503}"
}
if [ "$dry" = 1 ]; then
  device=(--device cpu)
  m8=$(llama dry-llama 64 128 2 4 2)
  scale=16
else
  device=(--device cuda)
  m8=$(llama llama-3.1-8b 4096 14336 32 32 8)
  m70=$(llama llama-3.1-70b 8192 28672 80 64 8)
  scale=1
fi
len() { echo $(( $1 / scale > 0 ? $1 / scale : 1 )); }

step() {  # NAME COMMAND...: runs it with its log in $out/NAME.log
  local name=$1; shift
  echo "== $name: $*" >&2
  if ! "$@" >"$out/$name.log" 2>&1; then
    echo "   FAILED (see $out/$name.log):" >&2
    tail -n 5 "$out/$name.log" >&2
    rc=1
    return 1
  fi
}

# serve_bench NAME MODEL CONCURRENCY PROMPTS SERVER_FLAGS...: atom serve, atom bench serve
# against it.
serve_bench() {
  local name=$1 model=$2 c=$3 n=$4
  shift 4
  local port=$((20000 + RANDOM % 20000))
  "$atom" serve --model "$model" --load-format dummy "${device[@]}" --host 127.0.0.1 \
    --server-port "$port" --max-model-len 4096 --max-num-batched-tokens 2048 "$@" \
    >"$out/$name-server.log" 2>&1 &
  local server=$!
  local up=""
  for _ in $(seq 1 1800); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$up" ]; then
    echo "   $name: the server never became ready (see $out/$name-server.log)" >&2
    tail -n 5 "$out/$name-server.log" >&2
    rc=1
  else
    step "$name" "$atom" bench serve --backend vllm --port "$port" --model "$model" \
      --tokenizer "$model" --dataset-name random --random-input-len "$(len 1024)" \
      --random-output-len "$(len 1024)" --random-range-ratio 1.0 --ignore-eos \
      --max-concurrency "$c" --num-prompts "$n" --save-result --result-dir "$out" \
      --result-filename "$name.json" || true
  fi
  kill -TERM "$server" 2>/dev/null
  wait "$server" 2>/dev/null
}

tps=()
for t in 1 2 4; do [ "$t" -le "$gpus" ] && tps+=("$t"); done
if want tp && [ "$dry" != 1 ]; then
  for t in "${tps[@]}"; do
    for fuse in 1 0; do
      [ "$t" = 1 ] && [ "$fuse" = 0 ] && continue  # no all-reduce at tp 1
      ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION=$fuse step "tp$t-fuse$fuse-8b" "$atom" bench latency \
        --model "$m8" --load-format dummy "${device[@]}" -tp "$t" --batch-size 1 \
        --input-len 128 --output-len 256 --num-iters-warmup 2 --num-iters 5 \
        --max-model-len 1024 --max-num-seqs 16 --output-json "$out/tp$t-fuse$fuse-8b.json"
    done
  done
fi
if want tp70 && [ "$dry" != 1 ]; then
  if [ "$gpus" -ge 4 ]; then
    for fuse in 1 0; do
      ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION=$fuse step "tp4-fuse$fuse-70b" "$atom" bench latency \
        --model "$m70" --load-format dummy "${device[@]}" -tp 4 --batch-size 1 \
        --input-len 128 --output-len 256 --num-iters-warmup 2 --num-iters 5 \
        --max-model-len 1024 --max-num-seqs 16 --output-json "$out/tp4-fuse$fuse-70b.json"
    done
  else
    echo "   tp70: needs 4 GPUs, $gpus here" >&2
  fi
fi
if want serve && [ "$dry" != 1 ]; then
  for t in "${tps[@]}"; do serve_bench "serve-tp$t-c64" "$m8" 64 256 -tp "$t"; done
fi
if want serve70 && [ "$dry" != 1 ]; then
  t70=$((gpus >= 4 ? 4 : gpus))
  if [ "$t70" -ge 2 ]; then
    serve_bench "serve70-tp$t70-c64" "$m70" 64 256 -tp "$t70"
  else
    echo "   serve70: needs 2 GPUs (4 for -tp 4), $gpus here" >&2
  fi
fi
if want dp; then
  if [ "$dry" = 1 ] || [ "$gpus" -ge 2 ]; then
    for c in ${ATOM_BENCH_DP_CONCURRENCY:-256 512}; do
      n=$([ "$dry" = 1 ] && echo 64 || echo $(( 2 * c > 1024 ? 2 * c : 1024 )))
      serve_bench "serve-dp1-c$c" "$m8" "$c" "$n"
      serve_bench "serve-dp2-c$c" "$m8" "$c" "$n" -dp 2
    done
  else
    echo "   dp: needs 2 GPUs, $gpus here" >&2
  fi
fi

python3 - "$out" <<'EOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
print("\n| run | figure |")
print("|---|---|")
for p in sorted(out.glob("tp*-fuse*.json")):
    j = json.loads(p.read_text())
    tps = j.get("median_decode_tokens_per_s") or 0
    print(f"| {p.stem}: batch-1 decode | {tps:,.1f} tok/s = {1000 / tps if tps else 0:.2f} ms TPOT |")
def kv_tokens(stem):
    """Tokens the KV cache holds, per rank, from the server's start-up lines."""
    log = out / f"{stem}-server.log"
    if not log.exists():
        return "?"
    found = re.findall(r"(\d+) KV blocks of (\d+) tokens", log.read_text(errors="replace"))
    return " + ".join(f"{int(n) * int(b):,}" for n, b in found) or "?"
for p in sorted(out.glob("serve*.json")):
    j = json.loads(p.read_text())
    print(f"| {p.stem} | {j['output_throughput']:,.0f} out tok/s, median TTFT "
          f"{j['median_ttft_ms']:,.0f} ms, TPOT {j['median_tpot_ms']:.2f} ms; KV holds "
          f"{kv_tokens(p.stem)} tokens |")
for p in sorted(out.glob("serve-dp1-c*.json")):
    c = p.stem.split("-c")[-1]
    one, two = load(p.name), load(f"serve-dp2-c{c}.json")
    if one and two:
        r = two["output_throughput"] / one["output_throughput"]
        print(f"| -dp 2 / -dp 1 at concurrency {c} | {r:.2f}x (target >= 1.9x) |")
EOF
exit $rc
