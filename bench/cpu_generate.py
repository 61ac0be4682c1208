#!/usr/bin/env python3
"""CPU generation speed of atom beside llama.cpp (llama-cpp-python) on the same GGUF file,
same prompt, same thread count, in one run; plus how far llama.cpp's greedy tokens agree with
the HF transformers goldens that atom's tests match exactly.

  python3 bench/cpu_generate.py [--atom build/atom] [--threads N] [--new-tokens 128] [--repeats 3]

Needs: pip install llama-cpp-python (built from source for this CPU).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes "
          "Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from "
          "those used for wine. Within decades, printing spread across Europe, and the cost of "
          "books fell sharply. Scholars could now compare identical copies of a text, which "
          "changed how knowledge was shared, checked and built upon. In this essay we look at "
          "three consequences of that change: the rise of literacy, the standardisation of "
          "languages, and the speed at which new ideas could travel.")


def model_path():
    return subprocess.check_output([os.path.join(ROOT, "scripts", "fetch-model.sh")],
                                   text=True).strip()


def run_atom(binary, model, threads, new_tokens):
    cmd = [binary, "generate", "--model", model, "--prompt", PROMPT, "--max-tokens",
           str(new_tokens), "--ignore-eos", "--temperature", "0", "--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"prompt: (\d+) tokens, ([\d.]+) tokens/s \| decode: (\d+) tokens, "
                  r"([\d.]+) tokens/s", p.stderr)
    if not m:
        raise RuntimeError(f"unexpected atom output: {p.stderr}")
    return int(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4))


def run_llamacpp(llm, llama_cpp, threads, new_tokens):
    toks = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    out = llm.create_completion(toks, max_tokens=new_tokens, temperature=0.0, top_k=1,
                                stop=[], logit_bias=None)
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    n_out = out["usage"]["completion_tokens"]
    # llama.cpp's own counters: prompt eval and per-token eval times.
    prompt_tps = perf.n_p_eval / (perf.t_p_eval_ms / 1000.0)
    decode_tps = perf.n_eval / (perf.t_eval_ms / 1000.0)
    return len(toks), prompt_tps, n_out, decode_tps


def greedy_agreement(llm):
    with open(os.path.join(ROOT, "tests", "data", "goldens",
                           "smollm2-135m-instruct-q4_1.json")) as f:
        meta = json.load(f)
    rows = []
    for case in meta["cases"]:
        llm.reset()
        ids = case["prompt_ids"]
        want = case["greedy_ids"]
        got = []
        for tok in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            got.append(tok)
            if len(got) == len(want):
                break
        prefix = 0
        while prefix < len(want) and got[prefix] == want[prefix]:
            prefix += 1
        rows.append((case["name"], prefix, len(want)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atom", default=os.path.join(ROOT, "build", "atom"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import llama_cpp
    model = model_path()
    llm = llama_cpp.Llama(model_path=model, n_threads=args.threads, n_threads_batch=args.threads,
                          n_ctx=2048, n_batch=512, verbose=False)

    atom_runs = [run_atom(args.atom, model, args.threads, args.new_tokens)
                 for _ in range(args.repeats)]
    lcpp_runs = [run_llamacpp(llm, llama_cpp, args.threads, args.new_tokens)
                 for _ in range(args.repeats)]
    med = lambda runs, i: statistics.median(r[i] for r in runs)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"CPU: {cpu}, threads: {args.threads}, prompt: {atom_runs[0][0]} tokens, "
          f"new tokens: {args.new_tokens}, median of {args.repeats}")
    print("| engine | prompt tokens/s | decode tokens/s |")
    print("|---|---|---|")
    print(f"| atom | {med(atom_runs, 1):.1f} | {med(atom_runs, 3):.1f} |")
    print(f"| llama.cpp {llama_cpp.__version__} | {med(lcpp_runs, 1):.1f} | "
          f"{med(lcpp_runs, 3):.1f} |")
    print(f"atom / llama.cpp decode: {med(atom_runs, 3) / med(lcpp_runs, 3):.2f}, "
          f"prompt: {med(atom_runs, 1) / med(lcpp_runs, 1):.2f}")
    print("\nGreedy tokens of llama.cpp that agree with HF transformers (atom matches all):")
    for name, prefix, n in greedy_agreement(llm):
        print(f"  {name}: first {prefix}/{n} tokens identical")


if __name__ == "__main__":
    main()
