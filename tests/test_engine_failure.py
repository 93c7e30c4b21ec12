"""A crashed engine thread: its request fails with a 503, the loader replaces the engine, and
the next request succeeds (real model, real HTTP, an in-process server whose first engine's
step raises)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from runner.api.app import create_app
from runner.config import Settings
from runner.engine import Engine
from runner.loader import Loader
from runner.store import ModelStore


class FirstEngineCrashes(Engine):
    """The first engine built fails at its first step, as a bug in the loop would."""

    built = 0

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        type(self).built += 1
        if type(self).built == 1:

            def crash(entries):  # noqa: ANN001, ANN202
                raise RuntimeError("injected failure in the step")

            self._executor.execute = crash  # type: ignore[method-assign]


@pytest.fixture
def server_url(models_dir: Path, tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        models_dir=models_dir, cache_dir=tmp_path / "kv", slots=1, ctx_size=512, threads=2
    )
    store = ModelStore(models_dir)
    app = create_app(settings, store, Loader(settings, store, FirstEngineCrashes))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(60)


def test_a_dead_engine_is_replaced_and_the_next_request_succeeds(server_url: str) -> None:
    body = {"model": "ai/gemma3", "prompt": "Hello there,", "max_tokens": 4, "ignore_eos": True}
    with httpx.Client(base_url=server_url, timeout=300) as client:
        failed = client.post("/v1/completions", json=body)
        assert failed.status_code == 503, failed.text
        assert "injected failure" in failed.json()["error"]["message"]
        ok = client.post("/v1/completions", json=body)
        assert ok.status_code == 200, ok.text
        assert ok.json()["usage"]["completion_tokens"] == 4
        status = client.get("/engines/status").json()
        (failure,) = status["engine_failures"].values()
        assert "injected failure" in failure["error"]
        (row,) = client.get("/engines/ps").json()
        assert row["error"] is None
