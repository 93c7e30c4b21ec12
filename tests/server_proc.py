"""Helpers for the lifecycle tests: a private copy of the model store, servers from
conftest's `start_server` factory, and small HTTP helpers. Importable from test modules.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from runner.store import BUNDLED_TAGS, ModelStore

if TYPE_CHECKING:
    from conftest import ServerHandle

MODEL = BUNDLED_TAGS[0]  # ai/gemma3:270m
SECOND = "test/gemma-two:latest"  # a second name for the same GGUF (temporary stores only)
OTHER = "test/gemma-other:latest"  # another file with the same weights (`others=`)

# Small and quick on a 2-core machine shared with other test runs; no disk prompt cache, so a
# reloaded model computes its prompt from scratch.
FAST_FLAGS = ("--ctx-size", "1024", "--slots", "2", "--no-persist")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_store(
    root: Path, bundled_model_path: Path, *names: str, others: Sequence[str] = ()
) -> Path:
    """A store under `root` holding the bundled GGUF (hard-linked) under `MODEL` and `names`,
    and under each of `others` a copy that differs in trailing bytes: another file (its own
    sha256, so its own engine) with the same weights."""
    store = ModelStore(root, bundled_default=False)
    for name in (MODEL, *names):
        store.add(name, bundled_model_path, link=True)
    for i, name in enumerate(others):
        copy = root.parent / f"{root.name}-other-{i}.gguf"
        shutil.copyfile(bundled_model_path, copy)
        with copy.open("ab") as fh:
            fh.write(bytes(64 + i))
        store.add(name, copy, link=True)
    return root


def http(server: ServerHandle, timeout: float = 180.0) -> httpx.Client:
    """An HTTP client for a server started with conftest's `start_server`."""
    return httpx.Client(base_url=server.url, timeout=timeout)


@contextlib.contextmanager
def running(
    start_server: Callable[..., ServerHandle], models_dir: Path, *args: str
) -> Iterator[ServerHandle]:
    """`start_server(FAST_FLAGS..., *args)` against store `models_dir`, stopped afterwards."""
    server = start_server(*FAST_FLAGS, *args, env={"RUNNER_MODELS_DIR": str(models_dir)})
    try:
        yield server
    finally:
        server.stop()


def chat(
    client: httpx.Client, model: str = MODEL, content: str = "Say hi.", max_tokens: int = 8
) -> dict[str, Any]:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def stream_chat(
    client: httpx.Client,
    model: str = MODEL,
    content: str = "Count from one to one hundred in words.",
    max_tokens: int = 64,
    on_first_chunk: Any = None,
) -> tuple[str, dict[str, Any]]:
    """A streaming chat completion ignoring EOS; returns (text, last chunk)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    text, last, first = [], {}, True
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read().decode()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            if first and on_first_chunk is not None:
                on_first_chunk()
            first = False
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
            last = chunk
    return "".join(text), last


def tokens_for(client: httpx.Client, seconds: float, model: str = MODEL) -> int:
    """How many tokens take about `seconds` to generate right now (the machine's speed varies
    a lot with other test runs); also loads `model`."""
    rate = chat(client, model, max_tokens=8)["timings"]["predicted_per_second"] or 10.0
    return max(16, min(1000, int(rate * seconds)))


def ps(client: httpx.Client) -> list[str]:
    response = client.get("/engines/ps")
    assert response.status_code == 200, response.text
    return sorted(row["model_name"] for row in response.json())


def wait_idle(client: httpx.Client, model: str, timeout: float = 30.0) -> None:
    """Wait until `model` holds no request. A client sees a stream's last chunk a moment
    before the server lets go of the model, so "busy" right after a stream is expected."""

    def idle() -> bool:
        rows = [r for r in client.get("/engines/ps").json() if r["model_name"] == model]
        return all(not r["in_use"] for r in rows)

    assert wait_for(idle, timeout), f"{model} still in use after {timeout}s"


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Background(threading.Thread):
    """Run `fn` in a thread; `.result` / `.error` afterwards, `.finished_at` when it ended."""

    def __init__(self, fn: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error, self.finished_at = fn, None, None, 0.0

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.finished_at = time.monotonic()

    def value(self, timeout: float = 300) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "background request did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of `/metrics` samples called `name` whose labels include `labels` (0 if none).

    Counters are compared before and after an action, so other requests to the same server
    (earlier tests, other models) cannot make an assertion pass.
    """
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total
