"""Where a new request's prompt prefix comes from: the slot's own KV cache, another slot's
(copied as sequence state), the host-RAM or disk prompt cache, or nowhere (computed).

Only prefixes that cannot change the answer are reused (`partition.reusable`). A slot's
reusable prefix is saved to the prompt cache before a new prompt overwrites it, so a prefix
pushed out of the slots is restored later instead of recomputed. Disk hits are not read
here: the planner hands them back and the scheduler reads them on an I/O thread.

A request's cache breakpoints become pins of the prompt cache (`pin`): the prefix up to each
one is kept for its TTL. The pin holds no state itself: the slot's state is saved when the
slot is reused, and the entry holding the pinned prefix is the one eviction spares.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..cache import CacheEntryCorrupt, CacheHit, PromptCache
from .partition import TAIL, ExactPrefix, computed_prefix, odd_cuts, reusable, truncated
from .slots import Slot, common_prefix_length
from .types import CacheSource, EngineConfig, GenerationRequest

log = logging.getLogger(__name__)


class KvOps(Protocol):
    """The KV-cache operations the planner needs (the executor provides them)."""

    def truncate(self, seq: int, keep: int) -> int: ...
    def clear(self, seq: int) -> None: ...
    def seq_state(self, seq: int) -> bytes: ...
    def set_seq_state(self, seq: int, data: bytes) -> bool: ...


@dataclass(frozen=True)
class Decision:
    """How many prompt tokens are in place, from where; `load` is a disk hit still to read."""

    n_tokens: int
    source: CacheSource
    load: CacheHit | None = None


class PrefixPlanner:
    """Prepares a slot's KV cache for a prompt and says how many tokens are already there."""

    def __init__(
        self, slots: Sequence[Slot], config: EngineConfig, kv: KvOps, cache: PromptCache | None
    ) -> None:
        self._slots = slots
        self._config = config
        self._kv = kv
        self.cache = cache

    def prepare(
        self,
        slot: Slot,
        prompt: list[int],
        use_cache: bool,
        marks: tuple[int, ...] = (),
        lora: tuple[tuple[int, float], ...] = (),
    ) -> Decision:
        """`marks`: where the prompt is cut besides the block multiples (partition.py);
        `lora`: the request's adapter set, which only KV computed with the same set serves
        (the prompt cache holds the set the model was loaded with, named by its key)."""
        if slot.lora != lora:
            self._drop(slot, 0)
            slot.lora = lora
        if not use_cache:
            self._drop(slot, 0)
            return Decision(0, "none")
        block, n = self._config.prefill_block, len(prompt)
        own = reusable(slot.exact, common_prefix_length(slot.tokens, prompt), n, block, marks)
        donor, shared = self._best_donor(slot, prompt, marks)
        hit, from_cache = None, 0
        if lora == self._config.loaded_lora:
            hit, from_cache = self._cache_hit(prompt, max(own, shared), marks)
        if from_cache > max(own, shared) and hit is not None:
            self._drop(slot, 0)
            if hit.tier == "disk":
                return Decision(from_cache, "disk", load=hit)
            try:
                state = hit.load()
            except CacheEntryCorrupt as exc:
                log.warning("prompt cache entry unusable (%s); recomputing", exc)
                return Decision(0, "none")
            return self._installed(slot, prompt, state, from_cache, hit, marks)
        if donor is not None and shared > own:
            self._drop(slot, 0)
            state = self._kv.seq_state(donor.id)
            return self._installed(slot, prompt, state, shared, None, marks)
        kept = self._drop(slot, own)
        return Decision(kept, "slot" if kept else "none")

    def install(
        self, slot: Slot, prompt: list[int], state: bytes, hit: CacheHit, marks: tuple[int, ...]
    ) -> Decision:
        """Put a state read from disk into `slot` (engine thread)."""
        entry = ExactPrefix(len(hit.entry_tokens), hit.entry_cuts)
        n = reusable(entry, hit.n_tokens, len(prompt), self._block, marks)
        return self._installed(slot, prompt, state, n, hit, marks)

    def pin(self, req: GenerationRequest, cache_n: int) -> tuple[tuple[int, ...], int]:
        """Pin the prefix up to each of `req`'s breakpoints, now that `cache_n` prompt tokens
        are in place. Returns, per breakpoint, the prompt tokens this request computes up
        to it from the breakpoint before (written to the cache there: 0 where it was read
        back, or where nothing can be kept: no cache, or a prefix shorter than
        `min_restore_tokens`), and how many pins yielded to the pinned-bytes bound."""
        prompt, block = req.prompt_tokens, self._block
        # The slot holds all but the last TAIL prompt tokens: a breakpoint past them pins
        # what there is.
        limit = max(0, len(prompt) - TAIL)
        same_lora = (req.lora or ()) == self._config.loaded_lora  # what the cache holds
        keep = self.cache is not None and req.cache_prompt and same_lora
        odd = odd_cuts(len(prompt), block, req.marks)
        written: dict[int, int] = {}
        yielded, before = 0, 0
        for end in sorted({min(b.end, limit) for b in req.breakpoints}):
            if not keep or end < max(1, self._config.min_restore_tokens):
                written[end] = 0
                continue
            written[end] = max(0, end - max(before, cache_n))
            before = end
            ttl = max(b.ttl for b in req.breakpoints if min(b.end, limit) == end)
            assert self.cache is not None
            cuts = tuple(c for c in odd if c <= end)
            yielded += self.cache.pin(prompt[:end], cuts, ttl, hit=cache_n >= end)
        # Two breakpoints at one place wrote its tokens once: the first of them counts them.
        counted = [written.pop(min(b.end, limit), 0) for b in req.breakpoints]
        return tuple(counted), yielded

    @property
    def _block(self) -> int:
        return self._config.prefill_block

    def _best_donor(
        self, slot: Slot, prompt: list[int], marks: tuple[int, ...]
    ) -> tuple[Slot | None, int]:
        """The other slot (busy or idle) holding the longest reusable prefix of `prompt`."""
        best, best_len = None, 0
        for other in self._slots:
            if other is slot or not other.tokens or other.lora != slot.lora:
                continue
            common = common_prefix_length(other.tokens, prompt)
            n = reusable(other.exact, common, len(prompt), self._block, marks)
            if n > best_len:
                best, best_len = other, n
        if best_len < self._config.min_restore_tokens:
            return None, 0
        return best, best_len

    def _cache_hit(
        self, prompt: list[int], have: int, marks: tuple[int, ...]
    ) -> tuple[CacheHit | None, int]:
        if self.cache is None:
            return None, 0
        floor = max(have + self._config.min_restore_tokens, 1)
        hit = self.cache.lookup(prompt, min_tokens=floor)
        if hit is None:
            return None, 0
        # Entries hold reusable prefixes only, with the cuts they were computed with.
        entry = ExactPrefix(len(hit.entry_tokens), hit.entry_cuts)
        return hit, reusable(entry, hit.n_tokens, len(prompt), self._block, marks)

    def _installed(
        self, slot: Slot, prompt: list[int], state: bytes, n: int, hit: CacheHit | None,
        marks: tuple[int, ...],
    ) -> Decision:  # fmt: skip
        source: CacheSource = hit.tier if hit is not None else "slot"
        if not self._kv.set_seq_state(slot.id, state):
            log.warning("slot %d: llama.cpp refused a saved state; recomputing", slot.id)
            slot.forget()
            return Decision(0, "none")
        kept = self._kv.truncate(slot.id, n)
        slot.tokens = list(prompt[:kept])
        # `reusable` allowed `kept` only where the source made this prompt's cuts.
        slot.exact = computed_prefix(len(prompt), self._block, marks, upto=kept)
        if hit is not None and self.cache is not None and kept:
            self.cache.record_restore(kept, hit.tier)
        return Decision(kept, source if kept else "none")

    def release(self, slot: Slot) -> None:
        """Empty `slot` for a state copied in from elsewhere, keeping its prefix cached."""
        self._drop(slot, 0)

    def _drop(self, slot: Slot, keep: int) -> int:
        """Drop the slot's tokens past `keep` (saving its reusable prefix to the prompt cache
        first when enough would be lost); returns how many really remain."""
        if keep >= len(slot.tokens):
            return len(slot.tokens)
        if slot.exact.length - keep >= self._config.min_restore_tokens:
            self.save(slot)
        kept = self._kv.truncate(slot.id, keep)
        if kept < keep:
            # Expected with a recurrent state (it goes back to a checkpoint, or to nothing);
            # with attention KV alone, a trim that fails is worth a warning.
            level = logging.DEBUG if kept else logging.WARNING
            log.log(
                level, "slot %d: KV trim to %d tokens kept %d; recomputing", slot.id, keep, kept
            )
        del slot.tokens[kept:]
        slot.exact = truncated(slot.exact, kept)
        return kept

    def save(self, slot: Slot) -> None:
        """Copy the slot's reusable prefix into the prompt cache (no-op without one)."""
        n = slot.exact.length
        if getattr(self._kv, "window", 0) and n % self._block:
            # A saved state keeps only the last window of sliding-window layers, so it cannot
            # be cut back at all: end it on a block boundary, where a prompt that goes on
            # from it is cut too (a later turn of the conversation), or on a later
            # breakpoint, where one that repeats it is (and where its pin ends).
            marks = [c for c in slot.exact.cuts if c < n]
            n = max([n // self._block * self._block, *marks])
        if self.cache is None or n < self._config.min_restore_tokens:
            return
        if slot.lora != self._config.loaded_lora:  # the cache's key names the loaded set
            return
        try:
            if len(slot.tokens) > n:
                n = self._kv.truncate(slot.id, n)
                del slot.tokens[n:]
                slot.exact = truncated(slot.exact, n)
            if n:
                self.cache.put(slot.tokens[:n], self._kv.seq_state(slot.id), slot.exact.cuts)
        except Exception:  # the cache is an optimization; never fail a request over it
            log.exception("could not save slot %d to the prompt cache", slot.id)
