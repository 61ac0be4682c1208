"""The small endpoints: health, version, models, tokenize/detokenize, profiling, metrics,
unknown routes and methods."""

from __future__ import annotations

import os
import re
import subprocess

from helpers import DEFAULT_MODEL_NAME, Server, assert_error_body, atom_binary, parse_prometheus


def test_health(server: Server) -> None:
    r = server.request("GET", "/health")
    assert r.status == 200
    assert r.json() == {"status": "ok"}


def test_version_matches_the_binary(server: Server) -> None:
    body = server.get_json("/version")
    assert set(body) == {"version"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?", body["version"]), body
    cli = subprocess.run(
        [str(atom_binary()), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert cli == f"atom {body['version']}"


def test_models_list(server: Server, client, model_path: str) -> None:
    body = server.get_json("/v1/models")
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    entry = body["data"][0]
    assert set(entry) == {"id", "object", "created", "owned_by", "root", "max_model_len"}, entry
    assert entry["id"] == DEFAULT_MODEL_NAME
    assert entry["object"] == "model"
    assert entry["owned_by"] == "atom"
    assert isinstance(entry["created"], int) and entry["created"] > 1_600_000_000
    assert isinstance(entry["root"], str) and os.path.samefile(entry["root"], model_path), entry
    # SmolLM2's context length.
    assert entry["max_model_len"] == 8192

    # The SDK sees the same.
    models = client.models.list()
    assert [m.id for m in models.data] == [DEFAULT_MODEL_NAME]
    assert models.data[0].owned_by == "atom"


def test_tokenize_detokenize_round_trip(server: Server) -> None:
    text = "Hello world, this is atom."
    out = server.post_json("/tokenize", {"prompt": text, "add_special_tokens": False})
    assert set(out) == {"tokens", "count", "max_model_len"}
    assert out["count"] == len(out["tokens"]) and 5 <= out["count"] <= 12, out
    assert all(isinstance(t, int) and t >= 0 for t in out["tokens"])
    assert out["max_model_len"] == server.get_json("/v1/models")["data"][0]["max_model_len"]
    back = server.post_json("/detokenize", {"tokens": out["tokens"]})
    assert back == {"prompt": text}
    # add_special_tokens defaults to true; SmolLM2 adds no BOS, so both agree here, and the
    # default must never drop tokens.
    default = server.post_json("/tokenize", {"prompt": text})
    assert default["tokens"][-len(out["tokens"]) :] == out["tokens"]


def test_tokenize_multibyte_round_trip(server: Server) -> None:
    text = "café 日本の首都は 😀"
    tokens = server.tokenize(text, add_special_tokens=False)
    assert server.post_json("/detokenize", {"tokens": tokens}) == {"prompt": text}


def test_tokenize_messages_applies_the_chat_template(server: Server) -> None:
    messages = [{"role": "user", "content": "What is 2+2?"}]
    out = server.post_json("/tokenize", {"messages": messages})
    assert out["count"] == len(out["tokens"])
    plain = server.tokenize("What is 2+2?", add_special_tokens=False)
    assert out["count"] > len(plain) + 5  # the template adds role markers and a system prompt
    text = server.post_json("/detokenize", {"tokens": out["tokens"]})["prompt"]
    assert "What is 2+2?" in text
    # add_generation_prompt: the prompt ends by opening the assistant's turn.
    assert text.endswith("assistant\n"), repr(text)


def test_profiling_not_enabled(server: Server) -> None:
    for path in ("/start_profile", "/stop_profile"):
        r = server.request("POST", path)
        err = assert_error_body(r, 400, "invalid_request_error")
        assert "profil" in err["message"].lower(), err


def test_metrics_exposition(server: Server) -> None:
    server.wait_idle()
    r = server.request("GET", "/metrics")
    assert r.status == 200
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    text = r.body.decode()
    for name in ("atom:kv_cache_usage_perc", "atom:num_requests_running",
                 "atom:num_requests_waiting"):
        assert re.search(rf"^# TYPE {re.escape(name)} gauge$", text, re.M), name
    m = parse_prometheus(text)
    assert m["atom:num_requests_running"] == 0
    assert m["atom:num_requests_waiting"] == 0
    assert m["atom:kv_cache_usage_perc"] == 0


def test_unknown_route_is_404(server: Server) -> None:
    assert_error_body(server.request("GET", "/v1/nothing-here"), 404)
    assert_error_body(server.request("POST", "/v2/completions", {"prompt": "x"}), 404)


def test_wrong_method_is_405(server: Server) -> None:
    assert_error_body(server.request("GET", "/v1/completions"), 405)
    assert_error_body(server.request("GET", "/v1/chat/completions"), 405)
    assert_error_body(server.request("POST", "/health"), 405)
