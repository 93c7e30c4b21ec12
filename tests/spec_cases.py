"""Prompts and checks shared by the speculative-decoding tests on the real model (prompt
lookup in test_spec_model.py, a draft model in test_draft_model.py)."""

from __future__ import annotations

import pytest

from runner.engine.job import Completion
from runner.engine.types import SamplingParams

FUNCTIONS = "\n\n".join(
    f'def f{i}(x, y):\n    """Combine x and y, variant {i}."""\n    return x * {i} + y'
    for i in range(8)
)
ASK_COPY = f"Here is a module:\n\n```python\n{FUNCTIONS}\n```\n\nRepeat the module exactly."
COPY = f"<start_of_turn>user\n{ASK_COPY}<end_of_turn>\n<start_of_turn>model\n```python\n"
LOOP = ("red green blue yellow " * 6).strip()

# Continuations the model is sure of (copying, a loop), with a stop string and a grammar.
greedy_cases = pytest.mark.parametrize(
    ("prompt", "extra"),
    [
        (COPY, {}),
        (LOOP, {}),
        (COPY, {"stop": ["def f2"]}),
        (COPY, {"sampling": SamplingParams(temperature=0.0, grammar='root ::= [^`]+ "`"')}),
    ],
    ids=["copy", "loop", "stop-string", "grammar"],
)


def assert_same_greedy_output(plain: Completion, guessed: Completion, extra: dict) -> None:
    """`guessed` had guesses verified and kept, and answered exactly as `plain` did."""
    assert plain.timings.draft_n == 0
    assert guessed.timings.draft_n_accepted > 0
    assert guessed.tokens == plain.tokens
    assert guessed.finish.finish_reason == plain.finish.finish_reason
    if "stop" in extra:
        assert guessed.finish.finish_reason == "stop" and "def f2" not in guessed.text
