"""The server's log, read as an operator would: one JSON line per finished request with the
same token counts as the response's `timings`, and no prompt or answer text by default."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ollama
import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "ai/gemma3"
NONCE = "quokka sapphire lantern"  # in every prompt, never in the log


def log_entries(server: Any) -> list[dict[str, Any]]:
    """The server's JSON log lines (anything else on its output, e.g. llama.cpp's, skipped)."""
    entries = []
    for line in server.logs().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_request_lines_match_timings(start_server: Callable[..., Any]) -> None:
    server = start_server(
        "--model", MODEL, "--slots", "1", "--ctx-size", "512", "--log-format", "json"
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=120)
        prompt = f"{NONCE}: the first line of a long poem about the sea"
        timings = []
        for _ in range(2):  # the second run finds the prompt cached in the slot
            answer = client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=4, extra_body={"ignore_eos": True}
            )
            timings.append(answer.model_extra["timings"])
        assert timings[1]["cache_n"] > 0
        chat = ollama.Client(host=server.url).generate(
            model=MODEL, prompt=prompt, options={"num_predict": 3}
        )
        entries = log_entries(server)
    finally:
        server.stop()
    done = [e for e in entries if e["message"] == "request done"]
    assert [e["dialect"] for e in done] == ["openai", "openai", "ollama"]
    for entry, t in zip(done, timings, strict=False):
        assert entry["model"].startswith(MODEL) and entry["logger"] == "runner.requests"
        assert entry["cached_tokens"] == t["cache_n"]
        assert entry["computed_tokens"] == t["prompt_n"]
        assert entry["generated_tokens"] == t["predicted_n"] == 4
        assert entry["prompt_tokens"] == t["cache_n"] + t["prompt_n"]
        assert entry["cache_source"] == t["cache_source"]
        assert entry["finish_reason"] == "length" and entry["slot"] == 0
        assert entry["ttft_ms"] >= 0 and entry["tokens_per_s"] > 0
    assert done[2]["generated_tokens"] == chat.eval_count
    assert done[2]["prompt_tokens"] == chat.prompt_eval_count
    # Every line is JSON, uvicorn's too, and nothing says what was asked.
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    assert NONCE not in server.logs()
