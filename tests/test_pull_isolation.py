"""Pulls cannot freeze the API: they run on their own bounded pool, stop when their client
leaves, and past the bound are refused with a 503 at once. A hostile registry in the test
sends its model one byte at a time; the test sees the downloads end from the registry's side.
Also: a hostile registry's answers are never a 5xx of runner's own (a zero-size layer, and
Ollama's `/api/pull` with `stream: false`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from conftest import ServerHandle
from server_proc import MODEL, private_store
from slow_registry import SlowRegistry

pytestmark = pytest.mark.slow

MAX_PULLS = 4  # the server's bound on pulls running at once (runner.api.core.model_pull)


@pytest.fixture(scope="module")
def registry() -> Iterator[SlowRegistry]:
    server = SlowRegistry()
    yield server
    server.close()


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., ServerHandle],
    registry: SlowRegistry,
    bundled_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerHandle]:
    store = private_store(tmp_path_factory.mktemp("pulls") / "models", bundled_model_path)
    env = {"RUNNER_MODELS_DIR": str(store), "RUNNER_INSECURE_REGISTRIES": registry.host}
    handle = start_server("--slots", "1", "--ctx-size", "1024", "--model", MODEL, env=env)
    yield handle
    handle.stop()


def _start_pull(
    server: ServerHandle, registry: SlowRegistry, n: int, ollama_route: bool = False
) -> httpx.Client | None:
    """Pull `evil/slow<n>` until its download has begun (a progress line with a digest came);
    the caller leaves by closing the returned client. None when refused as one too many."""
    client = httpx.Client(base_url=server.url, timeout=60)
    name = f"{registry.host}/evil/slow{n}:latest"
    if ollama_route:
        request = client.build_request("POST", "/api/pull", json={"model": name})
    else:
        request = client.build_request(
            "POST", "/models/create", json={"from": name}, headers={"Accept": "application/json"}
        )
    response = client.send(request, stream=True)
    if response.status_code == 503 and b"too_many_pulls" in response.read():
        client.close()
        return None
    assert response.status_code == 200, response.read()[:300]
    lines = response.iter_lines()
    for line in lines:
        if line and json.loads(line).get("digest"):
            break
    # Dropping the line iterator would close the connection: the client stays until closed.
    client.lines = lines  # type: ignore[attr-defined]
    return client


def test_pulls_whose_clients_left_stop_and_never_block_the_api(
    server: ServerHandle, registry: SlowRegistry
) -> None:
    accepted = 0
    for i in range(6):
        client = _start_pull(server, registry, i, ollama_route=i % 2 == 1)
        if client is not None:  # (refused when the earlier ones have not stopped yet)
            accepted += 1
            client.close()  # the client leaves mid-download
    assert accepted >= MAX_PULLS
    assert registry.wait(lambda r: r.trickling == 0, timeout=60), (
        f"{registry.trickling} downloads still running after their clients left"
    )
    api = httpx.Client(base_url=server.url, timeout=60)
    for path in ("/models", "/engines/status", "/api/tags", "/v1/models"):
        assert api.get(path).status_code == 200, path
    chat = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    reply = chat.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_pulls_past_the_bound_are_refused_and_the_api_keeps_serving(
    server: ServerHandle, registry: SlowRegistry
) -> None:
    assert registry.wait(lambda r: r.trickling == 0, timeout=60)
    running = [_start_pull(server, registry, 10 + i) for i in range(MAX_PULLS)]
    try:
        assert None not in running
        assert registry.wait(lambda r: r.trickling == MAX_PULLS, timeout=60)
        api = httpx.Client(base_url=server.url, timeout=60)
        name = f"{registry.host}/evil/slow-more:latest"
        refused = api.post("/models/create", json={"from": name})
        assert refused.status_code == 503, refused.text[:300]
        assert refused.json()["error"]["code"] == "too_many_pulls"
        assert int(refused.headers["Retry-After"]) > 0
        with pytest.raises(ollama.ResponseError) as err:
            ollama.Client(host=server.url).pull(name, stream=False)
        assert err.value.status_code == 503
        for path in ("/models", "/engines/status", "/api/tags"):
            assert api.get(path).status_code == 200, path
    finally:
        for client in running:
            if client is not None:
                client.close()
    assert registry.wait(lambda r: r.trickling == 0, timeout=60)


def test_a_hostile_remote_is_never_a_server_error(
    server: ServerHandle, registry: SlowRegistry
) -> None:
    api = httpx.Client(base_url=server.url, timeout=60)
    name = f"{registry.host}/evil/empty:latest"  # its weight layer is declared as 0 bytes
    created = api.post(
        "/models/create", json={"from": name}, headers={"Accept": "application/json"}
    )
    if created.status_code == 200:  # the failure came after the stream started: an error line
        last = json.loads(created.text.strip().splitlines()[-1])
        assert last["type"] == "error" and last["code"] != "internal_error"
    else:
        assert 400 <= created.status_code < 500 or created.status_code in (502, 503, 507)
        assert created.json()["error"]["code"] != "internal_error"
    pulled = api.post("/api/pull", json={"model": name, "stream": False})
    assert pulled.status_code != 500 and pulled.status_code >= 400, pulled.text[:300]
    assert "error" in pulled.json()
    assert api.get("/api/tags").status_code == 200
