"""POST /v1/chat/completions through the openai SDK: the chat template, content parts, token
limits, seeds, n, stop strings, streaming."""

from __future__ import annotations

import re

from helpers import Server

QUESTION = [{"role": "user", "content": "What is 2+2?"}]  # greedy: a short answer, then EOS
STORY = [{"role": "user", "content": "Tell me a story about a dragon."}]


def stop_reason(choice):
    extra = choice.model_extra or {}
    assert "stop_reason" in extra, f"choice has no stop_reason: {choice}"
    return extra["stop_reason"]


def chat(client, model_name, messages, **kw):
    extra_body = kw.pop("extra_body", {})
    for key in ("top_k", "min_p", "ignore_eos", "stop_token_ids", "repetition_penalty",
                "min_tokens", "skip_special_tokens"):
        if key in kw:
            extra_body[key] = kw.pop(key)
    return client.chat.completions.create(model=model_name, messages=messages,
                                          extra_body=extra_body, **kw)


def test_greedy_chat_fields_and_usage(server: Server, client, model_name) -> None:
    out = chat(client, model_name, QUESTION, max_tokens=48, temperature=0)
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", out.id), out.id
    assert out.object == "chat.completion"
    assert out.model == model_name
    assert isinstance(out.created, int) and out.created > 1_600_000_000
    assert len(out.choices) == 1
    choice = out.choices[0]
    assert choice.index == 0
    assert choice.logprobs is None
    assert choice.message.role == "assistant"
    assert "4" in choice.message.content, choice.message.content
    assert choice.finish_reason == "stop"
    assert stop_reason(choice) is None
    # Special tokens (the template's end-of-turn) are not in the content.
    assert "<|im_end|>" not in choice.message.content
    assert "<|im_start|>" not in choice.message.content
    prompt = server.post_json("/tokenize", {"messages": QUESTION})
    assert out.usage.prompt_tokens == prompt["count"]
    assert out.usage.completion_tokens == (
        len(server.tokenize(choice.message.content, False)) + 1)  # + the EOS token
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_raw_chat_body_has_exactly_the_contract_fields(server: Server, model_name) -> None:
    r = server.request("POST", "/v1/chat/completions",
                       {"model": model_name, "messages": QUESTION, "max_tokens": 3,
                        "temperature": 0})
    assert r.status == 200, r.body
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}, body
    choice = body["choices"][0]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason", "stop_reason"}, body
    assert set(choice["message"]) >= {"role", "content"}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_content_parts_equal_a_string(server: Server, client, model_name) -> None:
    ref = chat(client, model_name, QUESTION, max_tokens=24, temperature=0)
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]
    out = chat(client, model_name, parts, max_tokens=24, temperature=0)
    assert out.choices[0].message.content == ref.choices[0].message.content
    assert out.usage.prompt_tokens == ref.usage.prompt_tokens


def test_system_and_multi_turn_messages(server: Server, client, model_name) -> None:
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    out = chat(client, model_name, messages, max_tokens=16, temperature=0)
    assert out.usage.prompt_tokens == server.post_json("/tokenize",
                                                       {"messages": messages})["count"]
    assert out.choices[0].message.content


def test_max_tokens_and_max_completion_tokens(client, model_name) -> None:
    a = chat(client, model_name, STORY, max_tokens=5, temperature=0)
    b = chat(client, model_name, STORY, max_completion_tokens=5, temperature=0)
    for out in (a, b):
        assert out.choices[0].finish_reason == "length"
        assert stop_reason(out.choices[0]) is None
        assert out.usage.completion_tokens == 5
    assert a.choices[0].message.content == b.choices[0].message.content


def test_no_limit_runs_to_eos(client, model_name) -> None:
    out = chat(client, model_name, QUESTION, temperature=0)
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < 100


def test_chat_seed_and_n(client, model_name) -> None:
    kw = dict(max_tokens=12, temperature=1.0, ignore_eos=True)
    a = chat(client, model_name, STORY, seed=42, **kw).choices[0].message.content
    b = chat(client, model_name, STORY, seed=42, **kw).choices[0].message.content
    assert a == b
    out = chat(client, model_name, STORY, seed=42, n=2, **kw)
    assert [c.index for c in out.choices] == [0, 1]
    c1 = chat(client, model_name, STORY, seed=43, **kw).choices[0].message.content
    assert [c.message.content for c in out.choices] == [a, c1]


def test_chat_stop_string(client, model_name) -> None:
    full = chat(client, model_name, STORY, max_tokens=24, temperature=0,
                ignore_eos=True).choices[0].message.content
    assert len(full) > 20, full
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    out = chat(client, model_name, STORY, max_tokens=24, temperature=0, ignore_eos=True,
               stop=[stop])
    assert out.choices[0].message.content == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    assert stop_reason(out.choices[0]) == stop


def test_min_tokens_delays_eos(client, model_name) -> None:
    free = chat(client, model_name, QUESTION, max_tokens=48, temperature=0)
    n = free.usage.completion_tokens
    assert free.choices[0].finish_reason == "stop", free
    out = chat(client, model_name, QUESTION, max_tokens=48, temperature=0, min_tokens=n + 6)
    assert out.usage.completion_tokens >= n + 6


def test_chat_streaming_matches_non_streaming(client, model_name) -> None:
    full = chat(client, model_name, QUESTION, max_tokens=48, temperature=0)
    stream = chat(client, model_name, QUESTION, max_tokens=48, temperature=0, stream=True,
                  stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", chunks[0].id)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    body, last = chunks[:-1], chunks[-1]
    first = body[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert first.finish_reason is None
    assert all(c.choices[0].delta.role is None for c in body[1:])
    assert "".join(c.choices[0].delta.content or "" for c in body) == \
        full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in body][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in body[:-1])
    assert last.choices == [] and last.usage.model_dump() == full.usage.model_dump()


def test_chat_streaming_n2_each_choice_complete(client, model_name) -> None:
    kw = dict(max_tokens=10, temperature=1.0, ignore_eos=True, seed=9, n=2)
    full = chat(client, model_name, STORY, **kw)
    stream = chat(client, model_name, STORY, stream=True, **kw)
    texts: dict[int, list[str]] = {0: [], 1: []}
    roles: dict[int, int] = {0: 0, 1: 0}
    finishes: dict[int, list[str]] = {0: [], 1: []}
    for chunk in stream:
        assert len(chunk.choices) == 1
        c = chunk.choices[0]
        if not texts[c.index] and roles[c.index] == 0:
            assert c.delta.role == "assistant", "the first chunk of a choice carries the role"
        if c.delta.role is not None:
            roles[c.index] += 1
        assert not finishes[c.index], f"choice {c.index} has a chunk after its finish_reason"
        texts[c.index].append(c.delta.content or "")
        if c.finish_reason is not None:
            finishes[c.index].append(c.finish_reason)
    assert roles == {0: 1, 1: 1}
    assert finishes == {0: ["length"], 1: ["length"]}
    assert ["".join(texts[i]) for i in (0, 1)] == [c.message.content for c in full.choices]


def test_skip_special_tokens(client, model_name) -> None:
    # Past its EOS (ignore_eos) the model writes template tokens such as <|im_end|>: dropped
    # from the text by default, kept with skip_special_tokens false.
    kw = dict(max_tokens=20, temperature=0, ignore_eos=True)
    default = chat(client, model_name, QUESTION, **kw).choices[0].message.content
    kept = chat(client, model_name, QUESTION, skip_special_tokens=False,
                **kw).choices[0].message.content
    assert "<|im_end|>" in kept, kept
    assert "<|im_" not in default, default
    assert re.sub(r"<\|im_(start|end)\|>", "", kept) == default
