"""Constrained sampling on the real bundled model: the sample-first grammar check gives valid
output, its shortlist redraw picks what a whole-vocabulary pass would pick, lazy grammars
wait for their trigger, and a thinking budget forces the end of the thought."""

from __future__ import annotations

import json

import pytest

import runner.engine.sampling as sampling
from runner.chat import schema_to_grammar
from runner.engine import Engine, EngineConfig, GenerationRequest, SamplingParams

pytestmark = [pytest.mark.timeout(600)]

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
PROMPT = "<start_of_turn>user\nWeather for Paris as JSON.<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def engine(bundled_model_path):
    eng = Engine(bundled_model_path, EngineConfig(slots=1, ctx_per_slot=512), name="sampling")
    yield eng
    eng.close()


@pytest.fixture
def counters(monkeypatch):
    """Each finished sampler's (resamples, full passes)."""
    seen: list[tuple[int, int]] = []
    close = sampling.Sampler.close

    def recording_close(self) -> None:
        if self._chain:
            seen.append((self.grammar_resamples, self.grammar_full_passes))
        close(self)

    monkeypatch.setattr(sampling.Sampler, "close", recording_close)
    return seen


def generate(engine: Engine, params: SamplingParams, max_tokens: int = 40):
    prompt = engine.tokenize(PROMPT)
    request = GenerationRequest(prompt, params, max_tokens=max_tokens, cache_prompt=False)
    return engine.generate(request, timeout=300)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0},
        {"temperature": 0.8, "seed": 7, "top_k": 8},
    ],
    ids=["greedy", "seeded"],
)
def test_shortlist_redraw_equals_full_vocabulary_pass(
    engine, counters, monkeypatch, params
) -> None:
    grammar = schema_to_grammar(SCHEMA)
    fast = generate(engine, SamplingParams(**params, grammar=grammar))
    value = json.loads(fast.text)
    assert isinstance(value["city"], str) and isinstance(value["days"], int)
    resamples, _ = counters[-1]
    assert resamples > 0  # the grammar did overrule the model's first choice
    monkeypatch.setattr(sampling, "SHORTLIST", 0)  # always the whole vocabulary
    full = generate(engine, SamplingParams(**params, grammar=grammar))
    assert counters[-1][1] == counters[-1][0] > 0
    assert full.tokens == fast.tokens


def test_lazy_grammar_waits_for_its_trigger(engine) -> None:
    plain = generate(engine, SamplingParams(temperature=0.0), max_tokens=12)
    never = SamplingParams(
        temperature=0.0,
        grammar='root ::= "<tool_call>" [a-z]+',
        grammar_lazy=True,
        grammar_triggers=("<tool_call>",),
    )
    assert generate(engine, never, max_tokens=12).tokens == plain.tokens


def test_thinking_budget_forces_the_end_of_the_thought(engine) -> None:
    grammar = 'root ::= "<think>" [a-z ]+ "</think>" [a-z ]+'
    params = SamplingParams(temperature=0.0, grammar=grammar, reasoning_budget=5)
    text = generate(engine, params, max_tokens=40).text
    assert text.startswith("<think>") and "</think>" in text
    thought = text[len("<think>") : text.index("</think>")]
    assert 1 <= len(engine.tokenize(thought, add_special=False)) <= 5 + 2
