"""The engine's per-token shortcuts on the real bundled model: a greedy request without bias,
penalties, grammar or thinking budget draws by argmax instead of the sampler chain, and
log-probabilities come from one float32 pass; both give what the full paths give. And
end to end: a request's timings report the engine steps and ubatches per step."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import llama_cpp
import numpy as np
import pytest

from runner.engine.context import Batch, LlamaContext
from runner.engine.executor import LlamaExecutor
from runner.engine.model import LlamaModel
from runner.engine.sampling import Sampler
from runner.engine.stats import EngineStats
from runner.engine.types import EngineConfig, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def decoded(bundled_model_path) -> Iterator[tuple[LlamaModel, LlamaContext, int]]:
    """A context holding the prompt, with logits at every row; yields its row count."""
    model = LlamaModel(bundled_model_path, 0)
    ctx = LlamaContext(model, 256, 1, 256, 256, 2, kv_unified=False, swa_full=True)
    tokens = model.tokenize(PROMPT, add_special=True, parse_special=False)
    batch = Batch(256)
    last = batch.add(tokens, 0, 0, True)
    batch.logits[: last + 1] = 1
    batch.struct.n_tokens = batch.n
    assert ctx.decode(batch.struct) == 0
    yield model, ctx, len(tokens)
    ctx.close()
    model.close()


def test_greedy_argmax_draws_what_the_chain_draws(decoded) -> None:
    model, ctx, n = decoded
    fast = Sampler(model, SamplingParams(temperature=0.0))
    # A zero bias changes no logit but takes the llama.cpp chain.
    chain = Sampler(model, SamplingParams(temperature=0.0, logit_bias={0: 0.0}))
    assert fast._argmax and not chain._argmax
    try:
        for row in range(n):
            assert fast.sample(ctx.handle, row) == chain.sample(ctx.handle, row)
    finally:
        fast.close()
        chain.close()
    for params in (
        SamplingParams(temperature=0.0, repeat_penalty=1.1),
        SamplingParams(temperature=0.0, grammar='root ::= "a"'),
        SamplingParams(temperature=0.0, reasoning_budget=4),
        SamplingParams(temperature=0.7),
    ):
        sampler = Sampler(model, params)
        assert not sampler._argmax, params
        sampler.close()


def test_logprobs_match_a_float64_log_softmax(decoded) -> None:
    model, ctx, n = decoded
    executor = LlamaExecutor(model, ctx, EngineConfig(slots=1, ctx_per_slot=256), EngineStats())
    for row in (0, n // 2, n - 1):
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(ctx.handle, row), shape=(model.n_vocab,)
        ).astype(np.float64)
        log_z = logits.max() + np.log(np.exp(logits - logits.max()).sum())
        token = int(logits.argmax())
        result = executor._logprob(row, token, 5)
        assert result.logprob == pytest.approx(logits[token] - log_z, abs=1e-5)
        expected_top = np.argsort(-logits, kind="stable")[:5]
        assert [t for t, _ in result.top] == [int(t) for t in expected_top]
        assert [lp for _, lp in result.top] == pytest.approx(
            list(logits[expected_top] - log_z), abs=1e-5
        )


def test_timings_report_steps_and_ubatches_per_step(server) -> None:
    body = {
        "model": "ai/gemma3",
        "prompt": PROMPT,
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    with httpx.Client(base_url=server.url, timeout=300) as client:
        reply = client.post("/engines/llama.cpp/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        timings = reply.json()["timings"]
        # A request alone: every step is one ubatch (its prompt pieces and its tokens).
        assert timings["n_steps"] >= 2 and timings["ubatches_per_step"] == 1.0
        metrics = client.get("/metrics").text
    assert "runner:ubatches_total" in metrics and "runner:steps_total" in metrics
