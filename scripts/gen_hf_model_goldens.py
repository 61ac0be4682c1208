#!/usr/bin/env python3
"""Generates tests/data/hf_models: tiny random Hugging Face checkpoints and what transformers
computes with them, the reference atom's safetensors loaders are tested against.

Models (float32 safetensors, each folder under ~1 MB):
  llama-tiny   LlamaForCausalLM, 2 layers, hidden 64, 4 heads / 2 KV heads (GQA), intermediate
               128, untied LM head, the Llama-3 style byte-level tokenizer of tests/data/tokenizers
  qwen3-tiny   Qwen3ForCausalLM, same sizes but head_dim 32 (!= hidden / heads), q/k norms,
               attention_bias on, tied embeddings, the Qwen2 style tokenizer

Every parameter is drawn at random here (transformers' init leaves norms at one and biases at
zero, which would not test them). Each folder gets config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json and golden.json:
  {"prompts": [{"text", "prompt_ids", "last_logits", "greedy_ids", "greedy_text"}]}
prompt_ids: the HF tokenizer with add_special_tokens; last_logits: float32 logits of the last
prompt position; greedy_ids: 16 greedy tokens (EOS ignored); greedy_text: their decode with
skip_special_tokens, as `atom generate` prints it.

Usage: python3 scripts/gen_hf_model_goldens.py   (needs torch, transformers, safetensors)
"""

import json
import pathlib
import shutil

import torch
from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKENIZERS = ROOT / "tests" / "data" / "tokenizers"
OUT = ROOT / "tests" / "data" / "hf_models"

PROMPTS = [
    "Hello world",
    "The capital of France is",
    "def f(x):\n    return x ** 2",
    "naïve café 日本語",
]
NEW_TOKENS = 16


def vocab_size_of(tokenizer_json: pathlib.Path) -> int:
    j = json.loads(tokenizer_json.read_text())
    ids = list(j["model"]["vocab"].values()) + [t["id"] for t in j["added_tokens"]]
    return max(ids) + 1


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:  # large enough that logits spread out and greedy choices are not near ties
                p.copy_(0.15 * noise)


def greedy(model, ids: list[int]) -> list[int]:
    out = list(ids)
    for _ in range(NEW_TOKENS):
        logits = model(torch.tensor([out])).logits[0, -1]
        top2 = torch.topk(logits, 2).values
        assert float(top2[0] - top2[1]) > 1e-3, "near tie in greedy decoding: pick another seed"
        out.append(int(torch.argmax(logits)))
    return out[len(ids):]


def build(name: str, cls, config, tokenizer: str, seed: int) -> None:
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy(TOKENIZERS / f"{tokenizer}.tokenizer.json", folder / "tokenizer.json")
    # Special tokens as plain strings: transformers 5 rejects an AddedToken dict without its
    # "__type" tag, which atom's reader accepts either way.
    tok_cfg = json.loads((TOKENIZERS / f"{tokenizer}.tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token"):
        if isinstance(tok_cfg.get(key), dict):
            tok_cfg[key] = tok_cfg[key]["content"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1) + "\n")
    tok = AutoTokenizer.from_pretrained(folder)

    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id,
                     eos_token_id=config.eos_token_id).save_pretrained(folder)

    cases = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok(text, add_special_tokens=True)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            gen = greedy(model, ids)
            cases.append({
                "text": text,
                "prompt_ids": ids,
                "last_logits": [float(x) for x in logits],
                "greedy_ids": gen,
                "greedy_text": tok.decode(gen, skip_special_tokens=True),
            })
    (folder / "golden.json").write_text(json.dumps({"prompts": cases}) + "\n")
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{name}: {size / 1e6:.2f} MB, vocab {config.vocab_size}")


def main() -> None:
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, dtype=torch.float32)

    llama_tok = TOKENIZERS / "llama3.tokenizer.json"
    tok_cfg = json.loads((TOKENIZERS / "llama3.tokenizer_config.json").read_text())
    vocab = json.loads(llama_tok.read_text())
    token_id = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    llama = LlamaConfig(vocab_size=vocab_size_of(llama_tok), rope_theta=500000.0,
                        tie_word_embeddings=False,
                        bos_token_id=token_id[tok_cfg["bos_token"]],
                        eos_token_id=[token_id["<|end_of_text|>"], token_id["<|eot_id|>"]],
                        **common)
    build("llama-tiny", LlamaForCausalLM, llama, "llama3", seed=1)

    qwen_tok = TOKENIZERS / "qwen2.tokenizer.json"
    vocab = json.loads(qwen_tok.read_text())
    token_id = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    qwen3 = Qwen3Config(vocab_size=vocab_size_of(qwen_tok), head_dim=32, rope_theta=1000000.0,
                        attention_bias=True, tie_word_embeddings=True,
                        bos_token_id=token_id["<|endoftext|>"],
                        eos_token_id=token_id["<|im_end|>"], **common)
    build("qwen3-tiny", Qwen3ForCausalLM, qwen3, "qwen2", seed=2)


if __name__ == "__main__":
    main()
