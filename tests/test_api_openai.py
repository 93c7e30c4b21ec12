"""The official `openai` client against a real server plus raw SSE shapes."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "ai/gemma3"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello."},
]
TIMING_KEYS = {
    "cache_n",
    "prompt_n",
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_n",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=120, max_retries=0)


def test_chat(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model.startswith("ai/gemma3")
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = resp.usage
    assert usage is not None and usage.prompt_tokens > 5
    assert 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    timings = resp.model_extra["timings"]
    assert timings.keys() >= TIMING_KEYS
    assert usage.prompt_tokens_details.cached_tokens == timings["cache_n"]
    assert timings["cache_n"] + timings["prompt_n"] == usage.prompt_tokens


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, finish, usage_chunk = chunks
    assert all(c.choices[0].finish_reason is None for c in body)
    assert all(c.choices[0].delta.content for c in body[1:]), "empty content chunks"
    assert finish.choices[0].finish_reason in ("stop", "length")
    assert finish.model_extra["timings"].keys() >= TIMING_KEYS
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens >= 1
    assert usage_chunk.model_extra["timings"] == finish.model_extra["timings"]


def _sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def test_raw_stream_shapes(server) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    data = _sse_data(text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    last_content = chunks[-2]
    assert last_content["choices"][0]["delta"] == {}
    assert last_content["choices"][0]["finish_reason"] in ("stop", "length")
    assert "timings" in last_content
    tail = chunks[-1]
    assert tail["choices"] == [] and set(tail["usage"]) >= {"prompt_tokens", "total_tokens"}
    assert tail["usage"]["prompt_tokens_details"]["cached_tokens"] == tail["timings"]["cache_n"]


def test_stream_without_usage_has_no_usage_chunk(server) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "stream": True}
    r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)
    data = _sse_data(r.text)
    assert data[-1] == "[DONE]"
    last = json.loads(data[-2])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "timings" in last
    assert all("usage" not in json.loads(d) for d in data[:-1])


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    assert resp.object == "text_completion"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert isinstance(resp.choices[0].text, str)
    assert resp.usage is not None and resp.usage.completion_tokens >= 1
    assert "timings" in resp.model_extra


def test_completions_token_prompt_and_stream(client: openai.OpenAI, server) -> None:
    tokens = httpx.post(server.url + "/tokenize", json={"content": "Once upon a time"}).json()[
        "tokens"
    ]
    resp = client.completions.create(model=MODEL, prompt=tokens, max_tokens=3)
    assert resp.usage.prompt_tokens == len(tokens)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The sky is",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_embeddings(client: openai.OpenAI, server) -> None:
    resp = client.embeddings.create(model=MODEL, input=["hello world", "goodbye"])
    assert [d.index for d in resp.data] == [0, 1]
    vec = resp.data[0].embedding
    assert len(vec) == 640  # Gemma 3 270M hidden size
    assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-3)
    assert resp.usage.prompt_tokens > 2
    # float encoding by hand (the client asks for base64 by default)
    raw = httpx.post(
        server.base_url + "/embeddings",
        json={"model": MODEL, "input": "hello world", "encoding_format": "float"},
        timeout=60,
    ).json()
    assert raw["object"] == "list"
    assert raw["data"][0]["embedding"] == pytest.approx(vec, abs=1e-5)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "ai/gemma3:270m" in ids
    item = next(m for m in models.data if m.id == "ai/gemma3:270m")
    dmr = item.model_extra["dmr"]
    assert dmr["architecture"] == "gemma3"
    assert dmr["context_window"] == 32768
    assert dmr["quantization"] and dmr["parameters"] and dmr["size"]
    one = client.models.retrieve("ai/gemma3:270m")
    assert one.id == "ai/gemma3:270m" and one.object == "model"


@pytest.mark.parametrize("prefix", ["/engines/llama.cpp/v1", "/engines/v1", "/v1"])
def test_every_prefix(server, prefix: str) -> None:
    assert httpx.get(server.url + prefix + "/models").status_code == 200
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
    r = httpx.post(server.url + prefix + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1


def test_preload_only(server) -> None:
    r = httpx.post(
        server.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"X-Preload-Only": "true"},
        timeout=120,
    )
    assert r.status_code == 200 and r.json() == {}


def test_json_response_format(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        max_tokens=12,
        temperature=0,
    )
    assert resp.choices[0].message.content.lstrip().startswith("{")


def test_content_parts_and_extras(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Count to three."}]}],
        max_tokens=4,
        seed=42,
        temperature=0.5,
        top_p=0.9,
        stop=["\n\n"],
        presence_penalty=0.1,
        frequency_penalty=0.1,
        logit_bias={"107": -5},
        extra_body={"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.1, "cache_prompt": True},
    )
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_curl_style_form_content_type(server) -> None:
    # `curl -d '{...}'` without -H sends application/x-www-form-urlencoded; accept it as JSON.
    fields = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "ignore_eos": True}
    url = server.base_url + "/chat/completions"
    as_json = httpx.post(url, json=fields, timeout=120)
    assert as_json.status_code == 200, as_json.text
    r = httpx.post(
        url,
        content=json.dumps(fields),
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "chat.completion"
    # Every field of the body was read: the same messages make the same prompt, and
    # max_tokens with ignore_eos makes exactly that many tokens.
    assert answer["usage"]["prompt_tokens"] == as_json.json()["usage"]["prompt_tokens"]
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["finish_reason"] == "length"
