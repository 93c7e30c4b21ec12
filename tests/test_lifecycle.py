"""Model lifecycle end to end: a real `runner serve` process, the real model, HTTP.

Load on demand, idle unload and reload, several models resident, `--max-models` eviction that
waits for a busy model, streams that outlive the idle timeout, and `_configure` persisting
across a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from server_proc import (
    MODEL,
    OTHER,
    SECOND,
    Background,
    chat,
    http,
    private_store,
    ps,
    running,
    stream_chat,
    tokens_for,
    wait_for,
)

StartServer = Callable[..., Any]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def two_name_store(tmp_path: Path, bundled_model_path: Path) -> Path:
    return private_store(tmp_path / "models", bundled_model_path, SECOND)


@pytest.fixture
def two_model_store(tmp_path: Path, bundled_model_path: Path) -> Path:
    return private_store(tmp_path / "models", bundled_model_path, others=[OTHER])


def test_idle_model_unloads_and_reloads_with_a_full_prompt(
    start_server: StartServer, models_dir: Path
) -> None:
    with running(start_server, models_dir, "--idle-timeout", "3s") as server, http(server) as c:
        assert ps(c) == []  # nothing loads until asked for
        first = chat(c)
        rows = c.get("/engines/ps").json()
        assert [r["model_name"] for r in rows] == [MODEL]
        assert rows[0]["keep_alive"] == "3s" and rows[0]["in_use"] is False
        first_load = rows[0]["loaded_at"]
        assert first_load is not None

        time.sleep(5)
        assert wait_for(lambda: ps(c) == [], timeout=10), "model still resident after idle time"

        second = chat(c)  # loads it again
        assert ps(c) == [MODEL]
        assert c.get("/engines/ps").json()[0]["loaded_at"] > first_load  # a new load (RFC 3339)
        timings = second["timings"]
        assert timings["cache_n"] == 0
        assert timings["prompt_n"] == second["usage"]["prompt_tokens"] > 0
        assert (
            second["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
        )


def test_long_stream_outlives_a_short_idle_timeout(
    start_server: StartServer, models_dir: Path
) -> None:
    with running(start_server, models_dir, "--idle-timeout", "1s") as server, http(server) as c:
        # Measured on 8 tokens: the real rate may differ several times over on a busy box.
        n = tokens_for(c, seconds=8)  # loaded, then idle
        started = time.monotonic()
        text, last = stream_chat(c, max_tokens=n)
        elapsed = time.monotonic() - started
        assert elapsed > 1.5, f"stream too short ({elapsed:.2f}s) to test the idle timeout"
        assert last["choices"][0]["finish_reason"] == "length"
        assert text
        # After the stream the idle timer starts, and the model goes.
        assert wait_for(lambda: ps(c) == [], timeout=15)


def test_two_models_resident_and_served_concurrently(
    start_server: StartServer, two_model_store: Path
) -> None:
    with running(start_server, two_model_store) as server, http(server) as c:
        a = Background(lambda: stream_chat(http(server), MODEL, max_tokens=48))
        b = Background(lambda: stream_chat(http(server), OTHER, max_tokens=48))
        a.start()
        b.start()
        for job in (a, b):
            _, last = job.value()
            assert last["choices"][0]["finish_reason"] == "length"
        assert ps(c) == sorted([MODEL, OTHER])
        status = c.get("/engines/status").json()
        assert sorted(m["model_name"] for m in status["models"]) == sorted([MODEL, OTHER])


def test_two_names_of_one_file_load_once(start_server: StartServer, two_name_store: Path) -> None:
    with (
        running(start_server, two_name_store, "--max-models", "1") as server,
        http(server) as c,
    ):
        first = chat(c, MODEL, max_tokens=4)
        row = c.get("/engines/ps").json()[0]
        second = chat(c, SECOND, max_tokens=4)  # no second engine, and no eviction
        rows = c.get("/engines/ps").json()
        assert len(rows) == 1 and rows[0]["loaded_at"] == row["loaded_at"], rows
        assert rows[0]["model_name"] == MODEL and rows[0]["aliases"] == [SECOND]
        assert len(c.get("/engines/status").json()["models"]) == 1
        # One engine, so one prompt cache: the second name reuses the first one's prefix.
        assert second["timings"]["cache_n"] > 0
        assert second["choices"][0]["message"]["content"] is not None
        assert first["usage"]["prompt_tokens"] == second["usage"]["prompt_tokens"]
        r = c.post("/engines/unload", json={"models": [SECOND]})
        assert r.json()["unloaded"] == [MODEL] and ps(c) == []


def test_max_models_one_evicts_only_once_idle(
    start_server: StartServer, two_model_store: Path
) -> None:
    with (
        running(start_server, two_model_store, "--max-models", "1") as server,
        http(server) as c,
    ):
        n = tokens_for(c, seconds=8)  # ample for B to be seen waiting, even if A runs faster
        streaming = threading.Event()
        a = Background(
            lambda: stream_chat(http(server), MODEL, max_tokens=n, on_first_chunk=streaming.set)
        )
        a.start()
        assert streaming.wait(180), "stream on model A never started"
        b = Background(lambda: chat(http(server), OTHER, max_tokens=4))
        b.start()

        def b_is_waiting() -> bool:
            rows = {r["model_name"]: r for r in c.get("/engines/ps").json()}
            return OTHER in rows and rows[OTHER]["loading"] and rows[MODEL]["in_use"]

        assert wait_for(b_is_waiting, timeout=30), c.get("/engines/ps").json()
        assert a.is_alive(), "A finished before B's wait could be observed"
        assert b.is_alive(), "B finished while A was still serving"

        _, last = a.value()
        assert last["choices"][0]["finish_reason"] == "length"  # A was not cut off
        assert b.value()["choices"][0]["message"]["content"] is not None
        assert b.finished_at > a.finished_at
        assert ps(c) == [OTHER]  # A was evicted for B once it was idle


def test_configured_context_size_applies_at_next_load_and_survives_restart(
    start_server: StartServer, two_name_store: Path
) -> None:
    with running(start_server, two_name_store) as server:
        with http(server) as c:
            chat(c, max_tokens=1)
            assert {s["n_ctx"] for s in c.get("/slots", params={"model": MODEL}).json()} == {1024}
            r = c.post("/engines/_configure", json={"model": MODEL, "context-size": 512})
            assert r.status_code == 202, r.text
            assert r.json()["config"] == {"context-size": 512}
            chat(c, max_tokens=1)  # next load
            assert {s["n_ctx"] for s in c.get("/slots", params={"model": MODEL}).json()} == {512}
            assert c.get("/engines/ps").json()[0]["context_size"] == 512

        server.restart()
        with http(server) as c:
            assert ps(c) == []
            r = c.get("/engines/_configure", params={"model": MODEL})
            assert r.json()["config"] == {"context-size": 512}
            chat(c, max_tokens=1)
            assert {s["n_ctx"] for s in c.get("/slots", params={"model": MODEL}).json()} == {512}
            # The setting belongs to the file, so another name of the same GGUF shares it.
            chat(c, SECOND, max_tokens=1)
            assert {s["n_ctx"] for s in c.get("/slots", params={"model": SECOND}).json()} == {512}
            # The model's listing reports the configured context.
            assert c.get(f"/models/{MODEL}").json()["config"]["context_size"] == 512
