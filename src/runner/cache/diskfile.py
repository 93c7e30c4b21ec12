"""Reading and writing one prompt-cache entry file (format in `diskformat`). Pure I/O: the
tiers call these outside their lock, on the writer thread or an I/O worker."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from runner.cache.diskformat import (
    HEADER,
    InvalidEntry,
    encode_tokens,
    entry_header,
    file_name,
    read_exact,
    read_header,
    read_header_cuts,
    unlink_quietly,
    write_all,
)

# Free space the cache leaves on its filesystem unless told otherwise: the store, the
# Responses store and the OS need room more than a cache does.
MIN_RESERVE = 1 << 30
RESERVE_FRACTION = 0.10
# Write errors that mean "no room": the entry is dropped instead of retried.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_space(directory: Path) -> tuple[int, int]:
    """(total, available to this user) bytes of the filesystem holding `directory`."""
    usage = shutil.disk_usage(directory)
    return usage.total, usage.free


def default_reserve(total: int) -> int:
    """The free space to keep on a filesystem of `total` bytes: max(1 GiB, 10%)."""
    return max(MIN_RESERVE, int(total * RESERVE_FRACTION))


class EntryFiles:
    """Entry files of one model and KV layout in one directory."""

    def __init__(self, directory: Path, model_sha256: str, kv_layout: str) -> None:
        self.dir = directory
        self._model_b = model_sha256.encode()
        self._layout_b = kv_layout.encode()

    def writable_bytes(self, reserve: int | None) -> int:
        """Bytes that may still be written here before the filesystem's free space falls
        below `reserve` (None: `default_reserve`); negative when it already has, by that
        much. Raises OSError."""
        total, free = disk_space(self.dir)
        return free - (default_reserve(total) if reserve is None else reserve)

    def size_of(self, n_tokens: int, state_len: int, n_cuts: int = 0) -> int:
        names = len(self._model_b) + len(self._layout_b)
        return HEADER.size + names + 4 * (n_tokens + n_cuts) + state_len

    def path_of(self, tokens: tuple[int, ...]) -> Path:
        return self.dir / file_name(encode_tokens(tokens))

    def write(
        self, tokens: tuple[int, ...], state: bytes, cuts: tuple[int, ...] = ()
    ) -> tuple[Path, int]:
        """Write an entry atomically (tmp file, fsync, rename); raises OSError."""
        tok_bytes = encode_tokens(tokens)
        head = entry_header(tok_bytes, state, self._model_b, self._layout_b, cuts=cuts)
        path = self.dir / file_name(tok_bytes)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, head + tok_bytes)
                write_all(fd, state)  # one syscall for the MB-sized part
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            unlink_quietly(tmp)
            raise
        return path, len(head) + len(tok_bytes) + len(state)

    def read_head(self, f: BinaryIO, file_size: int) -> tuple[bytes, int, bytes]:
        """Validate a file's header; return (token bytes, state length, digest)."""
        return read_header(f, file_size, self._model_b, self._layout_b)

    def read_tokens(self, path: Path) -> tuple[bytes, int, tuple[int, ...]]:
        """The token bytes, file size and decode cuts of an entry (header checks only)."""
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            tok_bytes, _, _, cuts = read_header_cuts(f, size, self._model_b, self._layout_b)
        if file_name(tok_bytes) != path.name:
            raise InvalidEntry("tokens do not match file name")
        return tok_bytes, size, cuts

    def read_state(self, path: Path, tokens: tuple[int, ...]) -> bytes:
        """The state of an entry, verified against its checksum; raises InvalidEntry/OSError."""
        with open(path, "rb", buffering=0) as f:
            tok_bytes, state_len, digest = self.read_head(f, os.fstat(f.fileno()).st_size)
            if tok_bytes != encode_tokens(tokens):
                raise InvalidEntry("tokens differ from the index")
            state = read_exact(f, state_len)
        check = hashlib.sha256(tok_bytes)
        check.update(state)
        if check.digest() != digest:
            raise InvalidEntry("payload checksum mismatch")
        return state
