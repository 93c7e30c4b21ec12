"""Anthropic's Messages API (`/v1/messages`, `/anthropic/v1/messages`) driven by the official
`anthropic` client against `runner serve` with the bundled model, behind an API key sent as
`x-api-key`: create, stream, count_tokens, the prompt cache as `cache_read_input_tokens`
(also for a prefix first cached through the OpenAI dialect), errors in Anthropic's shape."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import anthropic
import httpx
import openai
import pytest
from conftest import ServerHandle
from server_proc import MODEL
from weather_tool import ANTHROPIC_WEATHER as WEATHER

KEY = "anthropic-test-key"


def long_system() -> str:
    """A ~300-token system prompt no earlier request can have cached (random nonce first)."""
    return f"[{secrets.token_hex(8)}] You are a careful, concise assistant. " + (
        "Answer in plain words and keep every answer short. " * 30
    )


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerHandle]) -> Iterator[ServerHandle]:
    handle = start_server("--slots", "2", "--ctx-size", "2048", "--model", MODEL, "--api-key", KEY)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


def test_create_count_tokens_and_cache(client: anthropic.Anthropic) -> None:
    system = long_system()
    messages = [{"role": "user", "content": "Name a colour."}]
    first = client.messages.create(
        model=MODEL, max_tokens=6, system=system, messages=messages, temperature=0
    )
    assert first.type == "message" and first.role == "assistant"
    assert first.stop_reason in ("end_turn", "max_tokens")
    assert first.content and first.content[0].type == "text"
    assert 1 <= first.usage.output_tokens <= 6
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=messages)
    total = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert counted.input_tokens == total > 250

    # Same system prompt, new question: the system prompt's tokens come from the cache.
    again = [{"role": "user", "content": "Name an animal."}]
    second = client.messages.create(
        model=MODEL, max_tokens=6, system=[{"type": "text", "text": system}], messages=again
    )
    assert second.usage.cache_read_input_tokens > 250
    assert second.usage.input_tokens < 30


def test_stream_events_and_usage(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Count to three."}]
    # Greedy: the text checks below need an answer that does not end at its first token.
    with client.messages.stream(
        model=MODEL, max_tokens=5, messages=messages, temperature=0
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]  # (the SDK drops pings)
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "content_block_delta" in kinds
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= final.usage.output_tokens <= 5
    assert final.content[0].text
    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == counted.input_tokens

    # On the wire, with the ping the SDK hides.
    body = {"model": MODEL, "max_tokens": 2, "messages": messages, "stream": True}
    headers = {"x-api-key": KEY}
    with httpx.stream(
        "POST", client.base_url.join("/v1/messages"), json=body, headers=headers
    ) as r:
        names = [line[len("event: ") :] for line in r.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]


def test_cache_shared_with_openai_dialect(server: ServerHandle) -> None:
    system = long_system()
    chat = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    chat.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi."}],
        max_tokens=4,
    )
    # Anthropic's client at the /anthropic base URL: the prefix cached above is reused.
    other = anthropic.Anthropic(base_url=server.url + "/anthropic", api_key=KEY, max_retries=0)
    reply = other.messages.create(
        model=MODEL,
        max_tokens=4,
        system=system,
        messages=[{"role": "user", "content": "Hello."}],
    )
    assert reply.usage.cache_read_input_tokens > 250


def _anthropic_error(exc: anthropic.APIStatusError, status: int, kind: str) -> None:
    assert exc.status_code == status
    assert exc.body["type"] == "error"
    assert exc.body["error"]["type"] == kind and exc.body["error"]["message"]


def test_errors_in_anthropic_shape(server: ServerHandle, client: anthropic.Anthropic) -> None:
    user = [{"role": "user", "content": "Hi"}]
    bad_calls = [
        (dict(model=MODEL, max_tokens=0, messages=user), 400, "invalid_request_error"),
        (dict(model=MODEL, max_tokens=5, messages=[]), 400, "invalid_request_error"),
        (dict(model=MODEL, max_tokens=5, messages=user, temperature=1.5), 400, None),
        (dict(model="no-such-model", max_tokens=5, messages=user), 404, "not_found_error"),
    ]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    image_call = dict(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [image]}])
    bad_calls.append((image_call, 400, "invalid_request_error"))
    textless = dict(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [{"type": "text"}]}])  # fmt: skip
    bad_calls.append((textless, 400, "invalid_request_error"))
    for kwargs, status, kind in bad_calls:
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.create(**kwargs)
        _anthropic_error(err.value, status, kind or "invalid_request_error")

    # max_tokens is required, as Anthropic requires it (the SDK checks too, so send raw).
    http = httpx.Client(base_url=server.url, headers={"x-api-key": KEY}, timeout=60)
    missing = http.post("/v1/messages", json={"model": MODEL, "messages": user})
    assert missing.status_code == 400 and missing.json()["type"] == "error"
    not_json = http.post("/v1/messages", content=b"{oops")
    assert not_json.status_code == 400 and not_json.json()["type"] == "error"

    wrong_key = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        wrong_key.messages.create(model=MODEL, max_tokens=5, messages=user)
    _anthropic_error(err.value, 401, "authentication_error")

    # Still serving.
    ok = client.messages.create(model=MODEL, max_tokens=2, messages=user)
    assert ok.usage.output_tokens >= 1


def test_tool_use_and_tool_result(client: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    # Forced, since a base model does not decide to call tools on its own.
    forced = {"type": "tool", "name": "get_weather"}
    reply = client.messages.create(
        model=MODEL, max_tokens=60, tools=[WEATHER], tool_choice=forced, messages=ask
    )
    assert reply.stop_reason == "tool_use"
    uses = [block for block in reply.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    assert isinstance(uses[0].input["city"], str)

    with client.messages.stream(
        model=MODEL, max_tokens=60, tools=[WEATHER], tool_choice={"type": "any"}, messages=ask
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert final.stop_reason == "tool_use"
    assert [b.name for b in final.content if b.type == "tool_use"] == ["get_weather"]

    result = {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"}
    history = [
        *ask,
        {"role": "assistant", "content": reply.content},
        {"role": "user", "content": [result]},
    ]
    after = client.messages.create(model=MODEL, max_tokens=4, tools=[WEATHER], messages=history)
    assert after.usage.output_tokens >= 1
    # The turn with the call was computed before: its prefix comes from the cache.
    assert after.usage.cache_read_input_tokens > 0


def test_stop_sequence_reported(client: anthropic.Anthropic) -> None:
    # Words are separated by spaces, so the first space ends the answer. Greedy: a sampled
    # answer could end (end of turn) before its first space.
    stops = [" ", "\n"]
    ask = [{"role": "user", "content": "Write a long sentence about cats."}]
    reply = client.messages.create(
        model=MODEL, max_tokens=30, stop_sequences=stops, messages=ask, temperature=0
    )
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence in stops
    text = "".join(b.text for b in reply.content if b.type == "text")
    assert not any(stop in text for stop in stops)
    with client.messages.stream(
        model=MODEL, max_tokens=30, stop_sequences=stops, messages=ask, temperature=0
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence in stops
