"""Fixtures of the end-to-end tests: a real `atom serve` process and clients for it.

One server with the default model and default flags serves most tests (session scope); tests
that need other flags start their own short-lived server through `own_server`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

from helpers import DEFAULT_MODEL_NAME, REPO_ROOT, Server, atom_binary, start_server


@pytest.fixture(scope="session")
def model_path() -> str:
    """The default model's file (fetched into the model cache if missing)."""
    out = subprocess.run(
        [str(REPO_ROOT / "scripts" / "fetch-model.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = out.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), path
    return path


@pytest.fixture(scope="session")
def server(model_path: str) -> Iterator[Server]:
    """The shared server: default model, default flags."""
    srv = start_server()
    yield srv
    alive_before = srv.alive()
    code = srv.stop()
    assert alive_before, f"the shared server died during the tests:\n{srv.log_tail()}"
    assert code == 0, f"the shared server exited with {code} after SIGTERM:\n{srv.log_tail()}"
    srv.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def model_name(server: Server) -> str:
    return server.model_name


@pytest.fixture
def own_server() -> Iterator[Any]:
    """Starts servers with extra flags for one test; stops each at the end (SIGTERM, exit 0)."""
    started: list[Server] = []

    def start(*extra_args: str, model_name: str = DEFAULT_MODEL_NAME) -> Server:
        srv = start_server(*extra_args, model_name=model_name)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.proc.poll() is None:
            code = srv.stop()
            assert code == 0, f"server {srv.args} exited with {code}:\n{srv.log_tail()}"
        else:
            srv.stop()
        srv.log_path.unlink(missing_ok=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"atom binary: {atom_binary()}", f"openai SDK: {openai.__version__}"]
