"""The engine's logic (admission, prompt pieces, prefix reuse, cancellation, queue bounds,
embeddings, failures) against a fake executor: no model, milliseconds per test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_executor import MakeCore, next_token, running_cores

from runner.cache import CacheKey, PromptCache
from runner.engine.core import EngineCore
from runner.engine.job import Completion, EmbedJob, Job, ThreadSink, collect, thread_events
from runner.engine.partition import ExactPrefix, cuts, next_piece, pieces, reusable
from runner.engine.types import (
    EmbeddingsDone,
    EngineDead,
    FinishEvent,
    GenerationRequest,
    QueueFull,
)

BLOCK = 16


@pytest.fixture
def make_core() -> Iterator[MakeCore]:
    defaults = {"slots": 2, "ctx_per_slot": 512, "prefill_block": BLOCK, "min_restore_tokens": 16}
    yield from running_cores(defaults)


def run(core: EngineCore, prompt: list[int], max_tokens: int = 4, **kw) -> Completion:
    sink = ThreadSink()
    core.submit(Job(GenerationRequest(prompt, max_tokens=max_tokens, **kw), sink))
    return collect(thread_events(sink, timeout=10))


def expected_output(prompt: list[int], n: int) -> list[int]:
    seq, out = list(prompt), []
    for _ in range(n):
        token = next_token(seq)
        out.append(token)
        seq.append(token)
    return out


def prompt_of(n: int, base: int = 100) -> list[int]:
    return [base + i for i in range(n)]


# -- the partition ---------------------------------------------------------------------------


def test_prompts_are_cut_by_length_alone() -> None:
    assert cuts(50, 16) == [16, 32, 46, 50]
    assert cuts(36, 16) == [16, 32, 36]
    assert cuts(3, 16) == [3]
    assert pieces(50, 32, 16) == [(32, 46), (46, 50)]
    for n in range(1, 70):  # the next piece alone is the first of the list, from every cut
        for start in [0, *cuts(n, 16)[:-1]]:
            assert next_piece(n, start, 16) == pieces(n, start, 16)[0]
    # A prefix is reused only at a cut both runs made.
    have = ExactPrefix(length=46, cuts=(46,))  # what a 50-token prompt leaves
    assert reusable(have, common=50, n=50, block=16) == 46  # same prompt: all but the tail
    assert reusable(have, common=40, n=60, block=16) == 32
    assert reusable(have, common=31, n=60, block=16) == 16
    assert reusable(ExactPrefix(), common=40, n=60, block=16) == 0


def test_uncached_prompt_runs_in_canonical_pieces(make_core) -> None:
    core, ex = make_core()
    prompt = prompt_of(50)
    result = run(core, prompt, cache_prompt=False)
    assert result.tokens == expected_output(prompt, 4)
    prompt_calls = [c[0] for c in ex.calls if c[0][2] > 1 or c[0][1] < 50]
    assert [(s, n) for _, s, n in prompt_calls[:4]] == [(0, 16), (16, 16), (32, 14), (46, 4)]


def test_cached_runs_repeat_the_uncached_calls(make_core) -> None:
    core, ex = make_core()
    prompt = prompt_of(50)
    first = run(core, prompt)
    assert first.timings.cache_n == 0
    ex.calls.clear()
    again = run(core, prompt)
    assert again.timings.cache_n == 46 and again.timings.cache_source == "slot"
    assert again.tokens == first.tokens
    assert ex.calls[0] == [(again.finish.slot_id, 46, 4)]
    # A longer prompt sharing 40 tokens reuses two blocks and recomputes from 32.
    longer = prompt[:40] + prompt_of(30, base=900)
    ex.calls.clear()
    third = run(core, longer)
    assert third.timings.cache_n == 32
    assert third.tokens == expected_output(longer, 4)


def test_prefix_moves_between_slots_and_through_the_cache(make_core, tmp_path: Path) -> None:
    cache = PromptCache(CacheKey("m" * 64, "k"), 1 << 20, 1 << 20, tmp_path)
    core, ex = make_core(cache=cache, slots=2)
    system = prompt_of(64)
    a = run(core, system + prompt_of(10, 500), id_slot=0)
    b = run(core, system + prompt_of(10, 600), id_slot=1)  # copied from slot 0
    assert b.timings.cache_n == 64 and a.timings.cache_n == 0
    # Push both slots' prefixes out, then come back: the RAM tier restores it.
    run(core, prompt_of(70, 2000), id_slot=0)
    run(core, prompt_of(70, 3000), id_slot=1)
    c = run(core, system + prompt_of(10, 700), id_slot=0)
    assert c.timings.cache_source == "ram" and c.timings.cache_n == 64
    assert c.tokens == expected_output(system + prompt_of(10, 700), 4)


def test_a_disk_hit_is_read_off_the_engine_thread(make_core, tmp_path: Path) -> None:
    key = CacheKey("m" * 64, "k")
    system = prompt_of(64)
    writer = PromptCache(key, 0, 1 << 20, tmp_path)  # no RAM: straight to disk
    import json

    writer.put(system, json.dumps(system).encode())
    assert writer.drain(5)
    cache = PromptCache(key, 1 << 20, 1 << 20, tmp_path)  # a restart
    core, ex = make_core(cache=cache)
    read_by: list[str] = []
    original = cache._load_disk

    def spy(entry):  # noqa: ANN001, ANN202
        read_by.append(threading.current_thread().name)
        return original(entry)

    cache._load_disk = spy  # type: ignore[method-assign]
    prompt = system + prompt_of(8, 500)
    result = run(core, prompt)
    assert result.timings.cache_source == "disk" and result.timings.cache_n == 64
    assert result.tokens == expected_output(prompt, 4)
    assert read_by and all(name.startswith("kv-read") for name in read_by)


# -- admission, cancellation, bounds -------------------------------------------------------------


def test_concurrent_requests_do_not_mix(make_core) -> None:
    core, ex = make_core(slots=3)
    prompts = [prompt_of(20 + 7 * i, base=1000 * (i + 1)) for i in range(5)]
    results: list[Completion | None] = [None] * 5

    def worker(i: int) -> None:
        results[i] = run(core, prompts[i], max_tokens=6)

    ex.gate = threading.Event()  # hold the first decode until everyone has arrived
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while core.n_waiting + core.n_busy < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    ex.gate.set()
    for t in threads:
        t.join(10)
    assert [r.tokens for r in results if r] == [expected_output(p, 6) for p in prompts]
    assert any(len(call) > 1 for call in ex.calls)  # they really shared decodes
    assert not ex.samplers  # every sampler was freed


def test_cancel_mid_prompt_frees_the_slot_within_a_piece(make_core) -> None:
    core, ex = make_core(slots=1, ctx_per_slot=4096)
    sink = ThreadSink()
    job = Job(GenerationRequest(prompt_of(2000), max_tokens=4), sink)

    def cancel_on_third_decode(n_done: int) -> None:
        if n_done == 2:
            core.cancel(job)  # as a client disconnect would, from another thread

    ex.before = cancel_on_third_decode
    core.submit(job)
    final = list(thread_events(sink, timeout=5))[-1]
    assert isinstance(final, FinishEvent) and final.finish_reason == "cancelled"
    assert final.timings.prompt_n == 3 * BLOCK
    ex.before = None
    assert run(core, prompt_of(10), max_tokens=2).finish.finish_reason == "length"


def test_queue_bound(make_core) -> None:
    core, ex = make_core(slots=1, queue_size=1)
    ex.gate = threading.Event()
    sinks = [ThreadSink() for _ in range(2)]
    core.submit(Job(GenerationRequest(prompt_of(8), max_tokens=2), sinks[0]))
    while core.n_busy == 0:
        time.sleep(0.001)
    core.submit(Job(GenerationRequest(prompt_of(8), max_tokens=2), sinks[1]))
    with pytest.raises(QueueFull):
        core.submit(Job(GenerationRequest(prompt_of(8), max_tokens=2), ThreadSink()))
    ex.gate.set()
    for sink in sinks:
        assert collect(thread_events(sink, timeout=5)).finish.finish_reason == "length"


def test_embeddings_count_against_the_queue_bound(make_core) -> None:
    core, ex = make_core(slots=1, queue_size=1)
    ex.gate = threading.Event()
    gen = Job(GenerationRequest(prompt_of(8), max_tokens=2), ThreadSink())
    core.submit(gen)
    while core.n_busy == 0:
        time.sleep(0.001)
    waiting = ThreadSink()
    core.submit(EmbedJob([prompt_of(8)], waiting))
    with pytest.raises(QueueFull):
        core.submit(EmbedJob([prompt_of(8)], ThreadSink()))
    with pytest.raises(QueueFull):
        core.submit(Job(GenerationRequest(prompt_of(8), max_tokens=2), ThreadSink()))
    ex.gate.set()
    assert isinstance(waiting.queue.get(timeout=5), EmbeddingsDone)
    assert collect(thread_events(gen.sink, timeout=5)).finish.finish_reason == "length"  # type: ignore[arg-type]


def test_embeddings_interleave_with_generation(make_core) -> None:
    core, ex = make_core(n_ubatch=32)
    sink = ThreadSink()
    gen = Job(GenerationRequest(prompt_of(8), max_tokens=40), ThreadSink())
    core.submit(gen)
    inputs = [prompt_of(20, base=10 * i) for i in range(6)]
    core.submit(EmbedJob(inputs, sink))
    done = sink.queue.get(timeout=5)
    assert isinstance(done, EmbeddingsDone)
    assert done.vectors == ex.embed(inputs) and done.token_counts == [20] * 6
    assert done.timings.prompt_n == 120
    result = collect(thread_events(gen.sink, timeout=5))  # type: ignore[arg-type]
    assert result.tokens == expected_output(prompt_of(8), 40)


# -- failures --------------------------------------------------------------------------------------


def test_a_failed_decode_ends_only_its_requests(make_core) -> None:
    core, ex = make_core()
    ex.decode_status = 1
    result = run(core, prompt_of(10))
    assert result.finish.finish_reason == "error"
    ex.decode_status = 0
    assert run(core, prompt_of(10)).tokens == expected_output(prompt_of(10), 4)


def test_a_crashed_step_kills_the_core_and_refuses_work(make_core) -> None:
    core, ex = make_core()
    ex.fail_with = RuntimeError("boom")
    result = run(core, prompt_of(10))
    assert result.finish.finish_reason == "error"
    assert isinstance(result.finish.error, EngineDead)
    assert core.dead is not None and "boom" in core.dead
    assert not core.busy  # so the loader may replace it
    with pytest.raises(EngineDead):
        core.submit(Job(GenerationRequest(prompt_of(4)), ThreadSink()))
    with pytest.raises(EngineDead):
        core.call(lambda: 1).result(1)


def test_n_choices_compute_the_prompt_once(make_core) -> None:
    core, ex = make_core(slots=3)
    prompt = prompt_of(40)
    sinks = [ThreadSink() for _ in range(3)]
    jobs = [Job(GenerationRequest(prompt, max_tokens=5), sink) for sink in sinks]
    jobs[0].followers = jobs[1:]
    core.submit(jobs[0])
    results = [collect(thread_events(sink, timeout=5)) for sink in sinks]
    assert [r.tokens for r in results] == [expected_output(prompt, 5)] * 3
    prompt_rows = sum(n for call in ex.calls for _, start, n in call if start < len(prompt))
    assert prompt_rows == len(prompt)  # computed once, copied to the other two slots
    assert results[0].timings.prompt_n == len(prompt)
    assert [r.timings.cache_n for r in results[1:]] == [len(prompt)] * 2
    assert len({r.finish.slot_id for r in results}) == 3
    assert not ex.samplers


def test_n_choices_wait_for_enough_free_slots(make_core) -> None:
    core, ex = make_core(slots=2)
    busy = Job(GenerationRequest(prompt_of(8), max_tokens=30), ThreadSink())
    core.submit(busy)
    sinks = [ThreadSink(), ThreadSink()]
    pair = [Job(GenerationRequest(prompt_of(20, 700), max_tokens=3), s) for s in sinks]
    pair[0].followers = [pair[1]]
    core.submit(pair[0])
    results = [collect(thread_events(sink, timeout=5)) for sink in sinks]
    assert [r.finish.finish_reason for r in results] == ["length", "length"]
    assert collect(thread_events(busy.sink, timeout=5)).finish.finish_reason == "length"  # type: ignore[arg-type]


def test_special_tokens_render_as_text_when_asked(make_core) -> None:
    """Tool-call markers are special tokens in some vocabularies: a request that parses them
    gets their text, others get the plain rendering."""
    core, ex = make_core()
    plain = run(core, prompt_of(8), max_tokens=2)
    marked = run(core, prompt_of(8), max_tokens=2, render_special=True)
    assert plain.tokens == marked.tokens
    assert plain.text == "".join(f"<{t}>" for t in plain.tokens)
    assert marked.text == "".join(f"[{t}]" for t in marked.tokens)
