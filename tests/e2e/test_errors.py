"""Invalid requests: HTTP 400 with the OpenAI error envelope, through plain HTTP and the SDK."""

from __future__ import annotations

import openai
import pytest

from helpers import Server, assert_error_body

COMPLETION_CASES = {
    "malformed json": b'{"prompt": "Hello", ',
    "body not an object": b'["Hello"]',
    "prompt missing": {"max_tokens": 4},
    "prompt a number": {"prompt": 5},
    "prompt a list of mixed types": {"prompt": ["a", 5]},
    "empty prompt": {"prompt": ""},
    "empty prompt list": {"prompt": []},
    "empty token list": {"prompt": [[]]},
    "token id out of vocabulary": {"prompt": [1_000_000_000]},
    "temperature a string": {"prompt": "Hello", "temperature": "hot"},
    "negative temperature": {"prompt": "Hello", "temperature": -1},
    "top_p zero": {"prompt": "Hello", "top_p": 0},
    "max_tokens zero": {"prompt": "Hello", "max_tokens": 0},
    "max_tokens negative": {"prompt": "Hello", "max_tokens": -3},
    "max_tokens a string": {"prompt": "Hello", "max_tokens": "8"},
    "n zero": {"prompt": "Hello", "n": 0},
    "n above 128": {"prompt": "Hello", "n": 129},
    "stop a number": {"prompt": "Hello", "stop": 5},
    "stream a string": {"prompt": "Hello", "stream": "yes"},
    "logprobs set": {"prompt": "Hello", "logprobs": 1},
    "unknown model": {"prompt": "Hello", "model": "gpt-4"},
}

CHAT_CASES = {
    "malformed json": b'{"messages": [',
    "messages missing": {"max_tokens": 4},
    "messages not a list": {"messages": "What is 2+2?"},
    "message not an object": {"messages": ["What is 2+2?"]},
    "content a number": {"messages": [{"role": "user", "content": 5}]},
    "temperature a string": {"messages": [{"role": "user", "content": "Hi"}],
                             "temperature": "hot"},
    "max_tokens zero": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0},
    "max_completion_tokens negative": {"messages": [{"role": "user", "content": "Hi"}],
                                       "max_completion_tokens": -1},
    "n zero": {"messages": [{"role": "user", "content": "Hi"}], "n": 0},
    "n above 128": {"messages": [{"role": "user", "content": "Hi"}], "n": 129},
    "unknown model": {"messages": [{"role": "user", "content": "Hi"}], "model": "gpt-4"},
}


@pytest.mark.parametrize("case", list(COMPLETION_CASES))
def test_bad_completion_request_is_400(server: Server, case: str) -> None:
    r = server.request("POST", "/v1/completions", COMPLETION_CASES[case])
    err = assert_error_body(r, 400, "invalid_request_error")
    assert len(err["message"]) > 5


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_bad_chat_request_is_400(server: Server, case: str) -> None:
    r = server.request("POST", "/v1/chat/completions", CHAT_CASES[case])
    assert_error_body(r, 400, "invalid_request_error")


def test_bad_streaming_request_is_a_plain_400(server: Server) -> None:
    # Validation happens before the stream starts: a JSON error, not an SSE body.
    r = server.request("POST", "/v1/completions", {"prompt": "Hi", "n": 0, "stream": True})
    assert_error_body(r, 400, "invalid_request_error")


def test_error_messages_name_the_problem(server: Server) -> None:
    err = assert_error_body(
        server.request("POST", "/v1/completions", {"prompt": "Hi", "model": "gpt-4"}), 400)
    assert "gpt-4" in err["message"], err
    err = assert_error_body(
        server.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 0}), 400)
    assert "max_tokens" in err["message"] or err["param"] == "max_tokens", err


def test_sdk_raises_bad_request(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="not-the-model", prompt="Hello", max_tokens=4)
    assert info.value.status_code == 400
    body = info.value.response.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "not-the-model" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="not-the-model",
                                       messages=[{"role": "user", "content": "Hi"}])


def test_server_survives_bad_requests(server: Server, client, model_name) -> None:
    for case in COMPLETION_CASES.values():
        server.request("POST", "/v1/completions", case)
    out = client.completions.create(model=model_name, prompt="Hello", max_tokens=2)
    assert out.usage.completion_tokens == 2
    m = server.wait_idle()
    assert m["atom:num_requests_running"] == 0 and m["atom:kv_cache_usage_perc"] == 0


def test_context_length_limits(own_server) -> None:
    srv = own_server("--max-model-len", "256")
    info = srv.get_json("/v1/models")["data"][0]
    assert info["max_model_len"] == 256
    client = srv.client()
    name = srv.model_name
    ids = srv.tokenize("The quick brown fox jumps over the lazy dog. " * 40, False)[:250]
    assert len(ids) == 250

    # 250 + 6 = 256 fits exactly.
    out = client.completions.create(model=name, prompt=ids, max_tokens=6, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.usage.prompt_tokens == 250 and out.usage.completion_tokens == 6
    # 250 + 7 does not.
    r = srv.request("POST", "/v1/completions", {"prompt": ids, "max_tokens": 7})
    assert_error_body(r, 400, "invalid_request_error")
    # Neither does a prompt of max_model_len tokens, nor a longer one.
    for n in (256, 300):
        r = srv.request("POST", "/v1/completions",
                        {"prompt": (ids * 2)[:n], "max_tokens": 1})
        assert_error_body(r, 400, "invalid_request_error")
    # Chat without a limit: up to the context length.
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    p = srv.post_json("/tokenize", {"messages": messages})["count"]
    out = client.chat.completions.create(model=name, messages=messages, temperature=0,
                                         extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == p
    assert out.usage.completion_tokens == 256 - p
    # A chat prompt longer than the context.
    long_messages = [{"role": "user", "content": "dragon " * 300}]
    r = srv.request("POST", "/v1/chat/completions",
                    {"messages": long_messages, "max_tokens": 4})
    assert_error_body(r, 400, "invalid_request_error")
    # The server is still healthy and idle.
    m = srv.wait_idle()
    assert m["atom:num_requests_running"] == 0 and m["atom:kv_cache_usage_perc"] == 0
