"""Helpers for the lifecycle tests: a real `python -m runner serve` subprocess, a private copy
of the model store, and small HTTP helpers. (Plain functions, importable from test modules.)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from runner.store import BUNDLED_TAGS, ModelStore

MODEL = BUNDLED_TAGS[0]  # ai/gemma3:270m
SECOND = "test/gemma-two:latest"  # a second name for the same GGUF (temporary stores only)

# Small and quick on a 2-core machine shared with other test runs.
FAST_FLAGS = ("--ctx-size", "1024", "--slots", "2", "--threads", "2", "--no-persist")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_store(root: Path, bundled_model_path: Path, *names: str) -> Path:
    """A store under `root` holding the bundled GGUF (hard-linked) under `MODEL` and `names`."""
    store = ModelStore(root, bundled_default=False)
    for name in (MODEL, *names):
        store.add(name, bundled_model_path, link=True)
    return root


class Server:
    """A running `runner serve` process: `.url`, `.stop()`, `.logs()`."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def client(self, timeout: float = 180.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def start_server(
    models_dir: Path, tmp: Path, *args: str, timeout: float = 180.0, fast: bool = True
) -> Server:
    """Start `python -m runner serve --port <free> ...` against `models_dir`; wait for /health."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["RUNNER_MODELS_DIR"] = str(models_dir)
    env["RUNNER_CACHE_DIR"] = str(tmp / "kv-cache")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"server-{port}.log"
    cmd = [sys.executable, "-m", "runner", "serve", "--port", str(port)]
    cmd += [*(FAST_FLAGS if fast else ()), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server did not come up in {timeout}s:\n{server.logs()}")


@contextlib.contextmanager
def running(models_dir: Path, tmp: Path, *args: str, **kwargs: Any) -> Iterator[Server]:
    server = start_server(models_dir, tmp, *args, **kwargs)
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


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
