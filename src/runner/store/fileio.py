"""Small file helpers for the store: hashing copies, atomic JSON writes, a process-wide lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:  # POSIX only; elsewhere the in-process lock still protects threads
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from tqdm import tqdm

CHUNK = 4 << 20

ProgressFn = Callable[[int, int], None]
"""Called as `progress(done_bytes, total_bytes)` while a file is copied or hashed."""


class TqdmProgress:
    """A `ProgressFn` drawing a byte-sized tqdm bar on stderr (hidden when not a terminal)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None,
            )  # fmt: skip
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()


def copy_hashing(sources: Sequence[Path], dest: Path, progress: ProgressFn | None = None) -> str:
    """Write the concatenation of `sources` to `dest` (fsynced); return its sha256 hex.

    Hashing while copying means the bytes we hash are the bytes we wrote: one read pass.
    """
    total = sum(p.stat().st_size for p in sources)
    digest, done = hashlib.sha256(), 0
    with dest.open("wb") as out:
        for src in sources:
            with src.open("rb") as fh:
                while block := fh.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        out.flush()
        os.fsync(out.fileno())
    if progress and total == 0:
        progress(0, 0)
    return digest.hexdigest()


def sha256_file(path: Path, progress: ProgressFn | None = None) -> str:
    total = path.stat().st_size
    digest, done = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON via a temp file in the same dir + os.replace, so readers never see half."""
    payload = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the store is meant to be readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path, default: Any) -> Any:
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


class StoreLock:
    """Re-entrant lock that also holds an `flock` so several processes can share a store."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0 and fcntl is not None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing releases the flock
                    self._fd = None
