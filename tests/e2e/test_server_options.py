"""Servers with non-default flags: --api-key, --served-model-name, --model, and
--max-pending-requests (503 with Retry-After)."""

from __future__ import annotations

import os
import time

import openai
import pytest

from helpers import SseStream, assert_error_body

KEY = "sk-atom-test-key"


def test_api_key(own_server) -> None:
    srv = own_server("--api-key", KEY)
    # /health stays open.
    r = srv.request("GET", "/health")
    assert r.status == 200 and r.json() == {"status": "ok"}
    body = {"prompt": "Hello", "max_tokens": 2}
    for path, method, data in [("/v1/models", "GET", None),
                               ("/v1/completions", "POST", body),
                               ("/v1/chat/completions", "POST",
                                {"messages": [{"role": "user", "content": "Hi"}]})]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": f"Basic {KEY}"}):
            r = srv.request(method, path, data, headers)
            assert_error_body(r, 401)
    r = srv.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}"})
    assert r.status == 200, r.body
    assert r.json()["usage"]["completion_tokens"] == 2

    # Through the SDK: the right key works, a wrong one raises AuthenticationError.
    good = srv.client(api_key=KEY)
    assert [m.id for m in good.models.list().data] == [srv.model_name]
    out = good.chat.completions.create(model=srv.model_name, max_tokens=3,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert out.usage.completion_tokens == 3 or out.choices[0].finish_reason == "stop"
    with pytest.raises(openai.AuthenticationError) as info:
        srv.client(api_key="wrong").completions.create(model=srv.model_name, prompt="Hi",
                                                       max_tokens=2)
    assert info.value.status_code == 401


def test_served_model_name(own_server) -> None:
    srv = own_server("--served-model-name", "my-model", model_name="my-model")
    data = srv.get_json("/v1/models")["data"]
    assert [d["id"] for d in data] == ["my-model"]
    client = srv.client()
    out = client.completions.create(model="my-model", prompt="Hello", max_tokens=2)
    assert out.model == "my-model"
    out = client.chat.completions.create(model="my-model", max_tokens=2,
                                         messages=[{"role": "user", "content": "Hi"}])
    assert out.model == "my-model"
    # The default name is not the served name any more.
    r = srv.request("POST", "/v1/completions",
                    {"model": "SmolLM2-135M-Instruct", "prompt": "Hello", "max_tokens": 2})
    assert_error_body(r, 400, "invalid_request_error")


def test_model_path_is_the_default_name(own_server, model_path: str) -> None:
    srv = own_server("--model", model_path, model_name=model_path)
    entry = srv.get_json("/v1/models")["data"][0]
    assert entry["id"] == model_path
    assert os.path.samefile(entry["root"], model_path)
    out = srv.client().completions.create(model=model_path, prompt="Hello", max_tokens=2)
    assert out.model == model_path


def test_max_pending_requests_gives_503(own_server) -> None:
    srv = own_server("--max-pending-requests", "1")
    # One long request holds the only slot.
    hold = SseStream(srv, "/v1/completions",
                     {"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True,
                      "stream": True})
    try:
        assert hold.status == 200
        assert hold.next_event() is not None
        r = srv.request("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        assert_error_body(r, 503)
        retry_after = r.headers.get("retry-after")
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, \
            r.headers
        r = srv.request("POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert_error_body(r, 503)
        with pytest.raises(openai.InternalServerError) as info:
            srv.client().completions.create(model=srv.model_name, prompt="Hi", max_tokens=2)
        assert info.value.status_code == 503
        # Non-generation routes are not limited.
        assert srv.request("GET", "/health").status == 200
        assert srv.request("GET", "/v1/models").status == 200
    finally:
        hold.close()
    # Once the held request is gone (aborted by the disconnect), requests are accepted again.
    deadline = time.monotonic() + 10
    while True:
        r = srv.request("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status == 200, r.body
