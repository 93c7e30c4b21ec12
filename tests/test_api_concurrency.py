"""Concurrent streams on the shared 4-slot server; a dropped stream frees its slot."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import pytest
from server_proc import metric

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "ai/gemma3"


async def _stream(client: httpx.AsyncClient, url: str, i: int) -> list[dict]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me fact number {i} about the sea."}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks: list[dict] = []
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                chunks.append({"done": True} if data == "[DONE]" else json.loads(data))
    return chunks


def _slots(server) -> list[dict]:
    r = httpx.get(server.url + "/slots", params={"model": MODEL}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_all_idle(server, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        slots = _slots(server)
        if not any(s["is_processing"] for s in slots) or time.monotonic() > deadline:
            return slots
        time.sleep(0.1)


def test_eight_streams_on_four_slots(server) -> None:
    url = server.base_url + "/chat/completions"

    async def main() -> list[list[dict]]:
        async with httpx.AsyncClient(timeout=180) as client:
            return await asyncio.gather(*(_stream(client, url, i) for i in range(8)))

    results = asyncio.run(main())
    assert len(results) == 8
    for chunks in results:
        assert chunks[-1] == {"done": True}
        assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] >= 1
        assert chunks[-3]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len(_slots(server)) == 4
    assert not any(s["is_processing"] for s in _wait_all_idle(server))


def test_disconnect_frees_slot(server) -> None:
    url = server.base_url + "/chat/completions"
    with httpx.Client(base_url=server.url) as client:
        cancelled_before = metric(client, "runner:requests_finished_total", reason="cancelled")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }

    async def main() -> None:
        # Leaving the block closes the connection mid-stream.
        async with (
            httpx.AsyncClient(timeout=120) as client,
            client.stream("POST", url, json=body) as r,
        ):
            received = 0
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"content"' in line:
                    received += 1
                    if received == 3:
                        break
            assert any(s["is_processing"] for s in _slots(server))

    asyncio.run(main())
    slots = _wait_all_idle(server)
    assert not any(s["is_processing"] for s in slots), slots
    with httpx.Client(base_url=server.url) as client:
        after = metric(client, "runner:requests_finished_total", reason="cancelled")
    assert after - cancelled_before >= 1
    _wait_released(server)


def _wait_released(server, timeout: float = 60.0) -> None:
    """The request's hold on the model is released too (else it could never unload)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = httpx.get(server.url + "/engines/ps", timeout=10).json()
        if not any(row["in_use"] for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(row["in_use"] for row in rows), rows


def test_non_streaming_disconnect_cancels(server) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about a cat."}],
        "max_tokens": 1000,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/chat/completions", json=body, timeout=1.5)
    slots = _wait_all_idle(server)
    assert not any(s["is_processing"] for s in slots), slots
    _wait_released(server)


# Long enough that a quarter of it dwarfs HTTP and polling delays on any machine.
PREFILL_TARGET_S = 3.0
BASE_LINES = 210  # about 1,700 tokens
MODEL_CONTEXT = 32768  # Gemma 3 270M's
SHARED_SLOT_CONTEXT = 2048  # the shared `server` fixture's --ctx-size


def _document(nonce: str, lines: int = BASE_LINES) -> str:
    # All new tokens: the nonce comes first, so no cached prefix is shared.
    return f"{nonce}\n" + " ".join(f"Line {i} of a long document." for i in range(lines))


def _prefill(url: str, prompt: str) -> dict:
    """Run `prompt` to its end; its timings (how long its prefill took here)."""
    r = httpx.post(url, json={"model": MODEL, "prompt": prompt, "max_tokens": 1}, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()["timings"]


def test_disconnect_during_a_long_prompt_frees_the_slot_within_a_block(
    server, start_server
) -> None:
    # The prompt is sized to this machine's prefill speed: about PREFILL_TARGET_S seconds of
    # prefill on a slow CPU and a fast GPU alike (a GPU needs a longer prompt, and a server
    # whose slot holds it).
    base = _prefill(server.base_url + "/completions", _document("zebra quartz"))
    assert base["prompt_n"] > 1200
    per_line_s = base["prompt_ms"] / 1e3 / BASE_LINES
    tokens_per_line = base["prompt_n"] / BASE_LINES
    max_lines = int((MODEL_CONTEXT - 64) / tokens_per_line)
    lines = min(max(BASE_LINES, math.ceil(PREFILL_TARGET_S / per_line_s)), max_lines)
    n_tokens = int(lines * tokens_per_line) + 64
    target = server
    if lines > BASE_LINES and n_tokens > SHARED_SLOT_CONTEXT:
        ctx = str(min(MODEL_CONTEXT, n_tokens + 256))
        target = start_server("--model", MODEL, "--slots", "1", "--ctx-size", ctx)
    url = target.base_url + "/completions"
    try:
        timings = base if lines == BASE_LINES else _prefill(url, _document("zebra quartz", lines))
        prompt = _document("walrus onyx", lines)
        print(f"prompt of {n_tokens} tokens: {timings['prompt_ms'] / 1e3:.2f} s of prefill")
        _cancel_a_quarter_into_the_prompt(target, url, prompt, timings["prompt_ms"] / 1e3)
    finally:
        if target is not server:
            target.stop()


def _cancel_a_quarter_into_the_prompt(server, url: str, prompt: str, prefill_s: float) -> None:
    with httpx.Client(base_url=server.url) as client:
        cancelled_before = metric(client, "runner:requests_finished_total", reason="cancelled")
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": True}

    async def main() -> float:
        async with httpx.AsyncClient(timeout=120) as client:
            async with client.stream("POST", url, json=body) as r:
                assert r.status_code == 200
                await asyncio.sleep(prefill_s / 4)  # a quarter into the prompt
                assert any(s["is_processing"] for s in _slots(server))
            return time.monotonic()  # the connection is closed here

    gone = asyncio.run(main())
    slots = _wait_all_idle(server)
    freed_after = time.monotonic() - gone
    assert not any(s["is_processing"] for s in slots), slots
    # The rest of the prompt (3/4 of prefill_s) was not computed before the slot came free.
    assert freed_after < prefill_s / 3, (freed_after, prefill_s)
    with httpx.Client(base_url=server.url) as client:
        after = metric(client, "runner:requests_finished_total", reason="cancelled")
    assert after - cancelled_before >= 1
