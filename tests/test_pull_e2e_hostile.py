"""Hostile pulls through the real server over HTTP (`POST /models/create {"from": ...}`), with
the bundled model: a registry written here (on loopback, listed as insecure for this server)
that tries to poison `ai/gemma3`'s chat template with its own name for the same GGUF, to
write outside the store through a digest, and to stream more than it declared; a URL on
loopback (refused, naming the setting); credentials for one registry asked for by another
(a real `docker-registry` beside the hostile one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerHandle, write_tiny_gguf
from hostile_remote import GGUF_LAYER, TEMPLATE_LAYER, HostileServer, Reply, digest
from oci_registry import RegistryProcess
from server_proc import MODEL, chat, http, private_store

from runner.config import Settings
from runner.store import ModelStore
from runner.store.bundled import expected_sha256
from runner.store.push import package, push

pytestmark = pytest.mark.slow

USER, PASSWORD = "alice", "s3cret-registry-password"
POISON = "{% for m in messages %}" + "POISONED TEMPLATE " * 80 + "{{ m.content }}{% endfor %}"


@pytest.fixture(scope="module")
def remote() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("auth-registry"), (USER, PASSWORD))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., ServerHandle],
    bundled_model_path: Path,
    auth_registry: RegistryProcess,
    root: Path,
) -> ServerHandle:
    store = private_store(root / "models", bundled_model_path)
    env = {
        "RUNNER_MODELS_DIR": str(store),
        "DOCKER_CONFIG": str(root / "no-docker-config"),
        "RUNNER_INSECURE_REGISTRIES": "127.0.0.1",  # the registries here; not URL pulls
        "RUNNER_REGISTRY_HOST": auth_registry.host,
        "RUNNER_REGISTRY_USERNAME": USER,
        "RUNNER_REGISTRY_PASSWORD": PASSWORD,
    }
    return start_server("--slots", "1", "--ctx-size", "1024", "--no-persist", env=env)


def _create(client: httpx.Client, source: str) -> httpx.Response:
    return client.post("/models/create", json={"from": source})


def _prompt_tokens(client: httpx.Client, model: str) -> int:
    answer: dict[str, Any] = chat(client, model, content="Hello there.", max_tokens=1)
    return int(answer["usage"]["prompt_tokens"])


def test_a_template_pulled_with_the_same_gguf_stays_with_its_own_name(
    server: ServerHandle, remote: HostileServer, bundled_model_path: Path
) -> None:
    layer = {
        "mediaType": GGUF_LAYER,
        "digest": f"sha256:{expected_sha256()}",
        "size": bundled_model_path.stat().st_size,
    }
    template = POISON.encode()
    poison = {"mediaType": TEMPLATE_LAYER, "digest": digest(template), "size": len(template)}
    remote.blob("evil/poison", template)
    remote.manifest("evil/poison", "t", [layer, poison])
    evil = f"{remote.host}/evil/poison:t"

    with http(server) as client:
        alone = _prompt_tokens(client, MODEL)
        pulled = _create(client, evil)
        assert pulled.status_code == 200, pulled.text
        assert not any("/blobs/sha256:" + expected_sha256() in p for p in remote.paths())
        assert _prompt_tokens(client, evil) > alone + 100  # its own name renders its template
        assert _prompt_tokens(client, MODEL) == alone  # ... and nobody else's
        assert client.delete(f"/models/{evil}").status_code == 200
        assert _prompt_tokens(client, MODEL) == alone
    server.restart()
    with http(server) as client:
        assert _prompt_tokens(client, MODEL) == alone


def test_a_digest_that_climbs_out_of_the_store_writes_nothing(
    server: ServerHandle, remote: HostileServer, root: Path
) -> None:
    climbing = "sha256:/../../../outside/" + "a" * 46
    remote.routes[f"/v2/evil/climb/blobs/{climbing}"] = Reply(200, b"APT::Update::Pre-Invoke")
    remote.manifest("evil/climb", "t", [{"mediaType": GGUF_LAYER, "digest": climbing, "size": 23}])
    with http(server) as client:
        refused = _create(client, f"{remote.host}/evil/climb:t")
        assert refused.status_code == 502, refused.text
        assert "not a sha256 digest" in refused.json()["error"]["message"]
        assert client.get("/health").status_code == 200
    assert not (root / "outside").exists() and not (root.parent / "outside").exists()
    assert not any("/blobs/" in p for p in remote.paths() if "evil/climb" in p)


def test_a_layer_longer_than_declared_is_cut_off(
    server: ServerHandle, remote: HostileServer, root: Path, tmp_path: Path
) -> None:
    gguf = write_tiny_gguf(tmp_path / "long.gguf", "long").read_bytes()
    name = digest(gguf)
    remote.routes[f"/v2/evil/long/blobs/{name}"] = Reply(200, gguf + b"\0" * (32 << 20))
    remote.manifest(
        "evil/long", "t", [{"mediaType": GGUF_LAYER, "digest": name, "size": len(gguf)}]
    )
    with http(server) as client:
        failed = _create(client, f"{remote.host}/evil/long:t")
        assert failed.status_code == 502, failed.text
        assert f"more than the {len(gguf)} bytes it declared" in failed.json()["error"]["message"]
        tags = [tag for model in client.get("/models").json() for tag in model["tags"]]
        assert MODEL in tags and not any("evil" in tag for tag in tags)
    tmp = root / "models" / "tmp"
    assert not list(tmp.glob("*.partial"))


def test_a_url_on_loopback_is_refused_naming_the_setting(
    server: ServerHandle, remote: HostileServer
) -> None:
    remote.routes["/secret"] = Reply(200, b"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI\n")
    before = len(remote.seen)
    with http(server) as client:
        for source in (f"{remote.url}/secret", f"http://localhost:{remote.server_address[1]}/s"):
            refused = _create(client, source)
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert "RUNNER_ALLOW_PRIVATE_PULLS" in error["message"]
            assert "AWS_" not in refused.text
    assert len(remote.seen) == before  # not one request reached it

    other = HostileServer("127.0.0.2")  # a registry on loopback that is not listed
    try:
        with http(server) as client:
            refused = _create(client, f"{other.host}/team/model:v1")
        assert refused.status_code == 403, refused.text
        assert "RUNNER_INSECURE_REGISTRIES" in refused.json()["error"]["message"]
        assert other.seen == []
    finally:
        other.close()


def test_registry_credentials_stay_with_their_registry(
    server: ServerHandle,
    remote: HostileServer,
    auth_registry: RegistryProcess,
    tmp_path: Path,
) -> None:
    ref = f"{auth_registry.host}/private/tiny:v1"
    publisher = ModelStore(tmp_path / "publisher", bundled_default=False)
    package(publisher, write_tiny_gguf(tmp_path / "private.gguf", "private"), ref)
    push(
        publisher,
        ref,
        settings=Settings(
            registry_host=auth_registry.host,
            registry_username=USER,
            registry_password=PASSWORD,
            insecure_registries=["127.0.0.1"],
        ),
    )
    remote.routes["/v2/evil/creds/manifests/v1"] = Reply(
        401, b"{}", {"WWW-Authenticate": 'Basic realm="evil"'}
    )
    with http(server) as client:
        asked = _create(client, f"{remote.host}/evil/creds:v1")
        assert asked.status_code == 401, asked.text
        pulled = _create(client, ref)  # the registry they are for gets them
        assert pulled.status_code == 200, pulled.text
    assert remote.authorizations() == []


def test_ollama_pull_without_streaming_answers_a_refusal_or_a_bad_remote_with_its_status(
    server: ServerHandle, remote: HostileServer, tmp_path: Path
) -> None:
    gguf = write_tiny_gguf(tmp_path / "flood.gguf", "flood").read_bytes()
    name = digest(gguf)
    remote.routes[f"/v2/evil/flood/blobs/{name}"] = Reply(200, gguf + b"\0" * (1 << 20))
    remote.manifest(
        "evil/flood", "t", [{"mediaType": GGUF_LAYER, "digest": name, "size": len(gguf)}]
    )
    with http(server) as client:
        refused = client.post(
            "/api/pull", json={"model": f"{remote.url}/secret.gguf", "stream": False}
        )
        assert refused.status_code == 403, refused.text
        assert set(refused.json()) == {"error"}
        assert "RUNNER_ALLOW_PRIVATE_PULLS" in refused.json()["error"]
        failed = client.post(
            "/api/pull", json={"model": f"{remote.host}/evil/flood:t", "stream": False}
        )
        assert failed.status_code == 502, failed.text  # the remote's fault, not a 500
        assert "more than" in failed.json()["error"]


def test_allow_private_pulls_lets_a_lan_url_through_and_quotes_nothing_fetched(
    start_server: Callable[..., ServerHandle], remote: HostileServer, root: Path
) -> None:
    remote.routes["/lan/secret.gguf"] = Reply(200, b"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI\n")
    store = root / "lan-models"
    store.mkdir()
    lan = start_server(
        "--allow-private-pulls", "--no-persist", env={"RUNNER_MODELS_DIR": str(store)}
    )
    try:
        with http(lan) as client:
            failed = _create(client, f"{remote.url}/lan/secret.gguf")
        # Fetched (the download had started, so the stream ends with the error), not a model.
        assert "not a GGUF model file" in failed.text, failed.text
        assert "AWS_" not in failed.text and str(store) not in failed.text
        assert "partial" not in failed.text
        assert "/lan/secret.gguf" in [s.path for s in remote.seen if s.method == "GET"]
    finally:
        lan.stop()
