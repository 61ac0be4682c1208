"""Profiling through the HTTP endpoints: /start_profile and /stop_profile write one Chrome trace
(gzip JSON, `*.pt.trace.json.gz`) per rank folder with the engine's scopes (SPEC 8.1)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import DEVICE, Server, assert_error_body


def run_requests(server: Server, n: int = 2) -> None:
    client = server.client()
    for i in range(n):
        out = client.completions.create(
            model=server.model_name, prompt=f"Count to {i + 3}:", max_tokens=4, temperature=0
        )
        assert out.choices[0].text is not None


def read_trace(folder: Path) -> tuple[Path, dict[str, Any]]:
    files = sorted(folder.iterdir())
    assert len(files) == 1, files
    assert files[0].name.endswith(".pt.trace.json.gz"), files[0].name
    with gzip.open(files[0], "rt") as f:
        return files[0], json.load(f)


def complete_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e.get("ph") == "X"]


def profile(server: Server) -> str:
    r = server.request("POST", "/start_profile")
    assert r.status == 200, r.body
    assert r.json()["status"] == "success"
    run_requests(server)
    r = server.request("POST", "/stop_profile")
    assert r.status == 200, r.body
    body = r.json()
    assert body["status"] == "success"
    return body["trace"]


def test_profile_through_http_writes_a_trace_per_rank(own_server: Any, tmp_path: Path) -> None:
    server = own_server("--torch-profiler-dir", str(tmp_path))
    path = profile(server)
    rank = tmp_path / "rank_0"
    file, trace = read_trace(rank)
    assert Path(path) == file  # stop answered with the complete file's path
    names = {e["name"] for e in complete_events(trace)}
    for scope in ("step", "schedule", "plan", "forward", "sample", "postprocess", "outputs"):
        assert scope in names, (scope, sorted(names))
    assert not any(n.startswith("layer ") for n in names)  # detailed scopes only with MORE
    forward = next(e for e in complete_events(trace) if e["name"] == "forward")
    assert forward["args"]["tokens"] > 0 and forward["dur"] > 0
    instants = [e["name"] for e in trace["traceEvents"] if e.get("ph") == "i"]
    assert "request added" in instants and "request finished" in instants
    threads = {e["args"]["name"] for e in trace["traceEvents"]
               if e.get("ph") == "M" and e["name"] == "thread_name"}
    assert "engine" in threads, threads

    # Out of order: a second stop, and a second start while one runs, are client errors.
    err = assert_error_body(server.request("POST", "/stop_profile"), 400, "invalid_request_error")
    assert "not running" in err["message"], err
    assert server.request("POST", "/start_profile").status == 200
    err = assert_error_body(server.request("POST", "/start_profile"), 400,
                            "invalid_request_error")
    assert "already running" in err["message"], err
    assert server.request("POST", "/stop_profile").status == 200
    assert len(list(rank.iterdir())) == 2  # one file per session


def test_profile_more_records_layers_with_shapes_and_memory(
    own_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory from the environment (no flag), detailed profiling on.
    monkeypatch.setenv("ATOM_TORCH_PROFILER_DIR", str(tmp_path))
    monkeypatch.setenv("ATOM_PROFILER_MORE", "1")
    server = own_server()
    profile(server)
    _, trace = read_trace(tmp_path / "rank_0")
    layers = [e for e in complete_events(trace) if e["name"].startswith("layer ")]
    assert layers, "no per-layer scopes with ATOM_PROFILER_MORE=1"
    assert {"layer 0", "layer 1"} <= {e["name"] for e in layers}
    assert all(e["args"]["tokens"] > 0 and e["args"]["hidden"] > 0 for e in layers)
    forwards = [e for e in complete_events(trace) if e["name"] == "forward"]
    # Layers run inside a forward, on the same thread.
    assert all(any(f["tid"] == e["tid"] and f["ts"] <= e["ts"] <= f["ts"] + f["dur"]
                   for f in forwards) for e in layers)
    counters = [e for e in trace["traceEvents"] if e.get("ph") == "C" and e["name"] == "memory"]
    kv = "cuda kv cache" if DEVICE == "cuda" else "cpu kv cache"
    assert any(e["args"].get(kv, 0) > 0 for e in counters), counters[:5]


def test_profile_without_a_directory_is_a_client_error(server: Server) -> None:
    for path in ("/start_profile", "/stop_profile"):
        err = assert_error_body(server.request("POST", path), 400, "invalid_request_error")
        assert "--torch-profiler-dir" in err["message"], err
