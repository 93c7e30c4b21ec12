"""The on-disk entry format of the prompt cache (and of slot files) and the small file
helpers it needs.

One file per entry (``<sha256(tokens)[:32]>.kvc``): a header (magic, format version, header
length, n_tokens, state length, sha256 over tokens+state, model sha256, KV layout, then the
state's decode cuts that are not block multiples as little-endian int32, as many as the
header length leaves room for: none in files written before cuts existed), then the tokens
as little-endian int32, then the state. Slot files (``POST /slots/N?action=save``) use
the same layout under their own magic, written and verified by `entry_header`/`read_entry`.
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
SLOT_MAGIC = b"RUNRSLT\x00"
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


def entry_header(
    tok_bytes: bytes, state: bytes, model: bytes, layout: bytes, magic: bytes = MAGIC,
    cuts: Sequence[int] = (),
) -> bytes:  # fmt: skip
    """The header of an entry holding `tok_bytes` (from `encode_tokens`) and `state`."""
    digest = hashlib.sha256(tok_bytes)
    digest.update(state)
    cut_bytes = encode_tokens(cuts)
    return (
        HEADER.pack(
            magic, FORMAT_VERSION, HEADER.size + len(model) + len(layout) + len(cut_bytes),
            len(tok_bytes) // 4, len(state), digest.digest(), len(model), len(layout),
        )
        + model
        + layout
        + cut_bytes
    )  # fmt: skip


def read_header(
    f: BinaryIO, file_size: int, model: bytes, layout: bytes, magic: bytes = MAGIC
) -> tuple[bytes, int, bytes]:
    """Check an entry's header and read its tokens: (token bytes, state length, checksum).
    Raises `InvalidEntry` saying why it cannot be used."""
    tok_bytes, state_len, digest, _ = read_header_cuts(f, file_size, model, layout, magic)
    return tok_bytes, state_len, digest


def read_header_cuts(
    f: BinaryIO, file_size: int, model: bytes, layout: bytes, magic: bytes = MAGIC
) -> tuple[bytes, int, bytes, tuple[int, ...]]:
    """`read_header`, and the decode cuts the header lists."""
    raw = f.read(HEADER.size)
    if len(raw) != HEADER.size:
        raise InvalidEntry("truncated header")
    got_magic, version, head_len, n_tok, state_len, digest, lm, ll = HEADER.unpack(raw)
    if got_magic != magic:
        raise InvalidEntry("not a file of this kind (wrong magic)")
    if version != FORMAT_VERSION:
        raise InvalidEntry(f"format version {version}, expected {FORMAT_VERSION}")
    n_cuts, odd = divmod(head_len - HEADER.size - lm - ll, 4)
    if n_cuts < 0 or odd or file_size != head_len + 4 * n_tok + state_len:
        raise InvalidEntry("size mismatch (truncated or padded)")
    names = read_exact(f, lm + ll)
    if names[:lm] != model:
        raise InvalidEntry("saved from another model file")
    if names[lm:] != layout:
        raise InvalidEntry(
            f"saved with another KV layout ({names[lm:].decode('ascii', 'replace')!r}, "
            f"this model runs {layout.decode('ascii', 'replace')!r})"
        )
    cuts = decode_tokens(read_exact(f, 4 * n_cuts))
    return read_exact(f, 4 * n_tok), state_len, digest, cuts


def read_entry(
    f: BinaryIO, file_size: int, model: bytes, layout: bytes, magic: bytes = MAGIC
) -> tuple[bytes, bytes]:
    """Read and fully verify one entry: (token bytes, state). Raises `InvalidEntry` saying
    why it cannot be used (another format, model or KV layout, truncation, a bad checksum)."""
    tok_bytes, state_len, digest = read_header(f, file_size, model, layout, magic)
    state = read_exact(f, state_len)
    check = hashlib.sha256(tok_bytes)
    check.update(state)
    if check.digest() != digest:
        raise InvalidEntry("checksum mismatch: the tokens or the KV data were altered")
    return tok_bytes, state
