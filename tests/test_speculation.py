"""Speculative decoding's logic against the fake executor: guesses, verification, KV
rollback, stop conditions inside an accepted run, and the adaptive draft length."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import pytest
from fake_executor import MakeCore, next_token, running_cores

from runner.engine.core import EngineCore
from runner.engine.job import Completion, Job, ThreadSink, collect, thread_events
from runner.engine.plan import DecodeFailed
from runner.engine.speculation import CostModel, NgramIndex, Speculator
from runner.engine.types import GenerationRequest

PERIOD = 12


def copies(seq: Sequence[int]) -> int:
    """A model that repeats the text PERIOD tokens back (prompt lookup's best case)."""
    return seq[-PERIOD]


def copies_but_every_fifth(seq: Sequence[int]) -> int:
    """Copies, except at every fifth position: guesses land partly, then get rejected."""
    return seq[-PERIOD] + (1000 if len(seq) % 5 == 0 else 0)


@pytest.fixture
def make_core() -> Iterator[MakeCore]:
    yield from running_cores(
        {"slots": 2, "ctx_per_slot": 512, "prefill_block": 16, "spec_draft_max": 8}
    )


def run(core: EngineCore, prompt: list[int], max_tokens: int, **kw) -> Completion:
    sink = ThreadSink()
    core.submit(Job(GenerationRequest(prompt, max_tokens=max_tokens, **kw), sink))
    return collect(thread_events(sink, timeout=10))


def expected(rule: Callable[[Sequence[int]], int], prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(rule(seq))
    return seq[len(prompt) :]


PROMPT = [100 + i for i in range(PERIOD)] * 2


def test_ngram_index_continues_from_the_best_agreeing_place() -> None:
    # "1 2 3" occurs twice; the place whose earlier tokens also agree (9 before it) wins.
    index = NgramIndex([9, 1, 2, 3, 40, 41, 8, 1, 2, 3, 50, 51, 7, 9, 1, 2, 3])
    j, agreement = index.match(index.tokens)
    assert index.continuation(j, 2) == [40, 41] and agreement == 4
    # A loop that runs into the end of the text keeps repeating itself.
    loop = NgramIndex([5, 6, 7, 5, 6, 7])
    j, _ = loop.match(loop.tokens)
    assert loop.continuation(j, 7) == [5, 6, 7, 5, 6, 7, 5]
    assert NgramIndex([1, 2, 3]).match([4, 5, 6]) == (-1, 0)


def test_accepted_guesses_give_the_same_output_in_fewer_decodes(make_core) -> None:
    core, ex = make_core()
    ex.rule = copies
    result = run(core, PROMPT, max_tokens=60)
    assert result.tokens == expected(copies, PROMPT, 60)
    t = result.timings
    assert t.draft_n_accepted == t.draft_n > 30 and t.predicted_n == 60
    generation_decodes = [c for c in ex.calls if c[0][1] >= len(PROMPT)]
    assert len(generation_decodes) < 60 / 4


def test_rejected_guesses_are_rolled_back(make_core) -> None:
    core, ex = make_core(slots=1)
    ex.rule = copies_but_every_fifth
    result = run(core, PROMPT, max_tokens=80)
    out = expected(copies_but_every_fifth, PROMPT, 80)
    assert result.tokens == out
    t = result.timings
    assert 0 < t.draft_n_accepted < t.draft_n  # some guesses were rejected
    # The sequence holds exactly what was decoded and kept: no rejected guess survives.
    assert ex.seqs[0] == (PROMPT + out)[: len(ex.seqs[0])]
    # ... and the slot stays usable: a follow-up reuses the prompt and matches a fresh run.
    again = run(core, PROMPT + [7, 8, 9], max_tokens=20)
    assert again.timings.cache_n > 0
    assert again.tokens == expected(copies_but_every_fifth, PROMPT + [7, 8, 9], 20)


@pytest.mark.parametrize("max_tokens", [1, 2, 9, 33])
def test_max_tokens_and_stop_strings_inside_an_accepted_run(make_core, max_tokens) -> None:
    core, ex = make_core(slots=1)
    ex.rule = copies
    result = run(core, PROMPT, max_tokens=max_tokens)
    assert result.tokens == expected(copies, PROMPT, max_tokens)
    assert result.finish.finish_reason == "length"
    # Guesses never run past the request's end (k guesses can yield k + 1 tokens).
    assert len(ex.seqs[0]) <= len(PROMPT) + max_tokens - 1 or max_tokens == 1
    stopped = run(core, PROMPT, max_tokens=40, stop=["<105>"])
    assert stopped.finish.finish_reason == "stop"
    assert stopped.text == "".join(f"<{t}>" for t in range(100, 105))


def test_off_means_no_guesses(make_core) -> None:
    core, ex = make_core(spec_draft_max=0)
    ex.rule = copies
    result = run(core, PROMPT, max_tokens=20)
    assert result.tokens == expected(copies, PROMPT, 20)
    assert result.timings.draft_n == 0
    assert all(n == 1 for call in ex.calls for _, start, n in call if start >= len(PROMPT))


def test_drafting_stops_when_guesses_miss_and_resumes_when_they_land(make_core) -> None:
    core, ex = make_core(slots=1, spec_draft_max=16)
    # Each verified row costs 40% of a one-row step: only guesses that mostly land pay.
    core.scheduler.spec.cost = CostModel(fixed=(0.006, 0.004))

    def shifted_then_copies(seq: Sequence[int]) -> int:
        n_out = len(seq) - len(PROMPT)
        return seq[-PERIOD] + (1 if n_out < 60 else 0)  # 60 tokens of misses, then copies

    ex.rule = shifted_then_copies
    missing = run(core, PROMPT, max_tokens=60)
    assert missing.timings.draft_n - missing.timings.draft_n_accepted <= 6
    landing = run(core, PROMPT + missing.tokens, max_tokens=120)
    assert landing.tokens == expected(shifted_then_copies, PROMPT + missing.tokens, 120)
    assert landing.timings.draft_n_accepted >= 60


def test_draft_length_follows_acceptance_and_backs_off_under_load() -> None:
    spec = Speculator(draft_max=16)
    spec.cost = CostModel(fixed=(0.010, 0.004))
    assert spec.bet(0.95, 16, tokens=1, rows=1)[0] >= 8
    assert 0 < spec.bet(0.8, 16, tokens=1, rows=1)[0] < spec.bet(0.95, 16, 1, 1)[0]
    assert spec.bet(0.2, 16, tokens=1, rows=1)[0] == 0
    # Eight streams already fill the batch: a guess costs as much as another stream's row.
    assert spec.bet(0.8, 16, tokens=8, rows=8)[0] == 0
    # Nothing measured yet: a plain step first; a clock that never moves: rows are free.
    assert Speculator().bet(0.5, 16, 1, 1)[0] == 0
    free = Speculator()
    free.cost.observe(1, 0.0)
    assert free.bet(0.5, 16, 1, 1)[0] == 16


def test_cost_model_prices_unmeasured_sizes_between_and_beyond_measured_ones() -> None:
    cost = CostModel()
    cost.observe(1, 0.010)
    assert cost.seconds(1) == pytest.approx(0.010)
    # Beyond the largest size: optimistic for a lone stream, proportional for a batch.
    assert cost.seconds(11) == pytest.approx(0.010 + 10 * 0.0025)
    assert cost.seconds(11, explore=False) == pytest.approx(0.110)
    cost.observe(16, 0.090)
    assert cost.seconds(6) == pytest.approx(0.010 + 0.080 * 5 / 15)  # between
    assert cost.seconds(23) == pytest.approx(0.090 + 7 * 0.0025)
    assert cost.seconds(23, explore=False) == pytest.approx(0.090 * 23 / 16)
    cost.observe(17, 0.110)  # shares the measurement of 16 (sizes on a grid)
    assert cost.seconds(16) == pytest.approx((0.090 * 0.9 + 0.110) / 1.9)


def test_guesses_come_from_running_requests_not_finished_ones(make_core) -> None:
    core, ex = make_core(slots=2)
    ex.rule = lambda seq: seq[-1] + 1  # a model that counts
    document = list(range(300, 340))
    run(core, [1, 2] + document, max_tokens=2, id_slot=0)  # slot 0 read it, and finished
    # Slot 1's own text has no earlier occurrence of its last tokens; slot 0's had, but a
    # finished request must not shape another's drafts (its answer would depend on history).
    alone = run(core, [7, 8, 300, 301, 302, 303], max_tokens=20, id_slot=1)
    assert alone.tokens == list(range(304, 324))
    assert alone.timings.draft_n_accepted == 0
    # While slot 0 is still reading the same document, slot 1 drafts from it.
    ex.gate = threading.Event()
    reader = Job(GenerationRequest([1, 2] + document, max_tokens=200), ThreadSink())
    core.submit(reader)
    sink = ThreadSink()
    core.submit(Job(GenerationRequest([7, 8, 300, 301, 302, 303], max_tokens=20), sink))
    ex.gate.set()
    together = collect(thread_events(sink, timeout=10))
    assert together.tokens == list(range(304, 324))
    assert together.timings.draft_n_accepted >= 15


def test_calibrated_costs_stay_put() -> None:
    cost = CostModel()
    cost.calibrate({1: 0.010, 16: 0.090})
    cost.observe(1, 5.0)  # timing noise after load no longer moves decisions
    assert cost.seconds(1) == pytest.approx(0.010)
    assert cost.seconds(32) == pytest.approx(0.090 * 2)  # beyond: per row of the largest
    spec = Speculator(draft_max=16, cost=cost)
    assert spec.bet(0.97, 16, 1, 1)[0] == spec.bet(0.97, 16, 1, 1)[0] > 0


class RuleDrafter:
    """A draft model that guesses with `rule`, the first `wrong_after` guesses of each
    proposal right and the rest off by one; or that fails every decode."""

    def __init__(self, rule: Callable[[Sequence[int]], int], wrong_after: int = 99) -> None:
        self.rule, self.wrong_after = rule, wrong_after
        self.fail = False
        self.attempts = 0
        self.proposals: list[tuple[int, int]] = []  # (sequence length, guesses)

    def propose(self, seq: int, tokens: Sequence[int], k: int) -> list[int]:
        self.attempts += 1
        if self.fail:
            raise DecodeFailed("the draft model's decode failed")
        context, out = list(tokens), []
        for i in range(k):
            token = self.rule(context) + (1 if i >= self.wrong_after else 0)
            out.append(token)
            context.append(token)
        self.proposals.append((len(tokens), len(out)))
        return out

    def seconds(self, k: int) -> float:
        return 0.0

    def calibrate(self) -> None:
        pass


DISTINCT = list(range(100, 140))  # a prompt with nothing to look up


@pytest.mark.parametrize("wrong_after", [99, 3])
def test_a_draft_models_guesses_are_verified_like_any_others(make_core, wrong_after) -> None:
    drafter = RuleDrafter(next_token, wrong_after)
    core, ex = make_core(drafter=drafter, slots=1)
    result = run(core, DISTINCT, max_tokens=60)
    assert result.tokens == expected(next_token, DISTINCT, 60)
    t = result.timings
    assert drafter.proposals and drafter.proposals[0][0] > len(DISTINCT)
    if wrong_after == 99:
        assert t.draft_n_accepted > 30
    else:
        assert 0 < t.draft_n_accepted < t.draft_n
        assert ex.seqs[0] == (DISTINCT + result.tokens)[: len(ex.seqs[0])]


def test_prompt_lookup_goes_first_and_the_draft_fills_in(make_core) -> None:
    # Copying text: prompt lookup's guesses land and the draft model is not asked.
    drafter = RuleDrafter(copies)
    core, ex = make_core(drafter=drafter, slots=1)
    ex.rule = copies
    result = run(core, PROMPT, max_tokens=40)
    assert result.tokens == expected(copies, PROMPT, 40)
    assert result.timings.draft_n_accepted > 20 and not drafter.proposals


def test_the_better_bet_of_lookup_and_draft_model_wins(make_core) -> None:
    # Lookup's guesses land four times in five; a free draft model that is always right
    # promises more once priced rows make the difference, so it takes over.
    drafter = RuleDrafter(copies_but_every_fifth)
    core, ex = make_core(drafter=drafter, slots=1, spec_draft_max=16)
    core.scheduler.spec.cost = CostModel(fixed=(0.006, 0.004))
    ex.rule = copies_but_every_fifth
    result = run(core, PROMPT, max_tokens=120)
    assert result.tokens == expected(copies_but_every_fifth, PROMPT, 120)
    assert len(drafter.proposals) >= 5
    t = result.timings
    assert t.draft_n - t.draft_n_accepted <= 4  # lookup's misses, before the draft took over


def test_a_failing_draft_model_costs_guesses_not_answers(make_core) -> None:
    drafter = RuleDrafter(next_token)
    drafter.fail = True
    core, ex = make_core(drafter=drafter, slots=1)
    result = run(core, DISTINCT, max_tokens=40)
    assert result.finish.finish_reason == "length"
    assert result.tokens == expected(next_token, DISTINCT, 40)
    assert drafter.attempts == 1  # then it was dropped
    assert run(core, DISTINCT, max_tokens=10).tokens == expected(next_token, DISTINCT, 10)
