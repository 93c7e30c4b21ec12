"""How one step's token budget is shared: every generating slot gets its token first (and its
guesses), and the slots reading a prompt share what is left, piece by canonical piece.

Prompt pieces stay those of `partition.pieces`, so a request running alone makes the same
computations cached or uncached. Several pieces of one slot go into one batch entry only
where llama.cpp computes them exactly as it would one by one. llama.cpp cuts a lone
sequence's tokens into ubatches of `n_ubatch` from the start of its entry, so a piece
computes the same way wherever it sits in the entry as long as every piece before it in
the entry is a whole number of ubatches (with `prefill_block` a multiple of `n_ubatch`,
every full block is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .partition import next_piece
from .types import EngineConfig


def n_ubatch(config: EngineConfig) -> int:
    """The ubatch size llama.cpp uses for the engine's context (it caps it by `n_batch`)."""
    return max(1, min(config.n_ubatch, config.n_batch))


@dataclass(frozen=True)
class Reading:
    """A slot reading its prompt: `n` tokens cut at `marks` (partition), computed up to
    `pos`."""

    n: int
    pos: int
    marks: tuple[int, ...] = ()


def piece_end(r: Reading, start: int, block: int) -> int:
    """Where the canonical piece of `r` that starts at `start` ends."""
    return next_piece(r.n, start, block, r.marks)[1]


def first_pieces(reading: Sequence[Reading], block: int) -> int:
    """Tokens of every reading slot's next piece: what guesses must leave of the budget, so
    that drafting never stalls a prompt."""
    return sum(piece_end(r, r.pos, block) - r.pos for r in reading if r.pos < r.n)


def share_prompt_budget(
    reading: Sequence[Reading], budget: int, block: int, n_ubatch: int
) -> list[int]:
    """Where each reading slot's piece of this step ends (its `pos` when it gets nothing).

    Round robin in the given order (oldest request first): each round gives every slot its
    next canonical piece if the budget still holds it, so a long prompt cannot starve a
    short one; a slot takes more pieces in later rounds only while its entry so far is a
    whole number of ubatches (see the module docstring)."""
    ends = [r.pos for r in reading]
    stackable = [True] * len(reading)
    progress = True
    while progress and budget > 0:
        progress = False
        for i, r in enumerate(reading):
            end = ends[i]
            if end >= r.n or not stackable[i]:
                continue
            a, b = end, piece_end(r, end, block)
            if b - a > budget:
                continue
            ends[i] = b
            budget -= b - a
            stackable[i] = (b - a) % n_ubatch == 0
            progress = True
    return ends
