"""The README's curl and Python examples work as written, against the shared server.

The examples are read from README.md itself (only the address is replaced with the test
server's), so an edit that breaks them fails here.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess

from helpers import REPO_ROOT, Server

README_URL = "http://localhost:8000"


def _indented_block(text: str, first_line: str) -> str:
    """The 4-space indented README block starting with `first_line`, de-indented."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first_line))
    block = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


def _readme() -> str:
    return (REPO_ROOT / "README.md").read_text()


def test_readme_curl_example(server: Server) -> None:
    cmd = _indented_block(_readme(), "curl http://localhost:8000/")
    assert README_URL in cmd
    out = subprocess.run(["bash", "-c", cmd.replace(README_URL, server.base_url)],
                         capture_output=True, text=True, timeout=120, check=True)
    body = json.loads(out.stdout)
    assert body["object"] == "chat.completion"
    assert "Paris" in body["choices"][0]["message"]["content"]


def test_readme_python_example(server: Server) -> None:
    code = _indented_block(_readme(), "from openai import OpenAI")
    assert f'base_url="{README_URL}/v1"' in code
    code = code.replace(README_URL, server.base_url)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    text = printed.getvalue()
    assert "Paris" in text, text
    assert not re.search("\ufffd", text)
