"""Where a pull may connect and whom it gives credentials: the address policy as a pure
function, refusals that open no connection, and registry credentials that stay with their
own registry (a real `docker-registry` with basic auth beside a hostile registry written
here, both on loopback)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_tiny_gguf
from hostile_remote import HostileServer, Reply
from oci_registry import RegistryProcess

from runner.config import Settings
from runner.store import ModelStore, netguard
from runner.store.errors import InvalidModelFile, PullError, RemoteUnauthorized
from runner.store.netguard import AddressPolicy, PullRefused, is_public_address
from runner.store.pull import pull
from runner.store.push import package, push

USER, PASSWORD = "alice", "s3cret-registry-password"
SECRET = b"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Everything below passes its settings; nothing may come from the environment.
    for key in ("USERNAME", "PASSWORD", "HOST"):
        monkeypatch.delenv(f"RUNNER_REGISTRY_{key}", raising=False)
    monkeypatch.delenv("RUNNER_INSECURE_REGISTRIES", raising=False)
    monkeypatch.delenv("RUNNER_ALLOW_PRIVATE_PULLS", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


@pytest.fixture
def remote() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


def _store(root: Path) -> ModelStore:
    return ModelStore(root, bundled_default=False)


# ----- the address policy, pure ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("127.9.9.9", False),
        ("::1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("fe80::1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.10", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("fd00::1", False),
        ("224.0.0.251", False),
        ("ff02::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("255.255.255.255", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", True),
        ("2002:a00:1::1", False),  # 6to4 around 10.0.0.1
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("not-an-address", False),
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_policy_refuses_without_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("the policy opened a connection")

    monkeypatch.setattr(netguard.socket, "create_connection", no_socket)
    strict = AddressPolicy()
    for host in ("127.0.0.1", "[::1]", "169.254.169.254", "10.1.2.3", "localhost"):
        with pytest.raises(PullRefused, match="RUNNER_ALLOW_PRIVATE_PULLS"):
            strict.check_host(host)
    with pytest.raises(PullRefused):  # a name with one private address among public ones
        strict.check("mixed.example", ["8.8.8.8", "10.0.0.1"])
    strict.check("public.example", ["8.8.8.8"])
    assert AddressPolicy(allow_private=True).check_host("127.0.0.1") == ["127.0.0.1"]


# ----- URL and Hub pulls ---------------------------------------------------------------------------


def test_url_pull_of_a_loopback_address_is_refused_before_any_request(
    remote: HostileServer, tmp_path: Path
) -> None:
    remote.routes["/secret.gguf"] = Reply(200, SECRET)
    store = _store(tmp_path / "models")
    for url in (f"{remote.url}/secret.gguf", f"http://localhost:{remote.server_address[1]}/x"):
        with pytest.raises(PullRefused, match="RUNNER_ALLOW_PRIVATE_PULLS") as refused:
            pull(store, url, settings=Settings())
        assert "AWS_" not in str(refused.value)
    assert remote.seen == []


def test_a_redirect_to_a_private_address_is_refused(
    remote: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loopback is all a test has; let 127.0.0.1 count as public here, 127.0.0.2 not.
    real = netguard.is_public_address
    monkeypatch.setattr(netguard, "is_public_address", lambda a: str(a) == "127.0.0.1" or real(a))
    inside = HostileServer("127.0.0.2")
    try:
        inside.routes["/metadata"] = Reply(200, SECRET)
        remote.routes["/model.gguf"] = Reply(302, headers={"Location": f"{inside.url}/metadata"})
        with pytest.raises(PullRefused):
            pull(_store(tmp_path / "models"), f"{remote.url}/model.gguf", settings=Settings())
        assert remote.paths()  # the first hop was allowed ...
        assert inside.seen == []  # ... the redirect into the private network was not
    finally:
        inside.close()


def test_a_hub_endpoint_on_loopback_is_refused(
    remote: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", remote.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(PullRefused, match="RUNNER_ALLOW_PRIVATE_PULLS"):
        pull(_store(tmp_path / "models"), "hf.co/org/repo", settings=Settings())
    assert remote.seen == []


def test_errors_quote_no_fetched_bytes_and_no_server_paths(
    remote: HostileServer, tmp_path: Path
) -> None:
    remote.routes["/secret.gguf"] = Reply(200, SECRET)
    store = _store(tmp_path / "models")
    allowed = Settings(allow_private_pulls=True)  # a LAN model server, on purpose
    with pytest.raises(InvalidModelFile) as failed:
        pull(store, f"{remote.url}/secret.gguf", settings=allowed)
    message = str(failed.value)
    assert "AWS_" not in message and "wJal" not in message
    assert str(tmp_path) not in message and "partial" not in message
    assert not store.list() and not list(store.tmp_dir.glob("*.partial"))


# ----- registries -----------------------------------------------------------------------------------


def test_a_registry_on_loopback_must_be_listed(remote: HostileServer, tmp_path: Path) -> None:
    with pytest.raises(PullRefused, match="RUNNER_INSECURE_REGISTRIES"):
        pull(_store(tmp_path / "models"), f"{remote.host}/team/model:v1", settings=Settings())
    assert remote.seen == []


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("auth-registry"), (USER, PASSWORD))
    yield reg
    reg.stop()


def _basic_challenge(remote: HostileServer) -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="evil"'}
    remote.routes["/v2/evil/model/manifests/v1"] = Reply(401, b"{}", challenge)


def test_environment_credentials_go_only_to_their_registry(
    auth_registry: RegistryProcess, remote: HostileServer, tmp_path: Path
) -> None:
    ref = f"{auth_registry.host}/private/tiny:v1"
    gguf = write_tiny_gguf(tmp_path / "private.gguf", "private")
    listed = ["127.0.0.1"]
    scoped = Settings(
        registry_host=auth_registry.host,
        registry_username=USER,
        registry_password=PASSWORD,
        insecure_registries=listed,
    )
    publisher = _store(tmp_path / "publisher")
    package(publisher, gguf, ref)
    push(publisher, ref, settings=scoped)
    store = _store(tmp_path / "models")
    assert pull(store, ref, settings=scoped).entry.size == gguf.stat().st_size

    _basic_challenge(remote)
    with pytest.raises(RemoteUnauthorized):
        pull(store, f"{remote.host}/evil/model:v1", settings=scoped)
    assert remote.authorizations() == []

    # Unset, the host is Docker Hub's (as `docker login` without a server): not this one.
    hub_scoped = Settings(
        registry_username=USER, registry_password=PASSWORD, insecure_registries=listed
    )
    with pytest.raises(RemoteUnauthorized):
        pull(_store(tmp_path / "other"), ref, settings=hub_scoped)
    with pytest.raises(RemoteUnauthorized):
        pull(store, f"{remote.host}/evil/model:v1", settings=hub_scoped)
    assert remote.authorizations() == []


def test_docker_config_credentials_go_only_to_their_host(
    auth_registry: RegistryProcess, remote: HostileServer, tmp_path: Path
) -> None:
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config_dir / "config.json").write_text(
        f'{{"auths": {{"{auth_registry.host}": {{"auth": "{token}"}}}}}}'
    )
    _basic_challenge(remote)
    with pytest.raises(RemoteUnauthorized):
        pull(_store(tmp_path / "models"), f"{remote.host}/evil/model:v1",
             settings=Settings(insecure_registries=["127.0.0.1"]))  # fmt: skip
    assert remote.authorizations() == []


def test_credentials_never_go_to_a_token_service_on_another_host(
    remote: HostileServer, tmp_path: Path
) -> None:
    realm = HostileServer()
    try:
        realm.routes["/token"] = Reply(200, b'{"token": "t"}')
        remote.routes["/v2/team/model/manifests/v1"] = Reply(
            401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm.url}/token",service="x"'}
        )
        mine = Settings(
            registry_host=remote.host,
            registry_username=USER,
            registry_password=PASSWORD,
            insecure_registries=["127.0.0.1"],
        )
        with pytest.raises(PullError):
            pull(_store(tmp_path / "models"), f"{remote.host}/team/model:v1", settings=mine)
        assert realm.paths() and realm.authorizations() == []  # asked, anonymously
        # The same realm on the registry's own host does get them.
        remote.routes["/token"] = Reply(200, b'{"token": "t"}')
        remote.routes["/v2/team/model/manifests/v1"] = Reply(
            401, b"{}", {"WWW-Authenticate": f'Bearer realm="{remote.url}/token",service="x"'}
        )
        with pytest.raises(PullError):
            pull(_store(tmp_path / "models"), f"{remote.host}/team/model:v1", settings=mine)
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        assert basic in remote.authorizations()
    finally:
        realm.close()


def test_credentials_do_not_follow_a_redirect_to_another_host(
    remote: HostileServer, tmp_path: Path
) -> None:
    elsewhere = HostileServer()
    try:
        elsewhere.routes["/m"] = Reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="x"'})
        remote.routes["/v2/team/model/manifests/v1"] = Reply(
            302, headers={"Location": f"{elsewhere.url}/m"}
        )
        mine = Settings(
            registry_host=remote.host,
            registry_username=USER,
            registry_password=PASSWORD,
            insecure_registries=["127.0.0.1"],
        )
        with pytest.raises(PullError):
            pull(_store(tmp_path / "models"), f"{remote.host}/team/model:v1", settings=mine)
        assert elsewhere.paths() and elsewhere.authorizations() == []
        assert remote.authorizations() == []  # a challenge from elsewhere is not answered
    finally:
        elsewhere.close()


def test_the_cli_refuses_a_loopback_url_until_told_to_allow_it(
    remote: HostileServer, tmp_path: Path
) -> None:
    remote.routes["/secret.gguf"] = Reply(200, SECRET)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["RUNNER_MODELS_DIR"] = str(tmp_path / "models")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "runner", "models", "pull", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    refused = cli(f"{remote.url}/secret.gguf")
    assert refused.returncode == 1 and "--allow-private-pulls" in refused.stderr
    assert remote.seen == []
    allowed = cli(f"{remote.url}/secret.gguf", "--allow-private-pulls")
    assert allowed.returncode == 1 and "not a GGUF model file" in allowed.stderr
    assert "AWS_" not in allowed.stderr and str(tmp_path) not in allowed.stderr
    assert [s.path for s in remote.seen if s.method == "GET"] == ["/secret.gguf"]
