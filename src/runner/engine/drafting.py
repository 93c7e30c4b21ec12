"""Where a generating slot's guesses come from each step: prompt lookup (free, and best where
the text repeats) or, if one is loaded, the draft model, whichever bet promises the faster
step (each judged on its own acceptance record; the draft's also pays for its decodes; a tie
goes to prompt lookup); and which record a verified guess updates."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .job import Job
from .plan import DecodeFailed, Drafter
from .slots import Slot
from .speculation import CALIBRATION_ROWS, MARGIN, Odds, Speculator, expected_accepted
from .ubatches import ubatch_rows

log = logging.getLogger(__name__)


class Drafting:
    """The scheduler's drafting decisions (engine thread only)."""

    def __init__(
        self, spec: Speculator, drafter: Drafter | None, n_ubatch: int = 512, unified: bool = False
    ) -> None:
        self.spec = spec
        self.drafter = drafter
        self.n_ubatch = n_ubatch
        self.unified = unified
        self._modelled: set[int] = set()  # slots whose guesses in this step are the draft's

    def ubatch_rows(self, entries: list[tuple[int, int]]) -> list[int]:
        return ubatch_rows(entries, self.n_ubatch, self.unified)

    def calibrate(
        self, time_rows: Callable[[int, Sequence[int]], dict[int, float]], seq: int
    ) -> None:
        """Time the target's decodes of the sizes verification makes (on the empty sequence
        `seq`), and the draft model's proposal, once at load."""
        self.spec.cost.calibrate(time_rows(seq, CALIBRATION_ROWS))
        if self.drafter is not None:
            self.drafter.calibrate()

    def begin_step(self) -> None:
        self._modelled.clear()

    def plan(self, generating: Sequence[tuple[Slot, Job]], budget: int) -> list[list[int]]:
        """The guesses each generating slot verifies after its `next_token` this step.

        Each slot first bets on its own guesses; then the step gets one common length: the
        slots whose bet reaches it verify that many guesses, the others none. llama.cpp
        computes equal runs of consecutive sequences in one ubatch (`ubatches.py`), so
        lengths that differ between neighbours cost more passes over the weights; the
        common length is the one whose expected tokens per second, priced per ubatch, is
        best (and beats drafting nothing by the margin)."""
        rows = len(generating)
        yielded = float(rows)
        own: list[list[int]] = []
        for slot, job in generating:
            draft, gain = self.guesses(slot, job, budget, rows, yielded)
            budget -= len(draft)
            rows += len(draft)
            yielded += gain
            own.append(draft)
        if not self.spec.adaptive:
            return own  # every guess found is verified (tests, benchmarks)
        lengths = sorted({len(d) for d in own if d})
        common = self._common_length(generating, own, lengths) if lengths else 0
        return [d[:common] if common and len(d) >= common else [] for d in own]

    def _common_length(
        self, generating: Sequence[tuple[Slot, Job]], own: list[list[int]], lengths: list[int]
    ) -> int:
        cost = self.spec.cost
        seqs = [slot.id for slot, _ in generating]
        rates = [self._odds(slot, job).rate for slot, job in generating]
        explore = len(generating) == 1
        best, best_score = 0, 0.0
        for c in [0, *lengths]:
            drafting = [c > 0 and len(d) >= c for d in own]
            sizes = self.ubatch_rows(list(zip(seqs, [1 + c * x for x in drafting], strict=True)))
            prices = [cost.seconds(n, explore) for n in sizes]
            if any(p is None for p in prices):
                return 0  # measure a step without guesses first
            seconds = sum(p for p in prices if p is not None)
            tokens = len(own) + sum(
                expected_accepted(r, c) for r, x in zip(rates, drafting, strict=True) if x
            )
            # A clock that does not move (a fake executor): the most tokens wins.
            score = tokens if seconds <= 0 else tokens / seconds
            if c == 0:
                best_score = score * MARGIN
            elif score > best_score:
                best, best_score = c, score
        return best

    def _odds(self, slot: Slot, job: Job) -> Odds:
        state = self.spec.state(slot.id, job.id, job.request.prompt_tokens)
        return state.by_model if slot.id in self._modelled else state

    def guesses(
        self, slot: Slot, job: Job, budget: int, rows: int, yielded: float
    ) -> tuple[list[int], float]:
        """The guesses to verify after `job.next_token` this step, and the tokens they are
        expected to add, given the step's `rows` and `yielded` tokens planned so far.
        Where the bet says a full-length guess would not pay, only the slot's own text is
        looked up, for the shadow guess."""
        spec = self.spec
        if not spec.enabled or job.request.sampling.n_probs is not None:
            return [], 0.0  # logprobs are reported one token per step
        state = spec.state(slot.id, job.id, job.request.prompt_tokens)
        state.sync(job.output_tokens)
        k_max = min(spec.draft_max, budget, slot.n_ctx - len(slot.tokens) - 2)
        if job.request.max_tokens is not None:
            # k guesses yield up to k + 1 tokens; never compute past the request's end.
            k_max = min(k_max, job.request.max_tokens - len(job.output_tokens) - 1)
        bet = k_max > 0
        # A full-length guess is the best a lookup can offer: if that would not pay, no
        # guess would, and the lookup is only for the shadow.
        would = bet and spec.lookup and spec.bet(state.rate, k_max, yielded, rows)[0] > 0
        use_model = bet and self.drafter is not None
        if not (would or use_model) and (not spec.lookup or state.shadow or k_max <= 0):
            return [], 0.0  # nothing would be drafted, and no shadow guess is needed
        guess = spec.guess(slot.id, state, k_max, others=would) if spec.lookup else []
        k, speed = spec.bet(state.rate, len(guess), yielded, rows) if would and guess else (0, 0.0)
        if use_model and self.drafter is not None:
            # The draft model instead, where its bet (its own odds, its own cost) is better.
            odds = state.by_model
            k_model, model_speed = spec.bet(odds.rate, k_max, yielded, rows, self.drafter.seconds)
            if k_model > 0 and (k == 0 or model_speed > speed):
                if guess:
                    state.guessed(guess, len(job.output_tokens))
                return self._from_model(slot, job, odds, k_model)
            odds.record(0, 0)  # unused: its record fades back to the prior, to be retried
        if k > 0:
            return guess[:k], expected_accepted(state.rate, k)
        if guess:
            state.guessed(guess, len(job.output_tokens))
        return [], 0.0

    def _from_model(self, slot: Slot, job: Job, odds: Odds, k: int) -> tuple[list[int], float]:
        """The draft model's guesses (at most `k`; fewer where it is unsure)."""
        drafter = self.drafter
        assert drafter is not None
        try:
            guess = drafter.propose(slot.id, [*slot.tokens, job.next_token], k)
        except DecodeFailed as exc:
            # Guesses are an optimization: the requests go on without the draft model.
            log.error("the draft model failed (%s); speculating by prompt lookup from now", exc)
            self.drafter = None
            return [], 0.0
        if guess:
            self._modelled.add(slot.id)
        return guess, expected_accepted(odds.rate, len(guess))

    def verified(self, slot: Slot, job: Job, drafted: int, accepted: int) -> None:
        """Score `drafted` guesses of which the first `accepted` were kept."""
        state = self.spec.state(slot.id, job.id, job.request.prompt_tokens)
        odds = state.by_model if slot.id in self._modelled else state
        self._modelled.discard(slot.id)
        odds.record(accepted, int(accepted < drafted))
