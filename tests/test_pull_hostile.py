"""Pulls against hostile remotes written here and served on loopback: digests and file names
that climb out of the store, layers longer than declared, endless manifests and Hub
listings, a template that would ride on another name's GGUF, left-over partial downloads.
(Credentials and addresses: test_pull_network.py; through the server: test_pull_e2e_hostile.py.)"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_tiny_gguf
from hostile_remote import GGUF_LAYER, TEMPLATE_LAYER, HostileServer, Reply, digest
from hub_server import HubServer

from runner.config import Settings
from runner.store import ModelStore
from runner.store.digests import MalformedDigest, oci_digest, safe_remote_path, sha256_hex
from runner.store.download import _locked
from runner.store.errors import PullError
from runner.store.pull import pull, staging_path, sweep_partials

LOOPBACK = Settings(insecure_registries=["127.0.0.1"], allow_private_pulls=True)


@pytest.fixture
def remote() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


def _store(root: Path) -> ModelStore:
    return ModelStore(root, bundled_default=False)


def _everything_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


# ----- digests and file names that would name a path outside the store ------------------------


def test_only_whole_lowercase_sha256_digests_pass() -> None:
    good = "ab" * 32
    assert sha256_hex(f"sha256:{good}") == good and oci_digest(f"sha256:{good}") == f"sha256:{good}"
    climbing = "/../../../outside/" + "a" * 46
    for bad in (
        f"sha256:{climbing}",
        f"sha256:{good.upper()}",
        f"sha256:{good}\n",
        f"sha256:{good[:-1]}",
        f"sha512:{good}",
        good,  # OCI wants the algorithm
        None,
        64,
    ):
        with pytest.raises(MalformedDigest):
            oci_digest(bad)
    for name in ("../x.gguf", "a/../../x.gguf", "/etc/x.gguf", "a\\..\\x.gguf", "a/./b", ""):
        with pytest.raises(MalformedDigest):
            safe_remote_path(name, "repo")
    assert safe_remote_path("sub/dir/model-Q4_K_M.gguf", "repo") == "sub/dir/model-Q4_K_M.gguf"
    with pytest.raises(MalformedDigest):
        staging_path(_store(Path("/nonexistent-store")), climbing)


def test_a_layer_digest_that_climbs_out_writes_nothing_outside(
    remote: HostileServer, tmp_path: Path
) -> None:
    store = _store(tmp_path / "models")
    outside = tmp_path / "outside"
    climbing = "sha256:/../../../outside/" + "a" * 46
    assert len(climbing) == 71
    payload = b"APT::Update::Pre-Invoke {'touch /tmp/owned'};"
    remote.routes[f"/v2/evil/x/blobs/{climbing}"] = Reply(200, payload)
    remote.manifest("evil/x", "t", [{"mediaType": GGUF_LAYER, "digest": climbing, "size": 45}])
    with pytest.raises(PullError, match="not a sha256 digest"):
        pull(store, f"{remote.host}/evil/x:t", settings=LOOPBACK)
    assert not outside.exists()
    assert not any("blobs" in path for path in remote.paths())  # refused before asking
    assert all(p.is_relative_to(store.root) for p in _everything_under(tmp_path / "models"))
    assert not store.list()


def test_an_index_entry_with_a_bad_digest_is_refused(remote: HostileServer, tmp_path: Path) -> None:
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:../../../v2/other"}]}
    remote.routes["/v2/evil/idx/manifests/t"] = Reply(200, json.dumps(index).encode())
    with pytest.raises(PullError, match="not a sha256 digest"):
        pull(_store(tmp_path / "models"), f"{remote.host}/evil/idx:t", settings=LOOPBACK)
    assert remote.paths() == ["/v2/evil/idx/manifests/t"]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.close()


def test_hub_file_names_and_digests_that_climb_out_are_refused(
    hub: HubServer, tmp_path: Path
) -> None:
    gguf = write_tiny_gguf(tmp_path / "hub.gguf", "hub")
    hub.add_repo("evil/names", {"../../../outside/evil-Q4_K_M.gguf": gguf})
    store = _store(tmp_path / "models")
    with pytest.raises(MalformedDigest, match="leaves the repo"):
        pull(store, "hf.co/evil/names", settings=LOOPBACK)

    repo = hub.add_repo("evil/sha", {"model-Q4_K_M.gguf": gguf})
    repo.lfs_sha_override["model-Q4_K_M.gguf"] = "/../../../outside/" + "a" * 46
    with pytest.raises(MalformedDigest):
        pull(store, "hf.co/evil/sha", settings=LOOPBACK)
    assert not (tmp_path / "outside").exists()
    assert not hub.downloads
    assert not store.list()


# ----- nothing is read past what was declared ---------------------------------------------------


def test_a_layer_longer_than_declared_is_cut_off_and_discarded(
    remote: HostileServer, tmp_path: Path
) -> None:
    gguf = write_tiny_gguf(tmp_path / "long.gguf", "long").read_bytes()
    flood = gguf + b"\0" * (8 << 20)
    name = remote.blob("evil/long", gguf)  # the digest of the real file ...
    remote.routes[f"/v2/evil/long/blobs/{name}"] = Reply(200, flood)  # ... 8 MiB more of it
    remote.manifest(
        "evil/long", "t", [{"mediaType": GGUF_LAYER, "digest": name, "size": len(gguf)}]
    )
    store = _store(tmp_path / "models")
    with pytest.raises(PullError, match=f"more than the {len(gguf)} bytes it declared"):
        pull(store, f"{remote.host}/evil/long:t", settings=LOOPBACK)
    assert not list(store.tmp_dir.glob("*.partial")) and not store.list()


def _endless(sent: list[int], total: int, block: bytes) -> Iterator[bytes]:
    while sent[0] < total:
        sent[0] += len(block)
        yield block


def test_an_endless_manifest_is_refused_while_it_streams(
    remote: HostileServer, tmp_path: Path
) -> None:
    sent = [0]
    offered = 256 << 20
    head = b'{"schemaVersion": 2, "layers": [], "pad": "'
    remote.routes["/v2/evil/huge/manifests/t"] = Reply(
        200, lambda: itertools.chain([head], _endless(sent, offered, b" " * (1 << 20)))
    )
    with pytest.raises(PullError, match="larger than"):
        pull(_store(tmp_path / "models"), f"{remote.host}/evil/huge:t", settings=LOOPBACK)
    time.sleep(0.5)  # let the server's writer notice the closed connection
    # A 4 MiB cap plus what the sockets buffer; the whole answer would be 256 MiB.
    assert sent[0] < 64 << 20


def test_an_endless_hub_listing_is_refused_while_it_streams(
    remote: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = [0]
    offered = 256 << 20
    monkeypatch.setenv("HF_ENDPOINT", remote.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    head = b'{"id": "evil/huge", "siblings": [], "pad": "'
    remote.routes["/api/models/evil/huge/revision/main"] = Reply(
        200,
        lambda: itertools.chain([head], _endless(sent, offered, b" " * (1 << 20))),
        {"Content-Type": "application/json"},
    )
    with pytest.raises(PullError, match="larger than"):
        pull(_store(tmp_path / "models"), "hf.co/evil/huge", settings=LOOPBACK)
    time.sleep(0.5)
    assert 0 < sent[0] < 96 << 20  # a 32 MiB cap plus socket buffers, of 256 MiB


def test_a_zero_byte_model_layer_is_a_clear_refusal(remote: HostileServer, tmp_path: Path) -> None:
    empty = remote.blob("evil/empty", b"")
    remote.manifest("evil/empty", "t", [{"mediaType": GGUF_LAYER, "digest": empty, "size": 0}])
    with pytest.raises(PullError, match="empty"):
        pull(_store(tmp_path / "models"), f"{remote.host}/evil/empty:t", settings=LOOPBACK)


# ----- interrupted downloads do not pile up ----------------------------------------------------


def test_partials_are_pruned_by_age_and_total_but_not_while_in_use(tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    now = time.time()
    ages = {"old": 2 * 86400, "older-busy": 3 * 86400, "a": 3000, "b": 2000, "c": 1000}
    ages["active"] = 10  # written to seconds ago: maybe a merge, which holds no lock
    paths = {}
    for label, age in ages.items():
        path = staging_path(store, hashlib.sha256(label.encode()).hexdigest())
        path.write_bytes(bytes(1 << 20))
        os.utime(path, (now - age, now - age))
        paths[label] = path
    orphan_lock = staging_path(store, "f" * 64).with_suffix(".lock")
    orphan_lock.write_bytes(b"")
    with _locked(paths["older-busy"]):  # a pull is writing it right now
        sweep_partials(store, int(2.5 * (1 << 20)), now=now)
    kept = {label for label, path in paths.items() if path.exists()}
    # Past a day: gone (unless in use); then the oldest idle ones until the rest fit in
    # 2.5 MiB (or only active ones are left).
    assert kept == {"older-busy", "c", "active"}
    assert not orphan_lock.exists()


# ----- a template belongs to the name that brought it --------------------------------------------


def test_a_pulled_template_stays_with_its_own_name(remote: HostileServer, tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    gguf = write_tiny_gguf(tmp_path / "shared.gguf", "shared")
    victim = store.add("ai/victim", gguf)
    store.set_config("ai/victim", {"context-size": 128})
    template = b"{{ 'POISONED' }}"
    layer = {"mediaType": GGUF_LAYER, "digest": f"sha256:{victim.id}", "size": victim.size}
    poison = {"mediaType": TEMPLATE_LAYER, "digest": digest(template), "size": len(template)}
    remote.blob("evil/poison", template)
    remote.manifest("evil/poison", "t", [layer, poison])

    pulled = pull(store, f"{remote.host}/evil/poison:t", settings=LOOPBACK)
    assert pulled.entry.id == victim.id and pulled.downloaded == 0  # the same blob
    assert store.get_config(pulled.name)["chat-template"] == "{{ 'POISONED' }}"
    assert store.get_config("ai/victim") == {"context-size": 128}
    store.remove(pulled.name)
    assert store.get_config("ai/victim") == {"context-size": 128}
    reopened = _store(tmp_path / "models")
    assert reopened.get_config("ai/victim") == {"context-size": 128}
    assert "POISONED" not in reopened.index_path.read_text()


def test_file_keyed_configs_of_an_older_store_move_to_names_without_templates(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path / "models")
    entry = store.add("ai/one", write_tiny_gguf(tmp_path / "m.gguf", "m"))
    store.tag("evil/two", entry.id)
    # What an older runner left: one config for the file, a template some pull put there.
    store.configs_dir.mkdir()
    legacy = {"context-size": 256, "chat-template": "{{ 'POISONED' }}"}
    (store.configs_dir / f"{entry.id}.json").write_text(json.dumps(legacy))
    assert store.get_config("ai/one") == {"context-size": 256}
    assert store.get_config("evil/two") == {"context-size": 256}
    assert not store.configs_dir.exists()
    store.remove("evil/two")
    assert _store(tmp_path / "models").get_config("ai/one") == {"context-size": 256}


def test_a_copied_name_takes_its_source_names_config_and_keeps_its_own(tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    entry = store.add("team/base", write_tiny_gguf(tmp_path / "c.gguf", "c"))
    store.set_config("team/base", {"chat-template": "{{ 'T' }}"})
    assert store.copy("team/base", "team/copy").id == entry.id
    assert store.get_config("team/copy") == {"chat-template": "{{ 'T' }}"}
    store.set_config("team/copy", {"context-size": 64})
    assert store.get_config("team/base") == {"chat-template": "{{ 'T' }}"}
