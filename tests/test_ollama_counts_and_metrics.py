"""Ollama's counters as Ollama reports them (`prompt_eval_count` is the whole prompt, cached
tokens included; `/api/generate` returns `context`, the conversation's token ids), and
`/metrics` when one model is loaded twice (two context sizes through Ollama's `num_ctx`):
every series tells the two engines apart. The `ollama` client against a real server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import ollama
import pytest
from conftest import ServerHandle
from prometheus_client.parser import text_string_to_metric_families
from server_proc import MODEL

pytestmark = pytest.mark.slow

OPTIONS = {"num_predict": 4, "temperature": 0}
PROMPT = "Write one line about rivers and the sea, please. " * 6  # past one prefill block


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerHandle]) -> Iterator[ServerHandle]:
    handle = start_server("--slots", "1", "--ctx-size", "1024", "--model", MODEL)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_prompt_eval_count_includes_cached_tokens(
    server: ServerHandle, client: ollama.Client
) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    first = client.chat(model=MODEL, messages=messages, options=OPTIONS)
    body = {"model": MODEL, "messages": messages, "options": OPTIONS, "stream": False}
    again = httpx.post(server.url + "/api/chat", json=body, timeout=120).json()
    streamed = list(client.chat(model=MODEL, messages=messages, options=OPTIONS, stream=True))
    timings = again["timings"]
    assert timings["cache_n"] > 0  # the second time, most of it came from the cache
    whole = timings["cache_n"] + timings["prompt_n"]
    assert first.prompt_eval_count == again["prompt_eval_count"] == whole
    assert streamed[-1].prompt_eval_count == whole


def test_generate_returns_its_context(server: ServerHandle, client: ollama.Client) -> None:
    options = {**OPTIONS, "ignore_eos": True}
    reply = client.generate(model=MODEL, prompt="Once upon a time", raw=True, options=options)
    context = reply.context
    assert context is not None and all(isinstance(t, int) for t in context)
    assert len(context) == reply.prompt_eval_count + reply.eval_count
    prompt = httpx.post(
        server.url + "/tokenize", json={"content": "Once upon a time", "add_special": True}
    ).json()["tokens"]
    assert context[: len(prompt)] == prompt
    text = httpx.post(server.url + "/detokenize", json={"tokens": context[len(prompt) :]}).json()
    assert text["content"] == reply.response

    parts = list(
        client.generate(model=MODEL, prompt="Once upon a time", options=options, stream=True)
    )
    assert parts[-1].done and parts[-1].context
    assert all(part.context is None for part in parts[:-1])
    assert len(parts[-1].context) == parts[-1].prompt_eval_count + parts[-1].eval_count


def test_metrics_tell_two_loads_of_one_model_apart(
    server: ServerHandle, client: ollama.Client
) -> None:
    short = [{"role": "user", "content": "Hi"}]
    client.chat(model=MODEL, messages=short, options=OPTIONS)
    client.chat(model=MODEL, messages=short, options={**OPTIONS, "num_ctx": 512})
    assert {m.context_length for m in client.ps().models if m.model == MODEL} >= {512, 1024}

    text = httpx.get(server.url + "/metrics").text
    seen: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    engines_per_series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen[(sample.name, tuple(sorted(sample.labels.items())))] += 1
            if sample.labels.get("model") == MODEL:
                engines_per_series.setdefault(sample.name, set()).add(sample.labels["engine"])
    duplicates = [key for key, count in seen.items() if count > 1]
    assert not duplicates, duplicates[:5]
    # Each engine series is there once per load, told apart by `engine` (and `ctx_size`).
    for name in ("llamacpp:prompt_tokens_total", "runner:slots_total", "llamacpp:n_decode_total"):
        assert len(engines_per_series[name]) == 2, (name, engines_per_series.get(name))
    contexts = {
        s.labels["ctx_size"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "runner:slots_total"
    }
    assert contexts == {"512", "1024"}


def test_generate_continues_from_a_context_sent_back(
    server: ServerHandle, client: ollama.Client
) -> None:
    options = {**OPTIONS, "ignore_eos": True}
    first = client.generate(model=MODEL, prompt=PROMPT, raw=True, options=options)
    more = " And then"
    second = client.generate(
        model=MODEL, prompt=more, raw=True, context=first.context, options=options
    )
    added = httpx.post(
        server.url + "/tokenize", json={"content": more, "add_special": False}
    ).json()["tokens"]
    # The new prompt is the old conversation plus the new text (no second BOS) ...
    assert second.prompt_eval_count == len(first.context) + len(added)
    assert second.context[: len(first.context) + len(added)] == [*first.context, *added]
    # ... and what the earlier request computed is reused from the cache (in whole blocks).
    body = {"model": MODEL, "prompt": more, "raw": True, "context": second.context}
    third = httpx.post(
        server.url + "/api/generate", json={**body, "stream": False, "options": options}
    ).json()
    assert third["timings"]["cache_n"] > 0

    for bad in ([-1], [1 << 30], "12", [1.5]):
        response = httpx.post(server.url + "/api/generate", json={**body, "context": bad})
        assert response.status_code == 400 and "context" in response.json()["error"]
