"""Stored Responses (`store: true`): what `previous_response_id`, `GET/DELETE
/v1/responses/{id}` and `/input_items` read.

One JSON file per response under `--responses-dir` (default `~/.cache/runner/responses`), so
a conversation survives a restart. Bounded by age (`--responses-ttl`, default 30 days) and
total size (`--responses-disk`, default 256 MiB): every write drops expired records, then the
oldest ones until the rest fit. With `--no-persist` records live in memory under the same
bounds. All methods block on disk: call them from a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

# Our ids are "resp_" + URL-safe base64; anything else cannot name a stored record (and can
# never reach the file system as a path).
_ID = re.compile(r"^resp_[A-Za-z0-9_-]{1,64}$")


def valid_id(response_id: str) -> bool:
    return _ID.fullmatch(response_id) is not None


class ResponseStore:
    """Records are dicts: `response` (the API object), `input_items` (this request's input)
    and `messages` (the whole conversation as chat messages, output included)."""

    def __init__(self, directory: Path | None, max_bytes: int, max_age: float) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._memory: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()  # prune-vs-write races among worker threads

    def _path(self, response_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{response_id}.json"

    def put(self, response_id: str, record: dict[str, Any]) -> None:
        if not valid_id(response_id):
            raise ValueError(f"invalid response id {response_id!r}")
        payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        with self._lock:
            if self.directory is None:
                self._memory[response_id] = (time.time(), payload)
                self._prune_memory()
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".resp-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                os.replace(tmp, self._path(response_id))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._prune_disk()

    def get(self, response_id: str) -> dict[str, Any] | None:
        if not valid_id(response_id):
            return None
        if self.directory is None:
            with self._lock:
                item = self._memory.get(response_id)
            if item is None or self._expired(item[0]):
                return None
            return json.loads(item[1])
        path = self._path(response_id)
        try:
            if self._expired(path.stat().st_mtime):
                return None
            return json.loads(path.read_bytes())
        except (OSError, ValueError):  # gone, or damaged: as good as never stored
            return None

    def delete(self, response_id: str) -> bool:
        if not valid_id(response_id):
            return False
        with self._lock:
            if self.directory is None:
                return self._memory.pop(response_id, None) is not None
            try:
                self._path(response_id).unlink()
                return True
            except FileNotFoundError:
                return False

    def _expired(self, written: float) -> bool:
        return self.max_age >= 0 and time.time() - written > self.max_age

    def _prune_memory(self) -> None:
        total = sum(len(p) for _, p in self._memory.values())
        while self._memory:
            oldest_id, (written, payload) = next(iter(self._memory.items()))
            if not self._expired(written) and total <= self.max_bytes:
                break
            del self._memory[oldest_id]
            total -= len(payload)

    def _prune_disk(self) -> None:
        assert self.directory is not None
        files = []
        for path in self.directory.glob("resp_*.json"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        for written, size, path in files:
            if not self._expired(written) and total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
            total -= size
