"""The three example curl requests runner was specified with, against a fresh server.

The bodies are the originals, with the model renamed to `ai/gemma3` and one addition:
`"max_tokens": 8`. Without it the bundled base model rarely emits an end-of-turn token and
would generate to the end of the slot's context (minutes on a 2-core test box); the prompt
side, which is what `timings.cache_n` measures, is unaffected.
"""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_TOKENS = 8  # see the module docstring

REQUEST_1 = {
    "model": "ai/gemma3",
    "messages": [
        {"role": "system", "content": "You are a helpful coding assistant."},
        {"role": "user", "content": "Write a Python function to add two numbers"},
    ],
}
REQUEST_2 = {
    "model": "ai/gemma3",
    "messages": [
        {"role": "system", "content": "You are a helpful coding assistant."},
        {"role": "user", "content": "Write a Python function to multiply two numbers"},
    ],
}
REQUEST_3 = {
    "model": "ai/gemma3",
    "messages": [
        {
            "role": "system",
            "content": "You are a sarcastic comedian who makes jokes about everything.",
        },
        {"role": "user", "content": "Explain what programming is"},
    ],
}


@pytest.fixture(scope="module")
def fresh_server(start_server):
    """Its own server: the first request must find every cache empty."""
    handle = start_server("--model", "ai/gemma3", "--slots", "4", "--ctx-size", "2048")
    yield handle
    handle.stop()


def _send(server, body: dict) -> dict:
    r = httpx.post(
        server.url + "/engines/llama.cpp/v1/chat/completions",
        json={**body, "max_tokens": MAX_TOKENS},
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_seed_cache_timings(fresh_server) -> None:
    first = _send(fresh_server, REQUEST_1)
    t1 = first["timings"]
    assert t1["cache_n"] == 0
    assert t1["prompt_n"] == first["usage"]["prompt_tokens"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    second = _send(fresh_server, REQUEST_2)
    t2 = second["timings"]
    prompt_tokens = second["usage"]["prompt_tokens"]
    assert t2["cache_n"] > 0
    assert t2["cache_n"] + t2["prompt_n"] == prompt_tokens
    # Everything up to "...function to" is shared: well over half of the prompt.
    assert t2["cache_n"] >= prompt_tokens // 2
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == t2["cache_n"]

    third = _send(fresh_server, REQUEST_3)
    t3 = third["timings"]
    assert t3["cache_n"] + t3["prompt_n"] == third["usage"]["prompt_tokens"]
    # Only the template's opening (<bos><start_of_turn>user\n) and the words "You are a"
    # are shared with the earlier prompts.
    assert t3["cache_n"] <= 8
    assert t3["cache_n"] < t2["cache_n"]
