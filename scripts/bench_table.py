#!/usr/bin/env python3
"""[F2]'s table: each figure from scripts/gpu-bench.sh's results, its target, the roofline from
the ceilings measured in the same run, and the baselines (transformers, the previous run).

  python3 scripts/bench_table.py --results DIR --previous docs/bench-results.json \
      --config-8b C8B.json --config-0.6b C06.json --summary DIR/summary.json [--dry]

Rooflines:
  - decode: bytes read per step = bf16 weights + the KV cache at the mean context; tokens/s =
    the measured device-to-device copy bandwidth (bytes read + written per second) / bytes;
  - prefill: FLOPs = 2 x (parameters of the layers) x tokens + 2 x LM head x sequences +
    attention (QK^T and PV, causal: 4 x layers x heads x head_dim x L(L+1)/2 per sequence), over
    the measured bf16 GEMM rate.
Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def shape(config_path: Path) -> dict:
    c = json.loads(config_path.read_text())
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    d = c.get("head_dim", h // heads)
    v = c["vocab_size"]
    per_layer = h * (heads + 2 * kv) * d + heads * d * h + 3 * h * i + 2 * h
    if c.get("model_type") == "qwen3":
        per_layer += 2 * d
    return {
        "layers": layers, "heads": heads, "kv_heads": kv, "head_dim": d, "hidden": h, "vocab": v,
        "layer_params": layers * per_layer,
        # What one decode step reads: every layer, the LM head (the embedding table when tied)
        # and the final norm; of the input embedding only the batch's rows.
        "decode_weight_bytes": 2 * (layers * per_layer + v * h + h),
        "head_params": v * h,
        "kv_bytes_per_token": 2 * layers * 2 * kv * d,
    }


def prefill_flops(s: dict, seqs: int, length: int) -> float:
    tokens = seqs * length
    attention = 4 * s["layers"] * s["heads"] * s["head_dim"] * length * (length + 1) / 2 * seqs
    return 2.0 * s["layer_params"] * tokens + 2.0 * s["head_params"] * seqs + attention


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True, type=Path)
    ap.add_argument("--previous", type=Path)
    ap.add_argument("--config-8b", required=True, type=Path)
    ap.add_argument("--config-0.6b", required=True, type=Path, dest="config_06")
    ap.add_argument("--summary", required=True, type=Path)
    ap.add_argument("--dry", action="store_true")
    ap.add_argument("--commit", default="unknown", help="the commit measured, for the summary")
    a = ap.parse_args()
    r = a.results
    s8 = shape(a.config_8b)
    ceil = load(r / "ceilings.json") or {}
    bw, rate = ceil.get("copy_bytes_per_s"), ceil.get("gemm_flops_per_s")
    hf = load(r / "hf-baseline.json") or {}
    prev = (load(a.previous) or {}).get("figures", {}) if a.previous else {}
    figures: dict[str, float] = {}
    rows: list[tuple[str, str, str, str, str, str]] = []

    def fmt(x, unit="", digits=1):
        return "n/a" if x is None else f"{x:,.{digits}f}{unit}"

    def row(key, name, value, unit, target, ok, roofline="", hf_value=None, digits=1):
        if value is not None:
            figures[key] = value
        status = ("n/a" if value is None or ok is None or a.dry
                  else ("met" if ok else "NOT met"))
        rows.append((name, fmt(value, unit, digits), f"{target} ({status})", roofline,
                     fmt(hf_value, unit, digits), fmt(prev.get(key), unit, digits)))

    # 1. batch-1 decode.
    dec = load(r / "decode.json")
    v = dec.get("median_decode_tokens_per_s") if dec else None
    roof = None
    if bw and dec:
        ctx = dec["input_len"] + dec["output_len"] / 2
        roof = bw / (s8["decode_weight_bytes"] + ctx * s8["kv_bytes_per_token"])
    row("decode_b1_tokens_per_s", "batch-1 decode, 8B, 128 in / 256 out", v, " tok/s",
        ">= 85% of roofline", None if not (v and roof) else v >= 0.85 * roof,
        "" if roof is None else f"{roof:,.1f} tok/s ({100 * v / roof:.0f}%)" if v else "",
        hf.get("decode_b1_tokens_per_s"))
    # 2. prefill.
    for name, seqs, length in (("prefill-1x4096", 1, 4096), ("prefill-16x1024", 16, 1024)):
        p = load(r / f"{name}.json")
        secs = p.get("median_prefill_seconds") if p else None
        achieved = None
        if secs:
            achieved = prefill_flops(s8, p["batch_size"], p["input_len"]) / secs
        share = achieved / rate if achieved and rate else None
        row(f"{name.replace('-', '_')}_ms", f"prefill, 8B, {seqs} x {length} tokens",
            None if secs is None else secs * 1000, " ms", ">= 60% of the GEMM rate",
            None if share is None else share >= 0.6,
            "" if share is None else f"{achieved / 1e12:,.0f} TFLOP/s = {100 * share:.0f}% of "
            f"{rate / 1e12:,.0f}",
            hf["prefill_1x4096_seconds"] * 1000
            if seqs == 1 and hf.get("prefill_1x4096_seconds") is not None else None)
    # 3. offline throughput.
    def throughput(name):
        log = r / f"{name}.log"
        if not log.exists():
            return None
        m = re.search(r"throughput: [\d.]+ requests/s, ([\d.]+) output tokens/s", log.read_text())
        return float(m.group(1)) if m else None

    tput = throughput("throughput")
    row("throughput_qwen3_0_6b_output_tokens_per_s", "offline throughput, Qwen3-0.6B, 256 seqs",
        tput, " tok/s", ">= 20,000", None if tput is None else tput >= 20000)
    if not a.dry:  # the CPU has no fp8 KV cache
        tput = throughput("throughput-fp8kv")
        row("throughput_qwen3_0_6b_fp8kv_output_tokens_per_s",
            "same, --kv_cache_dtype fp8", tput, " tok/s", ">= 20,000",
            None if tput is None else tput >= 20000)
    # 4. serving.
    serve_targets = {
        1: ("median_tpot_ms", " ms TPOT", "<= 6.0 ms", lambda x: x <= 6.0),
        16: ("median_ttft_ms", " ms TTFT", "< 100 ms", lambda x: x < 100),
        64: ("output_throughput", " tok/s", ">= 5,000", lambda x: x >= 5000),
        256: ("output_throughput", " tok/s", ">= 8,000", lambda x: x >= 8000),
    }
    for c, (key, unit, target, ok) in serve_targets.items():
        j = load(r / f"serve-c{c}.json")
        val = j.get(key) if j else None
        flags = r / f"serve-c{c}.flags"
        extra = "" if not j else (f"out {j.get('output_throughput', 0):,.0f} tok/s, TTFT "
                                  f"{j.get('median_ttft_ms', 0):,.1f} ms, TPOT "
                                  f"{j.get('median_tpot_ms', 0):,.2f} ms"
                                  + (f" (`{flags.read_text().strip()}`)" if flags.exists() else ""))
        row(f"serve_c{c}_{key}", f"serving, 8B, 1024/1024, concurrency {c}", val, unit, target,
            None if val is None else ok(val), extra)
    # 5. start-up.
    st = load(r / "startup.json")
    v = st.get("startup_seconds") if st else None
    row("startup_dummy_8b_seconds", "start-up to ready, 8B, dummy weights", v, " s", "< 20 s",
        None if v is None else v < 20)
    st = load(r / "startup-safetensors.json")
    v = st.get("startup_seconds") if st else None
    row("startup_safetensors_8b_seconds", "start-up to ready, 8B, safetensors (page cache)", v,
        " s", "< 30 s", None if v is None else v < 30)

    title = ceil.get("device", "dry run on the CPU (no ceilings)" if a.dry else "unknown GPU")
    print(f"\ncommit {a.commit}; GPU: {title}; copy {fmt(bw and bw / 1e9, ' GB/s')}, bf16 GEMM "
          f"{fmt(rate and rate / 1e12, ' TFLOP/s')}")
    head = ("benchmark", "figure", "target", "roofline / detail", "transformers", "previous run")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for rw in rows:
        print("| " + " | ".join(rw) + " |")
    a.summary.write_text(json.dumps({"gpu": title, "commit": a.commit, "dry_run": a.dry,
                                     "ceilings": ceil,
                                     "transformers": hf, "figures": figures}, indent=2) + "\n")
    missing = [rw[0] for rw in rows if rw[1] == "n/a"]
    if missing:
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
