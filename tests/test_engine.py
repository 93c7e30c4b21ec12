"""The engine against the real bundled model, through its own API (no HTTP).

A note on exactness: llama.cpp's kernels pick code paths by the shape of a decode call, so
a greedy token at a near-tie can flip between batch compositions. A request running alone
makes the same decode calls with or without the cache (engine/partition.py), so those
results are equal on any CPU by construction; under concurrency other requests share the
calls, so the concurrency tests check structure (lengths, finish reasons), not text.
"""

from __future__ import annotations

import threading
import time

import pytest

from runner.engine import (
    Engine,
    EngineConfig,
    GenerationRequest,
    InvalidRequest,
    PromptTooLong,
    QueueFull,
    SamplingParams,
)

GREEDY = SamplingParams(temperature=0.0)


def chat(system: str, user: str) -> str:
    return f"<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def engine(bundled_model_path):
    eng = Engine(bundled_model_path, EngineConfig(slots=4, ctx_per_slot=2048), name="test")
    yield eng
    eng.close()


def run(engine: Engine, prompt: list[int], **kwargs):
    kwargs.setdefault("sampling", GREEDY)
    kwargs.setdefault("max_tokens", 12)
    return engine.generate(GenerationRequest(prompt, **kwargs), timeout=300)


def test_seed_scenario_reuses_the_system_prompt(engine):
    system = "You are a helpful coding assistant."
    first = engine.tokenize(chat(system, "Write a Python function to add two numbers"))
    second = engine.tokenize(chat(system, "Write a Python function to multiply two numbers"))
    other = engine.tokenize(
        chat(
            "You are a sarcastic comedian who makes jokes about everything.", "Explain programming"
        )
    )
    a = run(engine, first)
    assert a.timings.prompt_n == len(first)
    b = run(engine, second)
    assert b.timings.cache_n > 0
    assert b.timings.cache_source == "slot"
    assert b.timings.cache_n + b.timings.prompt_n == len(second)
    c = run(engine, other)
    shared_template = len(engine.tokenize("<start_of_turn>user\n"))
    assert c.timings.cache_n <= shared_template
    assert c.timings.cache_n + c.timings.prompt_n == len(other)


def test_cached_output_equals_uncached_after_trimming_far_back(engine):
    """The SWA trap (engine-facts.md): trimming a long sequence far back must keep the prefix."""
    system = " ".join(f"Rule {i}: answer politely and mention the number {i}." for i in range(90))
    q1 = engine.tokenize(chat(system, "What is rule 7 about?"))
    q2 = engine.tokenize(chat(system, "Summarize rule 12 in one sentence."))
    assert len(q1) > 1000  # well past Gemma 3's 512-token sliding window
    run(engine, q1, max_tokens=24)
    cached = run(engine, q2, max_tokens=24)
    assert cached.timings.cache_n > 900
    uncached = run(engine, q2, max_tokens=24, cache_prompt=False)
    assert uncached.timings.cache_n == 0
    assert cached.text == uncached.text
    assert cached.tokens == uncached.tokens


def test_cached_equals_uncached_with_other_slots_holding_caches(engine):
    prompts = [
        engine.tokenize(chat("You are a helpful assistant.", q))
        for q in ("Name three fruits.", "Name three colors.", "Name three animals.")
    ]
    reference = [run(engine, p, cache_prompt=False, max_tokens=16).text for p in prompts]
    again = [run(engine, p, max_tokens=16) for p in prompts]
    assert [r.text for r in again] == reference
    assert all(r.timings.cache_n > 0 for r in again)


def test_four_concurrent_requests_complete_in_full(engine):
    prompts = [
        engine.tokenize(text)
        for text in (
            "1, 2, 3, 4, 5, 6, 7, 8,",
            "A B C D E F G H I J",
            "Monday, Tuesday, Wednesday,",
            "January, February, March, April,",
        )
    ]
    # ignore_eos: "in full" is 16 tokens even where a greedy answer would end (near-ties
    # differ between one request alone and four sharing a decode).
    full = {"max_tokens": 16, "cache_prompt": False, "ignore_eos": True}
    single = [run(engine, p, **full).tokens for p in prompts]
    results: list[list[int] | None] = [None] * 4

    def worker(i: int) -> None:
        results[i] = run(engine, prompts[i], **full).tokens

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(r or []) for r in results] == [len(t) for t in single] == [16] * 4


def test_max_tokens_and_stop_strings(engine):
    prompt = engine.tokenize("1, 2, 3, 4, 5,")
    limited = run(engine, prompt, max_tokens=3)
    assert limited.finish.finish_reason == "length"
    assert limited.timings.predicted_n == 3
    stopped = run(engine, prompt, max_tokens=40, stop=[" 9"])
    assert stopped.finish.finish_reason == "stop"
    assert "9" not in stopped.text and stopped.text.strip().startswith("6")


def test_generation_stops_at_slot_context_end(bundled_model_path):
    eng = Engine(bundled_model_path, EngineConfig(slots=1, ctx_per_slot=96), name="tiny")
    try:
        prompt = eng.tokenize("Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,")
        result = eng.generate(
            GenerationRequest(prompt, GREEDY, max_tokens=500, ignore_eos=True), timeout=300
        )
        assert result.finish.finish_reason == "length"
        assert len(prompt) + result.timings.predicted_n <= 96
        with pytest.raises(PromptTooLong):
            eng.generate(GenerationRequest(list(prompt) * 10, GREEDY))
    finally:
        eng.close()


def test_seeded_sampling_is_reproducible_and_logit_bias_bans_tokens(engine):
    prompt = engine.tokenize(
        "Once upon a time, in a small village by the sea, there lived an old fisherman."
    )
    params = SamplingParams(temperature=0.9, seed=1234)
    a = run(engine, prompt, sampling=params, cache_prompt=False)
    b = run(engine, prompt, sampling=params, cache_prompt=False)
    assert a.tokens == b.tokens
    cached = run(engine, prompt, sampling=params)  # same seed, prefix from the cache
    assert cached.timings.cache_n > 0
    assert cached.tokens == a.tokens
    greedy = run(engine, prompt, max_tokens=1)
    banned = greedy.tokens[0]
    biased = run(
        engine,
        prompt,
        max_tokens=6,
        sampling=SamplingParams(temperature=0.0, logit_bias={banned: -1e9}),
    )
    assert banned not in biased.tokens


def test_invalid_requests_are_rejected_up_front(engine):
    with pytest.raises(InvalidRequest):
        engine.generate(GenerationRequest([]))
    with pytest.raises(InvalidRequest):
        engine.generate(GenerationRequest([engine.info.n_vocab + 5]))
    with pytest.raises(InvalidRequest):
        engine.generate(GenerationRequest([2, 3], id_slot=99))


def test_queue_bound_and_cancellation_free_the_slot(bundled_model_path):
    eng = Engine(bundled_model_path, EngineConfig(slots=1, ctx_per_slot=512, queue_size=0))
    try:
        import asyncio

        async def scenario() -> None:
            prompt = eng.tokenize("Tell me a long story about a dragon.")
            handle = eng.submit(GenerationRequest(prompt, GREEDY, max_tokens=400, ignore_eos=True))
            events = handle.events()
            await events.__anext__()  # running now
            with pytest.raises(QueueFull):
                eng.submit(GenerationRequest(prompt, GREEDY, max_tokens=4))
            await events.aclose()  # the client goes away
            deadline = time.monotonic() + 60  # the cancel lands at the next step
            while eng.busy and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not eng.busy
            slot = eng.slots()[0]
            assert slot["is_processing"] is False
            assert slot["n_cached_tokens"] >= len(prompt)
            follow = eng.submit(GenerationRequest(prompt, GREEDY, max_tokens=2))
            final = [e async for e in follow][-1]
            assert final.finish_reason == "length"
            assert final.timings.cache_n > 0

        asyncio.run(scenario())
    finally:
        eng.close()


def test_pinned_slot_is_used(engine):
    prompt = engine.tokenize("Hello there")
    result = run(engine, prompt, id_slot=3, max_tokens=2)
    assert result.finish.slot_id == 3


def test_embeddings_are_normalized_and_distinguish_texts(engine):
    import asyncio

    import numpy as np

    result = asyncio.run(
        engine.embed(["the cat sat on the mat", "a cat sits on a mat", "stock prices"])
    )
    arr = np.array(result.vectors)
    assert arr.shape == (3, engine.info.n_embd)
    assert result.timings.prompt_n == sum(result.token_counts)
    assert np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-4)
    assert arr[0] @ arr[1] > arr[0] @ arr[2]


def test_close_without_drain_ends_requests_with_an_error(bundled_model_path):
    eng = Engine(bundled_model_path, EngineConfig(slots=1, ctx_per_slot=512))
    prompt = eng.tokenize("Write a very long essay about the sea.")
    results = []

    def worker() -> None:
        req = GenerationRequest(prompt, GREEDY, max_tokens=400, ignore_eos=True)
        results.append(eng.generate(req, timeout=120))

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + 60
    while not eng.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    eng.close(drain=False)
    thread.join(60)
    assert results and results[0].finish.finish_reason == "error"
    assert results[0].timings.predicted_n < 400
