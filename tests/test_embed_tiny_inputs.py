"""Thousands of tiny embedding inputs cannot hold the engine: each is a decode of its own, so
one step takes only the inputs that fit in a short time slice and generation steps come in
between (engine/executor.py); the inputs are tokenized off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import ollama
import openai
import pytest

from runner.engine.context import LlamaContext
from runner.engine.executor import EMBED_STEP_SECONDS, LlamaExecutor
from runner.engine.model import LlamaModel
from runner.engine.stats import EngineStats
from runner.engine.types import EngineConfig

MODEL = "ai/gemma3"


def test_one_step_embeds_only_what_fits_in_its_slice(bundled_model_path: Path) -> None:
    config = EngineConfig(slots=1, ctx_per_slot=256, n_batch=256, n_ubatch=256, threads=1)
    model = LlamaModel(bundled_model_path)
    ctx = LlamaContext(model, 256, 1, 256, 256, 1, kv_unified=False, swa_full=True)
    executor = LlamaExecutor(model, ctx, config, EngineStats())
    try:
        tiny = [[model.bos, 100 + i % 50] for i in range(2000)]  # 2,000 decodes: seconds
        first = executor.embed(tiny)
        assert 1 <= len(first) < len(tiny)  # the rest waits for later steps
        assert EMBED_STEP_SECONDS < 1
        # Later steps go on where it stopped, and an input's vector does not depend on
        # how the inputs were cut into steps.
        rest = executor.embed(tiny[len(first) :])
        alone = executor.embed([tiny[len(first)]])
        assert rest[0] == alone[0]
        assert executor.embed([tiny[0]])[0] == first[0]
    finally:
        executor.close()
        ctx.close()
        model.close()


@pytest.fixture(scope="module")
def embed_server(start_server: Callable[..., object]) -> object:
    return start_server(
        "--model", MODEL, "--slots", "2", "--ctx-size", "512", "--idle-timeout", "-1",
        "--max-embed-tokens", "200000",
    )  # fmt: skip


def test_a_chat_streams_while_hundreds_of_tiny_inputs_are_embedded(embed_server: object) -> None:
    inputs = [f"w{i % 97}" for i in range(400)]  # each a decode: far more than 8 tokens
    result: dict[str, object] = {}

    def embed() -> None:
        result["embed"] = ollama.Client(host=embed_server.url, timeout=900).embed(
            model=MODEL, input=inputs
        )

    worker = threading.Thread(target=embed)
    worker.start()
    try:
        chat = openai.OpenAI(base_url=embed_server.base_url, api_key="none", max_retries=0)
        stream = chat.completions.create(
            model=MODEL, prompt="One, two, three,", max_tokens=8, temperature=0,
            stream=True, extra_body={"ignore_eos": True},
        )  # fmt: skip
        pieces = [c.choices[0].text for c in stream if c.choices]
        assert len([p for p in pieces if p]) >= 1
        assert "embed" not in result  # the answer did not wait for the 400 inputs
    finally:
        worker.join(900)
    vectors = result["embed"].embeddings
    assert len(vectors) == len(inputs)
    alone = ollama.Client(host=embed_server.url, timeout=300).embed(model=MODEL, input=inputs[5])
    assert alone.embeddings[0] == vectors[5]
