"""A large embeddings request cannot hold the model hostage: chat keeps being answered while
it runs, a client that gives up cancels it, its size is bounded, and SIGTERM still stops the
server within its grace (real model, real HTTP)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from server_proc import metric

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "ai/gemma3"
PARAGRAPH = " ".join(f"word{i} of a long paragraph about nothing in particular" for i in range(60))


@pytest.fixture
def small_server(start_server):
    server = start_server(
        "--model", MODEL, "--slots", "2", "--ctx-size", "1024", "--threads", "1",
        "--shutdown-grace", "2s", "--max-embed-tokens", "200000",
    )  # fmt: skip
    yield server
    if server.proc.poll() is None:
        server.stop()


def test_chat_is_answered_while_a_large_embeddings_request_runs(small_server) -> None:
    base = small_server.base_url
    inputs = [f"{i}: {PARAGRAPH}" for i in range(300)]  # far more work than one chat answer
    done: dict[str, float] = {}

    def embed() -> None:
        with httpx.Client(timeout=600) as client:
            r = client.post(f"{base}/embeddings", json={"model": MODEL, "input": inputs})
            done["embed"] = time.monotonic()
            done["status"] = r.status_code

    worker = threading.Thread(target=embed)
    worker.start()
    time.sleep(1.0)  # the embeddings request is running
    with httpx.Client(timeout=300) as client:
        chat = client.post(
            f"{base}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        done["chat"] = time.monotonic()
    assert chat.status_code == 200, chat.text
    assert "embed" not in done  # the chat answer did not wait for the embeddings
    # SIGTERM with the embeddings still running: the server stops within its grace.
    started = time.monotonic()
    code = small_server.stop(timeout=60)
    assert time.monotonic() - started < 30
    assert code == 0
    worker.join(60)


def _wait_released(base: str, cancelled_before: float, timeout: float = 60.0) -> float:
    """Seconds until the engine counts one more cancelled request and the model is free."""
    started = time.monotonic()
    with httpx.Client(base_url=base, timeout=30) as client:
        while True:
            cancelled = metric(client, "runner:requests_finished_total", reason="cancelled")
            in_use = any(row["in_use"] for row in client.get("/engines/ps").json())
            if cancelled > cancelled_before and not in_use:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, (cancelled, in_use)
            time.sleep(0.2)


def test_a_client_that_gives_up_cancels_its_embeddings(small_server) -> None:
    inputs = [f"{i}: {PARAGRAPH}" for i in range(300)]  # minutes of work on one thread
    requests = [
        ("/v1/embeddings", {"model": MODEL, "input": inputs}),  # OpenAI's route
        ("/api/embed", {"model": MODEL, "input": inputs}),  # Ollama's
    ]
    for path, body in requests:
        with httpx.Client(base_url=small_server.url, timeout=30) as client:
            before = metric(client, "runner:requests_finished_total", reason="cancelled")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(small_server.url + path, json=body, timeout=httpx.Timeout(30, read=2.0))
        assert _wait_released(small_server.url, before) < 30, path
    with httpx.Client(base_url=small_server.url, timeout=120) as client:
        ok = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
        assert ok.status_code == 200 and ok.json()["timings"]["prompt_n"] > 0


def test_an_embeddings_request_over_the_token_bound_is_a_400(start_server) -> None:
    server = start_server("--model", MODEL, "--max-embed-tokens", "1000", "--threads", "1")
    inputs = [PARAGRAPH] * 5
    url = f"{server.base_url}/embeddings"
    r = httpx.post(url, json={"model": MODEL, "input": inputs}, timeout=120)
    assert r.status_code == 400, r.text
    assert "at most 1000" in r.json()["error"]["message"]
    ok = httpx.post(url, json={"model": MODEL, "input": "hello"}, timeout=120)
    assert ok.status_code == 200 and ok.json()["timings"]["prompt_n"] > 0
