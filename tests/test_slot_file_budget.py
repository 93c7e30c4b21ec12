"""Saved slot files are bounded on disk (`--slot-files-disk`): past the bound the oldest files
are dropped, and a file bigger than the whole bound is refused with a 413 and not kept
(a real server, restarted with bounds measured from one real file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ServerHandle
from server_proc import MODEL

pytestmark = pytest.mark.slow

PROMPT = " ".join(f"Note {i}: the river key is number {i * 7}." for i in range(12))


def _fill_and_save(client: httpx.Client, filename: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "temperature": 0, "id_slot": 0}
    assert client.post("/v1/completions", json=body).status_code == 200
    return client.post(
        "/slots/0", params={"action": "save", "model": MODEL}, json={"filename": filename}
    )


def test_slot_files_are_bounded(start_server: Callable[..., ServerHandle]) -> None:
    server = start_server("--model", MODEL, "--slots", "1", "--ctx-size", "512", "--no-persist")
    client = httpx.Client(base_url=server.url, timeout=300)
    model_id = client.get(f"/models/{MODEL}").json()["id"].removeprefix("sha256:")
    folder = Path(server.env["RUNNER_CACHE_DIR"]) / "slots" / model_id
    first = _fill_and_save(client, "first.slot")
    assert first.status_code == 200, first.text
    size = (folder / "first.slot").stat().st_size

    # Room for two files and a half: each save past two drops the oldest.
    server.env["RUNNER_SLOT_FILES_DISK"] = str(size * 5 // 2)
    server.restart()
    client = httpx.Client(base_url=server.url, timeout=300)
    for name in ("a.slot", "b.slot", "c.slot"):
        saved = _fill_and_save(client, name)
        assert saved.status_code == 200, saved.text
    assert sorted(p.name for p in folder.iterdir()) == ["b.slot", "c.slot"]
    gone = client.post(
        "/slots/0", params={"action": "restore", "model": MODEL}, json={"filename": "a.slot"}
    )
    assert gone.status_code == 404
    kept = client.post(
        "/slots/0", params={"action": "restore", "model": MODEL}, json={"filename": "c.slot"}
    )
    assert kept.status_code == 200, kept.text

    # A bound below one file: the save is refused and leaves nothing, the others stay.
    server.env["RUNNER_SLOT_FILES_DISK"] = str(size // 2)
    server.restart()
    client = httpx.Client(base_url=server.url, timeout=300)
    refused = _fill_and_save(client, "big.slot")
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"]["code"] == "slot_file_too_large"
    assert sorted(p.name for p in folder.iterdir()) == ["b.slot", "c.slot"]
    assert client.get("/health").status_code == 200
    server.stop()
