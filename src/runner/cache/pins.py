"""Pins: prompt prefixes a client asked to keep (a cache breakpoint), each with a lifetime.

A pin names a token prefix of one model's prompt cache (the cache is per model file and KV
layout, so pins are per model too) and an absolute expiry. It does not hold KV itself: the
cache entry whose tokens start with the pin's tokens does, and that entry is evicted only
after every unpinned one (RAM victims spill to disk, as all do; the disk tier evicts
pinned entries last). The expiry is wall-clock time, refreshed by every request that uses
or re-marks the prefix, and is kept in ``pins.json`` next to the entry files, so a pin
outlives idle unloads and restarts and its TTL keeps counting while the server is down. An
expired pin is forgotten and its entry is evicted like any other.

Pinned bytes are bounded (`PinBook.fit`): the KV bytes of the union of all pinned prefixes
(shared prefixes counted once, bytes per token learned from the states the cache stores)
may not pass the bound; past it the pin used least recently yields (is forgotten), and
the caller reports how many did. A pin that alone passes the bound yields itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.cache.diskformat import decode_tokens, encode_tokens, unlink_quietly, write_all
from runner.cache.radix import RadixIndex

log = logging.getLogger(__name__)

PINS_FILE = "pins.json"
_FILE_VERSION = 1


@dataclass
class Pin:
    """One pinned prefix: `tokens` kept until `expires_at` (Unix time)."""

    tokens: tuple[int, ...]
    cuts: tuple[int, ...]  # the prefix's decode cuts that are not block multiples
    ttl: float  # seconds each refresh extends the pin by
    expires_at: float
    used_at: float  # Unix time of creation or the last refresh: the yield order
    hits: int = 0  # requests that read the prefix back instead of computing it

    @property
    def id(self) -> str:
        """A stable name for the operator's API (the prefix's hash, as entry files use)."""
        return pin_id(self.tokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": base64.b64encode(encode_tokens(self.tokens)).decode("ascii"),
            "cuts": list(self.cuts), "ttl": self.ttl, "expires_at": self.expires_at,
            "used_at": self.used_at, "hits": self.hits,
        }  # fmt: skip

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Pin:
        tokens = decode_tokens(base64.b64decode(raw["tokens"], validate=True))
        if not tokens:
            raise ValueError("empty pin")
        cuts = tuple(int(c) for c in raw["cuts"])
        return cls(tokens, cuts, float(raw["ttl"]), float(raw["expires_at"]),
                   float(raw["used_at"]), int(raw["hits"]))  # fmt: skip


def pin_id(tokens: tuple[int, ...]) -> str:
    return hashlib.sha256(encode_tokens(tokens)).hexdigest()[:16]


class PinBook:
    """The live pins of one prompt cache. Not thread-safe: the cache's lock guards it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._index: RadixIndex[Pin] = RadixIndex()  # prefix queries
        self._pins: dict[tuple[int, ...], Pin] = {}  # the same pins, to walk them cheaply
        self._clock = clock
        self.dirty = False  # changed since last saved
        self.yielded = self.expired = 0  # counters for stats

    def __len__(self) -> int:
        return len(self._pins)

    def __iter__(self) -> Iterator[Pin]:
        return iter(list(self._pins.values()))

    def now(self) -> float:
        return self._clock()

    def pin(self, tokens: tuple[int, ...], cuts: tuple[int, ...], ttl: float, hit: bool) -> Pin:
        """Create the pin of `tokens`, or refresh it (a longer TTL wins until it runs out)."""
        now = self._clock()
        pin = self._index.get(tokens)
        if pin is None:
            pin = Pin(tokens, cuts, ttl, now + ttl, now)
            self._add(pin)
        else:
            pin.ttl = ttl
            pin.expires_at = max(pin.expires_at, now + ttl)
            pin.used_at = now
            pin.cuts = cuts
        pin.hits += int(hit)
        self.dirty = True
        return pin

    def drop(self, tokens: tuple[int, ...]) -> Pin | None:
        pin = self._remove(tokens)
        if pin is not None:
            self.dirty = True
        return pin

    def _add(self, pin: Pin) -> None:
        self._index.insert(pin.tokens, pin)
        self._pins[pin.tokens] = pin

    def _remove(self, tokens: tuple[int, ...]) -> Pin | None:
        self._pins.pop(tokens, None)
        return self._index.remove(tokens)

    def by_id(self, ident: str) -> Pin | None:
        return next((p for p in self if p.id == ident), None)

    def expire(self) -> int:
        """Forget every pin whose time is up; returns how many."""
        now = self._clock()
        gone = [p.tokens for p in self if p.expires_at <= now]
        for tokens in gone:
            self._remove(tokens)
        if gone:
            self.dirty = True
            self.expired += len(gone)
        return len(gone)

    def protects(self, tokens: tuple[int, ...]) -> bool:
        """Whether a live pin's prefix is a prefix of `tokens` (an entry holding them keeps
        that pin's KV)."""
        found = self._index.longest_prefix(tokens)
        return found is not None and found[1].expires_at > self._clock()

    def refresh_within(self, tokens: tuple[int, ...], n: int) -> None:
        """A lookup read the first `n` of `tokens` back: refresh the pins inside them."""
        now = self._clock()
        key = tokens[:n]
        while key and (found := self._index.longest_prefix(key)) is not None:
            depth, pin = found
            if pin.expires_at > now:
                pin.expires_at = max(pin.expires_at, now + pin.ttl)
                pin.used_at = now
                self.dirty = True
            key = key[: depth - 1]

    def pinned_tokens(self) -> int:
        """Tokens in the union of all pinned prefixes (shared prefixes counted once): in
        lexicographic order each key adds what it does not share with the one before."""
        total, prev = 0, ()
        for key in sorted(self._pins):
            total += len(key) - _common(prev, key)
            prev = key
        return total

    def fit(self, bound: float, bytes_per_token: float, keep: Pin | None = None) -> int:
        """Yield the least recently used pins (`keep` last) until the pinned bytes are
        within `bound`; returns how many yielded. Does nothing while the size of a token's
        KV is unknown."""
        if bytes_per_token <= 0:
            return 0
        if sum(map(len, self._pins)) * bytes_per_token <= bound:  # the union is no bigger
            return 0
        yielded = 0
        while self._pins and self.pinned_tokens() * bytes_per_token > bound:
            others = [p for p in self if p is not keep]
            victim = min(others, key=lambda p: p.used_at) if others else keep
            assert victim is not None
            self._remove(victim.tokens)
            yielded += 1
            log.info("prompt cache: pin of %d tokens yielded (pinned bytes bound %d)",
                     len(victim.tokens), int(bound))  # fmt: skip
        if yielded:
            self.dirty = True
            self.yielded += yielded
        return yielded

    # -- persistence -------------------------------------------------------------------

    def dump(self) -> bytes:
        """The pins file's contents (clears `dirty`)."""
        self.dirty = False
        doc = {"version": _FILE_VERSION, "pins": [p.to_json() for p in self]}
        return json.dumps(doc, separators=(",", ":")).encode()

    def load(self, raw: bytes) -> int:
        """Add the pins of a pins file that have not expired; returns how many. A damaged
        file is logged and ignored (the pins are lost, the entries stay)."""
        try:
            doc = json.loads(raw)
            if doc.get("version") != _FILE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}")
            pins = [Pin.from_json(item) for item in doc["pins"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("prompt cache: ignoring unreadable %s: %s", PINS_FILE, exc)
            return 0
        now = self._clock()
        live = [p for p in pins if p.expires_at > now]
        for p in live:
            self._add(p)
        self.dirty = len(live) != len(pins)
        return len(live)


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def read_pins_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("prompt cache: cannot read %s: %s", path, exc)
        return None


def write_pins_file(path: Path, raw: bytes) -> None:
    """Replace the pins file atomically (tmp file, fsync, rename); raises OSError."""
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        unlink_quietly(tmp)
        raise
