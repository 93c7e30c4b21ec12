"""Smaller holes, each over HTTP against a real server: `draft-model` in `_configure` reads
only from the store or `--allow-import` directories and says the same whether or not a file
exists; every page of the web UI carries the Content-Security-Policy; bound to all addresses
without a key, the Host check still refuses names a DNS-rebinding page would send."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ServerHandle, write_tiny_gguf
from server_proc import MODEL, private_store

from runner.api.ui.page import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.slow


def test_draft_model_paths_come_only_from_allowed_places(
    start_server: Callable[..., ServerHandle], bundled_model_path: Path, tmp_path: Path
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    inside_gguf = write_tiny_gguf(allowed / "draft.gguf")
    outside_gguf = write_tiny_gguf(outside / "draft.gguf")
    store = private_store(tmp_path / "models", bundled_model_path)  # configs are persisted
    env = {"RUNNER_ALLOW_IMPORT": str(allowed), "RUNNER_MODELS_DIR": str(store)}
    server = start_server("--ctx-size", "512", env=env)
    api = httpx.Client(base_url=server.url, timeout=120)

    def configure(draft: str, flags: bool = False) -> httpx.Response:
        body = {"model": MODEL}
        if flags:
            body["runtime-flags"] = ["--model-draft", draft]
        else:
            body["draft-model"] = draft
        return api.post("/engines/_configure", json=body)

    refused = {}
    for path in (
        str(outside_gguf),  # a real GGUF, outside the allowed directories
        str(outside / "missing.gguf"),  # no such file, outside
        str(allowed / "missing.gguf"),  # no such file, inside
        "/etc/passwd.gguf",
        str(allowed / ".." / "outside" / "draft.gguf"),  # climbs out
    ):
        for flags in (False, True):
            response = configure(path, flags)
            assert response.status_code == 400, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_config"
            refused[(path, flags)] = error["message"].replace(repr(path), "PATH")
    assert len(set(refused.values())) == 1, refused  # one answer, whatever is on the disk
    assert "--allow-import" in next(iter(refused.values()))

    for draft in (str(inside_gguf), MODEL):
        response = configure(draft)
        assert response.status_code == 202, response.text
        assert response.json()["config"]["draft-model"] == draft
    server.stop()


def test_every_web_page_carries_the_security_policy(server: ServerHandle) -> None:
    for path in ("/", "/ui/index.html", "/ui/style.css", "/ui/js/main.js"):
        response = httpx.get(server.url + path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["x-content-type-options"] == "nosniff"


def test_bound_to_all_addresses_without_a_key_foreign_hosts_are_refused(
    start_server: Callable[..., ServerHandle],
) -> None:
    server = start_server("--host", "0.0.0.0", "--no-ui")
    port = server.port

    def status(host: str) -> httpx.Response:
        return httpx.get(f"{server.url}/engines/status", headers={"Host": host}, timeout=30)

    for host in (f"evil.example:{port}", "evil.example", f"rebind.attacker.test:{port}"):
        refused = status(host)
        assert refused.status_code == 403, host
        assert refused.json()["error"]["code"] == "host_not_allowed"
    # What a user types to reach the machine: loopback names and IP addresses (a page cannot
    # rebind an address literal: its origin is the address itself).
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"10.1.2.3:{port}", f"[::1]:{port}"):
        assert status(host).status_code == 200, host
    server.stop()

    keyed = start_server("--host", "0.0.0.0", "--no-ui", "--api-key", "k")
    response = httpx.get(
        f"{keyed.url}/engines/status",
        headers={"Host": "models.lan", "Authorization": "Bearer k"},
        timeout=30,
    )
    assert response.status_code == 200  # with a key, any name may reach it: the key decides
    keyed.stop()
