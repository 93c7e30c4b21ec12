"""The stored-responses database on its own: round trip, id checks, age and size bounds, the
in-memory variant, quarantine of damaged records, a full disk, and that every statement a
request runs is an index search (the API tests drive it end to end)."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from runner.api.responses.store import DB_NAME, ResponseStore, StoreFull


def _record(size: int = 10, response_id: str = "resp_x") -> dict[str, object]:
    return {
        "response": {"id": response_id, "object": "response", "output": []},
        "input_items": [{"type": "message", "id": "msg_1", "role": "user", "content": "y"}],
        "messages": [{"role": "user", "content": "y" * size}],
    }


def _db(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(directory / DB_NAME)


def _age(directory: Path, response_id: str, seconds_ago: float) -> None:
    with closing(_db(directory)) as conn, conn:
        conn.execute(
            "UPDATE responses SET written = ? WHERE id = ?",
            (time.time() - seconds_ago, response_id),
        )


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
    with pytest.raises(ValueError):  # a record it could not read back is never written
        store.put("resp_a2", {"response": 1})


@pytest.mark.parametrize("on_disk", [True, False])
def test_size_bound_drops_the_oldest(tmp_path: Path, on_disk: bool) -> None:
    store = ResponseStore(tmp_path if on_disk else None, max_bytes=2500, max_age=3600)
    for i in range(5):
        store.put(f"resp_{i}", _record(1000))
    assert [i for i in range(5) if store.get(f"resp_{i}") is not None] == [3, 4]
    assert store.stats()["records"] == 2 and store.stats()["bytes"] <= 2500


def test_age_bound_and_persistence(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, max_bytes=1 << 20, max_age=60)
    store.put("resp_old", _record())
    _age(tmp_path, "resp_old", 120)
    assert store.get("resp_old") is None
    store.put("resp_new", _record())  # a write also removes expired records
    assert store.stats()["records"] == 1
    store.close()
    assert ResponseStore(tmp_path, max_bytes=1 << 20, max_age=60).get("resp_new") == _record()


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{}", b'{"response": 1}', b"\xff not json", b'{"response": {"id": "resp_x", '
     b'"object": "response", "output": []}, "input_items": {"a": 1}, "messages": []}'],
)  # fmt: skip
def test_a_damaged_record_is_quarantined(tmp_path: Path, body: bytes) -> None:
    store = ResponseStore(tmp_path, max_bytes=1 << 20, max_age=3600)
    store.put("resp_ok", _record())
    with closing(_db(tmp_path)) as conn, conn:
        conn.execute(
            "INSERT INTO responses (id, written, size, body) VALUES ('resp_bad', ?, ?, ?)",
            (time.time(), len(body), body),
        )
    assert store.get("resp_bad") is None
    with closing(_db(tmp_path)) as conn:
        assert conn.execute("SELECT id, body FROM quarantine").fetchall() == [("resp_bad", body)]
    assert store.stats()["records"] == 1 and store.get("resp_ok") == _record()


def test_every_request_statement_searches_an_index(tmp_path: Path) -> None:
    """What makes a write or read cost the same at 10 or 1,000,000 records (see
    scripts/bench_responses_store.py for the timings)."""
    store = ResponseStore(tmp_path, max_bytes=1 << 20, max_age=3600)
    store.put("resp_a", _record())
    statements = {
        "SELECT written, body FROM responses WHERE id = ?": (1,),
        "DELETE FROM responses WHERE id = ?": (1,),
        "DELETE FROM responses WHERE written < ?": (1,),
        "SELECT bytes FROM totals WHERE k = 0": (),
    }
    with closing(_db(tmp_path)) as conn:
        for sql, args in statements.items():
            plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "SEARCH" in plan and "SCAN" not in plan, (sql, plan)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_a_full_disk_raises_store_full_and_keeps_what_was_stored(tmp_path: Path) -> None:
    directory = tmp_path / "small"
    if not _mount_tmpfs(directory, "256k"):
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        store = ResponseStore(directory, max_bytes=1 << 30, max_age=3600)
        store.put("resp_first", _record())
        with pytest.raises(StoreFull):
            for i in range(1000):
                store.put(f"resp_{i}", _record(4000))
        assert store.get("resp_first") == _record()
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(directory)], timeout=10)
