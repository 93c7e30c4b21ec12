"""DMR's management routes over real HTTP against a real server: engines status,
ps, unload, _configure, and the models API (list, inspect, create from a local GGUF, delete).

One server per module, on a private copy of the store (these tests add and delete models).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_proc import (
    MODEL,
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
    wait_idle,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DMR_PS_KEYS = {"backend_name", "model_name", "mode", "last_used", "in_use", "loading", "keep_alive"}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory, bundled_model_path: Path) -> Path:
    return private_store(tmp_path_factory.mktemp("mgmt") / "models", bundled_model_path, SECOND)


@pytest.fixture(scope="module")
def mgmt_server(start_server: Callable[..., Any], store_dir: Path) -> Iterator[Any]:
    with running(start_server, store_dir) as server:
        yield server


@pytest.fixture
def client(mgmt_server: Any) -> Iterator[httpx.Client]:
    with http(mgmt_server) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def busy_stream(server: Any, model: str, seconds: float = 4.0) -> tuple[Background, int]:
    """A streaming request on `model` running in the background (started, first chunk seen)."""
    with http(server) as c:
        n = tokens_for(c, seconds, model)
    started = threading.Event()
    job = Background(
        lambda: stream_chat(http(server), model, max_tokens=n, on_first_chunk=started.set)
    )
    job.start()
    assert started.wait(180), "stream never started"
    return job, n


def test_status_reports_backend_devices_and_models(client: httpx.Client) -> None:
    chat(client, max_tokens=1)
    status = client.get("/engines/status").json()
    assert status["running"] is True
    assert status["llama.cpp"].startswith("running llama-cpp-python ")
    assert "llama.cpp" in status["version"]
    assert isinstance(status["gpu_offload"], bool)
    assert status["devices"] and {"name", "type", "memory_total"} <= set(status["devices"][0])
    model = next(m for m in status["models"] if m["model_name"] == MODEL)
    assert isinstance(model["n_gpu_layers"], int)
    assert model["memory_estimate"] > 200 << 20  # at least the weights
    assert status["memory_used_estimate"] >= model["memory_estimate"]
    assert status["memory_budget"] > 0


def test_ps_rows_have_dmr_fields(client: httpx.Client) -> None:
    chat(client, max_tokens=1)
    rows = client.get("/engines/ps").json()
    row = next(r for r in rows if r["model_name"] == MODEL)
    assert set(row) >= DMR_PS_KEYS
    assert row["backend_name"] == "llama.cpp" and row["mode"] == "completion"
    assert row["in_use"] is False and row["loading"] is False
    assert row["keep_alive"] == "300s"
    assert row["last_used"].endswith("Z")
    assert (row["slots"], row["context_size"]) == (2, 1024)


def test_models_list_and_partial_names(client: httpx.Client) -> None:
    models = client.get("/models").json()
    ours = next(m for m in models if MODEL in m["tags"])
    assert ours["id"].startswith("sha256:") and len(ours["id"]) == 71
    assert isinstance(ours["created"], int)
    assert set(ours["config"]) >= {
        "format",
        "quantization",
        "parameters",
        "architecture",
        "size",
        "context_size",
    }
    assert ours["config"]["format"] == "gguf"
    assert ours["config"]["architecture"] == "gemma3"
    assert ours["config"]["quantization"] == "Q4_K_M"

    one = client.get("/models/gemma3")  # partial: finds ai/gemma3:latest
    assert one.status_code == 200
    assert "ai/gemma3:latest" in one.json()["tags"]
    assert client.get(f"/models/{SECOND}").json()["id"] == ours["id"]
    assert_error(client.get("/models/no-such-model"), 404, "model_not_found")


def test_configure_validates_and_persists(client: httpx.Client) -> None:
    bad = [
        ({"model": SECOND, "context-size": "big"}, 400),
        ({"model": SECOND, "context-size": 8}, 400),
        ({"model": SECOND, "slots": 0}, 400),
        ({"model": SECOND, "keep_alive": "soon"}, 400),
        ({"model": SECOND, "runtime-flags": ["--mlock"]}, 400),
        ({"context-size": 512}, 400),
        ({"model": "no-such-model", "context-size": 512}, 404),
    ]
    for body, status in bad:
        assert_error(client.post("/engines/_configure", json=body), status)
    r = client.post(
        "/engines/llama.cpp/_configure",
        json={"model": SECOND, "keep_alive": "10m", "runtime-flags": ["--parallel", "1"]},
    )
    assert r.status_code == 202, r.text
    assert r.json()["config"] == {"keep_alive": "10m", "slots": 1}
    assert client.get("/engines/_configure", params={"model": SECOND}).json()["config"] == {
        "keep_alive": "10m",
        "slots": 1,
    }
    listed = client.get("/engines/_configure").json()
    assert any(item["config"] == {"keep_alive": "10m", "slots": 1} for item in listed)
    chat(client, SECOND, max_tokens=1)
    row = next(r for r in client.get("/engines/ps").json() if r["model_name"] == SECOND)
    assert (row["keep_alive"], row["slots"]) == ("600s", 1)
    # null clears a setting
    r = client.post(
        "/engines/_configure", json={"model": SECOND, "keep_alive": None, "slots": None}
    )
    assert r.status_code == 202 and r.json()["config"] == {}


def test_configure_is_refused_while_the_model_serves(
    mgmt_server: Any, client: httpx.Client
) -> None:
    job, n = busy_stream(mgmt_server, MODEL)
    assert_error(
        client.post("/engines/_configure", json={"model": MODEL, "keep_alive": "10m"}),
        409,
        "model_busy",
    )
    assert job.is_alive()
    _, last = job.value()
    assert last["choices"][0]["finish_reason"] == "length"
    wait_idle(client, MODEL)
    r = client.post("/engines/_configure", json={"model": MODEL, "keep_alive": None})
    assert r.status_code == 202, r.text


def test_unload_never_cuts_a_request_off(mgmt_server: Any, client: httpx.Client) -> None:
    job, n = busy_stream(mgmt_server, MODEL)
    r = client.post("/engines/unload", json={"all": True, "backend": "llama.cpp"})
    assert r.status_code == 200, r.text
    assert MODEL in r.json()["busy"] and MODEL not in r.json()["unloaded"]
    assert MODEL in ps(client)
    text, last = job.value()
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["timings"]["predicted_n"] == n
    wait_idle(client, MODEL)
    r = client.post("/engines/unload", json={"models": [MODEL]})
    assert r.json() == {"unloaded_runners": 1, "unloaded": [MODEL], "busy": []}
    assert MODEL not in ps(client)
    assert_error(client.post("/engines/unload", json={"backend": "vllm", "all": True}), 404)
    assert_error(client.post("/engines/unload", json={"all": "yes"}), 400)


def _lines(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [line for line in response.text.splitlines() if line.strip()]


def test_models_create_streams_progress(
    client: httpx.Client, bundled_model_path: Path, make_gguf: Callable[..., Path]
) -> None:
    r = client.post(
        "/models/create",
        json={"from": str(bundled_model_path), "tag": "test/imported"},
        headers={"Accept": "application/json"},
    )
    events = [json.loads(line) for line in _lines(r)]
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert {e["type"] for e in events[:-1]} == {"progress"}
    assert len(events) >= 3
    assert events[-1]["type"] == "success", events[-1]
    assert events[-1]["id"] == client.get(f"/models/{MODEL}").json()["id"]
    assert client.get("/models/test/imported").json()["tags"]

    tiny = make_gguf("tiny-import")
    r = client.post("/models/create", json={"from": str(tiny)})  # plain text, name from file
    lines = _lines(r)
    assert r.headers["content-type"].startswith("text/plain")
    assert "successfully" in lines[-1]
    name = lines[-1].rsplit(" ", 1)[-1]
    assert name.startswith("ai/tiny-import")
    assert client.get(f"/models/{name}").status_code == 200

    assert_error(client.post("/models/create", json={}), 400)
    missing = str(tiny.parent / "missing.gguf")  # one answer for missing and not-GGUF
    assert_error(client.post("/models/create", json={"from": missing}), 400)
    assert_error(client.post("/models/create", json={"from": "/etc/passwd"}), 403)
    not_gguf = tiny.with_suffix(".txt")
    not_gguf.write_text("hello")
    assert_error(client.post("/models/create", json={"from": str(not_gguf)}), 400)

    model_id = client.get(f"/models/{name}").json()["id"]
    r = client.delete(f"/models/{model_id}")  # by ID: every name, and the file
    assert r.status_code == 200, r.text
    assert r.json() == {"id": model_id, "untagged": [name], "deleted": True}
    assert_error(client.get(f"/models/{name}"), 404)


def test_delete_refuses_a_busy_model_and_unloads_an_idle_one(
    mgmt_server: Any, client: httpx.Client, bundled_model_path: Path, tmp_path: Path
) -> None:
    # A name of a file that has other names: the file and its engine stay, so even a busy
    # model loses that name at once.
    alias = "test/alias:latest"
    client.post("/models/create", json={"from": str(bundled_model_path), "tag": alias}).read()
    job, _ = busy_stream(mgmt_server, alias)
    r = client.delete(f"/models/{alias}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": r.json()["id"], "untagged": [alias], "deleted": False}
    assert job.value()[1]["choices"][0]["finish_reason"] == "length"  # not cut off
    assert client.get(f"/models/{MODEL}").status_code == 200  # the file's other names stay

    # The only name of a file: deleting it deletes the file, which waits until it is idle.
    copy = tmp_path / "doomed.gguf"
    shutil.copyfile(bundled_model_path, copy)
    with copy.open("ab") as fh:
        fh.write(bytes(32))
    tag = "test/doomed:latest"
    client.post("/models/create", json={"from": str(copy), "tag": tag}).read()
    job, _ = busy_stream(mgmt_server, tag)
    assert_error(client.delete(f"/models/{tag}"), 409, "model_busy")
    job.value()
    assert tag in ps(client)
    wait_idle(client, tag)
    r = client.delete(f"/models/{tag}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": r.json()["id"], "untagged": [tag], "deleted": True}
    assert tag not in ps(client)
    assert_error(client.get(f"/models/{tag}"), 404)
    assert_error(client.delete("/models/no-such-model"), 404)


def test_a_model_that_cannot_fit_is_a_clear_507(
    start_server: Callable[..., Any], models_dir: Path
) -> None:
    with running(start_server, models_dir, "--memory-budget", "64MiB") as server, http(server) as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        error = assert_error(r, 507, "insufficient_memory")
        assert "memory budget is 64 MiB" in error["message"]
        assert ps(c) == []
        assert wait_for(lambda: c.get("/health").status_code == 200, 5)
