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
from .speculation import CALIBRATION_ROWS, Odds, Speculator, expected_accepted

log = logging.getLogger(__name__)


class Drafting:
    """The scheduler's drafting decisions (engine thread only)."""

    def __init__(self, spec: Speculator, drafter: Drafter | None) -> None:
        self.spec = spec
        self.drafter = drafter
        self._modelled: set[int] = set()  # slots whose guesses in this step are the draft's

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

    def guesses(
        self, slot: Slot, job: Job, budget: int, rows: int, yielded: float
    ) -> tuple[list[int], float]:
        """The guesses to verify after `job.next_token` this step, and the tokens they are
        expected to add, given the step's `rows` and `yielded` tokens planned so far."""
        spec = self.spec
        if not spec.enabled or job.request.sampling.n_probs is not None:
            return [], 0.0  # logprobs are reported one token per step
        state = spec.state(slot.id, job.id, job.request.prompt_tokens)
        state.sync(job.output_tokens)
        k_max = min(spec.draft_max, budget, slot.n_ctx - len(slot.tokens) - 2)
        if job.request.max_tokens is not None:
            # k guesses yield up to k + 1 tokens; never compute past the request's end.
            k_max = min(k_max, job.request.max_tokens - len(job.output_tokens) - 1)
        guess = spec.guess(slot.id, state, k_max) if spec.lookup else []
        k, speed = spec.bet(state.rate, len(guess), yielded, rows) if guess else (0, 0.0)
        if self.drafter is not None and k_max > 0:
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
