"""Faults: broken model files, hostile chat templates, an unusable prompt-cache dir.

One server per module on a private copy of the store (these tests add, break and delete
models). After every fault the bundled model must still answer.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_tiny_gguf
from server_proc import MODEL, chat, http, private_store, running, wait_for, wait_idle

from runner.store import ModelStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Path:
    return private_store(tmp_path_factory.mktemp("faults") / "models", bundled_model_path)


@pytest.fixture(scope="module")
def fault_server(start_server: Callable[..., Any], store_dir: Path) -> Iterator[Any]:
    with running(start_server, store_dir) as server:
        yield server


@pytest.fixture
def client(fault_server: Any) -> Iterator[httpx.Client]:
    with http(fault_server) as c:
        yield c


def ask(client: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return client.post(CHAT, json={**body, **extra})


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error["message"]


def still_serving(client: httpx.Client) -> None:
    assert chat(client, MODEL, max_tokens=2)["choices"][0]["message"]["content"] is not None


# ----- broken model files --------------------------------------------------------------------


def test_importing_a_truncated_gguf_is_refused(
    client: httpx.Client, bundled_model_path: Path, tmp_path: Path
) -> None:
    half = tmp_path / "half.gguf"
    with bundled_model_path.open("rb") as src:
        half.write_bytes(src.read(bundled_model_path.stat().st_size // 2))
    r = client.post("/models/create", json={"from": str(half), "tag": "test/half"})
    assert "truncated" in error_of(r, 400, "invalid_model_file")
    assert client.get("/models/test/half").status_code == 404
    still_serving(client)


def test_truncated_model_in_the_store_is_a_clear_error(
    client: httpx.Client, store_dir: Path, bundled_model_path: Path, tmp_path: Path
) -> None:
    # A different file (trailing bytes), so it gets its own blob; then cut it in half in
    # place, as a failing disk or an interrupted copy would.
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(bundled_model_path, copy)
    with copy.open("ab") as fh:
        fh.write(b"\0" * 64)
    entry = ModelStore(store_dir, bundled_default=False).add("test/truncated", copy, link=False)
    os.truncate(entry.path, entry.size // 2)
    for stream in (False, True):
        started = time.monotonic()
        message = error_of(ask(client, "test/truncated", stream=stream), 500, "model_file_error")
        assert "changed on disk" in message and "test/truncated" in message
        assert time.monotonic() - started < 60
    still_serving(client)
    assert client.delete("/models/test/truncated").status_code == 200


def test_gguf_llama_cpp_cannot_load_is_a_clear_error(
    client: httpx.Client, store_dir: Path, tmp_path: Path
) -> None:
    # A valid GGUF header (the store accepts it) without the tensors llama.cpp needs.
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "tiny-broken")
    ModelStore(store_dir, bundled_default=False).add("test/unloadable", tiny)
    for _ in range(2):  # a failed load is not cached as "loading": the next try fails too
        message = error_of(ask(client, "test/unloadable"), 500, "model_load_failed")
        assert "could not load" in message
    assert all(row["model_name"] != "test/unloadable:latest" for row in ps_rows(client))
    still_serving(client)


def test_deleted_model_file_is_reported(
    client: httpx.Client, store_dir: Path, tmp_path: Path
) -> None:
    tiny = write_tiny_gguf(tmp_path / "gone.gguf", "tiny-gone", fill=1.0)
    entry = ModelStore(store_dir, bundled_default=False).add("test/deleted", tiny)
    entry.path.unlink()
    message = error_of(ask(client, "test/deleted"), 500, "model_file_error")
    assert "missing" in message and "runner models rm" in message
    error_of(client.get("/models/test/deleted"), 500, "model_file_error")
    still_serving(client)
    assert client.delete("/models/test/deleted").status_code == 200  # the way out works
    assert client.get("/models/test/deleted").status_code == 404


def ps_rows(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get("/engines/ps")
    assert r.status_code == 200, r.text
    return r.json()


# ----- hostile chat templates ----------------------------------------------------------------


def configure_template(client: httpx.Client, template: str | None) -> None:
    wait_idle(client, "ai/gemma3:270m")
    r = client.post("/engines/_configure", json={"model": MODEL, "chat-template": template})
    assert r.status_code == 202, r.text


def slots_idle(client: httpx.Client) -> bool:
    slots = client.get("/slots").json()
    return all(not s["is_processing"] for s in slots)


@pytest.mark.parametrize(
    ("template", "status", "words"),
    [
        ("{{ raise_exception('no chat for you') }}", 400, "no chat for you"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            400,
            "exceeded",
        ),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", 400, "chat template"),
        ("{{ ''.__class__.__mro__ }}", 400, "unsafe"),
        ("{% for m in messages %}", 400, "invalid chat template"),
    ],
)
def test_hostile_template_is_a_clean_error(
    client: httpx.Client, template: str, status: int, words: str
) -> None:
    configure_template(client, template)
    try:
        started = time.monotonic()
        r = ask(client, MODEL)
        assert words in error_of(r, status, "chat_template_error")
        assert time.monotonic() - started < 60
        assert wait_for(lambda: slots_idle(client), 10), client.get("/slots").text
    finally:
        configure_template(client, None)
    still_serving(client)


# ----- the prompt cache's disk tier is unusable ----------------------------------------------


def test_unusable_cache_dir_degrades_to_no_disk_cache(
    start_server: Callable[..., Any], tmp_path: Path, store_dir: Path
) -> None:
    not_a_dir = tmp_path / "cache-is-a-file"
    not_a_dir.write_text("not a directory")
    server = start_server(
        "--slots", "1", "--ctx-size", "512", "--cache-ram", "0",
        env={"RUNNER_MODELS_DIR": str(store_dir), "RUNNER_CACHE_DIR": str(not_a_dir)},
    )  # fmt: skip
    try:
        with http(server) as c:
            for _ in range(2):
                still_serving(c)
            metrics = c.get("/metrics").text
        errors = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("runner:prompt_cache_write_errors")
        ]
        assert errors and errors[0] >= 1, metrics
    finally:
        assert server.stop() == 0, server.logs()[-3000:]  # the shutdown flush fails quietly
