"""Log-probabilities and `n` choices through the `openai` client against a real server, and
the logprob values against an independent log-softmax of the model's logits."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import openai
import pytest

from runner.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from runner.engine.context import Batch, LlamaContext
from runner.engine.model import LlamaModel
from runner.engine.partition import pieces

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "ai/gemma3"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colors."},
]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=300, max_retries=0)


def test_chat_logprobs_streamed_and_not(client: openai.OpenAI) -> None:
    # ignore_eos: exactly 5 tokens, whatever this CPU's greedy answer is.
    resp = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True},
    )  # fmt: skip
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens == 5
    assert "".join(entry.token for entry in content) == resp.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # Greedy draws the most likely token.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=3, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    streamed = [
        e for chunk in stream for c in chunk.choices if c.logprobs for e in c.logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_completion_logprobs(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=4,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert all(len(alts) == 2 for alts in lp.top_logprobs)


def test_n_choices_share_one_prompt_computation(client: openai.OpenAI, server) -> None:
    body = {
        "model": MODEL, "messages": MESSAGES, "max_tokens": 6, "n": 3,
        "temperature": 1.0, "seed": 7, "cache_prompt": False,
        "ignore_eos": True,  # a sampled end of turn would shorten a choice
    }  # fmt: skip
    raw = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=300).json()
    prompt = raw["usage"]["prompt_tokens"]
    assert [c["index"] for c in raw["choices"]] == [0, 1, 2]
    assert raw["timings"]["prompt_n"] == prompt  # once, not three times
    assert raw["usage"]["completion_tokens"] == 18
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, n=2, stream=True, temperature=1.0
    )
    finished = {c.index for chunk in stream for c in chunk.choices if c.finish_reason}
    assert finished == {0, 1}


def test_bad_logprob_and_n_requests(server) -> None:
    url = f"{server.base_url}/chat/completions"
    base = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    for extra in ({"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}, {"n": 9}):
        r = httpx.post(url, json={**base, **extra}, timeout=60)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["message"]


def test_logprob_equals_log_softmax_of_the_logits(bundled_model_path) -> None:
    """The first token's reported logprob against an independent computation: the same
    prompt pieces decoded in a fresh context, log-softmax in float64."""
    config = EngineConfig(slots=1, ctx_per_slot=256, threads=2)
    engine = Engine(bundled_model_path, config, name="lp")
    try:
        prompt = engine.tokenize("The quick brown fox jumps over the lazy dog because")
        request = GenerationRequest(
            prompt, SamplingParams(temperature=0, n_probs=0), max_tokens=1, cache_prompt=False
        )

        async def first_logprob() -> tuple[int, float]:
            handle = engine.submit(request)
            async for event in handle:
                if getattr(event, "logprobs", ()):
                    return event.token_ids[0], event.logprobs[0].logprob
            raise AssertionError("no logprob reported")

        token, reported = asyncio.run(first_logprob())
    finally:
        engine.close()
    model = LlamaModel(bundled_model_path, 0)
    ctx = LlamaContext(model, 256, 1, 2048, 512, 2, kv_unified=False, swa_full=True)
    batch = Batch(256)
    for a, b in pieces(len(prompt), 0, config.prefill_block):
        batch.clear()
        last = batch.add(prompt[a:b], a, 0, b == len(prompt))
        batch.struct.n_tokens = batch.n
        assert ctx.decode(batch.struct) == 0
    import llama_cpp

    logits = np.ctypeslib.as_array(
        llama_cpp.llama_get_logits_ith(ctx.handle, last), shape=(model.n_vocab,)
    ).astype(np.float64)
    expected = logits[token] - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    ctx.close()
    model.close()
    assert int(np.argmax(logits)) == token
    assert reported == pytest.approx(expected, abs=1e-4)
