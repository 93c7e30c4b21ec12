"""Where a new request's prompt prefix comes from: the slot's own KV cache, another slot's
(copied in the shared KV buffer), or nothing (computed from scratch)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .slots import Slot, common_prefix_length
from .types import CacheSource

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)


class PrefixPlanner:
    """Prepares a slot's KV cache for a prompt and says how many tokens are already there."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler
        self.swa_misses = 0  # trims llama.cpp could not honour (windowed SWA cache)

    def prepare(self, slot: Slot, prompt: list[int], use_cache: bool) -> tuple[int, CacheSource]:
        ctx = self._s.ctx
        if not use_cache:
            self._evict(slot, 0)
            return 0, "none"
        # At least one prompt token is always computed, so the first output has logits.
        limit = len(prompt) - 1
        own = min(common_prefix_length(slot.tokens, prompt), limit)
        donor, shared = self._best_donor(slot, prompt, limit)
        if donor is not None and shared > own:
            self._evict(slot, 0)
            ctx.copy_seq(donor.id, slot.id, shared)
            if ctx.pos_max(slot.id) == shared - 1:
                slot.tokens = list(prompt[:shared])
                return shared, "slot"
            ctx.clear_seq(slot.id)
            slot.tokens = []
            return 0, "none"
        kept = self._evict(slot, own)
        if kept < own:
            self.swa_misses += 1
            log.warning("slot %d: KV trim to %d tokens failed; recomputing", slot.id, own)
        return kept, "slot" if kept else "none"

    def _best_donor(self, slot: Slot, prompt: list[int], limit: int) -> tuple[Slot | None, int]:
        """The other slot whose cache shares the longest prefix (copying needs one KV buffer)."""
        if not self._s.config.kv_unified:
            return None, 0
        best, best_len = None, 0
        for other in self._s.slots:
            if other is slot or not other.tokens:
                continue
            n = min(common_prefix_length(other.tokens, prompt), limit)
            if n > best_len:
                best, best_len = other, n
        return best, best_len

    def _evict(self, slot: Slot, keep: int) -> int:
        """Drop the slot's cached tokens past `keep`; returns how many really remain."""
        if keep >= len(slot.tokens):
            return len(slot.tokens)
        kept = self._s.ctx.truncate(slot.id, keep)
        del slot.tokens[kept:]
        return kept
