"""Data parallelism: DP ranks as separate `atom serve` processes behind rank 0's front end.

Ranks are started either separately (ATOM_DP_* variables, as on several hosts) or by one
`atom serve -dp 2`. They serve the tiny HF Llama in tests/data/hf_models/llama-tiny with one
thread each. Every answer of the front end names the rank that served it (X-Atom-Dp-Rank).

With ATOM_E2E_DEVICE=cuda (scripts/gpu-check-multi.sh, a GPU per rank) the ranks serve a tiny
Llama shape with head_dim 64 (the CUDA attention kernels take 64 or 128; the HF checkpoint has
16) and dummy weights, which are seeded, so every process holds the same ones.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers import DEVICE, REPO_ROOT, Server, SseStream, atom_binary, free_port, parse_sse

HF_MODELS = REPO_ROOT / "tests" / "data" / "hf_models"
ON_GPU = DEVICE == "cuda"


def gpu_model(name: str, layers: int) -> str:
    """A folder with llama-tiny's tokenizer and a Llama config the CUDA kernels take."""
    folder = Path(GPU_MODELS) / name
    folder.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(HF_MODELS / "llama-tiny" / f, folder / f)
    config = json.loads((HF_MODELS / "llama-tiny" / "config.json").read_text())
    config.update(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, num_hidden_layers=layers, dtype="bfloat16")
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


if ON_GPU:
    GPU_MODELS = tempfile.mkdtemp(prefix="atom-dp-models-")
    atexit.register(shutil.rmtree, GPU_MODELS, ignore_errors=True)
    MODEL, OTHER_MODEL = gpu_model("llama-tiny-hd64", 2), gpu_model("llama-tiny-hd64-3l", 3)
    # A tenth of each GPU: a test may run two processes on one GPU.
    DEVICE_FLAGS = ["--device", DEVICE, "--load-format", "dummy",
                    "--gpu-memory-utilization", "0.1"]
    # On a GPU a row's logits depend on the batch it runs in (GEMM tiles chosen by batch size;
    # test_concurrency.py says more), so where the ranks' text must equal one engine's, every
    # request runs alone in its batch on both sides; the requests still queue on both ranks.
    SAME_NUMERICS = ["--max-num-seqs", "1"]
else:
    MODEL, OTHER_MODEL = str(HF_MODELS / "llama-tiny"), str(HF_MODELS / "qwen3-tiny")
    DEVICE_FLAGS = ["--device", DEVICE]
    SAME_NUMERICS = []
STARTUP_S = 30.0
COMMON = ["--model", MODEL, "--threads", "1", "--host", "127.0.0.1", *DEVICE_FLAGS]


def launch(args: list[str], env_extra: dict[str, str], port: int = 0) -> Server:
    """Starts `atom serve` with `args` and extra environment; does not wait."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOM_DP_")}
    env.update(env_extra)
    full = [str(atom_binary()), "serve", *args]
    if port:
        full += ["--server-port", str(port)]
    fd, log_name = tempfile.mkstemp(prefix="atom-dp-", suffix=".log")
    os.close(fd)
    log_file = open(log_name, "wb")
    proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log_file,
                            stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    return Server(proc, port, full, Path(log_name), MODEL, log_file)


def rank_env(rank: int, master_port: int, size: int = 2) -> dict[str, str]:
    return {
        "ATOM_DP_SIZE": str(size),
        "ATOM_DP_RANK": str(rank),
        "ATOM_DP_RANK_LOCAL": str(rank),
        "ATOM_DP_MASTER_IP": "127.0.0.1",
        "ATOM_DP_MASTER_PORT": str(master_port),
    }


def wait_healthy(srv: Server, timeout: float = STARTUP_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        assert srv.alive(), f"{srv.args} exited with {srv.proc.returncode}:\n{srv.log_tail()}"
        try:
            r = srv.request("GET", "/health", timeout=2.0)
            if r.status == 200:
                return r.json()
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no healthy front end:\n{srv.log_tail()}"
        time.sleep(0.1)


@pytest.fixture
def procs():
    """Processes a test starts; any still running at the end are killed (their logs removed)."""
    started: list[Server] = []
    yield started
    for srv in started:
        if srv.alive():
            srv.proc.kill()
        srv.stop(timeout=5)
        srv.log_path.unlink(missing_ok=True)


def stop_clean(srv: Server) -> None:
    code = srv.stop()
    assert code == 0, f"{srv.args} exited with {code} after SIGTERM:\n{srv.log_tail()}"


def separate_ranks(procs: list[Server], *extra: str) -> tuple[Server, Server]:
    """Rank 1 first (it waits for the master), then rank 0 with the front end."""
    master = free_port()
    r1 = launch([*COMMON, *extra], rank_env(1, master))
    procs.append(r1)
    r0 = launch([*COMMON, *extra], rank_env(0, master), port=free_port())
    procs.append(r0)
    health = wait_healthy(r0)
    assert health["ranks_up"] == [0, 1], health
    return r0, r1


def completion(srv: Server, body: dict, path: str = "/v1/completions") -> tuple[int, dict]:
    """(rank that served it, JSON answer) of one request through the front end."""
    r = srv.request("POST", path, body)
    assert r.status == 200, f"{r.status} {r.body[:500]!r}"
    return int(r.headers["x-atom-dp-rank"]), r.json()


PROMPTS = ["Hello", "The capital of France is", "1 2 3 4", "Once upon a time", "def f(x):"]


def reference_outputs(procs: list[Server], *extra: str) -> tuple[list[str], list[str], str]:
    """Greedy outputs of one single-rank server: completions, chat, streamed chat text."""
    single = launch([*COMMON, *extra], {}, port=free_port())
    procs.append(single)
    wait_healthy(single)
    texts = [single.post_json("/v1/completions", {"prompt": p, "max_tokens": 12,
                                                  "temperature": 0})["choices"][0]["text"]
             for p in PROMPTS]
    chats = [single.post_json("/v1/chat/completions",
                              {"messages": [{"role": "user", "content": p}], "max_tokens": 12,
                               "temperature": 0})["choices"][0]["message"]["content"]
             for p in PROMPTS]
    r = single.request("POST", "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12,
                        "temperature": 0, "stream": True})
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in parse_sse(r.body)
                       if c["choices"])
    stop_clean(single)
    return texts, chats, streamed


def test_separate_ranks_serve_like_one_engine(procs) -> None:
    texts, chats, streamed = reference_outputs(procs, *SAME_NUMERICS)
    r0, r1 = separate_ranks(procs, *SAME_NUMERICS)
    models = r0.get_json("/v1/models")
    assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 256

    # Concurrent load: every prompt, completions and chat, many times at once.
    jobs = [("/v1/completions", i) for i in range(len(PROMPTS))] * 3 + \
           [("/v1/chat/completions", i) for i in range(len(PROMPTS))] * 3
    def run(job):
        path, i = job
        if path == "/v1/completions":
            body = {"prompt": PROMPTS[i], "max_tokens": 12, "temperature": 0}
        else:
            body = {"messages": [{"role": "user", "content": PROMPTS[i]}], "max_tokens": 12,
                    "temperature": 0}
        rank, out = completion(r0, body, path)
        choice = out["choices"][0]
        got = choice["text"] if path == "/v1/completions" else choice["message"]["content"]
        want = texts[i] if path == "/v1/completions" else chats[i]
        assert got == want, (path, PROMPTS[i], rank)
        return rank
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        ranks = list(pool.map(run, jobs))
    assert set(ranks) == {0, 1}, f"one rank took every request: {ranks}"

    # Streaming chat through the front end: same SSE shape and text as one engine.
    r = r0.request("POST", "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12,
                    "temperature": 0, "stream": True})
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(r.body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == streamed

    # The per-rank counters agree with the answers' headers.
    metrics = r0.request("GET", "/metrics").body.decode()
    routed = {rank: 0 for rank in (0, 1)}
    for line in metrics.splitlines():
        if line.startswith("atom:dp_rank_requests_routed_total{"):
            rank = int(line.split('dp_rank="')[1].split('"')[0])
            routed[rank] = float(line.rsplit(" ", 1)[1])
    assert routed[0] >= ranks.count(0) and routed[1] >= ranks.count(1), routed
    assert 'atom:request_total{dp_rank="1"' in metrics, metrics[-2000:]
    health = r0.get_json("/health")
    assert health["status"] == "ok" and [r["state"] for r in health["ranks"]] == ["up", "up"]
    stop_clean(r0)
    # Rank 1 loses its front end: it says so and exits with an error.
    assert r1.wait_exit(10) == 1, r1.log_tail()
    assert "closed the connection" in r1.log_tail() or "failed" in r1.log_tail()


def test_least_loaded_avoids_a_busy_rank(procs) -> None:
    r0, _ = separate_ranks(procs, "--max-num-seqs", "1")
    rank1 = r0.get_json("/health")["ranks"][1]
    host, port = rank1["address"].split(":")
    # Rank 1 gets 64 long requests straight on its internal endpoint (the front end learns of
    # them only from its load reports); with one sequence at a time they queue for seconds.
    result: dict = {}

    def busy() -> None:
        import http.client
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "Hi", "max_tokens": 240, "ignore_eos": True, "n": 64}),
            headers={"Content-Type": "application/json"})
        result["status"] = conn.getresponse().status
        conn.close()

    t = threading.Thread(target=busy)
    t.start()
    deadline = time.monotonic() + 10
    while r0.get_json("/health")["ranks"][1]["waiting"] < 10:
        assert time.monotonic() < deadline, r0.get_json("/health")
        time.sleep(0.02)
    served = [completion(r0, {"prompt": "Hello", "max_tokens": 4, "temperature": 0})[0]
              for _ in range(8)]
    assert served == [0] * 8, served
    assert r0.get_json("/health")["ranks"][1]["waiting"] > 0, "rank 1 was not busy throughout"
    t.join()
    assert result["status"] == 200


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose only once reaped; check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_one_command_dp2_and_sigterm_leaves_no_child(procs) -> None:
    srv = launch([*COMMON, "-dp", "2"], {}, port=free_port())
    procs.append(srv)
    health = wait_healthy(srv)
    assert health["ranks_up"] == [0, 1], health
    pids = [r["pid"] for r in health["ranks"]]
    assert pids[0] == srv.proc.pid and pids[1] != srv.proc.pid
    ranks = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(completion, srv, {"prompt": p, "max_tokens": 30, "temperature": 0,
                                                 "ignore_eos": True}) for p in PROMPTS * 2]
        ranks = [f.result()[0] for f in futures]
    assert set(ranks) == {0, 1}, ranks
    stop_clean(srv)
    deadline = time.monotonic() + 5
    while pid_alive(pids[1]):
        assert time.monotonic() < deadline, f"rank 1 (pid {pids[1]}) outlived its parent"
        time.sleep(0.05)


def test_killed_parent_takes_its_children_along(procs) -> None:
    srv = launch([*COMMON, "-dp", "2"], {}, port=free_port())
    procs.append(srv)
    child = wait_healthy(srv)["ranks"][1]["pid"]
    srv.proc.kill()  # no chance to clean up: the kernel's parent-death signal must do it
    srv.proc.wait()
    deadline = time.monotonic() + 10
    while pid_alive(child):
        assert time.monotonic() < deadline, f"rank 1 (pid {child}) was orphaned"
        time.sleep(0.05)


def test_killed_rank_fails_its_requests_and_the_others_go_on(procs) -> None:
    srv = launch([*COMMON, "-dp", "2", "--max-num-seqs", "1"], {}, port=free_port())
    procs.append(srv)
    health = wait_healthy(srv)
    rank1_pid = health["ranks"][1]["pid"]
    long_job = {"prompt": "Hi", "max_tokens": 240, "ignore_eos": True, "n": 64, "stream": True}
    # A: a long stream on rank 0 (ties go to the lower rank).
    a = SseStream(srv, "/v1/completions", long_job)
    assert a.status == 200 and a.resp.getheader("X-Atom-Dp-Rank") == "0"
    assert a.next_event() not in (None, "[DONE]")
    # B: a stream on rank 1 (rank 0 has one open); C: a non-streamed one, also on rank 1 once
    # the reports show rank 0's 64 queued requests against rank 1's 24.
    b = SseStream(srv, "/v1/completions", dict(long_job, n=24))
    assert b.status == 200 and b.resp.getheader("X-Atom-Dp-Rank") == "1"
    assert b.next_event() not in (None, "[DONE]")
    time.sleep(0.3)
    c_result: dict = {}
    c = threading.Thread(target=lambda: c_result.update(r=srv.request(
        "POST", "/v1/completions", dict(long_job, n=24, stream=False), timeout=60)))
    c.start()
    deadline = time.monotonic() + 5
    while srv.get_json("/health")["ranks"][1]["open"] < 2:
        assert time.monotonic() < deadline, srv.get_json("/health")
        time.sleep(0.02)

    os.kill(rank1_pid, signal.SIGKILL)

    # B ends with an error event naming rank 1 (no [DONE], as an engine failure ends a stream).
    events = []
    while (ev := b.next_event()) is not None:
        events.append(ev)
    b.close()
    assert "[DONE]" not in events
    err = json.loads(events[-1])["error"]
    assert "data-parallel rank 1" in err["message"] and err["code"] == "dp_rank_failed", err
    # C: 503 with an OpenAI error body naming rank 1.
    c.join(30)
    r = c_result["r"]
    assert r.status == 503, r.body[:300]
    assert "data-parallel rank 1" in r.json()["error"]["message"]
    # A is unharmed.
    events = []
    while (ev := a.next_event()) is not None:
        events.append(ev)
    a.close()
    assert events[-1] == "[DONE]"
    # Later requests all succeed, on rank 0; /health names the dead rank.
    for _ in range(6):
        rank, _ = completion(srv, {"prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert rank == 0
    h = srv.request("GET", "/health")
    assert h.status == 200
    body = h.json()
    assert body["status"] == "degraded" and body["ranks_up"] == [0] and body["ranks_down"] == [1]
    assert body["ranks"][1]["state"] == "dead" and body["ranks"][1]["reason"]
    log = srv.log_tail(20000)
    assert "dp rank 1 is dead" in log, log
    stop_clean(srv)


def test_missing_rank_makes_rank_0_exit(procs) -> None:
    master = free_port()
    r0 = launch([*COMMON, "--data-parallel-rendezvous-timeout", "2"], rank_env(0, master),
                port=free_port())
    procs.append(r0)
    code = r0.wait_exit(30)
    assert code not in (None, 0), r0.log_tail()
    log = r0.log_tail()
    assert "data-parallel rank(s) [1] of 2 did not register" in log, log
    assert "--data-parallel-rendezvous-timeout" in log


def test_rank_without_front_end_exits(procs) -> None:
    r1 = launch([*COMMON, "--data-parallel-rendezvous-timeout", "2"], rank_env(1, free_port()))
    procs.append(r1)
    code = r1.wait_exit(30)
    assert code not in (None, 0), r1.log_tail()
    assert "could not reach the data-parallel master" in r1.log_tail(), r1.log_tail()


def test_mismatched_ranks_are_refused(procs) -> None:
    master = free_port()
    r0 = launch([*COMMON, "--data-parallel-rendezvous-timeout", "30"], rank_env(0, master),
                port=free_port())
    procs.append(r0)
    # Another model: refused by name.
    other = launch(["--model", OTHER_MODEL, "--threads", "1", "--host", "127.0.0.1", *DEVICE_FLAGS],
                   rank_env(1, master))
    procs.append(other)
    assert other.wait_exit(30) == 1, other.log_tail()
    assert f"serves model '{OTHER_MODEL}', but rank 0 serves '{MODEL}'" in other.log_tail()
    # Same model name, another context length: refused too.
    short = launch([*COMMON, "--max-model-len", "128"], rank_env(1, master))
    procs.append(short)
    assert short.wait_exit(30) == 1, short.log_tail()
    assert "max_model_len 128, but rank 0 has 256" in short.log_tail(), short.log_tail()
    assert "refused a data-parallel rank" in r0.log_tail(20000)
    # The right rank 1 completes the deployment.
    good = launch(COMMON, rank_env(1, master))
    procs.append(good)
    assert wait_healthy(r0)["ranks_up"] == [0, 1]
    stop_clean(r0)


def timed(fn):
    """(seconds taken, result) of fn()."""
    t0 = time.monotonic()
    result = fn()
    return time.monotonic() - t0, result


def test_hung_rank_is_declared_dead_after_its_reports_stop(procs) -> None:
    r0, r1 = separate_ranks(procs)
    os.kill(r1.proc.pid, signal.SIGSTOP)  # alive and connected, but silent
    try:
        t0 = time.monotonic()
        # A scrape and a profile command sent now reach rank 1 too, which accepts the connection
        # (its kernel does) but never answers: its death must end them.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            scrape = pool.submit(timed, lambda: r0.request("GET", "/metrics", timeout=20))
            profile = pool.submit(timed, lambda: r0.request("POST", "/start_profile", timeout=20))
            while (h := r0.request("GET", "/health").json())["ranks_down"] != [1]:
                assert time.monotonic() - t0 < 5, h
                time.sleep(0.05)
            took, metrics = scrape.result()
            assert took < 4 and metrics.status == 200, (took, metrics.status)
            assert 'atom:request_total{dp_rank="0"' in metrics.body.decode()
            took, prof = profile.result()
            assert took < 4, took
            assert any(r["dp_rank"] == 1 and "error" in r for r in prof.json()["ranks"]), prof.body
        assert time.monotonic() - t0 > 0.5, "declared dead before its reports were overdue"
        assert "load reports stopped" in h["ranks"][1]["reason"], h
        for _ in range(4):
            assert completion(r0, {"prompt": "Hello", "max_tokens": 4})[0] == 0
    finally:
        os.kill(r1.proc.pid, signal.SIGCONT)
    # Woken up, it learns that it was dropped and exits with an error.
    assert r1.wait_exit(10) == 1, r1.log_tail()
    assert "declared this rank dead" in r1.log_tail(), r1.log_tail()
    stop_clean(r0)


def test_ranks_leave_a_front_end_that_stopped(procs) -> None:
    r0, r1 = separate_ranks(procs)
    os.kill(r0.proc.pid, signal.SIGSTOP)  # its connections stay open, but it says nothing
    try:
        took, code = timed(lambda: r1.wait_exit(15))
    finally:
        os.kill(r0.proc.pid, signal.SIGCONT)
    assert code == 1, r1.log_tail()
    assert 2.5 < took < 8, took
    assert "sent no heartbeat" in r1.log_tail(), r1.log_tail()
    # Woken up, the front end finds rank 1 gone and serves on rank 0 (which registers again if
    # its own reports were overdue meanwhile).
    deadline = time.monotonic() + 10
    while (h := r0.request("GET", "/health")).status != 200 or h.json()["ranks_up"] != [0]:
        assert time.monotonic() < deadline, (h.status, h.body, r0.log_tail())
        time.sleep(0.05)
    assert completion(r0, {"prompt": "Hello", "max_tokens": 4})[0] == 0
    stop_clean(r0)


def test_taken_public_port_ends_start_up_cleanly(procs) -> None:
    """The public port opens after every rank registered: failing then is an error, not a crash,
    and the child rank goes too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        srv = launch([*COMMON, "-dp", "2"], {}, port=taken.getsockname()[1])
        procs.append(srv)
        code = srv.wait_exit(30)
    log = srv.log_tail(20000)
    assert code is not None and code > 0, (code, log)  # negative: killed by a signal
    assert "dp rank 1 registered" in log, log
    assert "cannot listen on 127.0.0.1:" in log and "in use" in log, log
    child = int(re.search(r"started data-parallel rank 1 as process (\d+)", log).group(1))
    assert not pid_alive(child), f"rank 1 (pid {child}) outlived its parent"


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:["):-1])
    return out


@pytest.mark.parametrize("flags", [["-tp", "2", "--enable-dp-attention"],
                                   ["--tensor-parallel-size=2", "--enable-dp-attention=true"]])
def test_dp_attention_ranks_run_the_folded_size(procs, flags) -> None:
    """-tp 2 --enable-dp-attention is dp 2 of tp 1: the child rank must not fold it again."""
    srv = launch([*COMMON, *flags], {}, port=free_port())
    procs.append(srv)
    health = wait_healthy(srv)
    assert health["dp_size"] == 2 and health["ranks_up"] == [0, 1], health
    # The child did not inherit rank 0's rendezvous listener (close-on-exec).
    master_port = int(re.search(r"ranks register at [^ ]+:(\d+)", srv.log_tail(20000)).group(1))
    listener = listening_inodes(master_port)
    assert listener, f"nothing listens on the master port {master_port}"
    child = health["ranks"][1]["pid"]
    assert not listener & socket_inodes(child), "rank 1 holds rank 0's rendezvous listener"
    completion(srv, {"prompt": "Hello", "max_tokens": 2})
    stop_clean(srv)
