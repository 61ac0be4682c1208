#!/usr/bin/env python3
"""Random-weight Hugging Face checkpoints made on the GPU and what transformers computes with
them: the reference of atom's parity tests (tests/hf_parity, ctest fixture hf_parity_reference).

Models (bf16, built from a config with a fixed seed, directly on the device):
  llama-tiny  LlamaForCausalLM, 4 layers, hidden 512, 8 heads / 2 KV heads (GQA 4), head_dim 64,
              untied LM head, rope_theta 500000 with Llama-3 rope scaling
  qwen3-tiny  Qwen3ForCausalLM, 3 layers, hidden 384, 4 heads / 2 KV heads (GQA 2), head_dim 128
              (!= hidden / heads), q/k norms, tied embeddings
  llama-8b    the Llama-3.1-8B config exactly (hidden 4096, 32 layers, 32 / 8 heads, intermediate
              14336, vocab 128256, llama3 rope scaling, max_position_embeddings 131072): 16 GB
Weights: transformers' own init, N(0, initializer_range) for matrices and embeddings, chosen so
the logits spread over a few units; RMSNorm weights (which the init leaves at one, where a
swapped or missing norm would go unnoticed) are redrawn uniform in [0.8, 1.2]; the LM head's
rows are scaled by log-normal factors (HEAD_ROW_SIGMA) so greedy choices are rarely near-ties.

For every prompt (token ids drawn from the seed; no tokenizer) the reference is transformers'
decoder in bf16 with its KV cache (eager attention for the tiny models, sdpa for the 8B) and the
LM head as atom computes it: the final hidden state (bf16) times the head weights in f32, giving
f32 logits (the bf16 logits of the model's own head are only 8 bits wide, ties at the top among
them are common, and atom's logits are f32). Greedy decoding takes the argmax for 32 steps.

OUT_DIR/<name>/ receives config.json and the safetensors (save_pretrained), then
  prefill_<p>.f32   logits of the last prompt position, [vocab] little-endian f32
  last_<p>.f32      logits of the last greedy step (prompt + 31 generated tokens), [vocab] f32
  prefill_f32_<p>.f32, last_f32_<p>.f32  the same rows from the model cast to f32 (exact
                    arithmetic on the same weights; the last step's context prefilled):
                    transformers' own bf16 error is the yardstick of atom's
  reference.json    {"name", "config" (the config.json fields atom must read back), "seed",
                     "initializer_range", "head_row_sigma", "attn_implementation",
                     "transformers_version",
                     "torch_version", "gpu", "new_tokens", "topk", "median_gap", "logit_rms",
                     "bf16_error" (max over those rows of max |bf16 - f32| / RMS),
                     "timings_s": {"build", "save", "reference"},
                     "prompts": [{"prompt": [ids], "tokens": [32 greedy ids],
                                  "gaps": [top1 - top2 per step], "rms": [row RMS per step],
                                  "topk_ids": [[8] per step], "topk_logits": [[8] per step],
                                  "prefill_logits": file, "last_logits": file,
                                  "prefill_f32_logits": file, "last_f32_logits": file,
                                  "bf16_error"}]}
reference.json is written last: its presence means the folder is complete.

usage: scripts/hf_reference.py OUT_DIR [--only NAME] [--device cuda]
       scripts/hf_reference.py --remove-weights OUT_DIR   (the fixture's cleanup: the 8B's 16 GB)
Needs torch, transformers (4.51+ for Qwen3; 5.x reads the same), safetensors, numpy.
"""

import argparse
import inspect
import json
import pathlib
import shutil
import statistics
import sys
import time

import numpy as np

NEW_TOKENS = 32
TOPK = 8
# With i.i.d. Gaussian head rows the top two logits of a random model sit only ~0.2 x RMS apart
# (a third of the steps within 0.12 x RMS), so bf16 noise would decide many greedy steps; rows of
# log-normal norms (sigma 0.5) spread the top of the distribution: the median gap becomes
# ~0.8 x RMS and fewer than one step in ten falls within 0.12 x RMS.
HEAD_ROW_SIGMA = 0.5

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# config: what goes into the HF config (and what atom must read back from config.json).
# initializer_range: logits RMS ~ initializer_range * sqrt(hidden) after the final RMSNorm
# (1.8, 1.6 and 1.3 here), so the top logit stands a few units above the rest.
MODELS = {
    "llama-tiny": {
        "model_type": "llama", "architecture": "LlamaForCausalLM", "seed": 11,
        "initializer_range": 0.08, "head_row_sigma": HEAD_ROW_SIGMA, "attn": "eager",
        "prompt_lens": [1, 17, 54, 97],
        "config": {"vocab_size": 3000, "hidden_size": 512, "intermediate_size": 1376,
                   "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
                   "head_dim": 64, "rope_theta": 500000.0,
                   "rope_scaling": dict(LLAMA3_ROPE, original_max_position_embeddings=256),
                   "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
                   "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1},
    },
    "qwen3-tiny": {
        # Tied: the scaled rows are also the input embeddings, and at sigma 0.5 a token's own
        # large embedding makes it repeat itself; 0.3 keeps the outputs varied.
        "model_type": "qwen3", "architecture": "Qwen3ForCausalLM", "seed": 12,
        "initializer_range": 0.08, "head_row_sigma": 0.3, "attn": "eager",
        "prompt_lens": [1, 17, 54, 97],
        "config": {"vocab_size": 2000, "hidden_size": 384, "intermediate_size": 1024,
                   "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "head_dim": 128, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                   "max_position_embeddings": 4096, "tie_word_embeddings": True,
                   "bos_token_id": 0, "eos_token_id": 1},
    },
    "llama-8b": {
        "model_type": "llama", "architecture": "LlamaForCausalLM", "seed": 13,
        "initializer_range": 0.02, "head_row_sigma": HEAD_ROW_SIGMA, "attn": "sdpa",
        "prompt_lens": [1, 128],
        "config": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "head_dim": 128, "rope_theta": 500000.0, "rope_scaling": dict(LLAMA3_ROPE),
                   "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
                   "tie_word_embeddings": False, "bos_token_id": 128000,
                   "eos_token_id": [128001, 128008, 128009]},
    },
}


def effective_rope(cfg) -> dict:
    """rope_theta and scaling as the built config holds them (transformers 4: rope_theta +
    rope_scaling; 5: rope_parameters)."""
    params = getattr(cfg, "rope_parameters", None)
    if params:
        return dict(params)
    out = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    out.update(cfg.rope_scaling or {})
    return out


def check_built_config(name: str, spec: dict, cfg) -> None:
    """The config transformers built is the one intended: a silently dropped option would make
    the parity test compare the wrong models."""
    want = spec["config"]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings"):
        got = getattr(cfg, key)
        if got != want[key]:
            sys.exit(f"{name}: the built config has {key} = {got}, wanted {want[key]}")
    rope = effective_rope(cfg)
    if float(rope["rope_theta"]) != want["rope_theta"]:
        sys.exit(f"{name}: rope_theta {rope['rope_theta']}, wanted {want['rope_theta']}")
    for key, value in want.get("rope_scaling", {"rope_type": "default"}).items():
        if rope.get(key) != value:
            sys.exit(f"{name}: rope {key} = {rope.get(key)}, wanted {value} (rope: {rope})")


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(name: str, spec: dict, device: str):
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(spec["model_type"], **spec["config"],
                               initializer_range=spec["initializer_range"],
                               attn_implementation=spec["attn"])
    check_built_config(name, spec, cfg)
    # transformers 5 names the argument dtype, 4 torch_dtype.
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype" if major >= 5 else "torch_dtype": torch.bfloat16}
    torch.manual_seed(spec["seed"])
    with torch.device(device):  # parameters are made and initialised on the device
        model = AutoModelForCausalLM.from_config(cfg, **dtype_kw)
    model.eval()
    if type(model).__name__ != spec["architecture"]:
        sys.exit(f"{name}: transformers built {type(model).__name__}, not {spec['architecture']}")
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if tied != spec["config"]["tie_word_embeddings"]:
        sys.exit(f"{name}: LM head tied = {tied}, config says otherwise")
    gen = torch.Generator(device=device).manual_seed(spec["seed"] + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dtype != torch.bfloat16:
                sys.exit(f"{name}: parameter {pname} is {p.dtype}, not bfloat16")
            if pname.endswith("norm.weight"):
                p.uniform_(0.8, 1.2, generator=gen)
        # LM head rows scaled by exp(N(0, sigma^2)) (tied: the embeddings too), as a trained
        # model's rows differ in norm.
        head = model.lm_head.weight  # [vocab, hidden]
        sigma = spec["head_row_sigma"]
        scale = torch.randn(head.shape[0], 1, device=device, generator=gen) * sigma
        head.mul_(scale.exp().to(head.dtype))
    return model


def save(model, folder: pathlib.Path) -> None:
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4; 5 writes safetensors only
    model.save_pretrained(folder, **kwargs)
    if not list(folder.glob("*.safetensors")):
        sys.exit(f"{folder}: save_pretrained wrote no safetensors")


def prompts_for(spec: dict) -> list:
    import torch
    vocab = spec["config"]["vocab_size"]
    out = []
    for i, n in enumerate(spec["prompt_lens"]):
        g = torch.Generator().manual_seed(spec["seed"] * 1000 + i)
        out.append([int(t) for t in torch.randint(0, vocab, (n,), generator=g)])
    return out


def greedy_reference(model, prompt: list, device: str, folder: pathlib.Path, index: int) -> dict:
    """Prefill then NEW_TOKENS greedy steps with the KV cache; f32 logits from the bf16 hidden
    state (see the module comment)."""
    import torch
    body = model.model
    head = model.lm_head.weight.float()  # [vocab, hidden]
    # transformers 5.2x renamed the decoder's past_key_values argument to cache.
    cache_kw = "cache" if "cache" in inspect.signature(body.forward).parameters else \
        "past_key_values"
    ids = torch.tensor([prompt], device=device)
    out = body(input_ids=ids, use_cache=True)
    case = {"prompt": prompt, "tokens": [], "gaps": [], "rms": [], "topk_ids": [],
            "topk_logits": [], "prefill_logits": f"prefill_{index}.f32",
            "last_logits": f"last_{index}.f32"}
    for step in range(NEW_TOKENS):
        hidden = out.last_hidden_state[0, -1].float()  # [hidden], bf16 values
        logits = head @ hidden  # [vocab] f32
        top = torch.topk(logits, TOPK)
        vals = [float(v) for v in top.values]
        token = int(top.indices[0])
        case["tokens"].append(token)
        case["gaps"].append(vals[0] - vals[1])
        case["rms"].append(float(logits.square().mean().sqrt()))
        case["topk_ids"].append([int(i) for i in top.indices])
        case["topk_logits"].append(vals)
        if step == 0:
            logits.cpu().numpy().astype("<f4").tofile(folder / case["prefill_logits"])
        if step == NEW_TOKENS - 1:
            logits.cpu().numpy().astype("<f4").tofile(folder / case["last_logits"])
            break
        cache = getattr(out, "past_key_values", None)
        if cache is None:
            cache = getattr(out, "cache", None)
        if cache is None:
            sys.exit("the decoder returned no KV cache")
        out = body(input_ids=torch.tensor([[token]], device=device), use_cache=True,
                   **{cache_kw: cache})
    return case


def exact_prefill(model, prompt: list, device: str):
    """Last-position logits of an f32 model: [vocab] f32."""
    import torch
    out = model.model(input_ids=torch.tensor([prompt], device=device))
    return model.lm_head.weight @ out.last_hidden_state[0, -1]


def make(name: str, out_dir: pathlib.Path, device: str) -> None:
    import torch
    import transformers

    spec = MODELS[name]
    folder = out_dir / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    need = 18e9 if name == "llama-8b" else 1e8  # the 8B's bf16 weights: 16.1 GB
    free = shutil.disk_usage(folder).free
    if free < need:
        sys.exit(f"{name}: {free / 1e9:.1f} GB free under {folder}, {need / 1e9:.0f} GB needed")

    t0 = time.perf_counter()
    model = build(name, spec, device)
    sync(torch, device)
    t1 = time.perf_counter()
    save(model, folder)
    t2 = time.perf_counter()
    cases = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts_for(spec)):
            cases.append(greedy_reference(model, prompt, device, folder, i))
        # The same prefills in f32 on the same (exactly representable) weights: how far
        # transformers' own bf16 logits are from exact arithmetic, the yardstick of atom's.
        model.float()
        for i, case in enumerate(cases):
            case["bf16_error"] = 0.0
            # The prefill row and the last greedy step's (its context prefilled in f32).
            for kind, ctx in (("prefill", case["prompt"]),
                              ("last", case["prompt"] + case["tokens"][:-1])):
                exact = exact_prefill(model, ctx, device)
                case[f"{kind}_f32_logits"] = f"{kind}_f32_{i}.f32"
                exact.cpu().numpy().astype("<f4").tofile(folder / case[f"{kind}_f32_logits"])
                bf16 = np.fromfile(folder / case[f"{kind}_logits"], dtype="<f4")
                bf16 = torch.from_numpy(bf16).to(exact.device)
                rms = float(exact.square().mean().sqrt())
                error = float((bf16 - exact).abs().max()) / rms
                case["bf16_error"] = max(case["bf16_error"], error)
    sync(torch, device)
    t3 = time.perf_counter()

    bf16_error = max(c["bf16_error"] for c in cases)
    gaps = [g for c in cases for g in c["gaps"]]
    rms = statistics.mean(r for c in cases for r in c["rms"])
    top1 = statistics.mean(v[0] for c in cases for v in c["topk_logits"])
    median_gap = statistics.median(gaps)
    config = dict(spec["config"])
    config["architecture"] = spec["architecture"]
    ref = {
        "name": name, "config": config, "seed": spec["seed"],
        "initializer_range": spec["initializer_range"], "head_row_sigma": spec["head_row_sigma"],
        "attn_implementation": spec["attn"],
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "new_tokens": NEW_TOKENS, "topk": TOPK, "median_gap": median_gap, "logit_rms": rms,
        "bf16_error": bf16_error,
        "timings_s": {"build": t1 - t0, "save": t2 - t1, "reference": t3 - t2},
        "prompts": cases,
    }
    (folder / "reference.json").write_text(json.dumps(ref) + "\n")
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    small = sum(1 for g in gaps if g < 0.05 * rms)
    print(f"[hf reference {name}] {size / 1e9:.2f} GB of safetensors; build {t1 - t0:.1f} s, "
          f"save {t2 - t1:.1f} s, reference ({len(cases)} prompts x {NEW_TOKENS} steps) "
          f"{t3 - t2:.1f} s", flush=True)
    print(f"[hf reference {name}] logits RMS {rms:.2f}, top1 {top1:.2f} on average; top1-top2 "
          f"gap median {median_gap:.3f} ({median_gap / rms:.3f} x RMS), {small} of {len(gaps)} "
          f"steps below 0.05 x RMS; transformers bf16 vs f32 logits: max |diff| "
          f"{bf16_error:.4f} x RMS", flush=True)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def remove_weights(out_dir: pathlib.Path) -> None:
    freed = 0
    for f in sorted(out_dir.glob("*/*.safetensors")) + sorted(out_dir.glob("*/*.index.json")):
        freed += f.stat().st_size
        f.unlink()
    print(f"removed the checkpoints' weights under {out_dir}: {freed / 1e9:.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=pathlib.Path)
    ap.add_argument("--only", choices=sorted(MODELS), action="append",
                    help="make only this model (repeatable)")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--remove-weights", action="store_true",
                    help="delete the safetensors under OUT_DIR, keeping the references")
    args = ap.parse_args()
    if args.remove_weights:
        remove_weights(args.out_dir)
        return
    import torch
    import transformers
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch: the HF parity references are made on the GPU")
    # Exact f32 products for the LM head (no TF32).
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else args.device}",
          flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    names = args.only or list(MODELS)  # tiny ones first: they fail fast
    for name in names:  # no stale folder (or parity results) survives a failed run
        shutil.rmtree(args.out_dir / name, ignore_errors=True)
    for name in names:
        make(name, args.out_dir, args.device)


if __name__ == "__main__":
    main()
