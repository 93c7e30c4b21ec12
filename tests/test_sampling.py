"""Constrained sampling on the real bundled model: the sample-first grammar check gives valid
output, its shortlist redraw picks what a whole-vocabulary pass would pick, lazy grammars
wait for their trigger, and a thinking budget forces the end of the thought."""

from __future__ import annotations

import json

import llama_cpp
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


def generate(engine: Engine, params: SamplingParams, max_tokens: int = 40, **kw):
    prompt = engine.tokenize(PROMPT)
    request = GenerationRequest(prompt, params, max_tokens=max_tokens, cache_prompt=False, **kw)
    return engine.generate(request, timeout=300)


@pytest.fixture
def reference_draws(monkeypatch):
    """Checks every constrained draw against a whole-vocabulary redraw made on the same
    logits with clones of the grammar and chain (same random state): (draws, redraws,
    mismatches)."""
    seen = {"draws": 0, "redraws": 0, "mismatches": 0}
    real = sampling.Sampler._sample_constrained

    def checked(self, ctx, index):
        candidates = self._candidates
        grammar = llama_cpp.llama_sampler_clone(self._grammar)
        chain = llama_cpp.llama_sampler_clone(self._chain)
        try:
            llama_cpp.llama_sampler_apply(chain, candidates.fill(ctx, index))
            expected = candidates.selected()
            if not candidates.allows(grammar, expected):
                seen["redraws"] += 1
                cur = candidates.fill(ctx, index)
                llama_cpp.llama_sampler_apply(grammar, cur)
                llama_cpp.llama_sampler_apply(chain, cur)
                expected = candidates.selected()
        finally:
            llama_cpp.llama_sampler_free(grammar)
            llama_cpp.llama_sampler_free(chain)
        token = real(self, ctx, index)
        seen["draws"] += 1
        seen["mismatches"] += token != expected
        return token

    monkeypatch.setattr(sampling.Sampler, "_sample_constrained", checked)
    return seen


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0},
        {"temperature": 0.8, "seed": 7, "top_k": 8},
    ],
    ids=["greedy", "seeded"],
)
def test_shortlist_redraw_equals_full_vocabulary_pass(
    engine, counters, reference_draws, params
) -> None:
    result = generate(engine, SamplingParams(**params, grammar=schema_to_grammar(SCHEMA)))
    value = json.loads(result.text)
    assert isinstance(value["city"], str) and isinstance(value["days"], int)
    resamples, full_passes = counters[-1]
    assert resamples > 0  # the grammar did overrule the model's first choice
    assert full_passes < resamples  # ...and the shortlist served at least once
    assert reference_draws["redraws"] == resamples
    assert reference_draws["draws"] == result.timings.predicted_n
    assert reference_draws["mismatches"] == 0


def test_lazy_grammar_waits_for_its_trigger(engine) -> None:
    never = SamplingParams(
        temperature=0.0,
        grammar='root ::= "<tool_call>" [a-z]+',
        grammar_lazy=True,
        grammar_triggers=("<tool_call>",),
    )
    result = generate(engine, never, max_tokens=12, ignore_eos=True)
    assert result.timings.predicted_n == 12 and "<tool_call>" not in result.text


def test_thinking_budget_forces_the_end_of_the_thought(engine) -> None:
    grammar = 'root ::= "<think>" [a-z ]+ "</think>" [a-z ]+'
    params = SamplingParams(temperature=0.0, grammar=grammar, reasoning_budget=5)
    text = generate(engine, params, max_tokens=40).text
    assert text.startswith("<think>") and "</think>" in text
    thought = text[len("<think>") : text.index("</think>")]
    assert 1 <= len(engine.tokenize(thought, add_special=False)) <= 5 + 2


def test_lazy_grammar_takes_over_after_its_trigger(engine) -> None:
    plain = generate(engine, SamplingParams(temperature=0.0), max_tokens=16)
    pieces = [engine.piece_bytes(t).decode("utf-8", "replace") for t in plain.tokens]
    # The first word the model writes by itself (an early one: the greedy start of an
    # answer does not change from run to run): the trigger.
    k = next(i for i, piece in enumerate(pieces) if piece.strip().isalpha())
    before = "".join(pieces[: k + 1])
    lazy = SamplingParams(
        temperature=0.0,
        grammar=f'root ::= "{pieces[k]}" [0-9] [0-9] [0-9]',
        grammar_lazy=True,
        grammar_triggers=(pieces[k],),
    )
    result = generate(engine, lazy, max_tokens=16)
    assert result.text.startswith(before)  # free until the trigger...
    assert result.text[len(before) :].isdigit()  # ...then the grammar's, to its end
    assert len(result.text) - len(before) == 3


def test_a_trigger_whose_token_does_not_fit_drops_the_grammar(engine) -> None:
    plain = generate(engine, SamplingParams(temperature=0.0), max_tokens=8, ignore_eos=True)
    pieces = [engine.piece_bytes(t).decode("utf-8", "replace") for t in plain.tokens]
    word = next(p for p in pieces if len(p.strip()) >= 3 and p.strip().isalpha())
    trigger = word[: len(word) - len(word.lstrip()) + 2]  # the word's first two letters
    # llama.cpp would replay the whole token ("Okay" for trigger "Ok") into a grammar that
    # wants digits after the trigger, and abort. The guard drops the grammar instead.
    lazy = SamplingParams(
        temperature=0.0,
        grammar=f'root ::= "{trigger}" [0-9]+',
        grammar_lazy=True,
        grammar_triggers=(trigger,),
    )
    result = generate(engine, lazy, max_tokens=8, ignore_eos=True)
    assert result.timings.predicted_n == 8
    assert word in result.text
