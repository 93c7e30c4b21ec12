"""`runner status`, `runner ps`, `runner run` (docker model parity) against a real server,
and against no server at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_proc import MODEL, chat, free_port, http, running

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def cli(*args: str, url: str | None = None, stdin: str | None = None, **env_extra: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update(env_extra)
    cmd = [sys.executable, "-m", "runner", *args]
    if url is not None:
        cmd += ["--url", url]
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def cli_server(start_server: Callable[..., Any], models_dir: Path) -> Iterator[Any]:
    """Its own server (not the shared one): `ps` output depends on what is loaded."""
    with running(start_server, models_dir) as server:
        yield server


def test_status_and_ps_against_a_running_server(cli_server: Any) -> None:
    with http(cli_server) as c:
        chat(c, max_tokens=1)
    status = cli("status", url=cli_server.url)
    assert status.returncode == 0, status.stderr
    assert f"runner is running at {cli_server.url}" in status.stdout
    assert "backend: llama.cpp" in status.stdout
    assert "devices:" in status.stdout
    assert MODEL in status.stdout and "gpu layers" in status.stdout

    raw = cli("status", "--json", url=cli_server.url)
    assert json.loads(raw.stdout)["running"] is True

    ps = cli("ps", url=cli_server.url)
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    assert header.split()[:2] == ["MODEL", "NAME"]
    assert any(row.startswith(MODEL) and "llama.cpp" in row for row in rows)
    assert json.loads(cli("ps", "--json", url=cli_server.url).stdout)[0]["model_name"] == MODEL


def test_run_prints_one_answer(cli_server: Any) -> None:
    prompt = "Name a color."
    with http(cli_server) as c:
        expected = chat(c, content=prompt, max_tokens=8)["choices"][0]["message"]["content"]
    result = cli(
        "run", MODEL, prompt, "--max-tokens", "8", "--temperature", "0", url=cli_server.url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.strip()
    assert result.stdout.strip()


def test_run_chats_from_stdin_until_bye(cli_server: Any) -> None:
    result = cli(
        "run",
        MODEL,
        "--max-tokens",
        "6",
        "--temperature",
        "0",  # a sampled answer may be empty (an end of turn first), so no line
        url=cli_server.url,
        stdin="Hello there.\nAnd again.\n/bye\nnever sent\n",
    )
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.strip()]) >= 2


def test_run_unknown_model_fails_clearly(cli_server: Any) -> None:
    result = cli("run", "no-such-model", "hi", url=cli_server.url)
    assert result.returncode == 1
    assert "404" in result.stderr and "not found" in result.stderr


@pytest.mark.parametrize("args", [["status"], ["ps"], ["run", MODEL, "hi"]])
def test_no_server_is_a_clear_error(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(*args, url=url)
    assert result.returncode == 1
    assert f"no runner server is reachable at {url}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_url_comes_from_the_environment(cli_server: Any) -> None:
    assert cli("ps", RUNNER_URL=cli_server.url).returncode == 0
    dead = f"http://127.0.0.1:{free_port()}"
    result = cli("status", RUNNER_URL=dead)
    assert result.returncode == 1 and dead in result.stderr
