"""The stored-responses store on its own: round trip, id checks, age and size bounds, and the
in-memory variant (pure file logic; the API tests drive it end to end)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runner.api.responses.store import ResponseStore


def _record(size: int = 10) -> dict[str, object]:
    return {"response": {"id": "x"}, "input_items": [], "messages": [{"content": "y" * size}]}


@pytest.mark.parametrize("on_disk", [True, False])
def test_round_trip_delete_and_bad_ids(tmp_path: Path, on_disk: bool) -> None:
    store = ResponseStore(tmp_path if on_disk else None, max_bytes=1 << 20, max_age=3600)
    store.put("resp_a1", _record())
    assert store.get("resp_a1") == _record()
    assert store.delete("resp_a1") and not store.delete("resp_a1")
    assert store.get("resp_a1") is None
    for bad in ("../etc/passwd", "resp_../../x", "", "resp_" + "a" * 100):
        assert store.get(bad) is None and not store.delete(bad)
    with pytest.raises(ValueError):
        store.put("../escape", _record())


def test_size_bound_drops_the_oldest(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, max_bytes=2500, max_age=3600)
    for i in range(5):
        store.put(f"resp_{i}", _record(1000))
        os.utime(tmp_path / f"resp_{i}.json", (time.time() - 100 + i, time.time() - 100 + i))
    kept = [i for i in range(5) if store.get(f"resp_{i}") is not None]
    assert kept == [3, 4]


def test_age_bound(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, max_bytes=1 << 20, max_age=60)
    store.put("resp_old", _record())
    old = time.time() - 120
    os.utime(tmp_path / "resp_old.json", (old, old))
    assert store.get("resp_old") is None
    store.put("resp_new", _record())  # a write also removes expired files
    assert not (tmp_path / "resp_old.json").exists()
    assert store.get("resp_new") is not None
