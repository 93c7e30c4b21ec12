"""Cache breakpoints through the engine's logic (fake executor, real prompt cache): the
prompt is cut at each breakpoint, the prefix up to it is pinned, what a request wrote and
read is counted, and a cache key steers slot choice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_executor import MakeCore, running_cores
from test_scheduler import expected_output, prompt_of, run

from runner.cache import CacheKey, PromptCache
from runner.engine.types import CacheBreakpoint

BLOCK = 16


@pytest.fixture
def make_core() -> Iterator[MakeCore]:
    defaults = {"slots": 1, "ctx_per_slot": 512, "prefill_block": BLOCK, "min_restore_tokens": 16}
    yield from running_cores(defaults)


def test_breakpoint_cuts_pins_and_counts(make_core, tmp_path: Path) -> None:
    cache = PromptCache(CacheKey("m" * 64, "k"), 1 << 20, 1 << 20, tmp_path)
    core, ex = make_core(cache=cache)
    system = prompt_of(40)
    first = system + prompt_of(60, 500)
    mark = (CacheBreakpoint(40, 300.0),)
    a = run(core, first, breakpoints=mark)
    ends = [start + n for (_, start, n), *_ in ex.calls if start < 100]
    assert 40 in ends and a.timings.cache_n == 0
    assert a.timings.cache_written == (40,) and a.timings.pins_yielded == 0
    (pin,) = cache.pins()
    assert pin["tokens"] == 40 and pin["ttl"] == 300.0 and pin["tier"] is None  # in the slot
    run(core, prompt_of(80, 3000))  # takes the only slot: the pinned prefix goes to RAM
    assert cache.pins()[0]["tier"] == "ram"
    # The same system prompt, another question: read back through the breakpoint.
    second = system + prompt_of(30, 900)
    b = run(core, second, breakpoints=mark)
    assert b.timings.cache_source == "ram" and b.timings.cache_n == 40
    assert b.timings.cache_written == (0,) and b.tokens == expected_output(second, 4)
    assert cache.pins()[0]["hits"] == 1
    # Without the breakpoint the prompt is cut by blocks alone: reuse stops at the block
    # the breakpoint split.
    run(core, prompt_of(80, 3000))
    c = run(core, system + prompt_of(30, 1900))
    assert c.timings.cache_n == 32


def test_written_tokens_per_breakpoint(make_core, tmp_path: Path) -> None:
    cache = PromptCache(CacheKey("m" * 64, "k"), 1 << 20, 1 << 20, tmp_path)
    core, _ = make_core(cache=cache)
    prompt = prompt_of(120)
    marks = (CacheBreakpoint(70, 3600.0), CacheBreakpoint(20, 300.0), CacheBreakpoint(8, 300.0))
    a = run(core, prompt, breakpoints=marks)
    # 8 is below min_restore_tokens: nothing is kept there; 20 wrote 20 (nothing before it
    # was kept), 70 wrote the 50 after 20.
    assert a.timings.cache_written == (50, 20, 0)
    assert sorted(p["tokens"] for p in cache.pins()) == [20, 70]
    assert {p["ttl"] for p in cache.pins()} == {300.0, 3600.0}
    # Past the prompt's last reusable token: pinned up to it (all but the last 4).
    b = run(core, prompt_of(50, 5000), breakpoints=(CacheBreakpoint(50, 300.0),))
    assert b.timings.cache_written == (46,)
    # Two breakpoints at one place: its tokens are written once.
    twice = (CacheBreakpoint(40, 300.0), CacheBreakpoint(40, 3600.0))
    c = run(core, prompt_of(60, 7000), breakpoints=twice)
    assert c.timings.cache_written == (40, 0)


def test_a_cache_key_brings_the_request_back_to_its_slot(make_core) -> None:
    core, _ = make_core(slots=3)
    a = run(core, prompt_of(40, 100), cache_key="agent-a", id_slot=2)
    assert a.finish.slot_id == 2
    # A prompt sharing nothing with any slot goes to another (an empty one, the lowest).
    plain = run(core, prompt_of(40, 300))
    assert plain.finish.slot_id == 0
    again = run(core, prompt_of(40, 400), cache_key="agent-a")
    assert again.finish.slot_id == 2
    # Another key, or none, is not pulled there.
    other = run(core, prompt_of(40, 500), cache_key="agent-b")
    assert other.finish.slot_id != 2


def test_a_sliding_window_state_is_saved_up_to_its_breakpoint(make_core, tmp_path: Path) -> None:
    """A saved sliding-window state cannot be cut back, so it ends where a later prompt is
    cut too: a block boundary, or a breakpoint past it (where the pin ends)."""
    cache = PromptCache(CacheKey("m" * 64, "k"), 1 << 20, 1 << 20, tmp_path)
    core, ex = make_core(cache=cache)
    ex.window = 512  # what LlamaExecutor reports for a sliding-window model
    prompt = prompt_of(71)  # all but the last 4: 67; whole blocks: 64
    mark = (CacheBreakpoint(66, 300.0),)
    run(core, prompt, breakpoints=mark)
    run(core, prompt_of(80, 3000))  # takes the only slot: its state is saved
    (pin,) = cache.pins()
    assert pin["tokens"] == 66 and pin["tier"] == "ram"
    again = run(core, prompt[:66] + prompt_of(20, 900), breakpoints=mark)
    assert again.timings.cache_source == "ram" and again.timings.cache_n == 66
