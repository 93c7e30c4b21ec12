"""Speculative decoding with the bundled model, in-process: greedy outputs with and without
guesses, the sampled distribution, and the slot after rolled-back guesses.

Guesses are verified in one decode of several rows, and llama.cpp's CPU kernels round a
row differently with the batch's shape (docs/engine-notes.md), so equality with one-token
decoding is asserted for continuations the model is sure of (copying its input, continuing a loop);
elsewhere the tests check structure. Every test forces drafting (no adaptivity) so that
guesses are really verified, whatever this machine's timings say.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from spec_cases import ASK_COPY, assert_same_greedy_output, greedy_cases

from runner.engine import Engine, EngineConfig
from runner.engine.job import Completion
from runner.engine.partition import TAIL
from runner.engine.scheduler import Scheduler
from runner.engine.types import GenerationRequest, SamplingParams


@pytest.fixture(scope="module")
def engine(bundled_model_path: Path) -> Iterator[Engine]:
    config = EngineConfig(slots=2, ctx_per_slot=1024, threads=1, spec_adaptive=False)
    eng = Engine(bundled_model_path, config, name="gemma3-spec")
    yield eng
    eng.close()


def speculate(engine: Engine, draft_max: int) -> None:
    def set_draft_max(scheduler: Scheduler) -> None:
        scheduler.spec.draft_max = draft_max

    engine.call_with_scheduler(set_draft_max).result(10)


def generate(engine: Engine, prompt: str, draft_max: int, **kw) -> Completion:
    speculate(engine, draft_max)
    sampling = kw.pop("sampling", SamplingParams(temperature=0.0))
    request = GenerationRequest(engine.tokenize(prompt), sampling, id_slot=0, **kw)
    return engine.generate(request, timeout=300)


@greedy_cases
def test_greedy_output_is_the_same_with_and_without_guesses(engine, prompt, extra) -> None:
    plain = generate(engine, prompt, 0, max_tokens=64, cache_prompt=False, **extra)
    fast = generate(engine, prompt, 16, max_tokens=64, cache_prompt=False, **extra)
    assert_same_greedy_output(plain, fast, extra)


def test_free_text_keeps_its_structure(engine) -> None:
    prompt = "The history of the Roman empire"
    plain = generate(engine, prompt, 0, max_tokens=40, cache_prompt=False, ignore_eos=True)
    fast = generate(engine, prompt, 16, max_tokens=40, cache_prompt=False, ignore_eos=True)
    assert len(fast.tokens) == len(plain.tokens) == 40
    assert fast.timings.predicted_n == 40
    assert 0 <= fast.timings.draft_n_accepted <= fast.timings.draft_n


ROLLBACK_PROMPTS = (
    "red green blue red green blue red green blue red green",
    "<start_of_turn>user\nWrite the word 'hello' twenty times.<end_of_turn>\n"
    "<start_of_turn>model\n",
    "the cat sat on the mat. the cat sat on the hat. the cat sat on the",
)


def test_rolled_back_slot_is_reused_exactly(engine) -> None:
    # The first prompt whose guesses were partly rejected (each is, with this model).
    for prompt in ROLLBACK_PROMPTS:
        reference = generate(engine, prompt, 0, max_tokens=48, cache_prompt=False)
        guessed = generate(engine, prompt, 16, max_tokens=48, cache_prompt=False)
        if guessed.timings.draft_n > guessed.timings.draft_n_accepted:
            break
    else:
        pytest.fail("no prompt had a rejected guess")
    again = generate(engine, prompt, 0, max_tokens=48)
    n_prompt = len(engine.tokenize(prompt))
    assert again.timings.cache_n == n_prompt - TAIL and again.timings.cache_source == "slot"
    assert again.tokens == reference.tokens


def _chi2_quantile(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z=3.09: p = 0.001)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def test_sampled_tokens_keep_the_target_distribution(engine) -> None:
    # A repetitive prompt, so the second token always has a guess to accept or reject.
    prompt = "red green blue red green blue red green blue red green"
    n = 150
    counts: list[Counter[tuple[int, ...]]] = []
    drafted = 0
    for draft_max, seeds in ((0, range(n)), (16, range(n, 2 * n))):
        hist: Counter[tuple[int, ...]] = Counter()
        for seed in seeds:
            sampling = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
            # Three tokens: the first comes with the prompt, the second may be a guess.
            out = generate(engine, prompt, draft_max, max_tokens=3, sampling=sampling)
            hist[tuple(out.tokens[:2])] += 1
            drafted += out.timings.draft_n
        counts.append(hist)
    assert drafted >= n // 2  # the second token was mostly a verified guess
    # Two-sample chi-square over the (first, second) token pairs; rare pairs pooled.
    keys = [k for k in counts[0] | counts[1] if counts[0][k] + counts[1][k] >= 10]
    table = [[c[k] for k in keys] + [n - sum(c[k] for k in keys)] for c in counts]
    totals = [a + b for a, b in zip(*table, strict=True)]
    stat = sum(
        (row[i] - totals[i] / 2) ** 2 / (totals[i] / 2)
        for row in table
        for i in range(len(totals))
        if totals[i]
    )
    df = sum(1 for t in totals if t) - 1
    assert df >= 2, counts  # the distribution is spread enough to test
    assert stat < _chi2_quantile(df), (stat, df, counts)


def test_http_reports_draft_counts(server) -> None:
    import openai
    from server_proc import http, metric

    client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=300, max_retries=0)
    with http(server) as raw:
        before = metric(raw, "runner:draft_tokens_total")
        kept_before = metric(raw, "runner:draft_tokens_accepted_total")
        reply = client.chat.completions.create(
            model="ai/gemma3",
            messages=[{"role": "user", "content": ASK_COPY}],
            max_tokens=48,
            temperature=0,
        )
        timings = (reply.model_extra or {})["timings"]
        assert 0 <= timings["draft_n_accepted"] <= timings["draft_n"]
        assert metric(raw, "runner:draft_tokens_total") - before == timings["draft_n"]
        kept = metric(raw, "runner:draft_tokens_accepted_total") - kept_before
        assert kept == timings["draft_n_accepted"]
