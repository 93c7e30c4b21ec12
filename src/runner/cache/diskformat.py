"""The on-disk entry format of the prompt cache and the small file helpers it needs.

One file per entry (``<sha256(tokens)[:32]>.kvc``): a header (magic, format version, header
length, n_tokens, state length, sha256 over tokens+state, model sha256, KV layout), then the
tokens as little-endian int32, then the state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

MAGIC = b"RUNRKVC\x00"
FORMAT_VERSION = 1
SUFFIX = ".kvc"
# magic, version, header_len, n_tokens, state_len, sha256(tokens+state), len(model), len(layout)
HEADER = struct.Struct("<8sIIIQ32sHH")
assert array("i").itemsize == 4


class InvalidEntry(Exception):
    """A cache file that must not be used (and is deleted)."""


def safe_component(s: str) -> str:
    """A path component from `s`; a hash suffix keeps distinct inputs apart."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", s).lstrip(".")[:64]
    if clean != s or not clean:
        clean = f"{clean}-{hashlib.sha256(s.encode()).hexdigest()[:12]}"
    return clean


def encode_tokens(tokens: Sequence[int]) -> bytes:
    arr = array("i", tokens)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tobytes()


def decode_tokens(raw: bytes) -> tuple[int, ...]:
    arr = array("i")
    arr.frombytes(raw)
    if sys.byteorder == "big":
        arr.byteswap()
    return tuple(arr)


def file_name(token_bytes: bytes) -> str:
    return hashlib.sha256(token_bytes).hexdigest()[:32] + SUFFIX


def read_exact(f: BinaryIO, n: int) -> bytes:
    # Unbuffered read(n) fills a fresh bytes object directly (no extra copy of MB-sized
    # states); the loop only runs for short reads (EOF, or >2 GiB on Linux).
    data = f.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n and (chunk := f.read(n - got)):
        parts.append(chunk)
        got += len(chunk)
    if got != n:
        raise InvalidEntry(f"truncated: wanted {n} bytes, got {got}")
    return b"".join(parts)


def write_all(fd: int, buf: bytes | memoryview) -> None:
    mv = memoryview(buf).cast("B")
    while mv:
        mv = mv[os.write(fd, mv) :]


def unlink_quietly(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
