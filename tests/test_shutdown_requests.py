"""SIGTERM while a long non-streamed request runs: the client gets its dialect's 503 with a
reason (`server_shutting_down`) once the shutdown grace has passed, never a 500 and never a
dropped connection, and the server exits 0. A real server per case (each one is stopped)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import ServerHandle
from server_proc import MODEL

pytestmark = pytest.mark.slow

GRACE = 2.0
LONG_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a very long story."}],
    "max_tokens": 1900,
    "ignore_eos": True,
    "temperature": 0,
}
# Tens of thousands of tokens: far longer than the grace on any CPU.
BIG_EMBED = {"model": MODEL, "input": ["the quick brown fox jumps over the lazy dog " * 6] * 800}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-chat": ("/v1/chat/completions", LONG_CHAT),
    "openai-embeddings": ("/v1/embeddings", BIG_EMBED),
    "ollama-chat": (
        "/api/chat",
        {
            "model": MODEL,
            "messages": LONG_CHAT["messages"],
            "stream": False,
            "options": {"num_predict": 1900, "ignore_eos": True, "temperature": 0},
        },
    ),
    "ollama-embed": ("/api/embed", BIG_EMBED),
}


def _busy(server: ServerHandle) -> bool:
    models = httpx.get(server.url + "/engines/status", timeout=10).json()["models"]
    return any(m.get("in_use") for m in models)


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_cut_by_shutdown_gets_503(
    start_server: Callable[..., ServerHandle], case: str
) -> None:
    path, body = CASES[case]
    server = start_server(
        "--model", MODEL, "--slots", "1", "--ctx-size", "2048",
        "--shutdown-grace", f"{GRACE:g}s",
    )  # fmt: skip
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            result["response"] = httpx.post(server.url + path, json=body, timeout=300)
        except httpx.HTTPError as exc:
            result["error"] = exc

    worker = threading.Thread(target=send)
    worker.start()
    deadline = time.monotonic() + 120
    while not _busy(server):  # the handler holds the model: the request is being served
        assert time.monotonic() < deadline and worker.is_alive(), result
        time.sleep(0.2)
    assert server.proc is not None
    server.proc.terminate()
    worker.join(timeout=120)
    assert not worker.is_alive()
    response = result.get("response")
    assert response is not None, result.get("error")
    assert response.status_code == 503, response.text[:500]
    error = response.json()["error"]
    if case.startswith("openai"):
        assert error["code"] == "server_shutting_down"
        assert f"{GRACE:g} s" in error["message"]
    else:  # Ollama's shape: the reason is the message itself
        assert "shutting down" in error
    assert server.proc.wait(timeout=60) == 0
