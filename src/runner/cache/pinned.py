"""The pin half of `PromptCache` (tiers.py): clients' pinned prefixes (cache/pins.py) and
how eviction spares them. A mixin over the cache's own state, under the cache's lock: it
only reads the tiers and asks the cache to spill and to wake its writer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from runner.cache.diskfile import EntryFiles
from runner.cache.entries import Entry, TierIndex
from runner.cache.pins import PINS_FILE, PinBook, write_pins_file

log = logging.getLogger(__name__)


class Pinning:
    # The cache's own state (tiers.py), shared with this half.
    _lock: threading.Lock
    _changed: threading.Condition
    _ram: TierIndex
    _pending: TierIndex
    _disk: TierIndex
    _files: EntryFiles | None
    _write_errors: int

    def _spill(self, e: Entry) -> None:
        raise NotImplementedError

    def _ensure_writer(self) -> None:
        raise NotImplementedError

    def _init_pins(
        self, pin_share: float, bytes_per_token: float, clock: Callable[[], float]
    ) -> None:
        self._pins = PinBook(clock)
        self._saving_pins = False  # the writer is saving them
        self._pin_share = pin_share  # of each tier, that pinned prefixes may hold
        # KV bytes per token: the model's estimate until states put here tell.
        self._per_token = bytes_per_token
        self._per_token_n = 0  # tokens of the state it was measured on

    def _measured(self, n_tokens: int, state_bytes: int) -> None:
        """A state of `n_tokens` took `state_bytes`: the longest one tells best (its fixed
        overhead spread thinnest)."""
        if n_tokens >= self._per_token_n:
            self._per_token, self._per_token_n = state_bytes / n_tokens, n_tokens

    def pin(self, tokens: Sequence[int], cuts: Sequence[int], ttl: float, hit: bool) -> int:
        """Keep the KV of `tokens` (computed with `cuts`) for `ttl` seconds, or refresh its
        pin; `hit`: the request read it back. Returns how many pins yielded to keep pinned
        bytes within the bound (this one too, if it alone passes it)."""
        key = tuple(tokens)
        if not key or ttl <= 0:
            return 0
        with self._lock:
            self._expire_pins()
            pin = self._pins.pin(key, tuple(cuts), ttl, hit)
            tier = self._disk if self._files is not None else self._ram
            yielded = self._pins.fit(self._pin_share * tier.capacity, self._per_token, pin)
            self._spill_pinned_past_share()
            self._pins_changed()
            return yielded

    def unpin(self, pin_id: str) -> bool:
        """Forget the pin named `pin_id` (its entry stays, as an ordinary one)."""
        with self._lock:
            pin = self._pins.by_id(pin_id)
            if pin is not None:
                self._pins.drop(pin.tokens)
                self._pins_changed()
            return pin is not None

    def pins(self) -> list[dict[str, Any]]:
        """The live pins: id, tokens, where their KV is (tier None: not in the cache, as
        while a slot still holds it), its bytes, TTL, seconds left and hits."""
        with self._lock:
            self._expire_pins()
            now = self._pins.now()
            out = []
            for p in self._pins:
                tiers = (("ram", self._ram), ("ram", self._pending), ("disk", self._disk))
                held = next(((n, e) for n, t in tiers if (e := t.cover(p.tokens))), None)
                out.append({
                    "id": p.id, "tokens": len(p.tokens), "tier": held[0] if held else None,
                    "bytes": held[1].nbytes if held else round(self._per_token * len(p.tokens)),
                    "ttl": p.ttl, "ttl_left": max(0.0, p.expires_at - now),
                    "expires_at": p.expires_at, "hits": p.hits,
                })  # fmt: skip
            return out

    def _protected(self, e: Entry) -> bool:
        return self._pins.protects(e.tokens)

    def _expire_pins(self) -> None:
        if self._pins.expire():
            self._pins_changed()

    def _pins_unsaved(self) -> bool:
        return self._pins.dirty and self._files is not None

    def _pins_changed(self) -> None:
        """Have the writer save the pins if they changed (lock held)."""
        if self._pins_unsaved():
            self._ensure_writer()

    def _spill_pinned_past_share(self) -> None:
        """Pinned entries past their share of RAM move to disk, oldest first (lock held)."""
        limit = self._pin_share * self._ram.capacity
        while self._files is not None and self._ram.spared_bytes(self._protected) > limit:
            victim = next((e for e in self._ram.lru.values() if self._protected(e)), None)
            if victim is None:
                break
            self._ram.discard(victim.tokens)
            self._spill(victim)

    def _write_pins(self, raw: bytes) -> None:
        assert self._files is not None
        try:
            write_pins_file(self._files.dir / PINS_FILE, raw)
        except OSError as exc:
            log.warning("prompt cache: cannot save pins in %s: %s", self._files.dir, exc)
            with self._lock:
                self._write_errors += 1
        with self._lock:
            self._saving_pins = False
            self._changed.notify_all()
