"""GET /metrics: parsed with the Prometheus text parser (prometheus_client), vLLM's metric names
under the atom: prefix, and every counter and histogram moving by exactly what the requests
served say (usage, finish reasons), streaming or not, aborted by a disconnect, with prefix-cache
hits and with preemptions. Also ATOM's log lines in the server's output, in both formats."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import Server, SseStream

# vLLM's bucket bounds (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0]
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]

GAUGES = ["atom:num_requests_running", "atom:num_requests_waiting", "atom:kv_cache_usage_perc"]
COUNTERS = ["atom:prefix_cache_queries", "atom:prefix_cache_hits", "atom:num_preemptions",
            "atom:prompt_tokens", "atom:generation_tokens", "atom:request_success",
            "atom:request", "atom:request_aborted_by_client"]
HISTOGRAMS = {
    "atom:time_to_first_token_seconds": TTFT_BUCKETS,
    "atom:time_per_output_token_seconds": ITL_BUCKETS,
    "atom:inter_token_latency_seconds": ITL_BUCKETS,
    "atom:e2e_request_latency_seconds": LATENCY_BUCKETS,
    "atom:request_queue_time_seconds": LATENCY_BUCKETS,
    "atom:request_prompt_tokens": None,  # 1-2-5 up to max_model_len
    "atom:request_generation_tokens": None,
}
FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class Scrape:
    """One parsed exposition: families by name, samples by (sample name, labels but model_name)."""

    families: dict
    samples: dict

    def get(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def hist(self, name: str) -> tuple[float, float]:
        """(count, sum) of a histogram."""
        return self.get(name + "_count"), self.get(name + "_sum")


def scrape(server: Server) -> Scrape:
    r = server.request("GET", "/metrics")
    assert r.status == 200, r.body[:500]
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    samples = {}
    for fam in families.values():
        for s in fam.samples:
            assert s.labels.get("model_name") == server.model_name, s
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name")))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return Scrape(families, samples)


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


def hist_delta(after: Scrape, before: Scrape, name: str) -> tuple[float, float]:
    (c1, s1), (c0, s0) = after.hist(name), before.hist(name)
    return c1 - c0, s1 - s0


def wait_until_idle(server: Server, timeout: float = 20.0) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(server)
        if all(m.get(g) == 0 for g in GAUGES) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def assert_idle(m: Scrape) -> None:
    for g in GAUGES:
        assert m.get(g) == 0, (g, m.get(g))


def test_exposition_has_vllm_families_and_valid_histograms(server: Server) -> None:
    m = wait_until_idle(server)
    for name in GAUGES:
        assert m.families[name].type == "gauge", name
    for name in COUNTERS:
        assert m.families[name].type == "counter", name
        assert all(s.name == name + "_total" for s in m.families[name].samples), name
    assert {s.labels["finished_reason"] for s in m.families["atom:request_success"].samples} == \
        set(FINISH_REASONS)
    max_model_len = server.get_json("/v1/models")["data"][0]["max_model_len"]
    one_two_five = [v * 10**e for e in range(12) for v in (1, 2, 5) if v * 10**e <= max_model_len]
    for name, bounds in HISTOGRAMS.items():
        fam = m.families[name]
        assert fam.type == "histogram", name
        buckets = [s for s in fam.samples if s.name == name + "_bucket"]
        les = [s.labels["le"] for s in buckets]
        assert les[-1] == "+Inf", les
        assert [float(le) for le in les[:-1]] == (bounds or one_two_five), (name, les)
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), (name, counts)  # cumulative
        assert counts[-1] == m.get(name + "_count"), name
    assert_idle(m)


def test_counters_follow_the_requests_served(server: Server) -> None:
    client = server.client()
    before = wait_until_idle(server)
    usages, reasons = [], []
    # Non-streaming completion, to its length.
    r = client.completions.create(model=server.model_name, prompt="The capital of France is",
                                  max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    usages.append(r.usage)
    reasons.append(r.choices[0].finish_reason)
    # Non-streaming chat, stopped by a stop string or its length, whichever comes first.
    c = client.chat.completions.create(
        model=server.model_name, messages=[{"role": "user", "content": "Count: 1, 2, 3,"}],
        max_tokens=12, temperature=0, stop=[","])
    usages.append(c.usage)
    reasons.append(c.choices[0].finish_reason)
    # Streaming completion and chat, with the usage chunk.
    for kind in ("completion", "chat"):
        kwargs = dict(model=server.model_name, max_tokens=7, temperature=0, stream=True,
                      stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        if kind == "completion":
            stream = client.completions.create(prompt="Once upon a time", **kwargs)
        else:
            stream = client.chat.completions.create(
                messages=[{"role": "user", "content": "Tell me a story."}], **kwargs)
        usage, reason = None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                reason = ch.finish_reason or reason
        assert usage is not None and reason is not None
        usages.append(usage)
        reasons.append(reason)

    after = wait_until_idle(server)
    assert_idle(after)
    n = len(usages)
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    assert delta(after, before, "atom:prompt_tokens_total") == prompt
    assert delta(after, before, "atom:generation_tokens_total") == completion
    assert delta(after, before, "atom:request_total") == n
    for reason in FINISH_REASONS:
        assert delta(after, before, "atom:request_success_total", finished_reason=reason) == \
            reasons.count(reason), (reason, reasons)
    # One TTFT, one e2e latency and one queue time per request; one inter-token latency per
    # token after the first.
    assert hist_delta(after, before, "atom:time_to_first_token_seconds")[0] == n
    assert hist_delta(after, before, "atom:e2e_request_latency_seconds")[0] == n
    assert hist_delta(after, before, "atom:request_queue_time_seconds")[0] == n
    itl = sum(u.completion_tokens - 1 for u in usages)
    assert hist_delta(after, before, "atom:inter_token_latency_seconds")[0] == itl
    assert hist_delta(after, before, "atom:time_per_output_token_seconds")[0] == itl
    assert hist_delta(after, before, "atom:request_prompt_tokens") == (n, prompt)
    assert hist_delta(after, before, "atom:request_generation_tokens") == (n, completion)
    # Times are positive and consistent: each request's latency covers its TTFT.
    ttft_sum = hist_delta(after, before, "atom:time_to_first_token_seconds")[1]
    e2e_sum = hist_delta(after, before, "atom:e2e_request_latency_seconds")[1]
    assert 0 < ttft_sum <= e2e_sum
    # The shared server runs without prefix caching, and this load preempts nothing.
    assert delta(after, before, "atom:prefix_cache_queries_total") == 0
    assert delta(after, before, "atom:prefix_cache_hits_total") == 0
    assert delta(after, before, "atom:num_preemptions_total") == 0


def test_disconnect_counts_an_abort(server: Server) -> None:
    before = wait_until_idle(server)
    prompt = "Once upon a time"
    n_prompt = len(server.tokenize(prompt))
    stream = SseStream(server, "/v1/completions",
                       {"prompt": prompt, "max_tokens": 3000, "ignore_eos": True, "stream": True})
    events = 0
    try:
        assert stream.status == 200
        for _ in range(4):
            assert stream.next_event() not in (None, "[DONE]")
            events += 1
    finally:
        stream.close()
    after = wait_until_idle(server)
    assert_idle(after)
    assert delta(after, before, "atom:request_success_total", finished_reason="abort") == 1
    assert delta(after, before, "atom:request_success_total", finished_reason="stop") == 0
    assert delta(after, before, "atom:request_success_total", finished_reason="length") == 0
    assert delta(after, before, "atom:request_aborted_by_client_total") == 1
    assert delta(after, before, "atom:prompt_tokens_total") == n_prompt
    generated = delta(after, before, "atom:generation_tokens_total")
    assert events <= generated < 3000
    assert hist_delta(after, before, "atom:request_generation_tokens") == (1, generated)
    assert hist_delta(after, before, "atom:time_to_first_token_seconds")[0] == 1
    assert hist_delta(after, before, "atom:e2e_request_latency_seconds")[0] == 1
    assert hist_delta(after, before, "atom:inter_token_latency_seconds")[0] == generated - 1


def test_prefix_cache_queries_and_hits(own_server) -> None:
    srv = own_server("--enable-prefix-caching")
    before = wait_until_idle(srv)
    # Long enough for several full 16-token blocks.
    prompt = "The quick brown fox jumps over the lazy dog. " * 8
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
    first = srv.post_json("/v1/completions", body)["usage"]
    second = srv.post_json("/v1/completions", body)["usage"]
    after = wait_until_idle(srv)
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert cached >= 32 and cached % 16 == 0, second
    # vLLM's unit: tokens queried at admission (the prompt) and tokens found in the cache.
    assert delta(after, before, "atom:prefix_cache_queries_total") == \
        first["prompt_tokens"] + second["prompt_tokens"]
    assert delta(after, before, "atom:prefix_cache_hits_total") == cached
    assert delta(after, before, "atom:prompt_tokens_total") == \
        first["prompt_tokens"] + second["prompt_tokens"]
    assert_idle(after)


def test_preemptions_are_counted(own_server) -> None:
    # 0.012 GiB holds 17 blocks of 16 tokens of this model (30 layers x 3 KV heads x 64 x f32),
    # the GPU pool is set to as many: two requests growing to 10 blocks each cannot both stay.
    srv = own_server("--cpu-kv-cache-space", "0.012", "--num-gpu-blocks-override", "17",
                     "--max-model-len", "256")
    before = wait_until_idle(srv)
    client = srv.async_client()

    async def run() -> list:
        return await asyncio.gather(*[
            client.completions.create(model=srv.model_name, prompt=p, max_tokens=150,
                                      temperature=0, extra_body={"ignore_eos": True})
            for p in ("Once upon a time", "The capital of France is")])

    results = asyncio.run(run())
    after = wait_until_idle(srv)
    assert_idle(after)
    assert delta(after, before, "atom:num_preemptions_total") > 0
    # Recomputing a preempted request's tokens is neither prompt nor generation.
    assert delta(after, before, "atom:generation_tokens_total") == \
        sum(r.usage.completion_tokens for r in results) == 300
    assert delta(after, before, "atom:prompt_tokens_total") == \
        sum(r.usage.prompt_tokens for r in results)
    assert delta(after, before, "atom:request_success_total", finished_reason="length") == 2


def test_log_lines_default_format(server: Server) -> None:
    prompt = "Hello there, general"
    n_prompt = len(server.tokenize(prompt))
    server.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 4, "ignore_eos": True})
    deadline = time.monotonic() + 5
    pattern = re.compile(
        rf"^\[atom\] Request (\d+) arrived, input tokens: {n_prompt}, pending requests: \d+, "
        r"max_tokens: 4$", re.M)
    while True:
        log = server.log_tail(10**9)
        ids = pattern.findall(log)
        if (ids and f"Request {ids[-1]} finished" in log) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ids, log[-3000:]
    rid = ids[-1]
    assert re.search(
        rf"^\[atom\] Request {rid} finished with reason max_tokens\. Input tokens: {n_prompt}, "
        r"output tokens: 4, latency: \d+\.\d\ds, TTFT: \d+\.\d{3}s, TPOT: \d+\.\d{3}s$", log,
        re.M), log[-3000:]
    assert re.search(
        rf"^\[atom\] Scheduled prefill batch: 1 reqs, {n_prompt} token_nums: \[{n_prompt}\], "
        rf"req_ids: \({rid},\)$", log, re.M), log[-3000:]
    # The KV allocation: the CPU backend's line, or the CUDA backend's budget on a GPU host.
    assert re.search(r"^\[atom\] (KV cache allocated: \d+ blocks of 16 tokens|GPU memory budget)",
                     log, re.M), log[:3000]


def test_log_more_switches_to_the_verbose_format(own_server, monkeypatch) -> None:
    monkeypatch.setenv("ATOM_LOG_MORE", "1")
    srv = own_server()
    srv.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "ignore_eos": True})
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{1,3}"
    head = rf"^\[atom INFO\] {stamp} - MainProcess:{srv.proc.pid} - \S+:\d+ - \w+\n"
    deadline = time.monotonic() + 5
    while True:
        log = srv.log_tail(10**9)
        done = re.search(head + r"Request \d+ finished with reason max_tokens\.", log, re.M)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert done, log[-3000:]
    assert re.search(head + r"Request \d+ arrived, input tokens: \d+, pending requests: 1, "
                     r"max_tokens: 2$", log, re.M), log[-3000:]
    assert re.search(head + r"Scheduled prefill batch: 1 reqs", log, re.M), log[-3000:]
    assert not re.search(r"^\[atom\] ", log, re.M), "a line in the default format"
