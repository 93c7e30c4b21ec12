"""Slot files (`POST /slots/N?action=save|restore`) are verified before they are restored, and
a save that cannot be written is an error that leaves no file behind (real server)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.cache.diskformat import HEADER, SLOT_MAGIC
from runner.engine.slot_files import (
    SlotFileInvalid,
    SlotFileKey,
    SlotFileMismatch,
    read_slot_file,
    write_slot_file,
)

MODEL = "ai/gemma3"
SLOT = 3
pytestmark = pytest.mark.timeout(600)


def prompt(topic: str) -> str:
    return " ".join(f"Note {i}: the {topic} key is number {i * 7}." for i in range(12))


def fill_slot(client: httpx.Client, text: str) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": text, "max_tokens": 2, "temperature": 0, "id_slot": SLOT}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def cached_tokens(client: httpx.Client) -> int:
    slots = client.get("/slots", params={"model": MODEL}).json()
    return next(s for s in slots if s["id"] == SLOT)["n_cached_tokens"]


def slot_post(client: httpx.Client, action: str, filename: str | None = None) -> httpx.Response:
    body = {"filename": filename} if filename else None
    return client.post(f"/slots/{SLOT}", params={"action": action, "model": MODEL}, json=body)


def slots_dir(server: Any, client: httpx.Client) -> Path:
    model_id = client.get(f"/models/{MODEL}").json()["id"].removeprefix("sha256:")
    return Path(server.env["RUNNER_CACHE_DIR"]) / "slots" / model_id


def token_offset(data: bytes) -> int:
    _, _, head_len, *_ = HEADER.unpack_from(data)
    return head_len


@pytest.fixture
def client(server: Any) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def test_a_verified_file_round_trips_and_serves_its_prefix(server: Any, client) -> None:
    text = prompt("garden")
    fill_slot(client, text)
    saved = slot_post(client, "save", "garden.slot")
    assert saved.status_code == 200, saved.text
    n = saved.json()["n_saved"]
    path = slots_dir(server, client) / "garden.slot"
    assert path.read_bytes()[:8] == SLOT_MAGIC
    assert saved.json()["n_written"] == path.stat().st_size
    assert slot_post(client, "erase").status_code == 200
    restored = slot_post(client, "restore", "garden.slot")
    assert restored.status_code == 200, restored.text
    assert restored.json()["n_restored"] == n == cached_tokens(client)
    again = fill_slot(client, text)
    assert again["timings"]["cache_n"] > 0
    assert again["timings"]["cache_source"] == "slot"


@pytest.mark.parametrize("where", ["tokens", "state", "model"])
def test_an_altered_file_is_refused_and_restores_nothing(server: Any, client, where) -> None:
    fill_slot(client, prompt("river"))
    assert slot_post(client, "save", "river.slot").status_code == 200
    path = slots_dir(server, client) / "river.slot"
    data = bytearray(path.read_bytes())
    start = token_offset(data)
    if where == "tokens":  # another prompt's token ids, as in a tampered or bit-rotted file
        data[start + 4 * 12] ^= 0x01
    elif where == "state":
        data[-100] ^= 0x40
    else:  # the model id inside the header
        data[HEADER.size] ^= 0x01
    tampered = slots_dir(server, client) / f"river-{where}.slot"
    tampered.write_bytes(bytes(data))
    fill_slot(client, prompt("mountain"))
    before = cached_tokens(client)
    r = slot_post(client, "restore", tampered.name)
    expected = (409, "slot_file_mismatch") if where == "model" else (400, "slot_file_invalid")
    assert (r.status_code, r.json()["error"]["code"]) == expected, r.text
    assert "cannot be restored" in r.json()["error"]["message"]
    assert cached_tokens(client) == before  # the refused file did not touch the slot


def test_a_file_in_another_format_is_refused(server: Any, client) -> None:
    folder = slots_dir(server, client)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "foreign.bin").write_bytes(os.urandom(4096))
    r = slot_post(client, "restore", "foreign.bin")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "slot_file_invalid"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_a_save_to_a_full_disk_is_507_and_leaves_no_file(server: Any, client) -> None:
    target = slots_dir(server, client)
    if not _mount_tmpfs(target, "64k"):
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        fill_slot(client, prompt("bridge"))  # ~150 tokens: MBs of KV; the disk has 64 KiB
        r = slot_post(client, "save", "full.slot")
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "insufficient_storage"
        assert "No space left on device" in error["message"]
        assert list(target.iterdir()) == []
        assert cached_tokens(client) > 0  # the slot itself is untouched
    finally:
        subprocess.run(["umount", str(target)], timeout=10)


# ----- the file format without a server -------------------------------------------------------


def test_read_slot_file_checks_model_layout_and_checksum(tmp_path: Path) -> None:
    key = SlotFileKey("a" * 64, "ctx8192-u0-swa1-s4")
    path = tmp_path / "s.slot"
    write_slot_file(path, key, [1, 2, 3], b"state-bytes")
    assert read_slot_file(path, key)[:2] == ([1, 2, 3], b"state-bytes")
    with pytest.raises(SlotFileMismatch, match="another model"):
        read_slot_file(path, SlotFileKey("b" * 64, key.kv_layout))
    with pytest.raises(SlotFileMismatch, match="KV layout"):
        read_slot_file(path, SlotFileKey(key.model_sha256, "ctx4096-u0-swa1-s4"))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(SlotFileInvalid, match="size mismatch"):
        read_slot_file(path, key)
    assert [p.name for p in tmp_path.iterdir()] == ["s.slot"]  # no temporary files left


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without root (no tmpfs to fill), a full disk is simulated at the write call.
    import errno

    from runner.engine import slot_files

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(slot_files.os, "write", full)
    with pytest.raises(slot_files.SlotFileNoSpace, match="No space left on device"):
        write_slot_file(tmp_path / "s.slot", SlotFileKey("a" * 64, "l"), [1, 2], b"x" * 100)
    assert list(tmp_path.iterdir()) == []
