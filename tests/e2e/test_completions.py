"""POST /v1/completions through the openai SDK: prompts of every form, sampling fields, seeds,
n, stop strings and token ids, echo, streaming."""

from __future__ import annotations

import re

import pytest

from helpers import Server

PARIS = "The capital of France is"  # greedy: " Paris." and a few more lines, then EOS (< 40)
STORY = "Once upon a time, in a small village,"  # open-ended: sampling varies
EMOJI = "Here is a list of emojis: 😀 😃"  # greedy output is emoji made of byte tokens


def stop_reason(choice):
    extra = choice.model_extra or {}
    assert "stop_reason" in extra, f"choice has no stop_reason: {choice}"
    return extra["stop_reason"]


def complete(client, model_name, prompt, **kw):
    extra_body = kw.pop("extra_body", {})
    for key in ("top_k", "min_p", "ignore_eos", "stop_token_ids", "repetition_penalty",
                "min_tokens", "skip_special_tokens"):
        if key in kw:
            extra_body[key] = kw.pop(key)
    return client.completions.create(model=model_name, prompt=prompt, extra_body=extra_body, **kw)


def greedy_text(client, model_name, prompt, max_tokens=16, **kw) -> str:
    out = complete(client, model_name, prompt, max_tokens=max_tokens, temperature=0, **kw)
    return out.choices[0].text


def middle_piece(text: str) -> str:
    """Six characters from the middle of `text`: a stop string over token boundaries."""
    assert len(text) >= 30, text
    start = len(text) // 2
    return text[start : start + 6]


def test_greedy_completion_fields_and_usage(server: Server, client, model_name) -> None:
    out = complete(client, model_name, PARIS, max_tokens=40, temperature=0)
    assert re.fullmatch(r"cmpl-[0-9a-f]+", out.id), out.id
    assert out.object == "text_completion"
    assert out.model == model_name
    assert isinstance(out.created, int) and out.created > 1_600_000_000
    assert len(out.choices) == 1
    choice = out.choices[0]
    assert choice.index == 0
    assert choice.logprobs is None
    assert choice.text.startswith(" Paris"), choice.text
    # The model ends this answer with EOS well before 40 tokens.
    assert choice.finish_reason == "stop"
    assert stop_reason(choice) is None
    assert "\ufffd" not in choice.text
    # Usage agrees with /tokenize; the EOS token counts as generated.
    assert out.usage.prompt_tokens == len(server.tokenize(PARIS))
    assert out.usage.completion_tokens == len(server.tokenize(choice.text, False)) + 1
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_raw_completion_body_has_exactly_the_contract_fields(server: Server, model_name) -> None:
    r = server.request("POST", "/v1/completions",
                       {"model": model_name, "prompt": PARIS, "max_tokens": 4, "temperature": 0})
    assert r.status == 200, r.body
    assert r.headers.get("content-type", "").startswith("application/json")
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}, body
    assert set(body["choices"][0]) == {"index", "text", "logprobs", "finish_reason",
                                      "stop_reason"}, body
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["stop_reason"] is None
    p = len(server.tokenize(PARIS))
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        p, 4, p + 4), usage


def test_model_field_may_be_absent(server: Server) -> None:
    r = server.request("POST", "/v1/completions", {"prompt": PARIS, "max_tokens": 2})
    assert r.status == 200, r.body
    assert r.json()["model"] == server.model_name


def test_max_tokens_gives_length(client, model_name) -> None:
    out = complete(client, model_name, PARIS, max_tokens=8, temperature=0, ignore_eos=True)
    assert out.choices[0].finish_reason == "length"
    assert stop_reason(out.choices[0]) is None
    assert out.usage.completion_tokens == 8


def test_default_max_tokens_is_16(server: Server, model_name) -> None:
    r = server.request("POST", "/v1/completions",
                       {"model": model_name, "prompt": STORY, "temperature": 0,
                        "ignore_eos": True})
    assert r.status == 200, r.body
    body = r.json()
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"


def test_prompt_forms_agree(server: Server, client, model_name) -> None:
    ref = greedy_text(client, model_name, PARIS, max_tokens=12, ignore_eos=True)
    ids = server.tokenize(PARIS)
    # A list of token ids is the same prompt.
    out = complete(client, model_name, ids, max_tokens=12, temperature=0, ignore_eos=True)
    assert out.choices[0].text == ref
    assert out.usage.prompt_tokens == len(ids)

    # A list of strings: one choice per prompt, in order.
    ref2 = greedy_text(client, model_name, STORY, max_tokens=12, ignore_eos=True)
    out = complete(client, model_name, [PARIS, STORY], max_tokens=12, temperature=0,
                   ignore_eos=True)
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.text for c in out.choices] == [ref, ref2]
    ids2 = server.tokenize(STORY)
    assert out.usage.prompt_tokens == len(ids) + len(ids2)
    assert out.usage.completion_tokens == 24

    # A list of lists of ids.
    out = complete(client, model_name, [ids2, ids], max_tokens=12, temperature=0,
                   ignore_eos=True)
    assert [c.text for c in out.choices] == [ref2, ref]


def test_same_seed_same_text(client, model_name) -> None:
    kw = dict(max_tokens=24, temperature=1.0, ignore_eos=True)
    a = complete(client, model_name, STORY, seed=1234, **kw).choices[0].text
    b = complete(client, model_name, STORY, seed=1234, **kw).choices[0].text
    assert a == b
    others = {complete(client, model_name, STORY, seed=s, **kw).choices[0].text
              for s in (1, 2, 3)}
    assert others - {a}, "three other seeds all gave the text of seed 1234"


def test_n_without_seed_gives_independent_samples(client, model_name) -> None:
    out = complete(client, model_name, STORY, n=4, max_tokens=16, temperature=1.0,
                   ignore_eos=True)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert len({c.text for c in out.choices}) >= 2, [c.text for c in out.choices]
    assert out.usage.completion_tokens == 4 * 16
    # The prompt is counted once (vLLM's usage), however many samples it has.
    assert out.usage.prompt_tokens == complete(client, model_name, STORY,
                                               max_tokens=1).usage.prompt_tokens


def test_n_with_seed_uses_seed_plus_j(client, model_name) -> None:
    kw = dict(max_tokens=16, temperature=1.0, ignore_eos=True)
    out = complete(client, model_name, STORY, n=3, seed=100, **kw)
    singles = [complete(client, model_name, STORY, seed=100 + j, **kw).choices[0].text
               for j in range(3)]
    assert [c.text for c in out.choices] == singles


def test_several_prompts_and_n_index_layout(client, model_name) -> None:
    kw = dict(max_tokens=8, temperature=1.0, ignore_eos=True)
    prompts = [PARIS, STORY]
    out = complete(client, model_name, prompts, n=2, seed=7, **kw)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(prompts):
        for j in range(2):
            single = complete(client, model_name, prompt, seed=7 + j, **kw).choices[0].text
            assert out.choices[p * 2 + j].text == single, (p, j)


def test_stop_string_is_cut_and_reported(client, model_name) -> None:
    full = greedy_text(client, model_name, PARIS, max_tokens=24, ignore_eos=True)
    assert "." in full, full
    out = complete(client, model_name, PARIS, max_tokens=24, temperature=0, ignore_eos=True,
                   stop=".")
    choice = out.choices[0]
    assert choice.text == full[: full.index(".")]
    assert choice.finish_reason == "stop"
    assert stop_reason(choice) == "."


def test_stop_list_first_match_wins(client, model_name) -> None:
    full = greedy_text(client, model_name, PARIS, max_tokens=24, ignore_eos=True)
    # A multi-token stop string later in the text and a never-seen one: the earliest match wins.
    late = middle_piece(full)
    out = complete(client, model_name, PARIS, max_tokens=24, temperature=0, ignore_eos=True,
                   stop=["zzqx never", late])
    assert out.choices[0].text == full[: full.index(late)]
    assert out.choices[0].finish_reason == "stop"
    assert stop_reason(out.choices[0]) == late


def test_stop_token_ids(server: Server, client, model_name) -> None:
    full = complete(client, model_name, PARIS, max_tokens=40, temperature=0)
    assert full.choices[0].finish_reason == "stop"  # EOS, after the first "."
    period = server.tokenize(".", add_special_tokens=False)
    assert len(period) == 1
    out = complete(client, model_name, PARIS, max_tokens=40, temperature=0,
                   stop_token_ids=period)
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    assert stop_reason(choice) == period[0]
    # Greedy output starts " Paris" "." : the stop token is the second generated token.
    assert out.usage.completion_tokens == 2
    assert choice.text.startswith(" Paris")


def test_stop_token_text_is_not_in_the_output(server: Server, client, model_name) -> None:
    # As vLLM: the token that stopped generation (EOS or a stop_token_ids entry) is counted
    # but not detokenized into the text.
    full = greedy_text(client, model_name, PARIS, max_tokens=24, ignore_eos=True)
    out = complete(client, model_name, PARIS, max_tokens=24, temperature=0,
                   stop_token_ids=server.tokenize(".", False))
    assert out.choices[0].text == full[: full.index(".")]


def test_stop_token_ids_apply_with_ignore_eos(server: Server, client, model_name) -> None:
    # ignore_eos ignores the EOS token only; explicit stop_token_ids still stop (as vLLM).
    period = server.tokenize(".", False)
    out = complete(client, model_name, PARIS, max_tokens=24, temperature=0, ignore_eos=True,
                   stop_token_ids=period)
    assert out.choices[0].finish_reason == "stop"
    assert stop_reason(out.choices[0]) == period[0]
    assert out.usage.completion_tokens == 2


def test_echo_prepends_the_prompt(client, model_name) -> None:
    ref = greedy_text(client, model_name, PARIS, max_tokens=6, ignore_eos=True)
    out = complete(client, model_name, PARIS, max_tokens=6, temperature=0, ignore_eos=True,
                   echo=True)
    assert out.choices[0].text == PARIS + ref


@pytest.mark.parametrize("field,value", [("top_k", 1), ("top_p", 1e-9), ("min_p", 1.0)])
def test_truncation_to_one_token_equals_greedy(client, model_name, field, value) -> None:
    ref = greedy_text(client, model_name, STORY, max_tokens=16, ignore_eos=True)
    out = complete(client, model_name, STORY, max_tokens=16, temperature=1.0, seed=5,
                   ignore_eos=True, **{field: value})
    assert out.choices[0].text == ref


@pytest.mark.parametrize("field,value", [
    ("frequency_penalty", 2.0), ("presence_penalty", 2.0), ("repetition_penalty", 2.0)])
def test_penalties_change_greedy_output(client, model_name, field, value) -> None:
    # Greedy output of PARIS repeats its own tokens (" Paris.\n\nThe answer is: 2018-01-..."),
    # which each penalty pushes away from.
    ref = greedy_text(client, model_name, PARIS, max_tokens=16, ignore_eos=True)
    out = complete(client, model_name, PARIS, max_tokens=16, temperature=0, ignore_eos=True,
                   **{field: value})
    assert out.choices[0].text != ref


def test_min_tokens_delays_eos(client, model_name) -> None:
    free = complete(client, model_name, PARIS, max_tokens=64, temperature=0)
    n = free.usage.completion_tokens
    assert free.choices[0].finish_reason == "stop" and n < 40, free
    out = complete(client, model_name, PARIS, max_tokens=64, temperature=0, min_tokens=n + 8)
    assert out.usage.completion_tokens >= n + 8
    assert out.choices[0].text.startswith(free.choices[0].text)


def test_streaming_deltas_join_to_the_full_text(client, model_name) -> None:
    full = complete(client, model_name, PARIS, max_tokens=40, temperature=0)
    stream = complete(client, model_name, PARIS, max_tokens=40, temperature=0, stream=True)
    texts, finishes, ids = [], [], set()
    for chunk in stream:
        ids.add(chunk.id)
        assert chunk.object == "text_completion"
        assert len(chunk.choices) == 1 and chunk.choices[0].index == 0
        texts.append(chunk.choices[0].text)
        finishes.append(chunk.choices[0].finish_reason)
    assert len(ids) == 1 and re.fullmatch(r"cmpl-[0-9a-f]+", ids.pop())
    assert "".join(texts) == full.choices[0].text
    assert finishes[-1] == full.choices[0].finish_reason == "stop"
    assert all(f is None for f in finishes[:-1])


def test_streaming_stop_string_never_leaks(client, model_name) -> None:
    full = greedy_text(client, model_name, PARIS, max_tokens=24, ignore_eos=True)
    stop = middle_piece(full)
    stream = complete(client, model_name, PARIS, max_tokens=24, temperature=0, ignore_eos=True,
                      stop=[stop], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_multibyte_deltas_are_whole_characters(client, model_name) -> None:
    full = complete(client, model_name, EMOJI, max_tokens=24, temperature=0, ignore_eos=True)
    text = full.choices[0].text
    assert any(ord(ch) > 0xFFFF for ch in text), text  # emoji: 4-byte UTF-8, split over tokens
    assert "\ufffd" not in text, text
    stream = complete(client, model_name, EMOJI, max_tokens=24, temperature=0, ignore_eos=True,
                      stream=True)
    deltas = [c.choices[0].text for c in stream]
    assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == text


def test_streaming_include_usage(client, model_name) -> None:
    full = complete(client, model_name, PARIS, max_tokens=10, temperature=0, ignore_eos=True)
    stream = complete(client, model_name, PARIS, max_tokens=10, temperature=0, ignore_eos=True,
                      stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].text for c in chunks[:-1]) == full.choices[0].text
