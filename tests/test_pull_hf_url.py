"""Pulls from Hugging Face (against a local Hub stand-in reached via HF_ENDPOINT) and from
plain URLs, with small GGUFs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_tiny_gguf
from hub_server import HubServer
from split_gguf import write_split_gguf

from runner.store import ModelStore
from runner.store.errors import DigestMismatch, PullError, RemoteNotFound, UnsupportedArtifact
from runner.store.hf import choose_files
from runner.store.pull import pull

REPO = "Test-Org/Tiny-GGUF"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-files")
    return {
        "tiny-Q4_K_M.gguf": write_tiny_gguf(root / "q4.gguf", "hub-q4", 0.5),
        "tiny-Q8_0.gguf": write_tiny_gguf(root / "q8.gguf", "hub-q8", 0.25),
        "mmproj-tiny-f16.gguf": write_tiny_gguf(root / "mm.gguf", "hub-mmproj", 0.75),
    }


@pytest.fixture
def hub(
    ggufs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[HubServer]:
    server = HubServer()
    server.add_repo(REPO, {**ggufs, "README.md": b"# tiny\n"})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("RUNNER_ALLOW_PRIVATE_PULLS", "1")  # the stand-in Hub is on loopback
    yield server
    server.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", bundled_default=False)


def test_default_quant_then_named_quant_then_idempotent(
    hub: HubServer, ggufs: dict[str, Path], tmp_path: Path
) -> None:
    store = _store(tmp_path)
    result = pull(store, f"hf.co/{REPO}")
    assert result.name == "hf.co/test-org/tiny-gguf:latest"
    assert result.entry.id == _sha(ggufs["tiny-Q4_K_M.gguf"])
    assert result.downloaded == result.entry.size

    q8 = pull(store, f"hf.co/{REPO}:Q8_0")
    assert q8.name == "hf.co/test-org/tiny-gguf:q8_0"
    assert q8.entry.id == _sha(ggufs["tiny-Q8_0.gguf"])
    assert [name for name, _ in hub.downloads] == ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"]

    again = pull(store, f"huggingface.co/{REPO}:q8_0")  # same file: nothing transferred
    assert again.downloaded == 0 and again.entry.id == q8.entry.id
    assert len(hub.downloads) == 2
    assert not list(store.tmp_dir.rglob("*.gguf")) and not list(store.tmp_dir.glob("*.partial"))


def test_cut_download_is_resumed(hub: HubServer, ggufs: dict[str, Path], tmp_path: Path) -> None:
    hub.cuts = 1
    entry = pull(_store(tmp_path), f"hf.co/{REPO}:Q4_K_M").entry
    assert entry.id == _sha(ggufs["tiny-Q4_K_M.gguf"])
    # The retry asks only for the bytes the cut connection did not deliver.
    assert [name for name, _ in hub.downloads] == ["tiny-Q4_K_M.gguf"] * 2
    assert hub.downloads[1][1] not in (None, "bytes=0-")


def test_hub_errors_leave_the_store_empty(hub: HubServer, tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RemoteNotFound, match="no such repo"):
        pull(store, "hf.co/test-org/missing")
    with pytest.raises(RemoteNotFound, match="Q2_K"):
        pull(store, f"hf.co/{REPO}:Q2_K")
    hub.repos[REPO.lower()].lfs_sha_override["tiny-Q8_0.gguf"] = "ab" * 32
    with pytest.raises(PullError, match="sha256 mismatch"):
        pull(store, f"hf.co/{REPO}:Q8_0")
    assert not store.list()
    assert not store.blobs_dir.exists() or not list(store.blobs_dir.iterdir())


def test_choose_file_matches_quant_tokens() -> None:
    files = ["m-Q4_K.gguf", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "mmproj-Q4_K_M.gguf", "a.txt"]
    assert choose_files(files, "Q4_K", "r") == ["m-Q4_K.gguf"]
    assert choose_files(files, "q4_k_s", "r") == ["m-Q4_K_S.gguf"]
    assert choose_files(files, None, "r") == ["m-Q4_K_M.gguf"]
    assert choose_files(["x.Q8_0.gguf", "x.f16.gguf"], None, "r") == ["x.Q8_0.gguf"]
    split = [f"big-Q4_K_M-0000{i}-of-00003.gguf" for i in (3, 1, 2)]
    assert choose_files(split, None, "r") == sorted(split)
    with pytest.raises(UnsupportedArtifact, match="00002-of-00003"):
        choose_files(split[:2], None, "r")


def test_split_gguf_is_merged_into_one_model(hub: HubServer, tmp_path: Path) -> None:
    whole, shards = write_split_gguf(tmp_path / "split", "Split-Q4_K_M", 0.125)
    hub.add_repo("test-org/Split-GGUF", {p.name: p for p in shards})
    store = _store(tmp_path)
    result = pull(store, "hf.co/test-org/Split-GGUF")
    # gguf-py writes the same bytes whole or merged: the merge is exact.
    assert result.entry.id == _sha(whole)
    assert sorted(name for name, _ in hub.downloads) == sorted(p.name for p in shards)
    again = pull(store, "hf.co/test-org/Split-GGUF:Q4_K_M")
    assert again.downloaded == 0 and again.entry.id == result.entry.id
    assert len(hub.downloads) == 2
    assert not list(store.tmp_dir.glob("*.partial"))


def test_url_pull_with_and_without_sha256(
    hub: HubServer, ggufs: dict[str, Path], tmp_path: Path
) -> None:
    store = _store(tmp_path)
    url = f"{hub.url}/{REPO}/resolve/main/tiny-Q8_0.gguf"
    model_id = _sha(ggufs["tiny-Q8_0.gguf"])
    with pytest.raises(RemoteNotFound):
        pull(store, f"{hub.url}/{REPO}/resolve/main/missing.gguf")
    with pytest.raises(DigestMismatch):
        pull(store, f"{url}#sha256={'cd' * 32}")
    assert not store.list() and not list(store.tmp_dir.glob("*.partial"))

    hub.cuts = 1  # cut half way: resumed with Range inside the same pull
    result = pull(store, url, tag="mine/tiny:q8")
    assert result.entry.id == model_id and result.name == "mine/tiny:q8"
    assert hub.downloads[-1][1] not in (None, "bytes=0-")

    pinned = pull(store, url, sha256=model_id)
    assert pinned.downloaded == 0 and pinned.name == "ai/tiny-q8_0:latest"
