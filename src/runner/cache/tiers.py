"""Tiered prompt cache: saved KV sequence states in host RAM, spilling to disk.

A slot's sequence state (bytes from ``llama_state_seq_get_data``) is only valid for the
tokens it was computed from and for the model and KV layout that produced it, so every
entry is stored with its token list under a `CacheKey`. RAM is an LRU bounded by bytes;
RAM victims spill to disk, itself an LRU bounded by bytes, and survive restarts.

Invariant: no entry's tokens are a prefix of (or equal to) another entry's, across both
tiers. A longer entry serves every query a prefix entry could (KV is truncated after
restore), so `put` skips covered entries and drops the shorter ones it extends. It also
means at most one entry per tier can be a prefix of any given token list.

Disk format, one file per entry (``<sha256(tokens)[:32]>.kvc``): a header (magic, format
version, header length, n_tokens, state length, sha256 over tokens+state, model sha256,
KV layout), then the tokens as little-endian int32, then the state. Writes go to a
``*.tmp`` in the same directory, are fsynced and renamed into place. Startup reads only
headers and tokens; the checksum is verified on `CacheHit.load`.

One cache directory belongs to one process: startup deletes stray ``*.tmp`` files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from runner.cache.diskformat import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    SUFFIX,
    InvalidEntry,
    decode_tokens,
    encode_tokens,
    file_name,
    read_exact,
    safe_component,
    unlink_quietly,
    write_all,
)
from runner.cache.radix import RadixIndex

__all__ = ["CacheEntryCorrupt", "CacheHit", "CacheKey", "PromptCache", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

Tier = Literal["ram", "disk"]

_MAX_WRITE_FAILURES = 3  # consecutive; then the disk tier stops writing (full/broken disk)


class CacheEntryCorrupt(Exception):
    """A disk entry was damaged, truncated or gone when loaded; it has been dropped."""


@dataclass(frozen=True)
class CacheKey:
    """What a saved state is only valid for."""

    model_sha256: str
    kv_layout: str  # e.g. "ctx16384-u1-swa1-s4", provided by the engine


@dataclass(frozen=True)
class CacheHit:
    """A lookup result; `load` fetches the state (for disk: reads and verifies the file)."""

    n_tokens: int  # usable common prefix with the query; may be < len(entry_tokens)
    tier: Tier
    entry_tokens: tuple[int, ...]  # the full token list the state was saved with
    _loader: Callable[[], bytes] = field(repr=False, compare=False)

    def load(self) -> bytes:
        """The state bytes. Raises `CacheEntryCorrupt` (entry dropped) if unusable."""
        return self._loader()


@dataclass(eq=False)
class _Entry:
    tokens: tuple[int, ...]
    nbytes: int
    state: bytes | None = None  # RAM tier
    path: Path | None = None  # disk tier


class _Tier:
    """Radix index + byte-bounded LRU of one tier, with its counters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self.index: RadixIndex[_Entry] = RadixIndex()
        self.lru: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.restored_tokens = self.evictions = 0

    def add(self, e: _Entry) -> None:
        self.index.insert(e.tokens, e)
        self.lru[e.tokens] = e
        self.nbytes += e.nbytes

    def discard(self, tokens: tuple[int, ...]) -> _Entry | None:
        e = self.lru.pop(tokens, None)
        if e is not None:
            self.index.remove(tokens)
            self.nbytes -= e.nbytes
        return e

    def pop_lru(self) -> _Entry:
        return self.discard(next(iter(self.lru)))  # type: ignore[return-value]

    def cover(self, key: tuple[int, ...]) -> _Entry | None:
        """An entry whose tokens start with all of `key`, if any."""
        m = self.index.best_match(key)
        return m[1] if m is not None and m[0] == len(key) else None

    def clear(self) -> None:
        self.index.clear()
        self.lru.clear()
        self.nbytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self.lru), "bytes": self.nbytes, "capacity_bytes": self.capacity,
            "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
            "restored_tokens": self.restored_tokens,
        }  # fmt: skip


class PromptCache:
    """Prompt-prefix states for one `CacheKey`: an LRU in RAM spilling to an LRU on disk.

    Thread-safe: one lock guards the indexes and counters (disk writes happen under it;
    `CacheHit.load` reads files outside it). Never raises on disk trouble: failures are
    logged and counted, and repeated write failures turn disk writes off.
    """

    def __init__(
        self, key: CacheKey, ram_bytes: int, disk_bytes: int, disk_dir: Path | None,
        persist: bool = True,
    ) -> None:  # fmt: skip
        self.key = key
        self._lock = threading.Lock()
        self._ram = _Tier(ram_bytes)
        self._disk = _Tier(disk_bytes)
        self._model_b = key.model_sha256.encode()
        self._layout_b = key.kv_layout.encode()
        self._lookups = self._misses = self._writes = self._write_bytes = 0
        self._write_errors = self._load_errors = self._dropped_files = 0
        self._failures = 0  # consecutive write failures
        self._dir: Path | None = None
        self._writable = False
        if persist and disk_dir is not None and disk_bytes > 0:
            d = Path(disk_dir) / safe_component(key.model_sha256[:16])
            d = d / safe_component(key.kv_layout)
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("prompt cache: disk tier disabled, cannot create %s: %s", d, exc)
                self._write_errors += 1
            else:
                self._dir, self._writable = d, True
                self._scan()

    # -- public API ----------------------------------------------------------------------

    def put(self, tokens: Sequence[int], state: bytes) -> None:
        """Cache `state` as the KV of `tokens` (RAM first; victims spill to disk)."""
        key = tuple(tokens)
        if not key or not state:
            return
        with self._lock:
            for tier in (self._ram, self._disk):
                if (cover := tier.cover(key)) is not None:  # redundant: keep the longer one
                    tier.lru.move_to_end(cover.tokens)
                    return
            # Entries this one extends become useless; by the invariant, at most one per tier.
            olds = [(t, t.index.longest_prefix(key)) for t in (self._ram, self._disk)]
            state = state if type(state) is bytes else bytes(state)  # no aliasing buffers
            entry = _Entry(key, len(state) + 4 * len(key), state=state)
            to_ram = entry.nbytes <= self._ram.capacity
            if not to_ram and not self._write_disk(key, state):
                return  # stored nowhere: keep what it would have replaced
            for tier, m in olds:
                if m is not None and tier.discard(m[1].tokens) is m[1]:
                    unlink_quietly(m[1].path)
            if to_ram:
                self._ram.add(entry)
                while self._ram.nbytes > self._ram.capacity:
                    self._ram.evictions += 1
                    victim = self._ram.pop_lru()
                    self._write_disk(victim.tokens, victim.state or b"")

    def lookup(self, tokens: Sequence[int], min_tokens: int = 1) -> CacheHit | None:
        """The entry sharing the longest common prefix with `tokens` (RAM wins ties).

        A hit needs at least `min_tokens` (>= 1) common tokens. Cost is O(len(tokens)).
        """
        key = tuple(tokens)
        need = max(1, min_tokens)
        with self._lock:
            self._lookups += 1
            best: tuple[int, Tier, _Entry] | None = None
            tiers: list[tuple[Tier, _Tier]] = [("ram", self._ram)]
            if self._dir is not None:
                tiers.append(("disk", self._disk))
            for name, tier in tiers:
                m = tier.index.best_match(key)
                if m is not None and m[0] >= need and (best is None or m[0] > best[0]):
                    best = (m[0], name, m[1])
            # Cascade counting, like CPU caches: a tier misses a lookup that reached it.
            for name, tier in tiers:
                if best is not None and best[1] == name:
                    tier.hits += 1
                    break
                tier.misses += 1
            if best is None:
                self._misses += 1
                return None
            n, name, entry = best
            (self._ram if name == "ram" else self._disk).lru.move_to_end(entry.tokens)
            if entry.path is not None:
                with contextlib.suppress(OSError):  # mtime is the LRU order after restart
                    os.utime(entry.path)
                loader = functools.partial(self._load_disk, entry)
            else:
                loader = functools.partial(_identity, entry.state)
            return CacheHit(n, name, entry.tokens, loader)

    def record_restore(self, n_tokens: int, tier: Tier) -> None:
        """Count tokens the engine restored from a hit in `tier` instead of recomputing."""
        with self._lock:
            (self._ram if tier == "ram" else self._disk).restored_tokens += n_tokens

    def flush_to_disk(self) -> None:
        """Move every RAM entry to disk (on unload/shutdown); failed writes stay in RAM."""
        with self._lock:
            for e in list(self._ram.lru.values()):  # LRU first keeps recency order on disk
                if self._write_disk(e.tokens, e.state or b""):
                    self._ram.discard(e.tokens)

    def clear(self) -> None:
        """Drop every entry in both tiers (deleting files); counters are kept."""
        with self._lock:
            for e in self._disk.lru.values():
                if e.path is not None:
                    unlink_quietly(e.path)
            self._ram.clear()
            self._disk.clear()

    def block_hashes(self, block: int) -> set[int]:
        """`RadixIndex.block_hashes` over both tiers: every block-aligned prefix a lookup
        here could restore. Read-only; safe to call from any thread."""
        with self._lock:
            found = self._ram.index.block_hashes(block)
            if self._dir is not None:
                found |= self._disk.index.block_hashes(block)
            return found

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; safe to call from any thread."""
        with self._lock:
            return {
                "ram": self._ram.stats(),
                "disk": {**self._disk.stats(), "enabled": self._dir is not None,
                         "writable": self._writable},
                "lookups": self._lookups, "misses": self._misses,
                "writes": self._writes, "write_bytes": self._write_bytes,
                "write_errors": self._write_errors, "load_errors": self._load_errors,
                "dropped_files": self._dropped_files,
            }  # fmt: skip

    # -- disk tier -----------------------------------------------------------------------

    def _write_disk(self, tokens: tuple[int, ...], state: bytes) -> bool:
        """Write one entry (lock held); False if it was not stored."""
        if self._dir is None or not self._writable or not state:
            return False
        tok_bytes = encode_tokens(tokens)
        digest = hashlib.sha256(tok_bytes)
        digest.update(state)
        m, lay = self._model_b, self._layout_b
        head = HEADER.pack(
            MAGIC, FORMAT_VERSION, HEADER.size + len(m) + len(lay), len(tokens), len(state),
            digest.digest(), len(m), len(lay),
        ) + m + lay  # fmt: skip
        size = len(head) + len(tok_bytes) + len(state)
        if size > self._disk.capacity:
            return False
        self._evict_disk(size)  # before writing, so the space is free
        path = self._dir / file_name(tok_bytes)
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
        except OSError as exc:
            unlink_quietly(tmp)
            self._write_errors += 1
            self._failures += 1
            if self._failures >= _MAX_WRITE_FAILURES:
                self._writable = False
                log.warning("prompt cache: disk writes disabled after %d failures", self._failures)
            log.warning("prompt cache: cannot write %s: %s", path, exc)
            return False
        self._failures = 0
        self._writes += 1
        self._write_bytes += size
        self._disk.discard(tokens)  # defensive: keep byte accounting right on a rewrite
        self._disk.add(_Entry(tokens, size, path=path))
        return True

    def _read_head(self, f: BinaryIO, file_size: int) -> tuple[bytes, int, bytes]:
        """Validate a file's header; return (token bytes, state length, digest)."""
        raw = f.read(HEADER.size)
        if len(raw) != HEADER.size:
            raise InvalidEntry("truncated header")
        magic, version, head_len, n_tok, state_len, digest, lm, ll = HEADER.unpack(raw)
        if magic != MAGIC:
            raise InvalidEntry("not a cache file")
        if version != FORMAT_VERSION:
            raise InvalidEntry(f"format version {version}")
        if head_len != HEADER.size + lm + ll or file_size != head_len + 4 * n_tok + state_len:
            raise InvalidEntry("size mismatch (truncated?)")
        names = read_exact(f, lm + ll)
        if names[:lm] != self._model_b or names[lm:] != self._layout_b:
            raise InvalidEntry("other model or KV layout")
        return read_exact(f, 4 * n_tok), state_len, digest

    def _scan(self) -> None:
        """Rebuild the disk index from headers; delete what cannot be used."""
        assert self._dir is not None
        found: list[tuple[int, tuple[int, ...], int, Path]] = []
        try:
            paths = list(self._dir.iterdir())
        except OSError as exc:
            log.warning("prompt cache: cannot list %s: %s", self._dir, exc)
            return
        for p in paths:
            if p.name.endswith(".tmp"):  # a write interrupted by a crash
                unlink_quietly(p)
                continue
            if not p.name.endswith(SUFFIX):
                continue  # not ours: leave it alone
            try:
                with open(p, "rb", buffering=0) as f:
                    st = os.fstat(f.fileno())
                    tok_bytes, _, _ = self._read_head(f, st.st_size)
                if file_name(tok_bytes) != p.name:
                    raise InvalidEntry("tokens do not match file name")
                found.append((st.st_mtime_ns, decode_tokens(tok_bytes), st.st_size, p))
            except (OSError, InvalidEntry) as exc:
                log.info("prompt cache: dropping %s: %s", p, exc)
                self._dropped_files += 1
                unlink_quietly(p)
        # Longest first, so a file another one covers (left by a crash) meets it and goes.
        kept: list[tuple[int, tuple[int, ...]]] = []
        for mtime, tokens, size, p in sorted(found, key=lambda t: -len(t[1])):
            if self._disk.cover(tokens) is not None:
                self._dropped_files += 1
                unlink_quietly(p)
            else:
                self._disk.add(_Entry(tokens, size, path=p))
                kept.append((mtime, tokens))
        for _, tokens in sorted(kept):  # file mtimes carry the LRU order across restarts
            self._disk.lru.move_to_end(tokens)
        self._evict_disk(0)  # the bound may have shrunk since the files were written

    def _evict_disk(self, need: int) -> None:
        while self._disk.lru and self._disk.nbytes + need > self._disk.capacity:
            self._disk.evictions += 1
            unlink_quietly(self._disk.pop_lru().path)

    def _load_disk(self, entry: _Entry) -> bytes:
        assert entry.path is not None
        try:
            with open(entry.path, "rb", buffering=0) as f:
                tok_bytes, state_len, digest = self._read_head(f, os.fstat(f.fileno()).st_size)
                if tok_bytes != encode_tokens(entry.tokens):
                    raise InvalidEntry("tokens differ from the index")
                state = read_exact(f, state_len)
            check = hashlib.sha256(tok_bytes)
            check.update(state)
            if check.digest() != digest:
                raise InvalidEntry("payload checksum mismatch")
            return state
        except (OSError, InvalidEntry) as exc:
            log.warning("prompt cache: dropping unusable entry %s: %s", entry.path, exc)
            with self._lock:
                self._load_errors += 1
                # Only if still indexed: a rewrite may have replaced the file meanwhile.
                if self._disk.lru.get(entry.tokens) is entry:
                    self._disk.discard(entry.tokens)
                    unlink_quietly(entry.path)
            raise CacheEntryCorrupt(f"{entry.path}: {exc}") from exc


def _identity(state: bytes) -> bytes:
    return state
