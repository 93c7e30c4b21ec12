"""How a prompt is cut into decode calls, and how much of a cached prefix may be reused.

llama.cpp's kernels pick code paths by the shape of a decode call (the CPU flash-attention
kernel switches to a tiled path past a row count, matmuls group rows), so a token's
activations depend on how the prompt was split (docs/engine-notes.md). An answer therefore
stays the same with and without the cache only if the cached run repeats the uncached run's
decode calls exactly. So every prompt is cut the same way, a function of its length and of
the request's cache breakpoints ("marks") alone:

- blocks of `block` tokens from position 0, up to `TAIL` tokens before the end;
- a cut at every mark before that point, wherever it falls (a block is split in two there);
- then whatever is left up to `n - TAIL`, then the last `TAIL` tokens (llama-server also
  decodes the last 4 prompt tokens on their own).

Marks are the client's cache breakpoints (Anthropic `cache_control`, a pinned prompt): the
prefix up to a breakpoint is what is pinned and read back, so the KV state must end
exactly there. A mark cannot be rounded to a block (the client would be charged for the
block's rest every time), and it cannot be added only when the cache is hit (the cached and
the uncached run would then make different calls). So a mark is part of the request, like
its length: a request with marks is cut at them whether or not anything is cached, and the
same request sent twice makes the same calls.

A sequence records the cuts it was computed with beyond the block multiples
(`ExactPrefix.cuts`: its marks, and `n - TAIL` when that is not a multiple). A prefix of
`k` tokens is reused only if `k` is a cut of both runs and both made the same cuts up to
`k`; every block multiple is a cut of both, so the first cut that only one of them made
bounds the reuse (the earlier block multiple or common mark below it). A request with a
mark the cache lacks, or a cache entry with a mark the request lacks, therefore reuses up
to the block before that mark and recomputes the rest with the calls an uncached run makes;
a request repeating its marks reuses up to them exactly. Without marks this is the rule it
always was: whole blocks, or `n - TAIL` for a prompt of the same length (whose cuts then
agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TAIL = 4


@dataclass(frozen=True)
class ExactPrefix:
    """What a sequence's KV cache can give to another prompt without changing its answer:
    at most its first `length` tokens, cut at every multiple of the block and at `cuts`
    (the other cuts it was computed with, ascending, none beyond `length`)."""

    length: int = 0
    cuts: tuple[int, ...] = ()


NOTHING = ExactPrefix()


def odd_cuts(n: int, block: int, marks: Sequence[int] = ()) -> tuple[int, ...]:
    """The cuts of an `n`-token prompt that are not block multiples, up to `n - TAIL`."""
    if n <= TAIL:
        return ()
    head = n - TAIL
    odd = {m for m in marks if 0 < m < head and m % block}
    if head % block:
        odd.add(head)
    return tuple(sorted(odd))


def cuts(n: int, block: int, marks: Sequence[int] = ()) -> list[int]:
    """The ends of the decode calls for an uncached `n`-token prompt."""
    if n <= TAIL:
        return [n] if n else []
    head = n - TAIL
    ends = set(range(block, head + 1, block)) | set(odd_cuts(n, block, marks))
    return [*sorted(ends), n]


def pieces(n: int, start: int, block: int, marks: Sequence[int] = ()) -> list[tuple[int, int]]:
    """The decode calls, as [a, b) ranges, that compute positions start..n of a prompt.

    `start` must be 0 or one of `cuts(n, block, marks)`."""
    out: list[tuple[int, int]] = []
    a = start
    for end in cuts(n, block, marks):
        if end > a:
            out.append((a, end))
            a = end
    return out


def next_piece(n: int, start: int, block: int, marks: Sequence[int] = ()) -> tuple[int, int]:
    """`pieces(n, start, block, marks)[0]` without listing the rest (once per step per
    prompt)."""
    if n <= TAIL:
        return start, n
    head = n - TAIL
    if start >= head:
        return start, n
    end = min((start // block + 1) * block, head)
    for m in marks:
        if start < m < end:
            end = m
    return start, end


def computed_prefix(
    n: int, block: int, marks: Sequence[int] = (), upto: int | None = None
) -> ExactPrefix:
    """What a sequence holds after the first `upto` tokens (all it may give: `n - TAIL`) of
    an `n`-token prompt were computed with `pieces`; `upto` must be a cut."""
    if n <= TAIL:
        return NOTHING
    length = n - TAIL if upto is None else min(upto, n - TAIL)
    return ExactPrefix(length, tuple(c for c in odd_cuts(n, block, marks) if c <= length))


def reusable(have: ExactPrefix, common: int, n: int, block: int, marks: Sequence[int] = ()) -> int:
    """How many leading tokens of an `n`-token prompt cut at `marks` may come from a
    sequence that holds `have` and shares `common` leading tokens with the prompt."""
    if n <= TAIL:
        return 0
    # The last piece is always computed: its logits give the first token.
    bound = min(common, have.length, n - TAIL)
    mine = {c for c in odd_cuts(n, block, marks) if c <= bound}
    theirs = {c for c in have.cuts if c <= bound}
    if differ := mine ^ theirs:
        bound = min(differ) - 1  # the calls differ from that cut on
    shared = max((c for c in mine & theirs if c <= bound), default=0)
    return max(bound // block * block, shared)


def plain_prefix(have: ExactPrefix, block: int) -> int:
    """The longest prefix of `have` that a prompt without marks may reuse, whatever its
    length: the block multiples before the first other cut (what a saved state without its
    cuts, as in a slot file, may claim)."""
    bound = min((have.length, *(c - 1 for c in have.cuts)))
    return max(0, bound) // block * block


def truncated(have: ExactPrefix, keep: int) -> ExactPrefix:
    """`have` after the sequence was cut back to its first `keep` tokens."""
    return ExactPrefix(min(have.length, keep), tuple(c for c in have.cuts if c <= keep))
