"""Pull and push against a real OCI registry (Debian's docker-registry on 127.0.0.1), with
small GGUFs: by tag and digest, idempotence, basic auth, resume after a cut connection,
corrupt bytes, unknown names, an unreachable registry."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import write_tiny_gguf
from oci_registry import RegistryProcess
from split_gguf import write_split_gguf

from runner.store import ModelStore
from runner.store import download as download_module
from runner.store.artifact import GGUF_LAYER, OCI_MANIFEST, manifest
from runner.store.errors import (
    DigestMismatch,
    DiskFull,
    PullError,
    RemoteNotFound,
    RemoteUnauthorized,
    RemoteUnreachable,
)
from runner.store.oci import Registry
from runner.store.pull import PullProgress, pull
from runner.store.push import package, push

USER, PASSWORD = "runner", "s3cret-pass"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("auth-registry"), (USER, PASSWORD))
    yield reg
    reg.stop()


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNNER_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("RUNNER_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    # The test registries listen on loopback: only a listed registry is spoken to there.
    monkeypatch.setenv("RUNNER_INSECURE_REGISTRIES", "127.0.0.1")


def _store(root: Path) -> ModelStore:
    return ModelStore(root, bundled_default=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _publish(tmp_path: Path, ref: str, name: str = "tiny", fill: float = 0.0) -> str:
    """Package a fresh tiny GGUF as `ref` in a scratch store and push it; returns its sha256."""
    gguf = write_tiny_gguf(tmp_path / f"{name}-{fill}.gguf", name, fill)
    store = _store(tmp_path / f"publisher-{name}-{fill}")
    package(store, gguf, ref)
    push(store, ref)
    return _sha(gguf)


def test_push_then_pull_by_tag_and_digest_is_idempotent(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    ref = f"{registry.host}/test/tiny:v1"
    model_id = _publish(tmp_path, ref)
    store = _store(tmp_path / "models")
    events: list[PullProgress] = []
    first = pull(store, ref, events.append)
    assert first.entry.id == model_id and first.name == ref
    assert first.downloaded == first.entry.size
    assert _sha(store.get(ref).path) == model_id
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert f"pulling {model_id[:12]}" in statuses and "verifying sha256 digest" in statuses
    assert not list(store.tmp_dir.glob("*.partial"))

    again = pull(store, ref)  # the blob is there: nothing is downloaded
    assert again.downloaded == 0 and again.entry.id == model_id

    manifest_digest = again.source.rsplit("@", 1)[1]
    by_digest = pull(_store(tmp_path / "other"), f"{registry.host}/test/tiny@{manifest_digest}")
    assert by_digest.entry.id == model_id
    assert by_digest.name == f"{registry.host}/test/tiny:sha256-{manifest_digest[7:19]}"

    wrong = "sha256:" + "0" * 64
    with pytest.raises(RemoteNotFound):
        pull(store, f"{registry.host}/test/tiny@{wrong}")


def test_pushed_artifact_uses_docker_model_runner_media_types(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    ref = f"{registry.host}/test/layout:v1"
    gguf = write_tiny_gguf(tmp_path / "layout.gguf", "layout")
    template = tmp_path / "template.jinja"
    template.write_text("{{ messages[0].content }}")
    store = _store(tmp_path / "models")
    package(store, gguf, ref, chat_template=template)
    push(store, ref)
    manifest = httpx.get(
        f"http://{registry.host}/v2/test/layout/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.ai.model.config.v0.1+json"
    kinds = [layer["mediaType"] for layer in manifest["layers"]]
    assert kinds == [
        "application/vnd.docker.ai.gguf.v3",
        "application/vnd.docker.ai.chat.template.jinja",
    ]
    assert manifest["layers"][0]["digest"] == f"sha256:{_sha(gguf)}"
    config = httpx.get(
        f"http://{registry.host}/v2/test/layout/blobs/{manifest['config']['digest']}"
    ).json()
    assert config["config"]["format"] == "gguf"
    assert config["config"]["architecture"] == "llama"
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]

    fresh = _store(tmp_path / "fresh")
    assert pull(fresh, ref).entry.id == _sha(gguf)
    assert fresh.get_config(ref)["chat-template"] == "{{ messages[0].content }}"


def test_basic_auth_registry(
    auth_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = f"{auth_registry.host}/private/tiny:v1"
    gguf = write_tiny_gguf(tmp_path / "private.gguf", "private")
    publisher = _store(tmp_path / "publisher")
    package(publisher, gguf, ref)
    with pytest.raises(RemoteUnauthorized):
        push(publisher, ref)  # no credentials anywhere

    monkeypatch.setenv("RUNNER_REGISTRY_HOST", auth_registry.host)
    monkeypatch.setenv("RUNNER_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("RUNNER_REGISTRY_PASSWORD", "wrong")
    with pytest.raises(RemoteUnauthorized):
        push(publisher, ref)
    monkeypatch.setenv("RUNNER_REGISTRY_PASSWORD", PASSWORD)
    push(publisher, ref)

    monkeypatch.delenv("RUNNER_REGISTRY_USERNAME")
    monkeypatch.delenv("RUNNER_REGISTRY_PASSWORD")
    store = _store(tmp_path / "models")
    with pytest.raises(RemoteUnauthorized):
        pull(store, ref)
    assert not store.list()

    # `docker login` leaves the credentials in the Docker config file
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token}}})
    )
    assert pull(store, ref).entry.id == _sha(gguf)

    # ... or behind a credential helper named by `credsStore` (here a script on PATH)
    helper_dir = tmp_path / "bin"
    helper_dir.mkdir()
    helper = helper_dir / "docker-credential-runnertest"
    answer = json.dumps({"ServerURL": auth_registry.host, "Username": USER, "Secret": PASSWORD})
    helper.write_text(f"#!/bin/sh\nread server\necho '{answer}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper_dir}{os.pathsep}{os.environ['PATH']}")
    (config_dir / "config.json").write_text(json.dumps({"credsStore": "runnertest"}))
    fresh = _store(tmp_path / "fresh")
    assert pull(fresh, ref).entry.id == _sha(gguf)


class _CuttingProxy(http.server.ThreadingHTTPServer):
    """Forwards GETs/HEADs to the registry. Blob GETs can be cut half way (`cuts` times) or
    corrupted; every blob request's Range header is recorded."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.cuts = 0
        self.corrupt = False
        self.ranges: list[str | None] = []
        # Docker Hub's scheme: a 401 names a token service; its token opens the registry.
        self.token_login: str | None = None  # the Basic header the token service wants
        self.token_requests: list[tuple[str, str | None]] = []  # (query, Authorization)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _CuttingProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._forward(head=True)

    def do_GET(self) -> None:
        self._forward(head=False)

    def _token_gate(self) -> bool:
        """With `token_login` set, play Docker Hub: True if this request was answered here."""
        login = self.server.token_login
        if login is None:
            return False
        if self.path.startswith("/token"):
            given = self.headers.get("Authorization")
            self.server.token_requests.append((self.path.partition("?")[2], given))
            status, body = (200, b'{"token": "tok-1"}') if given == login else (401, b"{}")
        elif self.headers.get("Authorization") == "Bearer tok-1":
            return False
        else:
            status, body = 401, b'{"errors": [{"code": "UNAUTHORIZED"}]}'
            realm = f'realm="http://{self.server.host}/token",service="proxy-test"'
            scope = 'scope="repository:test/token:pull"'
            self.send_response(status)
            self.send_header("WWW-Authenticate", f"Bearer {realm},{scope}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    def _forward(self, head: bool) -> None:
        if self._token_gate():
            return
        keep = (
            ("accept", "range") if self.server.token_login else ("accept", "range", "authorization")
        )
        headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
        url = f"http://{self.server.upstream}{self.path}"
        upstream = httpx.request("HEAD" if head else "GET", url, headers=headers)
        body = b"" if head else upstream.content
        is_blob = "/blobs/sha256:" in self.path and not head
        if is_blob:
            self.server.ranges.append(self.headers.get("Range"))
        cut = is_blob and self.server.cuts > 0 and len(body) > 1
        if cut:
            self.server.cuts -= 1
        if is_blob and self.server.corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        self.send_response(upstream.status_code)
        for key in ("content-type", "content-range", "docker-content-digest", "www-authenticate"):
            if key in upstream.headers:
                self.send_header(key, upstream.headers[key])
        length = upstream.headers.get("content-length", "0") if head else str(len(body))
        self.send_header("Content-Length", length)
        self.end_headers()
        if head:
            return
        if cut:  # half the promised bytes, then the connection drops
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def proxy(registry: RegistryProcess) -> Iterator[_CuttingProxy]:
    server = _CuttingProxy(registry.host)
    yield server
    server.shutdown()
    server.server_close()


def test_interrupted_download_resumes_with_range(
    registry: RegistryProcess, proxy: _CuttingProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = _publish(tmp_path, f"{registry.host}/test/resume:v1", "resume", 1.0)
    ref = f"{proxy.host}/test/resume:v1"
    store = _store(tmp_path / "models")

    # No retries: the cut leaves half the blob in tmp/ and the store untouched.
    monkeypatch.setattr(download_module, "RETRIES", 0)
    proxy.cuts = 1
    with pytest.raises(PullError, match="interrupted"):
        pull(store, ref)
    partial = store.tmp_dir / f"pull-{model_id}.partial"
    half = partial.stat().st_size
    assert 0 < half < (tmp_path / "resume-1.0.gguf").stat().st_size
    assert not store.list()

    # The next pull asks only for the rest.
    proxy.ranges.clear()
    assert pull(store, ref).entry.id == model_id
    assert proxy.ranges == [f"bytes={half}-"]
    assert not partial.exists()

    # With retries (the default) a cut inside one pull is resumed by that pull.
    monkeypatch.setattr(download_module, "RETRIES", 3)
    other = _store(tmp_path / "other")
    proxy.cuts, proxy.ranges = 1, []
    assert pull(other, ref).entry.id == model_id
    assert proxy.ranges[0] is None and proxy.ranges[1].startswith("bytes=")
    assert proxy.ranges[1] != "bytes=0-"


def test_corrupt_blob_leaves_nothing_behind(
    registry: RegistryProcess, proxy: _CuttingProxy, tmp_path: Path
) -> None:
    model_id = _publish(tmp_path, f"{registry.host}/test/corrupt:v1", "corrupt", 2.0)
    store = _store(tmp_path / "models")
    proxy.corrupt = True
    with pytest.raises(DigestMismatch):
        pull(store, f"{proxy.host}/test/corrupt:v1")
    assert not store.list()
    assert not list(store.tmp_dir.glob("*.partial"))
    assert not store.blobs_dir.exists() or not list(store.blobs_dir.iterdir())

    # A damaged leftover of an earlier attempt is thrown away and fetched again whole.
    proxy.corrupt, proxy.ranges = False, []
    size = (tmp_path / "corrupt-2.0.gguf").stat().st_size
    (store.tmp_dir / f"pull-{model_id}.partial").write_bytes(b"\0" * size)
    assert pull(store, f"{proxy.host}/test/corrupt:v1").entry.id == model_id
    assert proxy.ranges == [None]


def test_unknown_name_and_unreachable_registry(registry: RegistryProcess, tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    with pytest.raises(RemoteNotFound):
        pull(store, f"{registry.host}/nobody/nothing:latest")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens once the socket closes
    with pytest.raises(RemoteUnreachable, match="offline"):
        pull(store, f"127.0.0.1:{closed}/test/tiny:v1")
    assert not store.list()


def test_split_gguf_artifact_is_merged_and_package_joins_shards(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    whole, shards = write_split_gguf(tmp_path / "split", "split", 0.375)
    layers = [(GGUF_LAYER, f"sha256:{_sha(p)}", p.stat().st_size) for p in shards]
    config = b'{"config": {"format": "gguf"}}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with Registry(registry.host) as client:  # a sharded artifact, as DMR packages one
        for path, (_, digest, _) in zip(shards, layers, strict=True):
            client.upload_blob("test/split", digest, path)
        client.upload_blob("test/split", config_digest, config)
        body = manifest((config_digest, len(config)), layers)
        client.put_manifest("test/split", "v1", body, OCI_MANIFEST)

    store = _store(tmp_path / "models")
    result = pull(store, f"{registry.host}/test/split:v1")
    assert result.entry.id == _sha(whole)  # gguf-py writes the same bytes whole or merged
    assert pull(store, f"{registry.host}/test/split:v1").downloaded == 0
    assert not list(store.tmp_dir.glob("*.partial"))

    packaged = package(_store(tmp_path / "packager"), shards[0], f"{registry.host}/test/joined:v1")
    assert packaged.id == _sha(whole)


def _limit_file_size() -> None:
    # A file size limit fails writes past it with EFBIG, as a full disk fails them with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))


def test_full_disk_fails_cleanly_from_the_cli(registry: RegistryProcess, tmp_path: Path) -> None:
    ref = f"{registry.host}/test/full:v1"
    _publish(tmp_path, ref, "full", 3.0)
    models = tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update(RUNNER_MODELS_DIR=str(models), DOCKER_CONFIG=str(tmp_path / "docker-config"))
    env["RUNNER_INSECURE_REGISTRIES"] = "127.0.0.1"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "models", "pull", ref],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size,
    )
    assert done.returncode == 1, done.stderr
    assert "no space left" in done.stderr
    store = _store(models)
    assert not store.list()
    assert not list(store.tmp_dir.glob("*.partial"))
    assert pull(store, ref).entry.size > 300  # with room again, the same pull works


def test_token_auth_as_docker_hub_does_it(
    registry: RegistryProcess,
    proxy: _CuttingProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model_id = _publish(tmp_path, f"{registry.host}/test/token:v1", "token", 4.0)
    proxy.token_login = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    store = _store(tmp_path / "models")
    with pytest.raises(RemoteUnauthorized, match="token service refused"):
        pull(store, f"{proxy.host}/test/token:v1")  # anonymous: no token
    assert proxy.token_requests[-1] == (
        "service=proxy-test&scope=repository%3Atest%2Ftoken%3Apull",
        None,
    )

    monkeypatch.setenv("RUNNER_REGISTRY_HOST", proxy.host)
    monkeypatch.setenv("RUNNER_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("RUNNER_REGISTRY_PASSWORD", PASSWORD)
    assert pull(store, f"{proxy.host}/test/token:v1").entry.id == model_id
    assert proxy.token_requests[-1][1] == proxy.token_login
    assert len(proxy.token_requests) == 2  # one token served the manifest and the blob


def test_space_is_checked_first_and_abandoned_downloads_are_swept(
    registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = f"{registry.host}/test/space:v1"
    _publish(tmp_path, ref, "space", 5.0)
    store = _store(tmp_path / "models")
    store.tmp_dir.mkdir(parents=True)
    old, fresh = store.tmp_dir / "pull-old.partial", store.tmp_dir / "pull-fresh.partial"
    for path in (old, fresh):
        path.write_bytes(b"x")
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))

    real_usage = shutil.disk_usage
    with monkeypatch.context() as patch, pytest.raises(DiskFull, match="MB needed"):
        patch.setattr(
            download_module.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10)
        )
        pull(store, ref)
    assert not store.list() and not old.exists() and fresh.exists()
    assert pull(store, ref).downloaded > 0


def test_cli_push_to_another_name_then_pull_it(registry: RegistryProcess, tmp_path: Path) -> None:
    """`runner models push NAME REF` publishes a stored model under a registry name of its own."""
    gguf = write_tiny_gguf(tmp_path / "local.gguf", "local", 6.0)
    models = tmp_path / "models"
    package(_store(models), gguf, "my/local:v1")  # a plain local name, no registry in it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update(RUNNER_MODELS_DIR=str(models), DOCKER_CONFIG=str(tmp_path / "docker-config"))
    env["RUNNER_INSECURE_REGISTRIES"] = "127.0.0.1"
    target = f"{registry.host}/team/renamed:q4"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "models", "push", "my/local:v1", target],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"pushed {target} (sha256:"), done.stdout
    fresh = _store(tmp_path / "fresh")
    assert pull(fresh, target).entry.id == _sha(gguf)
    assert [e.name for e in fresh.list()] == [target]
