"""Slots: one KV-cache sequence each, and the rule that picks one for a new request."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .partition import NOTHING, ExactPrefix

if TYPE_CHECKING:
    from .job import Job


class SlotState(enum.Enum):
    IDLE = "idle"
    LOADING = "loading"  # waiting for a cached prefix to be read from disk
    FORKING = "forking"  # waiting for another slot to compute the prompt it shares
    PROMPT = "prompt"
    GENERATING = "generating"


@dataclass
class Slot:
    """A sequence id in the shared context and the tokens its KV cache holds."""

    id: int
    n_ctx: int
    tokens: list[int] = field(default_factory=list)
    state: SlotState = SlotState.IDLE
    last_used: float = 0.0
    job: Job | None = None
    # How much of `tokens` another prompt may reuse without changing its answer.
    exact: ExactPrefix = NOTHING
    # The client's cache key of the request this slot last served (`choose_slot`).
    cache_key: str | None = None
    # The LoRA set (`lora.LoraSet`) its KV was computed with: only a request of the same
    # set may reuse it.
    lora: tuple[tuple[int, float], ...] = ()

    @property
    def busy(self) -> bool:
        return self.state is not SlotState.IDLE

    def forget(self) -> None:
        self.tokens = []
        self.exact = NOTHING

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.id,
            "n_ctx": self.n_ctx,
            "is_processing": self.busy,
            "state": self.state.value,
            "n_cached_tokens": len(self.tokens),
            "last_used": self.last_used,
        }
        if self.job is not None:
            info["n_prompt_tokens"] = len(self.job.request.prompt_tokens)
            info["n_decoded"] = len(self.job.output_tokens)
        return info


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: long shared system prompts are the common case.
    step = 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def choose_slot(
    slots: Sequence[Slot],
    prompt: Sequence[int],
    threshold: float,
    use_cache: bool = True,
    cache_key: str | None = None,
    keep_prefixes: bool = True,
) -> Slot | None:
    """The idle slot a request should run in, or None when every slot is busy.

    A request with a cache key (OpenAI `prompt_cache_key`) gets the idle slot that last
    served that key, the client's word being better than a guess. Otherwise, like
    llama-server: the idle slot whose cache shares the largest fraction of the prompt, if
    that fraction reaches `threshold`. Failing that, without `keep_prefixes` (a prompt
    cache keeps what a slot held) the idle slot with the lowest id: busy slots then stay
    contiguous, and llama.cpp computes a step's decode tokens in one ubatch only across
    consecutive sequence ids (`ubatches.py`). With it (no prompt cache: an evicted prefix
    is lost) the lowest empty idle slot, else the least recently used, as llama-server.
    """
    idle = [s for s in slots if not s.busy]
    if not idle:
        return None
    if use_cache and cache_key is not None:
        keyed = [s for s in idle if s.cache_key == cache_key]
        if keyed:
            return max(keyed, key=lambda s: s.last_used)
    if use_cache and prompt:
        best, best_len = None, 0
        for slot in idle:
            n = common_prefix_length(slot.tokens, prompt)
            if n > best_len:
                best, best_len = slot, n
        if best is not None and best_len / len(prompt) >= threshold:
            return best
    if not keep_prefixes:
        return min(idle, key=lambda s: s.id)
    empty = [s for s in idle if not s.tokens]
    if empty:
        return min(empty, key=lambda s: s.id)
    return min(idle, key=lambda s: s.last_used)
