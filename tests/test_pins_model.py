"""Cache breakpoints with the real bundled model, through the engine's own API (no HTTP):
a request cut at its breakpoint answers the same cached and uncached, and reads the prefix
back exactly up to the breakpoint."""

from __future__ import annotations

import pytest

from runner.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from runner.engine.types import CacheBreakpoint

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine(bundled_model_path):
    eng = Engine(bundled_model_path, EngineConfig(slots=2, ctx_per_slot=1024), name="pins")
    yield eng
    eng.close()


def run(engine: Engine, prompt: list[int], **kwargs):
    kwargs.setdefault("sampling", GREEDY)
    kwargs.setdefault("max_tokens", 12)
    return engine.generate(GenerationRequest(prompt, **kwargs), timeout=300)


def test_a_breakpoint_off_the_block_grid_is_read_back_exactly(engine):
    system = engine.tokenize(" ".join(f"Rule {i}: be brief about {i}." for i in range(30)))
    block = engine.config.prefill_block
    mark = len(system)
    if mark % block == 0:  # the point is a breakpoint inside a block
        system = system[:-1]
        mark -= 1
    tail_a = engine.tokenize(" Question: what is rule 3?", add_special=False)
    tail_b = engine.tokenize(" Question: which rule mentions 17?", add_special=False)
    marks = (CacheBreakpoint(mark, 60.0),)
    reference = run(engine, system + tail_b, breakpoints=marks, cache_prompt=False)
    run(engine, system + tail_a, breakpoints=marks, id_slot=0)
    cached = run(engine, system + tail_b, breakpoints=marks, id_slot=1)  # copied from slot 0
    assert cached.timings.cache_n == mark
    assert cached.tokens == reference.tokens
