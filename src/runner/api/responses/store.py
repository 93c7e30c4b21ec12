"""Stored Responses (`store: true`): what `previous_response_id`, `GET/DELETE
/v1/responses/{id}` and `/input_items` read.

One SQLite database, `responses.sqlite3` under `--responses-dir` (default
`~/.cache/runner/responses`), so a conversation survives a restart; with `--no-persist` the
same database lives in memory. Bounded by age (`--responses-ttl`, default 30 days) and total
size (`--responses-disk`, default 256 MiB): every write drops expired records, then the
oldest ones until the rest fit. The primary key and an index on write time make every read,
write and prune cost O(log n) at any store size, and triggers keep the byte total in the
database itself (no directory scan, no sum over rows). All methods block on disk: call them
from a worker thread (`asyncio.to_thread`).

A record that does not read back as one this module wrote (damaged, or of another shape) is
moved to the `quarantine` table (the last `QUARANTINE_KEEP`, for whoever investigates) and
reported as never stored: a damaged record is a 404, never a crash. A write the disk has no
room for raises `StoreFull` and changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

DB_NAME = "responses.sqlite3"
QUARANTINE_KEEP = 100
# Our ids are "resp_" + URL-safe base64; anything else cannot name a stored record.
_ID = re.compile(r"^resp_[A-Za-z0-9_-]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, written REAL NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (written);
CREATE TABLE IF NOT EXISTS totals (k INTEGER PRIMARY KEY CHECK (k = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS responses_added AFTER INSERT ON responses
    BEGIN UPDATE totals SET bytes = bytes + NEW.size WHERE k = 0; END;
CREATE TRIGGER IF NOT EXISTS responses_removed AFTER DELETE ON responses
    BEGIN UPDATE totals SET bytes = bytes - OLD.size WHERE k = 0; END;
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT NOT NULL, quarantined REAL NOT NULL, reason TEXT NOT NULL, body BLOB
);
"""


class StoreFull(Exception):
    """The disk had no room for a record; nothing was written."""


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    type: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[Any] | None = None


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    output: list[dict[str, Any]]


class StoredRecord(BaseModel):
    """What `put` takes and `get` gives back: `response` (the API object), `input_items`
    (this request's input) and `messages` (the whole conversation as chat messages)."""

    model_config = ConfigDict(extra="ignore")
    response: _Response
    input_items: list[_Item]
    messages: list[_Message] = Field(default_factory=list)


def valid_id(response_id: str) -> bool:
    return _ID.fullmatch(response_id) is not None


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    return "full" in str(exc) or "disk I/O" in str(exc)


class ResponseStore:
    """Records are dicts shaped as `StoredRecord`; `get` returns them as given to `put`."""

    def __init__(self, directory: Path | None, max_bytes: int, max_age: float) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._lock = threading.Lock()  # one connection, used by many worker threads
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            target = str(directory / DB_NAME)
        else:
            target = ":memory:"
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        if directory is not None:
            # WAL: readers never wait for a writer; NORMAL sync loses at most the last
            # commits on power loss (never corrupts), and spares an fsync per response.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / DB_NAME

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- public API -----------------------------------------------------------------------

    def put(self, response_id: str, record: dict[str, Any]) -> None:
        """Store `record` under `response_id`; raises StoreFull (nothing written) when the
        disk has no room, ValueError for an id or record this store would not read back."""
        if not valid_id(response_id):
            raise ValueError(f"invalid response id {response_id!r}")
        StoredRecord.model_validate(record)
        payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._drop_expired(now)
                self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
                self._db.execute(
                    "INSERT INTO responses (id, written, size, body) VALUES (?, ?, ?, ?)",
                    (response_id, now, len(payload), payload),
                )
                self._drop_oldest()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if _is_full(exc):
                    raise StoreFull(f"no room to store the response ({exc})") from exc
                raise

    def get(self, response_id: str) -> dict[str, Any] | None:
        """The record, or None if never stored, expired, deleted or damaged (quarantined)."""
        if not valid_id(response_id):
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT written, body FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        if row is None or self._expired(row[0]):
            return None
        try:
            record = json.loads(row[1])
            StoredRecord.model_validate(record)
        except (ValueError, TypeError, ValidationError) as exc:
            self._quarantine(response_id, type(exc).__name__)
            return None
        return record

    def delete(self, response_id: str) -> bool:
        if not valid_id(response_id):
            return False
        with self._lock:
            cursor = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
            (total,) = self._db.execute("SELECT bytes FROM totals WHERE k = 0").fetchone()
        return {"records": count, "bytes": total}

    # -- internals ------------------------------------------------------------------------

    def _expired(self, written: float) -> bool:
        return self.max_age >= 0 and time.time() - written > self.max_age

    def _drop_expired(self, now: float) -> None:
        if self.max_age >= 0:  # a range of the age index: nothing to read when none expired
            self._db.execute("DELETE FROM responses WHERE written < ?", (now - self.max_age,))

    def _drop_oldest(self) -> None:
        """Oldest records first until the rest fit (the newest one included, if it alone
        is over the bound: as in the earlier file store, it is then not kept)."""
        while True:
            (total,) = self._db.execute("SELECT bytes FROM totals WHERE k = 0").fetchone()
            if total <= self.max_bytes:
                return
            cursor = self._db.execute(
                "DELETE FROM responses WHERE rowid IN "
                "(SELECT rowid FROM responses ORDER BY written, rowid LIMIT 1)"
            )
            if cursor.rowcount == 0:
                return

    def _quarantine(self, response_id: str, reason: str) -> None:
        log.warning("stored response %s is damaged (%s); moved to quarantine", response_id, reason)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO quarantine (id, quarantined, reason, body) "
                    "SELECT id, ?, ?, body FROM responses WHERE id = ?",
                    (time.time(), reason, response_id),
                )
                self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
                self._db.execute(
                    "DELETE FROM quarantine WHERE rowid NOT IN "
                    "(SELECT rowid FROM quarantine ORDER BY rowid DESC LIMIT ?)",
                    (QUARANTINE_KEEP,),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # a full disk: the record stays, still a 404
                self._rollback()
                log.warning("cannot quarantine %s: %s", response_id, exc)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
