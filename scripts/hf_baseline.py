#!/usr/bin/env python3
"""transformers on the same shape as atom's benchmark, random weights on the GPU ([F2]'s baseline).

  python3 scripts/hf_baseline.py --config DIR/config.json --output-json OUT.json

Measures, with CUDA synchronisation around each timed call and the median of repeats:
  - batch-1 decode: a 128-token prompt, 256 new tokens (greedy, KV cache), reported as decode
    tokens/s = 255 / (time(256 tokens) - time(1 token));
  - prefill: one 4096-token prompt (time of a 1-token generate);
  - a batched generate: 64 prompts of 128 tokens, 256 new tokens each, output tokens/s.
Run on a GPU host (torch, transformers); the weights are random, so only speed is compared.
--save-dir DIR also writes the random model there as a safetensors checkpoint (save_pretrained),
which gpu-bench.sh then times atom's start-up from (the files are in the page cache by then).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a HF config.json")
    ap.add_argument("--output-json", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--save-dir", help="save the random model here (safetensors) at the end")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(Path(args.config).parent))
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype" if major >= 5 else "torch_dtype": torch.bfloat16}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device("cuda"):  # made and initialised on the GPU
        model = AutoModelForCausalLM.from_config(cfg, **dtype_kw)
    model.eval()
    build_s = time.perf_counter() - t0
    vocab = min(cfg.vocab_size, 10000)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def prompts(batch: int, length: int):
        return torch.randint(0, vocab, (batch, length), device="cuda", generator=gen)

    @torch.inference_mode()
    def timed_generate(ids, new_tokens: int) -> float:
        times = []
        for i in range(args.repeats + 1):  # the first run warms up
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=0)
            torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - start)
            assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
        return statistics.median(times)

    one = prompts(1, 128)
    t_first = timed_generate(one, 1)
    t_all = timed_generate(one, 256)
    decode_tps = 255.0 / (t_all - t_first)
    prefill_4096_s = timed_generate(prompts(1, 4096), 1)
    batch = prompts(64, 128)
    t_batch = timed_generate(batch, 256)
    result = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "build_seconds": build_s,
        "decode_b1_tokens_per_s": decode_tps,
        "prefill_1x4096_seconds": prefill_4096_s,
        "batched_64x128_256_output_tokens_per_s": 64 * 256 / t_batch,
    }
    Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.save_dir:
        t0 = time.perf_counter()
        model.save_pretrained(args.save_dir, safe_serialization=True)
        print(f"saved to {args.save_dir} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
