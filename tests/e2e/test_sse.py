"""The exact SSE wire format of streamed chat and completion responses, read as raw bytes."""

from __future__ import annotations

import re

import pytest

from helpers import Server, parse_sse

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
PROMPT = "The capital of France is"


def stream_raw(server: Server, path: str, body: dict) -> list[dict]:
    r = server.request("POST", path, body)
    assert r.status == 200, r.body[:500]
    assert r.headers.get("content-type", "").startswith("text/event-stream"), r.headers
    return parse_sse(r.body)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("finish", ["stop", "length"])
def test_chat_stream_wire_format(server: Server, model_name, include_usage, finish) -> None:
    req = {"model": model_name, "messages": QUESTION, "temperature": 0,
           "max_tokens": 48 if finish == "stop" else 6}
    full = server.post_json("/v1/chat/completions", req)
    assert full["choices"][0]["finish_reason"] == finish
    body = dict(req, stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    events = stream_raw(server, "/v1/chat/completions", body)

    if include_usage:
        usage_chunk = events.pop()
        assert set(usage_chunk) == {"id", "object", "created", "model", "choices", "usage"}
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == full["usage"]
        assert usage_chunk["id"] == events[0]["id"]
    keys = {"id", "object", "created", "model", "choices"} | ({"usage"} if include_usage else set())
    assert len(events) >= 2
    for ev in events:
        assert set(ev) == keys, ev
        if include_usage:
            assert ev["usage"] is None, ev
        assert ev["object"] == "chat.completion.chunk"
        assert ev["model"] == model_name
        assert isinstance(ev["created"], int)
        assert len(ev["choices"]) == 1, ev
        assert set(ev["choices"][0]) >= {"index", "delta", "logprobs", "finish_reason"}, ev
        assert ev["choices"][0]["index"] == 0
        assert ev["choices"][0]["logprobs"] is None
    assert len({ev["id"] for ev in events}) == 1
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", events[0]["id"])

    first = events[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}
    assert first["finish_reason"] is None
    finishes = [ev["choices"][0]["finish_reason"] for ev in events]
    assert finishes[-1] == finish
    assert all(f is None for f in finishes[:-1]), finishes
    text = "".join(ev["choices"][0]["delta"].get("content", "") for ev in events)
    assert text == full["choices"][0]["message"]["content"]
    # After the first, every delta is {"content": str}, the finishing one included.
    bad = [(i, ev["choices"][0]["delta"]) for i, ev in enumerate(events[1:], 1)
           if set(ev["choices"][0]["delta"]) != {"content"}
           or not isinstance(ev["choices"][0]["delta"]["content"], str)]
    assert not bad, f"deltas that are not {{'content': str}} (chunk index, delta): {bad}"


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream_wire_format(server: Server, model_name, include_usage) -> None:
    req = {"model": model_name, "prompt": PROMPT, "temperature": 0, "max_tokens": 40}
    full = server.post_json("/v1/completions", req)
    assert full["choices"][0]["finish_reason"] == "stop"
    body = dict(req, stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    events = stream_raw(server, "/v1/completions", body)

    if include_usage:
        usage_chunk = events.pop()
        assert set(usage_chunk) == {"id", "object", "created", "model", "choices", "usage"}
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == full["usage"]
    keys = {"id", "object", "created", "model", "choices"} | ({"usage"} if include_usage else set())
    assert events
    for ev in events:
        assert set(ev) == keys, ev
        if include_usage:
            assert ev["usage"] is None, ev
        assert ev["object"] == "text_completion"
        assert ev["model"] == model_name
        assert isinstance(ev["created"], int)
        assert len(ev["choices"]) == 1, ev
        choice = ev["choices"][0]
        assert set(choice) >= {"index", "text", "logprobs", "finish_reason"}, ev
        assert choice["index"] == 0 and choice["logprobs"] is None
        assert isinstance(choice["text"], str)
    assert len({ev["id"] for ev in events}) == 1
    assert re.fullmatch(r"cmpl-[0-9a-f]+", events[0]["id"])
    finishes = [ev["choices"][0]["finish_reason"] for ev in events]
    assert finishes[-1] == "stop"
    assert all(f is None for f in finishes[:-1]), finishes
    assert "".join(ev["choices"][0]["text"] for ev in events) == full["choices"][0]["text"]


def test_completion_stream_several_prompts_and_n(server: Server, model_name) -> None:
    req = {"model": model_name, "prompt": [PROMPT, "Once upon a time,"], "n": 2, "seed": 3,
           "temperature": 1.0, "max_tokens": 6, "ignore_eos": True}
    full = server.post_json("/v1/completions", req)
    events = stream_raw(server, "/v1/completions", dict(req, stream=True))
    texts: dict[int, str] = {}
    finishes: dict[int, list] = {}
    for ev in events:
        for choice in ev["choices"]:
            i = choice["index"]
            assert not finishes.get(i), f"choice {i} continues after its finish_reason"
            texts[i] = texts.get(i, "") + choice["text"]
            if choice["finish_reason"] is not None:
                finishes.setdefault(i, []).append(choice["finish_reason"])
    assert sorted(texts) == [0, 1, 2, 3]
    assert finishes == {i: ["length"] for i in range(4)}
    assert [texts[i] for i in range(4)] == [c["text"] for c in full["choices"]]


@pytest.mark.parametrize("path,body,keys", [
    ("/v1/completions", {"prompt": PROMPT},
     {"index", "text", "logprobs", "finish_reason", "stop_reason"}),
    ("/v1/chat/completions", {"messages": QUESTION},
     {"index", "delta", "logprobs", "finish_reason", "stop_reason"}),
])
def test_stream_choice_keys_are_exactly_the_contract(server: Server, path, body, keys) -> None:
    # Every streamed choice, the final one included, has exactly these keys: OpenAI's, plus
    # vLLM's stop_reason (null until the choice finishes).
    events = stream_raw(server, path, dict(body, stream=True, temperature=0, max_tokens=40))
    extra = [(i, sorted(set(ev["choices"][0]) - keys)) for i, ev in enumerate(events)
             if set(ev["choices"][0]) != keys]
    assert not extra, f"chunks with other choice keys (chunk index, extra keys): {extra}"


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": PROMPT}),
    ("/v1/chat/completions", {"messages": QUESTION}),
])
def test_stream_sends_a_chunk_for_every_sampled_token(server: Server, path, body) -> None:
    # As vLLM: a step that samples a token sends a chunk even when the token adds no text yet, so
    # a client's TTFT and inter-token latencies count every token. Here the stop string is the
    # whole greedy reply plus text that never comes, so every token's text is held back as a
    # possible start of it until the length limit releases it all in the last chunk.
    chat = path.endswith("chat/completions")
    req = dict(body, temperature=0, max_tokens=12, ignore_eos=True)
    full = server.post_json(path, req)
    reply = full["choices"][0]["message"]["content"] if chat else full["choices"][0]["text"]
    assert full["usage"]["completion_tokens"] == 12 and reply
    events = stream_raw(server, path, dict(req, stream=True, stop=[reply + "\u0001never"]))
    chunks = [ev["choices"][0] for ev in events if ev["choices"]]
    if chat:  # the role chunk first
        assert chunks.pop(0)["delta"] == {"role": "assistant", "content": ""}
    texts = [c["delta"].get("content", "") if chat else c["text"] for c in chunks]
    assert len(chunks) == 12, chunks
    assert texts[:-1] == [""] * 11 and texts[-1] == reply, texts
    assert [c["finish_reason"] for c in chunks] == [None] * 11 + ["length"]
