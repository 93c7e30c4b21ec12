"""Where a new request's prompt prefix comes from: the slot's own KV cache, another slot's
(copied as sequence state), the host-RAM or disk prompt cache, or nowhere (computed).

A slot's tokens are saved to the prompt cache before a new prompt overwrites them, so a
prefix pushed out of the slots is restored later instead of recomputed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cache import CacheEntryCorrupt, CacheHit, PromptCache
from .slots import Slot, common_prefix_length
from .types import CacheSource

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    n_tokens: int
    source: CacheSource
    donor: Slot | None = None
    hit: CacheHit | None = None


class PrefixPlanner:
    """Prepares a slot's KV cache for a prompt and says how many tokens are already there."""

    def __init__(self, scheduler: Scheduler, cache: PromptCache | None) -> None:
        self._s = scheduler
        self.cache = cache
        self.swa_misses = 0  # trims llama.cpp could not honour (windowed SWA cache)

    def _align(self, n: int) -> int:
        # Reuse is rounded down to the CPU kernels' row group: llama.cpp computes batch rows
        # in groups of 4 (repacked weights) and leftover rows with another kernel, so only an
        # aligned split gives the suffix the exact numerics of an uncached run.
        align = self._s.config.cache_align
        return n - n % align

    def prepare(self, slot: Slot, prompt: list[int], use_cache: bool) -> tuple[int, CacheSource]:
        if not use_cache:
            self._drop(slot, 0)
            return 0, "none"
        # At least one prompt token is always computed, so the first output has logits.
        limit = self._align(len(prompt) - 1)
        plan = _Plan(min(self._align(common_prefix_length(slot.tokens, prompt)), limit), "slot")
        donor, shared = self._best_donor(slot, prompt, limit)
        if shared > plan.n_tokens:
            plan = _Plan(shared, "slot", donor=donor)
        plan = self._consider_cache(plan, prompt, limit)
        if plan.donor is None and plan.hit is None:
            kept = self._drop(slot, plan.n_tokens)
            if kept < plan.n_tokens:
                self.swa_misses += 1
                log.warning("slot %d: KV trim to %d tokens failed; recomputing", slot.id, kept)
            return kept, "slot" if kept else "none"
        self._drop(slot, 0)
        restored = self._restore(slot, prompt, plan)
        return restored, plan.source if restored else "none"

    def _best_donor(self, slot: Slot, prompt: list[int], limit: int) -> tuple[Slot | None, int]:
        """The other slot (busy or idle) whose KV shares the longest prefix with `prompt`."""
        best, best_len = None, 0
        for other in self._s.slots:
            if other is slot or not other.tokens:
                continue
            n = min(self._align(common_prefix_length(other.tokens, prompt)), limit)
            if n > best_len:
                best, best_len = other, n
        if best_len < self._s.config.min_restore_tokens:
            return None, 0
        return best, best_len

    def _consider_cache(self, plan: _Plan, prompt: list[int], limit: int) -> _Plan:
        if self.cache is None:
            return plan
        floor = max(plan.n_tokens + self._s.config.min_restore_tokens, 1)
        hit = self.cache.lookup(prompt, min_tokens=floor)
        if hit is None:
            return plan
        n = min(self._align(hit.n_tokens), limit)
        if n <= plan.n_tokens:
            return plan
        return _Plan(n, hit.tier, hit=hit)

    def _restore(self, slot: Slot, prompt: list[int], plan: _Plan) -> int:
        ctx = self._s.ctx
        try:
            if plan.donor is not None:
                state = ctx.seq_state(plan.donor.id)
            else:
                assert plan.hit is not None
                state = plan.hit.load()
        except CacheEntryCorrupt as exc:
            log.warning("prompt cache entry unusable (%s); recomputing", exc)
            return 0
        if not ctx.set_seq_state(slot.id, state):
            log.warning("slot %d: llama.cpp refused a saved state; recomputing", slot.id)
            return 0
        kept = ctx.truncate(slot.id, plan.n_tokens)
        slot.tokens = list(prompt[:kept])
        if plan.hit is not None and self.cache is not None and kept:
            self.cache.record_restore(kept, plan.hit.tier)
        return kept

    def _drop(self, slot: Slot, keep: int) -> int:
        """Drop the slot's tokens past `keep` (saving them to the prompt cache first when
        enough would be lost); returns how many really remain."""
        if keep >= len(slot.tokens):
            return len(slot.tokens)
        if len(slot.tokens) - keep >= self._s.config.min_restore_tokens:
            self.save(slot)
        kept = self._s.ctx.truncate(slot.id, keep)
        del slot.tokens[kept:]
        return kept

    def save(self, slot: Slot) -> None:
        """Copy the slot's KV state into the prompt cache (no-op without one)."""
        if self.cache is None or len(slot.tokens) < self._s.config.min_restore_tokens:
            return
        try:
            self.cache.put(slot.tokens, self._s.ctx.seq_state(slot.id))
        except Exception:  # the cache is an optimization; never fail a request over it
            log.exception("could not save slot %d to the prompt cache", slot.id)
