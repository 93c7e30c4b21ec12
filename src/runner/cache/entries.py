"""The prompt cache's building blocks: what a saved state is keyed to, a lookup's result,
and one tier's index (radix tree + byte-bounded LRU)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runner.cache.radix import RadixIndex

Tier = Literal["ram", "disk"]


class CacheEntryCorrupt(Exception):
    """A disk entry was damaged, truncated or gone when loaded; it has been dropped."""


@dataclass(frozen=True)
class CacheKey:
    """What a saved state is only valid for."""

    model_sha256: str
    kv_layout: str  # e.g. "ctx16384-u1-swa1-s4", provided by the engine


@dataclass(frozen=True)
class CacheHit:
    """A lookup result; `load` fetches the state (for disk: reads and verifies the file).
    A disk entry stays pinned against eviction until `release`."""

    n_tokens: int  # usable common prefix with the query; may be < len(entry_tokens)
    tier: Tier
    entry_tokens: tuple[int, ...]  # the full token list the state was saved with
    _loader: Callable[[], bytes] = field(repr=False, compare=False)
    _release: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    # The decode cuts the state was computed with that are not block multiples
    # (engine/partition.py): a prefix is reused only up to cuts both runs made.
    entry_cuts: tuple[int, ...] = ()

    def load(self) -> bytes:
        """The state bytes. Raises `CacheEntryCorrupt` (entry dropped) if unusable."""
        return self._loader()

    def release(self) -> None:
        if self._release is not None:
            self._release()


@dataclass(eq=False)
class Entry:
    tokens: tuple[int, ...]
    nbytes: int
    state: bytes | None = None  # RAM and pending tiers
    path: Path | None = None  # disk tier
    pins: int = 0  # disk reads in progress
    cuts: tuple[int, ...] = ()  # see CacheHit.entry_cuts


class TierIndex:
    """Radix index + byte-bounded LRU of one tier, with its counters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self.index: RadixIndex[Entry] = RadixIndex()
        self.lru: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.restored_tokens = self.evictions = 0

    def add(self, e: Entry) -> None:
        self.index.insert(e.tokens, e)
        self.lru[e.tokens] = e
        self.nbytes += e.nbytes

    def discard(self, tokens: tuple[int, ...]) -> Entry | None:
        e = self.lru.pop(tokens, None)
        if e is not None:
            self.index.remove(tokens)
            self.nbytes -= e.nbytes
        return e

    def pop_lru(
        self, spare: Callable[[Entry], bool] | None = None, strict: bool = False
    ) -> Entry | None:
        """The least recently used entry that no reader has pinned; entries `spare` says to
        keep (a client's pinned prefixes) go only when no other is left, and never if
        `strict`."""
        spared: Entry | None = None
        for e in self.lru.values():
            if e.pins:
                continue
            if spare is None or not spare(e):
                return self.discard(e.tokens)
            spared = spared or e
        return None if spared is None or strict else self.discard(spared.tokens)

    def spared_bytes(self, spare: Callable[[Entry], bool]) -> int:
        return sum(e.nbytes for e in self.lru.values() if spare(e))

    def cover(self, key: tuple[int, ...]) -> Entry | None:
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
