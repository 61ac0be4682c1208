"""Helpers of the end-to-end tests: a real `atom serve` process, plain HTTP, SSE, metrics.

The binary is ${ATOM_BUILD_DIR:-build}/atom (relative to the repo root).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


# The device the servers run on (scripts/gpu-e2e.sh sets cuda): a few tests allow for the GPU's
# batch-dependent numerics (test_concurrency.py says how).
DEVICE = os.environ.get("ATOM_E2E_DEVICE", "cpu")


def atom_binary() -> Path:
    build_dir = Path(os.environ.get("ATOM_BUILD_DIR", "build"))
    if not build_dir.is_absolute():
        build_dir = REPO_ROOT / build_dir
    return build_dir / "atom"


def free_port() -> int:
    """A port nothing listens on now: bind port 0, read the port, release it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """One `atom serve` process listening on 127.0.0.1:port."""

    proc: subprocess.Popen
    port: int
    args: list[str]
    log_path: Path
    model_name: str
    _log_file: Any = field(repr=False, default=None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no server log>"
        return text[-chars:]

    # --- plain HTTP (http.client: the exact status, headers and bytes the server sent) -------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> HttpResult:
        """One request on a fresh connection. `body` may be bytes/str (sent as is) or JSON data."""
        hdrs = dict(headers or {})
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            return HttpResult(
                resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
            )
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        r = self.request("GET", path)
        assert r.status == 200, f"GET {path} -> {r.status} {r.body[:500]!r}"
        return r.json()

    def post_json(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        r = self.request("POST", path, body, headers)
        assert r.status == 200, f"POST {path} -> {r.status} {r.body[:500]!r}"
        return r.json()

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        out = self.post_json(
            "/tokenize", {"prompt": prompt, "add_special_tokens": add_special_tokens}
        )
        assert out["count"] == len(out["tokens"])
        return out["tokens"]

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {metric name (labels dropped): value}."""
        r = self.request("GET", "/metrics")
        assert r.status == 200, f"GET /metrics -> {r.status} {r.body[:500]!r}"
        return parse_prometheus(r.body.decode())

    def wait_idle(self, timeout: float = 10.0) -> dict[str, float]:
        """Wait until nothing runs or waits and the KV cache is empty; returns the last metrics."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if (
                m.get("atom:num_requests_running") == 0
                and m.get("atom:num_requests_waiting") == 0
                and m.get("atom:kv_cache_usage_perc") == 0
            ):
                return m
            if time.monotonic() > deadline:
                return m
            time.sleep(0.1)

    # --- clients -------------------------------------------------------------------------------

    def client(self, api_key: str = "unused", **kwargs: Any) -> openai.OpenAI:
        # No retries: a retried 5xx or dropped connection would hide what the server did.
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120.0)
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, **kwargs)

    def async_client(self, api_key: str = "unused", **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120.0)
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, **kwargs)

    # --- lifecycle -----------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait; returns the exit code (None: still running, then killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait_exit(timeout)
        if code is None:
            self.proc.kill()
            self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed by metric name (the last sample wins)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$", line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1)] = float(m.group(3))
    return out


def start_server(*extra_args: str, model_name: str = DEFAULT_MODEL_NAME) -> Server:
    """Start `atom serve` on a free loopback port and wait until GET /health answers 200."""
    binary = atom_binary()
    if not binary.exists():
        pytest.fail(
            f"{binary} does not exist: build it (scripts/build.sh) or set ATOM_BUILD_DIR",
            pytrace=False,
        )
    port = free_port()
    # ATOM_E2E_SERVE_ARGS: flags every server gets first (e.g. on a GPU host, where several
    # servers share the card: "--gpu-memory-utilization 0.05"); the test's own flags follow.
    common = shlex.split(os.environ.get("ATOM_E2E_SERVE_ARGS", ""))
    args = [
        str(binary), "serve", "--host", "127.0.0.1", "--server-port", str(port), *common,
        *extra_args,
    ]
    fd, log_name = tempfile.mkstemp(prefix="atom-serve-", suffix=".log")
    os.close(fd)
    log_path = Path(log_name)
    log_file = open(log_path, "wb")
    # stdout and stderr go to a file, not a pipe: a pipe nobody reads would block the server.
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT
    )
    server = Server(proc, port, args, log_path, model_name, log_file)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            code = proc.returncode
            server.stop()
            pytest.fail(
                f"atom serve exited with code {code} before it was ready.\n"
                f"command: {' '.join(args)}\n--- server output ---\n{server.log_tail()}",
                pytrace=False,
            )
        try:
            r = server.request("GET", "/health", timeout=2.0)
            if r.status == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(
                f"atom serve did not answer GET /health with 200 within {STARTUP_TIMEOUT_S:.0f} s"
                f"\ncommand: {' '.join(args)}\n--- server output ---\n{server.log_tail()}",
                pytrace=False,
            )
        time.sleep(0.1)


def assert_error_body(result: HttpResult, status: int, error_type: str | None = None) -> dict:
    """The response has `status` and the error envelope; returns the "error" object."""
    assert result.status == status, (
        f"expected HTTP {status}, got {result.status}: {result.body[:500]!r}"
    )
    assert result.headers.get("content-type", "").startswith("application/json"), result.headers
    body = result.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], (str, int)), err
    if error_type is not None:
        assert err["type"] == error_type, err
    return err


def parse_sse(raw: bytes) -> list[Any]:
    """The JSON payloads of an SSE body that must be exactly `data: <json>\n\n`... then
    `data: [DONE]\n\n`, and nothing else (no comments, no other fields, no CRs)."""
    text = raw.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), f"stream does not end with [DONE]: {text[-300:]!r}"
    events = text.split("\n\n")
    assert events[-1] == "", repr(text[-300:])
    events = events[:-1]
    assert events[-1] == "data: [DONE]"
    payloads = []
    for ev in events[:-1]:
        assert ev.startswith("data: "), f"not a data event: {ev!r}"
        body = ev[len("data: ") :]
        assert "\n" not in body and "\r" not in body, f"event spans lines: {ev!r}"
        assert body != "[DONE]", "[DONE] before the end of the stream"
        payloads.append(json.loads(body))
    return payloads


class SseStream:
    """An SSE response read event by event over a raw connection (so it can be dropped)."""

    def __init__(self, server: Server, path: str, body: Any, timeout: float = 60.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        self.conn.request("POST", path, body=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def next_event(self) -> str | None:
        """The next event's data ("[DONE]" included); None at the end of the body."""
        lines = []
        while True:
            line = self.resp.readline()
            if not line:
                return None
            if line == b"\n":
                break
            lines.append(line.decode("utf-8").rstrip("\n"))
        assert len(lines) == 1 and lines[0].startswith("data: "), lines
        return lines[0][len("data: ") :]

    def close(self) -> None:
        """Drop the connection at once (the client goes away)."""
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conn.close()
