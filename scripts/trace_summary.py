#!/usr/bin/env python3
"""Where a step's time goes, from an atom trace (docs/profiling.md).

Reads one `*.pt.trace.json.gz` and prints, for the engine steps that match a filter (by default
the decode steps: steps whose `forward` has as many tokens as sequences):
  * the median wall time of a step, and of its host scopes (schedule, plan, forward, wait, ...);
  * the GPU time per step: kernels by name (µs per step, launches per step, share), and the idle
    gaps between kernels inside the step. A kernel is charged only the time it adds past the end
    of the kernels before it, so overlapping launches (programmatic dependent launch) are not
    counted twice.
This is the "timeline of one decode step" [F2] accounts for the roofline with.

  scripts/trace_summary.py TRACE [--steps decode|prefill|all] [--top 25] [--json OUT]
"""
import argparse
import collections
import gzip
import json
import statistics
import sys


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def short(name, width=70):
    # Demangled template names are long; keep the function and the start of its arguments.
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--steps", choices=["decode", "prefill", "all"], default="decode")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", help="write the summary here too")
    a = ap.parse_args()

    events = [e for e in load(a.trace) if e.get("ph") == "X"]
    steps = sorted((e for e in events if e.get("name") == "step" and e.get("cat") == "engine"),
                   key=lambda e: e["ts"])
    forwards = [e for e in events if e.get("name") == "forward" and e.get("cat") == "runner"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    host = [e for e in events if e.get("cat") in ("engine", "runner") and e.get("name") != "step"]
    if not steps:
        sys.exit("trace_summary: no engine steps in the trace")

    def within(e, s):
        return s["ts"] <= e["ts"] < s["ts"] + s["dur"]

    # A forward belongs to the step it was launched in; its kernels run between its launch and
    # the start of the next step's forward (deferred output overlaps the host with the GPU).
    chosen = []
    for s in steps:
        fw = [f for f in forwards if within(f, s)]
        if not fw:
            continue
        args = fw[0].get("args", {})
        tokens, seqs = args.get("tokens"), args.get("seqs")
        decode = tokens is not None and tokens == seqs
        if a.steps == "all" or (a.steps == "decode") == decode:
            chosen.append((s, fw[0]))
    if not chosen:
        sys.exit(f"trace_summary: no {a.steps} steps in the trace")

    fw_starts = sorted(f["ts"] for f in forwards)
    per_kernel = collections.defaultdict(lambda: [0.0, 0])
    gpu_busy, gpu_span, gaps, walls = [], [], [], []
    host_scopes = collections.defaultdict(list)
    ki = 0
    for s, f in chosen:
        walls.append(s["dur"])
        for h in host:
            if within(h, s):
                host_scopes[h["name"]].append(h["dur"])
        nxt = next((t for t in fw_starts if t > f["ts"]), float("inf"))
        ks = [k for k in kernels if f["ts"] <= k["ts"] < nxt]
        if not ks:
            continue
        # A kernel's time is what it adds to the step: from the later of its start and the end
        # of every kernel before it, to its end. With programmatic dependent launch a kernel
        # starts while its predecessor drains and waits inside; that wait belongs to the
        # predecessor, so raw durations would count it twice.
        busy = 0.0
        frontier = ks[0]["ts"]
        for k in ks:
            end = k["ts"] + k["dur"]
            own = max(0.0, end - max(k["ts"], frontier))
            frontier = max(frontier, end)
            busy += own
            per_kernel[k["name"]][0] += own
            per_kernel[k["name"]][1] += 1
        gpu_busy.append(busy)
        span = frontier - ks[0]["ts"]
        gpu_span.append(span)
        gaps.append(span - busy)
    n = len(chosen)
    med = statistics.median
    print(f"{a.trace}: {n} {a.steps} steps (of {len(steps)})")
    print(f"  step wall (host)   median {med(walls):9.1f} µs")
    for name, durs in sorted(host_scopes.items(), key=lambda kv: -sum(kv[1])):
        print(f"    {name:16s} median {med(durs):9.1f} µs  x{len(durs) / n:.1f}/step")
    if gpu_busy:
        print(f"  GPU span           median {med(gpu_span):9.1f} µs (first kernel start to last end)")
        print(f"  GPU busy (kernels) median {med(gpu_busy):9.1f} µs (time some kernel was running)")
        print(f"  GPU idle in span   median {med(gaps):9.1f} µs")
    total = sum(v[0] for v in per_kernel.values()) or 1.0
    print(f"  kernels, per step (top {a.top}):")
    print(f"    {'µs/step':>9} {'n/step':>7} {'share':>6}  name")
    rows = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])
    for name, (dur, cnt) in rows[: a.top]:
        print(f"    {dur / n:9.1f} {cnt / n:7.1f} {100 * dur / total:5.1f}%  {short(name)}")
    if a.json:
        out = {
            "trace": a.trace, "steps": a.steps, "count": n,
            "step_wall_us": med(walls),
            "host_us": {k: med(v) for k, v in host_scopes.items()},
            "gpu_span_us": med(gpu_span) if gpu_span else None,
            "gpu_busy_us": med(gpu_busy) if gpu_busy else None,
            "kernels": [{"name": k, "us_per_step": d / n, "launches_per_step": c / n}
                        for k, (d, c) in rows],
        }
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
