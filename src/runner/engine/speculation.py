"""Speculative decoding by prompt lookup: guess a slot's next tokens from earlier text, let
the target model check them in the step's one decode, keep the longest agreeing prefix.

Guesses come from an n-gram index over the request's prompt and output (the tokens that
followed the last earlier occurrence of the sequence's last `NGRAM` tokens), and, failing
that, over the other slots' requests (a second user pasting the same document). The check
is the request's own sampler run position by position while it agrees with the guesses
(`LlamaExecutor.execute`): for greedy requests that keeps the argmax at every position; for
sampled ones it is the speculative-sampling rule for a deterministic proposal (a guess `d`
is kept with probability p(d), else the token comes from p without d, renormalized), so the
output distribution is the target's.

Drafting is a bet that the verify rows pay for themselves, so it is decided per slot and per
step (`Speculator.bet`): from the slot's recent acceptance rate and a cost model of the
decode times by batch size (measured at load), draft the number of tokens that
maximizes the step's expected tokens per second, and nothing unless that beats not drafting
by a margin. When every guess misses the rate falls and drafting stops; a slot that stopped
keeps scoring its guesses against what it really generates (free), so drafting resumes when
they would land. Under concurrency the batch is already full of rows, a draft row costs the
same as another stream's, and the same rule backs off by itself. A draft model's guesses
(`draft.py`) are verified the same way; `drafting.py` picks the better bet of the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

NGRAM = 3  # tokens matched to find a continuation
CANDIDATES = 64  # earlier occurrences compared, newest first
LOOKBACK = 32  # tokens compared backwards to rank them
SHORT = 8  # an own match agreeing on fewer tokens than this also looks in other slots' text
SHADOW = 8  # tokens of a guess scored while not drafting (decided within that many steps)
CALIBRATION_ROWS = (1, 2, 4, 8, 16, 32, 49)  # step sizes timed at load
DECAY = 0.9  # per step: how fast acceptance statistics forget
MARGIN = 1.05  # drafting must promise this much more throughput than not drafting
FIT_DECAY = 0.9  # per observed step of a size: how fast its cost estimate forgets


class NgramIndex:
    """Where each `NGRAM`-token sequence of `tokens` occurred (the next token's index)."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], list[int]] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        start = len(self.tokens)
        self.tokens.extend(tokens)
        toks, nxt = self.tokens, self._next
        for j in range(max(start, NGRAM), len(toks)):
            key = tuple(toks[j - NGRAM : j])
            where = nxt.get(key)
            if where is None:
                nxt[key] = [j]
            else:
                where.append(j)

    def match(self, context: Sequence[int]) -> tuple[int, int]:
        """The occurrence of `context`'s last `NGRAM` tokens whose preceding tokens agree
        longest with `context` (most recent on ties): (next token's index, agreement), or
        (-1, 0). Text with repeated shapes (similar functions, table rows) needs the longer
        agreement to pick the right place to continue from."""
        where = self._next.get(tuple(context[-NGRAM:]))
        if not where:
            return -1, 0
        toks, n = self.tokens, len(context)
        best, best_len = -1, 0
        for j in reversed(where[-CANDIDATES:]):
            if j >= len(toks):
                continue
            length = NGRAM
            while (
                length < LOOKBACK
                and j - length - 1 >= 0
                and n - length - 1 >= 0
                and toks[j - length - 1] == context[n - length - 1]
            ):
                length += 1
            if length > best_len:
                best, best_len = j, length
        return best, best_len

    def continuation(self, j: int, k: int) -> list[int]:
        """`k` tokens from index `j` on (a loop that runs into the end of the text repeats,
        since a loop's guess continues with itself)."""
        toks, n = self.tokens, len(self.tokens)
        out: list[int] = []
        for i in range(k):
            at = j + i
            out.append(toks[at] if at < n else out[at - n])
        return out


def _bucket(rows: int) -> int:
    """Row counts share measurements on a grid (exact to 8, then steps of about 19%)."""
    if rows <= 8:
        return rows
    return round(2 ** (round(math.log2(rows) * 4) / 4))


@dataclass
class CostModel:
    """Measured seconds of a step by the rows it decoded (steps that only generated: prompt
    pieces are priced differently), as a recent average per size (`_bucket`).

    Not a line: on CPU the cost per row falls with the batch (measured here: a second row
    with logits costs ~3x the first, a 33-row verify 19x a one-row step), so a line through
    small drafts would forbid the long ones that pay. Sizes not measured yet are priced
    between their measured neighbours; past the largest one, a lone stream (`explore`) prices
    them optimistically (a quarter of an average row of the smallest size, so that they get
    tried and then measured), and a batch of several streams at the largest size's average
    per row (a wrong guess there slows every stream: measured, 4 streams ran at half speed
    while each kept exploring)."""

    fixed: tuple[float, float] | None = None  # (base, per_row) seconds: tests, benchmarks
    _by_rows: dict[int, list[float]] = field(default_factory=dict)  # size -> [weight, s]
    frozen: bool = False  # calibrated at load: decisions no longer depend on timing noise
    # Prices by (rows, explore) until the next observation: `bet` asks for dozens per slot.
    _memo: dict[tuple[int, bool], float | None] = field(default_factory=dict)

    def calibrate(self, seconds_by_rows: dict[int, float]) -> None:
        """Use these measured step times from now on, and stop learning: a request running
        alone then gets the same drafts (so the same batch shapes, so the same answer) every
        time, cached or not."""
        self._by_rows = {_bucket(r): [1.0, s] for r, s in seconds_by_rows.items()}
        self.frozen = True
        self._memo.clear()

    def observe(self, rows: int, seconds: float) -> None:
        if self.frozen:
            return
        point = self._by_rows.setdefault(_bucket(rows), [0.0, 0.0])
        point[0] = point[0] * FIT_DECAY + 1.0
        point[1] = point[1] * FIT_DECAY + seconds
        self._memo.clear()

    def _mean(self, size: int) -> float:
        w, s = self._by_rows[size]
        return s / w

    def seconds(self, rows: int, explore: bool = True) -> float | None:
        """Expected seconds of a step of `rows` rows; None before any step was measured."""
        if self.fixed is not None:
            return self.fixed[0] + self.fixed[1] * rows
        key = (rows, explore)
        if key not in self._memo:
            self._memo[key] = self._price(rows, explore)
        return self._memo[key]

    def _price(self, rows: int, explore: bool) -> float | None:
        known = self._by_rows
        size = _bucket(rows)
        if size in known:
            return self._mean(size)
        if not known:
            return None
        below = max((r for r in known if r < size), default=None)
        above = min((r for r in known if r > size), default=None)
        if below is not None and above is not None:
            y0, y1 = self._mean(below), self._mean(above)
            return y0 + (y1 - y0) * (size - below) / (above - below)
        if below is None:
            assert above is not None
            return self._mean(above) * size / above
        if not explore or self.frozen:
            return self._mean(below) * size / below
        smallest = min(known)
        per_row = self._mean(smallest) / smallest / 4
        return self._mean(below) + per_row * (size - below)


@dataclass
class Odds:
    """How often a source's guesses landed lately."""

    accepted: float = 0.0
    rejected: float = 0.0

    @property
    def rate(self) -> float:
        """Estimated chance that the next guess lands (a mild prior of one half)."""
        return (self.accepted + 0.5) / (self.accepted + self.rejected + 1.0)

    def record(self, accepted: int, rejected: int) -> None:
        self.accepted = self.accepted * DECAY + accepted
        self.rejected = self.rejected * DECAY + rejected


@dataclass
class SlotSpec(Odds):
    """One request's drafting state: its text index, prompt lookup's acceptance history (a
    draft model's is `by_model`) and the guess it made while not drafting (scored against
    what it really generates)."""

    job_id: int = -1
    index: NgramIndex = field(default_factory=NgramIndex)
    prompt_len: int = 0
    shadow: list[int] = field(default_factory=list)
    shadow_at: int = 0  # output length when `shadow` was guessed
    by_model: Odds = field(default_factory=Odds)
    # The place in `index.tokens` whose token is the own text's guess for the next one, and
    # how many tokens before it agree: followed token by token while it keeps predicting
    # the output (O(1) per step), looked up again only after it missed.
    follow: int = -1
    follow_len: int = 0

    def sync(self, output: Sequence[int]) -> None:
        """Index new output tokens and score the shadow guess against them: once it is
        decided (a token differs, or all of it was generated), it counts as a draft would."""
        have = len(self.index.tokens) - self.prompt_len
        if have < len(output):
            self.index.extend(output[have:])
            toks = self.index.tokens
            for token in output[have:]:  # `follow` stays before the token it predicts
                if self.follow >= 0 and toks[self.follow] == token:
                    self.follow += 1
                    self.follow_len = min(self.follow_len + 1, LOOKBACK)
                else:
                    self.follow = -1
        if not self.shadow:
            return
        seen = output[self.shadow_at : self.shadow_at + len(self.shadow)]
        for i, token in enumerate(seen):
            if token != self.shadow[i]:
                self.record(i, 1)
                self.shadow = []
                return
        if len(seen) == len(self.shadow):
            self.record(len(seen), 0)
            self.shadow = []

    def own_match(self) -> tuple[int, int]:
        """(next token's index, agreement) of the best place in the own text, or (-1, 0)."""
        if self.follow < 0 and len(self.index.tokens) >= NGRAM:
            self.follow, self.follow_len = self.index.match(self.index.tokens)
        return self.follow, self.follow_len

    def guessed(self, guess: list[int], at: int) -> None:
        """Remember a guess that was not drafted (one at a time, until it is decided)."""
        if not self.shadow:
            self.shadow, self.shadow_at = guess[:SHADOW], at


def expected_accepted(rate: float, k: int) -> float:
    """Expected accepted tokens of a k-token draft when each lands with `rate` in turn."""
    total, p = 0.0, 1.0
    for _ in range(k):
        p *= rate
        total += p
    return total


@dataclass
class Speculator:
    """Per-slot drafting decisions for the scheduler (engine thread only)."""

    draft_max: int = 48
    adaptive: bool = True
    lookup: bool = True  # guess by prompt lookup (tests turn it off to try a draft model alone)
    cost: CostModel = field(default_factory=CostModel)
    _slots: dict[int, SlotSpec] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.draft_max > 0

    def state(self, slot_id: int, job_id: int, prompt: Sequence[int]) -> SlotSpec:
        spec = self._slots.get(slot_id)
        if spec is None or spec.job_id != job_id:
            spec = SlotSpec(job_id=job_id, index=NgramIndex(prompt), prompt_len=len(prompt))
            self._slots[slot_id] = spec
        return spec

    def release(self, slot_id: int) -> None:
        """The slot's request ended: its text no longer feeds other slots' guesses (which
        would make one request's drafts, and so its answer, depend on earlier ones)."""
        self._slots.pop(slot_id, None)

    def guess(self, slot_id: int, spec: SlotSpec, k: int, others: bool = True) -> list[int]:
        """Up to `k` tokens to follow the sequence: from the best-agreeing earlier place in
        its own text, or, when that agrees on fewer than `SHORT` tokens (and `others`), in
        another slot's when that agrees longer (the scan over every slot is the expensive
        part, so it runs only where the own text has no good answer)."""
        context = spec.index.tokens
        if len(context) < NGRAM or k <= 0:
            return []
        best, (j, length) = spec.index, spec.own_match()
        if others and length < SHORT:
            for other_id, other in self._slots.items():
                if other_id != slot_id:
                    oj, olength = other.index.match(context)
                    if olength > length:
                        best, j, length = other.index, oj, olength
        return best.continuation(j, k) if j >= 0 else []

    def bet(
        self,
        rate: float,
        k_max: int,
        tokens: float,
        rows: int,
        drafting: Callable[[int], float] | None = None,
    ) -> tuple[int, float]:
        """(draft length, expected tokens per second of the step) that maximizes the step's
        speed, given the `tokens` it yields and the `rows` it decodes without this draft
        (and the seconds that `drafting` k guesses costs, for a draft model); length 0
        unless it beats not drafting. The speed is infinite where rows are not priced."""
        if not self.adaptive:
            return k_max, math.inf
        explore = tokens <= 1.0  # a lone stream: a wrong guess costs only itself
        plain = self.cost.seconds(rows, explore)
        if plain is None:
            return 0, 0.0  # measure a step without guesses first
        if plain <= 0:
            return k_max, math.inf  # a clock that does not move (a fake executor)
        best_k, best = 0, tokens / plain * MARGIN
        gain, p = 0.0, 1.0
        for k in range(1, k_max + 1):
            p *= rate
            gain += p
            step = self.cost.seconds(rows + k, explore)
            if step is None or step <= 0:
                continue
            if drafting is not None:
                step += drafting(k)
            speed = (tokens + gain) / step
            if speed > best:
                best_k, best = k, speed
        return best_k, best
