"""Ollama's API (`/api/...`) driven by the official `ollama` Python client against `runner
serve` with the bundled model, in a private store (copy, delete, pull and a template override
change it), behind an API key: list, show, chat (streamed and not), generate, embed, ps with
keep_alive, copy, delete, pull from a local OCI registry, tool calls, thinking (also through
the Anthropic and Responses dialects), shutdown, and bad input in Ollama's error shape."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from conftest import ServerHandle, write_tiny_gguf
from oci_registry import RegistryProcess
from server_proc import MODEL, private_store, wait_for
from weather_tool import WEATHER_TOOL as WEATHER

from runner.api.errors.table import APIError
from runner.api.ollama.routes import parse_keep_alive
from runner.config import Settings
from runner.store import ModelStore
from runner.store.push import package, push

KEY = "ollama-test-key"
OPTIONS = {"num_predict": 4, "temperature": 0}


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., ServerHandle],
    bundled_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerHandle]:
    root = tmp_path_factory.mktemp("ollama")
    store = private_store(root / "models", bundled_model_path)
    env = {"RUNNER_MODELS_DIR": str(store), "DOCKER_CONFIG": str(root / "docker")}
    env["RUNNER_INSECURE_REGISTRIES"] = "127.0.0.1"  # test_pull_from_registry's registry
    flags = ("--slots", "2", "--ctx-size", "1024", "--max-body-bytes", "65536")
    handle = start_server(*flags, "--model", MODEL, "--api-key", KEY, env=env)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> ollama.Client:
    # Ollama clients send the key as a bearer token (OLLAMA_API_KEY does the same).
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})


def raw(server: ServerHandle) -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=120)


def test_list_show_and_version(server: ServerHandle, client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert MODEL in models
    assert models[MODEL].details.family == "gemma3"
    assert models[MODEL].details.quantization_level == "Q4_K_M"
    assert len(models[MODEL].digest) == 64
    shown = client.show("gemma3:270m")
    assert shown.details.format == "gguf"
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert "start_of_turn" in shown.template
    assert {"completion", "tools"} <= set(shown.capabilities)
    assert raw(server).get("/api/version").json()["version"]


def test_chat_not_streamed_and_streamed(server: ServerHandle, client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat(model="gemma3", messages=messages, options=OPTIONS)
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.message.role == "assistant"
    assert 1 <= reply.eval_count <= 4
    assert reply.prompt_eval_count >= 1
    assert reply.total_duration >= reply.eval_duration > 0
    assert reply.load_duration >= 0

    parts = list(client.chat(model="gemma3", messages=messages, options=OPTIONS, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert 1 <= parts[-1].eval_count <= 4
    assert "".join(p.message.content for p in parts)

    # runner's timings ride along; the same prompt again is served from the slot's cache.
    body = {"model": "gemma3", "messages": messages, "options": OPTIONS, "stream": False}
    final = raw(server).post("/api/chat", json=body).json()
    timings = final["timings"]
    assert timings["cache_n"] > 0
    assert final["prompt_eval_count"] == timings["prompt_n"] + timings["cache_n"]
    assert final["eval_count"] == timings["predicted_n"]


def test_format_constrains_output(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Is the sky blue?"}]
    options = {"num_predict": 8}
    schema = {"type": "boolean"}
    reply = client.chat(model="gemma3", messages=messages, options=options, format=schema)
    assert isinstance(json.loads(reply.message.content), bool)
    assert reply.done_reason == "stop"


def test_generate_and_embed(client: ollama.Client) -> None:
    templated = client.generate(model="gemma3", prompt="Once upon a time", options=OPTIONS)
    assert templated.done and 1 <= templated.eval_count <= 4
    plain = client.generate(model="gemma3", prompt="Once upon a time", raw=True, options=OPTIONS)
    assert plain.done
    # The chat template wraps the prompt in turn markers; raw sends the text alone.
    assert templated.prompt_eval_count > plain.prompt_eval_count

    older = client.embeddings(model="gemma3", prompt="a red apple")
    assert len(older.embedding) > 0

    result = client.embed(model="gemma3", input=["a red apple", "a green pear"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == len(result.embeddings[1]) > 0
    assert math.isclose(math.hypot(*result.embeddings[0]), 1.0, rel_tol=1e-3)
    assert result.prompt_eval_count >= 2


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300), (30, 30), ("1h30m", 5400), ("5m0s", 300), ("250ms", 0.25), (0, 0),
     ("0", 0), (-1, -1), ("-1", -1), ("-5m", -1), (None, None), ("", None)],
)  # fmt: skip
def test_keep_alive_values(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "1h-30m", True, [5], "m5"])
def test_keep_alive_rejects(value: object) -> None:
    with pytest.raises(APIError) as err:
        parse_keep_alive(value)
    assert err.value.status == 400


def _expiry(client: ollama.Client) -> datetime | None:
    rows = [m for m in client.ps().models if m.model == MODEL]
    return rows[0].expires_at if rows else None


def test_keep_alive_and_ps(client: ollama.Client) -> None:
    unloaded = client.generate(model=MODEL, keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert wait_for(lambda: _expiry(client) is None, timeout=30)

    forever = client.generate(model=MODEL, prompt="Hi", options=OPTIONS, keep_alive=-1)
    assert forever.done
    expiry = _expiry(client)
    assert expiry is not None and expiry.year == 9999

    client.generate(model=MODEL, prompt="Hi", options=OPTIONS, keep_alive="10m")
    expiry = _expiry(client)
    assert expiry is not None
    left = (expiry - datetime.now(timezone.utc)).total_seconds()
    assert 500 < left <= 600


def test_copy_then_delete(client: ollama.Client) -> None:
    client.copy(MODEL, "test/copied:v1")
    assert "test/copied:v1" in {m.model for m in client.list().models}
    assert client.delete("test/copied:v1").status == "success"
    assert "test/copied:v1" not in {m.model for m in client.list().models}
    assert MODEL in {m.model for m in client.list().models}  # the shared blob stays
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("test/copied:v1")
    assert err.value.status_code == 404


def test_pull_from_registry(
    client: ollama.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("registry")
    registry = RegistryProcess(root / "registry")
    try:
        ref = f"{registry.host}/test/tiny:v1"
        publisher = ModelStore(root / "publisher", bundled_default=False)
        package(publisher, write_tiny_gguf(root / "tiny.gguf"), ref)
        push(publisher, ref, settings=Settings(insecure_registries=["127.0.0.1"]))
        statuses = [p.status for p in client.pull(ref, stream=True)]
        assert statuses[-1] == "success"
        assert any(s and s.startswith("pulling") for s in statuses)
        assert any("test/tiny" in m.model for m in client.list().models)
        with pytest.raises(ollama.ResponseError) as err:
            client.pull(f"{registry.host}/nobody/nothing:v1")
        assert err.value.status_code == 404
    finally:
        registry.stop()


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


def test_bad_input_in_ollama_shape(server: ServerHandle, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404 and "not found" in err.value.error

    http = raw(server)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
    _error(http.post("/api/chat", json={**chat, "options": {"temperature": 5}}), 400)
    _error(http.post("/api/chat", json={**chat, "options": {"num_predict": "many"}}), 400)
    _error(http.post("/api/chat", json={**chat, "options": [1]}), 400)
    _error(http.post("/api/pull", json={"model": "/tmp/a\u0000b.gguf"}), 400)
    _error(http.post("/api/pull", json={"model": "/nonexistent/model.gguf"}), 403)
    _error(http.post("/api/chat", json={**chat, "keep_alive": "soon"}), 400)
    _error(http.post("/api/chat", json={**chat, "format": 3}), 400)
    bad_role = {**chat, "messages": [{"role": "wizard", "content": "x"}]}
    _error(http.post("/api/chat", json=bad_role), 400)
    _error(http.post("/api/generate", content=b"{not json"), 400)
    _error(http.post("/api/embed", json={"model": MODEL, "input": []}), 400)
    _error(http.post("/api/show", json={}), 400)
    huge = {**chat, "messages": [{"role": "user", "content": "x" * 70000}]}
    _error(http.post("/api/chat", json=huge), 413)

    # The server's access rules apply here too, answered in Ollama's shape.
    _error(httpx.post(server.url + "/api/chat", json=chat), 401)
    _error(http.get("/api/tags", headers={"Host": "evil.example"}), 403)
    _error(http.get("/api/tags", headers={"Origin": "http://evil.example"}), 403)
    allowed = http.options(
        "/api/chat",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"

    # Still serving, and a stream still ends with Ollama's final object.
    with http.stream("POST", "/api/chat", json={**chat, "stream": True, "options": OPTIONS}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and "eval_count" in lines[-1]


def test_tool_calls(server: ServerHandle, client: ollama.Client) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    # A base model does not decide to call tools, so the call is forced with runner's
    # `tool_choice` extension (Ollama itself has none).
    body = {
        "model": MODEL,
        "messages": ask,
        "tools": [WEATHER],
        "tool_choice": "required",
        "options": {"num_predict": 60},
    }
    http = raw(server)
    answer = http.post("/api/chat", json={**body, "stream": False}).json()
    calls = answer["message"]["tool_calls"]
    assert answer["done_reason"] == "stop" and len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather"
    assert isinstance(calls[0]["function"]["arguments"]["city"], str)

    with http.stream("POST", "/api/chat", json=body) as response:
        parts = [json.loads(line) for line in response.iter_lines() if line]
    streamed = [c for p in parts for c in p["message"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in streamed] == ["get_weather"]
    assert parts[-1]["done"] is True

    # The official client sends the call and its result back; the template renders both.
    history = [
        *ask,
        answer["message"],
        {"role": "tool", "content": "Sunny, 21 C", "tool_name": "get_weather"},
    ]
    reply = client.chat(model=MODEL, messages=history, tools=[WEATHER], options=OPTIONS)
    assert reply.done and reply.prompt_eval_count >= 1


def _contexts(client: ollama.Client) -> set[int | None]:
    return {m.context_length for m in client.ps().models if m.model == MODEL}


def test_num_ctx_loads_the_model_with_that_context(
    server: ServerHandle, client: ollama.Client
) -> None:
    http = raw(server)
    # A prompt that fits the server's 1024-token slots but not 512-token ones.
    messages = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 70}]
    body = {"model": MODEL, "messages": messages, "options": OPTIONS, "stream": False}
    fits = http.post("/api/chat", json=body).json()
    length = fits["timings"]["prompt_n"] + fits["timings"]["cache_n"]
    assert 512 < length < 1024 - OPTIONS["num_predict"]

    small = {**OPTIONS, "num_ctx": 512}
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=messages, options=small)
    assert err.value.status_code == 400 and "a slot holds 512" in err.value.error
    assert 512 in _contexts(client)  # loaded again, with 512-token slots
    short = [{"role": "user", "content": "Hi"}]
    assert client.chat(model=MODEL, messages=short, options=small).done
    parts = list(client.chat(model=MODEL, messages=short, options=small, stream=True))
    assert parts[-1].done
    # Without num_ctx (or with the configured size) the configured load serves it again.
    again = http.post("/api/chat", json={**body, "options": {**OPTIONS, "num_ctx": 1024}})
    assert again.status_code == 200 and again.json()["done"]
    assert 1024 in _contexts(client)

    for bad in (10, "big", 2.5, True, 1 << 21):
        _error(http.post("/api/chat", json={**body, "options": {"num_ctx": bad}}), 400)
    # keep_alive 0 with num_ctx unloads that load only.
    assert client.generate(model=MODEL, keep_alive=0, options={"num_ctx": 512}).done
    assert wait_for(lambda: 512 not in _contexts(client), timeout=30)
    assert 1024 in _contexts(client)


def test_stream_outliving_the_shutdown_grace_ends_with_an_error_line(
    start_server: Callable[..., ServerHandle],
) -> None:
    handle = start_server(
        "--model", MODEL, "--slots", "1", "--ctx-size", "2048", "--shutdown-grace", "1s"
    )
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "options": {"num_predict": 2000, "ignore_eos": True},  # far past the 1 s grace
    }
    parts: list[dict[str, object]] = []
    with httpx.stream("POST", handle.url + "/api/chat", json=body, timeout=120) as response:
        for text in response.iter_lines():
            parts.append(json.loads(text))
            if len(parts) == 2:  # mid-stream now
                stopper = threading.Thread(target=handle.stop, kwargs={"timeout": 90})
                stopper.start()
    stopper.join()
    assert "shutting down" in str(parts[-1]["error"])
    assert all("error" not in part for part in parts[:-1])
    assert handle.proc is not None and handle.proc.returncode == 0


def test_think_needs_a_model_that_thinks(server: ServerHandle, client: ollama.Client) -> None:
    ask = [{"role": "user", "content": "Hi"}]
    for call in (
        lambda: client.chat(model=MODEL, messages=ask, think=True, options=OPTIONS),
        lambda: client.generate(model=MODEL, prompt="Hi", think=True, options=OPTIONS),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 400 and "does not support thinking" in err.value.error
    # think false asks for no reasoning, which any model can do; a bad value is a 400.
    assert client.chat(model=MODEL, messages=ask, think=False, options=OPTIONS).done
    body = {"model": MODEL, "messages": ask, "think": "maybe", "options": OPTIONS}
    _error(raw(server).post("/api/chat", json=body), 400)


# A template whose generation prompt opens a thought: everything the model then writes is
# reasoning (the bundled model does not think on its own).
THINKING_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m.role == 'assistant' else 'user' }}\n{{ m.content }}<end_of_turn>\n"
    "{% endfor %}<start_of_turn>model\n"
    "{% if enable_thinking is not defined or enable_thinking %}<think>\n{% endif %}"
)


def test_thinking_in_every_dialect(server: ServerHandle, client: ollama.Client) -> None:
    http = raw(server)
    configure = {"model": MODEL, "chat-template": THINKING_TEMPLATE}
    assert http.post("/engines/_configure", json=configure).status_code == 202
    try:
        # Greedy throughout: a sampled answer may close the thought at once, or close it and
        # write "<think>" again (the model copies the tag), which would be content.
        ask = [{"role": "user", "content": "Why is the sky blue?"}]
        reply = client.chat(model=MODEL, messages=ask, options={"num_predict": 8, "temperature": 0})
        assert reply.message.thinking and "<think>" not in reply.message.content
        # Ollama's `think` reaches the template as `enable_thinking`.
        eight = {"num_predict": 8, "ignore_eos": True, "temperature": 0}
        thought = client.chat(model=MODEL, messages=ask, options=eight, think=True)
        assert thought.message.thinking
        plain = client.chat(model=MODEL, messages=ask, options=eight, think=False)
        # (the template opened no thought, so all of it is content)
        assert not plain.message.thinking and plain.message.content
        parts = list(client.chat(model=MODEL, messages=ask, options=OPTIONS, stream=True))
        assert "".join(p.message.thinking or "" for p in parts)

        claude = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)
        message = claude.messages.create(model=MODEL, max_tokens=8, messages=ask, temperature=0)
        assert message.content[0].type == "thinking" and message.content[0].thinking
        with claude.messages.stream(
            model=MODEL, max_tokens=8, messages=ask, temperature=0
        ) as stream:
            kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        assert "thinking_delta" in kinds

        responses = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        answer = responses.responses.create(
            model=MODEL, input=ask, max_output_tokens=8, temperature=0
        )
        assert answer.output[0].type == "reasoning" and answer.output[0].content[0].text
        events = responses.responses.create(
            model=MODEL, input=ask, max_output_tokens=8, temperature=0, stream=True
        )
        assert "response.reasoning_text.delta" in [e.type for e in events]
    finally:
        reset = {"model": MODEL, "chat-template": None}
        assert http.post("/engines/_configure", json=reset).status_code == 202
