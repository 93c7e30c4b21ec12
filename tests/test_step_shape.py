"""The shape of each engine step, against the fake executor and llama.cpp's split rules
replayed (`engine/ubatches.py`): decode first, a shared prompt budget, busy slots kept
contiguous, and one common draft length, so a step is as few passes over the weights as
llama.cpp allows."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fake_executor import MakeCore, next_token, running_cores

from runner.cache import CacheKey, PromptCache
from runner.engine.budget import Reading, share_prompt_budget
from runner.engine.core import EngineCore
from runner.engine.job import Completion, Job, ThreadSink, collect, thread_events
from runner.engine.speculation import Speculator
from runner.engine.types import GenerationRequest
from runner.engine.ubatches import count_ubatches, split, ubatch_rows

BLOCK = 16


@pytest.fixture
def make_core() -> Iterator[MakeCore]:
    yield from running_cores({"slots": 4, "ctx_per_slot": 1024, "prefill_block": BLOCK})


def prompt_of(n: int, base: int = 100) -> list[int]:
    return [base + i for i in range(n)]


def expected_output(prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(next_token(seq))
    return seq[len(prompt) :]


def submit(core: EngineCore, prompt: list[int], max_tokens: int) -> ThreadSink:
    sink = ThreadSink()
    core.submit(Job(GenerationRequest(prompt, max_tokens=max_tokens), sink))
    return sink


def wait(sink: ThreadSink) -> Completion:
    return collect(thread_events(sink, timeout=10))


def start_together(core: EngineCore, ex, jobs: Sequence[tuple[list[int], int]]) -> list[Completion]:  # noqa: ANN001
    """Submit all jobs while the first decode is held, so they share steps."""
    ex.gate = threading.Event()
    sinks = [submit(core, prompt, n) for prompt, n in jobs]
    deadline = time.monotonic() + 5
    while core.n_busy + core.n_waiting < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.001)
    ex.gate.set()
    return [wait(s) for s in sinks]


# -- llama.cpp's split rules, replayed ---------------------------------------------------------


def test_split_rules_match_llama_cpp_cases() -> None:
    # Per-slot streams: only consecutive sequence ids, equal tokens from each, share a ubatch.
    assert count_ubatches([(0, 1), (1, 1), (2, 1), (3, 1)], 512) == 1
    assert count_ubatches([(0, 1), (2, 1), (3, 1)], 512) == 2  # slot 1 idle between
    assert count_ubatches([(2, 1), (0, 1), (1, 1)], 512) == 2  # not in sequence order
    assert ubatch_rows([(0, 16), (1, 1), (2, 1), (3, 1)], 512) == [4, 15]  # prompt beside decodes
    assert ubatch_rows([(0, 5), (1, 5), (2, 1)], 512) == [3, 8]  # a verify beside a decode
    assert ubatch_rows([(0, 40)], 16) == [16, 16, 8]
    # One unified buffer: n_ubatch tokens at a time, whatever their sequences.
    assert ubatch_rows([(2, 1), (0, 16), (5, 1)], 512, unified=True) == [18]
    assert ubatch_rows([(0, 40)], 16, unified=True) == [16, 16, 8]


def test_entry_replay_agrees_with_the_token_by_token_replay() -> None:
    rng = random.Random(7)
    for _ in range(500):
        seqs = rng.sample(range(12), rng.randint(1, 8))
        if rng.random() < 0.5:
            seqs.sort()
        entries = [(s, rng.choice([1, 1, 2, 4, 9, 16, 33])) for s in seqs]
        n_ubatch = rng.choice([1, 2, 4, 16, 512])
        unified = rng.random() < 0.3
        tokens = [s for s, n in entries for _ in range(n)]
        by_token = [len(u) for u in split(tokens, n_ubatch, unified)]
        assert ubatch_rows(entries, n_ubatch, unified) == by_token


# -- decode first, prompt budget -----------------------------------------------------------------


def test_generating_slots_get_their_token_before_prompt_pieces(make_core) -> None:
    # A budget of two blocks: two prompts would take it all if they went first.
    core, ex = make_core(n_batch=2 * BLOCK, spec_draft_max=0)
    later = [ThreadSink(), ThreadSink()]

    def arrive_while_generating(n_done: int) -> None:
        if n_done == 4:  # slot 0 is generating by now
            for sink, base in zip(later, (1000, 2000), strict=True):
                core.submit(Job(GenerationRequest(prompt_of(200, base), max_tokens=2), sink))

    ex.before = arrive_while_generating
    result = wait(submit(core, prompt_of(8), 40))
    assert result.tokens == expected_output(prompt_of(8), 40)
    assert [wait(s).tokens for s in later] == [
        expected_output(prompt_of(200, base), 2) for base in (1000, 2000)
    ]
    # From the step the prompts arrived in until slot 0 finished, it got its token in every
    # step (prompt pieces first would have taken the whole budget).
    with_0 = [i for i, c in enumerate(ex.calls) if any(seq == 0 for seq, _, _ in c)]
    arrived = next(i for i, c in enumerate(ex.calls) if any(seq != 0 for seq, _, _ in c))
    assert arrived < with_0[-1]
    assert set(range(arrived, with_0[-1] + 1)) <= set(with_0)
    assert all(sum(n for _, _, n in call) <= 2 * BLOCK for call in ex.calls)


def test_a_prompt_takes_several_blocks_a_step_when_blocks_are_whole_ubatches(make_core) -> None:
    core, ex = make_core(n_batch=4 * BLOCK, n_ubatch=BLOCK, spec_draft_max=0)
    prompt = prompt_of(100)
    result = wait(submit(core, prompt, 3))
    assert result.tokens == expected_output(prompt, 3)
    # Four blocks, then the rest: llama.cpp cuts each call into the same ubatches as one
    # canonical piece per call ([0, 16), ..., [80, 96), [96, 100)).
    assert [c[0][1:] for c in ex.calls[:2]] == [(0, 64), (64, 36)]
    # A cached run continues from a block boundary with the same cuts.
    ex.calls.clear()
    again = wait(submit(core, prompt_of(60) + prompt_of(40, 5000), 3))
    assert again.timings.cache_n == 48
    assert ex.calls[0][0][1:] == (48, 52)


def test_one_block_a_step_when_a_block_is_not_a_whole_ubatch(make_core) -> None:
    core, ex = make_core(n_batch=4 * BLOCK, n_ubatch=512, spec_draft_max=0)
    wait(submit(core, prompt_of(50), 2))
    assert [c[0][1:] for c in ex.calls[:4]] == [(0, 16), (16, 16), (32, 14), (46, 4)]


def test_reading_slots_share_the_budget_round_robin() -> None:
    reads = [Reading(200, 0), Reading(40, 0), Reading(200, 32)]
    # Stackable blocks: every slot gets a block per round while the budget lasts.
    assert share_prompt_budget(reads, 80, BLOCK, BLOCK) == [32, 32, 48]
    # Not stackable: one piece each.
    assert share_prompt_budget(reads, 80, BLOCK, 512) == [16, 16, 48]
    # A budget smaller than all first pieces goes to the oldest first.
    assert share_prompt_budget(reads, 20, BLOCK, 512) == [16, 0, 32]
    # A piece that is not whole ubatches ends the slot's share of the step: 38 tokens are
    # cut 16, 16, 2, 4, and the 4 would not be cut alone after the 2.
    assert share_prompt_budget([Reading(38, 0)], 100, BLOCK, BLOCK) == [34]
    assert share_prompt_budget([Reading(38, 34)], 100, BLOCK, BLOCK) == [38]


# -- contiguous slots, one draft length ----------------------------------------------------------


def test_new_requests_take_the_lowest_free_slot(make_core, tmp_path: Path) -> None:
    cache = PromptCache(CacheKey("m" * 64, "k"), 1 << 20, 1 << 20, tmp_path)
    core, ex = make_core(cache=cache, spec_draft_max=0)
    # One after another, with unrelated prompts: always slot 0, the prefix it held going to
    # the prompt cache (least recently used would rotate through all four, leaving holes
    # between busy slots under load).
    slots = [wait(submit(core, prompt_of(20, 1000 * i), 2)).finish.slot_id for i in range(4)]
    assert slots == [0, 0, 0, 0]
    # Three at once fill slots 0-2; every step of theirs is one ubatch once all generate.
    results = start_together(core, ex, [(prompt_of(20, 7000 + 100 * i), 12) for i in range(3)])
    assert sorted(r.finish.slot_id for r in results) == [0, 1, 2]
    decode_steps = [c for c in ex.calls if all(start >= 20 for _, start, _ in c)]
    assert decode_steps
    assert all(count_ubatches([(s, n) for s, _, n in c], 512) == 1 for c in decode_steps)


def test_without_a_prompt_cache_empty_slots_fill_lowest_first(make_core) -> None:
    core, ex = make_core(spec_draft_max=0)
    slots = [wait(submit(core, prompt_of(20, 1000 * i), 2)).finish.slot_id for i in range(4)]
    assert slots == [0, 1, 2, 3]  # prefixes stay where they are while there is room


PERIOD = 12


def copies(seq: Sequence[int]) -> int:
    return seq[-PERIOD]


def test_drafting_slots_verify_one_common_length(make_core) -> None:
    core, ex = make_core(spec_draft_max=8)
    ex.rule = copies
    prompts = [[base + i for i in range(PERIOD)] * 2 for base in (100, 300, 500)]
    results = start_together(core, ex, [(p, 30 + 7 * i) for i, p in enumerate(prompts)])
    for prompt, result, n in zip(prompts, results, (30, 37, 44), strict=True):
        seq = list(prompt)
        for _ in range(n):
            seq.append(copies(seq))
        assert result.tokens == seq[len(prompt) :]
    assert sum(r.timings.draft_n_accepted for r in results) > 30
    generating = [c for c in ex.calls if all(start >= 2 * PERIOD for _, start, _ in c)]
    multi = [c for c in generating if len(c) > 1]
    assert multi
    for call in multi:  # slots that verify guesses verify as many
        assert len({n for _, _, n in call if n > 1}) <= 1, call


# -- prompt lookup's cost per step ---------------------------------------------------------------


def test_lookup_follows_its_match_and_scans_other_slots_only_when_it_is_short() -> None:
    spec = Speculator(draft_max=8)
    loop = [5, 6, 7, 8, 9] * 4
    own = spec.state(0, job_id=1, prompt=loop)
    other = spec.state(1, job_id=2, prompt=[1, 2, 3, 40, 41, 42])
    scans: list[int] = []
    original = other.index.match

    def counting(context: Sequence[int]) -> tuple[int, int]:
        scans.append(len(context))
        return original(context)

    other.index.match = counting  # type: ignore[method-assign]
    assert spec.guess(0, own, 4) == [5, 6, 7, 8]  # the own loop agrees on more than SHORT
    assert not scans
    matched = own.follow
    own.sync([5, 6])  # the output continues the loop: the match moves along, no lookup
    assert own.follow == matched + 2
    assert spec.guess(0, own, 3) == [7, 8, 9]
    own.sync([5, 6, 1])  # a miss: looked up again next time
    assert own.follow == -1
    fresh = spec.state(2, job_id=3, prompt=[1, 2, 3])  # no own match: other slots are asked
    assert spec.guess(2, fresh, 3, others=False) == []
    assert spec.guess(2, fresh, 3) == [40, 41, 42] and scans
