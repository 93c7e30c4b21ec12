"""A prompt that cannot fit a slot is refused before it is rendered and tokenized whole: more
bytes than the slot's tokens times the vocabulary's longest token text is more tokens than
the slot holds (engine/prompt_size.py). Each dialect answers its own context-length 400."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import llama_cpp
import ollama
import openai
import pytest

from runner.engine.model import LlamaModel
from runner.engine.prompt_size import longest_piece, prompt_byte_bound

MODEL = "ai/gemma3"
CTX = 512


def test_the_bound_is_the_context_times_the_longest_token(bundled_model_path: Path) -> None:
    model = LlamaModel(bundled_model_path)
    try:
        longest = longest_piece(model)
        assert longest is not None
        pieces = [model.piece(t, True) for t in range(0, model.n_vocab, 97)]
        assert max(len(p) for p in pieces) <= longest
        assert prompt_byte_bound(model, CTX) == CTX * longest
        # What the bound promises: text over it has more tokens than the slot.
        text = "x" * (CTX * longest + 1)
        assert len(model.tokenize(text, True, True)) > CTX
        assert llama_cpp.llama_vocab_type(model.vocab) == llama_cpp.LLAMA_VOCAB_TYPE_SPM
    finally:
        model.close()


@pytest.fixture(scope="module")
def bound_server(start_server: Callable[..., object]) -> object:
    return start_server(
        "--model", MODEL, "--slots", "1", "--ctx-size", str(CTX), "--idle-timeout", "-1"
    )  # fmt: skip


def many_messages(n: int = 50_000) -> list[dict[str, str]]:
    """~1.75 MB of chat: 50,000 short turns, the last one the user's."""
    roles = ("assistant", "user")
    return [{"role": roles[(n - i) % 2], "content": f"message {i:05d} of many"} for i in range(n)]


MESSAGES = many_messages()
TOO_LONG = "more tokens than a slot holds"


def test_openai_chat_of_50000_messages_is_a_context_length_400(bound_server: object) -> None:
    client = openai.OpenAI(base_url=bound_server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=TOO_LONG) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"


def test_responses_of_50000_messages_is_a_context_length_400(bound_server: object) -> None:
    client = openai.OpenAI(base_url=bound_server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=TOO_LONG):
        client.responses.create(model=MODEL, input=MESSAGES, max_output_tokens=16)


def test_anthropic_messages_of_50000_turns_is_a_400(bound_server: object) -> None:
    client = anthropic.Anthropic(base_url=bound_server.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match=TOO_LONG) as caught:
        client.messages.create(model=MODEL, max_tokens=4, messages=MESSAGES)
    assert caught.value.body["type"] == "error"


def test_ollama_chat_of_50000_messages_is_a_400(bound_server: object) -> None:
    client = ollama.Client(host=bound_server.url, timeout=120)
    with pytest.raises(ollama.ResponseError, match=TOO_LONG) as caught:
        client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 4})
    assert caught.value.status_code == 400


def test_a_raw_megabyte_prompt_is_refused_untokenized(bound_server: object) -> None:
    client = openai.OpenAI(base_url=bound_server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=TOO_LONG):
        client.completions.create(model=MODEL, prompt="word " * 200_000, max_tokens=4)
    generate = httpx.post(
        bound_server.url + "/api/generate",
        json={"model": MODEL, "prompt": "word " * 200_000, "stream": False},
        timeout=120,
    )
    assert generate.status_code == 400 and TOO_LONG in generate.json()["error"]
    # The server goes on serving prompts that fit.
    ok = client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens == 2
