#!/usr/bin/env python3
"""Regenerate the golden outputs atom's model test compares against, using HF transformers.

transformers loads the GGUF file itself (dequantizing every tensor to float32 and undoing the
llama.cpp Q/K row permutation), which makes it an independent reference for atom's GGUF loader,
tokenizer, ops and Llama forward. For each prompt this writes the prompt's token ids (HF's
tokenizer), the float32 logits of the last prompt position, and 32 greedy tokens.

  python3 scripts/gen_model_goldens.py [--model PATH.gguf] [--out tests/data/goldens]

Needs: pip install torch transformers gguf (the GPU hosts have them; CPU is fine, ~1 minute).
"""
import argparse
import json
import os
import struct
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    # (name, text, apply chat template)
    ("plain_fox", "The quick brown fox jumps over the lazy dog. The dog", False),
    ("plain_code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    ("chat_capital", "What is the capital of France?", True),
    ("chat_unicode", "Translate to French: I like coffee and croissants ☕🥐.", True),
    ("plain_long", "Once upon a time, in a small village nestled between rolling hills and a "
     "sparkling river, there lived an old clockmaker named Elias. Every morning he", False),
]
NUM_GREEDY = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="GGUF file (default: scripts/fetch-model.sh)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "data", "goldens"))
    args = ap.parse_args()
    model_path = args.model or subprocess.check_output(
        [os.path.join(os.path.dirname(__file__), "fetch-model.sh")], text=True).strip()
    folder, name = os.path.split(os.path.abspath(model_path))

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()

    os.makedirs(args.out, exist_ok=True)
    stem = "smollm2-135m-instruct-q4_1"
    cases = []
    logits_blob = bytearray()
    for case_name, text, chat in PROMPTS:
        if chat:
            rendered = tok.apply_chat_template([{"role": "user", "content": text}],
                                               tokenize=False, add_generation_prompt=True)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
        else:
            rendered = text
            ids = tok(text, add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1].float()
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=NUM_GREEDY, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.eos_token_id)
        greedy = out[0, len(ids):].tolist()
        cases.append({
            "name": case_name,
            "prompt": rendered,
            "chat": chat,
            "prompt_ids": ids,
            "greedy_ids": greedy,
            "greedy_text": tok.decode(greedy),
            "logits_offset": len(logits_blob) // 4,
        })
        logits_blob += struct.pack(f"<{logits.numel()}f", *logits.tolist())
        print(f"{case_name}: {len(ids)} prompt tokens -> {tok.decode(greedy)!r}", file=sys.stderr)

    meta = {
        "model": name,
        "reference": f"transformers {__import__('transformers').__version__}, "
                     f"torch {torch.__version__}, float32",
        "vocab_size": int(logits.numel()),
        "logits_file": f"{stem}.logits.f32",
        "cases": cases,
    }
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(args.out, f"{stem}.logits.f32"), "wb") as f:
        f.write(logits_blob)


if __name__ == "__main__":
    main()
