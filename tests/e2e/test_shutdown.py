"""SIGTERM / SIGINT: the listening socket closes at once, requests in flight finish (or are
aborted after --shutdown-timeout seconds), and the process exits 0 within a bounded time."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest

from helpers import Server, SseStream

EXIT_BOUND_S = 10.0


def refuses_connections(port: int, within: float = 2.0) -> bool:
    """True once a connect to the port is refused (the listening socket is closed)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_when_idle_exits_0(own_server, sig) -> None:
    srv: Server = own_server()
    t0 = time.monotonic()
    srv.signal(sig)
    code = srv.wait_exit(EXIT_BOUND_S)
    assert code == 0, f"exit code {code} after {sig.name}:\n{srv.log_tail()}"
    assert time.monotonic() - t0 < EXIT_BOUND_S
    assert refuses_connections(srv.port, within=0.5)


def test_sigterm_lets_a_stream_in_flight_finish(own_server) -> None:
    srv: Server = own_server()
    n = 150  # ~1.5 s of decoding: still running when the signal comes
    stream = SseStream(srv, "/v1/completions",
                       {"prompt": "Once upon a time", "max_tokens": n, "ignore_eos": True,
                        "stream": True, "stream_options": {"include_usage": True}})
    assert stream.status == 200
    first = stream.next_event()
    assert first not in (None, "[DONE]")
    srv.signal(signal.SIGTERM)
    assert refuses_connections(srv.port), "the port still accepts connections after SIGTERM"
    events = [first]
    while True:
        ev = stream.next_event()
        assert ev is not None, f"the stream ended without [DONE] after {len(events)} events"
        if ev == "[DONE]":
            break
        events.append(ev)
    stream.close()
    chunks = [json.loads(ev) for ev in events]
    assert chunks[-1]["usage"]["completion_tokens"] == n
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    code = srv.wait_exit(EXIT_BOUND_S)
    assert code == 0, f"exit code {code}:\n{srv.log_tail()}"


def test_sigterm_lets_a_non_streamed_request_finish(own_server) -> None:
    srv: Server = own_server()
    result: dict = {}

    def call() -> None:
        try:
            result["r"] = srv.request("POST", "/v1/completions",
                                      {"prompt": "Once upon a time", "max_tokens": 150,
                                       "ignore_eos": True})
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 10
    while srv.metrics()["atom:num_requests_running"] < 1:
        assert time.monotonic() < deadline, "the request never started running"
        time.sleep(0.02)
    srv.signal(signal.SIGTERM)
    assert refuses_connections(srv.port)
    worker.join(timeout=30)
    assert "error" not in result, result
    r = result["r"]
    assert r.status == 200, r.body
    assert r.json()["usage"]["completion_tokens"] == 150
    code = srv.wait_exit(EXIT_BOUND_S)
    assert code == 0, f"exit code {code}:\n{srv.log_tail()}"


def test_shutdown_timeout_aborts_long_requests(own_server) -> None:
    srv: Server = own_server("--shutdown-timeout", "1")
    stream = SseStream(srv, "/v1/completions",
                       {"prompt": "Once upon a time", "max_tokens": 5000, "ignore_eos": True,
                        "stream": True}, timeout=15)
    assert stream.status == 200
    assert stream.next_event() not in (None, "[DONE]")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    # The generation would take ~50 s; after 1 s it is aborted and the process exits.
    code = srv.wait_exit(1 + EXIT_BOUND_S)
    took = time.monotonic() - t0
    assert code == 0, f"exit code {code} {took:.1f} s after SIGTERM:\n{srv.log_tail()}"
    assert took >= 0.9, f"exited after {took:.2f} s, before the 1 s shutdown timeout"
    # The client's stream ends (it does not hang) once the server is gone.
    # (An end of body, a reset or a truncated chunk all count as ended; a read time-out does not.)
    ended = False
    try:
        while True:
            ev = stream.next_event()
            if ev is None or ev == "[DONE]":
                ended = True
                break
    except TimeoutError:
        ended = False
    except Exception:  # noqa: BLE001 - any other failure means the stream is over
        ended = True
    finally:
        stream.close()
    assert ended, "the client's stream was still open 15 s after the server exited"
