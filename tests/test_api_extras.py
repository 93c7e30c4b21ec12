"""llama-server's extra routes: /health, /slots, /tokenize, /detokenize, /metrics."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_health(server) -> None:
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_tokenize_roundtrip(server) -> None:
    r = httpx.post(server.url + "/tokenize", json={"content": "Hello world"}, timeout=30)
    tokens = r.json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    with_bos = httpx.post(
        server.url + "/tokenize", json={"content": "Hello world", "add_special": True}
    ).json()["tokens"]
    assert len(with_bos) == len(tokens) + 1
    pieces = httpx.post(
        server.url + "/tokenize", json={"content": "Hello world", "with_pieces": True}
    ).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "Hello world"
    assert [p["id"] for p in pieces] == tokens
    text = httpx.post(server.url + "/detokenize", json={"tokens": tokens}).json()["content"]
    assert text == "Hello world"


def test_slots(server) -> None:
    slots = httpx.get(server.url + "/slots").json()
    assert [s["id"] for s in slots] == [0, 1, 2, 3]
    for slot in slots:
        assert slot["n_ctx"] == 2048
        assert isinstance(slot["is_processing"], bool)
        assert slot["n_cached_tokens"] >= 0
    assert httpx.get(server.url + "/slots", params={"model": "ai/gemma3"}).json()[0]["id"] == 0
    r = httpx.get(server.url + "/slots", params={"model": "ai/absent"})
    assert r.status_code == 404


def test_metrics(server) -> None:
    body = {"model": "ai/gemma3", "prompt": "One two three", "max_tokens": 2}
    assert httpx.post(server.base_url + "/completions", json=body, timeout=120).status_code == 200
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = values.get(name.split("{")[0], 0.0) + float(value)
    for name in (
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_seconds_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
        "llamacpp:prompt_tokens_cached_total",
        "llamacpp:n_decode_total",
    ):
        assert name in values, name
    assert values["llamacpp:prompt_tokens_total"] >= 3
    assert values["llamacpp:tokens_predicted_total"] >= 1
    assert values["llamacpp:requests_processing"] == 0
    assert values["llamacpp:requests_deferred"] == 0
    assert values["runner:slots_total"] == 4
    assert values["runner:models_loaded"] >= 1
    # Every engine series names the engine and its context size beside the model.
    assert re.search(
        r'runner:prompt_cache_bytes\{ctx_size="\d+",engine="[^"]+",model="ai/gemma3:latest",'
        r'tier="ram"\}',
        r.text,
    ), r.text
