"""A client that goes away mid-stream: the request is aborted and its KV cache blocks are freed
(GET /metrics shows nothing running or waiting and zero KV cache usage again)."""

from __future__ import annotations

import json
import time

import pytest

from helpers import Server, SseStream

# Long enough that finishing instead of aborting would take far longer than the wait below
# (~100 tokens/s on this model and machine).
LONG = 3000
ABORT_WAIT_S = 5.0


def wait_for(server: Server, pred, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        if pred(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def idle(m: dict) -> bool:
    return (m["atom:num_requests_running"] == 0 and m["atom:num_requests_waiting"] == 0
            and m["atom:kv_cache_usage_perc"] == 0)


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "Once upon a time"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me a story."}]}),
])
def test_disconnect_mid_stream_aborts(server: Server, path: str, body: dict) -> None:
    m = server.wait_idle()
    assert idle(m), f"the server is busy before the test: {m}"
    stream = SseStream(server, path,
                       dict(body, max_tokens=LONG, ignore_eos=True, stream=True, temperature=0))
    try:
        assert stream.status == 200
        for _ in range(5):
            assert stream.next_event() not in (None, "[DONE]")
        # While it streams, the request runs and holds KV cache blocks.
        m = server.metrics()
        assert m["atom:num_requests_running"] == 1, m
        assert 0 < m["atom:kv_cache_usage_perc"] <= 1, m
    finally:
        stream.close()
    t0 = time.monotonic()
    m = wait_for(server, idle, ABORT_WAIT_S)
    assert idle(m), f"{ABORT_WAIT_S} s after the disconnect: {m}"
    took = time.monotonic() - t0
    # The server still serves.
    r = server.request("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 2, (r.body, took)


def test_disconnect_of_one_stream_leaves_others_alone(server: Server) -> None:
    server.wait_idle()
    req = {"prompt": "The capital of France is", "max_tokens": 60, "ignore_eos": True,
           "temperature": 0}
    ref = server.post_json("/v1/completions", req)["choices"][0]["text"]
    keep = SseStream(server, "/v1/completions", dict(req, stream=True))
    drop = SseStream(server, "/v1/completions",
                     {"prompt": "Once upon a time", "max_tokens": LONG, "ignore_eos": True,
                      "stream": True})
    assert drop.next_event() not in (None, "[DONE]")
    drop.close()
    events = []
    while True:
        ev = keep.next_event()
        assert ev is not None, "the kept stream ended without [DONE]"
        if ev == "[DONE]":
            break
        events.append(ev)
    keep.close()
    chunks = [json.loads(ev) for ev in events]
    assert "".join(c["choices"][0]["text"] for c in chunks) == ref
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    m = wait_for(server, idle, ABORT_WAIT_S)
    assert idle(m), m
