"""How a prompt is cut into decode calls, and how much of a cached prefix may be reused.

llama.cpp's kernels pick code paths by the shape of a decode call (the CPU flash-attention
kernel switches to a tiled path past a row count, matmuls group rows), so a token's
activations depend on how the prompt was split (docs/engine-notes.md). An answer therefore
stays the same with and without the cache only if the cached run repeats the uncached run's
decode calls exactly. So every prompt is cut the same way, a function of its length alone:

- blocks of `block` tokens from position 0, up to `TAIL` tokens before the end;
- then whatever is left up to `n - TAIL`, then the last `TAIL` tokens (llama-server also
  decodes the last 4 prompt tokens on their own).

A cached prefix is reused only up to a cut that the earlier computation shared: a multiple
of `block` that its own cut had, or `n - TAIL` when the earlier prompt had the same length.
Everything after that is recomputed with the same calls an uncached run makes.
"""

from __future__ import annotations

from dataclasses import dataclass

TAIL = 4


@dataclass(frozen=True)
class ExactPrefix:
    """What a sequence's KV cache can give to another prompt without changing its answer:
    its first `length` tokens (a multiple of the block), or, for a prompt of exactly
    `prompt_len` tokens, everything but the last `TAIL`."""

    length: int = 0
    prompt_len: int = 0


NOTHING = ExactPrefix()


def cuts(n: int, block: int) -> list[int]:
    """The ends of the decode calls for an uncached `n`-token prompt."""
    if n <= TAIL:
        return [n] if n else []
    head = n - TAIL
    ends = list(range(block, head, block))
    ends += [head, n]
    return ends


def pieces(n: int, start: int, block: int) -> list[tuple[int, int]]:
    """The decode calls, as [a, b) ranges, that compute positions start..n of a prompt.

    `start` must be 0 or one of `cuts(n, block)`."""
    out: list[tuple[int, int]] = []
    a = start
    for end in cuts(n, block):
        if end > a:
            out.append((a, end))
            a = end
    return out


def next_piece(n: int, start: int, block: int) -> tuple[int, int]:
    """`pieces(n, start, block)[0]` without listing the rest (once per step per prompt)."""
    if n <= TAIL:
        return start, n
    head = n - TAIL
    if start >= head:
        return start, n
    return start, min((start // block + 1) * block, head)


def computed_prefix(n: int, block: int) -> ExactPrefix:
    """What a sequence holds after an `n`-token prompt was computed with `pieces`."""
    if n <= TAIL:
        return NOTHING
    return ExactPrefix(length=(n - TAIL) // block * block, prompt_len=n)


def reusable(have: ExactPrefix, common: int, n: int, block: int) -> int:
    """How many leading tokens of an `n`-token prompt may come from a sequence that holds
    `have` and shares `common` leading tokens with the prompt."""
    if n <= TAIL:
        return 0
    limit = n - TAIL  # the last piece is always computed: its logits give the first token
    if have.prompt_len == n and common >= limit:
        return limit
    return min(common, have.length, limit) // block * block


def truncated(have: ExactPrefix, keep: int) -> ExactPrefix:
    """`have` after the sequence was cut back to its first `keep` tokens."""
    same_prompt_ok = have.prompt_len > TAIL and keep >= have.prompt_len - TAIL
    return ExactPrefix(min(have.length, keep), have.prompt_len if same_prompt_ok else 0)
