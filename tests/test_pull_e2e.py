"""The bundled model's round trip through a real registry: `models package --push`, `rm`,
`pull` (CLI), then `POST /models/create {"from": NAME}` into a fresh server's store and one
chat completion from the pulled model over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from oci_registry import RegistryProcess
from server_proc import FAST_FLAGS, chat, http

from runner.store import ModelStore
from runner.store.bundled import expected_sha256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


def _empty_store(root: Path) -> Path:
    """A store with nothing in it, marked seeded so runner does not add the bundled model."""
    root.mkdir(parents=True)
    index = {"version": 1, "seeded": True, "tags": {}, "models": {}}
    (root / "index.json").write_text(json.dumps(index))
    return root


def _cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DOCKER_"))}
    env["RUNNER_MODELS_DIR"] = str(store)
    env["DOCKER_CONFIG"] = str(store.parent / "no-docker-config")
    env["RUNNER_INSECURE_REGISTRIES"] = "127.0.0.1"  # the test registry is on loopback
    done = subprocess.run(
        [sys.executable, "-m", "runner", "models", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_round_trip_through_registry_then_serve(
    registry: RegistryProcess,
    bundled_model_path: Path,
    start_server: Callable[..., object],
    tmp_path: Path,
) -> None:
    ref = f"{registry.host}/test/gemma3:270m"
    publisher = _empty_store(tmp_path / "publisher")
    pushed = _cli(publisher, "package", str(bundled_model_path), "--tag", ref, "--push")
    assert f"pushed {ref}" in pushed.stdout

    _cli(publisher, "rm", ref)
    assert ModelStore(publisher, bundled_default=False).list() == []

    pulled = _cli(publisher, "pull", ref)
    assert f"pulled {ref}" in pulled.stdout and "downloaded" in pulled.stdout
    entry = ModelStore(publisher, bundled_default=False).get(ref)
    assert entry.id == expected_sha256()  # the same bytes as the bundled GGUF
    again = _cli(publisher, "pull", ref)
    assert "nothing downloaded" in again.stdout

    serving = _empty_store(tmp_path / "serving")
    env = {"RUNNER_MODELS_DIR": str(serving), "RUNNER_INSECURE_REGISTRIES": "127.0.0.1"}
    server = start_server(*FAST_FLAGS, env=env)  # stopped by the fixture
    with http(server) as client:
        missing = client.post("/models/create", json={"from": f"{registry.host}/test/nothing:1"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "remote_model_not_found"

        response = client.post(
            "/models/create", json={"from": ref}, headers={"Accept": "application/json"}
        )
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines[-1]["type"] == "success", lines[-1]
        assert lines[-1]["id"] == f"sha256:{entry.id}" and lines[-1]["name"] == ref
        downloads = [line for line in lines if line.get("digest") == f"sha256:{entry.id}"]
        assert downloads and downloads[-1]["pulled"] == downloads[-1]["total"] == entry.size

        listed = client.get("/models").json()
        assert [m["tags"] for m in listed] == [[ref]]

        answer = chat(client, model=ref, max_tokens=4)
        assert answer["model"] and answer["usage"]["completion_tokens"] >= 1
